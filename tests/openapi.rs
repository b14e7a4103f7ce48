//! The OpenAPI document `src/http/openapi.json` against the code: it is what
//! `GET /v1/openapi.json` serves, it describes exactly the registered routes
//! (`alluvium::http::ROUTES`), it is valid OpenAPI 3.1 and its examples fit its schemas. What
//! its request examples do on a real server is `tests/openapi_examples.rs`.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use common::openapi::{document, document_path, normalise, operations, run_checker};
use common::{Server, try_send};

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
