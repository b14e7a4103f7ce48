//! Errors of the schema component: bad event batches, bad table definitions, unknown tables and
//! rows that do not fit their schema on the way to Arrow.
//!
//! Every variant has a stable machine-readable [`SchemaError::code`], which the HTTP layer puts
//! in the problem+json body and NATS replies carry, and a human message that points at the exact
//! event (`row 3 (line 4)`), the field and what was found.

use std::fmt;

/// Where in a batch an event sits: its 0-based index and, for NDJSON bodies, its 1-based line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// 0-based index of the event in the batch.
    pub row: usize,
    /// 1-based line of the event in an NDJSON body; `None` for JSON bodies.
    pub line: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "row {} (line {line})", self.row),
            None => write!(f, "row {}", self.row),
        }
    }
}

/// What a JSON value was: its kind (`string`, `number`, ...) and a short excerpt of its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// `null`, `bool`, `number`, `string`, `array` or `object`.
    pub kind: &'static str,
    /// The value as JSON text, cut to at most [`Found::MAX_EXCERPT`] characters.
    pub excerpt: String,
}

impl Found {
    /// Longest excerpt kept, in characters.
    pub const MAX_EXCERPT: usize = 40;

    /// Describes `v`, serializing at most a few dozen bytes of it so that a huge value costs
    /// nothing more than a small one on the error path.
    pub fn of(v: &serde_json::Value) -> Self {
        use serde_json::Value as J;
        let kind = match v {
            J::Null => "null",
            J::Bool(_) => "bool",
            J::Number(_) => "number",
            J::String(_) => "string",
            J::Array(_) => "array",
            J::Object(_) => "object",
        };
        let mut w = Bounded(Vec::with_capacity(64));
        // The writer refuses bytes past its bound, which ends serialization early on purpose.
        let _ = serde_json::to_writer(&mut w, v);
        let bytes = &w.0;
        let text = match std::str::from_utf8(bytes) {
            Ok(s) => s,
            // The bound may cut a multi-byte character: keep the valid prefix.
            Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default(),
        };
        let truncated = bytes.len() >= Bounded::LIMIT || text.chars().count() > Self::MAX_EXCERPT;
        let excerpt = if truncated {
            let mut s: String = text.chars().take(Self::MAX_EXCERPT - 1).collect();
            s.push('…');
            s
        } else {
            text.to_owned()
        };
        Found { kind, excerpt }
    }
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind == "null" {
            f.write_str("null")
        } else {
            write!(f, "{} {}", self.kind, self.excerpt)
        }
    }
}

/// A writer that accepts a fixed number of bytes, then fails.
struct Bounded(Vec<u8>);

impl Bounded {
    const LIMIT: usize = 4 * Found::MAX_EXCERPT;
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = Self::LIMIT.saturating_sub(self.0.len());
        if room == 0 {
            return Err(std::io::Error::other("excerpt full"));
        }
        let n = room.min(buf.len());
        self.0.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A value refused for its field: where it was, what was expected, what was found and why.
/// Boxed in [`SchemaError`] so that results on the hot path stay small.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadValue {
    /// The event.
    pub at: Location,
    /// The field, with `[i]` for a list element.
    pub field: String,
    /// The expected type.
    pub expected: String,
    /// What was found.
    pub found: Found,
    /// Why it was refused, beyond the kind of error (e.g. the base64 decoder's complaint).
    pub reason: Option<String>,
}

impl fmt::Display for BadValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, field {:?}: expected {}, found {}",
            self.at, self.field, self.expected, self.found
        )?;
        match &self.reason {
            Some(r) => write!(f, ": {r}"),
            None => Ok(()),
        }
    }
}

/// Shortens a user-supplied name for messages.
pub(crate) fn shown_name(name: &str) -> String {
    if name.chars().count() <= 80 {
        name.to_owned()
    } else {
        let mut s: String = name.chars().take(79).collect();
        s.push('…');
        s
    }
}

