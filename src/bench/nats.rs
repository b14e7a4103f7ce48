//! `alluvium bench nats`: NATS ingest throughput of ~200-byte events, measured against a plain
//! subscriber on the same server in the same run.
//!
//! - **plain**: the generator publishes the same messages to a scratch subject and a plain
//!   async-nats subscriber in the same process only counts them; the time until the last
//!   arrives is the ceiling of this client, server and machine.
//! - **core**: the same messages as requests on `alluvium.ingest.{tenant}.{table}`, up to
//!   `--in-flight` at once; each is answered once its events are in the WAL and fsynced.
//! - **jetstream** (`--jetstream`, for a server with `ingest_mode = "jetstream"`): the plain
//!   figure is a scratch stream published to with acknowledgements and drained by a pull
//!   consumer that only counts and acks; alluvium's is publishing to `ALLUVIUM_INGEST` until
//!   its durable consumer has acknowledged everything (each ack follows the WAL fsync).
//!
//! Afterwards the table is read back and every acknowledged event checked to be stored once.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use alluvium_nats::async_nats::{self, HeaderMap, jetstream};
use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Args;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::Serialize;

use super::events::{BatchBody, EVENT_BYTES};
use super::verify::{Verification, verify};

/// Options of `alluvium bench nats`.
#[derive(Debug, Args)]
pub struct NatsArgs {
    /// NATS server the alluvium server is connected to.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Base URL of the alluvium server (creates the table, reads it back).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// API key of tenant `default` (admin scope: the table is created if missing).
    #[arg(long, conflicts_with = "key_file")]
    key: Option<String>,
    /// File holding the API key, e.g. data/bootstrap.key.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Table to load (an append table; created if missing).
    #[arg(long, default_value = "bench_nats")]
    table: String,
    /// Messages to send in each phase.
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Events per message.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    batch: u64,
    /// Requests (or unacknowledged publishes) in flight at once.
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// The server consumes the ALLUVIUM_INGEST stream (`[nats] ingest_mode = "jetstream"`).
    #[arg(long)]
    jetstream: bool,
    /// Sends no `Nats-Msg-Id` (no idempotency key): measures what the keys cost. Retries of
    /// core requests may then store a batch twice.
    #[arg(long)]
    no_msg_id: bool,
    /// Skips reading the table back afterwards.
    #[arg(long)]
    no_verify: bool,
}

/// One phase's figures.
#[derive(Debug, Serialize)]
pub struct Phase {
    /// Events delivered (plain) or acknowledged (alluvium).
    pub events: u64,
    /// Seconds from the first publish to the last event counted or acknowledged.
    pub elapsed_s: f64,
    /// Events per second.
    pub events_per_s: f64,
    /// MB of event payload per second.
    pub mb_per_s: f64,
}

