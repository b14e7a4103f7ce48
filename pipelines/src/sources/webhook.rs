//! Inbound webhooks: deliveries that their sender signs with a shared secret instead of sending
//! a credential (GitHub, Stripe, Slack, Shopify, or any sender of an HMAC-SHA256 header).
//!
//! Each source ([`HookConfig`], `[[sources.webhook]]` in the configuration) has a name, which is
//! its route (`POST /v1/hooks/{name}`), a target table of one tenant, a scheme, and one or two
//! secrets (two while a secret is rotated: a delivery signed with either is accepted).
//! [`Hook::receive`] checks a delivery and maps it into rows:
//!
//! 1. The signature is recomputed over the exact bytes received and compared in constant time
//!    (`Mac::verify_slice`). A missing or malformed signature and a wrong one are answered
//!    alike, [`HookError::InvalidSignature`].
//! 2. Schemes that sign a timestamp (Stripe, Slack, `hmac` with `timestamp_header`) refuse a
//!    signed timestamp further than `tolerance` from the server's clock, in either direction
//!    ([`HookError::StaleTimestamp`]): a captured delivery cannot be replayed later.
//! 3. Every delivery gets an idempotency key from signed bytes only, so a replay cannot dodge
//!    it: the event id inside the signed body where the scheme has one (Stripe's `id`, Slack's
//!    `event_id`), else the SHA-256 of the signed body (GitHub, Shopify, `hmac`: their delivery
//!    id headers, such as `X-GitHub-Delivery`, are not signed, and a replay could change them).
//!    The key's body hash is also taken over the signed body, so headers mapped into columns
//!    cannot make a redelivery look different. A redelivery or replay within the ingest
//!    idempotency window is answered as a duplicate and stored once.
//! 4. Protocol messages are answered, not stored: GitHub's `ping` event and Slack's
//!    `url_verification` challenge.
//! 5. The row: by default the body's JSON object itself (or each object of a JSON array);
//!    with `body_column` and/or `fields`, a row holding the raw body as text and/or values
//!    picked from the body by JSON pointer; `headers` adds chosen request headers as text
//!    columns. The table's schema then validates the row as for any other source.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use alluvium_actors::auth::{Grant, Principal, Scope};
use alluvium_actors::ids::{TableName, TenantId};
use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::Sha256;

/// The shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// Most secrets of one source: the current one and, while rotating, the next.
pub const MAX_SECRETS: usize = 2;

/// Default limit on a delivery's body: anyone can send one before its signature is checked.
pub const DEFAULT_MAX_BODY: usize = 5 << 20;

/// Default tolerance on a signed timestamp (Stripe's and Slack's own recommendation).
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// How a sender signs its deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// `X-Hub-Signature-256: sha256=<hex HMAC(secret, body)>`; the `ping` event is answered
    /// and not stored.
    Github,
    /// `Stripe-Signature: t=<unix>,v1=<hex HMAC(secret, "<t>.<body>")>[,v1=...]`; the event's
    /// `id` is the idempotency key.
    Stripe,
    /// `X-Slack-Request-Timestamp: <unix>` and `X-Slack-Signature: v0=<hex HMAC(secret,
    /// "v0:<ts>:<body>")>`; the event's `event_id` is the idempotency key; `url_verification` answered
    /// with its challenge.
    Slack,
    /// `X-Shopify-Hmac-Sha256: <base64 HMAC(secret, body)>`.
    Shopify,
    /// A configurable header: `<prefix><hex or base64 HMAC(secret, body)>`, or with
    /// `timestamp_header` HMAC(secret, `"<ts>.<body>"`).
    Hmac,
}

impl Scheme {
    /// Its name in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Github => "github",
            Scheme::Stripe => "stripe",
            Scheme::Slack => "slack",
            Scheme::Shopify => "shopify",
            Scheme::Hmac => "hmac",
        }
    }
}

/// How the `hmac` scheme writes the MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureEncoding {
    /// Hexadecimal, either case.
    #[default]
    Hex,
    /// Standard base64 with padding.
    Base64,
}

