//! Actor shell of the WAL: sequence assignment, group commit, hand-off to the memtable and
//! checkpoints driven by the catalog.
//!
//! Appends that arrive while a group is being written and synced wait in `pending` and form
//! the next group, so under load many requests share one `fdatasync`, and an idle log syncs
//! each request at once. The blocking write runs on tokio's blocking pool, never on the
//! arbiter. After a group is durable its rows go to the memtable in sequence order, in one
//! message for the whole group, and only then are the requests answered: an acknowledged event
//! is on disk and visible to reads.
//!
//! Idempotency keys (see [`super::dedupe`]) are checked here, where sequences are assigned: a
//! key already durable is answered at once with its first sequences, and a key whose first
//! batch is still being written waits for that batch's outcome, so two concurrent retries can
//! never both be stored.
//!
//! Checkpoints (deleting segments the catalog has committed) need the log too. A timer fetches
//! the catalog's committed positions; the deletion runs on its own when the log is idle, or
//! ahead of the next group's write when it is busy, so a steady stream of appends cannot
//! starve it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::{
    Actor, ActorFutureExt, Addr, AsyncContext, Context, Handler, Recipient, ResponseFuture,
    Supervised, WrapFuture,
};
use tokio::sync::oneshot;

use super::dedupe::{Dedupe, IdempotencyKey, Seen, SharedDedupe};
use super::messages::{Append, AppendMany, Drain, Durability, Durable};
use super::{Wal, WalError, WalRecord};
use crate::catalog::CatalogActor;
use crate::catalog::messages::Snapshot;
use crate::ids::{Seq, TableRef};
use crate::memtable::messages::{Insert, InsertGroup};
use crate::schema::TableSchema;

/// Every ingest request waits here for its group commit; the capacity bounds how many
/// requests can queue for the disk before senders wait for room.
const MAILBOX_CAPACITY: usize = 4096;

/// How often sealed segments are checked against the catalog's committed positions.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// What a request needs back once its record is durable. `reply` is `None` for requests
/// answered on receipt.
struct Waiter {
    schema: Arc<TableSchema>,
    reply: Option<Reply>,
    trace: Option<crate::trace::TraceLink>,
}

type Reply = oneshot::Sender<Result<Durable, WalError>>;

/// An idempotency key in flight: its batch (with this body hash) is sequenced but not yet
/// durable.
type InFlight = foldhash::HashMap<(TableRef, String), (u64, Vec<Reply>)>;

impl Waiter {
    fn answer(self, res: Result<Durable, WalError>) {
        if let Some(reply) = self.reply {
            let _ = reply.send(res);
        }
    }
}

use super::dedupe::now_us;

/// Counters of the log's work, shared with the metrics endpoint.
#[derive(Debug, Default)]
pub struct WalStats {
    /// Commit groups written (each ends with one `fdatasync`).
    pub groups: AtomicU64,
    /// Records (one per request) made durable.
    pub records: AtomicU64,
    /// Segments deleted after their events were committed to files.
    pub segments_deleted: AtomicU64,
    /// Set once the log refuses writes (a failed write or fsync); cleared only by a restart.
    pub poisoned: std::sync::atomic::AtomicBool,
    /// Batches answered from the idempotency index instead of being stored again.
    pub duplicates: AtomicU64,
    /// Idempotency keys forgotten before their window ended because the index was full.
    pub keys_evicted: AtomicU64,
}

/// Owns the WAL and the per-table sequence counters.
pub struct WalActor {
    stats: Arc<WalStats>,
    /// The log; `None` while a group write or a checkpoint holds it.
    wal: Option<Wal>,
    max_record_size: usize,
    poisoned: Option<WalError>,
    next_seq: HashMap<TableRef, Seq>,
    pending: Vec<WalRecord>,
    waiters: Vec<Waiter>,
    /// Committed positions waiting for the log to be free.
    checkpoint_due: Option<HashMap<TableRef, Seq>>,
    dedupe: SharedDedupe,
    /// An idempotency snapshot is being written (checkpoints wait for it).
    snapshotting: bool,
    in_flight: InFlight,
    memtable: Recipient<InsertGroup>,
    catalog: Addr<CatalogActor>,
    /// `Drain` requests waiting for the log to be idle.
    drains: Vec<oneshot::Sender<Result<(), WalError>>>,
}

impl std::fmt::Debug for WalActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalActor")
            .field("busy", &self.wal.is_none())
            .field("pending", &self.pending.len())
            .field("poisoned", &self.poisoned.is_some())
            .finish()
    }
}

