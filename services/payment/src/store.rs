//! Where money moves: opening wallets, charging orders, refunds and
//! top-ups, each with its ledger entry and (for the saga) its outbox event
//! in the caller's transaction.

use std::{collections::HashSet, sync::LazyLock};

use chrono::{DateTime, Utc};
use commerce_common::{
    consumer::ParticipantAnswer,
    db::Reuse,
    events::{Event, OrderCreated, PaymentConfirmed, PaymentFailed, PaymentRefunded},
    outbox,
};
use diesel::{dsl::now, prelude::*, sql_types};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::{
    domain::{ChargeAmount, EntryKind, FailureReason, PaymentStatus, RefundReason, TopUpAmount},
    schema::{payments, wallet_entries, wallets},
};

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = wallets)]
pub struct Wallet {
    pub customer_id: Uuid,
    pub balance_cents: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = payments)]
pub struct Payment {
    pub id: Uuid,
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub amount_cents: i64,
    pub status: String,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub refunded_at: Option<DateTime<Utc>>,
    pub outcome_event_id: Option<Uuid>,
    pub refund_event_id: Option<Uuid>,
}

/// What happened to an order's charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargeOutcome {
    Confirmed,
    Failed,
    /// The order already has a payment: nothing was done.
    AlreadyCharged,
}

