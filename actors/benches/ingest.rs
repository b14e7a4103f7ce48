//! Micro-benchmarks of the standalone ingest path, stage by stage, on ~200-byte events of the
//! shape `alluvium bench http` sends:
//!
//! - `wal_append`: one group (1, 100 or 1000 rows; or 8 records of 1000) written and made
//!   durable with `fdatasync`, in a temporary directory. The figure is mostly the disk's sync
//!   latency: `TMPDIR` picks the disk.
//! - `memtable_insert`: rows into a fresh skiplist memtable ordered by time.
//! - `json_translate`: a 1000-event JSON array body -> typed rows (`schema::parse_batch`), and
//!   the same body parsed into `serde_json::Value`s only (no typing, no checks), for comparison.
//! - `arrow_parquet`: rows -> Arrow `RecordBatch` (`rows_to_batch`), Arrow -> zstd Parquet
//!   (`storage::parquet::encode`), and the whole flush encode of a memtable
//!   (`flush::build_files`).
//!
//! Run with `cargo bench -p alluvium-actors` (a filter such as `-- wal_append` picks one).
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use alluvium_actors::flush::build_files;
use alluvium_actors::ids::{TableName, TableRef, TenantId};
use alluvium_actors::memtable::Memtable;
use alluvium_actors::row::Row;
use alluvium_actors::schema::arrow::{RowRef, rows_to_batch};
use alluvium_actors::schema::{BatchLimits, BodyFormat, TableSchema, parse_batch};
use alluvium_actors::storage::parquet::{FileOptions, encode};
use alluvium_actors::wal::{Wal, WalConfig, WalRecord};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

/// Bytes per event in a JSON array body, comma included.
const EVENT_BYTES: usize = 200;
const TS0: i64 = 1_795_600_000_000;

fn schema() -> TableSchema {
    let s: TableSchema = serde_json::from_str(
        r#"{"fields":[
            {"name":"id","type":"string","nullable":false},
            {"name":"ts","type":"timestamp_ms","nullable":false},
            {"name":"host","type":"string"},
            {"name":"level","type":"string"},
            {"name":"latency","type":"float64"},
            {"name":"status","type":"int64"},
            {"name":"msg","type":"string"}],
          "time_column":"ts"}"#,
    )
    .unwrap();
    s.validate().unwrap();
    s
}

/// A JSON array of `n` events of EVENT_BYTES each.
fn body(n: usize) -> Vec<u8> {
    const HOSTS: [&str; 4] = ["web-01", "web-02", "api-01", "db-01"];
    const LEVELS: [&str; 3] = ["info", "warn", "error"];
    let mut out = b"[".to_vec();
    for i in 0..n {
        if i > 0 {
            out.push(b',');
        }
        let mut e = format!(
            "{{\"id\":\"rbench-{i:012}\",\"ts\":{},\"host\":\"{}\",\"level\":\"{}\",\
             \"latency\":{:.3},\"status\":{},\"msg\":\"GET /v1/items/{i} took {} ms ",
            TS0 + i as i64,
            HOSTS[i % 4],
            LEVELS[i % 3],
            (i % 997) as f64 * 0.125,
            [200, 201, 404, 503][i % 4],
            i % 97
        );
        while e.len() < EVENT_BYTES - 3 {
            e.push('x');
        }
        e.push_str("\"}");
        out.extend_from_slice(e.as_bytes());
    }
    out.push(b']');
    out
}

fn rows(schema: &TableSchema, n: usize) -> Vec<Row> {
    parse_batch(&body(n), BodyFormat::Json, schema, &BatchLimits::default()).unwrap()
}

fn table() -> TableRef {
    TableRef::new(
        TenantId::new("default").unwrap(),
        TableName::new("bench").unwrap(),
    )
}

