//! Compaction: merging files never changes an answer (queries, lookups, `as_of` reads), also
//! across restarts and `kill -9` in the middle of a compaction; replaced files go after the
//! grace period; DuckDB reads compacted files and agrees.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const KEYS: i64 = 40;

fn upsert_table(server: &Server) {
    create_table(
        server,
        ADMIN_KEY,
        "kv",
        &json!({"fields": [
            {"name": "id", "type": "int64", "nullable": false},
            {"name": "v", "type": "string"}
        ], "primary_key": ["id"]}),
    );
}

/// Round `r` of a deterministic workload: upserts over a sliding set of keys, some deletes.
fn round(r: i64) -> Value {
    let mut events: Vec<Value> = (0..30)
        .map(|j| json!({"id": (r * 7 + j * 3) % KEYS, "v": format!("r{r}j{j}")}))
        .collect();
    events.extend(
        (0..KEYS)
            .filter(|id| (r + id) % 11 == 0)
            .map(|id| json!({"id": id, "_op": "delete"})),
    );
    Value::Array(events)
}

/// Writes `rounds` rounds, one flushed file each.
fn fill(server: &Server, rounds: i64) {
    for r in 0..rounds {
        assert_eq!(ingest(server, ADMIN_KEY, "kv", &round(r)).status, 200);
        flush(server, ADMIN_KEY, "kv");
    }
}

/// What the table answers: all rows by query, and a lookup of every key.
fn answers(server: &Server, as_of: Option<u64>) -> (Vec<Value>, Vec<(u16, Value)>) {
    let mut req = json!({"columns": ["id", "v"]});
    if let Some(v) = as_of {
        req["as_of"] = json!(v);
    }
    let rows = query_all(server, ADMIN_KEY, "kv", &req);
    let lookups = (0..KEYS)
        .map(|id| {
            let q = as_of.map(|v| format!("?as_of={v}")).unwrap_or_default();
            let r = send(
                "GET",
                &server.url(&format!("/v1/tables/kv/rows/{id}{q}")),
                Some(ADMIN_KEY),
                None,
                None,
            );
            let v = if r.status == 200 {
                r.json()["v"].clone()
            } else {
                Value::Null
            };
            (r.status, v)
        })
        .collect();
    (rows, lookups)
}

