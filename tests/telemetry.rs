//! Spans reach an OTLP/HTTP collector when `[telemetry] otlp_endpoint` is set.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::http_sink::http_sink;
use common::*;
use serde_json::json;

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn spans_are_exported_over_otlp_http() {
    // A minimal OTLP/HTTP collector: answers every POST with 200.
    let (url, log) = http_sink("/v1/traces", |_| 200);
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
    let mut seen = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let got = log.lock().unwrap()[seen..].to_vec();
        seen += got.len();
        for r in got {
            assert_eq!(r.path, "/v1/traces");
            assert_eq!(r.header("content-type"), "application/x-protobuf");
            all.extend(r.body);
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
