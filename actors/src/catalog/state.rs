//! The catalog's state: what a replay of the commit log up to some version says exists.
//!
//! Immutable once built: a commit produces a new state sharing unchanged tables with the old
//! one, so readers hold an `Arc<CatalogState>` as their snapshot while commits go on.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::CatalogError;
use crate::ids::{Seq, TableRef};
use crate::schema::TableSchema;

/// A committed Parquet data file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFile {
    /// Object path from the store root.
    pub path: String,
    /// Partition name (`all`, `2026-11-25`, ...).
    pub partition: String,
    /// Size of the object in bytes.
    pub size_bytes: u64,
    /// Number of rows.
    pub rows: u64,
    /// Smallest `_seq` in the file.
    pub min_seq: Seq,
    /// Largest `_seq` in the file.
    pub max_seq: Seq,
    /// Schema version the rows were written with.
    pub schema_version: u32,
    /// Smallest value of the time column, in its unit (timestamps) or days (dates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_time: Option<i64>,
    /// Largest value of the time column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_time: Option<i64>,
    /// Smallest primary key in the file, as hex of its order-preserving encoding (upsert
    /// tables); point lookups skip files whose key range cannot hold the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_key: Option<String>,
    /// Largest primary key in the file, encoded like `min_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_key: Option<String>,
    /// Its secondary index sidecar, when the table declares indexes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<IndexRef>,
}

/// A data file's secondary index sidecar (see [`crate::storage::index`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexRef {
    /// Object path from the store root.
    pub path: String,
    /// Size of the object in bytes.
    pub size_bytes: u64,
    /// The columns it indexes.
    pub columns: Vec<String>,
}

impl DataFile {
    /// Whether the file has a secondary index on `column`.
    pub fn indexed(&self, column: &str) -> bool {
        self.index
            .as_ref()
            .is_some_and(|i| i.columns.iter().any(|c| c == column))
    }

    /// Whether the file's key range may hold the key whose encoding is `key_hex` (files
    /// without a recorded range may hold anything).
    pub fn may_hold_key(&self, key_hex: &str) -> bool {
        let above_min = self.min_key.as_deref().is_none_or(|m| m <= key_hex);
        let below_max = self.max_key.as_deref().is_none_or(|m| key_hex <= m);
        above_min && below_max
    }
}

/// A file a compaction replaced. Catalog versions before `removed_in` still list it, so it stays
/// on the store until no reader can need it; then the file GC deletes it and records that with
/// [`Action::PurgeFiles`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedFile {
    /// Object path from the store root.
    pub path: String,
    /// Size of the object in bytes.
    pub size_bytes: u64,
    /// The catalog version whose commit replaced it.
    pub removed_in: u64,
    /// When that commit was made, in milliseconds since the epoch.
    pub removed_at_ms: i64,
    /// Its secondary index sidecar, deleted with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_path: Option<String>,
}

