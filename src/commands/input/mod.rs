//! Reading rows for `alluvium send`: NDJSON, a JSON array or CSV, streamed, each row turned
//! into one line of JSON, with the position after it so that a send can resume there.
//!
//! - NDJSON: one object per line, blank lines skipped, lines passed on as they are.
//! - JSON array: `[{...}, {...}]`, read element by element without holding the array (line
//!   breaks inside an element, which JSON allows only as whitespace, become spaces).
//! - CSV: a header row naming the columns, then one row per record. Cells are converted to
//!   the table's field types (`int64` cells must be integers, `list<T>` cells JSON arrays,
//!   `timestamp_*` cells integers or RFC 3339 text, ...); columns the table does not have,
//!   or every column when the table's schema cannot be read, are typed by their look
//!   (`true`/`false`, integers, decimals, else text). An empty cell is null.

mod csv_rows;
mod json_rows;
#[cfg(test)]
mod tests;

use std::path::Path;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

pub use csv_rows::CsvReader;
pub use json_rows::{JsonArrayReader, NdjsonReader};

/// The input format asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// By the file's extension (.ndjson, .jsonl, .json, .csv, .tsv), else by its first byte.
    Auto,
    /// One JSON object per line.
    Ndjson,
    /// One JSON array of objects.
    Json,
    /// A header row, then records.
    Csv,
}

/// The format a file was found to have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    /// One JSON object per line.
    Ndjson,
    /// A JSON array.
    JsonArray,
    /// CSV with this delimiter.
    Csv(u8),
}

impl Resolved {
    /// A name for reports and file identities.
    pub fn name(self) -> String {
        match self {
            Resolved::Ndjson => "ndjson".into(),
            Resolved::JsonArray => "json".into(),
            Resolved::Csv(b',') => "csv".into(),
            Resolved::Csv(d) => format!("csv (delimiter {:?})", char::from(d)),
        }
    }
}

/// Decides the format from the request, the file name and the first bytes of the data.
pub fn resolve(
    format: Format,
    path: Option<&Path>,
    head: &[u8],
    delimiter: Option<u8>,
) -> Resolved {
    let ext = path
        .and_then(|p| p.extension())
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let csv = |default: u8| Resolved::Csv(delimiter.unwrap_or(default));
    let sniff = || match head.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => Resolved::JsonArray,
        Some(b'{') => Resolved::Ndjson,
        _ => csv(b','),
    };
    match format {
        Format::Ndjson => Resolved::Ndjson,
        Format::Json => Resolved::JsonArray,
        Format::Csv => csv(if ext.as_deref() == Some("tsv") {
            b'\t'
        } else {
            b','
        }),
        Format::Auto => match ext.as_deref() {
            Some("ndjson" | "jsonl") => Resolved::Ndjson,
            Some("csv") => csv(b','),
            Some("tsv") => csv(b'\t'),
            _ => sniff(),
        },
    }
}

/// Where a reader is: the start of the next row. Saved in checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Position {
    /// Byte offset in the input.
    pub byte: u64,
    /// Line breaks before it.
    pub line: u64,
    /// Records before it (CSV: the header counts as one).
    pub record: u64,
}

/// A source of rows.
pub trait RowReader {
    /// Appends the next row, as one line of JSON without its line break, to `out`; returns
    /// the input line it starts on (1-based), or `None` at the end.
    fn next_row(&mut self, out: &mut Vec<u8>) -> anyhow::Result<Option<u64>>;

    /// The position after the last row returned.
    fn position(&self) -> Position;
}
