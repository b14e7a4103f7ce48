//! The API key store: `<data_dir>/keys.json`, holding SHA-256 digests of keys, never the keys.
//!
//! A key is any credential string; its id is the hex of the first 8 bytes of its SHA-256 digest.
//! Verification hashes the presented credential, looks the id up (a map lookup, which reveals at
//! most that a digest prefix exists) and compares the full 32-byte digest in constant time.
//! Generated keys are `alv_` followed by 40 random alphanumeric characters (about 238 bits).
//!
//! Every change is written to disk before it becomes visible in memory: the whole file is
//! rewritten atomically (temp file with mode 0600, fsync, rename, directory fsync), so a crash
//! leaves either the old or the new store, never a torn one, and an acknowledged key survives.
//! [`bootstrap`] creates the first admin key when the store is empty.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{AuthError, Grant, OPERATOR_TENANT, Principal, Quota, Scope};
use crate::ids::TenantId;

/// The version written in, and required of, `keys.json`.
const FORMAT_VERSION: u32 = 1;
/// The prefix of generated keys, so leaked keys are recognizable by secret scanners.
pub const KEY_PREFIX: &str = "alv_";
/// Random characters after the prefix of a generated key.
const KEY_RANDOM_CHARS: usize = 40;
/// Length bounds of a user-provided key (the bootstrap key from the environment), in bytes.
const USER_KEY_LEN: std::ops::RangeInclusive<usize> = 16..=256;
/// The longest label accepted, in characters.
const MAX_LABEL_CHARS: usize = 128;
/// The name of the file a generated bootstrap key is written to, inside the data directory.
pub const BOOTSTRAP_FILE: &str = "bootstrap.key";

/// Public metadata of a stored key; holds nothing that authenticates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    /// The key id: hex of the first 8 bytes of SHA-256(key).
    pub id: String,
    /// The tenant the key authenticates as.
    pub tenant: TenantId,
    /// The scopes the key grants.
    pub scopes: BTreeSet<Grant>,
    /// A free-form label given at creation.
    pub label: Option<String>,
    /// When the key was created.
    #[serde(serialize_with = "ser_time")]
    pub created_at: DateTime<Utc>,
    /// When the key stops authenticating; `None`: never.
    #[serde(
        serialize_with = "ser_opt_time",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_at: Option<DateTime<Utc>>,
    /// Its rate limits; `None`: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
}

/// What a new key is to be: everything but its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    /// The tenant it authenticates as.
    pub tenant: TenantId,
    /// The scopes it grants; at least one.
    pub scopes: BTreeSet<Grant>,
    /// A free-form label, at most 128 characters.
    pub label: Option<String>,
    /// When it stops authenticating (in the future); `None`: never.
    pub expires_at: Option<DateTime<Utc>>,
    /// Its rate limits; `None`: none.
    pub quota: Option<Quota>,
}

impl KeySpec {
    /// A key of `tenant` with `scopes`, no label, expiry or quota.
    pub fn new(tenant: TenantId, scopes: impl IntoIterator<Item = Grant>) -> Self {
        KeySpec {
            tenant,
            scopes: scopes.into_iter().collect(),
            label: None,
            expires_at: None,
            quota: None,
        }
    }

    /// With a label.
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }
}

/// A freshly created key: the only time its plaintext exists outside the client.
#[derive(Clone, Serialize)]
pub struct NewKey {
    /// The plaintext key, to be shown to the user exactly once.
    pub key: String,
    /// Its metadata, as stored.
    #[serde(flatten)]
    pub info: KeyInfo,
}

impl fmt::Debug for NewKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewKey")
            .field("key", &"<redacted>")
            .field("info", &self.info)
            .finish()
    }
}

fn ser_opt_time<S: serde::Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => ser_time(t, s),
        None => s.serialize_none(),
    }
}

fn ser_time<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Secs, true))
}

/// One key as it lives in memory.
#[derive(Clone)]
struct StoredKey {
    digest: [u8; 32],
    info: KeyInfo,
}

/// One key as it lives in `keys.json`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRecord {
    id: String,
    sha256: String,
    tenant: TenantId,
    scopes: BTreeSet<Grant>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label: Option<String>,
    created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    quota: Option<Quota>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    version: u32,
    keys: Vec<KeyRecord>,
}

