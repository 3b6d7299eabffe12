//! `/api/products`: the catalog the order service prices orders from.
//! Public: no token needed.

use commerce_common::{
    db::DbPool,
    http::{ApiError, PageQuery},
};
use paperclip::actix::{api_v2_operation, web};

use super::schemas::{Product, ProductPage};
use crate::{domain::Sku, store};

/// List the products
///
/// The active products of the catalog by SKU, paged. Public: no token
/// needed. Order lines name a product by `sku`; the order is priced with
/// `price_cents` at placement time.
#[api_v2_operation(tags(Products))]
pub async fn list_products(
    query: web::Query<PageQuery>,
    pool: web::Data<DbPool>,
) -> Result<web::Json<ProductPage>, ApiError> {
    let requested = query.page()?;
    let mut conn = pool.get().await?;
    let (rows, total) =
        store::list_products(&mut conn, requested.page, requested.page_size).await?;
    let items = rows.into_iter().map(Product::from).collect();
    Ok(web::Json(ProductPage::new(requested, items, total)))
}

/// Get one product
///
/// Inactive products are shown too (`active: false`: they cannot be
/// ordered); an unknown SKU answers 404. Public: no token needed.
#[api_v2_operation(tags(Products))]
pub async fn get_product(
    path: web::Path<String>,
    pool: web::Data<DbPool>,
) -> Result<web::Json<Product>, ApiError> {
    // A SKU that could not be stored is not looked up (no NUL or 1 MB text
    // reaches PostgreSQL).
    let sku = Sku::parse(&path).map_err(|_| ApiError::not_found("product"))?;
    let mut conn = pool.get().await?;
    let row = store::find_product(&mut conn, sku.as_str())
        .await?
        .ok_or_else(|| ApiError::not_found("product"))?;
    Ok(web::Json(row.into()))
}
