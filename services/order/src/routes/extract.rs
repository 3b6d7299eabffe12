//! Extractors and responders of the orders API that paperclip does not
//! provide: the `Idempotency-Key` and `Prefer: wait` headers, an optional
//! JSON body, the `POST /api/orders` answer (202 created, 200 replayed) and
//! the `GET /api/orders/{id}` answer (with `Preference-Applied`).

use std::collections::BTreeMap;

use actix_web::{
    FromRequest, HttpRequest, HttpResponse, Responder, body::BoxBody, dev::Payload,
    http::StatusCode, web,
};
use commerce_common::http::ApiError;
use futures::future::LocalBoxFuture;
use paperclip::{
    actix::OperationModifier,
    v2::{
        models::{
            DataType, DefaultOperationRaw, DefaultSchemaRaw, Either, Header, Parameter,
            ParameterIn, Response,
        },
        schema::Apiv2Schema,
    },
};
use serde::de::DeserializeOwned;

use super::schemas::Order;

pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
/// Set on a `POST /api/orders` answer that returns an existing order.
pub const IDEMPOTENT_REPLAYED: &str = "Idempotent-Replayed";
const MAX_KEY_CHARS: usize = 255;

pub const PREFER: &str = "Prefer";
pub const PREFERENCE_APPLIED: &str = "Preference-Applied";
/// Longer `wait` preferences are capped to this many seconds (below the
/// gateway's 30 s request timeout).
pub const MAX_WAIT_SECONDS: u32 = 20;

/// The `wait` preference of RFC 7240's `Prefer` header: seconds, 1 to
/// [`MAX_WAIT_SECONDS`]. Absent, 0 or unreadable is `None` (no waiting):
/// a preference is a hint, never a reason to fail the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreferWait(pub Option<u32>);

impl FromRequest for PreferWait {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let values = req
            .headers()
            .get_all(PREFER)
            .filter_map(|value| value.to_str().ok());
        std::future::ready(Ok(PreferWait(parse_wait(values))))
    }
}

/// The first `wait` preference among the `Prefer` header values (the RFC's
/// rule for a repeated preference); its parameters (`;...`) are ignored.
fn parse_wait<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<u32> {
    let (_, value) = values
        .into_iter()
        .flat_map(|value| value.split(','))
        .map(|preference| {
            let head = preference.split(';').next().unwrap_or_default();
            match head.split_once('=') {
                Some((name, value)) => (name.trim(), Some(value.trim())),
                None => (head.trim(), None),
            }
        })
        .find(|(name, _)| name.eq_ignore_ascii_case("wait"))?;
    let value = value?;
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // All digits: too many of them for a u64 is still "more than the cap".
    let seconds = value.parse::<u64>().unwrap_or(u64::MAX);
    let seconds = u32::try_from(seconds.min(u64::from(MAX_WAIT_SECONDS))).ok()?;
    (seconds > 0).then_some(seconds)
}

impl Apiv2Schema for PreferWait {
    fn header_parameter_schema() -> Vec<Parameter<DefaultSchemaRaw>> {
        vec![Parameter {
            in_: ParameterIn::Header,
            name: PREFER.into(),
            description: Some(format!(
                "Long-polling (RFC 7240): `wait=N` (seconds, 1-{MAX_WAIT_SECONDS}, larger values \
                 are capped) answers once the order changes or after N seconds, whichever \
                 comes first, with `Preference-Applied: wait=N`. An order the saga is done \
                 with (DELIVERY_SCHEDULED, REJECTED, CANCELLED) answers at once. Other \
                 preferences, 0 or unreadable values: no waiting."
            )),
            required: false,
            data_type: Some(DataType::String),
            ..Default::default()
        }]
    }
}

impl OperationModifier for PreferWait {}

/// The optional `Idempotency-Key` header: 1 to 255 visible ASCII characters.
#[derive(Debug, Clone)]
pub struct IdempotencyKeyHeader(pub Option<String>);

