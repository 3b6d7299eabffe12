//! `/api/orders`: place, read (optionally long-polling), list and cancel
//! one's own orders.

use std::time::Duration;

use actix_web::{HttpRequest, http::StatusCode};
use commerce_common::{
    auth::AuthUser,
    db::DbPool,
    http::{ApiError, FieldError, PageQuery},
};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use paperclip::actix::{AcceptedJson, api_v2_operation, web};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{
    extract::{FetchedOrder, IdempotencyKeyHeader, OptionalJson, PlacedOrder, PreferWait},
    request_trace::RequestId,
    schemas::{CancelRequest, GetOrderQuery, Order, OrderPage, PlaceOrderRequest, WaitUntil},
};
use crate::{
    catalog::{Catalog, Fresh, Placement},
    config::CancellationConfig,
    domain::{
        CatalogPrice, Cents, FieldProblem, NewOrder, OrderStatus, PricingError, Quantity,
        RawAddress, RequestedLine, ShippingAddress, Sku, check_line_count, price_lines,
    },
    metrics::OrderMetrics,
    order_changes::{OrderChanges, Wake},
    quotas::{self, QuotaExceeded},
    store::{self, CancelError, IdempotencyKey, OrderView, PlaceError, Placed},
};

const MAX_NOTE_CHARS: usize = 500;

/// The trace id put on the events a request causes: its request id.
fn trace_id(req: &HttpRequest) -> String {
    RequestId::get(req)
}

fn field(path: impl Into<String>, problem: FieldProblem) -> FieldError {
    FieldError {
        field: path.into(),
        code: problem.code.into(),
        message: problem.message,
    }
}

/// The body parsed: the lines as asked for (not priced yet) and the
/// address.
pub struct ParsedOrder {
    pub lines: Vec<RequestedLine>,
    pub address: ShippingAddress,
}

/// Parses the body, collecting every field problem. `unit_price_cents` is
/// optional: the catalog sets the price, a sent one is only checked.
pub fn parse_new_order(body: &PlaceOrderRequest) -> Result<ParsedOrder, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut lines = Vec::new();
    match &body.items.0 {
        None => errors.push(field("items", FieldProblem::required())),
        Some(items) => match check_line_count(items.len()) {
            Err(problem) => errors.push(field("items", problem)),
            Ok(()) => {
                for (i, item) in items.iter().enumerate() {
                    let at = |name: &str| format!("items[{i}].{name}");
                    let sku = item
                        .sku
                        .0
                        .as_deref()
                        .map_or_else(|| Err(FieldProblem::required()), Sku::parse);
                    let quantity = item
                        .quantity
                        .0
                        .map_or_else(|| Err(FieldProblem::required()), Quantity::parse);
                    let unit_price = item
                        .unit_price_cents
                        .map(Cents::parse_unit_price)
                        .transpose();
                    match (sku, quantity, unit_price) {
                        (Ok(sku), Ok(quantity), Ok(unit_price)) => lines.push(RequestedLine {
                            sku,
                            quantity,
                            unit_price,
                        }),
                        (sku, quantity, unit_price) => {
                            errors.extend(sku.err().map(|p| field(at("sku"), p)));
                            errors.extend(quantity.err().map(|p| field(at("quantity"), p)));
                            errors
                                .extend(unit_price.err().map(|p| field(at("unit_price_cents"), p)));
                        }
                    }
                }
            }
        },
    }
    let address = match &body.shipping_address.0 {
        None => {
            errors.push(field("shipping_address", FieldProblem::required()));
            None
        }
        Some(a) => match ShippingAddress::parse(RawAddress {
            name: a.name.0.as_deref(),
            street: a.street.0.as_deref(),
            city: a.city.0.as_deref(),
            postal_code: a.postal_code.0.as_deref(),
            country: a.country.0.as_deref(),
        }) {
            Ok(address) => Some(address),
            Err(problems) => {
                errors.extend(
                    problems
                        .into_iter()
                        .map(|(name, p)| field(format!("shipping_address.{name}"), p)),
                );
                None
            }
        },
    };
    match address {
        Some(address) if errors.is_empty() => Ok(ParsedOrder { lines, address }),
        _ => Err(errors),
    }
}

