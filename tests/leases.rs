//! Shard ownership leases against a real nats-server: two nodes share the shards, a killed
//! node's shards are taken over once its leases expire, a stopping node hands its shards over
//! at once, a foreign write or a NATS outage makes the holder stop, and invalid names are
//! refused.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alluvium_nats::lease::{LeaseEvent, LeaseSettings, LostReason, Shard, ShardLeases};
use async_nats::jetstream;
use common::nats::NatsServer;
use tokio::sync::{mpsc, oneshot, watch};

/// Short leases keep the tests fast: rounds every 667 ms, local deadline 1.6 s.
const TTL: Duration = Duration::from_secs(2);
const BUCKET: &str = "alluvium_shards";

/// Who holds what, as the nodes' events say, and every time two nodes held one shard.
#[derive(Default)]
struct Board {
    holders: BTreeMap<Shard, String>,
    violations: Vec<String>,
}

type SharedBoard = Arc<Mutex<Board>>;

/// A keeper and what it reported.
struct Node {
    id: String,
    leases: ShardLeases,
    held: Arc<Mutex<BTreeSet<Shard>>>,
    lost: Arc<Mutex<Vec<(Shard, LostReason)>>>,
    keeper: tokio::task::JoinHandle<()>,
    stop: Option<oneshot::Sender<()>>,
    _wanted: watch::Sender<Vec<Shard>>,
}

impl Node {
    async fn start(
        js: &jetstream::Context,
        id: &str,
        shards: &[Shard],
        board: &SharedBoard,
    ) -> Node {
        let leases = ShardLeases::open(js.clone(), settings(id)).await.unwrap();
        let (wanted_tx, wanted_rx) = watch::channel(shards.to_vec());
        let (events_tx, mut events_rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let shutdown = async {
            let _ = stop_rx.await;
        };
        let keeper = tokio::spawn(leases.clone().run(wanted_rx, events_tx, shutdown));
        let held = Arc::new(Mutex::new(BTreeSet::new()));
        let lost = Arc::new(Mutex::new(Vec::new()));
        let (h, l, b, node) = (held.clone(), lost.clone(), board.clone(), id.to_string());
        tokio::spawn(async move {
            while let Some(event) = events_rx.recv().await {
                match event {
                    LeaseEvent::Acquired { shard } => {
                        let mut board = b.lock().unwrap();
                        if let Some(other) = board.holders.get(&shard) {
                            let v = format!("{node} acquired {shard} held by {other}");
                            board.violations.push(v);
                        }
                        board.holders.insert(shard.clone(), node.clone());
                        h.lock().unwrap().insert(shard);
                    }
                    LeaseEvent::Lost {
                        shard,
                        reason,
                        handoff,
                    } => {
                        {
                            let mut board = b.lock().unwrap();
                            if board.holders.get(&shard) == Some(&node) {
                                board.holders.remove(&shard);
                            }
                        }
                        h.lock().unwrap().remove(&shard);
                        l.lock().unwrap().push((shard, reason));
                        // Work has stopped (the board says so): the key may go.
                        handoff.done();
                    }
                }
            }
        });
        Node {
            id: id.to_string(),
            leases,
            held,
            lost,
            keeper,
            stop: Some(stop_tx),
            _wanted: wanted_tx,
        }
    }

    fn held(&self) -> BTreeSet<Shard> {
        self.held.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.held.lock().unwrap().len()
    }

    fn lost(&self) -> Vec<(Shard, LostReason)> {
        self.lost.lock().unwrap().clone()
    }

    /// Like `kill -9`: the keeper stops without releasing anything, and its work stops.
    fn kill(&mut self, board: &SharedBoard) {
        self.keeper.abort();
        board.lock().unwrap().holders.retain(|_, n| *n != self.id);
    }

    /// Graceful shutdown; waits for the keeper to finish.
    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.keeper).await.unwrap();
    }
}

