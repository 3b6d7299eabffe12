//! Extractors and responders of the orders API that paperclip does not
//! provide: the `Idempotency-Key` header, an optional JSON body, and the
//! `POST /api/orders` answer (202 created, 200 replayed).

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
            DataType, DefaultOperationRaw, DefaultSchemaRaw, Either, Parameter, ParameterIn,
            Response,
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