/// Everything that can go wrong in the schema component.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SchemaError {
    /// The body is not JSON (or NDJSON line is not).
    #[error("malformed JSON at line {line} column {column}: {message}")]
    MalformedJson {
        /// 1-based line in the body.
        line: usize,
        /// 1-based column in that line.
        column: usize,
        /// serde_json's description.
        message: String,
    },
    /// An event is not a JSON object.
    #[error("{at}: expected a JSON object, found {found}")]
    NotAnObject {
        /// The event.
        at: Location,
        /// What it was.
        found: Found,
    },
    /// The body holds no event.
    #[error("the batch holds no events")]
    EmptyBatch,
    /// The body holds more events than allowed.
    #[error("the batch holds more than {max} events")]
    TooManyRows {
        /// The limit.
        max: usize,
    },
    /// An event is nested deeper than allowed.
    #[error("{at}: JSON nested deeper than {max} levels")]
    TooDeep {
        /// The event.
        at: Location,
        /// The limit.
        max: usize,
    },
    /// An event has a field the schema does not define.
    #[error("{at}, field {field:?}: unknown field, not in the table schema")]
    UnknownField {
        /// The event.
        at: Location,
        /// The field name (cut to 80 characters).
        field: String,
    },
    /// An event lacks a non-nullable field.
    #[error("{at}, field {field:?}: missing, expected {expected} (not nullable)")]
    MissingField {
        /// The event.
        at: Location,
        /// The field.
        field: String,
        /// Its type.
        expected: String,
    },
    /// An event has null in a non-nullable field.
    #[error("{at}, field {field:?}: expected {expected} (not nullable), found null")]
    NullNotAllowed {
        /// The event.
        at: Location,
        /// The field.
        field: String,
        /// Its type.
        expected: String,
    },
    /// A value has the wrong JSON kind for its field (a string for an int, 1.5 for an int, ...).
    #[error("{0}")]
    TypeMismatch(Box<BadValue>),
    /// A number does not fit its field's type.
    #[error("{0}")]
    ValueOutOfRange(Box<BadValue>),
    /// A timestamp that does not parse, overflows its unit or has digits its unit cannot hold.
    #[error("{0}")]
    InvalidTimestamp(Box<BadValue>),
    /// A date that does not parse or is out of range.
    #[error("{0}")]
    InvalidDate(Box<BadValue>),
    /// A binary value that is not base64.
    #[error("{0}")]
    InvalidBase64(Box<BadValue>),
    /// A table definition that does not validate.
    #[error("invalid table definition: {0}")]
    InvalidDefinition(String),
    /// A table that does not exist.
    #[error("table {table:?} does not exist")]
    UnknownTable {
        /// The table name.
        table: String,
    },
    /// A table that already exists.
    #[error("table {table:?} already exists")]
    TableExists {
        /// The table name.
        table: String,
    },
    /// The reserved `_op` field is not `"upsert"` or `"delete"`, or asks for a delete in a
    /// table without a primary key.
    #[error("{at}, field \"_op\": {reason}")]
    InvalidOp {
        /// Where.
        at: Location,
        /// What is wrong.
        reason: String,
    },
    /// A row whose values do not fit the schema it is converted with (a bug upstream, since
    /// rows are built by the translator).
    #[error("row {row} does not fit the table schema: {reason}")]
    InvalidRow {
        /// Index of the row in the slice given.
        row: usize,
        /// What did not fit.
        reason: String,
    },
    /// A column whose Arrow type has no JSON rendering.
    #[error("column {column:?} has Arrow type {data_type}, which has no JSON rendering")]
    UnsupportedColumn {
        /// The column name.
        column: String,
        /// Its Arrow type.
        data_type: String,
    },
    /// Arrow refused to build a batch.
    #[error("arrow error: {0}")]
    Arrow(String),
    /// A type cannot be inferred for a field of an event (tables in `infer` mode).
    #[error("{at}, field {field:?}: cannot infer a type: {reason}")]
    CannotInfer {
        /// The event.
        at: Location,
        /// The field.
        field: String,
        /// Why.
        reason: String,
    },
    /// A new definition of an existing table is not an allowed evolution of its schema.
    #[error("table {table:?} cannot change this way: {reason}")]
    SchemaChange {
        /// The table.
        table: String,
        /// The precise reason.
        reason: String,
    },
    /// The tenant already has as many tables as it may.
    #[error(
        "tenant {tenant:?} already has {limit} tables, the most allowed (ingest.max_tables_per_tenant)"
    )]
    TooManyTables {
        /// The tenant.
        tenant: String,
        /// The limit.
        limit: usize,
    },
    /// The catalog could not record a table change (503).
    #[error("cannot record the table in the catalog: {0}")]
    Catalog(String),
}

