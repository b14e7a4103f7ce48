//! Tests of the JSON -> rows translation (the `tests` module of `translate.rs`).

#![allow(clippy::unwrap_used)]

use super::*;
use crate::schema::types::Field;

fn schema(fields: &[(&str, &str, bool)]) -> TableSchema {
    TableSchema {
        fields: fields
            .iter()
            .map(|(n, t, nullable)| Field {
                name: (*n).into(),
                ty: FieldType::parse(t).unwrap(),
                nullable: *nullable,
            })
            .collect(),
        primary_key: vec![],
        time_column: None,
        partition_by: Default::default(),
        indexes: vec![],
        evolution: Default::default(),
    }
}

fn one(ty: &str, json: &str) -> Result<Value, SchemaError> {
    let s = schema(&[("v", ty, true)]);
    let body = format!("{{\"v\":{json}}}");
    let rows = parse_batch(
        body.as_bytes(),
        BodyFormat::Json,
        &s,
        &BatchLimits::default(),
    )?;
    Ok(rows
        .into_iter()
        .next()
        .unwrap()
        .values
        .into_iter()
        .next()
        .unwrap())
}

fn code(ty: &str, json: &str) -> &'static str {
    match one(ty, json) {
        Ok(v) => panic!("{json} into {ty} accepted as {v:?}"),
        Err(e) => e.code(),
    }
}

#[test]
fn integers() {
    assert_eq!(
        one("int64", "-9223372036854775808").unwrap(),
        Value::Int(i64::MIN)
    );
    assert_eq!(
        one("int64", "9223372036854775807").unwrap(),
        Value::Int(i64::MAX)
    );
    assert_eq!(code("int64", "9223372036854775808"), "value_out_of_range");
    assert_eq!(
        one("int32", "-2147483648").unwrap(),
        Value::Int(i32::MIN.into())
    );
    assert_eq!(code("int32", "2147483648"), "value_out_of_range");
    assert_eq!(
        one("uint64", "18446744073709551615").unwrap(),
        Value::UInt(u64::MAX)
    );
    assert_eq!(code("uint64", "-1"), "value_out_of_range");
    assert_eq!(code("uint64", "18446744073709551616"), "value_out_of_range");
    assert_eq!(code("int64", "1.5"), "type_mismatch");
    assert_eq!(code("int32", "\"1\""), "type_mismatch");
    assert_eq!(code("int64", "true"), "type_mismatch");
    // Integral floats up to 2^53 are the integers they spell; beyond, they may be rounded.
    assert_eq!(one("int64", "1.0").unwrap(), Value::Int(1));
    assert_eq!(one("uint64", "1e3").unwrap(), Value::UInt(1000));
    assert_eq!(code("int64", "1e17"), "value_out_of_range");
    assert_eq!(code("uint64", "-1.0"), "value_out_of_range");
}

#[test]
fn floats_bools_strings() {
    assert_eq!(one("float64", "1").unwrap(), Value::Float(1.0));
    assert_eq!(one("float64", "-2.5e300").unwrap(), Value::Float(-2.5e300));
    assert_eq!(
        one("float32", "0.1").unwrap(),
        Value::Float(f64::from(0.1f32))
    );
    assert_eq!(code("float32", "1e39"), "value_out_of_range");
    assert_eq!(code("float64", "\"1.0\""), "type_mismatch");
    assert_eq!(one("bool", "false").unwrap(), Value::Bool(false));
    assert_eq!(code("bool", "0"), "type_mismatch");
    assert_eq!(
        one("string", "\"h\\u00e9\"").unwrap(),
        Value::Str("hé".into())
    );
    assert_eq!(code("string", "1"), "type_mismatch");
    assert_eq!(code("string", "{}"), "type_mismatch");
}

#[test]
fn binary() {
    assert_eq!(
        one("binary", "\"aGk=\"").unwrap(),
        Value::Bytes(b"hi".to_vec())
    );
    assert_eq!(
        one("binary", "\"aGk\"").unwrap(),
        Value::Bytes(b"hi".to_vec())
    );
    assert_eq!(one("binary", "\"\"").unwrap(), Value::Bytes(vec![]));
    assert_eq!(code("binary", "\"a*k=\""), "invalid_base64");
    assert_eq!(code("binary", "\"a\""), "invalid_base64");
    assert_eq!(code("binary", "[1]"), "type_mismatch");
}

