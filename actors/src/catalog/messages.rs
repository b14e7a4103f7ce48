//! Messages of the catalog actor.

use std::sync::Arc;

use actix::Message;

use super::{Action, CatalogError, CatalogState};

/// Commits `actions` as one new catalog version and replies with the new snapshot.
#[derive(Debug, Message)]
#[rtype(result = "Result<Arc<CatalogState>, CatalogError>")]
pub struct Commit {
    /// What caused the commit (`create_table`, `flush`), recorded in the log.
    pub operation: &'static str,
    /// The changes, applied all or nothing.
    pub actions: Vec<Action>,
}

/// Replies with the current snapshot.
#[derive(Debug, Message)]
#[rtype(result = "Arc<CatalogState>")]
pub struct Snapshot;

/// Reads the commits other writers (other nodes sharing the lake) made since this actor's
/// snapshot, applies them and announces each as a commit notice; replies with the newest
/// snapshot.
#[derive(Debug, Message)]
#[rtype(result = "Result<Arc<CatalogState>, CatalogError>")]
pub struct Refresh;
