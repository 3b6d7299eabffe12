//! Order lines priced from the catalog: the customer says what and how many,
//! the catalog says how much. A unit price the customer still sends is only
//! a check: it must be the catalog's, or the order is refused (so an old
//! client learns that the price changed instead of paying another one).

use super::{Cents, FieldProblem, NewOrderLine, Quantity, Sku};

/// A line as the customer asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedLine {
    pub sku: Sku,
    pub quantity: Quantity,
    /// The unit price the customer expects, if they sent one.
    pub unit_price: Option<Cents>,
}

/// What the catalog says about one SKU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogPrice {
    pub price: Cents,
    pub active: bool,
}

/// Why lines could not be priced: `(line index, field, problem)` for every
/// line concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PricingError {
    /// Unknown or inactive SKUs (`items[i].sku`).
    NotOrderable(Vec<(usize, &'static str, FieldProblem)>),
    /// Every SKU can be ordered, but some unit prices the customer sent are
    /// not the catalog's (`items[i].unit_price_cents`).
    PriceChanged(Vec<(usize, &'static str, FieldProblem)>),
}

/// Prices every line from `catalog` (by SKU).
pub fn price_lines(
    requested: &[RequestedLine],
    catalog: impl Fn(&str) -> Option<CatalogPrice>,
) -> Result<Vec<NewOrderLine>, PricingError> {
    let mut not_orderable = Vec::new();
    let mut changed = Vec::new();
    let mut lines = Vec::with_capacity(requested.len());
    for (i, line) in requested.iter().enumerate() {
        match catalog(line.sku.as_str()) {
            None => not_orderable.push((
                i,
                "sku",
                FieldProblem::new("unknown_product", "no product has this SKU"),
            )),
            Some(CatalogPrice { active: false, .. }) => not_orderable.push((
                i,
                "sku",
                FieldProblem::new("inactive_product", "this product cannot be ordered"),
            )),
            Some(CatalogPrice { price, .. }) => {
                if let Some(sent) = line.unit_price
                    && sent != price
                {
                    changed.push((
                        i,
                        "unit_price_cents",
                        FieldProblem::new(
                            "price_changed",
                            format!(
                                "the unit price is {} cents, not {}; send {} or leave \
                                 unit_price_cents out",
                                price.get(),
                                sent.get(),
                                price.get()
                            ),
                        ),
                    ));
                }
                lines.push(NewOrderLine {
                    sku: line.sku.clone(),
                    quantity: line.quantity,
                    unit_price: price,
                });
            }
        }
    }
    if !not_orderable.is_empty() {
        return Err(PricingError::NotOrderable(not_orderable));
    }
    if !changed.is_empty() {
        return Err(PricingError::PriceChanged(changed));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requested(sku: &str, quantity: i64, price: Option<i64>) -> RequestedLine {
        RequestedLine {
            sku: Sku::parse(sku).unwrap(),
            quantity: Quantity::parse(quantity).unwrap(),
            unit_price: price.map(|p| Cents::parse_unit_price(p).unwrap()),
        }
    }

    fn catalog(sku: &str) -> Option<CatalogPrice> {
        let price = |cents| Cents::parse_unit_price(cents).unwrap();
        match sku {
            "BOOK-1" => Some(CatalogPrice {
                price: price(1250),
                active: true,
            }),
            "OLD-1" => Some(CatalogPrice {
                price: price(500),
                active: false,
            }),
            _ => None,
        }
    }

    #[test]
    fn the_catalog_sets_the_price() {
        let lines = price_lines(
            &[
                requested("BOOK-1", 2, None),
                requested("BOOK-1", 1, Some(1250)),
            ],
            catalog,
        )
        .unwrap();
        assert_eq!(lines.len(), 2);
        assert!(lines.iter().all(|line| line.unit_price.get() == 1250));
        assert_eq!(lines[0].quantity.get(), 2);
    }

    #[test]
    fn another_client_price_is_refused_per_line() {
        let error = price_lines(
            &[
                requested("BOOK-1", 1, Some(1250)),
                requested("BOOK-1", 1, Some(0)),
            ],
            catalog,
        )
        .unwrap_err();
        let PricingError::PriceChanged(lines) = error else {
            panic!("{error:?}");
        };
        assert_eq!(lines.len(), 1);
        assert_eq!((lines[0].0, lines[0].1), (1, "unit_price_cents"));
        assert_eq!(lines[0].2.code, "price_changed");
    }

    #[test]
    fn unknown_and_inactive_skus_are_named_before_prices() {
        let error = price_lines(
            &[
                requested("BOOK-1", 1, Some(1)),
                requested("NOPE", 1, None),
                requested("OLD-1", 1, Some(500)),
            ],
            catalog,
        )
        .unwrap_err();
        let PricingError::NotOrderable(lines) = error else {
            panic!("{error:?}");
        };
        let named: Vec<_> = lines.iter().map(|(i, f, p)| (*i, *f, p.code)).collect();
        assert_eq!(
            named,
            [
                (1, "sku", "unknown_product"),
                (2, "sku", "inactive_product")
            ]
        );
    }
}
