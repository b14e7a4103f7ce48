//! A blocking client of the HTTP API.
//!
//! [`Client`] creates and reads tables, sends events in batches, queries, looks up keys and
//! follows commit events. Sending is safe to retry: every batch carries an idempotency key, a
//! batch refused for now (`429 overloaded`, `503`) is sent again after the server's
//! `Retry-After`, and one whose connection broke is sent again after a backoff, with the same
//! key, so the server stores it once however often it arrives (within its idempotency window,
//! 15 minutes by default). Bodies are gzipped unless told otherwise.
//!
//! ```no_run
//! use alluvium::client::{Client, FieldType, Filter, QueryRequest, Schema, TimeUnit};
//! use serde_json::json;
//!
//! # fn main() -> Result<(), alluvium::client::ClientError> {
//! let client = Client::new("http://127.0.0.1:8080", "alv_...")?
//!     .with_timeout(std::time::Duration::from_secs(30))
//!     .with_max_retries(5);
//!
//! client.create_table(
//!     "clicks",
//!     &Schema::new()
//!         .required("id", FieldType::Int64)
//!         .required("ts", FieldType::Timestamp(TimeUnit::Millisecond))
//!         .field("user", FieldType::String)
//!         .time_column("ts"),
//! )?;
//!
//! let rows = vec![
//!     json!({"id": 1, "ts": "2026-11-25T10:00:00Z", "user": "ada"}),
//!     json!({"id": 2, "ts": "2026-11-25T10:00:01Z", "user": "bob"}),
//! ];
//! let report = client.send("clicks", &rows)?;
//! println!("{} rows in {} batches", report.rows, report.batches);
//!
//! let ada = client.query(
//!     "clicks",
//!     &QueryRequest { filter: Some(Filter::eq("user", "ada")), ..Default::default() },
//! )?;
//! assert_eq!(ada.len(), 1);
//!
//! for event in client.events(&Default::default())?.take(1) {
//!     let event = event?;
//!     println!("{} {} {} rows", event.kind, event.table, event.rows_added);
//! }
//! # Ok(())
//! # }
//! ```

mod error;
mod events;
mod query;
mod transport;
mod types;

use std::io::BufReader;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

pub use error::ClientError;
pub use events::{EventFilter, Events};
pub use query::{Explained, Filter, Op, OrderBy, QueryRequest, ScanStats, TimeRange};
pub use types::{
    BatchAck, CommitEvent, CommitKind, CreatedTable, EventFile, Evolution, Field, FieldType,
    Flushed, IngestAck, PartitionBy, Row, Schema, SendReport, TableInfo, TimeUnit,
};

pub use transport::RowIter;
use transport::{Request, agent, check_idempotency_key, check_url, count_lines, gzip, key_segment};
pub(crate) use transport::{random_id, segment};

type Result<T> = std::result::Result<T, ClientError>;

/// Longest idempotency key the server takes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;

/// Default most rows in one batch of [`Client::send`].
pub const DEFAULT_BATCH_ROWS: usize = 10_000;
/// Default size at which a batch of [`Client::send`] is closed (NDJSON bytes, before gzip).
pub const DEFAULT_BATCH_BYTES: usize = 4 << 20;
/// Bodies smaller than this are sent as they are even with gzip on.
const GZIP_MIN_BYTES: usize = 1024;

/// A batch to send: rows, or NDJSON text (one object per line) the caller already has.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// Rows, written as NDJSON.
    Rows(&'a [Value]),
    /// NDJSON bytes, sent as they are.
    Ndjson(&'a [u8]),
}

impl<'a> From<&'a [Value]> for Payload<'a> {
    fn from(rows: &'a [Value]) -> Self {
        Payload::Rows(rows)
    }
}

impl<'a> From<&'a Vec<Value>> for Payload<'a> {
    fn from(rows: &'a Vec<Value>) -> Self {
        Payload::Rows(rows)
    }
}

