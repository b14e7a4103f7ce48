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
use std::sync::atomic::{AtomicUsize, Ordering};

pub use actor::{MemtableActor, MemtableConfig};
pub use table::{MemRow, Memtable};

/// Bytes held by all memtables (active and frozen), shared with ingest for backpressure.
#[derive(Debug, Clone, Default)]
pub struct MemoryGauge(Arc<AtomicUsize>);

impl MemoryGauge {
    /// Bytes currently held.
    pub fn bytes(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self, n: usize) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    fn sub(&self, n: usize) {
        self.0.fetch_sub(n, Ordering::Relaxed);
    }
}
