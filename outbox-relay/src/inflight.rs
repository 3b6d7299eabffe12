//! Transactions whose records are on their way to the broker, in commit
//! order. The confirmed LSN may only advance over a prefix of fully
//! acknowledged transactions: a transaction acknowledged early waits for
//! every older one. Also the bytes of the records sent and not yet
//! acknowledged, which bound the relay's memory.

use std::collections::VecDeque;

use crate::replication::{Lsn, pgoutput::PgTimestamp};

/// Identifies a transaction within one replication session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TxnId(u64);

#[derive(Debug)]
struct Txn {
    pending: usize,
    records: usize,
    commit_time: PgTimestamp,
    /// End LSN, set once the Commit message was seen.
    end_lsn: Option<Lsn>,
}

/// A transaction whose records were all acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completed {
    pub end_lsn: Lsn,
    pub commit_time: PgTimestamp,
    pub records: usize,
}

#[derive(Debug, Default)]
pub struct InFlight {
    txns: VecDeque<Txn>,
    /// Id of `txns[0]`.
    first: u64,
    pending_records: usize,
    /// Bytes of the records sent to the broker and not yet acknowledged.
    bytes_in_flight: usize,
}

impl InFlight {
    pub fn begin(&mut self, commit_time: PgTimestamp) -> TxnId {
        self.txns.push_back(Txn {
            pending: 0,
            records: 0,
            commit_time,
            end_lsn: None,
        });
        TxnId(self.first + self.txns.len() as u64 - 1)
    }

    /// A record of `txn` is on its way: the transaction cannot complete
    /// before it is acknowledged. Its bytes count from [`sent`](Self::sent).
    pub fn add_record(&mut self, txn: TxnId) {
        if let Some(t) = self.get_mut(txn) {
            t.pending += 1;
            t.records += 1;
            self.pending_records += 1;
        }
    }

    pub fn commit(&mut self, txn: TxnId, end_lsn: Lsn) {
        if let Some(t) = self.get_mut(txn) {
            t.end_lsn = Some(end_lsn);
        }
    }

    /// A record of `bytes` bytes was handed to the broker.
    pub fn sent(&mut self, bytes: usize) {
        self.bytes_in_flight += bytes;
    }

    /// The broker answered for `count` records of `txn`, `bytes` bytes in all.
    pub fn ack(&mut self, txn: TxnId, count: usize, bytes: usize) {
        self.bytes_in_flight = self.bytes_in_flight.saturating_sub(bytes);
        if let Some(t) = self.get_mut(txn) {
            let count = count.min(t.pending);
            t.pending -= count;
            self.pending_records -= count;
        }
    }

    /// The oldest transaction, if it is committed and fully acknowledged.
    pub fn pop_completed(&mut self) -> Option<Completed> {
        let front = self.txns.front()?;
        let end_lsn = front.end_lsn?;
        if front.pending > 0 {
            return None;
        }
        let (records, commit_time) = (front.records, front.commit_time);
        self.txns.pop_front();
        self.first += 1;
        Some(Completed {
            end_lsn,
            commit_time,
            records,
        })
    }

    /// Commit time of the oldest unconfirmed transaction.
    pub fn oldest_commit_time(&self) -> Option<PgTimestamp> {
        self.txns.front().map(|t| t.commit_time)
    }

    pub fn is_empty(&self) -> bool {
        self.txns.is_empty()
    }

    /// Records read but not yet acknowledged.
    pub fn pending_records(&self) -> usize {
        self.pending_records
    }

    /// Bytes of the records sent but not yet acknowledged.
    pub fn bytes_in_flight(&self) -> usize {
        self.bytes_in_flight
    }

    fn get_mut(&mut self, txn: TxnId) -> Option<&mut Txn> {
        let index = usize::try_from(txn.0.checked_sub(self.first)?).ok()?;
        self.txns.get_mut(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(in_flight: &mut InFlight, records: usize, end: u64) -> TxnId {
        let txn = in_flight.begin(end as i64);
        for _ in 0..records {
            in_flight.add_record(txn);
        }
        in_flight.commit(txn, Lsn(end));
        txn
    }

    #[test]
    fn confirms_only_a_fully_acknowledged_prefix() {
        let mut f = InFlight::default();
        let a = committed(&mut f, 2, 10);
        let b = committed(&mut f, 1, 20);
        f.ack(b, 1, 0);
        assert_eq!(f.pop_completed(), None, "b waits for a");
        f.ack(a, 1, 0);
        assert_eq!(f.pop_completed(), None, "a is half acknowledged");
        f.ack(a, 1, 0);
        assert_eq!(f.pop_completed().map(|c| c.end_lsn), Some(Lsn(10)));
        assert_eq!(f.pop_completed().map(|c| c.end_lsn), Some(Lsn(20)));
        assert!(f.is_empty());
        assert_eq!(f.pending_records(), 0);
    }

    #[test]
    fn an_open_transaction_is_never_complete() {
        let mut f = InFlight::default();
        let t = f.begin(3);
        f.add_record(t);
        f.ack(t, 1, 0);
        assert_eq!(f.pop_completed(), None);
        assert_eq!(f.oldest_commit_time(), Some(3));
        f.commit(t, Lsn(5));
        assert_eq!(f.pop_completed().map(|c| c.records), Some(1));
    }

    #[test]
    fn empty_transactions_complete_in_order() {
        let mut f = InFlight::default();
        let a = committed(&mut f, 1, 10);
        committed(&mut f, 0, 20);
        assert_eq!(f.pop_completed(), None);
        f.ack(a, 1, 0);
        assert_eq!(f.pop_completed().map(|c| c.end_lsn), Some(Lsn(10)));
        assert_eq!(f.pop_completed().map(|c| c.end_lsn), Some(Lsn(20)));
    }

    #[test]
    fn counts_the_bytes_sent_until_acknowledged() {
        let mut f = InFlight::default();
        let a = committed(&mut f, 2, 10);
        f.sent(700);
        assert_eq!(f.bytes_in_flight(), 700, "only what was sent counts");
        f.sent(300);
        f.ack(a, 1, 700);
        assert_eq!(f.bytes_in_flight(), 300);
        f.ack(a, 1, 300);
        assert_eq!(f.bytes_in_flight(), 0);
        assert_eq!(f.pop_completed().map(|c| c.records), Some(2));
    }

    #[test]
    fn ignores_acks_for_unknown_transactions() {
        let mut f = InFlight::default();
        let a = committed(&mut f, 1, 10);
        f.ack(a, 1, 0);
        f.pop_completed();
        f.ack(a, 1, 0);
        f.ack(TxnId(99), 3, 0);
        assert_eq!(f.pending_records(), 0);
        assert!(f.is_empty());
    }
}
