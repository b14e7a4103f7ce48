//! The OpenAPI document `src/http/openapi.json` against the code and a real server: it is what
//! `GET /v1/openapi.json` serves, it describes exactly the registered routes
//! (`alluvium::http::ROUTES`), it is valid OpenAPI 3.1, its examples fit its schemas, and its
//! request examples do on a real server what the document says they do.
//!
//! Examples are tied together by name: a request example named `N` is sent with the parameter
//! examples named `N` (path parameters fall back to their single `example`), and expects the
//! response that has an example named `N` (else the operation's only 2xx response). An error
//! example named like a request example must come back exactly: status, `code` and `detail`.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::time::Duration;

use common::{ADMIN_KEY, Server, python, try_send};
use serde_json::{Value, json};

/// The operations in the order a real server can run their examples: keys and tables first,
/// then writes, then reads and maintenance of what was written, then the commit events.
const WALK: &[&str] = &[
    "healthz",
    "readyz",
    "metrics",
    "getOpenApi",
    "createKey",
    "putTable",
    "listTables",
    "getTable",
    "ingestEvents",
    "deleteRow",
    "getRow",
    "queryTable",
    "flushTable",
    "compactTable",
    "listFiles",
    "subscribeEvents",
];

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

fn document_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/http/openapi.json")
}

fn document() -> Value {
    let text = std::fs::read_to_string(document_path()).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Follows `$ref`s (local JSON pointers) to the object they name.
fn deref<'a>(doc: &'a Value, mut v: &'a Value) -> &'a Value {
    for _ in 0..16 {
        let Some(r) = v.get("$ref").and_then(Value::as_str) else {
            return v;
        };
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("only local references are supported: {r}"));
        v = doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("dangling reference {r}"));
    }
    panic!("reference chain too long")
}

/// `/v1/tables/{table}` -> `/v1/tables/{}`: templates compare whatever their variables are named.
fn normalise(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_var = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_var = true;
                out.push_str("{}");
            }
            '}' => in_var = false,
            _ if in_var => {}
            _ => out.push(c),
        }
    }
    out
}

/// One documented operation with its parameters (path-level and operation-level, resolved).
struct Operation<'a> {
    id: String,
    method: String,
    path: String,
    op: &'a Value,
    params: Vec<&'a Value>,
}

impl Operation<'_> {
    fn label(&self) -> String {
        format!("{} ({} {})", self.id, self.method, self.path)
    }
}

fn operations(doc: &Value) -> Vec<Operation<'_>> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let item = deref(doc, item);
        let shared: Vec<&Value> = item["parameters"]
            .as_array()
            .map(|ps| ps.iter().map(|p| deref(doc, p)).collect())
            .unwrap_or_default();
        for method in METHODS {
            let Some(op) = item.get(*method) else {
                continue;
            };
            let mut params: Vec<&Value> = op["parameters"]
                .as_array()
                .map(|ps| ps.iter().map(|p| deref(doc, p)).collect())
                .unwrap_or_default();
            for p in &shared {
                if !params
                    .iter()
                    .any(|q| q["name"] == p["name"] && q["in"] == p["in"])
                {
                    params.push(p);
                }
            }
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path} has no operationId"))
                .to_string();
            out.push(Operation {
                id,
                method: method.to_ascii_uppercase(),
                path: path.clone(),
                op,
                params,
            });
        }
    }
    out
}

/// The value of an Example Object or a parameter's `example`.
fn example_value<'a>(doc: &'a Value, ex: &'a Value) -> &'a Value {
    &deref(doc, ex)["value"]
}

#[test]
fn served_document_is_the_file_in_the_repository() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    // No credential: the document is public.
    let r = try_send(
        "GET",
        &server.url("/v1/openapi.json"),
        None,
        None,
        None,
        &[],
    )
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("content-type")
            .map(|v| v.split(';').next().unwrap_or("").trim()),
        Some("application/json")
    );
    let file = std::fs::read(document_path()).unwrap();
    assert!(
        r.raw == file,
        "GET /v1/openapi.json differs from src/http/openapi.json ({} vs {} bytes)",
        r.raw.len(),
        file.len()
    );
}

#[test]
fn document_describes_exactly_the_registered_routes() {
    let doc = document();
    let routes = alluvium::http::ROUTES;
    let registered: BTreeSet<(String, String)> = routes
        .iter()
        .map(|(m, p)| (m.to_string(), normalise(p)))
        .collect();
    assert_eq!(
        registered.len(),
        routes.len(),
        "a route is registered twice"
    );
    let ops = operations(&doc);
    let documented: BTreeSet<(String, String)> = ops
        .iter()
        .map(|o| (o.method.clone(), normalise(&o.path)))
        .collect();
    let undocumented: Vec<_> = registered.difference(&documented).collect();
    let unregistered: Vec<_> = documented.difference(&registered).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from src/http/openapi.json: {undocumented:?}"
    );
    assert!(
        unregistered.is_empty(),
        "operations in src/http/openapi.json that no route serves: {unregistered:?}"
    );
    // Path variables are named the same in the document as in the route templates.
    for (m, p) in routes {
        assert!(
            ops.iter().any(|o| o.method == *m && o.path == *p),
            "{m} {p} is documented with other variable names"
        );
    }
    let ids: BTreeSet<&str> = ops.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(ids.len(), ops.len(), "operationIds are not unique");
}

/// Checks the document (or instances) with the test virtualenv's Python: `openapi-spec-validator`
/// for the document, `jsonschema` (draft 2020-12, `$ref`s resolved into the document's
/// components) for examples and instances. Prints `{"checked": n, "failures": [...]}`.
const CHECKER: &str = r##"
import json, sys
from jsonschema import Draft202012Validator

