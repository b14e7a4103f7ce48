//! Reading committed files with pruning: whole files by the statistics the catalog keeps (time
//! range, key range) and by their secondary index sidecars, row groups by the sidecars, Parquet
//! statistics and bloom filters, pages by the page index. What was pruned and read is counted
//! for `explain`.

use alluvium_actors::catalog::DataFile;
use alluvium_actors::flush::hex;
use alluvium_actors::memtable::keys::encode_key_value;
use alluvium_actors::row::Value;
use alluvium_actors::schema::arrow::{conform, key_value_at};
use alluvium_actors::schema::{FieldType, TableSchema};
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use std::sync::Arc;

use arrow::datatypes::{
    DataType, Date32Type, Int32Type, Int64Type, SchemaRef, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt64Type,
};
use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::arrow::arrow_reader::{
    ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection, RowSelector,
};
use parquet::bloom_filter::Sbbf;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};
use serde::Serialize;

use crate::filter::{ColumnStats, Filter, scalar_of};
use crate::indexes::Verdict;
use crate::query::{apply, project, push_limited};
use crate::{Node, PipelineError};

/// Rows per decoded batch.
const BATCH_ROWS: usize = 8192;

/// What a query pruned and read (`"explain": true`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ScanStats {
    /// Live files of the snapshot.
    pub files_total: usize,
    /// Files skipped by their time or key range.
    pub files_pruned: usize,
    /// Files opened.
    pub files_read: usize,
    /// Bytes of the files opened.
    pub bytes_read: u64,
    /// Row groups in the files opened.
    pub row_groups_total: usize,
    /// Row groups skipped by their column statistics.
    pub row_groups_pruned_by_statistics: usize,
    /// Files skipped because their secondary index holds none of the wanted values.
    pub files_pruned_by_index: usize,
    /// Row groups skipped because the file's secondary index rules them out.
    pub row_groups_pruned_by_index: usize,
    /// Row groups skipped because a bloom filter rules out every wanted value.
    pub row_groups_pruned_by_bloom_filter: usize,
    /// Rows of opened row groups skipped because the page index rules out their pages.
    pub rows_skipped_by_page_index: u64,
    /// Rows decoded from files.
    pub rows_decoded: u64,
    /// Rows read from memtables.
    pub memtable_rows: u64,
    /// Upsert tables: keys the secondary index found for the filter, whose versions alone
    /// were read (absent when no index applied or it found too many).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index_candidate_keys: Option<u64>,
    /// Upsert tables: rows decoded to find those keys (not in `rows_decoded`, which counts
    /// the reading of their versions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index_rows_decoded: Option<u64>,
}

impl ScanStats {
    /// Adds the counts of one file's read.
    pub fn add(&mut self, o: &ScanStats) {
        self.files_read += o.files_read;
        self.bytes_read += o.bytes_read;
        self.row_groups_total += o.row_groups_total;
        self.row_groups_pruned_by_statistics += o.row_groups_pruned_by_statistics;
        self.row_groups_pruned_by_bloom_filter += o.row_groups_pruned_by_bloom_filter;
        self.row_groups_pruned_by_index += o.row_groups_pruned_by_index;
        self.files_pruned_by_index += o.files_pruned_by_index;
        self.rows_decoded += o.rows_decoded;
        self.rows_skipped_by_page_index += o.rows_skipped_by_page_index;
    }
}

fn internal(path: &str, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Unavailable(format!("cannot read {path}: {e}"))
}

/// Whether `file` may hold rows matching `prune`, judging by the time range and key range the
/// catalog records for it.
pub fn file_may_match(file: &DataFile, prune: &Filter, schema: &TableSchema) -> bool {
    if prune.is_true() {
        return true;
    }
    // Key range: a single-column key pinned to values outside the file's range.
    if let [key] = schema.primary_key.as_slice()
        && let Some(values) = prune.required_values(key)
    {
        let any_inside = (0..values.len()).any(|i| {
            key_value_at(values.as_ref(), i).is_none_or(|v| {
                let mut enc = Vec::new();
                encode_key_value(&v, &mut enc);
                file.may_hold_key(&hex(&enc))
            })
        });
        if !any_inside {
            return false;
        }
    }
    // Time range.
    let Some(tc) = schema.time_column.as_deref() else {
        return true;
    };
    let (Some(field), Some(lo), Some(hi)) = (schema.field(tc), file.min_time, file.max_time) else {
        return true;
    };
    let as_value = |t: i64| match field.ty {
        FieldType::Date => i32::try_from(t).ok().map(Value::Date),
        _ => Some(Value::Timestamp(t)),
    };
    let min = as_value(lo).and_then(|v| scalar_of(field, &v));
    let max = as_value(hi).and_then(|v| scalar_of(field, &v));
    prune.may_match(&|c: &str| {
        (c == tc).then(|| ColumnStats {
            min: min.clone(),
            max: max.clone(),
            null_count: None,
            rows: file.rows,
        })
    })
}