impl FromRequest for IdempotencyKeyHeader {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(parse_key(req))
    }
}

fn parse_key(req: &HttpRequest) -> Result<IdempotencyKeyHeader, ApiError> {
    let Some(value) = req.headers().get(IDEMPOTENCY_KEY) else {
        return Ok(IdempotencyKeyHeader(None));
    };
    let invalid = || {
        ApiError::bad_request(
            "INVALID_IDEMPOTENCY_KEY",
            format!("{IDEMPOTENCY_KEY} must be 1 to {MAX_KEY_CHARS} visible ASCII characters"),
        )
    };
    let key = value.to_str().map_err(|_| invalid())?.trim();
    if key.is_empty()
        || key.len() > MAX_KEY_CHARS
        || !key.chars().all(|c| c.is_ascii_graphic() || c == ' ')
    {
        return Err(invalid());
    }
    Ok(IdempotencyKeyHeader(Some(key.to_owned())))
}

impl Apiv2Schema for IdempotencyKeyHeader {
    fn header_parameter_schema() -> Vec<Parameter<DefaultSchemaRaw>> {
        vec![Parameter {
            in_: ParameterIn::Header,
            name: IDEMPOTENCY_KEY.into(),
            description: Some(
                "Retry-safe creation: the same key with the same body returns the same order \
                 (200, header Idempotent-Replayed: true); with another body: 422 \
                 IDEMPOTENCY_KEY_REUSED. Keys are per user."
                    .into(),
            ),
            required: false,
            data_type: Some(DataType::String),
            max_length: Some(MAX_KEY_CHARS as u32),
            ..Default::default()
        }]
    }
}

impl OperationModifier for IdempotencyKeyHeader {}

/// A JSON body that may be absent (empty): `None` then. A present but
/// malformed body is still an error.
#[derive(Debug)]
pub struct OptionalJson<T>(pub Option<T>);

impl<T: DeserializeOwned + 'static> FromRequest for OptionalJson<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let bytes = web::Bytes::from_request(req, payload);
        Box::pin(async move {
            let bytes = bytes.await.map_err(|e| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "PAYLOAD_TOO_LARGE",
                    e.to_string(),
                )
            })?;
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(OptionalJson(None));
            }
            serde_json::from_slice(&bytes)
                .map(|value| OptionalJson(Some(value)))
                .map_err(|e| {
                    if e.is_data() {
                        ApiError::new(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "INVALID_BODY",
                            e.to_string(),
                        )
                    } else {
                        ApiError::bad_request("MALFORMED_JSON", e.to_string())
                    }
                })
        })
    }
}

impl<T: Apiv2Schema> Apiv2Schema for OptionalJson<T> {
    fn name() -> Option<String> {
        T::name()
    }

    fn raw_schema() -> DefaultSchemaRaw {
        T::raw_schema()
    }
}

impl<T: Apiv2Schema> OperationModifier for OptionalJson<T> {
    fn update_parameter(op: &mut DefaultOperationRaw) {
        op.parameters.push(Either::Right(Parameter {
            in_: ParameterIn::Body,
            name: "body".into(),
            required: false,
            schema: Some({
                let mut def = T::schema_with_ref();
                def.retain_ref();
                def
            }),
            ..Default::default()
        }));
    }
}

/// The answer to `POST /api/orders`: 202 with the new order, or 200 with
/// the order an earlier request with the same idempotency key created.
pub struct PlacedOrder {
    pub order: Order,
    pub replayed: bool,
}

impl Responder for PlacedOrder {
    type Body = BoxBody;

    fn respond_to(self, _: &HttpRequest) -> HttpResponse<BoxBody> {
        if self.replayed {
            HttpResponse::Ok()
                .insert_header((IDEMPOTENT_REPLAYED, "true"))
                .json(&self.order)
        } else {
            HttpResponse::Accepted().json(&self.order)
        }
    }
}

/// The answer to `GET /api/orders/{id}`: 200 with the order, and
/// `Preference-Applied: wait=N` when the request waited for a change.
pub struct FetchedOrder {
    pub order: Order,
    pub waited_seconds: Option<u32>,
}

