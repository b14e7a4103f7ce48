//! JWT verification (HS256, RS256, EdDSA, ES256) and HS256 minting for development.
//!
//! [`JwtVerifier::new`] (or [`JwtVerifier::load`], which also fetches a `jwks_url`) loads the
//! configured keys: an HS256 shared secret, PEM public keys whose type (RSA -> RS256, Ed25519 ->
//! EdDSA) is detected from the PEM, and a JWK Set ([`super::jwks`]) whose RSA, Ed25519 and
//! P-256 keys serve RS256, EdDSA and ES256. Each accepted algorithm gets its own validation and
//! its own keys, so the key used to check a signature is always chosen by the server from the
//! algorithm family, never from the token: an HS256 token "signed" with an RSA public key (the
//! classic algorithm confusion) cannot verify, JWK Set keys never serve HS256, and an algorithm
//! outside the allowlist is refused before any cryptography runs.
//!
//! A token whose `kid` the JWK Set holds is checked with that key alone; other tokens try the
//! PEM keys (or the secret) first, then the JWK Set. A `kid` found nowhere is the one case that
//! needs I/O: [`JwtVerifier::verify_or_refetch`] then hands back a future that refetches the set
//! (rate limited) and verifies again, while [`JwtVerifier::verify`] refuses it at once.
//!
//! Claims: `exp` is required; `nbf` is checked when present; `iss` and `aud` are required and
//! checked when configured (and ignored otherwise); `tenant` (a valid tenant name) is required;
//! scopes come from `scopes` (array) and/or `scope` (space-separated, OAuth style), unknown scope
//! names are ignored since they grant nothing here; `sub` becomes the principal's subject.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::jwks::{JWKS_ALGORITHMS, Jwks, JwksSource, KeySet, Selected, redacted_url, shown_kid};
use super::{AuthError, Grant, Principal};
use crate::ids::TenantId;

/// The shortest HS256 secret accepted, in bytes: RFC 7518 asks for a key at least as long as
/// the hash output.
pub const MIN_HS256_SECRET_LEN: usize = 32;

/// The algorithms this server verifies, by their JOSE names.
const SUPPORTED: [(&str, Algorithm); 4] = [
    ("HS256", Algorithm::HS256),
    ("RS256", Algorithm::RS256),
    ("EdDSA", Algorithm::EdDSA),
    ("ES256", Algorithm::ES256),
];

fn default_leeway_secs() -> u64 {
    30
}

fn default_jwks_refresh_secs() -> u64 {
    300
}

fn default_jwks_min_refetch_secs() -> u64 {
    30
}

/// JWT settings of the `[auth.jwt]` configuration section.
#[derive(Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// Shared secret for HS256 tokens, at least 32 bytes. Default: none (HS256 disabled).
    pub hs256_secret: Option<String>,
    /// PEM files of public keys: an RSA key enables RS256, an Ed25519 key enables EdDSA; the
    /// type is detected from the PEM. Several keys of one type are all tried (key rotation).
    /// Default: none.
    pub public_key_files: Vec<PathBuf>,
    /// URL (`http` or `https`) of a JWK Set (RFC 7517) whose RSA, Ed25519 and P-256 keys
    /// verify RS256, EdDSA and ES256 tokens. Fetched at startup (a failure stops the startup
    /// unless `hs256_secret` or `public_key_files` is set), every `jwks_refresh_secs`, and
    /// when a token names an unknown `kid`. Not together with `jwks_file`. Default: none.
    pub jwks_url: Option<String>,
    /// Local JWK Set file, used like `jwks_url` (read at startup, where a failure is a
    /// configuration error, then re-read). Not together with `jwks_url`. Default: none.
    pub jwks_file: Option<PathBuf>,
    /// Interval of the periodic JWK Set refresh, in seconds, at least 1; a key removed from the
    /// set is refused at the latest this long after its removal. Default: 300.
    #[serde(default = "default_jwks_refresh_secs")]
    pub jwks_refresh_secs: u64,
    /// Shortest interval between two JWK Set refetches triggered by tokens with an unknown
    /// `kid`, in seconds (0: no limit). Default: 30.
    #[serde(default = "default_jwks_min_refetch_secs")]
    pub jwks_min_refetch_secs: u64,
    /// Allowlist of accepted algorithms (`HS256`, `RS256`, `EdDSA`, `ES256`). Default: empty,
    /// meaning every algorithm for which a key is configured; a JWK Set counts as a key for
    /// RS256, EdDSA and ES256.
    pub algorithms: Vec<String>,
    /// Required `iss` claim value. Default: none (`iss` not checked).
    pub issuer: Option<String>,
    /// Required `aud` claim value. Default: none (`aud` not checked).
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds. Default: 30.
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            hs256_secret: None,
            public_key_files: Vec::new(),
            jwks_url: None,
            jwks_file: None,
            jwks_refresh_secs: default_jwks_refresh_secs(),
            jwks_min_refetch_secs: default_jwks_min_refetch_secs(),
            algorithms: Vec::new(),
            issuer: None,
            audience: None,
            leeway_secs: default_leeway_secs(),
        }
    }
}

impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtConfig")
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("public_key_files", &self.public_key_files)
            .field("jwks_url", &self.jwks_url.as_deref().map(redacted_url))
            .field("jwks_file", &self.jwks_file)
            .field("jwks_refresh_secs", &self.jwks_refresh_secs)
            .field("jwks_min_refetch_secs", &self.jwks_min_refetch_secs)
            .field("algorithms", &self.algorithms)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .finish()
    }
}

/// One accepted algorithm with its validation rules and candidate keys.
struct Accepted {
    alg: Algorithm,
    validation: Validation,
    /// The secret or the PEM keys of this algorithm.
    keys: Vec<DecodingKey>,
    /// Whether keys of the JWK Set may serve this algorithm (never for HS256).
    jwks: bool,
}

/// Verifies JWTs against the configured keys and claim rules.
///
/// Cloning is cheap and clones share the JWK Set, so a refreshed set serves every clone.
#[derive(Clone)]
pub struct JwtVerifier {
    accepted: Arc<[Accepted]>,
    jwks: Option<Arc<Jwks>>,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let algs: Vec<String> = self
            .accepted
            .iter()
            .map(|a| format!("{:?}({} keys)", a.alg, a.keys.len()))
            .collect();
        f.debug_struct("JwtVerifier")
            .field("accepted", &algs)
            .field("jwks", &self.jwks)
            .finish()
    }
}

/// What [`JwtVerifier::verify_or_refetch`] concluded.
pub enum Verification {
    /// Verified or refused without I/O.
    Ready(Result<Principal, AuthError>),
    /// The token names a key id the JWK Set does not hold: the future refetches the set (or
    /// joins a refetch already running) and verifies the token against the result.
    Refetch(BoxFuture<'static, Result<Principal, AuthError>>),
}

impl fmt::Debug for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verification::Ready(result) => f.debug_tuple("Ready").field(result).finish(),
            Verification::Refetch(_) => f.write_str("Refetch(..)"),
        }
    }
}

/// How far a verification without I/O got.
enum Step {
    Done(Result<Principal, AuthError>),
    /// No key has this `kid`; `seen` is the JWK Set that was searched.
    UnknownKid {
        kid: String,
        seen: Arc<KeySet>,
    },
}

/// The claims alluvium reads; registered time claims are checked by `jsonwebtoken`.
#[derive(Deserialize)]
struct Claims {
    tenant: Option<String>,
    scopes: Option<Vec<String>>,
    scope: Option<String>,
    sub: Option<String>,
}

impl JwtVerifier {
    /// Loads the keys of `cfg`; returns `None` when no key is configured (JWTs disabled) and an
    /// error for an unusable configuration (short secret, unreadable or unsupported PEM or
    /// `jwks_file`, an allowed algorithm without a key, an unknown algorithm name). A
    /// `jwks_url` needs the network: use [`JwtVerifier::load`], this refuses it.
    pub fn new(cfg: &JwtConfig) -> Result<Option<Self>, AuthError> {
        if cfg.jwks_url.is_some() {
            return Err(AuthError::config(
                "jwks_url is fetched at startup: build the verifier with JwtVerifier::load",
            ));
        }
        Self::build(cfg)
    }

