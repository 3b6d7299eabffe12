//! Decoder for the `pgoutput` logical replication protocol, version 1.
//!
//! Each XLogData message carries exactly one pgoutput message. The relay needs
//! Begin, Commit, Relation and Insert; every other message (Origin, Type,
//! Update, Delete, Truncate, logical Message) is recognised and skipped
//! whole, which is safe because a message never spans two XLogData frames.

use std::collections::HashMap;

use bytes::{Buf, Bytes};

use super::lsn::Lsn;

/// Microseconds since 2000-01-01 00:00:00 UTC (PostgreSQL's epoch).
pub type PgTimestamp = i64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("pgoutput message truncated while reading {0}")]
    Truncated(&'static str),
    #[error("pgoutput {0} is not valid UTF-8")]
    InvalidUtf8(&'static str),
    #[error("unknown tuple value kind {0:#04x}")]
    UnknownValueKind(u8),
    #[error("empty pgoutput message")]
    Empty,
}

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogicalMessage {
    Begin(Begin),
    Commit(Commit),
    Relation(Relation),
    Insert(Insert),
    /// Any other message, identified by its tag byte and deliberately ignored.
    Skipped(u8),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    pub commit_time: PgTimestamp,
    pub xid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub commit_lsn: Lsn,
    /// End of the commit record: the position to confirm once the
    /// transaction's events are safely published.
    pub end_lsn: Lsn,
    pub commit_time: PgTimestamp,
}

/// A table's shape, sent before the first change of it in a session and
/// again whenever it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    pub namespace: String,
    pub name: String,
    pub columns: Vec<Column>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    pub relation_id: u32,
    pub values: Vec<Value>,
}

/// A column value of a tuple, in the order of the relation's columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    /// An unchanged TOASTed value (only in updates; listed for completeness).
    UnchangedToast,
    /// The type's text output (the default for protocol version 1).
    Text(Bytes),
    Binary(Bytes),
}

impl Relation {
    /// Position of the column named `name`.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

/// Decodes one pgoutput message (the payload of an XLogData frame).
pub fn decode(data: Bytes) -> Result<LogicalMessage, DecodeError> {
    let mut reader = Reader(data);
    let tag = reader.u8("message tag").map_err(|_| DecodeError::Empty)?;
    Ok(match tag {
        b'B' => LogicalMessage::Begin(Begin {
            final_lsn: Lsn(reader.u64("begin final LSN")?),
            commit_time: reader.i64("begin commit time")?,
            xid: reader.u32("begin xid")?,
        }),
        b'C' => {
            reader.u8("commit flags")?;
            LogicalMessage::Commit(Commit {
                commit_lsn: Lsn(reader.u64("commit LSN")?),
                end_lsn: Lsn(reader.u64("commit end LSN")?),
                commit_time: reader.i64("commit time")?,
            })
        }
        b'R' => LogicalMessage::Relation(decode_relation(&mut reader)?),
        b'I' => LogicalMessage::Insert(decode_insert(&mut reader)?),
        other => LogicalMessage::Skipped(other),
    })
}

fn decode_relation(reader: &mut Reader) -> Result<Relation, DecodeError> {
    let id = reader.u32("relation id")?;
    let namespace = reader.cstr("relation namespace")?;
    let name = reader.cstr("relation name")?;
    reader.u8("replica identity")?;
    let count = reader.i16("relation column count")?;
    let mut columns = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for _ in 0..count {
        reader.u8("column flags")?;
        let name = reader.cstr("column name")?;
        let type_oid = reader.u32("column type")?;
        reader.i32("column type modifier")?;
        columns.push(Column { name, type_oid });
    }
    Ok(Relation {
        id,
        namespace,
        name,
        columns,
    })
}

fn decode_insert(reader: &mut Reader) -> Result<Insert, DecodeError> {
    let relation_id = reader.u32("insert relation id")?;
    // Always 'N' (new tuple) for inserts.
    reader.u8("insert tuple marker")?;
    let values = decode_tuple(reader)?;
    Ok(Insert {
        relation_id,
        values,
    })
}

fn decode_tuple(reader: &mut Reader) -> Result<Vec<Value>, DecodeError> {
    let count = reader.i16("tuple column count")?;
    let mut values = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for _ in 0..count {
        let value = match reader.u8("tuple value kind")? {
            b'n' => Value::Null,
            b'u' => Value::UnchangedToast,
            b't' => Value::Text(reader.sized("text value")?),
            b'b' => Value::Binary(reader.sized("binary value")?),
            other => return Err(DecodeError::UnknownValueKind(other)),
        };
        values.push(value);
    }
    Ok(values)
}

/// Relations seen in this replication session, by id.
#[derive(Debug, Default)]
pub struct RelationCache(HashMap<u32, Relation>);

impl RelationCache {
    pub fn insert(&mut self, relation: Relation) {
        self.0.insert(relation.id, relation);
    }

