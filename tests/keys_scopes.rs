//! API keys on a real server: scopes per table and operation (the same on HTTP and NATS), the
//! key lifecycle (list, revoke, expiry) and per-key quotas answered 429 with `Retry-After`.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::nats::{Lake, auth, count, request};
use common::*;
use serde_json::{Value, json};

fn post(server: &Server, key: &str, path: &str, body: &Value) -> Resp {
    send(
        "POST",
        &server.url(path),
        Some(key),
        Some("application/json"),
        Some(&serde_json::to_vec(body).unwrap()),
    )
}

fn new_key(server: &Server, key: &str, request: &Value) -> Resp {
    post(server, key, "/v1/keys", request)
}

fn tables(server: &Server) {
    for t in ["clicks", "orders"] {
        create_table(
            server,
            ADMIN_KEY,
            t,
            &json!({"fields": [{"name": "n", "type": "int64"}]}),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_scopes_hold_on_http_and_nats_alike() {
    let lake = Lake::new();
    let server = lake.serve(&[]);
    tables(&server);
    let r = new_key(
        &server,
        ADMIN_KEY,
        &json!({"scopes": ["ingest:clicks", "query:clicks"], "label": "clicks producer"}),
    );
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.json()["scopes"], json!(["ingest:clicks", "query:clicks"]));
    let key = r.json()["key"].as_str().unwrap().to_string();

    assert_eq!(
        ingest(&server, &key, "clicks", &json!({"n": 1})).status,
        200
    );
    let r = ingest(&server, &key, "orders", &json!({"n": 1}));
    assert_eq!((r.status, r.code().as_str()), (403, "forbidden"), "{r:?}");
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .contains("lacks the ingest scope on table \"orders\""),
        "{r:?}"
    );
    let r = post(&server, &key, "/v1/tables/orders/query", &json!({}));
    assert_eq!(r.status, 403);
    assert_eq!(
        post(&server, &key, "/v1/tables/clicks/query", &json!({})).status,
        200
    );
    // Listing shows only what the key may query; admin operations are refused.
    let listed = send("GET", &server.url("/v1/tables"), Some(&key), None, None).json();
    let names: Vec<&str> = listed["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["table"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["clicks"], "{listed}");
    let r = send(
        "POST",
        &server.url("/v1/tables/clicks/flush"),
        Some(&key),
        None,
        None,
    );
    assert_eq!(r.status, 403);
    let r = new_key(&server, &key, &json!({"scopes": ["ingest"]}));
    assert_eq!(r.status, 403);

    // NATS: the same key, the same answers.
    let client = async_nats::connect(lake.nats.url()).await.unwrap();
    let (status, ack) = request(
        &client,
        "alluvium.ingest.default.clicks",
        auth(&key),
        "{\"n\":2}",
    )
    .await;
    assert_eq!(status, 200, "{ack}");
    let (status, problem) = request(
        &client,
        "alluvium.ingest.default.orders",
        auth(&key),
        "{\"n\":2}",
    )
    .await;
    assert_eq!((status, problem["code"].as_str()), (403, Some("forbidden")));
    assert_eq!(count(&server, "clicks"), 2);
    assert_eq!(count(&server, "orders"), 0);

    // Scope names are checked when the key is made.
    for bad in ["ingest:Orders", "write", "ingest:a/b"] {
        let r = new_key(&server, ADMIN_KEY, &json!({"scopes": [bad]}));
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "invalid_key_request"),
            "{bad}: {r:?}"
        );
    }
}

