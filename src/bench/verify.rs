//! The check after a load run: every acknowledged event of the run is in the table exactly
//! once. Reads the `id` column back as NDJSON and counts each id of the run.

use std::io::{BufRead as _, BufReader};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use super::events::parse_id;

/// What the table holds of one run, compared with what the server acknowledged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// Events the server acknowledged.
    pub acknowledged: u64,
    /// Rows of the run found in the table, doubles counted.
    pub stored: u64,
    /// Acknowledged events absent from the table.
    pub missing: u64,
    /// Events present more than once (each counted once).
    pub duplicated: u64,
    /// Events stored though never acknowledged (a request that failed or timed out after the
    /// server made it durable): allowed, reported.
    pub unacknowledged_stored: u64,
    /// Rows of the run whose id is not one the generator made.
    pub foreign: u64,
}

impl Verification {
    /// Whether every acknowledged event is stored exactly once and nothing else of the run is
    /// doubled or unknown.
    pub fn ok(&self) -> bool {
        self.missing == 0 && self.duplicated == 0 && self.foreign == 0
    }
}

#[derive(Deserialize)]
struct IdRow {
    id: String,
}

/// Queries `table` and compares the ids of run `run` with `acked` (one flag per event index
/// the generator used).
pub fn verify(
    agent: &ureq::Agent,
    base: &str,
    key: &str,
    table: &str,
    run: &str,
    acked: &[bool],
) -> anyhow::Result<Verification> {
    let url = format!("{base}/v1/tables/{table}/query");
    let resp = agent
        .post(&url)
        .set("Authorization", &format!("Bearer {key}"))
        .set("Content-Type", "application/json")
        .set("Accept", "application/x-ndjson")
        .send_string(r#"{"columns":["id"]}"#);
    let resp = match resp {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            let body = r.into_string().unwrap_or_default();
            bail!("query of {table} answered {code}: {body}");
        }
        Err(e) => return Err(e).with_context(|| format!("cannot query {url}")),
    };
    let mut seen = vec![0u8; acked.len()];
    let mut v = Verification {
        acknowledged: acked.iter().filter(|a| **a).count() as u64,
        ..Default::default()
    };
    for (n, line) in BufReader::new(resp.into_reader()).lines().enumerate() {
        let line = line.with_context(|| format!("reading the query answer of {table}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let row: IdRow = serde_json::from_str(&line)
            .with_context(|| format!("query answer line {}: {line:?}", n + 1))?;
        match parse_id(run, &row.id) {
            None => {}
            Some(index) => {
                v.stored += 1;
                match index
                    .and_then(|i| usize::try_from(i).ok())
                    .filter(|&i| i < seen.len())
                {
                    Some(i) => seen[i] = seen[i].saturating_add(1),
                    None => v.foreign += 1,
                }
            }
        }
    }
    for (a, s) in acked.iter().zip(&seen) {
        match (*a, *s) {
            (true, 0) => v.missing += 1,
            (false, 1) => v.unacknowledged_stored += 1,
            (false, 0) | (true, 1) => {}
            (a, _) => {
                v.duplicated += 1;
                if !a {
                    v.unacknowledged_stored += 1;
                }
            }
        }
    }
    Ok(v)
}
