//! Forwarding `/api/orders...`, `/api/products...`, `/api/wallet...`,
//! `/api/payments...` and `/api/deliveries...` to the owning service, path
//! and query unchanged. Reads of the product catalog need no token.
//!
//! Lean by design: bodies stream through in both directions (never buffered),
//! each worker keeps a pool of keep-alive connections per service, and the
//! only per-request work besides copying headers is the optional edge token
//! check. Hop-by-hop headers (RFC 9110 7.6.1) are dropped both ways.

use std::{
    cell::Cell,
    pin::Pin,
    rc::Rc,
    task::{Context, Poll},
    time::Duration,
};

use actix_web::{
    HttpRequest, HttpResponse,
    body::{BodyStream, SizedStream},
    error::PayloadError,
    http::{
        Method, StatusCode,
        header::{self, HeaderMap, HeaderName, HeaderValue},
    },
    web,
};
use awc::error::SendRequestError;
use bytes::Bytes;
use commerce_common::{auth::JwtVerifier, http::ApiError};
use futures::Stream;

use crate::{auth::edge::EdgeAuth, config::ProxyConfig, metrics::Metrics};

/// The path prefixes each service owns.
pub const ROUTES: [(&str, &str); 5] = [
    ("/api/orders", "order"),
    ("/api/products", "order"),
    ("/api/wallet", "payment"),
    ("/api/payments", "payment"),
    ("/api/deliveries", "delivery"),
];

/// Prefixes (of [`ROUTES`]) anyone may read without a token: `GET` and
/// `HEAD` skip the edge token check there (the product catalog). Other
/// methods are checked like everywhere else.
pub const PUBLIC_READS: [&str; 1] = ["/api/products"];

/// Whether `req` is a read of a public prefix.
fn is_public_read(req: &HttpRequest) -> bool {
    matches!(*req.method(), Method::GET | Method::HEAD)
        && PUBLIC_READS.iter().any(|prefix| {
            let path = req.path();
            path == *prefix
                || path
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
}

/// Resource-level data: where this prefix goes.
#[derive(Clone)]
pub struct Upstream {
    pub name: &'static str,
    /// `http://host:port`, without a trailing slash.
    pub base: Rc<str>,
}

/// The per-worker HTTP client (awc is single-threaded) and its settings.
pub struct ProxyClient {
    pub client: awc::Client,
    pub body_limit: u64,
    pub probe_timeout: Duration,
    /// `None` when `auth.verify_at_edge` is off.
    pub edge_auth: Option<EdgeAuth>,
}

impl ProxyClient {
    pub fn new(config: &ProxyConfig, edge_verifier: Option<JwtVerifier>) -> Self {
        let connector = awc::Connector::new()
            .timeout(config.connect_timeout)
            .conn_keep_alive(config.pool_idle_timeout)
            .limit(config.pool_max_connections);
        let client = awc::Client::builder()
            .connector(connector)
            .timeout(config.request_timeout)
            .disable_redirects()
            .no_default_headers()
            .finish();
        Self {
            client,
            body_limit: config.body_limit_bytes,
            probe_timeout: config.probe_timeout,
            edge_auth: edge_verifier.map(EdgeAuth::new),
        }
    }

    pub fn of(req: &HttpRequest) -> &Self {
        req.app_data::<Self>()
            .expect("ProxyClient registered per worker")
    }
}

/// Why a request could not be forwarded.
#[derive(Debug)]
enum ProxyError {
    TooLarge(u64),
    Unavailable(&'static str),
    Timeout(&'static str),
    BadGateway(&'static str),
}

impl ProxyError {
    fn outcome(&self) -> &'static str {
        match self {
            Self::TooLarge(_) => "too_large",
            Self::Unavailable(_) => "unavailable",
            Self::Timeout(_) => "timeout",
            Self::BadGateway(_) => "bad_gateway",
        }
    }

    fn into_api(self) -> ApiError {
        match self {
            Self::TooLarge(limit) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                format!("request body larger than {limit} bytes"),
            ),
            Self::Unavailable(name) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "UPSTREAM_UNAVAILABLE",
                format!("the {name} service is unavailable"),
            ),
            Self::Timeout(name) => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "UPSTREAM_TIMEOUT",
                format!("the {name} service did not answer in time"),
            ),
            Self::BadGateway(name) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "UPSTREAM_ERROR",
                format!("the {name} service answered with an invalid response"),
            ),
        }
    }
}

/// The handler of every forwarded route.
pub async fn forward(
    req: HttpRequest,
    payload: web::Payload,
    metrics: web::Data<Metrics>,
) -> Result<HttpResponse, ApiError> {
    let proxy = ProxyClient::of(&req);
    if let Some(edge_auth) = &proxy.edge_auth
        && !is_public_read(&req)
    {
        edge_auth.check(&req)?;
    }
    let upstream = req
        .app_data::<Upstream>()
        .expect("Upstream set on every proxied resource");
    match send(proxy, &req, payload, upstream).await {
        Ok(response) => {
            metrics.proxied(upstream.name, "ok");
            Ok(response)
        }
        Err(error) => {
            metrics.proxied(upstream.name, error.outcome());
            Err(error.into_api())
        }
    }
}

