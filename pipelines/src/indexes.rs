//! Secondary indexes on the read path: which files and row groups may hold the values a filter
//! pins an indexed column to, answered from the files' sidecars (see
//! [`alluvium_actors::storage::index`]), which are kept decoded in a bounded cache.
//!
//! A sidecar that cannot be read or decoded never fails a query: the file is then read as if
//! it had no index (and the problem is logged).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use alluvium_actors::catalog::DataFile;
use alluvium_actors::memtable::keys::encode_key_value;
use alluvium_actors::row::Value;
use alluvium_actors::schema::TableSchema;
use alluvium_actors::schema::arrow::key_value_at;
use alluvium_actors::storage::index::FileIndex;
use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use object_store::path::Path as ObjectPath;

use crate::filter::Filter;
use crate::scan::{FileScan, ScanStats};
use crate::{Node, PipelineError};

/// Decoded sidecars kept in memory at most (their [`FileIndex::memory_size`]).
const CACHE_BYTES: usize = 256 << 20;

/// Decoded sidecars by path. Sidecars never change once written, so entries are never stale;
/// when the budget is exceeded the cache is emptied (simple, and rare for sidecars, which are
/// small next to their files).
#[derive(Debug, Default, Clone)]
pub struct IndexCache(Arc<Mutex<CacheInner>>);

#[derive(Debug, Default)]
struct CacheInner {
    entries: HashMap<String, Arc<FileIndex>>,
    bytes: usize,
}

impl IndexCache {
    fn get(&self, path: &str) -> Option<Arc<FileIndex>> {
        let inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        inner.entries.get(path).cloned()
    }

    fn insert(&self, path: &str, index: Arc<FileIndex>) {
        let size = index.memory_size();
        let mut inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if inner.bytes + size > CACHE_BYTES {
            inner.entries.clear();
            inner.bytes = 0;
        }
        if size <= CACHE_BYTES && inner.entries.insert(path.to_string(), index).is_none() {
            inner.bytes += size;
        }
    }
}

/// What a file's index says of a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The index cannot judge (no index on a pinned column, or no sidecar): read everything.
    Unknown,
    /// No row of the file can match.
    Skip,
    /// Only these row groups can hold matching rows.
    RowGroups(Vec<usize>),
}

/// The encoded values `filter` pins `column` to (`=` or `in`), nulls left out (they equal
/// nothing); `None` when it does not pin the column or a value is not indexable.
fn probes(filter: &Filter, column: &str) -> Option<Vec<Vec<u8>>> {
    let values = filter.required_values(column)?;
    let mut out = Vec::with_capacity(values.len());
    for i in 0..values.len() {
        match key_value_at(values.as_ref(), i)? {
            Value::Null => {}
            v => {
                let mut enc = Vec::new();
                encode_key_value(&v, &mut enc);
                out.push(enc);
            }
        }
    }
    Some(out)
}

/// Most keys the secondary index may find for an upsert table's query before the query reads
/// every file instead (the keys' versions are then looked up one by one through key ranges and
/// bloom filters, which pays only for a selective filter).
const MAX_INDEX_CANDIDATES: usize = 10_000;

/// The distinct values of the first column of `batches` (the key column `key_col`), or `None`
/// when a value is not a key type.
fn distinct_keys(
    batches: &[RecordBatch],
    full: &SchemaRef,
    key_col: &str,
) -> Result<Option<arrow::array::ArrayRef>, PipelineError> {
    let err = |e: arrow::error::ArrowError| PipelineError::Unavailable(e.to_string());
    let ty = full.field_with_name(key_col).map_err(err)?.data_type();
    let refs: Vec<&dyn arrow::array::Array> =
        batches.iter().map(|b| b.column(0).as_ref()).collect();
    let all = if refs.is_empty() {
        return Ok(Some(arrow::array::new_empty_array(ty)));
    } else {
        arrow::compute::concat(&refs).map_err(err)?
    };
    let mut seen = std::collections::HashSet::new();
    let mut keep = Vec::new();
    for i in 0..all.len() {
        let Some(v) = key_value_at(all.as_ref(), i) else {
            return Ok(None);
        };
        let mut enc = Vec::new();
        encode_key_value(&v, &mut enc);
        if seen.insert(enc) {
            keep.push(i as u32);
        }
    }
    let idx = arrow::array::UInt32Array::from(keep);
    Ok(Some(
        arrow::compute::take(all.as_ref(), &idx, None).map_err(err)?,
    ))
}

