//! `alluvium rejects list|replay`: the batches NATS and HTTP ingest refused, kept in the
//! `ALLUVIUM_REJECTS` stream with their reason and payload, read back and, once the schema is
//! fixed, submitted again.
//!
//! A replay sends each payload to its ingest subject exactly like a producer (same credential
//! rules, same validation, same durability), with the original idempotency key or
//! `replay-{stream_sequence}`, so replaying twice stores nothing twice. Replayed batches that
//! fail again are reported and left in the stream (they are not published as new rejects).
//! Against a node in JetStream ingest mode the ingest stream takes the batches (`queued`);
//! one that fails validation again becomes a new reject.

use std::time::Duration;

use alluvium_nats::async_nats::jetstream::{self, consumer};
use alluvium_nats::async_nats::{self, HeaderMap};
use alluvium_nats::jetstream::REJECTS_STREAM;
use alluvium_nats::{Reject, Subjects, headers};
use anyhow::{Context as _, bail};
use futures::StreamExt;
use serde::Serialize;

/// What to read or replay.
#[derive(Debug, Clone)]
pub struct RejectsQuery {
    /// NATS URL.
    pub nats_url: String,
    /// Subject prefix.
    pub prefix: String,
    /// Tenant whose rejects to read.
    pub tenant: String,
    /// Only this table's.
    pub table: Option<String>,
    /// At most this many.
    pub limit: usize,
}

/// One reject as listed.
#[derive(Debug, Serialize)]
pub struct Listed {
    /// Its sequence in the stream.
    pub stream_seq: u64,
    /// The reject.
    #[serde(flatten)]
    pub reject: Reject,
}

/// The outcome of a replay.
#[derive(Debug, Default, Serialize)]
pub struct ReplayReport {
    /// Rejects read.
    pub replayed: usize,
    /// Of those, accepted now.
    pub accepted: usize,
    /// Events they hold.
    pub accepted_events: u64,
    /// Accepted ones that had been stored by an earlier replay or retry.
    pub duplicates: usize,
    /// Of those, taken by the `ALLUVIUM_INGEST` stream (JetStream ingest mode) to be
    /// validated later.
    pub queued: usize,
    /// Refused again: (stream sequence, code, reason).
    pub still_rejected: Vec<(u64, String, String)>,
    /// Removed from the stream after being accepted.
    pub deleted: usize,
}

async fn read(
    query: &RejectsQuery,
) -> anyhow::Result<(jetstream::Context, async_nats::Client, Vec<Listed>)> {
    let subjects = Subjects::new(&query.prefix)?;
    let filter = subjects.rejects_filter(&query.tenant, query.table.as_deref())?;
    let client = async_nats::connect(query.nats_url.as_str())
        .await
        .with_context(|| {
            format!(
                "cannot connect to NATS at {}",
                alluvium_nats::connection::redact(&query.nats_url)
            )
        })?;
    let js = jetstream::new(client.clone());
    let stream = js
        .get_stream(REJECTS_STREAM)
        .await
        .with_context(|| format!("no {REJECTS_STREAM} stream: has a node with NATS run yet?"))?;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: filter,
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .context("cannot read the rejects stream")?;
    let mut out = Vec::new();
    while out.len() < query.limit {
        let want = (query.limit - out.len()).min(256);
        let mut batch = consumer
            .fetch()
            .max_messages(want)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .context("cannot read the rejects stream")?;
        let mut got = 0;
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| anyhow::anyhow!("reading rejects: {e}"))?;
            got += 1;
            let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
            match serde_json::from_slice::<Reject>(&m.payload) {
                Ok(reject) => out.push(Listed {
                    stream_seq: seq,
                    reject,
                }),
                Err(e) => eprintln!("skipping message {seq}: not a reject ({e})"),
            }
        }
        if got == 0 {
            break;
        }
    }
    Ok((js, client, out))
}

/// Lists rejects, oldest first.
pub async fn list(query: &RejectsQuery) -> anyhow::Result<Vec<Listed>> {
    Ok(read(query).await?.2)
}

/// Submits rejects again with `credential`; with `delete`, accepted ones leave the stream.
pub async fn replay(
    query: &RejectsQuery,
    credential: &str,
    delete: bool,
) -> anyhow::Result<ReplayReport> {
    let subjects = Subjects::new(&query.prefix)?;
    let (js, client, rejects) = read(query).await?;
    let stream = js.get_stream(REJECTS_STREAM).await?;
    let mut report = ReplayReport::default();
    for Listed { stream_seq, reject } in rejects {
        report.replayed += 1;
        let payload = match reject.payload_bytes() {
            Ok(p) => p,
            Err(e) => {
                report
                    .still_rejected
                    .push((stream_seq, "unreadable_reject".into(), e));
                continue;
            }
        };
        let subject = subjects.ingest(&reject.tenant, &reject.table)?;
        let mut h = HeaderMap::new();
        h.insert(
            headers::AUTHORIZATION,
            format!("Bearer {credential}").as_str(),
        );
        h.insert(
            headers::CONTENT_TYPE,
            if reject.format == "ndjson" {
                "application/x-ndjson"
            } else {
                "application/json"
            },
        );
        let key = reject
            .idempotency_key
            .clone()
            .unwrap_or_else(|| format!("replay-{stream_seq}"));
        h.insert(headers::IDEMPOTENCY_KEY, key.as_str());
        h.insert(headers::REPLAY, stream_seq.to_string().as_str());
        let reply = tokio::time::timeout(
            Duration::from_secs(30),
            client.request_with_headers(subject.clone(), h, payload.into()),
        )
        .await
        .with_context(|| format!("no answer on {subject} within 30 s"))?
        .with_context(|| format!("no ingest node answers on {subject}"))?;
        let status = reply
            .headers
            .as_ref()
            .and_then(|h| h.get(headers::STATUS))
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        let body: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap_or_default();
        // A node in JetStream ingest mode: the stream took the batch (its acknowledgement
        // answers the request); the node validates it later, and a new failure is a new reject.
        let queued = status.is_empty() && body.get("stream").is_some() && body.get("seq").is_some();
        if queued {
            report.queued += 1;
            if delete {
                stream
                    .delete_message(stream_seq)
                    .await
                    .with_context(|| format!("cannot delete reject {stream_seq}"))?;
                report.deleted += 1;
            }
        } else if status == "200" {
            report.accepted += 1;
            report.accepted_events += body["accepted"].as_u64().unwrap_or(0);
            if body["duplicate"] == true {
                report.duplicates += 1;
            }
            if delete {
                stream
                    .delete_message(stream_seq)
                    .await
                    .with_context(|| format!("cannot delete reject {stream_seq}"))?;
                report.deleted += 1;
            }
        } else {
            report.still_rejected.push((
                stream_seq,
                body["code"].as_str().unwrap_or("?").to_string(),
                body["detail"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    if report.replayed == 0 && query.limit == 0 {
        bail!("--limit 0 replays nothing");
    }
    Ok(report)
}
