//! Tests of rows <-> Arrow <-> JSON (the `tests` module of `arrow.rs`).

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::row::Op;
use crate::schema::translate::{BatchLimits, BodyFormat, parse_batch};
use crate::schema::types::Field;

const ALL_TYPES: &[(&str, &str)] = &[
    ("b", "bool"),
    ("i32", "int32"),
    ("i64", "int64"),
    ("u64", "uint64"),
    ("f32", "float32"),
    ("f64", "float64"),
    ("s", "string"),
    ("bin", "binary"),
    ("ts_s", "timestamp_s"),
    ("ts_ms", "timestamp_ms"),
    ("ts_us", "timestamp_us"),
    ("ts_ns", "timestamp_ns"),
    ("d", "date"),
    ("li", "list<int64>"),
    ("lt", "list<timestamp_ns>"),
    ("ls", "list<string>"),
];

fn all_types() -> TableSchema {
    TableSchema {
        fields: ALL_TYPES
            .iter()
            .enumerate()
            .map(|(i, (n, t))| Field {
                name: (*n).into(),
                ty: FieldType::parse(t).unwrap(),
                // One required field, to check nullability lands on the Arrow field.
                nullable: i != 0,
            })
            .collect(),
        primary_key: vec![],
        time_column: None,
        partition_by: Default::default(),
        indexes: vec![],
        evolution: Default::default(),
    }
}

fn sample_row() -> Row {
    Row {
        op: Op::Upsert,
        values: vec![
            Value::Bool(true),
            Value::Int(-7),
            Value::Int(i64::MIN),
            Value::UInt(u64::MAX),
            Value::Float(f64::from(0.1f32)),
            Value::Float(f64::NAN),
            Value::Str("hé \"q\"".into()),
            Value::Bytes(b"hi".to_vec()),
            Value::Timestamp(1_795_600_800),
            Value::Timestamp(1_795_600_800_123),
            Value::Timestamp(-1),
            Value::Timestamp(1),
            Value::Date(20_782),
            Value::List(vec![Value::Int(1), Value::Null, Value::Int(3)]),
            Value::Null,
            Value::List(vec![]),
        ],
    }
}

#[test]
fn schema_and_batch_have_the_right_types() {
    let s = all_types();
    let a = arrow_schema(&s);
    let utc = Some(Arc::<str>::from("UTC"));
    let expected = [
        DataType::Boolean,
        DataType::Int32,
        DataType::Int64,
        DataType::UInt64,
        DataType::Float32,
        DataType::Float64,
        DataType::Utf8,
        DataType::Binary,
        DataType::Timestamp(ArrowUnit::Second, utc.clone()),
        DataType::Timestamp(ArrowUnit::Millisecond, utc.clone()),
        DataType::Timestamp(ArrowUnit::Microsecond, utc.clone()),
        DataType::Timestamp(ArrowUnit::Nanosecond, utc.clone()),
        DataType::Date32,
        DataType::List(Arc::new(ArrowField::new("item", DataType::Int64, true))),
        DataType::List(Arc::new(ArrowField::new(
            "item",
            DataType::Timestamp(ArrowUnit::Nanosecond, utc.clone()),
            true,
        ))),
        DataType::List(Arc::new(ArrowField::new("item", DataType::Utf8, true))),
        DataType::UInt64,
        DataType::UInt8,
        DataType::Timestamp(ArrowUnit::Microsecond, utc),
    ];
    assert_eq!(a.fields().len(), expected.len());
    for (f, t) in a.fields().iter().zip(&expected) {
        assert_eq!(f.data_type(), t, "{}", f.name());
    }
    assert!(!a.field(0).is_nullable());
    assert!(a.field(1).is_nullable());
    let hidden: Vec<_> = a.fields().iter().skip(ALL_TYPES.len()).collect();
    assert_eq!(hidden[0].name(), SEQ_COLUMN);
    assert_eq!(hidden[1].name(), OP_COLUMN);
    assert_eq!(hidden[2].name(), INGESTED_AT_COLUMN);
    assert!(hidden.iter().all(|f| !f.is_nullable()));

    let row = sample_row();
    let del = Row {
        op: Op::Delete,
        ..sample_row()
    };
    let refs = [
        RowRef {
            seq: 5,
            ingested_at_us: 10,
            row: &row,
        },
        RowRef {
            seq: 6,
            ingested_at_us: 11,
            row: &del,
        },
    ];
    let batch = rows_to_batch(&s, &refs).unwrap();
    assert_eq!(batch.schema(), a);
    assert_eq!(batch.num_rows(), 2);
    let seq = batch
        .column_by_name(SEQ_COLUMN)
        .unwrap()
        .as_primitive::<UInt64Type>();
    assert_eq!(seq.values().as_ref(), &[5, 6]);
    let op = batch
        .column_by_name(OP_COLUMN)
        .unwrap()
        .as_primitive::<UInt8Type>();
    assert_eq!(op.values().as_ref(), &[0, 1]);
    let lt = batch.column_by_name("lt").unwrap();
    assert_eq!(lt.null_count(), 2);
}

