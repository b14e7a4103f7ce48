//! Commit events over server-sent events (`GET /v1/events`), for deployments without NATS:
//! live events, resuming with `Last-Event-ID` from the catalog log, filters, tenants.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// An open SSE connection, read line by line.
struct Sse {
    reader: BufReader<TcpStream>,
}

impl Sse {
    /// Opens `path` with extra headers; returns the status and, for 200, the stream after the
    /// `: subscribed` comment.
    fn open(server: &Server, key: &str, path: &str, headers: &[(&str, &str)]) -> Result<Sse, u16> {
        let addr = server.base.trim_start_matches("http://");
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nAccept: text/event-stream\r\n"
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).unwrap();
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        let code: u16 = status.split_whitespace().nth(1).unwrap().parse().unwrap();
        if code != 200 {
            return Err(code);
        }
        let mut sse = Sse { reader };
        // Headers, then the chunked body's first line (a chunk size) and the hello comment.
        loop {
            let line = sse.line();
            if line == ": subscribed" {
                return Ok(sse);
            }
        }
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        let n = self
            .reader
            .read_line(&mut l)
            .expect("no data from the event stream in 20 s");
        assert!(n > 0, "event stream closed");
        l.trim_end_matches(['\r', '\n']).to_string()
    }

    /// The next event: (id, kind, data).
    fn next(&mut self) -> (String, String, Value) {
        let (mut id, mut kind) = (String::new(), String::new());
        loop {
            let line = self.line();
            if let Some(v) = line.strip_prefix("id: ") {
                id = v.to_string();
            } else if let Some(v) = line.strip_prefix("event: ") {
                kind = v.to_string();
            } else if let Some(v) = line.strip_prefix("data: ") {
                return (id, kind, serde_json::from_str(v).unwrap());
            }
        }
    }
}

fn flush_round(server: &Server, n: i64) {
    assert_eq!(
        ingest(server, ADMIN_KEY, "t", &json!([{"n": n}, {"n": n + 100}])).status,
        200
    );
    flush(server, ADMIN_KEY, "t");
}

#[test]
fn live_events_resume_from_any_point_and_stay_in_their_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    create_n_table(&server, "t");
    create_n_table(&server, "other");

    let mut sse = Sse::open(&server, ADMIN_KEY, "/v1/events?table=t", &[]).unwrap();
    flush_round(&server, 1);
    // Another table's commits are filtered out.
    assert_eq!(
        ingest(&server, ADMIN_KEY, "other", &json!({"n": 5})).status,
        200
    );
    flush(&server, ADMIN_KEY, "other");
    flush_round(&server, 2);
    let r = compact(&server, "t");
    assert_eq!(r.status, 200, "{r:?}");
    let first = sse.next();
    let second = sse.next();
    let third = sse.next();
    assert_eq!(
        [first.1.as_str(), second.1.as_str(), third.1.as_str()],
        ["flushed", "flushed", "compacted"]
    );
    for (id, kind, data) in [&first, &second, &third] {
        assert_eq!(&data["id"], id.as_str());
        assert_eq!(&data["kind"], kind.as_str());
        assert_eq!(data["table"], "t");
        assert_eq!(data["tenant"], "default");
    }
    assert_eq!(first.2["rows_added"], 2);
    assert_eq!(third.2["files_removed"].as_array().unwrap().len(), 2);
    assert_eq!(third.2["rows_removed"], 4);
    drop(sse);

    // Disconnected: one more flush happens meanwhile. Resuming after the first event replays
    // the rest from the catalog log, then continues live.
    flush_round(&server, 3);
    let mut sse = Sse::open(
        &server,
        ADMIN_KEY,
        "/v1/events?table=t",
        &[("Last-Event-ID", &first.0)],
    )
    .unwrap();
    assert_eq!(sse.next().0, second.0);
    assert_eq!(sse.next().0, third.0);
    let (_, kind, data) = sse.next();
    assert_eq!(
        (kind.as_str(), data["rows_added"].as_u64()),
        ("flushed", Some(2))
    );
    flush_round(&server, 4);
    let (_, kind, live) = sse.next();
    assert_eq!(kind, "flushed");
    assert!(live["catalog_version"].as_u64() > data["catalog_version"].as_u64());

    // From the start, only schema events: both tables' creation.
    let mut sse = Sse::open(&server, ADMIN_KEY, "/v1/events?after=0&kinds=schema", &[]).unwrap();
    let (_, kind, a) = sse.next();
    let (_, _, b) = sse.next();
    assert_eq!(kind, "schema");
    assert_eq!(
        (a["table"].as_str(), b["table"].as_str()),
        (Some("t"), Some("other"))
    );
    assert_eq!(a["schema_version"], 1);
    assert!(a["schema"]["fields"].is_array(), "{a}");

    // Another tenant sees none of it.
    let acme = create_key(&server, "acme", json!(["query", "ingest", "admin"]));
    create_table(
        &server,
        &acme,
        "t",
        &json!({"fields": [{"name": "n", "type": "int64"}]}),
    );
    let mut sse = Sse::open(&server, &acme, "/v1/events?after=0", &[]).unwrap();
    let (_, kind, own) = sse.next();
    assert_eq!(
        (kind.as_str(), own["tenant"].as_str()),
        ("schema", Some("acme"))
    );

    // Bad requests are refused before streaming.
    assert_eq!(
        Sse::open(&server, ADMIN_KEY, "/v1/events?kinds=sideways", &[]).err(),
        Some(400)
    );
    assert_eq!(
        Sse::open(&server, ADMIN_KEY, "/v1/events?table=Bad%20Name", &[]).err(),
        Some(400)
    );
    assert_eq!(
        Sse::open(
            &server,
            ADMIN_KEY,
            "/v1/events",
            &[("Last-Event-ID", "x:y")]
        )
        .err(),
        Some(400)
    );
    assert_eq!(
        Sse::open(&server, "wrong", "/v1/events", &[]).err(),
        Some(401)
    );
}

#[test]
fn a_revoked_key_loses_its_open_stream() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let made = send(
        "POST",
        &server.url("/v1/keys"),
        Some(ADMIN_KEY),
        Some("application/json"),
        Some(br#"{"scopes": ["query"], "label": "dashboard"}"#),
    )
    .json();
    let key = made["key"].as_str().unwrap();
    let mut sse = Sse::open(&server, key, "/v1/events", &[]).unwrap();
    let r = send(
        "DELETE",
        &server.url(&format!("/v1/keys/{}", made["id"].as_str().unwrap())),
        Some(ADMIN_KEY),
        None,
        None,
    );
    assert_eq!(r.status, 200, "{r:?}");
    let revoked = std::time::Instant::now();
    // The credential is checked again at least every 15 s (a keep-alive at most 15 s later,
    // then the check): the stream ends with the refusal.
    let (_, kind, problem) = sse.next();
    assert_eq!(kind, "error");
    assert_eq!(problem["code"], "invalid_api_key", "{problem}");
    assert!(
        revoked.elapsed() <= Duration::from_secs(31),
        "{:?}",
        revoked.elapsed()
    );
}
