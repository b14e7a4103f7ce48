//! `alluvium bench tables`: reads and compaction on a table of many files.
//!
//! It builds an upsert table of `--files` flushed files (keys overlap between files, so lookups
//! and compaction meet several versions per key), then measures: point lookups (p50/p99 over
//! random keys), filtered scans (rows and bytes per second, from the server's `explain`),
//! compaction (input MB/s), and the same lookups and scans after compaction. With
//! `--ingest-seconds`, it also measures ingest into another table alone and while a compaction
//! of a freshly rebuilt table runs, and reports their ratio.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use rand::Rng as _;
use serde::Serialize;
use serde_json::{Value, json};

use super::{Latency, agent, latency};

/// Options of `alluvium bench tables`.
#[derive(Debug, Args)]
pub struct TablesArgs {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// API key with the admin scope.
    #[arg(long)]
    key: String,
    /// Table to build (an upsert table; must not exist, or have been built by this command).
    #[arg(long, default_value = "bench_kv")]
    table: String,
    /// Flushed files to build the table from.
    #[arg(long, default_value_t = 200)]
    files: u64,
    /// Rows per file.
    #[arg(long, default_value_t = 5000)]
    rows_per_file: u64,
    /// Point lookups per phase.
    #[arg(long, default_value_t = 2000)]
    lookups: u64,
    /// Also compare ingest alone with ingest during a compaction, for about this long each.
    #[arg(long)]
    ingest_seconds: Option<u64>,
    /// Prints the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Scan {
    filter: Value,
    ms: f64,
    rows_returned: u64,
    rows_decoded: u64,
    bytes_read: u64,
    files_read: u64,
    files_pruned_by_index: u64,
    index_candidate_keys: Option<u64>,
    rows_per_s: f64,
    mb_per_s: f64,
}

#[derive(Debug, Serialize)]
struct Phase {
    files: u64,
    lookup_ms: Latency,
    lookups_found: u64,
    scans: Vec<Scan>,
}

#[derive(Debug, Serialize)]
struct Report {
    rows: u64,
    build_s: f64,
    before: Phase,
    compaction: Value,
    compaction_mb_per_s: f64,
    after: Phase,
    ingest: Option<IngestComparison>,
}

#[derive(Debug, Serialize)]
struct IngestComparison {
    alone_events_per_s: f64,
    during_compaction_events_per_s: f64,
    ratio: f64,
    compaction: Value,
}

struct Client {
    agent: ureq::Agent,
    base: String,
    auth: String,
}

impl Client {
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<(u16, Value)> {
        let req = self
            .agent
            .request(method, &format!("{}{path}", self.base))
            .set("Authorization", &self.auth);
        let res = match body {
            Some(b) => req
                .set("Content-Type", "application/json")
                .send_string(&b.to_string()),
            None => req.call(),
        };
        let r = match res {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => return Err(e).with_context(|| format!("{method} {path}")),
        };
        let status = r.status();
        let text = r.into_string().unwrap_or_default();
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let (status, v) = self.call(method, path, body)?;
        if !(200..300).contains(&status) {
            bail!("{method} {path} answered {status}: {v}");
        }
        Ok(v)
    }
}

fn build(c: &Client, table: &str, files: u64, rows_per_file: u64) -> anyhow::Result<()> {
    c.ok(
        "PUT",
        &format!("/v1/tables/{table}"),
        Some(&json!({"fields": [
            {"name": "id", "type": "int64", "nullable": false},
            {"name": "n", "type": "int64", "nullable": false},
            {"name": "v", "type": "string"},
            {"name": "g", "type": "string", "nullable": false}
        ], "primary_key": ["id"], "indexes": ["g"]})),
    )?;
    let keys = (files * rows_per_file / 2).max(1);
    let mut rng = rand::rng();
    for f in 0..files {
        let batch: Vec<Value> = (0..rows_per_file)
            .map(|i| {
                json!({"id": rng.random_range(0..keys), "n": f * rows_per_file + i, "v": format!("file {f} row {i} of the benchmark"), "g": format!("g{f}-{}", i % 20)})
            })
            .collect();
        c.ok(
            "POST",
            &format!("/v1/tables/{table}/events"),
            Some(&Value::Array(batch)),
        )?;
        c.ok("POST", &format!("/v1/tables/{table}/flush"), None)?;
    }
    Ok(())
}

