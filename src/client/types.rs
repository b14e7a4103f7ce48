//! Requests and answers of the HTTP API, field for field as the server writes and reads them.
//!
//! Answers are read leniently (unknown fields are ignored, so a newer server does not break an
//! older client); requests are written with only the fields that are set, so the server's
//! defaults apply to the rest.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// One row: a JSON object, columns in the table's order.
pub type Row = serde_json::Map<String, Value>;

/// Unit of a timestamp field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeUnit {
    /// `timestamp_s`
    Second,
    /// `timestamp_ms`
    Millisecond,
    /// `timestamp_us`
    Microsecond,
    /// `timestamp_ns`
    Nanosecond,
}

/// The type of a field, written as a string in JSON (`int64`, `list<string>`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FieldType {
    /// `bool`
    Bool,
    /// `int32`
    Int32,
    /// `int64`
    Int64,
    /// `uint64`
    UInt64,
    /// `float32`
    Float32,
    /// `float64`
    Float64,
    /// `string`
    String,
    /// `binary` (base64 in JSON)
    Binary,
    /// `timestamp_s|ms|us|ns` (RFC 3339 strings or integers in the unit)
    Timestamp(TimeUnit),
    /// `date` (`YYYY-MM-DD` or days since the epoch)
    Date,
    /// `list<T>`
    List(Box<FieldType>),
    /// A type this client does not know (from a newer server), kept as written.
    Other(String),
}

impl FromStr for FieldType {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Ok(match s {
            "bool" | "boolean" => FieldType::Bool,
            "int32" => FieldType::Int32,
            "int64" => FieldType::Int64,
            "uint64" => FieldType::UInt64,
            "float32" => FieldType::Float32,
            "float64" => FieldType::Float64,
            "string" | "utf8" => FieldType::String,
            "binary" => FieldType::Binary,
            "timestamp_s" => FieldType::Timestamp(TimeUnit::Second),
            "timestamp_ms" => FieldType::Timestamp(TimeUnit::Millisecond),
            "timestamp_us" => FieldType::Timestamp(TimeUnit::Microsecond),
            "timestamp_ns" => FieldType::Timestamp(TimeUnit::Nanosecond),
            "date" => FieldType::Date,
            other => match other
                .strip_prefix("list<")
                .and_then(|r| r.strip_suffix('>'))
            {
                Some(inner) => FieldType::List(Box::new(inner.parse()?)),
                None => FieldType::Other(other.to_string()),
            },
        })
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldType::Bool => f.write_str("bool"),
            FieldType::Int32 => f.write_str("int32"),
            FieldType::Int64 => f.write_str("int64"),
            FieldType::UInt64 => f.write_str("uint64"),
            FieldType::Float32 => f.write_str("float32"),
            FieldType::Float64 => f.write_str("float64"),
            FieldType::String => f.write_str("string"),
            FieldType::Binary => f.write_str("binary"),
            FieldType::Timestamp(TimeUnit::Second) => f.write_str("timestamp_s"),
            FieldType::Timestamp(TimeUnit::Millisecond) => f.write_str("timestamp_ms"),
            FieldType::Timestamp(TimeUnit::Microsecond) => f.write_str("timestamp_us"),
            FieldType::Timestamp(TimeUnit::Nanosecond) => f.write_str("timestamp_ns"),
            FieldType::Date => f.write_str("date"),
            FieldType::List(inner) => write!(f, "list<{inner}>"),
            FieldType::Other(s) => f.write_str(s),
        }
    }
}

impl Serialize for FieldType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FieldType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let Ok(t) = s.parse();
        Ok(t)
    }
}

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    /// The column's name.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub ty: FieldType,
    /// Whether it may be null or absent (the server's default: true).
    #[serde(default = "yes")]
    pub nullable: bool,
}

fn yes() -> bool {
    true
}

/// How files are partitioned by the time column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionBy {
    /// One partition.
    #[default]
    None,
    /// By hour.
    Hour,
    /// By day.
    Day,
    /// By month.
    Month,
}

/// How a table's schema may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Evolution {
    /// New nullable fields and lossless widening become new versions.
    #[default]
    Additive,
    /// Every change is refused.
    Strict,
    /// The schema follows the data.
    Infer,
}

