//! Commit events derived from catalog commits: what a flush, a compaction or a schema change
//! did to each table, in the payload of [`CommitEvent`].
//!
//! Derivation is a pure function of the commit and the catalog before and after it, so an
//! event is the same every time it is derived: replays, restarts and every sink agree on its
//! id and content.

use alluvium_actors::catalog::log::CommitRecord;
use alluvium_actors::catalog::{Action, CatalogState, DataFile};
use alluvium_actors::ids::TableRef;
use alluvium_nats::{CommitEvent, CommitKind, EventFile};

fn event_file(f: &DataFile) -> EventFile {
    EventFile {
        path: f.path.clone(),
        partition: f.partition.clone(),
        size_bytes: f.size_bytes,
        rows: f.rows,
        min_seq: f.min_seq,
        max_seq: f.max_seq,
        min_time: f.min_time,
        max_time: f.max_time,
        schema_version: f.schema_version,
    }
}

/// The events of `record`, which turned `before` into `after`. Flushes give `flushed` events
/// (only when files were added), compactions `compacted`, table creation and schema versions
/// `schema`; purges of replaced files give none.
pub fn derive(
    lake_id: &str,
    before: &CatalogState,
    after: &CatalogState,
    record: &CommitRecord,
) -> Vec<CommitEvent> {
    let mut out: Vec<CommitEvent> = Vec::new();
    let find = |out: &mut Vec<CommitEvent>, table: &TableRef, kind: CommitKind| -> usize {
        if let Some(i) = out.iter().position(|e| {
            e.kind == kind && e.tenant == table.tenant.as_str() && e.table == table.table.as_str()
        }) {
            return i;
        }
        out.push(CommitEvent {
            id: String::new(),
            lake_id: lake_id.to_string(),
            kind,
            tenant: table.tenant.as_str().to_string(),
            table: table.table.as_str().to_string(),
            catalog_version: record.version,
            committed_at: record.committed_at.clone(),
            schema_version: after.table(table).map_or(0, |e| e.schema_version),
            files_added: Vec::new(),
            files_removed: Vec::new(),
            rows_added: 0,
            rows_removed: 0,
            committed_seq: None,
            schema: None,
        });
        out.len() - 1
    };
    for action in &record.actions {
        match action {
            Action::CreateTable { table, schema } => {
                let i = find(&mut out, table, CommitKind::Schema);
                out[i].schema_version = 1;
                out[i].schema = serde_json::to_value(schema).ok();
            }
            Action::EvolveSchema {
                table,
                version,
                schema,
            } => {
                let i = find(&mut out, table, CommitKind::Schema);
                out[i].schema_version = *version;
                out[i].schema = serde_json::to_value(schema).ok();
            }
            Action::AddFile { table, file } => {
                let i = find(&mut out, table, CommitKind::Flushed);
                out[i].files_added.push(event_file(file));
            }
            Action::CommittedSeq { table, seq } => {
                let i = find(&mut out, table, CommitKind::Flushed);
                out[i].committed_seq = Some(*seq);
            }
            Action::ReplaceFiles {
                table, remove, add, ..
            } => {
                let i = find(&mut out, table, CommitKind::Compacted);
                out[i].files_added.extend(add.iter().map(event_file));
                let old = before.table(table);
                for path in remove {
                    let file = old.and_then(|e| e.files.iter().find(|f| &f.path == path));
                    out[i].files_removed.push(match file {
                        Some(f) => event_file(f),
                        // Not in the state before: the commit would not have applied. Keep
                        // the path so the event still names it.
                        None => EventFile {
                            path: path.clone(),
                            partition: String::new(),
                            size_bytes: 0,
                            rows: 0,
                            min_seq: 0,
                            max_seq: 0,
                            min_time: None,
                            max_time: None,
                            schema_version: 0,
                        },
                    });
                }
            }
            // Shard ownership and stream positions are bookkeeping of cluster mode.
            Action::PurgeFiles { .. }
            | Action::ClaimShard { .. }
            | Action::Fence { .. }
            | Action::StreamRange { .. } => {}
        }
    }
    // A flush that added no file (nothing to write) announces nothing.
    out.retain(|e| e.kind != CommitKind::Flushed || !e.files_added.is_empty());
    for (index, e) in out.iter_mut().enumerate() {
        e.id = CommitEvent::make_id(record.version, index);
        e.rows_added = e.files_added.iter().map(|f| f.rows).sum();
        e.rows_removed = e.files_removed.iter().map(|f| f.rows).sum();
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use alluvium_actors::ids::{TableName, TenantId};
    use alluvium_actors::schema::TableSchema;

    use super::*;

    fn t(name: &str) -> TableRef {
        TableRef::new(
            TenantId::new("acme").unwrap(),
            TableName::new(name).unwrap(),
        )
    }

    fn file(path: &str, seqs: (u64, u64), rows: u64) -> DataFile {
        DataFile {
            path: path.into(),
            partition: "all".into(),
            size_bytes: 100 * rows,
            rows,
            min_seq: seqs.0,
            max_seq: seqs.1,
            schema_version: 1,
            min_time: Some(5),
            max_time: Some(9),
            min_key: None,
            max_key: None,
            index: None,
        }
    }

    fn commit(state: &CatalogState, actions: Vec<Action>) -> (CatalogState, Vec<CommitEvent>) {
        let version = state.version + 1;
        let record = CommitRecord {
            version,
            committed_at: "2026-11-26T00:00:00Z".into(),
            operation: "test".into(),
            actions,
        };
        let next = state.apply(version, &record.actions).unwrap();
        let events = derive("lake", state, &next, &record);
        (next, events)
    }

    #[test]
    fn flushes_compactions_and_schema_versions_become_events() {
        let schema: TableSchema =
            serde_json::from_str(r#"{"fields":[{"name":"a","type":"int64"}]}"#).unwrap();
        let create = |name: &str| Action::CreateTable {
            table: t(name),
            schema: schema.clone(),
        };
        let (s1, ev) = commit(&CatalogState::default(), vec![create("x"), create("y")]);
        assert_eq!(ev.len(), 2);
        assert_eq!((ev[0].id.as_str(), ev[1].id.as_str()), ("1:0", "1:1"));
        assert!(
            ev.iter()
                .all(|e| e.kind == CommitKind::Schema && e.schema_version == 1)
        );
        assert_eq!(ev[1].table, "y");
        assert!(ev[0].schema.is_some());

        // A flush of two files of x and a committed sequence.
        let (s2, ev) = commit(
            &s1,
            vec![
                Action::AddFile {
                    table: t("x"),
                    file: file("a", (1, 3), 3),
                },
                Action::AddFile {
                    table: t("x"),
                    file: file("b", (4, 5), 2),
                },
                Action::CommittedSeq {
                    table: t("x"),
                    seq: 5,
                },
            ],
        );
        assert_eq!(ev.len(), 1);
        let e = &ev[0];
        assert_eq!(
            (e.kind, e.rows_added, e.committed_seq),
            (CommitKind::Flushed, 5, Some(5))
        );
        assert_eq!(e.files_added[1].path, "b");
        assert_eq!(
            (e.files_added[1].min_seq, e.files_added[1].max_time),
            (4, Some(9))
        );
        assert_eq!((e.lake_id.as_str(), e.catalog_version), ("lake", 2));
        assert!(e.files_removed.is_empty());

        // A flush that wrote nothing announces nothing.
        let (s3, ev) = commit(
            &s2,
            vec![Action::CommittedSeq {
                table: t("y"),
                seq: 1,
            }],
        );
        assert!(ev.is_empty(), "{ev:?}");

        // A compaction: removed files are described from the catalog before the commit.
        let (_, ev) = commit(
            &s3,
            vec![Action::ReplaceFiles {
                table: t("x"),
                remove: vec!["a".into(), "b".into()],
                add: vec![file("c", (1, 5), 5)],
                at_ms: 0,
            }],
        );
        assert_eq!(ev.len(), 1);
        let e = &ev[0];
        assert_eq!(e.kind, CommitKind::Compacted);
        assert_eq!((e.rows_added, e.rows_removed), (5, 5));
        assert_eq!(e.files_removed[0].size_bytes, 300);
        assert_eq!(e.id, "4:0");
    }
}