fn settings(id: &str) -> LeaseSettings {
    let mut s = LeaseSettings::new(id, format!("alluvium.query.{id}"));
    s.ttl = TTL;
    s
}

fn shards(n: usize) -> Vec<Shard> {
    (0..n)
        .map(|i| Shard::new("acme", format!("t{i}")).unwrap())
        .collect()
}

async fn connect(server: &NatsServer) -> jetstream::Context {
    let client = async_nats::ConnectOptions::new()
        .reconnect_delay_callback(|_| Duration::from_millis(100))
        .connect(server.url())
        .await
        .unwrap();
    jetstream::new(client)
}

/// Polls `f` every 10 ms until it holds; how long that took, or `None` after `limit`.
async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Compares the KV with the board: a shard a node holds without a change in between must be
/// that node's in the KV.
async fn check_kv(leases: &ShardLeases, shards: &[Shard], board: &SharedBoard) {
    for shard in shards {
        let before = board.lock().unwrap().holders.get(shard).cloned();
        let owner = leases.owner(shard.tenant(), shard.table()).await.unwrap();
        let mut board = board.lock().unwrap();
        let after = board.holders.get(shard).cloned();
        if let Some(node) = before
            && after.as_ref() == Some(&node)
            && owner.as_ref().map(|o| &o.node) != Some(&node)
        {
            let v = format!("{node} holds {shard} but the KV says {owner:?}");
            board.violations.push(v);
        }
    }
}

