//! The shard epochs a cluster-mode processing node holds, consulted by its flushes and
//! compactions so that every commit they make carries the epoch it was made under.
//!
//! A standalone node has no fences: its commits carry none, and nothing refuses them. A
//! cluster node adds a table's epoch once its claim is committed ([`Fences::hold`]) and removes
//! it when the lease is lost ([`Fences::release`]); from then on its flushes and compactions of
//! that table stop before writing anything. The catalog is the real fence: a node that lost its
//! lease without noticing still carries its old epoch, and the catalog refuses the commit.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use crate::ids::TableRef;

/// Epochs of the shards this node owns; cheap to clone, shared by the flush and compaction
/// actors and the shard manager.
#[derive(Debug, Clone, Default)]
pub struct Fences {
    /// `None` on a standalone node.
    held: Option<Arc<RwLock<HashMap<TableRef, u64>>>>,
    /// Commits the catalog refused because their epoch was no longer current.
    refused: Arc<std::sync::atomic::AtomicU64>,
}

/// Why a cluster node may not commit for a table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this node does not own the shard of table {0} (any more)")]
pub struct NotOwner(pub String);

impl Fences {
    /// No fencing: a standalone node.
    pub fn standalone() -> Fences {
        Fences {
            held: None,
            refused: Arc::default(),
        }
    }

    /// An empty set of fences of a cluster node: nothing may be committed until a claim is
    /// held.
    pub fn cluster() -> Fences {
        Fences {
            held: Some(Arc::default()),
            refused: Arc::default(),
        }
    }

    /// Whether this node is a cluster node.
    pub fn is_cluster(&self) -> bool {
        self.held.is_some()
    }

    /// The epoch to commit `table` under: `Ok(None)` on a standalone node, the held epoch on a
    /// cluster node, or [`NotOwner`].
    pub fn epoch(&self, table: &TableRef) -> Result<Option<u64>, NotOwner> {
        let Some(held) = &self.held else {
            return Ok(None);
        };
        let held = held.read().unwrap_or_else(PoisonError::into_inner);
        held.get(table)
            .copied()
            .map(Some)
            .ok_or_else(|| NotOwner(table.to_string()))
    }

    /// Records that this node's claim of `table` at `epoch` is committed.
    pub fn hold(&self, table: &TableRef, epoch: u64) {
        if let Some(held) = &self.held {
            held.write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(table.clone(), epoch);
        }
    }

    /// Forgets the claim of `table` (the lease was lost or given up).
    pub fn release(&self, table: &TableRef) {
        if let Some(held) = &self.held {
            held.write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(table);
        }
    }

    /// Counts a commit the catalog refused as fenced (this node's epoch was stale).
    pub fn note_refused(&self) {
        self.refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Commits the catalog refused as fenced since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The tables this node owns now (empty on a standalone node).
    pub fn owned(&self) -> Vec<TableRef> {
        match &self.held {
            Some(held) => held
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .keys()
                .cloned()
                .collect(),
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ids::{TableName, TenantId};

    #[test]
    fn standalone_never_fences_and_cluster_needs_a_claim() {
        let t = TableRef::new(TenantId::new("a").unwrap(), TableName::new("b").unwrap());
        assert_eq!(Fences::standalone().epoch(&t), Ok(None));
        let f = Fences::cluster();
        assert!(f.epoch(&t).is_err());
        f.clone().hold(&t, 3);
        assert_eq!(f.epoch(&t), Ok(Some(3)));
        assert_eq!(f.owned(), vec![t.clone()]);
        f.release(&t);
        assert!(f.epoch(&t).is_err());
    }
}
