//! JSON request bodies -> typed [`Row`]s, checked against a table schema.
//!
//! This is the schema check of the ingest hot path: the body of a POST or a NATS message goes in,
//! a `Vec<Row>` (one value per schema field, in schema order) comes out, or the first error of
//! the batch. The whole batch is checked before anything is returned, so a caller that gets an
//! error writes nothing.
//!
//! A JSON body is one object or an array of objects; an array is read element by element, so
//! only one event's `serde_json::Value` tree is alive at a time. An NDJSON body is one object per
//! non-empty line (`\n` or `\r\n`). String values are moved out of the parsed tree, not copied.
//!
//! Conversion rules beyond the obvious ones:
//! - Integer fields (`int32`, `int64`, `uint64`, and the integer forms of timestamps and dates)
//!   also accept a JSON float with no fractional part (`1.0`, `1e3`) as long as its magnitude is
//!   at most 2^53: some producers (Python's `float`, exponent notation) emit integral values that
//!   way, and up to 2^53 the float is exactly the integer that was meant. A fractional part is a
//!   type mismatch; a larger magnitude is out of range because the parser may already have
//!   rounded it.
//! - `float32` values are rounded to `f32` here, so a row holds exactly what will be stored.
//! - Timestamps are RFC 3339 strings (any offset, converted to UTC) or integers in the field's
//!   unit. Digits finer than the unit are refused, not truncated. A leap second (`:60`) counts as
//!   the first instant of the next minute.
//! - A JSON object that repeats a key keeps the last value (serde_json's behavior).
//! - Unknown fields are errors: nothing is silently dropped.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::de::{self, Deserializer as _, SeqAccess, Visitor};
use serde_json::{Number, Value as J};

use super::error::{BadValue, Found, Location, SchemaError, shown_name};
use super::types::{Evolution, FieldType, TableSchema, TimeUnit};
use crate::row::{Op, Row, Value};

/// The framing of a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// One JSON object, or a JSON array of objects.
    Json,
    /// One JSON object per non-empty line.
    Ndjson,
}

/// Bounds on one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most events a batch may hold. Default: 1 000 000.
    pub max_rows: usize,
    /// Deepest nesting of arrays and objects in one event, the event object counting as 1.
    /// Default: 32. (serde_json itself stops at 128 whatever this says.)
    pub max_depth: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_rows: 1_000_000,
            max_depth: 32,
        }
    }
}

/// Base64 with the standard alphabet, padded or not.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Largest integer magnitude a JSON float stands for exactly.
const MAX_EXACT_FLOAT: f64 = 9_007_199_254_740_992.0;

/// The reserved field that makes an event a delete (`"_op": "delete"`) in a table with a
/// primary key.
pub const OP_FIELD: &str = "_op";

/// A placeholder value of type `ty`, for the non-key columns of a delete.
fn zero_value(ty: &FieldType) -> Value {
    match ty {
        FieldType::Bool => Value::Bool(false),
        FieldType::Int32 | FieldType::Int64 => Value::Int(0),
        FieldType::UInt64 => Value::UInt(0),
        FieldType::Float32 | FieldType::Float64 => Value::Float(0.0),
        FieldType::String => Value::Str(String::new()),
        FieldType::Binary => Value::Bytes(Vec::new()),
        FieldType::Timestamp(_) => Value::Timestamp(0),
        FieldType::Date => Value::Date(0),
        FieldType::List(_) => Value::List(Vec::new()),
    }
}

/// Parses and checks a whole batch against `schema`, returning one row per event: an upsert,
/// or a delete when the event says `"_op": "delete"`.
pub fn parse_batch(
    body: &[u8],
    format: BodyFormat,
    schema: &TableSchema,
    limits: &BatchLimits,
) -> Result<Vec<Row>, SchemaError> {
    let t = Translator::new(schema, limits);
    let rows = match format {
        BodyFormat::Json => t.parse_json(body)?,
        BodyFormat::Ndjson => t.parse_ndjson(body)?,
    };
    if rows.is_empty() {
        return Err(SchemaError::EmptyBatch);
    }
    Ok(rows)
}

