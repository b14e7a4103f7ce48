//! Assembly of a standalone node: recover, then start the supervised actors.
//!
//! Start-up order matters for exactly-once: the catalog is loaded first, so WAL replay can skip
//! every event the catalog already has in files (the committed sequence per table); replayed
//! events go into memtables before any actor runs; sequence counters resume past both. Orphan
//! data files (written by a flush that never committed) are deleted between loading the catalog
//! and starting the flush actor.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::{Addr, Supervisor};
use alluvium_actors::auth::{
    self, AuthActor, Authenticator, Bootstrap, JwtConfig, JwtVerifier, KeyStore,
};
use alluvium_actors::catalog::actor::CommitNotice;
use alluvium_actors::catalog::{self, CatalogActor, CatalogState, Fences, Pins};
use alluvium_actors::compaction::{CompactionActor, CompactionConfig};
use alluvium_actors::flush::{FlushActor, gc};
use alluvium_actors::ids::{Seq, TableRef};
use alluvium_actors::memtable::messages::Insert;
use alluvium_actors::memtable::{MemoryGauge, MemtableActor, MemtableConfig};
use alluvium_actors::schema::actor::SchemaActor;
use alluvium_actors::schema::translate::BatchLimits;
use alluvium_actors::storage::Storage;
use alluvium_actors::wal::actor::{WalActor, WalStats};
use alluvium_actors::wal::dedupe::{Seen, SharedDedupe, now_us};
use alluvium_actors::wal::{Dedupe, DedupeConfig, Wal, WalConfig, WalError};

use crate::PipelineError;

/// Everything a standalone node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Root of local state: `wal/`, `keys.json`, and the local object store (`tables/`,
    /// `catalog/`).
    pub data_dir: PathBuf,
    /// Write-ahead log settings (its `dir` is ignored: always `<data_dir>/wal`).
    pub wal: WalConfig,
    /// Memtable freeze and flush settings.
    pub memtable: MemtableConfig,
    /// Byte budget of all memtables; above it ingest pushes back.
    pub memory_budget: usize,
    /// Compaction strategy, limits and file retention.
    pub compaction: CompactionConfig,
    /// Limits on one batch.
    pub batch_limits: BatchLimits,
    /// Whether batches to unknown tables create them with an inferred schema.
    pub infer_new_tables: bool,
    /// Most tables one tenant may have.
    pub max_tables_per_tenant: usize,
    /// How long, and how many, idempotency keys are remembered.
    pub dedupe: DedupeConfig,
    /// JWT verification.
    pub jwt: JwtConfig,
    /// The bootstrap admin key to install on first start (`ALLUVIUM_BOOTSTRAP_KEY`).
    pub bootstrap_key: Option<String>,
    /// The lake's object store; `None`: the local directory `data_dir`.
    pub storage: Option<Storage>,
    /// Cluster mode: roles, NATS, leases. `None`: a standalone node.
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

/// A running standalone node: handles to its actors, used by the sources and the query path.
#[derive(Debug, Clone)]
pub struct Node {
    pub(crate) auth: Addr<AuthActor>,
    pub(crate) schema: Addr<SchemaActor>,
    /// The local write-ahead log of a standalone node.
    pub(crate) wal: Option<Addr<WalActor>>,
    /// The replicated log an ingest node of a cluster writes to.
    pub(crate) log: Option<crate::cluster::log::ReplicatedLog>,
    /// Cluster mode: the node's roles and shards.
    pub(crate) cluster: Option<Arc<crate::cluster::ClusterNode>>,
    /// The shard epochs flushes and compactions commit under (cluster mode).
    pub(crate) fences: Fences,
    pub(crate) memtable: Addr<MemtableActor>,
    pub(crate) catalog: Addr<CatalogActor>,
    pub(crate) compaction: Addr<CompactionActor>,
    pub(crate) pins: Pins,
    pub(crate) notices: tokio::sync::broadcast::Sender<Arc<CommitNotice>>,
    pub(crate) storage: Storage,
    pub(crate) index_cache: crate::indexes::IndexCache,
    pub(crate) gauge: MemoryGauge,
    pub(crate) wal_stats: Arc<WalStats>,
    pub(crate) memory_budget: usize,
    pub(crate) dedupe: SharedDedupe,
    pub(crate) quotas: Arc<crate::quota::Quotas>,
    pub(crate) events: crate::notification::EventHub,
    pub(crate) rejects: Arc<std::sync::OnceLock<crate::notification::RejectSink>>,
    /// What happened to the bootstrap key at start.
    pub bootstrap: Arc<Bootstrap>,
}

