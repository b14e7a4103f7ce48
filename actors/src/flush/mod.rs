//! Flush: a frozen memtable becomes sorted Parquet files on the object store, then one catalog
//! commit adds the files and records the table's committed sequence.
//!
//! Files are written first and committed second: a crash in between leaves unreferenced files
//! (orphans), never a catalog entry without its file. Rows are grouped by partition (the time
//! column's hour, day or month) and keep the memtable's order: sort key, then sequence.
//! [`gc`] removes the orphans at start.

pub mod actor;
pub mod gc;
pub mod messages;

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, NaiveDate};
use object_store::path::Path as ObjectPath;

use crate::catalog::{DataFile, IndexRef};
use crate::ids::TableRef;
use crate::memtable::Memtable;
use crate::memtable::table::sort_columns;
use crate::row::Value;
use crate::schema::arrow::{RowRef, rows_to_batch};
use crate::schema::{PartitionBy, TableSchema};
use crate::storage::index::sidecar_path;
use crate::storage::parquet::{FileOptions, FileWriter, Finished};
use crate::storage::{Storage, StorageError};

pub use actor::FlushActor;

/// Why a flush failed. Cloneable so every waiter of a forced flush gets it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FlushError {
    /// Building the Parquet file failed.
    #[error("cannot encode parquet: {0}")]
    Encode(String),
    /// Writing to the object store failed.
    #[error("cannot write data file: {0}")]
    Storage(String),
    /// The catalog refused or failed the commit.
    #[error("cannot commit flushed files: {0}")]
    Catalog(String),
    /// An actor on the way is gone.
    #[error("flush interrupted: {0}")]
    Mailbox(String),
    /// Cluster mode: this node does not own the table's shard (any more), so it may not
    /// commit the table's rows; the new owner flushes them from the stream.
    #[error("flush fenced: {0}")]
    Fenced(String),
}

/// A data file ready to be written: its catalog entry, its bytes, and its secondary index
/// sidecar's bytes (when the table declares indexes).
#[derive(Debug, Clone)]
pub struct EncodedFile {
    /// The catalog entry (its size and index reference filled in).
    pub file: DataFile,
    /// The Parquet file.
    pub bytes: Bytes,
    /// The encoded sidecar.
    pub index: Option<Bytes>,
}

impl EncodedFile {
    /// Pairs a finished Parquet file with its catalog entry, recording the file's size and
    /// its sidecar (next to it, see [`sidecar_path`]).
    pub fn new(mut file: DataFile, finished: Finished) -> Self {
        file.size_bytes = finished.bytes.len() as u64;
        let index = finished.index.map(|ix| {
            let encoded = Bytes::from(ix.encode());
            file.index = Some(IndexRef {
                path: sidecar_path(&file.path),
                size_bytes: encoded.len() as u64,
                columns: ix.columns().into_iter().map(String::from).collect(),
            });
            encoded
        });
        Self {
            file,
            bytes: finished.bytes,
            index,
        }
    }

    /// Writes the sidecar, then the data file (both before the catalog commit that references
    /// them; a crash in between leaves orphans for [`gc`]).
    pub async fn put(&self, storage: &Storage) -> Result<(), StorageError> {
        if let (Some(r), Some(bytes)) = (&self.file.index, &self.index) {
            storage
                .put(&ObjectPath::from(r.path.as_str()), bytes.clone())
                .await?;
        }
        storage
            .put(
                &ObjectPath::from(self.file.path.as_str()),
                self.bytes.clone(),
            )
            .await
    }

    /// Deletes what [`Self::put`] wrote, for a commit that will not happen.
    pub async fn delete(&self, storage: &Storage) -> Result<(), StorageError> {
        storage
            .delete(&ObjectPath::from(self.file.path.as_str()))
            .await?;
        if let Some(r) = &self.file.index {
            storage.delete(&ObjectPath::from(r.path.as_str())).await?;
        }
        Ok(())
    }
}

/// The partition a time value falls in, by the table's partitioning.
pub fn partition_name(schema: &TableSchema, time: Option<&Value>) -> String {
    let Some(tc) = schema.time_column.as_deref() else {
        return "all".into();
    };
    let secs = match (time, schema.field(tc).map(|f| &f.ty)) {
        (Some(Value::Timestamp(v)), Some(crate::schema::FieldType::Timestamp(unit))) => {
            v.div_euclid(unit.per_second())
        }
        (Some(Value::Date(d)), _) => i64::from(*d) * 86_400,
        _ => return "all".into(),
    };
    let Some(dt) = DateTime::from_timestamp(secs, 0) else {
        return "out-of-range".into();
    };
    match schema.partition_by {
        PartitionBy::None => "all".into(),
        PartitionBy::Hour => dt.format("%Y-%m-%dT%H").to_string(),
        PartitionBy::Day => dt.format("%Y-%m-%d").to_string(),
        PartitionBy::Month => dt.format("%Y-%m").to_string(),
    }
}

