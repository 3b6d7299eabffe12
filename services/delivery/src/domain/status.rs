//! States and reasons of a delivery, as stored and as published.

/// `SCHEDULED -> CANCELLED`; `FAILED` is final; `CANCELLED` may also be the
/// first state (cancelled before the payment was confirmed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    Scheduled,
    Failed,
    Cancelled,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Scheduled => "SCHEDULED",
            DeliveryStatus::Failed => "FAILED",
            DeliveryStatus::Cancelled => "CANCELLED",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No window with free capacity within the horizon.
    NoCapacity,
    /// The customer booked `quotas.bookings_per_customer_per_day` windows
    /// today already.
    DailyLimit,
    CustomerCancelled,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoCapacity => "NO_CAPACITY",
            Reason::DailyLimit => "DAILY_LIMIT",
            Reason::CustomerCancelled => "CUSTOMER_CANCELLED",
        }
    }
}
