//! JetStream ingest mode: a durable pull consumer of the `ALLUVIUM_INGEST` stream hands its
//! messages, in groups of those already pulled, to the same core as the NATS source
//! ([`super::nats`]), and acknowledges each only once its events are durable in the WAL.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use alluvium_actors::wal::messages::Durability;
use alluvium_nats::Subjects;
use alluvium_nats::async_nats::{
    self,
    jetstream::{self, AckKind, consumer},
};
use alluvium_nats::headers;
use futures::{FutureExt as _, StreamExt};
use tokio::sync::{Semaphore, watch};

use super::nats::{
    MAX_GROUP, NatsIngestConfig, NatsIngestStats, detect_format, header, in_flight_done,
    ingest_messages, stopped,
};
use crate::Node;
use crate::error::Problem;
use crate::ingest::{IngestAck, IngestRequest, Source};

/// Name of the durable consumer of JetStream mode, shared by every ingest node.
pub const DURABLE_CONSUMER: &str = "alluvium-ingest";

/// Creates (or finds) the durable pull consumer of `ALLUVIUM_INGEST`.
pub async fn jetstream_consumer(
    js: &jetstream::Context,
    config: &NatsIngestConfig,
) -> Result<consumer::PullConsumer, crate::link::LinkError> {
    let stream = js
        .get_stream(alluvium_nats::jetstream::INGEST_STREAM)
        .await
        .map_err(|e| crate::link::LinkError(format!("ingest stream: {e}")))?;
    stream
        .get_or_create_consumer(
            DURABLE_CONSUMER,
            consumer::pull::Config {
                durable_name: Some(DURABLE_CONSUMER.into()),
                ack_policy: consumer::AckPolicy::Explicit,
                // A redelivery while the first delivery is still being written waits for its
                // outcome (same key), so a short wait only speeds up recovery after a crash.
                ack_wait: std::time::Duration::from_secs(10),
                max_ack_pending: i64::try_from(config.max_in_flight.max(1)).unwrap_or(i64::MAX),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| crate::link::LinkError(format!("ingest consumer: {e}")))
}

/// Consumes `ALLUVIUM_INGEST` until `stop` turns true, many messages at once; then stops
/// pulling and returns when every message taken is acknowledged (or refused). Messages pulled
/// but not taken are delivered again after the consumer's ack wait.
pub async fn serve_jetstream(
    js: jetstream::Context,
    consumer: consumer::PullConsumer,
    node: Node,
    subjects: Subjects,
    config: NatsIngestConfig,
    stats: Arc<NatsIngestStats>,
    mut stop: watch::Receiver<bool>,
) {
    let max_in_flight = config.max_in_flight;
    let permits = Arc::new(Semaphore::new(max_in_flight.max(1)));
    tokio::select! {
        () = consume(js, consumer, node, subjects, config, stats, permits.clone()) => {}
        () = stopped(&mut stop) => tracing::info!("JetStream ingest stopped pulling"),
    }
    in_flight_done(&permits, max_in_flight).await;
}

async fn consume(
    js: jetstream::Context,
    mut consumer: consumer::PullConsumer,
    node: Node,
    subjects: Subjects,
    config: NatsIngestConfig,
    stats: Arc<NatsIngestStats>,
    permits: Arc<Semaphore>,
) {
    let ctx = Arc::new((node, subjects, config, stats));
    loop {
        let mut messages = match consumer.messages().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot pull from the ingest stream; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                // The consumer may have been deleted: create it again.
                let (_, _, config, _) = &*ctx;
                if let Ok(c) = jetstream_consumer(&js, config).await {
                    consumer = c;
                }
                continue;
            }
        };
        while let Some(first) = messages.next().await {
            // The messages already pulled join this one: they are handled as one group.
            let mut group = Vec::new();
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Ok(m) => {
                        let Ok(permit) = permits.clone().acquire_owned().await else {
                            return;
                        };
                        group.push((m, permit));
                    }
                    Err(e) => tracing::debug!(error = %e, "ingest stream pull interrupted"),
                }
                if group.len() < MAX_GROUP {
                    next = messages.next().now_or_never().flatten();
                }
            }
            if group.is_empty() {
                continue;
            }
            let ctx = ctx.clone();
            actix::spawn(async move {
                let (node, subjects, config, stats) = &*ctx;
                let (messages, permits): (Vec<_>, Vec<_>) = group.into_iter().unzip();
                handle_jetstream(node, subjects, config, stats, messages).await;
                drop(permits);
            });
        }
    }
}

