//! A small HTTP/1.1 endpoint on 127.0.0.1 for tests that watch what alluvium sends out
//! (webhooks, OTLP exports): keep-alive connections, every request recorded with the status it
//! was answered with.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// One request the endpoint got.
#[derive(Debug, Clone)]
pub struct Received {
    /// `POST`, ...
    pub method: String,
    /// The request target.
    pub path: String,
    /// Headers in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// The status it was answered with.
    pub status: u16,
}

impl Received {
    /// The value of header `name` (any case); panics if it is missing.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// Every request so far, in arrival order.
pub type Log = Arc<Mutex<Vec<Received>>>;

/// Starts an endpoint whose URL ends with `path`; request `n` (from 0) is answered with
/// `answer(n)` (200 or 500).
pub fn http_sink(
    path: &str,
    answer: impl Fn(usize) -> u16 + Send + Sync + 'static,
) -> (String, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}{path}", listener.local_addr().unwrap());
    let log: Log = Default::default();
    let served = Arc::new(AtomicUsize::new(0));
    let answer = Arc::new(answer);
    let out = log.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let (log, served, answer) = (log.clone(), served.clone(), answer.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut writer = conn;
                // Keep-alive: requests one after another on the connection.
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut parts = request_line.split_whitespace();
                    let method = parts.next().unwrap_or("").to_string();
                    let path = parts.next().unwrap_or("").to_string();
                    let mut headers = Vec::new();
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let line = line.trim_end();
                        if line.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':') {
                            headers.push((k.trim().to_string(), v.trim().to_string()));
                        }
                    }
                    let len = headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                        .map_or(0, |(_, v)| v.parse().unwrap());
                    let mut body = vec![0; len];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let status = answer(served.fetch_add(1, Ordering::SeqCst));
                    log.lock().unwrap().push(Received {
                        method,
                        path,
                        headers,
                        body,
                        status,
                    });
                    let reply = match status {
                        200 => "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_string(),
                        s => format!("HTTP/1.1 {s} Error\r\ncontent-length: 4\r\n\r\noops"),
                    };
                    if writer.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, out)
}
