//! The catalog: tables, schema versions, data files and log positions, kept as a transaction
//! log on the object store (see [`log`]), summarized every hundred versions in a
//! [`checkpoint`], and served as immutable snapshots ([`state`]).
//!
//! Every change (table created, files flushed) is one commit; a reader pins one
//! `Arc<CatalogState>` and sees that version whole. The [`actor::CatalogActor`] serializes
//! commits of this process; the conditional put of each version fences other writers.

pub mod actor;
pub mod checkpoint;
pub mod fence;
pub mod lake;
pub mod log;
pub mod messages;
pub mod pins;
pub mod state;

pub use actor::CatalogActor;
pub use fence::{Fences, NotOwner};
pub use pins::{Pin, Pins};
pub use state::{Action, CatalogState, DataFile, IndexRef, RemovedFile, ShardState, TableEntry};

use crate::storage::StorageError;

/// Errors of the catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The object store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A stored commit cannot be read or applied.
    #[error(
        "catalog commit {path} is corrupt: {reason}; the catalog refuses to load rather than guess (restore the file from a backup)"
    )]
    Corrupt {
        /// The commit file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The table already exists.
    #[error("table {0} already exists")]
    TableExists(String),
    /// The table does not exist.
    #[error("table {0} does not exist")]
    TableNotFound(String),
    /// The table already has these events in committed files.
    #[error("table {table} already has events up to sequence {committed} in committed files")]
    AlreadyCommitted {
        /// The table.
        table: String,
        /// Its committed sequence.
        committed: u64,
    },
    /// A time-travel read names a version the log does not have.
    #[error("catalog version {version} does not exist (the newest is {newest})")]
    NoSuchVersion {
        /// The version asked for.
        version: u64,
        /// The newest version.
        newest: u64,
    },
    /// A commit conflicts with the current state.
    #[error("catalog conflict: {0}")]
    Conflict(String),
    /// A cluster-mode commit from a processing node whose claim on the table's shard is no
    /// longer the newest: another node took the shard over (fencing).
    #[error(
        "table {table}: commit of shard owner epoch {epoch} refused, the shard is now owned by {owner} at epoch {current}"
    )]
    Fenced {
        /// The table.
        table: String,
        /// The epoch the commit carried.
        epoch: u64,
        /// The shard's current epoch.
        current: u64,
        /// The node holding the current epoch.
        owner: String,
    },
    /// A commit could not be serialized.
    #[error("cannot encode a catalog commit: {0}")]
    Encode(String),
}