fn wal_append(c: &mut Criterion) {
    let schema = schema();
    let table = table();
    let mut group = c.benchmark_group("wal_append");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(4));
    for (records, rows_per_record) in [(1usize, 1usize), (1, 100), (1, 1000), (8, 1000)] {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(WalConfig::new(dir.path()), |_| Ok(())).unwrap();
        let template = rows(&schema, rows_per_record);
        // Sequences are handed out when a group is built (setup runs ahead of the timed part).
        let next_seq = std::cell::Cell::new(1u64);
        let total = (records * rows_per_record) as u64;
        group.throughput(Throughput::Elements(total));
        group.bench_function(format!("{records}x{rows_per_record}_rows"), |b| {
            b.iter_batched(
                || {
                    let first = next_seq.get();
                    next_seq.set(first + total);
                    (0..records)
                        .map(|r| WalRecord {
                            table: table.clone(),
                            schema_version: 1,
                            first_seq: first + (r * rows_per_record) as u64,
                            ingested_at_us: TS0 * 1000,
                            rows: template.clone(),
                            idempotency_key: None,
                        })
                        .collect::<Vec<_>>()
                },
                |group| {
                    wal.append(&group).unwrap();
                    // Sealed segments are deleted now and then, as flushes would, so the
                    // benchmark does not fill the disk.
                    if wal.segment_count() > 4 {
                        let last = group.last().map(WalRecord::last_seq).unwrap_or(0);
                        let committed = HashMap::from([(table.clone(), last)]);
                        wal.checkpoint(&committed).unwrap();
                    }
                },
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

fn memtable_insert(c: &mut Criterion) {
    let schema = Arc::new(schema());
    let template = rows(&schema, 10_000);
    let mut group = c.benchmark_group("memtable_insert");
    group.throughput(Throughput::Elements(template.len() as u64));
    group.bench_function("10000_rows", |b| {
        b.iter_batched(
            || template.clone(),
            |rows| {
                let m = Memtable::new(1, schema.clone(), 1);
                for (i, r) in rows.into_iter().enumerate() {
                    m.insert(i as u64 + 1, TS0 * 1000, r);
                }
                // Returned so that the drop is not timed.
                m
            },
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

fn json_translate(c: &mut Criterion) {
    let schema = schema();
    let limits = BatchLimits::default();
    let body = body(1000);
    let mut group = c.benchmark_group("json_translate");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("1000_events", |b| {
        b.iter(|| parse_batch(black_box(&body), BodyFormat::Json, &schema, &limits).unwrap());
    });
    group.bench_function("1000_events_serde_json_value", |b| {
        b.iter(|| serde_json::from_slice::<Vec<serde_json::Value>>(black_box(&body)).unwrap());
    });
    group.finish();
    // A small NATS message: the per-batch cost shows.
    let small = self::body(10);
    let mut group = c.benchmark_group("json_translate_small");
    group.throughput(Throughput::Bytes(small.len() as u64));
    group.bench_function("10_events", |b| {
        b.iter(|| parse_batch(black_box(&small), BodyFormat::Json, &schema, &limits).unwrap());
    });
    group.finish();
}

fn arrow_parquet(c: &mut Criterion) {
    let schema = Arc::new(schema());
    let n = 100_000;
    let rows = rows(&schema, n);
    let refs: Vec<RowRef<'_>> = rows
        .iter()
        .enumerate()
        .map(|(i, row)| RowRef {
            seq: i as u64 + 1,
            ingested_at_us: TS0 * 1000,
            row,
        })
        .collect();
    let batch = rows_to_batch(&schema, &refs).unwrap();
    let opts = FileOptions {
        table: "default/bench".into(),
        schema_version: 1,
        seq_range: (1, n as u64),
        sorted_by: vec![1, schema.fields.len()],
        bloom_columns: vec![],
        zstd_level: 3,
        index_columns: Vec::new(),
    };
    let memtable = Memtable::new(1, schema.clone(), 1);
    for (i, r) in rows.iter().enumerate() {
        memtable.insert(i as u64 + 1, TS0 * 1000, r.clone());
    }
    let table = table();

    let mut group = c.benchmark_group("arrow_parquet");
    group
        .sample_size(20)
        .throughput(Throughput::Elements(n as u64));
    group.bench_function("rows_to_batch_100000", |b| {
        b.iter(|| rows_to_batch(&schema, black_box(&refs)).unwrap());
    });
    group.bench_function("parquet_encode_100000", |b| {
        b.iter(|| encode(black_box(&batch), &opts).unwrap());
    });
    group.bench_function("flush_build_files_100000", |b| {
        b.iter(|| build_files(&table, black_box(&memtable)).unwrap());
    });
    group.finish();
}

criterion_group!(
    benches,
    wal_append,
    memtable_insert,
    json_translate,
    arrow_parquet
);
criterion_main!(benches);
