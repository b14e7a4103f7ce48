//! The configuration file (TOML) and its `ALLUVIUM_*` environment overrides.
//!
//! Every key has a default, documented on its field. An environment variable
//! `ALLUVIUM_<SECTION>__<KEY>` (double underscore between levels, e.g.
//! `ALLUVIUM_SERVER__LISTEN=0.0.0.0:8080`, `ALLUVIUM_DATA_DIR=/var/lib/alluvium`) overrides the
//! file; unknown keys, in the file or the environment, are errors rather than silently ignored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use alluvium_actors::auth::JwtConfig;
use serde::{Deserialize, Deserializer};

/// Environment variables with the `ALLUVIUM_` prefix that are not configuration keys (besides
/// `ALLUVIUM_TEST_*`, which belong to the test suite).
const NOT_CONFIG: [&str; 5] = ["BOOTSTRAP_KEY", "LOG", "LOG_FORMAT", "CONFIG", "FAILPOINTS"];

/// Errors of loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file or an override is not valid.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

mod sources;
pub use sources::{HookSection, SourcesSection};

/// Splits `"64 MiB"` into `(64, "MiB")`.
fn number_and_unit(s: &str) -> Option<(u64, &str)> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    Some((num.parse().ok()?, unit.trim()))
}

/// A byte size written as `"64MiB"`, `"16 MB"`, `"512KiB"` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (n, unit) = number_and_unit(s)
            .ok_or_else(|| format!("invalid size {s:?}: expected e.g. \"64MiB\""))?;
        let mult: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "kib" | "k" => 1 << 10,
            "mb" => 1_000_000,
            "mib" | "m" => 1 << 20,
            "gb" => 1_000_000_000,
            "gib" | "g" => 1 << 30,
            other => return Err(format!("invalid size unit {other:?} in {s:?}")),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }
}

/// A duration written as `"200ms"`, `"30s"`, `"5m"`, `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (n, unit) = number_and_unit(s)
            .ok_or_else(|| format!("invalid duration {s:?}: expected e.g. \"200ms\" or \"30s\""))?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86_400)),
            other => {
                return Err(format!(
                    "invalid duration unit {other:?} in {s:?}: use ms, s, m, h or d"
                ));
            }
        };
        Ok(HumanDuration(d))
    }
}

