//! The request examples of `src/http/openapi.json` on a real server: each does what the
//! document says it does.
//!
//! Examples are tied together by name: a request example named `N` is sent with the parameter
//! examples named `N` (path parameters fall back to their single `example`), and expects the
//! response that has an example named `N` (else the operation's only 2xx response). An error
//! example named like a request example must come back exactly: status, `code` and `detail`.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::time::Duration;

use common::openapi::{Operation, deref, document, example_value, operations, run_checker};
use common::{ADMIN_KEY, Server, try_send};
use serde_json::{Value, json};

/// The operations in the order a real server can run their examples: keys and tables first,
/// then writes, then reads and maintenance of what was written, then the commit events.
const WALK: &[&str] = &[
    "healthz",
    "readyz",
    "metrics",
    "getOpenApi",
    "createKey",
    "listKeys",
    "revokeKey",
    "putTable",
    "listTables",
    "getTable",
    "ingestEvents",
    "receiveWebhook",
    "deleteRow",
    "getRow",
    "queryTable",
    "flushTable",
    "compactTable",
    "listFiles",
    "subscribeEvents",
];

/// One request to run: a request example (or, without a body, a set of parameter examples).
struct Case {
    name: Option<String>,
    media: Option<String>,
    body: Option<Value>,
}

fn cases(doc: &Value, op: &Operation<'_>) -> Vec<Case> {
    if let Some(rb) = op.op.get("requestBody") {
        let mut out = Vec::new();
        for (mt, media) in deref(doc, rb)["content"].as_object().unwrap() {
            for (name, ex) in media["examples"].as_object().into_iter().flatten() {
                out.push(Case {
                    name: Some(name.clone()),
                    media: Some(mt.clone()),
                    body: Some(example_value(doc, ex).clone()),
                });
            }
            if let Some(v) = media.get("example") {
                out.push(Case {
                    name: None,
                    media: Some(mt.clone()),
                    body: Some(v.clone()),
                });
            }
        }
        assert!(
            !out.is_empty(),
            "{}: request body without examples",
            op.label()
        );
        return out;
    }
    let mut names: Vec<String> = Vec::new();
    for p in &op.params {
        for name in p["examples"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(n, _)| n)
        {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
    }
    if names.is_empty() {
        return vec![Case {
            name: None,
            media: None,
            body: None,
        }];
    }
    names
        .into_iter()
        .map(|n| Case {
            name: Some(n),
            media: None,
            body: None,
        })
        .collect()
}

/// A parameter's value for a case: its example of that name, else (when required) its
/// single example.
fn param_value(doc: &Value, op: &Operation<'_>, p: &Value, case: &Case) -> Option<String> {
    let named = case
        .name
        .as_ref()
        .and_then(|n| p["examples"].get(n))
        .map(|ex| example_value(doc, ex));
    let value = match named {
        Some(v) => v,
        None if p["required"] == true => p
            .get("example")
            .or_else(|| {
                p["examples"]
                    .as_object()
                    .and_then(|m| m.values().next())
                    .map(|ex| example_value(doc, ex))
            })
            .unwrap_or_else(|| {
                panic!(
                    "{}: required parameter {} has no example",
                    op.label(),
                    p["name"]
                )
            }),
        None => return None,
    };
    Some(match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// Percent-encodes everything but unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What a case should get back: the status, and the media type and example named like the
/// case, if one is.
struct Expected<'a> {
    status: String,
    response: &'a Value,
    media: Option<String>,
    example: Option<&'a Value>,
}

fn expected<'a>(doc: &'a Value, op: &Operation<'a>, case: &Case) -> Expected<'a> {
    let responses = op.op["responses"].as_object().unwrap();
    if let Some(name) = &case.name {
        for (status, resp) in responses {
            let resp = deref(doc, resp);
            for (mt, media) in resp["content"].as_object().into_iter().flatten() {
                if let Some(ex) = media["examples"].get(name) {
                    return Expected {
                        status: status.clone(),
                        response: resp,
                        media: Some(mt.clone()),
                        example: Some(example_value(doc, ex)),
                    };
                }
            }
        }
    }
    let success: Vec<_> = responses
        .iter()
        .filter(|(s, _)| s.starts_with('2'))
        .collect();
    assert_eq!(
        success.len(),
        1,
        "{} example {:?}: no response example of that name, and not exactly one 2xx response",
        op.label(),
        case.name
    );
    Expected {
        status: success[0].0.clone(),
        response: deref(doc, success[0].1),
        media: None,
        example: None,
    }
}

fn base_type(ct: &str) -> String {
    ct.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Reads a server-sent event stream up to its first event (or `limit` lines); the text read.
fn read_first_event(url: &str, headers: &[(String, String)]) -> (u16, String, String) {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10))
        .timeout_read(Duration::from_secs(20))
        .build();
    let mut req = agent
        .get(url)
        .set("Authorization", &format!("Bearer {ADMIN_KEY}"));
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("GET {url}: {e}"),
    };
    let status = resp.status();
    let ct = resp.header("content-type").unwrap_or_default().to_string();
    if status != 200 {
        return (status, ct, resp.into_string().unwrap_or_default());
    }
    let mut text = String::new();
    let mut reader = BufReader::new(resp.into_reader());
    let mut in_event = false;
    for _ in 0..1000 {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        text.push_str(&line);
        if line.starts_with("data:") {
            in_event = true;
        }
        if in_event && line == "\n" {
            break;
        }
    }
    (status, ct, text)
}