#[test]
fn keys_are_listed_revoked_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    tables(&server);
    let made = new_key(
        &server,
        ADMIN_KEY,
        &json!({"tenant": "acme", "scopes": ["admin"], "label": "acme admin"}),
    )
    .json();
    let acme_admin = made["key"].as_str().unwrap().to_string();
    let producer = new_key(
        &server,
        &acme_admin,
        &json!({"scopes": ["ingest"], "label": "producer"}),
    )
    .json();
    let (producer_key, producer_id) = (
        producer["key"].as_str().unwrap().to_string(),
        producer["id"].as_str().unwrap().to_string(),
    );
    create_table(
        &server,
        &acme_admin,
        "clicks",
        &json!({"fields": [{"name": "n", "type": "int64"}]}),
    );
    assert_eq!(
        ingest(&server, &producer_key, "clicks", &json!({"n": 1})).status,
        200
    );

    // A tenant's admin lists its own keys: metadata only, never secrets or digests.
    let r = send(
        "GET",
        &server.url("/v1/keys"),
        Some(&acme_admin),
        None,
        None,
    );
    assert_eq!(r.status, 200, "{r:?}");
    let keys = r.json()["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.iter().all(|k| k["tenant"] == "acme"));
    assert!(!r.body.contains(&producer_key) && !r.body.contains("sha256"));
    assert!(
        keys.iter()
            .any(|k| k["label"] == "producer" && k["created_at"].is_string())
    );
    // Another tenant's keys only for the operator tenant's admin.
    let r = send(
        "GET",
        &server.url("/v1/keys?tenant=default"),
        Some(&acme_admin),
        None,
        None,
    );
    assert_eq!(r.status, 403);
    let all = send(
        "GET",
        &server.url("/v1/keys?all=true"),
        Some(ADMIN_KEY),
        None,
        None,
    )
    .json();
    assert_eq!(all["keys"].as_array().unwrap().len(), 3, "{all}");
    // The producer itself cannot list keys.
    assert_eq!(
        send(
            "GET",
            &server.url("/v1/keys"),
            Some(&producer_key),
            None,
            None
        )
        .status,
        403
    );

    // Revocation: refused from the next request on; a second revoke, or another tenant's, is 404.
    let delete = |key: &str, id: &str| {
        send(
            "DELETE",
            &server.url(&format!("/v1/keys/{id}")),
            Some(key),
            None,
            None,
        )
    };
    let default_admin = new_key(&server, ADMIN_KEY, &json!({"scopes": ["admin"]})).json();
    let r = delete(default_admin["key"].as_str().unwrap(), &producer_id);
    // The operator tenant's admins may manage every tenant's keys.
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["key"]["id"], producer_id.as_str());
    let r = ingest(&server, &producer_key, "clicks", &json!({"n": 2}));
    assert_eq!((r.status, r.code().as_str()), (401, "invalid_api_key"));
    let r = delete(&acme_admin, &producer_id);
    assert_eq!((r.status, r.code().as_str()), (404, "key_not_found"));
    let other = new_key(
        &server,
        ADMIN_KEY,
        &json!({"tenant": "beta", "scopes": ["admin"]}),
    )
    .json();
    let r = delete(other["key"].as_str().unwrap(), made["id"].as_str().unwrap());
    assert_eq!((r.status, r.code().as_str()), (404, "key_not_found"));

    // Expiry: a key made to last 2 s is refused after.
    let r = new_key(
        &server,
        &acme_admin,
        &json!({"scopes": ["ingest"], "expires_in": "2s"}),
    );
    assert_eq!(r.status, 201, "{r:?}");
    assert!(r.json()["expires_at"].is_string());
    let short = r.json()["key"].as_str().unwrap().to_string();
    assert_eq!(
        ingest(&server, &short, "clicks", &json!({"n": 3})).status,
        200
    );
    std::thread::sleep(Duration::from_millis(3100));
    let r = ingest(&server, &short, "clicks", &json!({"n": 4}));
    assert_eq!((r.status, r.code().as_str()), (401, "key_expired"), "{r:?}");
    for bad in [
        json!({"scopes": ["ingest"], "expires_at": "2001-01-01T00:00:00Z"}),
        json!({"scopes": ["ingest"], "expires_in": "2s", "expires_at": "2999-01-01T00:00:00Z"}),
        json!({"scopes": ["ingest"], "expires_in": "soon"}),
    ] {
        let r = new_key(&server, &acme_admin, &bad);
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "invalid_key_request"),
            "{bad}"
        );
    }
    let rows = query_all(&server, &acme_admin, "clicks", &json!({}));
    assert_eq!(rows.len(), 2, "{rows:?}");
}

#[test]
fn quotas_answer_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    tables(&server);
    let r = new_key(
        &server,
        ADMIN_KEY,
        &json!({"scopes": ["ingest", "query"], "quota": {"events_per_sec": 20, "bytes_per_sec": 100000}}),
    );
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(
        r.json()["quota"],
        json!({"events_per_sec": 20, "bytes_per_sec": 100000})
    );
    let key = r.json()["key"].as_str().unwrap().to_string();
    let batch: Vec<Value> = (0..20).map(|n| json!({"n": n})).collect();

    // One second's allowance passes; the next batch is refused, stored nothing, and says when.
    assert_eq!(ingest(&server, &key, "clicks", &json!(batch)).status, 200);
    let r = ingest(&server, &key, "clicks", &json!(batch));
    assert_eq!(
        (r.status, r.code().as_str()),
        (429, "quota_exceeded"),
        "{r:?}"
    );
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert_eq!(count(&server, "clicks"), 20);
    // Other keys are not held back.
    assert_eq!(
        ingest(&server, ADMIN_KEY, "orders", &json!(batch)).status,
        200
    );
    std::thread::sleep(Duration::from_secs(retry));
    assert_eq!(ingest(&server, &key, "clicks", &json!(batch)).status, 200);
    assert_eq!(count(&server, "clicks"), 40);

    // The bytes allowance, on its own.
    let r = new_key(
        &server,
        ADMIN_KEY,
        &json!({"scopes": ["ingest"], "quota": {"bytes_per_sec": 1000}}),
    );
    let key = r.json()["key"].as_str().unwrap().to_string();
    let big: Vec<Value> = (0..200).map(|n| json!({"n": n})).collect();
    assert_eq!(ingest(&server, &key, "orders", &json!(big)).status, 200);
    let r = ingest(&server, &key, "orders", &json!({"n": 1}));
    assert_eq!((r.status, r.code().as_str()), (429, "quota_exceeded"));
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .contains("bytes_per_sec"),
        "{r:?}"
    );
    let r = new_key(
        &server,
        ADMIN_KEY,
        &json!({"scopes": ["ingest"], "quota": {"events_per_sec": 0}}),
    );
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_key_request"));
}

#[test]
fn a_jwks_without_a_refetch_floor_refuses_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, r#"{"keys": []}"#).unwrap();
    let jwks = jwks.display().to_string();
    let stderr = start_refused(
        &dir.path().join("data"),
        &[
            ("ALLUVIUM_AUTH__JWT__JWKS_FILE", &jwks),
            ("ALLUVIUM_AUTH__JWT__JWKS_MIN_REFETCH_SECS", "0"),
        ],
    );
    assert!(
        stderr.contains("jwks_min_refetch_secs must be at least 1"),
        "{stderr}"
    );
}