mode, doc_path = sys.argv[1], sys.argv[2]
with open(doc_path) as f:
    doc = json.load(f)
checked = 0
failures = []

def deref(obj):
    while isinstance(obj, dict) and "$ref" in obj:
        node = doc
        for part in obj["$ref"].lstrip("#").strip("/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        obj = node
    return obj

def check(label, schema, instance):
    global checked
    checked += 1
    root = {"components": doc.get("components", {}), "allOf": [schema]}
    errors = sorted(Draft202012Validator(root).iter_errors(instance), key=lambda e: list(e.path))
    for e in errors[:3]:
        where = "/".join(str(p) for p in e.path) or "(root)"
        failures.append(f"{label}: at {where}: {e.message[:300]}")

def examples_of(holder):
    """Named examples of a media type, parameter or header (`example` is named `default`)."""
    out = []
    if "example" in holder:
        out.append(("default", holder["example"]))
    for name, ex in (holder.get("examples") or {}).items():
        out.append((name, deref(ex).get("value")))
    return out

def check_sse(label, text):
    commit = {"$ref": "#/components/schemas/CommitEvent"}
    for block in text.split("\n\n"):
        fields = {}
        for line in block.split("\n"):
            if line.startswith(":") or not line:
                continue
            key, _, value = line.partition(":")
            fields[key] = value[1:] if value.startswith(" ") else value
        if "data" not in fields:
            continue
        data = json.loads(fields["data"])
        if fields.get("event") == "error":
            check(f"{label} error event", {"$ref": "#/components/schemas/Problem"}, data)
            continue
        check(f"{label} event {fields.get('id')}", commit, data)
        if data.get("id") != fields.get("id") or data.get("kind") != fields.get("event"):
            failures.append(f"{label}: id/event lines do not match the data of event {fields.get('id')}")

def check_media(label, mt, media, require):
    found = examples_of(media)
    if require and not found:
        failures.append(f"{label}: no example")
    for name, value in found:
        where = f"{label} example {name!r}"
        check(where, media.get("schema", {}), value)
        if mt == "application/x-ndjson" and isinstance(value, str):
            for i, line in enumerate(value.splitlines()):
                if line.strip() and not isinstance(json.loads(line), dict):
                    failures.append(f"{where}: line {i + 1} is not a JSON object")
        if mt == "text/event-stream" and isinstance(value, str):
            check_sse(where, value)

if mode == "spec":
    from openapi_spec_validator import OpenAPIV31SpecValidator, validate
    if not str(doc.get("openapi", "")).startswith("3.1."):
        failures.append(f"openapi is {doc.get('openapi')!r}, not 3.1.x")
    try:
        validate(doc, cls=OpenAPIV31SpecValidator)
        checked += 1
    except Exception as e:
        failures.append(f"{type(e).__name__}: {str(e)[:2000]}")
elif mode == "examples":
    for path, item in doc["paths"].items():
        item = deref(item)
        for method in ["get", "put", "post", "delete", "patch", "head", "options", "trace"]:
            if method not in item:
                continue
            op = item[method]
            label = f"{op.get('operationId')} ({method.upper()} {path})"
            for p in item.get("parameters", []) + op.get("parameters", []):
                p = deref(p)
                for name, value in examples_of(p):
                    check(f"{label} parameter {p['name']} example {name!r}", p.get("schema", {}), value)
            if "requestBody" in op:
                for mt, media in deref(op["requestBody"]).get("content", {}).items():
                    check_media(f"{label} request {mt}", mt, media, True)
            for status, resp in op.get("responses", {}).items():
                resp = deref(resp)
                for hname, header in (resp.get("headers") or {}).items():
                    header = deref(header)
                    for name, value in examples_of(header):
                        check(f"{label} {status} header {hname} example {name!r}", header.get("schema", {}), value)
                for mt, media in (resp.get("content") or {}).items():
                    # Success answers in JSON carry examples (this document excepted).
                    require = (status.startswith("2") and mt == "application/json"
                               and op.get("operationId") != "getOpenApi")
                    check_media(f"{label} {status} {mt}", mt, media, require)
elif mode == "instances":
    with open(sys.argv[3]) as f:
        for item in json.load(f):
            check(item["label"], item["schema"], item["instance"])
            if item.get("sse") is not None:
                check_sse(item["label"], item["sse"])
print(json.dumps({"checked": checked, "failures": failures}))
"##;

/// Runs [`CHECKER`] in `mode`; panics with every failure. Returns how many checks ran.
fn run_checker(mode: &str, extra: &[&std::path::Path]) -> u64 {
    let out = std::process::Command::new(python())
        .arg("-c")
        .arg(CHECKER)
        .arg(mode)
        .arg(document_path())
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the {mode} check did not run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the {mode} check printed no report ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let failures = report["failures"].as_array().unwrap();
    assert!(
        failures.is_empty(),
        "{} failure(s) in the {mode} check:\n{}",
        failures.len(),
        failures
            .iter()
            .map(|f| f.as_str().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    );
    report["checked"].as_u64().unwrap()
}

#[test]
fn document_is_valid_openapi_3_1() {
    assert_eq!(document()["openapi"], "3.1.0");
    assert_eq!(run_checker("spec", &[]), 1);
}

#[test]
fn examples_fit_their_schemas() {
    let checked = run_checker("examples", &[]);
    // Every request body and JSON success answer has examples: far more than this.
    assert!(checked > 50, "only {checked} examples were checked");
}

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
