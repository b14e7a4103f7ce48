//! The NATS ingest source: a queue-group subscription on `{prefix}.ingest.>`.
//!
//! Each message is one batch, handled like an HTTP request: the credential comes from the
//! `Authorization` header (`Bearer <jwt or api key>`, or the bare key), the tenant in the
//! subject must be the credential's tenant, the payload is a JSON object, a JSON array or
//! NDJSON, and the batch is validated and made durable in the WAL before the reply (the same
//! JSON as HTTP: the acknowledgement, or an RFC 9457 problem) is sent to the message's reply
//! subject. Replies carry `Alluvium-Status` (the HTTP status) and, for errors, `Alluvium-Code`.
//! `Idempotency-Key` or `Nats-Msg-Id` makes a retry answer with the first batch's sequences.
//!
//! Many messages are in flight at once, so their WAL writes share group commits; at the limit,
//! requests are answered 503 with `Retry-After` at once instead of queueing. Messages already
//! received when one is taken (up to 128) are handled with it as a group
//! ([`ingest_messages`]): one authentication per credential, one validation request, one WAL
//! append, and still one batch, one outcome and one reply per message.
//!
//! **JetStream mode** ([`super::jetstream`]): producers publish to the `ALLUVIUM_INGEST` stream
//! (their publish is acknowledged by JetStream once the stream has it), and a durable pull
//! consumer hands the messages to the same core. A message is acknowledged only after its
//! events are durable in the WAL; a redelivered message (a crash between the WAL and the ack)
//! carries the same key (`Nats-Msg-Id`, or one made of its stream sequence) and is not stored
//! twice. The WAL durability is always waited for. A message refused for good (any 4xx) is
//! terminated, never redelivered, and goes to the rejects stream; an overloaded or unavailable
//! node asks for redelivery later, which slows the pulls down.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use alluvium_actors::auth::{AuthError, Principal};
use alluvium_actors::ids::TenantId;
use alluvium_actors::schema::translate::BodyFormat;
use alluvium_actors::wal::messages::Durability;
use alluvium_nats::async_nats::{self, HeaderMap};
use alluvium_nats::{Subjects, headers};
use bytes::Bytes;
use futures::{FutureExt as _, StreamExt};
use tokio::sync::{Semaphore, watch};

use crate::error::Problem;
use crate::ingest::{IngestAck, IngestRequest, Source};
use crate::{Node, PipelineError};

/// Settings of the NATS ingest source.
#[derive(Debug, Clone)]
pub struct NatsIngestConfig {
    /// Queue group shared by every ingest node, so each message is handled once.
    pub queue_group: String,
    /// Messages handled at once: beyond, core requests are answered 503, and JetStream
    /// delivers no more (its `max_ack_pending`).
    pub max_in_flight: usize,
    /// Durability when the message does not ask (`Alluvium-Durability`).
    pub default_durability: Durability,
    /// Consume the `ALLUVIUM_INGEST` stream with a durable consumer instead of subscribing.
    pub jetstream: bool,
}

impl Default for NatsIngestConfig {
    fn default() -> Self {
        Self {
            queue_group: "alluvium-ingest".into(),
            max_in_flight: 1024,
            default_durability: Durability::Wal,
            jetstream: false,
        }
    }
}

/// Counters of the NATS ingest source.
#[derive(Debug, Default)]
pub struct NatsIngestStats {
    /// Messages received.
    pub messages: AtomicU64,
    /// Groups the messages were handled in (messages received together form one group).
    pub groups: AtomicU64,
    /// Events accepted (made durable).
    pub events: AtomicU64,
    /// Payload bytes of accepted messages.
    pub bytes: AtomicU64,
    /// Messages answered with an error.
    pub errors: AtomicU64,
    /// Messages answered as duplicates of an earlier one.
    pub duplicates: AtomicU64,
    /// Replies that could not be sent.
    pub reply_failures: AtomicU64,
}

