//! Inbound webhooks: deliveries signed the way GitHub, Stripe and Slack sign theirs (and a
//! generic HMAC sender), sent to `POST /v1/hooks/{source}` of a real server. Only correctly
//! signed, fresh deliveries land, and each exactly once: a tampered body, a stale or future
//! timestamp, a wrong secret or a missing signature is refused and writes nothing; a replayed
//! delivery is answered as a duplicate; both secrets verify while one is rotated.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

const SECRET: &str = "whsec_0123456789abcdefghijklmnop";
const ROTATED: &str = "whsec_rotated_qrstuvwxyz98765432";
const OTHER: &str = "whsec_not_configured_anywhere_00";

fn hex_hmac(secret: &str, message: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(message);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn deliver(server: &Server, hook: &str, body: &[u8], headers: &[(&str, &str)]) -> Resp {
    try_send(
        "POST",
        &server.url(&format!("/v1/hooks/{hook}")),
        None,
        Some("application/json"),
        Some(body),
        headers,
    )
    .unwrap()
}

/// GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`.
fn github(server: &Server, secret: &str, event: &str, delivery: &str, body: &[u8]) -> Resp {
    let sig = format!("sha256={}", hex_hmac(secret, body));
    deliver(
        server,
        "github",
        body,
        &[
            ("X-GitHub-Event", event),
            ("X-GitHub-Delivery", delivery),
            ("X-Hub-Signature-256", &sig),
            ("User-Agent", "GitHub-Hookshot/044aadd"),
        ],
    )
}

/// Stripe: `Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
fn stripe_signature(secret: &str, t: u64, body: &[u8]) -> String {
    let signed = [t.to_string().as_bytes(), b".", body].concat();
    format!("t={t},v1={}", hex_hmac(secret, &signed))
}

/// Slack: `X-Slack-Signature: v0=<hex HMAC-SHA256(secret, "v0:<ts>:<body>")>`.
fn slack(server: &Server, t: u64, body: &[u8], extra: &[(&str, &str)]) -> Resp {
    let ts = t.to_string();
    let signed = [b"v0:", ts.as_bytes(), b":", body].concat();
    let sig = format!("v0={}", hex_hmac(SECRET, &signed));
    let mut headers = vec![
        ("X-Slack-Request-Timestamp", ts.as_str()),
        ("X-Slack-Signature", sig.as_str()),
    ];
    headers.extend_from_slice(extra);
    deliver(server, "slack", body, &headers)
}

fn rows(server: &Server, table: &str) -> Vec<Value> {
    let mut rows = query_all(server, ADMIN_KEY, table, &json!({}));
    for r in &mut rows {
        if let Some(o) = r.as_object_mut() {
            o.retain(|k, _| !k.starts_with('_'));
        }
    }
    rows
}

/// The sources, as `ALLUVIUM_SOURCES__WEBHOOK` (a TOML array; inline tables on one line).
fn hooks_env() -> String {
    let github = format!(
        r#"{{ name = "github", table = "gh", scheme = "github", secrets = ["{SECRET}", "{ROTATED}"], headers = {{ delivery = "X-GitHub-Delivery", event = "X-GitHub-Event" }}, fields = {{ action = "/action", repo = "/repository/full_name" }} }}"#
    );
    let stripe = format!(
        r#"{{ name = "stripe", table = "payments", scheme = "stripe", secrets = ["{SECRET}"], fields = {{ id = "/id", type = "/type", amount = "/data/object/amount_paid" }} }}"#
    );
    let slack = format!(
        r#"{{ name = "slack", table = "slack", scheme = "slack", secrets = ["{SECRET}"], body_column = "payload", fields = {{ event_id = "/event_id", kind = "/event/type" }} }}"#
    );
    let acme = format!(
        r#"{{ name = "acme", table = "acme", scheme = "hmac", secrets = ["{SECRET}"], signature_header = "X-Acme-Signature", signature_prefix = "sha256=", timestamp_header = "X-Acme-Timestamp" }}"#
    );
    format!("[{github}, {stripe}, {slack}, {acme}]")
}

fn string_table(server: &Server, table: &str, columns: &[&str]) {
    let fields: Vec<Value> = columns
        .iter()
        .map(|c| json!({"name": c, "type": "string"}))
        .collect();
    create_table(server, ADMIN_KEY, table, &json!({ "fields": fields }));
}

fn start() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let hooks = hooks_env();
    let server = Server::start(dir.path(), &[("ALLUVIUM_SOURCES__WEBHOOK", &hooks)]);
    string_table(&server, "gh", &["delivery", "event", "action", "repo"]);
    create_table(
        &server,
        ADMIN_KEY,
        "payments",
        &json!({"fields": [
            {"name": "id", "type": "string"},
            {"name": "type", "type": "string"},
            {"name": "amount", "type": "int64"}
        ]}),
    );
    string_table(&server, "slack", &["event_id", "kind", "payload"]);
    create_table(
        &server,
        ADMIN_KEY,
        "acme",
        &json!({"fields": [
            {"name": "n", "type": "int64", "nullable": false},
            {"name": "note", "type": "string"}
        ]}),
    );
    (dir, server)
}