#[test]
fn timestamps() {
    let ts = |ty, s: &str| one(ty, &format!("\"{s}\""));
    assert_eq!(
        ts("timestamp_ms", "2026-11-25T10:00:00.123Z").unwrap(),
        Value::Timestamp(1_795_600_800_123)
    );
    // +02:00 is two hours ahead of UTC.
    assert_eq!(
        ts("timestamp_s", "2026-11-25T12:00:00+02:00").unwrap(),
        Value::Timestamp(1_795_600_800)
    );
    assert_eq!(
        ts("timestamp_ns", "1970-01-01T00:00:00.000000001Z").unwrap(),
        Value::Timestamp(1)
    );
    assert_eq!(
        ts("timestamp_us", "1969-12-31T23:59:59.999999Z").unwrap(),
        Value::Timestamp(-1)
    );
    assert_eq!(
        ts("timestamp_ns", "2026-01-01T00:00:00.1234567890Z").unwrap(),
        ts("timestamp_ns", "2026-01-01T00:00:00.123456789Z").unwrap()
    );
    assert_eq!(
        ts("timestamp_ns", "2026-01-01T00:00:00.1234567891Z")
            .unwrap_err()
            .code(),
        "invalid_timestamp"
    );
    assert_eq!(
        ts("timestamp_s", "2026-01-01T00:00:00.5Z")
            .unwrap_err()
            .code(),
        "invalid_timestamp"
    );
    assert_eq!(
        ts("timestamp_ms", "2026-01-01T00:00:00.0001Z")
            .unwrap_err()
            .code(),
        "invalid_timestamp"
    );
    assert_eq!(
        ts("timestamp_s", "2026-01-01T00:00:00.000Z").unwrap(),
        Value::Timestamp(1_767_225_600)
    );
    // Out of the nanosecond range of i64 (years 1677-2262).
    assert_eq!(
        ts("timestamp_ns", "2300-01-01T00:00:00Z")
            .unwrap_err()
            .code(),
        "invalid_timestamp"
    );
    assert_eq!(
        ts("timestamp_ms", "yesterday").unwrap_err().code(),
        "invalid_timestamp"
    );
    assert_eq!(
        ts("timestamp_ms", "2026-01-01").unwrap_err().code(),
        "invalid_timestamp"
    );
    assert_eq!(one("timestamp_ms", "-5").unwrap(), Value::Timestamp(-5));
    assert_eq!(code("timestamp_ms", "1.5"), "type_mismatch");
    assert_eq!(code("timestamp_ms", "true"), "type_mismatch");
}

#[test]
fn dates() {
    assert_eq!(one("date", "\"1970-01-01\"").unwrap(), Value::Date(0));
    assert_eq!(one("date", "\"2026-11-25\"").unwrap(), Value::Date(20_782));
    assert_eq!(one("date", "\"1969-12-31\"").unwrap(), Value::Date(-1));
    assert_eq!(one("date", "-3").unwrap(), Value::Date(-3));
    assert_eq!(code("date", "\"2026-02-30\""), "invalid_date");
    assert_eq!(code("date", "\"2026-1-5\""), "invalid_date");
    assert_eq!(code("date", "\"2026-01-05T00:00:00Z\""), "invalid_date");
    assert_eq!(code("date", "3000000000"), "value_out_of_range");
}

#[test]
fn lists() {
    assert_eq!(
        one("list<int64>", "[1,null,3]").unwrap(),
        Value::List(vec![Value::Int(1), Value::Null, Value::Int(3)])
    );
    assert_eq!(one("list<string>", "[]").unwrap(), Value::List(vec![]));
    let e = one("list<int64>", "[1,\"two\"]").unwrap_err();
    assert_eq!(
        e.to_string(),
        "row 0, field \"v[1]\": expected int64, found string \"two\""
    );
    assert_eq!(code("list<int64>", "[[1]]"), "type_mismatch");
    assert_eq!(code("list<int64>", "1"), "type_mismatch");
}