/// Subscribes to the ingest subjects; the subscription is registered with the server when
/// this returns, so messages published from then on are received.
pub async fn subscribe(
    client: &async_nats::Client,
    subjects: &Subjects,
    config: &NatsIngestConfig,
) -> Result<async_nats::Subscriber, crate::link::LinkError> {
    let sub = client
        .queue_subscribe(subjects.ingest_all(), config.queue_group.clone())
        .await
        .map_err(|e| {
            crate::link::LinkError(format!(
                "cannot subscribe to {}: {e}",
                subjects.ingest_all()
            ))
        })?;
    client
        .flush()
        .await
        .map_err(|e| crate::link::LinkError(format!("cannot reach NATS: {e}")))?;
    tracing::info!(subject = %subjects.ingest_all(), queue = %config.queue_group, "NATS ingest subscribed");
    Ok(sub)
}

/// Resolves once `stop` turns true; never if its sender is gone (a link nobody holds keeps
/// serving).
pub(super) async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Waits until every message being handled is answered (each holds a permit).
pub(super) async fn in_flight_done(permits: &Semaphore, max_in_flight: usize) {
    let all = u32::try_from(max_in_flight.max(1)).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
}

/// Handles ingest messages of `sub` until it ends (the client closed), many at once. Once
/// `stop` turns true it unsubscribes, handles the messages already received, and returns when
/// every one of them is answered.
pub async fn serve(
    mut sub: async_nats::Subscriber,
    node: Node,
    client: async_nats::Client,
    subjects: Subjects,
    config: NatsIngestConfig,
    stats: Arc<NatsIngestStats>,
    mut stop: watch::Receiver<bool>,
) {
    let max_in_flight = config.max_in_flight;
    let permits = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let ctx = Arc::new((node, client, subjects, config, stats));
    let mut stopping = false;
    loop {
        let next = if stopping {
            sub.next().await
        } else {
            tokio::select! {
                msg = sub.next() => msg,
                () = stopped(&mut stop) => {
                    stopping = true;
                    if let Err(e) = sub.unsubscribe().await {
                        tracing::warn!(error = %e, "cannot unsubscribe from the ingest subjects");
                        break;
                    }
                    tracing::info!("NATS ingest unsubscribed; answering the messages received");
                    continue;
                }
            }
        };
        let Some(msg) = next else { break };
        // The messages already received join this one: they are handled as one group.
        let mut group = Vec::new();
        let mut pending = Some(msg);
        while let Some(msg) = pending.take() {
            match admit(&ctx, &permits, msg).await {
                Admission::Admitted(m, permit) => group.push((m, permit)),
                Admission::Refused => {}
                Admission::Closed => return,
            }
            if group.len() < MAX_GROUP {
                pending = sub.next().now_or_never().flatten();
            }
        }
        if group.is_empty() {
            continue;
        }
        let ctx = ctx.clone();
        actix::spawn(async move {
            let (node, client, subjects, config, stats) = &*ctx;
            let (messages, permits): (Vec<_>, Vec<_>) = group.into_iter().unzip();
            handle_group(node, client, subjects, config, stats, messages).await;
            drop(permits);
        });
    }
    in_flight_done(&permits, max_in_flight).await;
}

/// Most messages handled as one group: they share one authentication per credential, one
/// trip to the schema registry and one to the WAL.
pub(super) const MAX_GROUP: usize = 128;

type ServeCtx = (
    Node,
    async_nats::Client,
    Subjects,
    NatsIngestConfig,
    Arc<NatsIngestStats>,
);

enum Admission {
    Admitted(async_nats::Message, tokio::sync::OwnedSemaphorePermit),
    /// Answered 503 at once.
    Refused,
    /// The permits are gone: the source is stopping.
    Closed,
}