/// Deletes committed segments (whose idempotency keys are already in the snapshot on disk);
/// a failure is logged and retried at the next checkpoint (the segments stay, nothing is
/// lost).
fn run_checkpoint(wal: &mut Wal, committed: &HashMap<TableRef, Seq>, stats: &WalStats) {
    match wal.checkpoint(committed) {
        Ok(0) => {}
        Ok(n) => {
            stats
                .segments_deleted
                .fetch_add(n as u64, Ordering::Relaxed);
            tracing::info!(segments = n, "wal segments deleted after flush");
        }
        Err(e) => tracing::warn!(error = %e, "wal checkpoint failed"),
    }
}

impl WalActor {
    /// Takes over a recovered log; `next_seq` holds each table's next sequence (one past the
    /// highest seen in the catalog or the log).
    pub fn new(
        wal: Wal,
        next_seq: HashMap<TableRef, Seq>,
        memtable: Recipient<InsertGroup>,
        catalog: Addr<CatalogActor>,
        stats: Arc<WalStats>,
        dedupe: SharedDedupe,
    ) -> Self {
        Self {
            stats,
            max_record_size: wal.max_record_size() as usize,
            wal: Some(wal),
            poisoned: None,
            next_seq,
            pending: Vec::new(),
            waiters: Vec::new(),
            checkpoint_due: None,
            dedupe,
            snapshotting: false,
            in_flight: InFlight::default(),
            memtable,
            catalog,
            drains: Vec::new(),
        }
    }

    /// Refuses writes from now on and fails every request still waiting.
    fn poison(&mut self, err: WalError) {
        tracing::error!(error = %err, "wal refuses writes until restart");
        self.stats.poisoned.store(true, Ordering::Relaxed);
        self.pending.clear();
        for w in self.waiters.drain(..) {
            w.answer(Err(err.clone()));
        }
        for (_, (_, replies)) in self.in_flight.drain() {
            for r in replies {
                let _ = r.send(Err(err.clone()));
            }
        }
        for d in self.drains.drain(..) {
            let _ = d.send(Err(err.clone()));
        }
        self.poisoned = Some(err);
    }

    /// Settles the idempotency keys of `records`: remembered when durable, forgotten on
    /// failure; retries that waited for them get the same outcome.
    fn settle_keys(&mut self, records: &[KeyOf], res: Result<(), &WalError>) {
        let now = now_us();
        for k in records {
            let Some((table, key, seen)) = k else {
                continue;
            };
            let (_, waiting) = self
                .in_flight
                .remove(&(table.clone(), key.clone()))
                .unwrap_or_default();
            let answer = match res {
                Ok(()) => {
                    let (evicted, max_keys) = {
                        let mut d = write_dedupe(&self.dedupe);
                        d.insert(table.clone(), key.clone(), *seen, now);
                        (d.evicted, d.config().max_keys)
                    };
                    if evicted > self.stats.keys_evicted.swap(evicted, Ordering::Relaxed)
                        && evicted.is_power_of_two()
                    {
                        tracing::warn!(
                            evicted,
                            max_keys,
                            "idempotency keys forgotten before their window ended: raise [ingest] idempotency_max_keys"
                        );
                    }
                    Ok(seen.durable())
                }
                Err(e) => Err(e.clone()),
            };
            for r in waiting {
                let _ = r.send(answer.clone());
            }
        }
    }

