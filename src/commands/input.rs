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

use std::io::{BufRead, Read, Seek};
use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::client::{FieldType, Schema};

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

fn is_json_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn trim_json_ws(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !is_json_ws(*first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !is_json_ws(*last) {
            break;
        }
        s = rest;
    }
    s
}

/// NDJSON: one row per non-blank line.
#[derive(Debug)]
pub struct NdjsonReader<R> {
    inner: R,
    pos: Position,
    line: Vec<u8>,
}

impl<R: BufRead> NdjsonReader<R> {
    /// Reads `inner`, which is at `pos`.
    pub fn new(inner: R, pos: Position) -> Self {
        NdjsonReader {
            inner,
            pos,
            line: Vec::new(),
        }
    }
}

impl<R: BufRead> RowReader for NdjsonReader<R> {
    fn next_row(&mut self, out: &mut Vec<u8>) -> anyhow::Result<Option<u64>> {
        loop {
            self.line.clear();
            let n = self
                .inner
                .read_until(b'\n', &mut self.line)
                .with_context(|| format!("reading line {}", self.pos.line + 1))?;
            if n == 0 {
                return Ok(None);
            }
            self.pos.byte += n as u64;
            let number = self.pos.line + 1;
            if self.line.last() == Some(&b'\n') {
                self.pos.line += 1;
            }
            let row = trim_json_ws(&self.line);
            if row.is_empty() {
                continue;
            }
            self.pos.record += 1;
            out.extend_from_slice(row);
            return Ok(Some(number));
        }
    }

    fn position(&self) -> Position {
        self.pos
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArrayState {
    /// Before the `[`.
    Start,
    /// Right after the `[`.
    First,
    /// After an element.
    AfterValue,
    /// After a `,`.
    AfterComma,
    /// After the `]`.
    Done,
}

/// A JSON array, element by element. Each element is copied as it is, its line breaks (JSON
/// whitespace) turned into spaces so that it fits on one NDJSON line.
#[derive(Debug)]
pub struct JsonArrayReader<R> {
    inner: R,
    buf: Vec<u8>,
    at: usize,
    len: usize,
    pos: Position,
    state: ArrayState,
}

impl<R: Read> JsonArrayReader<R> {
    /// Reads `inner`, which is at `pos`: the start of the input, or the position after an
    /// element that an earlier reader returned.
    pub fn new(inner: R, pos: Position) -> Self {
        JsonArrayReader {
            inner,
            buf: vec![0; 1 << 20],
            at: 0,
            len: 0,
            pos,
            state: if pos.byte == 0 {
                ArrayState::Start
            } else {
                ArrayState::AfterValue
            },
        }
    }

    fn peek(&mut self) -> anyhow::Result<Option<u8>> {
        if self.at == self.len {
            self.len = loop {
                match self.inner.read(&mut self.buf) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("reading line {}", self.pos.line + 1));
                    }
                }
            };
            self.at = 0;
            if self.len == 0 {
                return Ok(None);
            }
        }
        Ok(Some(self.buf[self.at]))
    }

    fn bump(&mut self, b: u8) {
        self.at += 1;
        self.pos.byte += 1;
        if b == b'\n' {
            self.pos.line += 1;
        }
    }

    fn skip_ws(&mut self) -> anyhow::Result<Option<u8>> {
        loop {
            match self.peek()? {
                Some(b) if is_json_ws(b) => self.bump(b),
                other => return Ok(other),
            }
        }
    }

    /// Copies one element to `out`.
    fn element(&mut self, out: &mut Vec<u8>) -> anyhow::Result<()> {
        let line = self.pos.line + 1;
        let start = out.len();
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        let unclosed = || anyhow!("line {line}: the element starting here is not closed");
        loop {
            let Some(b) = self.peek()? else {
                if depth == 0 && !in_string {
                    return Ok(());
                }
                return Err(unclosed());
            };
            if in_string {
                self.bump(b);
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_string = false;
                } else if b == b'\n' || b == b'\r' {
                    bail!(
                        "line {}: a line break inside a string is not valid JSON (write it as \\n)",
                        self.pos.line
                    );
                }
                out.push(b);
            } else {
                match b {
                    b',' | b']' if depth == 0 => return Ok(()),
                    b if depth == 0 && is_json_ws(b) && out.len() > start => return Ok(()),
                    b'"' => in_string = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1).ok_or_else(|| {
                            anyhow!("line {}: unbalanced {:?}", self.pos.line + 1, char::from(b))
                        })?;
                    }
                    _ => {}
                }
                self.bump(b);
                out.push(if b == b'\n' || b == b'\r' { b' ' } else { b });
                if depth == 0 && matches!(b, b'}' | b']') {
                    return Ok(());
                }
            }
        }
    }
}

