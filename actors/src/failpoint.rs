//! Failpoints: named places in the durability path where a test can make the process fail on
//! purpose, to prove that acknowledged events survive the fault.
//!
//! They are configured once, at process start, from the environment variable
//! `ALLUVIUM_FAILPOINTS` ([`init_from_env`]); nothing can change them afterwards. The syntax is
//! a `;`-separated list of `point=action[trigger]`:
//!
//! - `point`: one of [`POINTS`], e.g. `wal.sync`, `flush.after_write`.
//! - `action`: `error` (the operation fails with an I/O error, as a full disk or a dead object
//!   store would), `abort` (`std::process::abort()` at exactly that point: the process dies as
//!   under `kill -9`, with no destructor, flush or shutdown hook run) or `sleep(MS)` (the
//!   operation is delayed by `MS` milliseconds, a slow disk or store).
//! - `trigger`: none (every hit), `@N` (only the `N`th hit, counted from 1) or `*N` (the first
//!   `N` hits).
//!
//! For example `wal.sync=error@3;storage.put=sleep(200)*5;flush.after_write=abort`. An unknown
//! point, action or trigger is a start-up error, never silently ignored.
//!
//! Cost: the code under test calls [`hit`] (or [`hit_async`]) at each point. When nothing is
//! configured, which is always the case in production, that is one relaxed load of a global
//! `AtomicBool` and a predictable branch, cheap enough for the WAL's per-group path. When
//! failpoints are configured, a hit scans a handful of entries and bumps an atomic counter; no
//! lock is taken anywhere.
//!
//! Unit tests build a [`Registry`] and evaluate it directly, so tests running in parallel in one
//! process never see each other's failpoints; only the binary installs the global one.

use std::fmt;
use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// The environment variable holding the failpoint specification.
pub const ENV_VAR: &str = "ALLUVIUM_FAILPOINTS";

/// Every failpoint in the code, with where it sits.
pub const POINTS: &[(&str, &str)] = &[
    (
        "wal.write",
        "writing a commit group to the active WAL segment",
    ),
    (
        "wal.sync",
        "the fdatasync of a commit group, after its write",
    ),
    ("wal.rotate", "creating the next WAL segment on rotation"),
    (
        "storage.put",
        "every object store put (data files and catalog commits)",
    ),
    (
        "flush.after_write",
        "a flush's Parquet files are written, its catalog commit not yet made",
    ),
    (
        "compaction.after_write",
        "a compaction's output files are written, its catalog commit not yet made",
    ),
    (
        "compaction.after_commit",
        "a compaction is committed, its replaced files not yet deleted",
    ),
    (
        "catalog.after_commit",
        "a catalog commit file is written, before the process learns of it",
    ),
];

/// A malformed failpoint specification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FailpointError {
    /// An entry does not follow the grammar.
    #[error(
        "invalid failpoint {entry:?}: {reason} (expected point=action[@N|*N], action one of \
         error, abort, sleep(MS); points: {points})",
        points = point_names()
    )]
    Invalid {
        /// The offending `;`-separated entry.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// [`install`] was called twice.
    #[error("failpoints are already installed")]
    AlreadyInstalled,
}

fn point_names() -> String {
    POINTS
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a failpoint does when it triggers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The operation fails with an I/O error.
    Error,
    /// The process aborts on the spot.
    Abort,
    /// The operation is delayed.
    Sleep(Duration),
}

/// Which hits of a failpoint trigger its action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Every hit.
    Always,
    /// Only the `n`th hit (1-based).
    Nth(u64),
    /// The first `n` hits.
    FirstN(u64),
}

impl Trigger {
    fn fires(self, hit: u64) -> bool {
        match self {
            Trigger::Always => true,
            Trigger::Nth(n) => hit == n,
            Trigger::FirstN(n) => hit <= n,
        }
    }
}

/// One configured failpoint.
#[derive(Debug)]
struct Point {
    name: &'static str,
    action: Action,
    trigger: Trigger,
    hits: AtomicU64,
}

/// A set of configured failpoints with their hit counters.
#[derive(Debug, Default)]
pub struct Registry {
    points: Vec<Point>,
}

