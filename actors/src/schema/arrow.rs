//! Rows <-> Arrow: the columnar form of a table's data, and its rendering back to JSON.
//!
//! On the write side, [`rows_to_batch`] turns durable rows (with their sequence numbers and
//! ingestion times) into a `RecordBatch` shaped by [`arrow_schema`]: the table's fields, then the
//! hidden `_seq`, `_op` and `_ingested_at` columns. The flush path encodes that batch to Parquet.
//!
//! On the read side, [`write_json_rows`] streams query results (any projection of those columns)
//! as JSON text, and [`batch_to_json`] builds `serde_json` objects from the same conversion: one
//! function ([`cell`]) decides how each Arrow value looks in JSON, two small emitters write it out.
//! The rendering is what `parse_batch` accepts, so data read back can be posted again unchanged.
//! Timestamps outside the years 0000-9999 (which RFC 3339 cannot spell) and dates outside them
//! are rendered as integers in their unit, which `parse_batch` also accepts.

use std::ops::Range;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, BooleanBuilder, Date32Array, ListArray,
    PrimitiveArray, PrimitiveBuilder, RecordBatch, StringBuilder, TimestampMicrosecondArray,
    UInt8Array, UInt64Array,
};
use arrow::buffer::{NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Date32Type, Field as ArrowField, Float32Type, Float64Type,
    Int32Type, Int64Type, Schema, SchemaRef, TimeUnit as ArrowUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt64Type,
};
use base64::Engine as _;
use chrono::{Datelike as _, SecondsFormat};
use serde_json::{Map, Value as J};

use super::error::SchemaError;
use super::types::{FieldType, TableSchema, TimeUnit};
use crate::row::{Row, Value};

/// Hidden column: the event's sequence number (UInt64).
pub const SEQ_COLUMN: &str = "_seq";
/// Hidden column: the operation, 0 upsert, 1 delete (UInt8).
pub const OP_COLUMN: &str = "_op";
/// Hidden column: when the event was accepted (Timestamp µs, UTC).
pub const INGESTED_AT_COLUMN: &str = "_ingested_at";

const UTC: &str = "UTC";

/// The Arrow type of a field type; lists hold nullable `item`s, timestamps are in UTC.
pub fn arrow_type(ty: &FieldType) -> DataType {
    match ty {
        FieldType::Bool => DataType::Boolean,
        FieldType::Int32 => DataType::Int32,
        FieldType::Int64 => DataType::Int64,
        FieldType::UInt64 => DataType::UInt64,
        FieldType::Float32 => DataType::Float32,
        FieldType::Float64 => DataType::Float64,
        FieldType::String => DataType::Utf8,
        FieldType::Binary => DataType::Binary,
        FieldType::Timestamp(u) => DataType::Timestamp(arrow_unit(*u), Some(UTC.into())),
        FieldType::Date => DataType::Date32,
        FieldType::List(inner) => DataType::List(Arc::new(ArrowField::new_list_field(
            arrow_type(inner),
            true,
        ))),
    }
}

fn arrow_unit(u: TimeUnit) -> ArrowUnit {
    match u {
        TimeUnit::Second => ArrowUnit::Second,
        TimeUnit::Millisecond => ArrowUnit::Millisecond,
        TimeUnit::Microsecond => ArrowUnit::Microsecond,
        TimeUnit::Nanosecond => ArrowUnit::Nanosecond,
    }
}

/// Builds the Arrow schema of a table's files: its fields with their nullability, followed by
/// the non-nullable hidden columns `_seq` (UInt64), `_op` (UInt8) and `_ingested_at`
/// (Timestamp µs, UTC).
pub fn arrow_schema(schema: &TableSchema) -> SchemaRef {
    let mut fields: Vec<ArrowField> = schema
        .fields
        .iter()
        .map(|f| ArrowField::new(&f.name, arrow_type(&f.ty), f.nullable))
        .collect();
    fields.push(ArrowField::new(SEQ_COLUMN, DataType::UInt64, false));
    fields.push(ArrowField::new(OP_COLUMN, DataType::UInt8, false));
    fields.push(ArrowField::new(
        INGESTED_AT_COLUMN,
        DataType::Timestamp(ArrowUnit::Microsecond, Some(UTC.into())),
        false,
    ));
    Arc::new(Schema::new(fields))
}