macro_rules! from_str_or_int {
    ($t:ty, $int:expr) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum Raw {
                    Int(u64),
                    Str(String),
                }
                match Raw::deserialize(d)? {
                    Raw::Int(n) => Ok($int(n)),
                    Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
                }
            }
        }
    };
}
from_str_or_int!(ByteSize, ByteSize);
from_str_or_int!(HumanDuration, |n| HumanDuration(Duration::from_millis(n)));

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Root of local state: WAL, key store, and the local object store. Default: `./data`.
    pub data_dir: PathBuf,
    /// HTTP server.
    pub server: ServerConfig,
    /// Write-ahead log.
    pub wal: WalSection,
    /// Memtables and flushing.
    pub memtable: MemtableSection,
    /// Compaction and deletion of replaced files.
    pub compaction: CompactionSection,
    /// Limits on ingest batches.
    pub ingest: IngestSection,
    /// Authentication.
    pub auth: AuthSection,
    /// Trace export.
    pub telemetry: crate::telemetry::TelemetryConfig,
    /// NATS: ingest subjects, commit events and rejects. Off unless `url` is set.
    pub nats: NatsSection,
    /// `[[webhooks]]`: endpoints that receive commit events as signed HTTP POSTs, each with
    /// its own cursor, retries and dead-letter log. Default: none.
    pub webhooks: Vec<WebhookSection>,
    /// Sources besides the ingest endpoint and NATS: `[[sources.webhook]]`.
    pub sources: SourcesSection,
    /// This node's role and name.
    pub node: NodeSection,
    /// Where the lake (data files, sidecars, catalog) lives. Default: under `data_dir`.
    pub store: StoreSection,
    /// Cluster mode: leases, the replicated log, catalog refresh.
    pub cluster: ClusterSection,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            server: ServerConfig::default(),
            wal: WalSection::default(),
            memtable: MemtableSection::default(),
            compaction: CompactionSection::default(),
            ingest: IngestSection::default(),
            auth: AuthSection::default(),
            telemetry: crate::telemetry::TelemetryConfig::default(),
            nats: NatsSection::default(),
            webhooks: Vec::new(),
            sources: SourcesSection::default(),
            node: NodeSection::default(),
            store: StoreSection::default(),
            cluster: ClusterSection::default(),
        }
    }
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the HTTP server binds. Default: `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Largest accepted request body, before and after decompression. Default: `16MiB`.
    pub body_limit: ByteSize,
    /// Longest wait for a request's head (request line and headers) after the connection
    /// opens or the previous request ends; a client that takes longer is answered 408 and
    /// disconnected. Default: `5s`.
    pub header_timeout: HumanDuration,
    /// Longest time for a request's whole body to arrive; past it the request is answered 408
    /// `body_timeout`. Default: `30s`.
    pub body_timeout: HumanDuration,
    /// How long an idle keep-alive connection stays open. Default: `5s`.
    pub keep_alive: HumanDuration,
    /// Largest ratio of decompressed to compressed size of a gzip or zstd body (bodies that
    /// decompress to at most 1 MiB pass whatever their ratio); beyond it, 413
    /// `compression_ratio_exceeded`. Default: 100.
    pub max_compression_ratio: usize,
    /// HTTP worker threads. Default: 0, meaning one per CPU core.
    pub workers: usize,
    /// On SIGTERM or SIGINT, how long requests in flight get to finish before their
    /// connections are closed. Default: `30s`.
    pub shutdown_timeout: HumanDuration,
    /// On SIGTERM or SIGINT, write every memtable to Parquet before exiting, so the next start
    /// replays nothing (`--flush-on-exit`). Default: false.
    pub flush_on_exit: bool,
    /// Bound on each table's flush on exit; a table that misses it stays in the write-ahead
    /// log and is replayed at the next start. Default: `30s`.
    pub flush_on_exit_timeout: HumanDuration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit: ByteSize(16 << 20),
            header_timeout: HumanDuration(Duration::from_secs(5)),
            body_timeout: HumanDuration(Duration::from_secs(30)),
            keep_alive: HumanDuration(Duration::from_secs(5)),
            max_compression_ratio: 100,
            workers: 0,
            shutdown_timeout: HumanDuration(Duration::from_secs(30)),
            flush_on_exit: false,
            flush_on_exit_timeout: HumanDuration(Duration::from_secs(30)),
        }
    }
}

/// `[wal]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalSection {
    /// A segment is closed and a new one started past this size. Default: `64MiB`.
    pub segment_size: ByteSize,
    /// Largest single log record (one batch). Default: `64MiB`.
    pub max_record_size: ByteSize,
}

impl Default for WalSection {
    fn default() -> Self {
        Self {
            segment_size: ByteSize(64 << 20),
            max_record_size: ByteSize(64 << 20),
        }
    }
}

/// `[memtable]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemtableSection {
    /// A table's memtable is frozen and flushed at this size. Default: `64MiB`.
    pub freeze_size: ByteSize,
    /// ...or when its oldest row is this old. Default: `60s`.
    pub freeze_age: HumanDuration,
    /// All memtables together may hold this much; above it ingest answers 429. Default: `1GiB`.
    pub budget: ByteSize,
    /// First delay before retrying a failed flush (doubles each time). Default: `1s`.
    pub flush_retry: HumanDuration,
}

impl Default for MemtableSection {
    fn default() -> Self {
        Self {
            freeze_size: ByteSize(64 << 20),
            freeze_age: HumanDuration(Duration::from_secs(60)),
            budget: ByteSize(1 << 30),
            flush_retry: HumanDuration(Duration::from_secs(1)),
        }
    }
}