async fn add_entry(
    conn: &mut AsyncPgConnection,
    customer_id: Uuid,
    kind: EntryKind,
    amount_cents: i64,
    order_id: Option<Uuid>,
) -> QueryResult<()> {
    diesel::insert_into(wallet_entries::table)
        .values((
            wallet_entries::id.eq(Uuid::now_v7()),
            wallet_entries::customer_id.eq(customer_id),
            wallet_entries::kind.eq(kind.as_str()),
            wallet_entries::amount_cents.eq(amount_cents),
            wallet_entries::order_id.eq(order_id),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Opens the customer's wallet with `initial_credit_cents` unless it exists;
/// true when it was opened now.
pub async fn open_wallet(
    conn: &mut AsyncPgConnection,
    customer_id: Uuid,
    initial_credit_cents: i64,
) -> QueryResult<bool> {
    let opened = diesel::insert_into(wallets::table)
        .values((
            wallets::customer_id.eq(customer_id),
            wallets::balance_cents.eq(initial_credit_cents),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?
        > 0;
    if opened {
        add_entry(
            conn,
            customer_id,
            EntryKind::InitialCredit,
            initial_credit_cents,
            None,
        )
        .await?;
        tracing::info!(%customer_id, initial_credit_cents, "wallet opened");
    }
    Ok(opened)
}

/// One order to charge: its total, parsed, and the trace of its request.
#[derive(Debug, Clone, Copy)]
pub struct ChargeRequest<'a> {
    pub order: &'a OrderCreated,
    pub amount: ChargeAmount,
    pub trace_id: &'a str,
}

/// A charge's payment row, written as confirmed, and the PaymentConfirmed
/// it is announced with when the debit succeeds.
struct NewPayment<'a> {
    id: Uuid,
    confirmed: outbox::NewRow<'a>,
}

/// Charges each order's total to its customer's wallet (opened when
/// missing), in order: PaymentConfirmed, or
/// PaymentFailed{INSUFFICIENT_FUNDS} with the balance untouched. An order
/// is charged at most once (`AlreadyCharged` when it has a payment, or
/// came before in `requests`).
///
/// Two statements whatever the number of orders when every wallet exists
/// and covers its orders: the payment rows, then the debits with their
/// ledger entries and outbox rows. A customer's second order of the batch,
/// and an order whose wallet is missing or short, are charged alone after
/// (see [`settle`]).
pub async fn charge_all(
    conn: &mut AsyncPgConnection,
    requests: &[ChargeRequest<'_>],
    initial_credit_cents: i64,
) -> QueryResult<Vec<ChargeOutcome>> {
    let payments: Vec<NewPayment> = requests
        .iter()
        .map(|request| {
            let id = Uuid::now_v7();
            let confirmed = Event::PaymentConfirmed(PaymentConfirmed {
                payment_id: id,
                order_id: request.order.order_id,
                customer_id: request.order.customer_id,
                amount_cents: request.amount.cents(),
            });
            NewPayment {
                id,
                confirmed: outbox::NewRow::new(&confirmed, request.trace_id),
            }
        })
        .collect();
    // The payments first, as confirmed: the UNIQUE order_id says which
    // orders were charged already (the wallet reference is checked at
    // commit, when the wallet exists in any case).
    let mut new = insert_payments(conn, requests, &payments).await?;
    let mut outcomes = vec![ChargeOutcome::AlreadyCharged; requests.len()];
    let (mut first, mut alone) = (Vec::new(), Vec::new());
    let mut customers = HashSet::new();
    for (i, request) in requests.iter().enumerate() {
        if !new.remove(&request.order.order_id) {
            continue;
        }
        if customers.insert(request.order.customer_id) {
            first.push(i);
        } else {
            alone.push((i, Debit::NotTried));
        }
    }
    let debited = debit_all(conn, first.iter().map(|&i| (&requests[i], &payments[i]))).await?;
    for i in first {
        if debited.contains(&requests[i].order.order_id) {
            outcomes[i] = ChargeOutcome::Confirmed;
            charged(&requests[i], PaymentStatus::Confirmed);
        } else {
            alone.push((i, Debit::Refused));
        }
    }
    alone.sort_unstable_by_key(|&(i, _)| i);
    for (i, debit) in alone {
        outcomes[i] = settle(
            conn,
            &requests[i],
            &payments[i],
            debit,
            initial_credit_cents,
        )
        .await?;
    }
    Ok(outcomes)
}

fn charged(request: &ChargeRequest<'_>, status: PaymentStatus) {
    tracing::info!(order_id = %request.order.order_id, status = status.as_str(),
        amount_cents = request.amount.cents(), "order charged");
}

/// Whether an order's debit was tried with the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Debit {
    NotTried,
    /// Tried: no wallet, or not enough in it.
    Refused,
}

/// Inserts the payment rows (as confirmed) of orders that have none; the
/// orders inserted.
async fn insert_payments(
    conn: &mut AsyncPgConnection,
    requests: &[ChargeRequest<'_>],
    payments: &[NewPayment<'_>],
) -> QueryResult<HashSet<Uuid>> {
    #[derive(QueryableByName)]
    struct Inserted {
        #[diesel(sql_type = sql_types::Uuid)]
        order_id: Uuid,
    }
    let column = |f: fn(&ChargeRequest) -> Uuid| requests.iter().map(f).collect::<Vec<_>>();
    let inserted: Vec<Inserted> = diesel::sql_query(
        "INSERT INTO payments (id, order_id, customer_id, amount_cents, status, outcome_event_id) \
         SELECT id, order_id, customer_id, amount_cents, $5, outcome_event_id \
         FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::int8[], $6::uuid[]) \
              AS p (id, order_id, customer_id, amount_cents, outcome_event_id) \
         ON CONFLICT (order_id) DO NOTHING \
         RETURNING order_id",
    )
    .bind::<sql_types::Array<sql_types::Uuid>, _>(payments.iter().map(|p| p.id).collect::<Vec<_>>())
    .bind::<sql_types::Array<sql_types::Uuid>, _>(column(|r| r.order.order_id))
    .bind::<sql_types::Array<sql_types::Uuid>, _>(column(|r| r.order.customer_id))
    .bind::<sql_types::Array<sql_types::BigInt>, _>(amounts(requests.iter()))
    .bind::<sql_types::Text, _>(PaymentStatus::Confirmed.as_str())
    .bind::<sql_types::Array<sql_types::Uuid>, _>(
        payments.iter().map(|p| p.confirmed.id).collect::<Vec<_>>(),
    )
    .prepared()
    .load(conn)
    .await?;
    Ok(inserted.into_iter().map(|row| row.order_id).collect())
}

/// The charges' amounts, in cents.
fn amounts<'a, 'r: 'a>(requests: impl Iterator<Item = &'a ChargeRequest<'r>>) -> Vec<i64> {
    requests.map(|r| r.amount.cents()).collect()
}

/// A charge that was not debited with its batch: debited alone (a
/// customer's second order of the batch), else with the wallet opened if
/// missing (when the HTTP path, GET /api/wallet or a top-up, opens it at
/// this very moment, the insert waits for it and adds nothing, but the
/// wallet and its credit exist once it returns), else failed.
async fn settle(
    conn: &mut AsyncPgConnection,
    request: &ChargeRequest<'_>,
    payment: &NewPayment<'_>,
    debit: Debit,
    initial_credit_cents: i64,
) -> QueryResult<ChargeOutcome> {
    let once = || std::iter::once((request, payment));
    let mut debited = debit == Debit::NotTried && !debit_all(conn, once()).await?.is_empty();
    if !debited {
        open_wallet(conn, request.order.customer_id, initial_credit_cents).await?;
        debited = !debit_all(conn, once()).await?.is_empty();
    }
    if debited {
        charged(request, PaymentStatus::Confirmed);
        return Ok(ChargeOutcome::Confirmed);
    }
    let reason = FailureReason::InsufficientFunds.as_str();
    let event = Event::PaymentFailed(PaymentFailed {
        order_id: request.order.order_id,
        customer_id: request.order.customer_id,
        amount_cents: request.amount.cents(),
        reason: reason.into(),
    });
    let failed = outbox::NewRow::new(&event, request.trace_id);
    diesel::update(payments::table.find(payment.id))
        .set((
            payments::status.eq(PaymentStatus::Failed.as_str()),
            payments::reason.eq(reason),
            payments::outcome_event_id.eq(failed.id),
        ))
        .execute(conn)
        .await?;
    outbox::insert(conn, &failed).await?;
    charged(request, PaymentStatus::Failed);
    Ok(ChargeOutcome::Failed)
}

/// The debits, their ledger entries and their outbox rows (see [`debit_all`]).
static DEBIT_ALL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH d AS ( \
             SELECT * FROM unnest($1::uuid[], $2::int8[], $3::uuid[], $4::uuid[]) \
                 WITH ORDINALITY AS d (customer_id, amount_cents, entry_id, order_id, n)), \
         debited AS ( \
             UPDATE wallets w SET balance_cents = w.balance_cents - d.amount_cents, \
                                  updated_at = now() \
             FROM d WHERE w.customer_id = d.customer_id AND w.balance_cents >= d.amount_cents \
             RETURNING d.*), \
         entries AS ( \
             INSERT INTO wallet_entries (id, customer_id, kind, amount_cents, order_id) \
             SELECT entry_id, customer_id, $5, -amount_cents, order_id FROM debited), \
         announced AS ({}) \
         SELECT ARRAY(SELECT order_id FROM debited) AS debited",
        outbox::insert_all(6, Some("n IN (SELECT n FROM debited)"))
    )
});

/// Takes each order's total from its customer's wallet unless the balance
/// would go below zero (the CHECK constraint backs this up), with its
/// ledger entry and its `PaymentConfirmed` outbox row, in one statement;
/// the orders debited (a wallet short or missing: that order is not, and
/// nothing is written for it). One order per customer: a wallet is updated
/// once per statement.
async fn debit_all<'a, 'r: 'a>(
    conn: &mut AsyncPgConnection,
    charges: impl Iterator<Item = (&'a ChargeRequest<'r>, &'a NewPayment<'r>)>,
) -> QueryResult<Vec<Uuid>> {
    #[derive(QueryableByName)]
    struct Debited {
        #[diesel(sql_type = sql_types::Array<sql_types::Uuid>)]
        debited: Vec<Uuid>,
    }
    let (requests, payments): (Vec<&ChargeRequest>, Vec<&NewPayment>) = charges.unzip();
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let announcements: Vec<outbox::NewRow> = payments.iter().map(|p| p.confirmed.clone()).collect();
    let column = |f: fn(&ChargeRequest) -> Uuid| requests.iter().map(|r| f(r)).collect::<Vec<_>>();
    let query = diesel::sql_query(DEBIT_ALL.as_str())
        .into_boxed()
        .bind::<sql_types::Array<sql_types::Uuid>, _>(column(|r| r.order.customer_id))
        .bind::<sql_types::Array<sql_types::BigInt>, _>(amounts(requests.iter().copied()))
        .bind::<sql_types::Array<sql_types::Uuid>, _>(
            requests.iter().map(|_| Uuid::now_v7()).collect::<Vec<_>>(),
        )
        .bind::<sql_types::Array<sql_types::Uuid>, _>(column(|r| r.order.order_id))
        .bind::<sql_types::Text, _>(EntryKind::Charge.as_str());
    let debited: Debited = outbox::bind_all(&announcements, query)
        .prepared()
        .get_result(conn)
        .await?;
    Ok(debited.debited)
}

