//! Query filters: parsed from JSON, typed by the table's schema, evaluated on Arrow batches, and
//! checked against statistics (min, max, null count) to skip files and row groups that cannot
//! hold a match.
//!
//! ```json
//! {"and": [{"column": "host", "op": "=", "value": "web-1"},
//!          {"or": [{"column": "status", "op": ">=", "value": 500},
//!                  {"column": "error", "op": "is_null", "value": false}]},
//!          {"column": "region", "op": "in", "value": ["eu", "us"]}]}
//! ```
//!
//! Operators: `=`, `!=`, `<`, `<=`, `>`, `>=` (a value of the column's type, written as in
//! events), `in` (an array of such values), `is_null` (`"value": true`, the default, or
//! `false` for "is not null"). Comparisons with a null column value are false, as in SQL.

use std::sync::Arc;

use alluvium_actors::row::Value;
use alluvium_actors::schema::arrow::{RowRef, rows_to_batch};
use alluvium_actors::schema::translate::{BatchLimits, BodyFormat, parse_batch};
use alluvium_actors::schema::{Field, TableSchema};
use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, Scalar};
use arrow::compute::kernels::boolean::{and_kleene, or_kleene};
use arrow::compute::kernels::cmp;
use arrow::compute::{is_not_null, is_null};
use serde::Deserialize;
use serde_json::Value as J;

use crate::PipelineError;

/// Most conditions in one filter (leaves and groups), and most values in one `in`.
const MAX_NODES: usize = 256;
const MAX_IN_VALUES: usize = 4096;

/// A filter as written in a query.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum FilterSpec {
    /// Every condition holds.
    And {
        /// The conditions.
        and: Vec<FilterSpec>,
    },
    /// At least one condition holds.
    Or {
        /// The conditions.
        or: Vec<FilterSpec>,
    },
    /// One column compared with a value.
    Condition {
        /// The column.
        column: String,
        /// `=`, `!=`, `<`, `<=`, `>`, `>=`, `in`, `is_null`.
        op: String,
        /// The value (an array for `in`, a bool for `is_null`).
        #[serde(default)]
        value: Option<J>,
    },
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// A typed filter over the columns of a table.
#[derive(Debug, Clone)]
pub enum Filter {
    /// Every condition holds (an empty `And` is true).
    And(Vec<Filter>),
    /// At least one condition holds.
    Or(Vec<Filter>),
    /// `column op value`; `value` is a one-element array of the column's type.
    Cmp {
        /// The column.
        column: String,
        /// The operator.
        op: CmpOp,
        /// The value.
        value: ArrayRef,
    },
    /// `column in values`; `values` is an array of the column's type.
    In {
        /// The column.
        column: String,
        /// The values.
        values: ArrayRef,
    },
    /// `column is null` (or `is not null` when `negated`).
    IsNull {
        /// The column.
        column: String,
        /// `is not null`.
        negated: bool,
    },
}

fn invalid(msg: impl Into<String>) -> PipelineError {
    PipelineError::InvalidFilter(msg.into())
}

/// A table of one nullable column like `field`: how single values are typed and built.
fn single_field(field: &Field) -> TableSchema {
    TableSchema {
        fields: vec![Field {
            nullable: true,
            ..field.clone()
        }],
        primary_key: Vec::new(),
        time_column: None,
        partition_by: Default::default(),
        indexes: Vec::new(),
        evolution: Default::default(),
    }
}

/// Types JSON values as the column `field`: one array of them, with the error the events path
/// would give for a value that does not fit.
fn typed(field: &Field, values: Vec<J>) -> Result<ArrayRef, PipelineError> {
    let schema = single_field(field);
    let events: Vec<J> = values
        .into_iter()
        .map(|v| {
            if v.is_null() {
                Err(invalid(format!(
                    "a null value cannot be compared with column {:?}; use \"op\": \"is_null\"",
                    field.name
                )))
            } else {
                Ok(J::Object([(field.name.clone(), v)].into_iter().collect()))
            }
        })
        .collect::<Result<_, _>>()?;
    let body = serde_json::to_vec(&J::Array(events)).map_err(|e| invalid(e.to_string()))?;
    let rows = parse_batch(&body, BodyFormat::Json, &schema, &BatchLimits::default())
        .map_err(|e| invalid(format!("filter value for column {:?}: {e}", field.name)))?;
    let refs: Vec<RowRef<'_>> = rows
        .iter()
        .map(|row| RowRef {
            seq: 0,
            ingested_at_us: 0,
            row,
        })
        .collect();
    let batch = rows_to_batch(&schema, &refs)?;
    Ok(batch.column(0).clone())
}