/// The persistent set of API keys of all tenants.
pub struct KeyStore {
    path: PathBuf,
    keys: BTreeMap<String, StoredKey>,
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyStore")
            .field("path", &self.path)
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl KeyStore {
    /// Opens the store at `path`: a missing file is an empty store, an unreadable or corrupt one
    /// an error naming the file (the server must not start with keys it cannot trust).
    pub fn open(path: PathBuf) -> Result<Self, AuthError> {
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Ok(Self {
                    path,
                    keys: BTreeMap::new(),
                });
            }
            Err(e) => return Err(AuthError::io(path, e)),
        };
        if let Ok(meta) = fs::metadata(&path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(path = %path.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777), "key store readable by other users, expected mode 600");
        }
        let keys = parse_key_file(&bytes).map_err(|reason| AuthError::KeyStoreCorrupt {
            path: path.clone(),
            reason,
        })?;
        tracing::debug!(path = %path.display(), keys = keys.len(), "key store opened");
        Ok(Self { path, keys })
    }

    /// The file the store persists to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tells whether the store holds no key at all (the bootstrap condition).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The number of stored keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Lists the metadata of every key, ordered by id.
    pub fn list(&self) -> Vec<KeyInfo> {
        self.keys.values().map(|k| k.info.clone()).collect()
    }

    /// Generates a key as `spec` says, persists its digest and returns the plaintext.
    pub fn create(&mut self, spec: KeySpec) -> Result<NewKey, AuthError> {
        validate_request(&spec)?;
        // Ids are 64-bit digest prefixes; a collision is astronomically unlikely, but retrying
        // costs nothing and keeps ids unique.
        for _ in 0..4 {
            let key = generate_key();
            let digest = sha256(&key);
            let id = key_id(&digest);
            if self.keys.contains_key(&id) {
                continue;
            }
            let info = self.add(digest, id, spec)?;
            return Ok(NewKey { key, info });
        }
        Err(AuthError::invalid_request(
            "could not generate a key with a unique id",
        ))
    }

    /// Stores a user-chosen key (the bootstrap key from the environment): 16 to 256 printable
    /// ASCII characters without spaces, not shaped like a JWT (two dots), not already stored.
    pub fn insert_plaintext(&mut self, key: &str, spec: KeySpec) -> Result<KeyInfo, AuthError> {
        validate_request(&spec)?;
        validate_user_key(key)?;
        let digest = sha256(key);
        let id = key_id(&digest);
        if self.keys.contains_key(&id) {
            return Err(AuthError::invalid_request(format!(
                "a key with id {id} already exists"
            )));
        }
        self.add(digest, id, spec)
    }

    /// Removes the key with `id`; returns whether it existed. Persisted before it takes effect.
    pub fn revoke(&mut self, id: &str) -> Result<bool, AuthError> {
        let Some(removed) = self.keys.remove(id) else {
            return Ok(false);
        };
        if let Err(e) = self.persist() {
            self.keys.insert(id.to_owned(), removed);
            return Err(e);
        }
        tracing::info!(key_id = id, "api key revoked");
        Ok(true)
    }

    /// The key with `id`, if stored.
    pub fn get(&self, id: &str) -> Option<&KeyInfo> {
        self.keys.get(id).map(|k| &k.info)
    }

    /// Returns the principal of `credential` if it is a stored key whose expiry has not
    /// passed: [`AuthError::InvalidApiKey`] for an unknown key, [`AuthError::KeyExpired`] for
    /// an expired one.
    pub fn verify(&self, credential: &str) -> Result<Principal, AuthError> {
        if credential.is_empty() {
            return Err(AuthError::InvalidApiKey);
        }
        let digest = sha256(credential);
        let stored = self
            .keys
            .get(&key_id(&digest))
            .ok_or(AuthError::InvalidApiKey)?;
        if !bool::from(stored.digest.ct_eq(&digest)) {
            return Err(AuthError::InvalidApiKey);
        }
        let info = &stored.info;
        if let Some(at) = info.expires_at
            && at <= Utc::now()
        {
            return Err(AuthError::KeyExpired {
                expired_at: at.to_rfc3339_opts(SecondsFormat::Secs, true),
            });
        }
        Ok(Principal {
            tenant: info.tenant.clone(),
            scopes: info.scopes.clone(),
            subject: info.id.clone(),
            quota: info.quota.filter(|q| !q.is_unlimited()),
        })
    }

    /// Adds a key and persists the store; memory changes only when the write succeeded.
    fn add(&mut self, digest: [u8; 32], id: String, spec: KeySpec) -> Result<KeyInfo, AuthError> {
        let info = KeyInfo {
            id: id.clone(),
            tenant: spec.tenant,
            scopes: spec.scopes,
            label: spec.label,
            created_at: Utc::now(),
            expires_at: spec.expires_at,
            quota: spec.quota,
        };
        self.keys.insert(
            id.clone(),
            StoredKey {
                digest,
                info: info.clone(),
            },
        );
        if let Err(e) = self.persist() {
            self.keys.remove(&id);
            return Err(e);
        }
        tracing::info!(key_id = %info.id, tenant = %info.tenant, scopes = ?info.scopes, "api key created");
        Ok(info)
    }

    fn persist(&self) -> Result<(), AuthError> {
        let file = KeyFile {
            version: FORMAT_VERSION,
            keys: self
                .keys
                .values()
                .map(|k| KeyRecord {
                    id: k.info.id.clone(),
                    sha256: hex(&k.digest),
                    tenant: k.info.tenant.clone(),
                    scopes: k.info.scopes.clone(),
                    label: k.info.label.clone(),
                    created_at: k.info.created_at.to_rfc3339_opts(SecondsFormat::Secs, true),
                    expires_at: k
                        .info
                        .expires_at
                        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
                    quota: k.info.quota,
                })
                .collect(),
        };
        let mut bytes = serde_json::to_vec_pretty(&file)
            .map_err(|e| AuthError::io(&self.path, std::io::Error::other(e)))?;
        bytes.push(b'\n');
        write_private_file(&self.path, &bytes)
    }
}