/// Rows of the kept row groups whose pages may match `prune`, judged per filter column by the
/// page index (a column's condition is checked on its own pages; the selections of all
/// columns intersect). `None` when the file has no page index or nothing can be skipped.
fn page_selection(
    prune: &Filter,
    target: &SchemaRef,
    metadata: &ParquetMetaData,
    arrow_schema: &arrow::datatypes::SchemaRef,
    parquet_schema: &parquet::schema::types::SchemaDescriptor,
    keep: &[usize],
    stats: &mut ScanStats,
) -> Option<RowSelection> {
    let page_index = metadata.page_index()?;
    let mut filter_cols = Vec::new();
    prune.columns(&mut filter_cols);
    // One mask over the rows of the kept row groups, in order.
    let counts: Vec<usize> = keep
        .iter()
        .map(|&rg| metadata.row_group(rg).num_rows() as usize)
        .collect();
    let total: usize = counts.iter().sum();
    let mut mask = vec![true; total];
    let mut pruned_any = false;
    for c in &filter_cols {
        let Ok(conv) = StatisticsConverter::try_new(c, arrow_schema, parquet_schema) else {
            continue;
        };
        let (Ok(mins), Ok(maxes), Ok(Some(rows))) = (
            conv.data_page_mins(page_index.as_ref(), keep),
            conv.data_page_maxes(page_index.as_ref(), keep),
            conv.data_page_row_counts(page_index.as_ref(), metadata.row_groups(), keep),
        ) else {
            continue;
        };
        let (Some(mins), Some(maxes)) =
            (widen_stats(mins, c, target), widen_stats(maxes, c, target))
        else {
            continue;
        };
        let nulls = conv.data_page_null_counts(page_index.as_ref(), keep).ok();
        if rows.len() != mins.len() || rows.len() != maxes.len() || rows.null_count() > 0 {
            continue;
        }
        let sum: u64 = rows.values().iter().sum();
        if sum as usize != total {
            continue; // pages do not cover the row groups exactly: do not guess
        }
        let mut at = 0usize;
        for p in 0..rows.len() {
            let n = rows.value(p) as usize;
            let one = |a: &ArrayRef| (!a.is_null(p)).then(|| a.slice(p, 1));
            let ok = prune.may_match(&|col: &str| {
                (col == c).then(|| ColumnStats {
                    min: one(&mins),
                    max: one(&maxes),
                    null_count: nulls
                        .as_ref()
                        .and_then(|a| (!a.is_null(p)).then(|| a.value(p))),
                    rows: n as u64,
                })
            });
            if !ok {
                mask[at..at + n].iter_mut().for_each(|m| *m = false);
                pruned_any = true;
            }
            at += n;
        }
    }
    if !pruned_any {
        return None;
    }
    let mut selectors = Vec::new();
    let mut i = 0;
    while i < total {
        let v = mask[i];
        let start = i;
        while i < total && mask[i] == v {
            i += 1;
        }
        let run = i - start;
        if v {
            selectors.push(RowSelector::select(run));
        } else {
            stats.rows_skipped_by_page_index += run as u64;
            selectors.push(RowSelector::skip(run));
        }
    }
    Some(RowSelection::from(selectors))
}

/// Whether a bloom filter may hold the value at `i` of `values`.
fn bloom_may_hold(sbbf: &Sbbf, values: &dyn Array, i: usize) -> bool {
    if values.is_null(i) {
        return true;
    }
    match values.data_type() {
        DataType::Int32 => sbbf.check(&values.as_primitive::<Int32Type>().value(i)),
        DataType::Int64 => sbbf.check(&values.as_primitive::<Int64Type>().value(i)),
        // Stored as INT64 in Parquet.
        DataType::UInt64 => sbbf.check(&(values.as_primitive::<UInt64Type>().value(i) as i64)),
        DataType::Date32 => sbbf.check(&values.as_primitive::<Date32Type>().value(i)),
        DataType::Utf8 => sbbf.check(values.as_string::<i32>().value(i)),
        DataType::Binary => sbbf.check(values.as_binary::<i32>().value(i)),
        DataType::Timestamp(unit, _) => sbbf.check(&match unit {
            TimeUnit::Second => values.as_primitive::<TimestampSecondType>().value(i),
            TimeUnit::Millisecond => values.as_primitive::<TimestampMillisecondType>().value(i),
            TimeUnit::Microsecond => values.as_primitive::<TimestampMicrosecondType>().value(i),
            TimeUnit::Nanosecond => values.as_primitive::<TimestampNanosecondType>().value(i),
        }),
        _ => true,
    }
}