/// One row to put in a batch, with its sequence number and ingestion time (µs since the epoch).
#[derive(Debug, Clone, Copy)]
pub struct RowRef<'a> {
    /// The row's sequence number.
    pub seq: u64,
    /// When the row was accepted, in microseconds since the epoch.
    pub ingested_at_us: i64,
    /// The row.
    pub row: &'a Row,
}

/// Builds a `RecordBatch` with [`arrow_schema`]`(schema)` from rows translated with `schema`.
///
/// A row whose values do not fit the schema (wrong count, wrong variant, null in a non-nullable
/// field) is an [`SchemaError::InvalidRow`]: rows come from the translator, so this means a bug
/// or a row translated with another schema version.
pub fn rows_to_batch(
    schema: &TableSchema,
    rows: &[RowRef<'_>],
) -> Result<RecordBatch, SchemaError> {
    let n = schema.fields.len();
    if let Some((i, r)) = rows
        .iter()
        .enumerate()
        .find(|(_, r)| r.row.values.len() != n)
    {
        return Err(SchemaError::InvalidRow {
            row: i,
            reason: format!("{} values for {n} fields", r.row.values.len()),
        });
    }
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(n + 3);
    let mut vals: Vec<&Value> = Vec::with_capacity(rows.len());
    for (fi, field) in schema.fields.iter().enumerate() {
        vals.clear();
        vals.extend(rows.iter().map(|r| &r.row.values[fi]));
        if !field.nullable
            && let Some(i) = vals.iter().position(|v| **v == Value::Null)
        {
            return Err(SchemaError::InvalidRow {
                row: i,
                reason: format!("null in non-nullable field {:?}", field.name),
            });
        }
        let array = build(&field.ty, &vals).map_err(|(i, found)| SchemaError::InvalidRow {
            row: i,
            reason: format!("field {:?} holds {found}, not {}", field.name, field.ty),
        })?;
        columns.push(array);
    }
    columns.push(Arc::new(UInt64Array::from_iter_values(
        rows.iter().map(|r| r.seq),
    )));
    columns.push(Arc::new(UInt8Array::from_iter_values(
        rows.iter().map(|r| r.row.op as u8),
    )));
    columns.push(Arc::new(
        TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.ingested_at_us))
            .with_timezone(UTC),
    ));
    Ok(RecordBatch::try_new(arrow_schema(schema), columns)?)
}

/// A short name of a value's variant, for errors.
fn variant(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Int(_) => "an int",
        Value::UInt(_) => "a uint",
        Value::Float(_) => "a float",
        Value::Str(_) => "a string",
        Value::Bytes(_) => "bytes",
        Value::Timestamp(_) => "a timestamp",
        Value::Date(_) => "a date",
        Value::List(_) => "a list",
    }
}

