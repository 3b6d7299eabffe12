//! Response bodies of the deliveries API.

use chrono::{DateTime, Utc};
use paperclip::actix::Apiv2Schema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::store;

/// The delivery of one order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Apiv2Schema)]
pub struct Delivery {
    pub delivery_id: Uuid,
    pub order_id: Uuid,
    /// `SCHEDULED`, `FAILED` or `CANCELLED`.
    pub status: String,
    pub window_start: Option<DateTime<Utc>>,
    pub window_end: Option<DateTime<Utc>>,
    pub tracking_number: Option<String>,
    /// `NO_CAPACITY` or `DAILY_LIMIT` (failed), `CUSTOMER_CANCELLED` (cancelled).
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub cancelled_at: Option<DateTime<Utc>>,
}

impl From<store::Delivery> for Delivery {
    fn from(d: store::Delivery) -> Self {
        Self {
            delivery_id: d.id,
            order_id: d.order_id,
            status: d.status,
            window_start: d.window_start,
            window_end: d.window_end,
            tracking_number: d.tracking_number,
            reason: d.reason,
            created_at: d.created_at,
            updated_at: d.updated_at,
            cancelled_at: d.cancelled_at,
        }
    }
}

commerce_common::page_schema! {
    /// A page of the caller's deliveries, newest first.
    DeliveryPage of Delivery
}