impl SchemaError {
    /// The stable code of the error, for problem+json bodies and NATS error replies.
    pub fn code(&self) -> &'static str {
        match self {
            SchemaError::MalformedJson { .. } => "malformed_json",
            SchemaError::NotAnObject { .. } => "not_an_object",
            SchemaError::EmptyBatch => "empty_batch",
            SchemaError::TooManyRows { .. } => "too_many_rows",
            SchemaError::TooDeep { .. } => "too_deep",
            SchemaError::UnknownField { .. } => "unknown_field",
            SchemaError::MissingField { .. } => "missing_field",
            SchemaError::NullNotAllowed { .. } => "null_not_allowed",
            SchemaError::TypeMismatch(_) => "type_mismatch",
            SchemaError::ValueOutOfRange(_) => "value_out_of_range",
            SchemaError::InvalidTimestamp(_) => "invalid_timestamp",
            SchemaError::InvalidDate(_) => "invalid_date",
            SchemaError::InvalidBase64(_) => "invalid_base64",
            SchemaError::InvalidDefinition(_) => "invalid_schema",
            SchemaError::UnknownTable { .. } => "table_not_found",
            SchemaError::TableExists { .. } => "table_exists",
            SchemaError::InvalidOp { .. } => "invalid_op",
            SchemaError::InvalidRow { .. } => "invalid_row",
            SchemaError::UnsupportedColumn { .. } => "unsupported_column",
            SchemaError::Arrow(_) => "arrow_error",
            SchemaError::CannotInfer { .. } => "cannot_infer",
            SchemaError::SchemaChange { .. } => "schema_change_refused",
            SchemaError::TooManyTables { .. } => "table_limit_reached",
            SchemaError::Catalog(_) => "catalog_unavailable",
        }
    }

    /// Whether the error is the client's fault (a bad batch or definition) rather than a bug or
    /// an internal failure.
    pub fn is_client_error(&self) -> bool {
        !matches!(
            self,
            SchemaError::InvalidRow { .. }
                | SchemaError::UnsupportedColumn { .. }
                | SchemaError::Arrow(_)
                | SchemaError::Catalog(_)
        )
    }
}

impl From<arrow::error::ArrowError> for SchemaError {
    fn from(e: arrow::error::ArrowError) -> Self {
        SchemaError::Arrow(e.to_string())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn excerpts_are_short_and_valid_utf8() {
        let f = Found::of(&json!("é".repeat(1000)));
        assert_eq!(f.kind, "string");
        assert_eq!(f.excerpt.chars().count(), Found::MAX_EXCERPT);
        assert!(f.excerpt.ends_with('…'));
        let f = Found::of(&json!([1, 2, 3]));
        assert_eq!(f.to_string(), "array [1,2,3]");
        assert_eq!(Found::of(&json!(null)).to_string(), "null");
        let f = Found::of(&json!("x".repeat(40)));
        assert_eq!(f.excerpt.chars().count(), 40);
        assert!(f.excerpt.ends_with('…'), "42 chars with quotes must be cut");
    }

    #[test]
    fn codes_are_stable() {
        assert_eq!(SchemaError::EmptyBatch.code(), "empty_batch");
        assert_eq!(
            SchemaError::InvalidDefinition("x".into()).code(),
            "invalid_schema"
        );
        assert_eq!(
            SchemaError::UnknownTable { table: "t".into() }.code(),
            "table_not_found"
        );
        assert_eq!(
            SchemaError::TableExists { table: "t".into() }.to_string(),
            "table \"t\" already exists"
        );
    }
}
