//! Messages of the [`AuthActor`](super::AuthActor), each with its typed reply.

use std::collections::BTreeSet;
use std::fmt;

use actix::Message;

use super::{AuthError, KeyInfo, NewKey, Principal, Scope};
use crate::ids::TenantId;

/// Authenticates a bare credential (API key or JWT). Data path: send with `send().await`.
#[derive(Message, Clone)]
#[rtype(result = "Result<Principal, AuthError>")]
pub struct Authenticate {
    /// The credential, without the `Bearer ` prefix.
    pub credential: String,
}

impl fmt::Debug for Authenticate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The credential is a secret: show only its size.
        f.debug_struct("Authenticate")
            .field("credential_len", &self.credential.len())
            .finish()
    }
}

/// Creates an API key for `tenant` with `scopes`; the caller checks who may ask
/// ([`Principal::require_admin_of`](super::Principal::require_admin_of)).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<NewKey, AuthError>")]
pub struct CreateKey {
    /// The tenant the key will authenticate as.
    pub tenant: TenantId,
    /// The scopes the key will grant; at least one.
    pub scopes: BTreeSet<Scope>,
    /// A free-form label, at most 128 characters.
    pub label: Option<String>,
}

/// Lists the metadata of every stored API key (never their secrets).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Vec<KeyInfo>")]
pub struct ListKeys;

/// Revokes the API key with `id`; replies whether it existed.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<bool, AuthError>")]
pub struct RevokeKey {
    /// The key id.
    pub id: String,
}