/// A client of one server, with one credential. Cheap to clone (clones share connections),
/// usable from several threads.
#[derive(Clone)]
pub struct Client {
    base: String,
    auth: Option<String>,
    agent: ureq::Agent,
    timeout: Duration,
    max_retries: u32,
    gzip: bool,
    batch_rows: usize,
    batch_bytes: usize,
    backoff_initial: Duration,
    backoff_max: Duration,
    max_retry_after: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credential.
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("gzip", &self.gzip)
            .field("batch_rows", &self.batch_rows)
            .field("batch_bytes", &self.batch_bytes)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the server at `url` (`http://host:port`, or `https://`, with an optional
    /// path prefix) authenticating with `key` (an API key or a JWT; empty for none).
    ///
    /// Defaults: 60 s timeout (connect, and each read or write), 8 retries, gzip on, batches
    /// of at most 10 000 rows or 4 MiB.
    pub fn new(url: &str, key: &str) -> Result<Client> {
        let base = check_url(url)?;
        let key = key.trim();
        if key.chars().any(char::is_control) {
            return Err(ClientError::InvalidInput(
                "the API key contains control characters".into(),
            ));
        }
        let timeout = Duration::from_secs(60);
        Ok(Client {
            base,
            auth: (!key.is_empty()).then(|| format!("Bearer {key}")),
            agent: agent(timeout, timeout),
            timeout,
            max_retries: 8,
            gzip: true,
            batch_rows: DEFAULT_BATCH_ROWS,
            batch_bytes: DEFAULT_BATCH_BYTES,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(60),
        })
    }

    /// How long connecting, and each read or write of a request, may take. A query that keeps
    /// streaming rows is not cut.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self.agent = agent(timeout, timeout);
        self
    }

    /// How many times a request refused for now or cut by the network is tried again (0: never).
    pub fn with_max_retries(mut self, retries: u32) -> Client {
        self.max_retries = retries;
        self
    }

    /// Whether batches are gzipped (`Content-Encoding: gzip`).
    pub fn with_gzip(mut self, gzip: bool) -> Client {
        self.gzip = gzip;
        self
    }

    /// Most rows in one batch of [`Client::send`] (at least 1).
    pub fn with_batch_rows(mut self, rows: usize) -> Client {
        self.batch_rows = rows.max(1);
        self
    }

    /// Size at which a batch of [`Client::send`] is closed, in NDJSON bytes before gzip: a
    /// batch takes rows until it reaches it (a row larger than it goes alone). Keep it well
    /// under the server's `server.body_limit` (16 MiB by default).
    pub fn with_batch_bytes(mut self, bytes: usize) -> Client {
        self.batch_bytes = bytes.max(1);
        self
    }

    /// The first wait before retrying a broken connection (doubling each time, with jitter)
    /// and the longest.
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Client {
        self.backoff_initial = initial;
        self.backoff_max = max.max(initial);
        self
    }

    /// The base URL, without a trailing slash.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Most retries of one request.
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// `PUT /v1/tables/{name}`: creates the table, or evolves it when the definition changed
    /// in a way its evolution mode allows. `schema` is a [`Schema`] or any JSON definition.
    pub fn create_table<S: Serialize + ?Sized>(
        &self,
        name: &str,
        schema: &S,
    ) -> Result<CreatedTable> {
        let path = format!("/v1/tables/{}", segment(name));
        let body = serde_json::to_vec(schema)
            .map_err(|e| ClientError::InvalidInput(format!("the definition is not JSON: {e}")))?;
        let req = Request::new("PUT", path)
            .header("Content-Type", "application/json")
            .body(&body);
        let (resp, _) = self.call(&self.agent, &req)?;
        let created = resp.status() == 201;
        let mut answer: CreatedTable = self.read_json(resp, &req.path)?;
        answer.created = created;
        Ok(answer)
    }

    /// `GET /v1/tables/{name}`.
    pub fn get_table(&self, name: &str) -> Result<TableInfo> {
        self.get_json(&format!("/v1/tables/{}", segment(name)))
    }

