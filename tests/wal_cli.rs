//! `alluvium wal inspect|verify` report a log without changing it, and name damage precisely.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::*;
use serde_json::json;

fn wal(cmd: &str, dir: &std::path::Path) -> (bool, String) {
    let out = Command::new(binary())
        .args(["wal", cmd, "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap())
}

#[test]
fn inspect_and_verify_report_segments_and_damage() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut server = Server::start(dir.path(), &[]);
        create_table(
            &server,
            ADMIN_KEY,
            "t",
            &json!({"fields": [{"name": "n", "type": "int64"}]}),
        );
        for i in 0..3 {
            assert_eq!(
                ingest(&server, ADMIN_KEY, "t", &json!([{"n": i}, {"n": i}])).status,
                200
            );
        }
        server.kill9();
    }
    let (ok, out) = wal("inspect", dir.path());
    assert!(ok, "{out}");
    assert!(out.contains("3 records"), "{out}");
    assert!(out.contains("default/t: seq 1..=6"), "{out}");
    let (ok, _) = wal("verify", dir.path());
    assert!(ok);

    // A second segment makes the first one sealed; a flipped bit there is corruption.
    {
        let mut server = Server::start(dir.path(), &[]);
        assert_eq!(
            ingest(&server, ADMIN_KEY, "t", &json!({"n": 9})).status,
            200
        );
        server.kill9();
    }
    let seg = dir.path().join("wal/00000000000000000001.wal");
    let before = std::fs::read(&seg).unwrap();
    let mut bytes = before.clone();
    let at = bytes.len() - 5;
    bytes[at] ^= 0x40;
    std::fs::write(&seg, &bytes).unwrap();
    let (ok, out) = wal("verify", dir.path());
    assert!(!ok, "verify must fail on a corrupt sealed segment: {out}");
    assert!(out.contains("Corrupt at byte"), "{out}");
    // Nothing was changed by looking.
    assert_eq!(std::fs::read(&seg).unwrap(), bytes);
    // And the server refuses to start on it rather than guess.
    let out = Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("ALLUVIUM_BOOTSTRAP_KEY", ADMIN_KEY)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("00000000000000000001.wal") && err.contains("at byte"),
        "{err}"
    );
}
