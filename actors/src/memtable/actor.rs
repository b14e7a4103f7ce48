//! Actor shell of the memtables: inserts, snapshots, freezing and driving flushes.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::{
    Actor, ActorFutureExt, AsyncContext, Context, Handler, Recipient, ResponseFuture, Supervised,
    WrapFuture,
};
use tokio::sync::oneshot;

use super::messages::{DropTable, FlushTable, Insert, InsertGroup, MemSnapshot, Read};
use super::{MemoryGauge, Memtable};
use crate::catalog::CatalogState;
use crate::flush::FlushError;
use crate::flush::messages::Flush;
use crate::ids::{Seq, TableRef};

/// The WAL sends one `InsertGroup` per durable commit group; other senders (replication,
/// processing nodes) send `Insert`s and reads queue beside them.
const MAILBOX_CAPACITY: usize = 4096;

/// When memtables are frozen and flushed.
#[derive(Debug, Clone)]
pub struct MemtableConfig {
    /// Freeze a table's active memtable once it holds this many bytes.
    pub freeze_bytes: usize,
    /// Freeze a non-empty active memtable once it is this old.
    pub freeze_age: Duration,
    /// First delay before retrying a failed flush; doubles up to 64 times this.
    pub retry_backoff: Duration,
}

type FlushWaiter = oneshot::Sender<Result<Option<Arc<CatalogState>>, FlushError>>;

#[derive(Debug, Default)]
struct TableMems {
    active: Option<Arc<Memtable>>,
    frozen: VecDeque<Arc<Memtable>>,
    flushing: bool,
    failures: u32,
    upto: Seq,
    last_commit: Option<Arc<CatalogState>>,
    /// Forced flushes waiting until every row up to their sequence is committed.
    waiters: Vec<(Seq, FlushWaiter)>,
}

/// Owns every table's memtables.
pub struct MemtableActor {
    config: MemtableConfig,
    tables: HashMap<TableRef, TableMems>,
    flusher: Recipient<Flush>,
    gauge: MemoryGauge,
    next_id: u64,
}

impl std::fmt::Debug for MemtableActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemtableActor")
            .field("tables", &self.tables.len())
            .field("bytes", &self.gauge.bytes())
            .finish()
    }
}

impl MemtableActor {
    /// Creates the actor; rows replayed from the WAL can be added with [`Self::insert`] before
    /// it starts.
    pub fn new(config: MemtableConfig, flusher: Recipient<Flush>, gauge: MemoryGauge) -> Self {
        Self {
            config,
            tables: HashMap::new(),
            flusher,
            gauge,
            next_id: 1,
        }
    }

    /// Inserts rows with sequences `first_seq..`; returns true when the table's active memtable
    /// passed its size threshold and was frozen.
    pub fn insert(&mut self, msg: Insert) -> bool {
        let Insert {
            table,
            schema,
            schema_version,
            first_seq,
            ingested_at_us,
            rows,
            trace,
        } = msg;
        let n = rows.len() as u64;
        if n == 0 {
            return false;
        }
        let mems = self.tables.entry(table).or_default();
        let stale = mems
            .active
            .as_ref()
            .is_some_and(|m| m.schema_version() != schema_version);
        if stale {
            Self::freeze(mems);
        }
        let active = mems.active.get_or_insert_with(|| {
            let id = self.next_id;
            self.next_id += 1;
            Arc::new(Memtable::new(id, schema.clone(), schema_version))
        });
        if let Some(link) = trace {
            active.add_link(link);
        }
        let mut added = 0;
        for (i, row) in rows.into_iter().enumerate() {
            added += active.insert(first_seq + i as u64, ingested_at_us, row);
        }
        self.gauge.add(added);
        mems.upto = mems.upto.max(first_seq + n - 1);
        if active.bytes() >= self.config.freeze_bytes {
            Self::freeze(mems);
            return true;
        }
        false
    }

    fn freeze(mems: &mut TableMems) {
        if let Some(m) = mems.active.take() {
            if m.is_empty() {
                return;
            }
            mems.frozen.push_back(m);
        }
    }

    fn maybe_flush(&mut self, table: TableRef, ctx: &mut Context<Self>) {
        let Some(mems) = self.tables.get_mut(&table) else {
            return;
        };
        if mems.flushing {
            return;
        }
        let Some(memtable) = mems.frozen.front().cloned() else {
            let state = mems.last_commit.clone();
            for (_, w) in mems.waiters.drain(..) {
                let _ = w.send(Ok(state.clone()));
            }
            return;
        };
        mems.flushing = true;
        let msg = Flush {
            table: table.clone(),
            memtable: memtable.clone(),
        };
        let fut = self.flusher.send(msg);
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            let res = res.unwrap_or_else(|e| Err(FlushError::Mailbox(e.to_string())));
            let Some(mems) = act.tables.get_mut(&table) else {
                return;
            };
            mems.flushing = false;
            match res {
                Ok(state) => {
                    if mems.failures > 0 {
                        act.gauge.flush_recovered();
                    }
                    mems.failures = 0;
                    let mut flushed = None;
                    if mems.frozen.front().is_some_and(|m| m.id() == memtable.id()) {
                        flushed = mems.frozen.pop_front();
                        act.gauge.sub(memtable.bytes());
                    }
                    let done = memtable.seq_range().map_or(0, |(_, max)| max);
                    // Freeing a memtable means freeing every row in it: tens of milliseconds
                    // for a large one, which must not stall this thread (and the actors that
                    // share it) while ingest waits.
                    tokio::task::spawn_blocking(move || drop((flushed, memtable)));
                    let (ready, waiting): (Vec<_>, Vec<_>) =
                        mems.waiters.drain(..).partition(|(target, _)| *target <= done);
                    mems.waiters = waiting;
                    for (_, w) in ready {
                        let _ = w.send(Ok(Some(state.clone())));
                    }
                    mems.last_commit = Some(state);
                    act.maybe_flush(table, ctx);
                }
                Err(e) => {
                    act.gauge.flush_failed(mems.failures == 0);
                    mems.failures += 1;
                    let delay = act.config.retry_backoff * 2u32.pow(mems.failures.min(6) - 1);
                    tracing::error!(table = %table, error = %e, retry_in = ?delay, "flush failed, memtable kept");
                    for (_, w) in mems.waiters.drain(..) {
                        let _ = w.send(Err(e.clone()));
                    }
                    ctx.run_later(delay, move |act, ctx| act.maybe_flush(table, ctx));
                }
            }
        }));
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let age = self.config.freeze_age;
        let mut due = Vec::new();
        for (table, mems) in &mut self.tables {
            if mems
                .active
                .as_ref()
                .is_some_and(|m| !m.is_empty() && m.age() >= age)
            {
                Self::freeze(mems);
            }
            if !mems.frozen.is_empty() && !mems.flushing && mems.failures == 0 {
                due.push(table.clone());
            }
        }
        for table in due {
            self.maybe_flush(table, ctx);
        }
    }
}