#[test]
fn github_deliveries_land_once_and_forgeries_never() {
    let (_dir, server) = start();
    let push = br#"{"ref":"refs/heads/main","action":"pushed","repository":{"full_name":"octo/hello","id":1296269},"sender":{"login":"octocat"}}"#;
    let delivery = "72d3162e-cc78-11e3-81ab-4c9367dc0958";

    let r = github(&server, SECRET, "push", delivery, push);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        (r.json()["accepted"].clone(), r.json()["durability"].clone()),
        (json!(1), json!("wal"))
    );

    // GitHub's "Redeliver" sends the same delivery id and body again: stored once.
    let r = github(&server, SECRET, "push", delivery, push);
    assert_eq!(
        (r.status, r.json()["duplicate"].clone()),
        (200, json!(true)),
        "{r:?}"
    );

    // A captured delivery replayed under a new delivery id (the header is not signed): the
    // key comes from the signed body, so it is still a duplicate.
    let r = github(
        &server,
        SECRET,
        "push",
        "00000000-0000-0000-0000-00000000beef",
        push,
    );
    assert_eq!(
        (r.status, r.json()["duplicate"].clone()),
        (200, json!(true)),
        "{r:?}"
    );

    // The captured signature over a changed body.
    let tampered = String::from_utf8_lossy(push).replace("octo/hello", "evil/repo");
    let sig = format!("sha256={}", hex_hmac(SECRET, push));
    let r = deliver(
        &server,
        "github",
        tampered.as_bytes(),
        &[
            ("X-GitHub-Delivery", "forged-1"),
            ("X-Hub-Signature-256", &sig),
        ],
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (401, "invalid_signature"),
        "{r:?}"
    );

    // A secret this source does not know, and no signature at all.
    let r = github(&server, OTHER, "push", "forged-2", push);
    assert_eq!((r.status, r.code().as_str()), (401, "invalid_signature"));
    let r = deliver(
        &server,
        "github",
        push,
        &[("X-GitHub-Delivery", "forged-3")],
    );
    assert_eq!((r.status, r.code().as_str()), (401, "invalid_signature"));
    assert!(r.body.contains("X-Hub-Signature-256"), "{}", r.body);

    // During rotation the new secret verifies too.
    let issue = br#"{"action":"opened","repository":{"full_name":"octo/hello"}}"#;
    let r = github(
        &server,
        ROTATED,
        "issues",
        "8a1b6a00-cc78-11e3-8d8c-1f7a0b0e5d11",
        issue,
    );
    assert_eq!(r.status, 200, "{r:?}");

    // GitHub's ping on creating the hook: answered, not stored.
    let ping = br#"{"zen":"Design for failure.","hook_id":42}"#;
    let r = github(&server, SECRET, "ping", "ping-1", ping);
    assert_eq!((r.status, r.json()["event"].clone()), (200, json!("ping")));

    let mut got = rows(&server, "gh");
    got.sort_by_key(|r| r["event"].as_str().unwrap().to_string());
    assert_eq!(
        got,
        vec![
            json!({"delivery": "8a1b6a00-cc78-11e3-8d8c-1f7a0b0e5d11", "event": "issues", "action": "opened", "repo": "octo/hello"}),
            json!({"delivery": delivery, "event": "push", "action": "pushed", "repo": "octo/hello"}),
        ]
    );
}

