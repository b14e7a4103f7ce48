//! Upsert tables: the newest version of a key wins across memtables and files, deletes hide
//! keys, and a restart changes nothing.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{Value, json};

fn rows(server: &Server, table: &str) -> Vec<(Value, Value)> {
    query_all(server, ADMIN_KEY, table, &json!({"columns": ["id", "v"]}))
        .into_iter()
        .map(|r| (r["id"].clone(), r["v"].clone()))
        .collect()
}

fn delete(server: &Server, table: &str, key: &str) -> Resp {
    send(
        "DELETE",
        &server.url(&format!("/v1/tables/{table}/rows/{key}")),
        Some(ADMIN_KEY),
        None,
        None,
    )
}

#[test]
fn newest_version_wins_and_deletes_hide_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    create_table(
        &server,
        ADMIN_KEY,
        "kv",
        &json!({"fields": [
            {"name": "id", "type": "int64", "nullable": false},
            {"name": "v", "type": "string", "nullable": false},
            {"name": "ts", "type": "timestamp_ms", "nullable": false}
        ], "primary_key": ["id"], "time_column": "ts", "partition_by": "day"}),
    );
    let up = |id: i64, v: &str| json!({"id": id, "v": v, "ts": "2026-11-25T10:00:00Z"});
    assert_eq!(
        ingest(
            &server,
            ADMIN_KEY,
            "kv",
            &json!([up(2, "b"), up(1, "a"), up(3, "c")])
        )
        .status,
        200
    );
    assert_eq!(ingest(&server, ADMIN_KEY, "kv", &up(1, "a2")).status, 200);
    assert_eq!(
        rows(&server, "kv"),
        vec![
            (json!(1), json!("a2")),
            (json!(2), json!("b")),
            (json!(3), json!("c"))
        ],
        "newest version per key, sorted by key"
    );

    // Versions split between a file and the memtable still resolve.
    flush(&server, ADMIN_KEY, "kv");
    assert_eq!(ingest(&server, ADMIN_KEY, "kv", &up(2, "b2")).status, 200);
    assert_eq!(
        rows(&server, "kv"),
        vec![
            (json!(1), json!("a2")),
            (json!(2), json!("b2")),
            (json!(3), json!("c"))
        ]
    );

    // Deletes: by URL and as an event in a batch.
    let r = delete(&server, "kv", "1");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["accepted"], 1);
    let r = ingest(
        &server,
        ADMIN_KEY,
        "kv",
        &json!([{"id": 3, "_op": "delete"}, up(4, "d")]),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        rows(&server, "kv"),
        vec![(json!(2), json!("b2")), (json!(4), json!("d"))]
    );
    // A limit applies to the resolved rows.
    let limited = query_all(&server, ADMIN_KEY, "kv", &json!({"limit": 1}));
    assert_eq!(limited.len(), 1);
    assert_eq!(limited[0]["id"], 2);

    // A deleted key can come back.
    assert_eq!(
        ingest(&server, ADMIN_KEY, "kv", &up(1, "again")).status,
        200
    );
    flush(&server, ADMIN_KEY, "kv");
    let want = vec![
        (json!(1), json!("again")),
        (json!(2), json!("b2")),
        (json!(4), json!("d")),
    ];
    assert_eq!(rows(&server, "kv"), want);

    // The same after a crash and a restart.
    server.kill9();
    let server = Server::start(dir.path(), &[]);
    assert_eq!(rows(&server, "kv"), want);
    // Tombstones are rows in the files, marked by _op = 1.
    let r = send(
        "DELETE",
        &server.url("/v1/tables/kv/rows/not-a-number"),
        Some(ADMIN_KEY),
        None,
        None,
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "type_mismatch"),
        "{r:?}"
    );
}