/// How long a client told to back off should wait.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long [`Node::shutdown`] waits for the write-ahead log's last commit group.
const WAL_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

impl Node {
    /// Recovers state from `config.data_dir` and starts every actor on the current arbiter; in
    /// cluster mode, connects to NATS and starts what the node's roles need.
    pub async fn start(mut config: NodeConfig) -> Result<Node, PipelineError> {
        let cluster = config.cluster.take();
        // The outside parts are reached before anything is written.
        if let Some(storage) = &config.storage {
            storage.probe().await?;
        }
        let connection = match &cluster {
            Some(c) => Some(crate::cluster::connect(c).await?),
            None => None,
        };
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            PipelineError::Unavailable(format!(
                "cannot create data dir {}: {e}",
                config.data_dir.display()
            ))
        })?;
        let storage = match &config.storage {
            Some(s) => s.clone(),
            None => Storage::local(&config.data_dir)?,
        };
        if cluster.is_some() {
            // A batch is one log message; its sequences are `stream_seq << 20 | index`.
            config.batch_limits.max_rows = config
                .batch_limits
                .max_rows
                .min(alluvium_actors::ids::MAX_CLUSTER_BATCH_ROWS);
        }
        let state = catalog::checkpoint::load(&storage)
            .await
            .map_err(|e| PipelineError::Unavailable(e.to_string()))?;
        tracing::info!(
            version = state.version,
            tables = state.tables.len(),
            store = storage.description(),
            "catalog loaded"
        );
        // Before any flush can run, so every unreferenced data file is an orphan of a flush
        // that died before its commit. Failing to collect them costs space, not correctness.
        // Not in cluster mode, where other nodes write files before they commit them.
        if cluster.is_none() {
            match gc::remove_orphans(&storage, &state).await {
                Ok(report) if report.files > 0 => tracing::info!(
                    files = report.files,
                    bytes = report.bytes,
                    "orphan data files removed"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "orphan gc failed, unreferenced files kept"),
            }
        }
        let state = Arc::new(state);

        let catalog_actor = CatalogActor::new(storage.clone(), state.clone());
        let notices = catalog_actor.notices();
        let lake_id = catalog::lake::lake_id(&storage)
            .await
            .map_err(|e| PipelineError::Unavailable(e.to_string()))?;
        let events = crate::notification::EventHub::start(
            storage.clone(),
            &lake_id,
            state.version,
            notices.subscribe(),
        );
        let catalog = Supervisor::start(move |_| catalog_actor);
        let pins = Pins::default();
        let fences = match &cluster {
            Some(_) => Fences::cluster(),
            None => Fences::standalone(),
        };
        let compaction_actor = CompactionActor::new(
            storage.clone(),
            catalog.clone(),
            pins.clone(),
            config.compaction.clone(),
        )
        .fenced(fences.clone());
        let compaction = Supervisor::start(move |_| compaction_actor);
        let flush_storage = storage.clone();
        let flush_catalog = catalog.clone();
        let flush_fences = fences.clone();
        let flush = Supervisor::start(move |_| {
            FlushActor::new(flush_storage, flush_catalog).fenced(flush_fences)
        });

        let gauge = MemoryGauge::default();
        let mut memtables =
            MemtableActor::new(config.memtable.clone(), flush.recipient(), gauge.clone());
        let wal_stats = Arc::new(WalStats::default());
        let (wal, dedupe) = if cluster.is_some() {
            // The replicated log takes the WAL's place; its duplicate window the dedupe index's.
            let empty = Dedupe::in_memory(config.dedupe);
            let memtable = Supervisor::start(move |_| memtables);
            (None, (Arc::new(std::sync::RwLock::new(empty)), memtable))
        } else {
            let mut wal_config = config.wal.clone();
            wal_config.dir = config.data_dir.join("wal");
            let mut dedupe = Dedupe::open(
                config.data_dir.join("idempotency.json"),
                config.dedupe,
                now_us(),
            )?;
            let (wal, next_seq) = recover(&state, wal_config, &mut memtables, &mut dedupe)?;
            let dedupe: SharedDedupe = Arc::new(std::sync::RwLock::new(dedupe));
            let wal_dedupe = dedupe.clone();
            let memtable = Supervisor::start(move |_| memtables);
            let wal_memtable = memtable.clone().recipient();
            let wal_catalog = catalog.clone();
            let stats = wal_stats.clone();
            let wal = Supervisor::start(move |_| {
                WalActor::new(wal, next_seq, wal_memtable, wal_catalog, stats, wal_dedupe)
            });
            (Some(wal), (dedupe, memtable))
        };
        let (dedupe, memtable) = dedupe;

        let schema_actor = SchemaActor::new(&state, catalog.clone(), config.batch_limits)
            .infer_new_tables(config.infer_new_tables)
            .max_tables_per_tenant(config.max_tables_per_tenant);
        let schema = Supervisor::start(move |_| schema_actor);

        let mut keys = KeyStore::open(config.data_dir.join("keys.json"))?;
        let bootstrap = auth::bootstrap(&mut keys, config.bootstrap_key.clone(), &config.data_dir)?;
        let jwt = JwtVerifier::load(&config.jwt).await?;
        let authenticator = Authenticator::new(keys, jwt);
        let auth = Supervisor::start(move |_| AuthActor::new(authenticator));

        let (log, cluster) = match cluster.zip(connection) {
            Some((c, connection)) => {
                let parts = crate::cluster::ClusterParts {
                    catalog: catalog.clone(),
                    schema: schema.clone(),
                    memtable: memtable.clone(),
                    fences: fences.clone(),
                    gauge: gauge.clone(),
                    memory_budget: config.memory_budget,
                    notices: notices.clone(),
                };
                let (log, node) = crate::cluster::start(c, connection, parts).await?;
                (log, Some(Arc::new(node)))
            }
            None => (None, None),
        };

        Ok(Node {
            auth,
            schema,
            wal,
            log,
            cluster,
            fences,
            memtable,
            catalog,
            compaction,
            pins,
            notices,
            storage,
            index_cache: Default::default(),
            gauge,
            wal_stats,
            memory_budget: config.memory_budget,
            dedupe,
            quotas: Default::default(),
            events,
            rejects: Default::default(),
            bootstrap: Arc::new(bootstrap),
        })
    }

    /// Cluster mode: the node's roles, connection and shards; `None` on a standalone node.
    pub fn cluster(&self) -> Option<&crate::cluster::ClusterNode> {
        self.cluster.as_deref()
    }

    /// Flushes and compactions the catalog refused since start because another node owned the
    /// shard by then (cluster mode).
    pub fn fenced_commits(&self) -> u64 {
        self.fences.refused()
    }

    /// Receives a notice of every catalog commit (flushes, compactions, purges, new tables)
    /// made from now on.
    pub fn subscribe_commits(&self) -> tokio::sync::broadcast::Receiver<Arc<CommitNotice>> {
        self.notices.subscribe()
    }

    /// Commit events (flushes, compactions, schema versions) after `after`, then live ones;
    /// see [`crate::notification::EventHub::subscribe`].
    pub fn commit_events(&self) -> &crate::notification::EventHub {
        &self.events
    }

    /// Sends batches that fail validation to `sink` from now on (once; later calls are
    /// ignored).
    pub fn set_reject_sink(&self, sink: crate::notification::RejectSink) {
        let _ = self.rejects.set(sink);
    }

    /// Bytes held by memtables now.
    pub fn memtable_bytes(&self) -> usize {
        self.gauge.bytes()
    }

    /// Whether the node can take writes: `Err` says why not (the WAL refuses writes after a
    /// failed write or fsync until restart).
    pub fn ready(&self) -> Result<(), String> {
        if self
            .wal_stats
            .poisoned
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err("the write-ahead log refuses writes after a failed write or fsync; restart the node".into());
        }
        if let Some(cluster) = &self.cluster {
            cluster.health()?;
        }
        Ok(())
    }

    /// Failed flush attempts since start, and tables whose memtables wait for a retry.
    pub fn flush_health(&self) -> (u64, usize) {
        (self.gauge.flush_failures(), self.gauge.failing_tables())
    }

    /// Counters of the write-ahead log.
    pub fn wal_stats(&self) -> &WalStats {
        &self.wal_stats
    }

    /// The last steps before the process exits, once sources stopped taking batches: waits
    /// until every batch handed to the write-ahead log is on disk, then, with `flush`, writes
    /// the memtables of every table to Parquet and commits them, so the next start replays
    /// nothing. The flushes run together and get `flush_timeout` in all; a table that misses
    /// it keeps its rows in the log, where the next start replays them. Returns how many
    /// tables were flushed and how many were not.
    pub async fn shutdown(
        &self,
        flush: bool,
        flush_timeout: Duration,
    ) -> Result<(usize, usize), PipelineError> {
        use alluvium_actors::catalog::messages::Snapshot;
        use alluvium_actors::memtable::messages::FlushTable;
        use alluvium_actors::wal::messages::Drain;

        if let Some(wal) = &self.wal {
            let drained = tokio::time::timeout(WAL_DRAIN_TIMEOUT, wal.send(Drain)).await;
            let Ok(drained) = drained else {
                return Err(PipelineError::Unavailable(format!(
                    "the write-ahead log did not finish its last commit group within {} s",
                    WAL_DRAIN_TIMEOUT.as_secs()
                )));
            };
            drained??;
            tracing::info!("write-ahead log drained: every acknowledged batch is on disk");
        }
        if !flush {
            return Ok((0, 0));
        }
        let state = self.catalog.send(Snapshot).await?;
        let flushed = std::sync::atomic::AtomicUsize::new(0);
        let flushes = state.tables.keys().map(|table| {
            let (memtable, flushed) = (self.memtable.clone(), &flushed);
            async move {
                let failure = match memtable.send(FlushTable { table: table.clone() }).await {
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(e) => Some(e.to_string()),
                };
                match failure {
                    None => {
                        flushed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Some(error) => {
                        tracing::warn!(table = %table, %error, "flush on exit failed; the log keeps its rows");
                    }
                }
            }
        });
        let all = futures::future::join_all(flushes);
        if tokio::time::timeout(flush_timeout, all).await.is_err() {
            tracing::warn!(
                timeout_ms = u64::try_from(flush_timeout.as_millis()).unwrap_or(u64::MAX),
                "flush on exit timed out; the log keeps the rows not flushed"
            );
        }
        let (tables, flushed) = (state.tables.len(), flushed.into_inner());
        tracing::info!(tables, flushed, "memtables flushed on exit");
        Ok((flushed, tables - flushed))
    }

    /// Fails with [`PipelineError::Overloaded`] when memtables are at their budget.
    pub(crate) fn check_budget(&self) -> Result<(), PipelineError> {
        let held = self.gauge.bytes();
        if held >= self.memory_budget {
            return Err(PipelineError::Overloaded {
                held,
                budget: self.memory_budget,
                retry_after: RETRY_AFTER,
            });
        }
        Ok(())
    }
}