/// Why an order could not be priced, as the API answers it.
enum Refused {
    Api(ApiError),
    /// A catalog problem: answered unless the idempotency key was used
    /// before (then that request's order is the answer).
    Pricing(ApiError),
}

/// Prices the lines from the catalog and computes the total. A refusal is
/// the table's: one priced from memory is priced again from the table.
async fn price_order(
    conn: &mut AsyncPgConnection,
    catalog: &Catalog,
    parsed: &ParsedOrder,
    mut fresh: Fresh,
) -> Result<NewOrder, Refused> {
    let skus: Vec<&str> = parsed.lines.iter().map(|l| l.sku.as_str()).collect();
    let lines = loop {
        let (prices, source) = catalog
            .prices(conn, &skus, fresh)
            .await
            .map_err(|e| Refused::Api(ApiError::internal(e)))?;
        let priced = price_lines(&parsed.lines, |sku| {
            prices
                .iter()
                .find(|(known, _, _)| known == sku)
                .map(|&(_, price, active)| CatalogPrice {
                    // The table's CHECK keeps prices within the domain's bounds.
                    price: Cents::parse_unit_price(price).unwrap_or(Cents::ZERO),
                    active,
                })
        });
        match priced {
            Ok(lines) => break lines,
            Err(_) if source == Fresh::Memory => fresh = Fresh::Table,
            Err(error) => return Err(Refused::Pricing(pricing_refused(error))),
        }
    };
    NewOrder::new(lines, parsed.address.clone())
        .map_err(|problem| Refused::Api(ApiError::validation(vec![field("items", problem)])))
}

/// The 422 answer of lines the catalog refuses, naming each line.
fn pricing_refused(error: PricingError) -> ApiError {
    let (mut api, problems) = match error {
        PricingError::NotOrderable(problems) => (ApiError::validation(vec![]), problems),
        PricingError::PriceChanged(problems) => (
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                PRICE_CHANGED,
                "a unit price is not the catalog's: the price changed; \
                 GET /api/products/{sku} shows the current one",
            ),
            problems,
        ),
    };
    api.body.fields = problems
        .into_iter()
        .map(|(i, name, problem)| field(format!("items[{i}].{name}"), problem))
        .collect();
    api
}

/// The 429 answer of a placement over a quota, counted by its code.
fn over_quota(exceeded: QuotaExceeded, metrics: &OrderMetrics) -> ApiError {
    metrics.quota_refused(match exceeded {
        QuotaExceeded::OpenOrders { .. } => TOO_MANY_OPEN_ORDERS,
        QuotaExceeded::Rate { .. } => ORDER_RATE_LIMITED,
    });
    match exceeded {
        QuotaExceeded::OpenOrders { limit, retry_after } => ApiError::too_many_requests(
            TOO_MANY_OPEN_ORDERS,
            format!(
                "you have {limit} orders in progress (PENDING or PAID), the most allowed; \
                 retry once one of them is done"
            ),
            retry_after,
        ),
        QuotaExceeded::Rate {
            limit,
            interval,
            retry_after,
        } => ApiError::too_many_requests(
            ORDER_RATE_LIMITED,
            format!(
                "at most {limit} orders per {} seconds; retry later",
                interval.as_secs_f64()
            ),
            retry_after,
        ),
    }
}

/// Code of the 429 answer when the customer has too many orders in progress.
pub const TOO_MANY_OPEN_ORDERS: &str = "TOO_MANY_OPEN_ORDERS";
/// Code of the 429 answer when the customer places orders too fast.
pub const ORDER_RATE_LIMITED: &str = "ORDER_RATE_LIMITED";

