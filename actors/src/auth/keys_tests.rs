//! Tests of the API key store and bootstrap.

#![allow(clippy::unwrap_used)]

use super::*;

fn tenant(name: &str) -> TenantId {
    TenantId::new(name).unwrap()
}

fn spec(
    tenant: TenantId,
    scopes: impl IntoIterator<Item = Scope>,
    label: Option<String>,
) -> KeySpec {
    KeySpec {
        label,
        ..KeySpec::new(tenant, scopes.into_iter().map(Grant::all))
    }
}

fn grants(scopes: &[Scope]) -> BTreeSet<Grant> {
    scopes.iter().copied().map(Grant::all).collect()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn create_then_verify_roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = KeyStore::open(dir.path().join("keys.json")).unwrap();
    assert!(store.is_empty());
    let scopes = BTreeSet::from([Scope::Ingest, Scope::Query]);
    let new = store
        .create(spec(tenant("acme"), scopes.clone(), Some("ci".into())))
        .unwrap();
    assert!(new.key.starts_with(KEY_PREFIX));
    assert_eq!(new.key.len(), KEY_PREFIX.len() + KEY_RANDOM_CHARS);
    assert!(
        new.key[KEY_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric())
    );
    assert_eq!(new.info.id.len(), 16);

    let p = store.verify(&new.key).unwrap();
    assert_eq!(p.tenant, tenant("acme"));
    assert_eq!(p.scopes, scopes.iter().copied().map(Grant::all).collect());
    assert_eq!(p.subject, new.info.id);
    assert_eq!(store.list().len(), 1);
    assert_eq!(mode(store.path()), 0o600);
}

#[test]
fn wrong_truncated_and_empty_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = KeyStore::open(dir.path().join("keys.json")).unwrap();
    let new = store
        .create(spec(tenant("acme"), [Scope::Ingest], None))
        .unwrap();
    assert!(store.verify("").is_err());
    assert!(store.verify(&new.key[..new.key.len() - 1]).is_err());
    assert!(store.verify(&format!("{}x", new.key)).is_err());
    let mut flipped = new.key.clone().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'a' { b'b' } else { b'a' };
    assert!(store.verify(&String::from_utf8(flipped).unwrap()).is_err());
    assert!(
        store
            .verify("alv_0000000000000000000000000000000000000000")
            .is_err()
    );
}

#[test]
fn keys_persist_across_reopen_without_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let mut store = KeyStore::open(path.clone()).unwrap();
    let a = store
        .create(spec(tenant("acme"), [Scope::Ingest], Some("a".into())))
        .unwrap();
    let b = store
        .create(spec(tenant("beta"), [Scope::Admin], None))
        .unwrap();
    drop(store);

    let text = fs::read_to_string(&path).unwrap();
    assert!(!text.contains(&a.key) && !text.contains(&b.key));
    assert!(!text.contains(&a.key[KEY_PREFIX.len()..]));
    assert!(text.contains(&hex(&sha256(&a.key))));

    let store = KeyStore::open(path).unwrap();
    assert_eq!(store.len(), 2);
    assert_eq!(store.verify(&a.key).unwrap().tenant, tenant("acme"));
    assert_eq!(
        store.verify(&b.key).unwrap().scopes,
        grants(&[Scope::Admin])
    );
    let infos = store.list();
    assert!(infos.iter().any(|i| i.label.as_deref() == Some("a")));
}

#[test]
fn revoke_removes_the_key_durably() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let mut store = KeyStore::open(path.clone()).unwrap();
    let a = store
        .create(spec(tenant("acme"), [Scope::Query], None))
        .unwrap();
    assert!(store.revoke(&a.info.id).unwrap());
    assert!(!store.revoke(&a.info.id).unwrap());
    assert!(store.verify(&a.key).is_err());
    assert!(KeyStore::open(path).unwrap().is_empty());
}

#[test]
fn corrupt_store_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    for bad in [
        "{not json",
        r#"{"version":2,"keys":[]}"#,
        r#"{"version":1,"keys":[{"id":"00","sha256":"zz","tenant":"a","scopes":[],"created_at":"x"}]}"#,
        r#"{"version":1,"keys":[],"extra":1}"#,
    ] {
        fs::write(&path, bad).unwrap();
        let err = KeyStore::open(path.clone()).unwrap_err();
        assert_eq!(err.code(), "key_store_corrupt", "{bad}");
        assert!(err.to_string().contains("keys.json"));
    }
    // A record whose id does not match its digest was tampered with.
    let digest = hex(&sha256("some-key-material"));
    let forged = format!(
        r#"{{"version":1,"keys":[{{"id":"0000000000000000","sha256":"{digest}","tenant":"a","scopes":["admin"],"created_at":"2026-01-01T00:00:00Z"}}]}}"#
    );
    fs::write(&path, forged).unwrap();
    assert!(
        KeyStore::open(path)
            .unwrap_err()
            .to_string()
            .contains("does not match")
    );
}

#[test]
fn invalid_requests_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let mut store = KeyStore::open(path.clone()).unwrap();
    let err = store
        .create(spec(tenant("a"), BTreeSet::new(), None))
        .unwrap_err();
    assert_eq!(err.code(), "invalid_key_request");
    let long = "x".repeat(MAX_LABEL_CHARS + 1);
    assert!(
        store
            .create(spec(tenant("a"), [Scope::Query], Some(long)))
            .is_err()
    );
    assert!(
        store
            .create(spec(tenant("a"), [Scope::Query], Some("a\nb".into())))
            .is_err()
    );
    for bad in [
        "short",
        "has a space in it!!",
        "a.b.c-sixteen-chars-x",
        "é-not-ascii-0123456",
    ] {
        let err = store
            .insert_plaintext(bad, spec(tenant("a"), [Scope::Admin], None))
            .unwrap_err();
        assert_eq!(err.code(), "invalid_key_request", "{bad}");
    }
    assert!(store.is_empty());
    assert!(!path.exists());

    store
        .insert_plaintext("0123456789abcdef", spec(tenant("a"), [Scope::Admin], None))
        .unwrap();
    let dup = store
        .insert_plaintext("0123456789abcdef", spec(tenant("b"), [Scope::Admin], None))
        .unwrap_err();
    assert_eq!(dup.code(), "invalid_key_request");
}

