//! Shard ownership leases of cluster mode, kept in the JetStream KV bucket `alluvium_shards`.
//!
//! A shard (one tenant/table pair) is processed by one node at a time. The lease is what keeps
//! two owners apart almost always and lets a shard move when its owner dies; it is not what
//! makes processing correct: a new owner commits a higher owner epoch to the catalog before it
//! works, and the catalog refuses the commits of a stale owner.
//!
//! The bucket keeps one value per key (`history = 1`) and expires every entry `ttl` after its
//! last write (`max_age = ttl`), so the leases and heartbeat of a node that died go by
//! themselves:
//! - `shard.{tenant}.{table}` → [`LeaseHolder`] JSON: written with `create` (only when no live
//!   value exists), renewed by compare-and-set on its revision, released by a delete on its
//!   revision;
//! - `node.{node_id}` → [`LiveNode`] JSON: the node's heartbeat; peers count them to compute
//!   their fair share.
//!
//! The keeper ([`ShardLeases::run`]) works in rounds, every `ttl / 3`: it renews the leases it
//! holds, writes its heartbeat, computes its fair share (`ceil(shards / live nodes)`), gives
//! up the leases above it and acquires free shards below it, in an order that differs per
//! node (rendezvous hashing), so that nodes starting together rarely race for the same shard.
//! It reports [`LeaseEvent`]s; a voluntary release waits for the [`Handoff`] of its
//! [`LeaseEvent::Lost`] before it deletes the key.
//!
//! Timing: a lease is valid locally until `sent + ttl - margin`, where `sent` is the monotonic
//! instant the last successful write of the lease was sent (`margin = ttl / 5`). The server
//! stamps the write after it was sent, so it cannot expire it sooner than `ttl` after `sent`: a
//! node that cannot renew (partitioned, NATS down, stalled round) reports the loss `margin`
//! before any other node can acquire the shard, whether or not NATS answers. The margin covers
//! the difference in clock rates and the skew between the clocks of the servers of a cluster
//! (they expire entries by wall clock).
//!
//! A write whose answer is lost (timed out, cut short, buffered by the client while it was
//! disconnected) may still land. Each acquisition writes a fresh random token, so that the node
//! recognises its own writes and adopts them; at worst a key is left that nobody renews, and it
//! expires within `ttl`. The keeper polls: a dead node's shards move at the first round after
//! its keys expire (`ttl` plus the server's expiry delay, plus up to a round), a released shard
//! at the next round of a node below its share.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};

use crate::NatsError;
use crate::subject::{SubjectError, validate_token};

/// The default name of the lease bucket.
pub const DEFAULT_BUCKET: &str = "alluvium_shards";

/// The shortest lease accepted: below it the margin and the round interval leave no room for
/// a request to NATS.
pub const MIN_TTL: Duration = Duration::from_secs(1);

/// Rounds a wanted shard must be seen free in a row before a node takes it above its share:
/// two round intervals, so every live peer had a round to take it first. It keeps a shard from
/// staying unowned when the peers that count in the share do not take it (their list of
/// shards lags, say).
const STARVED_ROUNDS: u32 = 3;

/// How the leases of one node are kept.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// Name of the KV bucket; [`DEFAULT_BUCKET`] by default.
    pub bucket: String,
    /// How long a lease and a heartbeat live without renewal; 10 s by default, at least
    /// [`MIN_TTL`], the same on every node (the bucket expires entries after it). A node
    /// renews every `ttl / 3` and stops work `ttl / 5` before its lease can expire.
    pub ttl: Duration,
    /// Replicas of the bucket: 1 by default, 3 on a 3-node NATS cluster.
    pub replicas: usize,
    /// This node's id, a NATS token of the KV key characters (`A-Z a-z 0-9 - _ = /`); unique
    /// in the cluster.
    pub node_id: String,
    /// The subject this node answers queries on, for readers looking for a shard's owner.
    pub query_subject: String,
}

impl LeaseSettings {
    /// Settings for node `node_id`, answering queries on `query_subject`, with the default
    /// bucket, ttl (10 s) and replicas (1).
    pub fn new(node_id: impl Into<String>, query_subject: impl Into<String>) -> Self {
        Self {
            bucket: DEFAULT_BUCKET.into(),
            ttl: Duration::from_secs(10),
            replicas: 1,
            node_id: node_id.into(),
            query_subject: query_subject.into(),
        }
    }

