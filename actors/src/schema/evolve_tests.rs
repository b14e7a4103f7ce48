#![allow(clippy::unwrap_used)]

use super::*;
use crate::schema::types::TimeUnit;

fn schema(json: &str) -> TableSchema {
    let s: TableSchema = serde_json::from_str(json).unwrap();
    s.validate().unwrap();
    s
}

fn base() -> TableSchema {
    schema(
        r#"{"fields":[{"name":"id","type":"int64","nullable":false},{"name":"ts","type":"timestamp_ms","nullable":false},{"name":"n","type":"int32"},{"name":"x","type":"float32"},{"name":"s","type":"string","nullable":false}],"primary_key":["id"],"time_column":"ts"}"#,
    )
}

fn with(f: impl FnOnce(&mut TableSchema)) -> TableSchema {
    let mut s = base();
    f(&mut s);
    s
}

#[test]
fn allowed_changes_are_listed() {
    let new = with(|s| {
        s.fields[2].ty = FieldType::Int64;
        s.fields[3].ty = FieldType::Float64;
        s.fields[4].nullable = true;
        s.fields.push(Field {
            name: "extra".into(),
            ty: FieldType::String,
            nullable: true,
        });
        s.indexes = vec!["extra".into()];
    });
    let changes = check_change(&base(), &new).unwrap();
    assert_eq!(
        changes,
        vec![
            "field \"n\" widened from int32 to int64",
            "field \"x\" widened from float32 to float64",
            "field \"s\" became nullable",
            "field \"extra\" (string) added",
            "index on \"extra\" added",
        ]
    );
    let to_float = with(|s| s.fields[2].ty = FieldType::Float64);
    assert!(check_change(&base(), &to_float).is_ok());
}

