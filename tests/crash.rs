//! kill -9 during concurrent ingest: after a restart every acknowledged event is present
//! exactly once, and nothing that was never sent appears.
//!
//! Memtables are tiny here so that flushes and catalog commits happen all the time and the
//! kill lands in the middle of them too. Every third cycle (the second one first) the server
//! runs with an abort failpoint instead (`ALLUVIUM_FAILPOINTS`), so the crash lands exactly
//! between a flush's Parquet write and its commit, right after a catalog commit, or between a
//! WAL write and its fsync. `ALLUVIUM_TEST_CRASH_CYCLES` sets the number of kill cycles
//! (default 3).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::os::unix::process::ExitStatusExt as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rand::Rng;
use serde_json::{Value, json};

const PRODUCERS: usize = 4;

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("ALLUVIUM_MEMTABLE__FREEZE_SIZE", "32KiB"),
        ("ALLUVIUM_MEMTABLE__FREEZE_AGE", "100ms"),
        ("ALLUVIUM_WAL__SEGMENT_SIZE", "64KiB"),
    ]
}

/// What producers learned: acknowledged ids, and ids sent without an answer.
#[derive(Default)]
struct Oracle {
    acked: HashSet<String>,
    unknown: HashSet<String>,
}

fn produce(
    base: String,
    producer: usize,
    cycle: usize,
    stop: Arc<AtomicBool>,
    oracle: Arc<Mutex<Oracle>>,
) {
    let mut n = 0usize;
    let mut rng = rand::rng();
    while !stop.load(Ordering::Relaxed) {
        let size = rng.random_range(1..=50);
        let ids: Vec<String> = (0..size)
            .map(|i| format!("c{cycle}-p{producer}-b{n}-{i}"))
            .collect();
        n += 1;
        let body: Vec<Value> = ids
            .iter()
            .map(|id| json!({"id": id, "producer": producer as i64, "payload": "x".repeat(40)}))
            .collect();
        let res = try_send(
            "POST",
            &format!("{base}/v1/tables/crash/events"),
            Some(ADMIN_KEY),
            Some("application/json"),
            Some(Value::Array(body).to_string().as_bytes()),
            &[],
        );
        let mut o = oracle.lock().unwrap();
        match res {
            Ok(r) if r.status == 200 => {
                assert_eq!(r.json()["accepted"].as_u64(), Some(size as u64));
                o.acked.extend(ids);
            }
            Ok(r) if r.status == 429 || r.status == 503 => {
                // Refused whole: none of these may appear... unless it is ambiguous; it is not.
                o.unknown.extend(ids);
            }
            Ok(r) => panic!("unexpected answer {r:?}"),
            // The connection died with the server: the batch may or may not be durable.
            Err(_) => {
                o.unknown.extend(ids);
                return;
            }
        }
    }
}

/// An abort failpoint at a random point of the durability path, on a random early hit.
fn random_failpoint(rng: &mut impl Rng) -> String {
    match rng.random_range(0..3) {
        0 => format!("flush.after_write=abort@{}", rng.random_range(1..=5)),
        1 => format!("catalog.after_commit=abort@{}", rng.random_range(1..=5)),
        _ => format!("wal.sync=abort@{}", rng.random_range(1..=100)),
    }
}

#[test]
fn kill9_during_ingest_loses_and_doubles_nothing() {
    let cycles: usize = std::env::var("ALLUVIUM_TEST_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let env = env();
    let oracle = Arc::new(Mutex::new(Oracle::default()));
    let mut rng = rand::rng();
    {
        let server = Server::start(dir.path(), &env);
        create_table(
            &server,
            ADMIN_KEY,
            "crash",
            &json!({"fields": [
                {"name": "id", "type": "string", "nullable": false},
                {"name": "producer", "type": "int64"},
                {"name": "payload", "type": "string"}
            ]}),
        );
    }
    let mut aborted = 0;
    for cycle in 0..cycles {
        let failpoint = (cycle % 3 == 1).then(|| random_failpoint(&mut rng));
        let mut cycle_env: Vec<(&str, &str)> = env.clone();
        if let Some(fp) = &failpoint {
            cycle_env.push(("ALLUVIUM_FAILPOINTS", fp));
        }
        let mut server = Server::start(dir.path(), &cycle_env);
        let stop = Arc::new(AtomicBool::new(false));
        let handles: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let (base, stop, oracle) = (server.base.clone(), stop.clone(), oracle.clone());
                std::thread::spawn(move || produce(base, p, cycle, stop, oracle))
            })
            .collect();
        match &failpoint {
            Some(fp) => {
                // Flushes start within a fraction of a second and commit groups are many: the
                // failpoint fires long before this deadline unless something is stuck.
                let status = server.wait_exit(Duration::from_secs(30));
                let signal = status.and_then(|s| s.signal());
                assert_eq!(
                    signal,
                    Some(6),
                    "cycle {cycle}: failpoint {fp} did not abort: {status:?}"
                );
                eprintln!("cycle {cycle}: aborted by failpoint {fp}: {status:?}");
                aborted += 1;
            }
            None => {
                std::thread::sleep(Duration::from_millis(rng.random_range(300..1500)));
                server.kill9();
            }
        }
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            h.join().unwrap();
        }
        let o = oracle.lock().unwrap();
        eprintln!(
            "cycle {cycle}: {} acknowledged, {} unknown so far",
            o.acked.len(),
            o.unknown.len()
        );
    }

    let server = Server::start(dir.path(), &env);
    let rows = query_all(&server, ADMIN_KEY, "crash", &json!({"columns": ["id"]}));
    let mut counts: HashMap<String, usize> = HashMap::new();
    for r in &rows {
        *counts
            .entry(r["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let o = oracle.lock().unwrap();
    let lost: Vec<_> = o
        .acked
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let unexpected: Vec<_> = counts
        .keys()
        .filter(|id| !o.acked.contains(*id) && !o.unknown.contains(*id))
        .collect();
    eprintln!(
        "{cycles} cycles ({aborted} by failpoint): {} acknowledged, {} stored, {} lost, {} doubled, {} unexpected",
        o.acked.len(),
        rows.len(),
        lost.len(),
        doubled.len(),
        unexpected.len()
    );
    assert!(
        o.acked.len() > 100,
        "the producers barely ran: {}",
        o.acked.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged events lost: {:?}",
        &lost[..lost.len().min(10)]
    );
    assert!(
        doubled.is_empty(),
        "events stored twice: {:?}",
        &doubled[..doubled.len().min(10)]
    );
    assert!(
        unexpected.is_empty(),
        "events never sent: {:?}",
        &unexpected[..unexpected.len().min(10)]
    );
    // Flushes did happen during the run, so recovery crossed files and the WAL.
    assert!(!parquet_files(&dir.path().join("tables")).is_empty());
}
