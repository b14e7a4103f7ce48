//! The actor shell around [`Authenticator`]: answers [`Authenticate`], [`CreateKey`],
//! [`ListKeys`] and [`RevokeKey`].
//!
//! Verification is pure CPU work (a SHA-256 or one signature check) and runs inline, with one
//! exception: a JWT naming a key id the JWK Set does not hold is answered from a future that
//! refetches the set (rate limited, at most 5 s) and then verifies, so the actor keeps serving
//! other messages meanwhile. The actor also drives the periodic JWK Set refresh. Key creation
//! and revocation rewrite `keys.json` with fsyncs on the actor's thread; they are rare admin
//! operations, so the short stall is accepted rather than moving the store elsewhere. Under
//! supervision a restart reloads the key store from disk, the only durable state; the JWK Set
//! is kept, and its timer is set up again by `started`.

use actix::{Actor, AsyncContext, Context, Handler, Response, Supervised};

use super::messages::{Authenticate, CreateKey, ListKeys, RevokeKey};
use super::{AuthError, Authenticator, KeyInfo, KeyStore, NewKey, Principal, Verification};

/// Mailbox bound of the [`AuthActor`]. Every ingest and query request sends one
/// [`Authenticate`]; 1024 queued requests is well over a second of work at worst (RS256
/// verifications), so a longer queue would only add latency. A full mailbox makes senders
/// wait in `send().await`, which pushes back on the HTTP and NATS front ends instead of
/// growing memory.
pub const MAILBOX_CAPACITY: usize = 1024;

/// Owns the [`Authenticator`] (API key store and JWT verifier) of the process.
#[derive(Debug)]
pub struct AuthActor {
    auth: Authenticator,
}

impl AuthActor {
    /// Wraps an authenticator whose key store was opened (and bootstrapped) by the caller.
    pub fn new(auth: Authenticator) -> Self {
        Self { auth }
    }
}

impl Actor for AuthActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        // A restart clears the context's timers and `started` runs again: one timer at a time.
        if let Some(every) = self.auth.jwt().and_then(|j| j.jwks_refresh_every()) {
            ctx.run_interval(every, |act, ctx| {
                if let Some(refresh) = act.auth.jwt().and_then(|j| j.refresh_jwks()) {
                    ctx.spawn(actix::fut::wrap_future(refresh));
                }
            });
        }
        tracing::debug!(keys = self.auth.keys().len(), "auth actor started");
    }
}

impl Supervised for AuthActor {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        // Memory only changes after a successful write, so disk is the truth: reload it. If the
        // file cannot be read now, keep the last state that matched it rather than lose all keys.
        let path = self.auth.keys().path().to_path_buf();
        match KeyStore::open(path.clone()) {
            Ok(store) => {
                tracing::info!(path = %path.display(), keys = store.len(), "auth actor restarted, key store reloaded");
                self.auth.replace_keys(store);
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "auth actor restarted, key store reload failed, keeping previous keys");
            }
        }
    }
}

impl Handler<Authenticate> for AuthActor {
    type Result = Response<Result<Principal, AuthError>>;

    fn handle(&mut self, msg: Authenticate, _ctx: &mut Self::Context) -> Self::Result {
        match self.auth.authenticate_or_refetch(&msg.credential) {
            Verification::Ready(result) => Response::reply(logged(result)),
            // Runs as its own task: the mailbox is not held up while the JWK Set is fetched.
            Verification::Refetch(pending) => Response::fut(async move { logged(pending.await) }),
        }
    }
}

fn logged(result: Result<Principal, AuthError>) -> Result<Principal, AuthError> {
    if let Err(e) = &result {
        tracing::debug!(code = e.code(), "authentication refused");
    }
    result
}

impl Handler<CreateKey> for AuthActor {
    type Result = Result<NewKey, AuthError>;

    fn handle(&mut self, msg: CreateKey, _ctx: &mut Self::Context) -> Self::Result {
        self.auth.create_key(msg.spec)
    }
}

impl Handler<ListKeys> for AuthActor {
    type Result = Vec<KeyInfo>;

    fn handle(&mut self, msg: ListKeys, _ctx: &mut Self::Context) -> Self::Result {
        let mut keys = self.auth.keys().list();
        if let Some(tenant) = &msg.tenant {
            keys.retain(|k| &k.tenant == tenant);
        }
        keys
    }
}

impl Handler<RevokeKey> for AuthActor {
    type Result = Result<Option<KeyInfo>, AuthError>;

