//! JWK Set (RFC 7517) keys for JWT verification, fetched from a URL or read from a file.
//!
//! A `Jwks` holds the last good `KeySet` and replaces it whole on each successful load: at
//! startup, periodically (the actor shell drives the timer) and when a token names a `kid` the
//! set does not hold. Refetches for unknown `kid`s are rate limited to one per
//! `jwks_min_refetch_secs`, so tokens with random key ids cannot turn the server into a load
//! generator against the identity provider. A failed load keeps the last good set. Fetching is
//! async (reqwest) so it never blocks the caller's thread; a fetch reads at most
//! [`MAX_JWKS_BYTES`] and gives up after [`FETCH_TIMEOUT`].
//!
//! Usable keys are signature keys (`use` absent or `sig`, `key_ops` absent or with `verify`) of
//! type RSA (RS256, modulus of 2048 bits or more), OKP Ed25519 (EdDSA) or EC P-256 (ES256).
//! Symmetric (`oct`) keys are refused: a secret published in a key set is no secret, and
//! accepting it would let anyone who reads the set mint tokens. Skipped keys are logged at each
//! load; a token naming a skipped key's `kid` is refused without a refetch.
//!
//! Selection (`KeySet::by_kid`, `KeySet::single`) is the server's, never the token's: the
//! `kid` picks a key, whose type must serve the token's `alg` and whose `alg`, when present,
//! must equal it. Without a `kid` a token verifies only when exactly one usable key serves its
//! `alg`. This module does not import actix.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind};
use serde::Deserialize;

use super::AuthError;

/// The largest JWK Set accepted, in bytes (1 MiB); a larger body or file is a failed load.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// How long one fetch of a JWK Set URL may take, connecting and reading the body included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// How many verifications may wait for one refetch at a time. Each holds its token (at most
/// 8 KiB); beyond this bound an unknown `kid` is refused at once rather than queued.
pub const MAX_REFETCH_WAITERS: usize = 1024;

/// The shortest RSA modulus accepted from a key set, in bits (RFC 7518, section 3.3).
const MIN_RSA_BITS: usize = 2048;

/// The algorithms a JWK Set key can serve.
pub(crate) const JWKS_ALGORITHMS: [Algorithm; 3] =
    [Algorithm::RS256, Algorithm::EdDSA, Algorithm::ES256];

/// Where a JWK Set comes from.
#[derive(Clone)]
pub(crate) enum JwksSource {
    /// An `http` or `https` URL, fetched with a GET.
    Url(reqwest::Url),
    /// A local file, re-read on each load.
    File(PathBuf),
}

impl JwksSource {
    /// Parses a configured `jwks_url`: an absolute `http` or `https` URL.
    pub(crate) fn url(text: &str) -> Result<Self, AuthError> {
        let url = reqwest::Url::parse(text)
            .map_err(|e| AuthError::config(format!("jwks_url is not a valid URL: {e}")))?;
        match url.scheme() {
            "https" | "http" => Ok(JwksSource::Url(url)),
            other => Err(AuthError::config(format!(
                "jwks_url must use http or https, not {other}"
            ))),
        }
    }
}

/// A configured `jwks_url` as shown in `Debug` output: without its password.
pub(crate) fn redacted_url(text: &str) -> String {
    match reqwest::Url::parse(text) {
        Ok(url) => redact(&url),
        Err(_) => "<not a URL>".to_owned(),
    }
}

impl fmt::Display for JwksSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksSource::Url(url) => f.write_str(&redact(url)),
            JwksSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The URL without its password, for logs and errors.
fn redact(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        // Only fails for URLs that cannot carry credentials, which then have none to hide.
        let _ = shown.set_password(Some("redacted"));
    }
    shown.to_string()
}

/// One usable key of a set.
struct JwksKey {
    kid: Option<String>,
    /// The JWK's `alg`, when it has one.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

impl JwksKey {
    /// Tells why this key cannot verify a token of `alg`, if it cannot.
    fn refusal(&self, alg: Algorithm) -> Option<String> {
        if let Some(own) = self.alg
            && own != alg
        {
            return Some(format!(
                "token alg {alg:?} does not match the key's alg {own:?}"
            ));
        }
        if self.key.family() != alg.family() {
            return Some(format!(
                "token alg {alg:?} does not match the key type {}",
                family_name(self.key.family())
            ));
        }
        None
    }
}

fn family_name(family: AlgorithmFamily) -> &'static str {
    match family {
        AlgorithmFamily::Hmac => "oct",
        AlgorithmFamily::Rsa => "RSA",
        AlgorithmFamily::Ec => "EC",
        AlgorithmFamily::Ed => "OKP",
    }
}

