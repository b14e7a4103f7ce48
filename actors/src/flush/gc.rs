//! Orphan GC: removes data files (and their index sidecars) that a flush or a compaction wrote
//! but never committed.
//!
//! A flush writes its Parquet files first and commits them to the catalog second, so a crash (or
//! a failed commit) in between leaves files no catalog version references. Replay then flushes
//! the same rows again under new names, so an orphan is garbage, never the only copy of
//! anything. [`remove_orphans`] runs at node start, after the catalog is loaded and before any
//! flush can start: no write of this process is in flight, so every unreferenced data file is an
//! orphan rather than a file about to be committed.
//!
//! Only objects shaped exactly like our data files are considered
//! (`tables/{tenant}/{table}/data/{partition}/{min_seq:020}-{max_seq:020}-{id}.parquet`, and the
//! same name ending in `.index` for a sidecar), and
//! only for tables the catalog knows: anything else on the store (a user's file, the data of a
//! table whose catalog entry is missing) is left alone. [`orphans`] is the pure selection,
//! tested on its own; [`remove_orphans`] lists and deletes.
//!
//! What it does not do: it cannot see the staging files (`name#N`) of a put interrupted by the
//! crash, which the local object store hides from listings; and it assumes a single writer per
//! table (standalone), since a file another node is about to commit would look like an orphan.

use std::collections::HashSet;

use object_store::ObjectMeta;
use object_store::path::Path as ObjectPath;

use crate::catalog::CatalogState;
use crate::ids::{TableName, TableRef, TenantId};
use crate::storage::{Storage, StorageError};

/// Prefix under which every table's files live.
pub const TABLES_PREFIX: &str = "tables";

/// What one GC pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Orphan files deleted.
    pub files: usize,
    /// Their total size in bytes.
    pub bytes: u64,
}

/// The table a data file belongs to, if `path` has exactly the shape of a data file.
fn data_file_table(path: &ObjectPath) -> Option<TableRef> {
    let parts: Vec<_> = path.parts().collect();
    let [root, tenant, table, data, partition, file] = parts.as_slice() else {
        return None;
    };
    if root.as_ref() != TABLES_PREFIX || data.as_ref() != "data" || partition.as_ref().is_empty() {
        return None;
    }
    let name = file.as_ref();
    let stem = name
        .strip_suffix(".parquet")
        .or_else(|| name.strip_suffix(".index"))?;
    let mut fields = stem.splitn(3, '-');
    let is_seq =
        |s: Option<&str>| s.is_some_and(|s| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()));
    if !is_seq(fields.next()) || !is_seq(fields.next()) || fields.next().is_none_or(str::is_empty) {
        return None;
    }
    let tenant = TenantId::new(tenant.as_ref()).ok()?;
    let table = TableName::new(table.as_ref()).ok()?;
    Some(TableRef::new(tenant, table))
}

/// The objects of `listing` that are data files of a table `state` knows but that no file of
/// `state` references, live or replaced by a compaction and awaiting deletion.
pub fn orphans<'a>(listing: &'a [ObjectMeta], state: &CatalogState) -> Vec<&'a ObjectMeta> {
    let referenced: HashSet<&str> =
        state
            .tables
            .values()
            .flat_map(|t| {
                t.files
                    .iter()
                    .flat_map(|f| {
                        std::iter::once(f.path.as_str())
                            .chain(f.index.as_ref().map(|i| i.path.as_str()))
                    })
                    .chain(t.removed.iter().flat_map(|r| {
                        std::iter::once(r.path.as_str()).chain(r.index_path.as_deref())
                    }))
            })
            .collect();
    listing
        .iter()
        .filter(|m| !referenced.contains(m.location.as_ref()))
        .filter(|m| data_file_table(&m.location).is_some_and(|t| state.table(&t).is_some()))
        .collect()
}

