//! A public ingest endpoint under attack: each attack gets a clear 4xx (or, for a client too
//! slow to send its headers, a 408 and a closed connection), the server stays up, and nothing is
//! written: the table's rows, the list of tables and the files of the data directory are the
//! same before and after. The README's attack table lists these cases.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// Every file and directory under `dir`, relative to it, except the write-ahead log's segment
/// files (which exist from the start and grow only with accepted batches, checked by the row
/// count) and the server's own log output.
fn tree(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.insert(p.strip_prefix(dir).unwrap().display().to_string());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

struct Target {
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    server: Server,
}

fn start(env: &[(&str, &str)]) -> Target {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), env);
    create_table(
        &server,
        ADMIN_KEY,
        "t",
        &json!({"fields": [
            {"name": "id", "type": "int64", "nullable": false},
            {"name": "x", "type": "float64"},
            {"name": "name", "type": "string"}
        ]}),
    );
    assert_eq!(
        ingest(&server, ADMIN_KEY, "t", &json!({"id": 1, "name": "seed"})).status,
        200
    );
    let data = dir.path().to_path_buf();
    Target {
        _dir: dir,
        data,
        server,
    }
}

/// What must not change: the rows of `t`, the tables, the files.
fn state(t: &Target) -> (Vec<Value>, Value, BTreeSet<String>) {
    let rows = query_all(&t.server, ADMIN_KEY, "t", &json!({}));
    let tables = send(
        "GET",
        &t.server.url("/v1/tables"),
        Some(ADMIN_KEY),
        None,
        None,
    )
    .json();
    (rows, tables, tree(&t.data))
}

fn post(t: &Target, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    try_send(
        "POST",
        &t.server.url(path),
        Some(ADMIN_KEY),
        Some("application/json"),
        Some(body),
        headers,
    )
    .unwrap()
}

fn assert_alive(t: &Target) {
    assert_eq!(get(&t.server, "/healthz").status, 200, "the server is down");
}

