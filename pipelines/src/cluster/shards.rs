//! The shards a processing node owns: claiming them in the catalog, reading their part of the
//! replicated log into memtables, purging what the catalog has, letting go when the lease is
//! lost.
//!
//! Exactly once across owners rests on three rules:
//! 1. a new owner commits `ClaimShard` with an epoch above the current one before anything
//!    else; from that commit on the catalog refuses every commit of an older epoch, so a stale
//!    owner (one that lost its lease without noticing, paused or cut off) can write files but
//!    never commit them;
//! 2. it reads the shard's log from the stream sequence after the one the catalog recorded
//!    with the last flush (`StreamRange`), which the claim's commit returned: everything before
//!    is in files, nothing after is;
//! 3. messages leave the log only after a flush committed them (a purge up to the recorded
//!    sequence), so whatever an owner held in memory is still in the log for the next one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use alluvium_actors::catalog::actor::CommitNotice;
use alluvium_actors::catalog::messages::{Commit, Refresh};
use alluvium_actors::catalog::{Action, CatalogActor, CatalogState, Fences};
use alluvium_actors::ids::{TableName, TableRef, TenantId, cluster_seq};
use alluvium_actors::memtable::messages::{DropTable, Insert};
use alluvium_actors::memtable::{MemoryGauge, MemtableActor};
use alluvium_actors::wal::WalRecord;
use alluvium_nats::Subjects;
use alluvium_nats::async_nats::jetstream::{self, consumer};
use alluvium_nats::jetstream::INGEST_STREAM;
use alluvium_nats::lease::{LeaseEvent, Shard};
use futures::StreamExt as _;
use futures::future::{AbortHandle, Abortable};
use tokio::sync::{broadcast, mpsc};

/// The table of a leased shard.
pub fn shard_table(shard: &Shard) -> Option<TableRef> {
    Some(TableRef::new(
        TenantId::new(shard.tenant()).ok()?,
        TableName::new(shard.table()).ok()?,
    ))
}

/// What the shard manager works with.
#[derive(Debug, Clone)]
pub struct ShardContext {
    /// This node's name, recorded with its claims.
    pub node_id: String,
    /// JetStream of the cluster's NATS.
    pub js: jetstream::Context,
    /// The subject grammar.
    pub subjects: Subjects,
    /// The catalog (claims, snapshots, refreshes).
    pub catalog: Addr<CatalogActor>,
    /// The memtables.
    pub memtable: Addr<MemtableActor>,
    /// The epochs flushes and compactions commit under.
    pub fences: Fences,
    /// Bytes held by memtables.
    pub gauge: MemoryGauge,
    /// The memtables' budget: reading the log pauses above it.
    pub memory_budget: usize,
}

/// Counters of the shard manager, for `/metrics`.
#[derive(Debug, Default)]
pub struct ShardStats {
    /// Shards owned now.
    pub owned: std::sync::atomic::AtomicU64,
    /// Claims committed since start.
    pub claims: std::sync::atomic::AtomicU64,
    /// Log messages inserted into memtables since start.
    pub messages: std::sync::atomic::AtomicU64,
    /// Purges of committed messages since start.
    pub purges: std::sync::atomic::AtomicU64,
}

/// How long to wait before trying again after a failure talking to the catalog or NATS.
const RETRY: Duration = Duration::from_millis(500);

/// Serves shards as the lease keeper reports them acquired and lost, until `events` closes.
pub async fn run(
    ctx: ShardContext,
    mut events: mpsc::UnboundedReceiver<LeaseEvent>,
    mut notices: broadcast::Receiver<Arc<CommitNotice>>,
    stats: Arc<ShardStats>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut running: HashMap<TableRef, AbortHandle> = HashMap::new();
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(LeaseEvent::Acquired { shard }) => {
                    let Some(table) = shard_table(&shard) else {
                        tracing::warn!(?shard, "leased shard names no valid table");
                        continue;
                    };
                    if running.contains_key(&table) {
                        continue;
                    }
                    let (handle, registration) = AbortHandle::new_pair();
                    let task = serve_shard(ctx.clone(), table.clone(), stats.clone());
                    actix::spawn(async move {
                        let _ = Abortable::new(task, registration).await;
                    });
                    running.insert(table, handle);
                    stats.owned.store(running.len() as u64, Relaxed);
                }
                Some(LeaseEvent::Lost { shard, reason, handoff }) => {
                    let Some(table) = shard_table(&shard) else {
                        continue;
                    };
                    if let Some(handle) = running.remove(&table) {
                        handle.abort();
                    }
                    ctx.fences.release(&table);
                    let _ = ctx
                        .memtable
                        .send(DropTable {
                            table: table.clone(),
                            reason: format!("this node lost the shard of table {table}"),
                        })
                        .await;
                    // Work on the shard has stopped: the keeper may let another node take it.
                    drop(handoff);
                    stats.owned.store(running.len() as u64, Relaxed);
                    tracing::info!(table = %table, ?reason, "shard released");
                }
                None => break,
            },
            notice = notices.recv() => match notice {
                Ok(notice) => {
                    for action in &notice.actions {
                        if let Action::StreamRange { table, last, .. } = action
                            && running.contains_key(table)
                        {
                            actix::spawn(purge(ctx.clone(), table.clone(), *last, stats.clone()));
                        }
                    }
                }
                // Missed notices only delay purges to the next flush of those tables.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    for (_, handle) in running {
        handle.abort();
    }
}

