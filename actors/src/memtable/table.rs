//! One memtable: a concurrent skiplist of a table's durable rows, ordered for flushing.
//!
//! Rows are keyed by (sort key, sequence): the primary key for upsert tables, else the time
//! column, else nothing (sequence order). A memtable is written by one inserter (the WAL
//! delivers rows in sequence order) and read concurrently by queries and the flusher; once
//! frozen it is never written again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use crossbeam_skiplist::SkipMap;

use super::keys::encode_key_value;
use crate::ids::Seq;
use crate::row::{Row, aligned_allocation_size, allocation_size};
use crate::schema::TableSchema;

/// Skiplist key: sort key bytes, then sequence.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MemKey {
    /// Memcomparable encoding of the sort columns.
    pub sort: Vec<u8>,
    /// Sequence of the row.
    pub seq: Seq,
}

/// A row as held in a memtable.
#[derive(Debug, Clone)]
pub struct MemRow {
    /// Ingest time, microseconds since the epoch.
    pub ingested_at_us: i64,
    /// The row.
    pub row: Row,
}

/// Indices of the columns that order a table's rows in memtables and files.
pub fn sort_columns(schema: &TableSchema) -> Vec<usize> {
    if !schema.primary_key.is_empty() {
        schema
            .primary_key
            .iter()
            .filter_map(|k| schema.index_of(k))
            .collect()
    } else {
        schema
            .time_column
            .iter()
            .filter_map(|c| schema.index_of(c))
            .collect()
    }
}

/// The expected block size of a skiplist node, which holds the key and row inline, a reference
/// count and height, and a tower of `h` pointers, where `h` is 1 with probability 1/2, 2 with
/// 1/4, and so on.
const NODE_BYTES: usize = {
    const WORD: usize = std::mem::size_of::<usize>();
    let base = std::mem::size_of::<MemKey>() + std::mem::size_of::<MemRow>() + WORD;
    // Sum of P(h) * size(h) for h = 1..=20, in units of 2^-20.
    let (mut h, mut sum) = (1, 0);
    while h <= 20 {
        sum += aligned_allocation_size(base + h * WORD) << (20 - h);
        h += 1;
    }
    sum >> 20
};

/// The rows of one table received since the last freeze.
#[derive(Debug)]
pub struct Memtable {
    id: u64,
    schema: Arc<TableSchema>,
    schema_version: u32,
    sort_columns: Vec<usize>,
    rows: SkipMap<MemKey, MemRow>,
    bytes: AtomicUsize,
    min_seq: AtomicU64,
    max_seq: AtomicU64,
    created: Instant,
    /// The first requests whose rows are here (see [`crate::trace`]).
    links: std::sync::Mutex<Vec<crate::trace::TraceLink>>,
}

impl Memtable {
    /// An empty memtable for rows of `schema_version`.
    pub fn new(id: u64, schema: Arc<TableSchema>, schema_version: u32) -> Self {
        Self {
            id,
            sort_columns: sort_columns(&schema),
            schema,
            schema_version,
            rows: SkipMap::new(),
            bytes: AtomicUsize::new(0),
            min_seq: AtomicU64::new(u64::MAX),
            max_seq: AtomicU64::new(0),
            created: Instant::now(),
            links: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Remembers the request whose rows were just inserted, up to [`crate::trace::MAX_LINKS`].
    pub fn add_link(&self, link: crate::trace::TraceLink) {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if links.len() < crate::trace::MAX_LINKS {
            links.push(link);
        }
    }

    /// The requests whose rows are here (the first [`crate::trace::MAX_LINKS`]).
    pub fn links(&self) -> Vec<crate::trace::TraceLink> {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Identifies this memtable among the table's memtables.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The schema its rows were validated against.
    pub fn schema(&self) -> &Arc<TableSchema> {
        &self.schema
    }

    /// Version of that schema.
    pub fn schema_version(&self) -> u32 {
        self.schema_version
    }

    /// Inserts a row; returns the bytes it added to the accounting. Sequences must increase.
    pub fn insert(&self, seq: Seq, ingested_at_us: i64, row: Row) -> usize {
        let mut sort = Vec::with_capacity(16);
        for &i in &self.sort_columns {
            if let Some(v) = row.values.get(i) {
                encode_key_value(v, &mut sort);
            }
        }
        let size = NODE_BYTES + allocation_size(sort.capacity()) + row.heap_size();
        self.rows.insert(
            MemKey { sort, seq },
            MemRow {
                ingested_at_us,
                row,
            },
        );
        self.bytes.fetch_add(size, Ordering::Relaxed);
        self.min_seq.fetch_min(seq, Ordering::Relaxed);
        self.max_seq.fetch_max(seq, Ordering::Release);
        size
    }

    /// Approximate bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether it holds no row.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Smallest and largest sequence held, if any.
    pub fn seq_range(&self) -> Option<(Seq, Seq)> {
        let max = self.max_seq.load(Ordering::Acquire);
        (max > 0).then(|| (self.min_seq.load(Ordering::Relaxed), max))
    }

    /// Time since creation, for the age-based freeze.
    pub fn age(&self) -> std::time::Duration {
        self.created.elapsed()
    }

    /// The newest version of the row whose sort key is `key`, among sequences in
    /// `(after, upto]`.
    pub fn newest(
        &self,
        key: &[u8],
        after: Seq,
        upto: Seq,
    ) -> Option<crossbeam_skiplist::map::Entry<'_, MemKey, MemRow>> {
        let lo = MemKey {
            sort: key.to_vec(),
            seq: after.saturating_add(1),
        };
        let hi = MemKey {
            sort: key.to_vec(),
            seq: upto,
        };
        if lo > hi {
            return None;
        }
        self.rows.range(lo..=hi).next_back()
    }

    /// Iterates over all rows in key order. Entries keep their row alive while held.
    pub fn iter(&self) -> impl Iterator<Item = crossbeam_skiplist::map::Entry<'_, MemKey, MemRow>> {
        self.rows.iter()
    }

    /// Visits rows in key order whose sequence lies in `(after, upto]`.
    pub fn for_each(&self, after: Seq, upto: Seq, mut f: impl FnMut(Seq, &MemRow)) {
        for entry in self.rows.iter() {
            let seq = entry.key().seq;
            if seq > after && seq <= upto {
                f(seq, entry.value());
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::row::{Op, Value};

    #[test]
    fn orders_by_key_then_seq_and_filters_by_seq() {
        let schema: TableSchema = serde_json::from_str(
            r#"{"fields":[{"name":"id","type":"int64","nullable":false},{"name":"v","type":"string"}],"primary_key":["id"]}"#,
        )
        .unwrap();
        let m = Memtable::new(1, Arc::new(schema), 1);
        let row = |id, v: &str| Row {
            op: Op::Upsert,
            values: vec![Value::Int(id), Value::Str(v.into())],
        };
        m.insert(1, 0, row(5, "a"));
        m.insert(2, 0, row(-3, "b"));
        m.insert(3, 0, row(5, "c"));
        assert_eq!(m.seq_range(), Some((1, 3)));
        let mut seen = Vec::new();
        m.for_each(0, 3, |seq, r| seen.push((seq, r.row.values[1].clone())));
        assert_eq!(
            seen,
            vec![
                (2, Value::Str("b".into())),
                (1, Value::Str("a".into())),
                (3, Value::Str("c".into()))
            ]
        );
        let mut n = 0;
        m.for_each(1, 2, |_, _| n += 1);
        assert_eq!(n, 1);
        assert!(m.bytes() > 0);
    }
}
