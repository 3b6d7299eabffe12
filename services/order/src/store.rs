//! The order tables: every read and write of orders goes through here, and
//! every write that announces something enqueues its event in the same
//! transaction. [`OrderRow::change_status`] is the one place a status
//! changes, [`save_saga`] the one that writes it.

use std::sync::LazyLock;

use chrono::{DateTime, SubsecRound, Utc};
use commerce_common::{
    db::{self, Reuse},
    events::{self, Event},
    outbox,
};
use diesel::{prelude::*, result::Error as DieselError};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::{
    domain::{
        DeliveryState, IllegalTransition, NewOrder, OrderStatus, StatusChange,
        order_status::UnknownStatus,
    },
    schema::{idempotency_keys, order_items, orders, products},
};

pub mod redrive;

/// The reason the order service puts on `OrderCancellationRequested`; the
/// payment service refunds with it and the order ends CANCELLED with it.
pub const CUSTOMER_CANCELLED: &str = "CUSTOMER_CANCELLED";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Database(#[from] DieselError),
    #[error(transparent)]
    IllegalTransition(#[from] IllegalTransition),
    #[error("order {order_id} holds a status this code does not know: {source}")]
    CorruptStatus {
        order_id: Uuid,
        source: UnknownStatus,
    },
    #[error("order {0} was changed concurrently")]
    LostUpdate(Uuid),
}

#[derive(Debug, Clone, PartialEq, Queryable, QueryableByName, Selectable, Identifiable)]
#[diesel(table_name = orders)]
pub struct OrderRow {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub status: String,
    pub status_reason: Option<String>,
    pub total_cents: i64,
    pub shipping_name: String,
    pub shipping_street: String,
    pub shipping_city: String,
    pub shipping_postal_code: String,
    pub shipping_country: String,
    pub cancellation_requested_at: Option<DateTime<Utc>>,
    pub cancellation_note: Option<String>,
    #[diesel(embed)]
    pub facts: SagaFacts,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl OrderRow {
    pub fn status(&self) -> Result<OrderStatus, StoreError> {
        self.status
            .parse()
            .map_err(|source| StoreError::CorruptStatus {
                order_id: self.id,
                source,
            })
    }

    /// Where the order goes, as `OrderCreated` and the API carry it.
    pub fn shipping_address(&self) -> events::Address {
        events::Address {
            name: self.shipping_name.clone(),
            street: self.shipping_street.clone(),
            city: self.shipping_city.clone(),
            postal_code: self.shipping_postal_code.clone(),
            country: self.shipping_country.clone(),
        }
    }
}

/// What payment and delivery said about an order, written back as a whole
/// (by [`save_saga`]).
#[derive(Debug, Clone, PartialEq, Default, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = orders)]
pub struct SagaFacts {
    pub payment_status: Option<String>,
    pub payment_id: Option<Uuid>,
    pub payment_amount_cents: Option<i64>,
    pub payment_reason: Option<String>,
    pub delivery_status: Option<String>,
    pub delivery_id: Option<Uuid>,
    pub delivery_window_start: Option<DateTime<Utc>>,
    pub delivery_window_end: Option<DateTime<Utc>>,
    pub tracking_number: Option<String>,
    pub delivery_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = order_items)]
pub struct ItemRow {
    pub order_id: Uuid,
    pub line_no: i32,
    pub sku: String,
    pub quantity: i32,
    pub unit_price_cents: i64,
}

/// An order with its lines.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderView {
    pub order: OrderRow,
    pub items: Vec<ItemRow>,
}

/// `Idempotency-Key` of a request and the hash of its canonical body.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub key: String,
    pub request_hash: String,
}

#[derive(Debug)]
pub enum Placed {
    Created(OrderView),
    /// The key was seen before with the same body: the order it created.
    Replayed(OrderView),
}

#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error("the idempotency key was used with another request body")]
    KeyReused,
    /// A product of the order changed (price, active flag) after its price
    /// was read: nothing was stored; price the order again.
    #[error("a product changed while the order was placed")]
    CatalogChanged,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Stores a new PENDING order and its `OrderCreated` event, or with a known