/// A table definition, as `PUT /v1/tables/{table}` takes it.
///
/// ```
/// use alluvium::client::{FieldType, PartitionBy, Schema, TimeUnit};
/// let schema = Schema::new()
///     .required("id", FieldType::Int64)
///     .required("ts", FieldType::Timestamp(TimeUnit::Millisecond))
///     .field("user", FieldType::String)
///     .time_column("ts")
///     .partition_by(PartitionBy::Day);
/// assert_eq!(schema.fields.len(), 3);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Schema {
    /// Columns in order.
    pub fields: Vec<Field>,
    /// Primary key columns (an upsert table); empty for an append table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub primary_key: Vec<String>,
    /// The time column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_column: Option<String>,
    /// Partitioning by the time column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_by: Option<PartitionBy>,
    /// Columns with a secondary index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub indexes: Vec<String>,
    /// Evolution mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evolution: Option<Evolution>,
}

impl Schema {
    /// An empty definition.
    pub fn new() -> Schema {
        Schema::default()
    }

    /// Adds a nullable column.
    pub fn field(mut self, name: impl Into<String>, ty: FieldType) -> Schema {
        self.fields.push(Field {
            name: name.into(),
            ty,
            nullable: true,
        });
        self
    }

    /// Adds a non-nullable column.
    pub fn required(mut self, name: impl Into<String>, ty: FieldType) -> Schema {
        self.fields.push(Field {
            name: name.into(),
            ty,
            nullable: false,
        });
        self
    }

    /// Sets the primary key (its columns must be required).
    pub fn primary_key<I, S>(mut self, columns: I) -> Schema
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.primary_key = columns.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the time column.
    pub fn time_column(mut self, column: impl Into<String>) -> Schema {
        self.time_column = Some(column.into());
        self
    }

    /// Sets the partitioning.
    pub fn partition_by(mut self, by: PartitionBy) -> Schema {
        self.partition_by = Some(by);
        self
    }

    /// Adds a secondary index.
    pub fn index(mut self, column: impl Into<String>) -> Schema {
        self.indexes.push(column.into());
        self
    }

    /// Sets the evolution mode.
    pub fn evolution(mut self, mode: Evolution) -> Schema {
        self.evolution = Some(mode);
        self
    }

    /// The field named `name`.
    pub fn get(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// A table as `GET /v1/tables/{table}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableInfo {
    /// The table's name.
    pub table: String,
    /// Its tenant.
    pub tenant: String,
    /// The current schema version (1 for a new table).
    pub schema_version: u32,
    /// The current definition.
    #[serde(flatten)]
    pub schema: Schema,
}

/// The answer to `PUT /v1/tables/{table}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedTable {
    /// The table after the request.
    #[serde(flatten)]
    pub info: TableInfo,
    /// What a new schema version changed, in words (empty when nothing changed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
    /// Whether the table was created (201) rather than found or evolved (200).
    #[serde(skip)]
    pub created: bool,
}

#[derive(Deserialize)]
pub(crate) struct TableList {
    pub(crate) tables: Vec<TableInfo>,
}

/// The answer to an accepted batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestAck {
    /// Events accepted.
    pub accepted: u64,
    /// Sequence of the first.
    pub first_seq: u64,
    /// Sequence of the last.
    pub last_seq: u64,
    /// `wal`, `received` or `replicated`.
    pub durability: String,
    /// `true` when the batch's idempotency key had been stored already: nothing was stored
    /// again and the sequences are the first batch's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// An acknowledged batch, with what it cost to get there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchAck {
    /// The server's answer.
    pub ack: IngestAck,
    /// Rows in the batch.
    pub rows: u64,
    /// Bytes of the NDJSON body.
    pub body_bytes: u64,
    /// Bytes sent per attempt (the gzipped body when compression is on).
    pub wire_bytes: u64,
    /// Attempts after the first (429, 503 or a broken connection).
    pub retries: u32,
}

