//! Tests of JWK Set verification, rotation and fetching. A [`JwksServer`] answers on
//! `127.0.0.1:0` from a thread with a minimal HTTP/1.1 response and counts the requests. The
//! private keys below are throwaway test data generated with `openssl genpkey` for these tests
//! only (as in `jwt_tests.rs`); their public JWKs are derived with `Jwk::from_encoding_key`.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::Actor;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::*;
use crate::auth::{
    AuthActor, Authenticate, Authenticator, JwtConfig, JwtVerifier, KeyStore, Principal,
    Verification,
};

const RSA_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQCca+xIT8ayWds6
xIdojqXNhsFICCum7iSSOLODrPBzo4eVL4mdYx7HAQ4D2wOuxg9DdzMJdmswLvMj
dJukzifW1n5ntrffCiRAKVqR3mcYF1xp+WXUCaGc/mtfm+I6MnMfwNW8cFdCP2VG
pamfDB7glBt4vO7jl92ICzYlIkQLOaD6GhBwLI0ngSQ/efNwfDYwR8oGEqqizC8C
t/W/aJM1O0omxFPvyMKUtACEZVnJRX4HumZkvliePA73ZiTgbJEUMPrPNdIFIQnr
kPIbKauFloik9qkrG1tMod//Ef4Rg7pbS06ok4qMrbaWouxc4Soiv/qZuqlZEDvu
aBRKHCybAgMBAAECggEABWejP/JlurbpINQ2m5HGP95Gom8J1xhGcjj8VvHsUwqU
/j4owqPwpc6vBcoVC/5y+5FMVajeVklhBFocoKqw7Lb3oizJmK7YhtEG/KBTLp1s
B4tjDdsRVwPhgOm5fOpOWQwINp0pHrRjEvhZbpH0JS1o75iTppCSSoecpNbUxBB5
X6a4XZSg/IGviXQuH5M6+IOWRzmGxhwGihCyCYKDzGX+cedjoSxW48mmU+Ud8kJB
VwgSOLsKoL2w18mA+sX/bk5cLlUoi9FJs49LjjLqS/CcsY5+pgUxmsK65FcoRkeg
vfq9E0RT7lJF26UPQnJtgjLqqcVmjPrd/tjsLApgMQKBgQDJqXBxhL6oSsIX3byC
x+zm+v2ItYX7N2os5GNMPE3Q32KaSjgjDi5D637zUTuuA7eiRI2nC9YhM7UqwzHM
FMMtxipcG+a801lHmW/2JVhBRWPETnZt2FPKP3q4Sv06wF9ZgUDuBGtZLXLfjnNj
9L51pGg1GBii1KNikYRABHEmywKBgQDGkdMqGxSFYHxYKmC7IQfCGFfJutaBrPld
SE1NaQpx95Y7Ub3tx4yVJLWE23/VGvCm/hVfyVyA7DcDPQomOy/zLp8ua7Xbti4C
jM1CG6LlUj1vXMD8Wm2fMAwee2GfmbsSC1UKU9iyZpyM/nkGkaj0v2lA0mY+GDCY
uyAx/n+HcQKBgECNx9ve5XVT8QvYxEaNHy3VfKFtkkUXuRpDxfGagEJzr8m6Jnw6
Rt8hHJNhFpyevgLotPubU2FvfvgAYgl1QAGAJQE1QUiC01qTKH7/9191iflGMKz7
Cd99MJicELHk8ODi+lj2+zIh1Vrw68k8iFd6WI1eeExvixm7gT1I7ru/AoGAaPuG
EhfZJJ8bfp2BIM5YxLSMDVqbuFmUSU5FmGy1mgWVRu1zpfg/ikarNX+7ORcSLqfc
8xSJtJuuhibKa+YU9tQqUqedsXjDIJQCnTXxTJ7LXkpCueixVl1XuvHubiwf7G1T
W69yvPdlQ2Hy6JcwJZ3hbuUOKzwszUL5xZTRJfECgYAShPPSxNAqcgwDLH7CXqWR
n5vzl3aNcyd18zfK1tvTv9e/0j2GxSP3LBGy75DlXcUvoUMXaSOFRtggS2r9dV3X
wCPOwAp3KY2yL1ovOFDpSX7C4xPRCox519zhgd9vJIHrNZ+0x7Qx6Vdy1w1RERFM
Ejw9iAlVITljijvUzRZUbg==
-----END PRIVATE KEY-----
";
const ED_A_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIBOZpj6vbhV8z+0l5pA0ns/ilfhkyP9IFPxZT34NEbHA
-----END PRIVATE KEY-----
";
const ED_B_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJMbVAqtmx1JKUujxmiYj8H7bacHREPdmMTSRP5jmlmq
-----END PRIVATE KEY-----
";
const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQguR3wzZVOUdeciMEL
nuA6hainCMQPpC0svwv3h6zXCvuhRANCAATDhfRr8eli6llBya3zW3U/rEB2m5hK
vd2j1l4pna3NQpxru+JGU+9JiWM40RN2ro071yCUIv0NKqKlhhSOLOvf
-----END PRIVATE KEY-----
";

