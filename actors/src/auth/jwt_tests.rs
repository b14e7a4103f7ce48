//! Tests of JWT verification and minting. The PEM keys below are throwaway test data generated
//! with `openssl genpkey` for these tests only.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::auth::{Grant, Scope};
use serde_json::{Value, json};

use super::*;

const RSA_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQCdxZD67WndziH2
LjzPwfEFXf8BOKaDxFkzHkuej2poqMpYNwcZTCXbtv3/BisPsDPyOiUUNv71ifxO
Mk0I2DkkEBdesICU5YIZfZRIYDBiNAyJ0zr6lAQaazrxckDq+1LPjYwuuTWZNfir
p4br3w0Z2VSu7lp0Ny5G+7V0gpkZC0sJyfyNJRqjLu1PxszaoqHZdS7SvleUPY+o
MFsvwD+GyzjS6E6SHATBgV1f7dDXFIyZ7kHFQCtx9oszoHrVfkUkvI8gNFWfk+Ny
KjglK62NzE0b0CBXKzVxahQIkhsxftwjCPGkYLPOsxIDEVXwCZhtfhTPpc32CfH6
7dQ77xIBAgMBAAECggEAEXbZphUat21GcCBNJfhDbEMr46A4OnTFJPXxC/O3JS+t
+lbZB9FYjXozooO1x45LKcCK8zJlRZvJHITP5y88IARR+e7SxOik3pp6jAptwKkf
TDBgInW5AI2nICv0CK7aS1RRVKi2yKdjR+kK89gkdJyMlbKXu66SBlR9kRCVzuI3
FXrZLvyYpfYKGkQc9Q/N9RqjqPCkISKcmnnI6UGFGHHie9J1CfI4dE5+rUmmaVM2
EUckrcfre7MXlW/q6XFbtT4mRJZjpzNtDXFJz3cjBDgW9K5vt84O3KfOhnp3bXs6
rwAZ7E/9r28hUYgVwbi7BIOyxj68aCQ9HGJlHppFowKBgQDT6d6x4JRCYbjofK1c
4xvA5zdGtyB2l9Qq8C+T3BD84gvPjbtBkcaCW1oJ1r/Tlv/QfdFObghzNMGJMhLV
9APqwqd0Q9OUHVpB90jtF/0LoqbEKtWNKmfwkUfoCS36j4m1OClzWBJJtbWlmVql
4CN385kjIYH1D1CU2zdXSkfeswKBgQC+mDPAML8V4ovOpWSqGTNQoyy2PhU4zyVQ
SJ54EU86YyWt/LaXpysqsEvivninDyY01PtW/3gurjc0D8rJX7r/BI4yY883xlQ6
tQF3oSYBTuvC9q6Do7FWLU2oksqONIFGz2QTIU90ncBmnrPfRGiY8TbtM1qA8vtP
F6YzyoWmewKBgQC+sFtZWwpudXsrkU17IU5PFoCSHKWUsekUvk9B0SxkMpCIMzSG
u0OS99scsWaqYt1NYnpfBfqKmLVy3GFAr7R6orCGmaYhSQx4AapY11Y4CyPfr9+8
iKVBP6oh7Wi3aER1ktUR2vWR6HZNTqLYUsn33Xc2uqczupU7bcvtu4TSqwKBgQCQ
iBbmbZDaZbujbyTRIN8bDUKAyL+LHvqq0QbrAiVUn48ZS4SjqC9B5gMF5W7VMNXG
RqR6qqxWqeJO5pLe9mt1q9yxNaMUJqAFDPIZ5+hMIa8DX9GjHeUC9sPnS7my8Pn/
2pGHOEFqq54Vs8+vRc8T/AetBL5i/t+4cLSmnbOQNQKBgBxHA+AelZNsAQsFGkFz
wk9w2MqZqCVBZsjg9URKLK7j64uN4fEYhq3Lw5YjgFWiAcXrCFhX3YAYYT/OXErn
YSKA70Iss86Sn1JYEqwinuyfRa9yLsG6VYRQn/vsP9cCBe7wjzDdhlWBuI2G1ddW
bfS0Se+DS1JHLtX0nLEPLMWI
-----END PRIVATE KEY-----
";
const RSA_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAncWQ+u1p3c4h9i48z8Hx
BV3/ATimg8RZMx5Lno9qaKjKWDcHGUwl27b9/wYrD7Az8jolFDb+9Yn8TjJNCNg5
JBAXXrCAlOWCGX2USGAwYjQMidM6+pQEGms68XJA6vtSz42MLrk1mTX4q6eG698N
GdlUru5adDcuRvu1dIKZGQtLCcn8jSUaoy7tT8bM2qKh2XUu0r5XlD2PqDBbL8A/
hss40uhOkhwEwYFdX+3Q1xSMme5BxUArcfaLM6B61X5FJLyPIDRVn5Pjcio4JSut
jcxNG9AgVys1cWoUCJIbMX7cIwjxpGCzzrMSAxFV8AmYbX4Uz6XN9gnx+u3UO+8S
AQIDAQAB
-----END PUBLIC KEY-----
";
const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIM4+EtwXu332IyHgz+QP7iQq2Jyw9DA08AZfmRypplJn
-----END PRIVATE KEY-----
";
const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAQ6Ksue1UxlxTctzK4eDQ4FW+QEsXFOPJCfV9hVJMHRU=
-----END PUBLIC KEY-----
";
const SECRET: &str = "test-secret-that-is-long-enough-0123456789";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Writes the public keys to a temp dir and returns their paths (the dir must outlive them).
struct Keys {
    _dir: tempfile::TempDir,
    rsa: PathBuf,
    ed: PathBuf,
    rsa_private: PathBuf,
}

