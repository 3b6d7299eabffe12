//! Where the relay confirms an LSN to PostgreSQL, and the rules for it.
//! Confirming a position lets the server recycle the WAL before it, so a
//! position is confirmed only when nothing before it can still be lost:
//!
//! - a transaction's end is confirmed once it and every older transaction
//!   were committed and all their records acknowledged by the broker, in
//!   commit order (the prefix rule of [`InFlight`]);
//! - with nothing in flight, a keepalive's WAL end is confirmed, so an idle
//!   outbox (or a database busy with other tables) never retains WAL;
//! - the confirmed position reaches the server in a standby status update
//!   ([`ReplicationStream::send_status`]) at every status tick, when the
//!   server asks for a reply, and when a session stops;
//! - after a graceful stop it is saved on the server too ([`save_on_stop`]),
//!   so that it survives a restart of PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use crate::catalog::Catalog;
use crate::inflight::{Completed, InFlight, TxnId};
use crate::metrics::SourceMetrics;
use crate::replication::connection::pg_now;
use crate::replication::pgoutput::PgTimestamp;
use crate::replication::{Lsn, ReplicationError, ReplicationStream};

/// How long a graceful stop waits for the walsender to release the slot
/// before saving its position.
const SAVE_SLOT_PATIENCE: Duration = Duration::from_secs(3);

/// One session's confirmed position and the transactions that hold it back.
pub struct Confirmation {
    confirmed: Lsn,
    /// Where the session started.
    start: Lsn,
    in_flight: InFlight,
    metrics: Arc<SourceMetrics>,
}

impl Confirmation {
    /// A session that resumes from `confirmed` (the slot's position).
    pub fn new(confirmed: Lsn, metrics: Arc<SourceMetrics>) -> Self {
        Self {
            confirmed,
            start: confirmed,
            in_flight: InFlight::default(),
            metrics,
        }
    }

    /// The newest position that may be confirmed to the server.
    pub fn confirmed(&self) -> Lsn {
        self.confirmed
    }

    /// The session confirmed a position past where it started.
    pub fn advanced(&self) -> bool {
        self.confirmed > self.start
    }

    /// The transactions read and not yet confirmed, for the backpressure
    /// and lag figures. An open transaction is in it from its Begin.
    pub fn in_flight(&self) -> &InFlight {
        &self.in_flight
    }

    /// A transaction began: nothing after this point is confirmed before
    /// its records are acknowledged.
    pub fn begin(&mut self, commit_time: PgTimestamp) -> TxnId {
        self.in_flight.begin(commit_time)
    }

    /// A record of `txn` is on its way ([`InFlight::add_record`]).
    pub fn add_record(&mut self, txn: TxnId) {
        self.in_flight.add_record(txn);
    }

    /// A record of `bytes` bytes was handed to the broker.
    pub fn sent(&mut self, bytes: usize) {
        self.in_flight.sent(bytes);
    }

    /// The broker answered for `count` records of `txn`; see
    /// [`confirm_completed`](Self::confirm_completed).
    pub fn ack(&mut self, txn: TxnId, count: usize, bytes: usize) {
        self.in_flight.ack(txn, count, bytes);
    }

    /// `txn` committed at `end_lsn`: confirmed at once if it completes the
    /// prefix (no records, or all already acknowledged).
    pub fn commit(&mut self, txn: TxnId, end_lsn: Lsn) {
        self.in_flight.commit(txn, end_lsn);
        self.confirm_completed();
    }

    /// Advances over the oldest transactions while they are complete.
    pub fn confirm_completed(&mut self) {
        while let Some(Completed {
            end_lsn,
            commit_time,
            records,
        }) = self.in_flight.pop_completed()
        {
            self.confirmed = self.confirmed.max(end_lsn);
            let latency = (records > 0).then(|| micros_since(commit_time));
            self.metrics.confirmed(self.confirmed, records, latency);
        }
    }