/// What [`bootstrap`] did.
#[derive(Clone)]
pub enum Bootstrap {
    /// The store already held keys; nothing was created.
    AlreadyHasKeys,
    /// The admin key was taken from the environment; only its id is known here.
    FromEnv {
        /// The key id.
        id: String,
    },
    /// A key was generated and written to `path`; the caller prints it once.
    Generated {
        /// The key id.
        id: String,
        /// The plaintext key.
        key: String,
        /// The file it was written to (`<data_dir>/bootstrap.key`, mode 0600).
        path: PathBuf,
    },
}

impl fmt::Debug for Bootstrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bootstrap::AlreadyHasKeys => f.write_str("AlreadyHasKeys"),
            Bootstrap::FromEnv { id } => f.debug_struct("FromEnv").field("id", id).finish(),
            Bootstrap::Generated { id, path, .. } => f
                .debug_struct("Generated")
                .field("id", id)
                .field("key", &"<redacted>")
                .field("path", path)
                .finish(),
        }
    }
}

/// If the store is empty, creates the admin key of tenant `default` from `env_key` (the value of
/// `ALLUVIUM_BOOTSTRAP_KEY`) or, without one, generates it and writes it to
/// `<data_dir>/bootstrap.key` (mode 0600, fsynced) so the caller can print it once. Returns what
/// happened; a store that already has keys is left untouched and `env_key` is ignored.
pub fn bootstrap(
    store: &mut KeyStore,
    env_key: Option<String>,
    data_dir: &Path,
) -> Result<Bootstrap, AuthError> {
    if !store.is_empty() {
        if env_key.is_some() {
            tracing::info!(
                "bootstrap key from the environment ignored, key store already has keys"
            );
        }
        return Ok(Bootstrap::AlreadyHasKeys);
    }
    let tenant = TenantId::new(OPERATOR_TENANT)
        .map_err(|e| AuthError::config(format!("operator tenant: {e}")))?;
    let spec = KeySpec::new(tenant, [Grant::all(Scope::Admin)]).label("bootstrap");
    match env_key {
        Some(key) => {
            let info = store.insert_plaintext(&key, spec)?;
            tracing::info!(key_id = %info.id, tenant = OPERATOR_TENANT, "bootstrap admin key created from the environment");
            Ok(Bootstrap::FromEnv { id: info.id })
        }
        None => {
            let key = generate_key();
            let path = data_dir.join(BOOTSTRAP_FILE);
            // The file is written before the store: a crash in between leaves an empty store, so
            // the next start generates a new key and overwrites the file. The other order could
            // persist a key nobody ever saw.
            write_private_file(&path, format!("{key}\n").as_bytes())?;
            let info = store.insert_plaintext(&key, spec)?;
            tracing::info!(key_id = %info.id, tenant = OPERATOR_TENANT, path = %path.display(), "bootstrap admin key generated");
            Ok(Bootstrap::Generated {
                id: info.id,
                key,
                path,
            })
        }
    }
}

