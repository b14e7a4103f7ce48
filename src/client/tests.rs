//! The client's JSON is the server's: every request type is read by the server's own types, and
//! every answer the server writes is read by the client's.
#![allow(clippy::unwrap_used)]

use std::io::Read as _;

use serde_json::json;

use super::*;

#[test]
fn a_schema_is_what_the_server_reads() {
    let schema = Schema::new()
        .required("id", FieldType::Int64)
        .required("ts", FieldType::Timestamp(TimeUnit::Millisecond))
        .field("user", FieldType::String)
        .field("tags", FieldType::List(Box::new(FieldType::String)))
        .field("day", FieldType::Date)
        .primary_key(["id"])
        .time_column("ts")
        .partition_by(PartitionBy::Day)
        .index("user")
        .evolution(Evolution::Strict);
    let text = serde_json::to_string(&schema).unwrap();
    let server: alluvium_actors::schema::TableSchema = serde_json::from_str(&text).unwrap();
    server.validate().unwrap();
    assert_eq!(server.fields.len(), 5);
    assert_eq!(server.fields[3].ty.to_string(), "list<string>");
    assert_eq!(server.primary_key, ["id"]);
    // And back: what the server writes, the client reads, field for field.
    let back: Schema = serde_json::from_str(&serde_json::to_string(&server).unwrap()).unwrap();
    assert_eq!(back, schema);
    // A minimal definition leaves the server's defaults alone.
    let minimal = Schema::new().field("n", FieldType::Int64);
    assert_eq!(
        serde_json::to_value(&minimal).unwrap(),
        json!({"fields": [{"name": "n", "type": "int64", "nullable": true}]})
    );
}

#[test]
fn field_types_round_trip_and_unknown_ones_survive() {
    for t in [
        "bool",
        "int32",
        "int64",
        "uint64",
        "float32",
        "float64",
        "string",
        "binary",
        "timestamp_s",
        "timestamp_ms",
        "timestamp_us",
        "timestamp_ns",
        "date",
        "list<int64>",
    ] {
        let ty: FieldType = t.parse().unwrap();
        assert!(!matches!(ty, FieldType::Other(_)), "{t}");
        assert_eq!(ty.to_string(), t);
    }
    let future: FieldType = serde_json::from_value(json!("decimal(10,2)")).unwrap();
    assert_eq!(future, FieldType::Other("decimal(10,2)".into()));
    assert_eq!(
        serde_json::to_value(&future).unwrap(),
        json!("decimal(10,2)")
    );
}

