//! The catalog's transaction log on the object store: `catalog/log/{version:020}.json`.
//!
//! Each commit is one JSON object created with a conditional put, so of two writers racing for
//! the same version exactly one wins and the other re-reads and retries. Loading replays every
//! commit in version order; a gap or an unreadable commit refuses to load rather than guess.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use serde::{Deserialize, Serialize};

use super::CatalogError;
use super::state::{Action, CatalogState};
use crate::storage::{PutOutcome, Storage, StorageError};

/// Folder of the commit log.
pub const LOG_PREFIX: &str = "catalog/log";

/// One commit as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitRecord {
    /// The version this commit creates.
    pub version: u64,
    /// When it was committed (RFC 3339).
    pub committed_at: String,
    /// What caused it: `create_table`, `flush`, ...
    pub operation: String,
    /// The changes.
    pub actions: Vec<Action>,
}

/// Object path of a version's commit file.
pub fn commit_path(version: u64) -> ObjectPath {
    ObjectPath::from(format!("{LOG_PREFIX}/{version:020}.json"))
}

/// The version in a `{version:020}.json` object name.
pub(crate) fn parse_version(path: &ObjectPath) -> Option<u64> {
    let name = path.filename()?;
    let digits = name.strip_suffix(".json")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Reads the commit that created `version`; `Ok(None)` if it does not exist (yet).
pub async fn read_commit(
    storage: &Storage,
    version: u64,
) -> Result<Option<CommitRecord>, CatalogError> {
    let path = commit_path(version);
    let bytes = match storage.get(&path).await {
        Ok(bytes) => bytes,
        Err(StorageError::ObjectStore {
            source: object_store::Error::NotFound { .. },
            ..
        }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let record: CommitRecord =
        serde_json::from_slice(&bytes).map_err(|e| CatalogError::Corrupt {
            path: path.to_string(),
            reason: format!("not a valid commit: {e}"),
        })?;
    if record.version != version {
        return Err(CatalogError::Corrupt {
            path: path.to_string(),
            reason: format!("file says version {}", record.version),
        });
    }
    Ok(Some(record))
}

/// Replays the log from `from` (exclusive: a state at version `from.version`) up to the newest
/// commit.
pub async fn load_from(
    storage: &Storage,
    from: CatalogState,
) -> Result<CatalogState, CatalogError> {
    load_between(storage, from, u64::MAX).await
}

/// Replays the log from `from` (exclusive) up to version `upto` (inclusive) or the newest
/// commit, whichever comes first.
pub async fn load_between(
    storage: &Storage,
    from: CatalogState,
    upto: u64,
) -> Result<CatalogState, CatalogError> {
    let mut versions: Vec<(u64, ObjectPath)> = storage
        .list(&ObjectPath::from(LOG_PREFIX))
        .await?
        .into_iter()
        .filter_map(|m| match parse_version(&m.location) {
            Some(v) => Some((v, m.location)),
            None => {
                tracing::warn!(path = %m.location, "ignoring unexpected object in the catalog log");
                None
            }
        })
        .filter(|(v, _)| *v > from.version && *v <= upto)
        .collect();
    versions.sort_by_key(|(v, _)| *v);
    let mut state = from;
    for (v, path) in versions {
        if v != state.version + 1 {
            return Err(CatalogError::Corrupt {
                path: path.to_string(),
                reason: format!(
                    "version {v} follows version {}: commits {}..{} are missing",
                    state.version,
                    state.version + 1,
                    v - 1
                ),
            });
        }
        let bytes = storage.get(&path).await?;
        let record: CommitRecord =
            serde_json::from_slice(&bytes).map_err(|e| CatalogError::Corrupt {
                path: path.to_string(),
                reason: format!("not a valid commit: {e}"),
            })?;
        if record.version != v {
            return Err(CatalogError::Corrupt {
                path: path.to_string(),
                reason: format!("file says version {}", record.version),
            });
        }
        state = state
            .apply(v, &record.actions)
            .map_err(|e| CatalogError::Corrupt {
                path: path.to_string(),
                reason: format!("commit does not apply: {e}"),
            })?;
    }
    Ok(state)
}

/// Writes `actions` as version `state.version + 1` if no one else has; returns the new state.
/// `Ok(None)` means another writer took that version: reload and retry.
pub async fn try_commit(
    storage: &Storage,
    state: &CatalogState,
    operation: &str,
    actions: &[Action],
) -> Result<Option<CatalogState>, CatalogError> {
    let version = state.version + 1;
    let next = state.apply(version, actions)?;
    let record = CommitRecord {
        version,
        committed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        operation: operation.to_string(),
        actions: actions.to_vec(),
    };
    let bytes = serde_json::to_vec(&record).map_err(|e| CatalogError::Encode(e.to_string()))?;
    let path = commit_path(version);
    match storage.put_new(&path, Bytes::from(bytes)).await? {
        PutOutcome::Created => {
            // The commit is durable; a crash or error here is a commit the writer never
            // learned of, which replay and the flush's retry must treat as done.
            crate::failpoint::hit_async("catalog.after_commit")
                .await
                .map_err(|e| StorageError::ObjectStore {
                    path: path.to_string(),
                    source: object_store::Error::Generic {
                        store: "failpoint",
                        source: Box::new(e),
                    },
                })?;
            Ok(Some(next))
        }
        PutOutcome::AlreadyExists => Ok(None),
    }
}

/// How many times a commit re-reads the log and retries after losing a race for a version.
const MAX_COMMIT_ATTEMPTS: usize = 16;

/// Commits `actions` on top of `state`, re-reading the log and re-validating whenever another
/// writer took the next version first. Returns the newest state known (with the commit applied
/// when it succeeded, and including what other writers committed either way) and the outcome.
pub async fn commit(
    storage: &Storage,
    mut state: Arc<CatalogState>,
    operation: &str,
    actions: &[Action],
) -> (Arc<CatalogState>, Result<(), CatalogError>) {
    for _ in 0..MAX_COMMIT_ATTEMPTS {
        match try_commit(storage, &state, operation, actions).await {
            Ok(Some(next)) => return (Arc::new(next), Ok(())),
            Ok(None) => {}
            Err(e) => return (state, Err(e)),
        }
        tracing::info!(
            version = state.version + 1,
            "catalog version taken by another writer, reloading"
        );
        match load_from(storage, (*state).clone()).await {
            Ok(newer) => state = Arc::new(newer),
            Err(e) => return (state, Err(e)),
        }
    }
    let err = CatalogError::Conflict(format!(
        "gave up after {MAX_COMMIT_ATTEMPTS} lost races for the next catalog version"
    ));
    (state, Err(err))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ids::{TableName, TableRef, TenantId};

    fn t(name: &str) -> TableRef {
        TableRef::new(
            TenantId::new("acme").unwrap(),
            TableName::new(name).unwrap(),
        )
    }

    fn create(name: &str) -> Action {
        Action::CreateTable {
            table: t(name),
            schema: serde_json::from_str(r#"{"fields":[{"name":"a","type":"int64"}]}"#).unwrap(),
        }
    }

    #[tokio::test]
    async fn commits_replay_and_conflicts_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::local(dir.path()).unwrap();
        let s0 = CatalogState::default();
        let s1 = try_commit(&storage, &s0, "create_table", &[create("a")])
            .await
            .unwrap()
            .unwrap();
        // A second writer still at version 0 loses the race for version 1.
        assert!(
            try_commit(&storage, &s0, "create_table", &[create("b")])
                .await
                .unwrap()
                .is_none()
        );
        let s2 = try_commit(&storage, &s1, "create_table", &[create("b")])
            .await
            .unwrap()
            .unwrap();
        let loaded = load_from(&storage, CatalogState::default()).await.unwrap();
        assert_eq!(loaded, s2);
        assert_eq!(loaded.version, 2);
        // A stale writer's commit() reloads, re-validates (table c is new) and lands at 3.
        let (s3, res) = commit(&storage, Arc::new(s1), "create_table", &[create("c")]).await;
        res.unwrap();
        assert_eq!(s3.version, 3);
        assert_eq!(s3.tables.len(), 3);
        // ...and a stale writer re-creating an existing table gets a clean error.
        let stale = Arc::new(CatalogState::default());
        let (latest, res) = commit(&storage, stale, "create_table", &[create("a")]).await;
        assert!(matches!(res, Err(CatalogError::TableExists(_))));
        // The caller still learns the newest state it read.
        assert_eq!(latest.version, 3);
    }

    #[tokio::test]
    async fn gaps_and_garbage_refuse_to_load() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::local(dir.path()).unwrap();
        storage
            .put(&commit_path(2), Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let err = load_from(&storage, CatalogState::default())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        storage
            .put(&commit_path(1), Bytes::from_static(b"not json"))
            .await
            .unwrap();
        let err = load_from(&storage, CatalogState::default())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("00000000000000000001.json"),
            "{err}"
        );
    }
}
