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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundReason {
    /// The customer cancelled the order.
    CustomerCancelled,
    /// Delivery could not book the order; its `DeliveryFailed` reason
    /// (`NO_CAPACITY`, `DAILY_LIMIT`, ...) is the refund's, so the order
    /// ends CANCELLED with the real cause.
    DeliveryFailed(String),
}

/// The refund reason of a `DeliveryFailed` that carries none a client could
/// show (empty, or not an upper-case code).
pub const DELIVERY_FAILED: &str = "DELIVERY_FAILED";

impl RefundReason {
    /// The refund for a failed delivery, with the delivery's reason when it
    /// is a code (`A-Z`, `0-9`, `_`, at most 64 characters): the money goes
    /// back whatever the reason says.
    pub fn delivery_failed(reason: &str) -> Self {
        let is_code = (1..=64).contains(&reason.len())
            && reason
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        RefundReason::DeliveryFailed(if is_code { reason } else { DELIVERY_FAILED }.to_owned())
    }

    pub fn as_str(&self) -> &str {
        match self {
            RefundReason::CustomerCancelled => "CUSTOMER_CANCELLED",
            RefundReason::DeliveryFailed(reason) => reason,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_failure_refunds_with_its_reason_when_it_is_a_code() {
        for reason in ["NO_CAPACITY", "DAILY_LIMIT", "X9"] {
            assert_eq!(RefundReason::delivery_failed(reason).as_str(), reason);
        }
        for garbage in ["", "no capacity", "NO-CAPACITY", &"A".repeat(65)] {
            assert_eq!(
                RefundReason::delivery_failed(garbage).as_str(),
                DELIVERY_FAILED
            );
        }
    }
}
