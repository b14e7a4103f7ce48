//! Outgoing webhooks: commit events POSTed to HTTP endpoints, signed, in order, at least once.
//!
//! Each configured webhook follows the node's commit events ([`EventHub::subscribe`]) from its
//! cursor (`<data>/notify/webhook-{name}.cursor`; on the first start, from the moment it
//! starts), keeps those matching its tenant, table and kinds, and POSTs them one at a time as
//! JSON. A 2xx answer delivers the event; any other status, a timeout or a transport error is
//! retried with exponential backoff (200 ms doubling, at most 30 s) until `max_attempts`, after
//! which the event is appended to the dead-letter log
//! (`<data>/notify/webhook-{name}.deadletter.ndjson`, fsynced) and delivery moves on. The
//! cursor moves past an event only once it is delivered or dead-lettered, so after a crash
//! delivery resumes where it stopped: an event whose answer was lost may be sent again
//! (receivers deduplicate by `Alluvium-Event-Id`), none is skipped.
//!
//! Every request carries `Alluvium-Event-Id: {catalog_version}:{index}` and
//! `Alluvium-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, computed
//! afresh for each attempt, so a receiver can check both the sender and the age of a request.
//!
//! Not here: the HTTP client is blocking (`ureq`) and runs on tokio's blocking pool; the
//! delivery loop itself runs on an actix arbiter, like the other notification sinks.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alluvium_actors::ids::{TableName, TenantId};
use alluvium_nats::{CommitEvent, CommitKind};
use futures::StreamExt;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::EventHub;
use super::feed::{EventPos, pos_of};

/// Header naming the event a request carries.
pub const EVENT_ID_HEADER: &str = "Alluvium-Event-Id";
/// Header carrying the request's signature.
pub const SIGNATURE_HEADER: &str = "Alluvium-Signature";

/// First delay before a retry; it doubles with each failed attempt.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest delay between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often, at most, the cursor is moved past events the webhook does not want (each
/// delivered or dead-lettered event moves it at once).
const SKIPPED_CURSOR_INTERVAL: Duration = Duration::from_secs(1);
/// Most bytes of an error answer kept for logs and the dead-letter log.
const ERROR_BODY_LIMIT: u64 = 512;
/// Most bytes of a success answer read (and discarded) so the connection can be reused.
const SUCCESS_BODY_LIMIT: u64 = 64 << 10;

/// One webhook: where commit events go, which ones, and how hard to try.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Names the cursor and dead-letter files: `[a-z0-9_-]{1,64}`, unique per node.
    pub name: String,
    /// Endpoint receiving the POSTs (`http://` or `https://`).
    pub url: String,
    /// Key of the HMAC-SHA256 signature, at least 16 bytes.
    pub secret: String,
    /// Only events of this tenant (`None`: every tenant).
    pub tenant: Option<String>,
    /// Only events of tables with this name (`None`: every table).
    pub table: Option<String>,
    /// Only events of these kinds (empty: every kind).
    pub kinds: Vec<CommitKind>,
    /// Attempts per event before it is dead-lettered, at least 1.
    pub max_attempts: u32,
    /// Limit on one attempt, from connecting to reading the answer.
    pub timeout: Duration,
}

impl WebhookConfig {
    /// Attempts per event when not configured.
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 8;
    /// Limit on one attempt when not configured.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
    /// Shortest accepted secret, in bytes.
    pub const MIN_SECRET_LEN: usize = 16;

