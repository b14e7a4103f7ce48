//! Messages of the WAL actor.

use std::fmt;
use std::sync::Arc;

use actix::Message;

use super::WalError;
use crate::ids::{Seq, TableRef};
use crate::row::Row;
use crate::schema::TableSchema;

/// Makes a validated batch durable: assigns its sequences, writes it, waits for the group's
/// `fdatasync`, hands the rows to the memtable, then replies.
#[derive(Message)]
#[rtype(result = "Result<Durable, WalError>")]
pub struct Append {
    /// The table.
    pub table: TableRef,
    /// Schema the rows were validated against.
    pub schema: Arc<TableSchema>,
    /// Its version.
    pub schema_version: u32,
    /// The rows, in request order.
    pub rows: Vec<Row>,
    /// When to answer.
    pub durability: Durability,
    /// The producer's idempotency key: a batch with a key seen within the window is answered
    /// with the first one's sequences and not stored again.
    pub idempotency_key: Option<super::dedupe::IdempotencyKey>,
    /// The request's span, for the flush that lands the rows to link to.
    pub trace: Option<crate::trace::TraceLink>,
}

/// Several [`Append`]s in one message, sequenced in order and written in the same commit
/// group; each keeps its own record, idempotency key and answer (same order).
#[derive(Debug, Message)]
#[rtype(result = "Vec<Result<Durable, WalError>>")]
pub struct AppendMany(pub Vec<Append>);

/// The point at which an append is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// After the group's `fdatasync` returned and the rows are visible to reads (default).
    #[default]
    Wal,
    /// As soon as the batch is validated and sequenced, before it reaches the disk: a crash
    /// in the next moments can lose it. For producers that prefer latency and can resend.
    Received,
}

impl Durability {
    /// The name used in requests and acknowledgements.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Wal => "wal",
            Durability::Received => "received",
        }
    }
}

impl fmt::Debug for Append {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Append")
            .field("table", &self.table)
            .field("rows", &self.rows.len())
            .field("idempotency_key", &self.idempotency_key)
            .finish()
    }
}

/// The batch is on disk (and visible to reads) with these sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durable {
    /// Sequence of the first row.
    pub first_seq: Seq,
    /// Sequence of the last row.
    pub last_seq: Seq,
    /// Whether this answers a retry: the batch was stored by an earlier request with the same
    /// idempotency key, and nothing was stored now.
    pub duplicate: bool,
}

/// Answers once every batch sent before it is on disk (its group's `fdatasync` returned) and
/// no group is being written: what a node waits for before it exits.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), WalError>")]
pub struct Drain;
