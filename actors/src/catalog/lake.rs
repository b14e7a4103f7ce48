//! The lake's identity: a random id created once per object store (`catalog/lake.json`, by a
//! create-only put, so every node sharing the store reads the same id). It tells one lake's
//! commit events from another's: a lake created again from scratch on the same NATS account
//! restarts at catalog version 1, and without the id its events would look like duplicates of
//! the old lake's.

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use serde::{Deserialize, Serialize};

use super::CatalogError;
use crate::storage::{PutOutcome, Storage, StorageError};

/// Where the id is kept.
pub const LAKE_FILE: &str = "catalog/lake.json";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LakeFile {
    lake_id: String,
    created_at: String,
}

fn valid(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

async fn read(storage: &Storage, path: &ObjectPath) -> Result<Option<String>, CatalogError> {
    let bytes = match storage.get(path).await {
        Ok(b) => b,
        Err(StorageError::ObjectStore {
            source: object_store::Error::NotFound { .. },
            ..
        }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let file: LakeFile = serde_json::from_slice(&bytes).map_err(|e| CatalogError::Corrupt {
        path: path.to_string(),
        reason: format!("not a lake identity file: {e}"),
    })?;
    if !valid(&file.lake_id) {
        return Err(CatalogError::Corrupt {
            path: path.to_string(),
            reason: format!("lake id {:?} is not 32 hex digits", file.lake_id),
        });
    }
    Ok(Some(file.lake_id))
}

/// The lake's id, created on first use.
pub async fn lake_id(storage: &Storage) -> Result<String, CatalogError> {
    let path = ObjectPath::from(LAKE_FILE);
    if let Some(id) = read(storage, &path).await? {
        return Ok(id);
    }
    let file = LakeFile {
        lake_id: uuid::Uuid::new_v4().simple().to_string(),
        created_at: chrono::Utc::now().to_rfc3339(),
    };
    let bytes = serde_json::to_vec(&file).map_err(|e| CatalogError::Corrupt {
        path: path.to_string(),
        reason: e.to_string(),
    })?;
    match storage.put_new(&path, Bytes::from(bytes)).await? {
        PutOutcome::Created => Ok(file.lake_id),
        // Another node created it first: theirs it is.
        PutOutcome::AlreadyExists => {
            read(storage, &path)
                .await?
                .ok_or_else(|| CatalogError::Corrupt {
                    path: path.to_string(),
                    reason: "created by another writer but not readable".into(),
                })
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn created_once_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::local(dir.path()).unwrap();
        let a = lake_id(&storage).await.unwrap();
        assert!(valid(&a));
        assert_eq!(lake_id(&storage).await.unwrap(), a);
        let dir2 = tempfile::tempdir().unwrap();
        let other = Storage::local(dir2.path()).unwrap();
        assert_ne!(lake_id(&other).await.unwrap(), a);
        std::fs::write(
            dir.path().join(LAKE_FILE),
            b"{\"lake_id\":\"x\",\"created_at\":\"\"}",
        )
        .unwrap();
        assert!(lake_id(&storage).await.is_err());
    }
}
