//! Version resolution of upsert tables: per primary key, the row with the highest `_seq` wins,
//! and a winning delete hides the key.
//!
//! Works on Arrow batches as read from files and memtables, whatever their order: keys are
//! compared through Arrow's order-preserving row format, so the result also comes out sorted
//! by key. Append-only tables never come here: every event of theirs is a row.

use std::collections::HashMap;

use arrow::array::{Array, RecordBatch, UInt8Array, UInt32Array, UInt64Array};
use arrow::compute::{concat_batches, take_record_batch};
use arrow::error::ArrowError;
use arrow::row::{RowConverter, SortField};

use crate::row::Op;
use crate::schema::arrow::{OP_COLUMN, SEQ_COLUMN};

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, ArrowError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| ArrowError::SchemaError(format!("column {name} missing or mistyped")))
}

/// Keeps the newest version of every key among `batches` (same schema, holding the key
/// columns, `_seq` and `_op`), drops keys whose newest version is a delete, and returns the
/// survivors sorted by key. `None` when nothing survives.
pub fn resolve(
    batches: &[RecordBatch],
    key_columns: &[String],
) -> Result<Option<RecordBatch>, ArrowError> {
    let Some(first) = batches.first() else {
        return Ok(None);
    };
    let batch = concat_batches(&first.schema(), batches)?;
    if batch.num_rows() == 0 {
        return Ok(None);
    }
    let keys = key_columns
        .iter()
        .map(|k| {
            batch
                .column_by_name(k)
                .cloned()
                .ok_or_else(|| ArrowError::SchemaError(format!("key column {k} missing")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let converter = RowConverter::new(
        keys.iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect(),
    )?;
    let rows = converter.convert_columns(&keys)?;
    let seqs: &UInt64Array = column(&batch, SEQ_COLUMN)?;
    let ops: &UInt8Array = column(&batch, OP_COLUMN)?;

    let mut newest: HashMap<&[u8], (u64, usize)> = HashMap::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let seq = seqs.value(i);
        newest
            .entry(rows.row(i).data())
            .and_modify(|e| {
                if seq > e.0 {
                    *e = (seq, i);
                }
            })
            .or_insert((seq, i));
    }
    let mut winners: Vec<usize> = newest
        .into_values()
        .filter(|&(_, i)| ops.value(i) != Op::Delete as u8)
        .map(|(_, i)| i)
        .collect();
    if winners.is_empty() {
        return Ok(None);
    }
    winners.sort_by(|&a, &b| rows.row(a).cmp(&rows.row(b)));
    let indices = UInt32Array::from_iter_values(winners.into_iter().map(|i| i as u32));
    take_record_batch(&batch, &indices).map(Some)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use proptest::prelude::*;

    use super::*;

    fn batch(rows: &[(i64, &str, u64, u8)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Utf8, false),
            Field::new(SEQ_COLUMN, DataType::UInt64, false),
            Field::new(OP_COLUMN, DataType::UInt8, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.2))),
                Arc::new(UInt8Array::from_iter_values(rows.iter().map(|r| r.3))),
            ],
        )
        .unwrap()
    }

    fn pairs(b: Option<RecordBatch>) -> Vec<(i64, String)> {
        let Some(b) = b else { return vec![] };
        let k: &Int64Array = column(&b, "k").unwrap();
        let v: &StringArray = column(&b, "v").unwrap();
        (0..b.num_rows())
            .map(|i| (k.value(i), v.value(i).to_string()))
            .collect()
    }

    #[test]
    fn newest_wins_and_deletes_hide() {
        let a = batch(&[(2, "old", 1, 0), (1, "one", 2, 0), (3, "gone", 3, 0)]);
        let b = batch(&[(2, "new", 5, 0), (3, "", 4, 1), (4, "", 6, 1)]);
        let out = resolve(&[b, a], &["k".into()]).unwrap();
        assert_eq!(
            pairs(out),
            vec![(1, "one".into()), (2, "new".into())],
            "sorted by key, newest version, deleted keys gone"
        );
        assert!(resolve(&[], &["k".into()]).unwrap().is_none());
    }

    proptest! {
        /// Any order and split of versions resolves like a map replaying them by sequence.
        #[test]
        fn matches_a_replayed_map(
            ops in proptest::collection::vec((0i64..8, any::<bool>(), "[a-z]{0,3}"), 1..60),
            split in 1usize..5,
        ) {
            let mut model: BTreeMap<i64, String> = BTreeMap::new();
            let rows: Vec<(i64, String, u64, u8)> = ops
                .iter()
                .enumerate()
                .map(|(i, (k, del, v))| (*k, v.clone(), i as u64 + 1, u8::from(*del)))
                .collect();
            for (k, v, _, op) in &rows {
                if *op == 1 { model.remove(k); } else { model.insert(*k, v.clone()); }
            }
            // Scramble: reverse, then cut into `split` batches.
            let mut scrambled = rows.clone();
            scrambled.reverse();
            let chunk = scrambled.len().div_ceil(split);
            let batches: Vec<RecordBatch> = scrambled
                .chunks(chunk)
                .map(|c| {
                    let refs: Vec<(i64, &str, u64, u8)> =
                        c.iter().map(|(k, v, s, o)| (*k, v.as_str(), *s, *o)).collect();
                    batch(&refs)
                })
                .collect();
            let got = pairs(resolve(&batches, &["k".into()]).unwrap());
            let want: Vec<(i64, String)> = model.into_iter().collect();
            prop_assert_eq!(got, want);
        }
    }
}
