//! Schema evolution: which changes to a table's definition are allowed, and inferring
//! definitions from data.
//!
//! A table's schema changes only by new versions, each one readable by everything written
//! under the older ones:
//! - **new fields** go after the existing ones and must be nullable (older rows read as null);
//! - **lossless widenings** of a field's type: `int32 -> int64`, `float32 -> float64`,
//!   `int32 -> float64` (every int32 is exactly a float64; an int64 is not, so that one is
//!   refused);
//! - a non-nullable field may become nullable;
//! - secondary `indexes` may be added or dropped (older files are simply not indexed by a new
//!   one until a compaction rewrites them);
//! - the `evolution` mode itself may change.
//!
//! Anything else (removing, renaming or reordering fields, narrowing a type, changing the
//! primary key, the time column or the partitioning, or the type of a key or time column) would
//! make older files unreadable or older answers wrong, and is refused with the precise reason.
//! A table in `strict` mode refuses every change but its mode.
//!
//! [`infer`] derives a definition from a batch of JSON events, for tables in `infer` mode (and
//! for creating tables from their first batch when the server allows it).

use std::collections::HashMap;

use serde_json::Value as J;

use super::error::{Location, SchemaError, shown_name};
use super::translate::{BatchLimits, BodyFormat, OP_FIELD, malformed};
use super::types::{Evolution, Field, FieldType, PartitionBy, TableSchema};

/// Whether values of type `from` can be read as `to` without losing anything.
pub fn widens(from: &FieldType, to: &FieldType) -> bool {
    use FieldType::*;
    match (from, to) {
        (a, b) if a == b => true,
        (Int32, Int64) | (Float32, Float64) | (Int32, Float64) => true,
        (List(a), List(b)) => widens(a, b),
        _ => false,
    }
}

/// Checks that `new` may follow `old` as the next schema version (mode rules aside: see
/// [`check_mode`]). Returns the changes in words, or why the change is refused.
pub fn check_change(old: &TableSchema, new: &TableSchema) -> Result<Vec<String>, String> {
    new.validate()?;
    if new.primary_key != old.primary_key {
        return Err(format!(
            "the primary key cannot change (it is {:?}, the new definition says {:?})",
            old.primary_key, new.primary_key
        ));
    }
    if new.time_column != old.time_column {
        return Err(format!(
            "the time column cannot change (it is {:?}, the new definition says {:?})",
            old.time_column, new.time_column
        ));
    }
    if new.partition_by != old.partition_by {
        return Err(format!(
            "partition_by cannot change (it is {:?}, the new definition says {:?})",
            old.partition_by, new.partition_by
        ));
    }
    let mut changes = Vec::new();
    for (i, of) in old.fields.iter().enumerate() {
        let Some(nf) = new.fields.get(i) else {
            return Err(match new.field(&of.name) {
                Some(_) => format!(
                    "field {:?} moved: existing fields keep their order and new fields go at the end",
                    of.name
                ),
                None => format!(
                    "field {:?} is missing: fields cannot be removed (files hold it)",
                    of.name
                ),
            });
        };
        if nf.name != of.name {
            return Err(match new.field(&of.name) {
                Some(_) => format!(
                    "field {:?} moved: existing fields keep their order and new fields go at the end",
                    of.name
                ),
                None => format!(
                    "field {:?} is missing (found {:?} in its place): fields cannot be removed or renamed",
                    of.name, nf.name
                ),
            });
        }
        if nf.ty != of.ty {
            let fixed = old.primary_key.contains(&of.name)
                || old.time_column.as_deref() == Some(of.name.as_str());
            if fixed {
                return Err(format!(
                    "field {:?} is a key or time column: its type {} cannot change",
                    of.name, of.ty
                ));
            }
            if !widens(&of.ty, &nf.ty) {
                return Err(format!(
                    "field {:?} cannot change from {} to {}: only int32 -> int64, float32 -> float64 and int32 -> float64 widen without loss",
                    of.name, of.ty, nf.ty
                ));
            }
            changes.push(format!(
                "field {:?} widened from {} to {}",
                of.name, of.ty, nf.ty
            ));
        }
        if of.nullable && !nf.nullable {
            return Err(format!(
                "field {:?} cannot become non-nullable: rows already stored may be null",
                of.name
            ));
        }
        if !of.nullable && nf.nullable {
            changes.push(format!("field {:?} became nullable", of.name));
        }
    }
    for nf in &new.fields[old.fields.len()..] {
        if !nf.nullable {
            return Err(format!(
                "new field {:?} must be nullable: rows written before it have no value",
                nf.name
            ));
        }
        changes.push(format!("field {:?} ({}) added", nf.name, nf.ty));
    }
    for i in &new.indexes {
        if !old.indexes.contains(i) {
            changes.push(format!("index on {i:?} added"));
        }
    }
    for i in &old.indexes {
        if !new.indexes.contains(i) {
            changes.push(format!("index on {i:?} dropped"));
        }
    }
    if new.evolution != old.evolution {
        changes.push(format!(
            "evolution changed from {} to {}",
            mode_name(old.evolution),
            mode_name(new.evolution)
        ));
    }
    Ok(changes)
}

