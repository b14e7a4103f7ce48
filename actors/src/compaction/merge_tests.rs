#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use arrow::array::{Int64Array, StringArray};
use proptest::prelude::*;

use super::*;
use crate::flush::EncodedFile;
use crate::flush::build_files;
use crate::ids::{TableName, TenantId};
use crate::memtable::Memtable;
use crate::row::{Row, Value};
use crate::schema::arrow::SEQ_COLUMN;
use crate::storage::mvcc::resolve;
use crate::storage::parquet::decode;

fn table() -> TableRef {
    TableRef::new(
        TenantId::new("acme").unwrap(),
        TableName::new("kv").unwrap(),
    )
}

fn upsert_schema() -> Arc<TableSchema> {
    Arc::new(
        serde_json::from_str(
            r#"{"fields":[{"name":"k","type":"int64","nullable":false},{"name":"v","type":"string"}],"primary_key":["k"]}"#,
        )
        .unwrap(),
    )
}

fn append_schema() -> Arc<TableSchema> {
    Arc::new(
        serde_json::from_str(
            r#"{"fields":[{"name":"ts","type":"timestamp_ms","nullable":false},{"name":"k","type":"int64"}],"time_column":"ts"}"#,
        )
        .unwrap(),
    )
}

/// One event: key, value, delete?
type Ev = (i64, String, bool);

/// Flushes `files` (each a list of events with consecutive sequences) through the real flush
/// encoder; returns the inputs and the sequence after the last.
fn flushed(schema: &Arc<TableSchema>, files: &[Vec<Ev>]) -> Vec<MergeInput> {
    let mut seq = 1;
    let mut out = Vec::new();
    for events in files {
        let m = Memtable::new(seq, schema.clone(), 1);
        for (k, v, del) in events {
            let row = Row {
                op: if *del { Op::Delete } else { Op::Upsert },
                values: if schema.primary_key.is_empty() {
                    vec![Value::Timestamp(*k * 1000), Value::Int(*k)]
                } else {
                    vec![Value::Int(*k), Value::Str(v.clone())]
                },
            };
            m.insert(seq, 0, row);
            seq += 1;
        }
        for f in build_files(&table(), &m).unwrap() {
            out.push(MergeInput {
                file: Arc::new(f.file),
                bytes: f.bytes,
            });
        }
    }
    out
}

fn spec(schema: &Arc<TableSchema>, target: u64, others: Vec<Arc<DataFile>>) -> MergeSpec {
    MergeSpec {
        table: table(),
        schema: schema.clone(),
        schema_version: 1,
        partition: "all".into(),
        target_file_bytes: target,
        others,
    }
}

fn batches(files: &[EncodedFile]) -> Vec<RecordBatch> {
    files
        .iter()
        .flat_map(|f| decode(f.bytes.clone(), None, &f.file.path).unwrap())
        .collect()
}

fn pairs(b: Option<RecordBatch>) -> Vec<(i64, String)> {
    let Some(b) = b else { return vec![] };
    let k = b
        .column_by_name("k")
        .unwrap()
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    let v = b
        .column_by_name("v")
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    (0..b.num_rows())
        .map(|i| (k.value(i), v.value(i).to_string()))
        .collect()
}

#[test]
fn newest_versions_survive_and_lone_tombstones_go() {
    let schema = upsert_schema();
    let inputs = flushed(
        &schema,
        &[
            vec![
                (1, "a".into(), false),
                (2, "b".into(), false),
                (3, "c".into(), false),
            ],
            vec![
                (2, "B".into(), false),
                (3, String::new(), true),
                (4, String::new(), true),
            ],
        ],
    );
    let out = merge(&spec(&schema, 1 << 30, vec![]), inputs).unwrap();
    assert_eq!(out.rows_in, 6);
    assert_eq!(out.versions_dropped, 2, "b and c were superseded");
    assert_eq!(
        out.tombstones_dropped, 2,
        "nothing older remains for them to hide"
    );
    assert_eq!(out.rows_out, 2);
    assert_eq!(out.files.len(), 1);
    let file = &out.files[0].file;
    assert_eq!((file.min_seq, file.max_seq), (1, 4));
    assert_eq!(file.rows, 2);
    let all = batches(&out.files);
    assert_eq!(
        pairs(resolve(&all, &["k".into()]).unwrap()),
        vec![(1, "a".into()), (2, "B".into())]
    );
}

