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

use alluvium_actors::auth::{Principal, Scope};
use alluvium_actors::catalog::messages::Snapshot;
use alluvium_actors::catalog::{DataFile, Pin, checkpoint};
use alluvium_actors::ids::{Seq, TableRef};
use alluvium_actors::memtable::messages::{MemSnapshot, Read};
use alluvium_actors::schema::TableSchema;
use alluvium_actors::schema::arrow::{
    INGESTED_AT_COLUMN, OP_COLUMN, RowRef, SEQ_COLUMN, rows_to_batch,
};
use alluvium_actors::storage::mvcc::resolve;
use alluvium_actors::storage::parquet::decode;
use arrow::array::RecordBatch;
use object_store::path::Path as ObjectPath;
use serde::Deserialize;

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
}

/// Rows of a query, as Arrow batches of the requested columns.
#[derive(Debug)]
pub struct QueryResult {
    /// The batches, files first (in commit order), then memtables.
    pub batches: Vec<RecordBatch>,
    /// Catalog version read.
    pub catalog_version: u64,
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
    /// Keeps the files of that version on the store while the read runs.
    pub _pin: Pin,
}

impl Node {
    /// Takes a table's snapshot: the memtables first, then the catalog. A frozen memtable is
    /// dropped only after its files are committed, so in this order every event is in one of
    /// the two (events in both are read from the files).
    pub(crate) async fn snapshot(&self, table: &TableRef) -> Result<TableSnapshot, PipelineError> {
        let mem = self
            .memtable
            .send(Read {
                table: table.clone(),
            })
            .await?;
        let state = self.catalog.send(Snapshot).await?;
        let pin = self.pins.pin(state.version);
        let (files, committed) = match state.table(table) {
            Some(e) => (e.files.clone(), e.committed_seq),
            None => (Vec::new(), 0),
        };
        Ok(TableSnapshot {
            mem,
            files,
            committed,
            catalog_version: state.version,
            _pin: pin,
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
            catalog_version: version,
            _pin: pin,
        })
    }

    /// Returns the rows of a table of the principal's tenant (`query` scope).
    pub async fn query(
        &self,
        principal: &Principal,
        table: &str,
        req: QueryRequest,
    ) -> Result<QueryResult, PipelineError> {
        principal.require(Scope::Query)?;
        let info = self.table(principal, table).await?;
        let cols = columns(&info.schema, &req)?;
        let limit = req.limit.unwrap_or(usize::MAX);
        // Upsert tables resolve versions by key: read the key, `_seq` and `_op` too, and every
        // row, since the newest version of a key can be anywhere.
        let key = info.schema.primary_key.clone();
        let upsert = !key.is_empty();
        let mut fetch = cols.clone();
        if upsert {
            for c in key
                .iter()
                .map(String::as_str)
                .chain([SEQ_COLUMN, OP_COLUMN])
            {
                if !fetch.iter().any(|f| f == c) {
                    fetch.push(c.to_string());
                }
            }
        }
        let collect_limit = if upsert { usize::MAX } else { limit };

        let snapshot = match req.as_of {
            Some(v) => self.snapshot_at(&info.table, v).await?,
            None => self.snapshot(&info.table).await?,
        };
        let TableSnapshot {
            mem,
            files,
            committed,
            catalog_version,
            _pin,
        } = snapshot;

        let mut batches = Vec::new();
        let mut rows = 0usize;
        for file in files {
            if rows >= collect_limit {
                break;
            }
            let bytes = self
                .storage
                .get(&ObjectPath::from(file.path.as_str()))
                .await?;
            let path = file.path.clone();
            let want = fetch.clone();
            let decoded = tokio::task::spawn_blocking(move || decode(bytes, Some(&want), &path))
                .await
                .map_err(|e| {
                    PipelineError::Unavailable(format!("file decoding task failed: {e}"))
                })??;
            for b in decoded {
                rows = push_limited(&mut batches, project(&b, &fetch)?, rows, collect_limit);
            }
        }

        if rows < collect_limit {
            let schema: Arc<TableSchema> = info.schema.clone();
            let cols2 = fetch.clone();
            let want = collect_limit - rows;
            let batch = tokio::task::spawn_blocking(
                move || -> Result<Option<RecordBatch>, PipelineError> {
                    // Skiplist entries keep their rows alive: borrow them instead of copying.
                    let mut entries = Vec::new();
                    for m in &mem.memtables {
                        for e in m.iter() {
                            let seq = e.key().seq;
                            if seq > committed && seq <= mem.upto && entries.len() < want {
                                entries.push(e);
                            }
                        }
                    }
                    if entries.is_empty() {
                        return Ok(None);
                    }
                    let row_refs: Vec<RowRef<'_>> = entries
                        .iter()
                        .map(|e| RowRef {
                            seq: e.key().seq,
                            ingested_at_us: e.value().ingested_at_us,
                            row: &e.value().row,
                        })
                        .collect();
                    let batch = rows_to_batch(&schema, &row_refs)?;
                    Ok(Some(project(&batch, &cols2)?))
                },
            )
            .await
            .map_err(|e| PipelineError::Unavailable(format!("memtable read task failed: {e}")))??;
            if let Some(b) = batch {
                push_limited(&mut batches, b, rows, collect_limit);
            }
        }
        if upsert {
            let resolved = tokio::task::spawn_blocking(move || resolve(&batches, &key))
                .await
                .map_err(|e| PipelineError::Unavailable(format!("version resolution failed: {e}")))?
                .map_err(|e| {
                    PipelineError::Unavailable(format!("version resolution failed: {e}"))
                })?;
            batches = Vec::new();
            if let Some(b) = resolved {
                push_limited(&mut batches, project(&b, &cols)?, 0, limit);
            }
        }
        Ok(QueryResult {
            batches,
            catalog_version,
        })
    }
}

fn push_limited(
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
