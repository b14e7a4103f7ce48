//! Helpers shared by the integration tests: start the real `alluvium` binary on a free port
//! with its own data directory, talk HTTP to it, stop or kill it.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod http_sink;
pub mod nats;
pub mod openapi;
pub mod s3;

/// The admin key every test server is bootstrapped with.
pub const ADMIN_KEY: &str = "test-admin-key-0123456789abcdef";

/// The binary under test: `ALLUVIUM_TEST_BIN` (a copy, so that long runs are not disturbed by
/// rebuilds) or the one cargo built for this test.
pub fn binary() -> PathBuf {
    std::env::var_os("ALLUVIUM_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_alluvium")))
}

/// Runs `alluvium serve` on `data_dir` with only the `ALLUVIUM_*` settings of `env`, expecting it
/// to refuse to start; returns what it wrote to stderr. Asserts that it exited with an error and
/// never listened.
pub fn start_refused(data_dir: &Path, env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(binary());
    for (k, _) in std::env::vars() {
        if k.starts_with("ALLUVIUM_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("ALLUVIUM_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "started: {stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening on"));
    stderr
}

/// A running server process.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// Its data directory.
    pub data_dir: PathBuf,
}

impl Server {
    /// Starts the binary on `data_dir` with extra `ALLUVIUM_*` settings and waits until it
    /// listens.
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(binary());
        // The server sees only the settings of this test, not those of the caller's shell.
        for (k, _) in std::env::vars() {
            if k.starts_with("ALLUVIUM_") {
                cmd.env_remove(k);
            }
        }
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env("ALLUVIUM_BOOTSTRAP_KEY", ADMIN_KEY)
            .env("ALLUVIUM_LOG", "warn")
            .env("ALLUVIUM_SERVER__WORKERS", "2")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("cannot start the alluvium binary");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.to_string());
                }
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait();
                panic!("server did not start listening within 60 s ({status:?})");
            }
        };
        Server {
            child,
            base,
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// Full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The process id (for SIGSTOP and SIGCONT).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM: the server is asked to stop gracefully.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits up to `timeout` for the process to exit on its own; its status if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        wait_for(timeout, || self.child.try_wait().ok().flatten())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A response: status and body.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: String,
    /// The body's bytes (for binary formats).
    pub raw: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Resp {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.body))
    }

    /// A header value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The problem `code` of an error response.
    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_string()
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build()
}

/// Sends a request; `key` goes in `Authorization: Bearer`.
pub fn send(
    method: &str,
    url: &str,
    key: Option<&str>,
    content_type: Option<&str>,
    body: Option<&[u8]>,
) -> Resp {
    try_send(method, url, key, content_type, body, &[]).expect("transport error")
}

/// Like [`send`], with extra headers, returning transport errors (server down) as `Err`.
pub fn try_send(
    method: &str,
    url: &str,
    key: Option<&str>,
    content_type: Option<&str>,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> Result<Resp, String> {
    let mut req = agent().request(method, url);
    if let Some(k) = key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    if let Some(ct) = content_type {
        req = req.set("Content-Type", ct);
    }
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let res = match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    };
    let resp = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e.to_string()),
    };
    let status = resp.status();
    let headers = resp
        .headers_names()
        .into_iter()
        .filter_map(|n| resp.header(&n).map(|v| (n.clone(), v.to_string())))
        .collect();
    // Not `into_string`: it refuses bodies over 10 MB, and the query of a long crash run is more.
    let mut raw = Vec::new();
    resp.into_reader()
        .read_to_end(&mut raw)
        .map_err(|e| e.to_string())?;
    Ok(Resp {
        status,
        body: String::from_utf8_lossy(&raw).into_owned(),
        raw,
        headers,
    })
}

/// `PUT /v1/tables/{table}` with a JSON definition; asserts 201 or 200.
pub fn create_table(server: &Server, key: &str, table: &str, schema: &Value) {
    let r = send(
        "PUT",
        &server.url(&format!("/v1/tables/{table}")),
        Some(key),
        Some("application/json"),
        Some(schema.to_string().as_bytes()),
    );
    assert!(r.status == 201 || r.status == 200, "create table: {r:?}");
}

/// `POST /v1/keys` as the admin: a new key of `tenant` with `scopes` (a JSON array).
pub fn create_key(server: &Server, tenant: &str, scopes: Value) -> String {
    let body = serde_json::json!({"tenant": tenant, "scopes": scopes}).to_string();
    let r = send(
        "POST",
        &server.url("/v1/keys"),
        Some(ADMIN_KEY),
        Some("application/json"),
        Some(body.as_bytes()),
    );
    assert_eq!(r.status, 201, "{r:?}");
    r.json()["key"].as_str().unwrap().to_string()
}

/// `POST /v1/tables/{table}/compact` with the admin key.
pub fn compact(server: &Server, table: &str) -> Resp {
    send(
        "POST",
        &server.url(&format!("/v1/tables/{table}/compact")),
        Some(ADMIN_KEY),
        None,
        None,
    )
}

/// Creates table `table` with one nullable int64 field `n`, as the admin.
pub fn create_n_table(server: &Server, table: &str) {
    create_table(
        server,
        ADMIN_KEY,
        table,
        &serde_json::json!({"fields": [{"name": "n", "type": "int64"}]}),
    );
}

/// `GET path` with the admin key.
pub fn get(server: &Server, path: &str) -> Resp {
    send("GET", &server.url(path), Some(ADMIN_KEY), None, None)
}

/// `POST /v1/tables/{table}/events` with a JSON body.
pub fn ingest(server: &Server, key: &str, table: &str, body: &Value) -> Resp {
    send(
        "POST",
        &server.url(&format!("/v1/tables/{table}/events")),
        Some(key),
        Some("application/json"),
        Some(body.to_string().as_bytes()),
    )
}

/// All rows of a table (JSON array), via `POST /v1/tables/{table}/query`.
pub fn query_all(server: &Server, key: &str, table: &str, request: &Value) -> Vec<Value> {
    let r = send(
        "POST",
        &server.url(&format!("/v1/tables/{table}/query")),
        Some(key),
        Some("application/json"),
        Some(request.to_string().as_bytes()),
    );
    assert_eq!(r.status, 200, "query: {r:?}");
    match r.json() {
        Value::Array(rows) => rows,
        other => panic!("query did not return an array: {other}"),
    }
}

/// `POST /v1/tables/{table}/flush`; asserts success.
pub fn flush(server: &Server, key: &str, table: &str) -> Value {
    let r = send(
        "POST",
        &server.url(&format!("/v1/tables/{table}/flush")),
        Some(key),
        None,
        None,
    );
    assert_eq!(r.status, 200, "flush: {r:?}");
    r.json()
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every `.parquet` file under `dir`.
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The Python interpreter of the test virtualenv (`ALLUVIUM_TEST_PYTHON` or `.venv/bin/python`).
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("ALLUVIUM_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run ./scripts/test.sh once to install the test dependencies",
        venv.display()
    );
    venv
}
