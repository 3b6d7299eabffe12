//! Types that can only hold valid values: a placed order is parsed into
//! these once, at the edge, and the rest of the service trusts them.

pub mod facts;
mod new_order;
pub mod order_status;
mod pricing;

pub use facts::{DeliveryState, PaymentState};
pub use new_order::{
    Cents, FieldProblem, MAX_LINES, MAX_QUANTITY, MAX_TOTAL_CENTS, MAX_UNIT_PRICE_CENTS, NewOrder,
    NewOrderLine, Quantity, RawAddress, ShippingAddress, Sku, check_line_count,
};
pub use order_status::{IllegalTransition, OrderStatus, StatusChange};
pub use pricing::{CatalogPrice, PricingError, RequestedLine, price_lines};
