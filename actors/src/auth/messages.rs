//! Messages of the [`AuthActor`](super::AuthActor), each with its typed reply.

use std::fmt;

use actix::Message;

use super::{AuthError, KeyInfo, KeySpec, NewKey, Principal};
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

/// Creates an API key as `spec` says; the caller checks who may ask
/// ([`Principal::require_admin_of`](super::Principal::require_admin_of)).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<NewKey, AuthError>")]
pub struct CreateKey {
    /// What the key is to be.
    pub spec: KeySpec,
}

/// Lists the metadata of the stored API keys (never their secrets), ordered by id: those of
/// `tenant`, or of every tenant.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Vec<KeyInfo>")]
pub struct ListKeys {
    /// Only the keys of this tenant; `None`: every key.
    pub tenant: Option<TenantId>,
}

/// Revokes the API key with `id`, if `by` may manage keys of its tenant; replies with the
/// revoked key, or `None` when there is no such key (or one `by` may not see). Persisted before
/// it takes effect: once answered, the key authenticates nothing on this node.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<Option<KeyInfo>, AuthError>")]
pub struct RevokeKey {
    /// The key id.
    pub id: String,
    /// Who asks.
    pub by: Principal,
}