    /// Like [`JwtVerifier::new`], and also fetches `jwks_url` when configured. When that first
    /// fetch fails, the verifier starts with an empty JWK Set (filled by later refreshes) if
    /// `hs256_secret` or `public_key_files` can verify tokens meanwhile; otherwise no token
    /// could verify and the failure is a configuration error.
    pub async fn load(cfg: &JwtConfig) -> Result<Option<Self>, AuthError> {
        let Some(verifier) = Self::build(cfg)? else {
            return Ok(None);
        };
        if let Some(jwks) = &verifier.jwks
            && let JwksSource::Url(_) = jwks.source()
            && let Err(e) = jwks.refresh().await
        {
            if cfg.hs256_secret.is_none() && cfg.public_key_files.is_empty() {
                return Err(AuthError::config(format!(
                    "fetching the JWK Set from {} failed: {e}; no other JWT key is configured",
                    jwks.source()
                )));
            }
            tracing::warn!(source = %jwks.source(), "jwks unavailable at startup, starting with an empty key set");
        }
        Ok(Some(verifier))
    }

    fn build(cfg: &JwtConfig) -> Result<Option<Self>, AuthError> {
        let mut hmac = Vec::new();
        if let Some(secret) = &cfg.hs256_secret {
            check_secret(secret)?;
            hmac.push(DecodingKey::from_secret(secret.as_bytes()));
        }
        let mut rsa = Vec::new();
        let mut ed = Vec::new();
        for path in &cfg.public_key_files {
            match load_public_key(path)? {
                (Algorithm::RS256, key) => rsa.push(key),
                (_, key) => ed.push(key),
            }
        }
        let jwks = jwks_for(cfg)?;

        let keys_for = |alg: Algorithm| match alg {
            Algorithm::HS256 => hmac.as_slice(),
            Algorithm::RS256 => rsa.as_slice(),
            Algorithm::EdDSA => ed.as_slice(),
            _ => &[],
        };
        let has_source = |alg: Algorithm| {
            !keys_for(alg).is_empty() || (jwks.is_some() && JWKS_ALGORITHMS.contains(&alg))
        };
        let allow: Vec<Algorithm> = if cfg.algorithms.is_empty() {
            SUPPORTED
                .iter()
                .map(|(_, a)| *a)
                .filter(|a| has_source(*a))
                .collect()
        } else {
            let mut v = Vec::new();
            for name in &cfg.algorithms {
                let alg = SUPPORTED
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, a)| *a)
                    .ok_or_else(|| {
                        AuthError::config(format!(
                            "unsupported JWT algorithm {name:?} (supported: HS256, RS256, EdDSA, ES256)"
                        ))
                    })?;
                if !has_source(alg) {
                    let what = match alg {
                        Algorithm::HS256 => "hs256_secret",
                        Algorithm::RS256 => "RSA public key or JWK Set",
                        Algorithm::EdDSA => "Ed25519 public key or JWK Set",
                        _ => "JWK Set (jwks_url or jwks_file)",
                    };
                    return Err(AuthError::config(format!(
                        "JWT algorithm {alg:?} is allowed but no {what} is configured"
                    )));
                }
                if !v.contains(&alg) {
                    v.push(alg);
                }
            }
            v
        };

        let accepted: Vec<Accepted> = allow
            .into_iter()
            .map(|alg| Accepted {
                alg,
                validation: validation_for(alg, cfg),
                keys: keys_for(alg).to_vec(),
                jwks: jwks.is_some() && JWKS_ALGORITHMS.contains(&alg),
            })
            .collect();
        if accepted.is_empty() {
            return Ok(None);
        }
        tracing::info!(algorithms = ?accepted.iter().map(|a| a.alg).collect::<Vec<_>>(), jwks = jwks.is_some(), "jwt verification enabled");
        Ok(Some(Self {
            accepted: accepted.into(),
            jwks,
        }))
    }

    /// Verifies `token` (signature, algorithm, `exp`, `nbf`, `iss`, `aud`) and returns its
    /// principal. An expired token is [`AuthError::TokenExpired`], anything else wrong
    /// [`AuthError::InvalidToken`]. Never does I/O: a `kid` missing from the current JWK Set is
    /// refused (see [`JwtVerifier::verify_or_refetch`]).
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        match self.step(token) {
            Step::Done(result) => result,
            Step::UnknownKid { kid, .. } => Err(unknown_kid(&kid)),
        }
    }

    /// Verifies `token` like [`JwtVerifier::verify`], except that a `kid` missing from the
    /// current JWK Set gives a future that refetches the set first, when the rate limit
    /// (`jwks_min_refetch_secs`) allows it or a refetch is already running.
    pub fn verify_or_refetch(&self, token: &str) -> Verification {
        match self.step(token) {
            Step::Done(result) => Verification::Ready(result),
            Step::UnknownKid { kid, seen } => {
                let Some(ticket) = self.jwks.as_ref().and_then(Jwks::join_refetch) else {
                    return Verification::Ready(Err(unknown_kid(&kid)));
                };
                let verifier = self.clone();
                let token = token.to_owned();
                Verification::Refetch(Box::pin(async move {
                    ticket.wait(&seen).await;
                    verifier.verify(&token)
                }))
            }
        }
    }

    /// The interval of the periodic JWK Set refresh; `None` without a JWK Set.
    pub fn jwks_refresh_every(&self) -> Option<Duration> {
        self.jwks.as_ref().map(|j| j.refresh_every())
    }

    /// A future that reloads the JWK Set (ignoring the unknown-`kid` rate limit) and keeps the
    /// last good set when that fails; `None` without a JWK Set. For the periodic refresh.
    pub fn refresh_jwks(&self) -> Option<BoxFuture<'static, ()>> {
        let jwks = self.jwks.clone()?;
        Some(Box::pin(async move {
            // A failure is logged by the refresh itself; the next tick tries again.
            let _ = jwks.refresh().await;
        }))
    }

    fn step(&self, token: &str) -> Step {
        let header = match jsonwebtoken::decode_header(token) {
            Ok(h) => h,
            Err(e) => {
                return Step::Done(Err(AuthError::invalid_token(format!(
                    "malformed token: {e}"
                ))));
            }
        };
        let Some(accepted) = self.accepted.iter().find(|a| a.alg == header.alg) else {
            return Step::Done(Err(AuthError::invalid_token(format!(
                "algorithm {:?} is not allowed",
                header.alg
            ))));
        };
        // RFC 7515: critical extensions we do not understand make the token unacceptable.
        if header.crit.as_ref().is_some_and(|c| !c.is_empty()) {
            return Step::Done(Err(AuthError::invalid_token(
                "unsupported critical header parameters",
            )));
        }
        let set = match &self.jwks {
            Some(jwks) if accepted.jwks => Some(jwks.current()),
            _ => None,
        };
        let kid = header.kid;

        // A kid the JWK Set knows names the one key to use.
        if let (Some(set), Some(kid)) = (&set, &kid) {
            match set.by_kid(accepted.alg, kid) {
                Selected::Key(key) => return Step::Done(decode_with(token, key, accepted)),
                Selected::Refused(e) => return Step::Done(Err(e)),
                Selected::UnknownKid | Selected::NoKey => {}
            }
        }

        // The secret or the PEM keys, which carry no kid: the token's kid does not matter.
        for key in &accepted.keys {
            match jsonwebtoken::decode::<Claims>(token, key, &accepted.validation) {
                Ok(data) => return Step::Done(principal_from(data.claims)),
                // Another configured key of the same type may have signed it.
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => {}
                Err(e) => return Step::Done(Err(map_error(&e))),
            }
        }
        let bad_signature = || AuthError::invalid_token("signature does not verify");
        match (set, kid) {
            (Some(seen), Some(kid)) => Step::UnknownKid { kid, seen },
            (Some(set), None) => Step::Done(match set.single(accepted.alg) {
                Selected::Key(key) => decode_with(token, key, accepted),
                Selected::NoKey if !accepted.keys.is_empty() => Err(bad_signature()),
                Selected::NoKey | Selected::UnknownKid => Err(AuthError::invalid_token(format!(
                    "no key of the JWK Set serves {:?}",
                    accepted.alg
                ))),
                Selected::Refused(e) => Err(e),
            }),
            (None, _) => Step::Done(Err(bad_signature())),
        }
    }
}