fn mode_name(m: Evolution) -> &'static str {
    match m {
        Evolution::Additive => "additive",
        Evolution::Strict => "strict",
        Evolution::Infer => "infer",
    }
}

/// Applies the table's evolution mode to a change [`check_change`] accepted: a `strict` table
/// accepts only a change of its mode.
pub fn check_mode(old: &TableSchema, new: &TableSchema) -> Result<(), String> {
    if old.evolution != Evolution::Strict {
        return Ok(());
    }
    let mut same_but_mode = new.clone();
    same_but_mode.evolution = old.evolution;
    if same_but_mode == *old {
        return Ok(());
    }
    let changes = check_change(old, new)?;
    let what = changes
        .into_iter()
        .find(|c| !c.starts_with("evolution changed"))
        .unwrap_or_else(|| "the definition changed".into());
    Err(format!(
        "the table's evolution mode is strict, which refuses every change ({what}); set \"evolution\" to \"additive\" first"
    ))
}

/// The type a JSON value suggests; `None` for null and for empty arrays.
fn suggested(v: &J, field: &str, at: Location) -> Result<Option<FieldType>, SchemaError> {
    Ok(match v {
        J::Null => None,
        J::Bool(_) => Some(FieldType::Bool),
        // Int32 only says the value fits one (an int32 field needs no widening for it); new
        // fields get int64.
        J::Number(n) if n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()) => {
            Some(FieldType::Int32)
        }
        J::Number(n) if n.is_i64() => Some(FieldType::Int64),
        J::Number(n) if n.is_u64() => Some(FieldType::UInt64),
        J::Number(_) => Some(FieldType::Float64),
        J::String(_) => Some(FieldType::String),
        J::Array(items) => {
            let mut elem: Option<FieldType> = None;
            for item in items {
                if matches!(item, J::Array(_) | J::Object(_)) {
                    return Err(cannot_infer(field, at, "nested arrays and objects"));
                }
                if let Some(t) = suggested(item, field, at)? {
                    elem = Some(match elem {
                        None => t,
                        Some(e) => unify(&e, &t)
                            .ok_or_else(|| cannot_infer(field, at, "arrays mixing value kinds"))?,
                    });
                }
            }
            elem.map(|e| FieldType::List(Box::new(e)))
        }
        J::Object(_) => return Err(cannot_infer(field, at, "objects")),
    })
}

fn cannot_infer(field: &str, at: Location, what: &str) -> SchemaError {
    SchemaError::CannotInfer {
        at,
        field: shown_name(field),
        reason: format!(
            "{what} have no inferred type; declare the field with PUT /v1/tables/{{table}}"
        ),
    }
}

/// The type that holds values of both `a` and `b` (for inferring), if any.
fn unify(a: &FieldType, b: &FieldType) -> Option<FieldType> {
    use FieldType::*;
    Some(match (a, b) {
        (a, b) if a == b => a.clone(),
        (Int32, Int64) | (Int64, Int32) => Int64,
        (Int32 | Int64 | UInt64, Float64) | (Float64, Int32 | Int64 | UInt64) => Float64,
        (Int32 | Int64, UInt64) | (UInt64, Int32 | Int64) => Float64,
        (List(x), List(y)) => List(Box::new(unify(x, y)?)),
        _ => return None,
    })
}

/// The type a new field gets for values suggesting `seen`: integers are int64 whatever their
/// size, so that later values rarely need a widening.
fn for_new_field(seen: FieldType) -> FieldType {
    match seen {
        FieldType::Int32 => FieldType::Int64,
        FieldType::List(inner) => FieldType::List(Box::new(for_new_field(*inner))),
        other => other,
    }
}

/// How an existing field's type must change to hold a value suggesting `seen`, if it can
/// (a lossless widening); `None` when it needs no change or cannot change. An indexed field
/// is never widened to a type that cannot be indexed.
fn widened_for(current: &FieldType, seen: &FieldType) -> Option<FieldType> {
    use FieldType::*;
    // A float32 field takes fractions already (rounded to float32), so it never needs to widen.
    match (current, seen) {
        (Int32, Int64) => Some(Int64),
        (Int32, Float64) => Some(Float64),
        _ => None,
    }
}

