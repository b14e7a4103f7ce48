//! Spans reach an OTLP/HTTP collector when `[telemetry] otlp_endpoint` is set, and one ingest
//! request can be followed from its HTTP span through auth, schema check and WAL append to the
//! flush that lands its rows.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::http_sink::http_sink;
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use serde_json::json;

/// Spans received so far, decoded from the OTLP protobuf bodies, with the service names seen.
fn decode(bodies: &[Vec<u8>]) -> (Vec<Span>, Vec<String>) {
    let mut spans = Vec::new();
    let mut services = Vec::new();
    for body in bodies {
        let req = ExportTraceServiceRequest::decode(body.as_slice())
            .expect("the collector receives OTLP protobuf");
        for rs in req.resource_spans {
            for attr in rs.resource.iter().flat_map(|r| &r.attributes) {
                if attr.key == "service.name"
                    && let Some(AnyValue::StringValue(s)) =
                        attr.value.as_ref().and_then(|v| v.value.clone())
                {
                    services.push(s);
                }
            }
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
    }
    (spans, services)
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) => Some(s.clone()),
            AnyValue::IntValue(i) => Some(i.to_string()),
            _ => None,
        }
    })
}

/// What the trace of one ingest request looks like once every span arrived, or `None` while
/// some are missing.
fn request_trace(spans: &[Span]) -> Option<(Vec<u8>, HashMap<&str, &Span>)> {
    let http = spans.iter().find(|s| {
        s.name == "http"
            && attr(s, "method").as_deref() == Some("POST")
            && attr(s, "path").as_deref() == Some("/v1/tables/t/events")
    })?;
    let trace_id = http.trace_id.clone();
    let mut by_name: HashMap<&str, &Span> = HashMap::new();
    for s in spans.iter().filter(|s| s.trace_id == trace_id) {
        by_name.insert(s.name.as_str(), s);
    }
    ["http", "auth", "schema_validate", "wal_append"]
        .iter()
        .all(|n| by_name.contains_key(n))
        .then_some((trace_id, by_name))
}

#[test]
fn one_ingest_request_is_traced_from_http_to_the_flush_that_lands_it() {
    // A minimal OTLP/HTTP collector: answers every POST with 200 and keeps the bodies.
    let (url, log) = http_sink("/v1/traces", |_| 200);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("ALLUVIUM_TELEMETRY__OTLP_ENDPOINT", url.as_str()),
            ("ALLUVIUM_TELEMETRY__SERVICE_NAME", "alluvium-test"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("ALLUVIUM_LOG", "info"),
        ],
    );
    create_table(
        &server,
        ADMIN_KEY,
        "t",
        &json!({"fields": [{"name": "n", "type": "int64"}]}),
    );
    assert_eq!(
        ingest(&server, ADMIN_KEY, "t", &json!({"n": 1})).status,
        200
    );
    flush(&server, ADMIN_KEY, "t");

    // Exports come in batches: gather until the request's trace and the flush are complete.
    let found = wait_for(Duration::from_secs(30), || {
        let bodies: Vec<Vec<u8>> = log
            .lock()
            .unwrap()
            .iter()
            .inspect(|r| {
                assert_eq!(r.path, "/v1/traces");
                assert_eq!(r.header("content-type"), "application/x-protobuf");
            })
            .map(|r| r.body.clone())
            .collect();
        let (spans, services) = decode(&bodies);
        let (trace_id, by_name) = request_trace(&spans)?;
        let flush = spans
            .iter()
            .find(|s| s.name == "flush" && s.links.iter().any(|l| l.trace_id == trace_id))?;
        let commit = spans.iter().any(|s| s.name == "wal_commit");
        let parents: Vec<(String, Vec<u8>, Vec<u8>)> = ["auth", "schema_validate", "wal_append"]
            .iter()
            .map(|n| {
                let s = by_name[n];
                (n.to_string(), s.parent_span_id.clone(), s.span_id.clone())
            })
            .collect();
        let http_id = by_name["http"].span_id.clone();
        let wal_append_id = by_name["wal_append"].span_id.clone();
        Some((
            services,
            parents,
            http_id,
            wal_append_id,
            flush.clone(),
            commit,
        ))
    });
    let Some((services, parents, http_id, wal_append_id, flush, commit)) = found else {
        let bytes: usize = log.lock().unwrap().iter().map(|r| r.body.len()).sum();
        panic!(
            "the request's spans and its flush were not exported within 30 s ({bytes} bytes received)"
        );
    };
    assert!(
        services.iter().all(|s| s == "alluvium-test"),
        "{services:?}"
    );
    for (name, parent, _) in &parents {
        assert_eq!(parent, &http_id, "{name} is a child of the request's span");
    }
    // The flush links to the request's WAL append, in the request's trace.
    assert!(
        flush.links.iter().any(|l| l.span_id == wal_append_id),
        "flush links: {:?}",
        flush.links
    );
    assert_eq!(attr(&flush, "table").as_deref(), Some("default/t"));
    assert!(commit, "the WAL's group commit has a span too");
}
