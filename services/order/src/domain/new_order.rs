//! A new order as the customer sent it, parsed: SKUs, quantities and prices
//! (the catalog's, see `pricing`) within sane bounds, a complete shipping address, and a total computed
//! with checked arithmetic.

use std::fmt;

/// Most lines one order may have.
pub const MAX_LINES: usize = 100;
/// Most units of one SKU on one line.
pub const MAX_QUANTITY: i64 = 10_000;
/// Highest unit price: ten million currency units.
pub const MAX_UNIT_PRICE_CENTS: i64 = 1_000_000_000;
/// Highest order total: one billion currency units.
pub const MAX_TOTAL_CENTS: i64 = 100_000_000_000;

const MAX_SKU_CHARS: usize = 64;

/// Why one field was refused: a stable code and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    pub code: &'static str,
    pub message: String,
}

impl FieldProblem {
    pub(crate) fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn required() -> Self {
        Self::new("required", "is required")
    }
}

/// A stock keeping unit: 1 to 64 characters of `A-Z a-z 0-9 - _ .`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sku(String);

impl Sku {
    pub fn parse(raw: &str) -> Result<Self, FieldProblem> {
        let sku = raw.trim();
        if sku.is_empty() {
            return Err(FieldProblem::new("required", "must not be blank"));
        }
        if sku.chars().count() > MAX_SKU_CHARS {
            return Err(FieldProblem::new(
                "too_long",
                format!("must be at most {MAX_SKU_CHARS} characters"),
            ));
        }
        if !sku
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(FieldProblem::new(
                "invalid_characters",
                "may contain only letters, digits, '-', '_' and '.'",
            ));
        }
        Ok(Self(sku.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Units of one SKU on one line: 1 to [`MAX_QUANTITY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity(i32);

impl Quantity {
    pub fn parse(raw: i64) -> Result<Self, FieldProblem> {
        if raw <= 0 {
            return Err(FieldProblem::new("must_be_positive", "must be at least 1"));
        }
        if raw > MAX_QUANTITY {
            return Err(FieldProblem::new(
                "too_large",
                format!("must be at most {MAX_QUANTITY}"),
            ));
        }
        Ok(Self(raw as i32))
    }

    pub fn get(self) -> i32 {
        self.0
    }
}

/// An amount of money in minor units (cents), never negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Cents(i64);

impl Cents {
    pub const ZERO: Cents = Cents(0);

    /// A unit price: 0 (free items exist) to [`MAX_UNIT_PRICE_CENTS`].
    pub fn parse_unit_price(raw: i64) -> Result<Self, FieldProblem> {
        if raw < 0 {
            return Err(FieldProblem::new(
                "must_not_be_negative",
                "must be 0 or more",
            ));
        }
        if raw > MAX_UNIT_PRICE_CENTS {
            return Err(FieldProblem::new(
                "too_large",
                format!("must be at most {MAX_UNIT_PRICE_CENTS}"),
            ));
        }
        Ok(Self(raw))
    }

    pub fn get(self) -> i64 {
        self.0
    }

    pub fn checked_add(self, other: Cents) -> Option<Cents> {
        self.0.checked_add(other.0).map(Cents)
    }

    pub fn checked_mul(self, quantity: Quantity) -> Option<Cents> {
        self.0.checked_mul(i64::from(quantity.0)).map(Cents)
    }
}

impl fmt::Display for Cents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} cents", self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrderLine {
    pub sku: Sku,
    pub quantity: Quantity,
    pub unit_price: Cents,
}

impl NewOrderLine {
    pub fn subtotal(&self) -> Option<Cents> {
        self.unit_price.checked_mul(self.quantity)
    }
}

/// Where the parcel goes. Every field is trimmed, non-blank, bounded and
/// free of control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShippingAddress {
    pub name: String,
    pub street: String,
    pub city: String,
    pub postal_code: String,
    pub country: String,
}

/// Raw address fields, in the order they are checked.
pub struct RawAddress<'a> {
    pub name: Option<&'a str>,
    pub street: Option<&'a str>,
    pub city: Option<&'a str>,
    pub postal_code: Option<&'a str>,
    pub country: Option<&'a str>,
}

impl ShippingAddress {
    /// Parses every field; returns all problems by field name.
    pub fn parse(raw: RawAddress<'_>) -> Result<Self, Vec<(&'static str, FieldProblem)>> {
        let mut problems = Vec::new();
        let mut field =
            |name: &'static str, value: Option<&str>, max: usize| match text_field(value, max) {
                Ok(v) => v,
                Err(p) => {
                    problems.push((name, p));
                    String::new()
                }
            };
        let address = ShippingAddress {
            name: field("name", raw.name, 200),
            street: field("street", raw.street, 200),
            city: field("city", raw.city, 100),
            postal_code: field("postal_code", raw.postal_code, 16),
            country: field("country", raw.country, 64),
        };
        if problems.is_empty() {
            Ok(address)
        } else {
            Err(problems)
        }
    }
}

fn text_field(value: Option<&str>, max_chars: usize) -> Result<String, FieldProblem> {
    let value = value.map(str::trim).unwrap_or_default();
    if value.is_empty() {
        return Err(FieldProblem::required());
    }
    if value.chars().count() > max_chars {
        return Err(FieldProblem::new(
            "too_long",
            format!("must be at most {max_chars} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldProblem::new(
            "invalid_characters",
            "must not contain control characters",
        ));
    }
    Ok(value.to_owned())
}

/// A complete, valid order ready to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    lines: Vec<NewOrderLine>,
    address: ShippingAddress,
    total: Cents,
}

impl NewOrder {
    /// Checks the line count and computes the total; per-line and address
    /// problems are the caller's to collect before.
    pub fn new(lines: Vec<NewOrderLine>, address: ShippingAddress) -> Result<Self, FieldProblem> {
        check_line_count(lines.len())?;
        let total = lines
            .iter()
            .try_fold(Cents::ZERO, |sum, line| sum.checked_add(line.subtotal()?))
            .filter(|total| total.get() <= MAX_TOTAL_CENTS)
            .ok_or_else(|| {
                FieldProblem::new(
                    "total_too_large",
                    format!("the order total must be at most {MAX_TOTAL_CENTS} cents"),
                )
            })?;
        // Free items exist, free orders do not: a 0-cent charge always
        // succeeds, so free orders could book every delivery window.
        if total == Cents::ZERO {
            return Err(FieldProblem::new(
                "zero_total",
                "the order total must be more than 0 cents",
            ));
        }
        Ok(Self {
            lines,
            address,
            total,
        })
    }

    pub fn lines(&self) -> &[NewOrderLine] {
        &self.lines
    }

    pub fn address(&self) -> &ShippingAddress {
        &self.address
    }

    pub fn total(&self) -> Cents {
        self.total
    }
}

/// An order has 1 to [`MAX_LINES`] lines.
pub fn check_line_count(count: usize) -> Result<(), FieldProblem> {
    if count == 0 {
        return Err(FieldProblem::new(
            "empty",
            "an order needs at least one item",
        ));
    }
    if count > MAX_LINES {
        return Err(FieldProblem::new(
            "too_many",
            format!("an order has at most {MAX_LINES} items"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(quantity: i64, price: i64) -> NewOrderLine {
        NewOrderLine {
            sku: Sku::parse("SKU-1").unwrap(),
            quantity: Quantity::parse(quantity).unwrap(),
            unit_price: Cents::parse_unit_price(price).unwrap(),
        }
    }

    fn address() -> ShippingAddress {
        ShippingAddress::parse(RawAddress {
            name: Some("Ada"),
            street: Some("1 Main St"),
            city: Some("Springfield"),
            postal_code: Some("12345"),
            country: Some("US"),
        })
        .unwrap()
    }

    #[test]
    fn sku_rules() {
        assert_eq!(Sku::parse("  abc-1.2_x ").unwrap().as_str(), "abc-1.2_x");
        assert_eq!(Sku::parse(" ").unwrap_err().code, "required");
        assert_eq!(Sku::parse(&"a".repeat(65)).unwrap_err().code, "too_long");
        assert_eq!(Sku::parse("a b").unwrap_err().code, "invalid_characters");
    }

    #[test]
    fn quantity_bounds() {
        assert_eq!(Quantity::parse(0).unwrap_err().code, "must_be_positive");
        assert_eq!(Quantity::parse(-3).unwrap_err().code, "must_be_positive");
        assert_eq!(Quantity::parse(10_001).unwrap_err().code, "too_large");
        assert_eq!(Quantity::parse(i64::MAX).unwrap_err().code, "too_large");
        assert_eq!(Quantity::parse(10_000).unwrap().get(), 10_000);
    }

    #[test]
    fn price_bounds() {
        assert_eq!(
            Cents::parse_unit_price(-1).unwrap_err().code,
            "must_not_be_negative"
        );
        assert_eq!(
            Cents::parse_unit_price(1_000_000_001).unwrap_err().code,
            "too_large"
        );
        assert_eq!(Cents::parse_unit_price(0).unwrap(), Cents::ZERO);
    }

    #[test]
    fn total_is_the_sum_of_lines() {
        let order = NewOrder::new(vec![line(2, 250), line(3, 1_99)], address()).unwrap();
        assert_eq!(order.total().get(), 2 * 250 + 3 * 199);
    }

    #[test]
    fn total_over_the_limit_is_refused() {
        let lines = vec![line(10_000, 1_000_000_000), line(10_000, 1_000_000_000)];
        assert_eq!(
            NewOrder::new(lines, address()).unwrap_err().code,
            "total_too_large"
        );
    }

    #[test]
    fn free_items_yes_free_orders_no() {
        let order = NewOrder::new(vec![line(1, 0), line(1, 5)], address()).unwrap();
        assert_eq!(order.total().get(), 5);
        assert_eq!(
            NewOrder::new(vec![line(2, 0)], address()).unwrap_err().code,
            "zero_total"
        );
    }

    #[test]
    fn line_count_bounds() {
        assert_eq!(NewOrder::new(vec![], address()).unwrap_err().code, "empty");
        let many = (0..=MAX_LINES).map(|_| line(1, 1)).collect();
        assert_eq!(NewOrder::new(many, address()).unwrap_err().code, "too_many");
    }

    #[test]
    fn address_reports_every_bad_field() {
        let problems = ShippingAddress::parse(RawAddress {
            name: None,
            street: Some("   "),
            city: Some("x\u{7}y"),
            postal_code: Some(&"9".repeat(17)),
            country: Some("DE"),
        })
        .unwrap_err();
        let codes: Vec<_> = problems.iter().map(|(f, p)| (*f, p.code)).collect();
        assert_eq!(
            codes,
            [
                ("name", "required"),
                ("street", "required"),
                ("city", "invalid_characters"),
                ("postal_code", "too_long")
            ]
        );
    }
}