/// Code of the 422 answer when a client's unit price is not the catalog's.
pub const PRICE_CHANGED: &str = "PRICE_CHANGED";

/// SHA-256 of the request re-serialized: the same order written with other
/// whitespace or key order is the same request.
fn request_hash(body: &PlaceOrderRequest) -> String {
    let canonical = serde_json::to_vec(body).expect("request bodies serialize");
    Sha256::digest(&canonical)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Place an order
///
/// Validates the order, prices every line from the product catalog, computes
/// the total and stores it as PENDING; the payment service picks it up from
/// the `OrderCreated` event. A line is `sku` and `quantity`; an unknown or
/// inactive SKU answers 422 naming the line (`items[i].sku`,
/// `unknown_product` / `inactive_product`). `unit_price_cents` may be left
/// out; when sent it must be the catalog's price, otherwise 422
/// PRICE_CHANGED naming the line (`items[i].unit_price_cents`) and nothing is
/// stored.
///
/// Quotas per customer (429 with `Retry-After`, nothing stored): at most 20
/// orders still PENDING or PAID (TOO_MANY_OPEN_ORDERS) and at most 10 new
/// orders a minute (ORDER_RATE_LIMITED); both are configurable. A retry
/// with the `Idempotency-Key` of an order placed before still gets that
/// order.
#[api_v2_operation(tags(Orders))]
pub async fn place_order(
    user: AuthUser,
    key: IdempotencyKeyHeader,
    body: web::Json<PlaceOrderRequest>,
    pool: web::Data<DbPool>,
    metrics: web::Data<OrderMetrics>,
    placement: web::Data<Placement>,
    req: HttpRequest,
) -> Result<PlacedOrder, ApiError> {
    let parsed = parse_new_order(&body).map_err(ApiError::validation)?;
    let idempotency = key.0.map(|key| IdempotencyKey {
        key,
        request_hash: request_hash(&body),
    });
    let mut conn = pool.get().await?;
    // A product that changes between the catalog read and the insert makes
    // the insert store nothing: price again (a few times at most).
    let mut attempts = 0;
    let placed = loop {
        attempts += 1;
        // After a catalog change, from the table.
        let fresh = if attempts == 1 {
            Fresh::Memory
        } else {
            Fresh::Table
        };
        let new_order = match price_order(&mut conn, &placement.catalog, &parsed, fresh).await {
            Ok(new_order) => new_order,
            Err(Refused::Api(error)) => return Err(error),
            Err(Refused::Pricing(error)) => {
                // A retry of a request that was placed before the catalog
                // changed still gets its order.
                if let Some(placed) = replay(&mut conn, user.user_id, idempotency.as_ref()).await? {
                    break placed;
                }
                return Err(error);
            }
        };
        let trace_id = trace_id(&req);
        let attempt = conn
            .transaction::<_, PlaceError, _>(async |conn| {
                if let Some(exceeded) = quotas::check(conn, user.user_id, &placement.quotas).await?
                {
                    return Ok(Err(exceeded));
                }
                store::place_order(
                    conn,
                    user.user_id,
                    &new_order,
                    idempotency.as_ref(),
                    &trace_id,
                )
                .await
                .map(Ok)
            })
            .await;
        match attempt {
            Ok(Ok(placed)) => break placed,
            Ok(Err(exceeded)) => {
                // A retry of a request whose order was placed before gets it.
                if let Some(placed) = replay(&mut conn, user.user_id, idempotency.as_ref()).await? {
                    break placed;
                }
                tracing::info!(customer_id = %user.user_id, ?exceeded, "placement over quota");
                return Err(over_quota(exceeded, &metrics));
            }
            Err(PlaceError::CatalogChanged) if attempts < 3 => continue,
            Err(PlaceError::CatalogChanged) => {
                return Err(ApiError::conflict(
                    "CATALOG_CHANGED",
                    "the products of this order keep changing; retry in a moment",
                ));
            }
            Err(PlaceError::KeyReused) => return Err(key_reused()),
            Err(PlaceError::Store(e)) => return Err(ApiError::internal(e)),
        }
    };
    Ok(match placed {
        Placed::Created(view) => {
            metrics.orders_placed.inc();
            tracing::info!(order_id = %view.order.id, total_cents = view.order.total_cents, "order placed");
            PlacedOrder {
                order: view.into(),
                replayed: false,
            }
        }
        Placed::Replayed(view) => PlacedOrder {
            order: view.into(),
            replayed: true,
        },
    })
}

/// The order an earlier request with this idempotency key placed, if any.
async fn replay(
    conn: &mut AsyncPgConnection,
    customer_id: Uuid,
    idempotency: Option<&IdempotencyKey>,
) -> Result<Option<Placed>, ApiError> {
    let Some(idempotency) = idempotency else {
        return Ok(None);
    };
    match store::replay(conn, customer_id, idempotency).await {
        Ok(placed) => Ok(placed),
        Err(PlaceError::KeyReused) => Err(key_reused()),
        Err(e) => Err(ApiError::internal(e)),
    }
}

fn key_reused() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "IDEMPOTENCY_KEY_REUSED",
        "this Idempotency-Key was already used with a different request body",
    )
}

