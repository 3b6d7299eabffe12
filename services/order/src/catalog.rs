//! The catalog's prices as placement reads them, kept in memory once read.
//! Safe with several instances and with products that change: the placing
//! statement checks every line's price and active flag against the table
//! again and stores nothing when one differs (the placement then prices
//! again from the table, [`Fresh::Table`]), and a refusal is never
//! answered from memory (an unknown, inactive or differently priced product
//! is read again first). Saves the placement's catalog read: a statement
//! and a round trip per order.

use std::{
    collections::HashMap,
    sync::{PoisonError, RwLock},
};

use diesel::result::Error as DieselError;
use diesel_async::AsyncPgConnection;

use crate::{config::QuotasConfig, store};

/// What placing an order keeps between requests: the customers' quotas and
/// the catalog read so far.
#[derive(Debug)]
pub struct Placement {
    pub quotas: QuotasConfig,
    pub catalog: Catalog,
}

impl Placement {
    pub fn new(quotas: QuotasConfig) -> Self {
        Self {
            quotas,
            catalog: Catalog::default(),
        }
    }
}

/// A product's price (cents) and active flag, as last read.
type Entry = (i64, bool);

/// The products placement has read, by SKU; only SKUs that exist are kept
/// (so memory is bounded by the catalog, whatever clients send).
#[derive(Debug, Default)]
pub struct Catalog {
    known: RwLock<HashMap<String, Entry>>,
}

/// Where [`Catalog::prices`] may answer from, and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fresh {
    /// Memory, when it knows every SKU.
    Memory,
    /// The table (what memory had was refused or found stale).
    Table,
}

impl Catalog {
    /// The price and active flag of each of `skus` that exists (in no
    /// particular order), and where they came from: memory when `fresh`
    /// allows and it knows all of them, else the table (one statement),
    /// which memory then keeps.
    pub async fn prices(
        &self,
        conn: &mut AsyncPgConnection,
        skus: &[&str],
        fresh: Fresh,
    ) -> Result<(Vec<(String, i64, bool)>, Fresh), DieselError> {
        if fresh == Fresh::Memory
            && let Some(known) = self.remembered(skus)
        {
            return Ok((known, Fresh::Memory));
        }
        let read = store::catalog_prices(conn, skus).await?;
        let mut known = self.known.write().unwrap_or_else(PoisonError::into_inner);
        for (sku, price, active) in &read {
            known.insert(sku.clone(), (*price, *active));
        }
        Ok((read, Fresh::Table))
    }

    /// Every one of `skus` from memory, or `None` when one is missing.
    fn remembered(&self, skus: &[&str]) -> Option<Vec<(String, i64, bool)>> {
        let known = self.known.read().unwrap_or_else(PoisonError::into_inner);
        skus.iter()
            .map(|&sku| {
                known
                    .get(sku)
                    .map(|&(price, active)| (sku.to_owned(), price, active))
            })
            .collect()
    }
}
