//! Filtered queries: answers agree with filtering the data by hand, statistics and bloom filters
//! prune (shown by `explain`), upsert tables filter the newest versions only, and results come
//! as JSON, NDJSON, Arrow IPC or Parquet.
#![allow(clippy::unwrap_used)]

mod common;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use common::*;
use serde_json::{Value, json};

const DAY_MS: i64 = 86_400_000;
/// 2026-11-20T00:00:00Z
const T0: i64 = 1_795_132_800_000;

fn query(server: &Server, table: &str, req: &Value, accept: Option<&str>) -> Resp {
    let headers: Vec<(&str, &str)> = accept.map(|a| vec![("Accept", a)]).unwrap_or_default();
    try_send(
        "POST",
        &server.url(&format!("/v1/tables/{table}/query")),
        Some(ADMIN_KEY),
        Some("application/json"),
        Some(req.to_string().as_bytes()),
        &headers,
    )
    .unwrap()
}

fn ns(rows: &[Value]) -> Vec<i64> {
    rows.iter().map(|r| r["n"].as_i64().unwrap()).collect()
}

/// 4 days x 250 events, one flushed file per day; `host` is null for every 10th event.
fn events_table(server: &Server) -> Vec<Value> {
    create_table(
        server,
        ADMIN_KEY,
        "events",
        &json!({"fields": [
            {"name": "ts", "type": "timestamp_ms", "nullable": false},
            {"name": "n", "type": "int64", "nullable": false},
            {"name": "host", "type": "string"}
        ], "time_column": "ts", "partition_by": "day"}),
    );
    let mut all = Vec::new();
    for day in 0..4i64 {
        let batch: Vec<Value> = (0..250i64)
            .map(|i| {
                let n = day * 1000 + i;
                let host = if i % 10 == 0 {
                    Value::Null
                } else {
                    json!(format!("h{}", i % 3))
                };
                json!({"ts": T0 + day * DAY_MS + i * 1000, "n": n, "host": host})
            })
            .collect();
        assert_eq!(
            ingest(server, ADMIN_KEY, "events", &Value::Array(batch.clone())).status,
            200
        );
        flush(server, ADMIN_KEY, "events");
        all.extend(batch);
    }
    all
}