impl Responder for FetchedOrder {
    type Body = BoxBody;

    fn respond_to(self, _: &HttpRequest) -> HttpResponse<BoxBody> {
        let mut response = HttpResponse::Ok();
        if let Some(seconds) = self.waited_seconds {
            response.insert_header((PREFERENCE_APPLIED, format!("wait={seconds}")));
        }
        response.json(&self.order)
    }
}

impl Apiv2Schema for FetchedOrder {
    fn name() -> Option<String> {
        Order::name()
    }

    fn raw_schema() -> DefaultSchemaRaw {
        Order::raw_schema()
    }
}

impl OperationModifier for FetchedOrder {
    fn update_parameter(_: &mut DefaultOperationRaw) {}

    fn update_response(op: &mut DefaultOperationRaw) {
        let applied = Header {
            description: Some(
                "`wait=N` when the request waited (`Prefer: wait=N` on an order still in \
                 the saga)"
                    .into(),
            ),
            data_type: Some(DataType::String),
            ..Default::default()
        };
        op.responses.insert(
            "200".into(),
            Either::Right(Response {
                description: Some("The order".into()),
                schema: Some({
                    let mut def = Order::schema_with_ref();
                    def.retain_ref();
                    def
                }),
                headers: BTreeMap::from([(PREFERENCE_APPLIED.into(), applied)]),
            }),
        );
    }

    fn update_definitions(map: &mut BTreeMap<String, DefaultSchemaRaw>) {
        <Order as OperationModifier>::update_definitions(map);
    }
}

impl Apiv2Schema for PlacedOrder {
    fn name() -> Option<String> {
        Order::name()
    }

    fn raw_schema() -> DefaultSchemaRaw {
        Order::raw_schema()
    }
}

impl OperationModifier for PlacedOrder {
    fn update_parameter(_: &mut DefaultOperationRaw) {}

    fn update_response(op: &mut DefaultOperationRaw) {
        for (status, description) in [
            ("202", "Accepted: the order is PENDING while payment runs"),
            (
                "200",
                "Replay: the order created earlier with this Idempotency-Key",
            ),
        ] {
            op.responses.insert(
                status.into(),
                Either::Right(Response {
                    description: Some(description.into()),
                    schema: Some({
                        let mut def = Order::schema_with_ref();
                        def.retain_ref();
                        def
                    }),
                    ..Default::default()
                }),
            );
        }
    }

    fn update_definitions(map: &mut BTreeMap<String, DefaultSchemaRaw>) {
        <Order as OperationModifier>::update_definitions(map);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_is_read_among_other_preferences() {
        assert_eq!(parse_wait(["wait=5"]), Some(5));
        assert_eq!(parse_wait(["respond-async, wait=5"]), Some(5));
        assert_eq!(
            parse_wait(["respond-async", " WAIT = 7 ; foo=bar"]),
            Some(7)
        );
        assert_eq!(parse_wait([r#"wait="3""#]), Some(3));
        assert_eq!(parse_wait(["return=minimal,wait=2,wait=9"]), Some(2));
    }

    #[test]
    fn long_waits_are_capped() {
        assert_eq!(parse_wait(["wait=20"]), Some(20));
        assert_eq!(parse_wait(["wait=21"]), Some(20));
        assert_eq!(parse_wait(["wait=99999999999999999999999"]), Some(20));
    }

    #[test]
    fn absent_zero_or_unreadable_means_no_waiting() {
        let none: [&str; 0] = [];
        assert_eq!(parse_wait(none), None);
        for value in [
            "",
            "wait",
            "wait=",
            "wait=0",
            "wait=-1",
            "wait=1.5",
            "wait=abc",
            "wait=5s",
            "respond-async",
            "waiting=5",
            "wait=\"\"",
            "w ait=5",
        ] {
            assert_eq!(parse_wait([value]), None, "{value:?}");
        }
    }
}