/// idempotency key returns the order that key created.
pub async fn place_order(
    conn: &mut AsyncPgConnection,
    customer_id: Uuid,
    order: &NewOrder,
    idempotency: Option<&IdempotencyKey>,
    trace_id: &str,
) -> Result<Placed, PlaceError> {
    let order_id = Uuid::now_v7();
    if let Some(row) = insert_order(conn, order_id, customer_id, order, idempotency, trace_id)
        .await
        .optional()?
    {
        let items = order
            .lines()
            .iter()
            .zip(0..)
            .map(|(line, line_no)| ItemRow {
                order_id,
                line_no,
                sku: line.sku.as_str().to_owned(),
                quantity: line.quantity.get(),
                unit_price_cents: line.unit_price.get(),
            })
            .collect();
        return Ok(Placed::Created(OrderView { order: row, items }));
    }
    // Nothing was inserted: the key was claimed before (a concurrent claim
    // made the insert wait until it committed; its order is committed too),
    // or a product changed since its price was read.
    if let Some(idem) = idempotency
        && let Some(placed) = replay(conn, customer_id, idem).await?
    {
        return Ok(placed);
    }
    Err(PlaceError::CatalogChanged)
}

/// The order an earlier request with this idempotency key created (`None`
/// when the key is new); [`PlaceError::KeyReused`] when that request had
/// another body.
pub async fn replay(
    conn: &mut AsyncPgConnection,
    customer_id: Uuid,
    idem: &IdempotencyKey,
) -> Result<Option<Placed>, PlaceError> {
    let Some((hash, existing)): Option<(String, Uuid)> = idempotency_keys::table
        .find((customer_id, &idem.key))
        .select((idempotency_keys::request_hash, idempotency_keys::order_id))
        .first(conn)
        .await
        .optional()?
    else {
        return Ok(None);
    };
    if hash != idem.request_hash {
        return Err(PlaceError::KeyReused);
    }
    let view = find_order(conn, existing, customer_id)
        .await?
        .ok_or(DieselError::NotFound)?;
    Ok(Some(Placed::Replayed(view)))
}

