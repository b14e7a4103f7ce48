//! Authentication and authorization: turns a credential string into a [`Principal`].
//!
//! A credential arrives from the HTTP layer (`Authorization: Bearer <credential>` or
//! `X-API-Key: <credential>`) or from a NATS `Authorization` header; parsing those headers is not
//! done here, this module receives the bare credential string. The [`Authenticator`] decides what
//! the credential is:
//!
//! - exactly two dots -> a JWT, verified by [`jwt::JwtVerifier`] (HS256 with a shared secret,
//!   RS256 and EdDSA with configured public keys, RS256, EdDSA and ES256 with the keys of a JWK
//!   Set fetched from a URL or read from a file ([`jwks`]), an algorithm allowlist, `exp`
//!   required);
//! - anything else -> an API key, looked up in the [`keys::KeyStore`], which keeps only SHA-256
//!   digests on disk and compares them in constant time.
//!
//! Either way the result is a [`Principal`]: the tenant the credential belongs to, its scopes
//! and a subject (the key id or the JWT `sub`). Handlers then call [`Principal::require`] with the
//! scope the operation needs. The tenant always comes from the credential, never from a payload.
//!
//! Errors split into three groups the HTTP layer maps to statuses: a missing or bad credential is
//! 401 ([`AuthError::Unauthenticated`], [`AuthError::InvalidApiKey`], [`AuthError::InvalidToken`],
//! [`AuthError::TokenExpired`]), a missing scope is 403 ([`AuthError::Forbidden`]), a bad key
//! request is 400 and the rest are server-side faults. [`AuthError::code`] gives the stable code.
//!
//! Verification is synchronous CPU work except in one case: a JWT naming a key id the JWK Set
//! does not hold, for which [`Authenticator::authenticate_or_refetch`] returns a future that
//! refetches the set (rate limited) before verifying.
//!
//! The actor shell ([`actor::AuthActor`]) owns an [`Authenticator`] and answers the messages in
//! [`messages`]; the logic modules here do not depend on actix.

pub mod actor;
pub mod grants;
pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod messages;

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ids::{TableName, TenantId};

pub use actor::AuthActor;
pub use grants::{Grant, Quota};
pub use jwt::{JwtConfig, JwtVerifier, Verification, mint_hs256};
pub use keys::{Bootstrap, KeyInfo, KeySpec, KeyStore, NewKey, bootstrap};
pub use messages::{Authenticate, CreateKey, ListKeys, RevokeKey};

/// The longest credential accepted, in bytes. Longer input is refused before it is hashed or
/// parsed, so an oversized header cannot make verification expensive.
pub const MAX_CREDENTIAL_LEN: usize = 8 * 1024;

/// The tenant whose admins operate the whole server (the bootstrap key belongs to it).
pub const OPERATOR_TENANT: &str = "default";

/// Why a credential or a key operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No credential was presented (401).
    #[error("authentication required: present an API key or a JWT")]
    Unauthenticated,
    /// The credential is not a known API key (401).
    #[error("invalid API key")]
    InvalidApiKey,
    /// The JWT is malformed, badly signed, uses a refused algorithm or fails a claim check (401).
    #[error("invalid token: {reason}")]
    InvalidToken {
        /// What was wrong with it; never contains the token itself.
        reason: String,
    },
    /// The JWT's `exp` lies in the past, beyond the configured leeway (401).
    #[error("token expired")]
    TokenExpired,
    /// The principal is authenticated but lacks the scope the operation needs (403).
    #[error(
        "forbidden: this credential of tenant {tenant:?} lacks the {needed} scope{}",
        match table { Some(t) => format!(" on table {t:?}"), None => " on every table".to_string() }
    )]
    Forbidden {
        /// The tenant of the principal.
        tenant: String,
        /// The scope the operation needs.
        needed: Scope,
        /// The table it needs it on; `None`: on every table (tenant-wide operations).
        table: Option<String>,
    },
    /// The API key's expiry has passed (401).
    #[error("API key expired at {expired_at}")]
    KeyExpired {
        /// When it expired (RFC 3339).
        expired_at: String,
    },
    /// A key creation request is invalid: bad scopes, label or user-provided key (400).
    #[error("invalid key request: {reason}")]
    InvalidKeyRequest {
        /// What rule it broke.
        reason: String,
    },
    /// Reading or writing a key store or bootstrap file failed (500).
    #[error("key store I/O error on {path}: {source}")]
    KeyStoreIo {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The key store file exists but cannot be trusted; the server refuses to start (500).
    #[error(
        "key store {path} is corrupt: {reason}; restore it from a backup or remove it to bootstrap again"
    )]
    KeyStoreCorrupt {
        /// The key store file.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// The JWT configuration or a minting request is unusable (500 at startup, CLI error).
    #[error("invalid auth configuration: {reason}")]
    Config {
        /// What was wrong; never contains a secret.
        reason: String,
    },
}