/// A parsed JWK Set: its usable keys and the key ids it skipped (with why).
#[derive(Default)]
pub(crate) struct KeySet {
    keys: Vec<JwksKey>,
    skipped: Vec<(String, String)>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySet")
            .field(
                "kids",
                &self
                    .keys
                    .iter()
                    .map(|k| k.kid.as_deref())
                    .collect::<Vec<_>>(),
            )
            .field(
                "skipped",
                &self.skipped.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// What a [`KeySet`] offers for a token.
pub(crate) enum Selected<'a> {
    /// The key to verify the signature with.
    Key(&'a DecodingKey),
    /// The set holds no key with the token's `kid`: a refetch may bring it.
    UnknownKid,
    /// No key serves the token's `alg` (token without `kid`).
    NoKey,
    /// The set cannot verify this token, for the reason given.
    Refused(AuthError),
}

impl KeySet {
    /// Number of usable keys.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Selects the key named `kid` for a token of `alg`.
    pub(crate) fn by_kid(&self, alg: Algorithm, kid: &str) -> Selected<'_> {
        let mut refusal = None;
        for key in self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid)) {
            match key.refusal(alg) {
                None => return Selected::Key(&key.key),
                Some(why) => {
                    refusal.get_or_insert(why);
                }
            }
        }
        if let Some(why) = refusal {
            return Selected::Refused(AuthError::invalid_token(why));
        }
        match self.skipped.iter().find(|(k, _)| k == kid) {
            Some((_, why)) => Selected::Refused(AuthError::invalid_token(format!(
                "key {} of the JWK Set is not usable: {why}",
                shown_kid(kid)
            ))),
            None => Selected::UnknownKid,
        }
    }

    /// Selects the key for a token of `alg` without a `kid`: the one usable key serving `alg`.
    pub(crate) fn single(&self, alg: Algorithm) -> Selected<'_> {
        let mut serving = self.keys.iter().filter(|k| k.refusal(alg).is_none());
        match (serving.next(), serving.next()) {
            (Some(key), None) => Selected::Key(&key.key),
            (None, _) => Selected::NoKey,
            (Some(_), Some(_)) => Selected::Refused(AuthError::invalid_token(format!(
                "token has no kid and the JWK Set holds {} keys for {alg:?}; a kid is required",
                2 + serving.count()
            ))),
        }
    }
}

/// A key id as shown in errors: quoted and cut to 64 characters, since it comes from the token.
pub(crate) fn shown_kid(kid: &str) -> String {
    let cut: String = kid.chars().take(64).collect();
    if cut.len() < kid.len() {
        format!("{cut:?}...")
    } else {
        format!("{cut:?}")
    }
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

/// Parses a JWK Set. Keys that cannot be used are skipped with a warning instead of failing
/// the whole set, so one exotic key published by the provider does not lock everyone out.
pub(crate) fn parse_key_set(bytes: &[u8]) -> Result<KeySet, String> {
    let raw: RawSet = serde_json::from_slice(bytes).map_err(|e| format!("not a JWK Set: {e}"))?;
    let mut set = KeySet::default();
    for (i, value) in raw.keys.into_iter().enumerate() {
        let kid = value.get("kid").and_then(|v| v.as_str()).map(str::to_owned);
        let shown = kid.as_deref().unwrap_or("");
        let why = match not_for_signatures(&value) {
            // Encryption keys are expected in many sets: not worth a warning at every refresh.
            Some(why) => {
                tracing::debug!(index = i, kid = shown, reason = %why, "jwks key skipped");
                why
            }
            None => match usable_key(value) {
                Ok(key) => {
                    set.keys.push(key);
                    continue;
                }
                Err(why) => {
                    tracing::warn!(index = i, kid = shown, reason = %why, "jwks key skipped");
                    why
                }
            },
        };
        if let Some(kid) = kid {
            set.skipped.push((kid, why));
        }
    }
    Ok(set)
}

/// Tells why a JWK is meant for something else than verifying signatures, if it is.
fn not_for_signatures(value: &serde_json::Value) -> Option<String> {
    if let Some(usage) = value.get("use")
        && usage != "sig"
    {
        return Some(format!("use is {usage}, not sig"));
    }
    if let Some(ops) = value.get("key_ops").and_then(|v| v.as_array())
        && !ops.iter().any(|op| op == "verify")
    {
        return Some("key_ops does not include verify".into());
    }
    None
}

fn usable_key(value: serde_json::Value) -> Result<JwksKey, String> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|e| format!("malformed JWK: {e}"))?;
    let common = &jwk.common;
    let key = match &jwk.algorithm {
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric (oct) keys are refused".into());
        }
        AlgorithmParameters::RSA(p) => DecodingKey::from_rsa_components(&p.n, &p.e),
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            DecodingKey::from_ed_components(&p.x)
        }
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
            DecodingKey::from_ec_components(&p.x, &p.y)
        }
        AlgorithmParameters::OctetKeyPair(p) => {
            return Err(format!("unsupported OKP curve {:?}", p.curve));
        }
        AlgorithmParameters::EllipticCurve(p) => {
            return Err(format!("unsupported EC curve {:?}", p.curve));
        }
        _ => return Err("unsupported key type".into()),
    }
    .map_err(|e| format!("bad key material: {e}"))?;
    check_material(&key)?;
    let alg = match common.key_algorithm {
        None => None,
        Some(named) => {
            let alg = Algorithm::try_from(named)
                .ok()
                .filter(|a| JWKS_ALGORITHMS.contains(a))
                .ok_or_else(|| format!("alg {named} is not supported (RS256, EdDSA, ES256)"))?;
            if alg.family() != key.family() {
                return Err(format!(
                    "alg {named} does not fit the key type {}",
                    family_name(key.family())
                ));
            }
            Some(alg)
        }
    };
    Ok(JwksKey {
        kid: common.key_id.clone(),
        alg,
        key,
    })
}

