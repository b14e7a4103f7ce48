//! NATS end to end, against real nats-server processes: ingest by request/reply with the same
//! answers and errors as HTTP, tenants confined to their subjects, hostile subjects refused,
//! idempotency across restarts, rejects on their stream, and commit events on JetStream.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use common::nats::NatsServer;
use common::*;
use futures::StreamExt;
use serde_json::{Value, json};

fn start_with_nats(dir: &std::path::Path, nats: &NatsServer, extra: &[(&str, &str)]) -> Server {
    let url = nats.url();
    let mut env = vec![("ALLUVIUM_NATS__URL", url.as_str())];
    env.extend_from_slice(extra);
    Server::start(dir, &env)
}

fn auth(key: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("Authorization", format!("Bearer {key}").as_str());
    h
}

/// Sends a request and returns (Alluvium-Status, body JSON).
async fn request(
    client: &async_nats::Client,
    subject: &str,
    headers: HeaderMap,
    body: &str,
) -> (u16, Value) {
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        client.request_with_headers(subject.to_string(), headers, Bytes::from(body.to_string())),
    )
    .await
    .expect("no reply within 10 s")
    .expect("request failed");
    let status = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Alluvium-Status"))
        .map(|v| v.as_str().parse().unwrap())
        .expect("reply without Alluvium-Status");
    (status, serde_json::from_slice(&reply.payload).unwrap())
}

/// The admin credential with an `Alluvium-Durability` header.
fn durability(level: &str) -> HeaderMap {
    let mut h = auth(ADMIN_KEY);
    h.insert("Alluvium-Durability", level);
    h
}

fn count(server: &Server, table: &str) -> usize {
    query_all(server, ADMIN_KEY, table, &json!({})).len()
}

