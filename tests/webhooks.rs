//! Outgoing webhooks: commit events POSTed in order and signed, a failed attempt retried,
//! events given up on in the dead-letter log, delivery resumed after a `kill -9` from the
//! cursor, and a bad webhook refusing the start.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::http_sink::{Log, Received, http_sink};
use common::*;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

const SECRET: &str = "whsec-0123456789abcdef";
const WAIT: Duration = Duration::from_secs(30);

/// A webhook endpoint on 127.0.0.1: answers 500 to the first request and 200 to every later
/// one, and records them all.
fn receiver() -> (String, Log) {
    http_sink("/hook", |n| if n == 0 { 500 } else { 200 })
}

/// The id of the event a request carried.
fn id(r: &Received) -> String {
    r.json()["id"].as_str().unwrap().to_string()
}

/// A URL where nothing listens.
fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/hook")
}

fn received(log: &Log) -> Vec<Received> {
    log.lock().unwrap().clone()
}

/// Checks `Alluvium-Signature: t=<secs>,v1=<hex>` against the body, with an HMAC computed
/// here, independently of the server's code.
fn assert_signed(r: &Received) {
    let sig = r.header("Alluvium-Signature");
    let (t, v1) = sig
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
        .unwrap_or_else(|| panic!("malformed signature {sig:?}"));
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(&r.body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v1, expected, "signature does not verify");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let t: u64 = t.parse().unwrap();
    assert!(
        t.abs_diff(now) < 300,
        "signature time {t} is not now ({now})"
    );
}

