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
use object_store::path::Path as ObjectPath;

use crate::Node;
use crate::filter::Filter;

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

/// Whether `filter` pins an indexed column of `schema` to values (so sidecars can prune).
pub fn usable(filter: &Filter, schema: &TableSchema) -> bool {
    schema
        .indexes
        .iter()
        .any(|c| filter.required_values(c).is_some())
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
}
