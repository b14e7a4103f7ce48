//! The client commands against a real server: `send` of NDJSON, a JSON array and CSV stores
//! every row once, a send killed halfway and run again still stores every row once, a send
//! into a full node is retried after `Retry-After`, and `query`, `tables`, `tail` and
//! `completions` print what they should in each output format.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn create(server: &Server, table: &str) {
    create_table(
        server,
        ADMIN_KEY,
        table,
        &json!({"fields": [
            {"name": "id", "type": "int64", "nullable": false},
            {"name": "name", "type": "string"},
            {"name": "score", "type": "float64"}
        ]}),
    );
}

/// `alluvium ARGS` against `server`, with the admin key.
fn cli(server: &Server) -> Command {
    let mut cmd = Command::new(binary());
    for (k, _) in std::env::vars() {
        if k.starts_with("ALLUVIUM_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("ALLUVIUM_URL", &server.base)
        .env("ALLUVIUM_API_KEY", ADMIN_KEY);
    cmd
}

fn run(mut cmd: Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The final report of `send --json`.
fn send_report(server: &Server, table: &str, file: &Path, extra: &[&str]) -> Value {
    let mut cmd = cli(server);
    cmd.args(["send", "--json", "--no-progress", table])
        .arg(file)
        .args(extra);
    let out = run(cmd);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "send did not print a JSON report ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn ids(server: &Server, table: &str) -> Vec<i64> {
    query_all(server, ADMIN_KEY, table, &json!({"columns": ["id"]}))
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect()
}

/// Asserts that `table` holds each of `0..n` exactly once.
fn assert_once(server: &Server, table: &str, n: i64) {
    let ids = ids(server, table);
    let distinct: HashSet<i64> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), ids.len(), "rows stored twice in {table}");
    assert_eq!(distinct, (0..n).collect(), "rows of {table}");
}

fn write_ndjson(path: &Path, n: i64, pad: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..n {
        writeln!(
            f,
            "{{\"id\":{i},\"name\":\"{}{}\",\"score\":{}.5}}",
            "n".repeat(pad),
            i,
            i % 100
        )
        .unwrap();
    }
    f.flush().unwrap();
}

#[test]
fn send_stores_ndjson_a_json_array_and_csv_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    for t in ["nd", "arr", "csv"] {
        create(&server, t);
    }
    let nd = dir.path().join("rows.ndjson");
    write_ndjson(&nd, 2500, 4);
    let arr = dir.path().join("rows.json");
    let rows: Vec<Value> = (0..1200)
        .map(|i| json!({"id": i, "name": format!("a{i}"), "score": null}))
        .collect();
    std::fs::write(&arr, serde_json::to_vec_pretty(&rows).unwrap()).unwrap();
    let csv = dir.path().join("rows.csv");
    let mut text = String::from("id,name,score\n");
    for i in 0..1300 {
        // Quoted fields with the delimiter inside, and empty cells (nulls).
        if i % 3 == 0 {
            text.push_str(&format!("{i},\"x, {i}\",\n"));
        } else {
            text.push_str(&format!("{i},c{i},{i}.25\n"));
        }
    }
    std::fs::write(&csv, text).unwrap();

    for (table, file, n) in [("nd", &nd, 2500), ("arr", &arr, 1200), ("csv", &csv, 1300)] {
        let report = send_report(&server, table, file, &["--batch-rows", "500"]);
        assert_eq!(report["rows"], n, "{table}: {report}");
        assert_eq!(report["complete"], true, "{table}: {report}");
        assert_eq!(report["duplicate_rows"], 0, "{table}: {report}");
        assert!(report["rows_per_s"].as_f64().unwrap() > 0.0, "{report}");
        assert_once(&server, table, n);
        // Sending the whole file again: the checkpoint says it is done, nothing is resent.
        let again = send_report(&server, table, file, &["--batch-rows", "500"]);
        assert_eq!(again["rows"], 0, "{table} again: {again}");
        assert_eq!(again["complete"], true, "{table} again: {again}");
        assert_once(&server, table, n);
    }
    // CSV cells are typed by the table's schema; quoted delimiters and empty cells survive.
    let row = query_all(
        &server,
        ADMIN_KEY,
        "csv",
        &json!({"filter": {"column": "id", "op": "=", "value": 3}}),
    );
    assert_eq!(row.len(), 1, "{row:?}");
    assert_eq!(row[0]["name"], "x, 3");
    assert_eq!(row[0]["score"], Value::Null);
    let row = query_all(
        &server,
        ADMIN_KEY,
        "csv",
        &json!({"filter": {"column": "id", "op": "=", "value": 4}}),
    );
    assert_eq!(row[0]["score"], 4.25);

    // Standard input works too (without a checkpoint).
    create(&server, "stdin");
    let mut child = cli(&server)
        .args([
            "send",
            "--json",
            "--no-progress",
            "--format",
            "ndjson",
            "stdin",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        for i in 0..300 {
            writeln!(stdin, "{{\"id\":{i}}}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["rows"], 300, "{report}");
    assert_once(&server, "stdin", 300);
}

#[test]
fn a_send_killed_halfway_and_run_again_stores_every_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    create(&server, "big");
    let file = dir.path().join("big.ndjson");
    let n = 200_000;
    write_ndjson(&file, n, 40);
    let size = std::fs::metadata(&file).unwrap().len();

    // Small batches, two in flight: the kill lands with batches sent but not acknowledged.
    let mut child = cli(&server)
        .args([
            "send",
            "--json",
            "--no-progress",
            "--batch-rows",
            "1000",
            "--parallel",
            "2",
            "big",
        ])
        .arg(&file)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stored = wait_for(Duration::from_secs(120), || {
        let stored = ids(&server, "big").len() as i64;
        (stored >= n / 3).then_some(stored)
    })
    .expect("the first send did not get a third of the way");
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the send finished before it was killed");
    let after_kill = ids(&server, "big").len() as i64;
    assert!(after_kill < n, "the send finished before it was killed");
    eprintln!("{size} bytes, {n} rows: killed with {stored}..{after_kill} rows stored");

    let report = send_report(
        &server,
        "big",
        &file,
        &["--batch-rows", "1000", "--parallel", "2"],
    );
    eprintln!("rerun: {report}");
    assert_eq!(report["complete"], true, "{report}");
    assert!(
        report["resumed_at_batch"].as_u64().unwrap() > 0,
        "the rerun started from the beginning: {report}"
    );
    assert_eq!(
        report["skipped_rows"].as_u64().unwrap() + report["rows"].as_u64().unwrap(),
        n as u64,
        "{report}"
    );
    assert_once(&server, "big", n);
}

#[test]
fn a_send_to_a_full_node_is_retried_after_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    // A budget of a few batches: the node answers 429 until flushes free memory.
    let server = Server::start(
        &dir.path().join("data"),
        &[
            ("ALLUVIUM_MEMTABLE__BUDGET", "256KiB"),
            ("ALLUVIUM_MEMTABLE__FREEZE_SIZE", "64KiB"),
        ],
    );
    create(&server, "full");
    let file = dir.path().join("full.ndjson");
    write_ndjson(&file, 20_000, 40);
    let report = send_report(
        &server,
        "full",
        &file,
        &["--batch-rows", "500", "--parallel", "4", "--retries", "100"],
    );
    eprintln!("{report}");
    assert_eq!(report["complete"], true, "{report}");
    assert!(
        report["retries"].as_u64().unwrap() > 0,
        "no batch was refused: {report}"
    );
    assert_once(&server, "full", 20_000);
}

#[test]
fn query_tables_tail_and_completions_print_each_format() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    create(&server, "q");
    let file = dir.path().join("q.ndjson");
    write_ndjson(&file, 50, 1);
    send_report(&server, "q", &file, &[]);

    let query = |args: &[&str]| -> String {
        let mut cmd = cli(&server);
        cmd.args(["query", "q", "-f", "id<5"]).args(args);
        String::from_utf8(run(cmd).stdout).unwrap()
    };
    let rows: Vec<Value> = serde_json::from_str(&query(&["-o", "json"])).unwrap();
    let mut got: Vec<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    got.sort_unstable();
    assert_eq!(got, vec![0, 1, 2, 3, 4]);
    let lines = query(&["-o", "ndjson", "--columns", "id,name", "-f", "id=2"]);
    let rows: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows, vec![json!({"id": 2, "name": "n2"})], "{lines}");
    let table = query(&["-o", "table", "--columns", "id,name"]);
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    assert!(header.contains("id") && header.contains("name"), "{table}");
    for i in 0..5 {
        assert!(
            table
                .lines()
                .any(|l| l.trim_end().ends_with(&format!(" n{i}"))),
            "{table}"
        );
    }
    assert!(table.trim_end().ends_with("(5 rows)"), "{table}");

    let mut cmd = cli(&server);
    cmd.args(["tables", "-o", "json"]);
    let tables: Value = serde_json::from_slice(&run(cmd).stdout).unwrap();
    assert!(
        tables.as_array().unwrap().iter().any(|t| t["table"] == "q"),
        "{tables}"
    );
    let mut cmd = cli(&server);
    cmd.args(["tables"]);
    let listing = String::from_utf8(run(cmd).stdout).unwrap();
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("q ") || l.contains(" q ")),
        "{listing}"
    );

    // A flush commits an event; `tail --after 0` replays it.
    flush(&server, ADMIN_KEY, "q");
    let mut cmd = cli(&server);
    cmd.args([
        "tail", "--after", "0", "--count", "1", "--table", "q", "--kinds", "flushed", "-o",
        "ndjson",
    ]);
    let out = String::from_utf8(run(cmd).stdout).unwrap();
    let event: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(event["table"], "q", "{event}");
    assert_eq!(event["kind"], "flushed", "{event}");
    assert_eq!(event["rows_added"], 50, "{event}");

    // A bad key is a clear error and a failing exit status.
    let out = cli(&server)
        .args(["tables"])
        .env("ALLUVIUM_API_KEY", "not-a-key")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("401") || err.to_lowercase().contains("unauth"),
        "{err}"
    );

    for shell in ["bash", "zsh", "fish"] {
        let mut cmd = Command::new(binary());
        cmd.args(["completions", shell]);
        let script = String::from_utf8(run(cmd).stdout).unwrap();
        for word in ["send", "query", "tables", "tail"] {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
    }
}