    /// Writes everything pending as one group, unless a write or checkpoint is in progress
    /// (then the group starts when it ends).
    fn start_commit(&mut self, ctx: &mut Context<Self>) {
        if let Some(e) = self.poisoned.clone() {
            if !self.waiters.is_empty() {
                self.poison(e);
            }
            return;
        }
        if self.pending.is_empty() {
            if self.wal.is_some() {
                for d in self.drains.drain(..) {
                    let _ = d.send(Ok(()));
                }
            }
            if let Some(committed) = self.checkpoint_due.take() {
                self.start_checkpoint(committed, ctx);
            }
            return;
        }
        let Some(mut wal) = self.wal.take() else {
            return;
        };
        let records = std::mem::take(&mut self.pending);
        let waiters = std::mem::take(&mut self.waiters);
        let due = self
            .checkpoint_due
            .take()
            .and_then(|c| self.ready_to_checkpoint(&wal, c, ctx));
        let keyed: Vec<KeyOf> = records.iter().map(key_of).collect();
        let stats = self.stats.clone();
        let span = tracing::info_span!("wal_commit", records = records.len());
        let write = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            if let Some(committed) = due {
                run_checkpoint(&mut wal, &committed, &stats);
            }
            let res = wal.append(&records);
            (wal, records, res)
        });
        ctx.spawn(
            write
                .into_actor(self)
                .then(move |joined, act, _ctx| {
                    let (wal, records, res) = match joined {
                        Ok(done) => done,
                        Err(e) => {
                            // The writer thread panicked: the log's state is unknown.
                            act.waiters.extend(waiters);
                            act.settle_keys(&keyed, Err(&WalError::Poisoned {
                                cause: "wal writer panicked".into(),
                            }));
                            act.poison(WalError::Poisoned {
                                cause: format!("wal writer panicked: {e}"),
                            });
                            return actix::fut::ready(()).boxed_local();
                        }
                    };
                    if let Err(e) = res {
                        act.settle_keys(&keyed, Err(&e));
                        let poisoned = wal.is_poisoned();
                        act.wal = Some(wal);
                        if poisoned {
                            act.waiters.extend(waiters);
                            act.poison(e);
                        } else {
                            // Refused before anything was written (a record over the limit).
                            tracing::warn!(error = %e, requests = waiters.len(), "wal refused a commit group");
                            for w in waiters {
                                w.answer(Err(e.clone()));
                            }
                        }
                        return actix::fut::ready(()).boxed_local();
                    }
                    act.stats.groups.fetch_add(1, Ordering::Relaxed);
                    act.stats
                        .records
                        .fetch_add(records.len() as u64, Ordering::Relaxed);
                    let memtable = act.memtable.clone();
                    let mut inserts = Vec::with_capacity(records.len());
                    let mut replies = Vec::with_capacity(records.len());
                    for (record, w) in records.into_iter().zip(waiters) {
                        let durable = Durable {
                            first_seq: record.first_seq,
                            last_seq: record.last_seq(),
                            duplicate: false,
                        };
                        inserts.push(Insert {
                            table: record.table,
                            schema: w.schema,
                            schema_version: record.schema_version,
                            first_seq: record.first_seq,
                            ingested_at_us: record.ingested_at_us,
                            rows: record.rows,
                            trace: w.trace,
                        });
                        replies.extend(w.reply.map(|r| (r, durable)));
                    }
                    async move {
                        // One message for the whole group, in sequence order.
                        let lost = memtable.send(InsertGroup(inserts)).await.err();
                        // Durable either way: the WAL holds it and a restart replays it.
                        for (reply, durable) in replies {
                            let _ = reply.send(Ok(durable));
                        }
                        lost.map(|e| e.to_string())
                    }
                    .into_actor(act)
                    .map(move |lost, act, _| {
                        // The log is handed back only now, so the next group's rows cannot
                        // reach the memtable before this group's: memtables receive sequences
                        // in order.
                        act.wal = Some(wal);
                        act.settle_keys(&keyed, Ok(()));
                        if let Some(e) = lost {
                            // Reads would miss acknowledged rows until a restart replays them:
                            // stop accepting more.
                            act.poison(WalError::Poisoned {
                                cause: format!("memtable unreachable after a durable write: {e}"),
                            });
                        }
                    })
                    .boxed_local()
                })
                .map(|(), act, ctx| act.start_commit(ctx)),
        );
    }

    /// Deletes committed segments now, with the log idle.
    fn start_checkpoint(&mut self, committed: HashMap<TableRef, Seq>, ctx: &mut Context<Self>) {
        if self.wal.is_none() {
            self.checkpoint_due = Some(committed);
            return;
        }
        let Some(mut wal) = self.wal.take() else {
            return;
        };
        let Some(committed) = self.ready_to_checkpoint(&wal, committed, ctx) else {
            self.wal = Some(wal);
            return;
        };
        let stats = self.stats.clone();
        let run = tokio::task::spawn_blocking(move || {
            run_checkpoint(&mut wal, &committed, &stats);
            wal
        });
        ctx.spawn(run.into_actor(self).map(|joined, act, ctx| {
            match joined {
                Ok(wal) => act.wal = Some(wal),
                Err(e) => act.poison(WalError::Poisoned {
                    cause: format!("wal checkpoint panicked: {e}"),
                }),
            }
            act.start_commit(ctx);
        }));
    }

    /// `committed` if segments up to it may be deleted now: the snapshot on disk holds every
    /// idempotency key of events up to it. Otherwise the snapshot is written first, off the
    /// append path, and the checkpoint comes once it is on disk. Called with the log in hand,
    /// so every durable batch's key has been recorded. `None`, and no snapshot, while no
    /// segment of `wal` could be deleted: the keys of live segments come back by replay, and a
    /// snapshot (every live key) costs time in proportion to the keys, not to what changed.
    fn ready_to_checkpoint(
        &mut self,
        wal: &Wal,
        committed: HashMap<TableRef, Seq>,
        ctx: &mut Context<Self>,
    ) -> Option<HashMap<TableRef, Seq>> {
        if !wal.any_covered(&committed) {
            return None;
        }
        let snapshot = read_dedupe(&self.dedupe).snapshot_for(&committed);
        let Some(snapshot) = snapshot else {
            return Some(committed);
        };
        if self.snapshotting {
            // The next timer tick brings the positions again.
            return None;
        }
        self.snapshotting = true;
        let write = tokio::task::spawn_blocking(move || snapshot.write().map(|()| snapshot.covers));
        ctx.spawn(write.into_actor(self).map(|res, act, ctx| {
            act.snapshotting = false;
            match res {
                Ok(Ok(covers)) => {
                    write_dedupe(&act.dedupe).saved(covers.clone());
                    act.checkpoint_due = Some(covers);
                    if act.wal.is_some() && act.pending.is_empty() {
                        act.start_commit(ctx);
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "idempotency snapshot failed; wal segments kept")
                }
                Err(e) => tracing::warn!(error = %e, "idempotency snapshot panicked"),
            }
        }));
        None
    }

    /// Fetches the catalog's committed positions and schedules a checkpoint with them.
    fn checkpoint(&mut self, ctx: &mut Context<Self>) {
        if self.poisoned.is_some() {
            return;
        }
        ctx.spawn(
            self.catalog
                .send(Snapshot)
                .into_actor(self)
                .map(|state, act, ctx| {
                    if let Ok(state) = state {
                        act.checkpoint_due = Some(state.committed_seqs());
                        if act.wal.is_some() && act.pending.is_empty() {
                            act.start_commit(ctx);
                        }
                    }
                }),
        );
    }
}

