//! Where money moves: opening wallets, charging orders, refunds and
//! top-ups, each with its ledger entry and (for the saga) its outbox event
//! in the caller's transaction.

use std::sync::LazyLock;

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

/// Charges the order's total to the customer's wallet (opened when
/// missing): PaymentConfirmed, or PaymentFailed{INSUFFICIENT_FUNDS} with the
/// balance untouched. An order is charged at most once.
///
/// Two statements when the wallet exists and covers the total (the
/// payment row; the debit with its ledger entry and the outbox row),
/// instead of a look-up, an insert and an update around each.
pub async fn charge(
    conn: &mut AsyncPgConnection,
    order: &OrderCreated,
    amount: ChargeAmount,
    initial_credit_cents: i64,
    trace_id: &str,
) -> QueryResult<ChargeOutcome> {
    // The payment first, as confirmed: the UNIQUE order_id says whether the
    // order was charged already (its wallet reference is checked at commit,
    // when the wallet exists in any case).
    let payment_id = Uuid::now_v7();
    let confirmed = Event::PaymentConfirmed(PaymentConfirmed {
        payment_id,
        order_id: order.order_id,
        customer_id: order.customer_id,
        amount_cents: amount.cents(),
    });
    let announcement = outbox::NewRow::new(&confirmed, trace_id);
    let inserted = diesel::insert_into(payments::table)
        .values((
            payments::id.eq(payment_id),
            payments::order_id.eq(order.order_id),
            payments::customer_id.eq(order.customer_id),
            payments::amount_cents.eq(amount.cents()),
            payments::status.eq(PaymentStatus::Confirmed.as_str()),
            payments::outcome_event_id.eq(announcement.id),
        ))
        .on_conflict(payments::order_id)
        .do_nothing()
        .execute(conn)
        .await?;
    if inserted == 0 {
        return Ok(ChargeOutcome::AlreadyCharged);
    }
    // The confirmation is written by the debit itself when it succeeds.
    let mut charged = debit(conn, order, amount.cents(), &announcement).await?;
    if !charged {
        // No wallet, or not enough in it. Open it if missing and debit again
        // either way: when the HTTP path (GET /api/wallet, a top-up) opens
        // the wallet at this very moment, the insert waits for it and adds
        // nothing, but the wallet and its credit exist once it returns.
        open_wallet(conn, order.customer_id, initial_credit_cents).await?;
        charged = debit(conn, order, amount.cents(), &announcement).await?;
    }

    let (status, outcome) = if charged {
        (PaymentStatus::Confirmed, ChargeOutcome::Confirmed)
    } else {
        let reason = FailureReason::InsufficientFunds.as_str();
        let event = Event::PaymentFailed(PaymentFailed {
            order_id: order.order_id,
            customer_id: order.customer_id,
            amount_cents: amount.cents(),
            reason: reason.into(),
        });
        let failed = outbox::NewRow::new(&event, trace_id);
        diesel::update(payments::table.find(payment_id))
            .set((
                payments::status.eq(PaymentStatus::Failed.as_str()),
                payments::reason.eq(reason),
                payments::outcome_event_id.eq(failed.id),
            ))
            .execute(conn)
            .await?;
        outbox::insert(conn, &failed).await?;
        (PaymentStatus::Failed, ChargeOutcome::Failed)
    };
    tracing::info!(order_id = %order.order_id, status = status.as_str(), amount_cents = amount.cents(), "order charged");
    Ok(outcome)
}

/// The debit, its ledger entry and its outbox row (see [`debit`]).
static DEBIT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH debited AS ( \
             UPDATE wallets SET balance_cents = balance_cents - $2, updated_at = now() \
             WHERE customer_id = $1 AND balance_cents >= $2 \
             RETURNING customer_id), \
         entry AS ( \
             INSERT INTO wallet_entries (id, customer_id, kind, amount_cents, order_id) \
             SELECT $3, customer_id, $4, -$2, $5 FROM debited) \
         {}",
        outbox::insert_from("debited", 6)
    )
});

/// Takes `amount_cents` from the customer's wallet unless the balance would
/// go below zero (the CHECK constraint backs this up), with its ledger
/// entry and the `PaymentConfirmed` outbox row, in one statement; false
/// (and nothing written) when the wallet is short or missing.
async fn debit(
    conn: &mut AsyncPgConnection,
    order: &OrderCreated,
    amount_cents: i64,
    confirmed: &outbox::NewRow<'_>,
) -> QueryResult<bool> {
    let query = diesel::sql_query(DEBIT.as_str())
        .into_boxed()
        .bind::<sql_types::Uuid, _>(order.customer_id)
        .bind::<sql_types::BigInt, _>(amount_cents)
        .bind::<sql_types::Uuid, _>(Uuid::now_v7())
        .bind::<sql_types::Text, _>(EntryKind::Charge.as_str())
        .bind::<sql_types::Uuid, _>(order.order_id);
    let debited = confirmed.bind(query).prepared().execute(conn).await?;
    Ok(debited > 0)
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