fn files(server: &Server, table: &str) -> Value {
    let r = send(
        "GET",
        &server.url(&format!("/v1/tables/{table}/files")),
        Some(ADMIN_KEY),
        None,
        None,
    );
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

fn live_files(server: &Server, table: &str) -> usize {
    files(server, table)["files"].as_array().unwrap().len()
}

const NO_BACKGROUND: (&str, &str) = ("ALLUVIUM_COMPACTION__INTERVAL", "0s");

#[test]
fn compaction_changes_no_answer_now_or_as_of_before() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[NO_BACKGROUND]);
    upsert_table(&server);
    fill(&server, 6);
    assert_eq!(live_files(&server, "kv"), 6);
    let before = answers(&server, None);
    assert!(before.0.len() > 10 && before.1.iter().any(|(s, _)| *s == 404));
    let version_before = files(&server, "kv")["catalog_version"].as_u64().unwrap();

    let r = compact(&server, "kv");
    assert_eq!(r.status, 200, "{r:?}");
    let report = r.json();
    assert_eq!(report["files_in"], 6);
    assert_eq!(report["files_out"], 1);
    assert!(report["versions_dropped"].as_u64().unwrap() > 0, "{report}");
    assert!(
        report["tombstones_dropped"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert_eq!(
        report["rows_out"].as_u64().unwrap(),
        before.0.len() as u64,
        "one row per live key, no tombstones left: {report}"
    );

    let f = files(&server, "kv");
    assert_eq!(f["files"].as_array().unwrap().len(), 1);
    assert_eq!(f["removed"].as_array().unwrap().len(), 6);
    assert_eq!(
        answers(&server, None),
        before,
        "compaction changed an answer"
    );
    assert_eq!(
        answers(&server, Some(version_before)),
        before,
        "the version before compaction still reads the same"
    );
    // Nothing left to merge: a second compaction is a no-op.
    assert_eq!(compact(&server, "kv").json()["merges"], 0);

    // New writes on top of compacted data, then a restart.
    assert_eq!(ingest(&server, ADMIN_KEY, "kv", &round(6)).status, 200);
    let now = answers(&server, None);
    server.kill9();
    let server = Server::start(dir.path(), &[NO_BACKGROUND]);
    assert_eq!(answers(&server, None), now);
    assert_eq!(answers(&server, Some(version_before)), before);

    // A version that does not exist yet is refused clearly.
    let r = send(
        "POST",
        &server.url("/v1/tables/kv/query"),
        Some(ADMIN_KEY),
        Some("application/json"),
        Some(br#"{"as_of": 100000}"#),
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (410, "version_unavailable"),
        "{r:?}"
    );
}

#[test]
fn background_compaction_and_file_gc_and_duckdb_agree() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("ALLUVIUM_COMPACTION__INTERVAL", "100ms"),
            ("ALLUVIUM_COMPACTION__GRACE", "1s"),
        ],
    );
    create_table(
        &server,
        ADMIN_KEY,
        "events",
        &json!({"fields": [
            {"name": "ts", "type": "timestamp_ms", "nullable": false},
            {"name": "n", "type": "int64", "nullable": false},
            {"name": "host", "type": "string"}
        ], "time_column": "ts"}),
    );
    let mut total = 0i64;
    let mut count = 0i64;
    for f in 0..4i64 {
        let batch: Vec<Value> = (0..500i64)
            .map(|i| {
                let n = f * 1000 + i;
                total += n;
                count += 1;
                json!({"ts": 1_795_000_000_000i64 + (i * 4 + f) * 1000, "n": n, "host": format!("h{}", n % 5)})
            })
            .collect();
        assert_eq!(
            ingest(&server, ADMIN_KEY, "events", &Value::Array(batch)).status,
            200
        );
        flush(&server, ADMIN_KEY, "events");
    }
    let version_before = files(&server, "events")["catalog_version"]
        .as_u64()
        .unwrap();
    // Four flushed files of one tier: the background compactor merges them, then purges them
    // from the catalog and deletes them (just after the purge commit, hence the wait for both).
    let data = dir.path().join("tables/default/events/data");
    let settled = wait_for(Duration::from_secs(30), || {
        let f = files(&server, "events");
        (f["files"].as_array().unwrap().len() == 1
            && f["removed"].as_array().unwrap().is_empty()
            && parquet_files(&data).len() == 1)
            .then_some(f)
    })
    .expect("background compaction did not merge, purge and delete the files");
    assert!(settled["readable_from"].as_u64().unwrap() > version_before);
    let r = send(
        "POST",
        &server.url("/v1/tables/events/query"),
        Some(ADMIN_KEY),
        Some("application/json"),
        Some(json!({"as_of": version_before}).to_string().as_bytes()),
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (410, "version_unavailable"),
        "{r:?}"
    );

    let rows = query_all(&server, ADMIN_KEY, "events", &json!({"columns": ["n"]}));
    assert_eq!(rows.len() as i64, count);
    let script = r#"
import sys, json, duckdb
con = duckdb.connect()
row = con.execute(f"select count(*), sum(n), count(distinct _seq), count(distinct host), bool_and(ts >= lag_ts) from (select *, lag(ts, 1, ts) over (order by ts, _seq) as lag_ts from read_parquet('{sys.argv[1]}'))").fetchone()
print(json.dumps([str(v) for v in row]))
"#;
    let glob = data.join("*/*.parquet");
    let out = std::process::Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(glob.to_str().unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(d[0], count.to_string());
    assert_eq!(d[1], total.to_string());
    assert_eq!(d[2], count.to_string(), "every event once");
    assert_eq!(d[3], "5");
    assert_eq!(d[4], "True", "rows in time order");
}