/// Builds one array of type `ty`; on a misfit, returns its index in `vals` and its variant.
fn build(ty: &FieldType, vals: &[&Value]) -> Result<ArrayRef, (usize, &'static str)> {
    fn prim<T: ArrowPrimitiveType>(
        vals: &[&Value],
        get: impl Fn(&Value) -> Option<T::Native>,
    ) -> Result<PrimitiveArray<T>, (usize, &'static str)> {
        let mut b = PrimitiveBuilder::<T>::with_capacity(vals.len());
        for (i, v) in vals.iter().enumerate() {
            match v {
                Value::Null => b.append_null(),
                v => b.append_value(get(v).ok_or((i, variant(v)))?),
            }
        }
        Ok(b.finish())
    }
    let ts = |v: &Value| match v {
        Value::Timestamp(t) => Some(*t),
        _ => None,
    };
    Ok(match ty {
        FieldType::Bool => {
            let mut b = BooleanBuilder::with_capacity(vals.len());
            for (i, v) in vals.iter().enumerate() {
                match v {
                    Value::Null => b.append_null(),
                    Value::Bool(x) => b.append_value(*x),
                    v => return Err((i, variant(v))),
                }
            }
            Arc::new(b.finish())
        }
        FieldType::Int32 => Arc::new(prim::<Int32Type>(vals, |v| match v {
            Value::Int(x) => i32::try_from(*x).ok(),
            _ => None,
        })?),
        FieldType::Int64 => Arc::new(prim::<Int64Type>(vals, |v| match v {
            Value::Int(x) => Some(*x),
            _ => None,
        })?),
        FieldType::UInt64 => Arc::new(prim::<UInt64Type>(vals, |v| match v {
            Value::UInt(x) => Some(*x),
            _ => None,
        })?),
        FieldType::Float32 => Arc::new(prim::<Float32Type>(vals, |v| match v {
            Value::Float(x) => Some(*x as f32),
            _ => None,
        })?),
        FieldType::Float64 => Arc::new(prim::<Float64Type>(vals, |v| match v {
            Value::Float(x) => Some(*x),
            _ => None,
        })?),
        FieldType::String => {
            let bytes = vals
                .iter()
                .map(|v| match v {
                    Value::Str(s) => s.len(),
                    _ => 0,
                })
                .sum();
            let mut b = StringBuilder::with_capacity(vals.len(), bytes);
            for (i, v) in vals.iter().enumerate() {
                match v {
                    Value::Null => b.append_null(),
                    Value::Str(s) => b.append_value(s),
                    v => return Err((i, variant(v))),
                }
            }
            Arc::new(b.finish())
        }
        FieldType::Binary => {
            let mut b = BinaryBuilder::with_capacity(vals.len(), 0);
            for (i, v) in vals.iter().enumerate() {
                match v {
                    Value::Null => b.append_null(),
                    Value::Bytes(x) => b.append_value(x),
                    v => return Err((i, variant(v))),
                }
            }
            Arc::new(b.finish())
        }
        FieldType::Timestamp(TimeUnit::Second) => {
            Arc::new(prim::<TimestampSecondType>(vals, ts)?.with_timezone(UTC))
        }
        FieldType::Timestamp(TimeUnit::Millisecond) => {
            Arc::new(prim::<TimestampMillisecondType>(vals, ts)?.with_timezone(UTC))
        }
        FieldType::Timestamp(TimeUnit::Microsecond) => {
            Arc::new(prim::<TimestampMicrosecondType>(vals, ts)?.with_timezone(UTC))
        }
        FieldType::Timestamp(TimeUnit::Nanosecond) => {
            Arc::new(prim::<TimestampNanosecondType>(vals, ts)?.with_timezone(UTC))
        }
        FieldType::Date => Arc::new(prim::<Date32Type>(vals, |v| match v {
            Value::Date(d) => Some(*d),
            _ => None,
        })?),
        FieldType::List(inner) => {
            let mut offsets = Vec::with_capacity(vals.len() + 1);
            offsets.push(0i32);
            let mut children: Vec<&Value> = Vec::new();
            let mut valid = Vec::with_capacity(vals.len());
            for (i, v) in vals.iter().enumerate() {
                match v {
                    Value::Null => valid.push(false),
                    Value::List(items) => {
                        children.extend(items.iter());
                        valid.push(true);
                    }
                    v => return Err((i, variant(v))),
                }
                let end = i32::try_from(children.len()).map_err(|_| (i, "too many list items"))?;
                offsets.push(end);
            }
            let child = build(inner, &children).map_err(|(ci, what)| {
                // Report the row holding the bad element, not the element's flat index.
                let row = offsets
                    .partition_point(|&o| o as usize <= ci)
                    .saturating_sub(1);
                (row, what)
            })?;
            let nulls = valid.contains(&false).then(|| NullBuffer::from(valid));
            let field = Arc::new(ArrowField::new_list_field(arrow_type(inner), true));
            let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
            Arc::new(
                ListArray::try_new(field, offsets, child, nulls)
                    .map_err(|_| (0, "an inconsistent list"))?,
            )
        }
    })
}

/// A column of a batch being rendered, its array downcast once.
struct Col<'a> {
    array: &'a dyn Array,
    kind: Kind<'a>,
}

