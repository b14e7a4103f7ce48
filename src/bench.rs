//! `alluvium bench http`: an end-to-end load generator against a running server.
//!
//! It creates an append table (idempotent `PUT`), then N threads, each with its own keep-alive
//! HTTP connection, send JSON array batches of ~200-byte events for a duration or an event
//! count, optionally paced to a target rate. Every event id is `{run}-{index}` with a random
//! run prefix, so afterwards the table can be read back and each acknowledged event checked to
//! be stored exactly once. It reports throughput, acknowledgement latency per batch, answers by
//! status and, given the server's pid, its CPU seconds per GB ingested and peak RSS.
//!
//! This is a benchmark, not a test: it measures, it asserts only what the durability contract
//! promises (acknowledged means stored, once).

mod events;
mod nats;
mod procfs;
mod tables;
mod verify;

use std::hash::{BuildHasher as _, Hasher as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::config::HumanDuration;
use events::{BatchBody, EVENT_BYTES};
use verify::Verification;

/// Benchmarks against a running server.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Loads a running server with JSON batches over HTTP, then verifies that every
    /// acknowledged event is stored exactly once.
    Http(HttpArgs),
    /// Builds an upsert table of many files, then measures point lookups, filtered scans and
    /// compaction (and optionally ingest while a compaction runs).
    Tables(tables::TablesArgs),
    /// NATS ingest throughput against a plain subscriber on the same server, then the same
    /// exactly-once check.
    Nats(nats::NatsArgs),
}

/// Options of `alluvium bench http`.
#[derive(Debug, Args)]
pub struct HttpArgs {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// API key (admin scope: the table is created if missing).
    #[arg(long, conflicts_with = "key_file")]
    key: Option<String>,
    /// File holding the API key, e.g. data/bootstrap.key.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Table to load (an append table; created if missing).
    #[arg(long, default_value = "bench")]
    table: String,
    /// Events per request.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    batch: u64,
    /// Concurrent connections, one thread each.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1024))]
    connections: u64,
    /// How long to send, e.g. 10s, 1m (ignored when --events is given).
    #[arg(long, default_value = "10s")]
    duration: HumanDuration,
    /// Sends exactly this many events instead of running for --duration.
    #[arg(long)]
    events: Option<u64>,
    /// Target rate in events per second (batches are scheduled on a fixed timetable).
    #[arg(long)]
    rate: Option<f64>,
    /// PID of the server, to report its CPU seconds per GB and peak RSS (Linux /proc).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Skips reading the table back afterwards.
    #[arg(long)]
    no_verify: bool,
    /// Prints the report as JSON.
    #[arg(long)]
    json: bool,
}

/// How long a batch answered with 429 keeps being retried past the end of the run.
const RETRY_GRACE: Duration = Duration::from_secs(30);
/// A connection stops after this many failed requests in a row.
const MAX_CONSECUTIVE_ERRORS: u32 = 20;

/// Runs a bench command.
pub fn run(cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCommand::Http(args) => run_http(args),
        BenchCommand::Tables(args) => tables::run(args),
        BenchCommand::Nats(args) => nats::run(args),
    }
}

/// What every connection thread shares.
struct Plan {
    run: String,
    events_url: String,
    auth: String,
    batch: u64,
    total: Option<u64>,
    start: Instant,
    deadline: Option<Instant>,
    rate: Option<f64>,
    next_batch: AtomicU64,
}

/// What one connection saw.
#[derive(Debug, Default)]
struct ConnStats {
    latencies_us: Vec<u32>,
    /// Acknowledged batches: first event index and count.
    acked: Vec<(u64, u64)>,
    /// One past the highest event index this connection sent.
    sent_end: u64,
    ok: u64,
    throttled: u64,
    other: u64,
    transport: u64,
    bytes_acked: u64,
    events_acked: u64,
    first_error: Option<String>,
}

impl ConnStats {
    fn error(&mut self, e: String) {
        self.first_error.get_or_insert(e);
    }
}

fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or_default()
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build()
}

/// One connection: claims batches from the shared counter until the run ends.
fn connection(plan: &Plan) -> ConnStats {
    let agent = agent();
    let mut stats = ConnStats::default();
    let mut template = BatchBody::new(&plan.run, 0, plan.batch as usize, now_ms());
    let mut consecutive_errors = 0;
    loop {
        if plan.deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let first = plan.next_batch.fetch_add(1, Ordering::Relaxed) * plan.batch;
        let count = match plan.total {
            Some(t) if first >= t => break,
            Some(t) => plan.batch.min(t - first),
            None => plan.batch,
        };
        if let Some(rate) = plan.rate {
            let due = plan.start + Duration::from_secs_f64(first as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        stats.sent_end = stats.sent_end.max(first + count);
        let partial;
        let body = if count == plan.batch {
            template.renumber(first, now_ms());
            &template
        } else {
            partial = BatchBody::new(&plan.run, first, count as usize, now_ms());
            &partial
        };
        if send_batch(&agent, plan, body, first, &mut stats) {
            consecutive_errors = 0;
        } else {
            consecutive_errors += 1;
            if consecutive_errors >= MAX_CONSECUTIVE_ERRORS {
                stats.error(format!(
                    "connection stopped after {consecutive_errors} failed requests in a row"
                ));
                break;
            }
        }
    }
    stats
}

/// Sends one batch until it is acknowledged, refused or fails; 429 is retried after its
/// `Retry-After`. Returns whether it was acknowledged.
fn send_batch(
    agent: &ureq::Agent,
    plan: &Plan,
    body: &BatchBody,
    first: u64,
    stats: &mut ConnStats,
) -> bool {
    loop {
        let t0 = Instant::now();
        let res = agent
            .post(&plan.events_url)
            .set("Authorization", &plan.auth)
            .set("Content-Type", "application/json")
            .send_bytes(body.bytes());
        match res {
            Ok(resp) => {
                let answer = resp.into_string();
                let elapsed = t0.elapsed();
                let accepted = answer
                    .as_ref()
                    .ok()
                    .and_then(|a| serde_json::from_str::<serde_json::Value>(a).ok())
                    .and_then(|v| v["accepted"].as_u64());
                if accepted != Some(body.len() as u64) {
                    stats.other += 1;
                    stats.error(format!("200 without accepted={}: {answer:?}", body.len()));
                    return false;
                }
                stats.ok += 1;
                stats
                    .latencies_us
                    .push(elapsed.as_micros().min(u32::MAX as u128) as u32);
                stats.acked.push((first, body.len() as u64));
                stats.events_acked += body.len() as u64;
                stats.bytes_acked += body.bytes().len() as u64;
                return true;
            }
            Err(ureq::Error::Status(429, resp)) => {
                stats.throttled += 1;
                let after = resp
                    .header("Retry-After")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(1);
                // Read to the end so that the connection is reused.
                let _ = resp.into_string();
                if plan
                    .deadline
                    .is_some_and(|d| Instant::now() > d + RETRY_GRACE)
                {
                    stats.error("gave up retrying a throttled batch after the run".into());
                    return false;
                }
                std::thread::sleep(Duration::from_secs(after));
            }
            Err(ureq::Error::Status(code, resp)) => {
                stats.other += 1;
                let body = resp.into_string().unwrap_or_default();
                stats.error(format!("{code}: {body}"));
                return false;
            }
            Err(e) => {
                stats.transport += 1;
                stats.error(e.to_string());
                return false;
            }
        }
    }
}

/// The report of a run.
#[derive(Debug, Serialize)]
struct Report {
    run: String,
    url: String,
    table: String,
    connections: u64,
    batch: u64,
    event_bytes: usize,
    target_rate: Option<f64>,
    elapsed_s: f64,
    events_acked: u64,
    events_per_s: f64,
    bytes_acked: u64,
    /// 10^6 bytes of acknowledged request bodies per second.
    mb_per_s: f64,
    requests: Requests,
    latency_ms: Latency,
    server: Option<ServerStats>,
    generator_cpu_s: f64,
    first_error: Option<String>,
    verify: Option<Verification>,
}

#[derive(Debug, Serialize)]
struct Requests {
    ok: u64,
    throttled: u64,
    other: u64,
    transport_errors: u64,
}

/// Acknowledgement latency of the batches answered 200, in milliseconds.
#[derive(Debug, Serialize)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

#[derive(Debug, Serialize)]
struct ServerStats {
    pid: u32,
    cpu_s: f64,
    cpu_s_per_gb: f64,
    peak_rss_mib: f64,
}

fn latency(mut us: Vec<u32>) -> Latency {
    us.sort_unstable();
    let at = |p: f64| -> f64 {
        if us.is_empty() {
            return 0.0;
        }
        let i = ((p * us.len() as f64).ceil() as usize).clamp(1, us.len()) - 1;
        f64::from(us[i]) / 1000.0
    };
    let mean = if us.is_empty() {
        0.0
    } else {
        us.iter().map(|&u| f64::from(u)).sum::<f64>() / us.len() as f64 / 1000.0
    };
    Latency {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: at(1.0),
        mean,
    }
}

/// A random run prefix: `r` and 8 hex digits.
fn run_id() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    format!("r{:08x}", h.finish() as u32)
}

fn read_key(key: &Option<String>, key_file: &Option<PathBuf>) -> anyhow::Result<String> {
    match (key, key_file) {
        (Some(k), _) => Ok(k.trim().to_string()),
        (None, Some(f)) => Ok(std::fs::read_to_string(f)
            .with_context(|| format!("cannot read the key file {}", f.display()))?
            .trim()
            .to_string()),
        (None, None) => {
            bail!("give the API key with --key or --key-file (e.g. data/bootstrap.key)")
        }
    }
}

/// `PUT`s the benchmark table; an identical existing table is fine.
fn create_table(agent: &ureq::Agent, base: &str, auth: &str, table: &str) -> anyhow::Result<()> {
    let url = format!("{base}/v1/tables/{table}");
    let res = agent
        .put(&url)
        .set("Authorization", auth)
        .set("Content-Type", "application/json")
        .send_string(&events::table_schema().to_string());
    match res {
        Ok(_) => Ok(()),
        Err(ureq::Error::Status(code, r)) => {
            let body = r.into_string().unwrap_or_default();
            bail!("creating table {table} answered {code}: {body} (pick another --table?)")
        }
        Err(e) => Err(e).with_context(|| format!("cannot reach {url}")),
    }
}

fn run_http(args: HttpArgs) -> anyhow::Result<ExitCode> {
    let key = read_key(&args.key, &args.key_file)?;
    let base = args.url.trim_end_matches('/').to_string();
    let auth = format!("Bearer {key}");
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--rate must be a positive number of events per second");
    }
    let control = agent();
    create_table(&control, &base, &auth, &args.table)?;
    let cpu_before = args
        .server_pid
        .map(|p| procfs::cpu_seconds(Some(p)))
        .transpose()?;
    let gen_cpu_before = procfs::cpu_seconds(None)?;
    let start = Instant::now();
    let plan = Plan {
        run: run_id(),
        events_url: format!("{base}/v1/tables/{}/events", args.table),
        auth,
        batch: args.batch,
        total: args.events,
        start,
        deadline: args.events.is_none().then(|| start + args.duration.0),
        rate: args.rate,
        next_batch: AtomicU64::new(0),
    };
    let conns: Vec<ConnStats> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..args.connections)
            .map(|_| s.spawn(|| connection(&plan)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let server = match args.server_pid {
        Some(pid) => {
            let cpu_s = procfs::cpu_seconds(Some(pid))? - cpu_before.unwrap_or_default();
            let bytes: u64 = conns.iter().map(|c| c.bytes_acked).sum();
            Some(ServerStats {
                pid,
                cpu_s,
                cpu_s_per_gb: if bytes > 0 {
                    cpu_s / (bytes as f64 / 1e9)
                } else {
                    0.0
                },
                peak_rss_mib: procfs::peak_rss_bytes(Some(pid))? as f64 / (1 << 20) as f64,
            })
        }
        None => None,
    };
    let generator_cpu_s = procfs::cpu_seconds(None)? - gen_cpu_before;
    let sent_end = conns.iter().map(|c| c.sent_end).max().unwrap_or(0);
    let verify = if args.no_verify {
        None
    } else {
        let mut acked = vec![false; usize::try_from(sent_end)?];
        for (first, n) in conns.iter().flat_map(|c| &c.acked) {
            acked[*first as usize..(*first + *n) as usize].fill(true);
        }
        Some(verify::verify(
            &control,
            &base,
            &key,
            &args.table,
            &plan.run,
            &acked,
        )?)
    };
    let sum = |f: fn(&ConnStats) -> u64| conns.iter().map(f).sum::<u64>();
    let events_acked = sum(|c| c.events_acked);
    let bytes_acked = sum(|c| c.bytes_acked);
    let report = Report {
        run: plan.run.clone(),
        url: base,
        table: args.table,
        connections: args.connections,
        batch: args.batch,
        event_bytes: EVENT_BYTES,
        target_rate: args.rate,
        elapsed_s: elapsed,
        events_acked,
        events_per_s: events_acked as f64 / elapsed,
        bytes_acked,
        mb_per_s: bytes_acked as f64 / elapsed / 1e6,
        requests: Requests {
            ok: sum(|c| c.ok),
            throttled: sum(|c| c.throttled),
            other: sum(|c| c.other),
            transport_errors: sum(|c| c.transport),
        },
        latency_ms: latency(
            conns
                .iter()
                .flat_map(|c| c.latencies_us.iter().copied())
                .collect(),
        ),
        server,
        generator_cpu_s,
        first_error: conns.iter().find_map(|c| c.first_error.clone()),
        verify,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    let failed = events_acked == 0 || report.verify.as_ref().is_some_and(|v| !v.ok());
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn print_report(r: &Report) {
    println!(
        "alluvium bench http: run {} against {}, table {}",
        r.run, r.url, r.table
    );
    let rate = r
        .target_rate
        .map(|t| format!(", paced to {t:.0} events/s"))
        .unwrap_or_default();
    println!(
        "  load        {} connections, batches of {} events of {} bytes{rate}",
        r.connections, r.batch, r.event_bytes
    );
    println!(
        "  acked       {} events in {:.2} s: {:.0} events/s, {:.1} MB/s",
        r.events_acked, r.elapsed_s, r.events_per_s, r.mb_per_s
    );
    let q = &r.requests;
    println!(
        "  requests    {} ok, {} throttled (429), {} other, {} transport errors",
        q.ok, q.throttled, q.other, q.transport_errors
    );
    let l = &r.latency_ms;
    println!(
        "  ack latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms (mean {:.2} ms)",
        l.p50, l.p90, l.p99, l.max, l.mean
    );
    if let Some(s) = &r.server {
        println!(
            "  server      pid {}: {:.2} cpu s ({:.1} cpu s per GB), peak rss {:.0} MiB",
            s.pid, s.cpu_s, s.cpu_s_per_gb, s.peak_rss_mib
        );
    }
    println!("  generator   {:.2} cpu s", r.generator_cpu_s);
    if let Some(e) = &r.first_error {
        println!("  first error {e}");
    }
    if let Some(v) = &r.verify {
        println!(
            "  verify      {}: {} acknowledged, {} stored, {} missing, {} duplicated, \
             {} stored unacknowledged, {} foreign",
            if v.ok() { "ok" } else { "FAILED" },
            v.acknowledged,
            v.stored,
            v.missing,
            v.duplicated,
            v.unacknowledged_stored,
            v.foreign
        );
    }
}
