//! The one error type of the client.

use std::time::Duration;

/// Why a client call failed.
///
/// A refusal by the server is [`ClientError::Server`], with the stable `code` of its
/// problem+json answer (`type_mismatch`, `table_not_found`, `overloaded`, ...), the HTTP status
/// and the server's words. Everything else is about reaching the server or reading its answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The base URL cannot be used.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An argument was refused before anything was sent (an empty idempotency key, a key with
    /// control characters, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The server answered with an error status.
    #[error("{detail} ({status} {code})")]
    Server {
        /// The HTTP status.
        status: u16,
        /// The stable code of the problem document (`http_{status}` when the answer was not
        /// one, e.g. from a proxy).
        code: String,
        /// What went wrong, in the server's words.
        detail: String,
        /// The server's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// The server could not be reached, or the connection broke before an answer.
    #[error("cannot reach {url}")]
    Transport {
        /// The URL of the request.
        url: String,
        /// The cause.
        #[source]
        source: Box<ureq::Transport>,
    },
    /// The answer could not be read to its end.
    #[error("cannot read the answer of {url}")]
    Io {
        /// The URL of the request.
        url: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The answer is not the JSON this client expects.
    #[error("unexpected answer from {url}")]
    Decode {
        /// The URL of the request.
        url: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// [`Client::send`](super::Client::send) stopped on a batch that failed: the batches before
    /// it were acknowledged (and are stored), the rest were not sent.
    #[error(
        "sending stopped after {acknowledged_rows} rows in {acknowledged_batches} batches were acknowledged"
    )]
    Partial {
        /// Rows of the acknowledged batches.
        acknowledged_rows: u64,
        /// Batches acknowledged before the failure.
        acknowledged_batches: u64,
        /// Why the next batch failed.
        #[source]
        source: Box<ClientError>,
    },
}

impl ClientError {
    /// The HTTP status of a server refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Server { status, .. } => Some(*status),
            ClientError::Partial { source, .. } => source.status(),
            _ => None,
        }
    }

    /// The stable problem code of a server refusal (`type_mismatch`, `overloaded`, ...).
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Server { code, .. } => Some(code),
            ClientError::Partial { source, .. } => source.code(),
            _ => None,
        }
    }

    /// The server's explanation of a refusal.
    pub fn detail(&self) -> Option<&str> {
        match self {
            ClientError::Server { detail, .. } => Some(detail),
            ClientError::Partial { source, .. } => source.detail(),
            _ => None,
        }
    }

    /// Whether trying again later may succeed: overload, unavailability, broken connections.
    /// The client already retried these up to its limit before returning them.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Server { status, .. } => retryable_status(*status),
            ClientError::Transport { source, .. } => retryable_transport(source),
            ClientError::Io { .. } => true,
            ClientError::Partial { source, .. } => source.is_transient(),
            _ => false,
        }
    }
}

/// Statuses worth retrying: the server (or a proxy in front of it) refused for now, not for
/// good, and stored nothing.
pub(crate) fn retryable_status(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// Transport failures worth retrying: the server may come back (a restart, a dropped
/// connection); a malformed URL or an unknown scheme will not get better.
pub(crate) fn retryable_transport(t: &ureq::Transport) -> bool {
    matches!(
        t.kind(),
        ureq::ErrorKind::Dns | ureq::ErrorKind::ConnectionFailed | ureq::ErrorKind::Io
    )
}
