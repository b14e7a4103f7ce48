//! Every stateful component of alluvium, each a folder with its pure logic in plain modules and
//! its actor shell in `actor.rs` (messages in `messages.rs`):
//!
//! - [`auth`]: API keys (hashes only) and JWT verification -> a [`auth::Principal`].
//! - [`schema`]: table definitions, the registry, JSON -> rows -> Arrow translation.
//! - [`wal`]: the checksummed write-ahead log with group commit and crash recovery.
//! - [`memtable`]: per-table concurrent skiplists of durable rows awaiting flush.
//! - [`flush`]: frozen memtables -> sorted Parquet files -> catalog commit.
//! - [`compaction`]: merging small files per partition with MVCC resolution, and file GC.
//! - [`catalog`]: the transaction log of tables, schema versions, files and log positions.
//! - [`storage`]: the object store (durable local puts) and Parquet encoding shared by the above.
//! - [`failpoint`]: fault injection at named points of the durability path, for tests.
//!
//! Data flows `schema -> wal -> memtable -> flush -> storage + catalog`; the wiring of these
//! actors into a pipeline lives in `alluvium-pipelines`.

pub mod auth;
pub mod background;
pub mod catalog;
pub mod compaction;
pub mod failpoint;
pub mod flush;
pub mod ids;
pub mod memtable;
pub mod row;
pub mod schema;
pub mod storage;
pub mod trace;
pub mod wal;
