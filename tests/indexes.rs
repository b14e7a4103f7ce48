//! Secondary indexes: every flushed and compacted file of a table with `indexes` gets a
//! checksummed sidecar referenced from the catalog; queries pinning an indexed column skip the
//! files and row groups the sidecars rule out (shown by `explain`) and answer exactly what a
//! full scan answers, also for upsert tables, for damaged sidecars and for files written before
//! the index was declared.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn explain(server: &Server, table: &str, filter: Value) -> Value {
    let r = send(
        "POST",
        &server.url(&format!("/v1/tables/{table}/query")),
        Some(ADMIN_KEY),
        Some("application/json"),
        Some(
            json!({"filter": filter, "explain": true})
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

fn sidecars(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "index") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn files(server: &Server, table: &str) -> Value {
    send(
        "GET",
        &server.url(&format!("/v1/tables/{table}/files")),
        Some(ADMIN_KEY),
        None,
        None,
    )
    .json()
}

/// 10 flushed files; file `f` holds users `u{f}0`..`u{f}9`, 20 events each.
fn append_table(server: &Server) {
    create_table(
        server,
        ADMIN_KEY,
        "clicks",
        &json!({"fields": [
            {"name": "user", "type": "string", "nullable": false},
            {"name": "n", "type": "int64", "nullable": false}
        ], "indexes": ["user"]}),
    );
    for f in 0..10 {
        let batch: Vec<Value> = (0..200)
            .map(|i| json!({"user": format!("u{f}{}", i % 10), "n": f * 1000 + i}))
            .collect();
        assert_eq!(
            ingest(server, ADMIN_KEY, "clicks", &Value::Array(batch)).status,
            200
        );
        flush(server, ADMIN_KEY, "clicks");
    }
}

#[test]
fn sidecars_prune_append_tables_and_survive_compaction() {
    let dir = tempfile::tempdir().unwrap();
    // Background passes collect replaced files often; only forced compactions merge.
    let env = [
        ("ALLUVIUM_COMPACTION__INTERVAL", "100ms"),
        ("ALLUVIUM_COMPACTION__MIN_FILES", "1000"),
        ("ALLUVIUM_COMPACTION__GRACE", "1s"),
    ];
    let mut server = Server::start(dir.path(), &env);
    append_table(&server);
    let listed = files(&server, "clicks");
    let live = listed["files"].as_array().unwrap();
    assert_eq!(live.len(), 10);
    for f in live {
        assert_eq!(f["index"]["columns"], json!(["user"]), "{f}");
        let path = dir.path().join(f["index"]["path"].as_str().unwrap());
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"ALVINDEX");
        assert_eq!(
            bytes.len() as u64,
            f["index"]["size_bytes"].as_u64().unwrap()
        );
    }
    assert_eq!(sidecars(dir.path()).len(), 10);

    let v = explain(
        &server,
        "clicks",
        json!({"column": "user", "op": "=", "value": "u37"}),
    );
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 20);
    assert!(rows.iter().all(|r| r["user"] == "u37"));
    assert_eq!(v["explain"]["files_pruned_by_index"], 9, "{v}");
    assert_eq!(v["explain"]["files_read"], 1, "{v}");

    let v = explain(
        &server,
        "clicks",
        json!({"and": [
            {"column": "user", "op": "in", "value": ["u12", "u85", "nobody"]},
            {"column": "n", "op": ">=", "value": 0}
        ]}),
    );
    assert_eq!(v["rows"].as_array().unwrap().len(), 40);
    assert_eq!(v["explain"]["files_pruned_by_index"], 8, "{v}");
    // A value no file holds: nothing is opened.
    let v = explain(
        &server,
        "clicks",
        json!({"column": "user", "op": "=", "value": "zz"}),
    );
    assert_eq!(v["rows"], json!([]));
    assert_eq!(v["explain"]["files_read"], 0, "{v}");

    // A damaged sidecar costs pruning, never answers (after a restart: decoded sidecars are
    // cached, and files never change).
    let victim = dir.path().join(live[5]["index"]["path"].as_str().unwrap());
    let mut bytes = std::fs::read(&victim).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    std::fs::write(&victim, &bytes).unwrap();
    server.kill9();
    let server = Server::start(dir.path(), &env);
    let v = explain(
        &server,
        "clicks",
        json!({"column": "user", "op": "=", "value": "u37"}),
    );
    assert_eq!(v["rows"].as_array().unwrap().len(), 20);
    assert_eq!(v["explain"]["files_pruned_by_index"], 8, "{v}");

    // Compaction writes one file with a rebuilt sidecar; the replaced ones go with their files.
    let r = compact(&server, "clicks");
    assert_eq!(r.status, 200, "{r:?}");
    let listed = files(&server, "clicks");
    let live = listed["files"].as_array().unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0]["index"]["columns"], json!(["user"]));
    let v = explain(
        &server,
        "clicks",
        json!({"column": "user", "op": "=", "value": "u37"}),
    );
    assert_eq!(v["rows"].as_array().unwrap().len(), 20);
    let v = explain(
        &server,
        "clicks",
        json!({"column": "user", "op": "=", "value": "zz"}),
    );
    assert_eq!(v["explain"]["files_pruned_by_index"], 1, "{v}");
    let cleaned = wait_for(Duration::from_secs(30), || {
        (sidecars(dir.path()).len() == 1 && parquet_files(dir.path()).len() == 1).then_some(())
    });
    assert!(
        cleaned.is_some(),
        "replaced files and sidecars left: {:?}",
        sidecars(dir.path())
    );
}

