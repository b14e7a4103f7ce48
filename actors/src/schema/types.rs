//! Table definitions: fields, types, keys, time column and partitioning.
//!
//! This is what `PUT /v1/tables/{table}` accepts and what the catalog stores. A definition is
//! checked by [`TableSchema::validate`] before it is registered.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Unit of a timestamp field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeUnit {
    /// seconds
    Second,
    /// milliseconds
    Millisecond,
    /// microseconds
    Microsecond,
    /// nanoseconds
    Nanosecond,
}

impl TimeUnit {
    /// How many of this unit make one second.
    pub fn per_second(self) -> i64 {
        match self {
            TimeUnit::Second => 1,
            TimeUnit::Millisecond => 1_000,
            TimeUnit::Microsecond => 1_000_000,
            TimeUnit::Nanosecond => 1_000_000_000,
        }
    }
}

/// The type of a field. Written in JSON as a string: `bool`, `int32`, `int64`, `uint64`,
/// `float32`, `float64`, `string`, `binary`, `timestamp_s|ms|us|ns`, `date`, `list<T>`.
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
    /// `string` (UTF-8)
    String,
    /// `binary` (base64 in JSON)
    Binary,
    /// `timestamp_s|ms|us|ns` (RFC 3339 string or integer in the unit in JSON)
    Timestamp(TimeUnit),
    /// `date` (`YYYY-MM-DD` or days since the epoch in JSON)
    Date,
    /// `list<T>` (JSON array)
    List(Box<FieldType>),
}

impl FieldType {
    /// Parses the type grammar above.
    pub fn parse(s: &str) -> Result<Self, String> {
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
            _ => {
                if let Some(inner) = s.strip_prefix("list<").and_then(|r| r.strip_suffix('>')) {
                    let inner = FieldType::parse(inner)?;
                    if matches!(inner, FieldType::List(_)) {
                        return Err("nested lists are not supported".into());
                    }
                    FieldType::List(Box::new(inner))
                } else {
                    return Err(format!(
                        "unknown type {s:?}; expected one of bool, int32, int64, uint64, float32, \
                         float64, string, binary, timestamp_s, timestamp_ms, timestamp_us, \
                         timestamp_ns, date, list<T>"
                    ));
                }
            }
        })
    }

    /// Whether values of this type can be part of a primary key or be the time column's order.
    pub fn is_key_type(&self) -> bool {
        !matches!(
            self,
            FieldType::List(_) | FieldType::Float32 | FieldType::Float64
        )
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
        FieldType::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Field {
    /// Column name: `[A-Za-z_][A-Za-z0-9_]{0,127}`, not starting with `_` (reserved for hidden
    /// columns such as `_seq`).
    pub name: String,
    /// Column type.
    #[serde(rename = "type")]
    pub ty: FieldType,
    /// Whether the column may be null or absent. Default: true.
    #[serde(default = "default_true")]
    pub nullable: bool,
}

fn default_true() -> bool {
    true
}

/// How files of a table are partitioned by its time column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionBy {
    /// One partition (`all`).
    #[default]
    None,
    /// `YYYY-MM-DDTHH`
    Hour,
    /// `YYYY-MM-DD`
    Day,
    /// `YYYY-MM`
    Month,
}

/// How a table's schema may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Evolution {
    /// New nullable fields and lossless widening are accepted as new versions.
    #[default]
    Additive,
    /// Any change is refused.
    Strict,
    /// Tables are created and evolved from the data.
    Infer,
}

/// A table's definition, as given to `PUT /v1/tables/{table}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSchema {
    /// Columns in order.
    pub fields: Vec<Field>,
    /// Primary key columns; empty for an append-only table.
    #[serde(default)]
    pub primary_key: Vec<String>,
    /// Column that orders events in time (a timestamp or date column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_column: Option<String>,
    /// Partitioning of files by the time column. Default: none.
    #[serde(default)]
    pub partition_by: PartitionBy,
    /// Columns with a secondary index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub indexes: Vec<String>,
    /// Evolution mode. Default: additive.
    #[serde(default)]
    pub evolution: Evolution,
}

/// Largest number of fields a table may have.
pub const MAX_FIELDS: usize = 1024;