/// Refuses key material that cannot be right, so it is reported at load, not per token.
fn check_material(key: &DecodingKey) -> Result<(), String> {
    match (key.family(), key.kind()) {
        (AlgorithmFamily::Rsa, DecodingKeyKind::RsaModulusExponent { n, .. }) => {
            let significant = n.iter().skip_while(|b| **b == 0).count();
            if significant * 8 < MIN_RSA_BITS {
                return Err(format!("RSA modulus shorter than {MIN_RSA_BITS} bits"));
            }
        }
        (AlgorithmFamily::Ed, DecodingKeyKind::SecretOrDer(x)) if x.len() != 32 => {
            return Err("Ed25519 x is not 32 bytes".into());
        }
        // An uncompressed P-256 point: 0x04, then x and y of 32 bytes each.
        (AlgorithmFamily::Ec, DecodingKeyKind::SecretOrDer(p)) if p.len() != 65 => {
            return Err("P-256 x and y are not 32 bytes each".into());
        }
        _ => {}
    }
    Ok(())
}

/// The mutable part of a [`Jwks`].
struct State {
    set: Arc<KeySet>,
    /// When the last refetch for an unknown `kid` started (the rate limit's clock).
    last_kid_refetch: Option<Instant>,
}

impl State {
    fn kid_refetch_allowed(&self, now: Instant, min_refetch: Duration) -> bool {
        self.last_kid_refetch
            .is_none_or(|at| now.saturating_duration_since(at) >= min_refetch)
    }
}

/// A JWK Set source with its current key set, refreshed as described in the module docs.
pub(crate) struct Jwks {
    source: JwksSource,
    client: Option<reqwest::Client>,
    refresh_every: Duration,
    min_refetch: Duration,
    state: RwLock<State>,
    /// Held while a load runs, so concurrent triggers share one fetch.
    loading: tokio::sync::Mutex<()>,
    waiters: AtomicUsize,
}

impl fmt::Debug for Jwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwks")
            .field("source", &self.source.to_string())
            .field("keys", &self.current().len())
            .field("refresh_every", &self.refresh_every)
            .field("min_refetch", &self.min_refetch)
            .finish()
    }
}

