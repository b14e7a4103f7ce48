//! Prometheus metrics: a few counters kept with atomics and rendered in the text format.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix_web::ResponseError;
use alluvium_pipelines::Node;

#[derive(Debug, Default)]
struct Counters {
    events: AtomicU64,
    bytes: AtomicU64,
    ingest_ok: AtomicU64,
    ingest_err: AtomicU64,
    ingest_micros: AtomicU64,
    query_ok: AtomicU64,
    query_err: AtomicU64,
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

    /// Counts a finished request of `route`.
    pub fn request<T, E: ResponseError>(&self, route: &str, res: &Result<T, E>, took: Duration) {
        let c = &self.0;
        let (ok, err) = match route {
            "ingest" => {
                c.ingest_micros
                    .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
                (&c.ingest_ok, &c.ingest_err)
            }
            _ => (&c.query_ok, &c.query_err),
        };
        if res.is_ok() { ok } else { err }.fetch_add(1, Ordering::Relaxed);
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self, node: &Node) -> String {
        let c = &self.0;
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        metric(
            "alluvium_ingest_events_total",
            "counter",
            "Events acknowledged.",
            &[("", load(&c.events))],
        );
        metric(
            "alluvium_ingest_bytes_total",
            "counter",
            "Request body bytes of acknowledged batches.",
            &[("", load(&c.bytes))],
        );
        metric(
            "alluvium_http_requests_total",
            "counter",
            "HTTP requests by route and outcome.",
            &[
                ("{route=\"ingest\",outcome=\"ok\"}", load(&c.ingest_ok)),
                ("{route=\"ingest\",outcome=\"error\"}", load(&c.ingest_err)),
                ("{route=\"query\",outcome=\"ok\"}", load(&c.query_ok)),
                ("{route=\"query\",outcome=\"error\"}", load(&c.query_err)),
            ],
        );
        metric(
            "alluvium_ingest_duration_microseconds_total",
            "counter",
            "Total time spent answering ingest requests.",
            &[("", load(&c.ingest_micros))],
        );
        let wal = node.wal_stats();
        metric(
            "alluvium_wal_commit_groups_total",
            "counter",
            "WAL commit groups written, each ending with one fdatasync.",
            &[("", load(&wal.groups))],
        );
        metric(
            "alluvium_wal_records_total",
            "counter",
            "WAL records (one per accepted request) made durable.",
            &[("", load(&wal.records))],
        );
        metric(
            "alluvium_memtable_bytes",
            "gauge",
            "Bytes held by memtables, active and frozen.",
            &[("", node.memtable_bytes() as u64)],
        );
        out
    }
}