impl fmt::Display for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.points.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            write!(f, "{}=", p.name)?;
            match p.action {
                Action::Error => f.write_str("error")?,
                Action::Abort => f.write_str("abort")?,
                Action::Sleep(d) => write!(f, "sleep({})", d.as_millis())?,
            }
            match p.trigger {
                Trigger::Always => {}
                Trigger::Nth(n) => write!(f, "@{n}")?,
                Trigger::FirstN(n) => write!(f, "*{n}")?,
            }
        }
        Ok(())
    }
}

impl Registry {
    /// Parses a specification (see the module documentation). Whitespace around entries and
    /// empty entries are ignored; a point may appear once.
    pub fn parse(spec: &str) -> Result<Registry, FailpointError> {
        let mut points: Vec<Point> = Vec::new();
        for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let invalid = |reason: &str| FailpointError::Invalid {
                entry: entry.to_string(),
                reason: reason.to_string(),
            };
            let (name, rest) = entry
                .split_once('=')
                .ok_or_else(|| invalid("missing '='"))?;
            let name = name.trim();
            let name = POINTS
                .iter()
                .map(|(n, _)| *n)
                .find(|n| *n == name)
                .ok_or_else(|| invalid(&format!("unknown failpoint {name:?}")))?;
            if points.iter().any(|p| p.name == name) {
                return Err(invalid("failpoint configured twice"));
            }
            let rest = rest.trim();
            let (action, trigger) = match rest.find(['@', '*']) {
                Some(i) => (&rest[..i], Some((&rest[i..i + 1], &rest[i + 1..]))),
                None => (rest, None),
            };
            let action = parse_action(action.trim()).map_err(|r| invalid(&r))?;
            let trigger = match trigger {
                None => Trigger::Always,
                Some((kind, n)) => {
                    let n: u64 = n
                        .trim()
                        .parse()
                        .map_err(|_| invalid(&format!("{n:?} after {kind:?} is not a count")))?;
                    if n == 0 {
                        return Err(invalid("hit counts start at 1"));
                    }
                    if kind == "@" {
                        Trigger::Nth(n)
                    } else {
                        Trigger::FirstN(n)
                    }
                }
            };
            points.push(Point {
                name,
                action,
                trigger,
                hits: AtomicU64::new(0),
            });
        }
        Ok(Registry { points })
    }

    /// Whether no failpoint is configured.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Counts a hit of `name` and returns the action to take, if this hit triggers one.
    pub fn evaluate(&self, name: &str) -> Option<Action> {
        let point = self.points.iter().find(|p| p.name == name)?;
        let hit = point.hits.fetch_add(1, Ordering::Relaxed) + 1;
        point.trigger.fires(hit).then_some(point.action)
    }
}

fn parse_action(s: &str) -> Result<Action, String> {
    match s {
        "error" => Ok(Action::Error),
        "abort" => Ok(Action::Abort),
        _ => {
            let ms = s
                .strip_prefix("sleep(")
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| format!("unknown action {s:?}"))?;
            let ms: u64 = ms
                .trim()
                .parse()
                .map_err(|_| format!("sleep needs milliseconds, got {ms:?}"))?;
            Ok(Action::Sleep(Duration::from_millis(ms)))
        }
    }
}

/// Set once the global registry holds at least one failpoint: the only thing the fast path
/// reads.
static ACTIVE: AtomicBool = AtomicBool::new(false);
static REGISTRY: OnceLock<Registry> = OnceLock::new();

/// Installs `spec` as the process's failpoints. Fails on a malformed specification, or when
/// failpoints were already installed.
pub fn install(spec: &str) -> Result<(), FailpointError> {
    let registry = Registry::parse(spec)?;
    if registry.is_empty() {
        return Ok(());
    }
    let shown = registry.to_string();
    REGISTRY
        .set(registry)
        .map_err(|_| FailpointError::AlreadyInstalled)?;
    ACTIVE.store(true, Ordering::Release);
    tracing::warn!(failpoints = %shown, "failpoints active: this process will fail on purpose");
    Ok(())
}

/// Installs the failpoints of `ALLUVIUM_FAILPOINTS`, if set; a malformed value is an error.
pub fn init_from_env() -> Result<(), FailpointError> {
    match std::env::var(ENV_VAR) {
        Ok(spec) => install(&spec),
        Err(std::env::VarError::NotPresent) => Ok(()),
        Err(std::env::VarError::NotUnicode(v)) => Err(FailpointError::Invalid {
            entry: v.to_string_lossy().into_owned(),
            reason: "not valid UTF-8".into(),
        }),
    }
}

