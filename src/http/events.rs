//! `GET /v1/events`: commit events of the principal's tenant as server-sent events.
//!
//! Each event is `id: {catalog_version}:{index}`, `event: flushed|compacted|schema` and one
//! `data:` line with the JSON of the NATS commit event. A client that reconnects with
//! `Last-Event-ID` (or `?after=`) gets every event after that one, read back from the catalog
//! log if needed, so nothing is missed across disconnects. Without either, the stream starts
//! with the next commit. A comment line is sent every 15 s to keep proxies from closing it.
//!
//! The credential is checked again at least every 15 s while the stream is open: once its key
//! is revoked or expired (or its JWT's `exp` passes), the stream ends with an `error` event.

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use alluvium_actors::auth::Scope;
use alluvium_actors::ids::TableName;
use alluvium_nats::{CommitEvent, CommitKind};
use alluvium_pipelines::PipelineError;
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;
use super::handlers::{credential, principal};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventParams {
    /// Only this table's events.
    table: Option<String>,
    /// Comma-separated kinds: flushed, compacted, schema. Default: all.
    kinds: Option<String>,
    /// Resume after this event id (like `Last-Event-ID`).
    after: Option<String>,
}

const KEEPALIVE: Duration = Duration::from_secs(15);

/// `GET /v1/events[?table=..&kinds=..&after=..]` (query scope).
pub async fn events(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let principal = principal(&state, &req).await?;
    let params = web::Query::<EventParams>::from_query(req.query_string())
        .map_err(|e| ApiError::BadRequest(format!("query string: {e}")))?
        .into_inner();
    // Events of one table need `query` on it; of every table, `query` on every table.
    let table = match params.table {
        Some(t) => {
            let t = TableName::new(&t).map_err(|e| ApiError::Pipeline(e.into()))?;
            principal
                .require_on(Scope::Query, &t)
                .map_err(|e| ApiError::Pipeline(e.into()))?;
            Some(t)
        }
        None => {
            principal
                .require(Scope::Query)
                .map_err(|e| ApiError::Pipeline(e.into()))?;
            None
        }
    };
    let kinds: Vec<CommitKind> = match params.kinds.as_deref() {
        None | Some("") => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|k| {
                CommitKind::parse(k.trim()).ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "unknown event kind {k:?}: use flushed, compacted or schema"
                    ))
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let resume = req
        .headers()
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("?").to_string())
        .or(params.after);
    let after = match resume.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(id) => Some(CommitEvent::parse_id(id).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "invalid event id {id:?}: expected {{catalog_version}}:{{index}} or a catalog version"
            ))
        })?),
    };
    let tenant = principal.tenant.as_str().to_string();
    let matches = move |e: &CommitEvent| {
        e.tenant == tenant
            && table.as_ref().is_none_or(|t| e.table == t.as_str())
            && (kinds.is_empty() || kinds.contains(&e.kind))
    };
    let events = Box::pin(state.node.commit_events().subscribe(after));
    let live = Live {
        node: state.node.clone(),
        credential: credential(req.headers())?.to_string(),
        checked: std::time::Instant::now(),
    };
    // Each matching event, a keep-alive comment when nothing was sent for a while, and the
    // end of the stream after an error or once the credential is no longer valid (the client
    // reconnects with Last-Event-ID).
    let body = futures::stream::unfold(Some((events, matches, live)), |state| async move {
        let (mut events, matches, mut live) = state?;
        loop {
            if let Err(e) = live.still_valid().await {
                return Some((sse_error(&e), None));
            }
            let next = tokio::time::timeout(KEEPALIVE, events.next()).await;
            let chunk = match next {
                Err(_) => Bytes::from_static(b": keep-alive\n\n"),
                Ok(Some(Ok(e))) if matches(&e) => sse_event(&e),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => return Some((sse_error(&e), None)),
                Ok(None) => return None,
            };
            return Some((chunk, Some((events, matches, live))));
        }
    });
    let hello = futures::stream::once(std::future::ready(Bytes::from_static(b": subscribed\n\n")));
    let body = hello.chain(body).map(Ok::<_, actix_web::Error>);
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

/// The stream's credential, checked again every [`KEEPALIVE`].
struct Live {
    node: alluvium_pipelines::Node,
    credential: String,
    checked: std::time::Instant,
}

impl Live {
    async fn still_valid(&mut self) -> Result<(), PipelineError> {
        if self.checked.elapsed() < KEEPALIVE {
            return Ok(());
        }
        self.node.authenticate(&self.credential).await?;
        self.checked = std::time::Instant::now();
        Ok(())
    }
}

fn sse_event(e: &CommitEvent) -> Bytes {
    let data = serde_json::to_string(e).unwrap_or_default();
    Bytes::from(format!("id: {}\nevent: {}\ndata: {data}\n\n", e.id, e.kind))
}

fn sse_error(e: &PipelineError) -> Bytes {
    let data = serde_json::to_string(&e.problem()).unwrap_or_default();
    Bytes::from(format!("event: error\ndata: {data}\n\n"))
}