    fn margin(&self) -> Duration {
        self.ttl / 5
    }

    fn interval(&self) -> Duration {
        self.ttl / 3
    }

    /// The longest a single request to NATS may take before the keeper gives up on it.
    fn request_timeout(&self) -> Duration {
        self.ttl / 4
    }
}

/// A shard: one tenant/table pair, both validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shard {
    tenant: String,
    table: String,
}

impl Shard {
    /// Validates `tenant` and `table` (NATS tokens of the KV key characters) and pairs them.
    pub fn new(tenant: impl Into<String>, table: impl Into<String>) -> Result<Self, NatsError> {
        let (tenant, table) = (tenant.into(), table.into());
        check_token(&tenant)?;
        check_token(&table)?;
        Ok(Self { tenant, table })
    }

    /// The tenant.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The table.
    pub fn table(&self) -> &str {
        &self.table
    }

    fn key(&self) -> String {
        format!("shard.{}.{}", self.tenant, self.table)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.table)
    }
}

/// Checks a token that goes into a KV key: a valid subject token made only of the characters
/// KV keys allow (async-nats refuses the others).
fn check_token(token: &str) -> Result<(), SubjectError> {
    validate_token(token)?;
    let kv_char = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'=' | b'/');
    if token.bytes().all(kv_char) {
        Ok(())
    } else {
        Err(SubjectError {
            shown: token.chars().take(64).collect(),
            reason: "has a character a KV key cannot hold (allowed: A-Z a-z 0-9 - _ = /)",
        })
    }
}

/// The owner of a shard, as its lease says.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LeaseHolder {
    /// The owner's node id.
    pub node: String,
    /// The subject the owner answers queries on.
    pub query_subject: String,
    /// When the owner acquired the lease (its wall clock, ms since the Unix epoch).
    pub acquired_ms: u64,
}

/// A node whose heartbeat is live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveNode {
    /// The node's id.
    pub node: String,
    /// The subject the node answers queries on.
    pub query_subject: String,
    /// When the node last wrote its heartbeat (its wall clock, ms since the Unix epoch).
    pub seen_ms: u64,
}

/// The value of a shard key. `token` is drawn at each acquisition, so that a node can tell its
/// own write, whose answer it missed, from a write of another node (or of its own previous
/// process) under the same id.
#[derive(Serialize)]
struct LeaseValue<'a> {
    node: &'a str,
    query_subject: &'a str,
    acquired_ms: u64,
    token: &'a str,
}

/// Why this node no longer holds a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostReason {
    /// Given up because this node held more than its fair share.
    Rebalanced,
    /// Given up because the shard is no longer in the wanted set.
    Unwanted,
    /// Given up because the keeper is shutting down.
    Shutdown,
    /// Another writer changed the lease: the shard may already have a new owner.
    Conflict,
    /// No renewal was confirmed in time: the lease may expire on the server any moment.
    Expired,
}

impl LostReason {
    /// Whether the node gave the shard up itself, and deletes the key once the [`Handoff`] is
    /// done (no other node can own the shard until then).
    pub fn is_voluntary(self) -> bool {
        matches!(self, Self::Rebalanced | Self::Unwanted | Self::Shutdown)
    }
}

/// Held by the user of a [`LeaseEvent::Lost`] while it stops working on the shard; dropping it
/// (or calling [`Handoff::done`]) lets the keeper delete a voluntarily released key, so the
/// next owner starts only after this one stopped. The keeper waits no longer than the lease
/// would have lived anyway.
#[derive(Debug)]
pub struct Handoff {
    /// Dropped when the user is done; `None` when nothing waits (an involuntary loss).
    _done: Option<oneshot::Sender<()>>,
}

impl Handoff {
    /// Signals that work on the shard has stopped (the same as dropping the handoff).
    pub fn done(self) {}
}

