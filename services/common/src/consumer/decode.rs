//! A fetched record's value as the runtime (and the dead-letter replay)
//! sees it: its envelope and event, or why it cannot be handled.

use rskafka::record::RecordAndOffset;

use crate::events::{Envelope, Event};

/// A fetched record with its envelope and event, decoded once (to decide
/// whether it is wanted, then to apply it).
pub(super) struct Decoded<'a> {
    pub record: &'a RecordAndOffset,
    /// The envelope and its event (or why the event is unknown), or why the
    /// value is no envelope.
    pub envelope: Result<(Envelope, Result<Event, String>), String>,
}

impl<'a> Decoded<'a> {
    pub fn of(record: &'a RecordAndOffset) -> Self {
        let envelope = decode_value(record.record.value.as_deref());
        Self { record, envelope }
    }
}

/// The envelope in a record's value, or why there is none.
fn envelope_of(value: Option<&[u8]>) -> Result<Envelope, String> {
    let value = value.ok_or_else(|| "record has no value".to_string())?;
    serde_json::from_slice(value).map_err(|e| format!("invalid envelope: {e}"))
}

/// A record's value as the runtime (and the dead-letter replay) sees it: its
/// envelope and event, or why it cannot be handled (the dead letter's
/// reason). An envelope holding a NUL character (`\u0000` in its JSON) is
/// refused: no PostgreSQL text or jsonb can store it, so a handler writing
/// any of it would fail on every attempt. The outbox (jsonb) cannot even
/// hold one, so such a record was not written by a service.
pub(crate) fn decode_value(
    value: Option<&[u8]>,
) -> Result<(Envelope, Result<Event, String>), String> {
    envelope_of(value).map(|envelope| {
        let event = match field_with_nul(&envelope) {
            Some(field) => Err(format!(
                "the envelope's {field} holds a NUL character (U+0000), which PostgreSQL \
                 cannot store"
            )),
            None => envelope
                .event()
                .map_err(|e| format!("unknown event type or invalid payload: {e}")),
        };
        (envelope, event)
    })
}

/// The first field of `envelope` that holds a NUL character, if any.
fn field_with_nul(envelope: &Envelope) -> Option<&'static str> {
    fn json_has_nul(value: &serde_json::Value) -> bool {
        match value {
            serde_json::Value::String(s) => s.contains('\0'),
            serde_json::Value::Array(items) => items.iter().any(json_has_nul),
            serde_json::Value::Object(fields) => fields
                .iter()
                .any(|(k, v)| k.contains('\0') || json_has_nul(v)),
            _ => false,
        }
    }
    [
        ("event_type", envelope.event_type.contains('\0')),
        ("aggregate_type", envelope.aggregate_type.contains('\0')),
        ("aggregate_id", envelope.aggregate_id.contains('\0')),
        ("trace_id", envelope.trace_id.contains('\0')),
        ("payload", json_has_nul(&envelope.payload)),
    ]
    .into_iter()
    .find_map(|(field, nul)| nul.then_some(field))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rskafka::record::Record;
    use uuid::Uuid;

    use super::*;

    fn record(value: Option<&[u8]>) -> RecordAndOffset {
        RecordAndOffset {
            record: Record {
                key: None,
                value: value.map(<[u8]>::to_vec),
                headers: BTreeMap::new(),
                timestamp: chrono::Utc::now(),
            },
            offset: 7,
        }
    }

    #[test]
    fn decode_rejects_what_is_not_an_envelope() {
        let decode = |value| Decoded::of(&record(value)).envelope;
        assert!(decode(None).unwrap_err().contains("no value"));
        assert!(
            decode(Some(b"{oops"))
                .unwrap_err()
                .contains("invalid envelope")
        );
        let envelope = Envelope {
            event_id: Uuid::new_v4(),
            event_type: "Whatever".into(),
            aggregate_type: "orders".into(),
            aggregate_id: "x".into(),
            occurred_at: chrono::Utc::now(),
            schema_version: 1,
            trace_id: "t".into(),
            payload: serde_json::json!({}),
        };
        let bytes = serde_json::to_vec(&envelope).unwrap();
        let (decoded, event) = decode(Some(&bytes)).unwrap();
        assert_eq!(decoded, envelope);
        assert!(event.is_err(), "unknown type is left to the caller");
    }

    #[test]
    fn an_envelope_holding_a_nul_is_refused() {
        let envelope = Envelope {
            event_id: Uuid::new_v4(),
            event_type: "PaymentFailed".into(),
            aggregate_type: "payments".into(),
            aggregate_id: "x".into(),
            occurred_at: chrono::Utc::now(),
            schema_version: 1,
            trace_id: "t".into(),
            payload: serde_json::json!({"reasons": [{"code": "a\u{0}b"}]}),
        };
        let bytes = serde_json::to_vec(&envelope).unwrap();
        let (_, event) = decode_value(Some(&bytes)).unwrap();
        let reason = event.unwrap_err();
        assert!(reason.contains("payload holds a NUL"), "{reason}");
    }
}
