//! The payloads alluvium publishes: commit events and rejected batches. Both are JSON; their
//! fields are a contract with subscribers, so fields are only ever added.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::subject::CommitKind;

/// One file in a commit event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFile {
    /// Object path from the store root.
    pub path: String,
    /// Partition (`all`, `2026-11-25`, ...).
    pub partition: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Rows in the file.
    pub rows: u64,
    /// Smallest and largest `_seq` in the file.
    pub min_seq: u64,
    /// See `min_seq`.
    pub max_seq: u64,
    /// Smallest value of the time column (its unit; days for dates), when the table has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_time: Option<i64>,
    /// Largest value of the time column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_time: Option<i64>,
    /// Schema version the rows were written with.
    pub schema_version: u32,
}

/// What one catalog commit changed in one table: new files of a flush, files a compaction
/// replaced, or a new schema version. Published on `{prefix}.events.{tenant}.{table}.{kind}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitEvent {
    /// `{catalog_version}:{index}`: unique, increasing, and the same every time the event is
    /// derived (resume points and `Nats-Msg-Id` use it).
    pub id: String,
    /// The lake the event belongs to (random, fixed when the lake was created): with `id`, it
    /// identifies the event across lakes that share a NATS account.
    pub lake_id: String,
    /// `flushed`, `compacted` or `schema`.
    pub kind: CommitKind,
    /// The tenant.
    pub tenant: String,
    /// The table.
    pub table: String,
    /// The catalog version that holds the change: read the table `as_of` it to see exactly it.
    pub catalog_version: u64,
    /// When the commit was made (RFC 3339).
    pub committed_at: String,
    /// The table's schema version after the commit.
    pub schema_version: u32,
    /// Files the commit added.
    pub files_added: Vec<EventFile>,
    /// Files the commit removed from the table (replaced by a compaction).
    pub files_removed: Vec<EventFile>,
    /// Rows in `files_added`.
    pub rows_added: u64,
    /// Rows in `files_removed`.
    pub rows_removed: u64,
    /// Every event of the table up to this sequence is in committed files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed_seq: Option<u64>,
    /// For `schema` events: the new definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<serde_json::Value>,
}

impl CommitEvent {
    /// The `Nats-Msg-Id` of the event: `{lake_id}:{id}`.
    pub fn msg_id(&self) -> String {
        format!("{}:{}", self.lake_id, self.id)
    }

    /// The id of the `index`-th event derived from commit `version`.
    pub fn make_id(version: u64, index: usize) -> String {
        format!("{version}:{index}")
    }

    /// Parses an id (or a bare catalog version, meaning after all of its events) into
    /// (version, index) for ordering.
    pub fn parse_id(id: &str) -> Option<(u64, usize)> {
        match id.trim().split_once(':') {
            Some((v, i)) => Some((v.parse().ok()?, i.parse().ok()?)),
            None => Some((id.trim().parse().ok()?, usize::MAX)),
        }
    }
}

/// A batch that failed validation, published on `{prefix}.rejects.{tenant}.{table}` with the
/// original payload, so it can be replayed once the schema is fixed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reject {
    /// The tenant (from the credential).
    pub tenant: String,
    /// The table the batch was sent to.
    pub table: String,
    /// The error's stable code (`type_mismatch`, `unknown_field`, ...).
    pub code: String,
    /// The HTTP status the error maps to.
    pub status: u16,
    /// The full reason.
    pub reason: String,
    /// When it was rejected (RFC 3339).
    pub rejected_at: String,
    /// Where it came from: `nats` or `http`.
    pub source: String,
    /// The producer's idempotency key, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// `json` or `ndjson`, as the batch was read.
    pub format: String,
    /// The payload as sent: text when it is UTF-8, else base64 (see `payload_encoding`).
    pub payload: String,
    /// `utf8`, `base64`, or `omitted` for a payload too large to keep (it cannot be
    /// replayed; `payload_bytes` says how large it was).
    pub payload_encoding: String,
    /// Size of the original payload in bytes.
    #[serde(default)]
    pub payload_bytes: usize,
}

impl Reject {
    /// Stores `payload` as text if it is UTF-8, else as base64.
    pub fn encode_payload(payload: &[u8]) -> (String, String) {
        match std::str::from_utf8(payload) {
            Ok(s) => (s.to_string(), "utf8".into()),
            Err(_) => (
                base64::engine::general_purpose::STANDARD.encode(payload),
                "base64".into(),
            ),
        }
    }

    /// The original payload's bytes.
    pub fn payload_bytes(&self) -> Result<Vec<u8>, String> {
        match self.payload_encoding.as_str() {
            "utf8" => Ok(self.payload.as_bytes().to_vec()),
            "base64" => base64::engine::general_purpose::STANDARD
                .decode(&self.payload)
                .map_err(|e| format!("payload is not valid base64: {e}")),
            "omitted" => Err(format!(
                "the payload ({} bytes) was too large to keep with the reject",
                self.payload_bytes
            )),
            other => Err(format!("unknown payload encoding {other:?}")),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_order_and_parse() {
        assert_eq!(CommitEvent::make_id(12, 1), "12:1");
        assert_eq!(CommitEvent::parse_id("12:1"), Some((12, 1)));
        assert_eq!(CommitEvent::parse_id("12"), Some((12, usize::MAX)));
        assert_eq!(CommitEvent::parse_id("x"), None);
        assert!(CommitEvent::parse_id("12:1") < CommitEvent::parse_id("13:0"));
    }

    #[test]
    fn reject_payloads_round_trip() {
        for payload in [&b"{\"a\":1}"[..], &[0xff, 0x00, 0x80][..]] {
            let (text, enc) = Reject::encode_payload(payload);
            let r = Reject {
                tenant: "t".into(),
                table: "x".into(),
                code: "c".into(),
                status: 400,
                reason: "r".into(),
                rejected_at: "now".into(),
                source: "nats".into(),
                idempotency_key: None,
                format: "json".into(),
                payload: text,
                payload_encoding: enc,
                payload_bytes: payload.len(),
            };
            let back: Reject = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
            assert_eq!(back.payload_bytes().unwrap(), payload);
        }
    }
}