/// A signing key of one algorithm.
struct TestKey {
    alg: Algorithm,
    enc: EncodingKey,
}

fn rsa() -> TestKey {
    TestKey {
        alg: Algorithm::RS256,
        enc: EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
    }
}

fn ed_a() -> TestKey {
    TestKey {
        alg: Algorithm::EdDSA,
        enc: EncodingKey::from_ed_pem(ED_A_PRIVATE.as_bytes()).unwrap(),
    }
}

fn ed_b() -> TestKey {
    TestKey {
        alg: Algorithm::EdDSA,
        enc: EncodingKey::from_ed_pem(ED_B_PRIVATE.as_bytes()).unwrap(),
    }
}

fn ec() -> TestKey {
    TestKey {
        alg: Algorithm::ES256,
        enc: EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
    }
}

/// The public JWK of `key` with `kid`, with its `alg` member or without.
fn jwk(key: &TestKey, kid: Option<&str>, with_alg: bool) -> Value {
    let mut jwk = Jwk::from_encoding_key(&key.enc, key.alg).unwrap();
    jwk.common.key_id = kid.map(str::to_owned);
    if !with_alg {
        jwk.common.key_algorithm = None;
    }
    serde_json::to_value(jwk).unwrap()
}

fn set_of(keys: &[Value]) -> String {
    json!({ "keys": keys }).to_string()
}

/// A valid token of `key`'s algorithm with `kid` in its header.
fn token(key: &TestKey, kid: Option<&str>) -> String {
    token_as(key.alg, key, kid)
}

/// A token whose header claims `alg` but is signed by `key` (for alg mismatches).
fn token_as(alg: Algorithm, key: &TestKey, kid: Option<&str>) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    let claims = json!({
        "tenant": "acme",
        "scopes": ["ingest"],
        "exp": chrono::Utc::now().timestamp() + 600,
        "sub": "svc-1",
    });
    // Signing with the algorithm of the key even when the header claims another one.
    let header_alg = header.alg;
    header.alg = key.alg;
    let signed = jsonwebtoken::encode(&header, &claims, &key.enc).unwrap();
    if header_alg == key.alg {
        return signed;
    }
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    header.alg = header_alg;
    let parts: Vec<&str> = signed.split('.').collect();
    let head = b64.encode(serde_json::to_vec(&header).unwrap());
    format!("{head}.{}.{}", parts[1], parts[2])
}

/// Verifies like the actor does: awaiting the refetch when one is asked for.
async fn verify(v: &JwtVerifier, token: &str) -> Result<Principal, AuthError> {
    match v.verify_or_refetch(token) {
        Verification::Ready(result) => result,
        Verification::Refetch(pending) => pending.await,
    }
}

fn message(result: Result<Principal, AuthError>) -> String {
    result.unwrap_err().to_string()
}