#[test]
fn stripe_and_slack_deliveries_honour_the_timestamp_window() {
    let (_dir, server) = start();
    let event = br#"{"id":"evt_1NG8Du2eZvKYlo2CUI79vXWy","object":"event","type":"invoice.paid","data":{"object":{"id":"in_1","amount_paid":2000}}}"#;
    let stripe =
        |sig: &str, body: &[u8]| deliver(&server, "stripe", body, &[("Stripe-Signature", sig)]);

    let sig = stripe_signature(SECRET, now(), event);
    assert_eq!(stripe(&sig, event).status, 200);
    // Stripe retries an unanswered event with the same id (and a new signature): stored once.
    let retry = stripe_signature(SECRET, now(), event);
    let r = stripe(&retry, event);
    assert_eq!(
        (r.status, r.json()["duplicate"].clone()),
        (200, json!(true)),
        "{r:?}"
    );
    // Correctly signed but outside the 5-minute window, either way.
    for t in [now() - 600, now() + 600] {
        let r = stripe(&stripe_signature(SECRET, t, event), event);
        assert_eq!(
            (r.status, r.code().as_str()),
            (401, "stale_timestamp"),
            "{r:?}"
        );
    }
    let other = br#"{"id":"evt_2","object":"event","type":"invoice.paid","data":{"object":{"amount_paid":1}}}"#;
    let r = stripe(&sig, other);
    assert_eq!((r.status, r.code().as_str()), (401, "invalid_signature"));
    let r = stripe(&stripe_signature(OTHER, now(), other), other);
    assert_eq!((r.status, r.code().as_str()), (401, "invalid_signature"));
    assert_eq!(
        rows(&server, "payments"),
        vec![json!({"id": "evt_1NG8Du2eZvKYlo2CUI79vXWy", "type": "invoice.paid", "amount": 2000})]
    );

    // Slack: the URL verification challenge is answered, not stored.
    let challenge = br#"{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
    let r = slack(&server, now(), challenge, &[]);
    assert_eq!(
        (r.status, r.json()),
        (
            200,
            json!({"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"})
        )
    );
    let mention = br#"{"type":"event_callback","team_id":"T061EG9R6","event_id":"Ev0PV52K21","event":{"type":"app_mention","text":"<@U0LAN0Z89> is it everything?"}}"#;
    assert_eq!(slack(&server, now(), mention, &[]).status, 200);
    // Slack's retry of the same event carries X-Slack-Retry-Num: stored once.
    let r = slack(
        &server,
        now(),
        mention,
        &[
            ("X-Slack-Retry-Num", "1"),
            ("X-Slack-Retry-Reason", "http_timeout"),
        ],
    );
    assert_eq!(
        (r.status, r.json()["duplicate"].clone()),
        (200, json!(true)),
        "{r:?}"
    );
    let r = slack(&server, now() - 301, mention, &[]);
    assert_eq!((r.status, r.code().as_str()), (401, "stale_timestamp"));
    let got = rows(&server, "slack");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0]["event_id"].as_str(), got[0]["kind"].as_str()),
        (Some("Ev0PV52K21"), Some("app_mention"))
    );
    assert_eq!(got[0]["payload"].as_str().unwrap().as_bytes(), mention);
}

#[test]
fn generic_hmac_and_bad_deliveries_write_nothing() {
    let (_dir, server) = start();
    let acme = |body: &[u8], t: u64, delivery: &str, extra: &[(&str, &str)]| {
        let ts = t.to_string();
        let sig = format!(
            "sha256={}",
            hex_hmac(SECRET, &[ts.as_bytes(), b".", body].concat())
        );
        let mut headers = vec![
            ("X-Acme-Signature", sig.as_str()),
            ("X-Acme-Timestamp", ts.as_str()),
            ("X-Acme-Delivery", delivery),
        ];
        headers.extend_from_slice(extra);
        deliver(&server, "acme", body, &headers)
    };
    let r = acme(br#"[{"n":1,"note":"a"},{"n":2}]"#, now(), "d-1", &[]);
    assert_eq!(
        (r.status, r.json()["accepted"].clone()),
        (200, json!(2)),
        "{r:?}"
    );

    // Correctly signed, but nothing of it may be written.
    let r = acme(br#"{"n":"three"}"#, now(), "d-2", &[]);
    assert_eq!(r.status, 400, "type mismatch: {r:?}");
    let r = acme(b"n=3", now(), "d-3", &[]);
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_webhook_body"));
    let r = acme(br#"{"n":4}"#, now(), "d-4", &[("Content-Encoding", "gzip")]);
    assert_eq!(r.status, 415, "{r:?}");
    let r = deliver(&server, "nope", br#"{"n":5}"#, &[]);
    assert_eq!((r.status, r.code().as_str()), (404, "not_found"));
    // The route takes no credential: an admin key does not stand in for a signature.
    let r = try_send(
        "POST",
        &server.url("/v1/hooks/acme"),
        Some(ADMIN_KEY),
        Some("application/json"),
        Some(br#"{"n":6}"#),
        &[],
    )
    .unwrap();
    assert_eq!((r.status, r.code().as_str()), (401, "invalid_signature"));

    let mut got = rows(&server, "acme");
    got.sort_by_key(|r| r["n"].as_i64());
    assert_eq!(
        got,
        vec![json!({"n": 1, "note": "a"}), json!({"n": 2, "note": null})]
    );
}

#[test]
fn an_invalid_source_refuses_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = start_refused(
        &dir.path().join("data"),
        &[(
            "ALLUVIUM_SOURCES__WEBHOOK",
            r#"[{ name = "gh", table = "t", scheme = "github", secrets = ["short"] }]"#,
        )],
    );
    assert!(
        stderr.contains("invalid [[sources.webhook]] configuration")
            && stderr.contains("a secret of 5 bytes is too short"),
        "{stderr}"
    );
}