/// The schema prepared for one batch: field lookup by name and the fields that must be present.
struct Translator<'s> {
    schema: &'s TableSchema,
    index: HashMap<&'s str, usize>,
    required: Vec<usize>,
    /// Positions of the primary key columns.
    key: Vec<usize>,
    limits: &'s BatchLimits,
}

impl<'s> Translator<'s> {
    fn new(schema: &'s TableSchema, limits: &'s BatchLimits) -> Self {
        let index = schema
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name.as_str(), i))
            .collect();
        let required = schema
            .fields
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.nullable)
            .map(|(i, _)| i)
            .collect();
        let key = schema
            .primary_key
            .iter()
            .filter_map(|k| schema.index_of(k))
            .collect();
        Translator {
            schema,
            index,
            required,
            key,
            limits,
        }
    }

    fn parse_json(&self, body: &[u8]) -> Result<Vec<Row>, SchemaError> {
        let Some(start) = body.iter().position(|b| !is_json_ws(*b)) else {
            return Err(SchemaError::EmptyBatch);
        };
        if body[start] != b'[' {
            if self.limits.max_rows == 0 {
                return Err(SchemaError::TooManyRows { max: 0 });
            }
            let v: J = serde_json::from_slice(body).map_err(|e| malformed(&e, None))?;
            return Ok(vec![self.row(v, Location { row: 0, line: None })?]);
        }
        let mut de = serde_json::Deserializer::from_slice(body);
        let mut state = ArrayState {
            t: self,
            rows: Vec::new(),
            failure: None,
        };
        if let Err(e) = (&mut de).deserialize_seq(ArrayVisitor(&mut state)) {
            return Err(state.failure.take().unwrap_or_else(|| malformed(&e, None)));
        }
        de.end().map_err(|e| malformed(&e, None))?;
        Ok(state.rows)
    }

    fn parse_ndjson(&self, body: &[u8]) -> Result<Vec<Row>, SchemaError> {
        let mut rows = Vec::new();
        for (i, raw) in body.split(|b| *b == b'\n').enumerate() {
            let line = raw.strip_suffix(b"\r").unwrap_or(raw);
            if line.iter().all(|b| is_json_ws(*b)) {
                continue;
            }
            let line_no = i + 1;
            if rows.len() == self.limits.max_rows {
                return Err(SchemaError::TooManyRows {
                    max: self.limits.max_rows,
                });
            }
            let v: J = serde_json::from_slice(line).map_err(|e| malformed(&e, Some(line_no)))?;
            let at = Location {
                row: rows.len(),
                line: Some(line_no),
            };
            rows.push(self.row(v, at)?);
        }
        Ok(rows)
    }

    /// Converts one event, moving its strings into the row.
    fn row(&self, v: J, at: Location) -> Result<Row, SchemaError> {
        let map = match v {
            J::Object(map) => map,
            other => {
                return Err(SchemaError::NotAnObject {
                    at,
                    found: Found::of(&other),
                });
            }
        };
        if !map.values().all(|v| depth_ok(v, 2, self.limits.max_depth)) {
            return Err(SchemaError::TooDeep {
                at,
                max: self.limits.max_depth,
            });
        }
        let mut map = map;
        let op = match map.shift_remove(OP_FIELD) {
            None => Op::Upsert,
            Some(v) => self.op(&v, at)?,
        };
        let fields = &self.schema.fields;
        let mut values = vec![Value::Null; fields.len()];
        for (name, jv) in map {
            let Some(&i) = self.index.get(name.as_str()) else {
                // A table evolved from data has no field for values only ever seen as null;
                // a null is what an absent field reads as, so nothing is lost.
                if jv.is_null() && self.schema.evolution == Evolution::Infer {
                    continue;
                }
                return Err(SchemaError::UnknownField {
                    at,
                    field: shown_name(&name),
                });
            };
            let field = &fields[i];
            if jv.is_null() {
                if !field.nullable {
                    return Err(SchemaError::NullNotAllowed {
                        at,
                        field: field.name.clone(),
                        expected: field.ty.to_string(),
                    });
                }
                continue;
            }
            let cx = Cx {
                at,
                field: &field.name,
                elem: None,
                ty: &field.ty,
            };
            values[i] = convert(jv, &cx)?;
        }
        // Explicit nulls of required fields were refused above, so a Null left here is absent.
        for &i in &self.required {
            if values[i] == Value::Null {
                if op == Op::Delete && !self.key.contains(&i) {
                    // A delete names its key; the rest of a tombstone is filler that keeps
                    // non-nullable columns valid in files. Readers go by `_op`.
                    values[i] = zero_value(&fields[i].ty);
                    continue;
                }
                return Err(SchemaError::MissingField {
                    at,
                    field: fields[i].name.clone(),
                    expected: fields[i].ty.to_string(),
                });
            }
        }
        Ok(Row { op, values })
    }

    /// Reads the reserved `_op` field: `"upsert"` (the default) or `"delete"`.
    fn op(&self, v: &J, at: Location) -> Result<Op, SchemaError> {
        let invalid = |reason: String| SchemaError::InvalidOp { at, reason };
        match v.as_str() {
            Some("upsert") => Ok(Op::Upsert),
            Some("delete") if self.key.is_empty() => Err(invalid(
                "deletes need a table with a primary key; this table is append-only".into(),
            )),
            Some("delete") => Ok(Op::Delete),
            _ => Err(invalid(format!(
                "expected \"upsert\" or \"delete\", found {}",
                Found::of(v)
            ))),
        }
    }
}