/// Replays the WAL into `memtables`, skipping events the catalog has in files; returns the
/// opened log and each table's next sequence.
fn recover(
    state: &CatalogState,
    wal_config: WalConfig,
    memtables: &mut MemtableActor,
    dedupe: &mut Dedupe,
) -> Result<(Wal, HashMap<TableRef, Seq>), PipelineError> {
    let now = now_us();
    let mut last: HashMap<TableRef, Seq> = state.committed_seqs();
    let (mut replayed, mut skipped) = (0u64, 0u64);
    let dir = wal_config.dir.clone();
    let wal = Wal::open(wal_config, |mut record| {
        let Some(entry) = state.table(&record.table) else {
            return Err(WalError::Corrupt {
                path: dir.clone(),
                offset: 0,
                reason: format!(
                    "the log holds events of table {} which the catalog does not know",
                    record.table
                ),
            });
        };
        let committed = entry.committed_seq;
        let last_seq = record.last_seq();
        if let Some(key) = record.idempotency_key.take() {
            let seen = Seen {
                first_seq: record.first_seq,
                last_seq,
                at_us: record.ingested_at_us,
                body_hash: key.body_hash,
            }
            .recovered(now);
            dedupe.insert(record.table.clone(), key.key, seen, now);
        }
        let seen = last.entry(record.table.clone()).or_insert(0);
        *seen = (*seen).max(last_seq);
        if last_seq <= committed {
            skipped += record.rows.len() as u64;
            return Ok(());
        }
        if record.first_seq <= committed {
            // Part of this batch reached files before the crash: keep the rest.
            let done = (committed - record.first_seq + 1) as usize;
            record.rows.drain(..done);
            skipped += done as u64;
            record.first_seq = committed + 1;
        }
        let Some(schema) = entry.schema_at(record.schema_version) else {
            return Err(WalError::Corrupt {
                path: dir.clone(),
                offset: 0,
                reason: format!(
                    "the log holds events of table {} with schema version {}, which the catalog does not have (it is at version {})",
                    record.table, record.schema_version, entry.schema_version
                ),
            });
        };
        replayed += record.rows.len() as u64;
        memtables.insert(Insert {
            table: record.table,
            schema: schema.clone(),
            schema_version: record.schema_version,
            first_seq: record.first_seq,
            ingested_at_us: record.ingested_at_us,
            rows: record.rows,
            trace: None,
        });
        Ok(())
    })?;
    dedupe.sort();
    tracing::info!(
        replayed,
        skipped,
        idempotency_keys = dedupe.len(),
        "wal recovered"
    );
    let next = last.into_iter().map(|(t, s)| (t, s + 1)).collect();
    Ok((wal, next))
}