    /// The server sent everything before `wal_end`; with nothing of ours
    /// in flight (no open transaction either), that whole range is done.
    pub fn keepalive(&mut self, wal_end: Lsn) {
        if self.in_flight.is_empty() && wal_end > self.confirmed {
            self.confirmed = wal_end;
            self.metrics.confirmed_idle(wal_end);
        }
    }

    /// Tells the server the confirmed position (a standby status update),
    /// asking for a reply when `reply_requested`.
    pub async fn send(
        &self,
        stream: &mut ReplicationStream,
        reply_requested: bool,
    ) -> Result<(), ReplicationError> {
        stream.send_status(self.confirmed, reply_requested).await
    }

    /// How long the oldest unconfirmed transaction has been committed.
    pub fn lag(&self) -> Duration {
        self.in_flight
            .oldest_commit_time()
            .map_or(Duration::ZERO, micros_since)
    }
}

/// After a graceful stop: makes the confirmed position survive a restart of
/// the server too (see [`Catalog::save_slot_position`]). Failing only logs:
/// the position confirmed in the stream holds until the next checkpoint.
pub async fn save_on_stop(catalog: &Catalog, source: &str, slot: &str, confirmed: Lsn) {
    match catalog
        .save_slot_position(slot, confirmed, SAVE_SLOT_PATIENCE)
        .await
    {
        Ok(Some(saved)) => {
            tracing::info!(source, slot, %saved, "slot position saved")
        }
        Ok(None) => {
            tracing::warn!(source, slot, "slot vanished before its position was saved")
        }
        Err(e) => {
            tracing::warn!(source, slot, error = %e, "slot position not saved; after a server restart the last transactions may be published again")
        }
    }
}

fn micros_since(pg_time: PgTimestamp) -> Duration {
    let micros = pg_now() - pg_time;
    Duration::from_micros(u64::try_from(micros).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn confirmation(at: u64) -> Confirmation {
        Confirmation::new(Lsn(at), Metrics::new().source("test"))
    }

    #[test]
    fn a_transaction_is_confirmed_once_it_and_every_older_one_are_acknowledged() {
        let mut c = confirmation(5);
        let a = c.begin(0);
        c.add_record(a);
        c.commit(a, Lsn(10));
        let b = c.begin(0);
        c.add_record(b);
        c.commit(b, Lsn(20));
        c.ack(b, 1, 0);
        c.confirm_completed();
        assert_eq!(c.confirmed(), Lsn(5), "b waits for a");
        c.ack(a, 1, 0);
        c.confirm_completed();
        assert_eq!(c.confirmed(), Lsn(20));
        assert!(c.advanced());
    }

    #[test]
    fn a_transaction_without_records_is_confirmed_at_its_commit() {
        let mut c = confirmation(5);
        let t = c.begin(0);
        c.commit(t, Lsn(10));
        assert_eq!(c.confirmed(), Lsn(10));
    }

    #[test]
    fn a_keepalive_confirms_only_when_nothing_is_in_flight() {
        let mut c = confirmation(5);
        c.keepalive(Lsn(8));
        assert_eq!(c.confirmed(), Lsn(8), "idle: the whole range is done");
        c.keepalive(Lsn(7));
        assert_eq!(c.confirmed(), Lsn(8), "never backwards");

        let open = c.begin(0);
        c.keepalive(Lsn(30));
        assert_eq!(c.confirmed(), Lsn(8), "an open transaction holds it back");
        c.add_record(open);
        c.commit(open, Lsn(12));
        c.keepalive(Lsn(30));
        assert_eq!(
            c.confirmed(),
            Lsn(8),
            "an unacknowledged record holds it back"
        );
        c.ack(open, 1, 0);
        c.confirm_completed();
        assert_eq!(c.confirmed(), Lsn(12));
        c.keepalive(Lsn(30));
        assert_eq!(c.confirmed(), Lsn(30));
    }
}