/// Ends the server inside a compaction at each failpoint; after a restart the table answers
/// as before, and orphans are cleaned up.
#[test]
fn a_crash_inside_compaction_changes_no_answer() {
    for (point, committed) in [
        ("compaction.after_write", false),
        ("compaction.after_commit", true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let failpoint = format!("{point}=abort");
        let mut server = Server::start(
            dir.path(),
            &[NO_BACKGROUND, ("ALLUVIUM_FAILPOINTS", failpoint.as_str())],
        );
        upsert_table(&server);
        fill(&server, 5);
        let before = answers(&server, None);
        let r = try_send(
            "POST",
            &server.url("/v1/tables/kv/compact"),
            Some(ADMIN_KEY),
            None,
            None,
            &[],
        );
        assert!(r.is_err(), "{point}: the server should have died: {r:?}");
        assert!(server.wait_exit(Duration::from_secs(10)).is_some());

        let server = Server::start(dir.path(), &[NO_BACKGROUND]);
        assert_eq!(answers(&server, None), before, "{point}");
        let f = files(&server, "kv");
        let data = dir.path().join("tables/default/kv/data");
        if committed {
            assert_eq!(f["files"].as_array().unwrap().len(), 1, "{point}");
            assert_eq!(f["removed"].as_array().unwrap().len(), 5, "{point}");
            assert_eq!(
                parquet_files(&data).len(),
                6,
                "{point}: replaced files kept for grace"
            );
        } else {
            assert_eq!(f["files"].as_array().unwrap().len(), 5, "{point}");
            assert_eq!(
                parquet_files(&data).len(),
                5,
                "{point}: the unreferenced output is gone"
            );
            // The compaction can simply run again.
            assert_eq!(compact(&server, "kv").status, 200);
            assert_eq!(answers(&server, None), before, "{point}");
        }
    }
}

/// `kill -9` at arbitrary moments of a larger compaction: whatever instant it lands on, the
/// restarted table answers exactly as before.
#[test]
fn kill9_at_any_instant_of_a_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[NO_BACKGROUND]);
    create_table(
        &server,
        ADMIN_KEY,
        "big",
        &json!({"fields": [
            {"name": "id", "type": "int64", "nullable": false},
            {"name": "v", "type": "string"}
        ], "primary_key": ["id"]}),
    );
    for f in 0..8i64 {
        let batch: Vec<Value> = (0..20_000i64)
            .map(|i| json!({"id": (i * 7 + f * 13) % 60_000, "v": format!("f{f}-{i}-payload")}))
            .collect();
        assert_eq!(
            ingest(&server, ADMIN_KEY, "big", &Value::Array(batch)).status,
            200
        );
        flush(&server, ADMIN_KEY, "big");
    }
    let summary = |s: &Server| {
        let rows = query_all(s, ADMIN_KEY, "big", &json!({"columns": ["id", "v"]}));
        let digest: u64 = rows
            .iter()
            .map(|r| {
                let v = r["v"].as_str().unwrap();
                r["id"].as_u64().unwrap() * 31 + v.len() as u64 + u64::from(v.as_bytes()[1])
            })
            .sum();
        (rows.len(), digest)
    };
    let before = summary(&server);
    for delay_ms in [5u64, 60, 250] {
        let base = server.base.clone();
        let trigger = std::thread::spawn(move || {
            let _ = try_send(
                "POST",
                &format!("{base}/v1/tables/big/compact"),
                Some(ADMIN_KEY),
                None,
                None,
                &[],
            );
        });
        std::thread::sleep(Duration::from_millis(delay_ms));
        server.kill9();
        trigger.join().unwrap();
        server = Server::start(dir.path(), &[NO_BACKGROUND]);
        assert_eq!(
            summary(&server),
            before,
            "after kill -9 {delay_ms} ms into a compaction"
        );
        // No file leaks: what is on disk is exactly what the catalog lists, live or replaced
        // (outputs of an uncommitted compaction were removed at start).
        let f = files(&server, "big");
        let listed = f["files"].as_array().unwrap().len() + f["removed"].as_array().unwrap().len();
        let on_disk = parquet_files(&dir.path().join("tables/default/big/data")).len();
        assert_eq!(on_disk, listed, "after kill -9 {delay_ms} ms: {f}");
    }
    // Finally let one finish.
    assert_eq!(compact(&server, "big").status, 200);
    assert_eq!(summary(&server), before);
    assert_eq!(live_files(&server, "big"), 1);
}
