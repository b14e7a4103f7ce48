//! Sources of events besides the ingest endpoint (whose handlers live in the binary and call
//! the same core): NATS subjects, the JetStream ingest stream, and the checks of signed inbound webhooks.

pub mod jetstream;
pub mod nats;
pub mod webhook;