/// Gives a confirmed payment's money back (PaymentRefunded). Nothing
/// happens when the order has no confirmed payment (failed, or refunded
/// already); returns whether a refund was made.
pub async fn refund(
    conn: &mut AsyncPgConnection,
    order_id: Uuid,
    reason: RefundReason,
    trace_id: &str,
) -> QueryResult<bool> {
    let refund_event_id = Uuid::now_v7();
    let refunded: Option<Payment> = diesel::update(
        payments::table
            .filter(payments::order_id.eq(order_id))
            .filter(payments::status.eq(PaymentStatus::Confirmed.as_str())),
    )
    .set((
        payments::status.eq(PaymentStatus::Refunded.as_str()),
        payments::reason.eq(reason.as_str()),
        payments::refunded_at.eq(now),
        payments::updated_at.eq(now),
        payments::refund_event_id.eq(refund_event_id),
    ))
    .returning(Payment::as_returning())
    .prepared()
    .get_result(conn)
    .await
    .optional()?;
    let Some(payment) = refunded else {
        tracing::info!(%order_id, reason = reason.as_str(), "nothing to refund");
        return Ok(false);
    };
    diesel::update(wallets::table.find(payment.customer_id))
        .set((
            wallets::balance_cents.eq(wallets::balance_cents + payment.amount_cents),
            wallets::updated_at.eq(now),
        ))
        .prepared()
        .execute(conn)
        .await?;
    add_entry(
        conn,
        payment.customer_id,
        EntryKind::Refund,
        payment.amount_cents,
        Some(order_id),
    )
    .await?;
    let event = Event::PaymentRefunded(PaymentRefunded {
        payment_id: payment.id,
        order_id,
        customer_id: payment.customer_id,
        amount_cents: payment.amount_cents,
        reason: reason.as_str().into(),
    });
    outbox::insert(
        conn,
        &outbox::NewRow::new(&event, trace_id).with_id(refund_event_id),
    )
    .await?;
    tracing::info!(%order_id, reason = reason.as_str(), amount_cents = payment.amount_cents, "payment refunded");
    Ok(true)
}

