//! End to end on the real binary: create a table, ingest in every body format, read back from
//! memtables and from Parquet, restart, keys and JWTs.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{Value, json};

fn events_schema() -> Value {
    json!({
        "fields": [
            {"name": "id", "type": "int64", "nullable": false},
            {"name": "ts", "type": "timestamp_ms", "nullable": false},
            {"name": "msg", "type": "string"},
            {"name": "score", "type": "float64"},
            {"name": "tags", "type": "list<string>"}
        ],
        "time_column": "ts",
        "partition_by": "day"
    })
}

#[test]
fn create_ingest_read_back_flush_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);

    create_table(&server, ADMIN_KEY, "events", &events_schema());
    // Same definition again: idempotent.
    create_table(&server, ADMIN_KEY, "events", &events_schema());

    // One object.
    let r = ingest(
        &server,
        ADMIN_KEY,
        "events",
        &json!({"id": 1, "ts": "2026-11-25T10:00:00.000Z", "msg": "hello", "score": 1.5, "tags": ["a"]}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let ack = r.json();
    assert_eq!(ack["accepted"], 1);
    assert_eq!(ack["first_seq"], 1);
    assert_eq!(ack["last_seq"], 1);
    assert_eq!(ack["durability"], "wal");

    // An array.
    let batch: Vec<Value> = (2..=10)
        .map(|i| json!({"id": i, "ts": 1_795_000_000_000i64 + i, "msg": format!("m{i}")}))
        .collect();
    let r = ingest(&server, ADMIN_KEY, "events", &Value::Array(batch));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["first_seq"], 2);
    assert_eq!(r.json()["last_seq"], 10);

    // NDJSON with a blank line.
    let nd = "{\"id\":11,\"ts\":\"2026-11-26T00:00:00Z\"}\n\n{\"id\":12,\"ts\":\"2026-11-26T00:00:01Z\",\"msg\":null}\n";
    let r = send(
        "POST",
        &server.url("/v1/tables/events/events"),
        Some(ADMIN_KEY),
        Some("application/x-ndjson"),
        Some(nd.as_bytes()),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["accepted"], 2);

    // A producer that prefers latency asks for less than the WAL's fsync, and is told so.
    let r = send(
        "POST",
        &server.url("/v1/tables/events/events?durability=received"),
        Some(ADMIN_KEY),
        Some("application/json"),
        Some(br#"{"id":100,"ts":0}"#),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["durability"], "received");
    assert_eq!(r.json()["first_seq"], 13);
    let r = send(
        "POST",
        &server.url("/v1/tables/events/events?durability=someday"),
        Some(ADMIN_KEY),
        Some("application/json"),
        Some(br#"{"id":101,"ts":0}"#),
    );
    assert_eq!((r.status, r.code().as_str()), (400, "bad_request"), "{r:?}");
    // The received event becomes visible once its group is on disk.
    let seen = wait_for(std::time::Duration::from_secs(10), || {
        let rows = query_all(&server, ADMIN_KEY, "events", &json!({}));
        (rows.len() == 13).then_some(rows)
    });
    let rows = seen.expect("the received event never became visible");
    assert!(rows.iter().any(|r| r["id"] == 100));
    let first = rows.iter().find(|r| r["id"] == 1).unwrap();
    assert_eq!(first["msg"], "hello");
    assert_eq!(first["ts"], "2026-11-25T10:00:00.000Z");
    assert_eq!(first["tags"], json!(["a"]));
    assert!(
        first.get("_seq").is_none(),
        "hidden columns only on request"
    );

    // Projection, limit and hidden columns.
    let rows = query_all(
        &server,
        ADMIN_KEY,
        "events",
        &json!({"columns": ["id", "_seq"], "limit": 3}),
    );
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].as_object().unwrap().len(), 2);

    // NDJSON output.
    let r = send(
        "POST",
        &server.url("/v1/tables/events/query"),
        Some(ADMIN_KEY),
        Some("application/json"),
        Some(b"{}"),
    );
    assert_eq!(r.status, 200);
    let r = try_send(
        "POST",
        &server.url("/v1/tables/events/query"),
        Some(ADMIN_KEY),
        None,
        Some(b""),
        &[("Accept", "application/x-ndjson")],
    )
    .unwrap();
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    assert_eq!(r.body.lines().count(), 13);

    // Flush: files appear, one per day partition, and reads are unchanged.
    let f = flush(&server, ADMIN_KEY, "events");
    assert_eq!(f["flushed"], true, "{f}");
    let files = parquet_files(&dir.path().join("tables/default/events/data"));
    assert!(files.len() >= 2, "expected day partitions, got {files:?}");
    assert!(
        files
            .iter()
            .any(|f| f.to_string_lossy().contains("/2026-11-25/"))
    );
    let after = query_all(
        &server,
        ADMIN_KEY,
        "events",
        &json!({"include_hidden": true}),
    );
    assert_eq!(after.len(), 13);
    let mut seqs: Vec<u64> = after.iter().map(|r| r["_seq"].as_u64().unwrap()).collect();
    seqs.sort();
    assert_eq!(seqs, (1..=13).collect::<Vec<_>>());

    // More events after the flush live in the memtable; a restart replays them.
    let r = ingest(
        &server,
        ADMIN_KEY,
        "events",
        &json!({"id": 13, "ts": 1_795_000_000_000i64}),
    );
    assert_eq!(r.json()["first_seq"], 14);
    server.kill9();
    let server = Server::start(dir.path(), &[]);
    let rows = query_all(&server, ADMIN_KEY, "events", &json!({"columns": ["id"]}));
    let mut ids: Vec<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, (1..=13).chain([100]).collect::<Vec<_>>());
    // Sequences continue after a restart.
    let r = ingest(
        &server,
        ADMIN_KEY,
        "events",
        &json!({"id": 14, "ts": 1_795_000_000_000i64}),
    );
    assert_eq!(r.json()["first_seq"], 15);

    // Table metadata.
    let r = send(
        "GET",
        &server.url("/v1/tables/events"),
        Some(ADMIN_KEY),
        None,
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["schema_version"], 1);
    assert_eq!(r.json()["fields"].as_array().unwrap().len(), 5);
    let r = send(
        "GET",
        &server.url("/v1/tables"),
        Some(ADMIN_KEY),
        None,
        None,
    );
    assert_eq!(r.json()["tables"].as_array().unwrap().len(), 1);
}