/// Two nodes on four shards, converged to two each.
async fn two_nodes(js: &jetstream::Context, board: &SharedBoard) -> (Node, Node, Vec<Shard>) {
    let all = shards(4);
    let (a, b) = tokio::join!(
        Node::start(js, "node-a", &all, board),
        Node::start(js, "node-b", &all, board)
    );
    let converged = wait_until(Duration::from_secs(30), || a.count() == 2 && b.count() == 2).await;
    assert!(
        converged.is_some(),
        "no 2/2 split: {:?} {:?}",
        a.held(),
        b.held()
    );
    (a, b, all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_share_four_shards_and_never_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start(dir.path());
    let js = connect(&server).await;
    let board = SharedBoard::default();
    let all = shards(4);
    let started = Instant::now();
    let (a, b) = tokio::join!(
        Node::start(&js, "node-a", &all, &board),
        Node::start(&js, "node-b", &all, &board)
    );
    // Until the split, and for two ttls after it, the KV must agree with the events.
    let deadline = started + Duration::from_secs(30);
    while !(a.count() == 2 && b.count() == 2) {
        assert!(
            Instant::now() < deadline,
            "no 2/2 split: {:?} {:?}",
            a.held(),
            b.held()
        );
        check_kv(&a.leases, &all, &board).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("2/2 split after {:?}", started.elapsed());
    let split = (a.held(), b.held());
    let stable = Instant::now() + 2 * TTL;
    while Instant::now() < stable {
        check_kv(&b.leases, &all, &board).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!((a.held(), b.held()), split, "the split did not hold");
    assert!(a.held().is_disjoint(&b.held()));
    for shard in &all {
        let owner = a
            .leases
            .owner(shard.tenant(), shard.table())
            .await
            .unwrap()
            .unwrap();
        let node = if a.held().contains(shard) { &a } else { &b };
        assert_eq!(owner.node, node.id, "{shard}");
        assert_eq!(owner.query_subject, format!("alluvium.query.{}", node.id));
    }
    let live: Vec<String> = a
        .leases
        .live_nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.node)
        .collect();
    assert_eq!(live, ["node-a", "node-b"]);
    let violations = &board.lock().unwrap().violations;
    assert!(violations.is_empty(), "{violations:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_joining_node_gets_its_share_from_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start(dir.path());
    let js = connect(&server).await;
    let board = SharedBoard::default();
    let all = shards(4);
    let a = Node::start(&js, "node-a", &all, &board).await;
    assert!(wait_until(5 * TTL, || a.count() == 4).await.is_some());
    let b = Node::start(&js, "node-b", &all, &board).await;
    let started = Instant::now();
    while !(a.count() == 2 && b.count() == 2) {
        assert!(
            started.elapsed() < 5 * TTL,
            "no 2/2 split: {:?} {:?}",
            a.held(),
            b.held()
        );
        check_kv(&a.leases, &all, &board).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("rebalanced after {:?}", started.elapsed());
    let lost = a.lost();
    assert_eq!(lost.len(), 2, "{lost:?}");
    assert!(
        lost.iter().all(|(_, r)| *r == LostReason::Rebalanced),
        "{lost:?}"
    );
    let violations = &board.lock().unwrap().violations;
    assert!(violations.is_empty(), "{violations:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_nodes_shards_are_taken_over_after_its_leases_expire() {
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start(dir.path());
    let js = connect(&server).await;
    let board = SharedBoard::default();
    let (mut a, b, _) = two_nodes(&js, &board).await;
    let lost_before = b.lost().len();
    a.kill(&board);
    let takeover = wait_until(4 * TTL, || b.count() == 4).await;
    println!("takeover after kill: {takeover:?} (ttl {TTL:?})");
    let takeover = takeover.expect("the survivor did not take all shards");
    assert!(takeover < 2 * TTL, "takeover took {takeover:?}");
    assert_eq!(b.lost().len(), lost_before, "{:?}", b.lost());
    let violations = &board.lock().unwrap().violations;
    assert!(violations.is_empty(), "{violations:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopping_node_hands_its_shards_over_within_a_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start(dir.path());
    let js = connect(&server).await;
    let board = SharedBoard::default();
    let (mut a, b, _) = two_nodes(&js, &board).await;
    let given = a.held();
    let lost_before = a.lost().len();
    let started = Instant::now();
    a.shutdown().await;
    let stopped = started.elapsed();
    let handoff = wait_until(4 * TTL, || b.count() == 4).await;
    println!("graceful handoff: keeper stopped after {stopped:?}, shards taken after {handoff:?}");
    let handoff = handoff.expect("the other node did not take all shards");
    assert!(handoff < TTL, "handoff took {handoff:?}");
    let lost = a.lost().split_off(lost_before);
    assert!(
        lost.iter().all(|(_, r)| *r == LostReason::Shutdown),
        "{lost:?}"
    );
    let lost: BTreeSet<Shard> = lost.into_iter().map(|(s, _)| s).collect();
    assert_eq!(lost, given);
    let violations = &board.lock().unwrap().violations;
    assert!(violations.is_empty(), "{violations:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_foreign_write_to_a_held_lease_makes_the_holder_stop() {
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start(dir.path());
    let js = connect(&server).await;
    let board = SharedBoard::default();
    let all = shards(1);
    let a = Node::start(&js, "node-a", &all, &board).await;
    assert!(wait_until(5 * TTL, || a.count() == 1).await.is_some());
    let kv = js.get_key_value(BUCKET).await.unwrap();
    let intruder = r#"{"node":"intruder","query_subject":"x","acquired_ms":0,"token":"x"}"#;
    kv.put("shard.acme.t0", intruder.into()).await.unwrap();
    let stopped = wait_until(TTL, || a.count() == 0).await;
    println!("conflict noticed after {stopped:?}");
    assert!(
        stopped.is_some(),
        "the holder did not notice the foreign write"
    );
    assert_eq!(a.lost(), [(all[0].clone(), LostReason::Conflict)]);
    let owner = a.leases.owner("acme", "t0").await.unwrap().unwrap();
    assert_eq!(owner.node, "intruder");
    // The intruder does not renew: its value expires and the node takes the shard back.
    let back = wait_until(3 * TTL, || a.count() == 1).await;
    println!("shard back after {back:?}");
    assert!(back.is_some(), "the node did not take the shard back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_names_are_refused() {
    for bad in ["", "a b", "a.b", "a*", "a>", "café", "a:b"] {
        assert!(Shard::new(bad, "t").is_err(), "tenant {bad:?}");
        assert!(Shard::new("acme", bad).is_err(), "table {bad:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start(dir.path());
    let js = connect(&server).await;
    for bad in ["", "node a", "node.a", "node>"] {
        let opened = ShardLeases::open(js.clone(), settings(bad)).await;
        assert!(opened.is_err(), "node id {bad:?}");
    }
    let mut short = settings("node-a");
    short.ttl = Duration::from_millis(200);
    assert!(ShardLeases::open(js.clone(), short).await.is_err());
    let leases = ShardLeases::open(js.clone(), settings("node-a"))
        .await
        .unwrap();
    for (tenant, table) in [("", "t"), ("acme", ""), ("a b", "t"), ("acme", "a.b")] {
        assert!(
            leases.owner(tenant, table).await.is_err(),
            "{tenant:?}/{table:?}"
        );
    }
    assert_eq!(leases.owner("acme", "t").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_with_another_ttl_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start(dir.path());
    let js = connect(&server).await;
    ShardLeases::open(js.clone(), settings("node-a"))
        .await
        .unwrap();
    let mut other = settings("node-b");
    other.ttl = 3 * TTL;
    let err = ShardLeases::open(js.clone(), other)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("ttl"), "{err}");
    let mut replicas = settings("node-c");
    replicas.replicas = 3;
    // A single server cannot hold 3 replicas, but the existing bucket can be used.
    ShardLeases::open(js.clone(), replicas).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_holder_stops_within_a_ttl_when_nats_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = NatsServer::start(dir.path());
    let js = connect(&server).await;
    let board = SharedBoard::default();
    let a = Node::start(&js, "node-a", &shards(2), &board).await;
    assert!(wait_until(5 * TTL, || a.count() == 2).await.is_some());
    server.stop();
    let stopped = wait_until(2 * TTL, || a.count() == 0).await;
    println!("leases reported lost {stopped:?} after NATS stopped (ttl {TTL:?})");
    let stopped = stopped.expect("the holder kept its leases without NATS");
    assert!(stopped < TTL, "lost after {stopped:?}");
    assert!(
        a.lost().iter().all(|(_, r)| *r == LostReason::Expired),
        "{:?}",
        a.lost()
    );
    // NATS comes back (the leases expired meanwhile): the node takes its shards again.
    server.restart();
    let back = wait_until(10 * TTL, || a.count() == 2).await;
    println!("shards back {back:?} after NATS restarted");
    assert!(back.is_some(), "the node did not take its shards again");
}

/// What the lease protocol relies on: `create` fails on a live key and succeeds on a deleted or
/// expired one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_create_succeeds_on_deleted_and_expired_keys_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start(dir.path());
    let js = connect(&server).await;
    ShardLeases::open(js.clone(), settings("node-a"))
        .await
        .unwrap();
    let kv = js.get_key_value(BUCKET).await.unwrap();
    let rev = kv.create("shard.a.b", "1".into()).await.unwrap();
    assert!(
        kv.create("shard.a.b", "2".into()).await.is_err(),
        "create over a live value"
    );
    // A delete on a stale revision is refused; on the current one it frees the key.
    assert!(
        kv.delete_expect_revision("shard.a.b", Some(rev + 1))
            .await
            .is_err()
    );
    kv.delete_expect_revision("shard.a.b", Some(rev))
        .await
        .unwrap();
    let rev = kv.create("shard.a.b", "3".into()).await.unwrap();
    // Unrenewed, the value expires after max_age and the key can be created again.
    let written = Instant::now();
    while kv.entry("shard.a.b").await.unwrap().is_some() {
        assert!(written.elapsed() < 5 * TTL, "the value did not expire");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let gone = written.elapsed();
    println!("value expired {gone:?} after its write (max_age {TTL:?})");
    assert!(
        gone >= TTL - Duration::from_millis(50),
        "expired early: {gone:?}"
    );
    let again = kv.create("shard.a.b", "4".into()).await.unwrap();
    assert!(again > rev);
}