/// Takes a permit for `msg`. When all are taken, a requester is told at once to retry later,
/// rather than queueing without bound; a fire-and-forget message (nobody to tell) waits for
/// room.
async fn admit(ctx: &ServeCtx, permits: &Arc<Semaphore>, msg: async_nats::Message) -> Admission {
    match permits.clone().try_acquire_owned() {
        Ok(p) => Admission::Admitted(msg, p),
        Err(_) if msg.reply.is_some() => {
            let (_, client, _, config, stats) = ctx;
            stats.messages.fetch_add(1, Ordering::Relaxed);
            stats.errors.fetch_add(1, Ordering::Relaxed);
            let problem = Problem::new(
                503,
                "overloaded",
                format!(
                    "{} batches are being ingested; retry after 1 s",
                    config.max_in_flight
                ),
            );
            reply(
                client,
                stats,
                msg.reply,
                503,
                Some(problem.code),
                serde_json::to_vec(&problem),
            )
            .await;
            Admission::Refused
        }
        Err(_) => match permits.clone().acquire_owned().await {
            Ok(p) => Admission::Admitted(msg, p),
            Err(_) => Admission::Closed,
        },
    }
}

/// Sends a reply with the status headers (and `Retry-After` for 429 and 503).
async fn reply(
    client: &async_nats::Client,
    stats: &NatsIngestStats,
    to: Option<async_nats::Subject>,
    status: u16,
    code: Option<&'static str>,
    body: Result<Vec<u8>, serde_json::Error>,
) {
    let Some(to) = to else {
        return;
    };
    let mut h = HeaderMap::new();
    h.insert(headers::STATUS, status.to_string().as_str());
    h.insert(headers::CONTENT_TYPE, "application/json");
    if let Some(code) = code {
        h.insert(headers::CODE, code);
    }
    if status == 429 || status == 503 {
        h.insert(headers::RETRY_AFTER, "1");
    }
    let body = Bytes::from(body.unwrap_or_default());
    if let Err(e) = client.publish_with_headers(to, h, body).await {
        stats.reply_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, "cannot send a NATS ingest reply");
    }
}

async fn handle_group(
    node: &Node,
    client: &async_nats::Client,
    subjects: &Subjects,
    config: &NatsIngestConfig,
    stats: &NatsIngestStats,
    messages: Vec<async_nats::Message>,
) {
    stats
        .messages
        .fetch_add(messages.len() as u64, Ordering::Relaxed);
    stats.groups.fetch_add(1, Ordering::Relaxed);
    let keys = vec![None; messages.len()];
    let refs: Vec<&async_nats::Message> = messages.iter().collect();
    let results = ingest_messages(node, subjects, config, &refs, keys, false).await;
    for (msg, result) in messages.into_iter().zip(results) {
        answer(client, stats, msg, result).await;
    }
}

/// Counts and answers one message.
async fn answer(
    client: &async_nats::Client,
    stats: &NatsIngestStats,
    msg: async_nats::Message,
    result: Result<IngestAck, Problem>,
) {
    let size = msg.payload.len() as u64;
    let (status, code, body) = match &result {
        Ok(ack) => {
            stats
                .events
                .fetch_add(ack.accepted as u64, Ordering::Relaxed);
            stats.bytes.fetch_add(size, Ordering::Relaxed);
            if ack.duplicate {
                stats.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            (200, None, serde_json::to_vec(ack))
        }
        Err(p) => {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            if p.status >= 500 {
                tracing::error!(code = p.code, detail = %p.detail, subject = %msg.subject, "NATS ingest failed");
            }
            (p.status, Some(p.code), serde_json::to_vec(p))
        }
    };
    // A fire-and-forget publish has nobody to answer; rejected batches still reach the
    // rejects stream.
    reply(client, stats, msg.reply, status, code, body).await;
}

/// The value of header `name`, its name matched without regard to case (as HTTP does).
pub(super) fn header<'a>(msg: &'a async_nats::Message, name: &str) -> Option<&'a str> {
    let headers = msg.headers.as_ref()?;
    if let Some(v) = headers.get(name) {
        return Some(v.as_str());
    }
    headers
        .iter()
        .find(|(n, _)| AsRef::<str>::as_ref(*n).eq_ignore_ascii_case(name))
        .and_then(|(_, values)| values.first())
        .map(|v| v.as_str())
}

