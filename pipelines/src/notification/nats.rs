//! Publishing commit events and rejects to JetStream.
//!
//! Commit events go to `ALLUVIUM_EVENTS` at least once: each is published with `Nats-Msg-Id`
//! set to `{lake_id}:{catalog_version}:{index}`, the publish is retried until JetStream
//! acknowledges it, and only then does the cursor file (`<data>/notify/nats.cursor`, holding
//! the lake id and the event id) move past it. After a crash the events since the cursor are
//! published again and JetStream's duplicate window drops the copies. Without a cursor (a new
//! disk, another node), publishing resumes after the newest event of this lake in the stream,
//! or from the lake's first commit if the stream has none.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use alluvium_nats::async_nats::HeaderMap;
use alluvium_nats::async_nats::jetstream;
use alluvium_nats::{CommitEvent, Subjects, connection::backoff, headers};
use futures::StreamExt;

use super::EventHub;
use super::feed::EventPos;

/// Counters of the publishers.
#[derive(Debug, Default)]
pub struct PublishStats {
    /// Commit events acknowledged by JetStream.
    pub events_published: AtomicU64,
    /// Of those, events JetStream reported as duplicates (already published).
    pub events_duplicate: AtomicU64,
    /// Failed publish attempts (each retried).
    pub publish_failures: AtomicU64,
    /// Commit events over the server's payload limit, not published.
    pub events_too_large: AtomicU64,
    /// Rejects acknowledged by JetStream.
    pub rejects_published: AtomicU64,
    /// Rejects given up on after retries.
    pub rejects_failed: AtomicU64,
}

/// Reads the cursor: the id of the last event of lake `lake_id` JetStream acknowledged. A
/// cursor of another lake (the lake was created again) is ignored.
pub fn read_cursor(path: &Path, lake_id: &str) -> Option<EventPos> {
    let text = std::fs::read_to_string(path).ok()?;
    let (lake, id) = text.trim().split_once(' ')?;
    if lake != lake_id {
        tracing::warn!(path = %path.display(), "the event cursor belongs to another lake; ignored");
        return None;
    }
    CommitEvent::parse_id(id)
}

fn write_cursor(path: &Path, lake_id: &str, id: &str) -> std::io::Result<()> {
    super::replace_file(path, format!("{lake_id} {id}\n").as_bytes())
}

/// Messages looked at, newest first, for this lake's newest event.
const NEWEST_SCAN: u64 = 1000;

/// The newest event of lake `lake_id` among the last [`NEWEST_SCAN`] messages of the events
/// stream (`Ok(None)` if there is none); `Err` if the stream could not be read.
async fn newest_in_stream(
    js: &jetstream::Context,
    lake_id: &str,
) -> Result<Option<EventPos>, String> {
    let mut stream = js
        .get_stream(alluvium_nats::jetstream::EVENTS_STREAM)
        .await
        .map_err(|e| e.to_string())?;
    let state = stream
        .info()
        .await
        .map_err(|e| e.to_string())?
        .state
        .clone();
    let mut seq = state.last_sequence;
    let floor = state.first_sequence.max(seq.saturating_sub(NEWEST_SCAN));
    while seq >= floor.max(1) {
        match stream.get_raw_message(seq).await {
            Ok(msg) => {
                let h = &msg.headers;
                if h.get(headers::LAKE_ID).map(|v| v.as_str()) == Some(lake_id) {
                    let id = h.get(headers::EVENT_ID).map(|v| v.as_str()).unwrap_or("");
                    return Ok(CommitEvent::parse_id(id));
                }
            }
            // A message deleted from the middle of the stream: look further back.
            Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {}
            Err(e) => return Err(e.to_string()),
        }
        seq -= 1;
    }
    Ok(None)
}

