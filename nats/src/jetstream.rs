//! JetStream streams alluvium uses, created or brought up to date idempotently at start.
//!
//! - `ALLUVIUM_EVENTS` over `{prefix}.events.>`: commit events, kept so subscribers can replay
//!   from any point; a duplicate window drops events published twice (same `Nats-Msg-Id`).
//! - `ALLUVIUM_REJECTS` over `{prefix}.rejects.>`: rejected batches, for replay after a fix.
//! - `ALLUVIUM_INGEST` over `{prefix}.ingest.>`: the replicated log of JetStream ingest mode.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::NatsError;
use crate::subject::Subjects;

/// Name of the commit event stream.
pub const EVENTS_STREAM: &str = "ALLUVIUM_EVENTS";
/// Name of the rejects stream.
pub const REJECTS_STREAM: &str = "ALLUVIUM_REJECTS";
/// Name of the ingest stream (JetStream ingest mode).
pub const INGEST_STREAM: &str = "ALLUVIUM_INGEST";

/// Settings of the streams alluvium creates.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Replicas of every stream (1 on a single server, 3 on a cluster).
    pub replicas: usize,
    /// How long commit events are kept.
    pub events_max_age: Duration,
    /// How long rejected batches are kept.
    pub rejects_max_age: Duration,
    /// Window in which JetStream drops a message whose `Nats-Msg-Id` it has seen.
    pub duplicate_window: Duration,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            replicas: 1,
            events_max_age: Duration::from_secs(7 * 24 * 3600),
            rejects_max_age: Duration::from_secs(7 * 24 * 3600),
            duplicate_window: Duration::from_secs(3600),
        }
    }
}

/// The configuration of the commit event stream.
pub fn events_stream(subjects: &Subjects, s: &StreamSettings) -> stream::Config {
    stream::Config {
        name: EVENTS_STREAM.into(),
        subjects: vec![subjects.events_all()],
        max_age: s.events_max_age,
        duplicate_window: s.duplicate_window,
        num_replicas: s.replicas,
        storage: stream::StorageType::File,
        allow_direct: true,
        ..Default::default()
    }
}

/// The configuration of the rejects stream.
pub fn rejects_stream(subjects: &Subjects, s: &StreamSettings) -> stream::Config {
    stream::Config {
        name: REJECTS_STREAM.into(),
        subjects: vec![subjects.rejects_all()],
        max_age: s.rejects_max_age,
        duplicate_window: Duration::from_secs(120).min(s.rejects_max_age),
        num_replicas: s.replicas,
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

/// The configuration of the ingest stream (the replicated log of JetStream ingest mode):
/// kept until consumed and acknowledged by the processing stage.
pub fn ingest_stream(subjects: &Subjects, s: &StreamSettings) -> stream::Config {
    stream::Config {
        name: INGEST_STREAM.into(),
        subjects: vec![subjects.ingest_all()],
        retention: stream::RetentionPolicy::WorkQueue,
        duplicate_window: s.duplicate_window,
        num_replicas: s.replicas,
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

/// Creates the stream, or updates it when its subjects, limits or replicas differ from
/// `config`; leaves it alone when they match. Safe to call from many nodes at once.
pub async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Info, NatsError> {
    let name = config.name.clone();
    let err = |what: &str, e: &dyn std::fmt::Display| {
        NatsError::JetStream(format!("cannot {what} stream {name}: {e}"))
    };
    match js.get_stream(&name).await {
        Ok(mut existing) => {
            let info = existing.info().await.map_err(|e| err("read", &e))?.clone();
            let c = &info.config;
            let same = c.subjects == config.subjects
                && c.max_age == config.max_age
                && c.duplicate_window == config.duplicate_window
                && c.num_replicas == config.num_replicas;
            if same {
                return Ok(info);
            }
            tracing::info!(stream = %name, "updating stream configuration");
            js.update_stream(config)
                .await
                .map_err(|e| err("update", &e))
        }
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(ref j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            match js.create_stream(config.clone()).await {
                Ok(mut stream) => Ok(stream.info().await.map_err(|e| err("read", &e))?.clone()),
                // Another node created it in between: check it like an existing one.
                Err(create) => match js.get_stream(&name).await {
                    Ok(mut s) => Ok(s.info().await.map_err(|e| err("read", &e))?.clone()),
                    Err(_) => Err(err("create", &create)),
                },
            }
        }
        Err(e) => Err(err("look up", &e)),
    }
}