fn bad_request(code: &'static str, detail: String) -> Problem {
    Problem::new(400, code, detail)
}

/// Handles messages received together: everything each reply needs, as the acknowledgement or
/// the problem, in order. Each message is its own batch (its own checks, idempotency key and
/// all-or-nothing outcome); together they authenticate once per credential and share the
/// trips to the schema registry and the WAL. `fallback_keys` are the keys of messages without
/// one (JetStream mode: their stream sequences); `jetstream` marks messages of the ingest
/// stream, which are answered only once durable in the WAL whatever they ask for.
pub async fn ingest_messages(
    node: &Node,
    subjects: &Subjects,
    config: &NatsIngestConfig,
    messages: &[&async_nats::Message],
    fallback_keys: Vec<Option<String>>,
    jetstream: bool,
) -> Vec<Result<IngestAck, Problem>> {
    let mut answers: Vec<Option<Result<IngestAck, Problem>>> = Vec::new();
    let mut batches = Vec::new();
    let mut positions = Vec::new();
    let mut known = Authenticated::default();
    for (i, (msg, key)) in messages.iter().zip(fallback_keys).enumerate() {
        match prepare(node, subjects, config, msg, key, jetstream, &mut known).await {
            Ok(batch) => {
                batches.push(batch);
                positions.push(i);
                answers.push(None);
            }
            Err(p) => answers.push(Some(Err(p))),
        }
    }
    for (i, result) in positions.into_iter().zip(node.ingest_group(batches).await) {
        answers[i] = Some(result.map_err(|e| e.problem()));
    }
    answers
        .into_iter()
        .map(|a| {
            a.unwrap_or_else(|| {
                Err(Problem::new(
                    500,
                    "internal",
                    "the batch was not answered".into(),
                ))
            })
        })
        .collect()
}

/// Principals of the credentials met in one group, so each is authenticated once.
#[derive(Default)]
struct Authenticated(Vec<(String, Principal)>);

impl Authenticated {
    async fn principal(&mut self, node: &Node, credential: &str) -> Result<Principal, Problem> {
        if let Some((_, p)) = self.0.iter().find(|(c, _)| c == credential) {
            return Ok(p.clone());
        }
        let p = node
            .authenticate(credential)
            .await
            .map_err(|e| e.problem())?;
        self.0.push((credential.to_string(), p.clone()));
        Ok(p)
    }
}

