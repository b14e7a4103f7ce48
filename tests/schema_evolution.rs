//! Schema evolution over HTTP: additive changes become new versions that read older rows
//! (memtable, WAL replay, files, compacted files) in the newest shape; strict tables and
//! incompatible changes are refused precisely; `infer` tables evolve from their data, and
//! unknown tables can be created from their first batch.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{Value, json};

fn put_table(server: &Server, table: &str, schema: &Value) -> Resp {
    send(
        "PUT",
        &server.url(&format!("/v1/tables/{table}")),
        Some(ADMIN_KEY),
        Some("application/json"),
        Some(schema.to_string().as_bytes()),
    )
}

fn v1() -> Value {
    json!({"fields": [
        {"name": "id", "type": "int64", "nullable": false},
        {"name": "n", "type": "int32"},
        {"name": "x", "type": "float32"}
    ], "primary_key": ["id"]})
}

fn v2() -> Value {
    json!({"fields": [
        {"name": "id", "type": "int64", "nullable": false},
        {"name": "n", "type": "int64"},
        {"name": "x", "type": "float64"},
        {"name": "note", "type": "string"}
    ], "primary_key": ["id"]})
}

fn by_id(rows: &[Value]) -> Vec<(i64, Value, Value, Value)> {
    rows.iter()
        .map(|r| {
            (
                r["id"].as_i64().unwrap(),
                r["n"].clone(),
                r["x"].clone(),
                r["note"].clone(),
            )
        })
        .collect()
}

#[test]
fn additive_versions_read_every_older_row_in_the_newest_shape() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    assert_eq!(put_table(&server, "t", &v1()).status, 201);
    // Version 1 rows: ids 1-2 in a file, id 3 only in the WAL and the memtable.
    let r = ingest(
        &server,
        ADMIN_KEY,
        "t",
        &json!([{"id":1,"n":10,"x":1.5},{"id":2,"n":20}]),
    );
    assert_eq!(r.status, 200, "{r:?}");
    flush(&server, ADMIN_KEY, "t");
    assert_eq!(
        ingest(&server, ADMIN_KEY, "t", &json!({"id":3,"n":30})).status,
        200
    );

    // Fields of version 2 are refused before the change...
    let r = ingest(&server, ADMIN_KEY, "t", &json!({"id":4,"note":"early"}));
    assert_eq!((r.status, r.code().as_str()), (400, "unknown_field"));

    let r = put_table(&server, "t", &v2());
    assert_eq!(r.status, 200, "{r:?}");
    let body = r.json();
    assert_eq!(body["schema_version"], 2);
    let changes: Vec<&str> = body["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(
        changes,
        vec![
            "field \"n\" widened from int32 to int64",
            "field \"x\" widened from float32 to float64",
            "field \"note\" (string) added",
        ]
    );
    // ...and accepted after it; a value only int64 holds, too.
    let r = ingest(
        &server,
        ADMIN_KEY,
        "t",
        &json!([{"id":4,"n":5_000_000_000i64,"x":0.1,"note":"new"}]),
    );
    assert_eq!(r.status, 200, "{r:?}");
    // The same definition again changes nothing.
    let r = put_table(&server, "t", &v2());
    assert_eq!(
        (r.status, r.json()["schema_version"].clone()),
        (200, json!(2))
    );

    let want = vec![
        (1, json!(10), json!(1.5), Value::Null),
        (2, json!(20), Value::Null, Value::Null),
        (3, json!(30), Value::Null, Value::Null),
        (4, json!(5_000_000_000i64), json!(0.1), json!("new")),
    ];
    assert_eq!(by_id(&query_all(&server, ADMIN_KEY, "t", &json!({}))), want);
    let r = get(&server, "/v1/tables/t/rows/1");
    assert_eq!(r.json()["note"], Value::Null);
    assert_eq!(r.json()["n"], 10);
    // A filter on a widened column prunes and matches old files by their widened values.
    let rows = query_all(
        &server,
        ADMIN_KEY,
        "t",
        &json!({"filter": {"column": "n", "op": ">", "value": 15}}),
    );
    assert_eq!(
        by_id(&rows).iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );

    // A crash with rows of both versions only in the WAL: replay reads each with its own
    // version.
    assert_eq!(
        ingest(&server, ADMIN_KEY, "t", &json!({"id":5,"note":"wal"})).status,
        200
    );
    server.kill9();
    let server = Server::start(dir.path(), &[]);
    let mut want = want;
    want.push((5, Value::Null, Value::Null, json!("wal")));
    assert_eq!(by_id(&query_all(&server, ADMIN_KEY, "t", &json!({}))), want);

    // Files of both versions compact into one of the newest version.
    flush(&server, ADMIN_KEY, "t");
    let r = compact(&server, "t");
    assert_eq!(r.status, 200, "{r:?}");
    let files = get(&server, "/v1/tables/t/files").json();
    let live = files["files"].as_array().unwrap();
    assert_eq!(live.len(), 1, "{files}");
    assert_eq!(live[0]["schema_version"], 2);
    assert_eq!(by_id(&query_all(&server, ADMIN_KEY, "t", &json!({}))), want);
    // Older versions still read as they were.
    let r = get(&server, "/v1/tables/t");
    assert_eq!(r.json()["schema_version"], 2);
}

