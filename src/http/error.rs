//! The one place where errors become HTTP statuses and RFC 9457 problem documents with a stable
//! `code`.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use alluvium_actors::auth::AuthError;
use alluvium_pipelines::PipelineError;
use alluvium_pipelines::error::Problem;

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
    /// The body did not arrive within the read deadline.
    #[error("the request body did not arrive within {} s", .0.as_secs_f64())]
    BodyTimeout(Duration),
    /// A compressed body expands more than the ratio allowed.
    #[error(
        "the {compressed} byte compressed body expands more than {max_ratio} times (server.max_compression_ratio)"
    )]
    CompressionRatio {
        /// Its compressed size.
        compressed: usize,
        /// The ceiling.
        max_ratio: usize,
    },
    /// The body could not be read.
    #[error("cannot read the request body: {0}")]
    BodyRead(String),
    /// The content type or encoding is not supported.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The `Idempotency-Key` header cannot be used (not printable ASCII, too long, empty).
    #[error("invalid Idempotency-Key: {0}")]
    InvalidIdempotencyKey(String),
    /// A JSON request document (not events) is malformed.
    #[error("invalid request: {0}")]
    BadRequest(String),
    /// An inbound webhook delivery was refused (signature, timestamp, body mapping).
    #[error(transparent)]
    Hook(#[from] alluvium_pipelines::sources::webhook::HookError),
    /// No API key with this id (or none the caller may see).
    #[error("no API key with id {0:?}")]
    KeyNotFound(String),
    /// No route.
    #[error("no such endpoint: {0}")]
    NotFound(String),
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::Pipeline(PipelineError::Auth(e))
    }
}

impl ApiError {
    /// Status and stable code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::BodyRead(_) => (StatusCode::BAD_REQUEST, "body_unreadable"),
            ApiError::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            ApiError::CompressionRatio { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "compression_ratio_exceeded")
            }
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::InvalidIdempotencyKey(_) => {
                (StatusCode::BAD_REQUEST, "invalid_idempotency_key")
            }
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::KeyNotFound(_) => (StatusCode::NOT_FOUND, "key_not_found"),
            ApiError::Hook(h) => {
                let (status, code) = h.status_and_code();
                (
                    StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                    code,
                )
            }
            ApiError::Pipeline(p) => {
                let (status, code) = p.status_and_code();
                (
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    code,
                )
            }
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Pipeline(p) => p.retry_after(),
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
        let problem = Problem::new(status.as_u16(), code, self.to_string());
        let mut res = HttpResponse::build(status);
        res.content_type("application/problem+json");
        if let Some(after) = self.retry_after() {
            // Rounded up: a client that waits what it is told is not refused again for it.
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            res.insert_header((header::RETRY_AFTER, secs.max(1).to_string()));
        }
        if status == StatusCode::UNAUTHORIZED {
            res.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        res.body(serde_json::to_vec(&problem).unwrap_or_default())
    }
}