fn decode_with(
    token: &str,
    key: &DecodingKey,
    accepted: &Accepted,
) -> Result<Principal, AuthError> {
    jsonwebtoken::decode::<Claims>(token, key, &accepted.validation)
        .map_err(|e| map_error(&e))
        .and_then(|data| principal_from(data.claims))
}

fn unknown_kid(kid: &str) -> AuthError {
    AuthError::invalid_token(format!(
        "unknown key id {} (not in the JWK Set)",
        shown_kid(kid)
    ))
}

/// The JWK Set of `cfg`, a file one already loaded; `None` when none is configured.
fn jwks_for(cfg: &JwtConfig) -> Result<Option<Arc<Jwks>>, AuthError> {
    let source = match (&cfg.jwks_url, &cfg.jwks_file) {
        (Some(_), Some(_)) => {
            return Err(AuthError::config("set jwks_url or jwks_file, not both"));
        }
        (Some(url), None) => JwksSource::url(url)?,
        (None, Some(path)) => JwksSource::File(path.clone()),
        (None, None) => return Ok(None),
    };
    if cfg.jwks_refresh_secs == 0 {
        return Err(AuthError::config("jwks_refresh_secs must be at least 1"));
    }
    // Without a floor, tokens with random key ids would each cause a fetch. (This crate's
    // tests turn the floor off to exercise refetches without waiting.)
    if cfg.jwks_min_refetch_secs == 0 && !cfg!(test) {
        return Err(AuthError::config(
            "jwks_min_refetch_secs must be at least 1",
        ));
    }
    if let JwksSource::Url(url) = &source
        && url.scheme() == "http"
    {
        tracing::warn!(source = %source, "jwks_url uses plain http, keys can be replaced in transit");
    }
    let jwks = Jwks::new(
        source,
        Duration::from_secs(cfg.jwks_refresh_secs),
        Duration::from_secs(cfg.jwks_min_refetch_secs),
    )?;
    jwks.load_file_now()?;
    Ok(Some(Arc::new(jwks)))
}