/// Claims the shard (retrying until it succeeds or the task is aborted), then reads its log
/// into memtables until aborted.
async fn serve_shard(ctx: ShardContext, table: TableRef, stats: Arc<ShardStats>) {
    let (epoch, mut from) = loop {
        match claim(&ctx, &table).await {
            Ok(claimed) => break claimed,
            Err(e) => {
                tracing::warn!(table = %table, error = %e, "shard claim failed, retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    ctx.fences.hold(&table, epoch);
    stats
        .claims
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(table = %table, epoch, from_stream_seq = from, "shard claimed");
    loop {
        // The memtables keep what was inserted; a new consumer starts right after it.
        let e = match consume(&ctx, &table, &mut from, &stats).await {
            Ok(()) => return,
            Err(e) => e,
        };
        tracing::warn!(table = %table, error = %e, "reading the shard's log failed, restarting");
        tokio::time::sleep(RETRY).await;
    }
}

/// Commits a claim with the next epoch; returns it and the first stream sequence to read.
async fn claim(ctx: &ShardContext, table: &TableRef) -> Result<(u64, u64), String> {
    let shard = |state: &CatalogState| {
        state
            .table(table)
            .map(|e| e.shard.clone())
            .ok_or_else(|| format!("table {table} is not in the catalog"))
    };
    let state = flatten(ctx.catalog.send(Refresh).await)?;
    let epoch = shard(&state)?.epoch + 1;
    let commit = Commit {
        operation: "claim_shard",
        actions: vec![Action::ClaimShard {
            table: table.clone(),
            epoch,
            owner: ctx.node_id.clone(),
        }],
    };
    let state = flatten(ctx.catalog.send(commit).await)?;
    Ok((epoch, shard(&state)?.stream_seq + 1))
}

/// A catalog answer, or why there is none, in words.
fn flatten<T, E: std::fmt::Display>(
    answer: Result<Result<T, E>, actix::MailboxError>,
) -> Result<T, String> {
    answer
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// Reads the shard's log from stream sequence `from` into memtables until the consumer fails;
/// `from` follows the messages inserted.
async fn consume(
    ctx: &ShardContext,
    table: &TableRef,
    from: &mut u64,
    stats: &ShardStats,
) -> Result<(), String> {
    let subject = ctx
        .subjects
        .log(table.tenant.as_str(), table.table.as_str())
        .map_err(|e| e.to_string())?;
    let stream = ctx
        .js
        .get_stream_no_info(INGEST_STREAM)
        .await
        .map_err(|e| format!("stream {INGEST_STREAM}: {e}"))?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject.clone(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: (*from).max(1),
            },
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot read {subject}: {e}"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| format!("cannot read {subject}: {e}"))?;
    let mut state: Option<Arc<CatalogState>> = None;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| format!("reading {subject}: {e}"))?;
        let stream_seq = message
            .info()
            .map_err(|e| format!("a message of {subject} has no stream position: {e}"))?
            .stream_sequence;
        let record = WalRecord::decode_message(&message.payload)
            .map_err(|e| format!("message {stream_seq} of {subject}: {e}"))?;
        if stream_seq < *from {
            // Redelivered after a consumer reset: already in the memtables.
            continue;
        }
        if record.table != *table {
            return Err(format!(
                "message {stream_seq} of {subject} holds events of table {}",
                record.table
            ));
        }
        let schema = schema_for(ctx, &mut state, table, record.schema_version).await?;
        // Memtables full: stop reading (the log keeps the rest) until flushes free room.
        while ctx.gauge.bytes() >= ctx.memory_budget {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ctx.memtable
            .send(Insert {
                table: table.clone(),
                schema,
                schema_version: record.schema_version,
                first_seq: cluster_seq(stream_seq, 0),
                ingested_at_us: record.ingested_at_us,
                rows: record.rows,
                trace: None,
            })
            .await
            .map_err(|e| format!("memtables unavailable: {e}"))?;
        *from = stream_seq + 1;
        stats
            .messages
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    Err(format!("the consumer of {subject} ended"))
}

/// The table's schema at `version`, reading the catalog again when the snapshot at hand does
/// not have it yet (an ingest node committed a new version and published a batch with it).
async fn schema_for(
    ctx: &ShardContext,
    state: &mut Option<Arc<CatalogState>>,
    table: &TableRef,
    version: u32,
) -> Result<Arc<alluvium_actors::schema::TableSchema>, String> {
    for attempt in 0..20 {
        if let Some(schema) = state
            .as_ref()
            .and_then(|s| s.table(table))
            .and_then(|e| e.schema_at(version))
        {
            return Ok(schema.clone());
        }
        if attempt > 0 {
            tokio::time::sleep(RETRY).await;
        }
        *state = Some(flatten(ctx.catalog.send(Refresh).await)?);
    }
    Err(format!(
        "table {table} has no schema version {version} in the catalog"
    ))
}

/// Removes the shard's messages up to `last` from the log: the catalog has their events.
async fn purge(ctx: ShardContext, table: TableRef, last: u64, stats: Arc<ShardStats>) {
    let Ok(subject) = ctx
        .subjects
        .log(table.tenant.as_str(), table.table.as_str())
    else {
        return;
    };
    let stream = match ctx.js.get_stream_no_info(INGEST_STREAM).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(table = %table, error = %e, "cannot purge committed log messages");
            return;
        }
    };
    match stream.purge().filter(subject).sequence(last + 1).await {
        Ok(r) => {
            stats
                .purges
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(table = %table, upto = last, purged = r.purged, "committed log messages purged");
        }
        // The next flush's purge covers these too.
        Err(e) => tracing::warn!(table = %table, error = %e, "cannot purge committed log messages"),
    }
}
