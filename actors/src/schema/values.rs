//! One JSON value -> one typed [`Value`] of a field, decoded straight from the parser.
//!
//! [`ValueSeed`] is a serde seed driven by the field's type: the parser hands it a number, a
//! string or an array and it produces the column's value at once, without building a
//! `serde_json::Value` first. Only a value that is refused is gathered into a
//! `serde_json::Value`, to describe it in the error. The rules are listed in
//! [`super::translate`].

use std::cell::RefCell;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::Deserialize as _;
use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value as J};

use super::error::{BadValue, Found, Location, SchemaError};
use super::types::{FieldType, TimeUnit};
use crate::row::Value;

/// Where a decoder leaves its own error: serde's error type only carries text, so the visitor
/// stores the [`SchemaError`] here and aborts the parse with a placeholder.
pub(super) type Slot = RefCell<Option<SchemaError>>;

/// Stores `e` in `slot` and returns the error that stops the parser.
pub(super) fn fail<E: de::Error>(slot: &Slot, e: SchemaError) -> E {
    *slot.borrow_mut() = Some(e);
    E::custom("invalid event")
}

/// Base64 with the standard alphabet, padded or not.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Largest integer magnitude a JSON float stands for exactly.
const MAX_EXACT_FLOAT: f64 = 9_007_199_254_740_992.0;

/// Where a value being converted sits, for error messages.
#[derive(Clone, Copy)]
pub(super) struct Cx<'a> {
    pub at: Location,
    pub field: &'a str,
    /// Index inside a list.
    pub elem: Option<usize>,
    /// The type expected at this position (the element type inside a list).
    pub ty: &'a FieldType,
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
}