    /// `GET /v1/tables`: the tenant's tables.
    pub fn tables(&self) -> Result<Vec<TableInfo>> {
        let list: types::TableList = self.get_json("/v1/tables")?;
        Ok(list.tables)
    }

    /// Sends `rows` to `table` in batches (see [`Client::with_batch_rows`] and
    /// [`Client::with_batch_bytes`]), one after another, each with a fresh idempotency key and
    /// retried as described in the [module docs](self). Stops at the first batch that fails
    /// for good, with [`ClientError::Partial`] saying how much was acknowledged before.
    pub fn send(&self, table: &str, rows: &[Value]) -> Result<SendReport> {
        let start = Instant::now();
        let run = random_id();
        let mut report = SendReport::default();
        let mut body = Vec::new();
        let mut in_batch = 0usize;
        for (i, row) in rows.iter().enumerate() {
            serde_json::to_writer(&mut body, row)
                .map_err(|e| ClientError::InvalidInput(format!("row {i}: {e}")))?;
            body.push(b'\n');
            in_batch += 1;
            let last = i + 1 == rows.len();
            if in_batch >= self.batch_rows || body.len() >= self.batch_bytes || last {
                let key = format!("{run}-{}", report.batches);
                match self.send_batch_with_key(table, Payload::Ndjson(&body), &key) {
                    Ok(ack) => report.add(&ack),
                    Err(e) => {
                        return Err(ClientError::Partial {
                            acknowledged_rows: report.rows,
                            acknowledged_batches: report.batches,
                            source: Box::new(e),
                        });
                    }
                }
                body.clear();
                in_batch = 0;
            }
        }
        report.elapsed = start.elapsed();
        Ok(report)
    }