/// What the keeper reports.
#[derive(Debug)]
pub enum LeaseEvent {
    /// This node now owns the shard: it may claim its epoch and start work.
    Acquired {
        /// The shard.
        shard: Shard,
    },
    /// This node no longer owns the shard: stop work on it at once, then drop `handoff`.
    Lost {
        /// The shard.
        shard: Shard,
        /// Why.
        reason: LostReason,
        /// Drop it once work on the shard has stopped.
        handoff: Handoff,
    },
}

/// The lease bucket of one node: look-ups for readers, and [`ShardLeases::run`], the keeper.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct ShardLeases {
    kv: kv::Store,
    settings: LeaseSettings,
}

impl ShardLeases {
    /// Validates `settings` and creates the bucket, or opens it when it exists. Refuses a
    /// bucket whose `max_age` differs from `settings.ttl`: the nodes of a cluster must agree
    /// on the ttl (a node whose ttl is longer than the bucket's would keep working after its
    /// lease expired), and one node should not change it under the others.
    pub async fn open(js: jetstream::Context, settings: LeaseSettings) -> Result<Self, NatsError> {
        check_token(&settings.node_id)?;
        if settings.ttl < MIN_TTL {
            return Err(NatsError::Config(format!(
                "lease ttl {:?} is shorter than {MIN_TTL:?}",
                settings.ttl
            )));
        }
        let bucket = settings.bucket.clone();
        let config = kv::Config {
            bucket: bucket.clone(),
            description: "alluvium shard leases and node heartbeats".into(),
            history: 1,
            max_age: settings.ttl,
            storage: jetstream::stream::StorageType::File,
            num_replicas: settings.replicas,
            ..Default::default()
        };
        // Creating succeeds when the bucket exists with the same configuration; otherwise
        // (other replicas, other ttl, a race with another node) open it and check the ttl.
        let kv = match js.create_key_value(config).await {
            Ok(kv) => kv,
            Err(create) => js.get_key_value(&bucket).await.map_err(|get| {
                NatsError::JetStream(format!(
                    "cannot create KV bucket {bucket} ({create}) nor open it ({get})"
                ))
            })?,
        };
        let status = kv
            .status()
            .await
            .map_err(|e| NatsError::JetStream(format!("cannot read KV bucket {bucket}: {e}")))?;
        let existing = &status.info.config;
        if existing.max_age != settings.ttl {
            return Err(NatsError::Config(format!(
                "KV bucket {bucket} expires entries after {:?} but the lease ttl is {:?}: every \
                 node must use the bucket's ttl (or delete the bucket while no node runs)",
                existing.max_age, settings.ttl
            )));
        }
        if existing.num_replicas != settings.replicas.max(1) {
            tracing::warn!(bucket = %bucket, replicas = existing.num_replicas,
                wanted = settings.replicas, "lease bucket has other replicas than configured");
        }
        Ok(Self { kv, settings })
    }

    /// The settings this node keeps its leases with.
    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    /// The owner of shard `tenant/table`, if its lease is live.
    pub async fn owner(&self, tenant: &str, table: &str) -> Result<Option<LeaseHolder>, NatsError> {
        let key = Shard::new(tenant, table)?.key();
        read(&self.kv, &key).await
    }

    /// The nodes whose heartbeat is live (this one included once its keeper ran a round),
    /// sorted by id.
    pub async fn live_nodes(&self) -> Result<Vec<LiveNode>, NatsError> {
        let mut nodes = Vec::new();
        for key in list_keys(&self.kv).await? {
            if key.starts_with("node.")
                && let Some(node) = read::<LiveNode>(&self.kv, &key).await?
            {
                nodes.push(node);
            }
        }
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(nodes)
    }

