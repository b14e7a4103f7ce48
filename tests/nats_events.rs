//! NATS notification end to end, against real nats-server processes: commit events on
//! JetStream (replayable, deduplicated, resumed without a cursor), rejects on their stream with
//! reason and payload, and `alluvium rejects replay` after a schema fix.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use common::nats::*;
use common::*;
use futures::StreamExt;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejects_reach_their_stream_with_reason_and_payload() {
    let lake = Lake::new();
    let server = lake.serve(&[]);
    create_n_table(&server, "t");
    let client = async_nats::connect(lake.nats.url()).await.unwrap();
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
    let lake = Lake::new();
    let data = lake.data.clone();
    let mut server = lake.serve(&[]);
    create_n_table(&server, "t");
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
    let r = compact(&server, "t");
    assert_eq!(r.status, 200, "{r:?}");

    let client = async_nats::connect(lake.nats.url()).await.unwrap();
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
                let lake_id = event["lake_id"].as_str().unwrap();
                assert_eq!(lake_id.len(), 32, "{event}");
                assert_eq!(id, format!("{lake_id}:{}", event["id"].as_str().unwrap()));
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

    // A copy of an event, with the message id alluvium gives it, is dropped by JetStream.
    let copy_id = format!(
        "{}:{}",
        events[1].1["lake_id"].as_str().unwrap(),
        events[1].1["id"].as_str().unwrap()
    );
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", copy_id.as_str());
    let ack = js
        .publish_with_headers(events[1].0.clone(), h, events[1].1.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(ack.duplicate, "the copy was stored");

    // A crash that sets the cursor back republishes nothing the stream already has: publishing
    // resumes after the later of the cursor and the lake's newest event in the stream.
    server.kill9();
    let cursor = data.join("notify/nats.cursor");
    let text = std::fs::read_to_string(&cursor).unwrap();
    let (lake_id, id) = text.trim().split_once(' ').unwrap();
    assert_eq!(id, events[4].1["id"]);
    assert_eq!(lake_id, events[4].1["lake_id"]);
    std::fs::write(&cursor, format!("{lake_id} 0\n")).unwrap();
    let server = lake.serve(&[]);
    assert_eq!(
        ingest(&server, ADMIN_KEY, "t", &json!({"n": 99})).status,
        200
    );
    flush(&server, ADMIN_KEY, "t");
    let events = read_all(6).await;
    assert_eq!(events[5].0, "alluvium.events.default.t.flushed");
    let stream_len = wait_for(Duration::from_secs(10), || {
        let n = stream_messages(&js, "ALLUVIUM_EVENTS");
        (n == 6).then_some(n)
    });
    assert_eq!(stream_len, Some(6), "events were stored twice");
    assert_eq!(metric(&server, "alluvium_nats_events_published_total"), 1);
    assert_eq!(metric(&server, "alluvium_nats_events_duplicate_total"), 0);

    // Without a cursor (a new disk, another node), publishing resumes after the lake's newest
    // event in the stream: nothing is published again, new events follow.
    drop(server);
    std::fs::remove_file(&cursor).unwrap();
    let server = lake.serve(&[]);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejects_are_replayed_after_a_schema_fix_and_only_once() {
    let lake = Lake::new();
    let server = lake.serve(&[]);
    let v1 = json!({"fields": [{"name": "n", "type": "int64"}]});
    create_table(&server, ADMIN_KEY, "t", &v1);
    let client = async_nats::connect(lake.nats.url()).await.unwrap();
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
    let url = lake.nats.url();
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