/// Streams the elements of a top-level array into rows, one parsed event at a time.
struct ArrayState<'a, 's> {
    t: &'a Translator<'s>,
    rows: Vec<Row>,
    /// Our own error, which serde sees only as an opaque abort.
    failure: Option<SchemaError>,
}

struct ArrayVisitor<'a, 'b, 's>(&'b mut ArrayState<'a, 's>);

impl<'de> Visitor<'de> for ArrayVisitor<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of JSON objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let st = self.0;
        loop {
            let row = st.rows.len();
            // Checked before parsing the element so a hostile array stops at the limit.
            if row == st.t.limits.max_rows {
                if seq.next_element::<de::IgnoredAny>()?.is_none() {
                    return Ok(());
                }
                st.failure = Some(SchemaError::TooManyRows {
                    max: st.t.limits.max_rows,
                });
                return Err(de::Error::custom("too many rows"));
            }
            let Some(v) = seq.next_element::<J>()? else {
                return Ok(());
            };
            match st.t.row(v, Location { row, line: None }) {
                Ok(r) => st.rows.push(r),
                Err(e) => {
                    st.failure = Some(e);
                    return Err(de::Error::custom("invalid event"));
                }
            }
        }
    }
}

/// Where a value being converted sits, for error messages.
struct Cx<'a> {
    at: Location,
    field: &'a str,
    /// Index inside a list.
    elem: Option<usize>,
    /// The type expected at this position (the element type inside a list).
    ty: &'a FieldType,
}

impl Cx<'_> {
    fn field(&self) -> String {
        match self.elem {
            Some(i) => format!("{}[{i}]", self.field),
            None => self.field.to_owned(),
        }
    }

    fn bad(&self, v: &J, reason: Option<String>) -> Box<BadValue> {
        Box::new(BadValue {
            at: self.at,
            field: self.field(),
            expected: self.ty.to_string(),
            found: Found::of(v),
            reason,
        })
    }

    fn mismatch(&self, v: &J) -> SchemaError {
        SchemaError::TypeMismatch(self.bad(v, None))
    }

    fn range(&self, v: &J) -> SchemaError {
        SchemaError::ValueOutOfRange(self.bad(v, Some("out of range".into())))
    }

    fn num_err(&self, v: &J, e: NumErr) -> SchemaError {
        match e {
            NumErr::Kind => self.mismatch(v),
            NumErr::Range => self.range(v),
        }
    }

    fn timestamp(&self, v: &J, reason: String) -> SchemaError {
        SchemaError::InvalidTimestamp(self.bad(v, Some(reason)))
    }

    fn date(&self, v: &J, reason: &str) -> SchemaError {
        SchemaError::InvalidDate(self.bad(v, Some(reason.to_owned())))
    }
}

