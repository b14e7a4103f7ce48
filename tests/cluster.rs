//! Cluster mode end to end, against real components started by the tests: a 3-server NATS
//! cluster (JetStream R3), S3 on moto, and alluvium nodes in the ingest, processing and
//! notification roles. Nodes and a NATS server are killed under load; every acknowledged event
//! must be stored exactly once and every commit event published once. A stale owner (paused
//! past its lease) cannot commit. Bad settings refuse to start, naming the setting.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use common::nats::*;
use common::s3::MotoServer;
use common::*;
use futures::StreamExt;
use serde_json::{Value, json};

const TABLES: [&str; 4] = ["t0", "t1", "t2", "t3"];

/// Settings every node of a test cluster shares.
fn cluster_env(moto: &MotoServer, nats_urls: &str, replicas: &str) -> Vec<(String, String)> {
    [
        ("ALLUVIUM_NATS__URL", nats_urls),
        ("ALLUVIUM_NATS__STREAM_REPLICAS", replicas),
        ("ALLUVIUM_STORE__URL", "s3://lake/cluster"),
        ("ALLUVIUM_STORE__ENDPOINT", &moto.endpoint()),
        ("ALLUVIUM_STORE__ALLOW_HTTP", "true"),
        ("ALLUVIUM_STORE__ACCESS_KEY_ID", "testing"),
        ("ALLUVIUM_STORE__SECRET_ACCESS_KEY", "testing"),
        ("ALLUVIUM_CLUSTER__LEASE_TTL", "3s"),
        ("ALLUVIUM_CLUSTER__CATALOG_REFRESH", "200ms"),
        ("ALLUVIUM_MEMTABLE__FREEZE_AGE", "1s"),
        ("ALLUVIUM_COMPACTION__INTERVAL", "0s"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn node(dir: &Path, name: &str, role: &str, env: &[(String, String)]) -> Server {
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.push(("ALLUVIUM_NODE__ROLE", role));
    all.push(("ALLUVIUM_NODE__ID", name));
    Server::start(&dir.join(name), &all)
}

fn schema() -> Value {
    json!({"fields": [{"name": "id", "type": "int64"}, {"name": "src", "type": "utf8"}]})
}

/// One nats-server, moto with bucket `lake`, and the settings of nodes that keep rows in
/// memtables until asked to flush.
fn small_cluster() -> (
    tempfile::TempDir,
    MotoServer,
    NatsServer,
    Vec<(String, String)>,
) {
    let dir = tempfile::tempdir().unwrap();
    let moto = MotoServer::start();
    moto.create_bucket("lake");
    let nats = NatsServer::start(&dir.path().join("nats"));
    let mut env = cluster_env(&moto, &nats.url(), "1");
    env.retain(|(k, _)| k != "ALLUVIUM_MEMTABLE__FREEZE_AGE");
    env.push(("ALLUVIUM_MEMTABLE__FREEZE_AGE".into(), "10m".into()));
    (dir, moto, nats, env)
}

/// Ids stored in `table`, read from `server`; asserts there are no duplicates.
fn stored_ids(server: &Server, table: &str) -> Vec<i64> {
    let rows = query_all(server, ADMIN_KEY, table, &json!({"columns": ["id"]}));
    let ids: Vec<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    ids
}

/// Sends one HTTP batch to the first node of `targets` that takes it, retrying with the same
/// idempotency key (on any node) until it is acknowledged.
fn send_http(targets: &[String], table: &str, key: &str, body: &[u8], attempt: &AtomicUsize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let i = attempt.fetch_add(1, Ordering::Relaxed);
        let base = &targets[i % targets.len()];
        let r = try_send(
            "POST",
            &format!("{base}/v1/tables/{table}/events"),
            Some(ADMIN_KEY),
            Some("application/x-ndjson"),
            Some(body),
            &[("Idempotency-Key", key)],
        );
        match r {
            Ok(r) if r.status == 200 => {
                let ack = r.json();
                assert_eq!(ack["durability"], "replicated", "{ack}");
                return;
            }
            Ok(r) if r.status == 409 => panic!("batch {key} refused: {}", r.body),
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "batch {key} not acknowledged within 120 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ndjson(ids: std::ops::Range<i64>, src: &str) -> Vec<u8> {
    let mut out = String::new();
    for id in ids {
        out.push_str(&format!("{{\"id\":{id},\"src\":\"{src}\"}}\n"));
    }
    out.into_bytes()
}

/// Commit events in stream ALLUVIUM_EVENTS: (ids, rows added by `flushed` events per table).
/// `None` while JetStream does not answer (a NATS server was just killed: it elects new
/// leaders).
async fn commit_events(url: &str) -> Option<(Vec<String>, BTreeMap<String, u64>)> {
    let client = async_nats::connect(url).await.ok()?;
    let js = jetstream::new(client);
    let stream = js.get_stream("ALLUVIUM_EVENTS").await.ok()?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig::default())
        .await
        .ok()?;
    let mut messages = consumer.messages().await.ok()?;
    let (mut ids, mut rows) = (Vec::new(), BTreeMap::new());
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(3), messages.next()).await {
        let ev: Value = serde_json::from_slice(&m.ok()?.payload).unwrap();
        ids.push(ev["id"].as_str().unwrap().to_string());
        if ev["kind"] == "flushed" {
            *rows
                .entry(ev["table"].as_str().unwrap().to_string())
                .or_insert(0) += ev["rows_added"].as_u64().unwrap();
        }
    }
    Some((ids, rows))
}

/// 100 000 events over HTTP (two ingest nodes) and NATS, while one processing node, then one
/// ingest node, then one NATS server are killed: each event is stored once, and the flushes
/// that stored them are announced once.
#[test]
fn kills_under_load_lose_and_double_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let moto = MotoServer::start();
    moto.create_bucket("lake");
    let mut nats = NatsCluster::start(&dir.path().join("nats"), 3);
    let env = cluster_env(&moto, &nats.urls(), "3");
    let mut ingest1 = node(dir.path(), "ingest1", "ingest", &env);
    let ingest2 = node(dir.path(), "ingest2", "ingest", &env);
    let mut proc1 = node(dir.path(), "proc1", "processing", &env);
    let proc2 = node(dir.path(), "proc2", "processing", &env);
    let _notify = node(dir.path(), "notify1", "notification", &env);
    for t in TABLES {
        create_table(&ingest1, ADMIN_KEY, t, &schema());
    }

    // HTTP: 4 senders, 40 batches of 500 events each (80 000); NATS: 400 requests of 50.
    const HTTP_BATCHES: i64 = 40;
    const HTTP_BATCH: i64 = 500;
    const NATS_MSGS: i64 = 400;
    const NATS_BATCH: i64 = 50;
    let targets = Arc::new(vec![ingest1.base.clone(), ingest2.base.clone()]);
    let sent = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut senders = Vec::new();
    for (s, table) in TABLES.iter().enumerate() {
        let (targets, sent) = (targets.clone(), sent.clone());
        let table = table.to_string();
        senders.push(std::thread::spawn(move || {
            let attempt = AtomicUsize::new(s);
            for b in 0..HTTP_BATCHES {
                let first = b * HTTP_BATCH;
                let body = ndjson(first..first + HTTP_BATCH, "http");
                send_http(
                    &targets,
                    &table,
                    &format!("http-{table}-{b}"),
                    &body,
                    &attempt,
                );
                sent.fetch_add(HTTP_BATCH as usize, Ordering::Relaxed);
            }
        }));
    }
    let nats_urls = nats.urls();
    let nats_sent = sent.clone();
    let nats_sender = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let client = async_nats::ConnectOptions::new()
                .request_timeout(Some(Duration::from_secs(5)))
                .connect(nats_urls.split(',').collect::<Vec<_>>())
                .await
                .unwrap();
            for m in 0..NATS_MSGS {
                let table = TABLES[m as usize % TABLES.len()];
                let first = 1_000_000 + m * NATS_BATCH;
                let body = Bytes::from(ndjson(first..first + NATS_BATCH, "nats"));
                let mut headers = auth(ADMIN_KEY);
                headers.insert("Idempotency-Key", format!("nats-{m}").as_str());
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    let reply = client
                        .request_with_headers(
                            format!("alluvium.ingest.default.{table}"),
                            headers.clone(),
                            body.clone(),
                        )
                        .await;
                    if let Ok(reply) = reply {
                        let status = reply
                            .headers
                            .as_ref()
                            .and_then(|h| h.get("Alluvium-Status"))
                            .map(|v| v.as_str().to_string());
                        if status.as_deref() == Some("200") {
                            break;
                        }
                        assert_ne!(status.as_deref(), Some("409"), "message {m} refused");
                    }
                    assert!(Instant::now() < deadline, "message {m} not acknowledged");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                nats_sent.fetch_add(NATS_BATCH as usize, Ordering::Relaxed);
            }
        });
    });

    let total = (HTTP_BATCHES * HTTP_BATCH * TABLES.len() as i64 + NATS_MSGS * NATS_BATCH) as usize;
    let reached = |n: usize| {
        wait_for(Duration::from_secs(300), || {
            (sent.load(Ordering::Relaxed) >= n).then_some(())
        })
        .unwrap_or_else(|| panic!("fewer than {n} events acknowledged in 300 s"))
    };
    reached(total / 4);
    let killed_at = Instant::now();
    proc1.kill9();
    eprintln!(
        "killed processing node proc1 after {} events",
        sent.load(Ordering::Relaxed)
    );
    reached(total / 2);
    ingest1.kill9();
    eprintln!(
        "killed ingest node ingest1 after {} events",
        sent.load(Ordering::Relaxed)
    );
    reached(3 * total / 4);
    nats.servers[2].stop();
    eprintln!(
        "killed NATS server n2 after {} events",
        sent.load(Ordering::Relaxed)
    );
    for s in senders {
        s.join().unwrap();
    }
    nats_sender.join().unwrap();
    let elapsed = started.elapsed();
    eprintln!(
        "{total} events acknowledged in {:.1} s ({:.0} events/s) with the kills",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );

    // proc2 owns every shard now; what it holds is flushed, then each event is stored once.
    let done = wait_for(Duration::from_secs(120), || {
        let mut n = 0;
        for t in TABLES {
            let _ = try_send(
                "POST",
                &proc2.url(&format!("/v1/tables/{t}/flush")),
                Some(ADMIN_KEY),
                None,
                None,
                &[],
            );
            n += stored_ids(&proc2, t).len();
        }
        eprintln!("stored {n} of {total}");
        (n >= total).then_some(n)
    });
    let stored = done.unwrap_or_else(|| panic!("not every acknowledged event was stored"));
    eprintln!(
        "takeover and catch-up done {:.1} s after the processing node was killed",
        killed_at.elapsed().as_secs_f64()
    );
    assert_eq!(stored, total, "events stored twice");
    for t in TABLES {
        let ids = stored_ids(&proc2, t);
        let unique: HashSet<i64> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "duplicates in {t}");
        let expected: HashSet<i64> = (0..HTTP_BATCHES * HTTP_BATCH)
            .chain(
                (0..NATS_MSGS)
                    .filter(|m| TABLES[*m as usize % 4] == t)
                    .flat_map(|m| {
                        let first = 1_000_000 + m * NATS_BATCH;
                        first..first + NATS_BATCH
                    }),
            )
            .collect();
        assert_eq!(
            unique, expected,
            "table {t} differs from what was acknowledged"
        );
    }

    // Every flush was announced once: the flushed events add up to the stored rows.
    let url = nats.servers[0].url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rows_per_table = total as u64 / TABLES.len() as u64;
    let announced = wait_for(Duration::from_secs(60), || {
        let (ids, rows) = rt.block_on(commit_events(&url))?;
        let all = rows.values().sum::<u64>();
        (all >= total as u64).then_some((ids, rows))
    });
    let (ids, rows) = announced.expect("commit events for every flush");
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "a commit event was published twice"
    );
    for t in TABLES {
        assert_eq!(rows[t], rows_per_table, "flushed rows announced for {t}");
    }
    drop(ingest2);
}

