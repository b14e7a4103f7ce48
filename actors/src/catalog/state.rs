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
}

impl DataFile {
    /// Whether the file's key range may hold the key whose encoding is `key_hex` (files
    /// without a recorded range may hold anything).
    pub fn may_hold_key(&self, key_hex: &str) -> bool {
        let above_min = self.min_key.as_deref().is_none_or(|m| m <= key_hex);
        let below_max = self.max_key.as_deref().is_none_or(|m| key_hex <= m);
        above_min && below_max
    }
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
}

/// A table as the catalog knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct TableEntry {
    /// Current schema version.
    pub schema_version: u32,
    /// Current definition.
    pub schema: Arc<TableSchema>,
    /// Live data files in commit order.
    pub files: Vec<Arc<DataFile>>,
    /// Highest sequence whose events are all in `files`.
    pub committed_seq: Seq,
    /// Catalog version that created the table.
    pub created_in: u64,
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
                    next.tables.insert(
                        table.clone(),
                        Arc::new(TableEntry {
                            schema_version: 1,
                            schema: Arc::new(schema.clone()),
                            files: Vec::new(),
                            committed_seq: 0,
                            created_in: version,
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
            }
        }
        Ok(next)
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
}