/// `[compaction]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompactionSection {
    /// Size compacted files aim for; files at half of it or more are left alone. Default:
    /// `128MiB`.
    pub target_file_size: ByteSize,
    /// Files of similar size (tiers of 4x) in one time partition are merged once there are this
    /// many. Default: 4.
    pub min_files: usize,
    /// Most files in one merge. Default: 32.
    pub max_files: usize,
    /// Most compressed bytes in one merge. Default: `1GiB`.
    pub max_input_size: ByteSize,
    /// How often tables are checked for work and replaced files for deletion; `0s` turns
    /// background compaction off (`POST /v1/tables/{table}/compact` still works). Default: `30s`.
    pub interval: HumanDuration,
    /// How long files replaced by a compaction stay on the store (and older catalog versions
    /// stay readable with `as_of`), at least `1s`; running queries keep what they read past it.
    /// Default: `10m`.
    pub grace: HumanDuration,
    /// Merges running at once across tables, each on one core. Default: 1.
    pub max_concurrent: usize,
}

impl Default for CompactionSection {
    fn default() -> Self {
        let d = alluvium_actors::compaction::CompactionConfig::default();
        Self {
            target_file_size: ByteSize(d.target_file_bytes),
            min_files: d.min_input_files,
            max_files: d.max_input_files,
            max_input_size: ByteSize(d.max_input_bytes),
            interval: HumanDuration(d.interval),
            grace: HumanDuration(d.grace),
            max_concurrent: d.max_concurrent,
        }
    }
}

/// `[ingest]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSection {
    /// Most events in one request. Default: 1000000.
    pub max_batch_rows: usize,
    /// Deepest JSON nesting in one event. Default: 32.
    pub max_depth: usize,
    /// When a request that does not ask (`?durability=`) is answered: `wal` (after the
    /// write-ahead log's fdatasync) or `received` (before the disk; a crash can lose it; the
    /// answer says `"durability":"received"`). Default: `wal`.
    pub durability: alluvium_actors::wal::messages::Durability,
    /// Whether a batch sent to a table that does not exist creates it, with a schema inferred
    /// from the batch and evolution mode `infer` (otherwise it is refused with 404). Default:
    /// false.
    pub infer_new_tables: bool,
    /// Most tables one tenant may have; creating one more (by `PUT` or inference) is refused
    /// with 409 `table_limit_reached`. Default: 1000.
    pub max_tables_per_tenant: usize,
    /// How long an idempotency key (HTTP `Idempotency-Key`, NATS `Idempotency-Key` or
    /// `Nats-Msg-Id`) is remembered: a retry within it is answered with the first batch's
    /// sequences and stored nothing. Survives restarts. Default: `15m`.
    pub idempotency_window: HumanDuration,
    /// Most idempotency keys remembered; the oldest are forgotten first. Default: 1000000.
    pub idempotency_max_keys: usize,
}

impl Default for IngestSection {
    fn default() -> Self {
        Self {
            max_batch_rows: 1_000_000,
            max_depth: 32,
            durability: Default::default(),
            infer_new_tables: false,
            max_tables_per_tenant: alluvium_actors::schema::actor::DEFAULT_MAX_TABLES_PER_TENANT,
            idempotency_window: HumanDuration(Duration::from_secs(15 * 60)),
            idempotency_max_keys: 1_000_000,
        }
    }
}

