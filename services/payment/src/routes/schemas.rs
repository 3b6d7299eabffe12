//! Request and response bodies of the wallet and payments API.

use chrono::{DateTime, Utc};
use paperclip::actix::Apiv2Schema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::store;

/// `POST /api/wallet/top-up`
#[derive(Debug, Clone, Default, Serialize, Deserialize, Apiv2Schema)]
#[serde(default)]
pub struct TopUpRequest {
    /// Integer cents, at least 1 (the maximum is configured, default 10000000).
    pub amount_cents: Option<i64>,
}

/// The caller's wallet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Apiv2Schema)]
pub struct Wallet {
    pub customer_id: Uuid,
    /// Integer cents, never negative. Top-ups keep it at most the configured
    /// limit; a refund is credited in full and may take it above.
    pub balance_cents: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<store::Wallet> for Wallet {
    fn from(w: store::Wallet) -> Self {
        Self {
            customer_id: w.customer_id,
            balance_cents: w.balance_cents,
            created_at: w.created_at,
            updated_at: w.updated_at,
        }
    }
}

/// The payment of one order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Apiv2Schema)]
pub struct Payment {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    pub amount_cents: i64,
    /// `CONFIRMED`, `FAILED` or `REFUNDED`.
    pub status: String,
    /// `INSUFFICIENT_FUNDS` (failed); `CUSTOMER_CANCELLED` or the failed
    /// delivery's reason, `NO_CAPACITY` or `DAILY_LIMIT` (refunded).
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub refunded_at: Option<DateTime<Utc>>,
}

impl From<store::Payment> for Payment {
    fn from(p: store::Payment) -> Self {
        Self {
            payment_id: p.id,
            order_id: p.order_id,
            amount_cents: p.amount_cents,
            status: p.status,
            reason: p.reason,
            created_at: p.created_at,
            updated_at: p.updated_at,
            refunded_at: p.refunded_at,
        }
    }
}

commerce_common::page_schema! {
    /// A page of the caller's payments, newest first.
    PaymentPage of Payment
}
