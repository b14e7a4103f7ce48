//! Messages of the flush actor.

use std::sync::Arc;

use actix::Message;

use super::FlushError;
use crate::catalog::CatalogState;
use crate::ids::TableRef;
use crate::memtable::Memtable;

/// Writes a frozen memtable as Parquet files and commits them; replies with the catalog
/// snapshot that includes them.
#[derive(Debug, Message)]
#[rtype(result = "Result<Arc<CatalogState>, FlushError>")]
pub struct Flush {
    /// The table.
    pub table: TableRef,
    /// The frozen memtable; never written again.
    pub memtable: Arc<Memtable>,
}
