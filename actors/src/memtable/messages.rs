//! Messages of the memtable actor.

use std::fmt;
use std::sync::Arc;

use actix::Message;

use super::Memtable;
use crate::catalog::CatalogState;
use crate::flush::FlushError;
use crate::ids::{Seq, TableRef};
use crate::row::Row;
use crate::schema::TableSchema;

/// Adds durable rows (sequences `first_seq..`) to a table's active memtable. Sent by the WAL in
/// sequence order once the rows are on disk.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Insert {
    /// The table.
    pub table: TableRef,
    /// Schema the rows were validated against.
    pub schema: Arc<TableSchema>,
    /// Its version.
    pub schema_version: u32,
    /// Sequence of the first row.
    pub first_seq: Seq,
    /// Ingest time of the batch, microseconds since the epoch.
    pub ingested_at_us: i64,
    /// The rows.
    pub rows: Vec<Row>,
    /// The request the rows came from, for the flush span to link to.
    pub trace: Option<crate::trace::TraceLink>,
}

/// Several [`Insert`]s, applied in order: what the WAL sends once a commit group is durable,
/// one message for the whole group rather than one per batch.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct InsertGroup(pub Vec<Insert>);

impl fmt::Debug for Insert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Insert")
            .field("table", &self.table)
            .field("first_seq", &self.first_seq)
            .field("rows", &self.rows.len())
            .finish()
    }
}

/// Asks for a table's unflushed rows as of now.
#[derive(Debug, Message)]
#[rtype(result = "MemSnapshot")]
pub struct Read {
    /// The table.
    pub table: TableRef,
}

/// A table's memtables (oldest first) and the highest sequence visible in them. Rows with a
/// higher sequence arriving later are not part of the snapshot.
#[derive(Debug, Clone, Default, actix::MessageResponse)]
pub struct MemSnapshot {
    /// Frozen memtables oldest first, then the active one.
    pub memtables: Vec<Arc<Memtable>>,
    /// Highest sequence the snapshot includes.
    pub upto: Seq,
}

/// Freezes a table's active memtable and waits until every frozen memtable of the table is
/// committed. Replies with the catalog after the last commit (or `None` if there was nothing).
#[derive(Debug, Message)]
#[rtype(result = "Result<Option<Arc<CatalogState>>, FlushError>")]
pub struct FlushTable {
    /// The table.
    pub table: TableRef,
}

/// Forgets a table's memtables, flushed or not, and fails the flushes waiting on them: in
/// cluster mode, once this node lost the table's shard (its rows are still in the replicated
/// log, which the new owner reads). Replies with the bytes freed.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct DropTable {
    /// The table.
    pub table: TableRef,
    /// Why, for the waiters' error.
    pub reason: String,
}