/// Writes `contents` to `path` atomically with mode 0600: temp file, fsync, rename, dir fsync.
pub(crate) fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), AuthError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(|e| AuthError::io(&dir, e))?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // `mode` applies only when the file is created; a leftover temp file keeps its old mode.
        f.set_permissions(Permissions::from_mode(0o600))?;
        f.write_all(contents)?;
        f.sync_all()
    };
    write().map_err(|e| AuthError::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| AuthError::io(path, e))?;
    // The rename is durable only once the directory entry is.
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AuthError::io(&dir, e))
}

fn parse_key_file(bytes: &[u8]) -> Result<BTreeMap<String, StoredKey>, String> {
    let file: KeyFile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if file.version != FORMAT_VERSION {
        return Err(format!(
            "unsupported format version {} (expected {FORMAT_VERSION})",
            file.version
        ));
    }
    let mut keys = BTreeMap::new();
    for (i, rec) in file.keys.into_iter().enumerate() {
        let digest = unhex32(&rec.sha256)
            .ok_or_else(|| format!("key #{i}: sha256 is not 64 lowercase hex digits"))?;
        if rec.id != key_id(&digest) {
            return Err(format!(
                "key #{i}: id {:?} does not match its digest",
                rec.id
            ));
        }
        let created_at = DateTime::parse_from_rfc3339(&rec.created_at)
            .map_err(|e| format!("key {}: created_at: {e}", rec.id))?
            .with_timezone(&Utc);
        let expires_at = rec
            .expires_at
            .as_deref()
            .map(|t| {
                DateTime::parse_from_rfc3339(t)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| format!("key {}: expires_at: {e}", rec.id))
            })
            .transpose()?;
        let info = KeyInfo {
            id: rec.id.clone(),
            tenant: rec.tenant,
            scopes: rec.scopes,
            label: rec.label,
            created_at,
            expires_at,
            quota: rec.quota,
        };
        if keys
            .insert(rec.id.clone(), StoredKey { digest, info })
            .is_some()
        {
            return Err(format!("key id {} appears twice", rec.id));
        }
    }
    Ok(keys)
}

fn validate_request(spec: &KeySpec) -> Result<(), AuthError> {
    if spec.scopes.is_empty() {
        return Err(AuthError::invalid_request("at least one scope is required"));
    }
    if let Some(at) = spec.expires_at
        && at <= Utc::now()
    {
        return Err(AuthError::invalid_request(
            "expires_at must be in the future",
        ));
    }
    if let Some(q) = &spec.quota {
        q.validate().map_err(AuthError::invalid_request)?;
    }
    if let Some(label) = spec.label.as_deref() {
        if label.chars().count() > MAX_LABEL_CHARS {
            return Err(AuthError::invalid_request(format!(
                "label longer than {MAX_LABEL_CHARS} characters"
            )));
        }
        if label.chars().any(char::is_control) {
            return Err(AuthError::invalid_request(
                "label must not contain control characters",
            ));
        }
    }
    Ok(())
}

fn validate_user_key(key: &str) -> Result<(), AuthError> {
    if !USER_KEY_LEN.contains(&key.len()) {
        return Err(AuthError::invalid_request(format!(
            "a key must be {} to {} characters long",
            USER_KEY_LEN.start(),
            USER_KEY_LEN.end()
        )));
    }
    // Graphic ASCII only: the key travels in HTTP and NATS headers.
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AuthError::invalid_request(
            "a key must consist of printable ASCII characters without spaces",
        ));
    }
    if key.bytes().filter(|&b| b == b'.').count() == 2 {
        return Err(AuthError::invalid_request(
            "a key must not contain exactly two dots (it would be taken for a JWT)",
        ));
    }
    Ok(())
}

/// Generates `alv_` + 40 random alphanumeric characters from the thread-local CSPRNG.
fn generate_key() -> String {
    let random: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(KEY_RANDOM_CHARS)
        .map(char::from)
        .collect();
    format!("{KEY_PREFIX}{random}")
}

fn sha256(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

fn key_id(digest: &[u8; 32]) -> String {
    hex(&digest[..8])
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
#[path = "keys_tests.rs"]
mod tests;
