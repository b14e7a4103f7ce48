//! JWT verification (HS256, RS256, EdDSA) and HS256 minting for development.
//!
//! [`JwtVerifier::new`] loads the configured keys once: an HS256 shared secret and PEM public
//! keys whose type (RSA -> RS256, Ed25519 -> EdDSA) is detected from the PEM. Each accepted
//! algorithm gets its own validation and its own keys, so the key used to check a signature is
//! always chosen by the server from the algorithm family, never from the token: an HS256 token
//! "signed" with an RSA public key (the classic algorithm confusion) cannot verify, and an
//! algorithm outside the allowlist is refused before any cryptography runs.
//!
//! Claims: `exp` is required; `nbf` is checked when present; `iss` and `aud` are required and
//! checked when configured (and ignored otherwise); `tenant` (a valid tenant name) is required;
//! scopes come from `scopes` (array) and/or `scope` (space-separated, OAuth style), unknown scope
//! names are ignored since they grant nothing here; `sub` becomes the principal's subject.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::{AuthError, Principal, Scope};
use crate::ids::TenantId;

/// The shortest HS256 secret accepted, in bytes: RFC 7518 asks for a key at least as long as
/// the hash output.
pub const MIN_HS256_SECRET_LEN: usize = 32;

/// The algorithms this server verifies, by their JOSE names.
const SUPPORTED: [(&str, Algorithm); 3] = [
    ("HS256", Algorithm::HS256),
    ("RS256", Algorithm::RS256),
    ("EdDSA", Algorithm::EdDSA),
];

fn default_leeway_secs() -> u64 {
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
    /// Allowlist of accepted algorithms (`HS256`, `RS256`, `EdDSA`). Default: empty, meaning
    /// every algorithm for which a key is configured.
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
    keys: Vec<DecodingKey>,
}

/// Verifies JWTs against the configured keys and claim rules.
pub struct JwtVerifier {
    accepted: Vec<Accepted>,
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
            .finish()
    }
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
    /// error for an unusable configuration (short secret, unreadable or unsupported PEM, an
    /// allowed algorithm without a key, an unknown algorithm name).
    pub fn new(cfg: &JwtConfig) -> Result<Option<Self>, AuthError> {
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

        let allow: Vec<Algorithm> = if cfg.algorithms.is_empty() {
            let mut v = Vec::new();
            if !hmac.is_empty() {
                v.push(Algorithm::HS256);
            }
            if !rsa.is_empty() {
                v.push(Algorithm::RS256);
            }
            if !ed.is_empty() {
                v.push(Algorithm::EdDSA);
            }
            v
        } else {
            let mut v = Vec::new();
            for name in &cfg.algorithms {
                let alg = SUPPORTED
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, a)| *a)
                    .ok_or_else(|| {
                        AuthError::config(format!(
                            "unsupported JWT algorithm {name:?} (supported: HS256, RS256, EdDSA)"
                        ))
                    })?;
                if !v.contains(&alg) {
                    v.push(alg);
                }
            }
            v
        };

        let mut accepted = Vec::new();
        for alg in allow {
            let (keys, what) = match alg {
                Algorithm::HS256 => (&hmac, "hs256_secret"),
                Algorithm::RS256 => (&rsa, "RSA public key"),
                _ => (&ed, "Ed25519 public key"),
            };
            if keys.is_empty() {
                return Err(AuthError::config(format!(
                    "JWT algorithm {alg:?} is allowed but no {what} is configured"
                )));
            }
            accepted.push(Accepted {
                alg,
                validation: validation_for(alg, cfg),
                keys: keys.clone(),
            });
        }
        if accepted.is_empty() {
            return Ok(None);
        }
        tracing::info!(algorithms = ?accepted.iter().map(|a| a.alg).collect::<Vec<_>>(), "jwt verification enabled");
        Ok(Some(Self { accepted }))
    }

    /// Verifies `token` (signature, algorithm, `exp`, `nbf`, `iss`, `aud`) and returns its
    /// principal. An expired token is [`AuthError::TokenExpired`], anything else wrong
    /// [`AuthError::InvalidToken`].
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::invalid_token(format!("malformed token: {e}")))?;
        let accepted = self
            .accepted
            .iter()
            .find(|a| a.alg == header.alg)
            .ok_or_else(|| {
                AuthError::invalid_token(format!("algorithm {:?} is not allowed", header.alg))
            })?;
        // RFC 7515: critical extensions we do not understand make the token unacceptable.
        if header.crit.as_ref().is_some_and(|c| !c.is_empty()) {
            return Err(AuthError::invalid_token(
                "unsupported critical header parameters",
            ));
        }

        let mut last = AuthError::invalid_token("signature does not verify");
        for key in &accepted.keys {
            match jsonwebtoken::decode::<Claims>(token, key, &accepted.validation) {
                Ok(data) => return principal_from(data.claims),
                // Another configured key of the same type may have signed it.
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => {}
                Err(e) => {
                    last = map_error(&e);
                    break;
                }
            }
        }
        Err(last)
    }
}

/// Mints an HS256 token for `tenant` with `scopes`, valid for `ttl` (whole seconds, at least
/// one), with `iss`/`aud` when given. Meant for development (`alluvium token mint`).
pub fn mint_hs256(
    secret: &str,
    tenant: &TenantId,
    scopes: &BTreeSet<Scope>,
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
        "scopes": scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
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
    let scopes = names.filter_map(|n| Scope::parse(&n)).collect();
    Ok(Principal {
        tenant,
        scopes,
        subject: claims.sub.unwrap_or_else(|| "jwt".to_owned()),
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