/// Reads one message into a batch with its principal: the subject, the credential, the
/// headers. The problem if any of them is refused.
async fn prepare(
    node: &Node,
    subjects: &Subjects,
    config: &NatsIngestConfig,
    msg: &async_nats::Message,
    fallback_key: Option<String>,
    jetstream: bool,
    known: &mut Authenticated,
) -> Result<(Principal, IngestRequest), Problem> {
    let subject = msg.subject.as_str();
    let Some((tenant, table)) = subjects.parse_ingest(subject) else {
        return Err(bad_request(
            "invalid_subject",
            format!(
                "{:?} is not an ingest subject: publish to {}.ingest.<tenant>.<table>, each token \
                 free of '.', '*', '>', whitespace and control characters",
                headers::sanitize(subject),
                subjects.prefix()
            ),
        ));
    };
    let credential = header(msg, headers::AUTHORIZATION)
        .ok_or(headers::HeaderError::MissingCredential)
        .and_then(headers::credential)
        .map_err(|_| PipelineError::Auth(AuthError::Unauthenticated).problem())?;
    let principal = known.principal(node, credential).await?;
    let tenant = TenantId::new(tenant).map_err(|e| PipelineError::Name(e).problem())?;
    if tenant != principal.tenant {
        return Err(Problem::new(
            403,
            "tenant_mismatch",
            format!(
                "the credential belongs to tenant {:?} and cannot write to a subject of tenant {:?}",
                principal.tenant.as_str(),
                tenant.as_str()
            ),
        ));
    }
    let key = header(msg, headers::IDEMPOTENCY_KEY).or_else(|| header(msg, headers::NATS_MSG_ID));
    let idempotency_key = match key {
        Some(k) => Some(
            headers::idempotency_key(k)
                .map_err(|e| bad_request("invalid_idempotency_key", e.to_string()))?
                .to_string(),
        ),
        None => fallback_key,
    };
    let durability = match header(msg, headers::DURABILITY).map(str::trim) {
        // The stream already acknowledged the producer: acking it before the fsync could
        // lose what JetStream held.
        _ if jetstream => Durability::Wal,
        None | Some("") => config.default_durability,
        Some("wal") => Durability::Wal,
        Some("received") => Durability::Received,
        Some(other) => {
            return Err(bad_request(
                "bad_request",
                format!(
                    "{} header {:?}: use wal or received",
                    headers::DURABILITY,
                    headers::sanitize(other)
                ),
            ));
        }
    };
    let format = match header(msg, headers::CONTENT_TYPE).map(|v| {
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    }) {
        None => detect_format(&msg.payload),
        Some(t) if t.is_empty() => detect_format(&msg.payload),
        Some(t) if t == "application/json" => BodyFormat::Json,
        Some(t)
            if matches!(
                t.as_str(),
                "application/x-ndjson" | "application/ndjson" | "application/jsonl"
            ) =>
        {
            BodyFormat::Ndjson
        }
        Some(t) => {
            return Err(Problem::new(
                415,
                "unsupported_media_type",
                format!(
                    "content type {:?} is not accepted; use application/json or application/x-ndjson",
                    headers::sanitize(&t)
                ),
            ));
        }
    };
    let request = IngestRequest {
        table: table.to_string(),
        body: msg.payload.clone(),
        format,
        durability,
        idempotency_key,
        idempotency_body: None,
        source: if header(msg, headers::REPLAY).is_some() {
            Source::Replay
        } else if jetstream {
            Source::JetStream
        } else {
            Source::Nats
        },
    };
    Ok((principal, request))
}

/// The framing of a payload without a content type: a JSON array, or one JSON object (also
/// pretty-printed over several lines), is JSON; several objects one per line are NDJSON.
pub fn detect_format(payload: &[u8]) -> BodyFormat {
    let text = payload.trim_ascii();
    if text.first() == Some(&b'[') {
        return BodyFormat::Json;
    }
    let Some(nl) = text.iter().position(|&b| b == b'\n') else {
        return BodyFormat::Json;
    };
    // NDJSON: the first line is a whole object. A pretty-printed object's first line is not.
    let first = text[..nl].trim_ascii();
    if first.len() > 1 && first.first() == Some(&b'{') && first.last() == Some(&b'}') {
        BodyFormat::Ndjson
    } else {
        BodyFormat::Json
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_formats() {
        assert_eq!(detect_format(b"{\"a\":1}"), BodyFormat::Json);
        assert_eq!(detect_format(b" [{\"a\":1},\n{\"a\":2}]"), BodyFormat::Json);
        assert_eq!(detect_format(b"{\"a\":1}\n{\"a\":2}\n"), BodyFormat::Ndjson);
        assert_eq!(detect_format(b"{\"a\":1}\r\n{\"a\":2}"), BodyFormat::Ndjson);
        assert_eq!(detect_format(b"{\n  \"a\": 1\n}\n"), BodyFormat::Json);
        assert_eq!(detect_format(b"{\"a\": {\n \"b\": 1}}"), BodyFormat::Json);
        assert_eq!(detect_format(b""), BodyFormat::Json);
    }
}