/// What [`Client::send`](super::Client::send) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendReport {
    /// Rows acknowledged (duplicates included).
    pub rows: u64,
    /// Batches acknowledged.
    pub batches: u64,
    /// Batches answered as duplicates (stored by an earlier attempt or run).
    pub duplicate_batches: u64,
    /// Rows of those batches.
    pub duplicate_rows: u64,
    /// Bytes of the NDJSON bodies.
    pub bytes: u64,
    /// Bytes on the wire (compressed), counted once per batch.
    pub wire_bytes: u64,
    /// Retries over all batches.
    pub retries: u64,
    /// Sequence of the first row stored (of the first batch).
    pub first_seq: Option<u64>,
    /// Sequence of the last row stored (of the last batch).
    pub last_seq: Option<u64>,
    /// Wall time.
    pub elapsed: Duration,
}

impl SendReport {
    /// Counts one acknowledged batch.
    pub fn add(&mut self, b: &BatchAck) {
        self.rows += b.rows;
        self.batches += 1;
        if b.ack.duplicate {
            self.duplicate_batches += 1;
            self.duplicate_rows += b.rows;
        }
        self.bytes += b.body_bytes;
        self.wire_bytes += b.wire_bytes;
        self.retries += u64::from(b.retries);
        self.first_seq.get_or_insert(b.ack.first_seq);
        self.last_seq = Some(b.ack.last_seq);
    }
}

/// The answer to `POST /v1/tables/{table}/flush`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flushed {
    /// Whether anything was flushed.
    pub flushed: bool,
    /// The catalog version of the commit, when something was.
    pub catalog_version: Option<u64>,
}

/// What a commit event announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommitKind {
    /// A flush added files.
    Flushed,
    /// A compaction replaced files.
    Compacted,
    /// A table was created or its schema changed.
    Schema,
    /// A kind this client does not know (from a newer server).
    #[serde(other)]
    Unknown,
}

impl CommitKind {
    /// The name in events and filters.
    pub fn as_str(self) -> &'static str {
        match self {
            CommitKind::Flushed => "flushed",
            CommitKind::Compacted => "compacted",
            CommitKind::Schema => "schema",
            CommitKind::Unknown => "unknown",
        }
    }
}

impl fmt::Display for CommitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CommitKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "flushed" => Ok(CommitKind::Flushed),
            "compacted" => Ok(CommitKind::Compacted),
            "schema" => Ok(CommitKind::Schema),
            other => Err(format!(
                "unknown event kind {other:?}: use flushed, compacted or schema"
            )),
        }
    }
}

/// One file of a commit event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFile {
    /// Object path from the store root.
    pub path: String,
    /// Partition (`all`, `2026-11-25`, ...).
    pub partition: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Rows.
    pub rows: u64,
    /// Smallest `_seq`.
    pub min_seq: u64,
    /// Largest `_seq`.
    pub max_seq: u64,
    /// Smallest time value (in the column's unit; days for dates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_time: Option<i64>,
    /// Largest time value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_time: Option<i64>,
    /// Schema version the rows were written with.
    pub schema_version: u32,
}

/// A catalog commit of one table, as `GET /v1/events` streams it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitEvent {
    /// `{catalog_version}:{index}`: resume after it with
    /// [`EventFilter::after`](super::EventFilter::after).
    pub id: String,
    /// The lake's id.
    pub lake_id: String,
    /// `flushed`, `compacted` or `schema`.
    pub kind: CommitKind,
    /// The tenant.
    pub tenant: String,
    /// The table.
    pub table: String,
    /// The catalog version that holds the change.
    pub catalog_version: u64,
    /// When it was committed (RFC 3339).
    pub committed_at: String,
    /// The table's schema version after it.
    pub schema_version: u32,
    /// Files added.
    pub files_added: Vec<EventFile>,
    /// Files removed.
    pub files_removed: Vec<EventFile>,
    /// Rows in `files_added`.
    pub rows_added: u64,
    /// Rows in `files_removed`.
    pub rows_removed: u64,
    /// Every event up to this sequence is in committed files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed_seq: Option<u64>,
    /// For `schema` events: the new definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
}

/// An RFC 9457 problem document, the body of every error answer.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Problem {
    #[serde(default)]
    pub(crate) status: u16,
    #[serde(default)]
    pub(crate) code: String,
    #[serde(default)]
    pub(crate) detail: String,
    #[serde(default)]
    pub(crate) title: String,
}
