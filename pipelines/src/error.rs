//! The error of every pipeline operation, wrapping the components' errors.

use std::time::Duration;

use alluvium_actors::auth::AuthError;
use alluvium_actors::compaction::CompactionError;
use alluvium_actors::flush::FlushError;
use alluvium_actors::ids::NameError;
use alluvium_actors::schema::error::SchemaError;
use alluvium_actors::storage::StorageError;
use alluvium_actors::wal::WalError;
use serde::Serialize;

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
    /// The API key's quota is spent for now (429): retry after the delay.
    #[error(
        "API key {key} is over its quota of {rate} {limit}: retry in {} ms",
        retry_after.as_millis().max(1)
    )]
    QuotaExceeded {
        /// The API key id.
        key: String,
        /// Which allowance: `events_per_sec` or `bytes_per_sec`.
        limit: &'static str,
        /// Its rate.
        rate: u64,
        /// How long until a batch can pass.
        retry_after: Duration,
    },
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
    /// Cluster mode: the replicated log is full (its shards' owners are behind or gone):
    /// nothing was stored; retry later.
    #[error("the replicated log is full, retry later: {0}")]
    LogFull(String),
    /// The node does not take this kind of request in its role.
    #[error("{0}")]
    WrongRole(String),
    /// A component is not reachable (stopped or overloaded mailbox).
    #[error("internal component unavailable: {0}")]
    Unavailable(String),
}

impl From<actix::MailboxError> for PipelineError {
    fn from(e: actix::MailboxError) -> Self {
        PipelineError::Unavailable(e.to_string())
    }
}

/// An error as RFC 9457 problem details with a stable `code`: the body of HTTP error responses
/// and of NATS error replies alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// `urn:alluvium:problem:{code}`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The status's reason phrase.
    pub title: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, precisely.
    pub detail: String,
    /// Stable machine-readable code.
    pub code: &'static str,
}

impl Problem {
    /// A problem with this status, code and detail.
    pub fn new(status: u16, code: &'static str, detail: String) -> Problem {
        Problem {
            kind: format!("urn:alluvium:problem:{code}"),
            title: reason_phrase(status),
            status,
            detail,
            code,
        }
    }
}

/// The reason phrase of the statuses alluvium answers with.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        410 => "Gone",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

impl PipelineError {
    /// The HTTP status and the stable code of this error.
    pub fn status_and_code(&self) -> (u16, &'static str) {
        use PipelineError as P;
        match self {
            P::Auth(e) => {
                let status = if e.is_unauthenticated() {
                    401
                } else {
                    match e {
                        AuthError::Forbidden { .. } => 403,
                        AuthError::InvalidKeyRequest { .. } => 400,
                        _ => 500,
                    }
                };
                (status, e.code())
            }
            P::Name(_) => (400, "invalid_name"),
            P::Schema(e) => {
                let status = match e {
                    SchemaError::UnknownTable { .. } => 404,
                    SchemaError::TableExists { .. }
                    | SchemaError::SchemaChange { .. }
                    | SchemaError::TooManyTables { .. } => 409,
                    SchemaError::TooManyRows { .. } => 413,
                    SchemaError::Catalog(_) => 503,
                    e if e.is_client_error() => 400,
                    _ => 500,
                };
                (status, e.code())
            }
            P::Wal(e) => match e {
                WalError::RecordTooLarge { .. } => (413, "batch_too_large"),
                WalError::Poisoned { .. } => (503, "wal_poisoned"),
                WalError::IdempotencyKeyReused { .. } => (409, "idempotency_key_reused"),
                _ => (503, "wal_unavailable"),
            },
            P::Flush(FlushError::Fenced(_)) => (503, "not_shard_owner"),
            P::Flush(_) => (503, "flush_failed"),
            P::Compaction(e) => match e {
                CompactionError::Busy(_) => (409, "compaction_running"),
                CompactionError::NotOwner(_) => (503, "not_shard_owner"),
                CompactionError::TableNotFound(_) => (404, "table_not_found"),
                _ => (503, "compaction_failed"),
            },
            P::VersionUnavailable(_) => (410, "version_unavailable"),
            P::Storage(_) => (500, "storage_error"),
            P::Overloaded { .. } => (429, "overloaded"),
            P::QuotaExceeded { .. } => (429, "quota_exceeded"),
            P::UnknownColumn(_) => (400, "unknown_column"),
            P::InvalidFilter(_) => (400, "invalid_filter"),
            P::InvalidQuery(_) => (400, "invalid_query"),
            P::InvalidKey(_) => (400, "invalid_key"),
            P::RowNotFound(_) => (404, "row_not_found"),
            P::Unavailable(_) => (503, "unavailable"),
            P::LogFull(_) => (503, "log_full"),
            P::WrongRole(_) => (503, "wrong_role"),
        }
    }

    /// How long a client should wait before retrying, for errors that pass.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            PipelineError::Overloaded { retry_after, .. }
            | PipelineError::QuotaExceeded { retry_after, .. } => Some(*retry_after),
            PipelineError::Unavailable(_) | PipelineError::LogFull(_) => {
                Some(Duration::from_secs(1))
            }
            _ => None,
        }
    }

    /// The problem document of this error.
    pub fn problem(&self) -> Problem {
        let (status, code) = self.status_and_code();
        Problem::new(status, code, self.to_string())
    }
}
