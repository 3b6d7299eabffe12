//! `POST /api/register` and `POST /api/login`: where a user is created and
//! where credentials become a token.

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, ResponseError, http::StatusCode};
use commerce_common::{
    db::DbPool,
    events::{Event, UserRegistered},
    http::{ApiError, FieldError},
    outbox,
};
use diesel::{
    prelude::*,
    result::{DatabaseErrorKind, Error as DieselError},
};
use diesel_async::{AsyncConnection, RunQueryDsl};
use paperclip::actix::{
    Apiv2Schema, CreatedJson, api_v2_errors, api_v2_errors_overlay, api_v2_operation, web,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use crate::{
    auth::{rate_limit::Endpoint, throttle},
    domain::{Email, Invalid, Password, UserName},
    request_id,
    schema::users,
};

#[derive(Debug, Deserialize, Apiv2Schema)]
pub struct RegisterRequest {
    /// Stored lowercased; must be unique.
    pub email: String,
    /// 10 to 128 characters.
    pub password: String,
    /// Display name, 1 to 100 characters.
    pub name: String,
}

#[derive(Debug, Deserialize, Apiv2Schema)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Apiv2Schema)]
pub struct UserBody {
    pub id: Uuid,
    pub email: String,
    pub name: String,
}

/// A bearer token for `Authorization: Bearer <token>`.
#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct TokenResponse {
    pub token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the token expires.
    pub expires_in: u64,
    pub user: UserBody,
}

/// Errors of the credential endpoints.
#[api_v2_errors(
    code = 401,
    description = "Wrong email or password (the same answer for both)",
    code = 409,
    description = "EMAIL_TAKEN: the email is already registered",
    code = 422,
    description = "VALIDATION_FAILED with the offending fields",
    code = 429,
    description = "TOO_MANY_ATTEMPTS (too many failed logins) or RATE_LIMITED (too many requests); see Retry-After",
    code = 503,
    description = "The database is unavailable"
)]
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid fields")]
    Validation(Vec<FieldError>),
    #[error("email already registered")]
    EmailTaken,
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("too many failed logins")]
    Throttled(Duration),
    #[error("too many requests")]
    RateLimited(Duration),
    #[error("{0}")]
    Api(ApiError),
}

impl AuthError {
    fn api(&self) -> ApiError {
        match self {
            Self::Validation(fields) => ApiError::validation(fields.clone()),
            Self::EmailTaken => {
                ApiError::conflict("EMAIL_TAKEN", "an account with this email already exists")
            }
            Self::InvalidCredentials => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "INVALID_CREDENTIALS",
                "invalid email or password",
            ),
            Self::Throttled(_) => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TOO_MANY_ATTEMPTS",
                "too many failed logins, retry later",
            ),
            Self::RateLimited(_) => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMITED",
                "too many requests, retry later",
            ),
            Self::Api(api) => api.clone(),
        }
    }
}

impl ResponseError for AuthError {
    fn status_code(&self) -> StatusCode {
        self.api().status
    }

    fn error_response(&self) -> HttpResponse {
        let api = self.api();
        let mut response = HttpResponse::build(api.status);
        if let Self::Throttled(wait) | Self::RateLimited(wait) = self {
            // Round up: a client that waits exactly this long gets through.
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response.insert_header(("Retry-After", seconds.max(1).to_string()));
        }
        response.json(&api.body)
    }
}

impl From<ApiError> for AuthError {
    fn from(error: ApiError) -> Self {
        Self::Api(error)
    }
}

impl From<DieselError> for AuthError {
    fn from(error: DieselError) -> Self {
        Self::Api(error.into())
    }
}

impl From<crate::auth::password::HashError> for AuthError {
    fn from(error: crate::auth::password::HashError) -> Self {
        Self::Api(ApiError::internal(error))
    }
}

fn field(name: &str, invalid: Invalid) -> FieldError {
    FieldError {
        field: name.into(),
        code: invalid.code.into(),
        message: invalid.message,
    }
}

/// The errors registration can answer with (documentation only).
#[api_v2_errors_overlay(401)]
#[derive(Debug)]
pub struct RegisterError(AuthError);

/// The errors login can answer with (documentation only).
#[api_v2_errors_overlay(409)]
#[derive(Debug)]
pub struct LoginError(AuthError);

/// Create an account; answers with a token for it.
#[api_v2_operation(operation_id = "register", tags(Auth))]
pub async fn register(
    req: HttpRequest,
    state: web::Data<AppState>,
    pool: web::Data<DbPool>,
    body: web::Json<RegisterRequest>,
) -> Result<CreatedJson<TokenResponse>, RegisterError> {
    register_user(&req, &state, &pool, body.into_inner())
        .await
        .map(CreatedJson)
        .map_err(RegisterError)
}

/// Exchange email and password for a token.
#[api_v2_operation(operation_id = "login", tags(Auth))]
pub async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    pool: web::Data<DbPool>,
    body: web::Json<LoginRequest>,
) -> Result<web::Json<TokenResponse>, LoginError> {
    check_credentials(&req, &state, &pool, body.into_inner())
        .await
        .map(web::Json)
        .map_err(LoginError)
}

