//! The assembled node in-process: concurrent ingest shares commit groups and gets contiguous
//! sequences; flush and restart keep every event exactly once.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use alluvium_actors::auth::{JwtConfig, Principal};
use alluvium_actors::memtable::MemtableConfig;
use alluvium_actors::schema::TableSchema;
use alluvium_actors::schema::translate::{BatchLimits, BodyFormat};
use alluvium_actors::wal::WalConfig;
use alluvium_actors::wal::messages::Durability;
use alluvium_pipelines::query::QueryRequest;
use alluvium_pipelines::{Node, NodeConfig, PipelineError};
use bytes::Bytes;

const KEY: &str = "node-test-admin-key-0123456789";

fn config(dir: &Path, budget: usize) -> NodeConfig {
    NodeConfig {
        data_dir: dir.to_path_buf(),
        wal: WalConfig::new(dir.join("wal")),
        memtable: MemtableConfig {
            freeze_bytes: 64 << 20,
            freeze_age: Duration::from_secs(3600),
            retry_backoff: Duration::from_millis(100),
        },
        memory_budget: budget,
        compaction: Default::default(),
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

async fn admin(node: &Node) -> Principal {
    node.authenticate(KEY).await.unwrap()
}

fn schema() -> TableSchema {
    serde_json::from_str(r#"{"fields":[{"name":"n","type":"int64","nullable":false}]}"#).unwrap()
}

async fn count(node: &Node, p: &Principal) -> usize {
    let res = node.query(p, "t", QueryRequest::default()).await.unwrap();
    res.batches.iter().map(|b| b.num_rows()).sum()
}

#[test]
fn concurrent_ingest_groups_commits_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    actix::System::new().block_on(async {
        let node = Node::start(config(dir.path(), 1 << 30)).await.unwrap();
        let p = admin(&node).await;
        assert!(node.create_table(&p, "t", schema()).await.unwrap().created);

        let acks = futures::future::join_all((0..200).map(|i| {
            let (node, p) = (node.clone(), p.clone());
            async move {
                let body = Bytes::from(format!("[{{\"n\":{i}}},{{\"n\":{i}}}]"));
                node.ingest(&p, "t", body, BodyFormat::Json, Durability::Wal)
                    .await
                    .unwrap()
            }
        }))
        .await;
        let mut seqs: Vec<u64> = acks
            .iter()
            .flat_map(|a| [a.first_seq, a.last_seq])
            .collect();
        seqs.sort();
        assert_eq!(
            seqs,
            (1..=400).collect::<Vec<_>>(),
            "two contiguous sequences per request"
        );
        let stats = node.wal_stats();
        let groups = stats.groups.load(Ordering::Relaxed);
        assert_eq!(stats.records.load(Ordering::Relaxed), 200);
        assert!(
            groups < 200,
            "no request shared a commit group ({groups} groups)"
        );
        assert_eq!(count(&node, &p).await, 400);

        // Half of it goes to Parquet; the rest stays in the WAL only.
        assert!(node.flush(&p, "t").await.unwrap().is_some());
        node.ingest(
            &p,
            "t",
            Bytes::from_static(b"{\"n\":-1}"),
            BodyFormat::Json,
            Durability::Wal,
        )
        .await
        .unwrap();
        assert_eq!(count(&node, &p).await, 401);
    });

    // A new process: the catalog has seqs 1..=400 in files, the WAL replays 401 only.
    actix::System::new().block_on(async {
        let node = Node::start(config(dir.path(), 1 << 30)).await.unwrap();
        let p = admin(&node).await;
        assert_eq!(count(&node, &p).await, 401);
        let ack = node
            .ingest(
                &p,
                "t",
                Bytes::from_static(b"{\"n\":7}"),
                BodyFormat::Json,
                Durability::Wal,
            )
            .await
            .unwrap();
        assert_eq!(ack.first_seq, 402);
    });
}

#[test]
fn memory_budget_pushes_back_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    actix::System::new().block_on(async {
        // A budget smaller than one batch's rows: the first batch fits, the next is refused.
        let node = Node::start(config(dir.path(), 1024)).await.unwrap();
        let p = admin(&node).await;
        node.create_table(&p, "t", schema()).await.unwrap();
        let batch = Bytes::from(format!("[{}]", vec!["{\"n\":1}"; 100].join(",")));
        node.ingest(&p, "t", batch.clone(), BodyFormat::Json, Durability::Wal)
            .await
            .unwrap();
        let err = node
            .ingest(&p, "t", batch, BodyFormat::Json, Durability::Wal)
            .await
            .unwrap_err();
        assert!(matches!(err, PipelineError::Overloaded { .. }), "{err}");
        assert_eq!(count(&node, &p).await, 100);
        // A flush frees the memtable and ingest resumes.
        node.flush(&p, "t").await.unwrap();
        node.ingest(
            &p,
            "t",
            Bytes::from_static(b"{\"n\":2}"),
            BodyFormat::Json,
            Durability::Wal,
        )
        .await
        .unwrap();
        assert_eq!(count(&node, &p).await, 101);
    });
}

#[test]
fn wal_segments_are_deleted_while_ingest_never_pauses() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1 << 30);
    cfg.wal.segment_size = 4096;
    cfg.memtable.freeze_bytes = 16 * 1024;
    cfg.memtable.freeze_age = Duration::from_millis(50);
    actix::System::new().block_on(async move {
        let node = Node::start(cfg).await.unwrap();
        let p = admin(&node).await;
        node.create_table(&p, "t", schema()).await.unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Eight producers keep the log busy: there is always a group waiting for the disk.
        let producers: Vec<_> = (0..8)
            .map(|i| {
                let (node, p, stop) = (node.clone(), p.clone(), stop.clone());
                actix::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let body = Bytes::from(format!(
                            "[{}]",
                            vec![format!("{{\"n\":{i}}}"); 20].join(",")
                        ));
                        node.ingest(&p, "t", body, BodyFormat::Json, Durability::Wal)
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while node.wal_stats().segments_deleted.load(Ordering::Relaxed) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no wal segment deleted under load"
            );
            actix::clock::sleep(Duration::from_millis(20)).await;
        }
        stop.store(true, Ordering::Relaxed);
        for h in producers {
            h.await.unwrap();
        }
    });
}
