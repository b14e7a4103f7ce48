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
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, btree_map};

use bytes::Bytes;
use chrono::{DateTime, NaiveDate};
use crossbeam_skiplist::map::Entry;
use object_store::path::Path as ObjectPath;

use crate::catalog::{DataFile, IndexRef};
use crate::ids::TableRef;
use crate::memtable::Memtable;
use crate::memtable::table::{MemKey, MemRow, sort_columns};
use crate::row::Value;
use crate::schema::arrow::{RowRef, arrow_schema, rows_to_batch};
use crate::schema::{PartitionBy, TableSchema};
use crate::storage::index::sidecar_path;
use crate::storage::parquet::{FileOptions, FileWriter, Finished, ROW_GROUP_ROWS};
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

/// One partition's file while a flush streams the memtable into it: rows wait in `pending`
/// (borrowed skiplist entries, nothing copied) until a row group is full, then become one Arrow
/// batch, are encoded and dropped. At most one row group per partition is ever decoded into
/// Arrow columns, so a flush needs little memory beyond the memtable it reads.
struct PartitionFile<'m> {
    writer: FileWriter,
    pending: Vec<Entry<'m, MemKey, MemRow>>,
    rows: u64,
    seqs: (u64, u64),
    times: Option<(i64, i64)>,
    /// Sort keys of the first and last rows (rows arrive in key order).
    keys: (Vec<u8>, Vec<u8>),
}

impl<'m> PartitionFile<'m> {
    fn push(&mut self, entry: Entry<'m, MemKey, MemRow>, time: Option<i64>) {
        let seq = entry.key().seq;
        if self.rows == 0 {
            self.seqs = (seq, seq);
            self.keys.0 = entry.key().sort.clone();
        }
        self.seqs = (self.seqs.0.min(seq), self.seqs.1.max(seq));
        if let Some(t) = time {
            self.times = Some(self.times.map_or((t, t), |(lo, hi)| (lo.min(t), hi.max(t))));
        }
        self.rows += 1;
        self.pending.push(entry);
    }

    /// Encodes the pending rows as the next row group.
    fn write_pending(&mut self, schema: &TableSchema) -> Result<(), FlushError> {
        let Some(last) = self.pending.last() else {
            return Ok(());
        };
        self.keys.1.clone_from(&last.key().sort);
        let rows: Vec<RowRef<'_>> = self
            .pending
            .iter()
            .map(|e| RowRef {
                seq: e.key().seq,
                ingested_at_us: e.value().ingested_at_us,
                row: &e.value().row,
            })
            .collect();
        let batch = rows_to_batch(schema, &rows).map_err(|e| FlushError::Encode(e.to_string()))?;
        drop(rows);
        self.pending.clear();
        self.writer
            .write(&batch)
            .map_err(|e| FlushError::Encode(e.to_string()))
    }
}

/// Encodes a memtable's rows as one Parquet file per partition (with its index sidecar); the
/// caller writes them, then commits the entries. The memtable is read once, in key order, and
/// encoded a row group at a time.
pub fn build_files(table: &TableRef, memtable: &Memtable) -> Result<Vec<EncodedFile>, FlushError> {
    let schema = memtable.schema();
    let time_idx = schema
        .time_column
        .as_deref()
        .and_then(|c| schema.index_of(c));
    let partitioned = schema.partition_by != PartitionBy::None;
    let mut sorted_by = sort_columns(schema);
    sorted_by.push(schema.fields.len()); // then _seq
    let options = FileOptions {
        table: table.to_string(),
        schema_version: memtable.schema_version(),
        seq_range: (0, 0),
        sorted_by,
        bloom_columns: schema.primary_key.clone(),
        zstd_level: 3,
        index_columns: schema.indexes.clone(),
    };
    let arrow = arrow_schema(schema);
    let encode_err = |e: StorageError| FlushError::Encode(e.to_string());

    let mut parts: BTreeMap<String, PartitionFile<'_>> = BTreeMap::new();
    for entry in memtable.iter() {
        let time = time_idx.and_then(|i| entry.value().row.values.get(i));
        let part = if partitioned {
            partition_name(schema, time)
        } else {
            "all".into()
        };
        let time = time.and_then(time_value);
        let file = match parts.entry(part) {
            btree_map::Entry::Occupied(o) => o.into_mut(),
            btree_map::Entry::Vacant(v) => v.insert(PartitionFile {
                writer: FileWriter::new(arrow.clone(), &options).map_err(encode_err)?,
                pending: Vec::new(),
                rows: 0,
                seqs: (0, 0),
                times: None,
                keys: (Vec::new(), Vec::new()),
            }),
        };
        file.push(entry, time);
        if file.pending.len() >= ROW_GROUP_ROWS {
            file.write_pending(schema)?;
        }
    }

    let mut out = Vec::with_capacity(parts.len());
    for (partition, mut file) in parts {
        file.write_pending(schema)?;
        let (min_seq, max_seq) = file.seqs;
        let finished = file.writer.finish(file.seqs).map_err(encode_err)?;
        let path = format!(
            "{}/data/{partition}/{min_seq:020}-{max_seq:020}-{}.parquet",
            table.path_prefix(),
            uuid::Uuid::new_v4().simple()
        );
        let (min_key, max_key) = if schema.primary_key.is_empty() {
            (None, None)
        } else {
            (Some(hex(&file.keys.0)), Some(hex(&file.keys.1)))
        };
        out.push(EncodedFile::new(
            DataFile {
                path,
                partition,
                size_bytes: 0,
                rows: file.rows,
                min_seq,
                max_seq,
                schema_version: memtable.schema_version(),
                min_time: file.times.map(|t| t.0),
                max_time: file.times.map(|t| t.1),
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