impl Jwks {
    /// Prepares `source` with an empty set; nothing is loaded yet.
    pub(crate) fn new(
        source: JwksSource,
        refresh_every: Duration,
        min_refetch: Duration,
    ) -> Result<Self, AuthError> {
        let client = match &source {
            JwksSource::Url(_) => Some(
                reqwest::Client::builder()
                    .timeout(FETCH_TIMEOUT)
                    .connect_timeout(FETCH_TIMEOUT)
                    // A redirect could lead anywhere (or downgrade to http); configure the final URL.
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent(concat!("alluvium/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| AuthError::config(format!("building the JWKS client: {e}")))?,
            ),
            JwksSource::File(_) => None,
        };
        Ok(Self {
            source,
            client,
            refresh_every,
            min_refetch,
            state: RwLock::new(State {
                set: Arc::new(KeySet::default()),
                last_kid_refetch: None,
            }),
            loading: tokio::sync::Mutex::new(()),
            waiters: AtomicUsize::new(0),
        })
    }

    /// Where the set comes from.
    pub(crate) fn source(&self) -> &JwksSource {
        &self.source
    }

    /// The interval of the periodic refresh.
    pub(crate) fn refresh_every(&self) -> Duration {
        self.refresh_every
    }

    /// The current key set.
    pub(crate) fn current(&self) -> Arc<KeySet> {
        // A panic while holding the lock cannot leave a half-written Arc behind.
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        state.set.clone()
    }

    /// Loads a file source synchronously (startup only, where blocking is fine).
    pub(crate) fn load_file_now(&self) -> Result<(), AuthError> {
        let JwksSource::File(path) = &self.source else {
            return Ok(());
        };
        let set = read_file(path)
            .and_then(|bytes| parse_key_set(&bytes))
            .map_err(|e| AuthError::config(format!("jwks_file {}: {e}", path.display())))?;
        self.install(set);
        Ok(())
    }

    /// Loads the set now, whatever the rate limit, and installs it; on failure the last good
    /// set stays and the error is logged and returned. Used at startup and by the timer.
    pub(crate) async fn refresh(&self) -> Result<(), String> {
        let _loading = self.loading.lock().await;
        self.load().await
    }

    /// Reserves a place among the waiters of a refetch for a token naming an unknown `kid`;
    /// `None` (refuse the token now) when no refetch runs and the rate limit forbids a new one,
    /// or when [`MAX_REFETCH_WAITERS`] already wait.
    pub(crate) fn join_refetch(self: &Arc<Self>) -> Option<RefetchTicket> {
        let running = self.loading.try_lock().is_err();
        if !running && !self.kid_refetch_allowed(Instant::now()) {
            return None;
        }
        let before = self.waiters.fetch_add(1, Ordering::Relaxed);
        // The ticket is made first so that its drop undoes the increment on every path.
        let ticket = RefetchTicket(self.clone());
        (before < MAX_REFETCH_WAITERS).then_some(ticket)
    }

    fn kid_refetch_allowed(&self, now: Instant) -> bool {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        state.kid_refetch_allowed(now, self.min_refetch)
    }

    /// Refetches the set for a token whose `kid` was not in `seen`, unless another load
    /// replaced `seen` meanwhile or the rate limit forbids it. Returns once the set is current.
    async fn refetch_for_unknown_kid(&self, seen: &Arc<KeySet>) {
        let _loading = self.loading.lock().await;
        if !Arc::ptr_eq(seen, &self.current()) {
            return;
        }
        let now = Instant::now();
        {
            let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
            if !state.kid_refetch_allowed(now, self.min_refetch) {
                return;
            }
            state.last_kid_refetch = Some(now);
        }
        tracing::debug!(source = %self.source, "unknown jwt kid, refetching jwks");
        // Failures are logged in load; the caller verifies against whatever set is current.
        let _ = self.load().await;
    }

    /// Fetches, parses and installs the set; the caller holds `loading`.
    async fn load(&self) -> Result<(), String> {
        let loaded = match &self.source {
            JwksSource::Url(url) => match &self.client {
                Some(client) => fetch_url(client, url).await,
                None => Err("no HTTP client".to_owned()),
            },
            // A local file of at most 1 MiB: reading it inline is cheaper than a thread hop.
            JwksSource::File(path) => read_file(path),
        }
        .and_then(|bytes| parse_key_set(&bytes));
        match loaded {
            Ok(set) => {
                self.install(set);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(source = %self.source, error = %e, "jwks load failed, keeping the last good key set");
                Err(e)
            }
        }
    }

    fn install(&self, set: KeySet) {
        tracing::info!(source = %self.source, keys = set.len(), skipped = set.skipped.len(), "jwks loaded");
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        state.set = Arc::new(set);
    }
}

/// A place among the waiters of a refetch, from [`Jwks::join_refetch`].
pub(crate) struct RefetchTicket(Arc<Jwks>);

impl RefetchTicket {
    /// Waits for the refetch that may bring a `kid` missing from `seen` (see
    /// [`Jwks::join_refetch`]); the set is current when it returns.
    pub(crate) async fn wait(self, seen: &Arc<KeySet>) {
        self.0.refetch_for_unknown_kid(seen).await;
    }
}

impl Drop for RefetchTicket {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::Relaxed);
    }
}

/// GETs `url`, refusing a non-2xx status and a body over [`MAX_JWKS_BYTES`].
async fn fetch_url(client: &reqwest::Client, url: &reqwest::Url) -> Result<Vec<u8>, String> {
    let mut response = client
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| format!("GET failed: {}", chain(&e)))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("GET answered {status}"));
    }
    let too_large = || format!("JWK Set larger than {MAX_JWKS_BYTES} bytes");
    if response
        .content_length()
        .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading the body failed: {}", chain(&e)))?
    {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Reads a JWK Set file of at most [`MAX_JWKS_BYTES`].
fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("opening: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_JWKS_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("reading: {e}"))?;
    if bytes.len() > MAX_JWKS_BYTES {
        return Err(format!("JWK Set larger than {MAX_JWKS_BYTES} bytes"));
    }
    Ok(bytes)
}

/// An error with its sources, since reqwest's own message rarely names the cause.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
#[path = "jwks_tests.rs"]
mod tests;
