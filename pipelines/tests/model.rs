//! The upsert table against a model: random interleavings of upserts, deletes (by key and by
//! `_op` event), flushes, compactions and restarts give the answers of a `BTreeMap` replaying
//! the same writes, through queries, point lookups and `as_of` reads of every flushed version.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use alluvium_actors::auth::{JwtConfig, Principal};
use alluvium_actors::compaction::CompactionConfig;
use alluvium_actors::memtable::MemtableConfig;
use alluvium_actors::schema::TableSchema;
use alluvium_actors::schema::translate::{BatchLimits, BodyFormat};
use alluvium_actors::wal::WalConfig;
use alluvium_actors::wal::messages::Durability;
use alluvium_pipelines::query::QueryRequest;
use alluvium_pipelines::{Node, NodeConfig, PipelineError};
use arrow::array::{Array, Int64Array, StringArray};
use bytes::Bytes;
use proptest::prelude::*;

const KEY: &str = "model-test-admin-key-0123456789";
const KEYS: i64 = 12;

type Model = BTreeMap<i64, String>;

#[derive(Debug, Clone)]
enum Op {
    /// One batch of upserts and `_op` deletes: (key, Some(value)) or (key, None).
    Batch(Vec<(i64, Option<String>)>),
    /// `DELETE /rows/{key}`.
    DeleteKey(i64),
    Flush,
    Compact,
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let write = (0..KEYS, proptest::option::weighted(0.75, "[a-z]{1,3}"));
    prop_oneof![
        5 => proptest::collection::vec(write, 1..8).prop_map(Op::Batch),
        1 => (0..KEYS).prop_map(Op::DeleteKey),
        3 => Just(Op::Flush),
        2 => Just(Op::Compact),
        1 => Just(Op::Restart),
    ]
}

fn config(dir: &Path) -> NodeConfig {
    NodeConfig {
        data_dir: dir.to_path_buf(),
        wal: WalConfig::new(dir.join("wal")),
        memtable: MemtableConfig {
            freeze_bytes: 64 << 20,
            freeze_age: Duration::from_secs(3600),
            retry_backoff: Duration::from_millis(100),
        },
        memory_budget: 1 << 30,
        compaction: CompactionConfig {
            // Triggered by the test only; replaced files kept, so every version stays readable.
            interval: Duration::ZERO,
            // Small merges: files outside a merge may hold versions its tombstones must hide.
            max_input_files: 2,
            ..CompactionConfig::default()
        },
        batch_limits: BatchLimits::default(),
        infer_new_tables: false,
        max_tables_per_tenant: 1000,
        dedupe: Default::default(),
        jwt: JwtConfig::default(),
        bootstrap_key: Some(KEY.into()),
        storage: None,
        cluster: None,
    }
}

fn schema() -> TableSchema {
    serde_json::from_str(
        r#"{"fields":[{"name":"k","type":"int64","nullable":false},{"name":"v","type":"string"}],"primary_key":["k"]}"#,
    )
    .unwrap()
}

/// The table's rows as `(k, v)`, by query, now or as of a version.
async fn rows(node: &Node, p: &Principal, as_of: Option<u64>) -> Model {
    let req = QueryRequest {
        as_of,
        ..QueryRequest::default()
    };
    let res = node.query(p, "t", req).await.unwrap();
    let mut out = Model::new();
    let mut last = None;
    for b in &res.batches {
        let k = b
            .column_by_name("k")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        let v = b
            .column_by_name("v")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        for i in 0..b.num_rows() {
            assert!(last < Some(k.value(i)), "rows sorted by key, each key once");
            last = Some(k.value(i));
            out.insert(k.value(i), v.value(i).to_string());
        }
    }
    out
}

