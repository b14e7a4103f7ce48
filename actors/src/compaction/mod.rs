//! Compaction: small files of a partition are merged into files of a target size, resolving
//! versions by primary key on the way, and one catalog commit replaces the inputs.
//!
//! **Strategy: time windows, size tiers within each.** Flushes already split files by the
//! table's time partition (`partition_by`), and events arrive roughly in time order, so a
//! partition stops receiving files soon after its window passes. Compaction never merges across
//! partitions (a partition's files stay prunable by time) and, within one, merges files of
//! similar size (tiers of 4x: below 1 MiB, 1-4 MiB, 4-16 MiB, ...) once a tier holds
//! [`CompactionConfig::min_input_files`] of them. Each merge multiplies file size by about the
//! tier factor, so an event is rewritten about log4(target / flush size) times, a bounded write
//! amplification, while the file count per partition stays small. Files at half the target or
//! more are left alone. A forced compaction (`POST /v1/tables/{table}/compact`) merges every
//! small file of each partition regardless of tier.
//!
//! **Merge** ([`merge`]): input files are each sorted by key (or time) then `_seq`, so a k-way
//! merge streams them in that order, batch by batch, and writes outputs as it goes. In upsert
//! tables only the newest version of a key survives; a tombstone survives too unless no file
//! outside the merge could hold an older version of its key (then nothing is left for it to
//! hide and it is dropped).
//!
//! **Commit and file GC** ([`actor`]): outputs are written first; one
//! [`crate::catalog::Action::ReplaceFiles`] commit swaps them for the inputs. A crash before the
//! commit leaves orphans for the start-up GC; after it, the replaced files stay on the store
//! until the grace period has passed and no reader pins an older catalog version, then they are
//! purged from the catalog and deleted.

pub mod actor;
pub mod merge;
pub mod messages;
pub mod plan;

use std::time::Duration;

pub use actor::CompactionActor;

/// How compaction chooses and sizes its work.
#[derive(Debug, Clone)]
pub struct CompactionConfig {
    /// Size compaction aims for per output file, in bytes.
    pub target_file_bytes: u64,
    /// A size tier is merged once it holds this many files.
    pub min_input_files: usize,
    /// At most this many files go into one merge.
    pub max_input_files: usize,
    /// At most this many bytes (compressed) go into one merge.
    pub max_input_bytes: u64,
    /// How often tables are checked for work and replaced files for deletion; zero turns
    /// background compaction off (forced compactions still run).
    pub interval: Duration,
    /// How long replaced files stay readable (by `as_of` reads and queries already running);
    /// at least one second.
    pub grace: Duration,
    /// Merges running at once, across tables.
    pub max_concurrent: usize,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        Self {
            target_file_bytes: 128 << 20,
            min_input_files: 4,
            max_input_files: 32,
            max_input_bytes: 1 << 30,
            interval: Duration::from_secs(30),
            grace: Duration::from_secs(600),
            max_concurrent: 1,
        }
    }
}

/// Why a compaction failed. Nothing it wrote is referenced until its commit, so a failed
/// compaction changes no query's answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CompactionError {
    /// The table does not exist.
    #[error("table {0} does not exist")]
    TableNotFound(String),
    /// Reading an input file failed.
    #[error("cannot read input file: {0}")]
    Read(String),
    /// Merging or encoding failed.
    #[error("cannot merge files: {0}")]
    Merge(String),
    /// Writing an output file failed.
    #[error("cannot write compacted file: {0}")]
    Storage(String),
    /// The catalog refused or failed the commit.
    #[error("cannot commit compaction: {0}")]
    Catalog(String),
    /// The table is being compacted already.
    #[error("table {0} is being compacted already")]
    Busy(String),
    /// Cluster mode: another node owns the table's shard, and compacts it.
    #[error("{0}; compaction runs on the shard owner")]
    NotOwner(String),
    /// An actor on the way is gone.
    #[error("compaction interrupted: {0}")]
    Mailbox(String),
}
