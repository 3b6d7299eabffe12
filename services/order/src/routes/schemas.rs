//! Request and response bodies of the orders API (JSON, snake_case).

use chrono::{DateTime, Utc};
use commerce_common::events::Address;
use paperclip::{
    actix::Apiv2Schema,
    v2::{models::DefaultSchemaRaw, schema::Apiv2Schema as Schema},
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::store::{ItemRow, OrderView, ProductRow};

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

/// `POST /api/orders`: SKUs and quantities; the catalog sets the prices.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Apiv2Schema)]
#[serde(default)]
#[openapi(
    example = r#"{"items": [{"sku": "BOOK-1", "quantity": 2}, {"sku": "pen_blue.2", "quantity": 3}],
"shipping_address": {"name": "Ada Lovelace", "street": "12 St James's Square", "city": "London",
"postal_code": "SW1Y 4JH", "country": "GB"}}"#
)]
pub struct PlaceOrderRequest {
    /// 1 to 100 lines.
    pub items: Required<Vec<OrderItemRequest>>,
    pub shipping_address: Required<AddressRequest>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Apiv2Schema)]
#[serde(default)]
pub struct OrderItemRequest {
    /// A SKU of the catalog (`GET /api/products`), e.g. `BOOK-1`.
    #[openapi(example = "BOOK-1")]
    pub sku: Required<String>,
    /// 1 to 10000
    #[openapi(example = "2")]
    pub quantity: Required<i64>,
    /// Optional, and best left out: the catalog sets the price. When sent it
    /// must be the catalog's unit price in cents, otherwise 422
    /// `PRICE_CHANGED` and nothing is stored.
    pub unit_price_cents: Option<i64>,
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

/// A product of the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Apiv2Schema)]
#[openapi(
    example = r#"{"sku": "BOOK-1", "name": "Paperback: Notes on the Analytical Engine",
"price_cents": 1250, "active": true, "updated_at": "2026-12-05T00:00:00Z"}"#
)]
pub struct Product {
    /// e.g. `BOOK-1`
    pub sku: String,
    pub name: String,
    /// What one unit costs now, in cents; an order line keeps the price it
    /// was placed at.
    pub price_cents: i64,
    /// Whether it can be ordered (the list shows active products only).
    pub active: bool,
    pub updated_at: DateTime<Utc>,
}

commerce_common::page_schema! {
    /// A page of the catalog's active products, by SKU.
    ProductPage of Product
}

impl From<ProductRow> for Product {
    fn from(row: ProductRow) -> Self {
        Self {
            sku: row.sku,
            name: row.name,
            price_cents: row.price_cents,
            active: row.active,
            updated_at: row.updated_at,
        }
    }
}

/// An order as its owner sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Apiv2Schema)]
pub struct Order {
    pub id: Uuid,
    /// `PENDING`, `PAID`, `DELIVERY_SCHEDULED`, `REJECTED` or `CANCELLED`.
    pub status: String,
    /// Why the order was rejected or cancelled, e.g. `INSUFFICIENT_FUNDS`,
    /// `NO_CAPACITY`, `DAILY_LIMIT`, `CUSTOMER_CANCELLED`.
    pub reason: Option<String>,
    pub items: Vec<OrderItem>,
    /// Computed by the server: the sum of quantity times the catalog's unit
    /// price at placement time.
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

commerce_common::page_schema! {
    /// A page of the caller's orders, newest first.
    OrderPage of Order
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
        let shipping_address = o.shipping_address();
        let payment = o.facts.payment_status.map(|status| PaymentInfo {
            status,
            payment_id: o.facts.payment_id,
            amount_cents: o.facts.payment_amount_cents,
            reason: o.facts.payment_reason,
        });
        let delivery = o.facts.delivery_status.map(|status| DeliveryInfo {
            status,
            delivery_id: o.facts.delivery_id,
            window_start: o.facts.delivery_window_start,
            window_end: o.facts.delivery_window_end,
            tracking_number: o.facts.tracking_number,
            reason: o.facts.delivery_reason,
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
            shipping_address,
            payment,
            delivery,
            cancellation,
            created_at: o.created_at,
            updated_at: o.updated_at,
        }
    }
}