/// Get one of your orders
///
/// With `Prefer: wait=N` (1-20 s) on an order the saga is still working on
/// (PENDING or PAID), the answer waits until the order changes (or, with
/// `until=settled`, until the saga is done with it) or N seconds pass, then
/// returns the current order with `Preference-Applied: wait=N`.
#[api_v2_operation(tags(Orders))]
pub async fn get_order(
    user: AuthUser,
    path: web::Path<Uuid>,
    wait: PreferWait,
    query: web::Query<GetOrderQuery>,
    pool: web::Data<DbPool>,
    changes: web::Data<OrderChanges>,
) -> Result<FetchedOrder, ApiError> {
    let order_id = path.into_inner();
    let until = query.into_inner().until;
    let Some(seconds) = wait.0 else {
        let view = read_order(&pool, order_id, user.user_id).await?;
        return Ok(FetchedOrder {
            order: view.into(),
            waited_seconds: None,
        });
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds.into());
    // Subscribed before the first read, so a change committed after that
    // read wakes us even if it commits before we start waiting.
    let mut subscription = changes.subscribe(order_id);
    let first = read_order(&pool, order_id, user.user_id).await?;
    if is_settled(&first) {
        return Ok(FetchedOrder {
            order: first.into(),
            waited_seconds: None,
        });
    }
    // No connection is held while waiting: each read takes one briefly.
    // The lines never change once placed: only the order row is read again.
    let mut last = first;
    let current = loop {
        match subscription.wait(deadline).await {
            Wake::TimedOut => {
                break reread_order(&pool, last, user.user_id).await?;
            }
            // Stopping: answer with what we have instead of holding the
            // request (and a database round trip) up.
            Wake::ShuttingDown => break last,
            // Waiting for the outcome, and this change left the saga working
            // on the order: nothing to answer and nothing to read (the change
            // that settles it is announced too).
            Wake::Notified(Some(status)) if until == WaitUntil::Settled && !status.is_settled() => {
            }
            // A notification may be for a change the first read already saw
            // (committed just before it): only a real change answers.
            Wake::Notified(_) | Wake::Recheck => {
                let current = reread_order(&pool, last.clone(), user.user_id).await?;
                let answer = match until {
                    WaitUntil::Change => current.order != last.order,
                    WaitUntil::Settled => is_settled(&current),
                };
                if answer {
                    break current;
                }
                last = current;
            }
        }
    };
    Ok(FetchedOrder {
        order: current.into(),
        waited_seconds: Some(seconds),
    })
}

/// Whether the saga is done with the order (an unreadable status counts as
/// done: waiting would not make it readable).
fn is_settled(view: &OrderView) -> bool {
    view.order
        .status
        .parse::<OrderStatus>()
        .map_or(true, OrderStatus::is_settled)
}

