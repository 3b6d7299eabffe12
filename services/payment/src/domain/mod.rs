//! Types that can only hold valid values.

mod money;
mod payment;

pub use money::{ChargeAmount, TopUpAmount};
pub use payment::{EntryKind, FailureReason, PaymentStatus, RefundReason};