impl Actor for WalActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        ctx.run_interval(CHECKPOINT_INTERVAL, |act, ctx| act.checkpoint(ctx));
    }
}

impl Supervised for WalActor {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        // Requests of the stopped context lost their replies; fail them rather than leave them
        // hanging. The log itself and the sequence counters stay valid.
        self.pending.clear();
        let err = WalError::Poisoned {
            cause: "wal actor restarted".into(),
        };
        for w in self.waiters.drain(..) {
            w.answer(Err(err.clone()));
        }
        for (_, (_, replies)) in self.in_flight.drain() {
            for r in replies {
                let _ = r.send(Err(err.clone()));
            }
        }
    }
}

impl Handler<Append> for WalActor {
    type Result = ResponseFuture<Result<Durable, WalError>>;

    fn handle(&mut self, msg: Append, ctx: &mut Self::Context) -> Self::Result {
        let answer = self.append(msg);
        self.start_commit(ctx);
        answer
    }
}

impl Handler<AppendMany> for WalActor {
    type Result = ResponseFuture<Vec<Result<Durable, WalError>>>;

    fn handle(&mut self, msg: AppendMany, ctx: &mut Self::Context) -> Self::Result {
        let answers: Vec<_> = msg.0.into_iter().map(|a| self.append(a)).collect();
        // Queued together, so they share the next group commit.
        self.start_commit(ctx);
        Box::pin(futures::future::join_all(answers))
    }
}