/// One of `customer_id`'s orders; the pooled connection is returned at once.
async fn read_order(
    pool: &DbPool,
    order_id: Uuid,
    customer_id: Uuid,
) -> Result<OrderView, ApiError> {
    let mut conn = pool.get().await?;
    store::find_order(&mut conn, order_id, customer_id)
        .await?
        .ok_or_else(|| ApiError::not_found("order"))
}

/// `view` with its order row read again (its lines are immutable).
async fn reread_order(
    pool: &DbPool,
    view: OrderView,
    customer_id: Uuid,
) -> Result<OrderView, ApiError> {
    let mut conn = pool.get().await?;
    let order = store::find_order_row(&mut conn, view.order.id, customer_id)
        .await?
        .ok_or_else(|| ApiError::not_found("order"))?;
    Ok(OrderView { order, ..view })
}

/// List your orders, newest first
#[api_v2_operation(tags(Orders))]
pub async fn list_orders(
    user: AuthUser,
    query: web::Query<PageQuery>,
    pool: web::Data<DbPool>,
) -> Result<web::Json<OrderPage>, ApiError> {
    let requested = query.page()?;
    let mut conn = pool.get().await?;
    let (views, total) =
        store::list_orders(&mut conn, user.user_id, requested.page, requested.page_size).await?;
    let items = views.into_iter().map(Order::from).collect();
    Ok(web::Json(OrderPage::new(requested, items, total)))
}

/// Cancel one of your orders
///
/// Allowed once the order is PAID or DELIVERY_SCHEDULED: answers 202 and
/// the order becomes CANCELLED when the refund is confirmed. A PENDING order
/// (payment in progress) answers 409 ORDER_NOT_CANCELLABLE: retry shortly.
/// A DELIVERY_SCHEDULED order can be cancelled until 2 hours (configurable)
/// before its delivery window starts; later, 409 TOO_LATE_TO_CANCEL.
#[api_v2_operation(tags(Orders))]
pub async fn cancel_order(
    user: AuthUser,
    path: web::Path<Uuid>,
    body: OptionalJson<CancelRequest>,
    pool: web::Data<DbPool>,
    cancellation: web::Data<CancellationConfig>,
    req: HttpRequest,
) -> Result<AcceptedJson<Order>, ApiError> {
    let note = body
        .0
        .and_then(|b| b.reason)
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty());
    if let Some(note) = &note
        && (note.chars().count() > MAX_NOTE_CHARS || note.chars().any(char::is_control))
    {
        return Err(ApiError::validation(vec![FieldError {
            field: "reason".into(),
            code: "invalid".into(),
            message: format!("at most {MAX_NOTE_CHARS} characters, no control characters"),
        }]));
    }
    let mut conn = pool.get().await?;
    let view = store::request_cancellation(
        &mut conn,
        path.into_inner(),
        user.user_id,
        note.as_deref(),
        cancellation.cutoff_before_window,
        &trace_id(&req),
    )
    .await
    .map_err(|error| match error {
        CancelError::NotFound => ApiError::not_found("order"),
        CancelError::NotCancellable(why) => ApiError::conflict("ORDER_NOT_CANCELLABLE", why),
        CancelError::AlreadyRequested => ApiError::conflict(
            "CANCELLATION_ALREADY_REQUESTED",
            "cancellation was already requested; the refund is under way",
        ),
        CancelError::TooLate { window_start } => ApiError::conflict(
            "TOO_LATE_TO_CANCEL",
            format!(
                "the delivery window starts at {}; cancelling closes {} minutes before it",
                window_start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                cancellation.cutoff_before_window.as_secs() / 60
            ),
        ),
        CancelError::Store(e) => ApiError::internal(e),
    })?;
    tracing::info!(order_id = %view.order.id, "cancellation requested");
    Ok(AcceptedJson(view.into()))
}