impl Phase {
    fn new(events: u64, elapsed: Duration) -> Phase {
        let s = elapsed.as_secs_f64().max(1e-9);
        Phase {
            events,
            elapsed_s: s,
            events_per_s: events as f64 / s,
            mb_per_s: (events * EVENT_BYTES as u64) as f64 / s / 1e6,
        }
    }
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct NatsReport {
    /// `core` or `jetstream`.
    pub mode: &'static str,
    /// Messages per phase and events per message.
    pub messages: u64,
    /// Events per message.
    pub batch: u64,
    /// The plain subscriber (or plain stream consumer).
    pub plain: Phase,
    /// alluvium.
    pub alluvium: Phase,
    /// alluvium's rate over the plain one.
    pub ratio: f64,
    /// Requests answered with 503/429 and sent again (core mode).
    pub retried: u64,
    /// The read-back check.
    pub verify: Option<Verification>,
}

/// Runs the benchmark.
pub fn run(args: NatsArgs) -> anyhow::Result<ExitCode> {
    let key = super::read_key(&args.key, &args.key_file)?;
    let base = args.url.trim_end_matches('/').to_string();
    let agent = super::agent();
    super::create_table(&agent, &base, &format!("Bearer {key}"), &args.table)?;
    let run = super::run_id();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut report, acked) = rt.block_on(measure(&args, &key, &run))?;
    if !args.no_verify {
        report.verify = Some(verify(&agent, &base, &key, &args.table, &run, &acked)?);
    }
    println!(
        "alluvium bench nats ({}): {} messages of {} events of {} bytes, {} in flight",
        report.mode, report.messages, report.batch, EVENT_BYTES, args.in_flight
    );
    for (name, p) in [("plain", &report.plain), ("alluvium", &report.alluvium)] {
        println!(
            "  {name:<9} {} events in {:.2} s: {:.0} events/s, {:.1} MB/s",
            p.events, p.elapsed_s, p.events_per_s, p.mb_per_s
        );
    }
    println!(
        "  ratio     {:.2} (retried {})",
        report.ratio, report.retried
    );
    if let Some(v) = &report.verify {
        println!(
            "  verify    {}: {} acknowledged, {} stored, {} missing, {} duplicated",
            if v.ok() { "ok" } else { "FAILED" },
            v.acknowledged,
            v.stored,
            v.missing,
            v.duplicated
        );
    }
    println!("{}", serde_json::to_string(&report)?);
    let ok = report.verify.as_ref().is_none_or(Verification::ok);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The body of message `i` (events `i * batch ..`).
fn body(template: &mut BatchBody, i: u64, batch: u64) -> Bytes {
    let ts = chrono::Utc::now().timestamp_millis().max(0) as u64;
    template.renumber(i * batch, ts);
    Bytes::copy_from_slice(template.bytes())
}

async fn measure(args: &NatsArgs, key: &str, run: &str) -> anyhow::Result<(NatsReport, Vec<bool>)> {
    let client = async_nats::ConnectOptions::new()
        .subscription_capacity(1 << 20)
        .connect(args.nats_url.as_str())
        .await
        .with_context(|| format!("cannot connect to NATS at {}", args.nats_url))?;
    let mut template = BatchBody::new(run, 0, args.batch as usize, 0);
    let (plain, alluvium, acked, retried) = if args.jetstream {
        let plain = plain_stream(&client, args, run, &mut template).await?;
        let (p, acked) = alluvium_stream(&client, args, key, &mut template).await?;
        (plain, p, acked, 0)
    } else {
        let plain = plain_core(&client, args, run, &mut template).await?;
        let (p, acked, retried) = alluvium_core(&client, args, key, &mut template).await?;
        (plain, p, acked, retried)
    };
    let ratio = alluvium.events_per_s / plain.events_per_s.max(1e-9);
    Ok((
        NatsReport {
            mode: if args.jetstream { "jetstream" } else { "core" },
            messages: args.messages,
            batch: args.batch,
            plain,
            alluvium,
            ratio,
            retried,
            verify: None,
        },
        acked,
    ))
}

async fn plain_core(
    client: &async_nats::Client,
    args: &NatsArgs,
    run: &str,
    template: &mut BatchBody,
) -> anyhow::Result<Phase> {
    let subject = format!("bench.plain.{run}");
    let mut sub = client.subscribe(subject.clone()).await?;
    client.flush().await?;
    let n = args.messages;
    let counter = tokio::spawn(async move {
        let mut got = 0u64;
        while got < n {
            match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
                Ok(Some(_)) => got += 1,
                _ => break,
            }
        }
        (got, Instant::now())
    });
    let start = Instant::now();
    for i in 0..n {
        client
            .publish(subject.clone(), body(template, i, args.batch))
            .await?;
    }
    client.flush().await?;
    let (got, end) = counter.await?;
    if got < n {
        eprintln!("plain subscriber received {got} of {n} messages (slow consumer drops)");
    }
    Ok(Phase::new(got * args.batch, end - start))
}

