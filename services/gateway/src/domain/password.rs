//! The password policy: 10 to 128 characters, no control characters (none
//! can be typed; a NUL would only ever be an attack). bcrypt only reads the first 72
//! bytes of its input, so the hasher never feeds it the password directly
//! (see `auth::password`); the upper bound only caps the work per request.

use super::Invalid;

pub const MIN_CHARS: usize = 10;
pub const MAX_CHARS: usize = 128;

/// A password that meets the policy. Never printed.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub fn parse(raw: String) -> Result<Self, Invalid> {
        let chars = raw.chars().count();
        if chars < MIN_CHARS {
            return Err(Invalid::new(
                "too_short",
                format!("password must have at least {MIN_CHARS} characters"),
            ));
        }
        if chars > MAX_CHARS {
            return Err(Invalid::new(
                "too_long",
                format!("password must have at most {MAX_CHARS} characters"),
            ));
        }
        if raw.chars().any(char::is_control) {
            return Err(Invalid::new(
                "invalid_characters",
                "password must not contain control characters",
            ));
        }
        if raw.trim().is_empty() {
            return Err(Invalid::new(
                "blank",
                "password must not be only whitespace",
            ));
        }
        Ok(Self(raw))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enforces_length_in_characters() {
        assert!(Password::parse("123456789".into()).is_err());
        assert!(Password::parse("1234567890".into()).is_ok());
        assert!(Password::parse("é".repeat(128)).is_ok());
        assert!(Password::parse("x".repeat(129)).is_err());
        assert!(Password::parse(" ".repeat(12)).is_err());
        assert!(Password::parse("correct\u{0}horse".into()).is_err());
    }
}
