//! The k-way merge of a compaction: sorted input files in, sorted output files of a target size
//! out, with versions resolved by primary key.
//!
//! Each input is read batch by batch (its compressed bytes stay in memory, decoded batches do
//! not pile up), reshaped to the table's current schema, and ordered by the table's sort
//! columns then `_seq` through Arrow's order-preserving row format. The merge picks the smallest
//! head among the inputs (inputs are few, so a linear scan beats a heap), gathers chunks of
//! output row positions, and materializes each chunk with `interleave` into the current output
//! file, starting a new file once the target size is reached.

use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::interleave_record_batch;
use arrow::datatypes::{DataType, SchemaRef, UInt8Type, UInt64Type};
use arrow::row::{OwnedRow, RowConverter, Rows, SortField};
use bytes::Bytes;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use super::CompactionError;
use crate::catalog::DataFile;
use crate::flush::EncodedFile;
use crate::flush::hex;
use crate::ids::TableRef;
use crate::memtable::keys::encode_key_value;
use crate::memtable::table::sort_columns;
use crate::row::Op;
use crate::schema::TableSchema;
use crate::schema::arrow::{arrow_schema, conform, key_value_at};
use crate::storage::parquet::{FileOptions, FileWriter};

/// Rows read from an input, and written to an output, at a time.
const BATCH_ROWS: usize = 8192;
/// Decoded batches held at most before the rows gathered so far are written out.
const MAX_POOL_BATCHES: usize = 256;

/// What a merge needs to know about the table.
#[derive(Debug, Clone)]
pub struct MergeSpec {
    /// The table.
    pub table: TableRef,
    /// Its current schema: outputs are written with it.
    pub schema: Arc<TableSchema>,
    /// Its version.
    pub schema_version: u32,
    /// The partition of every input (and so of every output).
    pub partition: String,
    /// Outputs are closed once they reach about this size.
    pub target_file_bytes: u64,
    /// Live files of the table that are not inputs: a tombstone is kept while one of them may
    /// hold an older version of its key.
    pub others: Vec<Arc<DataFile>>,
}

/// One input file: its catalog entry and its bytes.
#[derive(Debug, Clone)]
pub struct MergeInput {
    /// The catalog entry.
    pub file: Arc<DataFile>,
    /// The whole object.
    pub bytes: Bytes,
}

/// What a merge produced.
#[derive(Debug, Default)]
pub struct MergeOutput {
    /// New files (catalog entry, bytes and index sidecar), in key order.
    pub files: Vec<EncodedFile>,
    /// Rows read.
    pub rows_in: u64,
    /// Rows written.
    pub rows_out: u64,
    /// Older versions of keys dropped (upsert tables).
    pub versions_dropped: u64,
    /// Tombstones dropped because nothing older could remain for them to hide.
    pub tombstones_dropped: u64,
}

fn merge_err(e: impl std::fmt::Display) -> CompactionError {
    CompactionError::Merge(e.to_string())
}

/// One input being read: its current batch and that batch's sort keys.
struct Cursor {
    reader: ParquetRecordBatchReader,
    path: String,
    batch: RecordBatch,
    keys: Rows,
    pos: usize,
    /// Index of `batch` in the merge's pool of batches.
    slot: usize,
}

/// Per-table reading state shared by the cursors.
struct Reader {
    target: SchemaRef,
    sort: Vec<usize>,
    converter: RowConverter,
}

impl Reader {
    /// Next non-empty batch of `reader`, reshaped, with its keys; `None` at the end.
    fn next(
        &self,
        reader: &mut ParquetRecordBatchReader,
        path: &str,
    ) -> Result<Option<(RecordBatch, Rows)>, CompactionError> {
        for batch in reader.by_ref() {
            let batch = batch.map_err(|e| CompactionError::Read(format!("{path}: {e}")))?;
            if batch.num_rows() == 0 {
                continue;
            }
            let batch = conform(&batch, &self.target)
                .map_err(|e| CompactionError::Read(format!("{path}: {e}")))?;
            let cols: Vec<_> = self.sort.iter().map(|&i| batch.column(i).clone()).collect();
            let keys = self.converter.convert_columns(&cols).map_err(merge_err)?;
            return Ok(Some((batch, keys)));
        }
        Ok(None)
    }
}

