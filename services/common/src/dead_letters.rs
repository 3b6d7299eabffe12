//! Replaying consumer-side dead letters once their cause is fixed (a new
//! version deployed, data corrected): `<service> replay-dead-letters [ID]...`
//! runs each dead-lettered event through the service's own handler, the way
//! the consumer runtime would have, and deletes the dead letter when it was
//! handled. See docs/operations.md.

use std::{fmt, panic::AssertUnwindSafe};

use anyhow::Context;
use diesel::{
    OptionalExtension, QueryableByName,
    sql_types::{BigInt, Bytea, Integer, Nullable, Text},
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures::FutureExt;

use crate::{
    consumer::{EventHandler, HandleError, decode_value, remember_event},
    db::DbPool,
};

/// What replaying one dead letter did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replayed {
    /// The handler applied the event; the dead letter is gone.
    Handled,
    /// The event id was in the inbox already (handled since, e.g. published
    /// again through the producer's outbox); the dead letter is gone.
    AlreadyHandled,
    /// The handler refused it again, for this reason; nothing changed.
    StillFailing(String),
    /// No dead letter with this id in this consumer group.
    NotFound,
}

impl fmt::Display for Replayed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Replayed::Handled => write!(f, "handled, dead letter deleted"),
            Replayed::AlreadyHandled => {
                write!(f, "already handled (in the inbox), dead letter deleted")
            }
            Replayed::StillFailing(reason) => write!(f, "still failing, kept: {reason}"),
            Replayed::NotFound => write!(f, "no such dead letter"),
        }
    }
}

#[derive(QueryableByName)]
struct DeadLetter {
    #[diesel(sql_type = Text)]
    topic: String,
    #[diesel(sql_type = Integer)]
    partition: i32,
    #[diesel(sql_type = BigInt)]
    record_offset: i64,
    #[diesel(sql_type = Nullable<Bytea>)]
    record_value: Option<Vec<u8>>,
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// The ids of `group`'s dead letters, oldest first.
pub async fn ids(pool: &DbPool, group: &str) -> anyhow::Result<Vec<i64>> {
    let mut conn = pool.get().await?;
    let rows: Vec<Id> =
        diesel::sql_query("SELECT id FROM dead_letters WHERE consumer_group = $1 ORDER BY id")
            .bind::<Text, _>(group)
            .load(&mut conn)
            .await?;
    Ok(rows.into_iter().map(|row| row.id).collect())
}

/// Runs dead letter `id` of `group` through `handler` in one transaction:
/// its event id into the inbox (a repeat is not applied twice), the
/// handler's effects, and the dead letter deleted; or, when the handler
/// still refuses it, nothing at all. A transient failure is an error (try
/// again later).
pub async fn replay(
    pool: &DbPool,
    group: &str,
    handler: &dyn EventHandler,
    id: i64,
) -> anyhow::Result<Replayed> {
    let mut conn = pool.get().await?;
    let conn: &mut AsyncPgConnection = &mut conn;
    let outcome = conn
        .transaction::<_, ReplayError, _>(async |conn| replay_in(conn, group, handler, id).await)
        .await;
    match outcome {
        Ok(replayed) => Ok(replayed),
        Err(ReplayError::Refused(reason)) => Ok(Replayed::StillFailing(reason)),
        Err(ReplayError::Failed(error)) => Err(error),
    }
}

/// Why a replay's transaction was rolled back.
enum ReplayError {
    Refused(String),
    Failed(anyhow::Error),
}

impl From<diesel::result::Error> for ReplayError {
    fn from(error: diesel::result::Error) -> Self {
        ReplayError::Failed(error.into())
    }
}

async fn replay_in(
    conn: &mut AsyncPgConnection,
    group: &str,
    handler: &dyn EventHandler,
    id: i64,
) -> Result<Replayed, ReplayError> {
    let letter: Option<DeadLetter> = diesel::sql_query(
        "SELECT topic, partition, record_offset, record_value FROM dead_letters \
         WHERE id = $1 AND consumer_group = $2 FOR UPDATE",
    )
    .bind::<BigInt, _>(id)
    .bind::<Text, _>(group)
    .get_result(conn)
    .await
    .optional()?;
    let Some(letter) = letter else {
        return Ok(Replayed::NotFound);
    };
    let (envelope, event) =
        decode_value(letter.record_value.as_deref()).map_err(ReplayError::Refused)?;
    let event = event.map_err(ReplayError::Refused)?;
    let first_time = remember_event(
        conn,
        group,
        envelope.event_id,
        &letter.topic,
        letter.partition,
        letter.record_offset,
    )
    .await?
        == 1;
    let replayed = if first_time {
        let handled = AssertUnwindSafe(handler.handle(conn, &envelope, event))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Err(HandleError::Permanent("handler panicked".into())));
        match handled {
            Ok(()) => Replayed::Handled,
            Err(HandleError::Permanent(reason)) => return Err(ReplayError::Refused(reason)),
            Err(HandleError::Transient(error)) => return Err(ReplayError::Failed(error)),
        }
    } else {
        Replayed::AlreadyHandled
    };
    diesel::sql_query("DELETE FROM dead_letters WHERE id = $1")
        .bind::<BigInt, _>(id)
        .execute(conn)
        .await?;
    Ok(replayed)
}

/// The `replay-dead-letters [ID]...` command of a service: replays the given
/// dead letters (all of `group`'s, oldest first, when none is given), prints
/// one line per dead letter, and fails when any is still failing or missing.
pub async fn replay_command(
    pool: &DbPool,
    group: &str,
    handler: &dyn EventHandler,
    args: &[String],
) -> anyhow::Result<()> {
    let ids = if args.is_empty() {
        ids(pool, group).await?
    } else {
        args.iter()
            .map(|arg| {
                arg.parse::<i64>()
                    .with_context(|| format!("not a dead letter id: {arg:?}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let mut left = 0;
    for id in &ids {
        let replayed = replay(pool, group, handler, *id).await?;
        println!("dead letter {id}: {replayed}");
        if matches!(replayed, Replayed::StillFailing(_) | Replayed::NotFound) {
            left += 1;
        }
    }
    println!("{} replayed, {left} left", ids.len() - left);
    anyhow::ensure!(left == 0, "{left} dead letter(s) not replayed");
    Ok(())
}