impl Filter {
    /// Types `spec` against `schema`: every column must exist, every value must fit its
    /// column's type.
    pub fn parse(spec: FilterSpec, schema: &TableSchema) -> Result<Filter, PipelineError> {
        let mut nodes = 0;
        Self::parse_node(spec, schema, &mut nodes)
    }

    fn parse_node(
        spec: FilterSpec,
        schema: &TableSchema,
        nodes: &mut usize,
    ) -> Result<Filter, PipelineError> {
        *nodes += 1;
        if *nodes > MAX_NODES {
            return Err(invalid(format!(
                "a filter may have at most {MAX_NODES} conditions"
            )));
        }
        match spec {
            FilterSpec::And { and } => Ok(Filter::And(
                and.into_iter()
                    .map(|s| Self::parse_node(s, schema, nodes))
                    .collect::<Result<_, _>>()?,
            )),
            FilterSpec::Or { or } => {
                if or.is_empty() {
                    return Err(invalid("\"or\" needs at least one condition"));
                }
                Ok(Filter::Or(
                    or.into_iter()
                        .map(|s| Self::parse_node(s, schema, nodes))
                        .collect::<Result<_, _>>()?,
                ))
            }
            FilterSpec::Condition { column, op, value } => {
                let field = schema.field(&column).ok_or_else(|| {
                    PipelineError::UnknownColumn(column.chars().take(128).collect())
                })?;
                if matches!(field.ty, alluvium_actors::schema::FieldType::List(_))
                    && op != "is_null"
                {
                    return Err(invalid(format!(
                        "column {column:?} is a list: only \"is_null\" applies to it"
                    )));
                }
                let cmp = match op.as_str() {
                    "=" => Some(CmpOp::Eq),
                    "!=" => Some(CmpOp::Ne),
                    "<" => Some(CmpOp::Lt),
                    "<=" => Some(CmpOp::Le),
                    ">" => Some(CmpOp::Gt),
                    ">=" => Some(CmpOp::Ge),
                    _ => None,
                };
                if let Some(op) = cmp {
                    let value = value.ok_or_else(|| {
                        invalid(format!(
                            "condition on {column:?} needs a \"value\" that is not null (use \"op\": \"is_null\" for nulls)"
                        ))
                    })?;
                    let value = typed(field, vec![value])?;
                    return Ok(Filter::Cmp { column, op, value });
                }
                match op.as_str() {
                    "in" => {
                        let Some(J::Array(values)) = value else {
                            return Err(invalid(format!(
                                "\"in\" on {column:?} needs an array \"value\""
                            )));
                        };
                        if values.len() > MAX_IN_VALUES {
                            return Err(invalid(format!(
                                "\"in\" takes at most {MAX_IN_VALUES} values"
                            )));
                        }
                        let values = typed(field, values)?;
                        Ok(Filter::In { column, values })
                    }
                    "is_null" => match value {
                        None | Some(J::Bool(true)) => Ok(Filter::IsNull {
                            column,
                            negated: false,
                        }),
                        Some(J::Bool(false)) => Ok(Filter::IsNull {
                            column,
                            negated: true,
                        }),
                        Some(_) => Err(invalid("\"is_null\" takes true or false as its value")),
                    },
                    other => Err(invalid(format!(
                        "unknown operator {:?}: use =, !=, <, <=, >, >=, in or is_null",
                        other.chars().take(16).collect::<String>()
                    ))),
                }
            }
        }
    }

    /// The columns the filter reads.
    pub fn columns(&self, out: &mut Vec<String>) {
        match self {
            Filter::And(fs) | Filter::Or(fs) => fs.iter().for_each(|f| f.columns(out)),
            Filter::Cmp { column, .. }
            | Filter::In { column, .. }
            | Filter::IsNull { column, .. } => {
                if !out.contains(column) {
                    out.push(column.clone());
                }
            }
        }
    }