    /// A webhook for every event, with the default attempts and timeout.
    pub fn new(
        name: impl Into<String>,
        url: impl Into<String>,
        secret: impl Into<String>,
    ) -> WebhookConfig {
        WebhookConfig {
            name: name.into(),
            url: url.into(),
            secret: secret.into(),
            tenant: None,
            table: None,
            kinds: Vec::new(),
            max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }

    /// Checks the name, URL, secret, filters and limits, naming the webhook and the rule
    /// broken.
    pub fn validate(&self) -> Result<(), String> {
        let name = &self.name;
        let name_ok = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !name_ok {
            let shown: String = name.chars().take(80).collect();
            return Err(format!(
                "invalid webhook name {shown:?}: 1 to 64 characters of a-z, 0-9, '_' and '-'"
            ));
        }
        let url = self.url.trim();
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        match rest {
            Some(host) if !host.is_empty() && !host.starts_with('/') => {}
            _ => {
                return Err(format!(
                    "webhook {name}: url {:?} must start with http:// or https:// and name a host",
                    self.url
                ));
            }
        }
        if self.secret.len() < Self::MIN_SECRET_LEN {
            return Err(format!(
                "webhook {name}: secret must be at least {} bytes (it is {})",
                Self::MIN_SECRET_LEN,
                self.secret.len()
            ));
        }
        if let Some(t) = &self.tenant {
            TenantId::new(t.as_str()).map_err(|e| format!("webhook {name}: {e}"))?;
        }
        if let Some(t) = &self.table {
            TableName::new(t.as_str()).map_err(|e| format!("webhook {name}: {e}"))?;
        }
        if self.max_attempts == 0 {
            return Err(format!("webhook {name}: max_attempts must be at least 1"));
        }
        if self.timeout.is_zero() {
            return Err(format!("webhook {name}: timeout must be more than 0"));
        }
        Ok(())
    }

    /// Whether the webhook wants `event`.
    pub fn matches(&self, event: &CommitEvent) -> bool {
        self.tenant.as_deref().is_none_or(|t| event.tenant == t)
            && self.table.as_deref().is_none_or(|t| event.table == t)
            && (self.kinds.is_empty() || self.kinds.contains(&event.kind))
    }

    /// `<data_dir>/notify/webhook-{name}.cursor`: the id of the last event handled.
    pub fn cursor_path(&self, data_dir: &Path) -> PathBuf {
        data_dir
            .join("notify")
            .join(format!("webhook-{}.cursor", self.name))
    }

    /// `<data_dir>/notify/webhook-{name}.deadletter.ndjson`: events given up on.
    pub fn dead_letter_path(&self, data_dir: &Path) -> PathBuf {
        data_dir
            .join("notify")
            .join(format!("webhook-{}.deadletter.ndjson", self.name))
    }
}

/// The secret stays out of logs.
impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("tenant", &self.tenant)
            .field("table", &self.table)
            .field("kinds", &self.kinds)
            .field("max_attempts", &self.max_attempts)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Validates every webhook of a node, and that no two share a name (they would share a cursor).
pub fn validate_all(configs: &[WebhookConfig]) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for c in configs {
        c.validate()?;
        if !seen.insert(c.name.as_str()) {
            return Err(format!("two webhooks are named {:?}", c.name));
        }
    }
    Ok(())
}

/// Counters of one webhook.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Events answered with a 2xx.
    pub delivered: AtomicU64,
    /// Failed attempts that were tried again.
    pub retried: AtomicU64,
    /// Events given up on and written to the dead-letter log.
    pub dead_lettered: AtomicU64,
}

/// Lowercase hex of HMAC-SHA256(`key`, `message`).
pub fn hmac_sha256_hex(key: &[u8], message: &[&[u8]]) -> String {
    // HMAC takes keys of any length: `new_from_slice` cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    for part in message {
        mac.update(part);
    }
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `Alluvium-Signature` value of `body` sent at unix time `t`:
/// `t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &[u8], t: u64, body: &[u8]) -> String {
    let ts = t.to_string();
    let v1 = hmac_sha256_hex(secret, &[ts.as_bytes(), b".", body]);
    format!("t={ts},v1={v1}")
}

/// The delay after `failed` failed attempts (1 or more): 200 ms doubling, at most 30 s.
pub fn backoff(failed: u32) -> Duration {
    let exp = failed.saturating_sub(1).min(20);
    FIRST_BACKOFF.saturating_mul(1 << exp).min(MAX_BACKOFF)
}

/// Reads a cursor: `Ok(None)` when there is none yet, an error when the file cannot be read
/// or does not hold an event id.
pub fn read_cursor(path: &Path) -> Result<Option<EventPos>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => CommitEvent::parse_id(text.trim()).map(Some).ok_or_else(|| {
            format!(
                "cursor {} holds {:?}, not an event id",
                path.display(),
                text.chars().take(80).collect::<String>()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read cursor {}: {e}", path.display())),
    }
}

/// Replaces the cursor with `id`, durably.
pub fn write_cursor(path: &Path, id: &str) -> std::io::Result<()> {
    super::replace_file(path, id.as_bytes())
}

/// One line of the dead-letter log.
#[derive(Debug, serde::Serialize)]
pub struct DeadLetter<'a> {
    /// The event, as it would have been POSTed.
    pub event: &'a CommitEvent,
    /// Attempts made.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: &'a str,
    /// When delivery was given up on (RFC 3339).
    pub failed_at: String,
}

