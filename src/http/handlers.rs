//! Request handlers.

use std::collections::BTreeSet;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderMap};
use actix_web::{HttpRequest, HttpResponse, web};
use alluvium_actors::auth::{Grant, KeySpec, Principal, Quota};
use alluvium_actors::catalog::DataFile;
use alluvium_actors::ids::TenantId;
use alluvium_actors::schema::TableSchema;
use alluvium_actors::schema::arrow::{batch_to_json, write_json_rows};
use alluvium_actors::schema::messages::TableInfo;
use alluvium_actors::schema::translate::BodyFormat;
use alluvium_actors::wal::messages::Durability;
use alluvium_pipelines::PipelineError;
use alluvium_pipelines::ingest::{IngestRequest, Source};
use alluvium_pipelines::query::QueryRequest;
use serde::{Deserialize, Serialize};

use super::AppState;
pub(super) use super::body::read_body;
use super::error::ApiError;
use alluvium_actors::auth::AuthError;

type Result<T> = std::result::Result<T, ApiError>;

/// The credential of a request: `Authorization: Bearer <token>` or `X-API-Key: <key>`.
pub(super) fn credential(headers: &HeaderMap) -> Result<&str> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().map_err(|_| AuthError::Unauthenticated)?;
        let token = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .ok_or(AuthError::Unauthenticated)?;
        return Ok(token.trim());
    }
    if let Some(v) = headers.get("x-api-key") {
        return Ok(v.to_str().map_err(|_| AuthError::Unauthenticated)?.trim());
    }
    Err(AuthError::Unauthenticated.into())
}

pub(super) async fn principal(state: &AppState, req: &HttpRequest) -> Result<Principal> {
    let cred = credential(req.headers())?;
    if cred.is_empty() {
        return Err(AuthError::Unauthenticated.into());
    }
    Ok(state.node.authenticate(cred).await?)
}

fn mime(req: &HttpRequest) -> String {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("{what}: {e}")))
}

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// Ready once recovery finished (before the server binds) and as long as writes are possible.
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse> {
    state
        .node
        .ready()
        .map_err(|reason| ApiError::Pipeline(PipelineError::Unavailable(reason)))?;
    if let Some(nats) = &state.nats {
        nats.health()
            .map_err(|reason| ApiError::Pipeline(PipelineError::Unavailable(reason)))?;
    }
    let (_, failing) = state.node.flush_health();
    let body = if failing > 0 {
        format!("ready (flushes of {failing} table(s) failing and being retried)\n")
    } else {
        "ready\n".to_string()
    };
    Ok(HttpResponse::Ok().content_type("text/plain").body(body))
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(
            state
                .metrics
                .render(&state.node, state.nats.as_ref(), &state.webhooks),
        )
}

pub async fn not_found(req: HttpRequest) -> Result<HttpResponse> {
    Err(ApiError::NotFound(format!(
        "{} {}",
        req.method(),
        req.path()
    )))
}

/// Options of `POST /v1/tables/{table}/events`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IngestParams {
    /// `wal` (answer after fdatasync) or `received` (answer before the disk).
    durability: Option<Durability>,
}

/// The durability a write asks for in its query string, or the configured default.
pub(super) fn durability(state: &AppState, req: &HttpRequest) -> Result<Durability> {
    let params = web::Query::<IngestParams>::from_query(req.query_string())
        .map_err(|e| ApiError::BadRequest(format!("query string: {e}")))?;
    Ok(params.durability.unwrap_or(state.default_durability))
}

