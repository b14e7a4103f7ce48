//! Idempotency: a batch sent again with the same key (HTTP `Idempotency-Key`, NATS
//! `Nats-Msg-Id`) within the window is answered with the first batch's sequences and stored
//! nothing more.
//!
//! The key is written in the same WAL frame as the batch, so it is durable exactly when the
//! events are: a crash can never keep the events and lose the key, or the reverse. Recovery
//! rebuilds the index from the log. When a checkpoint is about to delete segments, the keys of
//! the events it covers (their sequences are committed to files) are first saved to a snapshot
//! file (`idempotency.json`, written to a temporary name, fsynced and renamed), so keys outlive
//! the segments that carried them for as long as the window lasts.
//!
//! Keys are scoped to a table. The window is measured from the first batch's ingestion time,
//! and starts again for every key recovered at start (see [`Seen::recovered`]); beyond
//! `max_keys` the oldest keys are forgotten first (and counted).

use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use foldhash::HashMap as FastMap;
use serde::{Deserialize, Serialize};

use super::messages::Durable;
use super::{WalError, io_err};
use crate::ids::{Seq, TableRef};

/// Now, in microseconds since the epoch (the clock of ingestion times and windows).
pub fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Settings of the idempotency index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupeConfig {
    /// How long a key is remembered after its batch was ingested. Default: 15 minutes.
    pub window: Duration,
    /// Most keys remembered; the oldest are forgotten first beyond it. Default: 1 000 000.
    pub max_keys: usize,
}

impl Default for DedupeConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(15 * 60),
            max_keys: 1_000_000,
        }
    }
}

/// A producer's idempotency key with a fingerprint of the batch it came with, so a key reused
/// for a different batch is refused instead of silently answered as a duplicate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The key (1 to 256 printable bytes).
    pub key: String,
    /// [`body_hash`] of the batch's body.
    pub body_hash: u64,
}

/// A fingerprint of a request body: its length and CRC32. It tells a retry (same body) from a
/// key reused for another batch by mistake; it is not a defence against a producer that
/// tries to collide with its own keys.
pub fn body_hash(body: &[u8]) -> u64 {
    ((body.len() as u64) << 32) | u64::from(crc32fast::hash(body))
}

/// What the first batch with a key got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// Its sequences.
    pub first_seq: Seq,
    /// See `first_seq`.
    pub last_seq: Seq,
    /// Its ingestion time, microseconds since the epoch.
    pub at_us: i64,
    /// [`body_hash`] of its body.
    pub body_hash: u64,
}

impl Seen {
    /// The entry of a key recovered at start (from the snapshot or the WAL), whose window
    /// starts again now: the window counts the node's running time, so a node that was down
    /// longer than the window still recognizes a retry, or a JetStream redelivery, of a batch
    /// it stored just before it went down.
    pub fn recovered(self, now_us: i64) -> Seen {
        Seen {
            at_us: self.at_us.max(now_us),
            ..self
        }
    }

