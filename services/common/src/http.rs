//! HTTP conventions shared by every service: the one error type mapped to a
//! status and a stable JSON code, JSON extractor errors in the same shape,
//! the `/health` (alive) and `/ready` probes, and the page parameters of
//! list endpoints.

use std::{fmt, time::Duration};

use actix_web::{HttpRequest, HttpResponse, ResponseError, http::StatusCode, web};
use paperclip::actix::{Apiv2Schema, api_v2_errors};
use serde::{Deserialize, Serialize};

/// A field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Apiv2Schema)]
pub struct FieldError {
    /// Path of the field, e.g. `items[2].quantity`.
    pub field: String,
    /// Stable reason, e.g. `must_be_positive`.
    pub code: String,
    pub message: String,
}

/// The JSON body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Apiv2Schema)]
pub struct ErrorBody {
    /// Stable, machine-readable code, e.g. `VALIDATION_FAILED`.
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldError>,
}

/// The error every handler returns. Internal causes are logged where they
/// happen; clients only ever see `code` and `message`.
#[api_v2_errors(
    code = 400,
    description = "Malformed request",
    code = 401,
    description = "Missing or invalid bearer token",
    code = 404,
    description = "Not found (or not yours)",
    code = 409,
    description = "Conflict with the current state",
    code = 422,
    description = "Validation failed",
    code = 429,
    description = "Too many requests",
    code = 503,
    description = "A dependency is unavailable"
)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
    /// Sent as `Retry-After` (whole seconds, rounded up).
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                code: code.into(),
                message: message.into(),
                fields: Vec::new(),
            },
            retry_after: None,
        }
    }

    /// 429: a quota or rate limit; the client may retry after `retry_after`.
    pub fn too_many_requests(
        code: &str,
        message: impl Into<String>,
        retry_after: Duration,
    ) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, code, message)
        }
    }

    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("{what} not found"),
        )
    }

    pub fn conflict(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub fn validation(fields: Vec<FieldError>) -> Self {
        let mut error = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_FAILED",
            "the request has invalid fields",
        );
        error.body.fields = fields;
        error
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", message)
    }

    /// Logs `cause` and answers 500 without revealing it.
    pub fn internal(cause: impl fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "internal error",
        )
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.body.code,
            self.body.message
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(wait) = self.retry_after {
            // Round up: a client that waits exactly this long gets through.
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response.insert_header(("Retry-After", seconds.max(1).to_string()));
        }
        response.json(&self.body)
    }
}

impl From<diesel::result::Error> for ApiError {
    fn from(error: diesel::result::Error) -> Self {
        match error {
            diesel::result::Error::NotFound => ApiError::not_found("resource"),
            other => ApiError::internal(other),
        }
    }
}

impl From<diesel_async::pooled_connection::deadpool::PoolError> for ApiError {
    fn from(error: diesel_async::pooled_connection::deadpool::PoolError) -> Self {
        tracing::error!(%error, "database pool");
        ApiError::unavailable("database unavailable")
    }
}

/// JSON bodies: malformed or mistyped input is a 400 (syntax) or 422 (shape)
/// in the common error shape, never actix's plain-text default.
pub fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit)
        .error_handler(|error, _req: &HttpRequest| {
            use actix_web::error::JsonPayloadError as E;
            let api = match &error {
                E::OverflowKnownLength { .. } | E::Overflow { .. } => ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "PAYLOAD_TOO_LARGE",
                    error.to_string(),
                ),
                E::ContentType => ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UNSUPPORTED_MEDIA_TYPE",
                    "expected Content-Type: application/json",
                ),
                E::Deserialize(e) if e.is_data() => ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "INVALID_BODY",
                    e.to_string(),
                ),
                _ => ApiError::bad_request("MALFORMED_JSON", error.to_string()),
            };
            api.into()
        })
}

pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|error, _req| {
        ApiError::bad_request("INVALID_QUERY", error.to_string()).into()
    })
}

pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|_error, _req| ApiError::not_found("resource").into())
}

/// Default service for unknown routes: 404 in the common shape.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route")
}

#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct HealthBody {
    /// `ok` or `unavailable`
    pub status: String,
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Liveness: the process answers.
pub fn alive(service: &str) -> HttpResponse {
    HttpResponse::Ok().json(HealthBody {
        status: "ok".into(),
        service: service.into(),
        detail: None,
    })
}

/// Readiness from a check's outcome: 200 or 503 with the reason.
pub fn readiness(service: &str, check: Result<(), String>) -> HttpResponse {
    match check {
        Ok(()) => alive(service),
        Err(detail) => HttpResponse::ServiceUnavailable().json(HealthBody {
            status: "unavailable".into(),
            service: service.into(),
            detail: Some(detail),
        }),
    }
}

/// `?page=&page_size=` of a list endpoint, checked: 1-based pages up to
/// [`Page::MAX_PAGE`], 1 to [`Page::MAX_SIZE`] items per page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub page: i64,
    pub page_size: i64,
}

impl Page {
    pub const DEFAULT_SIZE: i64 = 20;
    pub const MAX_SIZE: i64 = 100;
    pub const MAX_PAGE: i64 = 1_000_000;

    /// Defaults page 1 of [`Page::DEFAULT_SIZE`]; out-of-range values are a
    /// 422 naming each offending field.
    pub fn parse(page: Option<i64>, page_size: Option<i64>) -> Result<Self, ApiError> {
        let page = page.unwrap_or(1);
        let page_size = page_size.unwrap_or(Self::DEFAULT_SIZE);
        let mut errors = Vec::new();
        if !(1..=Self::MAX_PAGE).contains(&page) {
            errors.push(FieldError {
                field: "page".into(),
                code: "out_of_range".into(),
                message: format!("must be between 1 and {}", Self::MAX_PAGE),
            });
        }
        if !(1..=Self::MAX_SIZE).contains(&page_size) {
            errors.push(FieldError {
                field: "page_size".into(),
                code: "out_of_range".into(),
                message: format!("must be between 1 and {}", Self::MAX_SIZE),
            });
        }
        if !errors.is_empty() {
            return Err(ApiError::validation(errors));
        }
        Ok(Self { page, page_size })
    }

    /// Pages needed for `total_items` (0 when there are none).
    pub fn total_pages(&self, total_items: i64) -> i64 {
        (total_items + self.page_size - 1) / self.page_size
    }
}

/// The query of every list endpoint, checked by [`PageQuery::page`].
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, Apiv2Schema)]
pub struct PageQuery {
    /// 1-based page number (default 1).
    pub page: Option<i64>,
    /// Items per page, 1 to 100 (default 20).
    pub page_size: Option<i64>,
}

impl PageQuery {
    /// The page asked for, or a 422 naming each out-of-range field.
    pub fn page(&self) -> Result<Page, ApiError> {
        Page::parse(self.page, self.page_size)
    }
}

/// Defines `$page`, a list endpoint's page of `$item`s (its own named
/// schema in the OpenAPI document, e.g. `OrderPage`), and `$page::new`
/// filling it from the page asked for.
#[macro_export]
macro_rules! page_schema {
    ($(#[$doc:meta])* $page:ident of $item:ty) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize,
            paperclip::actix::Apiv2Schema,
        )]
        pub struct $page {
            pub items: Vec<$item>,
            pub page: i64,
            pub page_size: i64,
            pub total_items: i64,
            pub total_pages: i64,
        }

        impl $page {
            /// Page `requested` of `total_items`, holding `items`.
            pub fn new(requested: $crate::http::Page, items: Vec<$item>, total_items: i64) -> Self {
                Self {
                    items,
                    page: requested.page,
                    page_size: requested.page_size,
                    total_items,
                    total_pages: requested.total_pages(total_items),
                }
            }
        }
    };
}
