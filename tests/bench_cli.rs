//! `alluvium bench http` against a real server: a tiny run whose report must show every
//! acknowledged event stored exactly once and no failed request.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{ADMIN_KEY, Server, binary};

#[test]
fn bench_http_acknowledged_events_are_all_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let key_file = dir.path().join("bench.key");
    std::fs::write(&key_file, format!("{ADMIN_KEY}\n")).unwrap();
    let out = Command::new(binary())
        .args(["bench", "http", "--url", &server.base, "--key-file"])
        .arg(&key_file)
        .args([
            "--events",
            "2000",
            "--batch",
            "500",
            "--connections",
            "2",
            "--json",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["events_acked"], 2000, "{report}");
    assert_eq!(report["requests"]["ok"], 4, "{report}");
    for k in ["throttled", "other", "transport_errors"] {
        assert_eq!(report["requests"][k], 0, "{k}: {report}");
    }
    let v = &report["verify"];
    assert_eq!(v["acknowledged"], 2000, "{report}");
    assert_eq!(v["stored"], 2000, "{report}");
    for k in ["missing", "duplicated", "unacknowledged_stored", "foreign"] {
        assert_eq!(v[k], 0, "{k}: {report}");
    }
    assert!(
        report["latency_ms"]["max"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    // ~200-byte events: 2000 of them plus brackets.
    assert_eq!(report["bytes_acked"], 4 * (500 * 200 + 1), "{report}");
}