/// Decodes one field's value: `None` for a JSON `null`, else the typed value or an error.
/// `level` is the nesting of the value (the event object is 1, its fields' values 2), checked
/// against `max_depth` for arrays and objects.
pub(super) struct ValueSeed<'a> {
    pub cx: Cx<'a>,
    pub level: usize,
    pub max_depth: usize,
    pub slot: &'a Slot,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Option<Value>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl ValueSeed<'_> {
    fn refuse<E: de::Error>(&self, e: SchemaError) -> E {
        fail(self.slot, e)
    }

    fn number<E: de::Error>(self, n: Num) -> Result<Option<Value>, E> {
        let cx = &self.cx;
        let err = |e: NumErr| match e {
            NumErr::Kind => cx.mismatch(&n.json()),
            NumErr::Range => cx.range(&n.json()),
        };
        let v = match cx.ty {
            FieldType::Int32 => {
                let i = n.int().map_err(err);
                match i.and_then(|i| i32::try_from(i).map_err(|_| err(NumErr::Range))) {
                    Ok(i) => Value::Int(i.into()),
                    Err(e) => return Err(self.refuse(e)),
                }
            }
            FieldType::Int64 => Value::Int(n.int().map_err(|e| self.refuse(err(e)))?),
            FieldType::UInt64 => Value::UInt(n.uint().map_err(|e| self.refuse(err(e)))?),
            FieldType::Float32 => {
                let f = n.float() as f32;
                if !f.is_finite() {
                    return Err(self.refuse(err(NumErr::Range)));
                }
                Value::Float(f64::from(f))
            }
            FieldType::Float64 => {
                let f = n.float();
                if !f.is_finite() {
                    return Err(self.refuse(err(NumErr::Range)));
                }
                Value::Float(f)
            }
            FieldType::Timestamp(_) => Value::Timestamp(n.int().map_err(|e| self.refuse(err(e)))?),
            FieldType::Date => {
                let i = n.int().map_err(err);
                match i.and_then(|i| i32::try_from(i).map_err(|_| err(NumErr::Range))) {
                    Ok(d) => Value::Date(d),
                    Err(e) => return Err(self.refuse(e)),
                }
            }
            _ => return Err(self.refuse(cx.mismatch(&n.json()))),
        };
        Ok(Some(v))
    }

    /// A refused array or object: gathered (for the error's excerpt) and checked for depth
    /// first, since nesting past the limit is the more telling complaint.
    fn refuse_container<E: de::Error>(&self, v: J) -> E {
        if !depth_ok(&v, self.level, self.max_depth) {
            return self.refuse(SchemaError::TooDeep {
                at: self.cx.at,
                max: self.max_depth,
            });
        }
        self.refuse(self.cx.mismatch(&v))
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a value of type {}", self.cx.ty)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
        match self.cx.ty {
            FieldType::Bool => Ok(Some(Value::Bool(b))),
            _ => Err(self.refuse(self.cx.mismatch(&J::Bool(b)))),
        }
    }

    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Self::Value, E> {
        self.number(Num::U(u))
    }

    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Self::Value, E> {
        self.number(Num::I(i))
    }

    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Self::Value, E> {
        self.number(Num::F(f))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
        match self.cx.ty {
            FieldType::String => Ok(Some(Value::Str(s))),
            _ => self.visit_str(&s),
        }
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        let cx = &self.cx;
        let with_reason = |reason: String| cx.bad(&J::String(s.to_owned()), Some(reason));
        let v = match cx.ty {
            FieldType::String => Value::Str(s.to_owned()),
            FieldType::Binary => match BASE64.decode(s) {
                Ok(b) => Value::Bytes(b),
                Err(e) => {
                    let bad = with_reason(format!("not base64 ({e})"));
                    return Err(self.refuse(SchemaError::InvalidBase64(bad)));
                }
            },
            FieldType::Timestamp(unit) => match parse_timestamp(s, *unit) {
                Ok(t) => Value::Timestamp(t),
                Err(reason) => {
                    let bad = with_reason(reason);
                    return Err(self.refuse(SchemaError::InvalidTimestamp(bad)));
                }
            },
            FieldType::Date => match parse_date(s) {
                Ok(d) => Value::Date(d),
                Err(reason) => {
                    let bad = with_reason(reason.to_owned());
                    return Err(self.refuse(SchemaError::InvalidDate(bad)));
                }
            },
            _ => return Err(self.refuse(cx.mismatch(&J::String(s.to_owned())))),
        };
        Ok(Some(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let FieldType::List(inner) = self.cx.ty else {
            let v = J::deserialize(SeqAccessDeserializer::new(seq))?;
            return Err(self.refuse_container(v));
        };
        if self.level > self.max_depth {
            return Err(self.refuse(SchemaError::TooDeep {
                at: self.cx.at,
                max: self.max_depth,
            }));
        }
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        loop {
            let elem = ValueSeed {
                cx: Cx {
                    elem: Some(out.len()),
                    ty: inner,
                    ..self.cx
                },
                level: self.level + 1,
                max_depth: self.max_depth,
                slot: self.slot,
            };
            match seq.next_element_seed(elem)? {
                Some(v) => out.push(v.unwrap_or(Value::Null)),
                None => return Ok(Some(Value::List(out))),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let v = J::deserialize(MapAccessDeserializer::new(map))?;
        Err(self.refuse_container(v))
    }
}

/// A JSON number as the parser gives it.
#[derive(Debug, Clone, Copy)]
enum Num {
    U(u64),
    I(i64),
    F(f64),
}

/// Why a number does not fit an integer type: wrong kind (fractional) or out of range.
#[derive(Debug, Clone, Copy)]
enum NumErr {
    Kind,
    Range,
}

impl Num {
    /// The number as a JSON value, for error messages.
    fn json(self) -> J {
        match self {
            Num::U(u) => J::Number(u.into()),
            Num::I(i) => J::Number(i.into()),
            Num::F(f) => Number::from_f64(f).map_or(J::Null, J::Number),
        }
    }

    fn float(self) -> f64 {
        match self {
            Num::U(u) => u as f64,
            Num::I(i) => i as f64,
            Num::F(f) => f,
        }
    }

    fn int(self) -> Result<i64, NumErr> {
        match self {
            Num::I(i) => Ok(i),
            Num::U(u) => i64::try_from(u).map_err(|_| NumErr::Range),
            Num::F(f) => exact_integer(f).map(|f| f as i64),
        }
    }

    fn uint(self) -> Result<u64, NumErr> {
        match self {
            Num::U(u) => Ok(u),
            Num::I(i) => u64::try_from(i).map_err(|_| NumErr::Range),
            Num::F(f) if f < 0.0 && f.fract() == 0.0 => Err(NumErr::Range),
            Num::F(f) => exact_integer(f).map(|f| f as u64),
        }
    }
}

/// A float that spells an integer exactly (no fractional part, magnitude at most 2^53).
fn exact_integer(f: f64) -> Result<f64, NumErr> {
    if f.fract() != 0.0 {
        return Err(NumErr::Kind);
    }
    if f.abs() > MAX_EXACT_FLOAT {
        return Err(NumErr::Range);
    }
    Ok(f)
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
pub(super) fn depth_ok(v: &J, level: usize, max: usize) -> bool {
    match v {
        J::Array(a) => level <= max && a.iter().all(|x| depth_ok(x, level + 1, max)),
        J::Object(o) => level <= max && o.values().all(|x| depth_ok(x, level + 1, max)),
        _ => true,
    }
}