    /// Keeps this node's leases until `shutdown` completes or `events` is closed; see the
    /// module documentation for the rounds. `wanted` holds the shards that exist (the same
    /// list on every node, give or take a change in flight): start the keeper once it is
    /// known, since the heartbeat makes the node count in its peers' shares from the first
    /// round. `events` is unbounded so that the keeper never waits for its consumer (its
    /// renewals would stall); it carries at most two events per shard and round.
    ///
    /// On shutdown it deletes its heartbeat, reports every lease lost, and deletes each key
    /// once its [`Handoff`] is dropped, so that other nodes take over at their next round.
    pub async fn run(
        self,
        mut wanted: watch::Receiver<Vec<Shard>>,
        events: mpsc::UnboundedSender<LeaseEvent>,
        shutdown: impl Future<Output = ()>,
    ) {
        let interval = self.settings.interval();
        let mut keeper = Keeper {
            leases: self,
            events,
            held: BTreeMap::new(),
            unsure: HashMap::new(),
            free_rounds: HashMap::new(),
            releases: JoinSet::new(),
        };
        let mut shutdown = std::pin::pin!(shutdown);
        let mut next_round = Instant::now();
        let mut wanted_open = true;
        'run: loop {
            let wake = keeper
                .earliest_deadline()
                .map_or(next_round, |d| d.min(next_round));
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                changed = wanted.changed(), if wanted_open => match changed {
                    Ok(()) => next_round = Instant::now(),
                    Err(_) => wanted_open = false,
                },
                () = sleep_until(wake) => {}
            }
            keeper.expire();
            if keeper.events.is_closed() {
                break;
            }
            if Instant::now() >= next_round {
                let started = Instant::now();
                let shards: BTreeSet<Shard> = wanted.borrow_and_update().iter().cloned().collect();
                // Each phase is cut short when it runs into a lease's deadline, so that the loss
                // is reported on time; what it left unsure is sorted out by the next rounds.
                for rebalance in [false, true] {
                    let limit = keeper.earliest_deadline();
                    tokio::select! {
                        biased;
                        () = &mut shutdown => break 'run,
                        () = keeper.phase(rebalance, &shards) => {}
                        () = until(limit) => {
                            tracing::debug!("lease round cut short by a deadline");
                            break;
                        }
                    }
                }
                next_round = started + interval;
            }
            while keeper.releases.try_join_next().is_some() {}
        }
        keeper.shutdown().await;
    }
}

/// A lease this node holds.
#[derive(Debug)]
struct Held {
    revision: u64,
    token: String,
    acquired_ms: u64,
    /// Until when it is valid locally: the send instant of its last confirmed write, plus
    /// `ttl - margin`.
    deadline: Instant,
}

/// The state of the keeper between rounds.
struct Keeper {
    leases: ShardLeases,
    events: mpsc::UnboundedSender<LeaseEvent>,
    held: BTreeMap<Shard, Held>,
    /// Acquisitions whose answer was not a clear yes (timed out, cut short, or refused by a
    /// key that may be their own write): token and send instant.
    unsure: HashMap<Shard, (String, Instant)>,
    /// Consecutive rounds each free wanted shard has been seen free.
    free_rounds: HashMap<Shard, u32>,
    /// Voluntary releases waiting for their handoff, then deleting their key.
    releases: JoinSet<()>,
}

impl Keeper {
    fn settings(&self) -> &LeaseSettings {
        &self.leases.settings
    }

    fn kv(&self) -> &kv::Store {
        &self.leases.kv
    }

    /// `request`, given up after the request timeout.
    fn bounded<F: Future>(&self, request: F) -> tokio::time::Timeout<F> {
        timeout(self.settings().request_timeout(), request)
    }

    fn valid_until(&self, sent: Instant) -> Instant {
        sent + self.settings().ttl - self.settings().margin()
    }

    fn earliest_deadline(&self) -> Option<Instant> {
        self.held.values().map(|h| h.deadline).min()
    }

    fn value(&self, token: &str, acquired_ms: u64) -> Bytes {
        let s = self.settings();
        let value = LeaseValue {
            node: &s.node_id,
            query_subject: &s.query_subject,
            acquired_ms,
            token,
        };
        serde_json::to_vec(&value).unwrap_or_default().into()
    }

    /// This node's preference for a shard (lower first): the same on every round, different on
    /// every node, so that nodes acquire in different orders and release their least preferred.
    fn preference(&self, shard: &Shard) -> u64 {
        let node = self.settings().node_id.as_bytes();
        fnv1a(&[node, b"\0", shard.key().as_bytes()])
    }

    fn emit(&self, event: LeaseEvent) {
        // A closed channel ends the keeper at the top of its loop.
        let _ = self.events.send(event);
    }

    fn lost(&mut self, shard: Shard, reason: LostReason) {
        self.held.remove(&shard);
        tracing::warn!(shard = %shard, ?reason, "shard lease lost");
        let handoff = Handoff { _done: None };
        self.emit(LeaseEvent::Lost {
            shard,
            reason,
            handoff,
        });
    }