/// The action a hit of `name` triggers, if any; aborts the process itself for `abort`.
#[inline]
fn triggered(name: &'static str) -> Option<Action> {
    if !ACTIVE.load(Ordering::Relaxed) {
        return None;
    }
    triggered_slow(name)
}

#[cold]
#[inline(never)]
fn triggered_slow(name: &'static str) -> Option<Action> {
    let action = REGISTRY.get()?.evaluate(name)?;
    if action == Action::Abort {
        // stderr is unbuffered: this line is out before the process is gone.
        eprintln!("failpoint {name}: aborting the process");
        std::process::abort();
    }
    Some(action)
}

fn injected(name: &'static str) -> io::Error {
    io::Error::other(format!("failpoint {name} injected an i/o error"))
}

/// Passes failpoint `name` in blocking code: returns an error for `error`, sleeps the thread
/// for `sleep`, aborts for `abort`; does nothing when the point is not configured.
#[inline]
pub fn hit(name: &'static str) -> io::Result<()> {
    match triggered(name) {
        None | Some(Action::Abort) => Ok(()),
        Some(Action::Error) => Err(injected(name)),
        Some(Action::Sleep(d)) => {
            std::thread::sleep(d);
            Ok(())
        }
    }
}

/// Like [`hit`], for async code: `sleep` waits on the runtime's timer instead of blocking the
/// thread.
#[inline]
pub async fn hit_async(name: &'static str) -> io::Result<()> {
    match triggered(name) {
        None | Some(Action::Abort) => Ok(()),
        Some(Action::Error) => Err(injected(name)),
        Some(Action::Sleep(d)) => {
            tokio::time::sleep(d).await;
            Ok(())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn fires(r: &Registry, name: &str, hits: usize) -> Vec<bool> {
        (0..hits).map(|_| r.evaluate(name).is_some()).collect()
    }

    #[test]
    fn parses_actions_and_triggers() {
        let r = Registry::parse(
            " wal.sync=error@3 ; storage.put = sleep(250)*2;flush.after_write=abort;;",
        )
        .unwrap();
        assert_eq!(
            r.to_string(),
            "wal.sync=error@3;storage.put=sleep(250)*2;flush.after_write=abort"
        );
        assert_eq!(fires(&r, "wal.sync", 5), [false, false, true, false, false]);
        assert_eq!(
            r.evaluate("storage.put"),
            Some(Action::Sleep(Duration::from_millis(250)))
        );
        assert!(r.evaluate("storage.put").is_some());
        assert_eq!(r.evaluate("storage.put"), None);
        // Configured points trigger only for themselves.
        assert_eq!(r.evaluate("wal.write"), None);
        assert_eq!(r.evaluate("flush.after_write"), Some(Action::Abort));
        assert_eq!(r.evaluate("flush.after_write"), Some(Action::Abort));
    }

    #[test]
    fn empty_spec_configures_nothing() {
        assert!(Registry::parse("").unwrap().is_empty());
        assert!(Registry::parse(" ; ").unwrap().is_empty());
    }

    #[test]
    fn malformed_specs_are_refused_with_the_entry() {
        for (spec, reason) in [
            ("wal.sync", "missing '='"),
            ("wal.fsync=error", "unknown failpoint \"wal.fsync\""),
            ("wal.sync=explode", "unknown action \"explode\""),
            ("wal.sync=error@", "is not a count"),
            ("wal.sync=error@x", "is not a count"),
            ("wal.sync=error*-1", "is not a count"),
            ("wal.sync=error@0", "start at 1"),
            ("wal.sync=sleep(ms)", "sleep needs milliseconds"),
            ("wal.sync=sleep(10", "unknown action"),
            ("wal.sync=error;wal.sync=abort", "configured twice"),
        ] {
            let err = Registry::parse(spec).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(reason), "{spec}: {text}");
            assert!(text.contains("points: wal.write"), "{spec}: {text}");
        }
    }

    #[test]
    fn the_fast_path_is_inert_when_nothing_is_installed() {
        // The global registry is never installed by unit tests.
        assert!(!ACTIVE.load(Ordering::Relaxed));
        hit("wal.sync").unwrap();
    }
}