fn phase(c: &Client, args: &TablesArgs) -> anyhow::Result<Phase> {
    let files = c.ok("GET", &format!("/v1/tables/{}/files", args.table), None)?["files"]
        .as_array()
        .map_or(0, |f| f.len() as u64);
    let keys = (args.files * args.rows_per_file / 2).max(1);
    let mut rng = rand::rng();
    let mut us = Vec::with_capacity(args.lookups as usize);
    let mut found = 0;
    for _ in 0..args.lookups {
        let key = rng.random_range(0..keys);
        let t = Instant::now();
        let (status, _) = c.call(
            "GET",
            &format!("/v1/tables/{}/rows/{key}", args.table),
            None,
        )?;
        us.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
        match status {
            200 => found += 1,
            404 => {}
            s => bail!("lookup answered {s}"),
        }
    }
    let total = args.files * args.rows_per_file;
    let mut scans = Vec::new();
    for filter in [
        json!({"column": "n", "op": "<", "value": total / 100}),
        json!({"column": "v", "op": "=", "value": "file 7 row 7 of the benchmark"}),
        json!({"column": "id", "op": "in", "value": [1, 1000, 5000]}),
        json!({"column": "g", "op": "=", "value": "g7-3"}),
    ] {
        let t = Instant::now();
        let v = c.ok(
            "POST",
            &format!("/v1/tables/{}/query", args.table),
            Some(&json!({"filter": filter, "columns": ["id"], "explain": true})),
        )?;
        let s = t.elapsed().as_secs_f64();
        let e = &v["explain"];
        let get = |k: &str| e[k].as_u64().unwrap_or(0);
        scans.push(Scan {
            filter,
            ms: s * 1000.0,
            rows_returned: v["rows"].as_array().map_or(0, |r| r.len() as u64),
            rows_decoded: get("rows_decoded"),
            bytes_read: get("bytes_read"),
            files_read: get("files_read"),
            files_pruned_by_index: get("files_pruned_by_index"),
            index_candidate_keys: e["index_candidate_keys"].as_u64(),
            rows_per_s: get("rows_decoded") as f64 / s,
            mb_per_s: get("bytes_read") as f64 / 1e6 / s,
        });
    }
    Ok(Phase {
        files,
        lookup_ms: latency(us),
        lookups_found: found,
        scans,
    })
}

/// Ingests 1000-event batches into `table` on two connections until `stop` says so.
fn ingest_until(c: &Client, table: &str, stop: &(dyn Fn() -> bool + Sync)) -> anyhow::Result<f64> {
    c.ok(
        "PUT",
        &format!("/v1/tables/{table}"),
        Some(&super::events::table_schema()),
    )?;
    let start = Instant::now();
    let sent = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let sent = &sent;
            s.spawn(move || {
                let mut i = 0u64;
                while !stop() {
                    let batch: Vec<Value> = (0..1000u64)
                        .map(|j| json!({"id": format!("b{t}-{i}-{j}"), "ts": 1_795_000_000_000u64 + i, "host": "web-01", "level": "info", "latency": 1.5, "status": 200, "msg": "GET /v1/items answered in 1.5 ms"}))
                        .collect();
                    if c.ok("POST", &format!("/v1/tables/{table}/events"), Some(&Value::Array(batch))).is_ok() {
                        sent.fetch_add(1000, std::sync::atomic::Ordering::Relaxed);
                    }
                    i += 1;
                }
            });
        }
    });
    Ok(sent.into_inner() as f64 / start.elapsed().as_secs_f64())
}

