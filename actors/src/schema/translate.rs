//! JSON request bodies -> typed [`Row`]s, checked against a table schema.
//!
//! This is the schema check of the ingest hot path: the body of a POST or a NATS message goes in,
//! a `Vec<Row>` (one value per schema field, in schema order) comes out, or the first error of
//! the batch. The whole batch is checked before anything is returned, so a caller that gets an
//! error writes nothing.
//!
//! A JSON body is one object or an array of objects; an NDJSON body is one object per non-empty
//! line (`\n` or `\r\n`). The parser is driven by the schema: each key is looked up among the
//! table's fields as it is read (no allocation for a known key), and each value is decoded into
//! its field's type as it is read ([`super::values`]), so no `serde_json::Value` tree is built
//! for an event that is accepted. A string is copied once, from the body into the row.
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
//! - A JSON object that repeats a key keeps the last value; every value given must be valid for
//!   the field.
//! - Unknown fields are errors: nothing is silently dropped.

use std::collections::HashMap;

use serde::Deserialize as _;
use serde::de::value::SeqAccessDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer as _, MapAccess, SeqAccess, Visitor};
use serde_json::Value as J;

use super::error::{Found, Location, SchemaError, shown_name};
use super::types::{Evolution, FieldType, TableSchema};
use super::values::{Cx, Slot, ValueSeed, depth_ok, fail};
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
    /// Field positions by name, for schemas too wide to search: a small message would spend
    /// more on building the map than on the lookups it saves.
    index: Option<HashMap<&'s str, usize>>,
    required: Vec<usize>,
    /// Positions of the primary key columns.
    key: Vec<usize>,
    limits: &'s BatchLimits,
}

/// Widest schema whose fields are found by a linear search rather than a map.
const LINEAR_SEARCH_FIELDS: usize = 16;

/// Rows reserved ahead for a body of this many bytes: about one per 128 bytes (events are
/// rarely smaller), so a typical batch fills its vector without growing it.
fn rows_hint(body_len: usize, max_rows: usize) -> usize {
    (body_len / 128).clamp(1, 1 << 16).min(max_rows)
}

impl<'s> Translator<'s> {
    fn new(schema: &'s TableSchema, limits: &'s BatchLimits) -> Self {
        let index = (schema.fields.len() > LINEAR_SEARCH_FIELDS).then(|| {
            schema
                .fields
                .iter()
                .enumerate()
                .map(|(i, f)| (f.name.as_str(), i))
                .collect()
        });
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
        let slot = Slot::default();
        let mut de = serde_json::Deserializer::from_slice(body);
        let parsed = if body[start] != b'[' {
            if self.limits.max_rows == 0 {
                return Err(SchemaError::TooManyRows { max: 0 });
            }
            let at = Location { row: 0, line: None };
            self.event(at, &slot)
                .deserialize(&mut de)
                .map(|row| vec![row])
        } else {
            let mut rows = Vec::with_capacity(rows_hint(body.len(), self.limits.max_rows));
            (&mut de)
                .deserialize_seq(ArrayVisitor {
                    t: self,
                    rows: &mut rows,
                    slot: &slot,
                })
                .map(|()| rows)
        };
        let rows = parsed.map_err(|e| slot.take().unwrap_or_else(|| malformed(&e, None)))?;
        de.end().map_err(|e| malformed(&e, None))?;
        Ok(rows)
    }