/// Lists the tables' files on `storage` and deletes every orphan of `state` (see [`orphans`]),
/// logging each. Must run while no flush is in flight. Stops at the first failed delete.
pub async fn remove_orphans(
    storage: &Storage,
    state: &CatalogState,
) -> Result<GcReport, StorageError> {
    let listing = storage.list(&ObjectPath::from(TABLES_PREFIX)).await?;
    let mut report = GcReport::default();
    for meta in orphans(&listing, state) {
        storage.delete(&meta.location).await?;
        tracing::info!(path = %meta.location, bytes = meta.size, "orphan data file deleted");
        report.files += 1;
        report.bytes += meta.size;
    }
    Ok(report)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::catalog::{Action, DataFile};

    const COMMITTED: &str =
        "tables/acme/ev/data/2026-11-25/00000000000000000001-00000000000000000004-aa.parquet";
    const ORPHAN: &str =
        "tables/acme/ev/data/2026-11-25/00000000000000000005-00000000000000000009-bb.parquet";

    fn table(name: &str) -> TableRef {
        TableRef::new(
            TenantId::new("acme").unwrap(),
            TableName::new(name).unwrap(),
        )
    }

    fn state() -> CatalogState {
        let schema = serde_json::from_str(r#"{"fields":[{"name":"a","type":"int64"}]}"#).unwrap();
        let file = DataFile {
            path: COMMITTED.into(),
            partition: "2026-11-25".into(),
            size_bytes: 10,
            rows: 4,
            min_seq: 1,
            max_seq: 4,
            schema_version: 1,
            min_time: None,
            max_time: None,
            min_key: None,
            max_key: None,
            index: None,
        };
        CatalogState::default()
            .apply(
                1,
                &[Action::CreateTable {
                    table: table("ev"),
                    schema,
                }],
            )
            .unwrap()
            .apply(
                2,
                &[
                    Action::AddFile {
                        table: table("ev"),
                        file,
                    },
                    Action::CommittedSeq {
                        table: table("ev"),
                        seq: 4,
                    },
                ],
            )
            .unwrap()
    }

    fn meta(path: &str) -> ObjectMeta {
        ObjectMeta {
            location: ObjectPath::from(path),
            last_modified: chrono::Utc::now(),
            size: 7,
            e_tag: None,
            version: None,
        }
    }

    fn selected(paths: &[&str]) -> Vec<String> {
        let listing: Vec<_> = paths.iter().map(|p| meta(p)).collect();
        orphans(&listing, &state())
            .into_iter()
            .map(|m| m.location.to_string())
            .collect()
    }

    #[test]
    fn only_unreferenced_data_files_of_known_tables_are_orphans() {
        assert_eq!(selected(&[COMMITTED, ORPHAN]), [ORPHAN]);
        // An orphan whose rows were committed later under another file is still an orphan.
        let replaced =
            "tables/acme/ev/data/all/00000000000000000001-00000000000000000004-cc.parquet";
        assert_eq!(selected(&[replaced]), [replaced]);
    }

    #[test]
    fn anything_not_shaped_like_our_data_files_is_kept() {
        let kept = [
            // Tables the catalog does not know, or invalid names.
            "tables/acme/other/data/all/00000000000000000001-00000000000000000004-aa.parquet",
            "tables/nobody/ev/data/all/00000000000000000001-00000000000000000004-aa.parquet",
            "tables/ACME/ev/data/all/00000000000000000001-00000000000000000004-aa.parquet",
            // Wrong depth or folder.
            "tables/acme/ev/data/00000000000000000001-00000000000000000004-aa.parquet",
            "tables/acme/ev/data/a/b/00000000000000000001-00000000000000000004-aa.parquet",
            "tables/acme/ev/index/all/00000000000000000001-00000000000000000004-aa.parquet",
            "other/acme/ev/data/all/00000000000000000001-00000000000000000004-aa.parquet",
            // Not one of our file names.
            "tables/acme/ev/data/all/00000000000000000001-00000000000000000004-aa.json",
            "tables/acme/ev/data/all/mine.parquet",
            "tables/acme/ev/data/all/1-4-aa.parquet",
            "tables/acme/ev/data/all/00000000000000000001-00000000000000000004-.parquet",
            "tables/acme/ev/data/all/00000000000000000001-00000000000000000004.parquet",
        ];
        assert_eq!(selected(&kept), Vec::<String>::new());
    }

    #[tokio::test]
    async fn remove_orphans_deletes_only_orphans() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::local(dir.path()).unwrap();
        let other = "tables/acme/ev/data/all/notes.txt";
        for p in [COMMITTED, ORPHAN, other] {
            storage
                .put(&ObjectPath::from(p), Bytes::from_static(b"12345"))
                .await
                .unwrap();
        }
        let report = remove_orphans(&storage, &state()).await.unwrap();
        assert_eq!(report, GcReport { files: 1, bytes: 5 });
        let mut left: Vec<String> = storage
            .list(&ObjectPath::from(TABLES_PREFIX))
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.location.to_string())
            .collect();
        left.sort();
        assert_eq!(left, [COMMITTED, other]);
        // A second pass finds nothing.
        assert_eq!(
            remove_orphans(&storage, &state()).await.unwrap(),
            GcReport::default()
        );
    }
}
