//! Types that can only hold valid values.

mod status;
mod tracking;
mod windows;

pub use status::{DeliveryStatus, Reason};
pub use tracking::TrackingNumber;
pub use windows::{Window, WindowPlan};
