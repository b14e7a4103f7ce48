//! The error of every pipeline operation, wrapping the components' errors.

use std::time::Duration;

use alluvium_actors::auth::AuthError;
use alluvium_actors::compaction::CompactionError;
use alluvium_actors::flush::FlushError;
use alluvium_actors::ids::NameError;
use alluvium_actors::schema::error::SchemaError;
use alluvium_actors::storage::StorageError;
use alluvium_actors::wal::WalError;

/// What went wrong in a pipeline operation. The HTTP layer maps each to a status and a code.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Authentication or authorization failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A name in the request is invalid.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The batch or definition does not fit the schema.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// The write-ahead log refused or failed the write.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// A forced flush failed.
    #[error(transparent)]
    Flush(#[from] FlushError),
    /// A compaction failed.
    #[error(transparent)]
    Compaction(#[from] CompactionError),
    /// A time-travel read names a catalog version that is not readable.
    #[error("{0}")]
    VersionUnavailable(String),
    /// Reading committed files failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Memtables are at their byte budget: retry after the delay.
    #[error(
        "ingest is paused: memtables hold {held} bytes of a {budget} byte budget while flushes catch up"
    )]
    Overloaded {
        /// Bytes held.
        held: usize,
        /// The budget.
        budget: usize,
        /// Suggested wait before retrying.
        retry_after: Duration,
    },
    /// No live row has the key.
    #[error("no row with key {0}")]
    RowNotFound(String),
    /// A key given to a row endpoint does not fit the table's primary key.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// A query filter is malformed or does not fit the schema.
    #[error("invalid filter: {0}")]
    InvalidFilter(String),
    /// A query request is malformed.
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// A query names a column the table does not have.
    #[error("unknown column {0:?}")]
    UnknownColumn(String),
    /// A component is not reachable (stopped or overloaded mailbox).
    #[error("internal component unavailable: {0}")]
    Unavailable(String),
}

impl From<actix::MailboxError> for PipelineError {
    fn from(e: actix::MailboxError) -> Self {
        PipelineError::Unavailable(e.to_string())
    }
}
