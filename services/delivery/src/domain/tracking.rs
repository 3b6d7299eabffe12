//! Tracking numbers handed to customers.

use uuid::Uuid;

/// `TRK-` followed by 12 upper-case hexadecimal digits, random.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackingNumber(String);

impl TrackingNumber {
    pub fn generate() -> Self {
        let random = Uuid::new_v4().simple().to_string();
        Self(format!("TRK-{}", random[..12].to_ascii_uppercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracking_numbers_look_alike_and_differ() {
        let a = TrackingNumber::generate();
        let b = TrackingNumber::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 16);
        assert!(a.as_str().starts_with("TRK-"));
        assert!(
            a.as_str()[4..]
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())
        );
    }
}
