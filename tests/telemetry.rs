//! Spans reach an OTLP/HTTP collector when `[telemetry] otlp_endpoint` is set.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use serde_json::json;

/// One request received by the collector: path, content type, body.
type Received = (String, String, Vec<u8>);

/// A minimal OTLP/HTTP collector: answers every POST with 200 and reports what it got.
fn collector() -> (String, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut writer = conn;
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = request_line
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or("")
                        .to_string();
                    let (mut len, mut ctype) = (0usize, String::new());
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let line = line.trim_end();
                        if line.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':') {
                            match k.trim().to_ascii_lowercase().as_str() {
                                "content-length" => len = v.trim().parse().unwrap_or(0),
                                "content-type" => ctype = v.trim().to_string(),
                                _ => {}
                            }
                        }
                    }
                    let mut body = vec![0; len];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let _ = tx.send((path, ctype, body));
                    let _ = writer.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
                    );
                }
            });
        }
    });
    (url, rx)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn spans_are_exported_over_otlp_http() {
    let (url, rx) = collector();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("ALLUVIUM_TELEMETRY__OTLP_ENDPOINT", url.as_str()),
            ("ALLUVIUM_TELEMETRY__SERVICE_NAME", "alluvium-test"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("ALLUVIUM_LOG", "info"),
        ],
    );
    create_table(
        &server,
        ADMIN_KEY,
        "t",
        &json!({"fields": [{"name": "n", "type": "int64"}]}),
    );
    assert_eq!(
        ingest(&server, ADMIN_KEY, "t", &json!({"n": 1})).status,
        200
    );
    flush(&server, ADMIN_KEY, "t");

    // Exports come in batches: gather until the service name and every span kind were seen.
    let mut all = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if let Ok((path, ctype, body)) = rx.recv_timeout(Duration::from_millis(200)) {
            assert_eq!(path, "/v1/traces");
            assert_eq!(ctype, "application/x-protobuf");
            all.extend(body);
        }
        if ["alluvium-test", "http", "wal_commit", "flush"]
            .iter()
            .all(|n| contains(&all, n))
        {
            return;
        }
    }
    panic!(
        "expected spans not exported within 30 s ({} bytes received)",
        all.len()
    );
}
