//! Point lookups: the newest version of one key of an upsert table.
//!
//! Memtables are searched first (their rows are newer than any committed file) with a skiplist
//! range read on the key. Otherwise the committed files whose recorded key range may hold the
//! key are read newest first, stopping once no older file can hold a newer version. A winning
//! delete means the key does not exist.

use alluvium_actors::auth::{Principal, Scope};
use alluvium_actors::flush::hex;
use alluvium_actors::memtable::keys::encode_key_value;
use alluvium_actors::memtable::table::sort_columns;
use alluvium_actors::row::{Op, Row};
use alluvium_actors::schema::TableSchema;
use alluvium_actors::schema::arrow::{
    OP_COLUMN, RowRef, SEQ_COLUMN, arrow_schema, conform, rows_to_batch,
};
use alluvium_actors::schema::translate::{BatchLimits, BodyFormat, parse_batch};
use arrow::array::{Array, RecordBatch, UInt8Array, UInt64Array};
use arrow::row::{RowConverter, SortField};
use object_store::path::Path as ObjectPath;

use crate::filter::{CmpOp, Filter};
use crate::ingest::delete_event;
use crate::query::{HIDDEN, TableSnapshot, project};
use crate::scan::{ScanStats, read_file};
use crate::{Node, PipelineError};

fn internal(e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Unavailable(format!("lookup failed: {e}"))
}

/// The key of `key` (as written in a URL) typed by the schema: a row with the key's values.
fn key_row(schema: &TableSchema, key: &str) -> Result<Row, PipelineError> {
    let event = delete_event(schema, key)?;
    let body = serde_json::to_vec(&event).map_err(internal)?;
    let mut rows = parse_batch(&body, BodyFormat::Json, schema, &BatchLimits::default())?;
    rows.pop()
        .ok_or_else(|| PipelineError::InvalidKey("empty key".into()))
}

/// The newest version of the key in one decoded batch: `(seq, row index)`.
fn newest_in(
    batch: &RecordBatch,
    key_cols: &[String],
    probe: &RecordBatch,
) -> Result<Option<(u64, usize)>, PipelineError> {
    let arrays = |b: &RecordBatch| {
        key_cols
            .iter()
            .map(|k| {
                b.column_by_name(k)
                    .cloned()
                    .ok_or_else(|| internal(format!("key column {k} missing")))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let cols = arrays(batch)?;
    let converter = RowConverter::new(
        cols.iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect(),
    )
    .map_err(internal)?;
    let rows = converter.convert_columns(&cols).map_err(internal)?;
    let wanted = converter
        .convert_columns(&arrays(probe)?)
        .map_err(internal)?;
    let seqs = batch
        .column_by_name(SEQ_COLUMN)
        .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
        .ok_or_else(|| internal("_seq missing"))?;
    Ok((0..batch.num_rows())
        .filter(|&i| rows.row(i) == wanted.row(0))
        .map(|i| (seqs.value(i), i))
        .max())
}

fn is_delete(batch: &RecordBatch, i: usize) -> bool {
    batch
        .column_by_name(OP_COLUMN)
        .and_then(|c| c.as_any().downcast_ref::<UInt8Array>())
        .is_some_and(|ops| ops.value(i) == Op::Delete as u8)
}

impl Node {
    /// Returns the live row with primary key `key` (URL form, as for deletes) of an upsert
    /// table (`query` scope), as a one-row batch of every field (and the hidden columns when
    /// asked), now or as of an older catalog version.
    pub async fn lookup(
        &self,
        principal: &Principal,
        table: &str,
        key: &str,
        include_hidden: bool,
        as_of: Option<u64>,
    ) -> Result<RecordBatch, PipelineError> {
        let info = self
            .table_info(Self::authorized(principal, Scope::Query, table)?)
            .await?;
        // The snapshot's schema: it is at least as new as every row the snapshot holds.
        let TableSnapshot {
            mem,
            files,
            committed,
            _pin,
            schema,
            ..
        } = match as_of {
            Some(v) => self.snapshot_at(&info.table, v).await?,
            None => self.snapshot(&info.table).await?,
        };
        let schema = schema.unwrap_or(info.schema.clone());
        let key_cols = schema.primary_key.clone();
        let probe_row = key_row(&schema, key)?;
        let mut key_bytes = Vec::new();
        for i in sort_columns(&schema) {
            if let Some(v) = probe_row.values.get(i) {
                encode_key_value(v, &mut key_bytes);
            }
        }
        let mut cols: Vec<String> = schema.fields.iter().map(|f| f.name.clone()).collect();
        if include_hidden {
            cols.extend(HIDDEN.iter().map(|s| s.to_string()));
        }
        let not_found = || PipelineError::RowNotFound(key.chars().take(200).collect());
        let full = arrow_schema(&schema);

        // Memtable versions (above the committed sequence) are newer than any file's.
        let in_memory = mem
            .memtables
            .iter()
            .filter_map(|m| m.newest(&key_bytes, committed, mem.upto).map(|e| (m, e)))
            .max_by_key(|(_, e)| e.key().seq)
            .map(|(m, e)| {
                let row = RowRef {
                    seq: e.key().seq,
                    ingested_at_us: e.value().ingested_at_us,
                    row: &e.value().row,
                };
                // The memtable may hold an older schema version: read it in the current shape.
                rows_to_batch(m.schema(), &[row]).and_then(|b| conform(&b, &full))
            });
        if let Some(batch) = in_memory {
            let batch = batch?;
            if is_delete(&batch, 0) {
                return Err(not_found());
            }
            return project(&batch, &cols);
        }

        let probe = rows_to_batch(
            &schema,
            &[RowRef {
                seq: 0,
                ingested_at_us: 0,
                row: &probe_row,
            }],
        )?;
        let key_hex = hex(&key_bytes);
        let prune = Filter::And(
            key_cols
                .iter()
                .filter_map(|k| {
                    probe.column_by_name(k).map(|v| Filter::Cmp {
                        column: k.clone(),
                        op: CmpOp::Eq,
                        value: v.clone(),
                    })
                })
                .collect(),
        );
        let all_columns: Vec<String> = full.fields().iter().map(|f| f.name().clone()).collect();
        let mut candidates: Vec<_> = files.iter().filter(|f| f.may_hold_key(&key_hex)).collect();
        candidates.sort_by_key(|f| std::cmp::Reverse(f.max_seq));
        let mut best: Option<(u64, RecordBatch)> = None;
        for file in candidates {
            if best.as_ref().is_some_and(|(seq, _)| *seq >= file.max_seq) {
                break; // no older file can hold a newer version
            }
            let bytes = self
                .storage
                .get(&ObjectPath::from(file.path.as_str()))
                .await?;
            let path = file.path.clone();
            let (p, want, bloom) = (prune.clone(), all_columns.clone(), key_cols.clone());
            let target = full.clone();
            // Only row groups whose statistics and bloom filters admit the key are decoded.
            let decoded = tokio::task::spawn_blocking(move || {
                read_file(
                    bytes,
                    &path,
                    &p,
                    &want,
                    &target,
                    &bloom,
                    None,
                    &mut ScanStats::default(),
                )
            })
            .await
            .map_err(internal)??;
            for batch in decoded {
                if let Some((seq, i)) = newest_in(&batch, &key_cols, &probe)?
                    && best.as_ref().is_none_or(|(s, _)| seq > *s)
                {
                    best = Some((seq, batch.slice(i, 1)));
                }
            }
        }
        match best {
            Some((_, batch)) if !is_delete(&batch, 0) => project(&batch, &cols),
            _ => Err(not_found()),
        }
    }
}