/// Appends `letter` as one JSON line to the dead-letter log at `path` and fsyncs it. A torn
/// last line (a crash in the middle of an append) is cut off first: its event was not past the
/// cursor, so it is dead-lettered again.
pub fn append_dead_letter(path: &Path, letter: &DeadLetter<'_>) -> std::io::Result<()> {
    append_line(path, &encode_line(letter)?)
}

fn encode_line(letter: &DeadLetter<'_>) -> std::io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(letter)?;
    line.push(b'\n');
    Ok(line)
}

/// Appends one newline-terminated line, after cutting off a torn tail, and fsyncs.
fn append_line(path: &Path, line: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let created = !path.exists();
    let mut f = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)?;
    let len = f.metadata()?.len();
    if len > 0 {
        let end = complete_prefix(&mut f, len)?;
        if end < len {
            tracing::warn!(path = %path.display(), offset = end, bytes = len - end, "dead-letter log ends in a torn line; cut off");
            f.set_len(end)?;
        }
    }
    f.write_all(line)?;
    f.sync_data()?;
    if created {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The length of the file up to and including its last newline.
fn complete_prefix(f: &mut std::fs::File, len: u64) -> std::io::Result<u64> {
    let mut end = len;
    let mut buf = vec![0u8; 4096];
    while end > 0 {
        let n = end.min(buf.len() as u64);
        let start = end - n;
        f.seek(SeekFrom::Start(start))?;
        let chunk = &mut buf[..n as usize];
        f.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|b| *b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// Why an event was given up on.
#[derive(Debug)]
struct Failure {
    attempts: u32,
    last_error: String,
}

/// Delivers the events `config` matches, after its cursor (or from now on, the first time),
/// forever. Runs on the current arbiter. Stops only when its cursor is unreadable or its
/// dead-letter log cannot be written, with an error: guessing would skip events.
pub async fn deliver(
    hub: EventHub,
    config: WebhookConfig,
    data_dir: PathBuf,
    stats: Arc<WebhookStats>,
) {
    let config = Arc::new(config);
    let name = config.name.clone();
    let cursor = config.cursor_path(&data_dir);
    let dead_letters = config.dead_letter_path(&data_dir);
    let agent = ureq::AgentBuilder::new()
        .timeout(config.timeout)
        // A redirect would turn the POST into a GET elsewhere: it is a failed attempt.
        .redirects(0)
        .user_agent(concat!("alluvium/", env!("CARGO_PKG_VERSION")))
        .build();

    let mut after = match read_cursor(&cursor) {
        Ok(Some(pos)) => pos,
        Ok(None) => {
            // The first start: from now on, and "now" is written down at once, so a crash
            // before the first event does not move the starting point.
            let head = hub.head();
            if let Err(e) = blocking_write_cursor(&cursor, head.to_string()).await {
                tracing::warn!(webhook = %name, path = %cursor.display(), error = %e, "cannot write the webhook cursor");
            }
            (head, usize::MAX)
        }
        Err(e) => {
            tracing::error!(webhook = %name, error = %e, "webhook stopped: fix or remove its cursor file and restart");
            return;
        }
    };
    let resume = match after {
        (version, usize::MAX) => version.to_string(),
        (version, index) => CommitEvent::make_id(version, index),
    };
    tracing::info!(webhook = %name, after = %resume, "webhook delivery started");

    loop {
        let mut events = Box::pin(hub.subscribe(Some(after)));
        let mut skipped_since = Instant::now();
        let mut unsaved_skip: Option<String> = None;
        while let Some(item) = events.next().await {
            let event = match item {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(webhook = %name, error = %e, "commit event stream failed; resuming after the last event handled");
                    break;
                }
            };
            if !config.matches(&event) {
                after = pos_of(&event);
                unsaved_skip = Some(event.id.clone());
                // Events it does not want move the cursor too, but not with an fsync each.
                if skipped_since.elapsed() >= SKIPPED_CURSOR_INTERVAL {
                    if let Some(id) = unsaved_skip.take() {
                        save_cursor(&name, &cursor, id).await;
                    }
                    skipped_since = Instant::now();
                }
                continue;
            }
            if let Err(failure) = deliver_one(&agent, &config, &event, &stats).await {
                let letter = DeadLetter {
                    event: &event,
                    attempts: failure.attempts,
                    last_error: &failure.last_error,
                    failed_at: chrono::Utc::now()
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                };
                let written = match encode_line(&letter) {
                    Ok(line) => {
                        let path = dead_letters.clone();
                        tokio::task::spawn_blocking(move || append_line(&path, &line))
                            .await
                            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = written {
                    // The event is neither delivered nor recorded: moving on would lose it.
                    tracing::error!(webhook = %name, id = %event.id, path = %dead_letters.display(), error = %e, "webhook stopped: cannot write the dead-letter log; the event is retried after a restart");
                    return;
                }
                stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(webhook = %name, id = %event.id, attempts = failure.attempts, error = %failure.last_error, "webhook delivery failed; event dead-lettered");
            }
            after = pos_of(&event);
            unsaved_skip = None;
            save_cursor(&name, &cursor, event.id.clone()).await;
        }
        if let Some(id) = unsaved_skip.take() {
            save_cursor(&name, &cursor, id).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn blocking_write_cursor(path: &Path, id: String) -> std::io::Result<()> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || write_cursor(&path, &id))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
}

async fn save_cursor(name: &str, path: &Path, id: String) {
    if let Err(e) = blocking_write_cursor(path, id).await {
        tracing::warn!(webhook = %name, path = %path.display(), error = %e, "cannot write the webhook cursor; events may be sent again after a restart");
    }
}

/// POSTs one event until an attempt succeeds or `max_attempts` have failed; returns the
/// attempts made.
async fn deliver_one(
    agent: &ureq::Agent,
    config: &Arc<WebhookConfig>,
    event: &Arc<CommitEvent>,
    stats: &WebhookStats,
) -> Result<u32, Failure> {
    let body: Arc<[u8]> = match serde_json::to_vec(&**event) {
        Ok(b) => b.into(),
        Err(e) => {
            return Err(Failure {
                attempts: 0,
                last_error: format!("cannot encode the event: {e}"),
            });
        }
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (a, c, id, b) = (
            agent.clone(),
            config.clone(),
            event.id.clone(),
            body.clone(),
        );
        let result = tokio::task::spawn_blocking(move || post(&a, &c, &id, &b))
            .await
            .unwrap_or_else(|e| Err(format!("delivery task failed: {e}")));
        match result {
            Ok(()) => {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                return Ok(attempt);
            }
            Err(e) if attempt >= config.max_attempts => {
                return Err(Failure {
                    attempts: attempt,
                    last_error: e,
                });
            }
            Err(e) => {
                stats.retried.fetch_add(1, Ordering::Relaxed);
                let delay = backoff(attempt);
                if attempt == 1 {
                    tracing::warn!(webhook = %config.name, id = %event.id, error = %e, "webhook delivery failed; retrying");
                } else {
                    tracing::debug!(webhook = %config.name, id = %event.id, attempt, error = %e, "webhook delivery failed; retrying");
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// One attempt, blocking: `Ok` on a 2xx answer, else what went wrong.
fn post(agent: &ureq::Agent, config: &WebhookConfig, id: &str, body: &[u8]) -> Result<(), String> {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let result = agent
        .post(&config.url)
        .set("Content-Type", "application/json")
        .set(EVENT_ID_HEADER, id)
        .set(
            SIGNATURE_HEADER,
            &signature(config.secret.as_bytes(), t, body),
        )
        .send_bytes(body);
    match result {
        Ok(resp) if (200..300).contains(&resp.status()) => {
            // Read the answer so the connection goes back to the pool.
            let _ = std::io::copy(
                &mut resp.into_reader().take(SUCCESS_BODY_LIMIT),
                &mut std::io::sink(),
            );
            Ok(())
        }
        Ok(resp) | Err(ureq::Error::Status(_, resp)) => Err(describe(resp)),
        Err(ureq::Error::Transport(t)) => Err(t.to_string()),
    }
}

/// `HTTP <status>: <start of the body>`, printable.
fn describe(resp: ureq::Response) -> String {
    let status = resp.status();
    let mut raw = Vec::new();
    let _ = resp
        .into_reader()
        .take(ERROR_BODY_LIMIT)
        .read_to_end(&mut raw);
    let text: String = String::from_utf8_lossy(&raw)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let text = text.trim();
    if text.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {text}")
    }
}

#[cfg(test)]
#[path = "webhooks_tests.rs"]
mod tests;
