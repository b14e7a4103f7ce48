//! Memtables: per-table concurrent skiplists holding durable rows until they are flushed.
//!
//! The WAL inserts rows once they are on disk; queries read a snapshot of the memtables; when
//! a memtable passes its size or age threshold it is frozen and handed to the flush actor, and
//! dropped once its files are committed. The total size of all memtables is published in a
//! [`MemoryGauge`] that ingest checks before accepting more.

pub mod actor;
pub mod keys;
pub mod messages;
pub mod table;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

pub use actor::{MemtableActor, MemtableConfig};
pub use table::{MemRow, Memtable};

/// Bytes held by all memtables (active and frozen), shared with ingest for backpressure, and
/// the flush health the node reports.
#[derive(Debug, Clone, Default)]
pub struct MemoryGauge(Arc<GaugeInner>);

#[derive(Debug, Default)]
struct GaugeInner {
    bytes: AtomicUsize,
    flush_failures: AtomicU64,
    failing_tables: AtomicUsize,
}

impl MemoryGauge {
    /// Bytes currently held.
    pub fn bytes(&self) -> usize {
        self.0.bytes.load(Ordering::Relaxed)
    }

    /// Failed flush attempts since start.
    pub fn flush_failures(&self) -> u64 {
        self.0.flush_failures.load(Ordering::Relaxed)
    }

    /// Tables whose last flush attempt failed (their memtables are kept and retried).
    pub fn failing_tables(&self) -> usize {
        self.0.failing_tables.load(Ordering::Relaxed)
    }

    fn add(&self, n: usize) {
        self.0.bytes.fetch_add(n, Ordering::Relaxed);
    }

    fn sub(&self, n: usize) {
        self.0.bytes.fetch_sub(n, Ordering::Relaxed);
    }

    fn flush_failed(&self, first_in_a_row: bool) {
        self.0.flush_failures.fetch_add(1, Ordering::Relaxed);
        if first_in_a_row {
            self.0.failing_tables.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn flush_recovered(&self) {
        self.0.failing_tables.fetch_sub(1, Ordering::Relaxed);
    }
}
