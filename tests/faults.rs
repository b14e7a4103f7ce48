//! Fault injection against the real binary (`ALLUVIUM_FAILPOINTS`): a failing fsync, a failing
//! object store, and crashes inside a flush and inside a catalog commit. Each test checks the
//! durability contract after the fault: every acknowledged event present exactly once.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const TABLE: &str = "t";

fn schema() -> Value {
    json!({"fields": [
        {"name": "id", "type": "string", "nullable": false},
        {"name": "payload", "type": "string"}
    ]})
}

/// A batch of `n` events with ids `{tag}-{i}`.
fn batch(tag: &str, n: usize, payload: usize) -> (Vec<String>, Value) {
    let ids: Vec<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
    let body = ids
        .iter()
        .map(|id| json!({"id": id, "payload": "x".repeat(payload)}))
        .collect();
    (ids, Value::Array(body))
}

/// How many times each id is stored.
fn stored(server: &Server) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in query_all(server, ADMIN_KEY, TABLE, &json!({"columns": ["id"]})) {
        *counts
            .entry(r["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    counts
}

/// Asserts every acknowledged id is stored exactly once and that nothing else is stored except
/// `maybe` ids, at most once each.
fn check_oracle(server: &Server, acked: &HashSet<String>, maybe: &HashSet<String>) {
    let counts = stored(server);
    let lost: Vec<_> = acked
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let unexpected: Vec<_> = counts
        .keys()
        .filter(|id| !acked.contains(*id) && !maybe.contains(*id))
        .collect();
    assert!(lost.is_empty(), "acknowledged events lost: {lost:?}");
    assert!(doubled.is_empty(), "events stored twice: {doubled:?}");
    assert!(unexpected.is_empty(), "events never sent: {unexpected:?}");
}

/// Every data file path (relative to the store root) added by a commit in the catalog log.
fn catalog_files(data_dir: &Path) -> BTreeSet<String> {
    let mut files = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir(data_dir.join("catalog/log")) else {
        return files;
    };
    for e in entries.flatten() {
        let commit: Value = serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
        for action in commit["actions"].as_array().unwrap() {
            if action["action"] == "add_file" {
                files.insert(action["file"]["path"].as_str().unwrap().to_string());
            }
        }
    }
    files
}

/// Every `.parquet` file of the store, relative to its root.
fn files_on_disk(data_dir: &Path) -> BTreeSet<String> {
    parquet_files(&data_dir.join("tables"))
        .into_iter()
        .map(|p| p.strip_prefix(data_dir).unwrap().display().to_string())
        .collect()
}

fn post_flush(server: &Server) -> Result<Resp, String> {
    try_send(
        "POST",
        &server.url(&format!("/v1/tables/{TABLE}/flush")),
        Some(ADMIN_KEY),
        None,
        None,
        &[],
    )
}

/// Starts a server on `dir` without failpoints, creates the table and stops it, so that the
/// failpoints of the next start count only what the test does.
fn prepare(dir: &Path, env: &[(&str, &str)]) {
    let server = Server::start(dir, env);
    create_table(&server, ADMIN_KEY, TABLE, &schema());
}

/// Ingests `batches` acknowledged batches of `n` events each.
fn ingest_acked(server: &Server, tag: &str, batches: usize, n: usize) -> HashSet<String> {
    let mut acked = HashSet::new();
    for b in 0..batches {
        let (ids, body) = batch(&format!("{tag}{b}"), n, 40);
        let r = ingest(server, ADMIN_KEY, TABLE, &body);
        assert_eq!(r.status, 200, "{r:?}");
        acked.extend(ids);
    }
    acked
}

/// Waits for the server to die by its own `abort()` (SIGABRT), not by anything else.
fn assert_aborted(server: &mut Server) {
    let status = server
        .wait_exit(Duration::from_secs(30))
        .expect("the failpoint did not stop the process");
    assert_eq!(status.signal(), Some(SIGABRT), "{status:?}");
}

/// SIGABRT's number (POSIX.1 fixes it at 6).
const SIGABRT: i32 = 6;

#[test]
fn failed_fsync_poisons_the_wal_and_never_acknowledges() {
    let dir = tempfile::tempdir().unwrap();
    const FAILING: usize = 5;
    let fp = format!("wal.sync=error@{FAILING}");
    let mut server = Server::start(dir.path(), &[("ALLUVIUM_FAILPOINTS", &fp)]);
    create_table(&server, ADMIN_KEY, TABLE, &schema());
    let mut acked = HashSet::new();
    let mut failed = HashSet::new();
    // One request at a time: each is its own commit group, so the FAILING-th sync is the
    // FAILING-th request's.
    for i in 1..=FAILING + 3 {
        let (ids, body) = batch(&format!("r{i}"), 3, 20);
        let r = ingest(&server, ADMIN_KEY, TABLE, &body);
        if i < FAILING {
            assert_eq!(r.status, 200, "request {i}: {r:?}");
            acked.extend(ids);
        } else {
            assert_eq!(r.status, 503, "request {i}: {r:?}");
            assert_eq!(r.code(), "wal_poisoned", "request {i}: {r:?}");
            if i == FAILING {
                failed.extend(ids);
            }
        }
    }
    // Reads go on, and see exactly what was acknowledged.
    check_oracle(&server, &acked, &HashSet::new());
    server.kill9();

    let server = Server::start(dir.path(), &[]);
    // The failed batch was written before its sync failed: it may be back, whole, or absent.
    check_oracle(&server, &acked, &failed);
    let counts = stored(&server);
    let back = failed.iter().filter(|id| counts.contains_key(*id)).count();
    assert!(
        back == 0 || back == failed.len(),
        "a batch came back in part: {back}"
    );
    // Restarted, the log accepts writes again.
    acked.extend(ingest_acked(&server, "after", 2, 3));
    check_oracle(&server, &acked, &failed);
}

#[test]
fn failing_object_store_pushes_back_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = vec![
        ("ALLUVIUM_MEMTABLE__BUDGET", "256KiB"),
        ("ALLUVIUM_MEMTABLE__FREEZE_SIZE", "32KiB"),
        ("ALLUVIUM_MEMTABLE__FREEZE_AGE", "100ms"),
        ("ALLUVIUM_MEMTABLE__FLUSH_RETRY", "50ms"),
    ];
    prepare(dir.path(), &env);
    // Eight failed flush attempts back off 50 ms, doubling to 1.6 s: over six seconds of a
    // dead store, time enough for ingest to fill the budget.
    env.push(("ALLUVIUM_FAILPOINTS", "storage.put=error*8"));
    let server = Server::start(dir.path(), &env);

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut acked = HashSet::new();
    let (mut pushed_back, mut accepted_after) = (0usize, 0usize);
    let mut b = 0;
    // Ingest until the budget pushes back, then keep going until it accepts again a few times.
    while accepted_after < 5 {
        assert!(
            Instant::now() < deadline,
            "no recovery: {pushed_back} pushed back, {} acknowledged",
            acked.len()
        );
        let (ids, body) = batch(&format!("b{b}"), 50, 100);
        b += 1;
        let mut backoff = Duration::from_millis(50);
        loop {
            let r = ingest(&server, ADMIN_KEY, TABLE, &body);
            if r.status == 200 {
                acked.extend(ids);
                if pushed_back > 0 {
                    accepted_after += 1;
                }
                break;
            }
            assert_eq!(r.status, 429, "{r:?}");
            assert_eq!(r.code(), "overloaded", "{r:?}");
            let retry_after: u64 = r
                .header("Retry-After")
                .expect("a 429 without Retry-After")
                .parse()
                .unwrap();
            assert!(retry_after >= 1, "{r:?}");
            pushed_back += 1;
            assert!(Instant::now() < deadline, "ingest never accepted again");
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
    assert!(pushed_back > 0, "the budget never pushed back");
    check_oracle(&server, &acked, &HashSet::new());
    // The flushes went through once the store came back, and everything they wrote is listed.
    let files = wait_for(Duration::from_secs(30), || {
        let on_disk = files_on_disk(dir.path());
        (!on_disk.is_empty() && on_disk == catalog_files(dir.path())).then_some(on_disk)
    })
    .expect("no committed parquet files");
    eprintln!(
        "{} acknowledged, {pushed_back} pushed back, {} files",
        acked.len(),
        files.len()
    );
}

#[test]
fn crash_between_parquet_write_and_commit_leaves_orphans_that_gc_removes() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(
        dir.path(),
        &[("ALLUVIUM_FAILPOINTS", "flush.after_write=abort")],
    );
    create_table(&server, ADMIN_KEY, TABLE, &schema());
    let mut acked = ingest_acked(&server, "a", 5, 20);
    assert!(post_flush(&server).is_err(), "the flush answered");
    assert_aborted(&mut server);
    let orphans = files_on_disk(dir.path());
    assert!(!orphans.is_empty(), "the flush wrote no file before dying");
    assert!(catalog_files(dir.path()).is_empty());

    let server = Server::start(dir.path(), &[]);
    // The GC ran before the server listened.
    assert_eq!(files_on_disk(dir.path()), BTreeSet::new());
    check_oracle(&server, &acked, &HashSet::new());
    acked.extend(ingest_acked(&server, "b", 2, 20));
    assert_eq!(flush(&server, ADMIN_KEY, TABLE)["flushed"], true);
    let files = files_on_disk(dir.path());
    assert!(!files.is_empty());
    assert!(files.is_disjoint(&orphans));
    assert_eq!(files, catalog_files(dir.path()));
    check_oracle(&server, &acked, &HashSet::new());
}

#[test]
fn crash_after_catalog_commit_replays_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    prepare(dir.path(), &[]);
    let mut server = Server::start(
        dir.path(),
        &[("ALLUVIUM_FAILPOINTS", "catalog.after_commit=abort")],
    );
    let mut acked = ingest_acked(&server, "a", 5, 20);
    assert!(post_flush(&server).is_err(), "the flush answered");
    assert_aborted(&mut server);
    let committed = files_on_disk(dir.path());
    assert!(
        !committed.is_empty(),
        "the flush wrote no file before dying"
    );
    assert_eq!(committed, catalog_files(dir.path()));

    let server = Server::start(dir.path(), &[]);
    // Committed files are not orphans; the WAL still holds their events, and replay skips them.
    assert_eq!(files_on_disk(dir.path()), committed);
    check_oracle(&server, &acked, &HashSet::new());
    acked.extend(ingest_acked(&server, "b", 2, 20));
    assert_eq!(flush(&server, ADMIN_KEY, TABLE)["flushed"], true);
    assert_eq!(files_on_disk(dir.path()), catalog_files(dir.path()));
    assert!(files_on_disk(dir.path()).len() > committed.len());
    check_oracle(&server, &acked, &HashSet::new());
}

#[test]
fn malformed_failpoints_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(binary());
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("ALLUVIUM_")) {
        cmd.env_remove(k);
    }
    let out = cmd
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("ALLUVIUM_FAILPOINTS", "wal.fsync=error")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ALLUVIUM_FAILPOINTS")
            && stderr.contains("unknown failpoint \"wal.fsync\""),
        "{stderr}"
    );
    // Nothing was created: the check runs before the node touches the data directory.
    assert!(!dir.path().join("wal").exists());
}