/// Converts one non-null JSON value to the type at `cx`.
fn convert(v: J, cx: &Cx<'_>) -> Result<Value, SchemaError> {
    Ok(match (cx.ty, v) {
        (FieldType::Bool, J::Bool(b)) => Value::Bool(b),
        (FieldType::Int32, J::Number(n)) => {
            let i = int_of(&n).map_err(|e| cx.num_err(&J::Number(n.clone()), e))?;
            if i32::try_from(i).is_err() {
                return Err(cx.range(&J::Number(n)));
            }
            Value::Int(i)
        }
        (FieldType::Int64, J::Number(n)) => {
            Value::Int(int_of(&n).map_err(|e| cx.num_err(&J::Number(n), e))?)
        }
        (FieldType::UInt64, J::Number(n)) => {
            Value::UInt(uint_of(&n).map_err(|e| cx.num_err(&J::Number(n), e))?)
        }
        (FieldType::Float32, J::Number(n)) => {
            let f = n.as_f64().unwrap_or(f64::NAN) as f32;
            if !f.is_finite() {
                return Err(cx.range(&J::Number(n)));
            }
            Value::Float(f64::from(f))
        }
        (FieldType::Float64, J::Number(n)) => match n.as_f64() {
            Some(f) if f.is_finite() => Value::Float(f),
            _ => return Err(cx.range(&J::Number(n))),
        },
        (FieldType::String, J::String(s)) => Value::Str(s),
        (FieldType::Binary, J::String(s)) => match BASE64.decode(&s) {
            Ok(b) => Value::Bytes(b),
            Err(e) => {
                let reason = format!("not base64 ({e})");
                return Err(SchemaError::InvalidBase64(
                    cx.bad(&J::String(s), Some(reason)),
                ));
            }
        },
        (FieldType::Timestamp(unit), J::String(s)) => match parse_timestamp(&s, *unit) {
            Ok(t) => Value::Timestamp(t),
            Err(reason) => return Err(cx.timestamp(&J::String(s), reason)),
        },
        (FieldType::Timestamp(_), J::Number(n)) => {
            Value::Timestamp(int_of(&n).map_err(|e| cx.num_err(&J::Number(n), e))?)
        }
        (FieldType::Date, J::String(s)) => match parse_date(&s) {
            Ok(d) => Value::Date(d),
            Err(reason) => return Err(cx.date(&J::String(s), reason)),
        },
        (FieldType::Date, J::Number(n)) => {
            let i = int_of(&n).map_err(|e| cx.num_err(&J::Number(n.clone()), e))?;
            match i32::try_from(i) {
                Ok(d) => Value::Date(d),
                Err(_) => return Err(cx.range(&J::Number(n))),
            }
        }
        (FieldType::List(inner), J::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                if item.is_null() {
                    out.push(Value::Null);
                    continue;
                }
                let ecx = Cx {
                    at: cx.at,
                    field: cx.field,
                    elem: Some(i),
                    ty: inner,
                };
                out.push(convert(item, &ecx)?);
            }
            Value::List(out)
        }
        (_, other) => return Err(cx.mismatch(&other)),
    })
}

/// Why a number does not fit an integer type: wrong kind (fractional) or out of range.
#[derive(Debug, Clone, Copy)]
enum NumErr {
    Kind,
    Range,
}

fn int_of(n: &Number) -> Result<i64, NumErr> {
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    if n.is_u64() {
        return Err(NumErr::Range);
    }
    let f = n.as_f64().ok_or(NumErr::Kind)?;
    if f.fract() != 0.0 {
        return Err(NumErr::Kind);
    }
    if f.abs() > MAX_EXACT_FLOAT {
        return Err(NumErr::Range);
    }
    Ok(f as i64)
}

