//! Turns an inserted outbox row into a Kafka record, or explains why it cannot.
//!
//! Columns are found by name in the relation, so the table may gain columns
//! or change their order. The record is the wire format of
//! `commerce_base::outbox`, shared with the services: topic =
//! `aggregate_type`, key = `aggregate_id`, headers `event_id`/`event_type`/
//! `trace_id`, value = the JSON envelope with the payload as written.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
pub use commerce_base::outbox::{
    DEAD_LETTER_SUFFIX, FALLBACK_DEAD_LETTER_TOPIC, is_dead_letter_topic, is_valid_topic,
};
use commerce_base::outbox::{
    Envelope,
    columns::{self, ALL as COLUMNS},
    dead_letter_topic, headers,
};
use rskafka::record::Record;
use serde_json::value::RawValue;

use crate::replication::pgoutput::{Relation, Value};

/// Column values longer than this are cut in dead-letter records.
const DEAD_LETTER_VALUE_LIMIT: usize = 16 * 1024;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RowError {
    #[error("column {0} is missing from the table")]
    MissingColumn(&'static str),
    #[error("column {0} is NULL")]
    Null(&'static str),
    #[error("column {0} is not valid text")]
    NotText(&'static str),
    #[error("aggregate_type {0:?} is not a valid topic name")]
    InvalidTopic(String),
    #[error("schema_version {0:?} is not an integer")]
    InvalidSchemaVersion(String),
    #[error("occurred_at {0:?} is not a timestamp")]
    InvalidTimestamp(String),
    #[error("payload is not JSON: {0}")]
    InvalidPayload(String),
    #[error("record of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
}

/// Column positions of the outbox columns in one relation.
#[derive(Debug, Clone)]
pub struct OutboxColumns([usize; 8]);

impl OutboxColumns {
    pub fn resolve(relation: &Relation) -> Result<Self, RowError> {
        let mut positions = [0; 8];
        for (slot, name) in positions.iter_mut().zip(COLUMNS) {
            *slot = relation
                .column_index(name)
                .ok_or(RowError::MissingColumn(name))?;
        }
        Ok(Self(positions))
    }
}

/// A record ready for the broker.
#[derive(Debug, Clone)]
pub struct OutgoingRecord {
    pub topic: String,
    pub record: Record,
}

impl OutgoingRecord {
    pub fn key(&self) -> &[u8] {
        self.record.key.as_deref().unwrap_or_default()
    }

    pub fn size(&self) -> usize {
        self.record.approximate_size()
    }
}

/// Builds the Kafka record of one outbox row, refusing records larger than
/// `max_record_bytes`.
pub fn to_record(
    columns: &OutboxColumns,
    values: &[Value],
    max_record_bytes: usize,
) -> Result<OutgoingRecord, RowError> {
    let text = |i: usize| text_value(values, columns.0[i], COLUMNS[i]);
    let event_id = text(0)?;
    let aggregate_type = text(1)?;
    let aggregate_id = text(2)?;
    let event_type = text(3)?;
    let schema_version = text(4)?;
    let trace_id = text(5)?;
    let occurred_at = text(6)?;
    let payload = text(7)?;

    if !is_valid_topic(aggregate_type) {
        return Err(RowError::InvalidTopic(aggregate_type.to_owned()));
    }
    let envelope: Envelope<&str, &str, &RawValue> = Envelope {
        event_id,
        event_type,
        aggregate_type,
        aggregate_id,
        occurred_at: parse_timestamp(occurred_at)?,
        schema_version: schema_version
            .parse()
            .map_err(|_| RowError::InvalidSchemaVersion(schema_version.to_owned()))?,
        trace_id,
        payload: serde_json::from_str(payload)
            .map_err(|e: serde_json::Error| RowError::InvalidPayload(e.to_string()))?,
    };
    let value =
        serde_json::to_vec(&envelope).map_err(|e| RowError::InvalidPayload(e.to_string()))?;
    let record_headers = BTreeMap::from([
        (headers::EVENT_ID.to_owned(), event_id.as_bytes().to_vec()),
        (
            headers::EVENT_TYPE.to_owned(),
            event_type.as_bytes().to_vec(),
        ),
        (headers::TRACE_ID.to_owned(), trace_id.as_bytes().to_vec()),
    ]);
    let record = OutgoingRecord {
        topic: aggregate_type.to_owned(),
        record: Record {
            key: Some(aggregate_id.as_bytes().to_vec()),
            value: Some(value),
            headers: record_headers,
            timestamp: envelope.occurred_at,
        },
    };
    if record.size() > max_record_bytes {
        return Err(RowError::TooLarge {
            size: record.size(),
            limit: max_record_bytes,
        });
    }
    Ok(record)
}

/// The dead-letter record of a row that can never be published: the reason,
/// where it came from and its columns (long values cut, so it always fits).
pub fn dead_letter(
    relation: &Relation,
    values: &[Value],
    reason: &RowError,
    source: &str,
    commit_lsn: &str,
) -> OutgoingRecord {
    let column = |name: &str| {
        relation
            .column_index(name)
            .and_then(|i| values.get(i))
            .and_then(|v| match v {
                Value::Text(bytes) => std::str::from_utf8(bytes).ok(),
                _ => None,
            })
    };
    let topic = dead_letter_topic(column(columns::AGGREGATE_TYPE));
    let columns: serde_json::Map<String, serde_json::Value> = relation
        .columns
        .iter()
        .zip(values)
        .map(|(c, v)| (c.name.clone(), dead_letter_value(v)))
        .collect();
    let value = serde_json::json!({
        "reason": reason.to_string(),
        "source": source,
        "commit_lsn": commit_lsn,
        "columns": columns,
    });
    let mut record_headers = BTreeMap::from([(
        headers::DEAD_LETTER_REASON.to_owned(),
        reason.to_string().into_bytes(),
    )]);
    if let Some(id) = column(columns::ID) {
        record_headers.insert(headers::EVENT_ID.to_owned(), id.as_bytes().to_vec());
    }
    OutgoingRecord {
        topic,
        record: Record {
            key: column(columns::AGGREGATE_ID).map(|k| k.as_bytes().to_vec()),
            value: Some(value.to_string().into_bytes()),
            headers: record_headers,
            timestamp: Utc::now(),
        },
    }
}

/// The dead-letter record of a record the broker refused: the reason, the
/// original key and headers, and the value (cut when long).
pub fn dead_letter_of_record(
    topic: &str,
    record: &Record,
    reason: &str,
    source: &str,
) -> OutgoingRecord {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let original_headers: serde_json::Map<String, serde_json::Value> = record
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), text(v).into()))
        .collect();
    let value = record.value.as_deref().unwrap_or_default();
    let value = serde_json::json!({
        "reason": reason,
        "source": source,
        "topic": topic,
        "headers": original_headers,
        "value": dead_letter_value(&Value::Binary(Bytes::copy_from_slice(value))),
    });
    let mut record_headers = BTreeMap::from([(
        headers::DEAD_LETTER_REASON.to_owned(),
        reason.as_bytes().to_vec(),
    )]);
    if let Some(id) = record.headers.get(headers::EVENT_ID) {
        record_headers.insert(headers::EVENT_ID.to_owned(), id.clone());
    }
    OutgoingRecord {
        topic: dead_letter_topic(Some(topic)),
        record: Record {
            key: record.key.clone(),
            value: Some(value.to_string().into_bytes()),
            headers: record_headers,
            timestamp: Utc::now(),
        },
    }
}