/// Whether the order has a payment row, whatever its status.
pub async fn has_payment(conn: &mut AsyncPgConnection, order_id: Uuid) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(
        payments::table.filter(payments::order_id.eq(order_id)),
    ))
    .get_result(conn)
    .await
}

/// Which of its answers about an order the payment service announces again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// To `OrderCreated`: `PaymentConfirmed` (also for a payment refunded
    /// since) or `PaymentFailed`.
    Charge,
    /// To `DeliveryFailed` or `OrderCancellationRequested`: `PaymentRefunded`,
    /// if the payment was refunded.
    Refund,
}

impl ParticipantAnswer for Answer {
    type Record = Payment;

    fn record(
        conn: &mut AsyncPgConnection,
        order_id: Uuid,
    ) -> impl Future<Output = QueryResult<Option<Payment>>> + Send {
        by_order(conn, order_id)
    }

    fn given(self, payment: &Payment) -> Option<(Event, Option<Uuid>)> {
        let reason = || payment.reason.clone().unwrap_or_default();
        let (event, event_id) = match (self, PaymentStatus::parse(&payment.status)) {
            (Answer::Charge, Some(PaymentStatus::Confirmed | PaymentStatus::Refunded)) => (
                Event::PaymentConfirmed(PaymentConfirmed {
                    payment_id: payment.id,
                    order_id: payment.order_id,
                    customer_id: payment.customer_id,
                    amount_cents: payment.amount_cents,
                }),
                payment.outcome_event_id,
            ),
            (Answer::Charge, Some(PaymentStatus::Failed)) => (
                Event::PaymentFailed(PaymentFailed {
                    order_id: payment.order_id,
                    customer_id: payment.customer_id,
                    amount_cents: payment.amount_cents,
                    reason: reason(),
                }),
                payment.outcome_event_id,
            ),
            (Answer::Refund, Some(PaymentStatus::Refunded)) => (
                Event::PaymentRefunded(PaymentRefunded {
                    payment_id: payment.id,
                    order_id: payment.order_id,
                    customer_id: payment.customer_id,
                    amount_cents: payment.amount_cents,
                    reason: reason(),
                }),
                payment.refund_event_id,
            ),
            _ => return None,
        };
        Some((event, event_id))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TopUpError {
    #[error("the balance would exceed {0} cents")]
    BalanceLimit(i64),
    #[error(transparent)]
    Database(#[from] diesel::result::Error),
}

/// Adds `amount` to the customer's wallet (opening it first if needed).
pub async fn top_up(
    conn: &mut AsyncPgConnection,
    customer_id: Uuid,
    amount: TopUpAmount,
    initial_credit_cents: i64,
    max_balance_cents: i64,
) -> Result<Wallet, TopUpError> {
    conn.transaction::<_, TopUpError, _>(async |conn| {
        open_wallet(conn, customer_id, initial_credit_cents).await?;
        let wallet: Option<Wallet> = diesel::update(
            wallets::table
                .find(customer_id)
                .filter(wallets::balance_cents.le(max_balance_cents - amount.cents())),
        )
        .set((
            wallets::balance_cents.eq(wallets::balance_cents + amount.cents()),
            wallets::updated_at.eq(now),
        ))
        .returning(Wallet::as_returning())
        .prepared()
        .get_result(conn)
        .await
        .optional()?;
        let wallet = wallet.ok_or(TopUpError::BalanceLimit(max_balance_cents))?;
        add_entry(conn, customer_id, EntryKind::TopUp, amount.cents(), None).await?;
        Ok(wallet)
    })
    .await
}

/// The customer's wallet, opened with the initial credit if this is the
/// first time the customer is seen.
pub async fn wallet(
    conn: &mut AsyncPgConnection,
    customer_id: Uuid,
    initial_credit_cents: i64,
) -> QueryResult<Wallet> {
    let found = wallets::table
        .find(customer_id)
        .select(Wallet::as_select())
        .first(conn)
        .await
        .optional()?;
    if let Some(wallet) = found {
        return Ok(wallet);
    }
    conn.transaction(async |conn| {
        open_wallet(conn, customer_id, initial_credit_cents).await?;
        wallets::table
            .find(customer_id)
            .select(Wallet::as_select())
            .first(conn)
            .await
    })
    .await
}

commerce_common::order_records!(payments, Payment, one: payment, page: list_payments);
