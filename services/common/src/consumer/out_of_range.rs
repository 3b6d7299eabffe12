//! Where a partition goes when the broker no longer has its stored offset:
//! its log start and end (ListOffsets) decide. Past the end (the topic was
//! recreated, the broker lost its data): start over from the log start; the
//! inbox skips what was handled before. Before the log start (retention or
//! DeleteRecords removed records not handled yet): jump to the log start,
//! which loses events: logged at error level and counted.

/// Where a partition goes when the broker answered a fetch at the stored
/// offset with OFFSET_OUT_OF_RANGE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Jump {
    /// The log ends before the offset: the topic was recreated or the broker
    /// lost its data. Everything in the log may be new to us: start over
    /// from its start (the inbox skips events handled before).
    PastTheEnd { to: i64 },
    /// The log starts after the offset: `skipped` offsets were deleted
    /// (retention, DeleteRecords) before they were handled. Nothing can
    /// bring them back: go on from the log start.
    Deleted { to: i64, skipped: u64 },
}

impl Jump {
    /// For a fetch at `next` out of range of the log `[start, end]` (ListOffsets
    /// earliest and latest); `None` when `next` is in range after all.
    pub fn decide(next: i64, (start, end): (i64, i64)) -> Option<Jump> {
        if next < start {
            Some(Jump::Deleted {
                to: start,
                skipped: (start - next) as u64,
            })
        } else if next > end {
            Some(Jump::PastTheEnd { to: start })
        } else {
            None
        }
    }

    pub fn to(self) -> i64 {
        match self {
            Jump::PastTheEnd { to } | Jump::Deleted { to, .. } => to,
        }
    }

    /// Logs this jump of `topic`/`partition` from `from`, just stored.
    pub fn log(self, topic: &str, partition: i32, from: i64, (log_start, log_end): (i64, i64)) {
        match self {
            Jump::PastTheEnd { to } => tracing::error!(
                topic,
                partition,
                stored = from,
                log_start,
                log_end,
                "the partition ends before the stored offset (topic recreated or broker data \
                 lost); starting it over from its log start {to}"
            ),
            Jump::Deleted { to, skipped } => tracing::error!(
                topic,
                partition,
                stored = from,
                log_start,
                log_end,
                skipped,
                "records were deleted before they were handled (retention or DeleteRecords); \
                 {skipped} offsets skipped, going on from the log start {to}: their events are lost"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_out_of_range_jumps_to_the_log_start() {
        // Past the end (recreated topic, lost data): start over, skip nothing.
        assert_eq!(
            Jump::decide(1_000, (0, 3)),
            Some(Jump::PastTheEnd { to: 0 })
        );
        assert_eq!(
            Jump::decide(1_000, (40, 43)),
            Some(Jump::PastTheEnd { to: 40 })
        );
        // Before the log start (retention, DeleteRecords): the records in
        // between are lost and counted.
        assert_eq!(
            Jump::decide(2, (4, 7)),
            Some(Jump::Deleted { to: 4, skipped: 2 })
        );
        assert_eq!(
            Jump::decide(0, (5, 5)),
            Some(Jump::Deleted { to: 5, skipped: 5 })
        );
        // Within the log (its ends moved between fetch and listing): no jump.
        assert_eq!(Jump::decide(4, (4, 7)), None);
        assert_eq!(Jump::decide(7, (4, 7)), None);
        assert_eq!(Jump::decide(0, (0, 0)), None);
    }
}