async fn alluvium_core(
    client: &async_nats::Client,
    args: &NatsArgs,
    key: &str,
    template: &mut BatchBody,
) -> anyhow::Result<(Phase, Vec<bool>, u64)> {
    let subject = format!("alluvium.ingest.default.{}", args.table);
    let auth = format!("Bearer {key}");
    let mut acked = vec![false; (args.messages * args.batch) as usize];
    let mut pending = FuturesUnordered::new();
    let mut queue: std::collections::VecDeque<u64> = (0..args.messages).collect();
    let (mut done, mut retried, mut failures) = (0u64, 0u64, 0u64);
    let send = |i: u64, body: Bytes| {
        let mut h = HeaderMap::new();
        h.insert("Authorization", auth.as_str());
        h.insert("Content-Type", "application/json");
        if !args.no_msg_id {
            h.insert("Nats-Msg-Id", format!("m{i}").as_str());
        }
        let req = client.request_with_headers(subject.clone(), h, body);
        async move { (i, req.await) }
    };
    let start = Instant::now();
    let mut last = start;
    loop {
        while pending.len() < args.in_flight.max(1) {
            let Some(i) = queue.pop_front() else { break };
            pending.push(send(i, body(template, i, args.batch)));
        }
        let Some((i, res)) = pending.next().await else {
            break;
        };
        let status = res.as_ref().ok().and_then(|m| {
            m.headers
                .as_ref()
                .and_then(|h| h.get("Alluvium-Status"))
                .map(|v| v.as_str().to_string())
        });
        match status.as_deref() {
            Some("200") => {
                done += 1;
                last = Instant::now();
                let from = (i * args.batch) as usize;
                acked[from..from + args.batch as usize].fill(true);
            }
            Some("503") | Some("429") | None => {
                retried += 1;
                failures += 1;
                if failures > 100_000 {
                    bail!("too many failed requests; is the server connected to this NATS?");
                }
                queue.push_back(i);
            }
            Some(other) => {
                let detail = res.map(|m| String::from_utf8_lossy(&m.payload).into_owned());
                bail!("request {i} answered {other}: {detail:?}");
            }
        }
    }
    Ok((Phase::new(done * args.batch, last - start), acked, retried))
}

async fn plain_stream(
    client: &async_nats::Client,
    args: &NatsArgs,
    run: &str,
    template: &mut BatchBody,
) -> anyhow::Result<Phase> {
    let js = jetstream::new(client.clone());
    let name = format!("BENCH_{}", run.to_uppercase());
    let subject = format!("bench.js.{run}");
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            retention: jetstream::stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("count".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: args.in_flight as i64,
            ..Default::default()
        })
        .await?;
    let n = args.messages;
    let counter = tokio::spawn(async move {
        let mut got = 0u64;
        let Ok(mut messages) = consumer.messages().await else {
            return (0, Instant::now());
        };
        while got < n {
            match tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
                Ok(Some(Ok(m))) => {
                    let _ = m.ack().await;
                    got += 1;
                }
                _ => break,
            }
        }
        (got, Instant::now())
    });
    let start = Instant::now();
    publish_all(&js, &subject, args, template, |_| HeaderMap::new()).await?;
    let (got, end) = counter.await?;
    js.delete_stream(&name).await.ok();
    Ok(Phase::new(got * args.batch, end - start))
}

async fn alluvium_stream(
    client: &async_nats::Client,
    args: &NatsArgs,
    key: &str,
    template: &mut BatchBody,
) -> anyhow::Result<(Phase, Vec<bool>)> {
    let js = jetstream::new(client.clone());
    let subject = format!("alluvium.ingest.default.{}", args.table);
    let auth = format!("Bearer {key}");
    let start = Instant::now();
    publish_all(&js, &subject, args, template, |i| {
        let mut h = HeaderMap::new();
        h.insert("Authorization", auth.as_str());
        h.insert("Content-Type", "application/json");
        if !args.no_msg_id {
            h.insert("Nats-Msg-Id", format!("m{i}").as_str());
        }
        h
    })
    .await?;
    // Done when the durable consumer has nothing pending or unacknowledged.
    let mut consumer: jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream("alluvium-ingest", "ALLUVIUM_INGEST")
        .await
        .context("no alluvium-ingest consumer: is the server in jetstream ingest mode?")?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let info = consumer.info().await?;
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("alluvium did not drain ALLUVIUM_INGEST within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed();
    // Everything JetStream acknowledged is owed to the table.
    let acked = vec![true; (args.messages * args.batch) as usize];
    Ok((Phase::new(args.messages * args.batch, elapsed), acked))
}

/// Publishes every message with up to `in_flight` acknowledgements outstanding.
async fn publish_all(
    js: &jetstream::Context,
    subject: &str,
    args: &NatsArgs,
    template: &mut BatchBody,
    headers: impl Fn(u64) -> HeaderMap,
) -> anyhow::Result<()> {
    let mut acks = FuturesUnordered::new();
    for i in 0..args.messages {
        while acks.len() >= args.in_flight.max(1) {
            if let Some(a) = acks.next().await {
                a?;
            }
        }
        let ack = js
            .publish_with_headers(
                subject.to_string(),
                headers(i),
                body(template, i, args.batch),
            )
            .await?;
        acks.push(async move {
            ack.await
                .map(|_| ())
                .map_err(|e| anyhow::anyhow!("JetStream did not acknowledge a publish: {e}"))
        });
    }
    while let Some(a) = acks.next().await {
        a?;
    }
    Ok(())
}
