//! Per-request tracing: a span with method, path and request id around
//! every request, the id echoed in `X-Request-Id` and reused as the trace id
//! of the events the request causes.

use std::time::Instant;

use actix_web::{
    Error, HttpMessage, HttpRequest,
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    http::header::{HeaderName, HeaderValue},
    middleware::Next,
};
use tracing::Instrument;
use uuid::Uuid;

pub const REQUEST_ID: &str = "x-request-id";

/// The request's id: the caller's `X-Request-Id` when it sent a sane one,
/// otherwise a new UUID.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    fn of(req: &ServiceRequest) -> Self {
        let sent = req
            .headers()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic()));
        Self(sent.map_or_else(|| Uuid::new_v4().to_string(), str::to_owned))
    }

    /// The id of a request that went through [`trace_requests`].
    pub fn get(req: &HttpRequest) -> String {
        req.extensions()
            .get::<RequestId>()
            .map_or_else(|| Uuid::new_v4().to_string(), |id| id.0.clone())
    }
}

pub async fn trace_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let request_id = RequestId::of(&req);
    let span = tracing::info_span!("http", method = %req.method(), path = %req.path(),
        request_id = %request_id.0);
    let header = HeaderValue::from_str(&request_id.0).ok();
    req.extensions_mut().insert(request_id);
    let started = Instant::now();
    let mut result = next.call(req).instrument(span.clone()).await;
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    let _entered = span.enter();
    match &mut result {
        Ok(response) => {
            let status = response.status().as_u16();
            // Answered requests at debug, as the gateway logs them: at info,
            // two lines per order at any rate would drown the saga's own.
            if status >= 500 {
                tracing::error!(status, elapsed_ms, "request failed");
            } else {
                tracing::debug!(status, elapsed_ms, "request");
            }
            if let Some(header) = header {
                response
                    .headers_mut()
                    .insert(HeaderName::from_static(REQUEST_ID), header);
            }
        }
        Err(error) => tracing::error!(%error, elapsed_ms, "request failed"),
    }
    result
}
