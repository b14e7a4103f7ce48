//! The lake on S3, against a real S3 API (moto): object round trips under a prefix, create-only
//! puts that exactly one concurrent writer wins, two catalog writers racing for versions, and
//! the startup probe's errors for an unreachable endpoint and a missing bucket.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alluvium_actors::catalog::log::{LOG_PREFIX, commit, load_from, try_commit};
use alluvium_actors::catalog::{Action, CatalogError, CatalogState};
use alluvium_actors::ids::{TableName, TableRef, TenantId};
use alluvium_actors::storage::{PutOutcome, Storage};
use bytes::Bytes;
use common::nats::free_port;
use common::s3::MotoServer;
use object_store::path::Path as ObjectPath;

const BUCKET: &str = "alluvium-test";

fn table(name: &str) -> TableRef {
    TableRef::new(
        TenantId::new("acme").unwrap(),
        TableName::new(name).unwrap(),
    )
}

fn create(name: &str) -> Action {
    Action::CreateTable {
        table: table(name),
        schema: serde_json::from_str(r#"{"fields":[{"name":"n","type":"int64"}]}"#).unwrap(),
    }
}

/// A moto server with the test bucket and a storage handle on `prefix` in it.
fn lake(prefix: &str) -> (MotoServer, Storage) {
    let moto = MotoServer::start();
    moto.create_bucket(BUCKET);
    let storage = Storage::s3(&moto.settings(BUCKET, prefix)).unwrap();
    (moto, storage)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_round_trip_under_the_prefix() {
    let (moto, storage) = lake("lakes/one/");
    assert_eq!(storage.description(), format!("s3://{BUCKET}/lakes/one"));
    storage.probe().await.unwrap();
    let p = ObjectPath::from("tables/t/part-1.parquet");
    storage.put(&p, Bytes::from_static(b"first")).await.unwrap();
    storage
        .put(&p, Bytes::from_static(b"second"))
        .await
        .unwrap();
    assert_eq!(
        storage.get(&p).await.unwrap(),
        Bytes::from_static(b"second")
    );
    let listed = storage.list(&ObjectPath::from("tables")).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].location, p);
    assert_eq!(listed[0].size, 6);

    // The bucket holds the object under the prefix, and only there.
    let root = Storage::s3(&moto.settings(BUCKET, "")).unwrap();
    let all: Vec<String> = root
        .list(&ObjectPath::from(""))
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.location.to_string())
        .collect();
    assert_eq!(all, ["lakes/one/tables/t/part-1.parquet"]);

    storage.delete(&p).await.unwrap();
    storage.delete(&p).await.unwrap();
    assert!(
        storage
            .list(&ObjectPath::from("tables"))
            .await
            .unwrap()
            .is_empty()
    );
    let err = storage.get(&p).await.unwrap_err();
    assert!(
        matches!(
            err,
            alluvium_actors::storage::StorageError::ObjectStore {
                source: object_store::Error::NotFound { .. },
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_one_create_only_put_wins() {
    let (_moto, storage) = lake("lake");
    let p = ObjectPath::from("catalog/log/00000000000000000001.json");
    assert_eq!(
        storage.put_new(&p, Bytes::from_static(b"a")).await.unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        storage.put_new(&p, Bytes::from_static(b"b")).await.unwrap(),
        PutOutcome::AlreadyExists
    );
    assert_eq!(storage.get(&p).await.unwrap(), Bytes::from_static(b"a"));

    // Eight writers, each with its own client as if on its own node, race for one key.
    let p = ObjectPath::from("catalog/log/00000000000000000002.json");
    let racers = (0..8u8).map(|i| {
        let storage = Storage::s3(&_moto.settings(BUCKET, "lake")).unwrap();
        let p = p.clone();
        tokio::spawn(async move { (i, storage.put_new(&p, Bytes::from(vec![i; 64])).await) })
    });
    let mut winners = Vec::new();
    for r in futures::future::join_all(racers).await {
        let (i, outcome) = r.unwrap();
        if outcome.unwrap() == PutOutcome::Created {
            winners.push(i);
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    assert_eq!(
        storage.get(&p).await.unwrap(),
        Bytes::from(vec![winners[0]; 64])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_catalog_writers_never_share_a_version() {
    let (moto, a) = lake("shared");
    let b = Storage::s3(&moto.settings(BUCKET, "shared")).unwrap();

    // Both writers start at version 0 and race for version 1: one wins, the other learns it
    // lost (`None`), reloads and commits version 2.
    let s0 = CatalogState::default();
    let (a0, b0) = ([create("a0")], [create("b0")]);
    let (ra, rb) = tokio::join!(
        try_commit(&a, &s0, "create_table", &a0),
        try_commit(&b, &s0, "create_table", &b0),
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(
        ra.is_some() != rb.is_some(),
        "exactly one writer must win version 1: {ra:?} {rb:?}"
    );
    let (loser, loser_table) = if ra.is_none() { (&a, "a0") } else { (&b, "b0") };
    let reloaded = load_from(loser, CatalogState::default()).await.unwrap();
    assert_eq!(reloaded.version, 1);
    let s2 = try_commit(loser, &reloaded, "create_table", &[create(loser_table)])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s2.version, 2);

    // Then each writer commits five tables at once, starting from a stale state and retrying
    // after every lost race.
    let writer = |storage: Storage, name: &'static str| async move {
        let mut state = Arc::new(CatalogState::default());
        for i in 1..=5 {
            let (next, res) = commit(
                &storage,
                state,
                "create_table",
                &[create(&format!("{name}{i}"))],
            )
            .await;
            res.unwrap();
            state = next;
        }
        state
    };
    let (wa, wb) = tokio::join!(
        tokio::spawn(writer(a.clone(), "a")),
        tokio::spawn(writer(b.clone(), "b"))
    );
    let (wa, wb) = (wa.unwrap(), wb.unwrap());
    let last = wa.version.max(wb.version);
    assert_eq!(last, 12);

    // The log holds versions 1..=12, each once, and every table a writer was told it created:
    // no commit was overwritten by the other writer.
    let mut versions: Vec<String> = a
        .list(&ObjectPath::from(LOG_PREFIX))
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.location.filename().unwrap().to_string())
        .collect();
    versions.sort();
    let expected: Vec<String> = (1..=12).map(|v| format!("{v:020}.json")).collect();
    assert_eq!(versions, expected);
    let state = load_from(&b, CatalogState::default()).await.unwrap();
    assert_eq!(state.version, 12);
    let tables: BTreeSet<String> = state.tables.keys().map(|t| t.to_string()).collect();
    let mut want = BTreeSet::new();
    for name in ["a", "b"] {
        for i in 0..=5 {
            want.insert(table(&format!("{name}{i}")).to_string());
        }
    }
    assert_eq!(tables, want);

    // A writer that re-creates a table another one committed meanwhile gets a clean error.
    let (latest, res) = commit(
        &a,
        Arc::new(CatalogState::default()),
        "create_table",
        &[create("b3")],
    )
    .await;
    assert!(matches!(res, Err(CatalogError::TableExists(_))), "{res:?}");
    assert_eq!(latest.version, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_names_the_unreachable_endpoint_and_the_missing_bucket() {
    let moto = MotoServer::start();

    // Nothing listens on this port.
    let mut settings = moto.settings(BUCKET, "");
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    settings.endpoint = Some(endpoint.clone());
    let storage = Storage::s3(&settings).unwrap();
    let started = Instant::now();
    let err = storage.probe().await.unwrap_err().to_string();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "probe took {took:?}: {err}");
    assert!(err.contains(&endpoint), "{err}");
    assert!(err.contains(&format!("`{BUCKET}`")), "{err}");
    assert!(err.contains("unreachable"), "{err}");
    eprintln!("unreachable endpoint, after {took:?}: {err}");

    // The server answers, but the bucket was never created.
    let storage = Storage::s3(&moto.settings("no-such-bucket", "lake")).unwrap();
    let err = storage.probe().await.unwrap_err().to_string();
    assert!(err.contains("`no-such-bucket`"), "{err}");
    assert!(err.contains("does not exist"), "{err}");
    eprintln!("missing bucket: {err}");

    moto.create_bucket("no-such-bucket");
    storage.probe().await.unwrap();
}