/// Every key by point lookup, now or as of a version.
async fn lookups(node: &Node, p: &Principal, as_of: Option<u64>) -> Model {
    let mut out = Model::new();
    for k in 0..KEYS {
        match node.lookup(p, "t", &k.to_string(), false, as_of).await {
            Ok(b) => {
                let v = b
                    .column_by_name("v")
                    .unwrap()
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .unwrap();
                out.insert(k, v.value(0).to_string());
            }
            Err(PipelineError::RowNotFound(_)) => {}
            Err(e) => panic!("lookup {k}: {e}"),
        }
    }
    out
}

/// Runs `ops` over one node life after another (a restart ends a life); checks the model
/// after every compaction and restart, and at the end also every flushed version.
fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let mut model = Model::new();
    // Catalog version after a flush -> the model then.
    let mut versions: Vec<(u64, Model)> = Vec::new();
    let mut rest = ops.as_slice();
    let mut first = true;
    loop {
        let end = rest
            .iter()
            .position(|o| matches!(o, Op::Restart))
            .unwrap_or(rest.len());
        let (life, next) = rest.split_at(end);
        actix::System::new().block_on(async {
            let node = Node::start(config(dir.path())).await.unwrap();
            let p = node.authenticate(KEY).await.unwrap();
            if first {
                node.create_table(&p, "t", schema()).await.unwrap();
            }
            // A restart must change nothing.
            assert_eq!(rows(&node, &p, None).await, model, "after restart");
            for op in life {
                match op {
                    Op::Batch(writes) => {
                        let body: Vec<String> = writes
                            .iter()
                            .map(|(k, v)| match v {
                                Some(v) => format!("{{\"k\":{k},\"v\":\"{v}\"}}"),
                                None => format!("{{\"k\":{k},\"_op\":\"delete\"}}"),
                            })
                            .collect();
                        let body = Bytes::from(format!("[{}]", body.join(",")));
                        node.ingest(&p, "t", body, BodyFormat::Json, Durability::Wal)
                            .await
                            .unwrap();
                        for (k, v) in writes {
                            match v {
                                Some(v) => model.insert(*k, v.clone()),
                                None => model.remove(k),
                            };
                        }
                    }
                    Op::DeleteKey(k) => {
                        node.delete_key(&p, "t", &k.to_string(), Durability::Wal)
                            .await
                            .unwrap();
                        model.remove(k);
                    }
                    Op::Flush => {
                        if let Some(v) = node.flush(&p, "t").await.unwrap() {
                            versions.push((v, model.clone()));
                        }
                    }
                    Op::Compact => {
                        node.compact(&p, "t").await.unwrap();
                        assert_eq!(rows(&node, &p, None).await, model, "after compaction");
                        assert_eq!(
                            lookups(&node, &p, None).await,
                            model,
                            "lookups after compaction"
                        );
                    }
                    Op::Restart => unreachable!(),
                }
            }
            assert_eq!(rows(&node, &p, None).await, model);
            assert_eq!(lookups(&node, &p, None).await, model);
            for (v, then) in &versions {
                assert_eq!(&rows(&node, &p, Some(*v)).await, then, "as_of {v}");
                assert_eq!(
                    &lookups(&node, &p, Some(*v)).await,
                    then,
                    "lookups as_of {v}"
                );
            }
        });
        first = false;
        match next.split_first() {
            Some((_, after)) => rest = after,
            None => break,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn upsert_table_matches_a_map(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops);
    }
}

#[test]
fn compaction_between_deletes_and_restarts() {
    // A hand-picked sequence: a key written, flushed, deleted, flushed, compacted (the tombstone
    // is dropped with the version it hid), then rewritten; with restarts in between.
    run(vec![
        Op::Batch(vec![(1, Some("a".into())), (2, Some("b".into()))]),
        Op::Flush,
        Op::DeleteKey(1),
        Op::Flush,
        Op::Restart,
        Op::Compact,
        Op::Batch(vec![(1, Some("c".into())), (2, None)]),
        Op::Flush,
        Op::Compact,
        Op::Restart,
    ]);
}