enum Kind<'a> {
    Bool(&'a arrow::array::BooleanArray),
    I32(&'a PrimitiveArray<Int32Type>),
    I64(&'a PrimitiveArray<Int64Type>),
    U8(&'a PrimitiveArray<UInt8Type>),
    U64(&'a PrimitiveArray<UInt64Type>),
    F32(&'a PrimitiveArray<Float32Type>),
    F64(&'a PrimitiveArray<Float64Type>),
    Str(&'a arrow::array::StringArray),
    Bin(&'a arrow::array::BinaryArray),
    /// Timestamp values in `unit`s since the epoch.
    Ts(&'a [i64], TimeUnit),
    Date(&'a Date32Array),
    List(&'a ListArray, Box<Col<'a>>),
}

impl<'a> Col<'a> {
    fn new(name: &str, array: &'a dyn Array) -> Result<Self, SchemaError> {
        let unsupported = || SchemaError::UnsupportedColumn {
            column: name.to_owned(),
            data_type: array.data_type().to_string(),
        };
        let kind = match array.data_type() {
            DataType::Boolean => array.as_boolean_opt().map(Kind::Bool),
            DataType::Int32 => array.as_primitive_opt().map(Kind::I32),
            DataType::Int64 => array.as_primitive_opt().map(Kind::I64),
            DataType::UInt8 => array.as_primitive_opt().map(Kind::U8),
            DataType::UInt64 => array.as_primitive_opt().map(Kind::U64),
            DataType::Float32 => array.as_primitive_opt().map(Kind::F32),
            DataType::Float64 => array.as_primitive_opt().map(Kind::F64),
            DataType::Utf8 => array.as_string_opt().map(Kind::Str),
            DataType::Binary => array.as_binary_opt().map(Kind::Bin),
            DataType::Timestamp(ArrowUnit::Second, _) => array
                .as_primitive_opt::<TimestampSecondType>()
                .map(|a| Kind::Ts(a.values(), TimeUnit::Second)),
            DataType::Timestamp(ArrowUnit::Millisecond, _) => array
                .as_primitive_opt::<TimestampMillisecondType>()
                .map(|a| Kind::Ts(a.values(), TimeUnit::Millisecond)),
            DataType::Timestamp(ArrowUnit::Microsecond, _) => array
                .as_primitive_opt::<TimestampMicrosecondType>()
                .map(|a| Kind::Ts(a.values(), TimeUnit::Microsecond)),
            DataType::Timestamp(ArrowUnit::Nanosecond, _) => array
                .as_primitive_opt::<TimestampNanosecondType>()
                .map(|a| Kind::Ts(a.values(), TimeUnit::Nanosecond)),
            DataType::Date32 => array.as_primitive_opt().map(Kind::Date),
            DataType::List(_) => match array.as_list_opt::<i32>() {
                Some(l) => Some(Kind::List(
                    l,
                    Box::new(Col::new(name, l.values().as_ref())?),
                )),
                None => None,
            },
            _ => None,
        };
        Ok(Col {
            array,
            kind: kind.ok_or_else(unsupported)?,
        })
    }
}

/// One value as it appears in JSON.
enum Cell<'a> {
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    F32(f32),
    F64(f64),
    Str(&'a str),
    /// Rendered text: timestamps, dates, base64.
    Text(String),
    List(&'a Col<'a>, Range<usize>),
}

/// The JSON rendering of row `i` of `col`: the one place where Arrow types meet JSON.
fn cell<'a>(col: &'a Col<'a>, i: usize) -> Cell<'a> {
    if col.array.is_null(i) {
        return Cell::Null;
    }
    match &col.kind {
        Kind::Bool(a) => Cell::Bool(a.value(i)),
        Kind::I32(a) => Cell::I64(i64::from(a.value(i))),
        Kind::I64(a) => Cell::I64(a.value(i)),
        Kind::U8(a) => Cell::U64(u64::from(a.value(i))),
        Kind::U64(a) => Cell::U64(a.value(i)),
        Kind::F32(a) => Cell::F32(a.value(i)),
        Kind::F64(a) => Cell::F64(a.value(i)),
        Kind::Str(a) => Cell::Str(a.value(i)),
        Kind::Bin(a) => Cell::Text(base64::engine::general_purpose::STANDARD.encode(a.value(i))),
        Kind::Ts(values, unit) => {
            let v = values[i];
            match format_timestamp(v, *unit) {
                Some(s) => Cell::Text(s),
                None => Cell::I64(v),
            }
        }
        Kind::Date(a) => {
            let d = a.value(i);
            match chrono::NaiveDate::from_num_days_from_ce_opt(d.saturating_add(719_163)) {
                Some(date) if (0..=9999).contains(&date.year()) => {
                    Cell::Text(date.format("%Y-%m-%d").to_string())
                }
                _ => Cell::I64(i64::from(d)),
            }
        }
        Kind::List(l, child) => {
            let offsets = l.value_offsets();
            Cell::List(child, offsets[i] as usize..offsets[i + 1] as usize)
        }
    }
}

/// RFC 3339 in UTC with exactly the unit's digits, or `None` outside the years 0000-9999.
fn format_timestamp(v: i64, unit: TimeUnit) -> Option<String> {
    let per = unit.per_second();
    let secs = v.div_euclid(per);
    let nanos = (v.rem_euclid(per) * (1_000_000_000 / per)) as u32;
    let dt = chrono::DateTime::from_timestamp(secs, nanos)?;
    if !(0..=9999).contains(&dt.year()) {
        return None;
    }
    let fmt = match unit {
        TimeUnit::Second => SecondsFormat::Secs,
        TimeUnit::Millisecond => SecondsFormat::Millis,
        TimeUnit::Microsecond => SecondsFormat::Micros,
        TimeUnit::Nanosecond => SecondsFormat::Nanos,
    };
    Some(dt.to_rfc3339_opts(fmt, true))
}

fn cell_to_value(c: Cell<'_>) -> J {
    match c {
        Cell::Null => J::Null,
        Cell::Bool(b) => J::Bool(b),
        Cell::I64(i) => J::from(i),
        Cell::U64(u) => J::from(u),
        // Through the shortest decimal of the f32, so that 0.1f32 reads back as 0.1, as the
        // text writer prints it, rather than 0.10000000149011612.
        Cell::F32(f) => f
            .to_string()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(J::Null, J::Number),
        Cell::F64(f) => serde_json::Number::from_f64(f).map_or(J::Null, J::Number),
        Cell::Str(s) => J::String(s.to_owned()),
        Cell::Text(s) => J::String(s),
        Cell::List(col, range) => J::Array(range.map(|j| cell_to_value(cell(col, j))).collect()),
    }
}

fn write_cell(c: Cell<'_>, out: &mut Vec<u8>) -> Result<(), SchemaError> {
    let res = match c {
        Cell::Null => {
            out.extend_from_slice(b"null");
            Ok(())
        }
        Cell::Bool(b) => {
            out.extend_from_slice(if b { b"true" } else { b"false" });
            Ok(())
        }
        Cell::I64(i) => serde_json::to_writer(&mut *out, &i),
        Cell::U64(u) => serde_json::to_writer(&mut *out, &u),
        // serde_json writes NaN and infinities as null.
        Cell::F32(f) => serde_json::to_writer(&mut *out, &f),
        Cell::F64(f) => serde_json::to_writer(&mut *out, &f),
        Cell::Str(s) => serde_json::to_writer(&mut *out, s),
        Cell::Text(s) => serde_json::to_writer(&mut *out, &s),
        Cell::List(col, range) => {
            out.push(b'[');
            for (k, j) in range.enumerate() {
                if k > 0 {
                    out.push(b',');
                }
                write_cell(cell(col, j), out)?;
            }
            out.push(b']');
            Ok(())
        }
    };
    res.map_err(|e| SchemaError::Arrow(format!("writing JSON: {e}")))
}

fn columns(batch: &RecordBatch) -> Result<Vec<Col<'_>>, SchemaError> {
    let schema = batch.schema_ref();
    batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(a, f)| Col::new(f.name(), a.as_ref()))
        .collect()
}

/// Converts a batch (table fields and hidden columns, or any projection of them) into one JSON
/// object per row, keys in column order: timestamps as RFC 3339 UTC with the unit's digits, dates
/// as `YYYY-MM-DD`, binary as padded base64, NaN and infinities as null, lists as arrays.
pub fn batch_to_json(batch: &RecordBatch) -> Result<Vec<Map<String, J>>, SchemaError> {
    let cols = columns(batch)?;
    let schema = batch.schema_ref();
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let mut obj = Map::with_capacity(cols.len());
        for (col, f) in cols.iter().zip(schema.fields()) {
            obj.insert(f.name().clone(), cell_to_value(cell(col, i)));
        }
        out.push(obj);
    }
    Ok(out)
}

/// Appends the rows of `batch` to `out` as JSON text, rendered as by [`batch_to_json`].
///
/// With `ndjson`, each object is followed by `\n`. Otherwise objects are array elements: the
/// caller writes `[` before the first call and `]` after the last, and keeps `first` (initially
/// `true`) across calls so that commas land between elements, also across batches.
pub fn write_json_rows(
    batch: &RecordBatch,
    out: &mut Vec<u8>,
    ndjson: bool,
    first: &mut bool,
) -> Result<(), SchemaError> {
    let cols = columns(batch)?;
    let keys = batch
        .schema_ref()
        .fields()
        .iter()
        .map(|f| {
            let mut k = serde_json::to_vec(f.name())
                .map_err(|e| SchemaError::Arrow(format!("writing JSON: {e}")))?;
            k.push(b':');
            Ok(k)
        })
        .collect::<Result<Vec<_>, SchemaError>>()?;
    for i in 0..batch.num_rows() {
        if !ndjson && !*first {
            out.push(b',');
        }
        *first = false;
        out.push(b'{');
        for (k, (col, key)) in cols.iter().zip(&keys).enumerate() {
            if k > 0 {
                out.push(b',');
            }
            out.extend_from_slice(key);
            write_cell(cell(col, i), out)?;
        }
        out.push(b'}');
        if ndjson {
            out.push(b'\n');
        }
    }
    Ok(())
}

/// The value at row `i` of a key column (bool, integers, strings, binary, timestamps, dates),
/// as the memtable holds it, so that its order-preserving encoding matches the memtable's.
/// `None` for types that cannot be keys.
pub fn key_value_at(array: &dyn Array, i: usize) -> Option<Value> {
    if array.is_null(i) {
        return Some(Value::Null);
    }
    Some(match array.data_type() {
        DataType::Boolean => Value::Bool(array.as_boolean().value(i)),
        DataType::Int32 => Value::Int(i64::from(array.as_primitive::<Int32Type>().value(i))),
        DataType::Int64 => Value::Int(array.as_primitive::<Int64Type>().value(i)),
        DataType::UInt64 => Value::UInt(array.as_primitive::<UInt64Type>().value(i)),
        DataType::Utf8 => Value::Str(array.as_string::<i32>().value(i).to_string()),
        DataType::Binary => Value::Bytes(array.as_binary::<i32>().value(i).to_vec()),
        DataType::Date32 => Value::Date(array.as_primitive::<Date32Type>().value(i)),
        DataType::Timestamp(unit, _) => Value::Timestamp(match unit {
            ArrowUnit::Second => array.as_primitive::<TimestampSecondType>().value(i),
            ArrowUnit::Millisecond => array.as_primitive::<TimestampMillisecondType>().value(i),
            ArrowUnit::Microsecond => array.as_primitive::<TimestampMicrosecondType>().value(i),
            ArrowUnit::Nanosecond => array.as_primitive::<TimestampNanosecondType>().value(i),
        }),
        _ => return None,
    })
}

/// Reshapes a batch read from a file to `target` (a table's current [`arrow_schema`]): columns
/// are matched by name, widened where the type changed, and filled with nulls where the file
/// predates the field. A missing non-nullable column or an impossible cast is an error.
pub fn conform(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch, SchemaError> {
    if batch.schema_ref() == target {
        return Ok(batch.clone());
    }
    let columns = target
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => arrow::compute::cast(c, f.data_type()).map_err(|e| {
                SchemaError::Arrow(format!(
                    "cannot read column {} as {}: {e}",
                    f.name(),
                    f.data_type()
                ))
            }),
            None if f.is_nullable() => Ok(arrow::array::new_null_array(
                f.data_type(),
                batch.num_rows(),
            )),
            None => Err(SchemaError::Arrow(format!(
                "column {} is missing and not nullable",
                f.name()
            ))),
        })
        .collect::<Result<Vec<ArrayRef>, _>>()?;
    RecordBatch::try_new(target.clone(), columns)
        .map_err(|e| SchemaError::Arrow(format!("cannot reshape a batch: {e}")))
}

#[cfg(test)]
#[path = "arrow_tests.rs"]
mod tests;