#[test]
fn a_query_request_is_what_the_server_reads() {
    let q = QueryRequest {
        columns: Some(vec!["id".into(), "_seq".into()]),
        limit: Some(5),
        include_hidden: true,
        as_of: Some(3),
        filter: Some(Filter::and([
            Filter::one_of("user", ["ada", "bob"]),
            Filter::or([Filter::ge("id", 2), Filter::not_null("msg")]),
            Filter::is_null("gone"),
            Filter::ne("x", 1.5),
        ])),
        time_range: Some(TimeRange {
            from: Some(json!("2026-11-25T00:00:00Z")),
            to: None,
        }),
        order_by: Some(OrderBy::Time),
        descending: true,
        explain: true,
    };
    let text = serde_json::to_string(&q).unwrap();
    let server: alluvium_pipelines::query::QueryRequest = serde_json::from_str(&text).unwrap();
    assert_eq!(server.limit, Some(5));
    assert!(server.include_hidden && server.descending && server.explain);
    assert_eq!(
        server.order_by,
        Some(alluvium_pipelines::query::OrderBy::Time)
    );
    assert!(server.filter.is_some() && server.time_range.is_some());
    // Parsed back by the client (what `alluvium query --json` does).
    let back: QueryRequest = serde_json::from_str(&text).unwrap();
    assert_eq!(back, q);
    // The default request is `{}`: every default is the server's.
    assert_eq!(
        serde_json::to_string(&QueryRequest::default()).unwrap(),
        "{}"
    );
    // Typos are refused like the server refuses them.
    assert!(serde_json::from_str::<QueryRequest>(r#"{"limt":1}"#).is_err());
}

#[test]
fn answers_the_server_writes_are_read() {
    let ack = alluvium_pipelines::ingest::IngestAck {
        accepted: 3,
        first_seq: 10,
        last_seq: 12,
        durability: "wal",
        duplicate: true,
    };
    let client: IngestAck = serde_json::from_value(serde_json::to_value(&ack).unwrap()).unwrap();
    assert_eq!(
        client,
        IngestAck {
            accepted: 3,
            first_seq: 10,
            last_seq: 12,
            durability: "wal".into(),
            duplicate: true
        }
    );
    // Without `duplicate`, it is false.
    let plain: IngestAck = serde_json::from_value(
        json!({"accepted":1,"first_seq":1,"last_seq":1,"durability":"received"}),
    )
    .unwrap();
    assert!(!plain.duplicate);

    let file = alluvium_nats::envelope::EventFile {
        path: "tables/default/t/data/all/1-2.parquet".into(),
        partition: "all".into(),
        size_bytes: 1234,
        rows: 2,
        min_seq: 1,
        max_seq: 2,
        min_time: Some(5),
        max_time: None,
        schema_version: 1,
    };
    let event = alluvium_nats::CommitEvent {
        id: "7:0".into(),
        lake_id: "lake".into(),
        kind: alluvium_nats::CommitKind::Flushed,
        tenant: "default".into(),
        table: "t".into(),
        catalog_version: 7,
        committed_at: "2026-11-25T10:00:00Z".into(),
        schema_version: 1,
        files_added: vec![file],
        files_removed: vec![],
        rows_added: 2,
        rows_removed: 0,
        committed_seq: Some(2),
        schema: None,
    };
    let text = serde_json::to_string(&event).unwrap();
    let client: CommitEvent = serde_json::from_str(&text).unwrap();
    assert_eq!(client.kind, CommitKind::Flushed);
    assert_eq!(client.files_added[0].min_time, Some(5));
    assert_eq!(client.committed_seq, Some(2));
    // Written back by the client, it is the same JSON.
    assert_eq!(
        serde_json::to_value(&client).unwrap(),
        serde_json::from_str::<Value>(&text).unwrap()
    );
    // A kind from a newer server does not break the stream.
    let mut v: Value = serde_json::from_str(&text).unwrap();
    v["kind"] = json!("expired");
    let client: CommitEvent = serde_json::from_value(v).unwrap();
    assert_eq!(client.kind, CommitKind::Unknown);

    let stats = alluvium_pipelines::scan::ScanStats {
        files_total: 3,
        index_candidate_keys: Some(4),
        ..Default::default()
    };
    let client: ScanStats = serde_json::from_value(serde_json::to_value(&stats).unwrap()).unwrap();
    assert_eq!(client.files_total, 3);
    assert_eq!(client.index_candidate_keys, Some(4));

    // A table as GET /v1/tables/{table} shows it, and PUT's answer with its changes.
    let info: CreatedTable = serde_json::from_value(json!({
        "table": "users", "tenant": "default", "schema_version": 2,
        "fields": [{"name": "id", "type": "int64", "nullable": false}],
        "primary_key": ["id"], "partition_by": "none", "evolution": "additive",
        "changes": ["field \"plan\" (string) added"]
    }))
    .unwrap();
    assert_eq!(info.info.schema_version, 2);
    assert_eq!(info.info.schema.primary_key, ["id"]);
    assert_eq!(info.info.schema.partition_by, Some(PartitionBy::None));
    assert_eq!(info.changes.len(), 1);
}

#[test]
fn problems_become_errors_with_their_code() {
    let p = alluvium_pipelines::error::Problem::new(429, "overloaded", "too much".into());
    let text = serde_json::to_string(&p).unwrap();
    let parsed: types::Problem = serde_json::from_str(&text).unwrap();
    assert_eq!((parsed.status, parsed.code.as_str()), (429, "overloaded"));
    let e = ClientError::Server {
        status: 429,
        code: parsed.code,
        detail: parsed.detail,
        retry_after: Some(Duration::from_secs(1)),
    };
    assert!(e.is_transient());
    assert_eq!(e.to_string(), "too much (429 overloaded)");
    let partial = ClientError::Partial {
        acknowledged_rows: 10,
        acknowledged_batches: 1,
        source: Box::new(e),
    };
    assert_eq!(partial.code(), Some("overloaded"));
    assert_eq!(partial.status(), Some(429));
}

#[test]
fn urls_keys_and_segments() {
    assert_eq!(
        Client::new("http://127.0.0.1:8080/", "k").unwrap().url(),
        "http://127.0.0.1:8080"
    );
    assert_eq!(
        Client::new("https://lake.example/alluvium", "")
            .unwrap()
            .url(),
        "https://lake.example/alluvium"
    );
    for bad in [
        "127.0.0.1:8080",
        "ftp://x",
        "http://",
        "http://a b",
        "http://x?y=1",
    ] {
        assert!(
            matches!(Client::new(bad, "k"), Err(ClientError::InvalidUrl { .. })),
            "{bad}"
        );
    }
    assert!(matches!(
        Client::new("http://x", "a\nb"),
        Err(ClientError::InvalidInput(_))
    ));
    assert_eq!(segment("clicks"), "clicks");
    assert_eq!(segment("a b/ü"), "a%20b%2F%C3%BC");
    assert_eq!(key_segment(&json!(42)).unwrap(), "42");
    assert_eq!(key_segment(&json!("ada")).unwrap(), "ada");
    assert_eq!(
        key_segment(&json!(["ada", 2])).unwrap(),
        "%5B%22ada%22%2C2%5D"
    );
    assert!(key_segment(&json!(null)).is_err());
    assert!(key_segment(&json!("")).is_err());
    assert!(check_idempotency_key("send-abc-1").is_ok());
    assert!(check_idempotency_key("").is_err());
    assert!(check_idempotency_key(&"k".repeat(257)).is_err());
    assert!(check_idempotency_key("a\tb").is_err());
}

#[test]
fn backoff_doubles_within_bounds() {
    let c = Client::new("http://x", "k")
        .unwrap()
        .with_backoff(Duration::from_millis(100), Duration::from_secs(1));
    for attempt in 0..40 {
        let full = Duration::from_millis(100)
            .saturating_mul(1 << attempt.min(16))
            .min(Duration::from_secs(1));
        let d = c.backoff(attempt);
        assert!(d <= full && d >= full / 2, "{attempt}: {d:?}");
    }
}

#[test]
fn bodies() {
    assert_eq!(count_lines(b"{\"a\":1}\n\n {\"a\":2}\n  \n"), 2);
    let data = b"{\"n\":1}\n".repeat(1000);
    let z = gzip(&data).unwrap();
    assert!(z.len() < data.len() / 10);
    let mut back = Vec::new();
    flate2::read::MultiGzDecoder::new(&z[..])
        .read_to_end(&mut back)
        .unwrap();
    assert_eq!(back, data);
}
