//! A real `nats-server` for tests: started on a free port with JetStream and its own store
//! directory, stopped (and restartable on the same port and store) by the test; and the
//! helpers of the NATS tests: a lake (a temporary directory with a nats-server and an alluvium
//! data directory), requests with their status, counts and metrics.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use bytes::Bytes;
use serde_json::{Value, json};

use super::{ADMIN_KEY, Server, get, query_all};

/// The server binary: `ALLUVIUM_TEST_NATS_SERVER`, or the one `./scripts/test.sh` installs into
/// the test virtualenv.
pub fn nats_server_binary() -> PathBuf {
    if let Ok(p) = std::env::var("ALLUVIUM_TEST_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/nats-server");
    assert!(
        venv.exists(),
        "{} is missing: run ./scripts/test.sh once to install the test dependencies",
        venv.display()
    );
    venv
}

/// A free TCP port on 127.0.0.1 (free when asked; the OS does not hand it out again at once).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A running nats-server with JetStream.
pub struct NatsServer {
    child: Option<Child>,
    /// Its client port.
    pub port: u16,
    store: PathBuf,
    /// Arguments after the port and store ones (cluster routes).
    extra: Vec<String>,
}

impl NatsServer {
    /// Starts a server with JetStream storing under `store`.
    pub fn start(store: &Path) -> NatsServer {
        let mut s = NatsServer {
            child: None,
            port: free_port(),
            store: store.to_path_buf(),
            extra: Vec::new(),
        };
        s.restart();
        s
    }

    /// `nats://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGKILL: like a crash) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and store, and waits until it accepts
    /// connections.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new(nats_server_binary())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start within 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A cluster of nats-servers with JetStream on loopback, each with its own store.
pub struct NatsCluster {
    /// The servers.
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `n` servers routed to each other as cluster `alluvium-test` and waits until
    /// JetStream has a meta leader (streams can be created).
    pub fn start(dir: &Path, n: usize) -> NatsCluster {
        let cluster_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let routes = cluster_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut servers = Vec::new();
        for (i, cport) in cluster_ports.iter().enumerate() {
            let mut s = NatsServer {
                child: None,
                port: free_port(),
                store: dir.join(format!("n{i}")),
                extra: vec![
                    "--server_name".into(),
                    format!("n{i}"),
                    "--cluster_name".into(),
                    "alluvium-test".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{cport}"),
                    "--routes".into(),
                    routes.clone(),
                ],
            };
            s.restart();
            servers.push(s);
        }
        let cluster = NatsCluster { servers };
        cluster.wait_jetstream();
        cluster
    }

    /// Every server's URL, comma separated (what a client that fails over is given).
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(|s| s.url())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn wait_jetstream(&self) {
        let url = self.servers[0].url();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let client = async_nats::connect(url).await.unwrap();
            let js = async_nats::jetstream::new(client);
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if js.query_account().await.is_ok() {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "JetStream cluster has no meta leader after 30 s"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A temporary directory holding a running nats-server (`nats/`) and an alluvium data
/// directory (`data/`).
pub struct Lake {
    /// The NATS server.
    pub nats: NatsServer,
    /// alluvium's data directory.
    pub data: PathBuf,
    _dir: tempfile::TempDir,
}

impl Lake {
    /// A new directory with nats-server started.
    pub fn new() -> Lake {
        let dir = tempfile::tempdir().unwrap();
        Lake {
            nats: NatsServer::start(&dir.path().join("nats")),
            data: dir.path().join("data"),
            _dir: dir,
        }
    }

    /// Starts alluvium on the data directory, connected to the NATS server, with extra
    /// `ALLUVIUM_*` settings.
    pub fn serve(&self, extra: &[(&str, &str)]) -> Server {
        let url = self.nats.url();
        let mut env = vec![("ALLUVIUM_NATS__URL", url.as_str())];
        env.extend_from_slice(extra);
        Server::start(&self.data, &env)
    }
}

/// Headers with `Authorization: Bearer {key}`.
pub fn auth(key: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("Authorization", format!("Bearer {key}").as_str());
    h
}

/// The admin credential with an `Alluvium-Durability` header.
pub fn durability(level: &str) -> HeaderMap {
    let mut h = auth(ADMIN_KEY);
    h.insert("Alluvium-Durability", level);
    h
}

/// Sends a request and returns (Alluvium-Status, body JSON).
pub async fn request(
    client: &async_nats::Client,
    subject: &str,
    headers: HeaderMap,
    body: &str,
) -> (u16, Value) {
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        client.request_with_headers(subject.to_string(), headers, Bytes::from(body.to_string())),
    )
    .await
    .expect("no reply within 10 s")
    .expect("request failed");
    let status = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Alluvium-Status"))
        .map(|v| v.as_str().parse().unwrap())
        .expect("reply without Alluvium-Status");
    (status, serde_json::from_slice(&reply.payload).unwrap())
}

/// Rows of a table.
pub fn count(server: &Server, table: &str) -> usize {
    query_all(server, ADMIN_KEY, table, &json!({})).len()
}

/// The value of a metric without labels.
pub fn metric(server: &Server, name: &str) -> u64 {
    let body = get(server, "/metrics").body;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in {body}"))
}

/// Messages in JetStream stream `name` now (blocking: for `wait_for` closures).
pub fn stream_messages(js: &async_nats::jetstream::Context, name: &str) -> u64 {
    let js = js.clone();
    let name = name.to_string();
    futures::executor::block_on(async move {
        js.get_stream(name)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .messages
    })
}
