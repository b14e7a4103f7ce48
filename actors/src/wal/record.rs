//! The logical WAL record (one table's rows from one batch) and its payload encoding.
//!
//! Payload layout, little endian: `u16 tenant_len | tenant | u16 table_len | table |
//! u32 schema_version | u64 first_seq | i64 ingested_at_us | rows` where `rows` is
//! [`crate::row::encode_rows`]. A record with an idempotency key (frame type 2) has
//! `u16 key_len | key | u64 body_hash` between the ingestion time and the rows, so the key is
//! durable in the same frame as the events it names. The payload is self-contained: it decodes without a
//! schema.

use std::fmt;

use crate::ids::{Seq, TableName, TableRef, TenantId};
use crate::row::{Row, decode_rows, encode_rows};

/// The smallest possible payload: one-byte names, the fixed fields and a zero row count.
pub(crate) const MIN_PAYLOAD_LEN: usize = 2 + 1 + 2 + 1 + 4 + 8 + 8 + 4;

/// Longest tenant name the identifier rules allow, used to reject implausible frames cheaply.
const MAX_TENANT_LEN: usize = 64;

/// One table's rows from one ingest batch, as logged.
///
/// The rows carry sequences `first_seq`, `first_seq + 1`, ... in order.
#[derive(Clone, PartialEq)]
pub struct WalRecord {
    /// The table the rows belong to.
    pub table: TableRef,
    /// The schema version the rows were validated against.
    pub schema_version: u32,
    /// Sequence of the first row.
    pub first_seq: Seq,
    /// Ingestion time in microseconds since the Unix epoch (the hidden `_ingested_at`).
    pub ingested_at_us: i64,
    /// The rows, in sequence order.
    pub rows: Vec<Row>,
    /// The producer's idempotency key (scoped to the table), if the batch had one.
    pub idempotency_key: Option<super::dedupe::IdempotencyKey>,
}

impl WalRecord {
    /// Returns the sequence of the last row; for a record without rows, `first_seq - 1` (the
    /// record then holds no sequence at all).
    pub fn last_seq(&self) -> Seq {
        match self.rows.len() as u64 {
            0 => self.first_seq.saturating_sub(1),
            n => self.first_seq.saturating_add(n - 1),
        }
    }

    /// Appends the payload encoding of the record to `out`.
    /// Length of [`WalRecord::encode_payload`]'s output, computed without encoding.
    pub fn payload_len(&self) -> usize {
        2 + self.table.tenant.as_str().len()
            + 2
            + self.table.table.as_str().len()
            + 4
            + 8
            + 8
            + self
                .idempotency_key
                .as_ref()
                .map_or(0, |k| 2 + k.key.len() + 8)
            + crate::row::encoded_len(&self.rows)
    }

    pub(crate) fn encode_payload(&self, out: &mut Vec<u8>) {
        self.encode_head(out);
        if let Some(key) = &self.idempotency_key {
            put_str(&key.key, out);
            out.extend_from_slice(&key.body_hash.to_le_bytes());
        }
        encode_rows(&self.rows, out);
    }

    /// Decodes a payload written by [`WalRecord::encode_payload`], explaining any failure;
    /// `keyed` says whether the frame type is the one with an idempotency key.
    pub(crate) fn decode_payload(buf: &[u8], keyed: bool) -> Result<WalRecord, String> {
        let mut c = Cursor { buf, pos: 0 };
        let tenant = c.str("tenant")?;
        let tenant = TenantId::new(tenant).map_err(|e| e.to_string())?;
        let table = c.str("table")?;
        let table = TableName::new(table).map_err(|e| e.to_string())?;
        let schema_version = u32::from_le_bytes(c.array("schema version")?);
        let first_seq = u64::from_le_bytes(c.array("first sequence")?);
        let ingested_at_us = i64::from_le_bytes(c.array("ingestion time")?);
        let idempotency_key = match keyed {
            true => Some(super::dedupe::IdempotencyKey {
                key: c.str("idempotency key")?.to_string(),
                body_hash: u64::from_le_bytes(c.array("body hash")?),
            }),
            false => None,
        };
        let rows_at = c.pos;
        let rows = decode_rows(&buf[rows_at..])
            .map_err(|e| format!("rows starting at payload byte {rows_at}: {e}"))?;
        Ok(WalRecord {
            table: TableRef::new(tenant, table),
            schema_version,
            first_seq,
            ingested_at_us,
            rows,
            idempotency_key,
        })
    }

