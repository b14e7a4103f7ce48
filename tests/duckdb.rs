//! DuckDB and pyarrow, independent readers, open the Parquet files alluvium writes and agree
//! with what was sent.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{Value, json};

#[test]
fn duckdb_reads_flushed_files() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    create_table(
        &server,
        ADMIN_KEY,
        "metrics",
        &json!({"fields": [
            {"name": "id", "type": "int64", "nullable": false},
            {"name": "ts", "type": "timestamp_us", "nullable": false},
            {"name": "host", "type": "string"},
            {"name": "value", "type": "float64"},
            {"name": "ok", "type": "bool"},
            {"name": "day", "type": "date"},
            {"name": "raw", "type": "binary"}
        ], "primary_key": ["id"], "time_column": "ts", "partition_by": "hour"}),
    );
    let n = 5000i64;
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let batch: Vec<Value> = chunk
            .iter()
            .map(|i| {
                json!({
                    "id": i,
                    "ts": 1_795_000_000_000_000i64 + i * 1_000_000,
                    "host": format!("h{}", i % 7),
                    "value": *i as f64 * 0.5,
                    "ok": i % 2 == 0,
                    "day": "2026-11-25",
                    "raw": "AQID"
                })
            })
            .collect();
        assert_eq!(
            ingest(&server, ADMIN_KEY, "metrics", &Value::Array(batch)).status,
            200
        );
    }
    flush(&server, ADMIN_KEY, "metrics");
    let files = parquet_files(&dir.path().join("tables/default/metrics/data"));
    assert!(files.len() >= 2, "5000 s of data span two hours: {files:?}");

    let glob = dir.path().join("tables/default/metrics/data/*/*.parquet");
    let script = r#"
import sys, json, duckdb, pyarrow.parquet as pq
glob = sys.argv[1]
con = duckdb.connect()
row = con.execute(f"select count(*), sum(id), sum(value), count(distinct host), sum(case when ok then 1 else 0 end), min(_seq), max(_seq), count(distinct _seq), min(day)::varchar, min(octet_length(raw)) from read_parquet('{glob}')").fetchone()
files = sorted(__import__('glob').glob(glob))
meta = pq.ParquetFile(files[0]).metadata
kv = {k.decode(): v.decode() for k, v in (meta.metadata or {}).items()}
codec = meta.row_group(0).column(0).compression
print(json.dumps({"duckdb": [str(v) for v in row], "kv": kv, "codec": codec, "pyarrow_rows": sum(pq.ParquetFile(f).metadata.num_rows for f in files)}))
"#;
    let out = std::process::Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(glob.to_str().unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let d: Vec<String> = v["duckdb"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    let sum_ids = n * (n - 1) / 2;
    assert_eq!(d[0], n.to_string());
    assert_eq!(d[1], sum_ids.to_string());
    assert_eq!(d[2].parse::<f64>().unwrap(), sum_ids as f64 * 0.5);
    assert_eq!(d[3], "7");
    assert_eq!(d[4], (n / 2).to_string());
    assert_eq!(
        (d[5].as_str(), d[6].as_str()),
        ("1", n.to_string().as_str())
    );
    assert_eq!(d[7], n.to_string());
    assert_eq!(d[8], "2026-11-25");
    assert_eq!(d[9], "3");
    assert_eq!(v["pyarrow_rows"], n);
    assert_eq!(v["codec"], "ZSTD");
    assert_eq!(v["kv"]["alluvium.table"], "default/metrics");
    assert_eq!(v["kv"]["alluvium.schema_version"], "1");
}