pub async fn ingest(
    state: web::Data<AppState>,
    req: HttpRequest,
    table: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let principal = principal(&state, &req).await?;
    let format = match mime(&req).as_str() {
        // curl -d sends form encoding unless told otherwise; the body is still parsed as
        // JSON and refused precisely if it is not.
        "" | "application/json" | "application/x-www-form-urlencoded" => BodyFormat::Json,
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" => BodyFormat::Ndjson,
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "content type {other:?} is not accepted; use application/json or application/x-ndjson"
            )));
        }
    };
    let durability = durability(&state, &req)?;
    let idempotency_key = match req.headers().get("idempotency-key") {
        None => None,
        Some(v) => {
            let v = v.to_str().map_err(|_| {
                ApiError::InvalidIdempotencyKey("it must be printable ASCII".into())
            })?;
            Some(
                alluvium_nats::headers::idempotency_key(v)
                    .map_err(|e| ApiError::InvalidIdempotencyKey(e.to_string()))?
                    .to_string(),
            )
        }
    };
    let body = read_body(&req, payload, state.body).await?;
    let bytes = body.len();
    let request = IngestRequest {
        table: table.into_inner(),
        body,
        format,
        durability,
        idempotency_key,
        idempotency_body: None,
        source: Source::Http,
    };
    let ack = state.node.ingest_batch(&principal, request).await?;
    state.metrics.ingested(ack.accepted as u64, bytes as u64);
    Ok(HttpResponse::Ok().json(ack))
}

/// `DELETE /v1/tables/{table}/rows/{key}`: a tombstone for the key, acknowledged like events.
pub async fn delete_row(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let principal = principal(&state, &req).await?;
    let durability = durability(&state, &req)?;
    let (table, key) = path.into_inner();
    let ack = state
        .node
        .delete_key(&principal, &table, &key, durability)
        .await?;
    Ok(HttpResponse::Ok().json(ack))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RowParams {
    #[serde(default)]
    include_hidden: bool,
    #[serde(default)]
    as_of: Option<u64>,
}

/// `GET /v1/tables/{table}/rows/{key}`: the live row of a key of an upsert table.
pub async fn get_row(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let principal = principal(&state, &req).await?;
    let params = web::Query::<RowParams>::from_query(req.query_string())
        .map_err(|e| ApiError::BadRequest(format!("query string: {e}")))?;
    let (table, key) = path.into_inner();
    let batch = state
        .node
        .lookup(
            &principal,
            &table,
            &key,
            params.include_hidden,
            params.as_of,
        )
        .await?;
    let row = batch_to_json(&batch)
        .map_err(|e| ApiError::Pipeline(PipelineError::Unavailable(e.to_string())))?
        .into_iter()
        .next()
        .unwrap_or_default();
    Ok(HttpResponse::Ok().json(row))
}

#[derive(Serialize)]
struct TableView<'a> {
    table: &'a str,
    tenant: &'a str,
    schema_version: u32,
    #[serde(flatten)]
    schema: &'a TableSchema,
}

fn table_view(info: &TableInfo) -> TableView<'_> {
    TableView {
        table: info.table.table.as_str(),
        tenant: info.table.tenant.as_str(),
        schema_version: info.version,
        schema: &info.schema,
    }
}

pub async fn create_table(
    state: web::Data<AppState>,
    req: HttpRequest,
    table: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let principal = principal(&state, &req).await?;
    let body = read_body(&req, payload, state.body).await?;
    let schema: TableSchema = serde_json::from_slice(&body).map_err(|e| {
        ApiError::Pipeline(PipelineError::Schema(
            alluvium_actors::schema::error::SchemaError::InvalidDefinition(e.to_string()),
        ))
    })?;
    let created = state.node.create_table(&principal, &table, schema).await?;
    let status = if created.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    #[derive(Serialize)]
    struct Answer<'a> {
        #[serde(flatten)]
        table: TableView<'a>,
        /// What a new schema version changed, in words.
        #[serde(skip_serializing_if = "<[String]>::is_empty")]
        changes: &'a [String],
    }
    Ok(HttpResponse::build(status).json(Answer {
        table: table_view(&created.info),
        changes: &created.changes,
    }))
}

pub async fn get_table(
    state: web::Data<AppState>,
    req: HttpRequest,
    table: web::Path<String>,
) -> Result<HttpResponse> {
    let principal = principal(&state, &req).await?;
    let info = state.node.table(&principal, &table).await?;
    Ok(HttpResponse::Ok().json(table_view(&info)))
}

pub async fn list_tables(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse> {
    let principal = principal(&state, &req).await?;
    let tables = state.node.tables(&principal).await?;
    let views: Vec<_> = tables.iter().map(table_view).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "tables": views })))
}