/// `[nats]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsSection {
    /// Server URLs, comma separated (`nats://127.0.0.1:4222`). Default: none (no NATS; the
    /// flag `--nats-url` sets it).
    pub url: Option<String>,
    /// Subject prefix: `{prefix}.ingest.{tenant}.{table}`, `{prefix}.events...`,
    /// `{prefix}.rejects...`. Default: `alluvium`.
    pub prefix: String,
    /// Token for servers that require one. Default: none.
    pub token: Option<String>,
    /// Whether this node subscribes to the ingest subjects. Default: true.
    pub ingest: bool,
    /// `core` (a queue-group subscription; producers send requests and get the ack or error
    /// as the reply) or `jetstream` (producers publish to the `ALLUVIUM_INGEST` stream; a
    /// durable consumer acknowledges each message once its events are in the WAL).
    /// Default: `core`.
    pub ingest_mode: IngestMode,
    /// Queue group of the ingest subscription (nodes in one group share the messages).
    /// Default: `alluvium-ingest`.
    pub queue_group: String,
    /// Ingest messages handled at once. Default: 1024.
    pub max_in_flight: usize,
    /// Whether this node publishes commit events to the `ALLUVIUM_EVENTS` stream. Default:
    /// true.
    pub publish_events: bool,
    /// Replicas of the streams alluvium creates (3 on a cluster). Default: 1.
    pub stream_replicas: usize,
    /// How long the event and rejects streams keep messages. Default: `7d`.
    pub retention: HumanDuration,
    /// JetStream's duplicate window of the events stream: an event published twice within it
    /// (same `Nats-Msg-Id`) is stored once. Default: `1h`.
    pub duplicate_window: HumanDuration,
}

/// How NATS ingest receives messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IngestMode {
    /// Core NATS request/reply.
    Core,
    /// A durable consumer of the `ALLUVIUM_INGEST` stream.
    Jetstream,
}

impl Default for NatsSection {
    fn default() -> Self {
        Self {
            url: None,
            prefix: "alluvium".into(),
            token: None,
            ingest: true,
            ingest_mode: IngestMode::Core,
            queue_group: "alluvium-ingest".into(),
            max_in_flight: 1024,
            publish_events: true,
            stream_replicas: 1,
            retention: HumanDuration(Duration::from_secs(7 * 86_400)),
            duplicate_window: HumanDuration(Duration::from_secs(3600)),
        }
    }
}

/// `[[webhooks]]`: one endpoint receiving commit events (`flushed`, `compacted`, `schema`) as
/// JSON POSTs signed with `Alluvium-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
/// "<t>.<body>")>`. Also settable as `ALLUVIUM_WEBHOOKS='[{name = "...", url = "...", ...}]'`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSection {
    /// Names the webhook's cursor and dead-letter files (`<data_dir>/notify/webhook-{name}.*`):
    /// `[a-z0-9_-]{1,64}`, unique. Required.
    pub name: String,
    /// Endpoint receiving the POSTs: `http://...` or `https://...`. Required.
    pub url: String,
    /// Key of the HMAC-SHA256 signature, at least 16 bytes. Required.
    pub secret: String,
    /// Only events of this tenant. Default: every tenant.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Only events of tables with this name. Default: every table.
    #[serde(default)]
    pub table: Option<String>,
    /// Only events of these kinds (`flushed`, `compacted`, `schema`). Default: `[]`, every
    /// kind.
    #[serde(default)]
    pub kinds: Vec<alluvium_nats::CommitKind>,
    /// Attempts per event (backoff 200 ms doubling, at most 30 s) before it is written to the
    /// dead-letter log `<data_dir>/notify/webhook-{name}.deadletter.ndjson`. Default: 8.
    #[serde(default = "default_webhook_max_attempts")]
    pub max_attempts: u32,
    /// Limit on one attempt, from connecting to reading the answer. Default: `10s`.
    #[serde(default = "default_webhook_timeout")]
    pub timeout: HumanDuration,
}

fn default_webhook_max_attempts() -> u32 {
    alluvium_pipelines::notification::webhooks::WebhookConfig::DEFAULT_MAX_ATTEMPTS
}

fn default_webhook_timeout() -> HumanDuration {
    HumanDuration(alluvium_pipelines::notification::webhooks::WebhookConfig::DEFAULT_TIMEOUT)
}

impl WebhookSection {
    /// The delivery settings it describes (not yet validated).
    pub fn webhook_config(&self) -> alluvium_pipelines::notification::webhooks::WebhookConfig {
        alluvium_pipelines::notification::webhooks::WebhookConfig {
            name: self.name.clone(),
            url: self.url.clone(),
            secret: self.secret.clone(),
            tenant: self.tenant.clone(),
            table: self.table.clone(),
            kinds: self.kinds.clone(),
            max_attempts: self.max_attempts,
            timeout: self.timeout.0,
        }
    }
}

