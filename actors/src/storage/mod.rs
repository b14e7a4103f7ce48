//! The object store shared by flush, catalog and queries, and Parquet encoding.
//!
//! Local storage is `object_store`'s `LocalFileSystem` with fsync enabled, so a `put` that
//! returns has its file and its directory entries on disk; object stores such as S3 are durable
//! when the `PUT` returns. Callers rely on that: files are written first and committed to the
//! catalog second.
//!
//! [`s3`] opens S3 and S3-compatible buckets ([`Storage::s3`]) and parses lake URLs
//! ([`StoreUrl`]); [`Storage::probe`] checks at startup that the store answers.

pub mod index;
pub mod mvcc;
pub mod parquet;
pub mod s3;

pub use s3::{S3Settings, StoreUrl};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The object store failed.
    #[error("object store error at {path}: {source}")]
    ObjectStore {
        /// Object path concerned.
        path: String,
        /// Underlying error.
        #[source]
        source: object_store::Error,
    },
    /// The local root could not be prepared.
    #[error("cannot prepare storage root {path}: {source}")]
    Root {
        /// Root directory.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Parquet encoding or decoding failed.
    #[error("parquet error in {path}: {source}")]
    Parquet {
        /// Object path concerned (or `<memory>`).
        path: String,
        /// Underlying error.
        #[source]
        source: ::parquet::errors::ParquetError,
    },
    /// A storage URL or setting is invalid.
    #[error("invalid storage configuration: {0}")]
    Config(String),
    /// The store failed its reachability probe ([`Storage::probe`]).
    #[error("{target} {problem}")]
    Unavailable {
        /// The store: "S3 bucket `b` at https://..." or its description.
        target: String,
        /// What went wrong, in words, with the underlying error.
        problem: String,
    },
}

/// Whether a create-only put won.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object did not exist and now holds our bytes.
    Created,
    /// Another writer created the object first; nothing was written.
    AlreadyExists,
}

/// A handle to the lake's object store. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    description: String,
    /// A client with short timeouts for [`Storage::probe`]; `None` probes through `store`.
    probe: Option<Arc<s3::Probe>>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("store", &self.description)
            .finish()
    }
}

impl Storage {
    /// Opens a local object store rooted at `root` (created if missing), fsyncing every write.
    pub fn local(root: &Path) -> Result<Self, StorageError> {
        let root_err = |source| StorageError::Root {
            path: root.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(root).map_err(root_err)?;
        let root = root.canonicalize().map_err(root_err)?;
        let store = LocalFileSystem::new_with_prefix(&root)
            .map_err(|source| StorageError::ObjectStore {
                path: root.display().to_string(),
                source,
            })?
            .with_fsync(true);
        Ok(Self {
            store: Arc::new(store),
            description: format!("file://{}", root.display()),
            probe: None,
        })
    }

    /// Wraps any object store (S3, memory).
    pub fn from_store(store: Arc<dyn ObjectStore>, description: impl Into<String>) -> Self {
        Self {
            store,
            description: description.into(),
            probe: None,
        }
    }

    /// Where the store lives, for logs and `/readyz`.
    pub fn description(&self) -> &str {
        &self.description
    }

    fn err(path: &ObjectPath) -> impl FnOnce(object_store::Error) -> StorageError + '_ {
        move |source| StorageError::ObjectStore {
            path: path.to_string(),
            source,
        }
    }

    /// Passes the `storage.put` failpoint: an injected failure looks like the store's own.
    async fn put_failpoint(path: &ObjectPath) -> Result<(), StorageError> {
        crate::failpoint::hit_async("storage.put")
            .await
            .map_err(|e| {
                Self::err(path)(object_store::Error::Generic {
                    store: "failpoint",
                    source: Box::new(e),
                })
            })
    }

    /// Writes `bytes` at `path`, replacing any object there; durable when it returns.
    pub async fn put(&self, path: &ObjectPath, bytes: Bytes) -> Result<(), StorageError> {
        Self::put_failpoint(path).await?;
        self.store
            .put(path, PutPayload::from(bytes))
            .await
            .map_err(Self::err(path))?;
        Ok(())
    }

    /// Writes `bytes` at `path` only if nothing is there yet (a conditional put), so that of
    /// concurrent writers exactly one wins.
    pub async fn put_new(
        &self,
        path: &ObjectPath,
        bytes: Bytes,
    ) -> Result<PutOutcome, StorageError> {
        Self::put_failpoint(path).await?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(path, PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => Ok(PutOutcome::Created),
            // S3 answers a lost `If-None-Match: *` with 412, which object_store 0.14 wraps in
            // `AlreadyExists`; a bare `Precondition` is taken the same way for stores that do not.
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(PutOutcome::AlreadyExists),
            Err(source) => Err(Self::err(path)(source)),
        }
    }

    /// Reads a whole object.
    pub async fn get(&self, path: &ObjectPath) -> Result<Bytes, StorageError> {
        let res = self.store.get(path).await.map_err(Self::err(path))?;
        res.bytes().await.map_err(Self::err(path))
    }

    /// Lists every object under `prefix`, in no particular order.
    pub async fn list(&self, prefix: &ObjectPath) -> Result<Vec<ObjectMeta>, StorageError> {
        self.store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(Self::err(prefix))
    }

    /// Deletes an object; deleting a missing object is not an error.
    pub async fn delete(&self, path: &ObjectPath) -> Result<(), StorageError> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(Self::err(path)(source)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_new_is_create_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::local(dir.path()).unwrap();
        let p = ObjectPath::from("catalog/log/00000000000000000001.json");
        assert_eq!(
            s.put_new(&p, Bytes::from_static(b"a")).await.unwrap(),
            PutOutcome::Created
        );
        assert_eq!(
            s.put_new(&p, Bytes::from_static(b"b")).await.unwrap(),
            PutOutcome::AlreadyExists
        );
        assert_eq!(s.get(&p).await.unwrap(), Bytes::from_static(b"a"));
        assert_eq!(s.list(&ObjectPath::from("catalog")).await.unwrap().len(), 1);
        s.delete(&p).await.unwrap();
        s.delete(&p).await.unwrap();
        assert!(
            s.list(&ObjectPath::from("catalog"))
                .await
                .unwrap()
                .is_empty()
        );
    }
}