#[test]
fn request_examples_do_what_the_document_says_on_a_real_server() {
    let doc = document();
    let ops = operations(&doc);
    let documented: BTreeSet<&str> = ops.iter().map(|o| o.id.as_str()).collect();
    let walked: BTreeSet<&str> = WALK.iter().copied().collect();
    assert_eq!(
        documented, walked,
        "WALK must list every documented operation once"
    );

    let dir = tempfile::tempdir().unwrap();
    // Nothing moves on its own: catalog versions and files change only by the walk's requests.
    let server = Server::start(
        dir.path(),
        &[
            ("ALLUVIUM_COMPACTION__INTERVAL", "0s"),
            ("ALLUVIUM_MEMTABLE__FREEZE_AGE", "10m"),
            // The source the `receiveWebhook` examples are signed for.
            (
                "ALLUVIUM_SOURCES__WEBHOOK",
                r#"[{ name = "github", table = "clicks", scheme = "github", secrets = ["example-github-secret-0123456789"] }]"#,
            ),
        ],
    );
    let mut instances: Vec<Value> = Vec::new();
    let mut errors_checked: Vec<String> = Vec::new();
    let mut requests = 0;
    for id in WALK {
        let op = ops.iter().find(|o| o.id == *id).unwrap();
        let public = op.op["security"].as_array().is_some_and(|s| s.is_empty());
        for case in cases(&doc, op) {
            let label = format!(
                "{} example {}",
                op.label(),
                case.name.as_deref().unwrap_or("(default)")
            );
            let want = expected(&doc, op, &case);
            let mut path = op.path.clone();
            let mut query = Vec::new();
            let mut headers: Vec<(String, String)> = Vec::new();
            for p in &op.params {
                let Some(v) = param_value(&doc, op, p, &case) else {
                    continue;
                };
                let name = p["name"].as_str().unwrap();
                match p["in"].as_str().unwrap() {
                    "path" => path = path.replace(&format!("{{{name}}}"), &encode(&v)),
                    "query" => query.push(format!("{}={}", encode(name), encode(&v))),
                    "header" => headers.push((name.to_string(), v)),
                    other => panic!("{label}: parameters in {other} are not supported"),
                }
            }
            assert!(!path.contains('{'), "{label}: path {path} is not filled in");
            let mut url = server.url(&path);
            if !query.is_empty() {
                url = format!("{url}?{}", query.join("&"));
            }
            requests += 1;

            let streams = want.response["content"].get("text/event-stream").is_some();
            if streams {
                let (status, ct, text) = read_first_event(&url, &headers);
                assert_eq!(status.to_string(), want.status, "{label}: {text}");
                assert_eq!(base_type(&ct), "text/event-stream", "{label}");
                assert!(
                    text.starts_with(": subscribed\n"),
                    "{label}: the stream does not open with the subscribed comment: {text}"
                );
                if want
                    .example
                    .is_some_and(|e| e.as_str().is_some_and(|s| s.contains("data:")))
                {
                    assert!(
                        text.contains("\ndata: "),
                        "{label}: no event replayed: {text}"
                    );
                }
                instances.push(json!({
                    "label": format!("{label}: the stream read"),
                    "schema": {"type": "string"},
                    "instance": text,
                    "sse": text,
                }));
                continue;
            }

            let body: Option<Vec<u8>> =
                case.body
                    .as_ref()
                    .map(|b| match (case.media.as_deref(), b) {
                        (Some("application/json"), v) => serde_json::to_vec(v).unwrap(),
                        (_, Value::String(s)) => s.clone().into_bytes(),
                        (_, v) => serde_json::to_vec(v).unwrap(),
                    });
            if let Some(m) = want.media.as_ref().filter(|_| want.status.starts_with('2')) {
                headers.push(("Accept".into(), m.clone()));
            }
            let header_refs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let r = try_send(
                &op.method,
                &url,
                (!public).then_some(ADMIN_KEY),
                case.media.as_deref(),
                body.as_deref(),
                &header_refs,
            )
            .unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(
                r.status.to_string(),
                want.status,
                "{label}: expected {}, got {}: {}",
                want.status,
                r.status,
                r.body
            );
            let ct = base_type(r.header("content-type").unwrap_or_default());
            let content = want.response["content"].as_object().unwrap();
            let media = content
                .iter()
                .find(|(mt, _)| base_type(mt) == ct)
                .map(|(_, m)| m)
                .unwrap_or_else(|| {
                    panic!(
                        "{label}: answered {ct:?}, documented {:?}",
                        content.keys().collect::<Vec<_>>()
                    )
                });
            if want.status.starts_with('2') {
                for h in want.response["headers"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(h, _)| h)
                {
                    assert!(
                        r.header(h).is_some(),
                        "{label}: header {h} is missing: {r:?}"
                    );
                }
            }
            if ct == "application/x-ndjson" {
                for line in r.body.lines().filter(|l| !l.trim().is_empty()) {
                    let row: Value = serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("{label}: NDJSON line {line:?}: {e}"));
                    assert!(
                        row.is_object(),
                        "{label}: NDJSON line {line:?} is not an object"
                    );
                }
            }
            if ct == "application/json" || ct == "application/problem+json" {
                let got = r.json();
                instances.push(json!({
                    "label": format!("{label}: the answer"),
                    "schema": media["schema"],
                    "instance": got,
                }));
                if !want.status.starts_with('2') {
                    let example = want
                        .example
                        .unwrap_or_else(|| panic!("{label}: an error case needs its example"));
                    assert_eq!(
                        &got, example,
                        "{label}: the documented error is not what the server answers"
                    );
                    errors_checked.push(label.clone());
                }
            }
        }
    }
    assert!(requests >= WALK.len(), "only {requests} requests were sent");
    assert!(
        errors_checked.iter().any(|l| l.starts_with("ingestEvents")),
        "no documented ingest error was checked: {errors_checked:?}"
    );

    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(&instances).unwrap()).unwrap();
    let checked = run_checker("instances", &[file.path()]);
    assert!(checked as usize >= instances.len());
}
