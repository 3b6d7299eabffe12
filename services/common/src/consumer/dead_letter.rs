//! Dead letters: a record that can never be handled goes to the
//! `dead_letters` table with the reason, and its partition moves on.

use std::borrow::Cow;

use diesel::sql_types::{Array, BigInt, Bytea, Integer, Jsonb, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rskafka::record::RecordAndOffset;

use crate::events::{Envelope, headers};

/// Writes `record` to `dead_letters`. Its key, value and headers are
/// kept byte for byte (`bytea`); the readable columns (event type,
/// headers as JSON, reason) are text, which cannot hold NUL: there a NUL
/// is written as the escape `\u0000`.
pub(super) async fn write(
    conn: &mut AsyncPgConnection,
    group: &str,
    topic: &str,
    partition: i32,
    record: &RecordAndOffset,
    envelope: Option<&Envelope>,
    reason: &str,
) -> diesel::QueryResult<()> {
    let headers = &record.record.headers;
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let event_id = envelope
        .map(|e| e.event_id)
        .or_else(|| header(headers::EVENT_ID).and_then(|v| v.parse().ok()));
    let event_type = envelope
        .map(|e| e.event_type.clone())
        .or_else(|| header(headers::EVENT_TYPE))
        .map(|t| storable(&t).into_owned());
    let headers_json: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(k, v)| {
            let value = storable(&String::from_utf8_lossy(v)).into_owned();
            (storable(k).into_owned(), value.into())
        })
        .collect();
    let (header_names, header_values): (Vec<&[u8]>, Vec<&[u8]>) = headers
        .iter()
        .map(|(k, v)| (k.as_bytes(), v.as_slice()))
        .unzip();
    diesel::sql_query(
        "INSERT INTO dead_letters (consumer_group, topic, partition, record_offset, \
             record_key, record_value, headers, header_names, header_values, event_id, \
             event_type, reason) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind::<Text, _>(group)
    .bind::<Text, _>(topic)
    .bind::<Integer, _>(partition)
    .bind::<BigInt, _>(record.offset)
    .bind::<Nullable<Bytea>, _>(record.record.key.as_deref())
    .bind::<Nullable<Bytea>, _>(record.record.value.as_deref())
    .bind::<Jsonb, _>(serde_json::Value::Object(headers_json))
    .bind::<Array<Bytea>, _>(header_names)
    .bind::<Array<Bytea>, _>(header_values)
    .bind::<Nullable<SqlUuid>, _>(event_id)
    .bind::<Nullable<Text>, _>(event_type)
    .bind::<Text, _>(storable(reason))
    .execute(conn)
    .await?;
    tracing::warn!(topic = %topic, partition, offset = record.offset,
        reason, "record dead-lettered");
    Ok(())
}

/// `text` as PostgreSQL `text` and `jsonb` can hold it: a NUL character
/// (which both refuse) written as the escape `\u0000`.
fn storable(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\\u0000"))
    } else {
        Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_text_escapes_nul() {
        assert_eq!(storable("a\0b\0"), "a\\u0000b\\u0000");
        assert!(matches!(storable("plain"), Cow::Borrowed("plain")));
    }
}
