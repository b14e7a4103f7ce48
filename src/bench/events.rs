//! The events the load generator sends: the table definition, and request bodies built once
//! per connection as a template whose fixed-width id and timestamp digits are rewritten for
//! every batch, so the timed loop puts no JSON formatting work on the generator's CPU.
//!
//! Every event of a batch carries the time the batch is sent, as live producers' events do:
//! the table is ordered by `ts`, and timestamps that repeat from batch to batch would make the
//! memtable insert into the middle of its skiplist instead of near its end.

use std::io::Write as _;

use serde_json::{Value, json};

/// Digits of the per-run event index in every id (`{run}-{index:012}`).
const INDEX_DIGITS: usize = 12;
/// Digits of the millisecond timestamps (enough until the year 2286).
const TS_DIGITS: usize = 13;

/// Bytes of one event in a JSON array body, its separating comma included.
pub const EVENT_BYTES: usize = 200;

const HOSTS: [&str; 8] = [
    "web-01", "web-02", "web-03", "api-01", "api-02", "db-01", "cache-1", "edge-01",
];
const LEVELS: [&str; 4] = ["info", "info", "warn", "error"];
const STATUS: [u16; 6] = [200, 200, 201, 204, 404, 503];
const PATHS: [&str; 4] = ["/v1/items", "/v1/users", "/v1/orders", "/healthz"];

/// The definition of the benchmark table: an append table (no primary key, so a doubled
/// event stays visible to the verification) ordered by `ts`.
pub fn table_schema() -> Value {
    json!({
        "fields": [
            {"name": "id", "type": "string", "nullable": false},
            {"name": "ts", "type": "timestamp_ms", "nullable": false},
            {"name": "host", "type": "string"},
            {"name": "level", "type": "string"},
            {"name": "latency", "type": "float64"},
            {"name": "status", "type": "int64"},
            {"name": "msg", "type": "string"}
        ],
        "time_column": "ts"
    })
}

/// The id of event `index` of run `run`.
pub fn event_id(run: &str, index: u64) -> String {
    format!("{run}-{index:0INDEX_DIGITS$}")
}

/// Parses an id made by [`event_id`] for `run`, returning the index; `None` for other runs.
pub fn parse_id(run: &str, id: &str) -> Option<Option<u64>> {
    let rest = id.strip_prefix(run)?.strip_prefix('-')?;
    Some(rest.parse().ok())
}

/// A JSON array body of `count` events whose ids can be renumbered in place.
#[derive(Debug, Clone)]
pub struct BatchBody {
    body: Vec<u8>,
    /// Offset of the first id digit of each event.
    id_offsets: Vec<usize>,
    /// Offset of the first timestamp digit of each event.
    ts_offsets: Vec<usize>,
}

impl BatchBody {
    /// Builds a body of `count` events of run `run`, numbered from `first`, all at `ts_ms`.
    pub fn new(run: &str, first: u64, count: usize, ts_ms: u64) -> Self {
        let mut body = Vec::with_capacity(count * EVENT_BYTES + 2);
        let mut id_offsets = Vec::with_capacity(count);
        let mut ts_offsets = Vec::with_capacity(count);
        body.push(b'[');
        for i in 0..count {
            if i > 0 {
                body.push(b',');
            }
            let start = body.len();
            id_offsets.push(start + "{\"id\":\"".len() + run.len() + 1);
            ts_offsets.push(id_offsets[i] + INDEX_DIGITS + "\",\"ts\":".len());
            write_event(&mut body, run, first + i as u64, i, ts_ms);
            // Pads `msg` so that every event with its comma takes EVENT_BYTES.
            let pad = (EVENT_BYTES - 1).saturating_sub(body.len() - start + 2);
            body.extend(std::iter::repeat_n(b'x', pad));
            body.extend_from_slice(b"\"}");
        }
        body.push(b']');
        BatchBody {
            body,
            id_offsets,
            ts_offsets,
        }
    }

    /// Renumbers the events from `first` and dates them all `ts_ms` (nothing else changes).
    pub fn renumber(&mut self, first: u64, ts_ms: u64) {
        for (i, &at) in self.id_offsets.iter().enumerate() {
            put_digits(&mut self.body[at..at + INDEX_DIGITS], first + i as u64);
        }
        for &at in &self.ts_offsets {
            put_digits(&mut self.body[at..at + TS_DIGITS], ts_ms);
        }
    }

    /// The request body.
    pub fn bytes(&self) -> &[u8] {
        &self.body
    }

    /// Events in the body.
    pub fn len(&self) -> usize {
        self.id_offsets.len()
    }
}

/// Writes `n` in decimal into `out`, zero-padded on the left (high digits cut).
fn put_digits(out: &mut [u8], mut n: u64) {
    for d in out.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// Writes one event up to the open `msg` string (the caller pads and closes it).
fn write_event(out: &mut Vec<u8>, run: &str, index: u64, i: usize, ts_ms: u64) {
    let id = event_id(run, index);
    let host = HOSTS[i % HOSTS.len()];
    let level = LEVELS[(i / 3) % LEVELS.len()];
    let status = STATUS[(i / 7) % STATUS.len()];
    let path = PATHS[(i / 2) % PATHS.len()];
    let latency = (i % 997) as f64 * 0.125 + 0.5;
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "{{\"id\":\"{id}\",\"ts\":{ts_ms:0TS_DIGITS$},\"host\":\"{host}\",\"level\":\"{level}\",\
         \"latency\":{latency:.3},\"status\":{status},\"msg\":\"GET {path}/{i} took {latency:.1} ms ",
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn events_are_fixed_size_valid_json_with_renumbered_ids() {
        let mut b = BatchBody::new("rabc", 0, 50, 1_795_600_000_000);
        assert_eq!(b.bytes().len(), 50 * EVENT_BYTES + 1);
        b.renumber(1_000_000_007, 1_795_600_123_456);
        let v: Vec<serde_json::Map<String, Value>> = serde_json::from_slice(b.bytes()).unwrap();
        assert_eq!(v.len(), 50);
        for (i, e) in v.iter().enumerate() {
            let id = e["id"].as_str().unwrap();
            assert_eq!(id, event_id("rabc", 1_000_000_007 + i as u64));
            assert_eq!(parse_id("rabc", id), Some(Some(1_000_000_007 + i as u64)));
            assert_eq!(e["ts"], 1_795_600_123_456u64, "{e:?}");
            assert!(e["msg"].as_str().unwrap().ends_with('x'), "{e:?}");
        }
        assert_eq!(parse_id("rabd", "rabc-000000000001"), None);
    }
}