/// Opens a raw connection to the server.
fn connect(t: &Target) -> TcpStream {
    let url = t.server.url("");
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Reads what the server sends until it closes the connection (or 20 s pass).
fn read_answer(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if String::from_utf8_lossy(&buf).contains("\r\n\r\n{") && buf.ends_with(b"}") {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[test]
fn slow_clients_are_cut_off() {
    let t = start(&[
        ("ALLUVIUM_SERVER__HEADER_TIMEOUT", "1s"),
        ("ALLUVIUM_SERVER__BODY_TIMEOUT", "1s"),
    ]);
    let before = state(&t);

    // Slowloris: headers one byte at a time, never finished.
    let mut s = connect(&t);
    let started = Instant::now();
    s.write_all(b"POST /v1/tables/t/events HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut cut_off = false;
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(250));
        if s.write_all(b"X").is_err() {
            cut_off = true;
            break;
        }
        let mut probe = [0u8; 64];
        s.set_nonblocking(true).unwrap();
        let got = s.read(&mut probe);
        s.set_nonblocking(false).unwrap();
        match got {
            Ok(0) => {
                cut_off = true;
                break;
            }
            Ok(n) => {
                let text = String::from_utf8_lossy(&probe[..n]).to_string();
                assert!(text.starts_with("HTTP/1.1 408"), "{text}");
                cut_off = true;
                break;
            }
            Err(_) => {}
        }
    }
    assert!(cut_off, "a 10 s trickle of header bytes was not cut off");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );

    // A body announced and trickled: 408 `body_timeout`.
    let mut s = connect(&t);
    let key = format!("Authorization: Bearer {ADMIN_KEY}\r\n");
    s.write_all(
        format!("POST /v1/tables/t/events HTTP/1.1\r\nHost: x\r\n{key}Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"id\":")
            .as_bytes(),
    )
    .unwrap();
    let writer = {
        let mut s = s.try_clone().unwrap();
        std::thread::spawn(move || {
            for _ in 0..20 {
                std::thread::sleep(Duration::from_millis(200));
                if s.write_all(b" ").is_err() {
                    break;
                }
            }
        })
    };
    let answer = read_answer(&mut s);
    writer.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"body_timeout\""), "{answer}");

    assert_alive(&t);
    assert_eq!(state(&t), before);
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn hostile_bodies_are_refused_and_write_nothing() {
    let t = start(&[("ALLUVIUM_SERVER__BODY_LIMIT", "64MiB")]);
    let before = state(&t);
    let events = "/v1/tables/t/events";
    let refused = |r: &Resp, status: u16, code: &str, what: &str| {
        assert_eq!(
            (r.status, r.code().as_str()),
            (status, code),
            "{what}: {r:?}"
        );
    };

    // Decompression bombs: 32 MiB of one JSON string, about 32 KiB compressed. Under the size
    // limit, but a thousandfold expansion.
    let mut inflated = b"{\"id\":2,\"name\":\"".to_vec();
    inflated.resize(32 << 20, b'a');
    inflated.extend_from_slice(b"\"}");
    let gz = gzip(&inflated);
    let r = post(&t, events, &[("Content-Encoding", "gzip")], &gz);
    refused(&r, 413, "compression_ratio_exceeded", "gzip bomb");
    let zs = zstd::encode_all(&inflated[..], 19).unwrap();
    let r = post(&t, events, &[("Content-Encoding", "zstd")], &zs);
    refused(&r, 413, "compression_ratio_exceeded", "zstd bomb");
    // Concatenated gzip members (each a bomb) count as one body.
    let r = post(
        &t,
        events,
        &[("Content-Encoding", "gzip")],
        &[gz.clone(), gz].concat(),
    );
    refused(
        &r,
        413,
        "compression_ratio_exceeded",
        "two-member gzip bomb",
    );

    // Deep nesting, past the 32 levels allowed and past serde_json's own recursion limit.
    for depth in [33, 200, 100_000] {
        let body = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
        let r = post(&t, events, &[], body.as_bytes());
        assert_eq!(r.status, 400, "depth {depth}: {r:?}");
        assert!(
            ["too_deep", "malformed_json"].contains(&r.code().as_str()),
            "depth {depth}: {r:?}"
        );
        let body = format!(
            "{{\"id\":3,\"name\":{}{}}}",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let r = post(&t, events, &[], body.as_bytes());
        assert_eq!(r.status, 400, "array depth {depth}: {r:?}");
    }

    // Huge numbers.
    let digits = "9".repeat(100_000);
    for (body, codes) in [
        (
            r#"{"id": 1e400}"#.to_string(),
            &["value_out_of_range", "malformed_json", "type_mismatch"][..],
        ),
        (
            r#"{"id": 99999999999999999999999}"#.to_string(),
            &["value_out_of_range"][..],
        ),
        (
            r#"{"id": -9223372036854775809}"#.to_string(),
            &["value_out_of_range"][..],
        ),
        (
            r#"{"id": 4, "x": 1e400}"#.to_string(),
            &["value_out_of_range", "malformed_json"][..],
        ),
        (
            format!(r#"{{"id": {digits}}}"#),
            &["value_out_of_range", "malformed_json"][..],
        ),
        (
            format!(r#"{{"id": 5, "x": {digits}.5}}"#),
            &["value_out_of_range", "malformed_json"][..],
        ),
    ] {
        let r = post(&t, events, &[], body.as_bytes());
        assert_eq!(r.status, 400, "{}: {r:?}", &body[..body.len().min(40)]);
        assert!(
            codes.contains(&r.code().as_str()),
            "{}: {r:?}",
            &body[..body.len().min(40)]
        );
    }

    // Invalid UTF-8 and invalid escapes.
    for body in [
        &b"{\"id\":6,\"name\":\"\xff\"}"[..],
        b"{\"id\":6,\"name\":\"\xc0\xaf\"}",
        b"{\"id\":6,\"name\":\"\xed\xa0\x80\"}",
        br#"{"id":6,"name":"\ud800"}"#,
        b"\xef\xbb\xbf\xfe{\"id\":6}",
    ] {
        let r = post(&t, events, &[], body);
        refused(&r, 400, "malformed_json", &format!("{body:?}"));
    }
    let ndjson = try_send(
        "POST",
        &t.server.url(events),
        Some(ADMIN_KEY),
        Some("application/x-ndjson"),
        Some(b"{\"id\":7}\n{\"id\":8,\"name\":\"\x80\"}\n"),
        &[],
    )
    .unwrap();
    refused(&ndjson, 400, "malformed_json", "NDJSON with a bad line");

    // A header flood.
    let many: Vec<(String, String)> = (0..200)
        .map(|i| (format!("X-Flood-{i}"), "y".repeat(100)))
        .collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = post(&t, events, &refs, br#"{"id":9}"#);
    assert!((400..500).contains(&r.status), "header flood: {r:?}");

    assert_alive(&t);
    assert_eq!(state(&t), before);
}

#[test]
fn one_tenant_cannot_create_ten_thousand_tables() {
    let t = start(&[
        ("ALLUVIUM_INGEST__MAX_TABLES_PER_TENANT", "40"),
        ("ALLUVIUM_INGEST__INFER_NEW_TABLES", "true"),
    ]);
    let key = create_key(&t.server, "acme", json!(["admin"]));
    let schema = serde_json::to_vec(&json!({"fields": [{"name": "id", "type": "int64"}]})).unwrap();
    let attempts = 10_000;
    let threads = 4;
    let outcomes: Vec<(u16, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|w| {
                let (t, key, schema) = (&t, &key, &schema);
                scope.spawn(move || {
                    (0..attempts / threads)
                        .map(|i| {
                            let r = try_send(
                                "PUT",
                                &t.server.url(&format!("/v1/tables/flood_{w}_{i}")),
                                Some(key),
                                Some("application/json"),
                                Some(schema),
                                &[],
                            )
                            .unwrap();
                            (r.status, r.code())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let created = outcomes.iter().filter(|(s, _)| *s == 201).count();
    let limited = outcomes
        .iter()
        .filter(|(s, c)| *s == 409 && c == "table_limit_reached")
        .count();
    assert_eq!(
        (created, limited),
        (40, attempts - 40),
        "{:?}",
        &outcomes[..5]
    );
    // Inference creates no table past the limit either.
    let r = try_send(
        "POST",
        &t.server.url("/v1/tables/inferred/events"),
        Some(&key),
        Some("application/json"),
        Some(br#"{"id":1}"#),
        &[],
    )
    .unwrap();
    assert_eq!(
        (r.status, r.code().as_str()),
        (409, "table_limit_reached"),
        "{r:?}"
    );
    let tables = send("GET", &t.server.url("/v1/tables"), Some(&key), None, None).json();
    assert_eq!(
        tables["tables"]
            .as_array()
            .map(Vec::len)
            .unwrap_or_else(|| tables.as_array().unwrap().len()),
        40,
        "{tables}"
    );
    // Other tenants are not affected.
    create_table(
        &t.server,
        ADMIN_KEY,
        "still_fine",
        &json!({"fields": [{"name": "id", "type": "int64"}]}),
    );
    assert_alive(&t);
}

#[test]
fn path_tricks_in_every_name_are_refused() {
    let t = start(&[]);
    let before = state(&t);
    let tricks = [
        "..",
        ".",
        "%2e%2e",
        "%2E%2E%2F%2E%2E%2Fetc",
        "..%2f..%2fetc%2fpasswd",
        "a%2Fb",
        "a%5Cb",
        "a%00b",
        "%c0%ae%c0%ae",
        "%C3%A4",
        "a%20b",
        "%24(id)",
        ".hidden",
        "a.b",
        "CON",
        "a+b",
    ];
    let long = "x".repeat(300);
    let schema = serde_json::to_vec(&json!({"fields": [{"name": "id", "type": "int64"}]})).unwrap();
    let mut answered = 0;
    for name in tricks.iter().copied().chain([long.as_str()]) {
        for (method, path, body) in [
            ("PUT", format!("/v1/tables/{name}"), Some(schema.as_slice())),
            ("GET", format!("/v1/tables/{name}"), None),
            (
                "POST",
                format!("/v1/tables/{name}/events"),
                Some(&br#"{"id":1}"#[..]),
            ),
            ("POST", format!("/v1/tables/{name}/query"), Some(&b"{}"[..])),
            ("POST", format!("/v1/tables/{name}/flush"), None),
            ("POST", format!("/v1/tables/{name}/compact"), None),
            ("GET", format!("/v1/tables/{name}/files"), None),
            ("GET", format!("/v1/tables/t/rows/{name}"), None),
            ("DELETE", format!("/v1/tables/{name}/rows/1"), None),
            ("POST", format!("/v1/hooks/{name}"), Some(&b"{}"[..])),
        ] {
            let r = try_send(
                method,
                &t.server.url(&path),
                Some(ADMIN_KEY),
                Some("application/json"),
                body,
                &[],
            )
            .unwrap();
            answered += 1;
            assert!((400..500).contains(&r.status), "{method} {path}: {r:?}");
        }
        // Tenant names in a key request.
        let r = send(
            "POST",
            &t.server.url("/v1/keys"),
            Some(ADMIN_KEY),
            Some("application/json"),
            Some(&serde_json::to_vec(&json!({"tenant": name.replace("%2F", "/").replace("%2f", "/"), "scopes": ["ingest"]})).unwrap()),
        );
        assert_eq!(r.status, 400, "tenant {name:?}: {r:?}");
    }
    assert!(answered > 100);
    // Raw paths that a URL library would normalize: `..` segments sent as they are.
    for raw in [
        "/v1/tables/../../../etc/passwd",
        "/v1/tables/t/../../keys",
        "/v1/tables/t/events/../../../../etc",
        "//v1/tables/t",
    ] {
        let mut s = connect(&t);
        s.write_all(
            format!("GET {raw} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let answer = read_answer(&mut s);
        let status: u16 = answer
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        assert!((400..500).contains(&status), "{raw}: {answer}");
    }
    assert_alive(&t);
    assert_eq!(state(&t), before);
}
