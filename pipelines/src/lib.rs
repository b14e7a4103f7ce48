//! The stages of alluvium and how they are wired.
//!
//! - [`ingest`]: the core behind every source (HTTP, NATS): authenticate, check the
//!   table's schema, push back when memory is full, hand the batch to the log, acknowledge.
//! - [`processing`]: assembles log -> memtable -> flush -> catalog for a standalone node,
//!   recovering state from disk first.
//! - [`query`]: reads a table as of one snapshot: committed files plus unflushed memtable rows.
//! - [`lookup`]: the newest version of one key of an upsert table.
//! - [`filter`]: query filters, evaluated on batches and checked against statistics.
//! - [`scan`]: reading committed files with pruning by statistics and bloom filters.
//! - [`indexes`]: pruning files and row groups by their secondary index sidecars.
//! - [`notification`]: commit events (flushes, compactions, schema versions) for subscribers
//!   on NATS, server-sent events and webhooks, and rejected batches.
//! - [`sources`]: the NATS ingest source; [`link`]: the node's NATS connection, streams and
//!   the tasks that use them.
//!
//! Sources and servers (`alluvium` binary) call into a [`Node`]; they never talk to actors
//! directly.

pub mod error;
pub mod filter;
pub mod indexes;
pub mod ingest;
mod ingest_group;
pub mod link;
pub mod lookup;
pub mod notification;
pub mod processing;
pub mod query;
pub mod quota;
pub mod scan;
pub mod sources;

pub use error::PipelineError;
pub use processing::{Node, NodeConfig};
pub mod cluster;
