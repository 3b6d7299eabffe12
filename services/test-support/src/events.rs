//! Events as the relay would publish them: a fresh envelope per event and
//! the partition its key lands in.

use commerce_common::events::{Envelope, Event, SCHEMA_VERSION};
use uuid::Uuid;

/// `event` in a new envelope (fresh event id, a `test-<uuid>` trace id).
pub fn envelope(event: &Event) -> Envelope {
    let (event_type, payload) = event.into_parts();
    Envelope {
        event_id: Uuid::now_v7(),
        event_type,
        aggregate_type: event.topic().into(),
        aggregate_id: event.aggregate_id().to_string(),
        occurred_at: chrono::Utc::now(),
        schema_version: SCHEMA_VERSION,
        trace_id: format!("test-{}", Uuid::new_v4().simple()),
        payload,
    }
}

/// The partition a key lands in (any stable choice: events of one order
/// must stay in one partition).
pub fn partition_of(key: &str, partitions: i32) -> i32 {
    let hash = key
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    (hash % partitions as u32) as i32
}
