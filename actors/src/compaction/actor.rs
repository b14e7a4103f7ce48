//! Actor shell of compaction: runs merges off the arbiters under a concurrency limit, commits
//! them, and deletes replaced files once no reader can need them.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use actix::{Actor, Addr, AsyncContext, Context, Handler, ResponseFuture, Supervised};
use object_store::path::Path as ObjectPath;
use tokio::sync::Semaphore;
use tracing::Instrument as _;

use super::merge::{MergeInput, MergeSpec, merge};
use super::messages::{CollectGarbage, Compact, CompactionReport, PurgeReport};
use super::plan::{Job, plan};
use super::{CompactionConfig, CompactionError};
use crate::background::spawn_niced;
use crate::catalog::messages::{Commit, Snapshot};
use crate::catalog::{Action, CatalogActor, CatalogError, CatalogState, Fences, Pins};
use crate::ids::TableRef;
use crate::storage::Storage;

/// Replaced files are kept at least this long whatever the configuration says.
const MIN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Most planning rounds in one compaction of a table.
const MAX_ROUNDS: usize = 8;

/// Requests are few (a timer and admin triggers).
const MAILBOX_CAPACITY: usize = 64;

/// Compacts tables on a timer and on request, and deletes replaced files.
#[derive(Debug)]
pub struct CompactionActor {
    worker: Worker,
}

impl CompactionActor {
    /// A compactor reading and writing `storage`, committing to `catalog`, and keeping replaced
    /// files while `pins` holds versions that list them.
    pub fn new(
        storage: Storage,
        catalog: Addr<CatalogActor>,
        pins: Pins,
        config: CompactionConfig,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(config.max_concurrent.max(1)));
        Self {
            worker: Worker {
                storage,
                catalog,
                pins,
                config: Arc::new(config),
                permits,
                busy: Arc::default(),
                pass_running: Arc::default(),
                fences: Fences::standalone(),
            },
        }
    }

    /// Compacts only the tables whose shard this (cluster) node owns, each commit carrying
    /// the owner epoch.
    pub fn fenced(mut self, fences: Fences) -> Self {
        self.worker.fences = fences;
        self
    }
}

impl Actor for CompactionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        let interval = self.worker.config.interval;
        if !interval.is_zero() {
            ctx.run_interval(interval, |act, _| {
                let worker = act.worker.clone();
                actix::spawn(async move { worker.background_pass().await });
            });
        }
    }
}

impl Supervised for CompactionActor {}

impl Handler<Compact> for CompactionActor {
    type Result = ResponseFuture<Result<CompactionReport, CompactionError>>;

    fn handle(&mut self, msg: Compact, _ctx: &mut Self::Context) -> Self::Result {
        let worker = self.worker.clone();
        Box::pin(async move { worker.compact(&msg.table, msg.force).await })
    }
}

impl Handler<CollectGarbage> for CompactionActor {
    type Result = ResponseFuture<Result<PurgeReport, CompactionError>>;

    fn handle(&mut self, _msg: CollectGarbage, _ctx: &mut Self::Context) -> Self::Result {
        let worker = self.worker.clone();
        Box::pin(async move { worker.collect_garbage().await })
    }
}

/// The state compactions share; cloned into each running compaction.
#[derive(Debug, Clone)]
struct Worker {
    storage: Storage,
    catalog: Addr<CatalogActor>,
    pins: Pins,
    config: Arc<CompactionConfig>,
    /// Limits merges running at once.
    permits: Arc<Semaphore>,
    /// Tables being compacted: one compaction per table at a time.
    busy: Arc<Mutex<HashSet<TableRef>>>,
    /// Whether a background pass is running (a slow one is not started twice).
    pass_running: Arc<AtomicBool>,
    /// The shard epochs held (cluster mode).
    fences: Fences,
}