fn keys() -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let rsa = dir.path().join("rsa.pem");
    let ed = dir.path().join("ed.pem");
    let rsa_private = dir.path().join("rsa_private.pem");
    std::fs::write(&rsa, RSA_PUBLIC).unwrap();
    std::fs::write(&ed, ED_PUBLIC).unwrap();
    std::fs::write(&rsa_private, RSA_PRIVATE).unwrap();
    Keys {
        _dir: dir,
        rsa,
        ed,
        rsa_private,
    }
}

fn hs_config() -> JwtConfig {
    JwtConfig {
        hs256_secret: Some(SECRET.into()),
        ..JwtConfig::default()
    }
}

fn verifier(cfg: &JwtConfig) -> JwtVerifier {
    JwtVerifier::new(cfg).unwrap().unwrap()
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

fn hs(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

fn good_claims() -> Value {
    json!({"tenant": "acme", "scopes": ["ingest"], "exp": now() + 600, "sub": "svc-1"})
}

fn err_code(v: &JwtVerifier, token: &str) -> (&'static str, String) {
    let e = v.verify(token).unwrap_err();
    (e.code(), e.to_string())
}

#[test]
fn hs256_valid_token_gives_its_principal() {
    let v = verifier(&hs_config());
    let p = v
        .verify(&hs(&json!({
            "tenant": "acme",
            "scopes": ["ingest"],
            "scope": "query openid unknown",
            "exp": now() + 600,
            "sub": "svc-1",
        })))
        .unwrap();
    assert_eq!(p.tenant.as_str(), "acme");
    assert_eq!(
        p.scopes,
        BTreeSet::from([Grant::all(Scope::Ingest), Grant::all(Scope::Query)])
    );
    assert_eq!(p.subject, "svc-1");

    let p = v
        .verify(&hs(&json!({"tenant": "acme", "exp": now() + 60})))
        .unwrap();
    assert!(p.scopes.is_empty());
    assert_eq!(p.subject, "jwt");
}

#[test]
fn expired_token_is_token_expired_but_leeway_applies() {
    let v = verifier(&hs_config());
    let token = hs(&json!({"tenant": "acme", "exp": now() - 3600}));
    let e = v.verify(&token).unwrap_err();
    assert!(matches!(e, AuthError::TokenExpired));
    assert_eq!(e.code(), "token_expired");
    assert!(e.is_unauthenticated());
    // Within the default 30 s of leeway.
    assert!(
        v.verify(&hs(&json!({"tenant": "acme", "exp": now() - 5})))
            .is_ok()
    );
}

#[test]
fn missing_exp_is_refused() {
    let v = verifier(&hs_config());
    let (code, msg) = err_code(&v, &hs(&json!({"tenant": "acme"})));
    assert_eq!(code, "invalid_token");
    assert!(msg.contains("exp"), "{msg}");
    let (code, _) = err_code(&v, &hs(&json!({"tenant": "acme", "exp": "tomorrow"})));
    assert_eq!(code, "invalid_token");
}

#[test]
fn bad_signatures_are_refused() {
    let v = verifier(&hs_config());
    let other = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another-secret-that-is-long-enough-xx"),
        &good_claims(),
    );
    let (code, msg) = err_code(&v, &other);
    assert_eq!(code, "invalid_token");
    assert!(msg.contains("signature"), "{msg}");

    // Swap the payload of a valid token for one claiming another tenant.
    let token = hs(&good_claims());
    let forged = hs(&json!({"tenant": "evil", "scopes": ["admin"], "exp": now() + 600}));
    let parts: Vec<&str> = token.split('.').collect();
    let forged_parts: Vec<&str> = forged.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], forged_parts[1], parts[2]);
    assert_eq!(err_code(&v, &tampered).0, "invalid_token");

    for junk in ["a.b.c", "..", "eyJhbGciOiJub25lIn0.e30.", "x.y"] {
        assert_eq!(err_code(&v, junk).0, "invalid_token", "{junk}");
    }
}

