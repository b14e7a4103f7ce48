//! Reading a table as of one snapshot: committed Parquet files plus unflushed memtable rows.
//!
//! Upsert tables (with a primary key) return the newest version of each key, sorted by key, and
//! nothing for keys whose newest version is a delete; append-only tables return every event.
//!
//! The memtable snapshot is taken before the catalog snapshot. A frozen memtable is dropped
//! only after its files are committed, so every event is in one of the two; events in both
//! (committed between the two snapshots) are taken from the files, since memtable rows are
//! read only above the catalog's committed sequence.

use std::sync::Arc;
use std::time::Duration;

use alluvium_actors::auth::Principal;
use alluvium_actors::catalog::messages::{Refresh, Snapshot};
use alluvium_actors::catalog::{DataFile, Pin, checkpoint};
use alluvium_actors::ids::{Seq, TableRef};
use alluvium_actors::memtable::messages::{MemSnapshot, Read};
use alluvium_actors::schema::TableSchema;
use alluvium_actors::schema::arrow::{
    INGESTED_AT_COLUMN, OP_COLUMN, RowRef, SEQ_COLUMN, arrow_schema, conform, rows_to_batch,
};
use alluvium_actors::storage::mvcc::resolve;
use arrow::array::RecordBatch;
use arrow::compute::{
    SortColumn, SortOptions, concat_batches, filter_record_batch, lexsort_to_indices,
    take_record_batch,
};
use arrow::datatypes::SchemaRef;
use serde::Deserialize;

use crate::cluster::fresh::Freshness;
use crate::filter::{Filter, FilterSpec};
use crate::scan::{FileScan, ScanStats};
use crate::{Node, PipelineError};

/// A read request: which columns, how many rows.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// Columns to return, in order; default: every table field.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// Most rows to return; default: all.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Also return the hidden columns `_seq`, `_op` and `_ingested_at` (when `columns` is not
    /// given). Default: false.
    #[serde(default)]
    pub include_hidden: bool,
    /// Read the table as of this catalog version (its committed files only, no memtable rows),
    /// while the files that version lists are retained. Default: now.
    #[serde(default)]
    pub as_of: Option<u64>,
    /// Only rows matching this filter (see [`crate::filter`]).
    #[serde(default)]
    pub filter: Option<FilterSpec>,
    /// Only rows whose time column is in `[from, to)`.
    #[serde(default)]
    pub time_range: Option<TimeRange>,
    /// Order of the rows: by primary key or by time (then sequence). Default: upsert tables by
    /// key, append tables in storage order.
    #[serde(default)]
    pub order_by: Option<OrderBy>,
    /// Reverse `order_by`.
    #[serde(default)]
    pub descending: bool,
    /// Also return what was pruned and read.
    #[serde(default)]
    pub explain: bool,
}

/// Bounds on the time column, written like its values in events; either may be absent.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeRange {
    /// Inclusive lower bound.
    #[serde(default)]
    pub from: Option<serde_json::Value>,
    /// Exclusive upper bound.
    #[serde(default)]
    pub to: Option<serde_json::Value>,
}

/// What `order_by` sorts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderBy {
    /// The primary key.
    Key,
    /// The time column.
    Time,
}

/// Rows of a query, as Arrow batches of the requested columns.
#[derive(Debug)]
pub struct QueryResult {
    /// The batches, files first (in commit order), then memtables.
    pub batches: Vec<RecordBatch>,
    /// Catalog version read.
    pub catalog_version: u64,
    /// What was pruned and read.
    pub stats: ScanStats,
    /// The Arrow schema of the rows (also when there are none).
    pub schema: arrow::datatypes::SchemaRef,
    /// Where the rows not yet in files came from (`Alluvium-Fresh-Rows`).
    pub fresh: Freshness,
}

pub(crate) const HIDDEN: [&str; 3] = [SEQ_COLUMN, OP_COLUMN, INGESTED_AT_COLUMN];

fn columns(schema: &TableSchema, req: &QueryRequest) -> Result<Vec<String>, PipelineError> {
    match &req.columns {
        Some(cols) => {
            for c in cols {
                if schema.field(c).is_none() && !HIDDEN.contains(&c.as_str()) {
                    return Err(PipelineError::UnknownColumn(c.chars().take(128).collect()));
                }
            }
            Ok(cols.clone())
        }
        None => {
            let mut cols: Vec<String> = schema.fields.iter().map(|f| f.name.clone()).collect();
            if req.include_hidden {
                cols.extend(HIDDEN.iter().map(|s| s.to_string()));
            }
            Ok(cols)
        }
    }
}

