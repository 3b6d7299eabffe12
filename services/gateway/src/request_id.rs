//! `X-Request-Id`: taken from the client when it looks sane, generated
//! (UUID v4) otherwise; put back on the request so handlers and the proxy
//! forward it, returned on every response, and recorded on the request span.

use actix_web::{
    HttpRequest,
    http::header::{HeaderName, HeaderValue},
};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

const MAX_LEN: usize = 128;

/// The id to use for a request carrying `incoming`.
pub fn resolve(incoming: Option<&HeaderValue>) -> HeaderValue {
    incoming
        .filter(|value| {
            let bytes = value.as_bytes();
            !bytes.is_empty()
                && bytes.len() <= MAX_LEN
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        })
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
                .expect("a UUID is a valid header")
        })
}

/// The request's id (always present behind the middleware).
pub fn of(req: &HttpRequest) -> String {
    req.headers()
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}
