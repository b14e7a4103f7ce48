//! Query requests and answers: filters, time ranges, order, and what a scan pruned.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::types::Row;

/// A comparison in a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// `=`
    #[serde(rename = "=")]
    Eq,
    /// `!=`
    #[serde(rename = "!=")]
    Ne,
    /// `<`
    #[serde(rename = "<")]
    Lt,
    /// `<=`
    #[serde(rename = "<=")]
    Le,
    /// `>`
    #[serde(rename = ">")]
    Gt,
    /// `>=`
    #[serde(rename = ">=")]
    Ge,
    /// `in` (the value is an array)
    #[serde(rename = "in")]
    In,
    /// `is_null` (the value is `true`, or `false` for "is not null")
    #[serde(rename = "is_null")]
    IsNull,
}

/// A query filter: conditions on columns, nested with `and` and `or`.
///
/// ```
/// use alluvium::client::Filter;
/// let f = Filter::and([Filter::eq("user", "ada"), Filter::ge("id", 2)]);
/// assert_eq!(
///     serde_json::to_string(&f).unwrap(),
///     r#"{"and":[{"column":"user","op":"=","value":"ada"},{"column":"id","op":">=","value":2}]}"#
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Filter {
    /// Every condition holds.
    And {
        /// The conditions.
        and: Vec<Filter>,
    },
    /// At least one holds.
    Or {
        /// The conditions.
        or: Vec<Filter>,
    },
    /// A column compared with a value.
    Condition {
        /// The column.
        column: String,
        /// The comparison.
        op: Op,
        /// The value (an array for `in`, a bool for `is_null`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<Value>,
    },
}

impl Filter {
    /// `column op value`.
    pub fn cmp(column: impl Into<String>, op: Op, value: impl Into<Value>) -> Filter {
        Filter::Condition {
            column: column.into(),
            op,
            value: Some(value.into()),
        }
    }

    /// `column = value`
    pub fn eq(column: impl Into<String>, value: impl Into<Value>) -> Filter {
        Filter::cmp(column, Op::Eq, value)
    }

    /// `column != value`
    pub fn ne(column: impl Into<String>, value: impl Into<Value>) -> Filter {
        Filter::cmp(column, Op::Ne, value)
    }

    /// `column < value`
    pub fn lt(column: impl Into<String>, value: impl Into<Value>) -> Filter {
        Filter::cmp(column, Op::Lt, value)
    }

    /// `column <= value`
    pub fn le(column: impl Into<String>, value: impl Into<Value>) -> Filter {
        Filter::cmp(column, Op::Le, value)
    }

    /// `column > value`
    pub fn gt(column: impl Into<String>, value: impl Into<Value>) -> Filter {
        Filter::cmp(column, Op::Gt, value)
    }

    /// `column >= value`
    pub fn ge(column: impl Into<String>, value: impl Into<Value>) -> Filter {
        Filter::cmp(column, Op::Ge, value)
    }

    /// `column in values`
    pub fn one_of<I, V>(column: impl Into<String>, values: I) -> Filter
    where
        I: IntoIterator<Item = V>,
        V: Into<Value>,
    {
        let values: Vec<Value> = values.into_iter().map(Into::into).collect();
        Filter::cmp(column, Op::In, values)
    }

    /// `column is null`
    pub fn is_null(column: impl Into<String>) -> Filter {
        Filter::cmp(column, Op::IsNull, true)
    }

    /// `column is not null`
    pub fn not_null(column: impl Into<String>) -> Filter {
        Filter::cmp(column, Op::IsNull, false)
    }

    /// Every filter holds.
    pub fn and(filters: impl IntoIterator<Item = Filter>) -> Filter {
        Filter::And {
            and: filters.into_iter().collect(),
        }
    }

    /// At least one filter holds.
    pub fn or(filters: impl IntoIterator<Item = Filter>) -> Filter {
        Filter::Or {
            or: filters.into_iter().collect(),
        }
    }
}

/// `[from, to)` on the time column, values written as in events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeRange {
    /// Inclusive lower bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Value>,
    /// Exclusive upper bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Value>,
}

/// What rows are ordered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderBy {
    /// The primary key.
    Key,
    /// The time column (then the sequence).
    Time,
}

/// The body of `POST /v1/tables/{table}/query`. Every field is optional.
///
/// ```
/// use alluvium::client::{Filter, OrderBy, QueryRequest};
/// let q = QueryRequest {
///     columns: Some(vec!["id".into(), "user".into()]),
///     filter: Some(Filter::eq("user", "ada")),
///     order_by: Some(OrderBy::Time),
///     limit: Some(10),
///     ..Default::default()
/// };
/// assert!(serde_json::to_string(&q).unwrap().starts_with(r#"{"columns":["id","user"],"limit":10"#));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// Columns to return, in order (default: every field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// Most rows to return.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Add `_seq`, `_op` and `_ingested_at` (when `columns` is not given).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub include_hidden: bool,
    /// Read the table as of this catalog version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of: Option<u64>,
    /// Only rows matching this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
    /// Only rows in this time range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_range: Option<TimeRange>,
    /// Order of the rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_by: Option<OrderBy>,
    /// Reverse `order_by`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub descending: bool,
    /// Return what was pruned and read with the rows (see
    /// [`Client::query_explain`](super::Client::query_explain)).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub explain: bool,
}

/// What a query pruned and read (`"explain": true`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScanStats {
    /// Live files of the snapshot.
    pub files_total: u64,
    /// Files skipped by their time or key range.
    pub files_pruned: u64,
    /// Files opened.
    pub files_read: u64,
    /// Bytes of the files opened.
    pub bytes_read: u64,
    /// Row groups in the files opened.
    pub row_groups_total: u64,
    /// Row groups skipped by their statistics.
    pub row_groups_pruned_by_statistics: u64,
    /// Files skipped by their secondary index.
    pub files_pruned_by_index: u64,
    /// Row groups skipped by a secondary index.
    pub row_groups_pruned_by_index: u64,
    /// Row groups skipped by a bloom filter.
    pub row_groups_pruned_by_bloom_filter: u64,
    /// Rows skipped by the page index.
    pub rows_skipped_by_page_index: u64,
    /// Rows decoded from files.
    pub rows_decoded: u64,
    /// Rows read from memtables.
    pub memtable_rows: u64,
    /// Upsert tables: keys a secondary index found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index_candidate_keys: Option<u64>,
    /// Upsert tables: rows decoded to find them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index_rows_decoded: Option<u64>,
}

/// The answer to a query with `"explain": true`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explained {
    /// The catalog version read.
    pub catalog_version: u64,
    /// The rows.
    pub rows: Vec<Row>,
    /// What was pruned and read.
    pub explain: ScanStats,
}