/// The output file being written and what the catalog will record of it.
struct Output {
    writer: FileWriter,
    rows: u64,
    seq: (u64, u64),
    time: Option<(i64, i64)>,
    first_key: Option<Vec<u8>>,
    last_key: Option<Vec<u8>>,
}

/// Merges `inputs` (each sorted by the table's sort columns then `_seq`) into new files.
pub fn merge(spec: &MergeSpec, inputs: Vec<MergeInput>) -> Result<MergeOutput, CompactionError> {
    let schema = &spec.schema;
    let target = arrow_schema(schema);
    let sort = sort_columns(schema);
    let seq_idx = schema.fields.len();
    let op_idx = seq_idx + 1;
    let time_idx = schema
        .time_column
        .as_deref()
        .and_then(|c| schema.index_of(c));
    let upsert = !schema.primary_key.is_empty();
    // Rows are ordered by the sort columns (then `_seq`); a table without any is ordered by
    // `_seq` alone, which then serves as the key the merge compares.
    let order = if sort.is_empty() {
        vec![seq_idx]
    } else {
        sort.clone()
    };
    let converter = RowConverter::new(
        order
            .iter()
            .map(|&i| SortField::new(target.field(i).data_type().clone()))
            .collect(),
    )
    .map_err(merge_err)?;
    let reader = Reader {
        target: target.clone(),
        sort: order,
        converter,
    };
    let max_input_seq = inputs.iter().map(|i| i.file.max_seq).max().unwrap_or(0);
    // Only files that may hold versions older than some tombstone here can keep it alive.
    let older: Vec<&DataFile> = spec
        .others
        .iter()
        .filter(|f| f.min_seq < max_input_seq)
        .map(|f| f.as_ref())
        .collect();

    let mut out = MergeOutput::default();
    let mut pool: Vec<RecordBatch> = Vec::new();
    let mut cursors: Vec<Cursor> = Vec::with_capacity(inputs.len());
    for input in inputs {
        let path = input.file.path.clone();
        let mut r = ParquetRecordBatchReaderBuilder::try_new(input.bytes)
            .and_then(|b| b.with_batch_size(BATCH_ROWS).build())
            .map_err(|e| CompactionError::Read(format!("{path}: {e}")))?;
        if let Some((batch, keys)) = reader.next(&mut r, &path)? {
            pool.push(batch.clone());
            cursors.push(Cursor {
                reader: r,
                path,
                batch,
                keys,
                pos: 0,
                slot: pool.len() - 1,
            });
        }
    }

    let seq_of =
        |b: &RecordBatch, i: usize| b.column(seq_idx).as_primitive::<UInt64Type>().value(i);
    let mut chunk: Vec<(usize, usize)> = Vec::with_capacity(BATCH_ROWS);
    let mut current: Option<Output> = None;
    // Upsert tables: the newest version seen so far of the key being merged, with its key.
    let mut pending: Option<((usize, usize), OwnedRow)> = None;

    loop {
        // The smallest head by (key, seq).
        let mut best: Option<usize> = None;
        for (c, cur) in cursors.iter().enumerate() {
            if cur.pos >= cur.batch.num_rows() {
                continue;
            }
            best = match best {
                None => Some(c),
                Some(b) => {
                    let other = &cursors[b];
                    let ord = cur
                        .keys
                        .row(cur.pos)
                        .cmp(&other.keys.row(other.pos))
                        .then_with(|| {
                            seq_of(&cur.batch, cur.pos).cmp(&seq_of(&other.batch, other.pos))
                        });
                    if ord.is_lt() { Some(c) } else { Some(b) }
                }
            };
        }
        let Some(c) = best else { break };
        out.rows_in += 1;
        let at = (cursors[c].slot, cursors[c].pos);
        if upsert {
            let key = cursors[c].keys.row(cursors[c].pos);
            match &mut pending {
                Some((pos, k)) if k.row() == key => {
                    // Same key, higher sequence: the earlier version is superseded.
                    *pos = at;
                    out.versions_dropped += 1;
                }
                _ => {
                    if let Some((pos, _)) = pending.replace((at, key.owned())) {
                        emit(pos, &pool, op_idx, &sort, &older, &mut chunk, &mut out);
                    }
                }
            }
        } else {
            chunk.push(at);
        }

        // Advance the cursor, loading its next batch when this one is done.
        let cur = &mut cursors[c];
        cur.pos += 1;
        if cur.pos == cur.batch.num_rows()
            && let Some((batch, keys)) = reader.next(&mut cur.reader, &cur.path)?
        {
            pool.push(batch.clone());
            cur.slot = pool.len() - 1;
            cur.batch = batch;
            cur.keys = keys;
            cur.pos = 0;
        }

        // Also when few rows survive (many superseded versions or dropped tombstones): the
        // pool must not keep every batch read.
        if chunk.len() >= BATCH_ROWS || pool.len() > MAX_POOL_BATCHES {
            write_chunk(
                spec,
                &pool,
                &mut chunk,
                &mut current,
                &mut out,
                &sort,
                time_idx,
                seq_idx,
            )?;
            compact_pool(
                &mut pool,
                &mut cursors,
                pending.as_mut().map(|(pos, _)| pos),
            );
        }
    }
    if let Some((pos, _)) = pending.take() {
        emit(pos, &pool, op_idx, &sort, &older, &mut chunk, &mut out);
    }
    write_chunk(
        spec,
        &pool,
        &mut chunk,
        &mut current,
        &mut out,
        &sort,
        time_idx,
        seq_idx,
    )?;
    if let Some(o) = current.take() {
        finish(spec, o, &mut out)?;
    }
    Ok(out)
}

