//! One fetch, one transaction: the offset moves from where the fetch
//! started to after its last record (compare-and-set, fenced by the lease),
//! each event id enters the inbox (a repeat is skipped), the handler
//! applies the new ones, and a record that fails for good is dead-lettered.
//!
//! Why two passes: records are first applied without a savepoint each (two
//! round trips fewer per record). Only when a record must be dead-lettered
//! (a permanent failure or a panic, whose partial effects must go) is that
//! transaction rolled back and the fetch applied again with a savepoint per
//! record.

use std::{collections::HashSet, panic::AssertUnwindSafe};

use diesel::sql_types::{Array, BigInt, Integer, Text, Uuid as SqlUuid};
use diesel::{
    QueryableByName,
    pg::Pg,
    query_builder::{BoxedSqlQuery, SqlQuery},
};
use diesel_async::{AnsiTransactionManager, AsyncPgConnection, RunQueryDsl, TransactionManager};
use futures::FutureExt;
use rskafka::record::RecordAndOffset;
use tracing::Instrument;

use super::{
    dead_letter,
    decode::Decoded,
    handler::{BoxFuture, Concurrency, HandleError, permanent_cause},
    inbox,
    worker::Worker,
};
use crate::{
    db::Reuse,
    events::{Envelope, Event},
};

pub(super) enum ApplyError {
    /// Another instance moved the offset or owns the lease now.
    Fenced,
    Transient(anyhow::Error),
}

impl From<diesel::result::Error> for ApplyError {
    fn from(error: diesel::result::Error) -> Self {
        ApplyError::Transient(error.into())
    }
}

impl From<diesel_async::pooled_connection::deadpool::PoolError> for ApplyError {
    fn from(error: diesel_async::pooled_connection::deadpool::PoolError) -> Self {
        ApplyError::Transient(error.into())
    }
}

/// What became of a fetch's records.
#[derive(Default)]
pub(super) struct Outcomes {
    pub handled: u64,
    pub duplicate: u64,
    pub dead_lettered: u64,
    pub ignored: u64,
    /// `occurred_at` of each handled event, for the age histogram.
    pub occurred: Vec<chrono::DateTime<chrono::Utc>>,
}

/// How a transaction applies a fetch's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// No savepoints; the fetch's events enter the inbox in one statement.
    Optimistic,
    /// A savepoint per record with its own inbox entry, so that a record
    /// that fails for good is dead-lettered alone.
    Savepoints,
}

/// How a transaction over a fetch ended (when it did not fail).
enum Applied {
    Done(Outcomes),
    /// A record must be dead-lettered: roll back, apply with savepoints.
    RetryWithSavepoints,
}

/// How one record is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecordMode {
    /// In the optimistic pass; `first_time`: the fetch's inbox insert took
    /// the record's event id (it was not there yet).
    Batch { first_time: bool },
    /// In a savepoint of its own, with its own inbox entry.
    Savepoint,
}

/// What became of one record.
enum RecordResult {
    /// Handled, skipped as a repeat or dead-lettered (see the outcomes).
    Done,
    /// It must be dead-lettered, which only the savepoint pass can do:
    /// roll back and apply the fetch again with savepoints.
    NeedsSavepoints,
}