    /// The sequences as an acknowledgement.
    pub fn durable(&self) -> Durable {
        Durable {
            first_seq: self.first_seq,
            last_seq: self.last_seq,
            duplicate: true,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct SnapshotEntry {
    table: TableRef,
    key: String,
    #[serde(flatten)]
    seen: Seen,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    format: u32,
    entries: Vec<SnapshotEntry>,
}

const SNAPSHOT_FORMAT: u32 = 1;

/// The index shared by the WAL actor (which records keys) and the ingest path (which answers
/// retries without a trip through the actor).
pub type SharedDedupe = std::sync::Arc<std::sync::RwLock<Dedupe>>;

/// The remembered keys: per table, by key; and every key in time order, oldest first.
#[derive(Debug)]
pub struct Dedupe {
    config: DedupeConfig,
    path: PathBuf,
    /// Keyed with a fast seeded hash: every message with a key is looked up here at least
    /// twice.
    map: FastMap<TableRef, FastMap<String, Seen>>,
    len: usize,
    order: VecDeque<(i64, TableRef, String)>,
    /// The committed positions the snapshot on disk covers.
    saved: HashMap<TableRef, Seq>,
    /// Keys forgotten early because `max_keys` was reached.
    pub evicted: u64,
}

impl Dedupe {
    /// An empty index that is never saved: a cluster node, whose replicated log recognises
    /// retries itself.
    pub fn in_memory(config: DedupeConfig) -> Dedupe {
        Dedupe {
            config,
            path: PathBuf::new(),
            map: FastMap::default(),
            len: 0,
            order: VecDeque::new(),
            saved: HashMap::new(),
            evicted: 0,
        }
    }

    /// An index whose snapshot lives at `path`; loads it if it exists. A snapshot that does not
    /// parse refuses to start: duplicates could otherwise be stored twice.
    pub fn open(path: PathBuf, config: DedupeConfig, now_us: i64) -> Result<Dedupe, WalError> {
        let mut d = Dedupe {
            config,
            path,
            map: FastMap::default(),
            len: 0,
            order: VecDeque::new(),
            saved: HashMap::new(),
            evicted: 0,
        };
        match std::fs::read(&d.path) {
            Ok(bytes) => {
                let snap: Snapshot =
                    serde_json::from_slice(&bytes).map_err(|e| WalError::Corrupt {
                        path: d.path.clone(),
                        offset: 0,
                        reason: format!(
                            "the idempotency snapshot does not parse ({e}); delete it only if \
                             retries of batches from the last window may be stored twice"
                        ),
                    })?;
                if snap.format != SNAPSHOT_FORMAT {
                    return Err(WalError::Corrupt {
                        path: d.path.clone(),
                        offset: 0,
                        reason: format!("unknown idempotency snapshot format {}", snap.format),
                    });
                }
                for e in snap.entries {
                    let seen = e.seen.recovered(now_us);
                    d.insert(e.table, e.key, seen, now_us);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("read", &d.path)(e)),
        }
        Ok(d)
    }

    /// The settings.
    pub fn config(&self) -> DedupeConfig {
        self.config
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn window_us(&self) -> i64 {
        i64::try_from(self.config.window.as_micros()).unwrap_or(i64::MAX)
    }

    fn entry(&self, table: &TableRef, key: &str) -> Option<&Seen> {
        self.map.get(table)?.get(key)
    }

    /// Removes the entry of `key` if it is the one made at `at`.
    fn remove_if_at(&mut self, table: &TableRef, key: &str, at: i64) -> bool {
        let Some(keys) = self.map.get_mut(table) else {
            return false;
        };
        if keys.get(key).is_none_or(|s| s.at_us != at) {
            return false;
        }
        keys.remove(key);
        if keys.is_empty() {
            self.map.remove(table);
        }
        self.len -= 1;
        true
    }

    /// What the first batch with `key` got, if it is still within the window.
    pub fn get(&self, table: &TableRef, key: &str, now_us: i64) -> Option<Seen> {
        let seen = self.entry(table, key)?;
        (seen.at_us >= now_us.saturating_sub(self.window_us())).then_some(*seen)
    }

    /// The answer for a retry of `key`: the first batch's sequences if it is within the
    /// window, or [`WalError::IdempotencyKeyReused`] if that batch had another body.
    pub fn check(
        &self,
        table: &TableRef,
        key: &IdempotencyKey,
        now_us: i64,
    ) -> Result<Option<Seen>, WalError> {
        match self.get(table, &key.key, now_us) {
            Some(seen) if seen.body_hash != key.body_hash => Err(WalError::IdempotencyKeyReused {
                key: key.key.clone(),
            }),
            other => Ok(other),
        }
    }

    /// Remembers `key` (a later insert of the same key keeps the first, unless the first has
    /// left the window).
    pub fn insert(&mut self, table: TableRef, key: String, seen: Seen, now_us: i64) {
        self.expire(now_us);
        let oldest = now_us.saturating_sub(self.window_us());
        if seen.at_us < oldest {
            return;
        }
        if let Some(old) = self.entry(&table, &key) {
            if old.at_us >= oldest {
                return;
            }
            let at = old.at_us;
            self.remove_if_at(&table, &key, at);
        }
        while self.len >= self.config.max_keys.max(1) {
            let Some((at, t, k)) = self.order.pop_front() else {
                break;
            };
            if self.remove_if_at(&t, &k, at) {
                self.evicted += 1;
            }
        }
        self.map
            .entry(table.clone())
            .or_default()
            .insert(key.clone(), seen);
        self.len += 1;
        self.order.push_back((seen.at_us, table, key));
    }

    /// Orders the keys by time after recovery (snapshot keys, then replayed ones, may
    /// interleave), so expiry and eviction take the oldest first.
    pub fn sort(&mut self) {
        self.order.make_contiguous().sort_by_key(|(at, _, _)| *at);
    }

    /// Forgets keys older than the window. Keys arrive in time order (see [`Dedupe::sort`]),
    /// so the scan stops at the first young one.
    pub fn expire(&mut self, now_us: i64) {
        let oldest = now_us.saturating_sub(self.window_us());
        while self.order.front().is_some_and(|(at, _, _)| *at < oldest) {
            if let Some((at, t, k)) = self.order.pop_front() {
                // Only if the map still holds this entry (a key re-inserted after its window
                // has a younger entry further on).
                self.remove_if_at(&t, &k, at);
            }
        }
    }

    /// The snapshot a checkpoint to `committed` needs, if the one on disk does not cover it:
    /// every live key whose events are committed (their WAL segments may be deleted). `None`
    /// when nothing new needs saving. Only tables whose committed position moved past the
    /// saved one are searched.
    pub fn snapshot_for(&self, committed: &HashMap<TableRef, Seq>) -> Option<SnapshotWrite> {
        let newly_covered = self.map.iter().any(|(table, keys)| {
            let c = committed.get(table).copied().unwrap_or(0);
            let s = self.saved.get(table).copied().unwrap_or(0);
            c > s
                && keys
                    .values()
                    .any(|seen| seen.last_seq <= c && seen.last_seq > s)
        });
        if !newly_covered {
            return None;
        }
        let entries = self
            .order
            .iter()
            .filter_map(|(at, t, k)| {
                let seen = self.entry(t, k).filter(|s| s.at_us == *at)?;
                (seen.last_seq <= committed.get(t).copied().unwrap_or(0)).then(|| SnapshotEntry {
                    table: t.clone(),
                    key: k.clone(),
                    seen: *seen,
                })
            })
            .collect();
        Some(SnapshotWrite {
            path: self.path.clone(),
            covers: committed.clone(),
            snapshot: Snapshot {
                format: SNAPSHOT_FORMAT,
                entries,
            },
        })
    }

    /// Records that a snapshot covering `covers` is on disk.
    pub fn saved(&mut self, covers: HashMap<TableRef, Seq>) {
        self.saved = covers;
    }
}

/// A snapshot to write before a checkpoint deletes segments.
pub struct SnapshotWrite {
    path: PathBuf,
    /// The committed positions it covers.
    pub covers: HashMap<TableRef, Seq>,
    snapshot: Snapshot,
}

impl std::fmt::Debug for SnapshotWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotWrite")
            .field("path", &self.path)
            .field("entries", &self.snapshot.entries.len())
            .finish()
    }
}

impl SnapshotWrite {
    /// Writes the snapshot durably: a temporary file, fsync, rename, directory fsync.
    pub fn write(&self) -> Result<(), WalError> {
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(&self.snapshot).map_err(|e| WalError::Io {
            op: "encode",
            path: self.path.clone(),
            source: std::sync::Arc::new(std::io::Error::other(e)),
        })?;
        let mut f = std::fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
        f.write_all(&bytes).map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("fsync", &tmp))?;
        std::fs::rename(&tmp, &self.path).map_err(io_err("rename", &tmp))?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        super::sync_dir(dir)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ids::{TableName, TenantId};

    fn t(name: &str) -> TableRef {
        TableRef::new(
            TenantId::new("acme").unwrap(),
            TableName::new(name).unwrap(),
        )
    }

    fn seen(seq: Seq, at_us: i64) -> Seen {
        Seen {
            first_seq: seq,
            last_seq: seq,
            at_us,
            body_hash: 7,
        }
    }

    const MIN: i64 = 60_000_000;

    #[test]
    fn remembers_within_the_window_and_per_table() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Dedupe::open(dir.path().join("i.json"), DedupeConfig::default(), 0).unwrap();
        d.insert(t("a"), "k".into(), seen(5, 0), 0);
        assert_eq!(d.get(&t("a"), "k", MIN).unwrap().first_seq, 5);
        assert_eq!(d.get(&t("b"), "k", MIN), None);
        // The first answer stays.
        d.insert(t("a"), "k".into(), seen(9, MIN), MIN);
        assert_eq!(d.get(&t("a"), "k", MIN).unwrap().first_seq, 5);
        assert_eq!(d.get(&t("a"), "k", 16 * MIN), None);
        // Past its window, the key may be used again, and is remembered anew.
        d.insert(t("a"), "k".into(), seen(20, 16 * MIN), 16 * MIN);
        assert_eq!(d.get(&t("a"), "k", 16 * MIN).unwrap().first_seq, 20);
        d.expire(40 * MIN);
        assert!(d.is_empty());
    }

    #[test]
    fn recovered_keys_expire_oldest_first_after_sorting() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Dedupe::open(dir.path().join("i.json"), DedupeConfig::default(), 0).unwrap();
        d.insert(t("a"), "young".into(), seen(1, 10 * MIN), 10 * MIN);
        d.insert(t("a"), "old".into(), seen(2, MIN), 10 * MIN);
        d.sort();
        d.expire(16 * MIN + 1);
        assert_eq!(d.get(&t("a"), "old", 16 * MIN + 1), None);
        assert_eq!(d.len(), 1);
        assert!(d.get(&t("a"), "young", 16 * MIN + 1).is_some());
    }

    #[test]
    fn body_hashes_tell_bodies_apart() {
        assert_eq!(body_hash(b"{\"n\":1}"), body_hash(b"{\"n\":1}"));
        assert_ne!(body_hash(b"{\"n\":1}"), body_hash(b"{\"n\":2}"));
        assert_ne!(body_hash(b""), body_hash(b"\0"));
    }

    #[test]
    fn evicts_the_oldest_beyond_max_keys() {
        let dir = tempfile::tempdir().unwrap();
        let config = DedupeConfig {
            max_keys: 2,
            ..Default::default()
        };
        let mut d = Dedupe::open(dir.path().join("i.json"), config, 0).unwrap();
        for (i, k) in ["x", "y", "z"].into_iter().enumerate() {
            d.insert(t("a"), k.into(), seen(i as u64 + 1, i as i64), 3);
        }
        assert_eq!(d.len(), 2);
        assert_eq!(d.evicted, 1);
        assert_eq!(d.get(&t("a"), "x", 3), None);
        assert!(d.get(&t("a"), "z", 3).is_some());
    }

    #[test]
    fn snapshots_keep_committed_keys_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.json");
        let mut d = Dedupe::open(path.clone(), DedupeConfig::default(), 0).unwrap();
        d.insert(t("a"), "old".into(), seen(3, 0), 0);
        d.insert(t("a"), "new".into(), seen(8, 0), 0);
        let committed: HashMap<_, _> = [(t("a"), 5)].into();
        let w = d.snapshot_for(&committed).unwrap();
        w.write().unwrap();
        d.saved(w.covers.clone());
        // Nothing newly covered: no second write.
        assert!(d.snapshot_for(&committed).is_none());
        let back = Dedupe::open(path.clone(), DedupeConfig::default(), MIN).unwrap();
        assert_eq!(back.get(&t("a"), "old", MIN).unwrap().first_seq, 3);
        // Still in the WAL, so recovery (not the snapshot) brings it back.
        assert_eq!(back.get(&t("a"), "new", MIN), None);
        // Keys loaded at start begin a new window: a node down longer than the window still
        // knows them.
        let late = Dedupe::open(path.clone(), DedupeConfig::default(), 20 * MIN).unwrap();
        let seen = late.get(&t("a"), "old", 20 * MIN).unwrap();
        assert_eq!((seen.first_seq, seen.at_us), (3, 20 * MIN));
        assert_eq!(late.get(&t("a"), "old", 36 * MIN), None);
        std::fs::write(&path, b"{not json").unwrap();
        let err = Dedupe::open(path, DedupeConfig::default(), 0).unwrap_err();
        assert!(err.to_string().contains("idempotency snapshot"), "{err}");
    }
}
