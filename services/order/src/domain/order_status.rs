//! The order state machine, the only place that knows its edges:
//!
//! ```text
//! PENDING -> PAID -> DELIVERY_SCHEDULED
//! PENDING -> REJECTED(reason)
//! PAID | DELIVERY_SCHEDULED -> CANCELLED(reason)   (after the refund)
//! ```
//!
//! Every status change goes through [`OrderStatus::apply`] (see
//! `OrderRow::change_status`, which also makes the `OrderStatusChanged`
//! event that `store::save_saga` writes with the row).

use std::{fmt, str::FromStr};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderStatus {
    Pending,
    Paid,
    DeliveryScheduled,
    Rejected,
    Cancelled,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 5] = [
        OrderStatus::Pending,
        OrderStatus::Paid,
        OrderStatus::DeliveryScheduled,
        OrderStatus::Rejected,
        OrderStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::Paid => "PAID",
            OrderStatus::DeliveryScheduled => "DELIVERY_SCHEDULED",
            OrderStatus::Rejected => "REJECTED",
            OrderStatus::Cancelled => "CANCELLED",
        }
    }

    /// No edge leaves a terminal status.
    pub fn is_terminal(self) -> bool {
        matches!(self, OrderStatus::Rejected | OrderStatus::Cancelled)
    }

    /// The saga is done with it: delivery is scheduled or the order ended.
    /// Only a customer's cancellation moves a settled order on, so a client
    /// waiting for the saga (`Prefer: wait`) is answered at once.
    pub fn is_settled(self) -> bool {
        matches!(self, OrderStatus::DeliveryScheduled) || self.is_terminal()
    }

    /// The customer may ask to cancel only once payment went through and
    /// before the order ends.
    pub fn accepts_cancellation(self) -> bool {
        matches!(self, OrderStatus::Paid | OrderStatus::DeliveryScheduled)
    }

    /// The status after `change`, if the machine has that edge.
    pub fn apply(self, change: &StatusChange) -> Result<OrderStatus, IllegalTransition> {
        use OrderStatus::*;
        let to = change.target();
        match (self, to) {
            (Pending, Paid)
            | (Pending, Rejected)
            | (Paid, DeliveryScheduled)
            | (Paid, Cancelled)
            | (DeliveryScheduled, Cancelled) => Ok(to),
            _ => Err(IllegalTransition { from: self, to }),
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown order status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for OrderStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OrderStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// A requested move; the terminal ones carry their reason, so a REJECTED or
/// CANCELLED order always says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusChange {
    Paid,
    DeliveryScheduled,
    Rejected { reason: String },
    Cancelled { reason: String },
}

impl StatusChange {
    pub fn target(&self) -> OrderStatus {
        match self {
            StatusChange::Paid => OrderStatus::Paid,
            StatusChange::DeliveryScheduled => OrderStatus::DeliveryScheduled,
            StatusChange::Rejected { .. } => OrderStatus::Rejected,
            StatusChange::Cancelled { .. } => OrderStatus::Cancelled,
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            StatusChange::Rejected { reason } | StatusChange::Cancelled { reason } => Some(reason),
            StatusChange::Paid | StatusChange::DeliveryScheduled => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an order cannot go from {from} to {to}")]
pub struct IllegalTransition {
    pub from: OrderStatus,
    pub to: OrderStatus,
}

#[cfg(test)]
mod tests {
    use super::*;
    use OrderStatus::*;

    fn change_to(status: OrderStatus) -> StatusChange {
        match status {
            Paid => StatusChange::Paid,
            DeliveryScheduled => StatusChange::DeliveryScheduled,
            Rejected => StatusChange::Rejected {
                reason: "INSUFFICIENT_FUNDS".into(),
            },
            Cancelled => StatusChange::Cancelled {
                reason: "NO_CAPACITY".into(),
            },
            Pending => unreachable!("nothing moves back to PENDING"),
        }
    }

    #[test]
    fn exactly_the_documented_edges_are_allowed() {
        let allowed = [
            (Pending, Paid),
            (Pending, Rejected),
            (Paid, DeliveryScheduled),
            (Paid, Cancelled),
            (DeliveryScheduled, Cancelled),
        ];
        for from in OrderStatus::ALL {
            for to in OrderStatus::ALL.into_iter().filter(|s| *s != Pending) {
                let result = from.apply(&change_to(to));
                if allowed.contains(&(from, to)) {
                    assert_eq!(result, Ok(to), "{from} -> {to}");
                } else {
                    assert_eq!(
                        result,
                        Err(IllegalTransition { from, to }),
                        "{from} -> {to}"
                    );
                }
            }
        }
    }

    #[test]
    fn terminal_statuses_have_no_way_out() {
        for from in [Rejected, Cancelled] {
            assert!(from.is_terminal());
            assert!(!from.accepts_cancellation());
        }
    }

    #[test]
    fn settled_means_delivery_scheduled_or_terminal() {
        let settled: Vec<_> = OrderStatus::ALL
            .into_iter()
            .filter(|s| s.is_settled())
            .collect();
        assert_eq!(settled, [DeliveryScheduled, Rejected, Cancelled]);
    }

    #[test]
    fn cancellation_is_accepted_only_after_payment_before_the_end() {
        let accepting: Vec<_> = OrderStatus::ALL
            .into_iter()
            .filter(|s| s.accepts_cancellation())
            .collect();
        assert_eq!(accepting, [Paid, DeliveryScheduled]);
    }

    #[test]
    fn status_names_round_trip() {
        for status in OrderStatus::ALL {
            assert_eq!(status.as_str().parse::<OrderStatus>(), Ok(status));
        }
        assert!("SHIPPED".parse::<OrderStatus>().is_err());
    }

    #[test]
    fn terminal_changes_carry_their_reason() {
        assert_eq!(change_to(Rejected).reason(), Some("INSUFFICIENT_FUNDS"));
        assert_eq!(StatusChange::Paid.reason(), None);
    }
}