async fn handle_jetstream(
    node: &Node,
    subjects: &Subjects,
    config: &NatsIngestConfig,
    stats: &NatsIngestStats,
    messages: Vec<jetstream::Message>,
) {
    stats
        .messages
        .fetch_add(messages.len() as u64, Ordering::Relaxed);
    stats.groups.fetch_add(1, Ordering::Relaxed);
    // A producer's key cannot hold a control character, so this one cannot collide with one.
    let keys = messages
        .iter()
        .map(|m| {
            m.info()
                .ok()
                .map(|i| format!("\u{1f}js:{}", i.stream_sequence))
        })
        .collect();
    let inner: Vec<&async_nats::Message> = messages.iter().map(|m| &m.message).collect();
    let results = ingest_messages(node, subjects, config, &inner, keys, true).await;
    for (msg, result) in messages.iter().zip(results) {
        settle(node, subjects, stats, msg, result).await;
    }
}

/// Counts one message of the ingest stream and acknowledges it: done, to redeliver later, or
/// refused for good.
async fn settle(
    node: &Node,
    subjects: &Subjects,
    stats: &NatsIngestStats,
    msg: &jetstream::Message,
    result: Result<IngestAck, Problem>,
) {
    let ack = match result {
        Ok(ack) => {
            stats
                .events
                .fetch_add(ack.accepted as u64, Ordering::Relaxed);
            stats
                .bytes
                .fetch_add(msg.payload.len() as u64, Ordering::Relaxed);
            if ack.duplicate {
                stats.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            AckKind::Ack
        }
        // Worth another try later: the node is full or a component is down.
        Err(p) if p.status == 429 || p.status == 503 => {
            AckKind::Nak(Some(std::time::Duration::from_secs(1)))
        }
        Err(p) => {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            if p.status >= 500 {
                tracing::error!(code = p.code, detail = %p.detail, "JetStream ingest failed");
                AckKind::Nak(Some(std::time::Duration::from_secs(1)))
            } else {
                // Refused for good: never redeliver. JetStream acknowledged it to the
                // producer, so it goes to the rejects stream whatever the reason (a batch
                // refused for an expired credential can be replayed with a valid one).
                reject_stream_message(node, subjects, &msg.message, &p);
                AckKind::Term
            }
        }
    };
    if let Err(e) = msg.ack_with(ack).await {
        // Not acknowledged: JetStream redelivers it, and its key makes that harmless.
        stats.reply_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, "cannot acknowledge an ingest stream message");
    }
}

fn reject_stream_message(
    node: &Node,
    subjects: &Subjects,
    msg: &async_nats::Message,
    problem: &Problem,
) {
    let Some((tenant, table)) = subjects.parse_ingest(msg.subject.as_str()) else {
        tracing::warn!(subject = %headers::sanitize(msg.subject.as_str()), code = problem.code, "an ingest stream message with an invalid subject was dropped");
        return;
    };
    let key = header(msg, headers::IDEMPOTENCY_KEY)
        .or_else(|| header(msg, headers::NATS_MSG_ID))
        .filter(|k| headers::idempotency_key(k).is_ok());
    let request = IngestRequest {
        table: table.to_string(),
        body: msg.payload.clone(),
        format: detect_format(&msg.payload),
        durability: Durability::Wal,
        idempotency_key: key.map(str::to_string),
        idempotency_body: None,
        source: Source::JetStream,
    };
    node.publish_reject(
        tenant,
        table,
        &request,
        problem.status,
        problem.code,
        &problem.detail,
    );
}