fn new_key(server: &Server, tenant: &str, scopes: Value) -> String {
    let r = send(
        "POST",
        &server.url("/v1/keys"),
        Some(ADMIN_KEY),
        Some("application/json"),
        Some(
            json!({"tenant": tenant, "scopes": scopes})
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!(r.status, 201, "{r:?}");
    r.json()["key"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_by_request_reply_with_the_errors_of_http() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats"));
    let server = start_with_nats(&dir.path().join("data"), &nats, &[]);
    create_table(
        &server,
        ADMIN_KEY,
        "clicks",
        &json!({"fields": [{"name": "n", "type": "int64"}, {"name": "page", "type": "utf8", "nullable": true}]}),
    );
    let client = async_nats::connect(nats.url()).await.unwrap();
    let subject = "alluvium.ingest.default.clicks";

    // NDJSON, an array and a single object: each acknowledged like HTTP.
    let (status, ack) = request(
        &client,
        subject,
        auth(ADMIN_KEY),
        "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n",
    )
    .await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(ack["accepted"], 3);
    assert_eq!(ack["durability"], "wal");
    let (status, ack) = request(
        &client,
        subject,
        auth(ADMIN_KEY),
        "[{\"n\":4},{\"n\":5,\"page\":\"/a\"}]",
    )
    .await;
    assert_eq!((status, ack["accepted"].as_u64()), (200, Some(2)), "{ack}");
    let mut bare = HeaderMap::new();
    bare.insert("Authorization", ADMIN_KEY);
    let (status, ack) = request(&client, subject, bare, "{\n  \"n\": 6\n}").await;
    assert_eq!((status, ack["accepted"].as_u64()), (200, Some(1)), "{ack}");
    assert_eq!(count(&server, "clicks"), 6);

    // The same problems as HTTP, with the same codes; nothing is stored.
    let cases: Vec<(HeaderMap, &str, &str, u16, &str)> = vec![
        (
            HeaderMap::new(),
            subject,
            "{\"n\":7}",
            401,
            "unauthenticated",
        ),
        (
            auth("not-a-key"),
            subject,
            "{\"n\":7}",
            401,
            "invalid_api_key",
        ),
        (
            auth(ADMIN_KEY),
            subject,
            "{\"n\":\"seven\"}",
            400,
            "type_mismatch",
        ),
        (auth(ADMIN_KEY), subject, "{\"n\":7", 400, "malformed_json"),
        (
            auth(ADMIN_KEY),
            subject,
            "[{\"n\":8},{\"n\":\"x\"}]",
            400,
            "type_mismatch",
        ),
        (
            auth(ADMIN_KEY),
            "alluvium.ingest.default.nope",
            "{\"n\":7}",
            404,
            "table_not_found",
        ),
        (
            auth(ADMIN_KEY),
            "alluvium.ingest.default.Clicks",
            "{\"n\":7}",
            400,
            "invalid_name",
        ),
        (
            auth(ADMIN_KEY),
            "alluvium.ingest.default.clicks.extra",
            "{\"n\":7}",
            400,
            "invalid_subject",
        ),
    ];
    for (headers, subj, body, want_status, want_code) in cases {
        let (status, problem) = request(&client, subj, headers.clone(), body).await;
        assert_eq!(status, want_status, "{subj} {body}: {problem}");
        assert_eq!(problem["status"], want_status, "{problem}");
        assert_eq!(problem["code"], want_code, "{subj} {body}: {problem}");
        // The same batch over HTTP gets the same problem.
        // (Where HTTP can say the same thing: a plain table name, no NATS-only header.)
        if let Some(table) = subj
            .strip_prefix("alluvium.ingest.default.")
            .filter(|t| t.chars().all(|c| c.is_ascii_alphanumeric()))
            .filter(|_| headers.get("Alluvium-Durability").is_none())
        {
            let key = headers
                .get("Authorization")
                .map(|v| v.as_str().trim_start_matches("Bearer ").to_string());
            let r = send(
                "POST",
                &server.url(&format!("/v1/tables/{table}/events")),
                key.as_deref(),
                Some("application/json"),
                Some(body.as_bytes()),
            );
            assert_eq!(r.status, want_status, "HTTP {table} {body}: {r:?}");
            assert_eq!(r.json(), problem, "HTTP and NATS answer alike");
        }
    }
    assert_eq!(
        count(&server, "clicks"),
        6,
        "a refused batch stored nothing"
    );
    let (status, ack) = request(&client, subject, durability("received"), "{\"n\":7}").await;
    assert_eq!(
        (status, ack["durability"].as_str()),
        (200, Some("received")),
        "{ack}"
    );
    assert!(
        wait_for(Duration::from_secs(5), || (count(&server, "clicks") == 7)
            .then_some(()))
        .is_some()
    );

    // A tenant's credential cannot write to another tenant's subject.
    let acme = new_key(&server, "acme", json!(["ingest", "query", "admin"]));
    let (status, problem) = request(&client, subject, auth(&acme), "{\"n\":9}").await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (403, Some("tenant_mismatch")),
        "{problem}"
    );
    let (status, problem) = request(
        &client,
        "alluvium.ingest.acme.clicks",
        auth(&acme),
        "{\"n\":9}",
    )
    .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (404, Some("table_not_found")),
        "{problem}"
    );
    assert_eq!(count(&server, "clicks"), 7);

    // Retries with the same message id are stored once and answered alike.
    let mut h = auth(ADMIN_KEY);
    h.insert("Nats-Msg-Id", "batch-17");
    let (_, first) = request(&client, subject, h.clone(), "{\"n\":10}\n{\"n\":11}").await;
    let (_, again) = request(&client, subject, h, "{\"n\":10}\n{\"n\":11}").await;
    assert_eq!(first["first_seq"], again["first_seq"]);
    assert_eq!(again["duplicate"], true, "{again}");
    assert!(first.get("duplicate").is_none(), "{first}");
    // The same key for another batch is refused, not answered as a duplicate.
    let mut h = auth(ADMIN_KEY);
    h.insert("Nats-Msg-Id", "batch-17");
    let (status, problem) = request(&client, subject, h, "{\"n\":99}").await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (409, Some("idempotency_key_reused")),
        "{problem}"
    );
    let mut h = auth(ADMIN_KEY);
    h.insert("Idempotency-Key", "k\u{1}");
    let (status, problem) = request(&client, subject, h, "{\"n\":12}").await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (400, Some("invalid_idempotency_key"))
    );
    assert_eq!(count(&server, "clicks"), 9);

    // Fire-and-forget publishes are ingested too (no reply to send).
    client
        .publish_with_headers(subject, auth(ADMIN_KEY), Bytes::from_static(b"{\"n\":13}"))
        .await
        .unwrap();
    client.flush().await.unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || (count(&server, "clicks") == 10)
            .then_some(()))
        .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejects_reach_their_stream_with_reason_and_payload() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats"));
    let server = start_with_nats(&dir.path().join("data"), &nats, &[]);
    create_table(
        &server,
        ADMIN_KEY,
        "t",
        &json!({"fields": [{"name": "n", "type": "int64"}]}),
    );
    let client = async_nats::connect(nats.url()).await.unwrap();
    let bad = "{\"n\":1}\n{\"n\":\"two\"}\n";
    let (status, _) = request(&client, "alluvium.ingest.default.t", auth(ADMIN_KEY), bad).await;
    assert_eq!(status, 400);
    // HTTP rejects go to the same stream.
    let r = ingest(&server, ADMIN_KEY, "t", &json!({"m": 1}));
    assert_eq!(r.status, 400);

    let js = jetstream::new(client.clone());
    let stream = js.get_stream("ALLUVIUM_REJECTS").await.unwrap();
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: "alluvium.rejects.default.t".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap().take(2);
    let mut got = Vec::new();
    while let Some(m) = tokio::time::timeout(Duration::from_secs(10), messages.next())
        .await
        .expect("rejects did not arrive")
    {
        let m = m.unwrap();
        got.push(serde_json::from_slice::<Value>(&m.payload).unwrap());
        m.ack().await.unwrap();
    }
    assert_eq!(got[0]["code"], "type_mismatch", "{}", got[0]);
    assert_eq!(got[0]["source"], "nats");
    assert_eq!(got[0]["format"], "ndjson");
    assert_eq!(got[0]["payload"], bad);
    assert!(
        got[0]["reason"].as_str().unwrap().contains("two"),
        "{}",
        got[0]
    );
    assert_eq!(got[1]["code"], "unknown_field", "{}", got[1]);
    assert_eq!(got[1]["source"], "http");
    assert_eq!(got[1]["payload"], "{\"m\":1}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_events_on_jetstream_are_replayable_and_deduplicated() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats"));
    let data = dir.path().join("data");
    let mut server = start_with_nats(&data, &nats, &[]);
    create_table(
        &server,
        ADMIN_KEY,
        "t",
        &json!({"fields": [{"name": "n", "type": "int64"}]}),
    );
    for round in 0..3 {
        assert_eq!(
            ingest(
                &server,
                ADMIN_KEY,
                "t",
                &json!([{"n": round}, {"n": round + 10}])
            )
            .status,
            200
        );
        flush(&server, ADMIN_KEY, "t");
    }
    let r = send(
        "POST",
        &server.url("/v1/tables/t/compact"),
        Some(ADMIN_KEY),
        None,
        None,
    );
    assert_eq!(r.status, 200, "{r:?}");

    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    let read_all = |want: usize| {
        let js = js.clone();
        async move {
            let stream = js.get_stream("ALLUVIUM_EVENTS").await.unwrap();
            let consumer = stream
                .create_consumer(consumer::pull::Config {
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..Default::default()
                })
                .await
                .unwrap();
            let mut out = Vec::new();
            let mut messages = consumer.messages().await.unwrap();
            while out.len() < want {
                let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
                    .await
                    .unwrap_or_else(|_| panic!("only {} of {want} events arrived", out.len()))
                    .unwrap()
                    .unwrap();
                let id = m
                    .headers
                    .as_ref()
                    .unwrap()
                    .get("Nats-Msg-Id")
                    .unwrap()
                    .to_string();
                let event: Value = serde_json::from_slice(&m.payload).unwrap();
                let lake = event["lake_id"].as_str().unwrap();
                assert_eq!(lake.len(), 32, "{event}");
                assert_eq!(id, format!("{lake}:{}", event["id"].as_str().unwrap()));
                out.push((m.subject.to_string(), event));
            }
            out
        }
    };
    // create (schema) + 3 flushes + 1 compaction.
    let events = read_all(5).await;
    let subjects: Vec<&str> = events.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        subjects,
        [
            "alluvium.events.default.t.schema",
            "alluvium.events.default.t.flushed",
            "alluvium.events.default.t.flushed",
            "alluvium.events.default.t.flushed",
            "alluvium.events.default.t.compacted",
        ]
    );
    let flushed = &events[1].1;
    assert_eq!(flushed["rows_added"], 2);
    assert_eq!(flushed["files_added"].as_array().unwrap().len(), 1);
    let file = &flushed["files_added"][0];
    assert!(data.join(file["path"].as_str().unwrap()).exists(), "{file}");
    assert_eq!(
        (file["min_seq"].as_u64(), file["max_seq"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(flushed["committed_seq"], 2);
    let compacted = &events[4].1;
    assert_eq!(compacted["files_removed"].as_array().unwrap().len(), 3);
    assert_eq!(compacted["rows_removed"], 6);
    assert_eq!(compacted["rows_added"], 6);
    assert!(
        compacted["files_removed"][0]["size_bytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    let versions: Vec<u64> = events
        .iter()
        .map(|(_, e)| e["catalog_version"].as_u64().unwrap())
        .collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");

    // A crash that sets the cursor back republishes everything; JetStream drops the copies.
    server.kill9();
    let cursor = data.join("notify/nats.cursor");
    let text = std::fs::read_to_string(&cursor).unwrap();
    let (lake, id) = text.trim().split_once(' ').unwrap();
    assert_eq!(id, events[4].1["id"]);
    assert_eq!(lake, events[4].1["lake_id"]);
    std::fs::write(&cursor, format!("{lake} 0\n")).unwrap();
    let server = start_with_nats(&data, &nats, &[]);
    assert_eq!(
        ingest(&server, ADMIN_KEY, "t", &json!({"n": 99})).status,
        200
    );
    flush(&server, ADMIN_KEY, "t");
    let events = read_all(6).await;
    assert_eq!(events[5].0, "alluvium.events.default.t.flushed");
    let stream_len = wait_for(Duration::from_secs(10), || {
        let js = js.clone();
        let n = futures::executor::block_on(async move {
            js.get_stream("ALLUVIUM_EVENTS")
                .await
                .unwrap()
                .info()
                .await
                .unwrap()
                .state
                .messages
        });
        (n == 6).then_some(n)
    });
    assert_eq!(stream_len, Some(6), "events were stored twice");
    assert_eq!(metric(&server, "alluvium_nats_events_duplicate_total"), 5);

    // Without a cursor (a new disk, another node), publishing resumes after the lake's newest
    // event in the stream: nothing is published again, new events follow.
    drop(server);
    std::fs::remove_file(&cursor).unwrap();
    let server = start_with_nats(&data, &nats, &[]);
    assert_eq!(
        ingest(&server, ADMIN_KEY, "t", &json!({"n": 100})).status,
        200
    );
    flush(&server, ADMIN_KEY, "t");
    let events = read_all(7).await;
    assert_eq!(events[6].0, "alluvium.events.default.t.flushed");
    assert!(
        events[6].1["catalog_version"].as_u64() > events[5].1["catalog_version"].as_u64(),
        "{:?}",
        events[6]
    );
    let info = js
        .get_stream("ALLUVIUM_EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .clone();
    assert_eq!(info.messages, 7);
    assert_eq!(metric(&server, "alluvium_nats_events_published_total"), 1);
    assert_eq!(metric(&server, "alluvium_nats_events_duplicate_total"), 0);
}

/// The value of a metric without labels.
fn metric(server: &Server, name: &str) -> u64 {
    let body = get(server, "/metrics").body;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_survive_restarts_and_wal_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats"));
    let data = dir.path().join("data");
    // Small segments, so flushed events' segments are deleted (and their keys must live on in
    // the snapshot).
    let env = [("ALLUVIUM_WAL__SEGMENT_SIZE", "4KiB")];
    let mut server = start_with_nats(&data, &nats, &env);
    create_table(
        &server,
        ADMIN_KEY,
        "t",
        &json!({"fields": [{"name": "n", "type": "int64"}, {"name": "pad", "type": "utf8"}]}),
    );
    let client = async_nats::connect(nats.url()).await.unwrap();
    let subject = "alluvium.ingest.default.t";
    let pad = "x".repeat(1000);
    let mut firsts = Vec::new();
    for i in 0..20 {
        let mut h = auth(ADMIN_KEY);
        h.insert("Nats-Msg-Id", format!("m-{i}").as_str());
        let (status, ack) = request(
            &client,
            subject,
            h,
            &json!({"n": i, "pad": pad}).to_string(),
        )
        .await;
        assert_eq!(status, 200, "{ack}");
        firsts.push(ack["first_seq"].as_u64().unwrap());
    }
    // HTTP's Idempotency-Key shares the index.
    let http = |server: &Server, key: &str| {
        try_send(
            "POST",
            &server.url("/v1/tables/t/events"),
            Some(ADMIN_KEY),
            Some("application/json"),
            Some(json!({"n": 100, "pad": "h"}).to_string().as_bytes()),
            &[("Idempotency-Key", key)],
        )
        .unwrap()
    };
    let first_http = http(&server, "h-1").json();
    assert!(first_http.get("duplicate").is_none(), "{first_http}");
    flush(&server, ADMIN_KEY, "t");
    // The checkpoint (every second) deletes the flushed segments after snapshotting the keys.
    let wal = data.join("wal");
    let segments = || {
        std::fs::read_dir(&wal)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "wal")
            })
            .count()
    };
    assert!(
        wait_for(Duration::from_secs(10), || (segments() <= 2).then_some(())).is_some(),
        "segments were not deleted"
    );
    assert!(data.join("idempotency.json").exists());
    // Ten more only in the WAL, then a crash.
    for i in 20..30 {
        let mut h = auth(ADMIN_KEY);
        h.insert("Nats-Msg-Id", format!("m-{i}").as_str());
        let (status, ack) = request(
            &client,
            subject,
            h,
            &json!({"n": i, "pad": pad}).to_string(),
        )
        .await;
        assert_eq!(status, 200, "{ack}");
        firsts.push(ack["first_seq"].as_u64().unwrap());
    }
    server.kill9();
    let server = start_with_nats(&data, &nats, &env);
    // Every retry, whether its key came from the snapshot or the log, is a duplicate.
    for (i, first) in firsts.iter().enumerate() {
        let mut h = auth(ADMIN_KEY);
        h.insert("Nats-Msg-Id", format!("m-{i}").as_str());
        let (status, ack) = request(
            &client,
            subject,
            h,
            &json!({"n": i, "pad": pad}).to_string(),
        )
        .await;
        assert_eq!(status, 200, "{ack}");
        assert_eq!(ack["duplicate"], true, "m-{i}: {ack}");
        assert_eq!(ack["first_seq"].as_u64(), Some(*first), "m-{i}");
    }
    let again = http(&server, "h-1").json();
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["first_seq"], first_http["first_seq"]);
    assert_eq!(count(&server, "t"), 31);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_client_nats_py_gets_the_same_contract() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats"));
    let server = start_with_nats(&dir.path().join("data"), &nats, &[]);
    create_table(
        &server,
        ADMIN_KEY,
        "py",
        &json!({"fields": [{"name": "n", "type": "int64"}, {"name": "src", "type": "utf8"}]}),
    );
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/nats_ingest.py");
    let out = tokio::task::spawn_blocking({
        let url = nats.url();
        move || {
            std::process::Command::new(python())
                .arg(script)
                .args([url.as_str(), ADMIN_KEY, "default", "py", "5"])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "nats-py client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let acks = report["acks"].as_array().unwrap();
    assert_eq!(acks.len(), 5);
    let mut next = 1;
    for a in acks {
        assert_eq!(a["status"], "200", "{a}");
        assert_eq!(a["body"]["accepted"], 10, "{a}");
        assert_eq!(a["body"]["first_seq"], next, "{a}");
        next += 10;
    }
    assert_eq!(
        report["retry"]["body"]["duplicate"], true,
        "{}",
        report["retry"]
    );
    assert_eq!(report["retry"]["body"]["first_seq"], 1);
    assert_eq!(report["reused"]["status"], "409");
    assert_eq!(report["reused"]["code"], "idempotency_key_reused");
    assert_eq!(report["error"]["status"], "400");
    assert_eq!(report["error"]["code"], "type_mismatch");
    assert_eq!(report["error"]["body"]["code"], "type_mismatch");
    let rows = query_all(&server, ADMIN_KEY, "py", &json!({}));
    assert_eq!(rows.len(), 50);
    let mut ns: Vec<i64> = rows.iter().map(|r| r["n"].as_i64().unwrap()).collect();
    ns.sort();
    assert_eq!(ns, (0..50).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_mid_stream_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = NatsServer::start(&dir.path().join("nats"));
    let server = start_with_nats(&dir.path().join("data"), &nats, &[]);
    create_table(
        &server,
        ADMIN_KEY,
        "r",
        &json!({"fields": [{"name": "n", "type": "int64"}]}),
    );
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(nats.url())
        .await
        .unwrap();
    const BATCHES: usize = 200;
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let producer = tokio::spawn({
        let (client, acked) = (client.clone(), acked.clone());
        async move {
            let mut retries = 0;
            for i in 0..BATCHES {
                let body: String = (0..5)
                    .map(|j| format!("{{\"n\":{}}}\n", i * 5 + j))
                    .collect();
                // Retry the same batch (same message id) until it is acknowledged.
                loop {
                    let mut h = auth(ADMIN_KEY);
                    h.insert("Nats-Msg-Id", format!("r-{i}").as_str());
                    let res = tokio::time::timeout(
                        Duration::from_secs(2),
                        client.request_with_headers(
                            "alluvium.ingest.default.r",
                            h,
                            Bytes::from(body.clone()),
                        ),
                    )
                    .await;
                    match res {
                        Ok(Ok(m))
                            if m.headers
                                .as_ref()
                                .and_then(|h| h.get("Alluvium-Status"))
                                .map(|v| v.as_str())
                                == Some("200") =>
                        {
                            break;
                        }
                        _ => {
                            retries += 1;
                            assert!(retries < 500, "batch {i} never acknowledged");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            retries
        }
    });
    // Mid-stream: kill nats-server, leave it down a moment, start it again.
    while acked.load(std::sync::atomic::Ordering::SeqCst) < 50 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    nats.stop();
    let down = wait_for(Duration::from_secs(10), || {
        (get(&server, "/readyz").status == 503).then_some(())
    });
    assert!(
        down.is_some(),
        "readyz did not report the lost NATS connection"
    );
    // Down longer than the producer's request timeout, so requests in flight fail and are
    // retried.
    tokio::time::sleep(Duration::from_secs(3)).await;
    nats.restart();
    let retries = tokio::time::timeout(Duration::from_secs(120), producer)
        .await
        .expect("producer did not finish")
        .unwrap();
    assert!(retries > 0, "the outage was not noticed by the producer");
    assert!(
        wait_for(Duration::from_secs(10), || (get(&server, "/readyz").status
            == 200)
            .then_some(()))
        .is_some(),
        "readyz did not recover"
    );
    // Every batch exactly once: retries of batches that were stored but whose reply was lost
    // are duplicates.
    let rows = query_all(&server, ADMIN_KEY, "r", &json!({}));
    let mut ns: Vec<i64> = rows.iter().map(|r| r["n"].as_i64().unwrap()).collect();
    ns.sort();
    assert_eq!(ns, (0..(BATCHES as i64 * 5)).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejects_are_replayed_after_a_schema_fix_and_only_once() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats"));
    let server = start_with_nats(&dir.path().join("data"), &nats, &[]);
    let v1 = json!({"fields": [{"name": "n", "type": "int64"}]});
    create_table(&server, ADMIN_KEY, "t", &v1);
    let client = async_nats::connect(nats.url()).await.unwrap();
    for body in [
        "{\"n\":1,\"color\":\"red\"}",
        "{\"n\":2,\"color\":\"blue\"}\n{\"n\":3}",
    ] {
        let (status, problem) =
            request(&client, "alluvium.ingest.default.t", auth(ADMIN_KEY), body).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (400, Some("unknown_field"))
        );
    }
    let url = nats.url();
    let cli = |args: &[&str]| rejects_cli(&url, args);
    // Listed with their reasons; a replay before the fix fails again and keeps them.
    let listed = wait_for(Duration::from_secs(10), || {
        let (_, out, _) = cli(&["list"]);
        (out.lines().count() == 2).then_some(out)
    })
    .expect("rejects not listed");
    assert!(listed.contains("\"code\":\"unknown_field\""), "{listed}");
    let (code, out, err) = cli(&["replay", "--key", ADMIN_KEY, "--delete"]);
    assert_eq!(code, Some(1), "{out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        report["still_rejected"].as_array().unwrap().len(),
        2,
        "{report}"
    );
    assert_eq!(count(&server, "t"), 0);

    // The fix: a nullable `color`. The replay stores both batches, once, and clears them.
    let mut v2 = v1.clone();
    v2["fields"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "color", "type": "utf8", "nullable": true}));
    create_table(&server, ADMIN_KEY, "t", &v2);
    let (code, out, err) = cli(&["replay", "--key", ADMIN_KEY]);
    assert_eq!(code, Some(0), "{out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            report["accepted"].as_u64(),
            report["accepted_events"].as_u64()
        ),
        (Some(2), Some(3)),
        "{report}"
    );
    // Replaying again (without --delete the rejects are still there) stores nothing twice.
    let (code, out, _) = cli(&["replay", "--key", ADMIN_KEY, "--delete"]);
    assert_eq!(code, Some(0));
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (report["duplicates"].as_u64(), report["deleted"].as_u64()),
        (Some(2), Some(2)),
        "{report}"
    );
    let rows = query_all(&server, ADMIN_KEY, "t", &json!({}));
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().any(|r| r["color"] == "blue"));
    let (_, out, _) = cli(&["list"]);
    assert_eq!(out.lines().count(), 0, "{out}");
}

/// Runs `alluvium rejects ARGS` for tenant `default`, table `t`: (exit code, stdout, stderr).
fn rejects_cli(url: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(binary())
        .arg("rejects")
        .args(args)
        .args(["--nats-url", url, "--tenant", "default", "--table", "t"])
        .env_remove("ALLUVIUM_NATS__URL")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_mode_acks_after_the_wal_and_stores_redeliveries_once() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats"));
    let data = dir.path().join("data");
    let env = [("ALLUVIUM_NATS__INGEST_MODE", "jetstream")];
    let mut server = start_with_nats(&data, &nats, &env);
    create_table(
        &server,
        ADMIN_KEY,
        "j",
        &json!({"fields": [{"name": "n", "type": "int64"}]}),
    );
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    // Half the batches carry a message id, half rely on the stream sequence.
    const BATCHES: i64 = 400;
    let mut acks = Vec::new();
    for i in 0..BATCHES {
        let mut h = auth(ADMIN_KEY);
        if i % 2 == 0 {
            h.insert("Nats-Msg-Id", format!("j-{i}").as_str());
        }
        let body: String = (0..5)
            .map(|j| format!("{{\"n\":{}}}\n", i * 5 + j))
            .collect();
        acks.push(
            js.publish_with_headers("alluvium.ingest.default.j", h, Bytes::from(body))
                .await
                .unwrap(),
        );
    }
    for a in acks {
        a.await.unwrap();
    }
    // A crash while the consumer is working: unacknowledged messages are redelivered after
    // the restart, and those already in the WAL are not stored again.
    server.kill9();
    let server = start_with_nats(&data, &nats, &env);
    // A bad batch is refused for good and goes to the rejects stream.
    js.publish_with_headers(
        "alluvium.ingest.default.j",
        auth(ADMIN_KEY),
        Bytes::from_static(b"{\"n\":\"x\"}"),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let all = wait_for(Duration::from_secs(30), || {
        (count(&server, "j") == (BATCHES * 5) as usize).then_some(())
    });
    assert!(
        all.is_some(),
        "only {} of {} events stored",
        count(&server, "j"),
        BATCHES * 5
    );
    let rows = query_all(&server, ADMIN_KEY, "j", &json!({}));
    let mut ns: Vec<i64> = rows.iter().map(|r| r["n"].as_i64().unwrap()).collect();
    ns.sort();
    assert_eq!(
        ns,
        (0..BATCHES * 5).collect::<Vec<_>>(),
        "every event exactly once"
    );
    // The work queue empties: everything was acknowledged or terminated.
    let drained = wait_for(Duration::from_secs(10), || {
        let js = js.clone();
        let n = futures::executor::block_on(async move {
            js.get_stream("ALLUVIUM_INGEST")
                .await
                .unwrap()
                .info()
                .await
                .unwrap()
                .state
                .messages
        });
        (n == 0).then_some(())
    });
    assert!(drained.is_some(), "messages left in ALLUVIUM_INGEST");
    let stream = js.get_stream("ALLUVIUM_REJECTS").await.unwrap();
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: "alluvium.rejects.default.j".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
        .await
        .expect("no reject")
        .unwrap()
        .unwrap();
    let reject: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(reject["code"], "type_mismatch");
}
