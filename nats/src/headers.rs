//! Header names alluvium reads and writes on NATS messages, and the helpers that read them.

/// The credential of an ingest message: `Bearer <jwt or api key>`, or the bare key.
pub const AUTHORIZATION: &str = "Authorization";
/// A producer's idempotency key: a retry with the same key is stored once.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
/// NATS's own message id header; alluvium treats it as an idempotency key, and sets it on the
/// events it publishes so JetStream drops duplicates.
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";
/// `application/json` or `application/x-ndjson`; without it the format is detected.
pub const CONTENT_TYPE: &str = "Content-Type";
/// `wal` (the default) or `received`: the durability the producer waits for.
pub const DURABILITY: &str = "Alluvium-Durability";
/// On replies: the HTTP status the same request would have got (`200`, `400`, ...).
pub const STATUS: &str = "Alluvium-Status";
/// On replies of 429 and 503: seconds to wait before retrying.
pub const RETRY_AFTER: &str = "Retry-After";
/// On replies with an error: its stable code.
pub const CODE: &str = "Alluvium-Code";
/// On a batch sent again by `alluvium rejects replay`: the reject's stream sequence. A replayed
/// batch that fails again is not published as a new reject.
pub const REPLAY: &str = "Alluvium-Replay";
/// On commit events: the lake's id.
pub const LAKE_ID: &str = "Alluvium-Lake";
/// On commit events: the event's id, `{catalog_version}:{index}`.
pub const EVENT_ID: &str = "Alluvium-Event-Id";

/// Longest idempotency key accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// No credential header.
    #[error("no credential: set the Authorization header to `Bearer <token or api key>`")]
    MissingCredential,
    /// An idempotency key that is empty, too long or holds control characters.
    #[error(
        "invalid idempotency key: it must be 1 to 256 bytes of printable characters (got {len} bytes)"
    )]
    InvalidIdempotencyKey {
        /// Its length in bytes.
        len: usize,
    },
    /// A header value alluvium does not understand.
    #[error("invalid {header} header {value:?}: {expected}")]
    Invalid {
        /// The header.
        header: &'static str,
        /// Its value, truncated.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
}

/// The token in an `Authorization` value: what follows `Bearer ` (any case), or the whole value
/// when it has no scheme (a bare API key).
pub fn credential(value: &str) -> Result<&str, HeaderError> {
    let v = value.trim();
    if v.eq_ignore_ascii_case("bearer") {
        return Err(HeaderError::MissingCredential);
    }
    let token = match v.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        Some(_) => return Err(HeaderError::MissingCredential),
        None => v,
    };
    if token.is_empty() {
        return Err(HeaderError::MissingCredential);
    }
    Ok(token)
}

/// Checks an idempotency key: 1 to [`MAX_IDEMPOTENCY_KEY_LEN`] bytes, no control characters.
pub fn idempotency_key(value: &str) -> Result<&str, HeaderError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_IDEMPOTENCY_KEY_LEN
        && !value.chars().any(char::is_control);
    if ok {
        Ok(value)
    } else {
        Err(HeaderError::InvalidIdempotencyKey { len: value.len() })
    }
}

/// A header value safe to send: control characters (which would end the header) become spaces,
/// and the value is cut to 1024 bytes on a character boundary.
pub fn sanitize(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(1024));
    for c in value.chars() {
        if out.len() + c.len_utf8() > 1024 {
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn credentials() {
        assert_eq!(credential("Bearer abc").unwrap(), "abc");
        assert_eq!(credential("bearer  abc ").unwrap(), "abc");
        assert_eq!(credential("alv_key").unwrap(), "alv_key");
        assert_eq!(credential(""), Err(HeaderError::MissingCredential));
        assert_eq!(credential("Bearer "), Err(HeaderError::MissingCredential));
        assert_eq!(credential("Basic abc"), Err(HeaderError::MissingCredential));
    }

    #[test]
    fn idempotency_keys() {
        assert!(idempotency_key("order-17").is_ok());
        assert!(idempotency_key("").is_err());
        assert!(idempotency_key("a\nb").is_err());
        assert!(idempotency_key(&"k".repeat(257)).is_err());
        assert!(idempotency_key(&"k".repeat(256)).is_ok());
    }

    #[test]
    fn sanitizes() {
        assert_eq!(sanitize("a\r\nb"), "a  b");
        assert_eq!(sanitize(&"é".repeat(600)).len(), 1024);
    }
}