impl Worker {
    /// Handles the wanted records of a fetch in one transaction and moves
    /// the offset from `expected` to `new_next` (optimistic pass first, see
    /// the module's doc).
    pub(super) async fn apply(
        &self,
        records: &[&Decoded<'_>],
        expected: i64,
        new_next: i64,
    ) -> Result<Outcomes, ApplyError> {
        match self
            .apply_once(records, expected, new_next, Pass::Optimistic)
            .await?
        {
            Applied::Done(outcomes) => Ok(outcomes),
            Applied::RetryWithSavepoints => {
                match self
                    .apply_once(records, expected, new_next, Pass::Savepoints)
                    .await?
                {
                    Applied::Done(outcomes) => Ok(outcomes),
                    Applied::RetryWithSavepoints => {
                        unreachable!("with savepoints every failure is dead-lettered")
                    }
                }
            }
        }
    }

    async fn apply_once(
        &self,
        records: &[&Decoded<'_>],
        expected: i64,
        new_next: i64,
        pass: Pass,
    ) -> Result<Applied, ApplyError> {
        let mut conn = self.shared.pool.get().await?;
        let conn: &mut AsyncPgConnection = &mut conn;
        AnsiTransactionManager::begin_transaction(conn).await?;
        let result = self
            .apply_in_transaction(conn, records, expected, new_next, pass)
            .await;
        match result {
            Ok(Applied::Done(outcomes)) => {
                AnsiTransactionManager::commit_transaction(conn).await?;
                Ok(Applied::Done(outcomes))
            }
            Ok(Applied::RetryWithSavepoints) | Err(_) => {
                if let Err(rollback) = AnsiTransactionManager::rollback_transaction(conn).await {
                    tracing::warn!(error = %rollback, "rollback failed");
                }
                result
            }
        }
    }

    async fn apply_in_transaction(
        &self,
        conn: &mut AsyncPgConnection,
        records: &[&Decoded<'_>],
        expected: i64,
        new_next: i64,
        pass: Pass,
    ) -> Result<Applied, ApplyError> {
        let group = self.shared.identity.group.as_str();
        // Serialized: one fetch of the group at a time applies its effects
        // (the advisory lock, taken in the same statement): two fetches
        // touching the same rows in different orders (one customer's orders
        // on two partitions) would otherwise deadlock, and PostgreSQL only
        // notices after `deadlock_timeout` (1 s), stalling both partitions.
        let concurrency = self.shared.handler.concurrency();
        let lock = match concurrency {
            Concurrency::Serialized => {
                ", (SELECT pg_advisory_xact_lock(hashtext('consumer:' || $1))) AS serialized"
            }
            Concurrency::ByKey => "",
        };
        let mut ordered = records.to_vec();
        if concurrency == Concurrency::ByKey {
            ordered.sort_by(|a, b| a.record.record.key.cmp(&b.record.record.key));
        }
        let claim = Claim {
            group,
            topic: &self.topic,
            partition: self.partition,
            owner: &self.shared.config.instance_id,
            expected,
            new_next,
            lock,
        };
        // Optimistic: the inbox takes every event of the fetch in the
        // statement that moves the offset. With savepoints each record's
        // entry lives in its savepoint (a dead-lettered record must not stay
        // in the inbox).
        let first_offsets: Option<HashSet<i64>> = match pass {
            Pass::Savepoints => {
                claim.alone(conn).await?;
                None
            }
            Pass::Optimistic => {
                let (ids, offsets): (Vec<uuid::Uuid>, Vec<i64>) = ordered
                    .iter()
                    .filter_map(|d| match &d.envelope {
                        Ok((envelope, _)) => Some((envelope.event_id, d.record.offset)),
                        Err(_) => None,
                    })
                    .unzip();
                if ids.is_empty() {
                    claim.alone(conn).await?;
                    Some(HashSet::new())
                } else {
                    Some(claim.with_inbox(conn, &ids, &offsets).await?)
                }
            }
        };
        let mut outcomes = Outcomes::default();
        // Consecutive new records of the optimistic pass, handed to the
        // handler together (`handle_all`) before anything else is applied.
        let mut run: Vec<(&Envelope, Event)> = Vec::new();
        for decoded in ordered {
            let record = decoded.record;
            let mode = match &first_offsets {
                Some(first) => RecordMode::Batch {
                    first_time: first.contains(&record.offset),
                },
                None => RecordMode::Savepoint,
            };
            if let (RecordMode::Batch { first_time: true }, Ok((envelope, Ok(event)))) =
                (mode, &decoded.envelope)
            {
                run.push((envelope, event.clone()));
                continue;
            }
            if let RecordResult::NeedsSavepoints =
                self.apply_run(conn, &mut run, &mut outcomes).await?
            {
                return Ok(Applied::RetryWithSavepoints);
            }
            let (envelope, event) = match &decoded.envelope {
                Ok(parts) => parts,
                Err(reason) => {
                    self.dead_letter(conn, record, None, reason).await?;
                    outcomes.dead_lettered += 1;
                    continue;
                }
            };
            let span = tracing::info_span!("event",
                event_id = %envelope.event_id, event_type = %envelope.event_type,
                aggregate_id = %envelope.aggregate_id, trace_id = %envelope.trace_id);
            let result = self
                .apply_record(conn, record, envelope, event.clone(), &mut outcomes, mode)
                .instrument(span)
                .await?;
            if let RecordResult::NeedsSavepoints = result {
                return Ok(Applied::RetryWithSavepoints);
            }
        }
        if let RecordResult::NeedsSavepoints = self.apply_run(conn, &mut run, &mut outcomes).await?
        {
            return Ok(Applied::RetryWithSavepoints);
        }

        Ok(Applied::Done(outcomes))
    }
}

/// Moving a partition's offset from `expected` to `new_next` while the
/// partition is still ours. It comes first in the transaction, in the
/// statement that checks it: the offset row's lock keeps another instance
/// (or a fenced worker of this one) out until commit, and no row means the
/// partition is no longer ours to apply. Effects that follow and fail roll
/// it back.
struct Claim<'a> {
    group: &'a str,
    topic: &'a str,
    partition: i32,
    owner: &'a str,
    expected: i64,
    new_next: i64,
    /// The advisory lock of [`Concurrency::Serialized`], or nothing.
    lock: &'static str,
}

#[derive(QueryableByName)]
struct Claimed {
    #[diesel(sql_type = BigInt)]
    claimed: i64,
    #[diesel(sql_type = Array<BigInt>)]
    remembered: Vec<i64>,
}

impl<'a> Claim<'a> {
    fn update(&self) -> String {
        format!(
            "UPDATE consumer_offsets o SET next_offset = $5, updated_at = now() \
             FROM partition_leases l{lock} \
             WHERE o.consumer_group = $1 AND o.topic = $2 AND o.partition = $3 \
               AND o.next_offset = $6 AND l.owner = $4 \
               AND (l.consumer_group, l.topic, l.partition) = (o.consumer_group, o.topic, o.partition)",
            lock = self.lock
        )
    }

    /// `sql` (the claim, alone or in a larger statement) with the claim's
    /// six parameters bound, as `$1` to `$6`.
    fn bound(&self, sql: String) -> BoxedSqlQuery<'a, Pg, SqlQuery> {
        diesel::sql_query(sql)
            .into_boxed()
            .bind::<Text, _>(self.group)
            .bind::<Text, _>(self.topic)
            .bind::<Integer, _>(self.partition)
            .bind::<Text, _>(self.owner)
            .bind::<BigInt, _>(self.new_next)
            .bind::<BigInt, _>(self.expected)
    }

    /// The claim alone.
    async fn alone(&self, conn: &mut AsyncPgConnection) -> Result<(), ApplyError> {
        let claimed = self.bound(self.update()).prepared().execute(conn).await?;
        if claimed != 1 {
            return Err(ApplyError::Fenced);
        }
        Ok(())
    }

    /// The claim and the fetch's inbox entries in one statement (a
    /// statement and a round trip fewer per fetch than the two apart);
    /// answers the offsets whose event id was new (of one event at two
    /// offsets, the first). The entries are made only if the claim holds.
    async fn with_inbox(
        &self,
        conn: &mut AsyncPgConnection,
        event_ids: &[uuid::Uuid],
        offsets: &[i64],
    ) -> Result<HashSet<i64>, ApplyError> {
        let row: Claimed = self
            .bound(format!(
                "WITH claimed AS ({update} RETURNING 1), \
             remembered AS ( \
               INSERT INTO inbox (consumer_group, event_id, topic, partition, record_offset) \
               SELECT $1, e.id, $2, $3, e.record_offset \
               FROM unnest($7::uuid[], $8::bigint[]) WITH ORDINALITY AS e(id, record_offset, n) \
               WHERE EXISTS (SELECT FROM claimed) \
               ORDER BY e.n \
               ON CONFLICT DO NOTHING RETURNING record_offset) \
             SELECT (SELECT count(*) FROM claimed) AS claimed, \
                    ARRAY(SELECT record_offset FROM remembered) AS remembered",
                update = self.update()
            ))
            .bind::<Array<SqlUuid>, _>(event_ids)
            .bind::<Array<BigInt>, _>(offsets)
            .prepared()
            .get_result(conn)
            .await?;
        if row.claimed != 1 {
            return Err(ApplyError::Fenced);
        }
        Ok(row.remembered.into_iter().collect())
    }
}

impl Worker {
    /// One record: its inbox entry (in `mode`), then the handler, or the
    /// handler's `repeated` for an event handled before.
    async fn apply_record(
        &self,
        conn: &mut AsyncPgConnection,
        record: &RecordAndOffset,
        envelope: &Envelope,
        event: Result<Event, String>,
        outcomes: &mut Outcomes,
        mode: RecordMode,
    ) -> Result<RecordResult, ApplyError> {
        let first_time = match mode {
            RecordMode::Batch { first_time } => first_time,
            RecordMode::Savepoint => {
                AnsiTransactionManager::begin_transaction(conn).await?;
                let remembered = inbox::remember_event(
                    conn,
                    &self.shared.identity.group,
                    envelope.event_id,
                    &self.topic,
                    self.partition,
                    record.offset,
                )
                .await;
                match remembered {
                    Ok(new) => new > 0,
                    Err(error) => {
                        AnsiTransactionManager::rollback_transaction(conn).await?;
                        return Err(error.into());
                    }
                }
            }
        };
        if !first_time {
            return self
                .apply_repeat(conn, envelope, event, outcomes, mode)
                .await;
        }
        let savepoint = mode == RecordMode::Savepoint;
        let outcome = match event {
            Ok(event) => guarded(self.shared.handler.handle(conn, envelope, event)).await,
            Err(reason) => Err(HandleError::Permanent(reason)),
        };
        match outcome {
            Ok(()) => {
                if savepoint {
                    AnsiTransactionManager::commit_transaction(conn).await?;
                }
                outcomes.handled += 1;
                outcomes.occurred.push(envelope.occurred_at);
            }
            Err(HandleError::Permanent(_)) if !savepoint => {
                return Ok(RecordResult::NeedsSavepoints);
            }
            Err(HandleError::Permanent(reason)) => {
                AnsiTransactionManager::rollback_transaction(conn).await?;
                self.dead_letter(conn, record, Some(envelope), &reason)
                    .await?;
                outcomes.dead_lettered += 1;
            }
            Err(HandleError::Transient(error)) => {
                if savepoint {
                    AnsiTransactionManager::rollback_transaction(conn).await?;
                }
                return Err(ApplyError::Transient(error));
            }
        }
        Ok(RecordResult::Done)
    }

