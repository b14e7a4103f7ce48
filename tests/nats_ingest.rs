//! NATS ingest end to end, against real nats-server processes: request/reply with the same
//! answers and errors as HTTP (checked with async-nats and with nats-py), tenants confined to
//! their subjects, hostile subjects refused, idempotency across restarts and WAL truncation, a
//! nats-server restart mid-stream, and JetStream ingest mode.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use common::nats::*;
use common::*;
use futures::StreamExt;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_by_request_reply_with_the_errors_of_http() {
    let lake = Lake::new();
    let server = lake.serve(&[]);
    create_table(
        &server,
        ADMIN_KEY,
        "clicks",
        &json!({"fields": [{"name": "n", "type": "int64"}, {"name": "page", "type": "utf8", "nullable": true}]}),
    );
    let client = async_nats::connect(lake.nats.url()).await.unwrap();
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
    let acme = create_key(&server, "acme", json!(["ingest", "query", "admin"]));
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
async fn idempotency_keys_survive_restarts_and_wal_truncation() {
    let lake = Lake::new();
    let data = lake.data.clone();
    // Small segments, so flushed events' segments are deleted (and their keys must live on in
    // the snapshot).
    let env = [("ALLUVIUM_WAL__SEGMENT_SIZE", "4KiB")];
    let mut server = lake.serve(&env);
    create_table(
        &server,
        ADMIN_KEY,
        "t",
        &json!({"fields": [{"name": "n", "type": "int64"}, {"name": "pad", "type": "utf8"}]}),
    );
    let client = async_nats::connect(lake.nats.url()).await.unwrap();
    let pad = "x".repeat(1000);
    let mut firsts = Vec::new();
    for i in 0..20 {
        let ack = keyed(&client, i, &pad).await;
        assert!(ack.get("duplicate").is_none(), "{ack}");
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
        let ack = keyed(&client, i, &pad).await;
        assert!(ack.get("duplicate").is_none(), "{ack}");
        firsts.push(ack["first_seq"].as_u64().unwrap());
    }
    server.kill9();
    let server = lake.serve(&env);
    // Every retry, whether its key came from the snapshot or the log, is a duplicate.
    for (i, first) in firsts.iter().enumerate() {
        let ack = keyed(&client, i, &pad).await;
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
    let lake = Lake::new();
    let server = lake.serve(&[]);
    create_table(
        &server,
        ADMIN_KEY,
        "py",
        &json!({"fields": [{"name": "n", "type": "int64"}, {"name": "src", "type": "utf8"}]}),
    );
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/nats_ingest.py");
    let out = tokio::task::spawn_blocking({
        let url = lake.nats.url();
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
    let mut lake = Lake::new();
    let server = lake.serve(&[]);
    create_n_table(&server, "r");
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(lake.nats.url())
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
    lake.nats.stop();
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
    lake.nats.restart();
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
async fn jetstream_mode_acks_after_the_wal_and_stores_redeliveries_once() {
    let lake = Lake::new();
    let env = [("ALLUVIUM_NATS__INGEST_MODE", "jetstream")];
    let mut server = lake.serve(&env);
    create_n_table(&server, "j");
    let client = async_nats::connect(lake.nats.url()).await.unwrap();
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
    let server = lake.serve(&env);
    // A bad batch, and one whose credential fails (the stream took both), are refused for
    // good and go to the rejects stream with their payload.
    for (key, body) in [
        (ADMIN_KEY, "{\"n\":\"x\"}"),
        ("expired-or-wrong", "{\"n\":1}"),
    ] {
        js.publish_with_headers("alluvium.ingest.default.j", auth(key), Bytes::from(body))
            .await
            .unwrap()
            .await
            .unwrap();
    }
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
        let n = stream_messages(&js, "ALLUVIUM_INGEST");
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
    let mut rejects = Vec::new();
    for _ in 0..2 {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("no reject")
            .unwrap()
            .unwrap();
        rejects.push(serde_json::from_slice::<Value>(&m.payload).unwrap());
    }
    // Handled concurrently: in either order.
    rejects.sort_by_key(|r| r["code"].as_str().unwrap().to_string());
    assert_eq!(rejects[0]["code"], "invalid_api_key");
    assert_eq!(rejects[0]["payload"], "{\"n\":1}");
    assert_eq!(rejects[1]["code"], "type_mismatch");
    assert!(rejects.iter().all(|r| r["source"] == "jetstream"));
}

/// A burst of messages arrives together and is handled in groups: each message still gets its
/// own outcome. Refused ones (bad data, a bad credential) change nothing for the others, and
/// two messages with one key in the same burst are stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_mixed_messages_gets_one_answer_each() {
    let lake = Lake::new();
    let server = lake.serve(&[]);
    create_table(
        &server,
        ADMIN_KEY,
        "burst",
        &json!({"fields": [{"name": "n", "type": "int64"}]}),
    );
    let client = async_nats::connect(lake.nats.url()).await.unwrap();
    let subject = "alluvium.ingest.default.burst";
    let sends = (0..300usize).map(|i| {
        let client = client.clone();
        async move {
            let (headers, body) = match i % 5 {
                0 => (auth(ADMIN_KEY), json!({"n": "not a number"}).to_string()),
                1 => (auth("not-a-key"), json!({"n": i}).to_string()),
                // Both members of a pair carry the same key and body.
                2 | 3 => {
                    let mut h = auth(ADMIN_KEY);
                    h.insert("Nats-Msg-Id", format!("pair-{}", i / 5).as_str());
                    (h, json!([{"n": i / 5}, {"n": 1000 + i / 5}]).to_string())
                }
                _ => (auth(ADMIN_KEY), json!({"n": 10_000 + i}).to_string()),
            };
            (i, request(&client, subject, headers, &body).await)
        }
    });
    let answers = futures::future::join_all(sends).await;
    let mut pairs = std::collections::HashMap::new();
    for (i, (status, body)) in &answers {
        match i % 5 {
            0 => assert_eq!(
                (*status, body["code"].as_str()),
                (400, Some("type_mismatch"))
            ),
            1 => assert_eq!(
                (*status, body["code"].as_str()),
                (401, Some("invalid_api_key"))
            ),
            2 | 3 => {
                assert_eq!(
                    (*status, body["accepted"].as_u64()),
                    (200, Some(2)),
                    "{body}"
                );
                pairs
                    .entry(i / 5)
                    .or_insert_with(Vec::new)
                    .push(body.clone());
            }
            _ => assert_eq!(
                (*status, body["accepted"].as_u64()),
                (200, Some(1)),
                "{body}"
            ),
        }
    }
    for (pair, acks) in &pairs {
        let duplicates = acks.iter().filter(|a| a["duplicate"] == true).count();
        assert_eq!(duplicates, 1, "pair {pair}: {acks:?}");
        assert_eq!(acks[0]["first_seq"], acks[1]["first_seq"], "pair {pair}");
    }
    let (messages, groups) = (
        metric(&server, "alluvium_nats_ingest_messages_total"),
        metric(&server, "alluvium_nats_ingest_groups_total"),
    );
    assert_eq!(messages, 300);
    assert!(groups < messages, "{messages} messages in {groups} groups");
    // 60 pairs of 2 events stored once, 60 single events; nothing of the refused ones.
    assert_eq!(count(&server, "burst"), 60 * 2 + 60);
    let rows = query_all(&server, ADMIN_KEY, "burst", &json!({}));
    let mut ns: Vec<i64> = rows.iter().map(|r| r["n"].as_i64().unwrap()).collect();
    ns.sort_unstable();
    ns.dedup();
    assert_eq!(ns.len(), 180, "every stored event is distinct");
}

/// Sends event `i` (padded with `pad`) to table `t` with message id `m-{i}`; asserts 200.
async fn keyed(client: &async_nats::Client, i: usize, pad: &str) -> Value {
    let mut h = auth(ADMIN_KEY);
    h.insert("Nats-Msg-Id", format!("m-{i}").as_str());
    let body = json!({"n": i, "pad": pad}).to_string();
    let (status, ack) = request(client, "alluvium.ingest.default.t", h, &body).await;
    assert_eq!(status, 200, "{ack}");
    ack
}

#[test]
fn core_ingest_refuses_to_start_under_a_stream_that_captures_its_subjects() {
    let lake = Lake::new();
    // A JetStream-mode node creates ALLUVIUM_INGEST over alluvium.ingest.>.
    drop(lake.serve(&[("ALLUVIUM_NATS__INGEST_MODE", "jetstream")]));
    let out = std::process::Command::new(binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--nats-url",
            &lake.nats.url(),
        ])
        .arg("--data-dir")
        .arg(lake.data.join("other"))
        .env("ALLUVIUM_LOG", "error")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ALLUVIUM_INGEST captures ingest subjects"),
        "{err}"
    );
}
