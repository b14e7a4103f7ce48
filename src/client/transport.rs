//! The transport under [`Client`]: requests, retries after `Retry-After` and backoff, and the
//! helpers that build and read them.

use std::io::{BufRead, Read as _, Write as _};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::{retryable_status, retryable_transport};
use super::types::Problem;
use super::{Client, ClientError, MAX_IDEMPOTENCY_KEY_LEN, Result, Row};

/// The most of an error answer read for its problem document.
const MAX_ERROR_BODY: u64 = 64 << 10;

impl Client {
    pub(super) fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let req = Request::new("GET", path.to_string());
        let (resp, _) = self.call(&self.agent, &req)?;
        self.read_json(resp, &req.path)
    }

    pub(super) fn read_json<T: DeserializeOwned>(
        &self,
        resp: ureq::Response,
        path: &str,
    ) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let mut body = Vec::new();
        resp.into_reader()
            .read_to_end(&mut body)
            .map_err(|source| ClientError::Io {
                url: url.clone(),
                source,
            })?;
        serde_json::from_slice(&body).map_err(|source| ClientError::Decode { url, source })
    }

    /// Sends a request, retrying what may succeed later; the answer and the retries it took.
    pub(super) fn call(
        &self,
        agent: &ureq::Agent,
        req: &Request<'_>,
    ) -> Result<(ureq::Response, u32)> {
        let url = format!("{}{}", self.base, req.path);
        let mut attempt = 0u32;
        loop {
            let mut r = agent.request(req.method, &url);
            for (k, v) in &req.query {
                r = r.query(k, v);
            }
            if let Some(a) = &self.auth {
                r = r.set("Authorization", a);
            }
            for (k, v) in &req.headers {
                r = r.set(k, v);
            }
            let res = match req.body_bytes() {
                Some(b) => r.send_bytes(b),
                None => r.call(),
            };
            let wait = match res {
                Ok(resp) => return Ok((resp, attempt)),
                Err(ureq::Error::Status(status, resp)) => {
                    let err = server_error(status, resp);
                    if attempt >= self.max_retries || !retryable_status(status) {
                        return Err(err);
                    }
                    match &err {
                        ClientError::Server {
                            retry_after: Some(after),
                            ..
                        } => (*after).min(self.max_retry_after),
                        _ => self.backoff(attempt),
                    }
                }
                Err(ureq::Error::Transport(t)) => {
                    if attempt >= self.max_retries || !retryable_transport(&t) {
                        return Err(ClientError::Transport {
                            url,
                            source: Box::new(t),
                        });
                    }
                    self.backoff(attempt)
                }
            };
            std::thread::sleep(wait);
            attempt += 1;
        }
    }

    /// The wait before retry `attempt + 1`: doubling from the initial backoff, at most the
    /// maximum, less up to half at random so that many clients do not retry in step.
    pub(super) fn backoff(&self, attempt: u32) -> Duration {
        let full = self
            .backoff_initial
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.backoff_max);
        full.mul_f64(1.0 - rand::random::<f64>() / 2.0)
    }

    pub(crate) fn stream_agent(&self) -> ureq::Agent {
        // The server writes a keep-alive comment every 15 s: a longer silence means the
        // connection is dead, and the stream reconnects.
        agent(
            self.timeout.min(Duration::from_secs(10)),
            Duration::from_secs(45),
        )
    }

    pub(crate) fn call_stream(
        &self,
        agent: &ureq::Agent,
        req: &Request<'_>,
    ) -> Result<ureq::Response> {
        self.call(agent, req).map(|(r, _)| r)
    }

    pub(crate) fn retry_wait(&self, attempt: u32) -> Duration {
        self.backoff(attempt)
    }
}

/// Rows of [`Client::query_iter`], one per NDJSON line of the answer.
pub struct RowIter {
    pub(super) url: String,
    pub(super) reader: Box<dyn BufRead + Send>,
    pub(super) line: String,
    pub(super) done: bool,
}

impl std::fmt::Debug for RowIter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowIter")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Iterator for RowIter {
    type Item = Result<Row>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            self.line.clear();
            match self.reader.read_line(&mut self.line) {
                Ok(0) => self.done = true,
                Ok(_) if self.line.trim().is_empty() => {}
                Ok(_) => {
                    return Some(serde_json::from_str(&self.line).map_err(|source| {
                        ClientError::Decode {
                            url: self.url.clone(),
                            source,
                        }
                    }));
                }
                Err(source) => {
                    self.done = true;
                    return Some(Err(ClientError::Io {
                        url: self.url.clone(),
                        source,
                    }));
                }
            }
        }
        None
    }
}