#[test]
fn filters_agree_with_the_data_and_prune() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let all = events_table(&server);
    // Memtable rows take part too.
    let fresh = json!({"ts": T0 + 3 * DAY_MS + 999_000, "n": 99_999, "host": "h1"});
    assert_eq!(ingest(&server, ADMIN_KEY, "events", &fresh).status, 200);
    let mut all = all;
    all.push(fresh);

    let check = |filter: Value, keep: &dyn Fn(&Value) -> bool| {
        let r = query(
            &server,
            "events",
            &json!({"filter": filter, "columns": ["n"]}),
            None,
        );
        assert_eq!(r.status, 200, "{r:?}");
        let mut got = ns(r.json().as_array().unwrap());
        got.sort_unstable();
        let mut want: Vec<i64> = all
            .iter()
            .filter(|e| keep(e))
            .map(|e| e["n"].as_i64().unwrap())
            .collect();
        want.sort_unstable();
        assert_eq!(got, want, "filter {filter}");
    };
    let n = |e: &Value| e["n"].as_i64().unwrap();
    let host = |e: &Value| e["host"].as_str().map(str::to_string);
    check(json!({"column": "n", "op": "=", "value": 2005}), &|e| {
        n(e) == 2005
    });
    check(json!({"column": "n", "op": "!=", "value": 7}), &|e| {
        n(e) != 7
    });
    check(json!({"column": "n", "op": "<", "value": 120}), &|e| {
        n(e) < 120
    });
    check(json!({"column": "n", "op": ">=", "value": 3240}), &|e| {
        n(e) >= 3240
    });
    check(
        json!({"column": "host", "op": "in", "value": ["h0", "h2"]}),
        &|e| matches!(host(e).as_deref(), Some("h0" | "h2")),
    );
    check(json!({"column": "host", "op": "is_null"}), &|e| {
        e["host"].is_null()
    });
    check(
        json!({"or": [
            {"and": [{"column": "host", "op": "=", "value": "h1"}, {"column": "n", "op": "<=", "value": 30}]},
            {"column": "n", "op": ">", "value": 3245}
        ]}),
        &|e| (host(e).as_deref() == Some("h1") && n(e) <= 30) || n(e) > 3245,
    );
    check(
        json!({"column": "ts", "op": "<", "value": "2026-11-21T00:00:10Z"}),
        &|e| e["ts"].as_i64().unwrap() < T0 + DAY_MS + 10_000,
    );

    // A time range keeps one day: the other days' files are never opened.
    let r = query(
        &server,
        "events",
        &json!({"time_range": {"from": "2026-11-21T00:00:00Z", "to": "2026-11-22T00:00:00Z"}, "columns": ["n"], "explain": true}),
        None,
    );
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["rows"].as_array().unwrap().len(), 250);
    assert_eq!(v["explain"]["files_total"], 4);
    assert_eq!(v["explain"]["files_pruned"], 3, "{v}");
    assert_eq!(v["explain"]["files_read"], 1, "{v}");
    // A value outside every file's statistics: row groups pruned, nothing decoded.
    let r = query(
        &server,
        "events",
        &json!({"filter": {"column": "n", "op": ">", "value": 50_000_000}, "explain": true}),
        None,
    );
    let v = r.json();
    assert_eq!(v["explain"]["row_groups_pruned_by_statistics"], 4, "{v}");
    assert_eq!(v["explain"]["rows_decoded"], 0, "{v}");

    // Order by time, newest first, with a limit.
    let rows = query_all(
        &server,
        ADMIN_KEY,
        "events",
        &json!({"order_by": "time", "descending": true, "limit": 3, "columns": ["n"]}),
    );
    assert_eq!(ns(&rows), vec![99_999, 3249, 3248]);

    // Mistakes are precise 400s.
    for (req, code) in [
        (
            json!({"filter": {"column": "nope", "op": "=", "value": 1}}),
            "unknown_column",
        ),
        (
            json!({"filter": {"column": "n", "op": "=", "value": "x"}}),
            "invalid_filter",
        ),
        (
            json!({"filter": {"column": "n", "op": "like", "value": 1}}),
            "invalid_filter",
        ),
        (json!({"order_by": "key"}), "invalid_query"),
        (json!({"descending": true}), "invalid_query"),
        (
            json!({"time_range": {"from": "yesterday"}}),
            "invalid_filter",
        ),
    ] {
        let r = query(&server, "events", &req, None);
        assert_eq!(
            (r.status, r.code()),
            (400, code.to_string()),
            "{req}: {r:?}"
        );
    }
}

#[test]
fn upsert_filters_see_only_newest_versions_and_prune_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    create_table(
        &server,
        ADMIN_KEY,
        "kv",
        &json!({"fields": [
            {"name": "id", "type": "int64", "nullable": false},
            {"name": "v", "type": "string"}
        ], "primary_key": ["id"]}),
    );
    for f in 0..5i64 {
        let batch: Vec<Value> = (0..100i64)
            .map(|i| json!({"id": f * 100 + i, "v": "old"}))
            .collect();
        assert_eq!(
            ingest(&server, ADMIN_KEY, "kv", &Value::Array(batch)).status,
            200
        );
        flush(&server, ADMIN_KEY, "kv");
    }
    // Key 7 gets a new version: a filter on the old value must not find its old version.
    assert_eq!(
        ingest(&server, ADMIN_KEY, "kv", &json!({"id": 7, "v": "new"})).status,
        200
    );
    flush(&server, ADMIN_KEY, "kv");
    let rows = query_all(
        &server,
        ADMIN_KEY,
        "kv",
        &json!({"filter": {"column": "id", "op": "in", "value": [6, 7, 8]}, "columns": ["id", "v"]}),
    );
    assert_eq!(
        rows,
        vec![
            json!({"id": 6, "v": "old"}),
            json!({"id": 7, "v": "new"}),
            json!({"id": 8, "v": "old"})
        ]
    );
    let rows = query_all(
        &server,
        ADMIN_KEY,
        "kv",
        &json!({"filter": {"and": [{"column": "v", "op": "=", "value": "old"}, {"column": "id", "op": "<", "value": 10}]}, "columns": ["id"]}),
    );
    let ids: Vec<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(
        ids,
        vec![0, 1, 2, 3, 4, 5, 6, 8, 9],
        "7's newest version is not \"old\""
    );

    // A key lookup by filter opens only files whose key range holds the key.
    let r = query(
        &server,
        "kv",
        &json!({"filter": {"column": "id", "op": "=", "value": 250}, "explain": true}),
        None,
    );
    let v = r.json();
    assert_eq!(v["rows"], json!([{"id": 250, "v": "old"}]));
    assert_eq!(v["explain"]["files_total"], 6);
    assert_eq!(v["explain"]["files_read"], 1, "{v}");

    // A key inside a file's range but absent from it: the bloom filter rules it out.
    assert_eq!(
        ingest(
            &server,
            ADMIN_KEY,
            "kv",
            &json!([{"id": 1000, "v": "x"}, {"id": 3000, "v": "y"}])
        )
        .status,
        200
    );
    flush(&server, ADMIN_KEY, "kv");
    let r = query(
        &server,
        "kv",
        &json!({"filter": {"column": "id", "op": "=", "value": 2000}, "explain": true}),
        None,
    );
    let v = r.json();
    assert_eq!(v["rows"], json!([]));
    assert_eq!(v["explain"]["files_read"], 1, "{v}");
    assert_eq!(v["explain"]["row_groups_pruned_by_bloom_filter"], 1, "{v}");
}

