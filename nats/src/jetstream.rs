//! JetStream streams alluvium uses, created or brought up to date idempotently at start.
//!
//! - `ALLUVIUM_EVENTS` over `{prefix}.events.>`: commit events, kept so subscribers can replay
//!   from any point; a duplicate window drops events published twice (same `Nats-Msg-Id`).
//! - `ALLUVIUM_REJECTS` over `{prefix}.rejects.>`: rejected batches, for replay after a fix.
//! - `ALLUVIUM_INGEST` over `{prefix}.ingest.>`: the ingest stream of JetStream ingest mode
//!   (standalone); or, in cluster mode, over `{prefix}.log.>`: the replicated log, which ingest
//!   nodes write validated batches to and processing nodes read (see [`log_stream`]).

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

/// Settings of the replicated log of cluster mode.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// Replicas (3 on a 3-server cluster).
    pub replicas: usize,
    /// Bytes the log may hold; beyond, publishes are refused until shards are flushed.
    pub max_bytes: u64,
    /// Window in which a batch published again with the same `Nats-Msg-Id` (idempotency key) is
    /// recognised and stored once.
    pub duplicate_window: Duration,
}

/// The configuration of the replicated log of cluster mode: stream `ALLUVIUM_INGEST` over
/// `{prefix}.log.>`. Messages stay until the shard's owner has committed them to the catalog
/// and purges them; a full log refuses new batches (`discard: new`) instead of dropping old
/// ones.
pub fn log_stream(subjects: &Subjects, s: &LogSettings) -> stream::Config {
    stream::Config {
        name: INGEST_STREAM.into(),
        subjects: vec![subjects.log_all()],
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::New,
        max_bytes: i64::try_from(s.max_bytes).unwrap_or(i64::MAX),
        duplicate_window: s.duplicate_window,
        num_replicas: s.replicas,
        storage: stream::StorageType::File,
        allow_direct: true,
        ..Default::default()
    }
}

/// [`ensure_stream`] for the replicated log, refusing to take over an `ALLUVIUM_INGEST` that
/// holds the ingest subjects of a standalone node in JetStream ingest mode.
pub async fn ensure_log_stream(
    js: &jetstream::Context,
    subjects: &Subjects,
    s: &LogSettings,
) -> Result<stream::Info, NatsError> {
    if let Ok(mut existing) = js.get_stream(INGEST_STREAM).await {
        let info = existing.info().await.map_err(|e| {
            NatsError::JetStream(format!("cannot read stream {INGEST_STREAM}: {e}"))
        })?;
        if info.config.subjects != [subjects.log_all()] {
            return Err(NatsError::Config(format!(
                "stream {INGEST_STREAM} exists with subjects {:?}, not the replicated log {}: it \
                 belongs to a standalone node in JetStream ingest mode; use another NATS \
                 account or prefix for the cluster, or delete the stream",
                info.config.subjects,
                subjects.log_all()
            )));
        }
    }
    let config = log_stream(subjects, s);
    let info = ensure_stream(js, config.clone()).await?;
    let c = &info.config;
    if c.max_bytes != config.max_bytes || c.discard != config.discard {
        js.update_stream(config)
            .await
            .map_err(|e| NatsError::JetStream(format!("cannot update stream {INGEST_STREAM}: {e}")))
    } else {
        Ok(info)
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
