//! `/api/products`: the catalog the order service prices orders from.
//! Public: no token needed.

use commerce_common::{
    db::DbPool,
    http::{ApiError, Page},
};
use paperclip::actix::{api_v2_operation, web};

use super::schemas::{Product, ProductListQuery, ProductPage};
use crate::{domain::Sku, store};

/// List the products
///
/// The active products of the catalog by SKU, paged. Public: no token
/// needed. Order lines name a product by `sku`; the order is priced with
/// `price_cents` at placement time.
#[api_v2_operation(tags(Products))]
pub async fn list_products(
    query: web::Query<ProductListQuery>,
    pool: web::Data<DbPool>,
) -> Result<web::Json<ProductPage>, ApiError> {
    let requested = Page::parse(query.page, query.page_size)?;
    let mut conn = pool.get().await?;
    let (rows, total_items) =
        store::list_products(&mut conn, requested.page, requested.page_size).await?;
    Ok(web::Json(ProductPage {
        items: rows.into_iter().map(Product::from).collect(),
        page: requested.page,
        page_size: requested.page_size,
        total_items,
        total_pages: requested.total_pages(total_items),
    }))
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