pub async fn query(
    state: web::Data<AppState>,
    req: HttpRequest,
    table: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let principal = principal(&state, &req).await?;
    let body = read_body(&req, payload, state.body).await?;
    let request: QueryRequest = if body.iter().all(u8::is_ascii_whitespace) {
        QueryRequest::default()
    } else {
        parse_json(&body, "query")?
    };
    let explain = request.explain;
    let format = OutputFormat::of(&req);
    let result = state.node.query(&principal, &table, request).await?;
    let version = result.catalog_version.to_string();
    let fresh = result.fresh.header();
    let out = web::block(move || -> std::result::Result<Vec<u8>, String> {
        if explain {
            // Rows and the plan's counts together, as one JSON object.
            let mut rows = vec![b'['];
            let mut first = true;
            for b in &result.batches {
                write_json_rows(b, &mut rows, false, &mut first).map_err(|e| e.to_string())?;
            }
            rows.push(b']');
            let rows: serde_json::Value =
                serde_json::from_slice(&rows).map_err(|e| e.to_string())?;
            return serde_json::to_vec(&serde_json::json!({
                "catalog_version": result.catalog_version,
                "rows": rows,
                "explain": result.stats,
            }))
            .map_err(|e| e.to_string());
        }
        match format {
            OutputFormat::Json | OutputFormat::NdJson => {
                let ndjson = format == OutputFormat::NdJson;
                let mut out = Vec::new();
                if !ndjson {
                    out.push(b'[');
                }
                let mut first = true;
                for b in &result.batches {
                    write_json_rows(b, &mut out, ndjson, &mut first).map_err(|e| e.to_string())?;
                }
                if !ndjson {
                    out.extend_from_slice(b"]\n");
                }
                Ok(out)
            }
            OutputFormat::ArrowStream => {
                let mut w = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &result.schema)
                    .map_err(|e| e.to_string())?;
                for b in &result.batches {
                    w.write(b).map_err(|e| e.to_string())?;
                }
                w.into_inner().map_err(|e| e.to_string())
            }
            OutputFormat::Parquet => {
                let props = parquet::file::properties::WriterProperties::builder()
                    .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
                    .build();
                let mut w = parquet::arrow::ArrowWriter::try_new(
                    Vec::new(),
                    result.schema.clone(),
                    Some(props),
                )
                .map_err(|e| e.to_string())?;
                for b in &result.batches {
                    w.write(b).map_err(|e| e.to_string())?;
                }
                w.into_inner().map_err(|e| e.to_string())
            }
        }
    })
    .await
    .map_err(|e| ApiError::Pipeline(PipelineError::Unavailable(e.to_string())))?
    .map_err(|e| ApiError::Pipeline(PipelineError::Unavailable(e)))?;
    let ctype = if explain {
        "application/json"
    } else {
        format.content_type()
    };
    Ok(HttpResponse::Ok()
        .content_type(ctype)
        .insert_header(("Alluvium-Catalog-Version", version))
        .insert_header(("Alluvium-Fresh-Rows", fresh))
        .body(out))
}

/// How query results are written, chosen by the `Accept` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutputFormat {
    Json,
    NdJson,
    ArrowStream,
    Parquet,
}

impl OutputFormat {
    fn of(req: &HttpRequest) -> OutputFormat {
        let accept = req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if accept.contains(ARROW_STREAM) {
            OutputFormat::ArrowStream
        } else if accept.contains(PARQUET) {
            OutputFormat::Parquet
        } else if accept.contains("application/x-ndjson") || accept.contains("application/ndjson") {
            OutputFormat::NdJson
        } else {
            OutputFormat::Json
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            OutputFormat::Json => "application/json",
            OutputFormat::NdJson => "application/x-ndjson",
            OutputFormat::ArrowStream => ARROW_STREAM,
            OutputFormat::Parquet => PARQUET,
        }
    }
}

const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";
const PARQUET: &str = "application/vnd.apache.parquet";

pub async fn flush(
    state: web::Data<AppState>,
    req: HttpRequest,
    table: web::Path<String>,
) -> Result<HttpResponse> {
    let principal = principal(&state, &req).await?;
    let version = state.node.flush(&principal, &table).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "flushed": version.is_some(),
        "catalog_version": version,
    })))
}