/// A product of the catalog.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = products)]
pub struct ProductRow {
    pub sku: String,
    pub name: String,
    pub price_cents: i64,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The catalog's price and active flag of each of `skus` that exists: one
/// primary-key lookup per distinct SKU, one statement.
pub async fn catalog_prices(
    conn: &mut AsyncPgConnection,
    skus: &[&str],
) -> Result<Vec<(String, i64, bool)>, DieselError> {
    products::table
        .filter(products::sku.eq_any(skus))
        .select((products::sku, products::price_cents, products::active))
        .load(conn)
        .await
}

/// One product, active or not.
pub async fn find_product(
    conn: &mut AsyncPgConnection,
    sku: &str,
) -> Result<Option<ProductRow>, DieselError> {
    products::table
        .find(sku)
        .select(ProductRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// A page (1-based) of the active products by SKU, and how many there are.
pub async fn list_products(
    conn: &mut AsyncPgConnection,
    page: i64,
    page_size: i64,
) -> Result<(Vec<ProductRow>, i64), DieselError> {
    let active = products::table.filter(products::active);
    let by_sku = active.order(products::sku).select(ProductRow::as_select());
    db::page(conn, by_sku, active.count(), page, page_size).await
}

/// Deletes the idempotency keys created more than `retention` ago; returns
/// how many.
pub async fn purge_idempotency_keys(
    conn: &mut AsyncPgConnection,
    retention: std::time::Duration,
) -> Result<usize, DieselError> {
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let cutoff = Utc::now()
        .checked_sub_signed(retention)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    diesel::delete(idempotency_keys::table.filter(idempotency_keys::created_at.lt(cutoff)))
        .execute(conn)
        .await
}

/// The idempotency key (if any), the order, its lines and its outbox row in
/// one statement: one round trip and one implicit transaction instead of
/// six. With a key that was claimed before, nothing is inserted and no row
/// comes back. The lines' foreign key and the key's deferred one are checked
/// at the end of the statement, when the order row exists.
///
/// The prices were read from the catalog just before; `priced` checks in
/// the statement's snapshot that every line's SKU is still active at that
/// price (one primary-key lookup per line), and nothing is inserted when a
/// product changed in between.
static PLACE_ORDER: LazyLock<String> = LazyLock::new(|| {
    format!(
        "
WITH priced AS (
    SELECT NOT EXISTS (
        SELECT 1
        FROM unnest($12::text[], $14::int8[]) AS line (sku, unit_price_cents)
        LEFT JOIN products ON products.sku = line.sku
        WHERE products.sku IS NULL OR NOT products.active
           OR products.price_cents <> line.unit_price_cents
    ) AS ok
), claimed AS (
    INSERT INTO idempotency_keys (customer_id, key, request_hash, order_id)
    SELECT $2, $3, $4, $1 WHERE $3 IS NOT NULL AND (SELECT ok FROM priced)
    ON CONFLICT DO NOTHING
    RETURNING 1
), placed AS (
    INSERT INTO orders (id, customer_id, status, total_cents, shipping_name,
                        shipping_street, shipping_city, shipping_postal_code, shipping_country,
                        placed_event_id)
    SELECT $1, $2, $5, $6, $7, $8, $9, $10, $11, $15
    WHERE (SELECT ok FROM priced) AND ($3 IS NULL OR EXISTS (SELECT 1 FROM claimed))
    RETURNING *
), lines AS (
    INSERT INTO order_items (order_id, line_no, sku, quantity, unit_price_cents)
    SELECT placed.id, (line.n - 1)::int4, line.sku, line.quantity, line.unit_price_cents
    FROM placed,
         unnest($12::text[], $13::int4[], $14::int8[])
             WITH ORDINALITY AS line (sku, quantity, unit_price_cents, n)
), announced AS ({})
SELECT * FROM placed",
        outbox::insert_from("placed", 15)
    )
});

async fn insert_order(
    conn: &mut AsyncPgConnection,
    order_id: Uuid,
    customer_id: Uuid,
    order: &NewOrder,
    idempotency: Option<&IdempotencyKey>,
    trace_id: &str,
) -> Result<OrderRow, DieselError> {
    use diesel::sql_types::Uuid as SqlUuid;
    use diesel::sql_types::{Array, BigInt, Integer, Nullable, Text};

    let address = order.address();
    let lines = order.lines();
    let skus: Vec<&str> = lines.iter().map(|line| line.sku.as_str()).collect();
    let quantities: Vec<i32> = lines.iter().map(|line| line.quantity.get()).collect();
    let prices: Vec<i64> = lines.iter().map(|line| line.unit_price.get()).collect();
    let event = order_created(order_id, customer_id, order);
    let announcement = outbox::NewRow::new(&event, trace_id);
    let query = diesel::sql_query(PLACE_ORDER.as_str())
        .into_boxed()
        .bind::<SqlUuid, _>(order_id)
        .bind::<SqlUuid, _>(customer_id)
        .bind::<Nullable<Text>, _>(idempotency.map(|idem| idem.key.as_str()))
        .bind::<Nullable<Text>, _>(idempotency.map(|idem| idem.request_hash.as_str()))
        .bind::<Text, _>(OrderStatus::Pending.as_str())
        .bind::<BigInt, _>(order.total().get())
        .bind::<Text, _>(&address.name)
        .bind::<Text, _>(&address.street)
        .bind::<Text, _>(&address.city)
        .bind::<Text, _>(&address.postal_code)
        .bind::<Text, _>(&address.country)
        .bind::<Array<Text>, _>(&skus)
        .bind::<Array<Integer>, _>(&quantities)
        .bind::<Array<BigInt>, _>(&prices);
    announcement.bind(query).prepared().get_result(conn).await
}

fn order_created(order_id: Uuid, customer_id: Uuid, order: &NewOrder) -> Event {
    let address = order.address();
    Event::OrderCreated(events::OrderCreated {
        order_id,
        customer_id,
        items: order
            .lines()
            .iter()
            .map(|line| events::OrderLine {
                sku: line.sku.as_str().to_owned(),
                quantity: line.quantity.get(),
                unit_price_cents: line.unit_price.get(),
            })
            .collect(),
        total_cents: order.total().get(),
        shipping_address: events::Address {
            name: address.name.clone(),
            street: address.street.clone(),
            city: address.city.clone(),
            postal_code: address.postal_code.clone(),
            country: address.country.clone(),
        },
    })
}

/// One of `customer_id`'s orders; someone else's order is `None`, like a
/// missing one.
pub async fn find_order(
    conn: &mut AsyncPgConnection,
    order_id: Uuid,
    customer_id: Uuid,
) -> Result<Option<OrderView>, DieselError> {
    // One statement: the order row once per line (an order has 1-100).
    let rows: Vec<(OrderRow, Option<ItemRow>)> = orders::table
        .left_join(order_items::table)
        .filter(orders::id.eq(order_id))
        .filter(orders::customer_id.eq(customer_id))
        .order(order_items::line_no)
        .select((OrderRow::as_select(), Option::<ItemRow>::as_select()))
        .load(conn)
        .await?;
    let mut rows = rows.into_iter();
    let Some((order, first)) = rows.next() else {
        return Ok(None);
    };
    let items = first
        .into_iter()
        .chain(rows.filter_map(|(_, item)| item))
        .collect();
    Ok(Some(OrderView { order, items }))
}

/// The row of one of `customer_id`'s orders, without its lines.
pub async fn find_order_row(
    conn: &mut AsyncPgConnection,
    order_id: Uuid,
    customer_id: Uuid,
) -> Result<Option<OrderRow>, DieselError> {
    orders::table
        .find(order_id)
        .filter(orders::customer_id.eq(customer_id))
        .select(OrderRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// A page (1-based) of a customer's orders, newest first, and the number of
/// all their orders.
pub async fn list_orders(
    conn: &mut AsyncPgConnection,
    customer_id: Uuid,
    page: i64,
    page_size: i64,
) -> Result<(Vec<OrderView>, i64), DieselError> {
    let mine = orders::table.filter(orders::customer_id.eq(customer_id));
    let newest_first = mine
        .order((orders::created_at.desc(), orders::id.desc()))
        .select(OrderRow::as_select());
    let (rows, total): (Vec<OrderRow>, i64) =
        db::page(conn, newest_first, mine.count(), page, page_size).await?;
    let ids: Vec<Uuid> = rows.iter().map(|row| row.id).collect();
    let mut items: Vec<ItemRow> = order_items::table
        .filter(order_items::order_id.eq_any(&ids))
        .order((order_items::order_id, order_items::line_no))
        .select(ItemRow::as_select())
        .load(conn)
        .await?;
    let views = rows
        .into_iter()
        .map(|order| {
            let (mine, rest): (Vec<_>, Vec<_>) =
                items.drain(..).partition(|item| item.order_id == order.id);
            items = rest;
            OrderView { order, items: mine }
        })
        .collect();
    Ok((views, total))
}

/// Locks an order for the rest of the transaction.
pub async fn lock_order(
    conn: &mut AsyncPgConnection,
    order_id: Uuid,
) -> Result<Option<OrderRow>, DieselError> {
    orders::table
        .find(order_id)
        .select(OrderRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// An order locked by a saga transaction: the row as the transaction
/// changes it in memory, whether it did, and the `updated_at` it was read
/// with (what [`save_saga`] compares before writing).
#[derive(Debug)]
pub struct LockedOrder {
    pub row: OrderRow,
    pub changed: bool,
    read_at: DateTime<Utc>,
}

/// Locks the orders of `ids` (sorted, no repeats) that this database has,
/// for the rest of the transaction, in id order: the consumer's fetches of
/// two partitions, each locking the orders of its records in one
/// statement, take their row locks in the same order and cannot deadlock.
///
/// The rest of the transaction is planned without sequential scans where
/// an index will do. The saga's statements take a set of orders (`id =
/// ANY($1)`, a join with `unnest`); planned while `orders` is small, a
/// sequential scan is cheapest, and the connection keeps that plan (a
/// prepared statement) until the next `ANALYZE` while the table grows: on
/// a fresh stack at 100-200 orders a second that was 6,200 scans of the
/// whole table (16 million rows read) in its first 45 s. An index scan
/// costs the same on a small table and stays cheap after (the outbox
/// trigger's reason too, see its migration). The setting and the lock go
/// out together (pipelined; PostgreSQL runs them in order, so the lock is
/// planned with the setting): one round trip.
pub async fn lock_orders(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
) -> Result<Vec<LockedOrder>, DieselError> {
    let avoid_table_scans = diesel::sql_query("SET LOCAL enable_seqscan = off");
    let lock = orders::table
        .filter(orders::id.eq_any(ids))
        .order(orders::id)
        .select(OrderRow::as_select())
        .for_update();
    let shared: &AsyncPgConnection = conn;
    let (mut first, mut second) = (shared, shared);
    let (_, rows): (usize, Vec<OrderRow>) = futures::try_join!(
        avoid_table_scans.execute(&mut first),
        lock.load(&mut second)
    )?;
    Ok(rows
        .into_iter()
        .map(|row| LockedOrder {
            read_at: row.updated_at,
            row,
            changed: false,
        })
        .collect())
}

impl OrderRow {
    /// Moves the (locked) order along the state machine, in memory: the
    /// new status and the `OrderStatusChanged` event announcing it, which
    /// [`save_saga`] writes together with the row.
    pub fn change_status(
        &mut self,
        change: StatusChange,
    ) -> Result<(OrderStatus, Event), StoreError> {
        let to = self.status()?.apply(&change)?;
        let reason = change.reason().map(str::to_owned);
        self.status = to.as_str().to_owned();
        self.status_reason = reason.clone();
        let event = Event::OrderStatusChanged(events::OrderStatusChanged {
            order_id: self.id,
            customer_id: self.customer_id,
            status: to.as_str().to_owned(),
            reason,
        });
        Ok((to, event))
    }
}

/// `updated_at` of a saga write, to the microsecond PostgreSQL keeps: every
/// saga write is also a compare-and-set on the `updated_at` it read, so a
/// write based on a stale copy of the row fails (and is retried) instead of
/// undoing what another transaction wrote, whatever happened to the row lock.
fn write_time() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Every order a fetch of saga events changed (status, reason and facts)
/// and their `OrderStatusChanged` events, in one statement whatever their
/// number: one array per column, `UPDATE ... FROM unnest(..)` and the
/// outbox insert of [`outbox::insert_all`]. Each update is a compare-and-set
/// on the `updated_at` that was read; when one matches nothing, nothing is
/// announced either.
static SAVE_SAGA: LazyLock<String> = LazyLock::new(|| {
    format!(
        "
WITH changed AS (
    UPDATE orders AS o
    SET status = c.status, status_reason = c.status_reason, updated_at = $1,
        payment_status = c.payment_status, payment_id = c.payment_id,
        payment_amount_cents = c.payment_amount_cents, payment_reason = c.payment_reason,
        delivery_status = c.delivery_status, delivery_id = c.delivery_id,
        delivery_window_start = c.delivery_window_start,
        delivery_window_end = c.delivery_window_end, tracking_number = c.tracking_number,
        delivery_reason = c.delivery_reason
    FROM unnest($2::uuid[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::uuid[],
                $8::int8[], $9::text[], $10::text[], $11::uuid[], $12::timestamptz[],
                $13::timestamptz[], $14::text[], $15::text[])
         AS c (id, read_at, status, status_reason, payment_status, payment_id,
               payment_amount_cents, payment_reason, delivery_status, delivery_id,
               delivery_window_start, delivery_window_end, tracking_number, delivery_reason)
    WHERE o.id = c.id AND o.updated_at = c.read_at
    RETURNING o.id
), announced AS ({})
SELECT ARRAY(SELECT id FROM changed) AS changed",
        // Nothing is announced unless every order was written.
        outbox::insert_all(
            16,
            Some("(SELECT count(*) FROM changed) = cardinality($2::uuid[])")
        )
    )
});

#[derive(QueryableByName)]
struct Saved {
    #[diesel(sql_type = diesel::sql_types::Array<diesel::sql_types::Uuid>)]
    changed: Vec<Uuid>,
}

/// Writes what a saga transaction did to its locked orders (`changed`)
/// and announces it (`announcements`, in order), in the caller's
/// transaction and one statement. An order changed by someone else since
/// it was read is a [`StoreError::LostUpdate`]: the caller rolls back.
pub async fn save_saga(
    conn: &mut AsyncPgConnection,
    changed: &[&LockedOrder],
    announcements: &[outbox::NewRow<'_>],
) -> Result<(), StoreError> {
    use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamptz, Uuid as SqlUuid};

    if changed.is_empty() && announcements.is_empty() {
        return Ok(());
    }
    fn column<'a, T>(changed: &[&'a LockedOrder], f: impl Fn(&'a OrderRow) -> T) -> Vec<T> {
        changed.iter().map(|order| f(&order.row)).collect()
    }
    let query = diesel::sql_query(SAVE_SAGA.as_str())
        .into_boxed()
        .bind::<Timestamptz, _>(write_time())
        .bind::<Array<SqlUuid>, _>(column(changed, |r| r.id))
        .bind::<Array<Timestamptz>, _>(changed.iter().map(|o| o.read_at).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(column(changed, |r| r.status.as_str()))
        .bind::<Array<Nullable<Text>>, _>(column(changed, |r| r.status_reason.as_deref()))
        .bind::<Array<Nullable<Text>>, _>(column(changed, |r| r.facts.payment_status.as_deref()))
        .bind::<Array<Nullable<SqlUuid>>, _>(column(changed, |r| r.facts.payment_id))
        .bind::<Array<Nullable<BigInt>>, _>(column(changed, |r| r.facts.payment_amount_cents))
        .bind::<Array<Nullable<Text>>, _>(column(changed, |r| r.facts.payment_reason.as_deref()))
        .bind::<Array<Nullable<Text>>, _>(column(changed, |r| r.facts.delivery_status.as_deref()))
        .bind::<Array<Nullable<SqlUuid>>, _>(column(changed, |r| r.facts.delivery_id))
        .bind::<Array<Nullable<Timestamptz>>, _>(column(changed, |r| r.facts.delivery_window_start))
        .bind::<Array<Nullable<Timestamptz>>, _>(column(changed, |r| r.facts.delivery_window_end))
        .bind::<Array<Nullable<Text>>, _>(column(changed, |r| r.facts.tracking_number.as_deref()))
        .bind::<Array<Nullable<Text>>, _>(column(changed, |r| r.facts.delivery_reason.as_deref()));
    let saved: Saved = outbox::bind_all(announcements, query)
        .prepared()
        .get_result(conn)
        .await?;
    match changed.iter().find(|o| !saved.changed.contains(&o.row.id)) {
        Some(lost) => Err(StoreError::LostUpdate(lost.row.id)),
        None => Ok(()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("order not found")]
    NotFound,
    #[error("{0}")]
    NotCancellable(&'static str),
    #[error("cancellation already requested")]
    AlreadyRequested,
    /// The delivery window starts within the cutoff.
    #[error("the delivery window starts at {window_start}")]
    TooLate { window_start: DateTime<Utc> },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// `?` on a diesel error in a request with refusals of its own: a
/// [`StoreError`].
macro_rules! diesel_is_store_error {
    ($($error:ident),+) => {
        $(impl From<DieselError> for $error {
            fn from(error: DieselError) -> Self {
                $error::Store(error.into())
            }
        })+
    };
}

diesel_is_store_error!(PlaceError, CancelError);

/// The customer asks to cancel: allowed once paid, before the order ends
/// and, once a delivery window is booked, until `cutoff` before it starts;
/// writes `OrderCancellationRequested`. The order becomes CANCELLED when the
/// refund arrives.
pub async fn request_cancellation(
    conn: &mut AsyncPgConnection,
    order_id: Uuid,
    customer_id: Uuid,
    note: Option<&str>,
    cutoff: std::time::Duration,
    trace_id: &str,
) -> Result<OrderView, CancelError> {
    conn.transaction::<_, CancelError, _>(async |conn| {
        let row = lock_order(conn, order_id)
            .await?
            .filter(|row| row.customer_id == customer_id)
            .ok_or(CancelError::NotFound)?;
        let status = row.status()?;
        if status == OrderStatus::Pending {
            return Err(CancelError::NotCancellable(
                "payment is in progress; retry in a moment",
            ));
        }
        if !status.accepts_cancellation() {
            return Err(CancelError::NotCancellable("the order has already ended"));
        }
        if row.cancellation_requested_at.is_some() {
            return Err(CancelError::AlreadyRequested);
        }
        if row.facts.delivery_status.as_deref() == Some(DeliveryState::Failed.as_str()) {
            return Err(CancelError::NotCancellable(
                "no delivery window was found; the order is being cancelled and refunded already",
            ));
        }
        let now = Utc::now();
        if status == OrderStatus::DeliveryScheduled
            && let Some(window_start) = row.facts.delivery_window_start
            && now + cutoff >= window_start
        {
            return Err(CancelError::TooLate { window_start });
        }
        let event = Event::OrderCancellationRequested(events::OrderCancellationRequested {
            order_id,
            customer_id,
            reason: CUSTOMER_CANCELLED.to_owned(),
        });
        let announcement = outbox::NewRow::new(&event, trace_id);
        diesel::update(orders::table.find(order_id))
            .set((
                orders::cancellation_requested_at.eq(now),
                orders::cancellation_note.eq(note),
                orders::updated_at.eq(now),
                orders::cancellation_event_id.eq(announcement.id),
            ))
            .prepared()
            .execute(conn)
            .await?;
        outbox::insert(conn, &announcement).await?;
        find_order(conn, order_id, customer_id)
            .await?
            .ok_or(CancelError::NotFound)
    })
    .await
}

/// Number of orders per status, for the metrics endpoint.
pub async fn count_by_status(
    conn: &mut AsyncPgConnection,
) -> Result<Vec<(String, i64)>, DieselError> {
    orders::table
        .group_by(orders::status)
        .select((orders::status, diesel::dsl::count_star()))
        .load(conn)
        .await
}