    pub fn get(&self, id: u32) -> Option<&Relation> {
        self.0.get(&id)
    }
}

/// Big-endian reads over a message, each naming what it reads for errors.
struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize, what: &'static str) -> Result<(), DecodeError> {
        if self.0.remaining() < n {
            return Err(DecodeError::Truncated(what));
        }
        Ok(())
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        self.need(1, what)?;
        Ok(self.0.get_u8())
    }

    fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        self.need(2, what)?;
        Ok(self.0.get_i16())
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.need(4, what)?;
        Ok(self.0.get_u32())
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        self.need(4, what)?;
        Ok(self.0.get_i32())
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        self.need(8, what)?;
        Ok(self.0.get_u64())
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        self.need(8, what)?;
        Ok(self.0.get_i64())
    }

    fn cstr(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let end = self
            .0
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::Truncated(what))?;
        let raw = self.0.split_to(end);
        self.0.advance(1);
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::InvalidUtf8(what))
    }

    /// An `Int32` length followed by that many bytes.
    fn sized(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let len = usize::try_from(self.i32(what)?).map_err(|_| DecodeError::Truncated(what))?;
        self.need(len, what)?;
        Ok(self.0.split_to(len))
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Byte-exact pgoutput messages, built the way the server writes them.

    use bytes::{BufMut, Bytes, BytesMut};

    pub fn begin(final_lsn: u64, commit_time: i64, xid: u32) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'B');
        b.put_u64(final_lsn);
        b.put_i64(commit_time);
        b.put_u32(xid);
        b.freeze()
    }

    pub fn commit(commit_lsn: u64, end_lsn: u64, commit_time: i64) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'C');
        b.put_u8(0);
        b.put_u64(commit_lsn);
        b.put_u64(end_lsn);
        b.put_i64(commit_time);
        b.freeze()
    }

    pub fn relation(id: u32, namespace: &str, name: &str, columns: &[(&str, u32)]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'R');
        b.put_u32(id);
        put_cstr(&mut b, namespace);
        put_cstr(&mut b, name);
        b.put_u8(b'd');
        b.put_i16(columns.len() as i16);
        for (column, oid) in columns {
            b.put_u8(0);
            put_cstr(&mut b, column);
            b.put_u32(*oid);
            b.put_i32(-1);
        }
        b.freeze()
    }

    /// An insert; `None` is a NULL, `Some` a text value.
    pub fn insert(relation_id: u32, values: &[Option<&[u8]>]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'I');
        b.put_u32(relation_id);
        b.put_u8(b'N');
        b.put_i16(values.len() as i16);
        for value in values {
            match value {
                None => b.put_u8(b'n'),
                Some(text) => {
                    b.put_u8(b't');
                    b.put_i32(text.len() as i32);
                    b.put_slice(text);
                }
            }
        }
        b.freeze()
    }

    fn put_cstr(b: &mut BytesMut, s: &str) {
        b.put_slice(s.as_bytes());
        b.put_u8(0);
    }
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};

    use super::fixtures::*;
    use super::*;

    #[test]
    fn decodes_begin_and_commit() {
        assert_eq!(
            decode(begin(0x10, 42, 7)).unwrap(),
            LogicalMessage::Begin(Begin {
                final_lsn: Lsn(0x10),
                commit_time: 42,
                xid: 7
            })
        );
        assert_eq!(
            decode(commit(0x10, 0x38, 42)).unwrap(),
            LogicalMessage::Commit(Commit {
                commit_lsn: Lsn(0x10),
                end_lsn: Lsn(0x38),
                commit_time: 42
            })
        );
    }

    #[test]
    fn decodes_relation_columns_by_name() {
        let message = relation(
            16384,
            "public",
            "outbox",
            &[("id", 2950), ("payload", 3802)],
        );
        let LogicalMessage::Relation(relation) = decode(message).unwrap() else {
            panic!("not a relation");
        };
        assert_eq!(relation.namespace, "public");
        assert_eq!(relation.name, "outbox");
        assert_eq!(relation.column_index("payload"), Some(1));
        assert_eq!(relation.columns[0].type_oid, 2950);
    }

    #[test]
    fn decodes_null_text_and_unicode_values() {
        let message = insert(16384, &[Some("héllo ✓ 🚀".as_bytes()), None, Some(b"")]);
        let LogicalMessage::Insert(insert) = decode(message).unwrap() else {
            panic!("not an insert");
        };
        assert_eq!(insert.relation_id, 16384);
        assert_eq!(
            insert.values,
            vec![
                Value::Text(Bytes::from("héllo ✓ 🚀")),
                Value::Null,
                Value::Text(Bytes::new())
            ]
        );
    }

    #[test]
    fn decodes_unchanged_toast_and_binary_values() {
        let mut b = BytesMut::new();
        b.put_u8(b'I');
        b.put_u32(1);
        b.put_u8(b'N');
        b.put_i16(2);
        b.put_u8(b'u');
        b.put_u8(b'b');
        b.put_i32(2);
        b.put_slice(&[0xde, 0xad]);
        let LogicalMessage::Insert(insert) = decode(b.freeze()).unwrap() else {
            panic!("not an insert");
        };
        assert_eq!(
            insert.values,
            vec![
                Value::UnchangedToast,
                Value::Binary(Bytes::from_static(&[0xde, 0xad]))
            ]
        );
    }

    #[test]
    fn skips_other_messages_whole() {
        for tag in [b'O', b'Y', b'U', b'D', b'T', b'M'] {
            let mut b = BytesMut::new();
            b.put_u8(tag);
            b.put_slice(b"anything at all");
            assert_eq!(decode(b.freeze()).unwrap(), LogicalMessage::Skipped(tag));
        }
    }

    #[test]
    fn reports_truncation_instead_of_panicking() {
        let full = insert(1, &[Some(b"abcdef")]);
        for cut in 1..full.len() {
            assert!(
                matches!(decode(full.slice(..cut)), Err(DecodeError::Truncated(_))),
                "cut at {cut}"
            );
        }
        assert_eq!(decode(Bytes::new()), Err(DecodeError::Empty));
    }

    #[test]
    fn rejects_unknown_value_kinds() {
        let mut b = BytesMut::new();
        b.put_u8(b'I');
        b.put_u32(1);
        b.put_u8(b'N');
        b.put_i16(1);
        b.put_u8(b'x');
        assert_eq!(decode(b.freeze()), Err(DecodeError::UnknownValueKind(b'x')));
    }

    #[test]
    fn relation_cache_keeps_the_latest_shape() {
        let mut cache = RelationCache::default();
        let LogicalMessage::Relation(old) =
            decode(relation(5, "public", "outbox", &[("id", 2950)])).unwrap()
        else {
            panic!()
        };
        let LogicalMessage::Relation(new) =
            decode(relation(5, "public", "outbox", &[("id", 2950), ("x", 25)])).unwrap()
        else {
            panic!()
        };
        cache.insert(old);
        cache.insert(new);
        assert_eq!(cache.get(5).unwrap().columns.len(), 2);
        assert!(cache.get(6).is_none());
    }
}