/// A request: method, path below the base URL, query, headers, body.
pub(crate) struct Request<'a> {
    pub(super) method: &'static str,
    pub(super) path: String,
    pub(super) query: Vec<(&'static str, String)>,
    pub(super) headers: Vec<(&'static str, String)>,
    pub(super) body: Option<std::borrow::Cow<'a, [u8]>>,
}

impl<'a> Request<'a> {
    pub(crate) fn new(method: &'static str, path: String) -> Request<'a> {
        Request {
            method,
            path,
            query: Vec::new(),
            headers: Vec::new(),
            body: None,
        }
    }

    pub(crate) fn header(mut self, name: &'static str, value: impl Into<String>) -> Request<'a> {
        self.headers.push((name, value.into()));
        self
    }

    pub(crate) fn query(mut self, name: &'static str, value: impl Into<String>) -> Request<'a> {
        self.query.push((name, value.into()));
        self
    }

    pub(super) fn body(mut self, body: &'a [u8]) -> Request<'a> {
        self.body = Some(std::borrow::Cow::Borrowed(body));
        self
    }

    pub(super) fn owned_body(mut self, body: Vec<u8>) -> Request<'a> {
        self.body = Some(std::borrow::Cow::Owned(body));
        self
    }

    pub(super) fn body_bytes(&self) -> Option<&[u8]> {
        self.body.as_deref()
    }
}

pub(super) fn agent(connect: Duration, io: Duration) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(connect)
        .timeout_read(io)
        .timeout_write(io)
        .max_idle_connections_per_host(64)
        .user_agent(concat!("alluvium-client/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// The base URL without its trailing slash, if it is one this client can use.
pub(super) fn check_url(url: &str) -> Result<String> {
    let bad = |reason: &str| ClientError::InvalidUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let trimmed = url.trim().trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"))
        .ok_or_else(|| bad("expected http://host:port or https://host"))?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if trimmed.contains(['?', '#']) || trimmed.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(bad("a base URL has no query, fragment or spaces"));
    }
    Ok(trimmed.to_string())
}

pub(super) fn check_idempotency_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN || key.chars().any(char::is_control) {
        return Err(ClientError::InvalidInput(format!(
            "an idempotency key has 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes and no control characters"
        )));
    }
    if !key.is_ascii() {
        return Err(ClientError::InvalidInput(
            "an idempotency key is sent as a header: use ASCII".into(),
        ));
    }
    Ok(())
}

/// The error of a non-2xx answer, from its problem document when it has one.
pub(super) fn server_error(status: u16, resp: ureq::Response) -> ClientError {
    let retry_after = resp
        .header("Retry-After")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let mut body = Vec::new();
    let _ = resp
        .into_reader()
        .take(MAX_ERROR_BODY)
        .read_to_end(&mut body);
    let (code, detail) = match serde_json::from_slice::<Problem>(&body) {
        Ok(p) if !p.code.is_empty() => {
            let detail = if p.detail.is_empty() {
                p.title
            } else {
                p.detail
            };
            (p.code, detail)
        }
        _ => {
            let text = String::from_utf8_lossy(&body);
            let text: String = text.trim().chars().take(512).collect();
            (format!("http_{status}"), text)
        }
    };
    ClientError::Server {
        status,
        code,
        detail,
        retry_after,
    }
}

pub(super) fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4),
        flate2::Compression::fast(),
    );
    enc.write_all(data)?;
    enc.finish()
}

/// Non-blank lines of an NDJSON body.
pub(super) fn count_lines(body: &[u8]) -> u64 {
    body.split(|&b| b == b'\n')
        .filter(|l| l.iter().any(|b| !b.is_ascii_whitespace()))
        .count() as u64
}

/// A path segment, percent-encoded.
pub(crate) fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A key as the rows endpoints take it: a single value as its text, a composite key as a JSON
/// array.
pub(super) fn key_segment(key: &Value) -> Result<String> {
    let text = match key {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(_) => key.to_string(),
        Value::Null | Value::Object(_) => {
            return Err(ClientError::InvalidInput(
                "a key is a value, or an array of values for a composite key".into(),
            ));
        }
    };
    if text.is_empty() {
        return Err(ClientError::InvalidInput("empty key".into()));
    }
    Ok(segment(&text))
}

/// 16 random hex digits.
pub(crate) fn random_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}