/// Reads the events of a body as JSON values (for inference only: the translator does the
/// checked conversion afterwards).
fn events(body: &[u8], format: BodyFormat, limits: &BatchLimits) -> Result<Vec<J>, SchemaError> {
    let out = match format {
        BodyFormat::Json => {
            match serde_json::from_slice::<J>(body).map_err(|e| malformed(&e, None))? {
                J::Array(items) => items,
                other => vec![other],
            }
        }
        BodyFormat::Ndjson => {
            let mut out = Vec::new();
            for (i, raw) in body.split(|b| *b == b'\n').enumerate() {
                let line = raw.strip_suffix(b"\r").unwrap_or(raw);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                out.push(serde_json::from_slice(line).map_err(|e| malformed(&e, Some(i + 1)))?);
            }
            out
        }
    };
    if out.len() > limits.max_rows {
        return Err(SchemaError::TooManyRows {
            max: limits.max_rows,
        });
    }
    Ok(out)
}

/// The definition a batch calls for: `current` (when the table exists) with the fields the
/// events bring added (nullable, in order of first appearance) and existing fields widened
/// where the events need it and a lossless widening exists (an existing field whose values
/// suggest no single type is left to the translator); or, for a new table, a definition
/// of nullable fields, append-only, in `infer` mode. Fields seen only as null are left out
/// (a null is the same as an absent field). Returns `None` when nothing would change.
///
/// Types inferred: `bool`, `int64` (`uint64` above its range), `float64`, `string`,
/// `list<T>`; objects and nested arrays are refused with a precise error.
pub fn infer(
    current: Option<&TableSchema>,
    body: &[u8],
    format: BodyFormat,
    limits: &BatchLimits,
) -> Result<Option<TableSchema>, SchemaError> {
    let events = events(body, format, limits)?;
    // Field name -> inferred type, in order of first appearance.
    let mut order: Vec<String> = Vec::new();
    let mut types: HashMap<String, Option<FieldType>> = HashMap::new();
    // Existing fields whose values suggest no single type: left as they are (the translator
    // judges their values by the field's type, which may accept them, e.g. timestamps given
    // as text and as integers).
    let mut unsure: std::collections::HashSet<String> = Default::default();
    let exists = |name: &str| current.is_some_and(|c| c.field(name).is_some());
    for (row, ev) in events.iter().enumerate() {
        let at = Location { row, line: None };
        let J::Object(map) = ev else {
            continue; // the translator reports it precisely
        };
        for (name, v) in map {
            if name == OP_FIELD || unsure.contains(name) {
                continue;
            }
            let t = match suggested(v, name, at) {
                Ok(t) => t,
                Err(_) if exists(name) => {
                    unsure.insert(name.clone());
                    continue;
                }
                Err(e) => return Err(e),
            };
            match types.get_mut(name) {
                None => {
                    order.push(name.clone());
                    types.insert(name.clone(), t);
                }
                Some(slot) => {
                    if let Some(t) = t {
                        *slot = Some(match slot.take() {
                            None => t,
                            Some(prev) => match unify(&prev, &t) {
                                Some(u) => u,
                                None if exists(name) => {
                                    unsure.insert(name.clone());
                                    continue;
                                }
                                None => {
                                    return Err(SchemaError::CannotInfer {
                                        at,
                                        field: shown_name(name),
                                        reason: format!(
                                            "values of types {prev} and {t} in one field have no common type"
                                        ),
                                    });
                                }
                            },
                        });
                    }
                }
            }
        }
    }
    let mut next = match current {
        Some(c) => c.clone(),
        None => TableSchema {
            fields: Vec::new(),
            primary_key: Vec::new(),
            time_column: None,
            partition_by: PartitionBy::None,
            indexes: Vec::new(),
            evolution: Evolution::Infer,
        },
    };
    for name in order {
        let Some(Some(seen)) = types.remove(&name) else {
            continue;
        };
        if unsure.contains(&name) {
            continue;
        }
        let indexed = next.indexes.contains(&name);
        match next.fields.iter_mut().find(|f| f.name == name) {
            Some(f) => {
                let fixed = next.primary_key.contains(&f.name)
                    || next.time_column.as_deref() == Some(f.name.as_str());
                if !fixed
                    && let Some(w) = widened_for(&f.ty, &seen)
                    && (!indexed || w.is_key_type())
                {
                    f.ty = w;
                }
            }
            None => next.fields.push(Field {
                name,
                ty: for_new_field(seen),
                nullable: true,
            }),
        }
    }
    if current.is_some_and(|c| *c == next) || next.fields.is_empty() {
        return Ok(None);
    }
    next.validate().map_err(SchemaError::InvalidDefinition)?;
    Ok(Some(next))
}

#[cfg(test)]
#[path = "evolve_tests.rs"]
mod tests;