#[test]
fn tombstones_stay_while_an_older_file_may_hold_the_key() {
    let schema = upsert_schema();
    let mut all = flushed(
        &schema,
        &[
            vec![(3, "old".into(), false)],
            vec![(1, "x".into(), false)],
            vec![(3, String::new(), true), (9, String::new(), true)],
        ],
    );
    // Merge the last two; the first (holding key 3 at seq 1) stays outside.
    let outside = all.remove(0).file;
    let out = merge(&spec(&schema, 1 << 30, vec![outside.clone()]), all.clone()).unwrap();
    assert_eq!(
        out.tombstones_dropped, 1,
        "key 9 cannot be in the outside file"
    );
    let mut kept = batches(&out.files);
    assert_eq!(kept.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
    // Read together with the outside file, key 3 is still deleted.
    let outside_bytes = flushed(&schema, &[vec![(3, "old".into(), false)]])
        .remove(0)
        .bytes;
    kept.extend(decode(outside_bytes, None, "outside").unwrap());
    assert_eq!(
        pairs(resolve(&kept, &["k".into()]).unwrap()),
        vec![(1, "x".into())]
    );
}

#[test]
fn append_tables_keep_every_row_in_time_order_split_by_size() {
    let schema = append_schema();
    let files: Vec<Vec<Ev>> = (0..4)
        .map(|f| {
            (0..3000)
                .map(|i| ((i * 4 + f) as i64, String::new(), false))
                .collect()
        })
        .collect();
    let inputs = flushed(&schema, &files);
    let out = merge(&spec(&schema, 16 << 10, vec![]), inputs).unwrap();
    assert_eq!(out.rows_in, 12_000);
    assert_eq!(out.rows_out, 12_000);
    assert!(out.files.len() > 1, "a small target splits the output");
    let mut last = i64::MIN;
    let mut seqs = Vec::new();
    for EncodedFile {
        file: f, bytes: b, ..
    } in &out.files
    {
        let decoded = decode(b.clone(), None, &f.path).unwrap();
        let rows: usize = decoded.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows as u64, f.rows);
        for batch in decoded {
            let k = batch
                .column_by_name("k")
                .unwrap()
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            for i in 0..batch.num_rows() {
                assert!(k.value(i) >= last, "rows stay in time order across files");
                last = k.value(i);
            }
            let s = batch
                .column_by_name(SEQ_COLUMN)
                .unwrap()
                .as_primitive::<UInt64Type>();
            seqs.extend(s.values().iter().copied());
        }
        assert!(f.min_time.unwrap() <= f.max_time.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=12_000).collect::<Vec<u64>>(),
        "every event exactly once"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Merging any subset of files never changes what the table resolves to, key ranges of the
    /// outputs hold their keys, and merging everything leaves no tombstone behind.
    #[test]
    fn merging_never_changes_the_answer(
        files in proptest::collection::vec(
            proptest::collection::vec((0i64..30, "[a-z]{0,2}", proptest::bool::weighted(0.3)), 1..25),
            2..6,
        ),
        skip_first in any::<bool>(),
        target_kib in 1u64..64,
    ) {
        let schema = upsert_schema();
        let mut inputs = flushed(&schema, &files);
        let everything: Vec<RecordBatch> = inputs
            .iter()
            .flat_map(|i| decode(i.bytes.clone(), None, &i.file.path).unwrap())
            .collect();
        let want = pairs(resolve(&everything, &["k".into()]).unwrap());
        let outside: Vec<MergeInput> = if skip_first { vec![inputs.remove(0)] } else { vec![] };

        let others = outside.iter().map(|i| i.file.clone()).collect();
        let out = merge(&spec(&schema, target_kib << 10, others), inputs).unwrap();
        let mut after = batches(&out.files);
        for f in &out.files {
            let b = decode(f.bytes.clone(), None, &f.file.path).unwrap();
            for batch in &b {
                for i in 0..batch.num_rows() {
                    let key = hex(&memcomparable_key(batch, &[0], i));
                    prop_assert!(f.file.may_hold_key(&key));
                }
            }
        }
        if outside.is_empty() {
            let model: BTreeMap<i64, ()> = want.iter().map(|(k, _)| (*k, ())).collect();
            prop_assert_eq!(out.rows_out as usize, model.len(), "one live row per key, no tombstones");
        }
        for o in outside {
            after.extend(decode(o.bytes, None, "outside").unwrap());
        }
        prop_assert_eq!(pairs(resolve(&after, &["k".into()]).unwrap()), want);
    }
}

#[test]
fn append_tables_without_sort_columns_merge_in_sequence_order() {
    let schema: Arc<TableSchema> = Arc::new(
        serde_json::from_str(
            r#"{"fields":[{"name":"k","type":"int64"},{"name":"v","type":"string"}]}"#,
        )
        .unwrap(),
    );
    let m1 = Memtable::new(1, schema.clone(), 1);
    let m2 = Memtable::new(2, schema.clone(), 1);
    for seq in 1..=10u64 {
        let m = if seq % 2 == 0 { &m2 } else { &m1 };
        let row = Row {
            op: Op::Upsert,
            values: vec![Value::Int(seq as i64), Value::Str("x".into())],
        };
        m.insert(seq, 0, row);
    }
    let inputs: Vec<MergeInput> = [m1, m2]
        .iter()
        .flat_map(|m| build_files(&table(), m).unwrap())
        .map(|f| MergeInput {
            file: Arc::new(f.file),
            bytes: f.bytes,
        })
        .collect();
    let out = merge(&spec(&schema, 1 << 30, vec![]), inputs).unwrap();
    assert_eq!(out.rows_out, 10);
    let seqs: Vec<u64> = batches(&out.files)
        .iter()
        .flat_map(|b| {
            b.column_by_name(SEQ_COLUMN)
                .unwrap()
                .as_primitive::<UInt64Type>()
                .values()
                .to_vec()
        })
        .collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<u64>>());
}
