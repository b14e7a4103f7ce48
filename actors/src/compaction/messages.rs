//! Messages of the compaction actor.

use actix::Message;
use serde::Serialize;

use super::CompactionError;
use crate::ids::TableRef;

/// Compacts one table now; replies when its merges are committed.
#[derive(Debug, Message)]
#[rtype(result = "Result<CompactionReport, CompactionError>")]
pub struct Compact {
    /// The table.
    pub table: TableRef,
    /// Merge every partition's small files, not only full size tiers.
    pub force: bool,
}

/// Deletes replaced files whose grace period is over and that no reader pins.
#[derive(Debug, Message)]
#[rtype(result = "Result<PurgeReport, CompactionError>")]
pub struct CollectGarbage;

/// What a compaction of one table did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CompactionReport {
    /// Merges committed.
    pub merges: usize,
    /// Files replaced.
    pub files_in: usize,
    /// Files written.
    pub files_out: usize,
    /// Bytes of the replaced files.
    pub bytes_in: u64,
    /// Bytes of the files written.
    pub bytes_out: u64,
    /// Rows read.
    pub rows_in: u64,
    /// Rows written.
    pub rows_out: u64,
    /// Superseded versions dropped (upsert tables).
    pub versions_dropped: u64,
    /// Tombstones dropped.
    pub tombstones_dropped: u64,
    /// The catalog version of the last commit, if any.
    pub catalog_version: Option<u64>,
    /// Wall time of the whole compaction, in milliseconds.
    pub elapsed_ms: u64,
}

/// What one pass of the file GC deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PurgeReport {
    /// Files deleted.
    pub files: usize,
    /// Their size in bytes.
    pub bytes: u64,
}