/// Mints an HS256 token for `tenant` with `scopes`, valid for `ttl` (whole seconds, at least
/// one), with `iss`/`aud` when given. Meant for development (`alluvium token mint`).
pub fn mint_hs256(
    secret: &str,
    tenant: &TenantId,
    scopes: &BTreeSet<Grant>,
    ttl: Duration,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<String, AuthError> {
    check_secret(secret)?;
    let ttl_secs = i64::try_from(ttl.as_secs())
        .ok()
        .filter(|s| *s >= 1)
        .ok_or_else(|| AuthError::config("token ttl must be between one second and i64::MAX"))?;
    let now = chrono::Utc::now().timestamp();
    let mut claims = serde_json::json!({
        "tenant": tenant.as_str(),
        "scopes": scopes.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        "iat": now,
        "exp": now.saturating_add(ttl_secs),
    });
    if let Some(iss) = issuer {
        claims["iss"] = iss.into();
    }
    if let Some(aud) = audience {
        claims["aud"] = aud.into();
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| AuthError::config(format!("signing the token failed: {e}")))
}

fn check_secret(secret: &str) -> Result<(), AuthError> {
    if secret.len() < MIN_HS256_SECRET_LEN {
        return Err(AuthError::config(format!(
            "hs256_secret must be at least {MIN_HS256_SECRET_LEN} bytes"
        )));
    }
    Ok(())
}

fn validation_for(alg: Algorithm, cfg: &JwtConfig) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = cfg.leeway_secs;
    v.validate_exp = true;
    v.validate_nbf = true;
    let mut required = vec!["exp"];
    if let Some(iss) = &cfg.issuer {
        v.set_issuer(&[iss]);
        required.push("iss");
    }
    match &cfg.audience {
        Some(aud) => {
            v.set_audience(&[aud]);
            required.push("aud");
        }
        // Without a configured audience `aud` is not checked (as documented), instead of
        // jsonwebtoken's default of refusing every token that carries one.
        None => v.validate_aud = false,
    }
    v.set_required_spec_claims(&required);
    v
}

