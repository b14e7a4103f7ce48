//! CSV rows, typed by the table's schema.

use std::io::{Read, Seek};

use anyhow::{Context as _, anyhow, bail};
use serde_json::Value;

use super::{Position, RowReader};
use crate::client::{FieldType, Schema};

/// How a CSV column's cells become JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Conv {
    Bool,
    Int {
        min: i64,
        max: i64,
        ty: &'static str,
    },
    UInt,
    Float,
    Text,
    Time,
    Date,
    List,
    Infer,
}

impl Conv {
    fn of(ty: &FieldType) -> Conv {
        match ty {
            FieldType::Bool => Conv::Bool,
            FieldType::Int32 => Conv::Int {
                min: i64::from(i32::MIN),
                max: i64::from(i32::MAX),
                ty: "int32",
            },
            FieldType::Int64 => Conv::Int {
                min: i64::MIN,
                max: i64::MAX,
                ty: "int64",
            },
            FieldType::UInt64 => Conv::UInt,
            FieldType::Float32 | FieldType::Float64 => Conv::Float,
            FieldType::String | FieldType::Binary => Conv::Text,
            FieldType::Timestamp(_) => Conv::Time,
            FieldType::Date => Conv::Date,
            FieldType::List(_) => Conv::List,
            FieldType::Other(_) => Conv::Infer,
        }
    }
}

#[derive(Debug)]
struct Column {
    name: String,
    /// `"name":`
    key: Vec<u8>,
    conv: Conv,
}

/// CSV with a header row; each record becomes an object of the header's columns.
#[derive(Debug)]
pub struct CsvReader<R> {
    reader: csv::Reader<R>,
    columns: Vec<Column>,
    record: csv::StringRecord,
}

impl<R: Read> CsvReader<R> {
    /// Reads the header of `reader`; cells are typed by `schema` where it has the column.
    pub fn new(mut reader: csv::Reader<R>, schema: Option<&Schema>) -> anyhow::Result<Self> {
        let headers = reader
            .headers()
            .context("reading the CSV header row")?
            .clone();
        let mut columns: Vec<Column> = Vec::with_capacity(headers.len());
        for (i, h) in headers.iter().enumerate() {
            let name = h.trim().to_string();
            if name.is_empty() {
                bail!("CSV header: column {} has no name", i + 1);
            }
            if columns.iter().any(|c| c.name == name) {
                bail!("CSV header: column {name:?} appears twice");
            }
            let conv = schema
                .and_then(|s| s.get(&name))
                .map_or(Conv::Infer, |f| Conv::of(&f.ty));
            let mut key = serde_json::to_vec(&name)?;
            key.push(b':');
            columns.push(Column { name, key, conv });
        }
        if columns.is_empty() {
            bail!("the CSV input has no header row");
        }
        Ok(CsvReader {
            reader,
            columns,
            record: csv::StringRecord::new(),
        })
    }

    /// The column names of the header.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.columns.iter().map(|c| c.name.as_str())
    }
}

impl<R: Read + Seek> CsvReader<R> {
    /// Moves to `pos`, a position an earlier reader of the same input returned.
    pub fn seek(&mut self, pos: Position) -> anyhow::Result<()> {
        let mut p = csv::Position::new();
        // csv counts lines from 1.
        p.set_byte(pos.byte)
            .set_line(pos.line + 1)
            .set_record(pos.record);
        self.reader
            .seek(p)
            .context("seeking the CSV input to the checkpoint")
    }
}

impl<R: Read> RowReader for CsvReader<R> {
    fn next_row(&mut self, out: &mut Vec<u8>) -> anyhow::Result<Option<u64>> {
        if !self.reader.read_record(&mut self.record)? {
            return Ok(None);
        }
        let line = self.record.position().map_or(0, |p| p.line());
        out.push(b'{');
        for (i, (col, cell)) in self.columns.iter().zip(self.record.iter()).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&col.key);
            convert(&col.conv, cell, out)
                .map_err(|why| anyhow!("line {line}, column {} ({:?}): {why}", i + 1, col.name))?;
        }
        out.push(b'}');
        Ok(Some(line))
    }

    fn position(&self) -> Position {
        let p = self.reader.position();
        Position {
            byte: p.byte(),
            line: p.line().saturating_sub(1),
            record: p.record(),
        }
    }
}