    /// Reports the leases whose deadline has passed as lost, without asking NATS.
    fn expire(&mut self) {
        let now = Instant::now();
        let expired: Vec<Shard> = self
            .held
            .iter()
            .filter(|(_, h)| h.deadline <= now)
            .map(|(s, _)| s.clone())
            .collect();
        for shard in expired {
            self.lost(shard, LostReason::Expired);
        }
    }

    async fn phase(&mut self, rebalance: bool, wanted: &BTreeSet<Shard>) {
        if rebalance {
            self.rebalance(wanted).await;
        } else {
            self.renew_all().await;
        }
    }

    /// Renews every held lease at once, each bounded by its deadline.
    async fn renew_all(&mut self) {
        let (request_timeout, kv) = (self.settings().request_timeout(), self.kv());
        let renewals = self.held.iter().map(|(shard, h)| {
            let value = self.value(&h.token, h.acquired_ms);
            let (key, revision, deadline) = (shard.key(), h.revision, h.deadline);
            async move {
                let sent = Instant::now();
                let limit = deadline.min(sent + request_timeout);
                let result = timeout_at(limit, kv.update(&key, value, revision)).await;
                (shard.clone(), sent, result)
            }
        });
        for (shard, sent, result) in futures::future::join_all(renewals).await {
            let error = match result {
                Ok(Ok(revision)) => {
                    let deadline = self.valid_until(sent);
                    if let Some(h) = self.held.get_mut(&shard) {
                        (h.revision, h.deadline) = (revision, deadline);
                    }
                    continue;
                }
                Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    self.conflict(shard).await;
                    continue;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".into(),
            };
            tracing::warn!(shard = %shard, %error, "shard lease renewal failed");
        }
    }

    /// A renewal found another revision: this node's own earlier renewal whose answer it
    /// missed (same token: adopt the revision, keep the deadline of the last confirmed write)
    /// or another writer's (the lease is lost). Unknown when NATS does not answer: the
    /// deadline still holds, the next round tries again.
    async fn conflict(&mut self, shard: Shard) {
        let Ok(Ok(entry)) = self.bounded(entry(self.kv(), &shard.key())).await else {
            return;
        };
        let ours = entry
            .as_ref()
            .and_then(|e| token_of(e).map(|t| (e.revision, t)));
        match (ours, self.held.get_mut(&shard)) {
            (Some((revision, (token, _))), Some(held)) if token == held.token => {
                held.revision = revision;
            }
            _ => self.lost(shard, LostReason::Conflict),
        }
    }

    /// Heartbeat, then the share: releases what is above it or no longer wanted, acquires
    /// free shards below it (or free for [`STARVED_ROUNDS`]).
    async fn rebalance(&mut self, wanted: &BTreeSet<Shard>) {
        if let Err(error) = self.heartbeat().await {
            return tracing::warn!(%error, "node heartbeat failed");
        }
        let keys = match self.bounded(list_keys(self.kv())).await {
            Ok(Ok(keys)) => keys,
            Ok(Err(error)) => return tracing::warn!(%error, "cannot list shard leases"),
            Err(_) => return tracing::warn!("listing shard leases timed out"),
        };
        self.sort_out_unsure(&keys).await;

        let own = format!("node.{}", self.settings().node_id);
        let peers = keys
            .iter()
            .filter(|k| k.starts_with("node.") && **k != own)
            .count();
        let share = wanted.len().div_ceil(peers + 1);

        let mut held: Vec<Shard> = self.held.keys().cloned().collect();
        held.sort_by_key(|s| (wanted.contains(s), std::cmp::Reverse(self.preference(s))));
        let mut extra = held.len().saturating_sub(share);
        for shard in held {
            if !wanted.contains(&shard) {
                self.release(shard, LostReason::Unwanted);
            } else if extra > 0 {
                self.release(shard, LostReason::Rebalanced);
            } else {
                break;
            }
            extra = extra.saturating_sub(1);
        }

        let mut free: Vec<Shard> = wanted
            .iter()
            .filter(|s| !self.held.contains_key(*s) && !keys.contains(&s.key()))
            .cloned()
            .collect();
        let seen = std::mem::take(&mut self.free_rounds);
        let rounds = |s: &Shard| seen.get(s).map_or(1, |n| n + 1);
        self.free_rounds = free.iter().map(|s| (s.clone(), rounds(s))).collect();
        free.sort_by_key(|s| self.preference(s));
        for shard in free {
            let starved = self
                .free_rounds
                .get(&shard)
                .is_some_and(|n| *n >= STARVED_ROUNDS);
            if self.held.len() < share || starved {
                self.acquire(shard).await;
            }
        }
    }

