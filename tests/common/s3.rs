//! A real S3 API for tests: moto's standalone server on a free port, one per test, holding
//! its buckets in memory and gone when the test drops it.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alluvium_actors::storage::S3Settings;

use super::nats::free_port;

/// The server binary: `ALLUVIUM_TEST_MOTO_SERVER`, or the one `./scripts/test.sh` installs into
/// the test virtualenv.
pub fn moto_server_binary() -> PathBuf {
    if let Ok(p) = std::env::var("ALLUVIUM_TEST_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
    assert!(
        venv.exists(),
        "{} is missing: run ./scripts/test.sh once to install the test dependencies",
        venv.display()
    );
    venv
}

/// A running moto server.
pub struct MotoServer {
    child: Option<Child>,
    /// Its HTTP port.
    pub port: u16,
}

impl MotoServer {
    /// Starts a server on a free port and waits until it answers HTTP.
    pub fn start() -> MotoServer {
        let bin = moto_server_binary();
        // The port is free when asked but may be taken before moto binds it: then moto exits
        // and another port is tried.
        for _ in 0..3 {
            let port = free_port();
            let child = Command::new(&bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot start {} ({e}): run ./scripts/test.sh once to install the test dependencies",
                        bin.display()
                    )
                });
            let mut server = MotoServer {
                child: Some(child),
                port,
            };
            if server.wait_ready(Duration::from_secs(30)) {
                return server;
            }
            server.kill();
        }
        panic!("moto_server did not start answering on any of 3 ports");
    }

    /// Polls until the server answers; false if it exited or `timeout` passed.
    fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(2))
            .build();
        loop {
            match agent.get(&self.endpoint()).call() {
                Ok(_) | Err(ureq::Error::Status(..)) => return true,
                Err(ureq::Error::Transport(_)) => {}
            }
            let exited = self
                .child
                .as_mut()
                .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited || Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates bucket `name` (moto takes unsigned requests).
    pub fn create_bucket(&self, name: &str) {
        let url = format!("{}/{name}", self.endpoint());
        match ureq::put(&url).timeout(Duration::from_secs(30)).call() {
            Ok(r) => assert_eq!(r.status(), 200, "create bucket {name}"),
            Err(e) => panic!("create bucket {name}: {e}"),
        }
    }

    /// Settings for `prefix` in `bucket` on this server, with moto's accepted dummy keys.
    pub fn settings(&self, bucket: &str, prefix: &str) -> S3Settings {
        let mut s = S3Settings::new(bucket, prefix);
        s.endpoint = Some(self.endpoint());
        s.allow_http = true;
        s.access_key_id = Some("testing".into());
        s.secret_access_key = Some("testing".into());
        s
    }

    /// SIGKILL, and waits for the process to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        self.kill();
    }
}