/// One inbound webhook source, as configured (checked by [`Hook::new`]).
#[derive(Clone)]
pub struct HookConfig {
    /// Its route `POST /v1/hooks/{name}`: `[a-z0-9_-]{1,64}`, unique.
    pub name: String,
    /// The tenant owning the table.
    pub tenant: String,
    /// The table rows land in.
    pub table: String,
    /// How deliveries are signed.
    pub scheme: Scheme,
    /// One or two secrets, each at least [`MIN_SECRET_LEN`] bytes.
    pub secrets: Vec<String>,
    /// Largest distance between a signed timestamp and the server's clock.
    pub tolerance: Duration,
    /// Largest body, in bytes (the server's body limit applies too).
    pub max_body: usize,
    /// `hmac` only: the signature header. Default `X-Signature`.
    pub signature_header: Option<String>,
    /// `hmac` only: text before the MAC in the header (such as `sha256=`). Default none.
    pub signature_prefix: Option<String>,
    /// `hmac` only: how the MAC is written. Default hex.
    pub encoding: SignatureEncoding,
    /// `hmac` only: a header carrying the unix time signed with the body (`"<ts>.<body>"`).
    pub timestamp_header: Option<String>,
    /// A column receiving the raw body as text.
    pub body_column: Option<String>,
    /// Columns filled from the body by JSON pointer (`/repository/full_name`).
    pub fields: BTreeMap<String, String>,
    /// Columns filled with request headers (as text; absent headers leave the column null).
    pub headers: BTreeMap<String, String>,
}

/// Secrets stay out of logs.
impl fmt::Debug for HookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookConfig")
            .field("name", &self.name)
            .field("tenant", &self.tenant)
            .field("table", &self.table)
            .field("scheme", &self.scheme)
            .field("secrets", &format!("<{} redacted>", self.secrets.len()))
            .field("tolerance", &self.tolerance)
            .field("max_body", &self.max_body)
            .field("signature_header", &self.signature_header)
            .field("signature_prefix", &self.signature_prefix)
            .field("encoding", &self.encoding)
            .field("timestamp_header", &self.timestamp_header)
            .field("body_column", &self.body_column)
            .field("fields", &self.fields)
            .field("headers", &self.headers)
            .finish()
    }
}

/// Why a delivery was refused. Nothing is stored for any of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// The signature is missing, malformed, or made with another secret or over other bytes.
    #[error("invalid webhook signature: {0}")]
    InvalidSignature(String),
    /// The signed timestamp is outside the tolerance window.
    #[error(
        "webhook timestamp {timestamp} is {distance_secs} s from the server's clock, more than the {tolerance_secs} s tolerated"
    )]
    StaleTimestamp {
        /// The signed unix time.
        timestamp: u64,
        /// Its distance from now, in seconds.
        distance_secs: u64,
        /// The tolerance, in seconds.
        tolerance_secs: u64,
    },
    /// The (correctly signed) body cannot be mapped into rows.
    #[error("webhook body cannot be mapped into rows: {0}")]
    Body(String),
}

impl HookError {
    /// HTTP status and stable code.
    pub fn status_and_code(&self) -> (u16, &'static str) {
        match self {
            HookError::InvalidSignature(_) => (401, "invalid_signature"),
            HookError::StaleTimestamp { .. } => (401, "stale_timestamp"),
            HookError::Body(_) => (400, "invalid_webhook_body"),
        }
    }
}

/// What a verified delivery asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// Rows to ingest into the source's table.
    Rows {
        /// A JSON array of row objects.
        body: Bytes,
        /// Number of rows.
        rows: usize,
        /// `hook:{name}:{event id}`, or `hook:{name}:sha256:{hex}` of the signed body.
        idempotency_key: String,
    },
    /// A protocol message (GitHub `ping`, Slack `url_verification`): answer 200 with this
    /// document and store nothing.
    Answer(Value),
}

/// Request headers, looked up by case-insensitive name.
pub trait HeaderLookup {
    /// The value of `name`, if present and text.
    fn header(&self, name: &str) -> Option<&str>;
}

impl HeaderLookup for [(&str, &str)] {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

/// A checked source, ready to receive deliveries.
pub struct Hook {
    config: HookConfig,
    principal: Principal,
}

impl fmt::Debug for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.config, f)
    }
}

