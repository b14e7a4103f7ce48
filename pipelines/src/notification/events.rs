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
            Action::PurgeFiles { .. } => {}
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