#[test]
fn composite_keys_and_bad_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    create_table(
        &server,
        ADMIN_KEY,
        "pairs",
        &json!({"fields": [
            {"name": "user", "type": "string", "nullable": false},
            {"name": "item", "type": "int64", "nullable": false},
            {"name": "qty", "type": "int64"}
        ], "primary_key": ["user", "item"]}),
    );
    let batch = json!([
        {"user": "ada", "item": 1, "qty": 1},
        {"user": "ada", "item": 2, "qty": 2},
        {"user": "bob", "item": 1, "qty": 3},
        {"user": "ada", "item": 1, "qty": 10}
    ]);
    assert_eq!(ingest(&server, ADMIN_KEY, "pairs", &batch).status, 200);
    // [“ada”,2] URL-encoded.
    let r = delete(&server, "pairs", "%5B%22ada%22%2C2%5D");
    assert_eq!(r.status, 200, "{r:?}");
    let got: Vec<(Value, Value, Value)> = query_all(&server, ADMIN_KEY, "pairs", &json!({}))
        .into_iter()
        .map(|r| (r["user"].clone(), r["item"].clone(), r["qty"].clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (json!("ada"), json!(1), json!(10)),
            (json!("bob"), json!(1), json!(3))
        ]
    );
    // A composite key needs all its values.
    let r = delete(&server, "pairs", "ada");
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_key"), "{r:?}");

    // Append-only tables keep every event and have no keys to delete.
    create_table(
        &server,
        ADMIN_KEY,
        "log",
        &json!({"fields": [{"name": "id", "type": "int64"}]}),
    );
    assert_eq!(
        ingest(&server, ADMIN_KEY, "log", &json!([{"id": 1}, {"id": 1}])).status,
        200
    );
    assert_eq!(query_all(&server, ADMIN_KEY, "log", &json!({})).len(), 2);
    let r = delete(&server, "log", "1");
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_key"), "{r:?}");
    let r = ingest(
        &server,
        ADMIN_KEY,
        "log",
        &json!({"id": 1, "_op": "delete"}),
    );
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_op"), "{r:?}");
}

fn get(server: &Server, table: &str, key: &str) -> Resp {
    send(
        "GET",
        &server.url(&format!("/v1/tables/{table}/rows/{key}")),
        Some(ADMIN_KEY),
        None,
        None,
    )
}

#[test]
fn point_lookups_find_the_newest_version_in_memory_or_in_files() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    create_table(
        &server,
        ADMIN_KEY,
        "kv",
        &json!({"fields": [
            {"name": "id", "type": "int64", "nullable": false},
            {"name": "v", "type": "string"}
        ], "primary_key": ["id"]}),
    );
    let put = |id: i64, v: &str| {
        assert_eq!(
            ingest(&server, ADMIN_KEY, "kv", &json!({"id": id, "v": v})).status,
            200
        );
    };
    put(1, "a");
    put(2, "b");
    let r = get(&server, "kv", "1");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json(), json!({"id": 1, "v": "a"}));

    // From a file, then a newer version in memory, then in a newer file.
    flush(&server, ADMIN_KEY, "kv");
    assert_eq!(get(&server, "kv", "2").json()["v"], "b");
    put(2, "b2");
    assert_eq!(get(&server, "kv", "2").json()["v"], "b2");
    flush(&server, ADMIN_KEY, "kv");
    assert_eq!(get(&server, "kv", "2").json()["v"], "b2");
    let r = send(
        "GET",
        &server.url("/v1/tables/kv/rows/2?include_hidden=true"),
        Some(ADMIN_KEY),
        None,
        None,
    );
    assert_eq!(r.json()["_seq"], 3);

    // Deleted keys and absent keys are not found, before and after a flush.
    assert_eq!(delete(&server, "kv", "1").status, 200);
    let r = get(&server, "kv", "1");
    assert_eq!(
        (r.status, r.code().as_str()),
        (404, "row_not_found"),
        "{r:?}"
    );
    flush(&server, ADMIN_KEY, "kv");
    assert_eq!(get(&server, "kv", "1").status, 404);
    assert_eq!(get(&server, "kv", "99").status, 404);
    let r = get(&server, "kv", "x");
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "type_mismatch"),
        "{r:?}"
    );

    // Files record their key ranges, so lookups can skip files that cannot hold a key.
    let log = std::fs::read_dir(dir.path().join("catalog/log"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect::<String>();
    assert!(
        log.contains("\"min_key\"") && log.contains("\"max_key\""),
        "{log}"
    );
}