/// Reads a PEM public key and tells which algorithm it serves.
fn load_public_key(path: &Path) -> Result<(Algorithm, DecodingKey), AuthError> {
    let pem = std::fs::read(path).map_err(|e| {
        AuthError::config(format!("reading JWT public key {}: {e}", path.display()))
    })?;
    let text = String::from_utf8_lossy(&pem);
    let label = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("-----BEGIN "))
        .and_then(|l| l.strip_suffix("-----"))
        .ok_or_else(|| AuthError::config(format!("{} is not a PEM file", path.display())))?;
    match label {
        "RSA PUBLIC KEY" => DecodingKey::from_rsa_pem(&pem)
            .map(|k| (Algorithm::RS256, k))
            .map_err(|e| AuthError::config(format!("{}: bad RSA public key: {e}", path.display()))),
        "PUBLIC KEY" => {
            if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                return Ok((Algorithm::RS256, k));
            }
            DecodingKey::from_ed_pem(&pem)
                .map(|k| (Algorithm::EdDSA, k))
                .map_err(|_| {
                    AuthError::config(format!(
                        "{}: not an RSA or Ed25519 public key",
                        path.display()
                    ))
                })
        }
        l if l.contains("PRIVATE KEY") => Err(AuthError::config(format!(
            "{} holds a private key; configure the public key instead",
            path.display()
        ))),
        other => Err(AuthError::config(format!(
            "{}: unsupported PEM type {other:?}, expected a public key",
            path.display()
        ))),
    }
}

fn principal_from(claims: Claims) -> Result<Principal, AuthError> {
    let tenant = claims
        .tenant
        .ok_or_else(|| AuthError::invalid_token("missing tenant claim"))?;
    let tenant = TenantId::new(tenant)
        .map_err(|e| AuthError::invalid_token(format!("tenant claim: {e}")))?;
    let names = claims.scopes.into_iter().flatten().chain(
        claims
            .scope
            .iter()
            .flat_map(|s| s.split_ascii_whitespace().map(str::to_owned))
            .collect::<Vec<_>>(),
    );
    // Unknown or malformed scope names grant nothing here and are ignored.
    let scopes = names.filter_map(|n| Grant::parse(&n).ok()).collect();
    Ok(Principal {
        tenant,
        scopes,
        subject: claims.sub.unwrap_or_else(|| "jwt".to_owned()),
        quota: None,
    })
}

fn map_error(e: &jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::ExpiredSignature => AuthError::TokenExpired,
        ErrorKind::ImmatureSignature => AuthError::invalid_token("token not valid yet (nbf)"),
        ErrorKind::InvalidIssuer => AuthError::invalid_token("issuer does not match"),
        ErrorKind::InvalidAudience => AuthError::invalid_token("audience does not match"),
        ErrorKind::MissingRequiredClaim(c) => {
            AuthError::invalid_token(format!("missing required claim {c}"))
        }
        ErrorKind::InvalidClaimFormat(c) => {
            AuthError::invalid_token(format!("claim {c} has an invalid format"))
        }
        ErrorKind::InvalidSignature => AuthError::invalid_token("signature does not verify"),
        ErrorKind::InvalidAlgorithm => AuthError::invalid_token("algorithm is not allowed"),
        _ => AuthError::invalid_token(format!("malformed token: {e}")),
    }
}

#[cfg(test)]
#[path = "jwt_tests.rs"]
mod tests;