#[test]
fn unsigned_none_algorithm_is_refused() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = b64.encode(good_claims().to_string());
    let v = verifier(&hs_config());
    assert_eq!(
        err_code(&v, &format!("{header}.{body}.")).0,
        "invalid_token"
    );
}

#[test]
fn algorithms_outside_the_allowlist_are_refused() {
    let k = keys();
    // Only an RSA key configured: the default allowlist is RS256 alone.
    let rsa_only = verifier(&JwtConfig {
        public_key_files: vec![k.rsa.clone()],
        ..JwtConfig::default()
    });
    let (code, msg) = err_code(&rsa_only, &hs(&good_claims()));
    assert_eq!(code, "invalid_token");
    assert!(msg.contains("not allowed"), "{msg}");

    // A secret is configured too, but the allowlist names RS256 only.
    let restricted = verifier(&JwtConfig {
        hs256_secret: Some(SECRET.into()),
        public_key_files: vec![k.rsa.clone()],
        algorithms: vec!["RS256".into()],
        ..JwtConfig::default()
    });
    assert!(
        err_code(&restricted, &hs(&good_claims()))
            .1
            .contains("not allowed")
    );
    let rs = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
        &good_claims(),
    );
    assert!(restricted.verify(&rs).is_ok());
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let k = keys();
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
        &good_claims(),
    );
    let rsa_only = verifier(&JwtConfig {
        public_key_files: vec![k.rsa.clone()],
        ..JwtConfig::default()
    });
    assert_eq!(err_code(&rsa_only, &confused).0, "invalid_token");
    // Even with HS256 allowed, the HMAC key is the configured secret, never the PEM.
    let both = verifier(&JwtConfig {
        hs256_secret: Some(SECRET.into()),
        public_key_files: vec![k.rsa.clone()],
        ..JwtConfig::default()
    });
    let (code, msg) = err_code(&both, &confused);
    assert_eq!(code, "invalid_token");
    assert!(msg.contains("signature"), "{msg}");
}

#[test]
fn nbf_in_the_future_is_refused() {
    let v = verifier(&hs_config());
    let future = hs(&json!({"tenant": "acme", "exp": now() + 3600, "nbf": now() + 600}));
    let (code, msg) = err_code(&v, &future);
    assert_eq!(code, "invalid_token");
    assert!(msg.contains("nbf"), "{msg}");
    let past = hs(&json!({"tenant": "acme", "exp": now() + 3600, "nbf": now() - 10}));
    assert!(v.verify(&past).is_ok());
}

#[test]
fn issuer_and_audience_are_checked_when_configured() {
    let v = verifier(&JwtConfig {
        issuer: Some("https://idp.example".into()),
        audience: Some("alluvium".into()),
        ..hs_config()
    });
    let base = |iss: Option<&str>, aud: Option<&str>| {
        let mut c = good_claims();
        if let Some(i) = iss {
            c["iss"] = i.into();
        }
        if let Some(a) = aud {
            c["aud"] = a.into();
        }
        hs(&c)
    };
    assert!(
        v.verify(&base(Some("https://idp.example"), Some("alluvium")))
            .is_ok()
    );
    for (iss, aud) in [
        (Some("https://evil.example"), Some("alluvium")),
        (Some("https://idp.example"), Some("other")),
        (None, Some("alluvium")),
        (Some("https://idp.example"), None),
    ] {
        let (code, msg) = err_code(&v, &base(iss, aud));
        assert_eq!(code, "invalid_token", "{iss:?} {aud:?}: {msg}");
    }
    // Not configured: not checked.
    let open = verifier(&hs_config());
    assert!(open.verify(&base(Some("anyone"), Some("anything"))).is_ok());
}