fn dead_letter_value(value: &Value) -> serde_json::Value {
    match value {
        Value::Null | Value::UnchangedToast => serde_json::Value::Null,
        Value::Text(bytes) | Value::Binary(bytes) => {
            let text = String::from_utf8_lossy(truncate(bytes));
            if bytes.len() > DEAD_LETTER_VALUE_LIMIT {
                format!("{text}... ({} bytes in all)", bytes.len()).into()
            } else {
                text.into_owned().into()
            }
        }
    }
}

fn truncate(bytes: &Bytes) -> &[u8] {
    &bytes[..bytes.len().min(DEAD_LETTER_VALUE_LIMIT)]
}

fn text_value<'a>(
    values: &'a [Value],
    index: usize,
    name: &'static str,
) -> Result<&'a str, RowError> {
    match values.get(index) {
        Some(Value::Text(bytes)) => std::str::from_utf8(bytes).map_err(|_| RowError::NotText(name)),
        Some(Value::Null) => Err(RowError::Null(name)),
        _ => Err(RowError::NotText(name)),
    }
}

/// Parses `timestamptz` text output (the connection uses DateStyle ISO, UTC).
fn parse_timestamp(text: &str) -> Result<DateTime<Utc>, RowError> {
    DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z")
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| RowError::InvalidTimestamp(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::pgoutput::Column;

    fn relation() -> Relation {
        // A different column order than the migration, plus an extra column.
        let names = [
            "payload",
            "extra",
            "id",
            "aggregate_type",
            "aggregate_id",
            "event_type",
            "schema_version",
            "trace_id",
            "occurred_at",
        ];
        Relation {
            id: 1,
            namespace: "public".into(),
            name: "outbox".into(),
            columns: names
                .iter()
                .map(|n| Column {
                    name: (*n).into(),
                    type_oid: 25,
                })
                .collect(),
        }
    }

    fn row(payload: &str, occurred_at: &str) -> Vec<Value> {
        [
            payload,
            "x",
            "0190f6d4-2c4e-7b3a-9c1d-2f3e4a5b6c7d",
            "orders",
            "order-1",
            "OrderCreated",
            "1",
            "trace-9",
            occurred_at,
        ]
        .iter()
        .map(|v| Value::Text(Bytes::copy_from_slice(v.as_bytes())))
        .collect()
    }

    #[test]
    fn builds_the_envelope_record() {
        let relation = relation();
        let columns = OutboxColumns::resolve(&relation).unwrap();
        let values = row(
            r#"{"total_cents": 1250, "note": "grüße ✓"}"#,
            "2026-11-25 12:44:10.123456+00",
        );
        let out = to_record(&columns, &values, 1 << 20).unwrap();
        assert_eq!(out.topic, "orders");
        assert_eq!(out.key(), b"order-1");
        assert_eq!(out.record.headers["event_type"], b"OrderCreated");
        assert_eq!(out.record.headers["trace_id"], b"trace-9");
        let envelope: serde_json::Value =
            serde_json::from_slice(out.record.value.as_deref().unwrap()).unwrap();
        assert_eq!(
            envelope,
            serde_json::json!({
                "event_id": "0190f6d4-2c4e-7b3a-9c1d-2f3e4a5b6c7d",
                "event_type": "OrderCreated",
                "aggregate_type": "orders",
                "aggregate_id": "order-1",
                "occurred_at": "2026-11-25T12:44:10.123456Z",
                "schema_version": 1,
                "trace_id": "trace-9",
                "payload": {"total_cents": 1250, "note": "grüße ✓"},
            })
        );
    }

    #[test]
    fn accepts_offsets_and_whole_seconds() {
        assert_eq!(
            parse_timestamp("2026-11-25 14:44:10+02")
                .unwrap()
                .to_rfc3339(),
            "2026-11-25T12:44:10+00:00"
        );
        assert!(parse_timestamp("infinity").is_err());
    }

    #[test]
    fn refuses_bad_rows_with_a_reason() {
        let relation = relation();
        let columns = OutboxColumns::resolve(&relation).unwrap();
        let mut values = row("{}", "2026-11-25 12:44:10+00");
        values[5] = Value::Null;
        assert_eq!(
            to_record(&columns, &values, 1 << 20).unwrap_err(),
            RowError::Null("event_type")
        );
        let values = row("{}", "yesterday");
        assert!(matches!(
            to_record(&columns, &values, 1 << 20),
            Err(RowError::InvalidTimestamp(_))
        ));
        let values = row("{}", "2026-11-25 12:44:10+00");
        assert!(matches!(
            to_record(&columns, &values, 100),
            Err(RowError::TooLarge { limit: 100, .. })
        ));
    }

    #[test]
    fn rejects_tables_without_the_outbox_columns() {
        let mut relation = relation();
        relation.columns.retain(|c| c.name != "trace_id");
        assert_eq!(
            OutboxColumns::resolve(&relation).unwrap_err(),
            RowError::MissingColumn("trace_id")
        );
    }

    #[test]
    fn dead_letters_carry_reason_and_cut_columns() {
        let relation = relation();
        let big = format!("\"{}\"", "a".repeat(100_000));
        let values = row(&big, "2026-11-25 12:44:10+00");
        let reason = RowError::TooLarge {
            size: 100_200,
            limit: 1000,
        };
        let out = dead_letter(&relation, &values, &reason, "order", "0/16B3748");
        assert_eq!(out.topic, "orders.dlq");
        assert_eq!(out.key(), b"order-1");
        assert!(out.size() < 20_000);
        let value: serde_json::Value =
            serde_json::from_slice(out.record.value.as_deref().unwrap()).unwrap();
        assert_eq!(value["source"], "order");
        assert!(value["reason"].as_str().unwrap().contains("exceeds"));
        assert_eq!(value["columns"]["event_type"], "OrderCreated");
    }

    #[test]
    fn refused_records_become_dead_letters() {
        let relation = relation();
        let columns = OutboxColumns::resolve(&relation).unwrap();
        let out = to_record(&columns, &row("{}", "2026-11-25 12:44:10+00"), 1 << 20).unwrap();
        let dead = dead_letter_of_record("orders", &out.record, "MessageTooLarge", "order");
        assert_eq!(dead.topic, "orders.dlq");
        assert_eq!(dead.key(), b"order-1");
        assert_eq!(
            dead.record.headers["event_id"],
            out.record.headers["event_id"]
        );
        let value: serde_json::Value =
            serde_json::from_slice(dead.record.value.as_deref().unwrap()).unwrap();
        assert_eq!(value["reason"], "MessageTooLarge");
        assert_eq!(value["headers"]["event_type"], "OrderCreated");
        assert!(
            value["value"]
                .as_str()
                .unwrap()
                .contains("\"aggregate_id\":\"order-1\"")
        );
    }

    #[test]
    fn invalid_topics_go_to_the_fallback_dead_letter_topic() {
        let relation = relation();
        let mut values = row("{}", "2026-11-25 12:44:10+00");
        values[3] = Value::Text(Bytes::from_static(b"no spaces allowed"));
        let columns = OutboxColumns::resolve(&relation).unwrap();
        let error = to_record(&columns, &values, 1 << 20).unwrap_err();
        assert!(matches!(error, RowError::InvalidTopic(_)));
        let out = dead_letter(&relation, &values, &error, "order", "0/0");
        assert_eq!(out.topic, FALLBACK_DEAD_LETTER_TOPIC);
    }
}
