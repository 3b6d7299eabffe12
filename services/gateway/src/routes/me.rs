//! `GET /api/me`: the account behind the bearer token.

use commerce_common::{auth::AuthUser, db::DbPool, http::ApiError};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use paperclip::actix::{api_v2_operation, web};
use uuid::Uuid;

use super::auth::UserBody;
use crate::schema::users;

/// The current user.
#[api_v2_operation(operation_id = "me", tags(Auth))]
pub async fn me(user: AuthUser, pool: web::Data<DbPool>) -> Result<web::Json<UserBody>, ApiError> {
    let mut conn = pool.get().await?;
    let (id, email, name) = users::table
        .find(user.user_id)
        .select((users::id, users::email, users::name))
        .first::<(Uuid, String, String)>(&mut conn)
        .await
        .optional()?
        .ok_or_else(|| ApiError::not_found("user"))?;
    Ok(web::Json(UserBody { id, email, name }))
}