    /// Sends one batch with the caller's idempotency key: sending the same rows with the same
    /// key again (a retry, a rerun) stores nothing more and is answered with
    /// `"duplicate": true` and the first batch's sequences, within the server's window. A key
    /// reused for other rows is refused (409 `idempotency_key_reused`).
    pub fn send_batch_with_key<'a>(
        &self,
        table: &str,
        payload: impl Into<Payload<'a>>,
        key: &str,
    ) -> Result<BatchAck> {
        check_idempotency_key(key)?;
        let owned;
        let (ndjson, rows): (&[u8], u64) = match payload.into() {
            Payload::Rows(rows) => {
                let mut body = Vec::new();
                for (i, row) in rows.iter().enumerate() {
                    serde_json::to_writer(&mut body, row)
                        .map_err(|e| ClientError::InvalidInput(format!("row {i}: {e}")))?;
                    body.push(b'\n');
                }
                owned = body;
                (&owned, rows.len() as u64)
            }
            Payload::Ndjson(bytes) => (bytes, count_lines(bytes)),
        };
        let compressed;
        let mut req = Request::new("POST", format!("/v1/tables/{}/events", segment(table)))
            .header("Content-Type", "application/x-ndjson")
            .header("Idempotency-Key", key);
        let wire: &[u8] = if self.gzip && ndjson.len() >= GZIP_MIN_BYTES {
            compressed = gzip(ndjson).map_err(|e| ClientError::Io {
                url: self.base.clone(),
                source: e,
            })?;
            req = req.header("Content-Encoding", "gzip");
            &compressed
        } else {
            ndjson
        };
        let req = req.body(wire);
        let (resp, retries) = self.call(&self.agent, &req)?;
        let ack: IngestAck = self.read_json(resp, &req.path)?;
        Ok(BatchAck {
            ack,
            rows,
            body_bytes: ndjson.len() as u64,
            wire_bytes: wire.len() as u64,
            retries,
        })
    }

    /// `POST /v1/tables/{table}/query`: the rows, all read into memory (see
    /// [`Client::query_iter`] for large answers). With `explain` set, only the rows of
    /// [`Client::query_explain`]'s answer.
    pub fn query(&self, table: &str, request: &QueryRequest) -> Result<Vec<Row>> {
        if request.explain {
            return Ok(self.query_explain(table, request)?.rows);
        }
        let req = self.query_request(table, request, "application/json")?;
        let (resp, _) = self.call(&self.agent, &req)?;
        self.read_json(resp, &req.path)
    }

    /// A query with `"explain": true`: the rows with what was pruned and read.
    pub fn query_explain(&self, table: &str, request: &QueryRequest) -> Result<Explained> {
        let request = QueryRequest {
            explain: true,
            ..request.clone()
        };
        let req = self.query_request(table, &request, "application/json")?;
        let (resp, _) = self.call(&self.agent, &req)?;
        self.read_json(resp, &req.path)
    }

    /// A query whose rows are read one at a time as the server streams them (NDJSON), for
    /// answers too large to hold. `explain` is not available this way.
    pub fn query_iter(&self, table: &str, request: &QueryRequest) -> Result<RowIter> {
        if request.explain {
            return Err(ClientError::InvalidInput(
                "explain answers are one document; use query_explain".into(),
            ));
        }
        let req = self.query_request(table, request, "application/x-ndjson")?;
        let (resp, _) = self.call(&self.agent, &req)?;
        Ok(RowIter {
            url: format!("{}{}", self.base, req.path),
            reader: Box::new(BufReader::with_capacity(256 << 10, resp.into_reader())),
            line: String::new(),
            done: false,
        })
    }

    fn query_request(
        &self,
        table: &str,
        request: &QueryRequest,
        accept: &'static str,
    ) -> Result<Request<'static>> {
        let body = serde_json::to_vec(request)
            .map_err(|e| ClientError::InvalidInput(format!("query request: {e}")))?;
        Ok(
            Request::new("POST", format!("/v1/tables/{}/query", segment(table)))
                .header("Content-Type", "application/json")
                .header("Accept", accept)
                .owned_body(body),
        )
    }

    /// `GET /v1/tables/{table}/rows/{key}`: the live row of a key of an upsert table, `None`
    /// when there is none. `key` is the key's value (`42`, `"ada"`), or for a composite key
    /// an array of its values (`json!(["ada", 2])`).
    pub fn lookup(&self, table: &str, key: impl Into<Value>) -> Result<Option<Row>> {
        let path = format!(
            "/v1/tables/{}/rows/{}",
            segment(table),
            key_segment(&key.into())?
        );
        match self.get_json::<Row>(&path) {
            Ok(row) => Ok(Some(row)),
            Err(e) if e.code() == Some("row_not_found") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `DELETE /v1/tables/{table}/rows/{key}`: deletes a key of an upsert table (`key` as in
    /// [`Client::lookup`]).
    pub fn delete_row(&self, table: &str, key: impl Into<Value>) -> Result<IngestAck> {
        let path = format!(
            "/v1/tables/{}/rows/{}",
            segment(table),
            key_segment(&key.into())?
        );
        let req = Request::new("DELETE", path);
        let (resp, _) = self.call(&self.agent, &req)?;
        self.read_json(resp, &req.path)
    }

    /// `POST /v1/tables/{table}/flush` (admin): flushes the table's memtables to files.
    pub fn flush(&self, table: &str) -> Result<Flushed> {
        let req = Request::new("POST", format!("/v1/tables/{}/flush", segment(table)));
        let (resp, _) = self.call(&self.agent, &req)?;
        self.read_json(resp, &req.path)
    }

    /// `GET /v1/events`: commit events as they happen (or from `filter.after`), as an endless
    /// iterator that reconnects with `Last-Event-ID` when the stream breaks, so no event is
    /// missed or repeated. Returns once the server has registered the subscription: every
    /// commit after this call is seen.
    pub fn events(&self, filter: &EventFilter) -> Result<Events> {
        Events::open(self.clone(), filter.clone())
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