fn time_value(v: &Value) -> Option<i64> {
    match v {
        Value::Timestamp(t) => Some(*t),
        Value::Date(d) => Some(i64::from(*d)),
        _ => None,
    }
}

/// Encodes a memtable's rows as one Parquet file per partition (with its index sidecar); the
/// caller writes them, then commits the entries.
pub fn build_files(table: &TableRef, memtable: &Memtable) -> Result<Vec<EncodedFile>, FlushError> {
    let schema = memtable.schema();
    let time_idx = schema
        .time_column
        .as_deref()
        .and_then(|c| schema.index_of(c));
    let partitioned = schema.partition_by != PartitionBy::None;
    let mut parts: BTreeMap<String, Vec<RowRef<'_>>> = BTreeMap::new();
    // Per partition: the sort keys of its first and last rows (the key range for upsert tables).
    let mut key_ranges: BTreeMap<String, (&[u8], &[u8])> = BTreeMap::new();
    // Rows borrow from the skiplist entries held here, so nothing is copied before encoding.
    let entries: Vec<_> = memtable.iter().collect();
    for entry in &entries {
        let (seq, r) = (&entry.key().seq, entry.value());
        let part = if partitioned {
            partition_name(schema, time_idx.and_then(|i| r.row.values.get(i)))
        } else {
            "all".into()
        };
        let sort = entry.key().sort.as_slice();
        key_ranges
            .entry(part.clone())
            .and_modify(|r| r.1 = sort)
            .or_insert((sort, sort));
        parts.entry(part).or_default().push(RowRef {
            seq: *seq,
            ingested_at_us: r.ingested_at_us,
            row: &r.row,
        });
    }

    let mut sorted_by = sort_columns(schema);
    sorted_by.push(schema.fields.len()); // then _seq
    let bloom_columns = schema.primary_key.clone();
    let mut out = Vec::with_capacity(parts.len());
    for (partition, rows) in parts {
        let min_seq = rows.iter().map(|r| r.seq).min().unwrap_or(0);
        let max_seq = rows.iter().map(|r| r.seq).max().unwrap_or(0);
        let times = || {
            rows.iter().filter_map(|r| {
                time_idx
                    .and_then(|i| r.row.values.get(i))
                    .and_then(time_value)
            })
        };
        let batch = rows_to_batch(schema, &rows).map_err(|e| FlushError::Encode(e.to_string()))?;
        let encode_err = |e: StorageError| FlushError::Encode(e.to_string());
        let mut writer = FileWriter::new(
            batch.schema(),
            &FileOptions {
                table: table.to_string(),
                schema_version: memtable.schema_version(),
                seq_range: (min_seq, max_seq),
                sorted_by: sorted_by.clone(),
                bloom_columns: bloom_columns.clone(),
                zstd_level: 3,
                index_columns: schema.indexes.clone(),
            },
        )
        .map_err(encode_err)?;
        writer.write(&batch).map_err(encode_err)?;
        let finished = writer.finish((min_seq, max_seq)).map_err(encode_err)?;
        let path = format!(
            "{}/data/{partition}/{min_seq:020}-{max_seq:020}-{}.parquet",
            table.path_prefix(),
            uuid::Uuid::new_v4().simple()
        );
        let (min_key, max_key) = match key_ranges.get(&partition) {
            Some((lo, hi)) if !schema.primary_key.is_empty() => (Some(hex(lo)), Some(hex(hi))),
            _ => (None, None),
        };
        out.push(EncodedFile::new(
            DataFile {
                path,
                partition,
                size_bytes: 0,
                rows: rows.len() as u64,
                min_seq,
                max_seq,
                schema_version: memtable.schema_version(),
                min_time: times().min(),
                max_time: times().max(),
                min_key,
                max_key,
                index: None,
            },
            finished,
        ));
    }
    Ok(out)
}

/// Lowercase hex: byte order and string order agree, so key ranges compare as strings.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Days since the epoch of a calendar date, for tests and partition math.
pub fn days_since_epoch(date: NaiveDate) -> i64 {
    date.signed_duration_since(NaiveDate::default()).num_days()
}