    fn handle(&mut self, msg: RevokeKey, _ctx: &mut Self::Context) -> Self::Result {
        // Only admins learn anything, and another tenant's key is not found rather than
        // forbidden: ids cannot be probed.
        msg.by.require(crate::auth::Scope::Admin)?;
        let Some(info) = self.auth.keys().get(&msg.id).cloned() else {
            return Ok(None);
        };
        if msg.by.require_admin_of(&info.tenant).is_err() {
            return Ok(None);
        }
        Ok(self.auth.revoke_key(&msg.id)?.then_some(info))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use super::*;
    use crate::auth::{Grant, JwtConfig, JwtVerifier, KeySpec, Scope, mint_hs256};
    use crate::ids::TenantId;

    const SECRET: &str = "actor-test-secret-long-enough-0123456789";

    fn start(dir: &std::path::Path) -> actix::Addr<AuthActor> {
        let keys = KeyStore::open(dir.join("keys.json")).unwrap();
        let jwt = JwtVerifier::new(&JwtConfig {
            hs256_secret: Some(SECRET.into()),
            ..JwtConfig::default()
        })
        .unwrap();
        AuthActor::new(Authenticator::new(keys, jwt)).start()
    }

    #[actix::test]
    async fn creates_keys_and_authenticates_through_messages() {
        let dir = tempfile::tempdir().unwrap();
        let addr = start(dir.path());
        let acme = TenantId::new("acme").unwrap();

        let new = addr
            .send(CreateKey {
                spec: KeySpec::new(acme.clone(), [Grant::all(Scope::Ingest)]).label("producer"),
            })
            .await
            .unwrap()
            .unwrap();
        let p = addr
            .send(Authenticate {
                credential: new.key.clone(),
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(p.tenant, acme);
        assert!(p.require(Scope::Ingest).is_ok());
        assert_eq!(p.require(Scope::Query).unwrap_err().code(), "forbidden");

        let token = mint_hs256(
            SECRET,
            &acme,
            &BTreeSet::from([Grant::all(Scope::Query)]),
            Duration::from_secs(60),
            None,
            None,
        )
        .unwrap();
        let p = addr
            .send(Authenticate { credential: token })
            .await
            .unwrap()
            .unwrap();
        assert!(p.require(Scope::Query).is_ok());

        let bad = addr
            .send(Authenticate {
                credential: String::new(),
            })
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(bad.code(), "unauthenticated");

        let listed = addr.send(ListKeys { tenant: None }).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, new.info.id);
        let other = TenantId::new("other").unwrap();
        assert!(
            addr.send(ListKeys {
                tenant: Some(other.clone())
            })
            .await
            .unwrap()
            .is_empty()
        );

        // Another tenant's admin does not see the key, let alone revoke it.
        let outsider = Principal::new(other, [Grant::all(Scope::Admin)], "x");
        let revoke = |by: &Principal| RevokeKey {
            id: new.info.id.clone(),
            by: by.clone(),
        };
        assert_eq!(addr.send(revoke(&outsider)).await.unwrap().unwrap(), None);
        let ingest_only = Principal::new(acme.clone(), [Grant::all(Scope::Ingest)], "y");
        assert_eq!(
            addr.send(revoke(&ingest_only))
                .await
                .unwrap()
                .unwrap_err()
                .code(),
            "forbidden"
        );
        // Not even whether an id exists.
        let probe = RevokeKey {
            id: "0000000000000000".into(),
            by: ingest_only.clone(),
        };
        assert_eq!(
            addr.send(probe).await.unwrap().unwrap_err().code(),
            "forbidden"
        );
        let admin = Principal::new(acme.clone(), [Grant::all(Scope::Admin)], "z");
        let revoked = addr.send(revoke(&admin)).await.unwrap().unwrap().unwrap();
        assert_eq!(revoked.id, new.info.id);
        assert_eq!(addr.send(revoke(&admin)).await.unwrap().unwrap(), None);
        let gone = addr
            .send(Authenticate {
                credential: new.key.clone(),
            })
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(gone.code(), "invalid_api_key");
    }

    #[actix::test]
    async fn restart_reloads_keys_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        // Another writer (the CLI, a restore) changed the file after the actor loaded it.
        let mut actor = AuthActor::new(Authenticator::new(
            KeyStore::open(dir.path().join("keys.json")).unwrap(),
            None,
        ));
        let mut other = KeyStore::open(dir.path().join("keys.json")).unwrap();
        let new = other
            .create(KeySpec::new(
                TenantId::new("acme").unwrap(),
                [Grant::all(Scope::Query)],
            ))
            .unwrap();
        assert!(actor.auth.authenticate(&new.key).is_err());
        let mut ctx = Context::new();
        actor.restarting(&mut ctx);
        assert_eq!(
            actor.auth.authenticate(&new.key).unwrap().tenant.as_str(),
            "acme"
        );
    }
}