impl<R: Read> RowReader for JsonArrayReader<R> {
    fn next_row(&mut self, out: &mut Vec<u8>) -> anyhow::Result<Option<u64>> {
        loop {
            let b = self.skip_ws()?;
            let line = self.pos.line + 1;
            match (self.state, b) {
                (ArrayState::Start, None) => return Ok(None),
                (ArrayState::Start, Some(b'[')) => {
                    self.bump(b'[');
                    self.state = ArrayState::First;
                }
                (ArrayState::Start, Some(_)) => {
                    bail!(
                        "line {line}: a JSON array must start with '[' (use --format ndjson for one object per line)"
                    )
                }
                (ArrayState::First | ArrayState::AfterValue, Some(b']')) => {
                    self.bump(b']');
                    self.state = ArrayState::Done;
                }
                (ArrayState::AfterValue, Some(b',')) => {
                    self.bump(b',');
                    self.state = ArrayState::AfterComma;
                }
                (ArrayState::AfterValue, Some(c)) => {
                    bail!(
                        "line {line}: expected ',' or ']' after an element, found {:?}",
                        char::from(c)
                    )
                }
                (ArrayState::AfterComma, Some(b']')) => {
                    bail!("line {line}: a ',' before ']' (trailing commas are not JSON)")
                }
                (ArrayState::First | ArrayState::AfterComma, Some(_)) => {
                    let start = out.len();
                    self.element(out)?;
                    if out.len() == start {
                        bail!("line {line}: expected an element");
                    }
                    self.pos.record += 1;
                    self.state = ArrayState::AfterValue;
                    return Ok(Some(line));
                }
                (ArrayState::First | ArrayState::AfterValue | ArrayState::AfterComma, None) => {
                    bail!("line {line}: the input ends before the array is closed with ']'")
                }
                (ArrayState::Done, None) => return Ok(None),
                (ArrayState::Done, Some(_)) => {
                    bail!("line {line}: data after the end of the array")
                }
            }
        }
    }