    async fn heartbeat(&self) -> Result<u64, String> {
        let s = self.settings();
        let value = LiveNode {
            node: s.node_id.clone(),
            query_subject: s.query_subject.clone(),
            seen_ms: now_ms(),
        };
        let value = serde_json::to_vec(&value).unwrap_or_default();
        let put = self.kv().put(format!("node.{}", s.node_id), value.into());
        match self.bounded(put).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }

    async fn acquire(&mut self, shard: Shard) {
        let (token, acquired_ms) = (new_token(), now_ms());
        let value = self.value(&token, acquired_ms);
        let sent = Instant::now();
        // Recorded first: the round may be cut short while the request is in flight.
        self.unsure.insert(shard.clone(), (token.clone(), sent));
        let error = match self.bounded(self.kv().create(shard.key(), value)).await {
            Ok(Ok(revision)) => {
                self.unsure.remove(&shard);
                return self.hold(shard, revision, token, acquired_ms, sent);
            }
            // Most likely taken by another node; `sort_out_unsure` checks it is not ours.
            Ok(Err(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".into(),
        };
        tracing::warn!(shard = %shard, %error, "shard lease acquisition failed");
    }

    fn hold(
        &mut self,
        shard: Shard,
        revision: u64,
        token: String,
        acquired_ms: u64,
        sent: Instant,
    ) {
        tracing::info!(shard = %shard, revision, "shard lease acquired");
        let deadline = self.valid_until(sent);
        let held = Held {
            revision,
            token,
            acquired_ms,
            deadline,
        };
        self.held.insert(shard.clone(), held);
        self.emit(LeaseEvent::Acquired { shard });
    }

    /// Settles acquisitions whose outcome was unknown: a key carrying their token is this
    /// node's, valid from the instant the acquisition was sent (taken only if that leaves a
    /// round to renew it).
    async fn sort_out_unsure(&mut self, keys: &BTreeSet<String>) {
        let unsure: Vec<(Shard, (String, Instant))> = self.unsure.drain().collect();
        for (shard, (token, sent)) in unsure {
            if !keys.contains(&shard.key()) || self.held.contains_key(&shard) {
                continue;
            }
            match self.bounded(entry(self.kv(), &shard.key())).await {
                Ok(Ok(Some(e))) => {
                    let valid =
                        self.valid_until(sent) > Instant::now() + self.settings().interval();
                    if let Some((t, acquired_ms)) = token_of(&e)
                        && t == token
                        && valid
                    {
                        self.hold(shard, e.revision, token, acquired_ms, sent);
                    }
                }
                Ok(Ok(None)) => {}
                Ok(Err(_)) | Err(_) => {
                    if sent + self.settings().ttl > Instant::now() {
                        self.unsure.insert(shard, (token, sent));
                    }
                }
            }
        }
    }

    /// Gives a lease up: reports it lost, then deletes its key once the handoff is dropped
    /// (in a task, so that the other leases are renewed meanwhile).
    fn release(&mut self, shard: Shard, reason: LostReason) {
        let Some(held) = self.held.remove(&shard) else {
            return;
        };
        tracing::info!(shard = %shard, ?reason, "releasing shard lease");
        let (tx, rx) = oneshot::channel();
        self.emit(LeaseEvent::Lost {
            shard: shard.clone(),
            reason,
            handoff: Handoff { _done: Some(tx) },
        });
        let kv = self.kv().clone();
        self.releases.spawn(async move {
            // Past the deadline the lease expires by itself: nothing left to hand off.
            if timeout_at(held.deadline, rx).await.is_err() {
                return tracing::warn!(shard = %shard, "shard still in use when its lease expired");
            }
            let delete = kv.delete_expect_revision(shard.key(), Some(held.revision));
            let error = match timeout_at(held.deadline, delete).await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".into(),
            };
            tracing::warn!(shard = %shard, %error, "shard lease delete failed");
        });
    }

    async fn shutdown(mut self) {
        // The heartbeat goes first, so that peers that see the keys free also see the share
        // that lets them take them.
        let heartbeat = format!("node.{}", self.settings().node_id);
        if !matches!(self.bounded(self.kv().delete(heartbeat)).await, Ok(Ok(()))) {
            tracing::warn!("cannot delete the node heartbeat");
        }
        let held: Vec<Shard> = self.held.keys().cloned().collect();
        for shard in held {
            self.release(shard, LostReason::Shutdown);
        }
        while self.releases.join_next().await.is_some() {}
    }
}

async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Every live key of the bucket.
async fn list_keys(kv: &kv::Store) -> Result<BTreeSet<String>, NatsError> {
    let err = |e: &dyn fmt::Display| {
        NatsError::JetStream(format!("cannot list KV bucket {}: {e}", kv.name))
    };
    let keys = kv.keys().await.map_err(|e| err(&e))?;
    keys.try_collect().await.map_err(|e| err(&e))
}

/// The entry of a live key (not deleted, purged nor expired).
async fn entry(kv: &kv::Store, key: &str) -> Result<Option<kv::Entry>, NatsError> {
    match kv.entry(key).await {
        Ok(e) => Ok(e.filter(|e| e.operation == kv::Operation::Put)),
        Err(e) => Err(NatsError::JetStream(format!(
            "cannot read {key} in KV bucket {}: {e}",
            kv.name
        ))),
    }
}

/// The value of a live key, decoded.
async fn read<T: for<'de> Deserialize<'de>>(
    kv: &kv::Store,
    key: &str,
) -> Result<Option<T>, NatsError> {
    let Some(e) = entry(kv, key).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&e.value).map(Some).map_err(|err| {
        NatsError::JetStream(format!(
            "malformed value at {key} in KV bucket {}: {err}",
            kv.name
        ))
    })
}

