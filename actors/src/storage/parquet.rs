//! Parquet encoding of flushed data and decoding for queries.
//!
//! Files are zstd-compressed, carry page-level statistics and the page index, bloom filters on
//! the primary key columns, the sort order, and key-value metadata naming the table, the schema
//! version and the sequence range, so a file explains itself to any Parquet reader.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::{KeyValue, SortingColumn};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::StorageError;
use super::index::{FileIndex, IndexBuilder};

/// Key-value metadata keys written into every data file.
pub mod meta {
    /// `tenant/table`
    pub const TABLE: &str = "alluvium.table";
    /// Schema version of the rows.
    pub const SCHEMA_VERSION: &str = "alluvium.schema_version";
    /// Smallest `_seq` in the file.
    pub const MIN_SEQ: &str = "alluvium.min_seq";
    /// Largest `_seq` in the file.
    pub const MAX_SEQ: &str = "alluvium.max_seq";
}

/// What to write into a file besides the rows.
#[derive(Debug, Clone)]
pub struct FileOptions {
    /// `tenant/table`, recorded in metadata.
    pub table: String,
    /// Schema version of the rows.
    pub schema_version: u32,
    /// Smallest and largest `_seq`.
    pub seq_range: (u64, u64),
    /// Columns (by index in the batch) the rows are sorted by, in order.
    pub sorted_by: Vec<usize>,
    /// Columns that get a bloom filter (primary key columns).
    pub bloom_columns: Vec<String>,
    /// zstd level, 1..=22.
    pub zstd_level: i32,
    /// Columns that get a secondary index sidecar (the table's `indexes`).
    pub index_columns: Vec<String>,
}

/// A finished file: its bytes and, when columns were indexed, its secondary index.
#[derive(Debug)]
pub struct Finished {
    /// The Parquet file.
    pub bytes: Bytes,
    /// The index of [`FileOptions::index_columns`] (`None` when there are none, or none could
    /// be built: see [`IndexBuilder::finish`]).
    pub index: Option<FileIndex>,
}

/// Rows per row group: large enough for good compression, small enough to prune by statistics.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

fn parquet_err(source: parquet::errors::ParquetError) -> StorageError {
    StorageError::Parquet {
        path: "<memory>".into(),
        source,
    }
}

/// A Parquet file being written in memory, batch by batch (flushes write one batch, compactions
/// stream many).
pub struct FileWriter {
    writer: ArrowWriter<Vec<u8>>,
    index: Option<IndexBuilder>,
}

impl std::fmt::Debug for FileWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWriter")
            .field("size", &self.size())
            .finish()
    }
}

impl FileWriter {
    /// Starts a file of `schema` with `opts` (its `seq_range` is ignored: see [`Self::finish`]).
    pub fn new(schema: SchemaRef, opts: &FileOptions) -> Result<Self, StorageError> {
        let level = ZstdLevel::try_new(opts.zstd_level).map_err(parquet_err)?;
        let mut props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_key_value_metadata(Some(vec![
                KeyValue::new(meta::TABLE.into(), opts.table.clone()),
                KeyValue::new(meta::SCHEMA_VERSION.into(), opts.schema_version.to_string()),
            ]))
            .set_sorting_columns(Some(
                opts.sorted_by
                    .iter()
                    .map(|&i| SortingColumn {
                        column_idx: i as i32,
                        descending: false,
                        nulls_first: true,
                    })
                    .collect(),
            ));
        for c in &opts.bloom_columns {
            props = props.set_column_bloom_filter_enabled(ColumnPath::from(c.as_str()), true);
        }
        let indexed: Vec<(String, usize)> = opts
            .index_columns
            .iter()
            .filter_map(|c| schema.index_of(c).ok().map(|i| (c.clone(), i)))
            .collect();
        let index = (!indexed.is_empty()).then(|| IndexBuilder::new(indexed, ROW_GROUP_ROWS));
        let writer =
            ArrowWriter::try_new(Vec::new(), schema, Some(props.build())).map_err(parquet_err)?;
        Ok(Self { writer, index })
    }

