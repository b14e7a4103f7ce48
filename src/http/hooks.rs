//! `POST /v1/hooks/{source}`: inbound webhooks, authenticated by their sender's signature
//! instead of a credential (the checks are in [`alluvium_pipelines::sources::webhook`]).

use actix_web::http::header::{self, HeaderMap};
use actix_web::{HttpRequest, HttpResponse, web};
use alluvium_actors::schema::translate::BodyFormat;
use alluvium_pipelines::ingest::{IngestRequest, Source};
use alluvium_pipelines::sources::webhook::{Delivery, HeaderLookup};

use super::AppState;
use super::error::ApiError;
use super::handlers::{durability, read_body};

struct Headers<'a>(&'a HeaderMap);

impl HeaderLookup for Headers<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Verifies the delivery's signature over the bytes as received, answers protocol messages
/// (GitHub `ping`, Slack `url_verification`), and ingests the mapped rows with the sender's
/// delivery id as idempotency key. Unknown sources are 404, like any unknown route.
pub async fn receive(
    state: web::Data<AppState>,
    req: HttpRequest,
    source: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let name = source.into_inner();
    let Some(hook) = state.hooks.get(&name) else {
        return Err(ApiError::NotFound(format!(
            "POST /v1/hooks/{name}: no webhook source of that name is configured"
        )));
    };
    // Senders sign the bytes they send; a compressed body would have to be signed compressed,
    // which no sender does, and decompressing before the signature check would let anyone
    // make the server inflate data.
    if let Some(encoding) = req.headers().get(header::CONTENT_ENCODING)
        && !encoding
            .to_str()
            .is_ok_and(|e| e.trim().eq_ignore_ascii_case("identity"))
    {
        return Err(ApiError::UnsupportedMediaType(
            "webhook deliveries are read uncompressed: send them without Content-Encoding".into(),
        ));
    }
    let durability = durability(&state, &req)?;
    let body = read_body(&req, payload, state.body.at_most(hook.config().max_body)).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let delivery = match hook.receive(&Headers(req.headers()), &body, now) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(hook = %name, code = e.status_and_code().1, error = %e, "webhook delivery refused");
            return Err(e.into());
        }
    };
    let (rows, idempotency_key) = match delivery {
        Delivery::Answer(answer) => return Ok(HttpResponse::Ok().json(answer)),
        Delivery::Rows {
            body,
            idempotency_key,
            ..
        } => (body, idempotency_key),
    };
    let request = IngestRequest {
        table: hook.table().to_string(),
        body: rows,
        format: BodyFormat::Json,
        durability,
        idempotency_key: Some(idempotency_key),
        idempotency_body: Some(body.clone()),
        source: Source::Webhook,
    };
    let ack = state.node.ingest_batch(hook.principal(), request).await?;
    state
        .metrics
        .ingested(ack.accepted as u64, body.len() as u64);
    Ok(HttpResponse::Ok().json(ack))
}