/// The token and acquisition time of a shard key's value, if it is a well-formed lease.
fn token_of(entry: &kv::Entry) -> Option<(String, u64)> {
    #[derive(Deserialize)]
    struct Tokened {
        token: String,
        acquired_ms: u64,
    }
    let v: Tokened = serde_json::from_slice(&entry.value).ok()?;
    Some((v.token, v.acquired_ms))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A token unique to one acquisition: the standard library's random hash keys (seeded from
/// the OS once per thread, then stepped), over the clock.
fn new_token() -> String {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:016x}", h.finish())
}

/// 64-bit FNV-1a: a hash that stays the same across processes and Rust versions.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in parts.iter().flat_map(|p| p.iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_must_be_subject_tokens_and_kv_key_characters() {
        assert!(Shard::new("acme", "events_2024-01").is_ok());
        for bad in ["", "a b", "a.b", "a*", "a>", "café", "a:b", "a\nb"] {
            assert!(Shard::new(bad, "t").is_err(), "{bad:?}");
            assert!(Shard::new("t", bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Shard::new("acme", "t").map(|s| s.key()).ok().as_deref(),
            Some("shard.acme.t")
        );
    }

    #[test]
    fn fnv1a_is_stable_and_spreads() {
        assert_eq!(fnv1a(&[b""]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(fnv1a(&[b"n1\0shard.a.b"]), fnv1a(&[b"n2\0shard.a.b"]));
    }

    #[test]
    fn tokens_differ() {
        assert_ne!(new_token(), new_token());
    }

    #[test]
    fn lease_value_reads_as_holder() {
        let value = LeaseValue {
            node: "n1",
            query_subject: "q.n1",
            acquired_ms: 7,
            token: "ab",
        };
        let bytes = serde_json::to_vec(&value).unwrap_or_default();
        let holder: Result<LeaseHolder, _> = serde_json::from_slice(&bytes);
        assert_eq!(
            holder.ok(),
            Some(LeaseHolder {
                node: "n1".into(),
                query_subject: "q.n1".into(),
                acquired_ms: 7
            })
        );
    }
}