#[test]
fn incompatible_changes_and_strict_tables_are_refused_precisely() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    assert_eq!(put_table(&server, "t", &v1()).status, 201);
    let cases = [
        (
            json!({"fields": [{"name": "id", "type": "int64", "nullable": false}], "primary_key": ["id"]}),
            "field \"n\" is missing",
        ),
        (
            json!({"fields": [
                {"name": "id", "type": "int64", "nullable": false},
                {"name": "n", "type": "string"},
                {"name": "x", "type": "float32"}
            ], "primary_key": ["id"]}),
            "cannot change from int32 to string",
        ),
        (
            json!({"fields": [
                {"name": "id", "type": "int64", "nullable": false},
                {"name": "n", "type": "int32"},
                {"name": "x", "type": "float32"},
                {"name": "must", "type": "bool", "nullable": false}
            ], "primary_key": ["id"]}),
            "new field \"must\" must be nullable",
        ),
        (
            json!({"fields": [
                {"name": "id", "type": "int64", "nullable": false},
                {"name": "n", "type": "int32"},
                {"name": "x", "type": "float32"}
            ]}),
            "the primary key cannot change",
        ),
    ];
    for (schema, want) in cases {
        let r = put_table(&server, "t", &schema);
        assert_eq!(r.status, 409, "{r:?}");
        assert_eq!(r.code(), "schema_change_refused");
        let detail = r.json()["detail"].as_str().unwrap().to_string();
        assert!(detail.contains(want), "{detail} lacks {want}");
    }
    let r = get(&server, "/v1/tables/t");
    assert_eq!(r.json()["schema_version"], 1, "nothing changed");

    let mut strict = v1();
    strict["evolution"] = json!("strict");
    assert_eq!(put_table(&server, "s", &strict).status, 201);
    let mut grown = v2();
    grown["evolution"] = json!("strict");
    let r = put_table(&server, "s", &grown);
    assert_eq!(
        (r.status, r.code().as_str()),
        (409, "schema_change_refused")
    );
    assert!(r.body.contains("strict"), "{}", r.body);
    // A strict table's data gets the ingest errors, and its mode can be relaxed explicitly.
    let r = ingest(&server, ADMIN_KEY, "s", &json!({"id":1,"note":"x"}));
    assert_eq!((r.status, r.code().as_str()), (400, "unknown_field"));
    let r = put_table(&server, "s", &v1());
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["evolution"], "additive");
    assert_eq!(put_table(&server, "s", &v2()).json()["schema_version"], 3);
}

#[test]
fn infer_tables_are_created_and_evolved_from_data() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("ALLUVIUM_INGEST__INFER_NEW_TABLES", "true")]);
    let r = ingest(
        &server,
        ADMIN_KEY,
        "auto",
        &json!([{"a": 1, "b": "x", "c": null}, {"a": 2, "tags": ["p", "q"]}]),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let t = get(&server, "/v1/tables/auto").json();
    assert_eq!(t["evolution"], "infer");
    assert_eq!(
        t["fields"],
        json!([
            {"name": "a", "type": "int64", "nullable": true},
            {"name": "b", "type": "string", "nullable": true},
            {"name": "tags", "type": "list<string>", "nullable": true}
        ])
    );
    flush(&server, ADMIN_KEY, "auto");
    // A float in the int64 column cannot widen without loss: refused, table unchanged.
    let r = ingest(&server, ADMIN_KEY, "auto", &json!({"a": 1.5}));
    assert_eq!((r.status, r.code().as_str()), (400, "type_mismatch"));
    // New fields join as new versions.
    let r = ingest(
        &server,
        ADMIN_KEY,
        "auto",
        &json!({"a": 3, "ok": true, "c": null}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let t = get(&server, "/v1/tables/auto").json();
    assert_eq!(t["schema_version"], 2);
    let rows = query_all(&server, ADMIN_KEY, "auto", &json!({"columns": ["a", "ok"]}));
    assert_eq!(
        rows,
        vec![
            json!({"a": 1, "ok": null}),
            json!({"a": 2, "ok": null}),
            json!({"a": 3, "ok": true})
        ]
    );
    // Objects have no inferred type.
    let r = ingest(&server, ADMIN_KEY, "other", &json!({"o": {"k": 1}}));
    assert_eq!((r.status, r.code().as_str()), (400, "cannot_infer"));
    let r = get(&server, "/v1/tables/other");
    assert_eq!(r.status, 404, "a refused batch creates nothing");

    // Without the setting, unknown tables stay unknown.
    let dir2 = tempfile::tempdir().unwrap();
    let plain = Server::start(dir2.path(), &[]);
    let r = ingest(&plain, ADMIN_KEY, "auto", &json!({"a": 1}));
    assert_eq!((r.status, r.code().as_str()), (404, "table_not_found"));
}