/// The secret stays out of logs.
impl std::fmt::Debug for WebhookSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.webhook_config(), f)
    }
}

/// `[node]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSection {
    /// `all` (standalone: every stage in this process over a local write-ahead log), or the
    /// cluster roles this node takes, comma separated: `ingest` (HTTP and NATS sources, which
    /// publish to the replicated log), `processing` (owns shards: memtables, flushes,
    /// compaction), `notification` (commit events to NATS, SSE and webhooks). Cluster roles
    /// need `[nats] url` and a store shared by every node. The flag `--role` sets it.
    /// Default: `all`.
    pub role: Option<String>,
    /// The node's name in shard leases and logs: letters, digits, `-` and `_`. Default: the
    /// host name and the HTTP port.
    pub id: Option<String>,
}

/// `[store]`: where data files, sidecars and the catalog log live.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// `file:///absolute/path` or `s3://bucket/prefix`. The flag `--store` sets it. Default:
    /// none, meaning the local directory `data_dir`.
    pub url: Option<String>,
    /// S3: endpoint of an S3-compatible service (`http://127.0.0.1:9000`). Default: AWS.
    pub endpoint: Option<String>,
    /// S3: region. Default: `us-east-1`.
    pub region: Option<String>,
    /// S3: access key id. Default: none (anonymous, or the `AWS_ACCESS_KEY_ID` variable).
    pub access_key_id: Option<String>,
    /// S3: secret access key. Default: none (or the `AWS_SECRET_ACCESS_KEY` variable).
    pub secret_access_key: Option<String>,
    /// S3: allow `http://` endpoints (test servers). Default: false.
    pub allow_http: bool,
}

/// The secret stays out of logs.
impl std::fmt::Debug for StoreSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSection")
            .field("url", &self.url)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "***"),
            )
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

/// `[cluster]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// A processing node's shard lease lapses this long after its last renewal (renewed every
    /// third of it); another node then takes the shard over. Default: `10s`.
    pub lease_ttl: HumanDuration,
    /// How often a node reads catalog commits made by other nodes (new tables, schema
    /// versions, flushes). Default: `1s`.
    pub catalog_refresh: HumanDuration,
    /// Bytes the replicated log (`ALLUVIUM_INGEST`) may hold: events not yet flushed. When
    /// full, ingest answers 503 until processing nodes catch up. Default: `4GiB`.
    pub log_max_bytes: ByteSize,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            lease_ttl: HumanDuration(Duration::from_secs(10)),
            catalog_refresh: HumanDuration(Duration::from_secs(1)),
            log_max_bytes: ByteSize(4 << 30),
        }
    }
}

/// `[auth]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// `[auth.jwt]`: JWT verification. Default: no JWT keys (API keys only).
    pub jwt: JwtConfig,
}

impl Config {
    /// Loads `file` (if given) and applies the `ALLUVIUM_*` variables of `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))?
            }
            None => toml::Table::new(),
        };
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("ALLUVIUM_") else {
                continue;
            };
            if NOT_CONFIG.contains(&rest) || rest.starts_with("TEST_") {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
            let value = parse_env_value(&value)
                .map_err(|e| ConfigError::Invalid(format!("{name}: {e}")))?;
            set_path(&mut table, &path, value)
                .map_err(|e| ConfigError::Invalid(format!("{name}: {e}")))?;
        }
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.message().to_string()))
    }
}