/// Once a chunk is written, keeps in the pool only the batches still referenced: the cursors'
/// current ones and the pending version's.
fn compact_pool(
    pool: &mut Vec<RecordBatch>,
    cursors: &mut [Cursor],
    pending: Option<&mut (usize, usize)>,
) {
    let pending_batch = pending.as_ref().map(|(slot, _)| pool[*slot].clone());
    pool.clear();
    for c in cursors.iter_mut() {
        pool.push(c.batch.clone());
        c.slot = pool.len() - 1;
    }
    if let (Some(pos), Some(batch)) = (pending, pending_batch) {
        pool.push(batch);
        pos.0 = pool.len() - 1;
    }
}

/// The order-preserving encoding of the key at row `i`, as the memtable computes it.
fn memcomparable_key(batch: &RecordBatch, sort: &[usize], i: usize) -> Vec<u8> {
    let mut key = Vec::new();
    for &c in sort {
        if let Some(v) = key_value_at(batch.column(c).as_ref(), i) {
            encode_key_value(&v, &mut key);
        }
    }
    key
}

/// Queues the surviving version of a key, unless it is a tombstone nothing needs any more.
fn emit(
    (slot, row): (usize, usize),
    pool: &[RecordBatch],
    op_idx: usize,
    sort: &[usize],
    older: &[&DataFile],
    chunk: &mut Vec<(usize, usize)>,
    out: &mut MergeOutput,
) {
    let batch = &pool[slot];
    let is_delete = batch.column(op_idx).as_primitive::<UInt8Type>().value(row) == Op::Delete as u8;
    if is_delete {
        let seq = batch
            .column(op_idx - 1)
            .as_primitive::<UInt64Type>()
            .value(row);
        let candidates: Vec<&&DataFile> = older.iter().filter(|f| f.min_seq < seq).collect();
        let needed = !candidates.is_empty() && {
            let key = hex(&memcomparable_key(batch, sort, row));
            candidates.iter().any(|f| f.may_hold_key(&key))
        };
        if !needed {
            out.tombstones_dropped += 1;
            return;
        }
    }
    chunk.push((slot, row));
}