    /// Tells whether `payload` starts like a record payload (a sane tenant name length and a
    /// valid first character). Recovery uses it to skip garbage before paying for a CRC.
    pub(crate) fn plausible_payload(payload: &[u8]) -> bool {
        let (Some(len), Some(&first)) = (payload.get(..2), payload.get(2)) else {
            return false;
        };
        let len = u16::from_le_bytes([len[0], len[1]]) as usize;
        (1..=MAX_TENANT_LEN).contains(&len)
            && (first.is_ascii_lowercase()
                || first.is_ascii_digit()
                || first == b'_'
                || first == b'-')
    }
}

/// Magic of a cluster log message, followed by a format version byte.
const MESSAGE_MAGIC: &[u8; 4] = b"ALVL";
/// Format version of cluster log messages.
const MESSAGE_VERSION: u8 = 1;

impl WalRecord {
    /// Encodes the record as one message of the cluster's replicated log (the
    /// `ALLUVIUM_INGEST` stream): `"ALVL" | u8 version | u32 crc32 (of the payload) | payload`
    /// with the payload of a WAL frame without idempotency key. The stream assigns the
    /// sequence, so `first_seq` is stored as given (0) and set by the reader.
    pub fn encode_message(&self) -> Vec<u8> {
        let mut payload = Vec::with_capacity(self.payload_len() + 9);
        payload.extend_from_slice(MESSAGE_MAGIC);
        payload.push(MESSAGE_VERSION);
        payload.extend_from_slice(&[0; 4]);
        self.encode_head(&mut payload);
        encode_rows(&self.rows, &mut payload);
        let crc = crc32fast::hash(&payload[9..]);
        payload[5..9].copy_from_slice(&crc.to_le_bytes());
        payload
    }

    /// Decodes a message written by [`WalRecord::encode_message`], checking its magic,
    /// version and checksum before anything else.
    pub fn decode_message(buf: &[u8]) -> Result<WalRecord, String> {
        if buf.len() < 9 || &buf[..4] != MESSAGE_MAGIC {
            return Err("not an alluvium log message (bad magic)".into());
        }
        if buf[4] != MESSAGE_VERSION {
            return Err(format!(
                "log message format version {} is not supported (this build reads {MESSAGE_VERSION})",
                buf[4]
            ));
        }
        let crc = u32::from_le_bytes([buf[5], buf[6], buf[7], buf[8]]);
        if crc32fast::hash(&buf[9..]) != crc {
            return Err("log message checksum mismatch".into());
        }
        Self::decode_payload(&buf[9..], false)
    }

    /// The fields before the idempotency key and the rows.
    fn encode_head(&self, out: &mut Vec<u8>) {
        put_str(self.table.tenant.as_str(), out);
        put_str(self.table.table.as_str(), out);
        out.extend_from_slice(&self.schema_version.to_le_bytes());
        out.extend_from_slice(&self.first_seq.to_le_bytes());
        out.extend_from_slice(&self.ingested_at_us.to_le_bytes());
    }
}

/// A short form: the rows are counted, never printed, since a record can hold megabytes.
impl fmt::Debug for WalRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalRecord")
            .field("table", &format_args!("{}", self.table))
            .field("schema_version", &self.schema_version)
            .field("first_seq", &self.first_seq)
            .field("last_seq", &self.last_seq())
            .field("ingested_at_us", &self.ingested_at_us)
            .field("rows", &self.rows.len())
            .field("idempotency_key", &self.idempotency_key)
            .finish()
    }
}

