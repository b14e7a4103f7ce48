//! Cluster mode: the stages of one lake on several nodes, joined by NATS (JetStream) and a
//! shared object store.
//!
//! - **Ingest nodes** authenticate and validate batches exactly as a standalone node, then
//!   publish each to the replicated log, stream `ALLUVIUM_INGEST` over `{prefix}.log.>`, one
//!   subject per shard (`{prefix}.log.{tenant}.{table}`), and acknowledge after JetStream's
//!   publish acknowledgement (`"durability":"replicated"`); see [`log`].
//! - **Processing nodes** own shards (a shard is one table of one tenant) through leases in KV
//!   bucket `alluvium_shards`. A new owner first commits a higher owner epoch to the catalog,
//!   then reads the shard's log from the stream sequence the catalog recorded, into memtables;
//!   its flushes commit the epoch and the stream sequences they cover, and the catalog refuses
//!   a commit of an older epoch. Committed messages are then purged from the stream; see
//!   [`shards`].
//! - **Notification nodes** publish commit events read from the catalog log.
//!
//! Sequences in cluster mode are `stream_seq << 20 | index in the message`
//! ([`alluvium_actors::ids::cluster_seq`]), so they grow with the log and a batch holds at most
//! 2^20 events.

pub mod fresh;
pub mod log;
pub mod shards;

use std::time::Duration;

use alluvium_nats::NatsConfig;

/// The roles a node takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Roles {
    /// HTTP and NATS ingest, publishing to the replicated log.
    pub ingest: bool,
    /// Shard ownership: memtables, flushes, compaction.
    pub processing: bool,
    /// Commit events to NATS, SSE and webhooks.
    pub notification: bool,
}

impl Roles {
    /// Parses `all` (standalone: `None`) or a comma-separated list of `ingest`, `processing`,
    /// `notification`.
    pub fn parse(text: &str) -> Result<Option<Roles>, String> {
        let text = text.trim();
        if text == "all" {
            return Ok(None);
        }
        let mut roles = Roles::default();
        for part in text.split(',').map(str::trim) {
            match part {
                "ingest" => roles.ingest = true,
                "processing" => roles.processing = true,
                "notification" => roles.notification = true,
                "all" => {
                    return Err(
                        "role `all` (standalone) cannot be combined with cluster roles".into(),
                    );
                }
                other => {
                    return Err(format!(
                        "unknown role {other:?}: expected `all`, or one or more of `ingest`, \
                         `processing`, `notification` separated by commas"
                    ));
                }
            }
        }
        Ok(Some(roles))
    }

    /// `ingest,processing` and the like.
    pub fn names(&self) -> String {
        let mut names = Vec::new();
        if self.ingest {
            names.push("ingest");
        }
        if self.processing {
            names.push("processing");
        }
        if self.notification {
            names.push("notification");
        }
        names.join(",")
    }
}

/// What a cluster node needs besides a standalone node's settings.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The roles it takes.
    pub roles: Roles,
    /// Its name in leases (a valid subject token).
    pub node_id: String,
    /// The NATS connection.
    pub nats: NatsConfig,
    /// Subject prefix.
    pub prefix: String,
    /// The replicated log's settings.
    pub log: alluvium_nats::jetstream::LogSettings,
    /// Shard lease time to live.
    pub lease_ttl: Duration,
    /// Replicas of the lease bucket.
    pub lease_replicas: usize,
    /// How often commits of other nodes are read from the catalog log.
    pub catalog_refresh: Duration,
}

/// The parts of a node the cluster tasks drive.
#[derive(Debug, Clone)]
pub(crate) struct ClusterParts {
    pub catalog: actix::Addr<alluvium_actors::catalog::CatalogActor>,
    pub schema: actix::Addr<alluvium_actors::schema::actor::SchemaActor>,
    pub memtable: actix::Addr<alluvium_actors::memtable::MemtableActor>,
    pub fences: alluvium_actors::catalog::Fences,
    pub gauge: alluvium_actors::memtable::MemoryGauge,
    pub memory_budget: usize,
    pub notices: tokio::sync::broadcast::Sender<
        std::sync::Arc<alluvium_actors::catalog::actor::CommitNotice>,
    >,
}

/// A running cluster node's connection, roles and shards.
#[derive(Debug)]
pub struct ClusterNode {
    /// Its roles.
    pub roles: Roles,
    /// Its name.
    pub node_id: String,
    /// The NATS connection of the log, the leases and the catalog refresh.
    pub connection: alluvium_nats::Connection,
    /// The subject grammar.
    pub subjects: alluvium_nats::Subjects,
    /// Counters of the shards it owns.
    pub shards: std::sync::Arc<shards::ShardStats>,
    /// The lease bucket: where readers find a shard's owner; processing nodes also keep their
    /// leases in it.
    pub leases: alluvium_nats::lease::ShardLeases,
}

impl ClusterNode {
    /// `Ok` while connected to NATS.
    pub fn health(&self) -> Result<(), String> {
        self.connection.health()
    }
}