#[test]
fn bootstrap_from_env() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = KeyStore::open(dir.path().join("keys.json")).unwrap();
    let key = "my-bootstrap-secret-0001";
    let out = bootstrap(&mut store, Some(key.into()), dir.path()).unwrap();
    let Bootstrap::FromEnv { id } = out else {
        panic!("expected FromEnv, got {out:?}");
    };
    let p = store.verify(key).unwrap();
    assert_eq!(p.tenant.as_str(), OPERATOR_TENANT);
    assert_eq!(p.scopes, grants(&[Scope::Admin]));
    assert_eq!(p.subject, id);
    assert!(!dir.path().join(BOOTSTRAP_FILE).exists());

    // Second start: keys exist, nothing happens even with another env key.
    let again = bootstrap(&mut store, Some("another-key-0123456".into()), dir.path()).unwrap();
    assert!(matches!(again, Bootstrap::AlreadyHasKeys));
    assert_eq!(store.len(), 1);

    let mut empty = KeyStore::open(dir.path().join("other.json")).unwrap();
    let err = bootstrap(&mut empty, Some("tiny".into()), dir.path()).unwrap_err();
    assert_eq!(err.code(), "invalid_key_request");
}

#[test]
fn bootstrap_generated_writes_a_private_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = KeyStore::open(dir.path().join("keys.json")).unwrap();
    let out = bootstrap(&mut store, None, dir.path()).unwrap();
    let debug = format!("{out:?}");
    let Bootstrap::Generated { id, key, path } = out else {
        panic!("expected Generated, got {out:?}");
    };
    assert!(!debug.contains(&key), "Debug leaks the key: {debug}");
    assert_eq!(path, dir.path().join(BOOTSTRAP_FILE));
    assert_eq!(mode(&path), 0o600);
    assert_eq!(fs::read_to_string(&path).unwrap().trim_end(), key);
    let p = store.verify(&key).unwrap();
    assert_eq!(p.subject, id);
    assert!(p.require(Scope::Ingest).is_ok());
    // Survives a restart, and the restart does not bootstrap again.
    let mut reopened = KeyStore::open(dir.path().join("keys.json")).unwrap();
    assert!(reopened.verify(&key).is_ok());
    assert!(matches!(
        bootstrap(&mut reopened, None, dir.path()).unwrap(),
        Bootstrap::AlreadyHasKeys
    ));
}

#[test]
fn new_key_debug_redacts_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = KeyStore::open(dir.path().join("keys.json")).unwrap();
    let new = store
        .create(spec(tenant("acme"), [Scope::Query], None))
        .unwrap();
    let debug = format!("{new:?}");
    assert!(!debug.contains(&new.key));
    assert!(debug.contains("<redacted>"));
}

#[test]
fn hex_roundtrip() {
    let d = sha256("abc");
    assert_eq!(unhex32(&hex(&d)), Some(d));
    assert_eq!(unhex32(&hex(&d).to_uppercase()), None);
    assert_eq!(unhex32("ab"), None);
}

#[test]
fn expiry_and_quota_persist_and_expired_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let mut store = KeyStore::open(path.clone()).unwrap();
    let quota = Quota {
        events_per_sec: Some(100),
        bytes_per_sec: None,
    };
    let soon = Utc::now() + chrono::Duration::milliseconds(1500);
    let new = store
        .create(KeySpec {
            expires_at: Some(soon),
            quota: Some(quota),
            ..spec(tenant("acme"), [Scope::Ingest], None)
        })
        .unwrap();
    let p = store.verify(&new.key).unwrap();
    assert_eq!(p.quota, Some(quota));
    let reopened = KeyStore::open(path.clone()).unwrap();
    let info = reopened.get(&new.info.id).unwrap();
    assert_eq!(info.quota, Some(quota));
    assert_eq!(
        info.expires_at.map(|t| t.timestamp()),
        Some(soon.timestamp())
    );
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let err = reopened.verify(&new.key).unwrap_err();
    assert_eq!(err.code(), "key_expired");
    assert!(err.is_unauthenticated());

    // A past expiry, a zero quota and a table grant with a bad name are refused at creation.
    let past = KeySpec {
        expires_at: Some(Utc::now() - chrono::Duration::seconds(1)),
        ..spec(tenant("acme"), [Scope::Ingest], None)
    };
    assert_eq!(
        store.create(past).unwrap_err().code(),
        "invalid_key_request"
    );
    let zero = KeySpec {
        quota: Some(Quota {
            events_per_sec: Some(0),
            bytes_per_sec: None,
        }),
        ..spec(tenant("acme"), [Scope::Ingest], None)
    };
    assert_eq!(
        store.create(zero).unwrap_err().code(),
        "invalid_key_request"
    );
    // Table grants round-trip through the file.
    let scoped = store
        .create(KeySpec::new(
            tenant("acme"),
            [Grant::parse("ingest:clicks").unwrap()],
        ))
        .unwrap();
    let reopened = KeyStore::open(path).unwrap();
    assert_eq!(
        reopened.verify(&scoped.key).unwrap().scopes,
        BTreeSet::from([Grant::parse("ingest:clicks").unwrap()])
    );
}
