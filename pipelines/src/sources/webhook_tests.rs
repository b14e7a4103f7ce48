#![allow(clippy::unwrap_used)]

use super::*;
use crate::notification::webhooks::hmac_sha256_hex;

const SECRET: &str = "0123456789abcdef-secret";
const NEXT: &str = "fedcba9876543210-rotated";
const NOW: u64 = 1_800_000_000;

fn config(scheme: Scheme) -> HookConfig {
    HookConfig {
        name: "gh".into(),
        tenant: "acme".into(),
        table: "deliveries".into(),
        scheme,
        secrets: vec![SECRET.into()],
        tolerance: DEFAULT_TOLERANCE,
        max_body: DEFAULT_MAX_BODY,
        signature_header: None,
        signature_prefix: None,
        encoding: SignatureEncoding::Hex,
        timestamp_header: None,
        body_column: None,
        fields: BTreeMap::new(),
        headers: BTreeMap::new(),
    }
}

fn hook(config: HookConfig) -> Hook {
    Hook::new(config).unwrap()
}

fn rows(d: Delivery) -> (Vec<Value>, String) {
    match d {
        Delivery::Rows {
            body,
            rows,
            idempotency_key,
        } => {
            let v: Vec<Value> = serde_json::from_slice(&body).unwrap();
            assert_eq!(v.len(), rows);
            (v, idempotency_key)
        }
        Delivery::Answer(a) => panic!("answered {a}"),
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn mac(secret: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

#[test]
fn github_published_example_verifies() {
    // The example of GitHub's documentation on validating webhook deliveries.
    let mut c = config(Scheme::Github);
    c.secrets = vec!["It's a Secret to Everybody".into()];
    c.body_column = Some("payload".into());
    let h = hook(c);
    let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    let headers = [("X-Hub-Signature-256", sig)];
    let (r, key) = rows(h.receive(&headers[..], b"Hello, World!", NOW).unwrap());
    assert_eq!(r, vec![serde_json::json!({"payload": "Hello, World!"})]);
    // No event id in the body: the key is the SHA-256 of the signed body.
    assert_eq!(
        key,
        "hook:gh:sha256:dffd6021bb2bd5b0af676290809ec3a53191dd81c7f70a4b28688a362182986f"
    );
    let err = h.receive(&headers[..], b"Hello, World?", NOW).unwrap_err();
    assert!(matches!(err, HookError::InvalidSignature(_)), "{err}");
    assert_eq!(err.status_and_code(), (401, "invalid_signature"));
}

#[test]
fn github_delivery_id_headers_and_ping() {
    let mut c = config(Scheme::Github);
    c.headers = BTreeMap::from([("event".to_string(), "X-GitHub-Event".to_string())]);
    let h = hook(c);
    let body = br#"{"action":"opened","number":7}"#;
    let sig = format!("sha256={}", hmac_sha256_hex(SECRET.as_bytes(), &[body]));
    let headers = [
        ("x-hub-signature-256", sig.as_str()),
        ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ("X-GitHub-Event", "pull_request"),
    ];
    let (r, key) = rows(h.receive(&headers[..], body, NOW).unwrap());
    assert_eq!(
        r,
        vec![serde_json::json!({"action": "opened", "number": 7, "event": "pull_request"})]
    );
    assert_eq!(key, format!("hook:gh:sha256:{}", sha256_hex(body)));
    // The delivery id header is not signed: a replay under another id has the same key.
    let replay = [
        ("X-Hub-Signature-256", sig.as_str()),
        ("X-GitHub-Delivery", "00000000-0000-0000-0000-000000000000"),
        ("X-GitHub-Event", "pull_request"),
    ];
    let (_, replay_key) = rows(h.receive(&replay[..], body, NOW).unwrap());
    assert_eq!(replay_key, key);

    let ping = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#;
    let sig = format!("sha256={}", hmac_sha256_hex(SECRET.as_bytes(), &[ping]));
    let headers = [
        ("X-Hub-Signature-256", sig.as_str()),
        ("X-GitHub-Event", "ping"),
    ];
    assert!(matches!(
        h.receive(&headers[..], ping, NOW).unwrap(),
        Delivery::Answer(_)
    ));
    // A ping is only answered once its signature is good.
    let headers = [
        ("X-Hub-Signature-256", "sha256=00"),
        ("X-GitHub-Event", "ping"),
    ];
    assert!(h.receive(&headers[..], ping, NOW).is_err());
}

#[test]
fn malformed_signatures_are_refused_alike() {
    let h = hook(config(Scheme::Github));
    let body = br#"{"a":1}"#;
    let good = hmac_sha256_hex(SECRET.as_bytes(), &[body]);
    let upper = format!("sha256={}", good.to_ascii_uppercase());
    let no_prefix = good.clone();
    let odd = format!("sha256={}", &good[1..]);
    let not_hex = format!("sha256={}zz", &good[2..]);
    let short = format!("sha256={}", &good[..62]);
    // Upper-case hex is the same MAC.
    assert!(
        h.receive(&[("X-Hub-Signature-256", upper.as_str())][..], body, NOW)
            .is_ok()
    );
    for bad in [no_prefix.as_str(), &odd, &not_hex, &short, "", "sha256="] {
        let err = h
            .receive(&[("X-Hub-Signature-256", bad)][..], body, NOW)
            .unwrap_err();
        assert!(
            matches!(err, HookError::InvalidSignature(_)),
            "{bad:?}: {err}"
        );
    }
    let err = h.receive(&[][..], body, NOW).unwrap_err();
    assert_eq!(
        err,
        HookError::InvalidSignature("no X-Hub-Signature-256 header".into())
    );
}

#[test]
fn either_secret_verifies_while_rotating() {
    let mut c = config(Scheme::Github);
    c.secrets = vec![SECRET.into(), NEXT.into()];
    let h = hook(c);
    let body = br#"{"a":1}"#;
    for secret in [SECRET, NEXT] {
        let sig = format!("sha256={}", hmac_sha256_hex(secret.as_bytes(), &[body]));
        assert!(
            h.receive(&[("X-Hub-Signature-256", sig.as_str())][..], body, NOW)
                .is_ok()
        );
    }
    let sig = format!(
        "sha256={}",
        hmac_sha256_hex(b"some-other-secret-entirely", &[body])
    );
    assert!(
        h.receive(&[("X-Hub-Signature-256", sig.as_str())][..], body, NOW)
            .is_err()
    );
}

fn stripe_header(secret: &str, t: u64, body: &[u8]) -> String {
    let ts = t.to_string();
    format!(
        "t={ts},v1={},v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39",
        hmac_sha256_hex(secret.as_bytes(), &[ts.as_bytes(), b".", body])
    )
}

#[test]
fn stripe_tolerance_event_id_and_several_v1() {
    let h = hook(config(Scheme::Stripe));
    let body = br#"{"id":"evt_1NG8Du2eZvKYlo2CUI79vXWy","type":"invoice.paid","data":{}}"#;
    let sig = stripe_header(SECRET, NOW - 299, body);
    let (r, key) = rows(
        h.receive(&[("Stripe-Signature", sig.as_str())][..], body, NOW)
            .unwrap(),
    );
    assert_eq!(r[0]["type"], "invoice.paid");
    assert_eq!(key, "hook:gh:evt_1NG8Du2eZvKYlo2CUI79vXWy");

    for t in [NOW - 301, NOW + 301] {
        let sig = stripe_header(SECRET, t, body);
        let err = h
            .receive(&[("Stripe-Signature", sig.as_str())][..], body, NOW)
            .unwrap_err();
        assert!(
            matches!(
                err,
                HookError::StaleTimestamp {
                    distance_secs: 301,
                    tolerance_secs: 300,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(err.status_and_code(), (401, "stale_timestamp"));
    }

    // Stripe sends one v1 per active secret while the endpoint's secret is rolled.
    let ts = NOW.to_string();
    let other = hmac_sha256_hex(b"whsec_previous_secret_xxxx", &[ts.as_bytes(), b".", body]);
    let mine = hmac_sha256_hex(SECRET.as_bytes(), &[ts.as_bytes(), b".", body]);
    let sig = format!("t={ts},v1={other},v1={mine}");
    assert!(
        h.receive(&[("Stripe-Signature", sig.as_str())][..], body, NOW)
            .is_ok()
    );

    // The timestamp is part of what is signed: moving it breaks the signature, so a stale
    // delivery cannot be refreshed.
    let sig = format!("t={},v1={mine}", NOW + 1);
    assert!(matches!(
        h.receive(&[("Stripe-Signature", sig.as_str())][..], body, NOW),
        Err(HookError::InvalidSignature(_))
    ));
    // An unsigned delivery learns nothing about the clock: the signature is checked first.
    let sig = format!("t={},v1={mine}", NOW - 10_000);
    assert!(matches!(
        h.receive(&[("Stripe-Signature", sig.as_str())][..], body, NOW),
        Err(HookError::InvalidSignature(_))
    ));
    for bad in [
        format!("v1={mine}"),
        format!("t={ts}"),
        format!("t=-5,v1={mine}"),
    ] {
        assert!(matches!(
            h.receive(&[("Stripe-Signature", bad.as_str())][..], body, NOW),
            Err(HookError::InvalidSignature(_))
        ));
    }
}

#[test]
fn slack_signature_challenge_and_event_id() {
    let h = hook(config(Scheme::Slack));
    let sign = |ts: &str, body: &[u8]| {
        format!(
            "v0={}",
            hmac_sha256_hex(SECRET.as_bytes(), &[b"v0:", ts.as_bytes(), b":", body])
        )
    };
    let ts = NOW.to_string();
    let challenge = br#"{"token":"x","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
    let sig = sign(&ts, challenge);
    let headers = [
        ("X-Slack-Request-Timestamp", ts.as_str()),
        ("X-Slack-Signature", sig.as_str()),
    ];
    assert_eq!(
        h.receive(&headers[..], challenge, NOW).unwrap(),
        Delivery::Answer(
            serde_json::json!({"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"})
        )
    );

    let event = br#"{"type":"event_callback","event_id":"Ev08MFMKH6","event":{"type":"app_mention","text":"hi"}}"#;
    let sig = sign(&ts, event);
    let headers = [
        ("X-Slack-Request-Timestamp", ts.as_str()),
        ("X-Slack-Signature", sig.as_str()),
    ];
    let (r, key) = rows(h.receive(&headers[..], event, NOW).unwrap());
    assert_eq!(r[0]["event"]["text"], "hi");
    assert_eq!(key, "hook:gh:Ev08MFMKH6");

    let old = (NOW - 600).to_string();
    let sig = sign(&old, event);
    let headers = [
        ("X-Slack-Request-Timestamp", old.as_str()),
        ("X-Slack-Signature", sig.as_str()),
    ];
    assert!(matches!(
        h.receive(&headers[..], event, NOW),
        Err(HookError::StaleTimestamp { .. })
    ));
}

#[test]
fn shopify_base64_and_webhook_id() {
    let h = hook(config(Scheme::Shopify));
    let body = br#"{"id":820982911946154508,"email":"jon@example.com"}"#;
    let sig = b64(&mac(SECRET, &[body]));
    let headers = [
        ("X-Shopify-Hmac-Sha256", sig.as_str()),
        (
            "X-Shopify-Webhook-Id",
            "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
        ),
    ];
    let (_, key) = rows(h.receive(&headers[..], body, NOW).unwrap());
    assert_eq!(key, format!("hook:gh:sha256:{}", sha256_hex(body)));
    let hex = hmac_sha256_hex(SECRET.as_bytes(), &[body]);
    assert!(
        h.receive(&[("X-Shopify-Hmac-Sha256", hex.as_str())][..], body, NOW)
            .is_err()
    );
}

#[test]
fn generic_hmac_with_timestamp_prefix_and_base64() {
    let mut c = config(Scheme::Hmac);
    c.signature_header = Some("X-Acme-Signature".into());
    c.signature_prefix = Some("sha256=".into());
    c.encoding = SignatureEncoding::Base64;
    c.timestamp_header = Some("X-Acme-Timestamp".into());
    let h = hook(c);
    let body = br#"[{"n":1},{"n":2}]"#;
    let ts = NOW.to_string();
    let sig = format!("sha256={}", b64(&mac(SECRET, &[ts.as_bytes(), b".", body])));
    let headers = [
        ("X-Acme-Signature", sig.as_str()),
        ("X-Acme-Timestamp", ts.as_str()),
    ];
    let (r, key) = rows(h.receive(&headers[..], body, NOW).unwrap());
    assert_eq!(r.len(), 2);
    assert_eq!(key, format!("hook:gh:sha256:{}", sha256_hex(body)));
    // Without the timestamp header the body alone does not verify.
    assert!(h.receive(&headers[..1], body, NOW).is_err());
    assert!(matches!(
        h.receive(&headers[..], body, NOW + 1000),
        Err(HookError::StaleTimestamp { .. })
    ));

    let plain = hook(config(Scheme::Hmac));
    let body = br#"{"n":1}"#;
    let sig = hmac_sha256_hex(SECRET.as_bytes(), &[body]);
    assert!(
        plain
            .receive(&[("X-Signature", sig.as_str())][..], body, NOW)
            .is_ok()
    );
}

#[test]
fn fields_and_body_column_mapping() {
    let mut c = config(Scheme::Github);
    c.body_column = Some("raw".into());
    c.fields = BTreeMap::from([
        ("repo".to_string(), "/repository/full_name".to_string()),
        ("missing".to_string(), "/no/such".to_string()),
    ]);
    c.headers = BTreeMap::from([("delivery".to_string(), "X-GitHub-Delivery".to_string())]);
    let h = hook(c);
    let body = br#"{"repository":{"full_name":"octo/hello"},"ref":"main"}"#;
    let sig = format!("sha256={}", hmac_sha256_hex(SECRET.as_bytes(), &[body]));
    let headers = [
        ("X-Hub-Signature-256", sig.as_str()),
        ("X-GitHub-Delivery", "d1"),
    ];
    let (r, _) = rows(h.receive(&headers[..], body, NOW).unwrap());
    assert_eq!(
        r,
        vec![serde_json::json!({
            "raw": std::str::from_utf8(body).unwrap(),
            "repo": "octo/hello",
            "delivery": "d1",
        })]
    );
}

#[test]
fn bodies_that_cannot_be_rows_are_refused() {
    let h = hook(config(Scheme::Github));
    for body in [&b"[1,2]"[..], b"\"text\"", b"{not json", b"42"] {
        let sig = format!("sha256={}", hmac_sha256_hex(SECRET.as_bytes(), &[body]));
        let err = h
            .receive(&[("X-Hub-Signature-256", sig.as_str())][..], body, NOW)
            .unwrap_err();
        assert!(matches!(err, HookError::Body(_)), "{err}");
        assert_eq!(err.status_and_code().0, 400);
    }
    let mut c = config(Scheme::Github);
    c.body_column = Some("raw".into());
    let h = hook(c);
    let body = b"\xff\xfe";
    let sig = format!("sha256={}", hmac_sha256_hex(SECRET.as_bytes(), &[body]));
    assert!(matches!(
        h.receive(&[("X-Hub-Signature-256", sig.as_str())][..], body, NOW),
        Err(HookError::Body(_))
    ));
}

/// A change to a valid configuration.
type Edit = Box<dyn Fn(&mut HookConfig)>;

#[test]
fn configurations_are_checked() {
    let bad: Vec<(&str, Edit)> = vec![
        ("name", Box::new(|c| c.name = "Bad Name".into())),
        ("name", Box::new(|c| c.name = String::new())),
        ("tenant", Box::new(|c| c.tenant = "../x".into())),
        ("table", Box::new(|c| c.table = "a/b".into())),
        ("one or two", Box::new(|c| c.secrets.clear())),
        (
            "one or two",
            Box::new(|c| c.secrets = vec![SECRET.into(), NEXT.into(), SECRET.into()]),
        ),
        ("too short", Box::new(|c| c.secrets = vec!["short".into()])),
        ("tolerance", Box::new(|c| c.tolerance = Duration::ZERO)),
        (
            "applies to scheme \"hmac\" only",
            Box::new(|c| c.signature_header = Some("X-Sig".into())),
        ),
        (
            "applies to scheme \"hmac\" only",
            Box::new(|c| c.encoding = SignatureEncoding::Base64),
        ),
        (
            "not a header name",
            Box::new(|c| {
                c.headers = BTreeMap::from([("a".to_string(), "X Bad".to_string())]);
            }),
        ),
        (
            "mapped twice",
            Box::new(|c| {
                c.body_column = Some("a".into());
                c.headers = BTreeMap::from([("a".to_string(), "X-A".to_string())]);
            }),
        ),
        (
            "JSON pointer",
            Box::new(|c| c.fields = BTreeMap::from([("a".to_string(), "a.b".to_string())])),
        ),
    ];
    for (expected, edit) in bad {
        let mut c = config(Scheme::Github);
        edit(&mut c);
        let err = Hook::new(c).unwrap_err();
        assert!(err.contains(expected), "{expected:?} not in {err:?}");
    }
    let dup = hooks(vec![config(Scheme::Github), config(Scheme::Stripe)]).unwrap_err();
    assert!(dup.contains("two webhook sources"), "{dup}");
    let secrets = format!("{:?}", config(Scheme::Github));
    assert!(!secrets.contains(SECRET), "{secrets}");
}
