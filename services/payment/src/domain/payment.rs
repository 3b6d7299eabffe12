//! States and reasons of a payment, as stored and as published.

/// `CONFIRMED -> REFUNDED`; `FAILED` is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentStatus {
    Confirmed,
    Failed,
    Refunded,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Confirmed => "CONFIRMED",
            PaymentStatus::Failed => "FAILED",
            PaymentStatus::Refunded => "REFUNDED",
        }
    }

    /// The status stored as `s`, if it is one.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Confirmed, Self::Failed, Self::Refunded]
            .into_iter()
            .find(|status| status.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    InsufficientFunds,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::InsufficientFunds => "INSUFFICIENT_FUNDS",
        }
    }
}

/// Why money goes back to the wallet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundReason {
    /// Delivery found no window within the horizon.
    NoCapacity,
    /// The customer cancelled the order.
    CustomerCancelled,
}

impl RefundReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefundReason::NoCapacity => "NO_CAPACITY",
            RefundReason::CustomerCancelled => "CUSTOMER_CANCELLED",
        }
    }
}

/// A line of the wallet's ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    InitialCredit,
    TopUp,
    Charge,
    Refund,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::InitialCredit => "INITIAL_CREDIT",
            EntryKind::TopUp => "TOP_UP",
            EntryKind::Charge => "CHARGE",
            EntryKind::Refund => "REFUND",
        }
    }
}