/// A processing node paused (SIGSTOP) in the middle of a flush, past its lease, while another
/// node takes its shard over: when it resumes, its commit is refused by the catalog (the
/// written files are removed), and no row is lost or doubled.
#[test]
fn a_stale_owner_cannot_commit() {
    // Rows stay in memtables until the test asks.
    let (dir, _moto, _nats, env) = small_cluster();
    let ingest = node(dir.path(), "ingest", "ingest", &env);
    create_table(&ingest, ADMIN_KEY, "t", &schema());
    // The stale node's first flush stops for 3 s between writing its files and committing.
    let mut stale_env = env.clone();
    stale_env.push((
        "ALLUVIUM_FAILPOINTS".into(),
        "flush.after_write=sleep(3000)@1".into(),
    ));
    let stale = node(dir.path(), "stale", "processing", &stale_env);
    let send = |range: std::ops::Range<i64>, key: &str| {
        let r = try_send(
            "POST",
            &ingest.url("/v1/tables/t/events"),
            Some(ADMIN_KEY),
            Some("application/x-ndjson"),
            Some(&ndjson(range, "x")),
            &[("Idempotency-Key", key)],
        )
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    };
    send(0..100, "a");
    // The stale node holds the rows in its memtable (it owns the only shard).
    wait_for(Duration::from_secs(20), || {
        (stored_ids(&stale, "t").len() == 100).then_some(())
    })
    .expect("the owner read the log");
    let stale_url = stale.url("/v1/tables/t/flush");
    let flushing =
        std::thread::spawn(move || try_send("POST", &stale_url, Some(ADMIN_KEY), None, None, &[]));
    // Inside the failpoint's pause: files written, commit not yet made. Freeze the process.
    std::thread::sleep(Duration::from_millis(1000));
    let pid = stale.pid().to_string();
    let signal = |sig: &str| {
        assert!(
            std::process::Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    signal("-STOP");
    let paused = Instant::now();
    let fresh = node(dir.path(), "fresh", "processing", &env);
    send(100..200, "b");
    // The fresh node takes the shard over once the lease lapsed, rebuilds its memtable from
    // the log and commits everything.
    let took = wait_for(Duration::from_secs(30), || {
        flush(&fresh, ADMIN_KEY, "t");
        (stored_ids(&fresh, "t").len() == 200).then_some(paused.elapsed())
    })
    .expect("the fresh node took the shard over");
    eprintln!(
        "shard taken over {:.1} s after its owner froze (lease ttl 3 s)",
        took.as_secs_f64()
    );
    signal("-CONT");
    // The stale node's flush resumes with its old epoch and commits: the catalog refuses it.
    let r = flushing.join().unwrap().unwrap();
    assert_eq!(
        r.status, 503,
        "a stale owner's flush was accepted: {}",
        r.body
    );
    assert_eq!(r.json()["code"], "not_shard_owner", "{}", r.body);
    let refused = wait_for(Duration::from_secs(10), || {
        let n = metric(&stale, "alluvium_commits_fenced_total");
        (n >= 1).then_some(n)
    });
    assert_eq!(
        refused,
        Some(1),
        "the catalog did not refuse the stale commit"
    );
    flush(&fresh, ADMIN_KEY, "t");
    std::thread::sleep(Duration::from_millis(500));
    let ids = stored_ids(&fresh, "t");
    let unique: HashSet<i64> = ids.iter().copied().collect();
    assert_eq!(ids.len(), 200, "rows lost or doubled");
    assert_eq!(unique, (0..200).collect::<HashSet<_>>());
    assert_eq!(metric(&fresh, "alluvium_shards_owned"), 1);
}

/// Runs `alluvium serve` with `args` and settings; returns (exit success, stderr).
fn serve_fails(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = std::process::Command::new(binary());
    for (k, _) in std::env::vars() {
        if k.starts_with("ALLUVIUM_") {
            cmd.env_remove(k);
        }
    }
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("ALLUVIUM_BOOTSTRAP_KEY", ADMIN_KEY);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_cluster_settings_refuse_to_start_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let dead = format!("nats://127.0.0.1:{}", free_port());
    let cases: [(Vec<&str>, &str); 5] = [
        (vec!["--role", "ingester"], "unknown role \"ingester\""),
        (vec!["--role", "all,ingest"], "cannot be combined"),
        (
            vec!["--role", "processing", "--store", "file:///tmp/x"],
            "--nats-url",
        ),
        (vec!["--role", "ingest", "--nats-url", &dead], "--store"),
        (
            vec![
                "--role",
                "ingest",
                "--nats-url",
                &dead,
                "--store",
                "ftp://x/y",
            ],
            "[store] url",
        ),
    ];
    for (args, expected) in &cases {
        let (ok, stderr) = serve_fails(&data, args, &[]);
        assert!(!ok, "{args:?} started");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!data.exists(), "{args:?} wrote {}", data.display());
    }

    // Unreachable NATS, then unreachable S3: refused within a bound, naming the setting.
    let store = dir.path().join("lake");
    let store_url = format!("file://{}", store.display());
    let (ok, stderr) = serve_fails(
        &data,
        &[
            "--role",
            "processing",
            "--nats-url",
            &dead,
            "--store",
            &store_url,
        ],
        &[],
    );
    assert!(!ok);
    assert!(stderr.contains("[nats] url"), "{stderr}");
    assert!(
        !data.exists(),
        "an unreachable NATS wrote the data directory"
    );

    let started = Instant::now();
    let dead_s3 = format!("http://127.0.0.1:{}", free_port());
    let (ok, stderr) = serve_fails(
        &data,
        &[
            "--role",
            "processing",
            "--nats-url",
            &dead,
            "--store",
            "s3://lake/x",
        ],
        &[
            ("ALLUVIUM_STORE__ENDPOINT", &dead_s3),
            ("ALLUVIUM_STORE__ALLOW_HTTP", "true"),
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains(&dead_s3) && stderr.contains("lake"),
        "{stderr}"
    );
    assert!(!data.exists(), "an unreachable S3 wrote the data directory");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

/// A query on a node that does not own the shard reads the committed files and the owner's
/// memtable rows; with the owner gone it answers the committed rows and says so; after a
/// takeover the new owner's rows (rebuilt from the log) are read again.
#[test]
fn queries_on_any_node_include_the_owners_fresh_rows() {
    let (dir, _moto, _nats, env) = small_cluster();
    let ingest = node(dir.path(), "ingest", "ingest", &env);
    create_table(&ingest, ADMIN_KEY, "t", &schema());
    let mut owner = node(dir.path(), "owner", "processing", &env);
    let post = |range: std::ops::Range<i64>| {
        let r = try_send(
            "POST",
            &ingest.url("/v1/tables/t/events"),
            Some(ADMIN_KEY),
            Some("application/x-ndjson"),
            Some(&ndjson(range, "x")),
            &[],
        )
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    };
    let read = |server: &Server| {
        let r = send(
            "POST",
            &server.url("/v1/tables/t/query"),
            Some(ADMIN_KEY),
            Some("application/json"),
            Some(b"{\"columns\":[\"id\"]}"),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let fresh = r
            .header("alluvium-fresh-rows")
            .unwrap_or_default()
            .to_string();
        let mut ids: Vec<i64> = match r.json() {
            Value::Array(rows) => rows.iter().map(|r| r["id"].as_i64().unwrap()).collect(),
            other => panic!("{other}"),
        };
        ids.sort();
        (ids, fresh)
    };
    post(0..30);
    wait_for(Duration::from_secs(20), || {
        (read(&owner).0.len() == 30).then_some(())
    })
    .expect("the owner read the log");
    flush(&owner, ADMIN_KEY, "t");
    post(30..50);
    // 30 rows committed, 20 only in the owner's memtable: the ingest node sees all 50.
    let seen = wait_for(Duration::from_secs(20), || {
        let (ids, fresh) = read(&ingest);
        (ids.len() == 50).then_some((ids, fresh))
    });
    let (ids, fresh) = seen.expect("the ingest node read the owner's rows");
    assert_eq!(ids, (0..50).collect::<Vec<_>>());
    assert_eq!(fresh, "owner=owner");
    assert_eq!(read(&owner).1, "local");

    owner.kill9();
    let (ids, fresh) = read(&ingest);
    assert_eq!(fresh, "committed-only", "{ids:?}");
    assert_eq!(ids, (0..30).collect::<Vec<_>>());

    let _successor = node(dir.path(), "successor", "processing", &env);
    let seen = wait_for(Duration::from_secs(20), || {
        let (ids, fresh) = read(&ingest);
        (fresh == "owner=successor" && ids.len() == 50).then_some(ids)
    });
    assert_eq!(seen, Some((0..50).collect::<Vec<_>>()));
}