async fn send(
    proxy: &ProxyClient,
    req: &HttpRequest,
    payload: web::Payload,
    upstream: &Upstream,
) -> Result<HttpResponse, ProxyError> {
    let content_length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if content_length.is_some_and(|len| len > proxy.body_limit) {
        return Err(ProxyError::TooLarge(proxy.body_limit));
    }
    let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);

    let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{}", upstream.base, path_and_query);
    let mut outgoing = proxy.client.request(req.method().clone(), url);
    copy_end_to_end(req.headers(), outgoing.headers_mut());
    let forwarded_for = forwarded_for(req);
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        outgoing.headers_mut().insert(X_FORWARDED_FOR, value);
    }

    let exceeded = Rc::new(Cell::new(false));
    let body = LimitedBody {
        inner: payload,
        remaining: proxy.body_limit,
        exceeded: exceeded.clone(),
    };
    let sent = match content_length {
        Some(0) => outgoing.send().await,
        Some(len) => outgoing.send_body(SizedStream::new(len, body)).await,
        None if chunked => outgoing.send_stream(body).await,
        None => outgoing.send().await,
    };
    let response = sent.map_err(|error| {
        if exceeded.get() {
            return ProxyError::TooLarge(proxy.body_limit);
        }
        tracing::warn!(upstream = upstream.name, %error, "forwarding failed");
        match error {
            // No response head within the request timeout.
            SendRequestError::Timeout => ProxyError::Timeout(upstream.name),
            // Refused, unresolvable, or no TCP connection within the connect timeout.
            SendRequestError::Connect(_) => ProxyError::Unavailable(upstream.name),
            _ => ProxyError::BadGateway(upstream.name),
        }
    })?;

    let status = response.status();
    let mut builder = HttpResponse::build(status);
    let mut headers = HeaderMap::new();
    copy_end_to_end(response.headers(), &mut headers);
    for (name, value) in headers {
        builder.append_header((name, value));
    }
    let length = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    Ok(match length {
        _ if bodiless => builder.finish(),
        Some(len) => builder.body(SizedStream::new(len, response)),
        None => builder.body(BodyStream::new(response)),
    })
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The incoming `X-Forwarded-For` with the client's address appended.
fn forwarded_for(req: &HttpRequest) -> String {
    let peer = req
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let prior: Vec<&str> = req
        .headers()
        .get_all(X_FORWARDED_FOR)
        .filter_map(|v| v.to_str().ok())
        .collect();
    if prior.is_empty() {
        peer
    } else {
        format!("{}, {peer}", prior.join(", "))
    }
}

/// Copies the end-to-end headers: drops the hop-by-hop ones of RFC 9110
/// 7.6.1 (and those the `Connection` header names), `Host` (the client sets
/// the service's), `Content-Length` (set from the body's size) and the
/// incoming `X-Forwarded-For` (replaced).
pub fn copy_end_to_end(from: &HeaderMap, to: &mut HeaderMap) {
    let named_by_connection: Vec<String> = from
        .get_all(header::CONNECTION)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .filter(|token| !token.is_empty())
        .collect();
    for (name, value) in from.iter() {
        if is_hop_by_hop(name)
            || *name == header::HOST
            || *name == header::CONTENT_LENGTH
            || *name == X_FORWARDED_FOR
            || named_by_connection.iter().any(|n| n == name.as_str())
        {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "te" | "trailer" | "transfer-encoding" | "upgrade" | "expect"
    ) || name.as_str().starts_with("proxy-")
}

/// The request body as it arrives, cut off (with an error the handler turns
/// into 413) once it exceeds the limit: a chunked body has no length to
/// check up front.
struct LimitedBody {
    inner: web::Payload,
    remaining: u64,
    exceeded: Rc<Cell<bool>>,
}

impl Stream for LimitedBody {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                let len = chunk.len() as u64;
                if len > self.remaining {
                    self.exceeded.set(true);
                    return Poll::Ready(Some(Err(PayloadError::Overflow)));
                }
                self.remaining -= len;
                Poll::Ready(Some(Ok(chunk)))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_hop_by_hop_and_connection_named_headers() {
        let mut from = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic abc"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-secret-hop", "1"),
            ("host", "gateway"),
            ("authorization", "Bearer t"),
            ("x-request-id", "abc"),
            ("accept", "application/json"),
        ] {
            from.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let mut to = HeaderMap::new();
        copy_end_to_end(&from, &mut to);
        let mut names: Vec<&str> = to.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["accept", "authorization", "x-request-id"]);
    }

    #[test]
    fn only_reads_of_the_catalog_are_public() {
        use actix_web::test::TestRequest;
        let public = |method: Method, path: &str| {
            is_public_read(
                &TestRequest::default()
                    .method(method)
                    .uri(path)
                    .to_http_request(),
            )
        };
        assert!(public(Method::GET, "/api/products"));
        assert!(public(Method::GET, "/api/products?page=2"));
        assert!(public(Method::GET, "/api/products/BOOK-1"));
        assert!(public(Method::HEAD, "/api/products/BOOK-1"));
        assert!(!public(Method::POST, "/api/products"));
        assert!(!public(Method::PUT, "/api/products/BOOK-1"));
        assert!(!public(Method::GET, "/api/productsx"));
        assert!(!public(Method::GET, "/api/orders"));
    }
}