impl Actor for MemtableActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        let every =
            (self.config.freeze_age / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        ctx.run_interval(every, |act, ctx| act.tick(ctx));
        // Replayed rows may already be due.
        self.tick(ctx);
    }
}

impl Supervised for MemtableActor {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        // Memtables hold acknowledged rows whose only other copy is the WAL, which is replayed
        // at process start only: keep them, and forget flushes that were in flight (their
        // replies went to the stopped context); `started` re-drives them.
        for mems in self.tables.values_mut() {
            mems.flushing = false;
            // The scheduled retry died with the old context: let the timer drive it again.
            if mems.failures > 0 {
                self.gauge.flush_recovered();
                mems.failures = 0;
            }
            for (_, w) in mems.waiters.drain(..) {
                let _ = w.send(Err(FlushError::Mailbox("memtable actor restarted".into())));
            }
        }
    }
}

impl MemtableActor {
    /// Inserts, and starts a flush if the insert froze the active memtable.
    fn insert_and_flush(&mut self, msg: Insert, ctx: &mut Context<Self>) {
        let table = msg.table.clone();
        let frozen = self.insert(msg);
        // After a failed flush the retry timer drives the next attempt: a freeze must not
        // bypass the backoff and hammer a failing store at the rate of ingest.
        let backing_off = self.tables.get(&table).is_some_and(|m| m.failures > 0);
        if frozen && !backing_off {
            self.maybe_flush(table, ctx);
        }
    }
}

impl Handler<Insert> for MemtableActor {
    type Result = ();

    fn handle(&mut self, msg: Insert, ctx: &mut Self::Context) {
        self.insert_and_flush(msg, ctx);
    }
}

impl Handler<InsertGroup> for MemtableActor {
    type Result = ();

    fn handle(&mut self, msg: InsertGroup, ctx: &mut Self::Context) {
        for insert in msg.0 {
            self.insert_and_flush(insert, ctx);
        }
    }
}

impl Handler<Read> for MemtableActor {
    type Result = MemSnapshot;

    fn handle(&mut self, msg: Read, _ctx: &mut Self::Context) -> MemSnapshot {
        let Some(mems) = self.tables.get(&msg.table) else {
            return MemSnapshot::default();
        };
        MemSnapshot {
            memtables: mems
                .frozen
                .iter()
                .chain(mems.active.iter())
                .cloned()
                .collect(),
            upto: mems.upto,
        }
    }
}

impl Handler<FlushTable> for MemtableActor {
    type Result = ResponseFuture<Result<Option<Arc<CatalogState>>, FlushError>>;

    fn handle(&mut self, msg: FlushTable, ctx: &mut Self::Context) -> Self::Result {
        let Some(mems) = self.tables.get_mut(&msg.table) else {
            return Box::pin(async { Ok(None) });
        };
        Self::freeze(mems);
        // Wait for what exists now, not for rows that keep arriving after.
        let Some(target) = mems
            .frozen
            .back()
            .and_then(|m| m.seq_range())
            .map(|(_, max)| max)
        else {
            return Box::pin(async { Ok(None) });
        };
        let (tx, rx) = oneshot::channel();
        mems.waiters.push((target, tx));
        // Try now, even if a retry after a failure is scheduled for later.
        self.maybe_flush(msg.table, ctx);
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(FlushError::Mailbox("memtable actor stopped".into())))
        })
    }
}

impl Handler<DropTable> for MemtableActor {
    type Result = usize;

    fn handle(&mut self, msg: DropTable, _ctx: &mut Self::Context) -> usize {
        let Some(mems) = self.tables.remove(&msg.table) else {
            return 0;
        };
        let freed: usize = mems
            .frozen
            .iter()
            .chain(mems.active.iter())
            .map(|m| m.bytes())
            .sum();
        self.gauge.sub(freed);
        if mems.failures > 0 {
            self.gauge.flush_recovered();
        }
        for (_, w) in mems.waiters {
            let _ = w.send(Err(FlushError::Fenced(msg.reason.clone())));
        }
        tracing::info!(table = %msg.table, bytes = freed, reason = %msg.reason, "memtables dropped");
        // A flush in flight finds no table when it returns and changes nothing; freeing the
        // rows happens off this thread.
        tokio::task::spawn_blocking(move || drop((mems.active, mems.frozen)));
        freed
    }
}
