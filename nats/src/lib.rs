//! The NATS transport of alluvium: the subject grammar of the three stages (every token
//! validated, no subject ever built from raw input), the headers and envelopes producers and
//! subscribers see, the connection with reconnect and health, and the JetStream streams.
//!
//! Subjects (the prefix, `alluvium` by default, is configurable):
//! - `{prefix}.ingest.{tenant}.{table}`: producers publish events;
//! - `{prefix}.events.{tenant}.{table}.{flushed|compacted|schema}`: commit events;
//! - `{prefix}.rejects.{tenant}.{table}`: rejected events with the reason.

pub mod connection;
pub mod envelope;
pub mod headers;
pub mod jetstream;
pub mod lease;
pub mod subject;

pub use async_nats;
pub use connection::{Connection, NatsConfig};
pub use envelope::{CommitEvent, EventFile, Reject};
pub use lease::{LeaseEvent, LeaseSettings, LostReason, Shard, ShardLeases};
pub use subject::{CommitKind, SubjectError, Subjects, validate_token};

/// What went wrong talking to NATS.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NatsError {
    /// The configuration is unusable.
    #[error("NATS configuration: {0}")]
    Config(String),
    /// No connection could be made.
    #[error("{0}")]
    Connect(String),
    /// A JetStream request failed.
    #[error("JetStream: {0}")]
    JetStream(String),
    /// Publishing failed.
    #[error("NATS publish failed: {0}")]
    Publish(String),
    /// A subject token is invalid.
    #[error(transparent)]
    Subject(#[from] SubjectError),
}