impl AuthError {
    /// Returns the stable, machine-readable code of the error (the problem+json `code`).
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Unauthenticated => "unauthenticated",
            AuthError::InvalidApiKey => "invalid_api_key",
            AuthError::InvalidToken { .. } => "invalid_token",
            AuthError::TokenExpired => "token_expired",
            AuthError::Forbidden { .. } => "forbidden",
            AuthError::KeyExpired { .. } => "key_expired",
            AuthError::InvalidKeyRequest { .. } => "invalid_key_request",
            AuthError::KeyStoreIo { .. } => "key_store_io",
            AuthError::KeyStoreCorrupt { .. } => "key_store_corrupt",
            AuthError::Config { .. } => "auth_config",
        }
    }

    /// Tells whether the error means "who are you?" (HTTP 401): missing or bad credentials.
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            AuthError::Unauthenticated
                | AuthError::InvalidApiKey
                | AuthError::InvalidToken { .. }
                | AuthError::TokenExpired
                | AuthError::KeyExpired { .. }
        )
    }

    pub(crate) fn invalid_token(reason: impl Into<String>) -> Self {
        AuthError::InvalidToken {
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid_request(reason: impl Into<String>) -> Self {
        AuthError::InvalidKeyRequest {
            reason: reason.into(),
        }
    }

    pub(crate) fn config(reason: impl Into<String>) -> Self {
        AuthError::Config {
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        AuthError::KeyStoreIo {
            path: path.into(),
            source,
        }
    }
}

/// What a principal may do. Serialized lowercase: `ingest`, `query`, `admin`.
///
/// `Admin` implies `Ingest` and `Query` for the principal's own tenant (see
/// [`Principal::require`]); it additionally allows managing API keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Write events into the tenant's tables.
    Ingest,
    /// Read rows and query the tenant's tables, subscribe to its commit events.
    Query,
    /// Manage the tenant's tables and API keys; implies `Ingest` and `Query`.
    Admin,
}

impl Scope {
    /// Returns the lowercase name used in configuration, JWT claims and the key store.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Query => "query",
            Scope::Admin => "admin",
        }
    }

    /// Parses a lowercase scope name; `None` for anything else.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "ingest" => Some(Scope::Ingest),
            "query" => Some(Scope::Query),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated caller: a tenant, what it may do and who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The tenant every operation of this principal is confined to.
    pub tenant: TenantId,
    /// The granted scopes, each on every table of the tenant or on one table.
    pub scopes: BTreeSet<Grant>,
    /// The API key id or the JWT `sub` (`"jwt"` when the token has none); for logs and audits.
    pub subject: String,
    /// The API key's rate limits, if it has any.
    pub quota: Option<Quota>,
}

impl Principal {
    /// A principal with `scopes` on every table of `tenant` and no quota.
    pub fn new(
        tenant: TenantId,
        scopes: impl IntoIterator<Item = Grant>,
        subject: impl Into<String>,
    ) -> Self {
        Principal {
            tenant,
            scopes: scopes.into_iter().collect(),
            subject: subject.into(),
            quota: None,
        }
    }

    fn forbidden(&self, needed: Scope, table: Option<&TableName>) -> AuthError {
        AuthError::Forbidden {
            tenant: self.tenant.to_string(),
            needed,
            table: table.map(|t| t.to_string()),
        }
    }

    /// Whether a grant allows `scope` on `table` (an admin grant allows every scope where it
    /// applies).
    pub fn may(&self, scope: Scope, table: &TableName) -> bool {
        self.scopes.iter().any(|g| g.allows(scope, Some(table)))
    }

    /// Succeeds when a grant allows `scope` on `table`; otherwise [`AuthError::Forbidden`].
    pub fn require_on(&self, scope: Scope, table: &TableName) -> Result<(), AuthError> {
        if self.may(scope, table) {
            Ok(())
        } else {
            Err(self.forbidden(scope, Some(table)))
        }
    }

