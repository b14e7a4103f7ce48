#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use arrow::array::{Int64Array, TimestampMillisecondArray, UInt64Array};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::*;
use crate::ids::{TableName, TenantId};
use crate::row::{Op, Row};
use crate::schema::arrow::SEQ_COLUMN;
use crate::storage::parquet::decode;

fn table() -> TableRef {
    TableRef::new(
        TenantId::new("acme").unwrap(),
        TableName::new("kv").unwrap(),
    )
}

fn schema(json: &str) -> Arc<TableSchema> {
    Arc::new(serde_json::from_str(json).unwrap())
}

fn row_groups(f: &EncodedFile) -> usize {
    ParquetRecordBatchReaderBuilder::try_new(f.bytes.clone())
        .unwrap()
        .metadata()
        .num_row_groups()
}

fn int_column(f: &EncodedFile, name: &str) -> Vec<i64> {
    decode(f.bytes.clone(), None, &f.file.path)
        .unwrap()
        .iter()
        .flat_map(|b| {
            let c = b.column_by_name(name).unwrap();
            c.as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect()
}

/// More rows than one row group holds, inserted in descending key order: the file holds them all,
/// ascending, in several row groups, with the right sequence and key ranges.
#[test]
fn a_large_memtable_streams_into_several_row_groups_in_key_order() {
    let schema = schema(
        r#"{"fields":[{"name":"k","type":"int64","nullable":false},{"name":"v","type":"string"}],"primary_key":["k"]}"#,
    );
    let n = 2 * ROW_GROUP_ROWS + 5;
    let m = Memtable::new(1, schema, 1);
    for i in 0..n {
        let row = Row {
            op: Op::Upsert,
            values: vec![Value::Int((n - i) as i64), Value::Str(format!("v{i}"))],
        };
        m.insert(10 + i as u64, 0, row);
    }
    let files = build_files(&table(), &m).unwrap();
    assert_eq!(files.len(), 1);
    let f = &files[0];
    assert_eq!(f.file.rows, n as u64);
    assert_eq!((f.file.min_seq, f.file.max_seq), (10, 10 + n as u64 - 1));
    assert_eq!(row_groups(f), 3);
    let keys = int_column(f, "k");
    assert_eq!(keys, (1..=n as i64).collect::<Vec<_>>());
    let first = m.iter().next().unwrap().key().sort.clone();
    let last = m.iter().last().unwrap().key().sort.clone();
    assert_eq!(f.file.min_key.as_deref(), Some(hex(&first).as_str()));
    assert_eq!(f.file.max_key.as_deref(), Some(hex(&last).as_str()));
    let prefix = format!(
        "{}/data/all/{:020}-{:020}-",
        table().path_prefix(),
        10,
        9 + n
    );
    assert!(f.file.path.starts_with(&prefix), "{}", f.file.path);
}

/// Rows of three hours arrive interleaved: each hour gets its own file with its own rows, sequence
/// range and time range, and an append table records no key range.
#[test]
fn interleaved_partitions_get_one_file_each_with_their_own_ranges() {
    let schema = schema(
        r#"{"fields":[{"name":"ts","type":"timestamp_ms","nullable":false},{"name":"k","type":"int64"}],"time_column":"ts","partition_by":"hour"}"#,
    );
    let hour = 3_600_000i64;
    let m = Memtable::new(1, schema, 1);
    for i in 0..300i64 {
        let ts = (i % 3) * hour + i * 1000;
        let row = Row {
            op: Op::Upsert,
            values: vec![Value::Timestamp(ts), Value::Int(i)],
        };
        m.insert(1 + i as u64, 0, row);
    }
    let files = build_files(&table(), &m).unwrap();
    let parts: Vec<&str> = files.iter().map(|f| f.file.partition.as_str()).collect();
    assert_eq!(parts, ["1970-01-01T00", "1970-01-01T01", "1970-01-01T02"]);
    for (h, f) in files.iter().enumerate() {
        let h = h as i64;
        let mine: Vec<i64> = (0..300).filter(|i| i % 3 == h).collect();
        assert_eq!(f.file.rows, 100);
        assert_eq!(f.file.min_seq, 1 + *mine.first().unwrap() as u64);
        assert_eq!(f.file.max_seq, 1 + *mine.last().unwrap() as u64);
        let times: Vec<i64> = mine.iter().map(|i| h * hour + i * 1000).collect();
        assert_eq!(f.file.min_time, times.first().copied());
        assert_eq!(f.file.max_time, times.last().copied());
        assert_eq!(
            (f.file.min_key.as_ref(), f.file.max_key.as_ref()),
            (None, None)
        );
        assert_eq!(int_column(f, "k"), mine);
        let batches = decode(f.bytes.clone(), None, &f.file.path).unwrap();
        let ts: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                let c = b.column_by_name("ts").unwrap();
                let c = c
                    .as_any()
                    .downcast_ref::<TimestampMillisecondArray>()
                    .unwrap();
                c.values().to_vec()
            })
            .collect();
        assert_eq!(ts, times);
        let seqs: Vec<u64> = batches
            .iter()
            .flat_map(|b| {
                let c = b.column_by_name(SEQ_COLUMN).unwrap();
                c.as_any()
                    .downcast_ref::<UInt64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(seqs, mine.iter().map(|i| 1 + *i as u64).collect::<Vec<_>>());
    }
}

#[test]
fn an_empty_memtable_makes_no_files() {
    let schema = schema(r#"{"fields":[{"name":"k","type":"int64"}]}"#);
    let m = Memtable::new(1, schema, 1);
    assert!(build_files(&table(), &m).unwrap().is_empty());
}