/// Marks a table busy until dropped.
struct Claim {
    busy: Arc<Mutex<HashSet<TableRef>>>,
    table: TableRef,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.table);
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Worker {
    async fn snapshot(&self) -> Result<Arc<CatalogState>, CompactionError> {
        self.catalog
            .send(Snapshot)
            .await
            .map_err(|e| CompactionError::Mailbox(e.to_string()))
    }

    /// The fence a commit for `table` carries: none on a standalone node, the held epoch on
    /// the cluster node owning the shard; other cluster nodes may not compact it.
    fn epoch(&self, table: &TableRef) -> Result<Option<Action>, CompactionError> {
        let epoch = self
            .fences
            .epoch(table)
            .map_err(|e| CompactionError::NotOwner(e.to_string()))?;
        Ok(epoch.map(|epoch| Action::Fence {
            table: table.clone(),
            epoch,
        }))
    }

    fn claim(&self, table: &TableRef) -> Result<Claim, CompactionError> {
        let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        if !busy.insert(table.clone()) {
            return Err(CompactionError::Busy(table.to_string()));
        }
        Ok(Claim {
            busy: self.busy.clone(),
            table: table.clone(),
        })
    }

    /// One timer tick: compact every table that has work, then collect garbage.
    async fn background_pass(&self) {
        if self.pass_running.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Ok(state) = self.snapshot().await {
            for table in state.tables.keys() {
                match self.compact(table, false).await {
                    Ok(_) | Err(CompactionError::Busy(_) | CompactionError::NotOwner(_)) => {}
                    Err(e) => {
                        tracing::warn!(table = %table, error = %e, "background compaction failed")
                    }
                }
            }
        }
        if let Err(e) = self.collect_garbage().await {
            tracing::warn!(error = %e, "file gc failed, replaced files kept for now");
        }
        self.pass_running.store(false, Ordering::Release);
    }

    /// Plans and runs the merges of one table.
    async fn compact(
        &self,
        table: &TableRef,
        force: bool,
    ) -> Result<CompactionReport, CompactionError> {
        self.epoch(table)?;
        let _claim = self.claim(table)?;
        let started = Instant::now();
        let mut report = CompactionReport::default();
        // Merges are bounded in files and bytes, so one round may leave several outputs that
        // are still small: plan again while rounds keep reducing the file count.
        let mut files_before = usize::MAX;
        for _ in 0..MAX_ROUNDS {
            let state = self.snapshot().await?;
            let entry = state
                .table(table)
                .ok_or_else(|| CompactionError::TableNotFound(table.to_string()))?;
            if entry.files.len() >= files_before {
                break;
            }
            files_before = entry.files.len();
            let jobs = plan(&entry.files, &self.config, force);
            if jobs.is_empty() {
                break;
            }
            for job in jobs {
                let span = tracing::info_span!("compaction", table = %table, partition = %job.partition, files = job.inputs.len());
                self.run(table, job, &mut report).instrument(span).await?;
            }
        }
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }

    /// Runs one merge and commits it.
    async fn run(
        &self,
        table: &TableRef,
        job: Job,
        report: &mut CompactionReport,
    ) -> Result<(), CompactionError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| CompactionError::Mailbox(e.to_string()))?;
        let started = Instant::now();
        // The newest state: the inputs must still be live, and every other live file counts
        // when deciding whether a tombstone can go.
        let state = self.snapshot().await?;
        let entry = state
            .table(table)
            .ok_or_else(|| CompactionError::TableNotFound(table.to_string()))?;
        let live = |path: &str| entry.files.iter().any(|f| f.path == path);
        if !job.inputs.iter().all(|f| live(&f.path)) {
            return Ok(());
        }
        let others = entry
            .files
            .iter()
            .filter(|f| !job.inputs.iter().any(|i| i.path == f.path))
            .cloned()
            .collect();
        let mut inputs = Vec::with_capacity(job.inputs.len());
        for file in &job.inputs {
            let bytes = self
                .storage
                .get(&ObjectPath::from(file.path.as_str()))
                .await
                .map_err(|e| CompactionError::Read(e.to_string()))?;
            inputs.push(MergeInput {
                file: file.clone(),
                bytes,
            });
        }
        let spec = MergeSpec {
            table: table.clone(),
            schema: entry.schema.clone(),
            schema_version: entry.schema_version,
            partition: job.partition.clone(),
            target_file_bytes: self.config.target_file_bytes,
            others,
        };
        let merged = spawn_niced("alluvium-compact", move || merge(&spec, inputs))
            .map_err(|e| CompactionError::Merge(format!("cannot start a merge thread: {e}")))?
            .await
            .map_err(|_| CompactionError::Merge("the merge thread died".into()))??;

        for f in &merged.files {
            if let Err(e) = f.put(&self.storage).await {
                self.remove_outputs(&merged.files).await;
                return Err(CompactionError::Storage(e.to_string()));
            }
        }
        // A crash here leaves the outputs as orphans for the GC at start.
        crate::failpoint::hit_async("compaction.after_write")
            .await
            .map_err(|e| CompactionError::Storage(e.to_string()))?;
        let action = Action::ReplaceFiles {
            table: table.clone(),
            remove: job.inputs.iter().map(|f| f.path.clone()).collect(),
            add: merged.files.iter().map(|f| f.file.clone()).collect(),
            at_ms: now_ms(),
        };
        let mut actions = vec![action];
        match self.epoch(table) {
            Ok(fence) => actions.extend(fence),
            Err(e) => {
                self.remove_outputs(&merged.files).await;
                return Err(e);
            }
        }
        let committed = self
            .catalog
            .send(Commit {
                operation: "compaction",
                actions,
            })
            .await
            .map_err(|e| CompactionError::Mailbox(e.to_string()))?;
        let state = match committed {
            Ok(state) => state,
            Err(e) => {
                if matches!(e, CatalogError::Fenced { .. }) {
                    self.fences.note_refused();
                }
                // Refused commits wrote nothing: their outputs can go. After any other error
                // the commit may have landed all the same (a put that succeeded and reported a
                // failure), so the outputs stay; if the log does not reference them, the GC at
                // start removes them.
                if matches!(
                    e,
                    CatalogError::Conflict(_)
                        | CatalogError::TableNotFound(_)
                        | CatalogError::AlreadyCommitted { .. }
                        | CatalogError::Fenced { .. }
                ) {
                    self.remove_outputs(&merged.files).await;
                }
                return Err(CompactionError::Catalog(e.to_string()));
            }
        };
        crate::failpoint::hit_async("compaction.after_commit")
            .await
            .map_err(|e| CompactionError::Storage(e.to_string()))?;

        let bytes_in = job.input_bytes();
        let bytes_out: u64 = merged.files.iter().map(|f| f.file.size_bytes).sum();
        tracing::info!(
            table = %table,
            version = state.version,
            files_in = job.inputs.len(),
            files_out = merged.files.len(),
            bytes_in,
            bytes_out,
            rows_in = merged.rows_in,
            rows_out = merged.rows_out,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "compaction committed"
        );
        report.merges += 1;
        report.files_in += job.inputs.len();
        report.files_out += merged.files.len();
        report.bytes_in += bytes_in;
        report.bytes_out += bytes_out;
        report.rows_in += merged.rows_in;
        report.rows_out += merged.rows_out;
        report.versions_dropped += merged.versions_dropped;
        report.tombstones_dropped += merged.tombstones_dropped;
        report.catalog_version = Some(state.version);
        Ok(())
    }

    /// Deletes outputs of a compaction that will not be committed (best effort: what stays is
    /// an orphan for the GC at start).
    async fn remove_outputs(&self, files: &[crate::flush::EncodedFile]) {
        for f in files {
            if let Err(e) = f.delete(&self.storage).await {
                tracing::warn!(path = %f.file.path, error = %e, "cannot delete an uncommitted compaction output");
            }
        }
    }

    /// Purges, then deletes, every replaced file past its grace period that no pinned version
    /// lists. The purge is committed first: a crash before the deletes leaves files no version
    /// references, which the GC at start removes.
    async fn collect_garbage(&self) -> Result<PurgeReport, CompactionError> {
        let state = self.snapshot().await?;
        // A reader pins its version just after receiving it; the floor covers that moment.
        let grace = self.config.grace.max(MIN_GRACE);
        let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        let now = now_ms();
        let oldest_pin = self.pins.oldest();
        let mut report = PurgeReport::default();
        for (table, entry) in &state.tables {
            let due: Vec<_> = entry
                .removed
                .iter()
                .filter(|r| now.saturating_sub(r.removed_at_ms) >= grace_ms)
                .filter(|r| oldest_pin.is_none_or(|v| v >= r.removed_in))
                .collect();
            if due.is_empty() {
                continue;
            }
            // Only the owner deletes a table's files (cluster mode).
            let Ok(fence) = self.epoch(table) else {
                continue;
            };
            let mut actions = vec![Action::PurgeFiles {
                table: table.clone(),
                paths: due.iter().map(|r| r.path.clone()).collect(),
            }];
            actions.extend(fence);
            self.catalog
                .send(Commit {
                    operation: "purge",
                    actions,
                })
                .await
                .map_err(|e| CompactionError::Mailbox(e.to_string()))?
                .map_err(|e| CompactionError::Catalog(e.to_string()))?;
            // A reader may have pinned an older version between the check above and the purge:
            // what it needs stays (unreferenced now, so the GC at start removes it later).
            let oldest_pin = self.pins.oldest();
            for r in due {
                if oldest_pin.is_some_and(|v| v < r.removed_in) {
                    continue;
                }
                for path in std::iter::once(&r.path).chain(r.index_path.as_ref()) {
                    self.storage
                        .delete(&ObjectPath::from(path.as_str()))
                        .await
                        .map_err(|e| CompactionError::Storage(e.to_string()))?;
                }
                tracing::debug!(path = %r.path, "replaced file deleted");
                report.files += 1;
                report.bytes += r.size_bytes;
            }
        }
        if report.files > 0 {
            tracing::info!(
                files = report.files,
                bytes = report.bytes,
                "replaced files deleted"
            );
        }
        Ok(report)
    }
}