#[test]
fn renders_json() {
    let s = all_types();
    let row = sample_row();
    let refs = [RowRef {
        seq: 5,
        ingested_at_us: 1_795_600_800_000_001,
        row: &row,
    }];
    let batch = rows_to_batch(&s, &refs).unwrap();
    let objs = batch_to_json(&batch).unwrap();
    let expected = json!({
        "b": true, "i32": -7, "i64": i64::MIN, "u64": u64::MAX, "f32": 0.1, "f64": null,
        "s": "hé \"q\"", "bin": "aGk=",
        "ts_s": "2026-11-25T10:00:00Z", "ts_ms": "2026-11-25T10:00:00.123Z",
        "ts_us": "1969-12-31T23:59:59.999999Z", "ts_ns": "1970-01-01T00:00:00.000000001Z",
        "d": "2026-11-25", "li": [1, null, 3], "lt": null, "ls": [],
        "_seq": 5, "_op": 0, "_ingested_at": "2026-11-25T10:00:00.000001Z"
    });
    assert_eq!(J::Object(objs[0].clone()), expected);
    let keys: Vec<_> = objs[0].keys().cloned().collect();
    let names: Vec<_> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(keys, names, "keys follow column order");

    // The text writer renders the same objects, in the same order.
    let mut out = b"[".to_vec();
    let mut first = true;
    write_json_rows(&batch, &mut out, false, &mut first).unwrap();
    write_json_rows(&batch, &mut out, false, &mut first).unwrap();
    out.push(b']');
    let text = std::str::from_utf8(&out).unwrap();
    assert!(text.starts_with("[{\"b\":true,\"i32\":-7,"), "{text}");
    let back: Vec<J> = serde_json::from_slice(&out).unwrap();
    assert_eq!(back, vec![expected.clone(), expected.clone()]);

    let mut nd = Vec::new();
    let mut first = true;
    write_json_rows(&batch, &mut nd, true, &mut first).unwrap();
    assert_eq!(nd.iter().filter(|b| **b == b'\n').count(), 1);
    assert_eq!(serde_json::from_slice::<J>(&nd).unwrap(), expected);
}

#[test]
fn renders_projections_and_out_of_range_times() {
    let s = all_types();
    let mut row = sample_row();
    row.values[9] = Value::Timestamp(i64::MAX);
    row.values[12] = Value::Date(i32::MIN);
    let refs = [RowRef {
        seq: 1,
        ingested_at_us: 0,
        row: &row,
    }];
    let batch = rows_to_batch(&s, &refs).unwrap();
    let projected = batch.project(&[16, 12, 9]).unwrap();
    let objs = batch_to_json(&projected).unwrap();
    assert_eq!(
        J::Object(objs[0].clone()),
        json!({"_seq": 1, "d": i32::MIN, "ts_ms": i64::MAX})
    );
    assert_eq!(objs[0].keys().next().unwrap(), "_seq");
    // A sliced batch renders its own rows.
    let two = [
        refs[0],
        RowRef {
            seq: 2,
            ingested_at_us: 0,
            row: &row,
        },
    ];
    let batch = rows_to_batch(&s, &two).unwrap().slice(1, 1);
    assert_eq!(batch_to_json(&batch).unwrap()[0]["_seq"], json!(2));
}