/// The event lines of a dead-letter log.
fn dead_letters(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The catalog version of an event id `{version}:{index}`.
fn version_of(id: &str) -> u64 {
    id.split_once(':').unwrap().0.parse().unwrap()
}

fn compact_ok(server: &Server, table: &str) {
    let r = compact(server, table);
    assert_eq!(r.status, 200, "compact: {r:?}");
}

fn flush_version(server: &Server, table: &str) -> u64 {
    let r = flush(server, ADMIN_KEY, table);
    r["catalog_version"].as_u64().unwrap()
}

fn env_with(config: &Path) -> [(&'static str, String); 3] {
    [
        ("ALLUVIUM_CONFIG", config.display().to_string()),
        ("ALLUVIUM_COMPACTION__INTERVAL", "0s".into()),
        // Only the flushes the test asks for.
        ("ALLUVIUM_MEMTABLE__FREEZE_AGE", "1h".into()),
    ]
}

fn start(data: &Path, config: &Path) -> Server {
    let env = env_with(config);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start(data, &env)
}

#[test]
fn commit_events_are_delivered_signed_in_order_retried_dead_lettered_and_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (url, log) = receiver();
    let config = dir.path().join("alluvium.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[webhooks]]
name = "hook"
url = "{url}"
secret = "{SECRET}"
tenant = "default"
table = "t"
kinds = ["flushed", "compacted"]

[[webhooks]]
name = "dead"
url = "{dead}"
secret = "{SECRET}"
max_attempts = 2
timeout = "2s"
"#,
            dead = closed_port_url()
        ),
    )
    .unwrap();
    let hook_cursor = data.join("notify/webhook-hook.cursor");
    let dead_log = data.join("notify/webhook-dead.deadletter.ndjson");

    let mut server = start(&data, &config);
    let schema = json!({"fields": [{"name": "id", "type": "int64", "nullable": false}]});
    create_table(&server, ADMIN_KEY, "t", &schema);
    create_table(&server, ADMIN_KEY, "u", &schema);
    // Table `u` is not the hook's: its events only reach the dead webhook.
    assert_eq!(
        ingest(&server, ADMIN_KEY, "u", &json!([{"id": 1}])).status,
        200
    );
    flush_version(&server, "u");
    assert_eq!(
        ingest(&server, ADMIN_KEY, "t", &json!([{"id": 1}, {"id": 2}])).status,
        200
    );
    let f1 = flush_version(&server, "t");
    assert_eq!(
        ingest(&server, ADMIN_KEY, "t", &json!([{"id": 3}])).status,
        200
    );
    let f2 = flush_version(&server, "t");
    compact_ok(&server, "t");

    // The first flush is answered 500, sent again, then everything else once, in order.
    let got = wait_for(WAIT, || {
        let got = received(&log);
        (got.len() >= 4).then_some(got)
    })
    .unwrap_or_else(|| panic!("the hook got {:?}", received(&log)));
    let statuses: Vec<u16> = got.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [500, 200, 200, 200]);
    let bodies: Vec<Value> = got.iter().map(Received::json).collect();
    let kinds: Vec<&str> = bodies.iter().map(|b| b["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["flushed", "flushed", "flushed", "compacted"]);
    assert_eq!(got[0].body, got[1].body, "a retry sends the same event");
    assert_eq!(version_of(&id(&got[1])), f1);
    assert_eq!(version_of(&id(&got[2])), f2);
    assert!(version_of(&id(&got[3])) > f2);
    for r in &got {
        assert_eq!(r.method, "POST");
        assert_eq!(r.header("Content-Type"), "application/json");
        assert_eq!(r.header("Alluvium-Event-Id"), id(r));
        assert_signed(r);
        let body = r.json();
        assert_eq!(
            (body["tenant"].as_str(), body["table"].as_str()),
            (Some("default"), Some("t"))
        );
    }
    let compacted_id = id(&got[3]);
    // The cursor is past the last delivered event.
    wait_for(WAIT, || {
        (std::fs::read_to_string(&hook_cursor).ok()? == compacted_id).then_some(())
    })
    .unwrap_or_else(|| panic!("the hook's cursor did not reach {compacted_id}"));

    // The dead webhook may be anywhere in its backlog: crash it there.
    let before_crash = dead_letters(&dead_log).len();
    server.kill9();
    let mut server = start(&data, &config);
    assert_eq!(
        ingest(&server, ADMIN_KEY, "t", &json!([{"id": 4}])).status,
        200
    );
    let f3 = flush_version(&server, "t");

    // Only the new flush comes: what was delivered before the crash is not sent again.
    let got = wait_for(WAIT, || {
        let got = received(&log);
        (got.len() >= 5).then_some(got)
    })
    .unwrap_or_else(|| panic!("the hook got {:?}", received(&log)));
    assert_eq!(version_of(&id(&got[4])), f3, "{:?}", got[4].json());
    assert_eq!(got[4].json()["kind"], "flushed");
    assert_signed(&got[4]);

    // Every event, of every table and kind, ends up in the dead webhook's log after two
    // attempts each, in order; only the one in hand at the crash may be there twice.
    let letters = wait_for(WAIT, || {
        let letters = dead_letters(&dead_log);
        letters
            .iter()
            .any(|l| version_of(l["event"]["id"].as_str().unwrap()) == f3)
            .then_some(letters)
    })
    .unwrap_or_else(|| panic!("dead letters: {:?}", dead_letters(&dead_log)));
    let mut seen: Vec<(String, String, String)> = Vec::new();
    let mut repeats = 0;
    for l in &letters {
        assert_eq!(l["attempts"], 2, "{l}");
        assert!(!l["last_error"].as_str().unwrap().is_empty(), "{l}");
        let failed_at = l["failed_at"].as_str().unwrap();
        chrono::DateTime::parse_from_rfc3339(failed_at).unwrap();
        let e = &l["event"];
        let key = (
            e["id"].as_str().unwrap().to_string(),
            e["kind"].as_str().unwrap().to_string(),
            e["table"].as_str().unwrap().to_string(),
        );
        if seen.last() == Some(&key) {
            repeats += 1;
            continue;
        }
        if let Some(last) = seen.last() {
            assert!(
                CommitKey::of(&last.0) < CommitKey::of(&key.0),
                "dead letters out of order: {letters:?}"
            );
        }
        seen.push(key);
    }
    assert!(repeats <= 1, "{letters:?}");
    let what: Vec<(&str, &str)> = seen
        .iter()
        .map(|(_, kind, table)| (kind.as_str(), table.as_str()))
        .collect();
    assert_eq!(
        what,
        [
            ("schema", "t"),
            ("schema", "u"),
            ("flushed", "u"),
            ("flushed", "t"),
            ("flushed", "t"),
            ("compacted", "t"),
            ("flushed", "t"),
        ],
        "dead letters (crash after {before_crash}): {letters:?}"
    );
    assert_eq!(seen[6].0, id(&got[4]));

    // Nothing more reached the hook meanwhile.
    assert_eq!(received(&log).len(), 5, "{:?}", received(&log));
    server.kill9();
}

/// An event id as an ordered pair.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct CommitKey(u64, u64);

impl CommitKey {
    fn of(id: &str) -> CommitKey {
        let (v, i) = id.split_once(':').unwrap();
        CommitKey(v.parse().unwrap(), i.parse().unwrap())
    }
}

#[test]
fn an_invalid_webhook_refuses_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("alluvium.toml");
    std::fs::write(
        &config,
        "[[webhooks]]\nname = \"hook\"\nurl = \"http://127.0.0.1:9/\"\nsecret = \"too-short\"\n",
    )
    .unwrap();
    let config = config.display().to_string();
    let stderr = start_refused(&dir.path().join("data"), &[("ALLUVIUM_CONFIG", &config)]);
    assert!(
        stderr.contains("invalid [[webhooks]] configuration")
            && stderr.contains("webhook hook: secret must be at least 16 bytes"),
        "{stderr}"
    );
}