impl Hook {
    /// Checks `config`: the name, tenant and table; one or two secrets of at least
    /// [`MIN_SECRET_LEN`] bytes; `hmac`-only settings only with `hmac`; distinct column names;
    /// JSON pointers starting with `/`; header names that are valid.
    pub fn new(config: HookConfig) -> Result<Hook, String> {
        let name = &config.name;
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(format!(
                "webhook source name {name:?} must be 1 to 64 of a-z, 0-9, '_' and '-'"
            ));
        }
        let tenant = TenantId::new(config.tenant.clone())
            .map_err(|e| format!("webhook source {name:?}: tenant: {e}"))?;
        let table = TableName::new(config.table.clone())
            .map_err(|e| format!("webhook source {name:?}: table: {e}"))?;
        if config.secrets.is_empty() || config.secrets.len() > MAX_SECRETS {
            return Err(format!(
                "webhook source {name:?} needs one or two secrets (two while rotating), not {}",
                config.secrets.len()
            ));
        }
        if let Some(short) = config.secrets.iter().find(|s| s.len() < MIN_SECRET_LEN) {
            return Err(format!(
                "webhook source {name:?}: a secret of {} bytes is too short; use at least {MIN_SECRET_LEN}",
                short.len()
            ));
        }
        if config.tolerance.is_zero() {
            return Err(format!(
                "webhook source {name:?}: tolerance must be more than 0"
            ));
        }
        if config.scheme != Scheme::Hmac {
            let hmac_only = [
                ("signature_header", config.signature_header.is_some()),
                ("signature_prefix", config.signature_prefix.is_some()),
                ("encoding", config.encoding != SignatureEncoding::default()),
                ("timestamp_header", config.timestamp_header.is_some()),
            ];
            if let Some((setting, _)) = hmac_only.iter().find(|(_, set)| *set) {
                return Err(format!(
                    "webhook source {name:?}: {setting} applies to scheme \"hmac\" only; scheme {:?} fixes its own headers",
                    config.scheme.as_str()
                ));
            }
        }
        for header in [&config.signature_header, &config.timestamp_header]
            .into_iter()
            .flatten()
            .chain(config.headers.values())
        {
            if header.is_empty()
                || !header
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
            {
                return Err(format!(
                    "webhook source {name:?}: {header:?} is not a header name"
                ));
            }
        }
        let mut columns = BTreeSet::new();
        for column in config
            .body_column
            .iter()
            .chain(config.fields.keys())
            .chain(config.headers.keys())
        {
            if column.is_empty() {
                return Err(format!("webhook source {name:?}: a column name is empty"));
            }
            if !columns.insert(column.as_str()) {
                return Err(format!(
                    "webhook source {name:?}: column {column:?} is mapped twice"
                ));
            }
        }
        if let Some((column, pointer)) = config.fields.iter().find(|(_, p)| !p.starts_with('/')) {
            return Err(format!(
                "webhook source {name:?}: field {column:?}: {pointer:?} is not a JSON pointer (it starts with '/')"
            ));
        }
        // Least privilege: ingest into its own table, nothing else.
        let principal = Principal::new(
            tenant,
            [Grant::on(Scope::Ingest, table)],
            format!("hook:{name}"),
        );
        Ok(Hook { config, principal })
    }

    /// Its name (and route segment).
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Its table, a name within its tenant.
    pub fn table(&self) -> &str {
        &self.config.table
    }

    /// The principal its deliveries are ingested as: its tenant, `ingest` on its table only.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// Its configuration.
    pub fn config(&self) -> &HookConfig {
        &self.config
    }

    /// Checks a delivery received at unix time `now` and maps it into rows (see the module
    /// documentation for the steps).
    pub fn receive(
        &self,
        headers: &(impl HeaderLookup + ?Sized),
        body: &[u8],
        now: u64,
    ) -> Result<Delivery, HookError> {
        let signed_at = self.verify(headers, body)?;
        if let Some(ts) = signed_at {
            let distance = now.abs_diff(ts);
            let tolerance = self.config.tolerance.as_secs();
            if distance > tolerance {
                return Err(HookError::StaleTimestamp {
                    timestamp: ts,
                    distance_secs: distance,
                    tolerance_secs: tolerance,
                });
            }
        }
        // Only the default mapping and `fields` need the body to be JSON; the schemes' own
        // metadata is read from it when it is.
        let needs_json = self.config.body_column.is_none() || !self.config.fields.is_empty();
        let json = match serde_json::from_slice::<Value>(body) {
            Ok(v) => Some(v),
            Err(e) if needs_json => {
                return Err(HookError::Body(format!("the body is not JSON: {e}")));
            }
            Err(_) => None,
        };
        if let Some(answer) = self.protocol_answer(headers, json.as_ref()) {
            return Ok(Delivery::Answer(answer));
        }
        let event_id = self.event_id(json.as_ref());
        let mut rows = self.rows(body, json)?;
        for row in &mut rows {
            for (column, header) in &self.config.headers {
                if let Some(v) = headers.header(header) {
                    row.insert(column.clone(), Value::String(v.to_string()));
                }
            }
        }
        let id = event_id.unwrap_or_else(|| format!("sha256:{}", sha256_hex(body)));
        let count = rows.len();
        let body = serde_json::to_vec(&rows).map_err(|e| HookError::Body(e.to_string()))?;
        let idempotency_key =
            alluvium_nats::headers::idempotency_key(&format!("hook:{}:{id}", self.name()))
                .map_err(|e| HookError::Body(format!("event id {id:?}: {e}")))?
                .to_string();
        Ok(Delivery::Rows {
            body: Bytes::from(body),
            rows: count,
            idempotency_key,
        })
    }

    /// Checks the signature; returns the signed timestamp of schemes that sign one.
    fn verify(
        &self,
        headers: &(impl HeaderLookup + ?Sized),
        body: &[u8],
    ) -> Result<Option<u64>, HookError> {
        let header = |name: &str| {
            headers
                .header(name)
                .ok_or_else(|| HookError::InvalidSignature(format!("no {name} header")))
        };
        match self.config.scheme {
            Scheme::Github => {
                let sig = header("X-Hub-Signature-256")?;
                let mac = hex_mac(strip(sig, "sha256=")?)?;
                self.check(&[body], &[mac])?;
                Ok(None)
            }
            Scheme::Shopify => {
                let mac = base64_mac(header("X-Shopify-Hmac-Sha256")?)?;
                self.check(&[body], &[mac])?;
                Ok(None)
            }
            Scheme::Slack => {
                let ts = header("X-Slack-Request-Timestamp")?;
                let at = unix_time(ts)?;
                let mac = hex_mac(strip(header("X-Slack-Signature")?, "v0=")?)?;
                self.check(&[b"v0:", ts.as_bytes(), b":", body], &[mac])?;
                Ok(Some(at))
            }
            Scheme::Stripe => {
                let value = header("Stripe-Signature")?;
                let mut ts = None;
                let mut macs = Vec::new();
                for part in value.split(',') {
                    match part.trim().split_once('=') {
                        Some(("t", t)) if ts.is_none() => ts = Some(t),
                        // Stripe lists one `v1` per active secret; `v0` and others are not
                        // HMAC-SHA256 of this secret and are ignored.
                        Some(("v1", v)) => macs.push(hex_mac(v)?),
                        _ => {}
                    }
                }
                let ts = ts.ok_or_else(|| {
                    HookError::InvalidSignature("Stripe-Signature has no t= timestamp".into())
                })?;
                let at = unix_time(ts)?;
                if macs.is_empty() {
                    return Err(HookError::InvalidSignature(
                        "Stripe-Signature has no v1= signature".into(),
                    ));
                }
                self.check(&[ts.as_bytes(), b".", body], &macs)?;
                Ok(Some(at))
            }
            Scheme::Hmac => {
                let name = self
                    .config
                    .signature_header
                    .as_deref()
                    .unwrap_or("X-Signature");
                let sig = strip(
                    header(name)?,
                    self.config.signature_prefix.as_deref().unwrap_or(""),
                )?;
                let mac = match self.config.encoding {
                    SignatureEncoding::Hex => hex_mac(sig)?,
                    SignatureEncoding::Base64 => base64_mac(sig)?,
                };
                match &self.config.timestamp_header {
                    Some(ts_header) => {
                        let ts = header(ts_header)?;
                        let at = unix_time(ts)?;
                        self.check(&[ts.as_bytes(), b".", body], &[mac])?;
                        Ok(Some(at))
                    }
                    None => {
                        self.check(&[body], &[mac])?;
                        Ok(None)
                    }
                }
            }
        }
    }

    /// Succeeds when one of `macs` is HMAC-SHA256 of `message` under one of the secrets;
    /// each comparison runs in constant time.
    fn check(&self, message: &[&[u8]], macs: &[Vec<u8>]) -> Result<(), HookError> {
        for secret in &self.config.secrets {
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
                continue;
            };
            for part in message {
                mac.update(part);
            }
            if macs.iter().any(|m| mac.clone().verify_slice(m).is_ok()) {
                return Ok(());
            }
        }
        Err(HookError::InvalidSignature(
            "the signature does not match the body under any configured secret".into(),
        ))
    }

    fn protocol_answer(
        &self,
        headers: &(impl HeaderLookup + ?Sized),
        json: Option<&Value>,
    ) -> Option<Value> {
        match self.config.scheme {
            Scheme::Github if headers.header("X-GitHub-Event") == Some("ping") => {
                Some(serde_json::json!({"accepted": 0, "event": "ping", "hook": self.name()}))
            }
            Scheme::Slack => {
                let json = json?;
                if json.get("type")?.as_str()? != "url_verification" {
                    return None;
                }
                let challenge = json.get("challenge")?.as_str()?;
                Some(serde_json::json!({ "challenge": challenge }))
            }
            _ => None,
        }
    }

    /// The event id inside the signed body, for the schemes that put one there.
    fn event_id(&self, json: Option<&Value>) -> Option<String> {
        let field = match self.config.scheme {
            Scheme::Stripe => "id",
            Scheme::Slack => "event_id",
            Scheme::Github | Scheme::Shopify | Scheme::Hmac => return None,
        };
        json.and_then(|j| j.get(field))
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .map(str::to_string)
    }

    fn rows(&self, body: &[u8], json: Option<Value>) -> Result<Vec<Map<String, Value>>, HookError> {
        let config = &self.config;
        if config.body_column.is_none() && config.fields.is_empty() {
            return match json {
                Some(Value::Object(row)) => Ok(vec![row]),
                Some(Value::Array(items)) => items
                    .into_iter()
                    .map(|item| match item {
                        Value::Object(row) => Ok(row),
                        _ => Err(HookError::Body(
                            "an element of the body's array is not an object".into(),
                        )),
                    })
                    .collect(),
                _ => Err(HookError::Body(
                    "the body is not a JSON object (map it with body_column or fields)".into(),
                )),
            };
        }
        let mut row = Map::new();
        if let Some(column) = &config.body_column {
            let text = std::str::from_utf8(body)
                .map_err(|e| HookError::Body(format!("the body is not UTF-8 text: {e}")))?;
            row.insert(column.clone(), Value::String(text.to_string()));
        }
        for (column, pointer) in &config.fields {
            if let Some(v) = json.as_ref().and_then(|j| j.pointer(pointer)) {
                row.insert(column.clone(), v.clone());
            }
        }
        Ok(vec![row])
    }
}