/// Connects to the cluster's NATS.
pub(crate) async fn connect(
    config: &ClusterConfig,
) -> Result<alluvium_nats::Connection, crate::PipelineError> {
    let url = alluvium_nats::connection::redact(&config.nats.url);
    alluvium_nats::Connection::connect(&config.nats)
        .await
        .map_err(|e| {
            crate::PipelineError::Unavailable(format!(
                "cannot reach NATS at {url} ([nats] url, --nats-url): {e}"
            ))
        })
}

/// Starts what the roles need: the replicated log's writer (ingest), the
/// lease keeper and shard manager (processing), and on every node the catalog refresh that
/// brings in tables, schema versions and commits of the other nodes.
pub(crate) async fn start(
    config: ClusterConfig,
    connection: alluvium_nats::Connection,
    parts: ClusterParts,
) -> Result<(Option<log::ReplicatedLog>, ClusterNode), crate::PipelineError> {
    use crate::PipelineError as E;
    use alluvium_nats::async_nats::jetstream;
    let url = alluvium_nats::connection::redact(&config.nats.url);
    let subjects =
        alluvium_nats::Subjects::new(&config.prefix).map_err(|e| E::Unavailable(e.to_string()))?;
    let js = jetstream::new(connection.client.clone());
    let subjects_for_node = subjects.clone();
    let log = if config.roles.ingest {
        Some(
            log::ReplicatedLog::open(connection.client.clone(), subjects.clone(), &config.log)
                .await
                .map_err(|e| E::Unavailable(format!("replicated log on {url}: {e}")))?,
        )
    } else {
        None
    };

    let (wanted_tx, wanted_rx) = tokio::sync::watch::channel(Vec::new());
    actix::spawn(refresh_catalog(
        parts.catalog.clone(),
        parts.schema.clone(),
        config.catalog_refresh,
        wanted_tx,
    ));

    let stats = std::sync::Arc::new(shards::ShardStats::default());
    let query_subject = subjects
        .query(&config.node_id)
        .map_err(|e| E::Unavailable(format!("[node] id: {e}")))?;
    let mut settings =
        alluvium_nats::lease::LeaseSettings::new(config.node_id.clone(), query_subject.clone());
    settings.ttl = config.lease_ttl;
    settings.replicas = config.lease_replicas.max(1);
    let leases = alluvium_nats::lease::ShardLeases::open(js.clone(), settings)
        .await
        .map_err(|e| E::Unavailable(format!("shard leases on {url}: {e}")))?;
    if config.roles.processing {
        actix::spawn(fresh::serve(
            connection.client.clone(),
            query_subject,
            subjects.clone(),
            parts.memtable.clone(),
            parts.catalog.clone(),
            parts.fences.clone(),
        ));
        let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
        actix::spawn(
            leases
                .clone()
                .run(wanted_rx, events_tx, std::future::pending()),
        );
        let ctx = shards::ShardContext {
            node_id: config.node_id.clone(),
            js,
            subjects,
            catalog: parts.catalog,
            memtable: parts.memtable,
            fences: parts.fences,
            gauge: parts.gauge,
            memory_budget: parts.memory_budget,
        };
        actix::spawn(shards::run(
            ctx,
            events_rx,
            parts.notices.subscribe(),
            stats.clone(),
        ));
    }
    tracing::info!(roles = %config.roles.names(), node = %config.node_id, nats = %url, "cluster node started");
    Ok((
        log,
        ClusterNode {
            roles: config.roles,
            node_id: config.node_id,
            subjects: subjects_for_node,
            connection,
            shards: stats,
            leases,
        },
    ))
}

/// Reads the other nodes' catalog commits every `every`, hands new tables and schema versions
/// to the schema registry and the list of shards to the lease keeper.
async fn refresh_catalog(
    catalog: actix::Addr<alluvium_actors::catalog::CatalogActor>,
    schema: actix::Addr<alluvium_actors::schema::actor::SchemaActor>,
    every: Duration,
    wanted: tokio::sync::watch::Sender<Vec<alluvium_nats::lease::Shard>>,
) {
    use alluvium_actors::catalog::messages::Refresh;
    use alluvium_actors::schema::messages::Sync;
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut known = 0usize;
    loop {
        tick.tick().await;
        let state = match catalog.send(Refresh).await {
            Ok(Ok(state)) => state,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "catalog refresh failed");
                continue;
            }
            Err(_) => return,
        };
        schema.do_send(Sync {
            state: state.clone(),
        });
        if state.tables.len() != known || wanted.borrow().is_empty() {
            known = state.tables.len();
            let shards: Vec<_> = state
                .tables
                .keys()
                .filter_map(|t| {
                    alluvium_nats::lease::Shard::new(t.tenant.as_str(), t.table.as_str()).ok()
                })
                .collect();
            wanted.send_replace(shards);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_and_refuse_unknown_ones() {
        assert_eq!(Roles::parse("all").unwrap(), None);
        let r = Roles::parse("ingest, processing").unwrap().unwrap();
        assert!(r.ingest && r.processing && !r.notification);
        assert_eq!(r.names(), "ingest,processing");
        assert!(
            Roles::parse("ingester")
                .unwrap_err()
                .contains("unknown role \"ingester\"")
        );
        assert!(Roles::parse("all,ingest").is_err());
        assert!(Roles::parse("").is_err());
    }
}
