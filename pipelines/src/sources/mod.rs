//! Sources of events besides HTTP (whose handlers live in the binary and call the same core).

pub mod nats;