/// Checks every source and that their names are unique.
pub fn hooks(configs: Vec<HookConfig>) -> Result<BTreeMap<String, Hook>, String> {
    let mut out = BTreeMap::new();
    for config in configs {
        let hook = Hook::new(config)?;
        let name = hook.name().to_string();
        if out.insert(name.clone(), hook).is_some() {
            return Err(format!("two webhook sources are named {name:?}"));
        }
    }
    Ok(out)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn strip<'a>(value: &'a str, prefix: &str) -> Result<&'a str, HookError> {
    value.trim().strip_prefix(prefix).ok_or_else(|| {
        HookError::InvalidSignature(format!("the signature does not start with {prefix:?}"))
    })
}

fn hex_mac(text: &str) -> Result<Vec<u8>, HookError> {
    let bad = || HookError::InvalidSignature("the signature is not hexadecimal".into());
    let text = text.trim().as_bytes();
    if !text.len().is_multiple_of(2) {
        return Err(bad());
    }
    text.chunks(2)
        .map(|pair| {
            let digit = |c: u8| (c as char).to_digit(16).ok_or_else(bad);
            Ok((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
        })
        .collect()
}

fn base64_mac(text: &str) -> Result<Vec<u8>, HookError> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| HookError::InvalidSignature("the signature is not base64".into()))
}

fn unix_time(text: &str) -> Result<u64, HookError> {
    let text = text.trim();
    if text.is_empty() || text.len() > 12 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HookError::InvalidSignature(format!(
            "the signed timestamp {text:?} is not unix seconds"
        )));
    }
    text.parse()
        .map_err(|_| HookError::InvalidSignature("the signed timestamp is out of range".into()))
}

#[cfg(test)]
#[path = "webhook_tests.rs"]
mod tests;