impl Node {
    /// The decoded sidecar of `file`, from the cache or the store; `None` when the file has no
    /// sidecar or it cannot be read.
    async fn file_index(&self, file: &DataFile) -> Option<Arc<FileIndex>> {
        let r = file.index.as_ref()?;
        if let Some(ix) = self.index_cache.get(&r.path) {
            return Some(ix);
        }
        let bytes = match self.storage.get(&ObjectPath::from(r.path.as_str())).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(path = %r.path, error = %e, "cannot read an index sidecar; the file is read without it");
                return None;
            }
        };
        match FileIndex::decode(&bytes) {
            Ok(ix) => {
                let ix = Arc::new(ix);
                self.index_cache.insert(&r.path, ix.clone());
                Some(ix)
            }
            Err(e) => {
                tracing::warn!(path = %r.path, error = %e, "index sidecar is damaged; the file is read without it");
                None
            }
        }
    }

    /// What the secondary indexes of `file` say of `filter`: for every indexed column the
    /// filter pins to values, the row groups holding one of them; the row groups of all such
    /// columns intersect.
    pub(crate) async fn index_verdict(
        &self,
        file: &DataFile,
        filter: &Filter,
        schema: &TableSchema,
    ) -> Verdict {
        let mut groups: Option<Vec<usize>> = None;
        for column in &schema.indexes {
            if !file.indexed(column) {
                continue;
            }
            let Some(probes) = probes(filter, column) else {
                continue;
            };
            let Some(ix) = self.file_index(file).await else {
                return Verdict::Unknown;
            };
            let Some(found) = ix.row_groups_for(column, &probes) else {
                continue;
            };
            groups = Some(match groups {
                None => found,
                Some(g) => g.into_iter().filter(|x| found.contains(x)).collect(),
            });
        }
        match groups {
            None => Verdict::Unknown,
            Some(g) if g.is_empty() => Verdict::Skip,
            Some(g) => Verdict::RowGroups(g),
        }
    }

    /// For an upsert table whose filter pins indexed columns: the distinct keys of the file
    /// rows matching those conditions, found through the sidecars. Reading only these keys'
    /// versions (and every memtable row) loses nothing: a key whose newest version matches has
    /// that version in a memtable or in a file row found here. `None` when no index applies
    /// or the keys are too many for that to pay.
    pub(crate) async fn index_candidates(
        &self,
        files: &[Arc<DataFile>],
        filter: &Filter,
        schema: &TableSchema,
        target: &SchemaRef,
        key_col: &str,
        stats: &mut ScanStats,
    ) -> Result<Option<ArrayRef>, PipelineError> {
        let on_index: Vec<String> = schema
            .indexes
            .iter()
            .filter(|c| filter.required_values(c).is_some())
            .cloned()
            .collect();
        if on_index.is_empty() {
            return Ok(None);
        }
        let narrow = filter.restrict(&on_index);
        // The key first, then what the narrowed filter reads.
        let mut want = vec![key_col.to_string()];
        want.extend(on_index.iter().filter(|c| *c != key_col).cloned());
        let scan = FileScan {
            schema,
            target,
            prune: &narrow,
            fetch: &want,
            filter: Some(&narrow),
            bloom: &[],
        };
        // Rows (versions) are capped too, so a value matching most of the table stops early.
        let max_rows = 4 * MAX_INDEX_CANDIDATES;
        let mut lookup = ScanStats::default();
        let found = self.scan_files(files, &scan, max_rows, &mut lookup).await?;
        stats.files_pruned_by_index += lookup.files_pruned_by_index;
        stats.row_groups_pruned_by_index += lookup.row_groups_pruned_by_index;
        stats.index_rows_decoded = Some(lookup.rows_decoded);
        if found.iter().map(RecordBatch::num_rows).sum::<usize>() >= max_rows {
            return Ok(None);
        }
        let keys =
            distinct_keys(&found, target, key_col)?.filter(|k| k.len() <= MAX_INDEX_CANDIDATES);
        stats.index_candidate_keys = keys.as_ref().map(|k| k.len() as u64);
        Ok(keys)
    }
}