    /// Appends rows.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), StorageError> {
        self.writer.write(batch).map_err(parquet_err)?;
        if let Some(index) = &mut self.index {
            index.observe(batch);
        }
        Ok(())
    }

    /// Approximate size of the file so far: bytes written plus the encoded size of the row
    /// group in progress.
    pub fn size(&self) -> usize {
        self.writer.bytes_written() + self.writer.in_progress_size()
    }

    /// Finishes the file, recording the smallest and largest `_seq` of its rows, and its index.
    pub fn finish(mut self, seq_range: (u64, u64)) -> Result<Finished, StorageError> {
        self.writer.append_key_value_metadata(KeyValue::new(
            meta::MIN_SEQ.into(),
            seq_range.0.to_string(),
        ));
        self.writer.append_key_value_metadata(KeyValue::new(
            meta::MAX_SEQ.into(),
            seq_range.1.to_string(),
        ));
        // Closes the row group in progress, so that every row group's size is known.
        self.writer.flush().map_err(parquet_err)?;
        let groups: Vec<u64> = self
            .writer
            .flushed_row_groups()
            .iter()
            .map(|g| g.num_rows().max(0) as u64)
            .collect();
        // Writes the footer too.
        let buf = self.writer.into_inner().map_err(parquet_err)?;
        Ok(Finished {
            bytes: Bytes::from(buf),
            index: self.index.and_then(|b| b.finish(&groups)),
        })
    }
}

/// Encodes one sorted batch as a complete Parquet file in memory.
pub fn encode(batch: &RecordBatch, opts: &FileOptions) -> Result<Bytes, StorageError> {
    let mut writer = FileWriter::new(batch.schema(), opts)?;
    writer.write(batch)?;
    writer.finish(opts.seq_range).map(|f| f.bytes)
}

/// Decodes a Parquet file, keeping only the named columns (all when `columns` is `None`).
/// Unknown column names are ignored; the caller validates names against the schema.
pub fn decode(
    bytes: Bytes,
    columns: Option<&[String]>,
    path: &str,
) -> Result<Vec<RecordBatch>, StorageError> {
    let err = |source| StorageError::Parquet {
        path: path.to_string(),
        source,
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(err)?;
    let builder = match columns {
        Some(cols) => {
            let schema = builder.parquet_schema();
            let indices: Vec<usize> = schema
                .root_schema()
                .get_fields()
                .iter()
                .enumerate()
                .filter(|(_, f)| cols.iter().any(|c| c == f.name()))
                .map(|(i, _)| i)
                .collect();
            let mask = ProjectionMask::roots(schema, indices);
            builder.with_projection(mask)
        }
        None => builder,
    };
    let reader = builder.with_batch_size(8192).build().map_err(err)?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(parquet::errors::ParquetError::from(e)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn roundtrips_with_projection_and_metadata() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("msg", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])),
            ],
        )
        .unwrap();
        let opts = FileOptions {
            table: "t/x".into(),
            schema_version: 1,
            seq_range: (5, 7),
            sorted_by: vec![0],
            bloom_columns: vec!["id".into()],
            zstd_level: 3,
            index_columns: Vec::new(),
        };
        let bytes = encode(&batch, &opts).unwrap();
        let all = decode(bytes.clone(), None, "x").unwrap();
        assert_eq!(all.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
        assert_eq!(all[0], batch);
        let only = decode(bytes.clone(), Some(&["msg".to_string()]), "x").unwrap();
        assert_eq!(only[0].num_columns(), 1);
        assert_eq!(only[0].schema().field(0).name(), "msg");

        let meta = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
        let kv = meta
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .unwrap();
        assert!(
            kv.iter()
                .any(|k| k.key == meta::MAX_SEQ && k.value.as_deref() == Some("7"))
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode(Bytes::from_static(b"not parquet"), None, "x").is_err());
    }
}
