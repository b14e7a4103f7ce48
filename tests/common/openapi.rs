//! Reading `src/http/openapi.json` in the OpenAPI tests: the document, its operations with
//! their parameters, `$ref`s, and the Python checks of schemas and examples.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;

use serde_json::Value;

use super::python;

pub const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

pub fn document_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/http/openapi.json")
}

pub fn document() -> Value {
    let text = std::fs::read_to_string(document_path()).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Follows `$ref`s (local JSON pointers) to the object they name.
pub fn deref<'a>(doc: &'a Value, mut v: &'a Value) -> &'a Value {
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
pub fn normalise(path: &str) -> String {
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
pub struct Operation<'a> {
    pub id: String,
    pub method: String,
    pub path: String,
    pub op: &'a Value,
    pub params: Vec<&'a Value>,
}

impl Operation<'_> {
    pub fn label(&self) -> String {
        format!("{} ({} {})", self.id, self.method, self.path)
    }
}

pub fn operations(doc: &Value) -> Vec<Operation<'_>> {
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
pub fn example_value<'a>(doc: &'a Value, ex: &'a Value) -> &'a Value {
    &deref(doc, ex)["value"]
}

/// Runs `tests/python/openapi_check.py` in `mode`; panics with every failure. Returns how many checks ran.
pub fn run_checker(mode: &str, extra: &[&std::path::Path]) -> u64 {
    let out = std::process::Command::new(python())
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/openapi_check.py"))
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