/// One change recorded in a commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// A new table with its first schema version (1).
    CreateTable {
        /// The table.
        table: TableRef,
        /// Its definition.
        schema: TableSchema,
    },
    /// A file joins the table.
    AddFile {
        /// The table.
        table: TableRef,
        /// The file.
        file: DataFile,
    },
    /// Every event of the table with a sequence up to `seq` is in committed files: the WAL
    /// may drop them and replay skips them.
    CommittedSeq {
        /// The table.
        table: TableRef,
        /// Highest sequence now in files.
        seq: Seq,
    },
    /// A compaction's result: `remove` (live files of the table) are replaced by `add`, which
    /// hold the same events (minus versions and tombstones no reader can see any more).
    ReplaceFiles {
        /// The table.
        table: TableRef,
        /// Paths of the replaced files.
        remove: Vec<String>,
        /// The files that replace them.
        add: Vec<DataFile>,
        /// When the compaction committed, in milliseconds since the epoch (starts the grace
        /// period of the replaced files).
        at_ms: i64,
    },
    /// A new version of a table's schema (the next number), an allowed evolution of the
    /// current one (see [`crate::schema::evolve`]).
    EvolveSchema {
        /// The table.
        table: TableRef,
        /// The new version: the current one plus one.
        version: u32,
        /// The new definition.
        schema: TableSchema,
    },
    /// Replaced files were deleted from the store: versions that listed them are no longer
    /// readable.
    PurgeFiles {
        /// The table.
        table: TableRef,
        /// Paths of the deleted files (each one of the table's removed files).
        paths: Vec<String>,
    },
    /// Cluster mode: a processing node takes over the table's shard with a higher owner epoch.
    /// From this commit on, commits carrying an older epoch are refused, so a stale owner (one
    /// that lost its lease without noticing) can no longer change the table.
    ClaimShard {
        /// The table (one shard).
        table: TableRef,
        /// The new epoch: above the current one.
        epoch: u64,
        /// The node that claims it.
        owner: String,
    },
    /// Cluster mode: the commit is made by the owner of the table's shard at `epoch`; refused
    /// unless that is the current epoch. Compactions carry it.
    Fence {
        /// The table.
        table: TableRef,
        /// The epoch the committing node holds.
        epoch: u64,
    },
    /// Cluster mode: a flush by the shard owner at `epoch` commits the events of
    /// `ALLUVIUM_INGEST` messages `first..=last` of this table; the next owner resumes after
    /// `last`. Refused unless `epoch` is current and the range starts after the recorded
    /// position.
    StreamRange {
        /// The table.
        table: TableRef,
        /// The epoch the committing node holds.
        epoch: u64,
        /// Stream sequence of the first message committed.
        first: u64,
        /// Stream sequence of the last message committed.
        last: u64,
    },
}

/// A table as the catalog knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct TableEntry {
    /// Current schema version.
    pub schema_version: u32,
    /// Current definition.
    pub schema: Arc<TableSchema>,
    /// Every version's definition: `schemas[v - 1]` is version `v` (the last is `schema`).
    /// Rows in the WAL, memtables and files name the version they were written with.
    pub schemas: Vec<Arc<TableSchema>>,
    /// Live data files in commit order.
    pub files: Vec<Arc<DataFile>>,
    /// Highest sequence whose events are all in `files`.
    pub committed_seq: Seq,
    /// Catalog version that created the table.
    pub created_in: u64,
    /// Files replaced by compactions and not yet deleted, oldest first.
    pub removed: Vec<RemovedFile>,
    /// The oldest catalog version at which the table can still be read: older versions list
    /// files that were deleted.
    pub readable_from: u64,
    /// Cluster mode: who owns the table's shard, and where its stream position is.
    pub shard: ShardState,
}

/// The shard of a table in cluster mode: its owner epoch and committed stream position. All
/// zero for a table that was never processed by a cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardState {
    /// The newest claim's epoch (0: never claimed).
    #[serde(default)]
    pub epoch: u64,
    /// The node that made it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    /// Highest `ALLUVIUM_INGEST` stream sequence whose events (of this table) are committed.
    #[serde(default)]
    pub stream_seq: u64,
}

impl ShardState {
    fn check_epoch(&self, table: &TableRef, epoch: u64) -> Result<(), CatalogError> {
        if epoch != self.epoch {
            return Err(CatalogError::Fenced {
                table: table.to_string(),
                epoch,
                current: self.epoch,
                owner: if self.owner.is_empty() {
                    "nobody".into()
                } else {
                    self.owner.clone()
                },
            });
        }
        Ok(())
    }
}

impl TableEntry {
    /// The definition of schema version `version`, if the table has it.
    pub fn schema_at(&self, version: u32) -> Option<&Arc<TableSchema>> {
        let i = usize::try_from(version).ok()?.checked_sub(1)?;
        self.schemas.get(i)
    }
}