#[test]
fn refused_changes_say_why() {
    let cases: Vec<(TableSchema, &str)> = vec![
        (with(|s| s.fields.truncate(4)), "field \"s\" is missing"),
        (with(|s| s.fields.swap(2, 3)), "field \"n\" moved"),
        (
            with(|s| s.fields[2].name = "m".into()),
            "fields cannot be removed or renamed",
        ),
        (
            with(|s| s.fields[2].ty = FieldType::String),
            "cannot change from int32 to string",
        ),
        (
            with(|s| s.fields[0].ty = FieldType::Int32),
            "is a key or time column",
        ),
        (
            with(|s| s.fields[2].nullable = false),
            "cannot become non-nullable",
        ),
        (
            with(|s| {
                s.fields.push(Field {
                    name: "req".into(),
                    ty: FieldType::Int64,
                    nullable: false,
                })
            }),
            "new field \"req\" must be nullable",
        ),
        (
            with(|s| s.primary_key = vec!["id".into(), "s".into()]),
            "primary key",
        ),
        (with(|s| s.time_column = None), "time column cannot change"),
        (
            with(|s| s.partition_by = PartitionBy::Day),
            "partition_by cannot change",
        ),
    ];
    for (new, want) in cases {
        match check_change(&base(), &new) {
            Ok(c) => panic!("accepted {c:?}, expected refusal with {want:?}"),
            Err(e) => assert!(e.contains(want), "{e:?} lacks {want:?}"),
        }
    }
    // int64 -> float64 loses precision above 2^53.
    let s = schema(r#"{"fields":[{"name":"a","type":"int64"}]}"#);
    let f = schema(r#"{"fields":[{"name":"a","type":"float64"}]}"#);
    assert!(
        check_change(&s, &f)
            .unwrap_err()
            .contains("widen without loss")
    );
    assert!(!widens(&FieldType::Float64, &FieldType::Float32));
    assert!(widens(
        &FieldType::List(Box::new(FieldType::Int32)),
        &FieldType::List(Box::new(FieldType::Int64))
    ));
}

#[test]
fn strict_tables_refuse_all_but_a_mode_change() {
    let strict = with(|s| s.evolution = Evolution::Strict);
    let added = with(|s| {
        s.evolution = Evolution::Strict;
        s.fields.push(Field {
            name: "extra".into(),
            ty: FieldType::String,
            nullable: true,
        });
    });
    let e = check_mode(&strict, &added).unwrap_err();
    assert!(e.contains("strict") && e.contains("\"extra\""), "{e}");
    check_mode(&strict, &base()).unwrap();
    check_mode(&base(), &added).unwrap();
}

fn infer_json(current: Option<&TableSchema>, body: &str) -> Option<TableSchema> {
    infer(
        current,
        body.as_bytes(),
        BodyFormat::Json,
        &BatchLimits::default(),
    )
    .unwrap()
}

#[test]
fn infers_new_tables() {
    let s = infer_json(
        None,
        r#"[{"a":1,"b":"x","c":null,"d":[1,2.5]},{"a":2.5,"e":true,"f":18446744073709551615}]"#,
    )
    .unwrap();
    let got: Vec<(String, String, bool)> = s
        .fields
        .iter()
        .map(|f| (f.name.clone(), f.ty.to_string(), f.nullable))
        .collect();
    let want = [
        ("a", "float64"),
        ("b", "string"),
        ("d", "list<float64>"),
        ("e", "bool"),
        ("f", "uint64"),
    ];
    assert_eq!(
        got,
        want.iter()
            .map(|(n, t)| (n.to_string(), t.to_string(), true))
            .collect::<Vec<_>>()
    );
    assert_eq!(s.evolution, Evolution::Infer);
    assert!(s.primary_key.is_empty());
    assert_eq!(infer_json(None, r#"{"a":null}"#), None);
}

#[test]
fn infers_evolutions_of_existing_tables() {
    let cur = with(|s| s.evolution = Evolution::Infer);
    // New field, int32 widened to int64 and to float64, float32 to float64.
    let next = infer_json(
        Some(&cur),
        r#"[{"id":1,"ts":0,"s":"a","n":5000000000,"new":"v"}]"#,
    )
    .unwrap();
    assert_eq!(next.fields[2].ty, FieldType::Int64);
    assert_eq!(next.fields[5].name, "new");
    check_change(&cur, &next).unwrap();
    let next = infer_json(Some(&cur), r#"[{"id":1,"ts":0,"s":"a","n":1.5,"x":2.5}]"#).unwrap();
    assert_eq!(next.fields[2].ty, FieldType::Float64);
    assert_eq!(
        next.fields[3].ty,
        FieldType::Float32,
        "float32 takes fractions as it is"
    );
    // Existing fields whose values mix kinds (a timestamp as text and as a number) are left to
    // the translator; a new field still joins.
    let next = infer_json(
        Some(&cur),
        r#"[{"id":1,"ts":"2026-11-25T00:00:00Z","s":"a","new":1},{"id":2,"ts":0,"s":{"o":1}}]"#,
    )
    .unwrap();
    assert_eq!(next.fields.len(), 6);
    assert_eq!(
        next.fields[1].ty,
        FieldType::Timestamp(TimeUnit::Millisecond)
    );
    // An indexed int32 field is not widened to a float.
    let mut indexed = cur.clone();
    indexed.indexes = vec!["n".into()];
    assert_eq!(
        infer_json(Some(&indexed), r#"[{"id":1,"ts":0,"s":"a","n":1.5}]"#),
        None
    );
    // Keys never change type; nothing new means no change.
    assert_eq!(
        infer_json(Some(&cur), r#"[{"id":1.5,"ts":0,"s":"a"}]"#),
        None
    );
    assert_eq!(
        infer_json(Some(&cur), r#"[{"id":1,"ts":0,"s":"a","n":3}]"#),
        None
    );
}

#[test]
fn inference_refuses_what_it_cannot_type() {
    let lim = BatchLimits::default();
    for (body, want) in [
        (r#"[{"a":{"b":1}}]"#, "objects"),
        (r#"[{"a":[[1]]}]"#, "nested arrays"),
        (r#"[{"a":[1,"x"]}]"#, "mixing value kinds"),
        (r#"[{"a":1},{"a":"x"}]"#, "no common type"),
    ] {
        let e = infer(None, body.as_bytes(), BodyFormat::Json, &lim).unwrap_err();
        assert_eq!(e.code(), "cannot_infer", "{body}");
        assert!(e.to_string().contains(want), "{e} lacks {want}");
    }
    let e = infer(None, b"{\"a\":1}\n{oops", BodyFormat::Ndjson, &lim).unwrap_err();
    assert_eq!(e.code(), "malformed_json");
}
