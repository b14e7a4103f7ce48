//! Actor shell of the catalog: owns the current snapshot, serializes this process's commits.

use std::sync::Arc;

use actix::{
    Actor, ActorFutureExt, AsyncContext, AtomicResponse, Context, Handler, Supervised, WrapFuture,
};

use super::messages::{Commit, Snapshot};
use super::{CatalogError, CatalogState, checkpoint, log};
use crate::storage::Storage;

/// Commits are few (one per table creation or flush), so a small mailbox suffices; a full one
/// means commits back up behind a slow object store and callers should wait.
const MAILBOX_CAPACITY: usize = 256;

/// Owns the catalog snapshot and writes commits to the object store one at a time.
#[derive(Debug)]
pub struct CatalogActor {
    storage: Storage,
    state: Arc<CatalogState>,
}

impl CatalogActor {
    /// Starts from a state already loaded with [`log::load_from`].
    pub fn new(storage: Storage, state: Arc<CatalogState>) -> Self {
        Self { storage, state }
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
        AtomicResponse::new(Box::pin(
            async move { log::commit(&storage, state, msg.operation, &msg.actions).await }
                .into_actor(self)
                .map(|(state, res), act, ctx| {
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
