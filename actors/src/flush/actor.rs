//! Actor shell of the flush: encodes off the arbiter, writes, commits.

use std::sync::Arc;

use actix::{Actor, Addr, AtomicResponse, Context, Handler, Supervised, WrapFuture};
use tracing::Instrument as _;

use super::messages::Flush;
use super::{FlushError, build_files};
use crate::background::spawn_niced;
use crate::catalog::messages::{Commit, Snapshot};
use crate::catalog::{Action, CatalogActor, CatalogError, CatalogState, Fences};
use crate::ids::{Seq, TableRef};
use crate::storage::Storage;

/// Flushes arrive one per frozen memtable, at most one in flight per table: a small mailbox
/// is plenty, and a full one means flushing fell behind.
const MAILBOX_CAPACITY: usize = 64;

/// Turns frozen memtables into committed files, one flush at a time so Parquet encoding never
/// takes more than one core from ingest.
#[derive(Debug)]
pub struct FlushActor {
    storage: Storage,
    catalog: Addr<CatalogActor>,
    fences: Fences,
}

impl FlushActor {
    /// A flusher writing to `storage` and committing to `catalog`.
    pub fn new(storage: Storage, catalog: Addr<CatalogActor>) -> Self {
        Self {
            storage,
            catalog,
            fences: Fences::standalone(),
        }
    }

    /// Cluster mode: flushes only tables whose shard this node owns, each commit carrying the
    /// owner epoch and the stream messages it covers (sequences are stream positions, see
    /// [`crate::ids::cluster_seq`]).
    pub fn fenced(mut self, fences: Fences) -> Self {
        self.fences = fences;
        self
    }
}

impl Actor for FlushActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
    }
}

impl Supervised for FlushActor {}

fn committed_seq(state: &CatalogState, table: &TableRef) -> Seq {
    state.table(table).map_or(0, |e| e.committed_seq)
}

impl Handler<Flush> for FlushActor {
    type Result = AtomicResponse<Self, Result<Arc<CatalogState>, FlushError>>;

    fn handle(&mut self, msg: Flush, _ctx: &mut Self::Context) -> Self::Result {
        let storage = self.storage.clone();
        let catalog = self.catalog.clone();
        let fences = self.fences.clone();
        let span = tracing::info_span!("flush", table = %msg.table, rows = msg.memtable.len());
        crate::trace::link(&span, msg.memtable.links());
        AtomicResponse::new(Box::pin(
            async move {
                let started = std::time::Instant::now();
                let table = msg.table.clone();
                let memtable = msg.memtable.clone();
                let Some((min_seq, max_seq)) = memtable.seq_range() else {
                    return Err(FlushError::Encode("empty memtable".into()));
                };
                let epoch = fences
                    .epoch(&table)
                    .map_err(|e| FlushError::Fenced(e.to_string()))?;
                // An earlier attempt may have committed these rows and still reported an error
                // (a put that landed, then failed): then there is nothing left to do.
                let before = catalog
                    .send(Snapshot)
                    .await
                    .map_err(|e| FlushError::Mailbox(e.to_string()))?;
                if committed_seq(&before, &table) >= max_seq {
                    tracing::warn!(table = %table, max_seq, "memtable already committed, not flushing it again");
                    return Ok(before);
                }
                let t = table.clone();
                let files = spawn_niced("alluvium-flush", move || build_files(&t, &memtable))
                    .map_err(|e| FlushError::Encode(format!("cannot start a flush thread: {e}")))?
                    .await
                    .map_err(|_| FlushError::Encode("the flush thread died".into()))??;
                for f in &files {
                    f.put(&storage)
                        .await
                        .map_err(|e| FlushError::Storage(e.to_string()))?;
                }
                // A crash here leaves the files just written as orphans for the GC at start.
                crate::failpoint::hit_async("flush.after_write")
                    .await
                    .map_err(|e| FlushError::Storage(e.to_string()))?;
                let written: Vec<String> = files
                    .iter()
                    .flat_map(|f| {
                        std::iter::once(f.file.path.clone())
                            .chain(f.file.index.as_ref().map(|r| r.path.clone()))
                    })
                    .collect();
                let rows: u64 = files.iter().map(|f| f.file.rows).sum();
                let bytes: u64 = files.iter().map(|f| f.file.size_bytes).sum();
                let mut actions: Vec<Action> = files
                    .into_iter()
                    .map(|f| Action::AddFile {
                        table: table.clone(),
                        file: f.file,
                    })
                    .collect();
                let n_files = actions.len();
                actions.push(Action::CommittedSeq {
                    table: table.clone(),
                    seq: max_seq,
                });
                // The fence first, so a stale owner is told it is fenced rather than that
                // its rows are committed (by the new owner).
                if let Some(epoch) = epoch {
                    actions.insert(0, Action::StreamRange {
                        table: table.clone(),
                        epoch,
                        first: crate::ids::stream_seq_of(min_seq),
                        last: crate::ids::stream_seq_of(max_seq),
                    });
                }
                let committed = catalog
                    .send(Commit {
                        operation: "flush",
                        actions,
                    })
                    .await
                    .map_err(|e| FlushError::Mailbox(e.to_string()))?;
                let state = match committed {
                    Ok(state) => state,
                    Err(CatalogError::AlreadyCommitted { committed, .. }) if committed >= max_seq => {
                        // Our earlier attempt's commit is in the log after all; the files just
                        // written are orphans for GC.
                        tracing::warn!(table = %table, max_seq, "flush found its rows already committed");
                        return catalog
                            .send(Snapshot)
                            .await
                            .map_err(|e| FlushError::Mailbox(e.to_string()));
                    }
                    Err(e @ CatalogError::Fenced { .. }) => {
                        // Another node owns the shard now: what was written is never
                        // committed, and goes.
                        fences.note_refused();
                        tracing::warn!(table = %table, error = %e, "flush refused: this node's shard epoch is stale");
                        for path in &written {
                            let _ = storage
                                .delete(&object_store::path::Path::from(path.as_str()))
                                .await;
                        }
                        return Err(FlushError::Fenced(e.to_string()));
                    }
                    Err(e) => return Err(FlushError::Catalog(e.to_string())),
                };
                tracing::info!(
                    table = %table,
                    version = state.version,
                    files = n_files,
                    rows,
                    bytes,
                    committed_seq = max_seq,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "flush committed"
                );
                Ok(state)
            }
            .instrument(span)
            .into_actor(self),
        ))
    }
}
