//! What the other services told the order: the payment's and the
//! delivery's last word, stored next to the order's status.

use std::str::FromStr;

macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!("unknown {} {other:?}", stringify!($name))),
                }
            }
        }
    };
}

named_enum!(
    /// The payment's state for this order.
    PaymentState {
        Confirmed => "CONFIRMED",
        Failed => "FAILED",
        Refunded => "REFUNDED",
    }
);

named_enum!(
    /// The delivery's state for this order.
    DeliveryState {
        Scheduled => "SCHEDULED",
        Failed => "FAILED",
        Cancelled => "CANCELLED",
    }
);