/// The catalog at one version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CatalogState {
    /// Version of the last applied commit; 0 for an empty catalog.
    pub version: u64,
    /// Tables by name.
    pub tables: BTreeMap<TableRef, Arc<TableEntry>>,
}

impl CatalogState {
    /// The table entry, if the table exists.
    pub fn table(&self, t: &TableRef) -> Option<&Arc<TableEntry>> {
        self.tables.get(t)
    }

    /// Every table's committed sequence, for WAL replay and truncation.
    pub fn committed_seqs(&self) -> std::collections::HashMap<TableRef, Seq> {
        self.tables
            .iter()
            .map(|(t, e)| (t.clone(), e.committed_seq))
            .collect()
    }

    /// Returns the state after `actions` at `version`, or why they do not apply. `self` is
    /// unchanged either way.
    pub fn apply(&self, version: u64, actions: &[Action]) -> Result<CatalogState, CatalogError> {
        let mut next = self.clone();
        next.version = version;
        for action in actions {
            match action {
                Action::CreateTable { table, schema } => {
                    if next.tables.contains_key(table) {
                        return Err(CatalogError::TableExists(table.to_string()));
                    }
                    let schema = Arc::new(schema.clone());
                    next.tables.insert(
                        table.clone(),
                        Arc::new(TableEntry {
                            schema_version: 1,
                            schema: schema.clone(),
                            schemas: vec![schema],
                            files: Vec::new(),
                            committed_seq: 0,
                            created_in: version,
                            removed: Vec::new(),
                            readable_from: version,
                            shard: ShardState::default(),
                        }),
                    );
                }
                // Both refuse events the table already has in files: a flush retried after a
                // commit that landed but reported an error must not add its rows twice.
                Action::AddFile { table, file } => {
                    let entry = Self::entry_mut(&mut next, table)?;
                    if file.min_seq <= entry.committed_seq {
                        return Err(CatalogError::AlreadyCommitted {
                            table: table.to_string(),
                            committed: entry.committed_seq,
                        });
                    }
                    entry.files.push(Arc::new(file.clone()));
                }
                Action::CommittedSeq { table, seq } => {
                    let entry = Self::entry_mut(&mut next, table)?;
                    if *seq <= entry.committed_seq {
                        return Err(CatalogError::AlreadyCommitted {
                            table: table.to_string(),
                            committed: entry.committed_seq,
                        });
                    }
                    entry.committed_seq = *seq;
                }
                Action::ReplaceFiles {
                    table,
                    remove,
                    add,
                    at_ms,
                } => {
                    let entry = Self::entry_mut(&mut next, table)?;
                    replace_files(entry, version, remove, add, *at_ms)
                        .map_err(CatalogError::Conflict)?;
                }
                Action::EvolveSchema {
                    table,
                    version: v,
                    schema,
                } => {
                    let entry = Self::entry_mut(&mut next, table)?;
                    if *v != entry.schema_version + 1 {
                        return Err(CatalogError::Conflict(format!(
                            "schema version {v} of {table} does not follow the current version {}",
                            entry.schema_version
                        )));
                    }
                    crate::schema::evolve::check_change(&entry.schema, schema).map_err(|e| {
                        CatalogError::Conflict(format!("schema version {v} of {table}: {e}"))
                    })?;
                    let schema = Arc::new(schema.clone());
                    entry.schema_version = *v;
                    entry.schema = schema.clone();
                    entry.schemas.push(schema);
                }
                Action::PurgeFiles { table, paths } => {
                    let entry = Self::entry_mut(&mut next, table)?;
                    for path in paths {
                        let Some(i) = entry.removed.iter().position(|r| &r.path == path) else {
                            return Err(CatalogError::Conflict(format!(
                                "cannot purge {path}: it is not a removed file of {table}"
                            )));
                        };
                        let gone = entry.removed.remove(i);
                        entry.readable_from = entry.readable_from.max(gone.removed_in);
                    }
                }
                Action::ClaimShard {
                    table,
                    epoch,
                    owner,
                } => {
                    let entry = Self::entry_mut(&mut next, table)?;
                    if *epoch <= entry.shard.epoch {
                        return Err(CatalogError::Fenced {
                            table: table.to_string(),
                            epoch: *epoch,
                            current: entry.shard.epoch,
                            owner: entry.shard.owner.clone(),
                        });
                    }
                    entry.shard.epoch = *epoch;
                    entry.shard.owner = owner.clone();
                }
                Action::Fence { table, epoch } => {
                    let entry = Self::entry_mut(&mut next, table)?;
                    entry.shard.check_epoch(table, *epoch)?;
                }
                Action::StreamRange {
                    table,
                    epoch,
                    first,
                    last,
                } => {
                    let entry = Self::entry_mut(&mut next, table)?;
                    entry.shard.check_epoch(table, *epoch)?;
                    if first > last || *first <= entry.shard.stream_seq {
                        return Err(CatalogError::Conflict(format!(
                            "stream messages {first}..={last} of {table} overlap the committed position {}",
                            entry.shard.stream_seq
                        )));
                    }
                    entry.shard.stream_seq = *last;
                }
            }
        }
        Ok(next)
    }

