//! Amounts of money in integer cents.

use commerce_common::http::FieldError;

/// What an order costs: zero or more cents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChargeAmount(i64);

impl ChargeAmount {
    pub fn parse(cents: i64) -> Result<Self, String> {
        if cents < 0 {
            return Err(format!("order total {cents} is negative"));
        }
        Ok(Self(cents))
    }

    pub fn cents(self) -> i64 {
        self.0
    }
}

/// A top-up: at least one cent, at most the configured maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopUpAmount(i64);

impl TopUpAmount {
    pub fn parse(cents: Option<i64>, max_cents: i64) -> Result<Self, FieldError> {
        let error = |code: &str, message: String| FieldError {
            field: "amount_cents".into(),
            code: code.into(),
            message,
        };
        match cents {
            None => Err(error("required", "is required".into())),
            Some(c) if c <= 0 => Err(error("must_be_positive", "must be at least 1".into())),
            Some(c) if c > max_cents => {
                Err(error("too_large", format!("must be at most {max_cents}")))
            }
            Some(c) => Ok(Self(c)),
        }
    }

    pub fn cents(self) -> i64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_up_must_be_positive_and_bounded() {
        assert_eq!(TopUpAmount::parse(Some(1), 100).unwrap().cents(), 1);
        assert_eq!(TopUpAmount::parse(Some(100), 100).unwrap().cents(), 100);
        assert_eq!(TopUpAmount::parse(None, 100).unwrap_err().code, "required");
        assert_eq!(
            TopUpAmount::parse(Some(0), 100).unwrap_err().code,
            "must_be_positive"
        );
        assert_eq!(
            TopUpAmount::parse(Some(-5), 100).unwrap_err().code,
            "must_be_positive"
        );
        assert_eq!(
            TopUpAmount::parse(Some(101), 100).unwrap_err().code,
            "too_large"
        );
        assert_eq!(
            TopUpAmount::parse(Some(i64::MAX), 100).unwrap_err().field,
            "amount_cents"
        );
    }

    #[test]
    fn charge_may_be_zero_but_not_negative() {
        assert_eq!(ChargeAmount::parse(0).unwrap().cents(), 0);
        assert!(ChargeAmount::parse(-1).is_err());
    }
}
