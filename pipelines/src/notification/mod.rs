//! The notification stage: commit events (flushes, compactions, schema versions) to
//! subscribers, and rejected batches to their stream.
//!
//! - [`events`]: deriving events from catalog commits;
//! - [`feed`]: following the catalog log, and the hub that gives every sink a gap-free stream
//!   from any resume point;
//! - [`nats`]: publishing events and rejects to JetStream;
//! - [`webhooks`]: POSTing signed events to HTTP endpoints, with retries and a dead-letter log.

pub mod events;
pub mod feed;
pub mod nats;
pub mod webhooks;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use alluvium_nats::Reject;
use tokio::sync::mpsc;

pub use feed::{EventFeed, EventHub, EventPos};

/// Where the ingest stage hands rejected batches; bounded, and never blocks ingest: when full,
/// rejects are counted as dropped.
#[derive(Debug, Clone)]
pub struct RejectSink {
    tx: mpsc::Sender<Reject>,
    /// Rejects dropped because the sink was full or closed.
    pub dropped: Arc<AtomicU64>,
}

impl RejectSink {
    /// A sink holding up to `capacity` rejects, and the receiving end.
    pub fn new(capacity: usize) -> (RejectSink, mpsc::Receiver<Reject>) {
        let (tx, rx) = mpsc::channel(capacity);
        let sink = RejectSink {
            tx,
            dropped: Default::default(),
        };
        (sink, rx)
    }

    /// Queues a reject, or counts it as dropped.
    pub fn send(&self, reject: Reject) {
        if self.tx.try_send(reject).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n,
                    "rejects queue full: rejected batches not published"
                );
            }
        }
    }
}