    /// Whether any live or removed file of any table, or its index sidecar, has this path.
    pub fn references(&self, path: &str) -> bool {
        self.tables.values().any(|t| {
            t.files
                .iter()
                .any(|f| f.path == path || f.index.as_ref().is_some_and(|i| i.path == path))
                || t.removed
                    .iter()
                    .any(|r| r.path == path || r.index_path.as_deref() == Some(path))
        })
    }

    fn entry_mut<'a>(
        state: &'a mut CatalogState,
        table: &TableRef,
    ) -> Result<&'a mut TableEntry, CatalogError> {
        state
            .tables
            .get_mut(table)
            .map(Arc::make_mut)
            .ok_or_else(|| CatalogError::TableNotFound(table.to_string()))
    }
}

/// Applies a compaction's replacement to `entry`: every removed path must be a live file, and the
/// new files must hold only events of the removed ones (their sequences within the removed
/// files' range). The new files take the place of the first removed one in commit order.
fn replace_files(
    entry: &mut TableEntry,
    version: u64,
    remove: &[String],
    add: &[DataFile],
    at_ms: i64,
) -> Result<(), String> {
    if remove.is_empty() {
        return Err("a compaction must replace at least one file".into());
    }
    let mut positions = Vec::with_capacity(remove.len());
    for path in remove {
        let Some(i) = entry.files.iter().position(|f| &f.path == path) else {
            return Err(format!(
                "{path} is no longer a live file (another compaction replaced it)"
            ));
        };
        if positions.contains(&i) {
            return Err(format!("{path} is listed twice"));
        }
        positions.push(i);
    }
    let lo = positions
        .iter()
        .map(|&i| entry.files[i].min_seq)
        .min()
        .unwrap_or(0);
    let hi = positions
        .iter()
        .map(|&i| entry.files[i].max_seq)
        .max()
        .unwrap_or(0);
    if let Some(f) = add.iter().find(|f| f.min_seq < lo || f.max_seq > hi) {
        return Err(format!(
            "{} holds sequences {}..={} outside the replaced files' {lo}..={hi}",
            f.path, f.min_seq, f.max_seq
        ));
    }
    let first = positions.iter().copied().min().unwrap_or(0);
    let mut kept = Vec::with_capacity(entry.files.len() - positions.len() + add.len());
    for (i, f) in entry.files.iter().enumerate() {
        if i == first {
            kept.extend(add.iter().cloned().map(Arc::new));
        }
        if positions.contains(&i) {
            entry.removed.push(RemovedFile {
                path: f.path.clone(),
                size_bytes: f.size_bytes,
                removed_in: version,
                removed_at_ms: at_ms,
                index_path: f.index.as_ref().map(|i| i.path.clone()),
            });
        } else {
            kept.push(f.clone());
        }
    }
    entry.files = kept;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ids::{TableName, TenantId};

    fn t() -> TableRef {
        TableRef::new(
            TenantId::new("acme").unwrap(),
            TableName::new("ev").unwrap(),
        )
    }

    fn schema() -> TableSchema {
        serde_json::from_str(r#"{"fields":[{"name":"a","type":"int64"}]}"#).unwrap()
    }

    #[test]
    fn apply_is_validated_and_pure() {
        let s0 = CatalogState::default();
        let s1 = s0
            .apply(
                1,
                &[Action::CreateTable {
                    table: t(),
                    schema: schema(),
                }],
            )
            .unwrap();
        assert!(s0.tables.is_empty());
        assert!(matches!(
            s1.apply(
                2,
                &[Action::CreateTable {
                    table: t(),
                    schema: schema()
                }]
            ),
            Err(CatalogError::TableExists(_))
        ));
        let s2 = s1
            .apply(
                2,
                &[Action::CommittedSeq {
                    table: t(),
                    seq: 10,
                }],
            )
            .unwrap();
        assert_eq!(s2.table(&t()).unwrap().committed_seq, 10);
        assert_eq!(s1.table(&t()).unwrap().committed_seq, 0);
        assert!(
            s2.apply(3, &[Action::CommittedSeq { table: t(), seq: 9 }])
                .is_err()
        );
    }

    #[test]
    fn schema_versions_follow_each_other() {
        let s1 = CatalogState::default()
            .apply(
                1,
                &[Action::CreateTable {
                    table: t(),
                    schema: schema(),
                }],
            )
            .unwrap();
        let v2: TableSchema = serde_json::from_str(
            r#"{"fields":[{"name":"a","type":"int64"},{"name":"b","type":"string"}]}"#,
        )
        .unwrap();
        let evolve = |version, schema: &TableSchema| Action::EvolveSchema {
            table: t(),
            version,
            schema: schema.clone(),
        };
        assert!(s1.apply(2, &[evolve(3, &v2)]).is_err(), "skips a version");
        let narrowed: TableSchema =
            serde_json::from_str(r#"{"fields":[{"name":"a","type":"int32"}]}"#).unwrap();
        assert!(matches!(
            s1.apply(2, &[evolve(2, &narrowed)]),
            Err(CatalogError::Conflict(_))
        ));
        let s2 = s1.apply(2, &[evolve(2, &v2)]).unwrap();
        let e = s2.table(&t()).unwrap();
        assert_eq!(e.schema_version, 2);
        assert_eq!(*e.schema, v2);
        assert_eq!(**e.schema_at(1).unwrap(), schema());
        assert_eq!(**e.schema_at(2).unwrap(), v2);
        assert!(e.schema_at(0).is_none() && e.schema_at(3).is_none());
    }

    #[test]
    fn shard_claims_fence_older_epochs() {
        let s1 = CatalogState::default()
            .apply(
                1,
                &[Action::CreateTable {
                    table: t(),
                    schema: schema(),
                }],
            )
            .unwrap();
        let claim = |epoch, owner: &str| Action::ClaimShard {
            table: t(),
            epoch,
            owner: owner.into(),
        };
        let range = |epoch, first, last| Action::StreamRange {
            table: t(),
            epoch,
            first,
            last,
        };
        let s2 = s1.apply(2, &[claim(1, "p1")]).unwrap();
        assert!(s2.apply(3, &[claim(1, "p2")]).is_err(), "epochs only grow");
        let s3 = s2.apply(3, &[range(1, 5, 9)]).unwrap();
        assert_eq!(s3.table(&t()).unwrap().shard.stream_seq, 9);
        assert!(
            matches!(
                s3.apply(4, &[range(1, 9, 12)]),
                Err(CatalogError::Conflict(_))
            ),
            "a range must start after the committed position"
        );
        let s4 = s3.apply(4, &[claim(2, "p2")]).unwrap();
        // The old owner's flush and compaction are refused from now on, whole.
        let stale = [
            Action::CommittedSeq {
                table: t(),
                seq: 99,
            },
            range(1, 10, 12),
        ];
        let err = s4.apply(5, &stale).unwrap_err();
        assert!(
            matches!(&err, CatalogError::Fenced { epoch: 1, current: 2, owner, .. } if owner == "p2"),
            "{err}"
        );
        assert!(matches!(
            s4.apply(
                5,
                &[Action::Fence {
                    table: t(),
                    epoch: 1
                }]
            ),
            Err(CatalogError::Fenced { .. })
        ));
        let s5 = s4
            .apply(
                5,
                &[
                    range(2, 10, 12),
                    Action::Fence {
                        table: t(),
                        epoch: 2,
                    },
                ],
            )
            .unwrap();
        let shard = &s5.table(&t()).unwrap().shard;
        assert_eq!(
            (shard.epoch, shard.owner.as_str(), shard.stream_seq),
            (2, "p2", 12)
        );
    }

    fn file(path: &str, min_seq: Seq, max_seq: Seq) -> DataFile {
        DataFile {
            path: path.into(),
            partition: "all".into(),
            size_bytes: 10,
            rows: 1,
            min_seq,
            max_seq,
            schema_version: 1,
            min_time: None,
            max_time: None,
            min_key: None,
            max_key: None,
            index: None,
        }
    }

    #[test]
    fn replace_then_purge() {
        let s = CatalogState::default()
            .apply(
                1,
                &[Action::CreateTable {
                    table: t(),
                    schema: schema(),
                }],
            )
            .unwrap()
            .apply(
                2,
                &[
                    Action::AddFile {
                        table: t(),
                        file: file("a", 1, 5),
                    },
                    Action::AddFile {
                        table: t(),
                        file: file("b", 6, 9),
                    },
                    Action::AddFile {
                        table: t(),
                        file: file("c", 10, 12),
                    },
                    Action::CommittedSeq {
                        table: t(),
                        seq: 12,
                    },
                ],
            )
            .unwrap();
        let replace = |remove: &[&str], add: Vec<DataFile>| Action::ReplaceFiles {
            table: t(),
            remove: remove.iter().map(|p| p.to_string()).collect(),
            add,
            at_ms: 1000,
        };
        // Outputs must hold only the inputs' sequences.
        assert!(matches!(
            s.apply(3, &[replace(&["a", "b"], vec![file("ab", 1, 10)])]),
            Err(CatalogError::Conflict(_))
        ));
        assert!(matches!(
            s.apply(3, &[replace(&["a", "x"], vec![])]),
            Err(CatalogError::Conflict(_))
        ));
        let s3 = s
            .apply(3, &[replace(&["a", "b"], vec![file("ab", 1, 9)])])
            .unwrap();
        let e = s3.table(&t()).unwrap();
        let live: Vec<&str> = e.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(live, vec!["ab", "c"], "the output takes the inputs' place");
        assert_eq!(e.removed.len(), 2);
        assert_eq!(e.removed[0].removed_in, 3);
        assert!(s3.references("a") && s3.references("ab") && !s3.references("zz"));
        // Replacing a file twice is a conflict: the second compaction lost a race.
        assert!(s3.apply(4, &[replace(&["a", "c"], vec![])]).is_err());

        let s4 = s3
            .apply(
                4,
                &[Action::PurgeFiles {
                    table: t(),
                    paths: vec!["a".into(), "b".into()],
                }],
            )
            .unwrap();
        let e = s4.table(&t()).unwrap();
        assert!(e.removed.is_empty());
        assert_eq!(
            e.readable_from, 3,
            "versions before the compaction listed deleted files"
        );
        assert!(!s4.references("a"));
        assert!(
            s4.apply(
                5,
                &[Action::PurgeFiles {
                    table: t(),
                    paths: vec!["a".into()]
                }]
            )
            .is_err()
        );
    }
}
