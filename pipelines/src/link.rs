//! The NATS link of a node: connects, sets up the JetStream streams, and starts the NATS
//! ingest source and the publishers of commit events and rejects. A standalone node without a
//! NATS URL never builds one.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use alluvium_nats::async_nats::jetstream;
use alluvium_nats::jetstream::{StreamSettings, ensure_stream, events_stream, rejects_stream};
use alluvium_nats::{Connection, NatsConfig, NatsError, Subjects};
use tokio::sync::watch;

use crate::Node;
use crate::notification::RejectSink;
use crate::notification::nats::{PublishStats, publish_events, publish_rejects};
use crate::sources::nats::{NatsIngestConfig, NatsIngestStats};

/// Payload bytes of rejects queued for publishing at most; beyond, rejects are dropped (and
/// counted) rather than held in memory.
const REJECTS_MAX_BYTES: usize = 64 << 20;

/// A failure of the link's set-up.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct LinkError(pub String);

/// Everything the NATS link needs.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// The connection.
    pub connection: NatsConfig,
    /// Subject prefix (`alluvium`).
    pub prefix: String,
    /// The streams' settings.
    pub streams: StreamSettings,
    /// The ingest source; `None` leaves ingest to other nodes.
    pub ingest: Option<NatsIngestConfig>,
    /// Whether to publish commit events (and where the cursor lives).
    pub publish_events: Option<PathBuf>,
    /// Rejected batches queued for publishing at most.
    pub rejects_capacity: usize,
}

/// A running NATS link.
#[derive(Debug, Clone)]
pub struct NatsLink {
    /// The connection (its health feeds `/readyz`).
    pub connection: Connection,
    /// The grammar in use.
    pub subjects: Subjects,
    /// Counters of the ingest source.
    pub ingest_stats: Arc<NatsIngestStats>,
    /// Counters of the publishers.
    pub publish_stats: Arc<PublishStats>,
    /// Turned true by [`NatsLink::stop_ingest`].
    stop: Arc<watch::Sender<bool>>,
    /// The ingest source's task, until [`NatsLink::stop_ingest`] waits for it.
    ingest: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl NatsLink {
    /// Connects and starts the configured parts on the current arbiter.
    pub async fn start(node: &Node, config: LinkConfig) -> Result<NatsLink, NatsError> {
        let subjects = Subjects::new(&config.prefix)?;
        let connection = Connection::connect(&config.connection).await?;
        let js = jetstream::new(connection.client.clone());
        ensure_stream(&js, events_stream(&subjects, &config.streams)).await?;
        ensure_stream(&js, rejects_stream(&subjects, &config.streams)).await?;
        let ingest_stats = Arc::new(NatsIngestStats::default());
        let publish_stats = Arc::new(PublishStats::default());
        let (stop, stop_rx) = watch::channel(false);
        let mut ingest_task = None;

        let (sink, rejects) = RejectSink::new(config.rejects_capacity.max(1), REJECTS_MAX_BYTES);
        node.set_reject_sink(sink);
        actix::spawn(publish_rejects(
            rejects,
            js.clone(),
            subjects.clone(),
            publish_stats.clone(),
        ));
        if let Some(cursor) = config.publish_events {
            actix::spawn(publish_events(
                node.commit_events().clone(),
                js.clone(),
                subjects.clone(),
                cursor,
                publish_stats.clone(),
            ));
        }
        if let Some(ingest) = config.ingest.clone().filter(|i| i.jetstream) {
            ensure_stream(
                &js,
                alluvium_nats::jetstream::ingest_stream(&subjects, &config.streams),
            )
            .await?;
            let consumer = crate::sources::jetstream::jetstream_consumer(&js, &ingest)
                .await
                .map_err(|e| NatsError::JetStream(e.0))?;
            ingest_task = Some(actix::spawn(crate::sources::jetstream::serve_jetstream(
                js.clone(),
                consumer,
                node.clone(),
                subjects.clone(),
                ingest,
                ingest_stats.clone(),
                stop_rx,
            )));
        } else if let Some(ingest) = config.ingest {
            // A stream over the ingest subjects would answer every request with its own
            // acknowledgement before alluvium validated anything.
            // (Any stream whose subjects overlap the ingest subjects counts.)
            if let Ok(name) = js.stream_by_subject(subjects.ingest_all()).await {
                return Err(NatsError::Config(format!(
                    "stream {name} captures ingest subjects ({}) and would acknowledge requests \
                     before alluvium validates them: set [nats] ingest_mode = \"jetstream\" \
                     (if it is {}), or remove those subjects from the stream",
                    subjects.ingest_all(),
                    alluvium_nats::jetstream::INGEST_STREAM,
                )));
            }
            let client = connection.client.clone();
            let sub = crate::sources::nats::subscribe(&client, &subjects, &ingest)
                .await
                .map_err(|e| NatsError::Connect(e.0))?;
            ingest_task = Some(actix::spawn(crate::sources::nats::serve(
                sub,
                node.clone(),
                client,
                subjects.clone(),
                ingest,
                ingest_stats.clone(),
                stop_rx,
            )));
        }
        Ok(NatsLink {
            connection,
            subjects,
            ingest_stats,
            publish_stats,
            stop: Arc::new(stop),
            ingest: Arc::new(Mutex::new(ingest_task)),
        })
    }

    /// [`NatsLink::start`] on a thread of its own (an actix arbiter): the NATS client's
    /// socket, the ingest subscription and the replies then run beside the node's actors
    /// instead of on their thread.
    pub async fn start_on_own_thread(
        node: &Node,
        config: LinkConfig,
    ) -> Result<NatsLink, NatsError> {
        let arbiter = actix::Arbiter::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let node = node.clone();
        let spawned = arbiter.spawn(async move {
            let _ = tx.send(NatsLink::start(&node, config).await);
        });
        if !spawned {
            return Err(NatsError::Connect("cannot start the NATS thread".into()));
        }
        // The arbiter's thread runs until the process ends.
        let _handle = arbiter.handle();
        rx.await
            .map_err(|_| NatsError::Connect("the NATS thread stopped during start-up".into()))?
    }

    /// Stops the ingest source: no new message is taken (core NATS unsubscribes, JetStream
    /// stops pulling), and this returns once every message taken is answered, or after
    /// `within`. Publishers keep running. Returns whether the source finished in time.
    pub async fn stop_ingest(&self, within: Duration) -> bool {
        self.stop.send_replace(true);
        let task = self
            .ingest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(task) = task else {
            return true;
        };
        match tokio::time::timeout(within, task).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the NATS ingest task failed");
                false
            }
            Err(_) => false,
        }
    }

    /// Sends what the client still buffers (replies, acknowledgements, events) and closes the
    /// connection, within `within`.
    pub async fn close(&self, within: Duration) {
        let client = &self.connection.client;
        match tokio::time::timeout(within, client.drain()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "closing the NATS connection failed"),
            Err(_) => tracing::warn!("closing the NATS connection timed out"),
        }
    }

    /// `Ok` while connected to NATS.
    pub fn health(&self) -> Result<(), String> {
        self.connection.health()
    }
}