/// Writes `cell` as the JSON value of a column converted by `conv`.
fn convert(conv: &Conv, cell: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let t = cell.trim();
    // Text keeps its spaces; only an empty cell is null.
    let empty = if *conv == Conv::Text {
        cell.is_empty()
    } else {
        t.is_empty()
    };
    if empty {
        out.extend_from_slice(b"null");
        return Ok(());
    }
    let json = |out: &mut Vec<u8>, v: &dyn erased::Json| v.write(out);
    match conv {
        Conv::Text => json(out, &cell),
        Conv::Bool => match t.to_ascii_lowercase().as_str() {
            "true" | "t" | "yes" | "y" | "1" => out.extend_from_slice(b"true"),
            "false" | "f" | "no" | "n" | "0" => out.extend_from_slice(b"false"),
            _ => return Err(format!("{cell:?} is not a bool (true or false)")),
        },
        Conv::Int { min, max, ty } => match t.parse::<i64>() {
            Ok(n) if n >= *min && n <= *max => out.extend_from_slice(n.to_string().as_bytes()),
            Ok(_) => return Err(format!("{cell:?} is out of the range of {ty}")),
            Err(_) => return Err(format!("{cell:?} is not an integer ({ty})")),
        },
        Conv::UInt => match t.parse::<u64>() {
            Ok(n) => out.extend_from_slice(n.to_string().as_bytes()),
            Err(_) => return Err(format!("{cell:?} is not an unsigned integer (uint64)")),
        },
        Conv::Float => match t.parse::<f64>() {
            Ok(f) if f.is_finite() => json(out, &f),
            _ => return Err(format!("{cell:?} is not a finite number")),
        },
        Conv::Time => {
            if let Ok(n) = t.parse::<i64>() {
                out.extend_from_slice(n.to_string().as_bytes());
            } else if chrono::DateTime::parse_from_rfc3339(t).is_ok() {
                json(out, &t);
            } else {
                return Err(format!(
                    "{cell:?} is not a timestamp (RFC 3339 like 2026-01-31T12:00:00Z, or an integer)"
                ));
            }
        }
        Conv::Date => {
            if let Ok(n) = t.parse::<i64>() {
                out.extend_from_slice(n.to_string().as_bytes());
            } else if chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d").is_ok() {
                json(out, &t);
            } else {
                return Err(format!(
                    "{cell:?} is not a date (YYYY-MM-DD, or days since 1970-01-01)"
                ));
            }
        }
        Conv::List => match serde_json::from_str::<Value>(t) {
            Ok(v @ Value::Array(_)) => json(out, &v),
            _ => return Err(format!("{cell:?} is not a JSON array like [\"a\",\"b\"]")),
        },
        Conv::Infer => infer(cell, t, out),
    }
    Ok(())
}

/// A cell of a column without a declared type: a bool, an integer or a decimal when it looks
/// like one, else text (kept whole: `007` stays text, so do numbers too large for JSON).
pub(super) fn infer(cell: &str, t: &str, out: &mut Vec<u8>) {
    if t == "true" || t == "false" {
        out.extend_from_slice(t.as_bytes());
        return;
    }
    let digits = t.strip_prefix('-').unwrap_or(t);
    let leading_zero = digits.len() > 1 && digits.starts_with('0') && !digits.starts_with("0.");
    let numeric = !digits.is_empty()
        && digits.starts_with(|c: char| c.is_ascii_digit())
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'));
    if numeric && !leading_zero {
        if let Ok(n) = t.parse::<i64>() {
            out.extend_from_slice(n.to_string().as_bytes());
            return;
        }
        if !digits.bytes().all(|b| b.is_ascii_digit())
            && let Ok(f) = t.parse::<f64>()
            && f.is_finite()
        {
            erased::Json::write(&f, out);
            return;
        }
    }
    erased::Json::write(&cell, out);
}

mod erased {
    /// A value written as JSON into a buffer (serializing a string or a number into a `Vec`
    /// cannot fail).
    pub(super) trait Json {
        fn write(&self, out: &mut Vec<u8>);
    }

    impl<T: serde::Serialize> Json for T {
        fn write(&self, out: &mut Vec<u8>) {
            if serde_json::to_writer(&mut *out, self).is_err() {
                out.extend_from_slice(b"null");
            }
        }
    }
}
