//! The Rust client against a real server: tables created and listed, rows sent in batches with
//! gzip and per-batch idempotency keys (a resend stores nothing more), queries, lookups and
//! deletes on an upsert table, the commit event stream, and clear errors.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use alluvium::client::{
    Client, ClientError, CommitKind, EventFilter, FieldType, Filter, Payload, QueryRequest, Schema,
};
use common::*;
use serde_json::{Value, json};

fn client(server: &Server) -> Client {
    Client::new(&server.base, ADMIN_KEY)
        .unwrap()
        .with_timeout(Duration::from_secs(30))
        .with_batch_rows(100)
}

#[test]
fn create_send_query_lookup_delete_and_events() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let c = client(&server);

    let users = Schema::new()
        .required("id", FieldType::Int64)
        .field("name", FieldType::String)
        .primary_key(["id"]);
    let created = c.create_table("users", &users).unwrap();
    assert!(created.created, "{created:?}");
    assert_eq!(created.info.schema_version, 1, "{created:?}");
    // Creating it again with the same definition is answered with the same version.
    let again = c.create_table("users", &users).unwrap();
    assert!(
        !again.created && again.info.schema_version == 1,
        "{again:?}"
    );
    let tables = c.tables().unwrap();
    assert!(tables.iter().any(|t| t.table == "users"), "{tables:?}");
    assert_eq!(c.get_table("users").unwrap().schema.primary_key, ["id"]);

    // 250 rows in 3 batches of at most 100, gzipped.
    let rows: Vec<Value> = (0..250)
        .map(|i| json!({"id": i, "name": format!("user {i}")}))
        .collect();
    let report = c.send("users", &rows).unwrap();
    assert_eq!((report.rows, report.batches), (250, 3), "{report:?}");
    assert!(
        report.wire_bytes < report.bytes,
        "not compressed: {report:?}"
    );
    assert_eq!(report.duplicate_batches, 0);

    // One batch sent twice with its key: stored once, the second answered as a duplicate.
    let more: Vec<Value> = (250..260)
        .map(|i| json!({"id": i, "name": "more"}))
        .collect();
    let first = c
        .send_batch_with_key("users", Payload::Rows(&more), "batch-250")
        .unwrap();
    let again = c
        .send_batch_with_key("users", Payload::Rows(&more), "batch-250")
        .unwrap();
    assert!(!first.ack.duplicate && again.ack.duplicate, "{again:?}");
    assert_eq!(first.ack.first_seq, again.ack.first_seq);

    let all = c.query("users", &QueryRequest::default()).unwrap();
    assert_eq!(all.len(), 260);
    let few = c
        .query(
            "users",
            &QueryRequest {
                filter: Some(Filter::lt("id", 5)),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(few.len(), 5, "{few:?}");

    // Upsert: a new version of id 7 replaces it; a delete hides id 8.
    c.send("users", &[json!({"id": 7, "name": "seven"})])
        .unwrap();
    let seven = c.lookup("users", 7).unwrap().expect("id 7");
    assert_eq!(seven["name"], "seven");
    c.delete_row("users", 8).unwrap();
    assert!(c.lookup("users", 8).unwrap().is_none());
    assert_eq!(
        c.query("users", &QueryRequest::default()).unwrap().len(),
        259
    );

    // A flush commits an event, which the stream replays from the start.
    let flushed = c.flush("users").unwrap();
    assert!(flushed.flushed, "{flushed:?}");
    let mut events = c
        .events(
            &EventFilter::new()
                .table("users")
                .kinds([CommitKind::Flushed])
                .after("0"),
        )
        .unwrap();
    let event = events.next().expect("no event").unwrap();
    assert_eq!(
        (event.kind, event.table.as_str()),
        (CommitKind::Flushed, "users")
    );
    assert!(event.rows_added > 0, "{event:?}");
    assert!(events.last_event_id().is_some());
    drop(events);

    // Errors carry the server's status and code; nothing is stored.
    let err = c
        .send("users", &[json!({"id": "not a number"})])
        .unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (Some(400), Some("type_mismatch")),
        "{err}"
    );
    let err = c.query("nope", &QueryRequest::default()).unwrap_err();
    assert_eq!(err.code(), Some("table_not_found"), "{err}");
    let bad = Client::new(&server.base, "wrong-key").unwrap();
    let err = bad.tables().unwrap_err();
    assert_eq!(err.status(), Some(401), "{err}");
    assert_eq!(
        c.query("users", &QueryRequest::default()).unwrap().len(),
        259
    );
}

#[test]
fn a_server_that_is_down_is_a_transport_error_after_the_retries() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let c = Client::new(&format!("http://127.0.0.1:{port}"), ADMIN_KEY)
        .unwrap()
        .with_max_retries(2)
        .with_backoff(Duration::from_millis(10), Duration::from_millis(20));
    let err = c.send("t", &[json!({"n": 1})]).unwrap_err();
    assert!(err.status().is_none(), "{err}");
    match &err {
        ClientError::Partial {
            acknowledged_rows: 0,
            source,
            ..
        } => assert!(matches!(**source, ClientError::Transport { .. }), "{err:?}"),
        other => panic!("expected a transport error before any batch: {other:?}"),
    }
    // A bad URL is refused before anything is sent.
    assert!(Client::new("ftp://example", "k").is_err());
}