fn time_bounds(batch: &RecordBatch, idx: usize) -> Option<(i64, i64)> {
    let col = batch.column(idx);
    let as_i64 = arrow::compute::cast(col, &DataType::Int64).ok()?;
    let a = as_i64.as_primitive::<arrow::datatypes::Int64Type>();
    Some((arrow::compute::min(a)?, arrow::compute::max(a)?))
}

#[allow(clippy::too_many_arguments)]
fn write_chunk(
    spec: &MergeSpec,
    pool: &[RecordBatch],
    chunk: &mut Vec<(usize, usize)>,
    current: &mut Option<Output>,
    out: &mut MergeOutput,
    sort: &[usize],
    time_idx: Option<usize>,
    seq_idx: usize,
) -> Result<(), CompactionError> {
    if chunk.is_empty() {
        return Ok(());
    }
    let refs: Vec<&RecordBatch> = pool.iter().collect();
    let batch = interleave_record_batch(&refs, chunk).map_err(merge_err)?;
    chunk.clear();
    let o = match current {
        Some(o) => o,
        None => {
            let mut sorted_by = sort.to_vec();
            sorted_by.push(seq_idx);
            let writer = FileWriter::new(
                batch.schema(),
                &FileOptions {
                    table: spec.table.to_string(),
                    schema_version: spec.schema_version,
                    seq_range: (0, 0),
                    sorted_by,
                    bloom_columns: spec.schema.primary_key.clone(),
                    zstd_level: 3,
                    index_columns: spec.schema.indexes.clone(),
                },
            )
            .map_err(merge_err)?;
            current.insert(Output {
                writer,
                rows: 0,
                seq: (u64::MAX, 0),
                time: None,
                first_key: None,
                last_key: None,
            })
        }
    };
    o.writer.write(&batch).map_err(merge_err)?;
    let n = batch.num_rows();
    o.rows += n as u64;
    let seqs = batch.column(seq_idx).as_primitive::<UInt64Type>();
    if let (Some(lo), Some(hi)) = (arrow::compute::min(seqs), arrow::compute::max(seqs)) {
        o.seq = (o.seq.0.min(lo), o.seq.1.max(hi));
    }
    if let Some((lo, hi)) = time_idx.and_then(|i| time_bounds(&batch, i)) {
        o.time = Some(o.time.map_or((lo, hi), |(a, b)| (a.min(lo), b.max(hi))));
    }
    if !spec.schema.primary_key.is_empty() {
        if o.first_key.is_none() {
            o.first_key = Some(memcomparable_key(&batch, sort, 0));
        }
        o.last_key = Some(memcomparable_key(&batch, sort, n - 1));
    }
    if o.writer.size() as u64 >= spec.target_file_bytes
        && let Some(o) = current.take()
    {
        finish(spec, o, out)?;
    }
    Ok(())
}

fn finish(spec: &MergeSpec, o: Output, out: &mut MergeOutput) -> Result<(), CompactionError> {
    let finished = o.writer.finish(o.seq).map_err(merge_err)?;
    let (min_seq, max_seq) = o.seq;
    let path = format!(
        "{}/data/{}/{min_seq:020}-{max_seq:020}-{}.parquet",
        spec.table.path_prefix(),
        spec.partition,
        uuid::Uuid::new_v4().simple()
    );
    out.rows_out += o.rows;
    out.files.push(EncodedFile::new(
        DataFile {
            path,
            partition: spec.partition.clone(),
            size_bytes: 0,
            rows: o.rows,
            min_seq,
            max_seq,
            schema_version: spec.schema_version,
            min_time: o.time.map(|t| t.0),
            max_time: o.time.map(|t| t.1),
            min_key: o.first_key.as_deref().map(hex),
            max_key: o.last_key.as_deref().map(hex),
            index: None,
        },
        finished,
    ));
    Ok(())
}

#[cfg(test)]
#[path = "merge_tests.rs"]
mod tests;