    fn position(&self) -> Position {
        self.pos
    }
}

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
fn infer(cell: &str, t: &str, out: &mut Vec<u8>) {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::client::TimeUnit;

    fn all_rows(r: &mut dyn RowReader) -> anyhow::Result<Vec<(u64, String)>> {
        let mut rows = Vec::new();
        loop {
            let mut out = Vec::new();
            match r.next_row(&mut out)? {
                Some(line) => rows.push((line, String::from_utf8(out).unwrap())),
                None => return Ok(rows),
            }
        }
    }

    #[test]
    fn formats_are_resolved_by_extension_then_content() {
        let p = |s: &str| Some(Path::new(s).to_path_buf());
        assert_eq!(
            resolve(Format::Auto, p("a.ndjson").as_deref(), b"", None),
            Resolved::Ndjson
        );
        assert_eq!(
            resolve(Format::Auto, p("a.jsonl").as_deref(), b"[", None),
            Resolved::Ndjson
        );
        assert_eq!(
            resolve(Format::Auto, p("a.csv").as_deref(), b"{", None),
            Resolved::Csv(b',')
        );
        assert_eq!(
            resolve(Format::Auto, p("a.TSV").as_deref(), b"", None),
            Resolved::Csv(b'\t')
        );
        assert_eq!(
            resolve(Format::Auto, p("a.json").as_deref(), b"  \n[{", None),
            Resolved::JsonArray
        );
        assert_eq!(
            resolve(Format::Auto, p("a.json").as_deref(), b"{\"a\":1}\n", None),
            Resolved::Ndjson
        );
        assert_eq!(
            resolve(Format::Auto, None, b"id,name\n", None),
            Resolved::Csv(b',')
        );
        assert_eq!(
            resolve(Format::Csv, None, b"[", Some(b';')),
            Resolved::Csv(b';')
        );
        assert_eq!(
            resolve(Format::Json, p("a.csv").as_deref(), b"", None),
            Resolved::JsonArray
        );
    }

    #[test]
    fn ndjson_rows_lines_and_resume() {
        let text = "{\"a\":1}\n\n  {\"a\":2}  \r\n{\"a\":3}";
        let mut r = NdjsonReader::new(text.as_bytes(), Position::default());
        let mut first = Vec::new();
        assert_eq!(r.next_row(&mut first).unwrap(), Some(1));
        let after_first = r.position();
        assert_eq!(
            after_first,
            Position {
                byte: 8,
                line: 1,
                record: 1
            }
        );
        let rest = all_rows(&mut r).unwrap();
        assert_eq!(rest, vec![(3, "{\"a\":2}".into()), (4, "{\"a\":3}".into())]);
        assert_eq!(r.position().byte, text.len() as u64);
        // Resuming at the position after the first row reads the same rest.
        let mut again =
            NdjsonReader::new(&text.as_bytes()[after_first.byte as usize..], after_first);
        assert_eq!(all_rows(&mut again).unwrap(), rest);
    }

    #[test]
    fn json_arrays_stream_element_by_element() {
        let text =
            "[\n  {\"a\": 1,\n   \"s\": \"x, ]}\\\" \\n y\"},\n  {\"b\": [1, {\"c\": 2}]} ,{}\n]\n";
        let mut r = JsonArrayReader::new(text.as_bytes(), Position::default());
        let mut out = Vec::new();
        assert_eq!(r.next_row(&mut out).unwrap(), Some(2));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"a\": 1,    \"s\": \"x, ]}\\\" \\n y\"}"
        );
        let pos = r.position();
        let rest = all_rows(&mut r).unwrap();
        assert_eq!(
            rest,
            vec![(4, "{\"b\": [1, {\"c\": 2}]}".into()), (4, "{}".into())]
        );
        for (_, row) in &rest {
            serde_json::from_str::<Value>(row).unwrap();
        }
        // Resuming after the first element.
        let mut again = JsonArrayReader::new(&text.as_bytes()[pos.byte as usize..], pos);
        assert_eq!(all_rows(&mut again).unwrap(), rest);
        // Empty arrays and empty input have no rows.
        assert!(
            all_rows(&mut JsonArrayReader::new(
                &b" [ ] "[..],
                Position::default()
            ))
            .unwrap()
            .is_empty()
        );
        assert!(
            all_rows(&mut JsonArrayReader::new(&b""[..], Position::default()))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn malformed_json_arrays_are_refused_with_their_line() {
        for (text, what) in [
            ("{\"a\":1}", "must start with '['"),
            ("[{\"a\":1},]", "trailing commas"),
            ("[{\"a\":1}\n{\"a\":2}]", "line 2: expected ','"),
            ("[{\"a\":1}", "before the array is closed"),
            (
                "[{\"a\":\n1",
                "line 1: the element starting here is not closed",
            ),
            ("[{\"a\":\"x\ny\"}]", "line break inside a string"),
            ("[{}] x", "after the end"),
        ] {
            let e = all_rows(&mut JsonArrayReader::new(
                text.as_bytes(),
                Position::default(),
            ))
            .unwrap_err()
            .to_string();
            assert!(e.contains(what), "{text:?}: {e}");
        }
    }

    fn schema() -> Schema {
        Schema::new()
            .required("id", FieldType::Int64)
            .field("small", FieldType::Int32)
            .field("ok", FieldType::Bool)
            .field("score", FieldType::Float64)
            .field("ts", FieldType::Timestamp(TimeUnit::Millisecond))
            .field("day", FieldType::Date)
            .field("tags", FieldType::List(Box::new(FieldType::String)))
            .field("name", FieldType::String)
    }

    #[test]
    fn csv_cells_become_the_fields_types() {
        let text = "id,small,ok,score,ts,day,tags,name,extra\n\
                    1,2,yes,1.5,2026-01-31T12:00:00Z,2026-01-31,\"[\"\"a\"\"]\",\" ada \",007\n\
                    2,,false,3,1700000000000,19000,[],,4.5\n\
                    3,-7,T,-0.25,,,,\"x,\n y\",true\n";
        let reader = csv::ReaderBuilder::new().from_reader(text.as_bytes());
        let mut r = CsvReader::new(reader, Some(&schema())).unwrap();
        let rows = all_rows(&mut r).unwrap();
        let values: Vec<Value> = rows
            .iter()
            .map(|(_, r)| serde_json::from_str(r).unwrap())
            .collect();
        assert_eq!(
            values[0],
            serde_json::json!({"id":1,"small":2,"ok":true,"score":1.5,"ts":"2026-01-31T12:00:00Z",
                "day":"2026-01-31","tags":["a"],"name":" ada ","extra":"007"})
        );
        assert_eq!(
            values[1],
            serde_json::json!({"id":2,"small":null,"ok":false,"score":3.0,"ts":1700000000000i64,
                "day":19000,"tags":[],"name":null,"extra":4.5})
        );
        assert_eq!(values[2]["name"], "x,\n y");
        assert_eq!(values[2]["extra"], true);
        assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), [2, 3, 4]);
        // Every row is one line.
        assert!(rows.iter().all(|(_, r)| !r.contains('\n')));
    }

    #[test]
    fn unconvertible_cells_name_their_line_and_column() {
        for (row, what) in [
            (
                "x,1",
                "line 3, column 1 (\"id\"): \"x\" is not an integer (int64)",
            ),
            (
                "1,3000000000",
                "line 3, column 2 (\"small\"): \"3000000000\" is out of the range of int32",
            ),
            ("1,2,maybe", "column 3 (\"ok\"): \"maybe\" is not a bool"),
            (
                "1,2,true,NaN",
                "column 4 (\"score\"): \"NaN\" is not a finite number",
            ),
            (
                "1,2,true,1,yesterday",
                "column 5 (\"ts\"): \"yesterday\" is not a timestamp",
            ),
            (
                "1,2,true,1,0,31/01/2026",
                "column 6 (\"day\"): \"31/01/2026\" is not a date",
            ),
            (
                "1,2,true,1,0,0,a;b",
                "column 7 (\"tags\"): \"a;b\" is not a JSON array",
            ),
        ] {
            let text = format!(
                "id,small,ok,score,ts,day,tags\n1,1,true,1,0,0,[]\n{row}{}\n",
                ",".repeat(6 - row.matches(',').count())
            );
            let reader = csv::ReaderBuilder::new().from_reader(text.as_bytes());
            let mut r = CsvReader::new(reader, Some(&schema())).unwrap();
            let e = all_rows(&mut r).unwrap_err().to_string();
            assert!(e.contains(what), "{row}: {e}");
        }
        // A record with a wrong number of cells.
        let reader = csv::ReaderBuilder::new().from_reader(&b"a,b\n1,2\n3\n"[..]);
        let e = all_rows(&mut CsvReader::new(reader, None).unwrap()).unwrap_err();
        assert!(format!("{e:#}").contains("line: 3"), "{e:#}");
        // Bad headers.
        let reader = csv::ReaderBuilder::new().from_reader(&b"a,a\n"[..]);
        assert!(CsvReader::new(reader, None).is_err());
    }

    #[test]
    fn csv_resumes_at_a_position() {
        let text = "\u{feff}id,name\n1,a\n2,\"b\nb\"\n3,c\n";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.csv");
        std::fs::write(&path, text).unwrap();
        let open = || {
            let f = std::fs::File::open(&path).unwrap();
            CsvReader::new(csv::ReaderBuilder::new().from_reader(f), None).unwrap()
        };
        let mut r = open();
        assert_eq!(r.columns().collect::<Vec<_>>(), ["id", "name"]);
        let mut out = Vec::new();
        assert_eq!(r.next_row(&mut out).unwrap(), Some(2));
        assert_eq!(String::from_utf8(out).unwrap(), "{\"id\":1,\"name\":\"a\"}");
        let pos = r.position();
        let rest = all_rows(&mut r).unwrap();
        assert_eq!(rest.iter().map(|r| r.0).collect::<Vec<_>>(), [3, 5]);
        let mut again = open();
        again.seek(pos).unwrap();
        assert_eq!(all_rows(&mut again).unwrap(), rest);
    }

    #[test]
    fn inference_keeps_what_does_not_look_like_a_number() {
        let run = |cell: &str| {
            let mut out = Vec::new();
            infer(cell, cell.trim(), &mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(run("42"), "42");
        assert_eq!(run("-3"), "-3");
        assert_eq!(run("0"), "0");
        assert_eq!(run("0.5"), "0.5");
        assert_eq!(run("1e3"), "1000.0");
        assert_eq!(run("007"), "\"007\"");
        assert_eq!(run("99999999999999999999"), "\"99999999999999999999\"");
        assert_eq!(run("1-2"), "\"1-2\"");
        assert_eq!(run("abc"), "\"abc\"");
        assert_eq!(run("True"), "\"True\"");
    }
}
