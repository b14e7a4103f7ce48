//! Prometheus metrics: counters kept in memory and rendered in the text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alluvium_pipelines::Node;

#[derive(Debug, Default)]
struct Counters {
    events: AtomicU64,
    bytes: AtomicU64,
    /// (route pattern, status) -> (requests, microseconds spent).
    requests: Mutex<BTreeMap<(String, u16), (u64, u64)>>,
}

/// Shared counters, cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Metrics(Arc<Counters>);

impl Metrics {
    /// Counts accepted events and their request bytes.
    pub fn ingested(&self, events: u64, bytes: u64) {
        self.0.events.fetch_add(events, Ordering::Relaxed);
        self.0.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts a finished request; `route` is the matched pattern (bounded cardinality), not
    /// the raw path.
    pub fn request(&self, route: &str, status: u16, took: Duration) {
        let mut requests = self
            .0
            .requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let e = requests.entry((route.to_string(), status)).or_default();
        e.0 += 1;
        e.1 += took.as_micros() as u64;
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(
        &self,
        node: &Node,
        nats: Option<&alluvium_pipelines::link::NatsLink>,
        webhooks: &[(
            String,
            std::sync::Arc<alluvium_pipelines::notification::webhooks::WebhookStats>,
        )],
    ) -> String {
        let c = &self.0;
        let mut out = String::new();
        let header = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let wal = node.wal_stats();
        for (name, kind, help, value) in [
            (
                "alluvium_ingest_events_total",
                "counter",
                "Events acknowledged.",
                load(&c.events),
            ),
            (
                "alluvium_ingest_bytes_total",
                "counter",
                "Request body bytes of acknowledged batches.",
                load(&c.bytes),
            ),
            (
                "alluvium_ingest_duplicates_total",
                "counter",
                "Batches answered as retries of an earlier batch with the same idempotency key.",
                load(&wal.duplicates),
            ),
            (
                "alluvium_ingest_idempotency_keys_evicted_total",
                "counter",
                "Idempotency keys forgotten before their window ended (the index was full).",
                load(&wal.keys_evicted),
            ),
            (
                "alluvium_wal_commit_groups_total",
                "counter",
                "WAL commit groups written, each ending with one fdatasync.",
                load(&wal.groups),
            ),
            (
                "alluvium_wal_records_total",
                "counter",
                "WAL records (one per accepted request) made durable.",
                load(&wal.records),
            ),
            (
                "alluvium_wal_segments_deleted_total",
                "counter",
                "WAL segments deleted once the catalog committed their events.",
                load(&wal.segments_deleted),
            ),
            (
                "alluvium_wal_poisoned",
                "gauge",
                "1 when the WAL refuses writes after a failed write or fsync.",
                u64::from(wal.poisoned.load(Ordering::Relaxed)),
            ),
            (
                "alluvium_flush_failures_total",
                "counter",
                "Failed flush attempts (memtables are kept and retried).",
                node.flush_health().0,
            ),
            (
                "alluvium_flush_failing_tables",
                "gauge",
                "Tables whose last flush attempt failed.",
                node.flush_health().1 as u64,
            ),
            (
                "alluvium_memtable_bytes",
                "gauge",
                "Bytes held by memtables, active and frozen.",
                node.memtable_bytes() as u64,
            ),
        ] {
            header(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
        if let Some(c) = node.cluster() {
            let s = &c.shards;
            for (name, kind, help, value) in [
                (
                    "alluvium_shards_owned",
                    "gauge",
                    "Shards (tables) this processing node owns now.",
                    load(&s.owned),
                ),
                (
                    "alluvium_shard_claims_total",
                    "counter",
                    "Shard claims this node committed to the catalog.",
                    load(&s.claims),
                ),
                (
                    "alluvium_log_messages_read_total",
                    "counter",
                    "Replicated log messages inserted into memtables.",
                    load(&s.messages),
                ),
                (
                    "alluvium_log_purges_total",
                    "counter",
                    "Purges of committed messages from the replicated log.",
                    load(&s.purges),
                ),
                (
                    "alluvium_commits_fenced_total",
                    "counter",
                    "Flushes and compactions the catalog refused because another node owns the shard now.",
                    node.fenced_commits(),
                ),
            ] {
                header(&mut out, name, kind, help);
                let _ = writeln!(out, "{name} {value}");
            }
        }
        if let Some(n) = nats {
            let i = &n.ingest_stats;
            let p = &n.publish_stats;
            let s = &n.connection.stats;
            for (name, kind, help, value) in [
                (
                    "alluvium_nats_connected",
                    "gauge",
                    "1 while connected to NATS.",
                    u64::from(n.health().is_ok()),
                ),
                (
                    "alluvium_nats_connects_total",
                    "counter",
                    "NATS connections made (the first and every reconnect).",
                    load(&s.connects),
                ),
                (
                    "alluvium_nats_disconnects_total",
                    "counter",
                    "NATS connections lost.",
                    load(&s.disconnects),
                ),
                (
                    "alluvium_nats_slow_consumer_total",
                    "counter",
                    "Times NATS reported this node as a slow consumer.",
                    load(&s.slow_consumers),
                ),
                (
                    "alluvium_nats_ingest_messages_total",
                    "counter",
                    "Ingest messages received from NATS.",
                    load(&i.messages),
                ),
                (
                    "alluvium_nats_ingest_groups_total",
                    "counter",
                    "Groups of NATS ingest messages received together and handled as one.",
                    load(&i.groups),
                ),
                (
                    "alluvium_nats_ingest_events_total",
                    "counter",
                    "Events of accepted NATS ingest messages.",
                    load(&i.events),
                ),
                (
                    "alluvium_nats_ingest_bytes_total",
                    "counter",
                    "Payload bytes of accepted NATS ingest messages.",
                    load(&i.bytes),
                ),
                (
                    "alluvium_nats_ingest_errors_total",
                    "counter",
                    "NATS ingest messages answered with an error.",
                    load(&i.errors),
                ),
                (
                    "alluvium_nats_ingest_duplicates_total",
                    "counter",
                    "NATS ingest messages answered as duplicates.",
                    load(&i.duplicates),
                ),
                (
                    "alluvium_nats_reply_failures_total",
                    "counter",
                    "Replies (or JetStream acks) that could not be sent.",
                    load(&i.reply_failures),
                ),
                (
                    "alluvium_nats_events_published_total",
                    "counter",
                    "Commit events acknowledged by JetStream.",
                    load(&p.events_published),
                ),
                (
                    "alluvium_nats_events_duplicate_total",
                    "counter",
                    "Commit events JetStream already had (dropped by message id).",
                    load(&p.events_duplicate),
                ),
                (
                    "alluvium_nats_publish_failures_total",
                    "counter",
                    "Failed publish attempts of commit events (retried).",
                    load(&p.publish_failures),
                ),
                (
                    "alluvium_nats_events_too_large_total",
                    "counter",
                    "Commit events over the NATS server's max_payload, not published.",
                    load(&p.events_too_large),
                ),
                (
                    "alluvium_nats_rejects_published_total",
                    "counter",
                    "Rejected batches published to the rejects stream.",
                    load(&p.rejects_published),
                ),
                (
                    "alluvium_nats_rejects_failed_total",
                    "counter",
                    "Rejected batches that could not be published.",
                    load(&p.rejects_failed),
                ),
            ] {
                header(&mut out, name, kind, help);
                let _ = writeln!(out, "{name} {value}");
            }
        }
        if !webhooks.is_empty() {
            for (name, help, get) in [
                (
                    "alluvium_webhook_delivered_total",
                    "Commit events delivered (2xx) per webhook.",
                    (|w| &w.delivered)
                        as fn(
                            &alluvium_pipelines::notification::webhooks::WebhookStats,
                        ) -> &AtomicU64,
                ),
                (
                    "alluvium_webhook_retried_total",
                    "Failed delivery attempts tried again, per webhook.",
                    |w| &w.retried,
                ),
                (
                    "alluvium_webhook_dead_lettered_total",
                    "Commit events written to the dead-letter log, per webhook.",
                    |w| &w.dead_lettered,
                ),
            ] {
                header(&mut out, name, "counter", help);
                for (hook, stats) in webhooks {
                    let _ = writeln!(out, "{name}{{webhook=\"{hook}\"}} {}", load(get(stats)));
                }
            }
        }
        let requests = c
            .requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        header(
            &mut out,
            "alluvium_http_requests_total",
            "counter",
            "HTTP requests by route and status.",
        );
        for ((route, status), (n, _)) in &requests {
            let _ = writeln!(
                out,
                "alluvium_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        header(
            &mut out,
            "alluvium_http_request_duration_microseconds_total",
            "counter",
            "Time spent answering HTTP requests, by route and status.",
        );
        for ((route, status), (_, micros)) in &requests {
            let _ = writeln!(
                out,
                "alluvium_http_request_duration_microseconds_total{{route=\"{route}\",status=\"{status}\"}} {micros}"
            );
        }
        out
    }
}
