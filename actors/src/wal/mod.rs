//! The write-ahead log: the standalone node's durability point.
//!
//! An ingest batch becomes one [`WalRecord`] per table (its rows, the schema version they were
//! validated against and the sequence of the first row). [`Wal::append`] writes the records of
//! many requests and then issues a single `fdatasync` (group commit); only when it returns are
//! the events acknowledged and handed to the memtable. Once the catalog has committed a table's
//! rows to Parquet up to some sequence, [`Wal::checkpoint`] deletes the sealed segments that hold
//! nothing newer.
//!
//! On disk the log is a directory of segment files `{id:020}.wal`, each a header (magic, format
//! version, segment id, CRC) followed by frames `len u32 | crc u32 | type u8 | payload`, the CRC
//! covering the length, type and payload. [`Wal::open`] replays every segment in order. A torn
//! tail of the last segment (the crash interrupted the last, unacknowledged write) is truncated
//! and logged; any other damage refuses to start with [`WalError::Corrupt`], naming the file and
//! byte offset. [`inspect`] scans a log read-only for `alluvium wal inspect|verify`.
//!
//! This module is pure blocking logic with no actix: the WAL actor owns a [`Wal`] on a dedicated
//! thread and turns messages into these calls. A failed write or sync poisons the [`Wal`]: every
//! later call fails until the process restarts and recovers from disk, because after a failed
//! `fsync` the kernel may have dropped the dirty pages and a retry could falsely report success.
//!
//! Layout: [`record`](WalRecord) (payload encoding), `segment` (header, framing, reading one
//! segment), `writer` ([`Wal`]), `reader` (recovery over all segments, [`inspect`]).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub mod actor;
pub mod dedupe;
pub mod messages;
mod reader;
mod record;
mod segment;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
mod writer;

pub use dedupe::{Dedupe, DedupeConfig};
pub use reader::{SegmentReport, SeqRange, inspect};
pub use record::WalRecord;
pub use segment::{ProblemKind, SegmentProblem};
pub use writer::{Wal, WalConfig};

/// Why a WAL operation failed.
///
/// Cloneable (I/O errors are shared behind an [`Arc`]) so that the actor can answer every request
/// of a failed group commit with the same error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WalError {
    /// A file-system operation failed.
    #[error("wal i/o error: cannot {op} {path}: {source}")]
    Io {
        /// What was attempted, e.g. `open`, `truncate`.
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Arc<io::Error>,
    },
    /// A segment is damaged somewhere other than a repairable torn tail.
    #[error(
        "corrupt wal segment {path} at byte {offset}: {reason}; the log refuses to start. \
         Run `alluvium wal verify` to list the damage, then restore the segment from a backup \
         or remove it (losing its unflushed events)"
    )]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the damaged header or frame within the file.
        offset: u64,
        /// What is wrong there.
        reason: String,
    },
    /// A record's payload exceeds the configured maximum; nothing of the batch was written.
    #[error("wal record of {size} bytes exceeds the maximum record size of {max} bytes")]
    RecordTooLarge {
        /// Encoded payload size in bytes.
        size: usize,
        /// The configured maximum in bytes.
        max: u32,
    },
    /// An earlier write or sync failed; the log refuses writes until the process restarts.
    #[error(
        "wal is poisoned after a failed write or sync ({cause}); writes are refused until restart"
    )]
    Poisoned {
        /// The failure that poisoned the log.
        cause: String,
    },
    /// An idempotency key already stands for another batch (a different body) within the
    /// window; nothing was written.
    #[error(
        "idempotency key {key:?} was already used for a different batch of this table; use a new key for new data"
    )]
    IdempotencyKeyReused {
        /// The key.
        key: String,
    },
    /// The replay callback given to [`Wal::open`] refused a record.
    #[error("wal replay stopped: {reason}")]
    Replay {
        /// Why the caller stopped the replay.
        reason: String,
    },
}

/// Builds a mapper from an I/O error to [`WalError::Io`] for `op` on `path`.
pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> WalError {
    move |source| WalError::Io {
        op,
        path: path.to_path_buf(),
        source: Arc::new(source),
    }
}

/// Makes the directory entries of `dir` durable (file creations, deletions, renames).
pub(crate) fn sync_dir(dir: &Path) -> Result<(), WalError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}