    /// Succeeds when a grant allows `scope` on every table of the tenant (tenant-wide
    /// operations); otherwise [`AuthError::Forbidden`].
    pub fn require(&self, scope: Scope) -> Result<(), AuthError> {
        if self.scopes.iter().any(|g| g.allows(scope, None)) {
            Ok(())
        } else {
            Err(self.forbidden(scope, None))
        }
    }

    /// Succeeds when a grant allows `scope` on at least one table (listing what it may see).
    pub fn require_some(&self, scope: Scope) -> Result<(), AuthError> {
        if self
            .scopes
            .iter()
            .any(|g| g.scope == scope || g.scope == Scope::Admin)
        {
            Ok(())
        } else {
            Err(self.forbidden(scope, None))
        }
    }

    /// Succeeds when the principal may manage API keys of `tenant`: it needs `admin` on every
    /// table, and either belongs to `tenant` or to the operator tenant [`OPERATOR_TENANT`]
    /// (whose admins, starting with the bootstrap key, provision the other tenants).
    pub fn require_admin_of(&self, tenant: &TenantId) -> Result<(), AuthError> {
        self.require(Scope::Admin)?;
        if &self.tenant == tenant || self.tenant.as_str() == OPERATOR_TENANT {
            Ok(())
        } else {
            Err(self.forbidden(Scope::Admin, None))
        }
    }
}

/// Verifies credentials against the key store and, when configured, the JWT keys.
#[derive(Debug)]
pub struct Authenticator {
    keys: KeyStore,
    jwt: Option<JwtVerifier>,
}

impl Authenticator {
    /// Combines a key store and an optional JWT verifier (`None`: JWTs are refused).
    pub fn new(keys: KeyStore, jwt: Option<JwtVerifier>) -> Self {
        Self { keys, jwt }
    }

    /// Authenticates a bare credential: a string with exactly two dots is verified as a JWT,
    /// anything else is looked up as an API key. An empty credential is
    /// [`AuthError::Unauthenticated`].
    ///
    /// Never does I/O: a JWT naming a key id missing from the JWK Set is refused; the actor uses
    /// [`Authenticator::authenticate_or_refetch`] instead.
    pub fn authenticate(&self, credential: &str) -> Result<Principal, AuthError> {
        match self.route(credential)? {
            Some(verifier) => verifier.verify(credential),
            None => self.keys.verify(credential),
        }
    }

    /// Authenticates like [`Authenticator::authenticate`], except that a JWT naming a key id
    /// missing from the JWK Set gives [`Verification::Refetch`]: a future that refetches the
    /// set (rate limited) and verifies again. Everything else is [`Verification::Ready`].
    pub fn authenticate_or_refetch(&self, credential: &str) -> Verification {
        match self.route(credential) {
            Ok(Some(verifier)) => verifier.verify_or_refetch(credential),
            Ok(None) => Verification::Ready(self.keys.verify(credential)),
            Err(e) => Verification::Ready(Err(e)),
        }
    }

    /// Tells what the credential is: `Some(verifier)` for a JWT, `None` for an API key.
    fn route(&self, credential: &str) -> Result<Option<&JwtVerifier>, AuthError> {
        if credential.is_empty() {
            return Err(AuthError::Unauthenticated);
        }
        if credential.len() > MAX_CREDENTIAL_LEN {
            // Not a key we could have issued nor a sane JWT; refuse before hashing or parsing.
            return Err(AuthError::invalid_token(format!(
                "credential longer than {MAX_CREDENTIAL_LEN} bytes"
            )));
        }
        if credential.bytes().filter(|&b| b == b'.').count() == 2 {
            return match &self.jwt {
                Some(verifier) => Ok(Some(verifier)),
                None => Err(AuthError::invalid_token(
                    "JWT authentication is not configured on this server",
                )),
            };
        }
        Ok(None)
    }

    /// The JWT verifier, when JWTs are configured.
    pub fn jwt(&self) -> Option<&JwtVerifier> {
        self.jwt.as_ref()
    }

    /// Creates and persists a new API key; the plaintext is in the returned [`NewKey`] only.
    pub fn create_key(&mut self, spec: KeySpec) -> Result<NewKey, AuthError> {
        self.keys.create(spec)
    }

    /// Revokes and persists the removal of the API key with `id`; returns whether it existed.
    pub fn revoke_key(&mut self, id: &str) -> Result<bool, AuthError> {
        self.keys.revoke(id)
    }

    /// The API key store.
    pub fn keys(&self) -> &KeyStore {
        &self.keys
    }

