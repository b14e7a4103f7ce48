//! The one place where errors become HTTP statuses and RFC 9457 problem documents with a stable
//! `code`.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use alluvium_actors::auth::AuthError;
use alluvium_actors::compaction::CompactionError;
use alluvium_actors::schema::error::SchemaError;
use alluvium_actors::wal::WalError;
use alluvium_pipelines::PipelineError;
use serde::Serialize;

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// From the pipeline.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// The body is larger than the limit.
    #[error("request body is larger than the {limit} byte limit")]
    BodyTooLarge {
        /// The limit.
        limit: usize,
    },
    /// The body could not be read.
    #[error("cannot read the request body: {0}")]
    BodyRead(String),
    /// The content type or encoding is not supported.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A JSON request document (not events) is malformed.
    #[error("invalid request: {0}")]
    BadRequest(String),
    /// No route.
    #[error("no such endpoint: {0}")]
    NotFound(String),
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::Pipeline(PipelineError::Auth(e))
    }
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
    code: &'a str,
}

impl ApiError {
    /// Status and stable code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use PipelineError as P;
        match self {
            ApiError::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::BodyRead(_) => (StatusCode::BAD_REQUEST, "body_unreadable"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Pipeline(p) => match p {
                P::Auth(e) => {
                    let status = if e.is_unauthenticated() {
                        StatusCode::UNAUTHORIZED
                    } else {
                        match e {
                            AuthError::Forbidden { .. } => StatusCode::FORBIDDEN,
                            AuthError::InvalidKeyRequest { .. } => StatusCode::BAD_REQUEST,
                            _ => StatusCode::INTERNAL_SERVER_ERROR,
                        }
                    };
                    (status, e.code())
                }
                P::Name(_) => (StatusCode::BAD_REQUEST, "invalid_name"),
                P::Schema(e) => {
                    let status = match e {
                        SchemaError::UnknownTable { .. } => StatusCode::NOT_FOUND,
                        SchemaError::TableExists { .. } | SchemaError::SchemaChange { .. } => {
                            StatusCode::CONFLICT
                        }
                        SchemaError::TooManyRows { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                        SchemaError::Catalog(_) => StatusCode::SERVICE_UNAVAILABLE,
                        e if e.is_client_error() => StatusCode::BAD_REQUEST,
                        _ => StatusCode::INTERNAL_SERVER_ERROR,
                    };
                    (status, e.code())
                }
                P::Wal(e) => match e {
                    WalError::RecordTooLarge { .. } => {
                        (StatusCode::PAYLOAD_TOO_LARGE, "batch_too_large")
                    }
                    WalError::Poisoned { .. } => (StatusCode::SERVICE_UNAVAILABLE, "wal_poisoned"),
                    _ => (StatusCode::SERVICE_UNAVAILABLE, "wal_unavailable"),
                },
                P::Flush(_) => (StatusCode::SERVICE_UNAVAILABLE, "flush_failed"),
                P::Compaction(e) => match e {
                    CompactionError::Busy(_) => (StatusCode::CONFLICT, "compaction_running"),
                    CompactionError::TableNotFound(_) => (StatusCode::NOT_FOUND, "table_not_found"),
                    _ => (StatusCode::SERVICE_UNAVAILABLE, "compaction_failed"),
                },
                P::VersionUnavailable(_) => (StatusCode::GONE, "version_unavailable"),
                P::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage_error"),
                P::Overloaded { .. } => (StatusCode::TOO_MANY_REQUESTS, "overloaded"),
                P::UnknownColumn(_) => (StatusCode::BAD_REQUEST, "unknown_column"),
                P::InvalidFilter(_) => (StatusCode::BAD_REQUEST, "invalid_filter"),
                P::InvalidQuery(_) => (StatusCode::BAD_REQUEST, "invalid_query"),
                P::InvalidKey(_) => (StatusCode::BAD_REQUEST, "invalid_key"),
                P::RowNotFound(_) => (StatusCode::NOT_FOUND, "row_not_found"),
                P::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            },
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Pipeline(PipelineError::Overloaded { retry_after, .. }) => Some(*retry_after),
            ApiError::Pipeline(PipelineError::Unavailable(_)) => Some(Duration::from_secs(1)),
            _ => None,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status_and_code().0
    }

    fn error_response(&self) -> HttpResponse {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::error!(code, error = %self, "request failed");
        }
        let problem = Problem {
            kind: format!("urn:alluvium:problem:{code}"),
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: self.to_string(),
            code,
        };
        let mut res = HttpResponse::build(status);
        res.content_type("application/problem+json");
        if let Some(after) = self.retry_after() {
            res.insert_header((header::RETRY_AFTER, after.as_secs().max(1).to_string()));
        }
        if status == StatusCode::UNAUTHORIZED {
            res.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        res.body(serde_json::to_vec(&problem).unwrap_or_default())
    }
}
