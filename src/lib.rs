//! alluvium lands JSON event streams in a Parquet lake: producers POST events or publish
//! them on NATS; alluvium authenticates them, checks them against each table's
//! schema, makes them durable in a checksummed write-ahead log, buffers them in skiplist
//! memtables, flushes them to Parquet and records every file in a catalog.
//!
//! This crate is the binary's front: the [`cli`], the [`config`] file, the [`server`] that
//! assembles a node and serves the [`http`] API, and [`telemetry`]; and the other side of that
//! API: a blocking [`client`] and the [`commands`] built on it (`send`, `query`, `tables`,
//! `tail`). The pipeline itself lives in `alluvium-pipelines`, its components in
//! `alluvium-actors`.

pub mod bench;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod http;
pub mod metrics;
pub mod rejects;
pub mod server;
pub mod telemetry;