fn print_phase(name: &str, p: &Phase) {
    println!(
        "{name}: {} files; lookups p50 {:.2} ms, p99 {:.2} ms ({} found)",
        p.files, p.lookup_ms.p50, p.lookup_ms.p99, p.lookups_found
    );
    for s in &p.scans {
        println!(
            "  scan {}: {:.1} ms, {} rows out, {} rows decoded from {} files ({:.0} rows/s, {:.1} MB/s){}",
            s.filter,
            s.ms,
            s.rows_returned,
            s.rows_decoded,
            s.files_read,
            s.rows_per_s,
            s.mb_per_s,
            match s.index_candidate_keys {
                Some(k) => format!(
                    ", index: {} files skipped, {k} candidate keys",
                    s.files_pruned_by_index
                ),
                None => String::new(),
            }
        );
    }
}

fn print_summary(r: &Report) {
    println!("table of {} rows built in {:.1} s", r.rows, r.build_s);
    print_phase("before compaction", &r.before);
    println!(
        "compaction: {} -> {} files, {} -> {} bytes in {} ms ({:.1} MB/s of input)",
        r.compaction["files_in"],
        r.compaction["files_out"],
        r.compaction["bytes_in"],
        r.compaction["bytes_out"],
        r.compaction["elapsed_ms"],
        r.compaction_mb_per_s
    );
    print_phase("after compaction", &r.after);
    if let Some(i) = &r.ingest {
        println!(
            "ingest: {:.0} events/s alone, {:.0} events/s during a compaction ({:.0} %)",
            i.alone_events_per_s,
            i.during_compaction_events_per_s,
            i.ratio * 100.0
        );
    }
}

/// Runs `alluvium bench tables`.
pub fn run(args: TablesArgs) -> anyhow::Result<std::process::ExitCode> {
    let c = Client {
        agent: agent(),
        base: args.url.trim_end_matches('/').to_string(),
        auth: format!("Bearer {}", args.key),
    };
    let t = Instant::now();
    build(&c, &args.table, args.files, args.rows_per_file)?;
    let build_s = t.elapsed().as_secs_f64();
    let before = phase(&c, &args)?;
    let compaction = c.ok("POST", &format!("/v1/tables/{}/compact", args.table), None)?;
    let mb = compaction["bytes_in"].as_f64().unwrap_or(0.0) / 1e6;
    let secs = compaction["elapsed_ms"].as_f64().unwrap_or(0.0) / 1000.0;
    let after = phase(&c, &args)?;

    let ingest = match args.ingest_seconds {
        None => None,
        Some(secs) => {
            let until = Instant::now() + Duration::from_secs(secs);
            let alone = ingest_until(&c, "bench_ingest_alone", &|| Instant::now() > until)?;
            let other = format!("{}_2", args.table);
            build(&c, &other, args.files, args.rows_per_file)?;
            let done = std::sync::atomic::AtomicBool::new(false);
            let (during, report) = std::thread::scope(|s| {
                let h = s.spawn(|| {
                    let r = c.ok("POST", &format!("/v1/tables/{other}/compact"), None);
                    done.store(true, std::sync::atomic::Ordering::Relaxed);
                    r
                });
                let during = ingest_until(&c, "bench_ingest_during", &|| {
                    done.load(std::sync::atomic::Ordering::Relaxed)
                });
                (during, h.join())
            });
            let report = report.map_err(|_| anyhow::anyhow!("compaction thread panicked"))??;
            let during = during?;
            Some(IngestComparison {
                alone_events_per_s: alone,
                during_compaction_events_per_s: during,
                ratio: during / alone,
                compaction: report,
            })
        }
    };
    let report = Report {
        rows: args.files * args.rows_per_file,
        build_s,
        before,
        compaction_mb_per_s: if secs > 0.0 { mb / secs } else { 0.0 },
        compaction,
        after,
        ingest,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_summary(&report);
    }
    Ok(std::process::ExitCode::SUCCESS)
}
