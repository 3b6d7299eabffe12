//! The inbox: the event ids a group handled, so that an event the relay
//! published twice (at two offsets) is applied once. Entries are purged
//! after `inbox_retention`.

use std::{collections::HashSet, time::Duration};

use diesel::{
    QueryableByName,
    sql_types::{Array, BigInt, Integer, Text, Uuid as SqlUuid},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::db::{DbPool, Reuse};

/// Records in the inbox that `group` handled `event_id` (read at `topic`,
/// `partition`, `offset`); 0 rows when it was there already (a repeat).
pub(crate) async fn remember_event(
    conn: &mut AsyncPgConnection,
    group: &str,
    event_id: uuid::Uuid,
    topic: &str,
    partition: i32,
    offset: i64,
) -> diesel::QueryResult<usize> {
    remember_events(conn, group, topic, partition, &[event_id], &[offset])
        .await
        .map(|new| new.len())
}

/// Records events in the inbox in one statement (a fetch's optimistic pass
/// does it in the statement that moves the offset, `apply::Claim`); answers
/// the offsets whose event was new (of one event at two offsets, the first).
async fn remember_events(
    conn: &mut AsyncPgConnection,
    group: &str,
    topic: &str,
    partition: i32,
    event_ids: &[uuid::Uuid],
    offsets: &[i64],
) -> diesel::QueryResult<HashSet<i64>> {
    #[derive(QueryableByName)]
    struct Remembered {
        #[diesel(sql_type = BigInt)]
        record_offset: i64,
    }
    if event_ids.is_empty() {
        return Ok(Default::default());
    }
    let rows: Vec<Remembered> = diesel::sql_query(
        "INSERT INTO inbox (consumer_group, event_id, topic, partition, record_offset) \
         SELECT $1, e.id, $2, $3, e.record_offset \
         FROM unnest($4::uuid[], $5::bigint[]) WITH ORDINALITY AS e(id, record_offset, n) \
         ORDER BY e.n \
         ON CONFLICT DO NOTHING RETURNING record_offset",
    )
    .bind::<Text, _>(group)
    .bind::<Text, _>(topic)
    .bind::<Integer, _>(partition)
    .bind::<Array<SqlUuid>, _>(event_ids)
    .bind::<Array<BigInt>, _>(offsets)
    .prepared()
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.record_offset).collect())
}

/// Forgets the event ids `group` handled longer than `retention` ago.
pub(super) async fn purge(pool: &DbPool, group: &str, retention: Duration) -> anyhow::Result<()> {
    let mut conn = pool.get().await?;
    let purged = diesel::sql_query(
        "DELETE FROM inbox WHERE consumer_group = $1 \
         AND handled_at < now() - $2 * interval '1 millisecond'",
    )
    .bind::<Text, _>(group)
    .bind::<BigInt, _>(retention.as_millis() as i64)
    .execute(&mut conn)
    .await?;
    tracing::debug!(purged, "inbox purged");
    Ok(())
}