impl TableSchema {
    /// Checks the definition: field names valid and unique, keys and time column existing and of
    /// a suitable type, partitioning only with a non-null time column.
    pub fn validate(&self) -> Result<(), String> {
        if self.fields.is_empty() {
            return Err("a table needs at least one field".into());
        }
        if self.fields.len() > MAX_FIELDS {
            return Err(format!("a table may have at most {MAX_FIELDS} fields"));
        }
        let mut seen = std::collections::HashSet::new();
        for f in &self.fields {
            check_field_name(&f.name)?;
            if !seen.insert(f.name.as_str()) {
                return Err(format!("field {:?} is defined twice", f.name));
            }
        }
        let mut key_seen = std::collections::HashSet::new();
        for k in &self.primary_key {
            let f = self
                .field(k)
                .ok_or_else(|| format!("primary key column {k:?} is not a field"))?;
            if !f.ty.is_key_type() {
                return Err(format!(
                    "primary key column {k:?} has type {}, which cannot be a key",
                    f.ty
                ));
            }
            if f.nullable {
                return Err(format!(
                    "primary key column {k:?} must be declared \"nullable\": false"
                ));
            }
            if !key_seen.insert(k.as_str()) {
                return Err(format!("primary key column {k:?} is listed twice"));
            }
        }
        if let Some(tc) = &self.time_column {
            let f = self
                .field(tc)
                .ok_or_else(|| format!("time column {tc:?} is not a field"))?;
            if !matches!(f.ty, FieldType::Timestamp(_) | FieldType::Date) {
                return Err(format!(
                    "time column {tc:?} has type {}; it must be a timestamp or a date",
                    f.ty
                ));
            }
            if self.partition_by != PartitionBy::None && f.nullable {
                return Err(format!(
                    "time column {tc:?} partitions the table, so it must be declared \"nullable\": false"
                ));
            }
        } else if self.partition_by != PartitionBy::None {
            return Err("partition_by needs a time_column".into());
        }
        let mut index_seen = std::collections::HashSet::new();
        for i in &self.indexes {
            let f = self
                .field(i)
                .ok_or_else(|| format!("indexed column {i:?} is not a field"))?;
            if !f.ty.is_key_type() {
                return Err(format!(
                    "indexed column {i:?} has type {}, which cannot be indexed (bool, integers, \
                     string, binary, timestamps and dates can)",
                    f.ty
                ));
            }
            if !index_seen.insert(i.as_str()) {
                return Err(format!("indexed column {i:?} is listed twice"));
            }
        }
        Ok(())
    }

    /// The field named `name`.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// The position of the field named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }
}

fn check_field_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = match chars.next() {
        Some(c) if c.is_ascii_alphabetic() => {
            name.len() <= 128 && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid field name {:?}: use [A-Za-z][A-Za-z0-9_]*, at most 128 characters \
             (names starting with '_' are reserved)",
            name.chars().take(80).collect::<String>()
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(json: &str) -> TableSchema {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn parses_the_readme_example() {
        let s = parse(
            r#"{"fields":[{"name":"id","type":"int64","nullable":false},{"name":"ts","type":"timestamp_ms","nullable":false},{"name":"msg","type":"string"},{"name":"tags","type":"list<string>"}],"primary_key":["id"],"time_column":"ts","partition_by":"day"}"#,
        );
        s.validate().unwrap();
        assert_eq!(s.fields[3].ty, FieldType::List(Box::new(FieldType::String)));
        let back: TableSchema = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn rejects_bad_definitions() {
        let bad = [
            r#"{"fields":[]}"#,
            r#"{"fields":[{"name":"_seq","type":"int64"}]}"#,
            r#"{"fields":[{"name":"a","type":"int64"},{"name":"a","type":"int64"}]}"#,
            r#"{"fields":[{"name":"a","type":"int64"}],"primary_key":["b"]}"#,
            r#"{"fields":[{"name":"a","type":"int64"}],"primary_key":["a"]}"#,
            r#"{"fields":[{"name":"a","type":"int64"}],"time_column":"a"}"#,
            r#"{"fields":[{"name":"a","type":"int64"}],"partition_by":"day"}"#,
            r#"{"fields":[{"name":"t","type":"timestamp_ms"}],"time_column":"t","partition_by":"day"}"#,
            r#"{"fields":[{"name":"a b","type":"int64"}]}"#,
            r#"{"fields":[{"name":"a","type":"float64"}],"indexes":["a"]}"#,
            r#"{"fields":[{"name":"a","type":"int64"}],"indexes":["a","a"]}"#,
            r#"{"fields":[{"name":"a","type":"int64"}],"indexes":["b"]}"#,
        ];
        for b in bad {
            assert!(parse(b).validate().is_err(), "{b} accepted");
        }
        assert!(
            serde_json::from_str::<TableSchema>(r#"{"fields":[{"name":"a","type":"int128"}]}"#)
                .is_err()
        );
        assert!(
            serde_json::from_str::<TableSchema>(
                r#"{"fields":[{"name":"a","type":"int64"}],"bogus":1}"#
            )
            .is_err()
        );
    }
}