impl WalActor {
    /// Sequences a batch and queues it for the next group (which the caller starts); the
    /// future answers once the batch is durable, or at once for a duplicate, a refusal or
    /// `Durability::Received`.
    fn append(&mut self, msg: Append) -> ResponseFuture<Result<Durable, WalError>> {
        if let Some(e) = &self.poisoned {
            let e = e.clone();
            return Box::pin(async move { Err(e) });
        }
        if let Some(key) = &msg.idempotency_key {
            match self.known(&msg.table, key) {
                Ok(Some(durable)) => return Box::pin(async move { Ok(durable) }),
                Ok(None) => {}
                Err(e) => return Box::pin(async move { Err(e) }),
            }
            if let Some((hash, replies)) = self
                .in_flight
                .get_mut(&(msg.table.clone(), key.key.clone()))
            {
                if *hash != key.body_hash {
                    let e = WalError::IdempotencyKeyReused {
                        key: key.key.clone(),
                    };
                    return Box::pin(async move { Err(e) });
                }
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                let (reply, rx) = oneshot::channel();
                replies.push(reply);
                return Box::pin(async move {
                    rx.await.unwrap_or_else(|_| {
                        Err(WalError::Poisoned {
                            cause: "wal actor stopped before the first batch with this idempotency key completed".into(),
                        })
                    })
                });
            }
        }
        let n = msg.rows.len() as u64;
        let next = self.next_seq.entry(msg.table.clone()).or_insert(1);
        let record = WalRecord {
            table: msg.table,
            schema_version: msg.schema_version,
            first_seq: *next,
            ingested_at_us: now_us(),
            rows: msg.rows,
            idempotency_key: msg.idempotency_key,
        };
        // Checked here, before sequences are taken, so an oversized batch fails alone instead
        // of failing the group it would have joined.
        let size = record.payload_len();
        if size > self.max_record_size {
            let max = self.max_record_size as u32;
            return Box::pin(async move { Err(WalError::RecordTooLarge { size, max }) });
        }
        *next += n;
        let durable = Durable {
            first_seq: record.first_seq,
            last_seq: record.last_seq(),
            duplicate: false,
        };
        if let Some(key) = &record.idempotency_key {
            self.in_flight.insert(
                (record.table.clone(), key.key.clone()),
                (key.body_hash, Vec::new()),
            );
        }
        self.pending.push(record);
        if msg.durability == Durability::Received {
            self.waiters.push(Waiter {
                schema: msg.schema,
                reply: None,
                trace: msg.trace,
            });
            return Box::pin(async move { Ok(durable) });
        }
        let (reply, rx) = oneshot::channel();
        self.waiters.push(Waiter {
            schema: msg.schema,
            reply: Some(reply),
            trace: msg.trace,
        });
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                Err(WalError::Poisoned {
                    cause: "wal actor stopped before the write completed".into(),
                })
            })
        })
    }
}

impl Handler<Drain> for WalActor {
    type Result = ResponseFuture<Result<(), WalError>>;

    fn handle(&mut self, _msg: Drain, ctx: &mut Self::Context) -> Self::Result {
        if let Some(e) = &self.poisoned {
            let e = e.clone();
            return Box::pin(async move { Err(e) });
        }
        let (tx, rx) = oneshot::channel();
        self.drains.push(tx);
        // Answers at once when idle; otherwise when the group in progress ends.
        self.start_commit(ctx);
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                Err(WalError::Poisoned {
                    cause: "wal actor stopped before the log was drained".into(),
                })
            })
        })
    }
}

/// A record's idempotency key with what it will be remembered as.
type KeyOf = Option<(TableRef, String, Seen)>;

fn key_of(record: &WalRecord) -> KeyOf {
    let key = record.idempotency_key.as_ref()?;
    Some((
        record.table.clone(),
        key.key.clone(),
        Seen {
            first_seq: record.first_seq,
            last_seq: record.last_seq(),
            at_us: record.ingested_at_us,
            body_hash: key.body_hash,
        },
    ))
}

impl WalActor {
    fn known(&self, table: &TableRef, key: &IdempotencyKey) -> Result<Option<Durable>, WalError> {
        answer_retry(&self.dedupe, &self.stats, table, key)
    }
}

/// The answer for a retry: the first batch's sequences if `key` is durable within the window
/// (counted as a duplicate), or the refusal of a key reused for another body. The ingest path
/// asks before validating; the actor asks again, atomically, when the batch is appended.
pub fn answer_retry(
    dedupe: &SharedDedupe,
    stats: &WalStats,
    table: &TableRef,
    key: &IdempotencyKey,
) -> Result<Option<Durable>, WalError> {
    let seen = read_dedupe(dedupe).check(table, key, now_us())?;
    Ok(seen.map(|seen| {
        stats.duplicates.fetch_add(1, Ordering::Relaxed);
        seen.durable()
    }))
}

/// The index for reading (a panic while it was held cannot leave it half-changed: every
/// change is one call).
pub(crate) fn read_dedupe(d: &SharedDedupe) -> std::sync::RwLockReadGuard<'_, Dedupe> {
    d.read().unwrap_or_else(|p| p.into_inner())
}

fn write_dedupe(d: &SharedDedupe) -> std::sync::RwLockWriteGuard<'_, Dedupe> {
    d.write().unwrap_or_else(|p| p.into_inner())
}
