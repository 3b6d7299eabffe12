//! Request and response bodies of the orders API (JSON, snake_case).

use chrono::{DateTime, Utc};
use paperclip::{
    actix::Apiv2Schema,
    v2::{models::DefaultSchemaRaw, schema::Apiv2Schema as Schema},
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::store::{ItemRow, OrderView};

/// A field the API requires, read as optional so that a missing one is
/// reported with its name (a field-level error) instead of failing the
/// whole body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Required<T>(pub Option<T>);

impl<T> Default for Required<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<T: Schema> Schema for Required<T> {
    fn name() -> Option<String> {
        T::name()
    }

    fn raw_schema() -> DefaultSchemaRaw {
        T::raw_schema()
    }
}

/// `POST /api/orders`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Apiv2Schema)]
#[serde(default)]
pub struct PlaceOrderRequest {
    /// 1 to 100 lines.
    pub items: Required<Vec<OrderItemRequest>>,
    pub shipping_address: Required<AddressRequest>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Apiv2Schema)]
#[serde(default)]
pub struct OrderItemRequest {
    /// 1 to 64 characters of `A-Z a-z 0-9 - _ .`
    pub sku: Required<String>,
    /// 1 to 10000
    pub quantity: Required<i64>,
    /// 0 to 1000000000 (integer cents)
    pub unit_price_cents: Required<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Apiv2Schema)]
#[serde(default)]
pub struct AddressRequest {
    /// At most 200 characters.
    pub name: Required<String>,
    /// At most 200 characters.
    pub street: Required<String>,
    /// At most 100 characters.
    pub city: Required<String>,
    /// At most 16 characters.
    pub postal_code: Required<String>,
    /// At most 64 characters.
    pub country: Required<String>,
}

/// `POST /api/orders/{id}/cancel` (the body is optional).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Apiv2Schema)]
#[serde(default)]
pub struct CancelRequest {
    /// A note for the record, at most 500 characters.
    pub reason: Option<String>,
}

/// `GET /api/orders/{id}` query.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, Apiv2Schema)]
pub struct GetOrderQuery {
    /// What a long-poll (`Prefer: wait=N`) waits for: `change` (the default)
    /// answers at the order's next change; `settled` only once the saga is
    /// done with it (DELIVERY_SCHEDULED, REJECTED or CANCELLED), so a client
    /// that wants the outcome asks once instead of once per step. Either way
    /// the answer comes after N seconds at the latest. Ignored without
    /// `Prefer: wait`.
    #[serde(default)]
    pub until: WaitUntil,
}

/// What a long-poll waits for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, Apiv2Schema)]
#[serde(rename_all = "snake_case")]
pub enum WaitUntil {
    /// The order's next change (status or what payment and delivery said).
    #[default]
    Change,
    /// The saga is done with the order.
    Settled,
}

/// `GET /api/orders` query.
#[derive(Debug, Clone, Default, Serialize, Deserialize, Apiv2Schema)]
pub struct ListQuery {
    /// 1-based page number (default 1).
    pub page: Option<i64>,
    /// Orders per page, 1 to 100 (default 20).
    pub page_size: Option<i64>,
}

/// An order as its owner sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Apiv2Schema)]
pub struct Order {
    pub id: Uuid,
    /// `PENDING`, `PAID`, `DELIVERY_SCHEDULED`, `REJECTED` or `CANCELLED`.
    pub status: String,
    /// Why the order was rejected or cancelled, e.g. `INSUFFICIENT_FUNDS`,
    /// `NO_CAPACITY`, `CUSTOMER_CANCELLED`.
    pub reason: Option<String>,
    pub items: Vec<OrderItem>,
    /// Computed by the server: the sum of quantity times unit price.
    pub total_cents: i64,
    pub shipping_address: Address,
    /// What the payment service said, once it did.
    pub payment: Option<PaymentInfo>,
    /// What the delivery service said, once it did.
    pub delivery: Option<DeliveryInfo>,
    /// Set once the customer asked to cancel.
    pub cancellation: Option<CancellationInfo>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Apiv2Schema)]
pub struct OrderItem {
    pub sku: String,
    pub quantity: i32,
    pub unit_price_cents: i64,
    pub subtotal_cents: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Apiv2Schema)]
pub struct Address {
    pub name: String,
    pub street: String,
    pub city: String,
    pub postal_code: String,
    pub country: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Apiv2Schema)]
pub struct PaymentInfo {
    /// `CONFIRMED`, `FAILED` or `REFUNDED`.
    pub status: String,
    pub payment_id: Option<Uuid>,
    pub amount_cents: Option<i64>,
    /// Failure or refund reason.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Apiv2Schema)]
pub struct DeliveryInfo {
    /// `SCHEDULED`, `FAILED` or `CANCELLED` (window released).
    pub status: String,
    pub delivery_id: Option<Uuid>,
    pub window_start: Option<DateTime<Utc>>,
    pub window_end: Option<DateTime<Utc>>,
    pub tracking_number: Option<String>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Apiv2Schema)]
pub struct CancellationInfo {
    pub requested_at: DateTime<Utc>,
    pub note: Option<String>,
}

/// A page of the caller's orders, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Apiv2Schema)]
pub struct OrderPage {
    pub items: Vec<Order>,
    pub page: i64,
    pub page_size: i64,
    pub total_items: i64,
    pub total_pages: i64,
}

impl From<ItemRow> for OrderItem {
    fn from(item: ItemRow) -> Self {
        Self {
            sku: item.sku,
            quantity: item.quantity,
            unit_price_cents: item.unit_price_cents,
            subtotal_cents: item
                .unit_price_cents
                .saturating_mul(i64::from(item.quantity)),
        }
    }
}

impl From<OrderView> for Order {
    fn from(view: OrderView) -> Self {
        let o = view.order;
        let payment = o.payment_status.map(|status| PaymentInfo {
            status,
            payment_id: o.payment_id,
            amount_cents: o.payment_amount_cents,
            reason: o.payment_reason,
        });
        let delivery = o.delivery_status.map(|status| DeliveryInfo {
            status,
            delivery_id: o.delivery_id,
            window_start: o.delivery_window_start,
            window_end: o.delivery_window_end,
            tracking_number: o.tracking_number,
            reason: o.delivery_reason,
        });
        let cancellation = o
            .cancellation_requested_at
            .map(|requested_at| CancellationInfo {
                requested_at,
                note: o.cancellation_note,
            });
        Self {
            id: o.id,
            status: o.status,
            reason: o.status_reason,
            items: view.items.into_iter().map(OrderItem::from).collect(),
            total_cents: o.total_cents,
            shipping_address: Address {
                name: o.shipping_name,
                street: o.shipping_street,
                city: o.shipping_city,
                postal_code: o.shipping_postal_code,
                country: o.shipping_country,
            },
            payment,
            delivery,
            cancellation,
            created_at: o.created_at,
            updated_at: o.updated_at,
        }
    }
}