#[test]
fn upsert_tables_resolve_versions_found_through_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[("ALLUVIUM_COMPACTION__INTERVAL", "0s")]);
    create_table(
        &server,
        ADMIN_KEY,
        "orders",
        &json!({"fields": [
            {"name": "id", "type": "int64", "nullable": false},
            {"name": "status", "type": "string", "nullable": false}
        ], "primary_key": ["id"], "indexes": ["status"]}),
    );
    // Model: id -> status (None = deleted).
    let mut model: std::collections::BTreeMap<i64, Option<String>> = Default::default();
    let rounds = [
        ("new", 0..300),
        ("paid", 0..100),
        ("shipped", 50..80),
        ("paid", 250..260),
    ];
    for (status, ids) in rounds {
        let batch: Vec<Value> = ids
            .clone()
            .map(|id| json!({"id": id, "status": status}))
            .collect();
        assert_eq!(
            ingest(&server, ADMIN_KEY, "orders", &Value::Array(batch)).status,
            200
        );
        for id in ids {
            model.insert(id, Some(status.to_string()));
        }
        flush(&server, ADMIN_KEY, "orders");
    }
    let r = send(
        "DELETE",
        &server.url("/v1/tables/orders/rows/255"),
        Some(ADMIN_KEY),
        None,
        None,
    );
    assert_eq!(r.status, 200, "{r:?}");
    model.insert(255, None);
    // Unflushed: id 5 becomes paid -> new again only in the memtable.
    assert_eq!(
        ingest(
            &server,
            ADMIN_KEY,
            "orders",
            &json!({"id": 5, "status": "new"})
        )
        .status,
        200
    );
    model.insert(5, Some("new".into()));

    let check = |server: &Server, status: &str| {
        let v = explain(
            server,
            "orders",
            json!({"column": "status", "op": "=", "value": status}),
        );
        let got: Vec<i64> = v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect();
        let want: Vec<i64> = model
            .iter()
            .filter(|(_, s)| s.as_deref() == Some(status))
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(got, want, "status {status}: {}", v["explain"]);
        v["explain"].clone()
    };
    let e = check(&server, "shipped");
    assert_eq!(e["index_candidate_keys"], 30, "{e}");
    assert!(
        e["files_pruned_by_index"].as_u64().unwrap() >= 2,
        "the files without shipped orders are not read for candidates: {e}"
    );
    check(&server, "paid");
    check(&server, "new");
    check(&server, "cancelled");

    // The same after a restart (WAL replay) and after compaction.
    server.kill9();
    let server = Server::start(dir.path(), &[("ALLUVIUM_COMPACTION__INTERVAL", "0s")]);
    check(&server, "paid");
    flush(&server, ADMIN_KEY, "orders");
    let r = compact(&server, "orders");
    assert_eq!(r.status, 200, "{r:?}");
    for s in ["new", "paid", "shipped", "cancelled"] {
        check(&server, s);
    }
}

#[test]
fn an_index_declared_later_covers_new_and_compacted_files() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("ALLUVIUM_COMPACTION__INTERVAL", "0s")]);
    let v1 = json!({"fields": [
        {"name": "user", "type": "string", "nullable": false},
        {"name": "n", "type": "int64", "nullable": false}
    ]});
    create_table(&server, ADMIN_KEY, "late", &v1);
    for f in 0..2 {
        let batch: Vec<Value> = (0..50)
            .map(|i| json!({"user": format!("a{f}"), "n": i}))
            .collect();
        ingest(&server, ADMIN_KEY, "late", &Value::Array(batch));
        flush(&server, ADMIN_KEY, "late");
    }
    assert!(sidecars(dir.path()).is_empty());
    let mut v2 = v1.clone();
    v2["indexes"] = json!(["user"]);
    create_table(&server, ADMIN_KEY, "late", &v2);
    ingest(&server, ADMIN_KEY, "late", &json!({"user": "b", "n": 1}));
    flush(&server, ADMIN_KEY, "late");
    assert_eq!(sidecars(dir.path()).len(), 1, "only the new file has one");
    let v = explain(
        &server,
        "late",
        json!({"column": "user", "op": "=", "value": "a1"}),
    );
    assert_eq!(v["rows"].as_array().unwrap().len(), 50);
    assert_eq!(v["explain"]["files_pruned_by_index"], 1, "{v}");
    let r = compact(&server, "late");
    assert_eq!(r.status, 200, "{r:?}");
    let listed = files(&server, "late");
    assert_eq!(listed["files"][0]["index"]["columns"], json!(["user"]));
    let v = explain(
        &server,
        "late",
        json!({"column": "user", "op": "=", "value": "zz"}),
    );
    assert_eq!(v["explain"]["files_pruned_by_index"], 1, "{v}");
    // Floats cannot be indexed.
    let r = send(
        "PUT",
        &server.url("/v1/tables/bad"),
        Some(ADMIN_KEY),
        Some("application/json"),
        Some(
            json!({"fields": [{"name": "x", "type": "float64"}], "indexes": ["x"]})
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_schema"));
}
