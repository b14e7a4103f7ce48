//! Actor shell of the catalog: owns the current snapshot, serializes this process's commits.

use std::sync::Arc;

use actix::{
    Actor, ActorFutureExt, AsyncContext, AtomicResponse, Context, Handler, Supervised, WrapFuture,
};

use tokio::sync::broadcast;

use super::messages::{Commit, Refresh, Snapshot};
use super::{Action, CatalogError, CatalogState, checkpoint, log};
use crate::storage::Storage;

/// Commits are few (one per table creation or flush), so a small mailbox suffices; a full one
/// means commits back up behind a slow object store and callers should wait.
const MAILBOX_CAPACITY: usize = 256;

/// Commit notices a slow subscriber may fall behind by before it misses some (it is told how
/// many it missed and can re-read the log).
const NOTICE_BACKLOG: usize = 1024;

/// What one commit changed, announced in process once the commit is durable: flushes and
/// compactions reach downstream subscribers from here.
#[derive(Debug, Clone)]
pub struct CommitNotice {
    /// The version the commit created.
    pub version: u64,
    /// What caused it: `create_table`, `flush`, `compaction`, `purge`.
    pub operation: &'static str,
    /// The changes.
    pub actions: Vec<Action>,
}

/// Owns the catalog snapshot and writes commits to the object store one at a time.
#[derive(Debug)]
pub struct CatalogActor {
    storage: Storage,
    state: Arc<CatalogState>,
    notices: broadcast::Sender<Arc<CommitNotice>>,
}

impl CatalogActor {
    /// Starts from a state already loaded with [`log::load_from`].
    pub fn new(storage: Storage, state: Arc<CatalogState>) -> Self {
        let (notices, _) = broadcast::channel(NOTICE_BACKLOG);
        Self {
            storage,
            state,
            notices,
        }
    }

    /// Where commit notices are sent; `subscribe()` on it to receive those after that call.
    pub fn notices(&self) -> broadcast::Sender<Arc<CommitNotice>> {
        self.notices.clone()
    }
}

impl Actor for CatalogActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
    }
}

impl Supervised for CatalogActor {
    fn restarting(&mut self, ctx: &mut Self::Context) {
        // The log is the truth: catch up with anything committed that the old state missed.
        let storage = self.storage.clone();
        let from = (*self.state).clone();
        ctx.wait(
            async move { log::load_from(&storage, from).await }
                .into_actor(self)
                .map(|res, act, _| match res {
                    Ok(state) => act.state = Arc::new(state),
                    Err(e) => tracing::error!(error = %e, "catalog reload after restart failed"),
                }),
        );
    }
}

impl Handler<Commit> for CatalogActor {
    type Result = AtomicResponse<Self, Result<Arc<CatalogState>, CatalogError>>;

    fn handle(&mut self, msg: Commit, _ctx: &mut Self::Context) -> Self::Result {
        let storage = self.storage.clone();
        let state = self.state.clone();
        let operation = msg.operation;
        AtomicResponse::new(Box::pin(
            async move {
                let (state, res) = log::commit(&storage, state, operation, &msg.actions).await;
                (state, res, msg.actions)
            }
            .into_actor(self)
            .map(move |(state, res, actions), act, ctx| {
                    if res.is_ok() {
                        // No subscriber is not an error.
                        let _ = act.notices.send(Arc::new(CommitNotice {
                            version: state.version,
                            operation,
                            actions,
                        }));
                    }
                    // Keep what was read even when the commit failed: later commits and
                    // snapshots start from the newest known version.
                    act.state = state.clone();
                    if res.is_ok() && state.version % checkpoint::CHECKPOINT_EVERY == 0 {
                        let storage = act.storage.clone();
                        let snapshot = state.clone();
                        ctx.spawn(
                            async move {
                                if let Err(e) = checkpoint::write(&storage, &snapshot).await {
                                    tracing::warn!(version = snapshot.version, error = %e, "catalog checkpoint failed");
                                }
                            }
                            .into_actor(act),
                        );
                    }
                    res.map(|()| state)
                }),
        ))
    }
}

impl Handler<Snapshot> for CatalogActor {
    type Result = Arc<CatalogState>;

    fn handle(&mut self, _msg: Snapshot, _ctx: &mut Self::Context) -> Self::Result {
        self.state.clone()
    }
}

/// The `&'static str` naming an operation read back from the log.
fn known_operation(operation: &str) -> &'static str {
    match operation {
        "create_table" => "create_table",
        "evolve_schema" => "evolve_schema",
        "flush" => "flush",
        "compaction" => "compaction",
        "purge" => "purge",
        "claim_shard" => "claim_shard",
        _ => "other",
    }
}

/// Most commits one refresh applies; the next refresh takes the rest.
const REFRESH_BATCH: usize = 256;

impl Handler<Refresh> for CatalogActor {
    type Result = AtomicResponse<Self, Result<Arc<CatalogState>, CatalogError>>;

    fn handle(&mut self, _msg: Refresh, _ctx: &mut Self::Context) -> Self::Result {
        let storage = self.storage.clone();
        let state = self.state.clone();
        AtomicResponse::new(Box::pin(
            async move {
                let mut state = state;
                let mut read = Vec::new();
                for _ in 0..REFRESH_BATCH {
                    let version = state.version + 1;
                    let Some(record) = log::read_commit(&storage, version).await? else {
                        break;
                    };
                    let next = state.apply(version, &record.actions).map_err(|e| {
                        CatalogError::Corrupt {
                            path: log::commit_path(version).to_string(),
                            reason: format!("commit does not apply: {e}"),
                        }
                    })?;
                    state = Arc::new(next);
                    read.push(record);
                }
                Ok::<_, CatalogError>((state, read))
            }
            .into_actor(self)
            .map(|res, act, _| {
                let (state, read) = res?;
                // Commits of this process that raced ahead of the refresh are not read twice:
                // the state only moves forward.
                if state.version > act.state.version {
                    act.state = state;
                    for record in read {
                        let _ = act.notices.send(Arc::new(CommitNotice {
                            version: record.version,
                            operation: known_operation(&record.operation),
                            actions: record.actions,
                        }));
                    }
                }
                Ok(act.state.clone())
            }),
        ))
    }
}