#[test]
fn bad_or_missing_tenant_claim_is_refused() {
    let v = verifier(&hs_config());
    for claims in [
        json!({"tenant": "Bad/Tenant", "exp": now() + 60}),
        json!({"tenant": "", "exp": now() + 60}),
        json!({"tenant": 42, "exp": now() + 60}),
        json!({"exp": now() + 60}),
    ] {
        let (code, msg) = err_code(&v, &hs(&claims));
        assert_eq!(code, "invalid_token", "{claims}");
        assert!(msg.contains("tenant") || msg.contains("malformed"), "{msg}");
    }
}

#[test]
fn rs256_and_eddsa_verify_with_configured_public_keys() {
    let k = keys();
    let v = verifier(&JwtConfig {
        public_key_files: vec![k.rsa.clone(), k.ed.clone()],
        ..JwtConfig::default()
    });
    let rs = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
        &good_claims(),
    );
    assert_eq!(v.verify(&rs).unwrap().tenant.as_str(), "acme");
    let ed_key = EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap();
    let ed = sign(Algorithm::EdDSA, &ed_key, &good_claims());
    assert_eq!(v.verify(&ed).unwrap().subject, "svc-1");

    // Expiry applies to every algorithm.
    let old = sign(
        Algorithm::EdDSA,
        &ed_key,
        &json!({"tenant": "acme", "exp": now() - 3600}),
    );
    assert_eq!(v.verify(&old).unwrap_err().code(), "token_expired");

    // An EdDSA token is not verified with the RSA key, and HS256 is not enabled at all.
    let only_rsa = verifier(&JwtConfig {
        public_key_files: vec![k.rsa.clone()],
        ..JwtConfig::default()
    });
    assert_eq!(err_code(&only_rsa, &ed).0, "invalid_token");
    assert_eq!(err_code(&v, &hs(&good_claims())).0, "invalid_token");
}

#[test]
fn unusable_configurations_are_refused() {
    let k = keys();
    assert!(JwtVerifier::new(&JwtConfig::default()).unwrap().is_none());
    let cases = [
        JwtConfig {
            hs256_secret: Some("short".into()),
            ..JwtConfig::default()
        },
        JwtConfig {
            algorithms: vec!["HS512".into()],
            ..hs_config()
        },
        JwtConfig {
            algorithms: vec!["RS256".into()],
            ..hs_config()
        },
        JwtConfig {
            public_key_files: vec![k.rsa_private.clone()],
            ..JwtConfig::default()
        },
        JwtConfig {
            public_key_files: vec![PathBuf::from("/nonexistent/key.pem")],
            ..JwtConfig::default()
        },
        JwtConfig {
            algorithms: vec!["EdDSA".into()],
            ..JwtConfig::default()
        },
    ];
    for cfg in cases {
        let err = JwtVerifier::new(&cfg).unwrap_err();
        assert_eq!(err.code(), "auth_config", "{cfg:?}");
        assert!(!err.to_string().contains("short"), "secret leaked: {err}");
    }
}

#[test]
fn minted_tokens_verify() {
    let tenant = TenantId::new("acme").unwrap();
    let scopes = BTreeSet::from([
        Grant::all(Scope::Ingest),
        Grant::parse("query:clicks").unwrap(),
    ]);
    let token = mint_hs256(
        SECRET,
        &tenant,
        &scopes,
        Duration::from_secs(600),
        Some("alluvium-dev"),
        Some("alluvium"),
    )
    .unwrap();
    let v = verifier(&JwtConfig {
        issuer: Some("alluvium-dev".into()),
        audience: Some("alluvium".into()),
        ..hs_config()
    });
    let p = v.verify(&token).unwrap();
    assert_eq!(p.tenant, tenant);
    assert_eq!(p.scopes, scopes);

    let zero = mint_hs256(SECRET, &tenant, &scopes, Duration::ZERO, None, None);
    assert_eq!(zero.unwrap_err().code(), "auth_config");
    let short = mint_hs256(
        "short",
        &tenant,
        &scopes,
        Duration::from_secs(60),
        None,
        None,
    );
    assert_eq!(short.unwrap_err().code(), "auth_config");
}

#[test]
fn config_parses_with_defaults_and_hides_the_secret() {
    let cfg: JwtConfig = serde_json::from_str(r#"{"hs256_secret": "s3cr3t-value"}"#).unwrap();
    assert_eq!(cfg.leeway_secs, 30);
    assert!(cfg.algorithms.is_empty());
    assert_eq!(JwtConfig::default().leeway_secs, 30);
    let debug = format!("{cfg:?}");
    assert!(!debug.contains("s3cr3t-value"), "{debug}");
    assert!(debug.contains("<redacted>"));
    assert!(serde_json::from_str::<JwtConfig>(r#"{"secret": "x"}"#).is_err());
}
