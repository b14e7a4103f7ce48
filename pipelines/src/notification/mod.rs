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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use alluvium_nats::Reject;
use tokio::sync::mpsc;

pub use feed::{EventFeed, EventHub, EventPos};

/// Replaces the file at `path` with `contents`, durably: a temporary file, fsync, rename,
/// fsync of the directory (the sinks' cursors).
pub(crate) fn replace_file(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_data()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Where the ingest stage hands rejected batches; bounded in count and in bytes, and never
/// blocks ingest: when full, rejects are counted as dropped.
#[derive(Debug, Clone)]
pub struct RejectSink {
    tx: mpsc::Sender<Reject>,
    queued_bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    /// Rejects dropped because the sink was full or closed.
    pub dropped: Arc<AtomicU64>,
}

/// The receiving end of a [`RejectSink`].
#[derive(Debug)]
pub struct RejectQueue {
    rx: mpsc::Receiver<Reject>,
    queued_bytes: Arc<AtomicUsize>,
}

impl RejectQueue {
    /// The next reject, once one is queued; `None` when every sink is gone.
    pub async fn recv(&mut self) -> Option<Reject> {
        let r = self.rx.recv().await?;
        self.queued_bytes
            .fetch_sub(r.payload.len(), Ordering::Relaxed);
        Some(r)
    }
}

impl RejectSink {
    /// A sink holding up to `capacity` rejects and `max_bytes` of their payloads, and the
    /// receiving end.
    pub fn new(capacity: usize, max_bytes: usize) -> (RejectSink, RejectQueue) {
        let (tx, rx) = mpsc::channel(capacity);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let sink = RejectSink {
            tx,
            queued_bytes: queued_bytes.clone(),
            max_bytes,
            dropped: Default::default(),
        };
        (sink, RejectQueue { rx, queued_bytes })
    }

    /// Queues a reject, or counts it as dropped.
    pub fn send(&self, reject: Reject) {
        let size = reject.payload.len();
        let queued = self.queued_bytes.fetch_add(size, Ordering::Relaxed);
        let full = queued + size > self.max_bytes;
        if full || self.tx.try_send(reject).is_err() {
            self.queued_bytes.fetch_sub(size, Ordering::Relaxed);
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn reject(payload_len: usize) -> Reject {
        Reject {
            tenant: "t".into(),
            table: "x".into(),
            code: "type_mismatch".into(),
            status: 400,
            reason: "r".into(),
            rejected_at: "now".into(),
            source: "nats".into(),
            idempotency_key: None,
            format: "json".into(),
            payload: "p".repeat(payload_len),
            payload_encoding: "utf8".into(),
            payload_bytes: payload_len,
        }
    }

    #[tokio::test]
    async fn the_queue_is_bounded_in_count_and_bytes() {
        let (sink, mut queue) = RejectSink::new(3, 100);
        sink.send(reject(60));
        sink.send(reject(60)); // 120 bytes queued would pass the byte bound: dropped
        sink.send(reject(30));
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(queue.recv().await.unwrap().payload.len(), 60);
        // Room again once one is taken.
        sink.send(reject(60));
        assert_eq!(queue.recv().await.unwrap().payload.len(), 30);
        assert_eq!(queue.recv().await.unwrap().payload.len(), 60);
        for _ in 0..4 {
            sink.send(reject(1));
        }
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 2, "count bound");
    }
}