pub async fn files(
    state: web::Data<AppState>,
    req: HttpRequest,
    table: web::Path<String>,
) -> Result<HttpResponse> {
    let principal = principal(&state, &req).await?;
    let (version, entry) = state.node.files(&principal, &table).await?;
    let files: Vec<&DataFile> = entry.files.iter().map(|f| f.as_ref()).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "catalog_version": version,
        "schema_version": entry.schema_version,
        "committed_seq": entry.committed_seq,
        "readable_from": entry.readable_from,
        "files": files,
        "removed": entry.removed,
    })))
}

pub async fn compact(
    state: web::Data<AppState>,
    req: HttpRequest,
    table: web::Path<String>,
) -> Result<HttpResponse> {
    let principal = principal(&state, &req).await?;
    let report = state.node.compact(&principal, &table).await?;
    Ok(HttpResponse::Ok().json(report))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRequest {
    tenant: Option<String>,
    scopes: Vec<String>,
    #[serde(default)]
    label: Option<String>,
    /// RFC 3339.
    #[serde(default)]
    expires_at: Option<String>,
    /// A duration from now: `"30d"`, `"12h"`.
    #[serde(default)]
    expires_in: Option<String>,
    #[serde(default)]
    quota: Option<Quota>,
}

fn key_request_error(reason: impl Into<String>) -> ApiError {
    ApiError::Pipeline(PipelineError::Auth(AuthError::InvalidKeyRequest {
        reason: reason.into(),
    }))
}

/// `POST /v1/keys`: a new API key, shown once.
pub async fn create_key(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let principal = principal(&state, &req).await?;
    let body = read_body(&req, payload, state.body.at_most(64 * 1024)).await?;
    let kr: KeyRequest = parse_json(&body, "key request")?;
    let tenant = match kr.tenant {
        Some(t) => TenantId::new(t).map_err(PipelineError::from)?,
        None => principal.tenant.clone(),
    };
    let scopes = kr
        .scopes
        .iter()
        .map(|s| Grant::parse(s).map_err(key_request_error))
        .collect::<Result<BTreeSet<_>>>()?;
    let expires_at = match (kr.expires_at, kr.expires_in) {
        (Some(_), Some(_)) => {
            return Err(key_request_error("give expires_at or expires_in, not both"));
        }
        (Some(at), None) => Some(
            chrono::DateTime::parse_from_rfc3339(&at)
                .map_err(|e| key_request_error(format!("expires_at {at:?}: {e} (RFC 3339)")))?
                .with_timezone(&chrono::Utc),
        ),
        (None, Some(d)) => {
            let d: crate::config::HumanDuration = d
                .parse()
                .map_err(|e: String| key_request_error(format!("expires_in: {e}")))?;
            let d = chrono::Duration::from_std(d.0)
                .map_err(|_| key_request_error("expires_in is too long"))?;
            Some(
                chrono::Utc::now()
                    .checked_add_signed(d)
                    .ok_or_else(|| key_request_error("expires_in is too long"))?,
            )
        }
        (None, None) => None,
    };
    let spec = KeySpec {
        tenant,
        scopes,
        label: kr.label,
        expires_at,
        quota: kr.quota,
    };
    let key = state.node.create_key(&principal, spec).await?;
    Ok(HttpResponse::Created().json(key))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyListParams {
    tenant: Option<String>,
    #[serde(default)]
    all: bool,
}

/// `GET /v1/keys[?tenant=..|?all=true]`: key metadata, never secrets.
pub async fn list_keys(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse> {
    let principal = principal(&state, &req).await?;
    let params = web::Query::<KeyListParams>::from_query(req.query_string())
        .map_err(|e| ApiError::BadRequest(format!("query string: {e}")))?
        .into_inner();
    let tenant = params
        .tenant
        .map(TenantId::new)
        .transpose()
        .map_err(PipelineError::from)?;
    let keys = state.node.keys(&principal, tenant, params.all).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "keys": keys })))
}

/// `DELETE /v1/keys/{id}`: revokes a key; refused by this node from the answer on.
pub async fn revoke_key(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let principal = principal(&state, &req).await?;
    match state.node.revoke_key(&principal, &id).await? {
        Some(info) => Ok(HttpResponse::Ok().json(serde_json::json!({
            "revoked": true,
            "key": info,
        }))),
        None => Err(ApiError::KeyNotFound(id.into_inner())),
    }
}