    /// A filter implied by this one that reads only `allowed` columns (true where nothing
    /// can be said): what may prune versions of upsert tables, where only key columns are the
    /// same in every version of a row.
    pub fn restrict(&self, allowed: &[String]) -> Filter {
        match self {
            Filter::And(fs) => Filter::And(fs.iter().map(|f| f.restrict(allowed)).collect()),
            Filter::Or(fs) => {
                let parts: Vec<Filter> = fs.iter().map(|f| f.restrict(allowed)).collect();
                if parts.iter().any(Filter::is_true) {
                    Filter::And(Vec::new())
                } else {
                    Filter::Or(parts)
                }
            }
            Filter::Cmp { column, .. }
            | Filter::In { column, .. }
            | Filter::IsNull { column, .. } => {
                if allowed.contains(column) {
                    self.clone()
                } else {
                    Filter::And(Vec::new())
                }
            }
        }
    }

    /// Whether the filter is trivially true (an empty `And`, or only such).
    pub fn is_true(&self) -> bool {
        match self {
            Filter::And(fs) => fs.iter().all(Filter::is_true),
            _ => false,
        }
    }

    /// Evaluates the filter on every row of `batch` (which holds the filter's columns).
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<BooleanArray, PipelineError> {
        let err = |e: arrow::error::ArrowError| PipelineError::Unavailable(format!("filter: {e}"));
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| PipelineError::UnknownColumn(name.to_string()))
        };
        Ok(match self {
            Filter::And(fs) => {
                let mut acc = BooleanArray::from(vec![true; batch.num_rows()]);
                for f in fs {
                    acc = and_kleene(&acc, &f.evaluate(batch)?).map_err(err)?;
                }
                acc
            }
            Filter::Or(fs) => {
                let mut acc = BooleanArray::from(vec![false; batch.num_rows()]);
                for f in fs {
                    acc = or_kleene(&acc, &f.evaluate(batch)?).map_err(err)?;
                }
                acc
            }
            Filter::Cmp {
                column: c,
                op,
                value,
            } => compare(&column(c)?, *op, &Scalar::new(value.clone())).map_err(err)?,
            Filter::In { column: c, values } => {
                let col = column(c)?;
                let mut acc = BooleanArray::from(vec![false; batch.num_rows()]);
                for i in 0..values.len() {
                    let eq = cmp::eq(&col, &Scalar::new(values.slice(i, 1))).map_err(err)?;
                    acc = or_kleene(&acc, &eq).map_err(err)?;
                }
                acc
            }
            Filter::IsNull { column: c, negated } => {
                let col = column(c)?;
                if *negated {
                    is_not_null(&col).map_err(err)?
                } else {
                    is_null(&col).map_err(err)?
                }
            }
        })
    }

    /// Whether a group of rows whose statistics `stats` gives may hold a match; `false` only
    /// when it certainly does not.
    pub fn may_match(&self, stats: &dyn Fn(&str) -> Option<ColumnStats>) -> bool {
        match self {
            Filter::And(fs) => fs.iter().all(|f| f.may_match(stats)),
            Filter::Or(fs) => fs.iter().any(|f| f.may_match(stats)),
            Filter::Cmp { column, op, value } => {
                let Some(s) = stats(column) else { return true };
                if s.null_count == Some(s.rows) {
                    return false; // all null: no comparison holds
                }
                let (Some(min), Some(max)) = (&s.min, &s.max) else {
                    return true;
                };
                let lt = |a: &ArrayRef, b: &ArrayRef| scalar_cmp(a, CmpOp::Lt, b);
                match op {
                    CmpOp::Eq => !(lt(value, min) || lt(max, value)),
                    CmpOp::Ne => {
                        !(scalar_cmp(min, CmpOp::Eq, value) && scalar_cmp(max, CmpOp::Eq, value))
                    }
                    CmpOp::Lt => lt(min, value),
                    CmpOp::Le => !lt(value, min),
                    CmpOp::Gt => lt(value, max),
                    CmpOp::Ge => !lt(max, value),
                }
            }
            Filter::In { column, values } => {
                let Some(s) = stats(column) else { return true };
                if s.null_count == Some(s.rows) {
                    return false;
                }
                let (Some(min), Some(max)) = (&s.min, &s.max) else {
                    return true;
                };
                (0..values.len()).any(|i| {
                    let v = values.slice(i, 1);
                    !(scalar_cmp(&v, CmpOp::Lt, min) || scalar_cmp(max, CmpOp::Lt, &v))
                })
            }
            Filter::IsNull { column, negated } => {
                let Some(s) = stats(column) else { return true };
                match (s.null_count, negated) {
                    (Some(n), false) => n > 0,
                    (Some(n), true) => n < s.rows,
                    (None, _) => true,
                }
            }
        }
    }

    /// The values the filter requires `column` to equal, when it pins the column to a few
    /// (`=` or `in`, possibly inside an `and`): what bloom filters and key ranges can check.
    pub fn required_values(&self, column: &str) -> Option<ArrayRef> {
        match self {
            Filter::Cmp {
                column: c,
                op: CmpOp::Eq,
                value,
            } if c == column => Some(value.clone()),
            Filter::In { column: c, values } if c == column => Some(values.clone()),
            Filter::And(fs) => fs.iter().find_map(|f| f.required_values(column)),
            _ => None,
        }
    }
}

