//! A real `nats-server` for tests: started on a free port with JetStream and its own store
//! directory, stopped (and restartable on the same port and store) by the test.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
}

impl NatsServer {
    /// Starts a server with JetStream storing under `store`.
    pub fn start(store: &Path) -> NatsServer {
        let mut s = NatsServer {
            child: None,
            port: free_port(),
            store: store.to_path_buf(),
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

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