fn put_str(s: &str, out: &mut Vec<u8>) {
    // Names are validated to at most 128 bytes and idempotency keys to 256, so the length
    // always fits a u16.
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.buf.len() - self.pos < n {
            return Err(format!(
                "payload truncated in the {what} at byte {}",
                self.pos
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn str(&mut self, what: &str) -> Result<&'a str, String> {
        let len = u16::from_le_bytes(self.array(what)?) as usize;
        let at = self.pos;
        std::str::from_utf8(self.take(len, what)?)
            .map_err(|_| format!("{what} name at payload byte {at} is not utf-8"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::row::{Op, Value};
    use proptest::prelude::*;

    fn record(rows: Vec<Row>) -> WalRecord {
        WalRecord {
            table: TableRef::new(
                TenantId::new("acme").unwrap(),
                TableName::new("clicks").unwrap(),
            ),
            schema_version: 3,
            first_seq: 41,
            ingested_at_us: -5,
            rows,
            idempotency_key: None,
        }
    }

    #[test]
    fn log_messages_round_trip_and_check_their_checksum() {
        let r = record(vec![Row {
            op: Op::Upsert,
            values: vec![Value::Int(7), Value::Null],
        }]);
        let msg = r.encode_message();
        let back = WalRecord::decode_message(&msg).unwrap();
        assert_eq!(back, r);
        for i in 0..msg.len() {
            let mut bad = msg.clone();
            bad[i] ^= 0x40;
            assert!(WalRecord::decode_message(&bad).is_err(), "flip at {i}");
        }
        assert!(WalRecord::decode_message(&msg[..msg.len() - 1]).is_err());
        assert!(WalRecord::decode_message(b"").is_err());
    }

    proptest! {
        #[test]
        fn payload_roundtrips(
            ints in proptest::collection::vec(any::<i64>(), 0..10),
            text in ".{0,30}",
            first_seq in any::<u64>(),
            at in any::<i64>(),
        ) {
            let rows = ints.iter().map(|&i| Row {
                op: if i % 2 == 0 { Op::Upsert } else { Op::Delete },
                values: vec![Value::Int(i), Value::Str(text.clone()), Value::Null],
            }).collect();
            let mut r = record(rows);
            r.first_seq = first_seq;
            r.ingested_at_us = at;
            let mut buf = Vec::new();
            r.encode_payload(&mut buf);
            prop_assert_eq!(r.payload_len(), buf.len());
            prop_assert!(WalRecord::plausible_payload(&buf));
            prop_assert_eq!(WalRecord::decode_payload(&buf, false).unwrap(), r);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = WalRecord::decode_payload(&bytes, false);
            let _ = WalRecord::plausible_payload(&bytes);
        }
    }

    #[test]
    fn empty_record_is_minimal_and_holds_no_sequence() {
        let mut r = record(Vec::new());
        r.table = TableRef::new(TenantId::new("a").unwrap(), TableName::new("b").unwrap());
        let mut buf = Vec::new();
        r.encode_payload(&mut buf);
        assert_eq!(buf.len(), MIN_PAYLOAD_LEN);
        assert_eq!(r.last_seq(), 40);
    }

    #[test]
    fn last_seq_counts_rows() {
        let row = Row {
            op: Op::Upsert,
            values: vec![],
        };
        assert_eq!(record(vec![row.clone(); 3]).last_seq(), 43);
        assert_eq!(record(vec![row]).last_seq(), 41);
    }

    #[test]
    fn hostile_names_are_refused() {
        let mut buf = Vec::new();
        put_str("../x", &mut buf);
        put_str("t", &mut buf);
        buf.extend_from_slice(&[0u8; 24]);
        let err = WalRecord::decode_payload(&buf, false).unwrap_err();
        assert!(err.contains("tenant"), "{err}");
    }

    #[test]
    fn debug_is_short() {
        let big = Row {
            op: Op::Upsert,
            values: vec![Value::Str("x".repeat(10_000))],
        };
        let shown = format!("{:?}", record(vec![big; 100]));
        assert!(shown.len() < 200, "{shown}");
        assert!(shown.contains("rows: 100"), "{shown}");
    }
}