#[test]
fn results_come_as_arrow_ipc_and_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    events_table(&server);
    let req = json!({"filter": {"column": "n", "op": "<", "value": 100}, "columns": ["n", "host"]});

    let r = query(
        &server,
        "events",
        &req,
        Some("application/vnd.apache.arrow.stream"),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.apache.arrow.stream")
    );
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(r.raw), None).unwrap();
    let mut sum = 0i64;
    let mut rows = 0;
    for b in reader {
        let b = b.unwrap();
        assert_eq!(b.schema().field(0).name(), "n");
        assert_eq!(b.schema().field(1).name(), "host");
        sum += b
            .column(0)
            .as_primitive::<Int64Type>()
            .values()
            .iter()
            .sum::<i64>();
        rows += b.num_rows();
    }
    assert_eq!((rows, sum), (100, (0..100).sum::<i64>()));

    let r = query(
        &server,
        "events",
        &req,
        Some("application/vnd.apache.parquet"),
    );
    assert_eq!(r.status, 200);
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        bytes::Bytes::from(r.raw),
    )
    .unwrap()
    .build()
    .unwrap();
    let batches: Vec<_> = reader.map(|b| b.unwrap()).collect();
    let nulls: usize = batches.iter().map(|b| b.column(1).null_count()).sum();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 100);
    assert_eq!(nulls, 10);

    // An empty result is still a valid stream with the schema.
    let none = json!({"filter": {"column": "n", "op": "<", "value": -1}, "columns": ["n"]});
    let r = query(
        &server,
        "events",
        &none,
        Some("application/vnd.apache.arrow.stream"),
    );
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(r.raw), None).unwrap();
    assert_eq!(reader.schema().field(0).name(), "n");
    assert_eq!(reader.count(), 0);
}

#[test]
fn the_page_index_skips_pages_inside_a_row_group() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    create_table(
        &server,
        ADMIN_KEY,
        "wide",
        &json!({"fields": [
            {"name": "ts", "type": "timestamp_ms", "nullable": false},
            {"name": "n", "type": "int64", "nullable": false}
        ], "time_column": "ts"}),
    );
    let batch: Vec<Value> = (0..60_000i64)
        .map(|i| json!({"ts": T0 + i, "n": i}))
        .collect();
    assert_eq!(
        ingest(&server, ADMIN_KEY, "wide", &Value::Array(batch)).status,
        200
    );
    flush(&server, ADMIN_KEY, "wide");
    let r = query(
        &server,
        "wide",
        &json!({"filter": {"column": "n", "op": ">=", "value": 59_990}, "columns": ["n"], "explain": true}),
        None,
    );
    let v = r.json();
    assert_eq!(
        ns(v["rows"].as_array().unwrap()),
        (59_990..60_000).collect::<Vec<i64>>()
    );
    assert_eq!(v["explain"]["row_groups_total"], 1, "{v}");
    let skipped = v["explain"]["rows_skipped_by_page_index"].as_u64().unwrap();
    assert!(skipped >= 20_000, "one row group, most pages skipped: {v}");
    assert_eq!(
        v["explain"]["rows_decoded"].as_u64().unwrap(),
        60_000 - skipped
    );
}