    /// The new records gathered in `run` (emptied), handled together by
    /// the handler's `handle_all`, in the optimistic pass's transaction.
    async fn apply_run(
        &self,
        conn: &mut AsyncPgConnection,
        run: &mut Vec<(&Envelope, Event)>,
        outcomes: &mut Outcomes,
    ) -> Result<RecordResult, ApplyError> {
        if run.is_empty() {
            return Ok(RecordResult::Done);
        }
        let records = std::mem::take(run);
        let occurred: Vec<_> = records
            .iter()
            .map(|(envelope, _)| envelope.occurred_at)
            .collect();
        let span = tracing::info_span!("events", count = records.len());
        match guarded(self.shared.handler.handle_all(conn, records))
            .instrument(span)
            .await
        {
            Ok(()) => {
                outcomes.handled += occurred.len() as u64;
                outcomes.occurred.extend(occurred);
                Ok(RecordResult::Done)
            }
            // Which record it was, the savepoint pass finds out.
            Err(HandleError::Permanent(_)) => Ok(RecordResult::NeedsSavepoints),
            Err(HandleError::Transient(error)) => Err(ApplyError::Transient(error)),
        }
    }

    /// An event handled before: the handler is not run again, but it may
    /// announce again what it answered the first time (a saga re-drive
    /// repeats a request whose answer was lost).
    async fn apply_repeat(
        &self,
        conn: &mut AsyncPgConnection,
        envelope: &Envelope,
        event: Result<Event, String>,
        outcomes: &mut Outcomes,
        mode: RecordMode,
    ) -> Result<RecordResult, ApplyError> {
        let savepoint = mode == RecordMode::Savepoint;
        let repeated = match event {
            Ok(event) => self.shared.handler.repeated(conn, envelope, event).await,
            Err(_) => Ok(()),
        };
        match repeated {
            Ok(()) => {}
            Err(HandleError::Permanent(_)) if !savepoint => {
                return Ok(RecordResult::NeedsSavepoints);
            }
            Err(HandleError::Permanent(reason)) => {
                // Not a reason to dead-letter a record that was handled:
                // its repeat just answers nothing.
                AnsiTransactionManager::rollback_transaction(conn).await?;
                tracing::warn!(%reason, "repeated event not answered again");
                outcomes.duplicate += 1;
                return Ok(RecordResult::Done);
            }
            Err(HandleError::Transient(error)) => {
                if savepoint {
                    AnsiTransactionManager::rollback_transaction(conn).await?;
                }
                return Err(ApplyError::Transient(error));
            }
        }
        if savepoint {
            AnsiTransactionManager::commit_transaction(conn).await?;
        }
        tracing::debug!("duplicate event skipped");
        outcomes.duplicate += 1;
        Ok(RecordResult::Done)
    }

    async fn dead_letter(
        &self,
        conn: &mut AsyncPgConnection,
        record: &RecordAndOffset,
        envelope: Option<&Envelope>,
        reason: &str,
    ) -> Result<(), ApplyError> {
        dead_letter::write(
            conn,
            &self.shared.identity.group,
            &self.topic,
            self.partition,
            record,
            envelope,
            reason,
        )
        .await?;
        Ok(())
    }
}

/// A handler's work, with what the runtime makes of its failures: a
/// panicking handler would fail the same record forever, so a panic is a
/// permanent failure (the record is dead-lettered), and so is a transient
/// error whose cause is a data exception.
async fn guarded(work: BoxFuture<'_, Result<(), HandleError>>) -> Result<(), HandleError> {
    let outcome = AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(HandleError::Permanent(format!(
                "handler panicked: {message}"
            )))
        });
    outcome.map_err(|error| match error {
        HandleError::Transient(error) => match permanent_cause(&error) {
            Some(reason) => HandleError::Permanent(reason),
            None => HandleError::Transient(error),
        },
        permanent => permanent,
    })
}
