//! Values that can only hold what the gateway accepts: parse, don't validate.

mod email;
mod password;
mod user_name;

pub use email::Email;
pub use password::{MAX_CHARS as PASSWORD_MAX_CHARS, Password};
pub use user_name::UserName;

/// Why a value was refused: a stable code and a human message, turned into a
/// `FieldError` by the route that parsed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub code: &'static str,
    pub message: String,
}

impl Invalid {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}
