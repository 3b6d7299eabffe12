//! The outbox wire format: what a service writes to its `outbox` table,
//! what the relay makes of a row, and what a consumer reads. One row
//! becomes one Kafka record: topic = `aggregate_type`, key =
//! `aggregate_id`, the [`headers`], and as value the JSON [`Envelope`]
//! (the row's columns, with the payload as written). A row or record that
//! can never be published goes to `<topic>.dlq` instead. Documented in
//! docs/events.md. The relay knows these names only, never an event type.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The outbox table's columns, in the order of the [`Envelope`]'s fields
/// (and of the services' inserts).
pub mod columns {
    pub const ID: &str = "id";
    pub const AGGREGATE_TYPE: &str = "aggregate_type";
    pub const AGGREGATE_ID: &str = "aggregate_id";
    pub const EVENT_TYPE: &str = "event_type";
    pub const SCHEMA_VERSION: &str = "schema_version";
    pub const TRACE_ID: &str = "trace_id";
    pub const OCCURRED_AT: &str = "occurred_at";
    pub const PAYLOAD: &str = "payload";
    pub const ALL: [&str; 8] = [
        ID,
        AGGREGATE_TYPE,
        AGGREGATE_ID,
        EVENT_TYPE,
        SCHEMA_VERSION,
        TRACE_ID,
        OCCURRED_AT,
        PAYLOAD,
    ];
}

/// Kafka record header names set by the relay.
pub mod headers {
    pub const EVENT_ID: &str = "event_id";
    pub const EVENT_TYPE: &str = "event_type";
    pub const TRACE_ID: &str = "trace_id";
    /// On a dead letter only: why the row or record could not be published.
    pub const DEAD_LETTER_REASON: &str = "dead_letter_reason";
}

/// The JSON value of every Kafka record. Generic so that each side keeps
/// its own types: the relay writes borrowed text and the payload's raw
/// JSON as read from the row (`Envelope<&str, &str, &RawValue>`); the
/// services read a `Uuid` id and a parsed payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<Id, Text, Payload> {
    pub event_id: Id,
    pub event_type: Text,
    pub aggregate_type: Text,
    pub aggregate_id: Text,
    pub occurred_at: DateTime<Utc>,
    pub schema_version: i32,
    pub trace_id: Text,
    pub payload: Payload,
}

impl<Id, Text: AsRef<str>> Envelope<Id, Text, serde_json::Value> {
    /// The typed event inside: `E` is an enum serialized adjacently tagged
    /// (`#[serde(tag = "event_type", content = "payload")]`), so that its
    /// tag is the envelope's `event_type` and its content the `payload`.
    pub fn event<E: DeserializeOwned>(&self) -> Result<E, serde_json::Error> {
        serde_json::from_value(serde_json::json!({
            "event_type": self.event_type.as_ref(),
            "payload": self.payload,
        }))
    }
}

/// Suffix of the topic that receives what can never be published to, or
/// handled from, a topic.
pub const DEAD_LETTER_SUFFIX: &str = ".dlq";
/// Dead-letter topic for rows whose `aggregate_type` is not a usable topic.
pub const FALLBACK_DEAD_LETTER_TOPIC: &str = "outbox.dlq";

/// Whether `topic` receives dead letters (`<topic>.dlq`, the fallback
/// included): its records are never dead-lettered in turn.
pub fn is_dead_letter_topic(topic: &str) -> bool {
    topic.ends_with(DEAD_LETTER_SUFFIX)
}

/// `<topic>.dlq`, or the fallback when there is no topic or that is not a
/// valid topic name.
pub fn dead_letter_topic(topic: Option<&str>) -> String {
    match topic.map(|t| format!("{t}{DEAD_LETTER_SUFFIX}")) {
        Some(name) if is_valid_topic(&name) => name,
        _ => FALLBACK_DEAD_LETTER_TOPIC.to_owned(),
    }
}

/// Kafka's rule: 1 to 249 characters of `[a-zA-Z0-9._-]`.
pub fn is_valid_topic(name: &str) -> bool {
    (1..=249).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(tag = "event_type", content = "payload")]
    enum Sample {
        Paid { cents: i64 },
    }

    #[test]
    fn the_field_names_are_the_columns() {
        let envelope = Envelope {
            event_id: "e",
            event_type: "Paid",
            aggregate_type: "orders",
            aggregate_id: "o",
            occurred_at: DateTime::<Utc>::UNIX_EPOCH,
            schema_version: 1,
            trace_id: "t",
            payload: serde_json::json!({"cents": 5}),
        };
        let value = serde_json::to_value(&envelope).unwrap();
        let fields: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = columns::ALL.to_vec();
        expected[0] = headers::EVENT_ID;
        expected.sort();
        assert_eq!(fields, expected);
        let owned: Envelope<String, String, serde_json::Value> =
            serde_json::from_value(value).unwrap();
        assert_eq!(owned.event::<Sample>().unwrap(), Sample::Paid { cents: 5 });
    }

    #[test]
    fn dead_letter_topics() {
        assert_eq!(dead_letter_topic(Some("orders")), "orders.dlq");
        assert!(is_dead_letter_topic("orders.dlq"));
        assert_eq!(
            dead_letter_topic(Some("no spaces")),
            FALLBACK_DEAD_LETTER_TOPIC
        );
        assert_eq!(dead_letter_topic(None), FALLBACK_DEAD_LETTER_TOPIC);
        assert!(!is_valid_topic(&"a".repeat(250)));
    }
}
