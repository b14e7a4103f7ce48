//! SIGTERM stops a node gracefully: the listener closes at once, a request in flight is still
//! answered, every acknowledged event survives the restart exactly once, the process exits 0
//! within its bound, and with `flush_on_exit` every row is in Parquet when it has exited.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// `server.shutdown_timeout` in these tests; the bound on the exit is this plus the WAL drain.
const GRACE: &str = "5s";
/// What the tests allow the exit to take after SIGTERM (the grace plus a wide margin).
const EXIT_BOUND: Duration = Duration::from_secs(20);

fn create(server: &Server) {
    create_table(
        server,
        ADMIN_KEY,
        "t",
        &json!({"fields": [
            {"name": "id", "type": "string", "nullable": false},
            {"name": "n", "type": "int64"}
        ]}),
    );
}

fn host_port(server: &Server) -> String {
    server.base.trim_start_matches("http://").to_string()
}

/// Rows in the committed Parquet files of table `t`.
fn rows_in_files(server: &Server) -> u64 {
    let r = send(
        "GET",
        &server.url("/v1/tables/t/files"),
        Some(ADMIN_KEY),
        None,
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rows"].as_u64().unwrap())
        .sum()
}

#[test]
fn a_request_in_flight_at_sigterm_is_answered_and_the_node_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("ALLUVIUM_SERVER__SHUTDOWN_TIMEOUT", GRACE)];
    let mut server = Server::start(dir.path(), &env);
    create(&server);

    // A request whose body is half sent when the signal arrives.
    let body = json!([{"id": "in-flight", "n": 1}]).to_string();
    let (head, tail) = body.as_bytes().split_at(body.len() / 2);
    let mut conn = TcpStream::connect(host_port(&server)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        conn,
        "POST /v1/tables/t/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    conn.write_all(head).unwrap();
    conn.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let signalled = Instant::now();
    server.terminate();
    // New connections are refused once the listener is closed.
    let refused = wait_for(Duration::from_secs(5), || {
        TcpStream::connect(host_port(&server))
            .is_err()
            .then_some(())
    });
    assert!(
        refused.is_some(),
        "the server still accepts connections after SIGTERM"
    );
    assert!(
        !server.exited(),
        "the server exited with a request in flight"
    );

    conn.write_all(tail).unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the request in flight got: {answer}"
    );
    assert!(answer.contains("\"accepted\":1"), "{answer}");

    let status = server.wait_exit(EXIT_BOUND).expect("no exit after SIGTERM");
    let took = signalled.elapsed();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    eprintln!("exited {status} {took:?} after SIGTERM");

    let server = Server::start(dir.path(), &env);
    let rows = query_all(&server, ADMIN_KEY, "t", &json!({}));
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["id"], "in-flight");
}

/// What the producers learned: ids acknowledged, ids whose fate is unknown.
#[derive(Default)]
struct Oracle {
    acked: HashSet<String>,
    unknown: HashSet<String>,
}

fn produce(base: String, producer: usize, stop: Arc<AtomicBool>, oracle: Arc<Mutex<Oracle>>) {
    let mut batch = 0;
    while !stop.load(Ordering::Relaxed) {
        let ids: Vec<String> = (0..20)
            .map(|i| format!("p{producer}-b{batch}-{i}"))
            .collect();
        batch += 1;
        let rows: Vec<Value> = ids.iter().map(|id| json!({"id": id, "n": 1})).collect();
        let res = try_send(
            "POST",
            &format!("{base}/v1/tables/t/events"),
            Some(ADMIN_KEY),
            Some("application/json"),
            Some(Value::Array(rows).to_string().as_bytes()),
            &[],
        );
        let mut o = oracle.lock().unwrap();
        match res {
            Ok(r) if r.status == 200 => o.acked.extend(ids),
            Ok(r) => panic!("unexpected answer during shutdown: {r:?}"),
            // Refused (the listener is closed) or cut: the batch may or may not be stored.
            Err(_) => {
                o.unknown.extend(ids);
                return;
            }
        }
    }
}

fn sigterm_during_ingest(flush_on_exit: bool) {
    let dir = tempfile::tempdir().unwrap();
    let flush = if flush_on_exit { "true" } else { "false" };
    let env = [
        ("ALLUVIUM_SERVER__SHUTDOWN_TIMEOUT", GRACE),
        ("ALLUVIUM_SERVER__FLUSH_ON_EXIT", flush),
        // No flush by size or age: only the flush on exit writes Parquet.
        ("ALLUVIUM_MEMTABLE__FREEZE_SIZE", "1GiB"),
        ("ALLUVIUM_MEMTABLE__FREEZE_AGE", "1h"),
    ];
    let mut server = Server::start(dir.path(), &env);
    create(&server);
    let stop = Arc::new(AtomicBool::new(false));
    let oracle = Arc::new(Mutex::new(Oracle::default()));
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let (base, stop, oracle) = (server.base.clone(), stop.clone(), oracle.clone());
            std::thread::spawn(move || produce(base, p, stop, oracle))
        })
        .collect();
    // Ingest is under way before the signal.
    wait_for(Duration::from_secs(30), || {
        (oracle.lock().unwrap().acked.len() >= 2000).then_some(())
    })
    .expect("the producers did not get going");
    let signalled = Instant::now();
    server.terminate();
    let status = server.wait_exit(EXIT_BOUND).expect("no exit after SIGTERM");
    let took = signalled.elapsed();
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.join().unwrap();
    }
    assert!(status.success(), "exit status after SIGTERM: {status}");

    let o = oracle.lock().unwrap();
    let server = Server::start(dir.path(), &env);
    let in_files = rows_in_files(&server);
    let rows = query_all(&server, ADMIN_KEY, "t", &json!({"columns": ["id"]}));
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for r in &rows {
        *counts.entry(r["id"].as_str().unwrap()).or_default() += 1;
    }
    eprintln!(
        "flush_on_exit={flush}: exit {status} {took:?} after SIGTERM; {} acknowledged, {} \
         unknown, {} stored, {in_files} in Parquet",
        o.acked.len(),
        o.unknown.len(),
        rows.len()
    );
    let lost: Vec<_> = o
        .acked
        .iter()
        .filter(|id| !counts.contains_key(id.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged ids lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        doubled.is_empty(),
        "ids stored twice: {:?}",
        &doubled[..doubled.len().min(5)]
    );
    let unexpected: Vec<_> = counts
        .keys()
        .filter(|id| !o.acked.contains(**id) && !o.unknown.contains(**id))
        .collect();
    assert!(unexpected.is_empty(), "ids never sent: {unexpected:?}");
    if flush_on_exit {
        // Everything stored was written to Parquet before the exit: the restart replayed nothing.
        assert_eq!(in_files, rows.len() as u64);
    } else {
        assert_eq!(in_files, 0, "nothing was flushed, the log holds every row");
    }
}

