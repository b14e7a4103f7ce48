//! The replicated log of cluster mode, as ingest nodes write it: one JetStream message per
//! validated batch on `{prefix}.log.{tenant}.{table}` in stream `ALLUVIUM_INGEST`.
//!
//! A batch is acknowledged once JetStream acknowledged the message, which means it is stored
//! on a majority of the stream's replicas. The message is the batch's WAL record
//! ([`WalRecord::encode_message`]: checksummed, with the schema version it was validated
//! against), so the shard's owner inserts it without parsing JSON again. Headers:
//! - `Nats-Msg-Id: {tenant}.{table}.{idempotency key}` when the producer gave a key: JetStream
//!   stores a batch published again within the stream's duplicate window once, whichever
//!   ingest node the retry reached, and answers with the first one's sequence;
//! - `Alluvium-Rows`, `Alluvium-Body-Hash`: what a retry is compared with, so a key reused for
//!   a different body is refused instead of answered as a duplicate.

use alluvium_actors::ids::{MAX_CLUSTER_BATCH_ROWS, TableRef, cluster_seq};
use alluvium_actors::row::Row;
use alluvium_actors::wal::WalError;
use alluvium_actors::wal::WalRecord;
use alluvium_actors::wal::dedupe::{IdempotencyKey, now_us};
use alluvium_nats::async_nats::jetstream::{self, context::PublishErrorKind};
use alluvium_nats::async_nats::{self, HeaderMap};
use alluvium_nats::jetstream::{INGEST_STREAM, LogSettings, ensure_log_stream};
use alluvium_nats::{NatsError, Subjects};
use bytes::Bytes;

use crate::PipelineError;

/// Header with the number of events in a log message.
pub const ROWS_HEADER: &str = "Alluvium-Rows";
/// Header with the hash of the request body a log message came from.
pub const BODY_HASH_HEADER: &str = "Alluvium-Body-Hash";

/// Where a batch landed in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Sequence of its first event (`stream_seq << 20`).
    pub first_seq: u64,
    /// Sequence of its last event.
    pub last_seq: u64,
    /// Whether it answers a retry: the batch was already in the log and was not stored again.
    pub duplicate: bool,
}

/// The writer side of the replicated log. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ReplicatedLog {
    client: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
}

impl ReplicatedLog {
    /// Creates the log stream, or checks an existing one.
    pub async fn open(
        client: async_nats::Client,
        subjects: Subjects,
        settings: &LogSettings,
    ) -> Result<ReplicatedLog, NatsError> {
        let js = jetstream::new(client.clone());
        ensure_log_stream(&js, &subjects, settings).await?;
        Ok(ReplicatedLog {
            client,
            js,
            subjects,
        })
    }

    /// Appends one validated batch as one message; the whole batch or nothing.
    pub async fn append(
        &self,
        table: &TableRef,
        schema_version: u32,
        rows: Vec<Row>,
        key: Option<&IdempotencyKey>,
    ) -> Result<Appended, PipelineError> {
        let count = rows.len();
        if count == 0 || count > MAX_CLUSTER_BATCH_ROWS {
            return Err(PipelineError::InvalidQuery(format!(
                "a batch holds 1 to {MAX_CLUSTER_BATCH_ROWS} events in cluster mode, not {count}"
            )));
        }
        let subject = self
            .subjects
            .log(table.tenant.as_str(), table.table.as_str())
            .map_err(|e| PipelineError::Unavailable(e.to_string()))?;
        let record = WalRecord {
            table: table.clone(),
            schema_version,
            first_seq: 0,
            ingested_at_us: now_us(),
            rows,
            idempotency_key: None,
        };
        let payload = record.encode_message();
        let max_payload = self.client.server_info().max_payload;
        // Headers add a few hundred bytes at most.
        if payload.len() + 512 > max_payload {
            return Err(PipelineError::Wal(WalError::RecordTooLarge {
                size: payload.len(),
                max: max_payload.saturating_sub(512) as u32,
            }));
        }
        let mut headers = HeaderMap::new();
        headers.insert(ROWS_HEADER, count.to_string().as_str());
        if let Some(key) = key {
            let id = format!("{}.{}.{}", table.tenant, table.table, key.key);
            headers.insert("Nats-Msg-Id", id.as_str());
            headers.insert(BODY_HASH_HEADER, key.body_hash.to_string().as_str());
        }
        let ack = self
            .js
            .publish_with_headers(subject, headers, Bytes::from(payload))
            .await
            .map_err(publish_error)?
            .await
            .map_err(publish_error)?;
        let first_seq = cluster_seq(ack.sequence, 0);
        let last_seq = cluster_seq(ack.sequence, count as u64 - 1);
        if ack.duplicate
            && let Some(key) = key
        {
            self.check_retry(ack.sequence, key).await?;
        }
        Ok(Appended {
            first_seq,
            last_seq,
            duplicate: ack.duplicate,
        })
    }

    /// A retry must carry the body of the batch it repeats. A batch already flushed and
    /// purged from the log cannot be compared any more and is answered as the duplicate it
    /// claims to be.
    async fn check_retry(&self, sequence: u64, key: &IdempotencyKey) -> Result<(), PipelineError> {
        let stream = self
            .js
            .get_stream_no_info(INGEST_STREAM)
            .await
            .map_err(|e| PipelineError::Unavailable(format!("replicated log: {e}")))?;
        let Ok(first) = stream.get_raw_message(sequence).await else {
            return Ok(());
        };
        let hash = first
            .headers
            .get(BODY_HASH_HEADER)
            .map(|v| v.as_str().to_string());
        if hash.as_deref() != Some(key.body_hash.to_string().as_str()) {
            return Err(PipelineError::Wal(WalError::IdempotencyKeyReused {
                key: key.key.clone(),
            }));
        }
        Ok(())
    }
}

/// The answer for a failed publish: a full log pushes back (the shards' owners are behind or
/// gone); anything else is the log being unreachable. Either way nothing was acknowledged.
fn publish_error(e: impl Into<jetstream::context::PublishError>) -> PipelineError {
    let e: jetstream::context::PublishError = e.into();
    let detail = std::error::Error::source(&e)
        .map(|s| s.to_string())
        .unwrap_or_default();
    if matches!(e.kind(), PublishErrorKind::MaxPayloadExceeded) {
        return PipelineError::Unavailable(format!(
            "the batch exceeds the NATS server's max_payload: {e}"
        ));
    }
    if detail.contains("maximum bytes") || detail.contains("maximum messages") {
        return PipelineError::LogFull(detail);
    }
    PipelineError::Unavailable(format!(
        "the replicated log did not acknowledge: {e} {detail}"
    ))
}