/// What statistics say of one column in a group of rows.
#[derive(Debug, Clone)]
pub struct ColumnStats {
    /// Smallest value (one-element array), if known.
    pub min: Option<ArrayRef>,
    /// Largest value, if known.
    pub max: Option<ArrayRef>,
    /// Nulls among the rows, if known.
    pub null_count: Option<u64>,
    /// Rows in the group.
    pub rows: u64,
}

fn compare(
    col: &ArrayRef,
    op: CmpOp,
    value: &Scalar<ArrayRef>,
) -> Result<BooleanArray, arrow::error::ArrowError> {
    match op {
        CmpOp::Eq => cmp::eq(col, value),
        CmpOp::Ne => cmp::neq(col, value),
        CmpOp::Lt => cmp::lt(col, value),
        CmpOp::Le => cmp::lt_eq(col, value),
        CmpOp::Gt => cmp::gt(col, value),
        CmpOp::Ge => cmp::gt_eq(col, value),
    }
}

/// `a op b` for one-element arrays; `false` when they cannot be compared (which makes
/// `may_match` keep the group).
fn scalar_cmp(a: &ArrayRef, op: CmpOp, b: &ArrayRef) -> bool {
    if a.is_null(0) || b.is_null(0) {
        return false;
    }
    let b = match arrow::compute::cast(b, a.data_type()) {
        Ok(b) => b,
        Err(_) => return false,
    };
    compare(a, op, &Scalar::new(b))
        .map(|r| r.value(0))
        .unwrap_or(false)
}