#[test]
fn sigterm_during_ingest_keeps_every_acknowledged_event_once() {
    sigterm_during_ingest(false);
}

#[test]
fn flush_on_exit_writes_every_row_to_parquet_before_exiting() {
    sigterm_during_ingest(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_the_nats_requests_it_took() {
    use common::nats::{Lake, auth};
    let lake = Lake::new();
    let env = [("ALLUVIUM_SERVER__SHUTDOWN_TIMEOUT", GRACE)];
    let server = lake.serve(&env);
    create(&server);
    let client = async_nats::connect(lake.nats.url()).await.unwrap();
    let oracle = Arc::new(Mutex::new(Oracle::default()));
    let answered_after_signal = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let signalled = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..8)
        .map(|p| {
            let (client, oracle) = (client.clone(), oracle.clone());
            let (signalled, answered_after_signal) =
                (signalled.clone(), answered_after_signal.clone());
            tokio::spawn(async move {
                for batch in 0.. {
                    let ids: Vec<String> =
                        (0..20).map(|i| format!("nats-p{p}-b{batch}-{i}")).collect();
                    let body: String = ids
                        .iter()
                        .map(|id| format!("{{\"id\":\"{id}\",\"n\":1}}\n"))
                        .collect();
                    let after_signal = signalled.load(Ordering::SeqCst);
                    let reply = tokio::time::timeout(
                        Duration::from_secs(10),
                        client.request_with_headers(
                            "alluvium.ingest.default.t",
                            auth(ADMIN_KEY),
                            body.into(),
                        ),
                    )
                    .await;
                    let status = match &reply {
                        Ok(Ok(m)) => m
                            .headers
                            .as_ref()
                            .and_then(|h| h.get("Alluvium-Status"))
                            .map(|v| v.as_str().to_string()),
                        _ => None,
                    };
                    let mut o = oracle.lock().unwrap();
                    match status.as_deref() {
                        Some("200") => {
                            o.acked.extend(ids);
                            if after_signal {
                                answered_after_signal.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        Some(other) => panic!("answer {other} during shutdown: {reply:?}"),
                        // No responders once unsubscribed, or no answer: fate unknown.
                        None => {
                            o.unknown.extend(ids);
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    let o = oracle.clone();
    let started = tokio::task::spawn_blocking(move || {
        wait_for(Duration::from_secs(30), || {
            (o.lock().unwrap().acked.len() >= 2000).then_some(())
        })
    })
    .await
    .unwrap();
    started.expect("the NATS producers did not get going");
    signalled.store(true, Ordering::SeqCst);
    let since = Instant::now();
    server.terminate();
    let mut server = server;
    let (status, server) = tokio::task::spawn_blocking(move || {
        let status = server.wait_exit(EXIT_BOUND);
        (status, server)
    })
    .await
    .unwrap();
    let status = status.expect("no exit after SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let took = since.elapsed();
    drop(server);
    for p in producers {
        p.await.unwrap();
    }

    let server = lake.serve(&env);
    let rows = tokio::task::spawn_blocking(move || {
        query_all(&server, ADMIN_KEY, "t", &json!({"columns": ["id"]}))
    })
    .await
    .unwrap();
    let o = oracle.lock().unwrap();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for r in &rows {
        *counts.entry(r["id"].as_str().unwrap()).or_default() += 1;
    }
    eprintln!(
        "NATS: exit {status} {took:?} after SIGTERM; {} acknowledged ({} requests answered \
         after the signal), {} unknown, {} stored",
        o.acked.len(),
        answered_after_signal.load(Ordering::SeqCst),
        o.unknown.len(),
        rows.len()
    );
    let lost = o
        .acked
        .iter()
        .filter(|id| !counts.contains_key(id.as_str()))
        .count();
    assert_eq!(lost, 0, "acknowledged ids lost");
    assert!(counts.values().all(|n| *n == 1), "ids stored twice");
    assert!(
        counts
            .keys()
            .all(|id| o.acked.contains(*id) || o.unknown.contains(*id)),
        "ids never sent"
    );
}