fn uint_of(n: &Number) -> Result<u64, NumErr> {
    if let Some(u) = n.as_u64() {
        return Ok(u);
    }
    if n.is_i64() {
        return Err(NumErr::Range);
    }
    let f = n.as_f64().ok_or(NumErr::Kind)?;
    if f.fract() != 0.0 {
        return Err(NumErr::Kind);
    }
    if !(0.0..=MAX_EXACT_FLOAT).contains(&f) {
        return Err(NumErr::Range);
    }
    Ok(f as u64)
}

/// Parses an RFC 3339 timestamp into `unit`s since the epoch, refusing lost precision.
fn parse_timestamp(s: &str, unit: TimeUnit) -> Result<i64, String> {
    // chrono's own reasons ("premature end of input" for "yesterday") confuse more than help.
    let dt = chrono::DateTime::parse_from_rfc3339(s)
        .map_err(|_| "not an RFC 3339 timestamp like 2026-01-31T12:00:00Z".to_owned())?;
    // chrono silently drops fraction digits past the ninth; refuse them unless they are zeros.
    if let Some(dot) = s.find('.') {
        let digits = s[dot + 1..]
            .bytes()
            .take_while(u8::is_ascii_digit)
            .skip(9)
            .any(|b| b != b'0');
        if digits {
            return Err("more than nanosecond precision".into());
        }
    }
    let per = unit.per_second();
    let ns_per_unit = 1_000_000_000 / per;
    // Up to 1_999_999_999 during a leap second, which then rolls into the next second.
    let nanos = i64::from(dt.timestamp_subsec_nanos());
    if nanos % ns_per_unit != 0 {
        return Err(format!(
            "precision finer than {} would be lost",
            FieldType::Timestamp(unit)
        ));
    }
    dt.timestamp()
        .checked_mul(per)
        .and_then(|v| v.checked_add(nanos / ns_per_unit))
        .ok_or_else(|| format!("out of range for {}", FieldType::Timestamp(unit)))
}

/// Parses a strict `YYYY-MM-DD` into days since the epoch.
fn parse_date(s: &str) -> Result<i32, &'static str> {
    let b = s.as_bytes();
    let shape = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shape {
        return Err("not a YYYY-MM-DD date");
    }
    let num = |r: std::ops::Range<usize>| s[r].parse::<u32>().unwrap_or(0);
    let year = i32::try_from(num(0..4)).map_err(|_| "not a YYYY-MM-DD date")?;
    let date = chrono::NaiveDate::from_ymd_opt(year, num(5..7), num(8..10))
        .ok_or("no such calendar date")?;
    // 719_163 is the day number of 1970-01-01 counted from 0001-01-01 as day 1.
    Ok(chrono::Datelike::num_days_from_ce(&date) - 719_163)
}

/// Whether `v`, sitting at nesting `level` (containers enclosing it, itself included), stays
/// within `max`.
fn depth_ok(v: &J, level: usize, max: usize) -> bool {
    match v {
        J::Array(a) => level <= max && a.iter().all(|x| depth_ok(x, level + 1, max)),
        J::Object(o) => level <= max && o.values().all(|x| depth_ok(x, level + 1, max)),
        _ => true,
    }
}

/// JSON's insignificant whitespace (narrower than `u8::is_ascii_whitespace`).
fn is_json_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Maps a serde_json error to ours, with the NDJSON line when parsing a line on its own.
pub(crate) fn malformed(e: &serde_json::Error, line: Option<usize>) -> SchemaError {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let message = text.strip_suffix(&suffix).unwrap_or(&text).to_owned();
    SchemaError::MalformedJson {
        line: line.map_or(e.line(), |l| l + e.line().saturating_sub(1)),
        column: e.column(),
        message,
    }
}

#[cfg(test)]
#[path = "translate_tests.rs"]
mod tests;
