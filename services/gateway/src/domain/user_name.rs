//! A display name: trimmed, 1 to 100 characters, no control characters.

use super::Invalid;

const MAX_CHARS: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(String);

impl UserName {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let name = raw.trim();
        if name.is_empty() {
            return Err(Invalid::new("required", "name is required"));
        }
        if name.chars().count() > MAX_CHARS {
            return Err(Invalid::new(
                "too_long",
                format!("name must have at most {MAX_CHARS} characters"),
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(Invalid::new(
                "invalid_characters",
                "name must not contain control characters",
            ));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_and_bounds() {
        assert_eq!(UserName::parse("  Ada ").unwrap().as_str(), "Ada");
        assert!(UserName::parse("   ").is_err());
        assert!(UserName::parse(&"n".repeat(101)).is_err());
        assert!(UserName::parse("a\u{0}b").is_err());
    }
}