async fn register_user(
    req: &HttpRequest,
    state: &AppState,
    pool: &DbPool,
    body: RegisterRequest,
) -> Result<TokenResponse, AuthError> {
    let email = Email::parse(&body.email).map_err(|e| field("email", e));
    let password = Password::parse(body.password).map_err(|e| field("password", e));
    let name = UserName::parse(&body.name).map_err(|e| field("name", e));
    let (email, password, name) = match (email, password, name) {
        (Ok(email), Ok(password), Ok(name)) => (email, password, name),
        (email, password, name) => {
            state.metrics.registration("invalid");
            let fields = [email.err(), password.err(), name.err()]
                .into_iter()
                .flatten();
            return Err(AuthError::Validation(fields.collect()));
        }
    };

    let address = state.clients.of(req);
    if let Err(wait) = state.rate_limits.take(Endpoint::Register, address) {
        state.metrics.registration("rate_limited");
        return Err(AuthError::RateLimited(wait));
    }
    // Hashed before the insert, also when the email turns out to be taken:
    // 409 costs the same time as 201.
    let password_hash = state.hasher.hash(&password).await?;
    let user = UserBody {
        id: Uuid::now_v7(),
        email: email.as_str().to_owned(),
        name: name.as_str().to_owned(),
    };
    let trace_id = request_id::of(req);
    let mut conn = pool.get().await.map_err(ApiError::from)?;
    let inserted = conn
        .transaction(async |conn| {
            diesel::insert_into(users::table)
                .values((
                    users::id.eq(user.id),
                    users::email.eq(&user.email),
                    users::name.eq(&user.name),
                    users::password_hash.eq(&password_hash),
                ))
                .execute(conn)
                .await?;
            let event = Event::UserRegistered(UserRegistered {
                user_id: user.id,
                email: user.email.clone(),
                name: user.name.clone(),
            });
            outbox::enqueue(conn, &event, &trace_id).await?;
            Ok::<_, DieselError>(())
        })
        .await;
    match inserted {
        Ok(()) => {}
        Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info))
            if info.constraint_name() == Some("users_email_key") =>
        {
            state.metrics.registration("email_taken");
            return Err(AuthError::EmailTaken);
        }
        Err(other) => return Err(other.into()),
    }
    state.metrics.registration("ok");
    tracing::info!(user_id = %user.id, "user registered");
    token_response(state, user)
}

async fn check_credentials(
    req: &HttpRequest,
    state: &AppState,
    pool: &DbPool,
    body: LoginRequest,
) -> Result<TokenResponse, AuthError> {
    let email_key = throttle::email_key(&body.email);
    let address = state.clients.of(req);
    // Reserved before anything else, atomically: concurrent guesses cannot
    // all pass; the reservation counts as a failure until it succeeds.
    let attempt = match state.throttle.reserve(&email_key, address) {
        Ok(attempt) => attempt,
        Err(wait) => {
            state.metrics.login("throttled");
            return Err(AuthError::Throttled(wait));
        }
    };
    if let Err(wait) = state.rate_limits.take(Endpoint::Login, address) {
        state.metrics.login("rate_limited");
        return Err(AuthError::RateLimited(wait));
    }
    if !attempt.delay.is_zero() {
        tokio::time::sleep(attempt.delay).await;
    }

    // Only a valid email can belong to an account (registration parses it);
    // anything else (a NUL, which PostgreSQL refuses, a huge string) is
    // answered like an unknown user without asking the database.
    let lookup = Email::parse(&body.email)
        .ok()
        .filter(|_| body.password.chars().count() <= crate::domain::PASSWORD_MAX_CHARS);
    let user = match lookup {
        None => None,
        Some(email) => {
            let mut conn = pool.get().await.map_err(ApiError::from)?;
            users::table
                .filter(users::email.eq(email.as_str()))
                .select((users::id, users::email, users::name, users::password_hash))
                .first::<(Uuid, String, String, String)>(&mut conn)
                .await
                .optional()?
        }
    };
    let (user, stored_hash) = match user {
        Some((id, email, name, hash)) => (Some(UserBody { id, email, name }), Some(hash)),
        None => (None, None),
    };
    // Unknown users are verified against a dummy hash: same work, same answer.
    let valid = state.hasher.verify(&body.password, stored_hash).await?;
    match user {
        Some(user) if valid => {
            attempt.succeeded();
            state.metrics.login("ok");
            token_response(state, user)
        }
        _ => {
            attempt.failed();
            state.metrics.login("invalid");
            Err(AuthError::InvalidCredentials)
        }
    }
}

fn token_response(state: &AppState, user: UserBody) -> Result<TokenResponse, AuthError> {
    let issued = state.issuer.issue(user.id).map_err(ApiError::internal)?;
    Ok(TokenResponse {
        token: issued.token,
        token_type: "Bearer".into(),
        expires_in: issued.expires_in,
        user,
    })
}
