//! Catalog checkpoints: the whole state at a version, `catalog/checkpoint/{version:020}.json`,
//! so that loading reads one checkpoint and the commits after it instead of every commit since
//! the first.
//!
//! A checkpoint is only a shortcut: the log stays the truth. Loading takes the newest
//! checkpoint that reads back whole and falls back to older ones (or to the full log) when one
//! is damaged; writing one may fail without harm.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use serde::{Deserialize, Serialize};

use super::CatalogError;
use super::log::{load_between, parse_version};
use super::state::{CatalogState, DataFile, RemovedFile, ShardState, TableEntry};
use crate::ids::{Seq, TableRef};
use crate::schema::TableSchema;
use crate::storage::Storage;

/// Folder of the checkpoints.
pub const CHECKPOINT_PREFIX: &str = "catalog/checkpoint";

/// A checkpoint is written every this many versions.
pub const CHECKPOINT_EVERY: u64 = 100;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Checkpoint {
    version: u64,
    tables: Vec<CheckpointTable>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointTable {
    table: TableRef,
    schema_version: u32,
    schema: TableSchema,
    /// Definitions of the versions before `schema_version`, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    earlier_schemas: Vec<TableSchema>,
    files: Vec<DataFile>,
    committed_seq: Seq,
    created_in: u64,
    #[serde(default)]
    removed: Vec<RemovedFile>,
    #[serde(default)]
    readable_from: u64,
    #[serde(default, skip_serializing_if = "is_default_shard")]
    shard: ShardState,
}

fn is_default_shard(s: &ShardState) -> bool {
    *s == ShardState::default()
}

/// Object path of the checkpoint at `version`.
pub fn checkpoint_path(version: u64) -> ObjectPath {
    ObjectPath::from(format!("{CHECKPOINT_PREFIX}/{version:020}.json"))
}

fn encode(state: &CatalogState) -> Result<Vec<u8>, CatalogError> {
    let cp = Checkpoint {
        version: state.version,
        tables: state
            .tables
            .iter()
            .map(|(t, e)| CheckpointTable {
                table: t.clone(),
                schema_version: e.schema_version,
                schema: (*e.schema).clone(),
                earlier_schemas: e.schemas[..e.schemas.len().saturating_sub(1)]
                    .iter()
                    .map(|s| (**s).clone())
                    .collect(),
                files: e.files.iter().map(|f| (**f).clone()).collect(),
                committed_seq: e.committed_seq,
                created_in: e.created_in,
                removed: e.removed.clone(),
                readable_from: e.readable_from,
                shard: e.shard.clone(),
            })
            .collect(),
    };
    serde_json::to_vec(&cp).map_err(|e| CatalogError::Encode(e.to_string()))
}

fn decode(bytes: &[u8]) -> Result<CatalogState, String> {
    let cp: Checkpoint = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let mut tables = BTreeMap::new();
    for t in cp.tables {
        if t.earlier_schemas.len() + 1 != t.schema_version as usize {
            return Err(format!(
                "table {} is at schema version {} but lists {} earlier versions",
                t.table,
                t.schema_version,
                t.earlier_schemas.len()
            ));
        }
        let schema = Arc::new(t.schema);
        let mut schemas: Vec<Arc<TableSchema>> =
            t.earlier_schemas.into_iter().map(Arc::new).collect();
        schemas.push(schema.clone());
        let entry = TableEntry {
            schema_version: t.schema_version,
            schema,
            schemas,
            files: t.files.into_iter().map(Arc::new).collect(),
            committed_seq: t.committed_seq,
            created_in: t.created_in,
            removed: t.removed,
            readable_from: t.readable_from.max(t.created_in),
            shard: t.shard,
        };
        if tables.insert(t.table.clone(), Arc::new(entry)).is_some() {
            return Err(format!("table {} appears twice", t.table));
        }
    }
    Ok(CatalogState {
        version: cp.version,
        tables,
    })
}

/// Writes a checkpoint of `state`.
pub async fn write(storage: &Storage, state: &CatalogState) -> Result<(), CatalogError> {
    let bytes = encode(state)?;
    storage
        .put(&checkpoint_path(state.version), Bytes::from(bytes))
        .await?;
    Ok(())
}

/// Loads the catalog: the newest readable checkpoint, then every commit after it.
pub async fn load(storage: &Storage) -> Result<CatalogState, CatalogError> {
    load_upto(storage, u64::MAX).await
}

/// Loads the catalog as it was at `version` (time travel): the newest readable checkpoint at or
/// below it, then the commits up to it. [`CatalogError::NoSuchVersion`] when the log does not
/// reach that far.
pub async fn load_at(storage: &Storage, version: u64) -> Result<CatalogState, CatalogError> {
    let state = load_upto(storage, version).await?;
    if state.version != version {
        return Err(CatalogError::NoSuchVersion {
            version,
            newest: state.version,
        });
    }
    Ok(state)
}

async fn load_upto(storage: &Storage, upto: u64) -> Result<CatalogState, CatalogError> {
    let mut checkpoints: Vec<(u64, ObjectPath)> = storage
        .list(&ObjectPath::from(CHECKPOINT_PREFIX))
        .await?
        .into_iter()
        .filter_map(|m| parse_version(&m.location).map(|v| (v, m.location)))
        .filter(|(v, _)| *v <= upto)
        .collect();
    checkpoints.sort_by_key(|(v, _)| std::cmp::Reverse(*v));
    for (version, path) in checkpoints {
        let bytes = storage.get(&path).await?;
        match decode(&bytes) {
            Ok(state) if state.version == version => {
                tracing::debug!(version, "catalog checkpoint loaded");
                return load_between(storage, state, upto).await;
            }
            Ok(state) => {
                tracing::warn!(path = %path, found = state.version, "catalog checkpoint names another version, skipped")
            }
            Err(reason) => {
                tracing::warn!(path = %path, %reason, "unreadable catalog checkpoint, skipped")
            }
        }
    }
    load_between(storage, CatalogState::default(), upto).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::catalog::log::{commit, commit_path};
    use crate::catalog::state::Action;
    use crate::ids::{TableName, TenantId};

    fn t(name: &str) -> TableRef {
        TableRef::new(
            TenantId::new("acme").unwrap(),
            TableName::new(name).unwrap(),
        )
    }

    #[tokio::test]
    async fn loads_from_the_newest_good_checkpoint_plus_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::local(dir.path()).unwrap();
        let schema: TableSchema =
            serde_json::from_str(r#"{"fields":[{"name":"a","type":"int64"}]}"#).unwrap();
        let v2: TableSchema = serde_json::from_str(
            r#"{"fields":[{"name":"a","type":"int64"},{"name":"b","type":"bool"}]}"#,
        )
        .unwrap();
        let mut state = Arc::new(CatalogState::default());
        for i in 0..5 {
            let mut actions = vec![Action::CreateTable {
                table: t(&format!("t{i}")),
                schema: schema.clone(),
            }];
            if i == 2 {
                // Earlier schema versions survive the checkpoint.
                actions.push(Action::EvolveSchema {
                    table: t("t0"),
                    version: 2,
                    schema: v2.clone(),
                });
            }
            let (next, res) = commit(&storage, state, "create_table", &actions).await;
            res.unwrap();
            state = next;
            if state.version == 3 {
                write(&storage, &state).await.unwrap();
            }
        }
        let full = crate::catalog::log::load_from(&storage, CatalogState::default())
            .await
            .unwrap();
        assert_eq!(load(&storage).await.unwrap(), full);
        assert_eq!(full.table(&t("t0")).unwrap().schemas.len(), 2);

        // With the checkpoint, commits up to 3 are not read: remove them to prove it.
        for v in 1..=3 {
            storage.delete(&commit_path(v)).await.unwrap();
        }
        assert_eq!(load(&storage).await.unwrap(), full);

        // A damaged newer checkpoint is skipped in favour of an older one.
        storage
            .put(&checkpoint_path(4), Bytes::from_static(b"{\"version\":4,"))
            .await
            .unwrap();
        assert_eq!(load(&storage).await.unwrap(), full);
    }
}