#[test]
fn keys_scopes_tenants_and_jwt() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "an-hs256-secret-of-at-least-32-bytes!!";
    let env = [("ALLUVIUM_AUTH__JWT__HS256_SECRET", secret)];
    let server = Server::start(dir.path(), &env);

    // The admin of the operator tenant creates keys for tenant acme.
    let mk = |tenant: &str, scopes: Value| create_key(&server, tenant, scopes);
    let acme_admin = mk("acme", json!(["admin"]));
    let acme_ingest = mk("acme", json!(["ingest"]));
    let acme_query = mk("acme", json!(["query"]));

    create_table(
        &server,
        &acme_admin,
        "clicks",
        &json!({"fields": [{"name": "n", "type": "int64"}]}),
    );
    assert_eq!(
        ingest(&server, &acme_ingest, "clicks", &json!({"n": 1})).status,
        200
    );
    // Ingest-only key cannot read; query-only key cannot write.
    let r = send(
        "POST",
        &server.url("/v1/tables/clicks/query"),
        Some(&acme_ingest),
        None,
        None,
    );
    assert_eq!((r.status, r.code().as_str()), (403, "forbidden"));
    let r = ingest(&server, &acme_query, "clicks", &json!({"n": 2}));
    assert_eq!((r.status, r.code().as_str()), (403, "forbidden"));
    assert_eq!(
        query_all(&server, &acme_query, "clicks", &json!({})).len(),
        1
    );
    // Tenants are isolated: the default tenant has no table "clicks".
    let r = ingest(&server, ADMIN_KEY, "clicks", &json!({"n": 3}));
    assert_eq!((r.status, r.code().as_str()), (404, "table_not_found"));
    // A tenant admin cannot create keys for another tenant.
    let r = send(
        "POST",
        &server.url("/v1/keys"),
        Some(&acme_admin),
        Some("application/json"),
        Some(br#"{"tenant":"other","scopes":["ingest"]}"#),
    );
    assert_eq!(r.status, 403, "{r:?}");

    // A JWT minted by the CLI authenticates as acme.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_alluvium"))
        .args([
            "token",
            "mint",
            "--tenant",
            "acme",
            "--scopes",
            "ingest,query",
            "--ttl",
            "10m",
        ])
        .env("ALLUVIUM_AUTH__JWT__HS256_SECRET", secret)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(
        ingest(&server, &token, "clicks", &json!({"n": 4})).status,
        200
    );
    assert_eq!(query_all(&server, &token, "clicks", &json!({})).len(), 2);
    // X-API-Key works too.
    let r = try_send(
        "POST",
        &server.url("/v1/tables/clicks/query"),
        None,
        None,
        None,
        &[("X-API-Key", &acme_query)],
    )
    .unwrap();
    assert_eq!(r.status, 200);

    // Health and metrics need no credential.
    assert_eq!(
        send("GET", &server.url("/healthz"), None, None, None).status,
        200
    );
    let m = send("GET", &server.url("/metrics"), None, None, None);
    assert!(
        m.body.contains("alluvium_ingest_events_total 2"),
        "{}",
        m.body
    );
    let forbidden_queries =
        "alluvium_http_requests_total{route=\"/v1/tables/{table}/query\",status=\"403\"} 1";
    assert!(m.body.contains(forbidden_queries), "{}", m.body);
}

#[test]
fn generated_bootstrap_key_is_written_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("ALLUVIUM_BOOTSTRAP_KEY", "")]);
    let path = dir.path().join("bootstrap.key");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let key = std::fs::read_to_string(&path).unwrap().trim().to_string();
    let r = send("GET", &server.url("/v1/tables"), Some(&key), None, None);
    assert_eq!(r.status, 200, "{r:?}");
}