    fn parse_ndjson(&self, body: &[u8]) -> Result<Vec<Row>, SchemaError> {
        let mut rows = Vec::with_capacity(rows_hint(body.len(), self.limits.max_rows));
        let slot = Slot::default();
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
            let at = Location {
                row: rows.len(),
                line: Some(line_no),
            };
            let mut de = serde_json::Deserializer::from_slice(line);
            let row = self
                .event(at, &slot)
                .deserialize(&mut de)
                .map_err(|e| slot.take().unwrap_or_else(|| malformed(&e, Some(line_no))))?;
            de.end().map_err(|e| malformed(&e, Some(line_no)))?;
            rows.push(row);
        }
        Ok(rows)
    }

    fn event<'a>(&'a self, at: Location, slot: &'a Slot) -> EventSeed<'a, 's> {
        EventSeed { t: self, at, slot }
    }

    /// The key `name` of an event: the reserved `_op`, a field (tried first at `hint`, the
    /// position after the previous key's field, since producers mostly write fields in schema
    /// order), or a name the schema does not know.
    fn key(&self, name: &str, hint: usize) -> Key {
        if name == OP_FIELD {
            return Key::Op;
        }
        if self.schema.fields.get(hint).is_some_and(|f| f.name == name) {
            return Key::Field(hint);
        }
        let found = match &self.index {
            Some(index) => index.get(name).copied(),
            None => self.schema.fields.iter().position(|f| f.name == name),
        };
        match found {
            Some(i) => Key::Field(i),
            None => Key::Unknown(shown_name(name)),
        }
    }

    /// Checks an event's fields once all are read, and fills the filler of a delete.
    fn finish(
        &self,
        at: Location,
        op: Op,
        mut values: Vec<Value>,
        explicit_nulls: Option<Vec<bool>>,
    ) -> Result<Row, SchemaError> {
        let fields = &self.schema.fields;
        if let Some(nulls) = explicit_nulls
            && let Some(i) = nulls.iter().position(|n| *n)
        {
            return Err(SchemaError::NullNotAllowed {
                at,
                field: fields[i].name.clone(),
                expected: fields[i].ty.to_string(),
            });
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

/// A key of an event, resolved against the schema while it is read.
enum Key {
    Op,
    Field(usize),
    /// Not in the schema (the name as shown in errors).
    Unknown(String),
}

/// Reads one key without allocating it.
struct KeySeed<'a, 's> {
    t: &'a Translator<'s>,
    hint: usize,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_, '_> {
    type Value = Key;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_, '_> {
    type Value = Key;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Key, E> {
        Ok(self.t.key(name, self.hint))
    }
}

/// Decodes one event into a row.
struct EventSeed<'a, 's> {
    t: &'a Translator<'s>,
    at: Location,
    slot: &'a Slot,
}

impl<'de> DeserializeSeed<'de> for EventSeed<'_, '_> {
    type Value = Row;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Row, D::Error> {
        d.deserialize_any(self)
    }
}

impl EventSeed<'_, '_> {
    fn refuse<E: de::Error>(&self, e: SchemaError) -> E {
        fail(self.slot, e)
    }

    fn not_an_object<E: de::Error>(&self, v: &J) -> E {
        self.refuse(SchemaError::NotAnObject {
            at: self.at,
            found: Found::of(v),
        })
    }

    /// A value the schema has no field for (or `_op`), read whole and checked for depth.
    fn whole<'de, A: MapAccess<'de>>(&self, map: &mut A) -> Result<J, A::Error> {
        let v: J = map.next_value()?;
        let max = self.t.limits.max_depth;
        if !depth_ok(&v, 2, max) {
            return Err(self.refuse(SchemaError::TooDeep { at: self.at, max }));
        }
        Ok(v)
    }
}

impl<'de> Visitor<'de> for EventSeed<'_, '_> {
    type Value = Row;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Row, A::Error> {
        let (t, at) = (self.t, self.at);
        let fields = &t.schema.fields;
        let mut values = vec![Value::Null; fields.len()];
        // Set for a required field whose last value was an explicit null; allocated only then.
        let mut explicit_nulls: Option<Vec<bool>> = None;
        let mut op = None;
        let mut hint = 0;
        while let Some(key) = map.next_key_seed(KeySeed { t, hint })? {
            let i = match key {
                Key::Field(i) => i,
                Key::Op => {
                    op = Some(self.whole(&mut map)?);
                    continue;
                }
                Key::Unknown(field) => {
                    // A table evolved from data has no field for values only ever seen as
                    // null; a null is what an absent field reads as, so nothing is lost.
                    let v = self.whole(&mut map)?;
                    if v.is_null() && t.schema.evolution == Evolution::Infer {
                        continue;
                    }
                    return Err(self.refuse(SchemaError::UnknownField { at, field }));
                }
            };
            hint = i + 1;
            let field = &fields[i];
            let seed = ValueSeed {
                cx: Cx {
                    at,
                    field: &field.name,
                    elem: None,
                    ty: &field.ty,
                },
                level: 2,
                max_depth: t.limits.max_depth,
                slot: self.slot,
            };
            let value = map.next_value_seed(seed)?;
            if !field.nullable {
                let null = value.is_none();
                if null || explicit_nulls.is_some() {
                    explicit_nulls.get_or_insert_with(|| vec![false; fields.len()])[i] = null;
                }
            }
            values[i] = value.unwrap_or(Value::Null);
        }
        let op = match op {
            None => Op::Upsert,
            Some(v) => t.op(&v, at).map_err(|e| self.refuse(e))?,
        };
        t.finish(at, op, values, explicit_nulls)
            .map_err(|e| self.refuse(e))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Row, E> {
        Err(self.not_an_object(&J::Null))
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Row, E> {
        Err(self.not_an_object(&J::Bool(b)))
    }

    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Row, E> {
        Err(self.not_an_object(&J::Number(u.into())))
    }

    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Row, E> {
        Err(self.not_an_object(&J::Number(i.into())))
    }

    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Row, E> {
        let v = serde_json::Number::from_f64(f).map_or(J::Null, J::Number);
        Err(self.not_an_object(&v))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Row, E> {
        Err(self.not_an_object(&J::String(s.to_owned())))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Row, A::Error> {
        let v = J::deserialize(SeqAccessDeserializer::new(seq))?;
        Err(self.not_an_object(&v))
    }
}

/// Streams the elements of a top-level array into rows, one event at a time.
struct ArrayVisitor<'a, 's> {
    t: &'a Translator<'s>,
    rows: &'a mut Vec<Row>,
    slot: &'a Slot,
}

impl<'de> Visitor<'de> for ArrayVisitor<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of JSON objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let max_rows = self.t.limits.max_rows;
        loop {
            let row = self.rows.len();
            // Checked before parsing the element so a hostile array stops at the limit.
            if row == max_rows {
                if seq.next_element::<de::IgnoredAny>()?.is_none() {
                    return Ok(());
                }
                return Err(fail(self.slot, SchemaError::TooManyRows { max: max_rows }));
            }
            let at = Location { row, line: None };
            match seq.next_element_seed(self.t.event(at, self.slot))? {
                Some(r) => self.rows.push(r),
                None => return Ok(()),
            }
        }
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