/// Publishes every commit event after the cursor, then live ones, forever. Runs on the
/// current arbiter.
pub async fn publish_events(
    hub: EventHub,
    js: jetstream::Context,
    subjects: Subjects,
    cursor: PathBuf,
    stats: Arc<PublishStats>,
) {
    loop {
        // After the cursor, or after this lake's newest event in the stream if that is later
        // (another node published meanwhile, or the cursor was lost); with neither, every
        // event since the catalog began (subscribers can replay it all).
        let newest = match newest_in_stream(&js, hub.lake_id()).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the events stream; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let after = read_cursor(&cursor, hub.lake_id())
            .max(newest)
            .unwrap_or((0, usize::MAX));
        let mut events = Box::pin(hub.subscribe(Some(after)));
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "commit event stream failed; resuming from the cursor");
                    break;
                }
            };
            publish_one(&js, &subjects, &event, &stats).await;
            if let Err(e) = write_cursor(&cursor, &event.lake_id, &event.id) {
                tracing::warn!(path = %cursor.display(), error = %e, "cannot write the event cursor; events may be published again after a restart");
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Publishes one message and waits for JetStream's acknowledgement.
async fn publish_acked(
    js: &jetstream::Context,
    subject: &str,
    headers: HeaderMap,
    payload: bytes::Bytes,
) -> Result<jetstream::publish::PublishAck, String> {
    js.publish_with_headers(subject.to_string(), headers, payload)
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())
}

/// Publishes one event, retrying with backoff until JetStream acknowledges it.
async fn publish_one(
    js: &jetstream::Context,
    subjects: &Subjects,
    event: &CommitEvent,
    stats: &PublishStats,
) {
    let subject = match subjects.events(&event.tenant, &event.table, event.kind) {
        Ok(s) => s,
        Err(e) => {
            // Names in the catalog are validated, so this cannot happen; never publish it.
            tracing::error!(error = %e, id = %event.id, "commit event has an invalid subject");
            return;
        }
    };
    let payload = match serde_json::to_vec(event) {
        Ok(p) => bytes::Bytes::from(p),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a commit event");
            return;
        }
    };
    // An event over the server's payload limit (a commit of thousands of files) can never be
    // published: say so once and go on, rather than block every later event behind it.
    let max_payload = js.client().server_info().max_payload;
    if max_payload > 0 && payload.len() + 1024 > max_payload {
        stats.events_too_large.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            id = %event.id,
            bytes = payload.len(),
            max_payload,
            "a commit event is larger than the NATS server's max_payload and is not published; raise max_payload (SSE and webhooks still carry it)"
        );
        return;
    }
    let mut attempt = 0;
    loop {
        let mut h = HeaderMap::new();
        h.insert(headers::NATS_MSG_ID, event.msg_id().as_str());
        h.insert(headers::EVENT_ID, event.id.as_str());
        h.insert(headers::LAKE_ID, event.lake_id.as_str());
        h.insert(headers::CONTENT_TYPE, "application/json");
        match publish_acked(js, &subject, h, payload.clone()).await {
            Ok(ack) => {
                stats.events_published.fetch_add(1, Ordering::Relaxed);
                if ack.duplicate {
                    stats.events_duplicate.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            Err(e) => {
                stats.publish_failures.fetch_add(1, Ordering::Relaxed);
                if attempt % 10 == 0 {
                    tracing::warn!(id = %event.id, attempt, error = %e, "publishing a commit event failed; retrying");
                }
                tokio::time::sleep(backoff(attempt + 2)).await;
                attempt += 1;
            }
        }
    }
}

/// Publishes rejected batches to `{prefix}.rejects.{tenant}.{table}` (stream
/// `ALLUVIUM_REJECTS`), with a few retries each.
pub async fn publish_rejects(
    mut rx: super::RejectQueue,
    js: jetstream::Context,
    subjects: Subjects,
    stats: Arc<PublishStats>,
) {
    while let Some(reject) = rx.recv().await {
        let Ok(subject) = subjects.rejects(&reject.tenant, &reject.table) else {
            continue;
        };
        let Ok(payload) = serde_json::to_vec(&reject) else {
            continue;
        };
        let payload = bytes::Bytes::from(payload);
        let mut done = false;
        for attempt in 0..5 {
            let mut h = HeaderMap::new();
            h.insert(headers::CONTENT_TYPE, "application/json");
            h.insert(headers::CODE, reject.code.as_str());
            match publish_acked(&js, &subject, h, payload.clone()).await {
                Ok(_) => {
                    done = true;
                    break;
                }
                Err(e) => {
                    tracing::debug!(attempt, error = %e, "publishing a reject failed");
                    tokio::time::sleep(backoff(attempt + 2)).await;
                }
            }
        }
        if done {
            stats.rejects_published.fetch_add(1, Ordering::Relaxed);
        } else {
            stats.rejects_failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(tenant = %reject.tenant, table = %reject.table, "a rejected batch could not be published to the rejects stream");
        }
    }
}