/// Statistics of a file written under an older schema version, as values of the column's
/// current type (a widened column's statistics are widened too; nothing narrows).
fn widen_stats(a: ArrayRef, column: &str, target: &SchemaRef) -> Option<ArrayRef> {
    let want = target.field_with_name(column).ok()?.data_type();
    if a.data_type() == want {
        return Some(a);
    }
    arrow::compute::cast(&a, want).ok()
}

/// The part of `target` (a table's current Arrow schema) naming `columns`, in `target`'s order.
pub fn projected(target: &SchemaRef, columns: &[String]) -> SchemaRef {
    let fields: Vec<_> = target
        .fields()
        .iter()
        .filter(|f| columns.iter().any(|c| c == f.name()))
        .cloned()
        .collect();
    Arc::new(arrow::datatypes::Schema::new(fields))
}

/// Reads the row groups of one file that may hold rows matching `prune`, keeping `columns`.
/// Rows come out in `target`'s shape (the table's current Arrow schema, restricted to
/// `columns`): a file written under an older schema version gets nulls for fields added since
/// and widened values. `bloom_columns` are checked against their bloom filters when `prune`
/// pins them to values; `row_groups`, when given, are the only ones that may match (a
/// secondary index said so).
#[allow(clippy::too_many_arguments)]
pub fn read_file(
    bytes: Bytes,
    path: &str,
    prune: &Filter,
    columns: &[String],
    target: &SchemaRef,
    bloom_columns: &[String],
    row_groups: Option<&[usize]>,
    stats: &mut ScanStats,
) -> Result<Vec<RecordBatch>, PipelineError> {
    let size = bytes.len() as u64;
    let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
    let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(bytes, options)
        .map_err(|e| internal(path, e))?;
    let metadata = builder.metadata().clone();
    let arrow_schema = builder.schema().clone();
    let parquet_schema = builder.parquet_schema();
    let groups = metadata.num_row_groups();
    stats.files_read += 1;
    stats.bytes_read += size;
    stats.row_groups_total += groups;

    let mut keep: Vec<usize> = match row_groups {
        Some(allowed) => {
            let keep: Vec<usize> = allowed.iter().copied().filter(|&g| g < groups).collect();
            stats.row_groups_pruned_by_index += groups - keep.len();
            keep
        }
        None => (0..groups).collect(),
    };
    if !prune.is_true() {
        let mut filter_cols = Vec::new();
        prune.columns(&mut filter_cols);
        // Per filter column: mins, maxes and null counts of every row group.
        let mut col_stats: Vec<(String, ArrayRef, ArrayRef, Option<Vec<u64>>)> = Vec::new();
        for c in &filter_cols {
            let Ok(conv) = StatisticsConverter::try_new(c, &arrow_schema, parquet_schema) else {
                continue;
            };
            let rgs = metadata.row_groups();
            let (Ok(mins), Ok(maxes)) = (conv.row_group_mins(rgs), conv.row_group_maxes(rgs))
            else {
                continue;
            };
            let (Some(mins), Some(maxes)) =
                (widen_stats(mins, c, target), widen_stats(maxes, c, target))
            else {
                continue;
            };
            let nulls = conv.row_group_null_counts(rgs).ok().map(|a| {
                (0..a.len())
                    .map(|i| if a.is_null(i) { u64::MAX } else { a.value(i) })
                    .collect()
            });
            col_stats.push((c.clone(), mins, maxes, nulls));
        }
        keep.retain(|&rg| {
            let rows = metadata.row_group(rg).num_rows() as u64;
            let ok = prune.may_match(&|c: &str| {
                let (_, mins, maxes, nulls) = col_stats.iter().find(|s| s.0 == c)?;
                let one = |a: &ArrayRef| (!a.is_null(rg)).then(|| a.slice(rg, 1));
                Some(ColumnStats {
                    min: one(mins),
                    max: one(maxes),
                    null_count: nulls
                        .as_ref()
                        .and_then(|n| n.get(rg).copied())
                        .filter(|n| *n != u64::MAX),
                    rows,
                })
            });
            if !ok {
                stats.row_groups_pruned_by_statistics += 1;
            }
            ok
        });
        for c in bloom_columns {
            let Some(values) = prune.required_values(c) else {
                continue;
            };
            let Some(leaf) = parquet_schema
                .columns()
                .iter()
                .position(|d| d.path().string() == *c)
            else {
                continue;
            };
            keep.retain(|&rg| {
                let Ok(Some(sbbf)) = builder.get_row_group_column_bloom_filter(rg, leaf) else {
                    return true;
                };
                let ok = (0..values.len()).any(|i| bloom_may_hold(&sbbf, values.as_ref(), i));
                if !ok {
                    stats.row_groups_pruned_by_bloom_filter += 1;
                }
                ok
            });
        }
    }
    if keep.is_empty() {
        return Ok(Vec::new());
    }
    let selection = if prune.is_true() {
        None
    } else {
        page_selection(
            prune,
            target,
            &metadata,
            &arrow_schema,
            parquet_schema,
            &keep,
            stats,
        )
    };
    let indices: Vec<usize> = parquet_schema
        .root_schema()
        .get_fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| columns.iter().any(|c| c == f.name()))
        .map(|(i, _)| i)
        .collect();
    let mask = ProjectionMask::roots(parquet_schema, indices);
    let mut builder = builder
        .with_projection(mask)
        .with_row_groups(keep)
        .with_batch_size(BATCH_ROWS);
    if let Some(selection) = selection {
        builder = builder.with_row_selection(selection);
    }
    let reader = builder.build().map_err(|e| internal(path, e))?;
    let shape = projected(target, columns);
    let batches = reader
        .map(|b| {
            let b = b.map_err(|e| internal(path, e))?;
            conform(&b, &shape).map_err(|e| internal(path, e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    stats.rows_decoded += batches.iter().map(|b| b.num_rows() as u64).sum::<u64>();
    Ok(batches)
}

/// What one pass over a snapshot's files reads.
pub(crate) struct FileScan<'a> {
    pub(crate) schema: &'a TableSchema,
    /// The table's current Arrow schema: rows come out in its shape.
    pub(crate) target: &'a SchemaRef,
    /// What may prune files, row groups and pages.
    pub(crate) prune: &'a Filter,
    /// Columns to read.
    pub(crate) fetch: &'a [String],
    /// Rows to keep, when filtering while reading.
    pub(crate) filter: Option<&'a Filter>,
    /// Columns whose bloom filters may be checked.
    pub(crate) bloom: &'a [String],
}

impl Node {
    /// Reads the files of a snapshot that may match `scan.prune` (judged by the catalog's
    /// ranges, the secondary indexes, statistics, bloom filters and page indexes), keeping
    /// `scan.fetch` of the rows `scan.filter` accepts, until `limit` rows are collected.
    pub(crate) async fn scan_files(
        &self,
        files: &[Arc<DataFile>],
        scan: &FileScan<'_>,
        limit: usize,
        stats: &mut ScanStats,
    ) -> Result<Vec<RecordBatch>, PipelineError> {
        let mut batches = Vec::new();
        let mut rows = 0usize;
        for file in files {
            if rows >= limit {
                break;
            }
            if !file_may_match(file, scan.prune, scan.schema) {
                stats.files_pruned += 1;
                continue;
            }
            let groups = match self.index_verdict(file, scan.prune, scan.schema).await {
                Verdict::Skip => {
                    stats.files_pruned_by_index += 1;
                    continue;
                }
                Verdict::RowGroups(g) => Some(g),
                Verdict::Unknown => None,
            };
            let bytes = self
                .storage
                .get(&ObjectPath::from(file.path.as_str()))
                .await?;
            let path = file.path.clone();
            let want = scan.fetch.to_vec();
            let (p, f, bloom) = (
                scan.prune.clone(),
                scan.filter.cloned(),
                scan.bloom.to_vec(),
            );
            let target = scan.target.clone();
            let mut file_stats = ScanStats::default();
            let (decoded, file_stats) = tokio::task::spawn_blocking(move || {
                let batches = read_file(
                    bytes,
                    &path,
                    &p,
                    &want,
                    &target,
                    &bloom,
                    groups.as_deref(),
                    &mut file_stats,
                )?;
                let mut out = Vec::with_capacity(batches.len());
                for b in batches {
                    let b = project(&b, &want)?;
                    out.push(match &f {
                        Some(f) => apply(f, &b)?,
                        None => b,
                    });
                }
                Ok::<_, PipelineError>((out, file_stats))
            })
            .await
            .map_err(|e| PipelineError::Unavailable(format!("file decoding task failed: {e}")))??;
            stats.add(&file_stats);
            for b in decoded {
                rows = push_limited(&mut batches, b, rows, limit);
            }
        }
        Ok(batches)
    }
}