fn url_config(server: &JwksServer, min_refetch_secs: u64) -> JwtConfig {
    JwtConfig {
        jwks_url: Some(server.url()),
        jwks_min_refetch_secs: min_refetch_secs,
        ..JwtConfig::default()
    }
}

async fn load(cfg: &JwtConfig) -> JwtVerifier {
    JwtVerifier::load(cfg).await.unwrap().unwrap()
}

/// What the test server answers.
#[derive(Clone)]
enum Reply {
    Json(String),
    Status(u16),
    /// A body one byte over [`MAX_JWKS_BYTES`], with or without a `Content-Length`.
    Huge {
        declare_length: bool,
    },
}

/// A JWK Set server on `127.0.0.1:0`, one connection per request; stops when dropped.
struct JwksServer {
    addr: SocketAddr,
    reply: Arc<Mutex<Reply>>,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl JwksServer {
    fn start(reply: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let reply = Arc::new(Mutex::new(reply));
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (reply, hits, stop) = (reply.clone(), hits.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(SeqCst) {
                        break;
                    }
                    let Ok(mut stream) = stream else { continue };
                    if !read_request(&mut stream) {
                        continue;
                    }
                    hits.fetch_add(1, SeqCst);
                    let reply = reply.lock().unwrap().clone();
                    // The client may hang up early (an oversized body): not the test's failure.
                    let _ = answer(&mut stream, &reply);
                }
            })
        };
        Self {
            addr,
            reply,
            hits,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    fn set(&self, reply: Reply) {
        *self.reply.lock().unwrap() = reply;
    }

    fn hits(&self) -> usize {
        self.hits.load(SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads a request head; false when the peer sent none (the wake-up connection).
fn read_request(stream: &mut TcpStream) -> bool {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    head.starts_with(b"GET ")
}

fn answer(stream: &mut TcpStream, reply: &Reply) -> std::io::Result<()> {
    match reply {
        Reply::Json(body) => write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
        Reply::Status(code) => write!(
            stream,
            "HTTP/1.1 {code} Test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
        Reply::Huge { declare_length } => {
            let body = vec![b' '; MAX_JWKS_BYTES + 1];
            let length = if *declare_length {
                format!("Content-Length: {}\r\n", body.len())
            } else {
                String::new()
            };
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{length}Connection: close\r\n\r\n"
            )?;
            stream.write_all(&body)
        }
    }
}

#[tokio::test]
async fn kid_selects_its_key_among_two() {
    let (a, b) = (ed_a(), ed_b());
    let server = JwksServer::start(Reply::Json(set_of(&[
        jwk(&a, Some("a"), true),
        jwk(&b, Some("b"), true),
    ])));
    let v = load(&url_config(&server, 0)).await;

    assert_eq!(
        verify(&v, &token(&a, Some("a")))
            .await
            .unwrap()
            .tenant
            .as_str(),
        "acme"
    );
    assert_eq!(
        verify(&v, &token(&b, Some("b"))).await.unwrap().subject,
        "svc-1"
    );
    // The kid picks the key: a token of key a naming b does not verify.
    let msg = message(verify(&v, &token(&a, Some("b"))).await);
    assert!(msg.contains("signature"), "{msg}");
    // Two EdDSA keys: without a kid the token cannot say which.
    let msg = message(verify(&v, &token(&a, None)).await);
    assert!(msg.contains("kid is required"), "{msg}");
    // Known kids never fetch again.
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn token_without_kid_needs_exactly_one_key_for_its_alg() {
    let (a, r, e) = (ed_a(), rsa(), ec());
    let server = JwksServer::start(Reply::Json(set_of(&[
        jwk(&a, None, false),
        jwk(&r, Some("r"), true),
        jwk(&e, Some("e"), true),
    ])));
    let v = load(&url_config(&server, 0)).await;
    for key in [&a, &r, &e] {
        let p = verify(&v, &token(key, None)).await;
        assert_eq!(p.unwrap().tenant.as_str(), "acme", "{:?}", key.alg);
    }
    assert!(verify(&v, &token(&r, Some("r"))).await.is_ok());
    assert!(verify(&v, &token(&e, Some("e"))).await.is_ok());
    // A second EdDSA key appears: kid-less EdDSA tokens become ambiguous.
    server.set(Reply::Json(set_of(&[
        jwk(&a, None, false),
        jwk(&ed_b(), Some("b"), true),
    ])));
    v.refresh_jwks().unwrap().await;
    let msg = message(verify(&v, &token(&a, None)).await);
    assert!(msg.contains("2 keys for EdDSA"), "{msg}");
    let msg = message(verify(&v, &token(&r, None)).await);
    assert!(msg.contains("no key of the JWK Set serves RS256"), "{msg}");
}

#[tokio::test]
async fn unknown_kid_refetch_picks_up_a_new_key() {
    let (a, b) = (ed_a(), ed_b());
    let server = JwksServer::start(Reply::Json(set_of(&[jwk(&a, Some("a"), true)])));
    let v = load(&url_config(&server, 0)).await;
    let token_b = token(&b, Some("b"));
    // The synchronous path never fetches.
    let msg = v.verify(&token_b).unwrap_err().to_string();
    assert!(msg.contains("unknown key id \"b\""), "{msg}");
    assert_eq!(server.hits(), 1);

    server.set(Reply::Json(set_of(&[
        jwk(&a, Some("a"), true),
        jwk(&b, Some("b"), true),
    ])));
    let Verification::Refetch(pending) = v.verify_or_refetch(&token_b) else {
        panic!("an unknown kid should refetch");
    };
    assert_eq!(pending.await.unwrap().subject, "svc-1");
    assert_eq!(server.hits(), 2);
    // Now known: synchronous, no further fetch.
    assert!(matches!(
        v.verify_or_refetch(&token_b),
        Verification::Ready(Ok(_))
    ));
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn unknown_kid_refetches_are_rate_limited() {
    let (a, b) = (ed_a(), ed_b());
    let server = JwksServer::start(Reply::Json(set_of(&[jwk(&a, Some("a"), true)])));
    let v = load(&url_config(&server, 3600)).await;
    assert_eq!(server.hits(), 1);

    // The first unknown kid refetches (the startup load does not count against the limit).
    let msg = message(verify(&v, &token(&b, Some("x"))).await);
    assert!(msg.contains("unknown key id \"x\""), "{msg}");
    assert_eq!(server.hits(), 2);

    // The second, within jwks_min_refetch_secs, is refused at once even though the server
    // now has its key.
    server.set(Reply::Json(set_of(&[
        jwk(&a, Some("a"), true),
        jwk(&b, Some("y"), true),
    ])));
    let outcome = v.verify_or_refetch(&token(&b, Some("y")));
    let Verification::Ready(result) = outcome else {
        panic!("a rate-limited unknown kid must not wait for a fetch");
    };
    assert!(message(result).contains("unknown key id \"y\""));
    assert_eq!(server.hits(), 2);
    // Known kids still verify, and the periodic refresh is not rate limited.
    assert!(verify(&v, &token(&a, Some("a"))).await.is_ok());
    v.refresh_jwks().unwrap().await;
    assert_eq!(server.hits(), 3);
    assert!(verify(&v, &token(&b, Some("y"))).await.is_ok());
}

#[tokio::test]
async fn removed_key_is_refused_after_a_refetch() {
    let (a, b, r) = (ed_a(), ed_b(), rsa());
    let server = JwksServer::start(Reply::Json(set_of(&[
        jwk(&a, Some("a"), true),
        jwk(&b, Some("b"), true),
    ])));
    let v = load(&url_config(&server, 3600)).await;
    let token_a = token(&a, Some("a"));
    assert!(verify(&v, &token_a).await.is_ok());

    // Rotation: a is retired, r is introduced; the first token of r triggers the refetch.
    server.set(Reply::Json(set_of(&[
        jwk(&b, Some("b"), true),
        jwk(&r, Some("r"), true),
    ])));
    assert!(verify(&v, &token(&r, Some("r"))).await.is_ok());
    assert_eq!(server.hits(), 2);
    let msg = message(verify(&v, &token_a).await);
    assert!(msg.contains("unknown key id \"a\""), "{msg}");
    assert!(verify(&v, &token(&b, Some("b"))).await.is_ok());
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn alg_mismatch_with_the_jwk_alg_is_refused() {
    let (a, r) = (ed_a(), rsa());
    let server = JwksServer::start(Reply::Json(set_of(&[
        jwk(&a, Some("ed"), true),
        jwk(&ed_b(), Some("ed-no-alg"), false),
    ])));
    let v = load(&url_config(&server, 0)).await;
    // An RS256 token naming the EdDSA key: refused before any signature check.
    let msg = message(verify(&v, &token(&r, Some("ed"))).await);
    assert!(
        msg.contains("token alg RS256 does not match the key's alg EdDSA"),
        "{msg}"
    );
    // Without an alg on the JWK, its key type still decides.
    let msg = message(verify(&v, &token(&r, Some("ed-no-alg"))).await);
    assert!(msg.contains("does not match the key type OKP"), "{msg}");
    // A forged header claiming ES256 over an EdDSA signature.
    let msg = message(verify(&v, &token_as(Algorithm::ES256, &a, Some("ed"))).await);
    assert!(msg.contains("token alg ES256 does not match"), "{msg}");
    // Refusals are not unknown kids: no refetch.
    assert_eq!(server.hits(), 1);

    // A JWK whose alg does not fit its own key type is skipped at load.
    let mut odd = jwk(&r, Some("odd"), true);
    odd["alg"] = "EdDSA".into();
    let set = parse_key_set(set_of(&[odd]).as_bytes()).unwrap();
    assert_eq!(set.len(), 0);
    let Selected::Refused(e) = set.by_kid(Algorithm::RS256, "odd") else {
        panic!("a skipped kid is refused");
    };
    assert!(
        e.to_string().contains("does not fit the key type RSA"),
        "{e}"
    );
}

#[tokio::test]
async fn oct_and_non_signature_jwks_are_ignored() {
    use base64::Engine;
    let secret = b"a-shared-secret-published-in-the-jwks-0123";
    let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    let a = ed_a();
    let mut enc = jwk(&ed_b(), Some("enc"), true);
    enc["use"] = "enc".into();
    let server = JwksServer::start(Reply::Json(set_of(&[
        json!({"kty": "oct", "k": k, "kid": "sym", "alg": "HS256"}),
        enc,
        jwk(&a, Some("a"), true),
    ])));
    let hs = EncodingKey::from_secret(secret);
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("sym".into());
    let claims = json!({"tenant": "acme", "exp": chrono::Utc::now().timestamp() + 600});
    let hs_token = jsonwebtoken::encode(&header, &claims, &hs).unwrap();

    // Only the JWK Set configured: HS256 is not even allowed.
    let v = load(&url_config(&server, 0)).await;
    let msg = message(verify(&v, &hs_token).await);
    assert!(msg.contains("not allowed"), "{msg}");
    // With a server secret, HS256 uses that secret only, never the published oct key.
    let v = load(&JwtConfig {
        hs256_secret: Some("the-server-own-secret-0123456789abcdef".into()),
        ..url_config(&server, 0)
    })
    .await;
    let msg = message(verify(&v, &hs_token).await);
    assert!(msg.contains("signature"), "{msg}");
    // An asymmetric token naming a skipped key is refused without a refetch.
    let hits = server.hits();
    let msg = message(verify(&v, &token(&a, Some("sym"))).await);
    assert!(msg.contains("symmetric (oct) keys are refused"), "{msg}");
    let msg = message(verify(&v, &token(&ed_b(), Some("enc"))).await);
    assert!(msg.contains("use is \"enc\", not sig"), "{msg}");
    assert_eq!(server.hits(), hits);
    // The usable key still works, and is the only EdDSA key: kid-less tokens verify.
    assert!(verify(&v, &token(&a, None)).await.is_ok());
}

#[tokio::test]
async fn jwks_file_is_read_and_reread() {
    let (a, b) = (ed_a(), ed_b());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, set_of(&[jwk(&a, Some("a"), true)])).unwrap();
    let cfg = JwtConfig {
        jwks_file: Some(path.clone()),
        jwks_min_refetch_secs: 0,
        ..JwtConfig::default()
    };
    // A file needs no network: the synchronous constructor loads it.
    let v = JwtVerifier::new(&cfg).unwrap().unwrap();
    assert!(v.verify(&token(&a, Some("a"))).is_ok());

    std::fs::write(
        &path,
        set_of(&[jwk(&a, Some("a"), true), jwk(&b, Some("b"), true)]),
    )
    .unwrap();
    assert!(verify(&v, &token(&b, Some("b"))).await.is_ok());
    // A broken file keeps the last good set.
    std::fs::write(&path, "{\"keys\": [").unwrap();
    v.refresh_jwks().unwrap().await;
    assert!(v.verify(&token(&b, Some("b"))).is_ok());
    // At startup, an unreadable or invalid file is a configuration error.
    let err = JwtVerifier::new(&cfg).unwrap_err();
    assert_eq!(err.code(), "auth_config");
    assert!(err.to_string().contains("not a JWK Set"), "{err}");
    let missing = JwtConfig {
        jwks_file: Some(dir.path().join("missing.json")),
        ..JwtConfig::default()
    };
    assert_eq!(
        JwtVerifier::new(&missing).unwrap_err().code(),
        "auth_config"
    );
}

#[tokio::test]
async fn fetch_failure_keeps_the_last_good_set() {
    let a = ed_a();
    let server = JwksServer::start(Reply::Json(set_of(&[jwk(&a, Some("a"), true)])));
    let v = load(&url_config(&server, 0)).await;
    let jwks = Jwks::new(
        JwksSource::url(&server.url()).unwrap(),
        Duration::from_secs(300),
        Duration::ZERO,
    )
    .unwrap();
    jwks.refresh().await.unwrap();
    let token_a = token(&a, Some("a"));

    for (reply, expected) in [
        (Reply::Status(500), "500"),
        (Reply::Status(404), "404"),
        (Reply::Json("{\"keys\": 7}".into()), "not a JWK Set"),
        (Reply::Json("<html>".into()), "not a JWK Set"),
    ] {
        server.set(reply);
        let err = jwks.refresh().await.unwrap_err();
        assert!(err.contains(expected), "{err}");
        assert_eq!(jwks.current().len(), 1);
        v.refresh_jwks().unwrap().await;
        assert!(verify(&v, &token_a).await.is_ok(), "after {expected}");
    }
    // The server is gone altogether.
    let url = server.url();
    drop(server);
    let gone = Jwks::new(
        JwksSource::url(&url).unwrap(),
        Duration::from_secs(1),
        Duration::ZERO,
    )
    .unwrap();
    let err = gone.refresh().await.unwrap_err();
    assert!(err.contains("GET failed"), "{err}");
    v.refresh_jwks().unwrap().await;
    assert!(verify(&v, &token_a).await.is_ok());
}

#[tokio::test]
async fn body_over_one_mib_is_refused() {
    let a = ed_a();
    for declare_length in [true, false] {
        let server = JwksServer::start(Reply::Json(set_of(&[jwk(&a, Some("a"), true)])));
        let v = load(&url_config(&server, 0)).await;
        let jwks = Jwks::new(
            JwksSource::url(&server.url()).unwrap(),
            Duration::from_secs(300),
            Duration::ZERO,
        )
        .unwrap();
        server.set(Reply::Huge { declare_length });
        let err = jwks.refresh().await.unwrap_err();
        assert!(
            err.contains("larger than 1048576 bytes"),
            "{declare_length}: {err}"
        );
        v.refresh_jwks().unwrap().await;
        assert!(verify(&v, &token(&a, Some("a"))).await.is_ok());
        // As the only key source at startup, an oversized set stops the server.
        let err = JwtVerifier::load(&url_config(&server, 0))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
    }
}

#[tokio::test]
async fn startup_fetch_failure_is_fatal_only_without_another_key() {
    // A port nobody listens on.
    let url = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/jwks.json", listener.local_addr().unwrap())
    };
    let only_jwks = JwtConfig {
        jwks_url: Some(url.clone()),
        ..JwtConfig::default()
    };
    let err = JwtVerifier::load(&only_jwks).await.unwrap_err();
    assert_eq!(err.code(), "auth_config");
    assert!(
        err.to_string().contains("no other JWT key is configured"),
        "{err}"
    );

    let with_secret = JwtConfig {
        hs256_secret: Some("a-fallback-secret-that-is-long-enough-01".into()),
        ..only_jwks
    };
    let v = JwtVerifier::load(&with_secret).await.unwrap().unwrap();
    // Started with an empty set: JWKS tokens are refused until a load succeeds.
    let msg = message(verify(&v, &token(&ed_a(), Some("a"))).await);
    assert!(msg.contains("unknown key id"), "{msg}");
}

#[tokio::test]
async fn allowlist_counts_jwks_algorithms() {
    let (a, e) = (ed_a(), ec());
    let server = JwksServer::start(Reply::Json(set_of(&[
        jwk(&a, Some("a"), true),
        jwk(&e, Some("e"), true),
    ])));
    let es_only = load(&JwtConfig {
        algorithms: vec!["ES256".into()],
        ..url_config(&server, 0)
    })
    .await;
    assert!(verify(&es_only, &token(&e, Some("e"))).await.is_ok());
    let msg = message(verify(&es_only, &token(&a, Some("a"))).await);
    assert!(msg.contains("not allowed"), "{msg}");

    // Without a JWK Set, ES256 has no key source.
    let err = JwtVerifier::new(&JwtConfig {
        algorithms: vec!["ES256".into()],
        ..JwtConfig::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("JWK Set"), "{err}");
    // HS256 still needs the secret, JWK Set or not.
    let err = JwtVerifier::load(&JwtConfig {
        algorithms: vec!["HS256".into()],
        ..url_config(&server, 0)
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("hs256_secret"), "{err}");
}

#[tokio::test]
async fn config_defaults_validation_and_debug() {
    let cfg: JwtConfig = serde_json::from_str(
        r#"{"jwks_url": "https://idp:hunter2@idp.example/.well-known/jwks.json"}"#,
    )
    .unwrap();
    assert_eq!(cfg.jwks_refresh_secs, 300);
    assert_eq!(cfg.jwks_min_refetch_secs, 30);
    assert_eq!(JwtConfig::default().jwks_refresh_secs, 300);
    let debug = format!("{cfg:?}");
    assert!(debug.contains("idp.example"), "{debug}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(serde_json::from_str::<JwtConfig>(r#"{"jwks": "x"}"#).is_err());

    // The network is for JwtVerifier::load.
    let err = JwtVerifier::new(&cfg).unwrap_err();
    assert!(err.to_string().contains("JwtVerifier::load"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    for bad in [
        JwtConfig {
            jwks_url: Some("ftp://idp.example/jwks.json".into()),
            ..JwtConfig::default()
        },
        JwtConfig {
            jwks_url: Some("not a url".into()),
            ..JwtConfig::default()
        },
        JwtConfig {
            jwks_url: Some("https://idp.example/jwks.json".into()),
            jwks_file: Some(dir.path().join("jwks.json")),
            ..JwtConfig::default()
        },
        JwtConfig {
            jwks_file: Some(dir.path().join("jwks.json")),
            jwks_refresh_secs: 0,
            ..JwtConfig::default()
        },
    ] {
        let err = JwtVerifier::load(&bad).await.unwrap_err();
        assert_eq!(err.code(), "auth_config", "{bad:?}");
    }
}

#[test]
fn weak_malformed_and_unsupported_keys_are_skipped() {
    let mut pss = jwk(&rsa(), Some("pss"), true);
    pss["alg"] = "PS256".into();
    let set = parse_key_set(
        set_of(&[
            json!({"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "short"}),
            json!({"kty": "EC", "crv": "P-384", "x": "AAAA", "y": "AAAA", "kid": "p384"}),
            json!({"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "kid": "ed-short"}),
            json!({"kty": "XYZ", "kid": "odd"}),
            json!({"kty": "RSA", "kid": 7}),
            pss,
            json!({"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "kid": "ops", "key_ops": ["encrypt"]}),
        ])
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(set.len(), 0);
    for (kid, why) in [
        ("short", "shorter than 2048 bits"),
        ("p384", "unsupported EC curve"),
        ("ed-short", "not 32 bytes"),
        ("odd", "unsupported key type"),
        ("ops", "key_ops does not include verify"),
        ("pss", "alg PS256 is not supported"),
    ] {
        let Selected::Refused(e) = set.by_kid(Algorithm::RS256, kid) else {
            panic!("{kid} should be refused");
        };
        assert!(e.to_string().contains(why), "{kid}: {e}");
    }
    assert!(parse_key_set(b"[]").is_err());
    assert!(parse_key_set(b"{}").is_err());
}

fn auth_actor(verifier: JwtVerifier, dir: &std::path::Path) -> actix::Addr<AuthActor> {
    let keys = KeyStore::open(dir.join("keys.json")).unwrap();
    AuthActor::new(Authenticator::new(keys, Some(verifier))).start()
}

#[actix::test]
async fn actor_refetches_an_unknown_kid() {
    let (a, b) = (ed_a(), ed_b());
    let server = JwksServer::start(Reply::Json(set_of(&[jwk(&a, Some("a"), true)])));
    let dir = tempfile::tempdir().unwrap();
    let addr = auth_actor(load(&url_config(&server, 0)).await, dir.path());
    let send = |credential: String| addr.send(Authenticate { credential });

    assert!(send(token(&a, Some("a"))).await.unwrap().is_ok());
    server.set(Reply::Json(set_of(&[
        jwk(&a, Some("a"), true),
        jwk(&b, Some("b"), true),
    ])));
    let p = send(token(&b, Some("b"))).await.unwrap().unwrap();
    assert_eq!(p.tenant.as_str(), "acme");
    assert_eq!(server.hits(), 2);
    let refused = send(token(&b, Some("nope"))).await.unwrap().unwrap_err();
    assert_eq!(refused.code(), "invalid_token");
}

#[actix::test]
async fn periodic_refresh_drops_a_removed_key() {
    let (a, b) = (ed_a(), ed_b());
    let server = JwksServer::start(Reply::Json(set_of(&[
        jwk(&a, Some("a"), true),
        jwk(&b, Some("b"), true),
    ])));
    let dir = tempfile::tempdir().unwrap();
    let cfg = JwtConfig {
        jwks_refresh_secs: 1,
        ..url_config(&server, 3600)
    };
    let addr = auth_actor(load(&cfg).await, dir.path());
    let token_a = token(&a, Some("a"));
    assert!(
        addr.send(Authenticate {
            credential: token_a.clone()
        })
        .await
        .unwrap()
        .is_ok()
    );

    server.set(Reply::Json(set_of(&[jwk(&b, Some("b"), true)])));
    // A known kid never triggers a fetch: only the timer can drop key a.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let result = addr
            .send(Authenticate {
                credential: token_a.clone(),
            })
            .await
            .unwrap();
        if let Err(e) = result {
            assert!(e.to_string().contains("unknown key id"), "{e}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "key a still accepted after the deadline"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(server.hits() >= 2);
    assert!(
        addr.send(Authenticate {
            credential: token(&b, Some("b"))
        })
        .await
        .unwrap()
        .is_ok()
    );
}