/// A one-element array of `v` as column `field` holds it (statistics kept outside Parquet).
pub fn scalar_of(field: &Field, v: &Value) -> Option<ArrayRef> {
    let schema = single_field(field);
    let row = alluvium_actors::row::Row {
        op: alluvium_actors::row::Op::Upsert,
        values: vec![v.clone()],
    };
    let batch = rows_to_batch(
        &schema,
        &[RowRef {
            seq: 0,
            ingested_at_us: 0,
            row: &row,
        }],
    )
    .ok()?;
    Some(Arc::clone(batch.column(0)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field as AField, Schema};

    use super::*;

    fn schema() -> TableSchema {
        serde_json::from_str(
            r#"{"fields":[{"name":"n","type":"int64"},{"name":"s","type":"string"},{"name":"ts","type":"timestamp_ms"}]}"#,
        )
        .unwrap()
    }

    fn parse(j: &str) -> Result<Filter, PipelineError> {
        Filter::parse(serde_json::from_str(j).unwrap(), &schema())
    }

    fn batch() -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                AField::new("n", DataType::Int64, true),
                AField::new("s", DataType::Utf8, true),
            ])),
            vec![
                Arc::new(Int64Array::from(vec![Some(1), Some(5), None, Some(9)])),
                Arc::new(StringArray::from(vec![
                    Some("a"),
                    None,
                    Some("c"),
                    Some("a"),
                ])),
            ],
        )
        .unwrap()
    }

    fn eval(j: &str) -> Vec<bool> {
        let r = parse(j).unwrap().evaluate(&batch()).unwrap();
        (0..r.len()).map(|i| r.is_valid(i) && r.value(i)).collect()
    }

    #[test]
    fn evaluates_like_sql() {
        assert_eq!(
            eval(r#"{"column":"n","op":">","value":3}"#),
            [false, true, false, true]
        );
        assert_eq!(
            eval(r#"{"column":"n","op":"!=","value":5}"#),
            [true, false, false, true]
        );
        assert_eq!(
            eval(r#"{"column":"s","op":"in","value":["a","c"]}"#),
            [true, false, true, true]
        );
        assert_eq!(
            eval(r#"{"column":"s","op":"is_null"}"#),
            [false, true, false, false]
        );
        assert_eq!(
            eval(r#"{"column":"n","op":"is_null","value":false}"#),
            [true, true, false, true]
        );
        assert_eq!(
            eval(
                r#"{"and":[{"column":"s","op":"=","value":"a"},{"column":"n","op":"<=","value":1}]}"#
            ),
            [true, false, false, false]
        );
        assert_eq!(
            eval(
                r#"{"or":[{"column":"s","op":"=","value":"c"},{"column":"n","op":"=","value":9}]}"#
            ),
            [false, false, true, true]
        );
        assert_eq!(eval(r#"{"and":[]}"#), [true, true, true, true]);
    }

    #[test]
    fn bad_filters_are_precise_errors() {
        let msg = |j: &str| parse(j).unwrap_err().to_string();
        assert!(msg(r#"{"column":"nope","op":"=","value":1}"#).contains("nope"));
        assert!(msg(r#"{"column":"n","op":"=","value":"x"}"#).contains("column \"n\""));
        assert!(msg(r#"{"column":"n","op":"~","value":1}"#).contains("unknown operator"));
        assert!(msg(r#"{"column":"n","op":"="}"#).contains("needs a \"value\""));
        assert!(msg(r#"{"column":"n","op":"in","value":1}"#).contains("array"));
        assert!(msg(r#"{"column":"n","op":"=","value":null}"#).contains("is_null"));
        assert!(msg(r#"{"or":[]}"#).contains("at least one"));
        assert!(parse(r#"{"column":"ts","op":">=","value":"2026-11-25T00:00:00Z"}"#).is_ok());
    }

    #[test]
    fn statistics_prune_only_what_cannot_match() {
        let stats = |min: i64, max: i64, nulls: u64| {
            move |c: &str| {
                (c == "n").then(|| ColumnStats {
                    min: Some(Arc::new(Int64Array::from(vec![min])) as ArrayRef),
                    max: Some(Arc::new(Int64Array::from(vec![max])) as ArrayRef),
                    null_count: Some(nulls),
                    rows: 10,
                })
            }
        };
        let may = |j: &str, min, max, nulls| parse(j).unwrap().may_match(&stats(min, max, nulls));
        assert!(may(r#"{"column":"n","op":"=","value":5}"#, 1, 9, 0));
        assert!(!may(r#"{"column":"n","op":"=","value":10}"#, 1, 9, 0));
        assert!(!may(r#"{"column":"n","op":"<","value":1}"#, 1, 9, 0));
        assert!(may(r#"{"column":"n","op":"<=","value":1}"#, 1, 9, 0));
        assert!(!may(r#"{"column":"n","op":">","value":9}"#, 1, 9, 0));
        assert!(!may(r#"{"column":"n","op":"!=","value":4}"#, 4, 4, 0));
        assert!(!may(r#"{"column":"n","op":"in","value":[0, 10]}"#, 1, 9, 0));
        assert!(!may(r#"{"column":"n","op":"is_null"}"#, 1, 9, 0));
        assert!(may(r#"{"column":"n","op":"is_null"}"#, 1, 9, 3));
        assert!(!may(
            r#"{"or":[{"column":"n","op":">","value":20},{"column":"n","op":"<","value":0}]}"#,
            1,
            9,
            0
        ));
        // Columns without statistics never prune.
        assert!(may(r#"{"column":"s","op":"=","value":"zz"}"#, 1, 9, 0));
    }

    #[test]
    fn restriction_keeps_only_allowed_columns() {
        let f = parse(
            r#"{"and":[{"column":"n","op":"=","value":1},{"or":[{"column":"n","op":"=","value":2},{"column":"s","op":"=","value":"x"}]}]}"#,
        )
        .unwrap();
        let r = f.restrict(&["n".into()]);
        let mut cols = Vec::new();
        r.columns(&mut cols);
        assert_eq!(cols, vec!["n".to_string()]);
        assert!(r.required_values("n").is_some());
        assert!(f.restrict(&["x".into()]).is_true());
    }
}