pub(crate) fn project(batch: &RecordBatch, cols: &[String]) -> Result<RecordBatch, PipelineError> {
    let schema = batch.schema();
    let indices = cols
        .iter()
        .map(|c| {
            schema
                .index_of(c)
                .map_err(|_| PipelineError::UnknownColumn(c.clone()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    batch
        .project(&indices)
        .map_err(|e| PipelineError::Unavailable(format!("cannot project query columns: {e}")))
}

/// What one read sees of a table: its memtables and its committed files, consistent with each
/// other.
#[derive(Debug)]
pub(crate) struct TableSnapshot {
    /// The memtables, with the highest sequence they include.
    pub mem: MemSnapshot,
    /// The committed files.
    pub files: Vec<Arc<DataFile>>,
    /// Every event up to this sequence is in `files`: read memtable rows only above it.
    pub committed: Seq,
    /// The catalog version read.
    pub catalog_version: u64,
    /// The table's newest schema in the catalog read: every memtable and file of the snapshot
    /// was written under it or an older version, so reads take this shape.
    pub schema: Option<Arc<TableSchema>>,
    /// Keeps the files of that version on the store while the read runs.
    pub _pin: Pin,
    /// Where the memtable rows came from.
    pub fresh: crate::cluster::fresh::Freshness,
}

/// How long a read waits for the shard owner's memtable rows.
const OWNER_TIMEOUT: Duration = Duration::from_secs(5);

impl Node {
    /// Takes a table's snapshot: the memtables first, then the catalog. A frozen memtable is
    /// dropped only after its files are committed, so in this order every event is in one of
    /// the two (events in both are read from the files).
    pub(crate) async fn snapshot(&self, table: &TableRef) -> Result<TableSnapshot, PipelineError> {
        if let Some(cluster) = &self.cluster
            && self.fences.epoch(table).is_err()
        {
            return self.snapshot_from_owner(table, cluster).await;
        }
        let (mem, state) = match &self.cluster {
            // The owner: what the log holds for the table first reaches the memtables.
            Some(cluster) => crate::cluster::fresh::caught_up(
                &cluster.connection.client,
                &cluster.subjects,
                table,
                &self.memtable,
                &self.catalog,
            )
            .await
            .map_err(PipelineError::Unavailable)?,
            None => {
                let mem = self
                    .memtable
                    .send(Read {
                        table: table.clone(),
                    })
                    .await?;
                (mem, self.catalog.send(Snapshot).await?)
            }
        };
        let pin = self.pins.pin(state.version);
        let (files, committed, schema) = match state.table(table) {
            Some(e) => (e.files.clone(), e.committed_seq, Some(e.schema.clone())),
            None => (Vec::new(), 0, None),
        };
        Ok(TableSnapshot {
            mem,
            files,
            committed,
            schema,
            catalog_version: state.version,
            _pin: pin,
            fresh: Freshness::Local,
        })
    }

    /// A snapshot on a node that does not own the table's shard: committed files read here,
    /// memtable rows from the owner (see [`crate::cluster::fresh`]).
    async fn snapshot_from_owner(
        &self,
        table: &TableRef,
        cluster: &crate::cluster::ClusterNode,
    ) -> Result<TableSnapshot, PipelineError> {
        let owner = cluster
            .leases
            .owner(table.tenant.as_str(), table.table.as_str())
            .await;
        let answer = match owner {
            Ok(Some(holder)) => crate::cluster::fresh::fetch(
                &cluster.connection.client,
                &holder.query_subject,
                table,
                OWNER_TIMEOUT,
            )
            .await
            .map(|rows| (holder.node, rows)),
            Ok(None) => Err("no node owns the shard now (a takeover may be under way)".into()),
            Err(e) => Err(format!("cannot look up the shard's owner: {e}")),
        };
        let (fresh, rows) = match answer {
            Ok((node, rows)) => (Freshness::Owner(node), Some(rows)),
            Err(reason) => {
                tracing::debug!(table = %table, reason, "reading committed rows only");
                (Freshness::CommittedOnly(reason), None)
            }
        };
        // This node's catalog catches up with the owner's before the files are listed.
        let mut state = self.catalog.send(Snapshot).await?;
        if let Some(rows) = &rows {
            for _ in 0..40 {
                if state.version >= rows.catalog_version {
                    break;
                }
                if let Ok(Ok(newer)) = self.catalog.send(Refresh).await {
                    state = newer;
                }
                if state.version < rows.catalog_version {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            if state.version < rows.catalog_version {
                return Err(PipelineError::Unavailable(format!(
                    "the catalog here is at version {}, behind the owner's {}",
                    state.version, rows.catalog_version
                )));
            }
        }
        let pin = self.pins.pin(state.version);
        let Some(entry) = state.table(table) else {
            return Err(PipelineError::VersionUnavailable(format!(
                "table {table} is not in the catalog"
            )));
        };
        let mem = match rows {
            Some(rows) => {
                let (memtables, upto) =
                    crate::cluster::fresh::memtables(rows.records, entry.committed_seq, |v| {
                        entry.schema_at(v).cloned()
                    })
                    .map_err(PipelineError::Unavailable)?;
                MemSnapshot { memtables, upto }
            }
            None => MemSnapshot::default(),
        };
        Ok(TableSnapshot {
            mem,
            files: entry.files.clone(),
            committed: entry.committed_seq,
            schema: Some(entry.schema.clone()),
            catalog_version: state.version,
            _pin: pin,
            fresh,
        })
    }

    /// Takes a table's snapshot at an older catalog version: its committed files then, and no
    /// memtable rows. Fails when the version is not readable (before the table existed, after
    /// the newest version, or listing files deleted since).
    pub(crate) async fn snapshot_at(
        &self,
        table: &TableRef,
        version: u64,
    ) -> Result<TableSnapshot, PipelineError> {
        // Pinned before checking, so the file GC keeps what this version lists from now on.
        let pin = self.pins.pin(version);
        let now = self.catalog.send(Snapshot).await?;
        let Some(entry) = now.table(table) else {
            return Err(PipelineError::VersionUnavailable(format!(
                "table {table} does not exist"
            )));
        };
        if version > now.version {
            return Err(PipelineError::VersionUnavailable(format!(
                "catalog version {version} does not exist yet (the newest is {})",
                now.version
            )));
        }
        if version < entry.readable_from {
            return Err(PipelineError::VersionUnavailable(format!(
                "table {table} cannot be read as of catalog version {version}: files it listed were deleted after a compaction; the oldest readable version is {}",
                entry.readable_from
            )));
        }
        let then = checkpoint::load_at(&self.storage, version)
            .await
            .map_err(|e| PipelineError::VersionUnavailable(e.to_string()))?;
        let Some(old) = then.table(table) else {
            return Err(PipelineError::VersionUnavailable(format!(
                "table {table} did not exist at catalog version {version}"
            )));
        };
        Ok(TableSnapshot {
            mem: MemSnapshot::default(),
            files: old.files.clone(),
            committed: old.committed_seq,
            schema: Some(entry.schema.clone()),
            catalog_version: version,
            _pin: pin,
            fresh: Freshness::Local,
        })
    }

    /// Returns the rows of a table of the principal's tenant (`query` scope) that match the
    /// request's filter and time range, in the requested order.
    pub async fn query(
        &self,
        principal: &Principal,
        table: &str,
        req: QueryRequest,
    ) -> Result<QueryResult, PipelineError> {
        let info = self.table(principal, table).await?;
        // The snapshot first, then its schema: a schema version committed after the registry
        // answered must not make newer rows read in an older shape.
        let snapshot = match req.as_of {
            Some(v) => self.snapshot_at(&info.table, v).await?,
            None => self.snapshot(&info.table).await?,
        };
        let schema = snapshot.schema.clone().unwrap_or(info.schema.clone());
        let cols = columns(&schema, &req)?;
        if req.descending && req.order_by.is_none() {
            return Err(PipelineError::InvalidQuery(
                "\"descending\" needs \"order_by\"".into(),
            ));
        }
        let full = arrow_schema(&schema);
        let indices: Vec<usize> = cols.iter().filter_map(|c| full.index_of(c).ok()).collect();
        let out_schema = Arc::new(
            full.project(&indices)
                .map_err(|e| PipelineError::Unavailable(e.to_string()))?,
        );
        let limit = req.limit.unwrap_or(usize::MAX);
        let filter = full_filter(&schema, &req)?;
        let order = order_columns(&schema, req.order_by)?;
        // Upsert tables resolve versions by key: read the key, `_seq` and `_op` too, and every
        // row, since the newest version of a key can be anywhere. Only conditions on the key
        // may prune before resolution (every version of a row has the same key); the rest
        // applies to the winning versions.
        let key = schema.primary_key.clone();
        let upsert = !key.is_empty();
        let prune = match &filter {
            Some(f) if upsert => f.restrict(&key),
            Some(f) => f.clone(),
            None => Filter::And(Vec::new()),
        };
        let mut fetch = cols.clone();
        let mut extra: Vec<String> = Vec::new();
        if let Some(f) = &filter {
            f.columns(&mut extra);
        }
        extra.extend(order.iter().cloned());
        if upsert {
            extra.extend(key.iter().cloned());
            extra.extend([SEQ_COLUMN.to_string(), OP_COLUMN.to_string()]);
        }
        for c in extra {
            if !fetch.contains(&c) {
                fetch.push(c);
            }
        }
        // Rows are collected up to the limit unless all must be seen first (to resolve
        // versions or to sort).
        let collect_limit = if upsert || !order.is_empty() {
            usize::MAX
        } else {
            limit
        };

        let TableSnapshot {
            mem,
            files,
            committed,
            catalog_version,
            _pin,
            fresh,
            ..
        } = snapshot;

        let mut stats = ScanStats {
            files_total: files.len(),
            ..ScanStats::default()
        };
        // Upsert tables whose filter pins an indexed column read only the versions of the keys
        // the index finds (see `index_candidates`).
        let mut prune = prune;
        if let (Some(f), [key_col]) = (&filter, key.as_slice())
            && let Some(values) = self
                .index_candidates(&files, f, &schema, &full, key_col, &mut stats)
                .await?
        {
            prune = Filter::And(vec![
                prune,
                Filter::In {
                    column: key_col.clone(),
                    values,
                },
            ]);
        }
        // Append tables filter as they read; upsert tables after resolving.
        let early_filter = if upsert { None } else { filter.clone() };
        let scan = FileScan {
            schema: &schema,
            target: &full,
            prune: &prune,
            fetch: &fetch,
            filter: early_filter.as_ref(),
            bloom: &key,
        };
        let mut batches = self
            .scan_files(&files, &scan, collect_limit, &mut stats)
            .await?;
        let mut rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        if rows < collect_limit {
            let cols2 = fetch.clone();
            let want = collect_limit - rows;
            let f = early_filter.clone();
            let target = full.clone();
            let (mem_batches, mem_rows) = tokio::task::spawn_blocking(
                move || -> Result<(Vec<RecordBatch>, u64), PipelineError> {
                    let (read, rows) = memtable_batches(&mem, committed, &target)?;
                    let mut out = Vec::new();
                    let mut n = 0;
                    for b in read {
                        let b = project(&b, &cols2)?;
                        let b = match &f {
                            Some(f) => apply(f, &b)?,
                            None => b,
                        };
                        n = push_limited(&mut out, b, n, want);
                    }
                    Ok((out, rows))
                },
            )
            .await
            .map_err(|e| PipelineError::Unavailable(format!("memtable read task failed: {e}")))??;
            stats.memtable_rows = mem_rows;
            for b in mem_batches {
                rows = push_limited(&mut batches, b, rows, collect_limit);
            }
        }
        let descending = req.descending;
        let batches =
            tokio::task::spawn_blocking(move || -> Result<Vec<RecordBatch>, PipelineError> {
                let mut batches = batches;
                if upsert {
                    let resolved = resolve(&batches, &key).map_err(|e| {
                        PipelineError::Unavailable(format!("version resolution failed: {e}"))
                    })?;
                    batches = Vec::new();
                    if let Some(b) = resolved {
                        let b = match &filter {
                            Some(f) => apply(f, &b)?,
                            None => b,
                        };
                        batches.push(b);
                    }
                }
                if !order.is_empty() && !batches.is_empty() {
                    batches = vec![sort(&batches, &order, descending)?];
                } else if descending {
                    return Err(PipelineError::InvalidQuery(
                        "\"descending\" needs \"order_by\"".into(),
                    ));
                }
                let mut out = Vec::new();
                let mut n = 0;
                for b in batches {
                    n = push_limited(&mut out, project(&b, &cols)?, n, limit);
                }
                Ok(out)
            })
            .await
            .map_err(|e| PipelineError::Unavailable(format!("query task failed: {e}")))??;
        Ok(QueryResult {
            schema: out_schema,
            batches,
            catalog_version,
            stats,
            fresh,
        })
    }
}

/// The rows of a memtable snapshot with sequences in `(committed, mem.upto]`, one batch per
/// memtable, in the shape of `target` (the table's current Arrow schema): rows of memtables
/// holding an older schema version are widened and get nulls for fields added since. Also
/// returns how many rows were read.
pub(crate) fn memtable_batches(
    mem: &MemSnapshot,
    committed: Seq,
    target: &SchemaRef,
) -> Result<(Vec<RecordBatch>, u64), PipelineError> {
    let mut out = Vec::new();
    let mut read = 0u64;
    for m in &mem.memtables {
        // Skiplist entries keep their rows alive: borrow them instead of copying.
        let entries: Vec<_> = m
            .iter()
            .filter(|e| {
                let seq = e.key().seq;
                seq > committed && seq <= mem.upto
            })
            .collect();
        if entries.is_empty() {
            continue;
        }
        read += entries.len() as u64;
        let rows: Vec<RowRef<'_>> = entries
            .iter()
            .map(|e| RowRef {
                seq: e.key().seq,
                ingested_at_us: e.value().ingested_at_us,
                row: &e.value().row,
            })
            .collect();
        let batch = rows_to_batch(m.schema(), &rows)?;
        out.push(conform(&batch, target)?);
    }
    Ok((out, read))
}

/// The request's filter and time range as one filter, typed by the schema.
fn full_filter(schema: &TableSchema, req: &QueryRequest) -> Result<Option<Filter>, PipelineError> {
    let mut parts = Vec::new();
    if let Some(spec) = &req.filter {
        parts.push(Filter::parse(spec.clone(), schema)?);
    }
    if let Some(range) = &req.time_range {
        let Some(tc) = schema.time_column.clone() else {
            return Err(PipelineError::InvalidQuery(
                "\"time_range\" needs a table with a time_column".into(),
            ));
        };
        for (bound, op) in [(&range.from, ">="), (&range.to, "<")] {
            if let Some(v) = bound {
                parts.push(Filter::parse(
                    FilterSpec::Condition {
                        column: tc.clone(),
                        op: op.into(),
                        value: Some(v.clone()),
                    },
                    schema,
                )?);
            }
        }
    }
    Ok(match parts.len() {
        0 => None,
        1 => parts.pop(),
        _ => Some(Filter::And(parts)),
    })
}

/// The columns `order_by` sorts on (then `_seq`).
fn order_columns(
    schema: &TableSchema,
    order: Option<OrderBy>,
) -> Result<Vec<String>, PipelineError> {
    let by = match order {
        None => return Ok(Vec::new()),
        Some(OrderBy::Key) if !schema.primary_key.is_empty() => schema.primary_key.clone(),
        Some(OrderBy::Key) => {
            return Err(PipelineError::InvalidQuery(
                "\"order_by\": \"key\" needs a table with a primary_key".into(),
            ));
        }
        Some(OrderBy::Time) => match &schema.time_column {
            Some(tc) => vec![tc.clone()],
            None => {
                return Err(PipelineError::InvalidQuery(
                    "\"order_by\": \"time\" needs a table with a time_column".into(),
                ));
            }
        },
    };
    Ok(by.into_iter().chain([SEQ_COLUMN.to_string()]).collect())
}

/// Keeps the rows of `batch` the filter holds for.
pub(crate) fn apply(filter: &Filter, batch: &RecordBatch) -> Result<RecordBatch, PipelineError> {
    let mask = filter.evaluate(batch)?;
    filter_record_batch(batch, &mask)
        .map_err(|e| PipelineError::Unavailable(format!("filter: {e}")))
}

/// Sorts all rows of `batches` by `order` (ascending, nulls first; reversed when descending).
fn sort(
    batches: &[RecordBatch],
    order: &[String],
    descending: bool,
) -> Result<RecordBatch, PipelineError> {
    let err = |e: arrow::error::ArrowError| PipelineError::Unavailable(format!("sort: {e}"));
    let batch = concat_batches(&batches[0].schema(), batches).map_err(err)?;
    let columns = order
        .iter()
        .map(|c| {
            Ok(SortColumn {
                values: batch
                    .column_by_name(c)
                    .cloned()
                    .ok_or_else(|| PipelineError::UnknownColumn(c.clone()))?,
                options: Some(SortOptions {
                    descending,
                    nulls_first: !descending,
                }),
            })
        })
        .collect::<Result<Vec<_>, PipelineError>>()?;
    let indices = lexsort_to_indices(&columns, None).map_err(err)?;
    take_record_batch(&batch, &indices).map_err(err)
}

pub(crate) fn push_limited(
    batches: &mut Vec<RecordBatch>,
    batch: RecordBatch,
    rows: usize,
    limit: usize,
) -> usize {
    let room = limit.saturating_sub(rows);
    let take = batch.num_rows().min(room);
    if take > 0 {
        batches.push(batch.slice(0, take));
    }
    rows + take
}