#[test]
fn refuses_rows_that_do_not_fit() {
    let s = all_types();
    let short = Row {
        op: Op::Upsert,
        values: vec![Value::Bool(true)],
    };
    let e = rows_to_batch(
        &s,
        &[RowRef {
            seq: 1,
            ingested_at_us: 0,
            row: &short,
        }],
    )
    .unwrap_err();
    assert_eq!(e.code(), "invalid_row");
    let mut bad = sample_row();
    bad.values[13] = Value::List(vec![Value::Str("x".into())]);
    let good = sample_row();
    let refs = [
        RowRef {
            seq: 1,
            ingested_at_us: 0,
            row: &good,
        },
        RowRef {
            seq: 2,
            ingested_at_us: 0,
            row: &bad,
        },
    ];
    let e = rows_to_batch(&s, &refs).unwrap_err();
    assert_eq!(
        e.to_string(),
        "row 1 does not fit the table schema: field \"li\" holds a string, not list<int64>"
    );
    let mut null = sample_row();
    null.values[0] = Value::Null;
    let e = rows_to_batch(
        &s,
        &[RowRef {
            seq: 1,
            ingested_at_us: 0,
            row: &null,
        }],
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("null in non-nullable field \"b\""),
        "{e}"
    );
    let mut wide = sample_row();
    wide.values[1] = Value::Int(i64::from(i32::MAX) + 1);
    assert!(
        rows_to_batch(
            &s,
            &[RowRef {
                seq: 1,
                ingested_at_us: 0,
                row: &wide
            }]
        )
        .is_err()
    );
}

fn value_for(ty: &FieldType) -> BoxedStrategy<Value> {
    let v: BoxedStrategy<Value> = match ty {
        FieldType::Bool => any::<bool>().prop_map(Value::Bool).boxed(),
        FieldType::Int32 => any::<i32>().prop_map(|i| Value::Int(i.into())).boxed(),
        FieldType::Int64 => any::<i64>().prop_map(Value::Int).boxed(),
        FieldType::UInt64 => any::<u64>().prop_map(Value::UInt).boxed(),
        FieldType::Float32 => any::<f32>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| Value::Float(f.into()))
            .boxed(),
        FieldType::Float64 => any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::Float)
            .boxed(),
        FieldType::String => ".{0,12}".prop_map(Value::Str).boxed(),
        FieldType::Binary => proptest::collection::vec(any::<u8>(), 0..12)
            .prop_map(Value::Bytes)
            .boxed(),
        FieldType::Timestamp(_) => prop_oneof![
            any::<i64>(),
            // Mostly years 0000-9999, which render as RFC 3339.
            -62_000_000_000i64..253_000_000_000,
        ]
        .prop_map(Value::Timestamp)
        .boxed(),
        FieldType::Date => prop_oneof![any::<i32>(), -719_000i32..2_900_000]
            .prop_map(Value::Date)
            .boxed(),
        FieldType::List(inner) => proptest::collection::vec(value_for(inner), 0..4)
            .prop_map(Value::List)
            .boxed(),
    };
    prop_oneof![1 => Just(Value::Null), 6 => v].boxed()
}

fn valid_row(s: &TableSchema) -> impl Strategy<Value = Row> {
    let fields: Vec<_> = s
        .fields
        .iter()
        .map(|f| {
            let v = value_for(&f.ty);
            if f.nullable {
                v
            } else {
                v.prop_filter("required", |v| *v != Value::Null).boxed()
            }
        })
        .collect();
    fields.prop_map(|values| Row {
        op: Op::Upsert,
        values,
    })
}

proptest! {
    #[test]
    fn rows_roundtrip_through_arrow_and_json(
        rows in proptest::collection::vec(valid_row(&all_types()), 1..6)
    ) {
        let s = all_types();
        let refs: Vec<_> = rows
            .iter()
            .enumerate()
            .map(|(i, row)| RowRef { seq: i as u64 + 1, ingested_at_us: 0, row })
            .collect();
        let batch = rows_to_batch(&s, &refs).unwrap();
        let fields: Vec<usize> = (0..s.fields.len()).collect();
        let batch = batch.project(&fields).unwrap();
        let lim = BatchLimits::default();

        let objs: Vec<J> = batch_to_json(&batch).unwrap().into_iter().map(J::Object).collect();
        let body = serde_json::to_vec(&objs).unwrap();
        prop_assert_eq!(&parse_batch(&body, BodyFormat::Json, &s, &lim).unwrap(), &rows);

        let mut nd = Vec::new();
        write_json_rows(&batch, &mut nd, true, &mut true).unwrap();
        prop_assert_eq!(&parse_batch(&nd, BodyFormat::Ndjson, &s, &lim).unwrap(), &rows);
    }
}
