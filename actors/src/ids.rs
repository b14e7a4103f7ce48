//! Validated identifiers: tenants, tables and sequences.
//!
//! Names become object-store paths and NATS subject tokens, so they are validated once, in the
//! constructor, and the types carry the proof from then on.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} name {shown:?}: {reason}")]
pub struct NameError {
    /// `tenant` or `table`.
    pub kind: &'static str,
    /// The offending name, truncated to 80 characters for display.
    pub shown: String,
    /// What rule it broke.
    pub reason: &'static str,
}

fn validate(kind: &'static str, name: &str, max: usize) -> Result<(), NameError> {
    let err = |reason| NameError {
        kind,
        shown: name.chars().take(80).collect(),
        reason,
    };
    if name.is_empty() {
        return Err(err("must not be empty"));
    }
    if name.len() > max {
        return Err(err(if max == 64 {
            "must be at most 64 characters"
        } else {
            "must be at most 128 characters"
        }));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(err("only a-z, 0-9, '_' and '-' are allowed"));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $kind:literal, $max:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(String);

        impl $ty {
            /// Validates `name` and wraps it.
            pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
                let name = name.into();
                validate($kind, &name, $max)?;
                Ok(Self(name))
            }

            /// The validated name.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// A tenant name: `[a-z0-9_-]{1,64}`. Comes from the credential, never from the payload.
    TenantId,
    "tenant",
    64
);
name_type!(
    /// A table name within a tenant: `[a-z0-9_-]{1,128}`.
    TableName,
    "table",
    128
);

/// A table of a tenant: the unit of schemas, sequences, memtables and files.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TableRef {
    /// Owner of the table.
    pub tenant: TenantId,
    /// Name of the table within the tenant.
    pub table: TableName,
}

impl TableRef {
    /// Pairs a tenant and a table name.
    pub fn new(tenant: TenantId, table: TableName) -> Self {
        Self { tenant, table }
    }

    /// The object-store prefix of the table: `tables/{tenant}/{table}`.
    pub fn path_prefix(&self) -> String {
        format!("tables/{}/{}", self.tenant, self.table)
    }
}

impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.table)
    }
}

/// A per-table event sequence number: the event's MVCC version. Sequences start at 1.
pub type Seq = u64;

/// Bits of a cluster-mode sequence that hold the event's index within its batch: in cluster
/// mode an event's sequence is `stream_seq << STREAM_SEQ_SHIFT | index`, where `stream_seq` is
/// the `ALLUVIUM_INGEST` stream sequence of the message that carried its batch. Sequences stay
/// unique and ordered like the stream, and a batch holds at most `1 << STREAM_SEQ_SHIFT`
/// events (the default `max_batch_rows`, one million, fits).
pub const STREAM_SEQ_SHIFT: u32 = 20;

/// The most events one batch may hold in cluster mode.
pub const MAX_CLUSTER_BATCH_ROWS: usize = 1 << STREAM_SEQ_SHIFT;

/// The sequence of the `index`-th event of the batch carried by stream message `stream_seq`.
pub fn cluster_seq(stream_seq: u64, index: u64) -> Seq {
    (stream_seq << STREAM_SEQ_SHIFT) | (index & (MAX_CLUSTER_BATCH_ROWS as u64 - 1))
}

/// The stream sequence of the message that carried the event with cluster sequence `seq`.
pub fn stream_seq_of(seq: Seq) -> u64 {
    seq >> STREAM_SEQ_SHIFT
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        assert!(TableName::new("events_2026-v1").is_ok());
        assert!(TenantId::new("a").is_ok());
        assert!(TenantId::new("x".repeat(64)).is_ok());
        assert!(TableName::new("x".repeat(128)).is_ok());
    }

    #[test]
    fn rejects_hostile_names() {
        for bad in [
            "", "..", "a/b", "A", "a b", "a.b", "*", ">", "é", "a\0", "../etc", "a\\b", "%2e",
        ] {
            assert!(TableName::new(bad).is_err(), "{bad:?} accepted");
            assert!(TenantId::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(TenantId::new("x".repeat(65)).is_err());
        assert!(TableName::new("x".repeat(129)).is_err());
    }

    #[test]
    fn cluster_sequences_order_like_the_stream() {
        assert_eq!(stream_seq_of(cluster_seq(7, 0)), 7);
        assert_eq!(
            stream_seq_of(cluster_seq(7, MAX_CLUSTER_BATCH_ROWS as u64 - 1)),
            7
        );
        assert!(cluster_seq(7, MAX_CLUSTER_BATCH_ROWS as u64 - 1) < cluster_seq(8, 0));
        assert!(cluster_seq(1, 0) > 0, "sequences start above 0");
    }

    #[test]
    fn deserializing_validates() {
        let r: Result<TableName, _> = serde_json::from_str("\"../x\"");
        assert!(r.is_err());
    }
}