#[test]
fn exact_messages() {
    let s = schema(&[("id", "int64", false), ("ts", "timestamp_ms", true)]);
    let lim = BatchLimits::default();
    let body = b"{\"id\":1}\n\n{\"id\":2}\n{\"id\":3}\n{\"id\":4,\"ts\":\"yesterday\"}\n";
    let e = parse_batch(body, BodyFormat::Ndjson, &s, &lim).unwrap_err();
    assert_eq!(
        e.to_string(),
        "row 3 (line 5), field \"ts\": expected timestamp_ms, found string \"yesterday\": \
         not an RFC 3339 timestamp like 2026-01-31T12:00:00Z"
    );
    let e = parse_batch(br#"[{"id":1},{"ts":0}]"#, BodyFormat::Json, &s, &lim).unwrap_err();
    assert_eq!(
        e.to_string(),
        "row 1, field \"id\": missing, expected int64 (not nullable)"
    );
    assert_eq!(e.code(), "missing_field");
    let e = parse_batch(br#"[{"id":null}]"#, BodyFormat::Json, &s, &lim).unwrap_err();
    assert_eq!(e.code(), "null_not_allowed");
    let e = parse_batch(br#"{"id":1,"extra":true}"#, BodyFormat::Json, &s, &lim).unwrap_err();
    assert_eq!(
        e.to_string(),
        "row 0, field \"extra\": unknown field, not in the table schema"
    );
    let e = parse_batch(br#"[{"id":1}, 7]"#, BodyFormat::Json, &s, &lim).unwrap_err();
    assert_eq!(
        e.to_string(),
        "row 1: expected a JSON object, found number 7"
    );
    assert_eq!(e.code(), "not_an_object");
    let e = parse_batch(
        br#"{"id":2147483648000000000000}"#,
        BodyFormat::Json,
        &s,
        &lim,
    );
    assert_eq!(e.unwrap_err().code(), "value_out_of_range");
}

#[test]
fn malformed_json_has_a_position() {
    let s = schema(&[("id", "int64", false)]);
    let lim = BatchLimits::default();
    let e = parse_batch(b"[{\"id\":1},\n {\"id\" 2}]", BodyFormat::Json, &s, &lim).unwrap_err();
    assert_eq!(e.code(), "malformed_json");
    assert!(
        matches!(
            e,
            SchemaError::MalformedJson {
                line: 2,
                column: 8,
                ..
            }
        ),
        "{e:?}"
    );
    let e = parse_batch(b"{\"id\":1}\r\n{\"id\":", BodyFormat::Ndjson, &s, &lim).unwrap_err();
    assert!(
        matches!(e, SchemaError::MalformedJson { line: 2, .. }),
        "{e:?}"
    );
    assert_eq!(
        parse_batch(b"[{\"id\":1}] x", BodyFormat::Json, &s, &lim)
            .unwrap_err()
            .code(),
        "malformed_json"
    );
    assert_eq!(
        parse_batch(b"{\"id\":1} {\"id\":2}", BodyFormat::Json, &s, &lim)
            .unwrap_err()
            .code(),
        "malformed_json"
    );
    // A second object on one NDJSON line is not silently dropped.
    assert_eq!(
        parse_batch(b"{\"id\":1} {\"id\":2}", BodyFormat::Ndjson, &s, &lim)
            .unwrap_err()
            .code(),
        "malformed_json"
    );
}

#[test]
fn ndjson_with_blank_lines_and_crlf() {
    let s = schema(&[("id", "int64", false), ("name", "string", true)]);
    let body = b"\r\n{\"id\":1,\"name\":\"a\"}\r\n  \r\n{\"id\":2}\r\n\n{\"id\":3,\"name\":null}";
    let rows = parse_batch(body, BodyFormat::Ndjson, &s, &BatchLimits::default()).unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].values, vec![Value::Int(1), Value::Str("a".into())]);
    assert_eq!(rows[1].values, vec![Value::Int(2), Value::Null]);
    assert_eq!(rows[2].values, vec![Value::Int(3), Value::Null]);
    assert!(rows.iter().all(|r| r.op == Op::Upsert));
    let e = parse_batch(
        b"{\"id\":1}\r\n[]\r\n",
        BodyFormat::Ndjson,
        &s,
        &BatchLimits::default(),
    );
    assert_eq!(
        e.unwrap_err().to_string(),
        "row 1 (line 2): expected a JSON object, found array []"
    );
}

#[test]
fn empty_batches_and_limits() {
    let s = schema(&[("id", "int64", true)]);
    let lim = BatchLimits::default();
    for (body, fmt) in [
        (&b"[]"[..], BodyFormat::Json),
        (b"  \n", BodyFormat::Json),
        (b"", BodyFormat::Ndjson),
        (b"\n\r\n  \n", BodyFormat::Ndjson),
    ] {
        assert_eq!(
            parse_batch(body, fmt, &s, &lim).unwrap_err().code(),
            "empty_batch"
        );
    }
    let small = BatchLimits {
        max_rows: 2,
        max_depth: 32,
    };
    assert_eq!(
        parse_batch(b"[{},{}]", BodyFormat::Json, &s, &small)
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        parse_batch(b"[{},{},{}]", BodyFormat::Json, &s, &small).unwrap_err(),
        SchemaError::TooManyRows { max: 2 }
    );
    assert_eq!(
        parse_batch(b"{}\n{}\n{}", BodyFormat::Ndjson, &s, &small)
            .unwrap_err()
            .code(),
        "too_many_rows"
    );
    let shallow = BatchLimits {
        max_rows: 10,
        max_depth: 1,
    };
    let l = schema(&[("l", "list<int64>", true)]);
    assert_eq!(
        parse_batch(br#"{"l":[1]}"#, BodyFormat::Json, &l, &shallow)
            .unwrap_err()
            .code(),
        "too_deep"
    );
    assert!(parse_batch(br#"{"l":[1]}"#, BodyFormat::Json, &l, &lim).is_ok());
}

#[test]
fn an_error_late_in_the_batch_rejects_it_all() {
    let s = schema(&[("id", "int64", false)]);
    let mut body = String::from("[");
    for i in 0..1000 {
        body.push_str(&format!("{{\"id\":{i}}},"));
    }
    body.push_str("{\"id\":\"x\"}]");
    let e = parse_batch(
        body.as_bytes(),
        BodyFormat::Json,
        &s,
        &BatchLimits::default(),
    );
    assert_eq!(
        e.unwrap_err().to_string(),
        "row 1000, field \"id\": expected int64, found string \"x\""
    );
}

#[test]
fn deletes_name_their_key_and_fill_the_rest() {
    let mut s = schema(&[
        ("id", "int64", false),
        ("ts", "timestamp_ms", false),
        ("note", "string", true),
    ]);
    s.primary_key = vec!["id".into()];
    let rows = parse_batch(
        br#"[{"id":1,"ts":5,"note":"a"},{"id":1,"_op":"delete"},{"id":2,"ts":6,"_op":"upsert"}]"#,
        BodyFormat::Json,
        &s,
        &BatchLimits::default(),
    )
    .unwrap();
    assert_eq!(rows[0].op, Op::Upsert);
    assert_eq!(rows[1].op, Op::Delete);
    assert_eq!(
        rows[1].values,
        vec![Value::Int(1), Value::Timestamp(0), Value::Null]
    );
    assert_eq!(rows[2].op, Op::Upsert);

    // A delete still needs its key, and the op must be one of the two words.
    let err = |body: &[u8], s: &TableSchema| {
        parse_batch(body, BodyFormat::Json, s, &BatchLimits::default()).unwrap_err()
    };
    assert_eq!(err(br#"{"_op":"delete"}"#, &s).code(), "missing_field");
    let e = err(br#"{"id":1,"_op":"remove"}"#, &s);
    assert_eq!(e.code(), "invalid_op");
    assert!(e.to_string().contains("\"remove\""), "{e}");
    assert_eq!(err(br#"{"id":1,"_op":1}"#, &s).code(), "invalid_op");

    // Append-only tables have nothing to delete by.
    let append = schema(&[("id", "int64", false)]);
    let e = err(br#"{"id":1,"_op":"delete"}"#, &append);
    assert_eq!(e.code(), "invalid_op");
    assert!(e.to_string().contains("primary key"), "{e}");
}

#[test]
fn keys_in_any_order_escaped_or_repeated() {
    let s = schema(&[("id", "int64", false), ("name", "string", true)]);
    let lim = BatchLimits::default();
    let parse = |body: &str| parse_batch(body.as_bytes(), BodyFormat::Json, &s, &lim);
    let rows = parse(r#"[{"name":"a","id":1},{"\u0069d":2,"n\u0061me":"b\"c"}]"#).unwrap();
    assert_eq!(rows[0].values, vec![Value::Int(1), Value::Str("a".into())]);
    assert_eq!(
        rows[1].values,
        vec![Value::Int(2), Value::Str("b\"c".into())]
    );
    // The last value of a repeated key is kept; a required field may be null before it.
    let rows = parse(r#"{"id":null,"name":"x","id":3,"name":null}"#).unwrap();
    assert_eq!(rows[0].values, vec![Value::Int(3), Value::Null]);
    assert_eq!(
        parse(r#"{"id":3,"id":null}"#).unwrap_err().code(),
        "null_not_allowed"
    );
    // Every value given is checked, even one a later repetition replaces.
    assert_eq!(
        parse(r#"{"id":"x","id":3}"#).unwrap_err().code(),
        "type_mismatch"
    );
    // `_op` may come anywhere, also after the key.
    let mut keyed = s.clone();
    keyed.primary_key = vec!["id".into()];
    let rows = parse_batch(
        br#"{"id":4,"_op":"delete"}"#,
        BodyFormat::Json,
        &keyed,
        &lim,
    )
    .unwrap();
    assert_eq!(rows[0].op, Op::Delete);
}

#[test]
fn refused_containers_are_described_and_depth_checked() {
    let s = schema(&[("v", "string", true), ("l", "list<int64>", true)]);
    let lim = BatchLimits {
        max_rows: 10,
        max_depth: 3,
    };
    let parse = |body: &str| parse_batch(body.as_bytes(), BodyFormat::Json, &s, &lim);
    let e = parse(r#"{"v":{"a":[1,2]}}"#).unwrap_err();
    assert_eq!(
        e.to_string(),
        "row 0, field \"v\": expected string, found object {\"a\":[1,2]}"
    );
    assert_eq!(parse(r#"{"v":[[[1]]]}"#).unwrap_err().code(), "too_deep");
    assert_eq!(parse(r#"{"l":[[[1]]]}"#).unwrap_err().code(), "too_deep");
    assert_eq!(parse(r#"{"x":[[[1]]]}"#).unwrap_err().code(), "too_deep");
    let e = parse(r#"{"l":[1,null,"2"]}"#).unwrap_err();
    assert_eq!(
        e.to_string(),
        "row 0, field \"l[2]\": expected int64, found string \"2\""
    );
    let rows = parse(r#"{"l":[1,null,3]}"#).unwrap();
    assert_eq!(
        rows[0].values[1],
        Value::List(vec![Value::Int(1), Value::Null, Value::Int(3)])
    );
    // A syntax error after a valid prefix is malformed JSON, not a schema error.
    assert_eq!(
        parse(r#"[{"v":"a"},{"v":}]"#).unwrap_err().code(),
        "malformed_json"
    );
    assert_eq!(
        parse(r#"[{"v":"a"}] x"#).unwrap_err().code(),
        "malformed_json"
    );
}

#[test]
fn wide_schemas_find_fields_by_name() {
    let names: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
    let fields: Vec<(&str, &str, bool)> =
        names.iter().map(|n| (n.as_str(), "int64", true)).collect();
    let s = schema(&fields);
    let lim = BatchLimits::default();
    let rows = parse_batch(br#"{"f19":19,"f0":0,"f7":7}"#, BodyFormat::Json, &s, &lim).unwrap();
    assert_eq!(rows[0].values[19], Value::Int(19));
    assert_eq!(rows[0].values[0], Value::Int(0));
    assert_eq!(rows[0].values[7], Value::Int(7));
    assert_eq!(rows[0].values[1], Value::Null);
    let e = parse_batch(br#"{"f20":1}"#, BodyFormat::Json, &s, &lim).unwrap_err();
    assert_eq!(e.code(), "unknown_field");
}