/// Reads an environment value as a TOML integer, boolean or array when it is one (`42`,
/// `true`, `[{ name = "a" }]`), else as a string. A value that starts with `[` must be a valid
/// TOML array (inline tables on one line each): its parse error is reported rather than the
/// text being taken as a string.
fn parse_env_value(raw: &str) -> Result<toml::Value, String> {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => Ok(match t.remove("v") {
            Some(
                v @ (toml::Value::Integer(_) | toml::Value::Boolean(_) | toml::Value::Array(_)),
            ) => v,
            _ => toml::Value::String(raw.to_string()),
        }),
        Err(e) if raw.trim_start().starts_with('[') => {
            Err(format!("not a TOML array: {}", e.message()))
        }
        Err(_) => Ok(toml::Value::String(raw.to_string())),
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    match path {
        [] => Err("empty key".into()),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(t) => set_path(t, rest, value),
                _ => Err(format!("{first} is not a section")),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_without_file_or_env() {
        let c = Config::load(None, env(&[("PATH", "/bin")])).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.server.body_limit, ByteSize(16 << 20));
    }

    #[test]
    fn file_then_env_override() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.toml");
        std::fs::write(
            &f,
            "data_dir = \"/x\"\n[server]\nlisten = \"127.0.0.1:9000\"\nbody_limit = \"1MiB\"\n[memtable]\nfreeze_age = \"200ms\"\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&f),
            env(&[
                ("ALLUVIUM_SERVER__LISTEN", "127.0.0.1:9001"),
                ("ALLUVIUM_MEMTABLE__BUDGET", "2GiB"),
                ("ALLUVIUM_BOOTSTRAP_KEY", "ignored-here"),
                ("ALLUVIUM_INGEST__MAX_DEPTH", "8"),
            ]),
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/x"));
        assert_eq!(c.server.listen.port(), 9001);
        assert_eq!(c.server.body_limit, ByteSize(1 << 20));
        assert_eq!(
            c.memtable.freeze_age,
            HumanDuration(Duration::from_millis(200))
        );
        assert_eq!(c.memtable.budget, ByteSize(2 << 30));
        assert_eq!(c.ingest.max_depth, 8);
        assert_eq!(c.nats.url, None);
        let c = Config::load(
            None,
            env(&[
                ("ALLUVIUM_NATS__URL", "nats://127.0.0.1:4222"),
                ("ALLUVIUM_INGEST__IDEMPOTENCY_WINDOW", "2m"),
            ]),
        )
        .unwrap();
        assert_eq!(c.nats.url.as_deref(), Some("nats://127.0.0.1:4222"));
        assert_eq!(c.nats.prefix, "alluvium");
        assert_eq!(
            c.ingest.idempotency_window,
            HumanDuration(Duration::from_secs(120))
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = Config::load(None, env(&[("ALLUVIUM_SERVER__LISTNE", "x")])).unwrap_err();
        assert!(e.to_string().contains("listne"), "{e}");
        let e = Config::load(None, env(&[("ALLUVIUM_MEMTABLE__BUDGET", "lots")])).unwrap_err();
        assert!(e.to_string().contains("lots"), "{e}");
    }

    #[test]
    fn shipped_example_config_loads() {
        let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("deployments/standalone/alluvium.toml");
        let c = Config::load(Some(&f), Vec::new()).unwrap();
        assert_eq!(c.server.listen.port(), 8080);
        assert_eq!(c.memtable.budget, ByteSize(2 << 30));
    }

    #[test]
    fn shipped_cluster_configs_load_with_their_roles() {
        for role in ["ingest", "processing", "notification"] {
            let f = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("deployments/cluster/{role}.toml"));
            let c = Config::load(Some(&f), Vec::new()).unwrap();
            assert_eq!(c.node.role.as_deref(), Some(role));
            assert_eq!(c.nats.stream_replicas, 3);
            assert_eq!(c.store.url.as_deref(), Some("s3://alluvium-lake/prod"));
            assert_eq!(c.cluster.lease_ttl, HumanDuration(Duration::from_secs(10)));
            let roles = crate::server::cluster_roles(&c).unwrap().unwrap();
            assert_eq!(roles.names(), role);
        }
        let c = Config::load(
            None,
            env(&[
                ("ALLUVIUM_STORE__SECRET_ACCESS_KEY", "very-secret"),
                ("ALLUVIUM_CLUSTER__LEASE_TTL", "3s"),
            ]),
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("very-secret"));
        assert_eq!(c.cluster.lease_ttl, HumanDuration(Duration::from_secs(3)));
        assert_eq!(
            crate::server::cluster_roles(&c).unwrap(),
            None,
            "standalone by default"
        );
    }

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!("64MiB".parse::<ByteSize>().unwrap(), ByteSize(64 << 20));
        assert_eq!("10 kb".parse::<ByteSize>().unwrap(), ByteSize(10_000));
        assert!("1XB".parse::<ByteSize>().is_err());
        assert_eq!(
            "5m".parse::<HumanDuration>().unwrap(),
            HumanDuration(Duration::from_secs(300))
        );
        assert!("5 weeks".parse::<HumanDuration>().is_err());
        assert_eq!(
            "7d".parse::<HumanDuration>().unwrap(),
            HumanDuration(Duration::from_secs(7 * 86_400))
        );
    }

    #[test]
    fn webhooks_load_from_file_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("w.toml");
        std::fs::write(
            &f,
            r#"
[[webhooks]]
name = "ops"
url = "https://hooks.example.com/alluvium"
secret = "0123456789abcdef-ops"
tenant = "default"
table = "clicks"
kinds = ["flushed", "compacted"]
max_attempts = 3
timeout = "2s"

[[webhooks]]
name = "audit"
url = "http://127.0.0.1:9000/hook"
secret = "0123456789abcdef-audit"
"#,
        )
        .unwrap();
        let c = Config::load(Some(&f), Vec::new()).unwrap();
        let hooks: Vec<_> = c.webhooks.iter().map(|w| w.webhook_config()).collect();
        assert_eq!(hooks.len(), 2);
        assert_eq!(hooks[0].name, "ops");
        assert_eq!(hooks[0].url, "https://hooks.example.com/alluvium");
        assert_eq!(hooks[0].tenant.as_deref(), Some("default"));
        assert_eq!(hooks[0].table.as_deref(), Some("clicks"));
        assert_eq!(
            hooks[0].kinds,
            [
                alluvium_nats::CommitKind::Flushed,
                alluvium_nats::CommitKind::Compacted
            ]
        );
        assert_eq!(hooks[0].max_attempts, 3);
        assert_eq!(hooks[0].timeout, Duration::from_secs(2));
        assert_eq!(hooks[1].tenant, None);
        assert!(hooks[1].kinds.is_empty());
        assert_eq!(hooks[1].max_attempts, 8);
        assert_eq!(hooks[1].timeout, Duration::from_secs(10));
        alluvium_pipelines::notification::webhooks::validate_all(&hooks).unwrap();
        assert!(!format!("{c:?}").contains("0123456789abcdef-ops"));
        assert!(Config::load(None, Vec::new()).unwrap().webhooks.is_empty());

        std::fs::write(
            &f,
            "[[webhooks]]\nname = \"x\"\nurl = \"http://h\"\nsecret = \"0123456789abcdef\"\nkinds = [\"flushd\"]\n",
        )
        .unwrap();
        let e = Config::load(Some(&f), Vec::new()).unwrap_err();
        assert!(e.to_string().contains("flushd"), "{e}");
        std::fs::write(&f, "[[webhooks]]\nname = \"x\"\nurl = \"http://h\"\n").unwrap();
        let e = Config::load(Some(&f), Vec::new()).unwrap_err();
        assert!(e.to_string().contains("secret"), "{e}");

        let c = Config::load(
            None,
            env(&[(
                "ALLUVIUM_WEBHOOKS",
                r#"[{name = "e", url = "http://127.0.0.1:1/", secret = "0123456789abcdef", max_attempts = 2}]"#,
            )]),
        )
        .unwrap();
        assert_eq!(c.webhooks.len(), 1);
        assert_eq!(c.webhooks[0].name, "e");
        assert_eq!(c.webhooks[0].max_attempts, 2);
    }
}