    /// Replaces the key store, e.g. with one freshly reloaded from disk.
    pub fn replace_keys(&mut self, keys: KeyStore) {
        self.keys = keys;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn principal(tenant: &str, scopes: &[Scope]) -> Principal {
        Principal::new(
            TenantId::new(tenant).unwrap(),
            scopes.iter().copied().map(Grant::all),
            "k",
        )
    }

    fn table(t: &str) -> TableName {
        TableName::new(t).unwrap()
    }

    #[test]
    fn table_grants_allow_only_their_table() {
        let p = Principal::new(
            TenantId::new("acme").unwrap(),
            [
                Grant::parse("ingest:clicks").unwrap(),
                Grant::parse("admin:orders").unwrap(),
            ],
            "k",
        );
        assert!(p.require_on(Scope::Ingest, &table("clicks")).is_ok());
        let err = p.require_on(Scope::Query, &table("clicks")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "forbidden: this credential of tenant \"acme\" lacks the query scope on table \"clicks\""
        );
        assert!(p.require_on(Scope::Ingest, &table("other")).is_err());
        // An admin grant on a table implies the other scopes there, not elsewhere.
        for s in [Scope::Ingest, Scope::Query, Scope::Admin] {
            assert!(p.require_on(s, &table("orders")).is_ok());
        }
        // Tenant-wide operations need a grant on every table; listing needs one on some.
        assert!(p.require(Scope::Ingest).is_err());
        assert!(p.require_some(Scope::Query).is_ok());
        assert!(p.require_admin_of(&TenantId::new("acme").unwrap()).is_err());
    }

    #[test]
    fn require_checks_scopes_and_admin_implies_the_others() {
        let ingest = principal("acme", &[Scope::Ingest]);
        assert!(ingest.require(Scope::Ingest).is_ok());
        let err = ingest.require(Scope::Query).unwrap_err();
        assert_eq!(err.code(), "forbidden");
        assert!(!err.is_unauthenticated());
        assert!(ingest.require(Scope::Admin).is_err());

        let admin = principal("acme", &[Scope::Admin]);
        for s in [Scope::Ingest, Scope::Query, Scope::Admin] {
            assert!(admin.require(s).is_ok());
        }
    }

    #[test]
    fn only_operator_admins_manage_other_tenants() {
        let acme = TenantId::new("acme").unwrap();
        let other = TenantId::new("other").unwrap();
        assert!(
            principal("acme", &[Scope::Admin])
                .require_admin_of(&acme)
                .is_ok()
        );
        assert!(
            principal("acme", &[Scope::Admin])
                .require_admin_of(&other)
                .is_err()
        );
        assert!(
            principal("acme", &[Scope::Ingest])
                .require_admin_of(&acme)
                .is_err()
        );
        assert!(
            principal("default", &[Scope::Admin])
                .require_admin_of(&other)
                .is_ok()
        );
        assert!(
            principal("default", &[Scope::Query])
                .require_admin_of(&other)
                .is_err()
        );
    }

    #[test]
    fn scope_serializes_lowercase() {
        assert_eq!(serde_json::to_string(&Scope::Ingest).unwrap(), "\"ingest\"");
        assert_eq!(
            serde_json::from_str::<Scope>("\"admin\"").unwrap(),
            Scope::Admin
        );
        assert!(serde_json::from_str::<Scope>("\"Admin\"").is_err());
        assert_eq!(Scope::parse("query"), Some(Scope::Query));
        assert_eq!(Scope::parse("root"), None);
    }

    #[test]
    fn authenticator_routes_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let mut keys = KeyStore::open(dir.path().join("keys.json")).unwrap();
        let new = keys
            .create(KeySpec::new(
                TenantId::new("acme").unwrap(),
                [Grant::all(Scope::Query)],
            ))
            .unwrap();
        let auth = Authenticator::new(keys, None);

        let p = auth.authenticate(&new.key).unwrap();
        assert_eq!(p.tenant.as_str(), "acme");
        assert_eq!(p.subject, new.info.id);

        assert_eq!(auth.authenticate("").unwrap_err().code(), "unauthenticated");
        let wrong = auth.authenticate("alv_nope").unwrap_err();
        assert_eq!(wrong.code(), "invalid_api_key");
        assert!(wrong.is_unauthenticated());
        // A JWT-shaped credential without a configured verifier is refused as a token.
        assert_eq!(
            auth.authenticate("a.b.c").unwrap_err().code(),
            "invalid_token"
        );
        let huge = "x".repeat(MAX_CREDENTIAL_LEN + 1);
        assert_eq!(
            auth.authenticate(&huge).unwrap_err().code(),
            "invalid_token"
        );
    }
}
