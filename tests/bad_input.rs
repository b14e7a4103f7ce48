//! Bad input gets a precise 4xx problem document and changes nothing.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;

fn count(server: &Server) -> usize {
    query_all(server, ADMIN_KEY, "t", &json!({})).len()
}

fn post(server: &Server, key: Option<&str>, table: &str, ctype: Option<&str>, body: &[u8]) -> Resp {
    send(
        "POST",
        &server.url(&format!("/v1/tables/{table}/events")),
        key,
        ctype,
        Some(body),
    )
}

#[test]
fn bad_requests_are_refused_precisely_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("ALLUVIUM_SERVER__BODY_LIMIT", "64KiB")]);
    create_table(
        &server,
        ADMIN_KEY,
        "t",
        &json!({"fields": [
            {"name": "id", "type": "int64", "nullable": false},
            {"name": "ts", "type": "timestamp_ms"},
            {"name": "name", "type": "string"}
        ]}),
    );
    assert_eq!(
        ingest(&server, ADMIN_KEY, "t", &json!({"id": 1})).status,
        200
    );
    assert_eq!(count(&server), 1);
    let json_ct = Some("application/json");

    // An Idempotency-Key that is too long or has a control character: refused with the same
    // code as on NATS.
    for key in ["k".repeat(257), "a\tb".to_string()] {
        let r = try_send(
            "POST",
            &server.url("/v1/tables/t/events"),
            Some(ADMIN_KEY),
            json_ct,
            Some(b"{\"id\": 2}"),
            &[("Idempotency-Key", key.as_str())],
        )
        .unwrap();
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "invalid_idempotency_key"),
            "{key:?}: {r:?}"
        );
    }
    assert_eq!(count(&server), 1);

    // Malformed JSON.
    let r = post(&server, Some(ADMIN_KEY), "t", json_ct, b"[{\"id\": 2},");
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "malformed_json"),
        "{r:?}"
    );
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.json()["status"], 400);

    // A wrong type in the 3rd event rejects the whole batch, naming row and field.
    let r = post(
        &server,
        Some(ADMIN_KEY),
        "t",
        json_ct,
        br#"[{"id":2},{"id":3},{"id":"four"}]"#,
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "type_mismatch"),
        "{r:?}"
    );
    let detail = r.json()["detail"].as_str().unwrap().to_string();
    assert!(
        detail.contains("row 2") && detail.contains("\"id\""),
        "{detail}"
    );

    // Missing required field, unknown field, bad timestamp, not an object, empty batch.
    for (body, code) in [
        (&br#"{"name":"x"}"#[..], "missing_field"),
        (br#"{"id":5,"color":"red"}"#, "unknown_field"),
        (br#"{"id":5,"ts":"yesterday"}"#, "invalid_timestamp"),
        (br#"[1,2]"#, "not_an_object"),
        (br#"[]"#, "empty_batch"),
        (br#"{"id":9223372036854775808}"#, "value_out_of_range"),
    ] {
        let r = post(&server, Some(ADMIN_KEY), "t", json_ct, body);
        assert_eq!((r.status, r.code().as_str()), (400, code), "{r:?}");
    }

    // Unsupported content type and encoding.
    let r = post(&server, Some(ADMIN_KEY), "t", Some("text/csv"), b"id\n1\n");
    assert_eq!(r.status, 415, "{r:?}");

    // Unknown table.
    let r = post(&server, Some(ADMIN_KEY), "nope", json_ct, br#"{"id":1}"#);
    assert_eq!(
        (r.status, r.code().as_str()),
        (404, "table_not_found"),
        "{r:?}"
    );

    // Missing and bad credentials.
    let r = post(&server, None, "t", json_ct, br#"{"id":1}"#);
    assert_eq!(
        (r.status, r.code().as_str()),
        (401, "unauthenticated"),
        "{r:?}"
    );
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let r = post(
        &server,
        Some("not-a-real-key-123456"),
        "t",
        json_ct,
        br#"{"id":1}"#,
    );
    assert_eq!(r.status, 401, "{r:?}");
    let r = post(
        &server,
        Some("eyJhbGciOiJIUzI1NiJ9.eyJ0ZW5hbnQiOiJ4In0.c2ln"),
        "t",
        json_ct,
        br#"{"id":1}"#,
    );
    assert_eq!(r.status, 401, "{r:?}");

    // Oversize body (limit 64 KiB here).
    let big = format!(
        "[{}]",
        vec![r#"{"id":1,"name":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#; 3000].join(",")
    );
    let r = post(&server, Some(ADMIN_KEY), "t", json_ct, big.as_bytes());
    assert_eq!(
        (r.status, r.code().as_str()),
        (413, "body_too_large"),
        "{r:?}"
    );

    // Compressed bodies: accepted when valid, a bomb is held to the limit, garbage is refused.
    let gz = |data: &[u8]| {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    };
    let enc = |encoding: &str, body: &[u8]| {
        try_send(
            "POST",
            &server.url("/v1/tables/t/events"),
            Some(ADMIN_KEY),
            Some("application/json"),
            Some(body),
            &[("Content-Encoding", encoding)],
        )
        .unwrap()
    };
    let r = enc("gzip", &gz(br#"[{"id":2},{"id":3}]"#));
    assert_eq!(r.status, 200, "{r:?}");
    let r = enc("zstd", &zstd::encode_all(&br#"{"id":4}"#[..], 3).unwrap());
    assert_eq!(r.status, 200, "{r:?}");
    let bomb = gz(&vec![b' '; 10 << 20]);
    assert!(bomb.len() < 64 * 1024);
    let r = enc("gzip", &bomb);
    assert_eq!(
        (r.status, r.code().as_str()),
        (413, "body_too_large"),
        "{r:?}"
    );
    let r = enc("gzip", b"this is not gzip");
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "body_unreadable"),
        "{r:?}"
    );
    let r = enc("br", b"{}");
    assert_eq!(
        (r.status, r.code().as_str()),
        (415, "unsupported_media_type"),
        "{r:?}"
    );
    assert_eq!(count(&server), 4);
    let before = 4;

    // Hostile table names, on every route that takes one.
    for name in [
        "..%2F..%2Fetc",
        "UPPER",
        "a.b",
        "a%20b",
        "x*",
        "%3E",
        &"a".repeat(129),
    ] {
        let r = post(&server, Some(ADMIN_KEY), name, json_ct, br#"{"id":1}"#);
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "invalid_name"),
            "{name}: {r:?}"
        );
        let r = send(
            "PUT",
            &server.url(&format!("/v1/tables/{name}")),
            Some(ADMIN_KEY),
            json_ct,
            Some(br#"{"fields":[{"name":"a","type":"int64"}]}"#),
        );
        assert_eq!(r.status, 400, "{name}: {r:?}");
    }

    // Bad table definitions.
    for def in [
        &br#"{"fields":[]}"#[..],
        br#"{"fields":[{"name":"a","type":"int128"}]}"#,
        br#"{"fields":[{"name":"a","type":"int64"}],"primary_key":["a"]}"#,
        br#"not json"#,
    ] {
        let r = send(
            "PUT",
            &server.url("/v1/tables/u"),
            Some(ADMIN_KEY),
            json_ct,
            Some(def),
        );
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "invalid_schema"),
            "{r:?}"
        );
    }
    // A definition that is not an allowed evolution of the existing table is refused.
    let r = send(
        "PUT",
        &server.url("/v1/tables/t"),
        Some(ADMIN_KEY),
        json_ct,
        Some(br#"{"fields":[{"name":"a","type":"int64"}]}"#),
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (409, "schema_change_refused"),
        "{r:?}"
    );

    // Bad query: unknown column.
    let r = send(
        "POST",
        &server.url("/v1/tables/t/query"),
        Some(ADMIN_KEY),
        json_ct,
        Some(br#"{"columns":["nope"]}"#),
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "unknown_column"),
        "{r:?}"
    );

    // Unknown route.
    let r = send("GET", &server.url("/v2/whatever"), None, None, None);
    assert_eq!(r.status, 404);

    // None of the refused requests changed anything.
    assert_eq!(count(&server), before);
    let r = send(
        "GET",
        &server.url("/v1/tables"),
        Some(ADMIN_KEY),
        None,
        None,
    );
    assert_eq!(r.json()["tables"].as_array().unwrap().len(), 1);
    assert!(!dir.path().join("tables/default/u").exists());
}
