//! The command line: `serve`, `token mint`, `wal inspect|verify`, `rejects list|replay`,
//! `bench http|tables|nats`, and the client commands `send`, `query`, `tables`, `tail` and
//! `completions` (implemented in [`crate::commands`]).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use alluvium_actors::auth::{Grant, mint_hs256};
use alluvium_actors::ids::TenantId;
use alluvium_actors::wal::{ProblemKind, inspect};
use anyhow::bail;
use clap::{Args, CommandFactory as _, Parser, Subcommand};

use crate::config::{Config, HumanDuration};

/// alluvium: lands JSON event streams in a Parquet lake, durably and exactly once.
#[derive(Debug, Parser)]
#[command(name = "alluvium", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a node: standalone by default (HTTP ingest and queries, local WAL, local Parquet
    /// lake), or in cluster roles (--role) over NATS and a shared store.
    Serve(ServeArgs),
    /// Development tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Looks at the write-ahead log without changing it.
    #[command(subcommand)]
    Wal(WalCommand),
    /// Load generators against a running server.
    #[command(subcommand)]
    Bench(crate::bench::BenchCommand),
    /// Batches refused by ingest, kept on NATS (stream ALLUVIUM_REJECTS): list or replay them.
    #[command(subcommand)]
    Rejects(RejectsCommand),
    /// Sends a file (NDJSON, a JSON array or CSV) to a table: streamed, in batches, resumable
    /// after an interruption, every row stored once.
    Send(crate::commands::send::SendArgs),
    /// Reads rows of a table.
    Query(crate::commands::query::QueryArgs),
    /// Lists the tables.
    Tables(crate::commands::query::TablesArgs),
    /// Prints commit events (flushes, compactions, schema changes) as they happen.
    Tail(crate::commands::tail::TailArgs),
    /// Prints a shell completion script, e.g. `alluvium completions bash > ~/.local/share/bash-completion/completions/alluvium`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum RejectsCommand {
    /// Prints the rejects of a tenant (or table) as JSON lines, oldest first.
    List(RejectsArgs),
    /// Sends the rejects again (after a schema fix) through the ingest subjects; prints a
    /// report, and exits 1 if any is refused again.
    Replay(ReplayArgs),
}

#[derive(Debug, Args)]
struct RejectsArgs {
    /// NATS server URL.
    #[arg(
        long,
        env = "ALLUVIUM_NATS__URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats_url: String,
    /// Subject prefix.
    #[arg(long, default_value = "alluvium")]
    prefix: String,
    /// Tenant whose rejects to read.
    #[arg(long)]
    tenant: String,
    /// Only this table's rejects.
    #[arg(long)]
    table: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 10_000)]
    limit: usize,
}

#[derive(Debug, Args)]
struct ReplayArgs {
    #[command(flatten)]
    rejects: RejectsArgs,
    /// Credential of the tenant with the ingest scope (API key or JWT).
    #[arg(long, env = "ALLUVIUM_API_KEY")]
    key: String,
    /// Delete accepted rejects from the stream.
    #[arg(long)]
    delete: bool,
}

impl RejectsArgs {
    fn query(&self) -> crate::rejects::RejectsQuery {
        crate::rejects::RejectsQuery {
            nats_url: self.nats_url.clone(),
            prefix: self.prefix.clone(),
            tenant: self.tenant.clone(),
            table: self.table.clone(),
            limit: self.limit,
        }
    }
}

#[derive(Debug, Args)]
struct ConfigArgs {
    /// Configuration file (TOML). Every key can also be set as ALLUVIUM_<SECTION>__<KEY>.
    #[arg(long, short = 'c', env = "ALLUVIUM_CONFIG")]
    config: Option<PathBuf>,
    /// Directory of local state (overrides `data_dir`). Default: ./data
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl ConfigArgs {
    fn load(&self) -> anyhow::Result<Config> {
        let mut config = Config::load(self.config.as_deref(), std::env::vars())?;
        if let Some(d) = &self.data_dir {
            config.data_dir = d.clone();
        }
        Ok(config)
    }
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Address to listen on (overrides `server.listen`). Default: 127.0.0.1:8080
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// NATS server URL(s), comma separated (overrides `nats.url`): enables ingest from NATS
    /// subjects and commit events on JetStream. Default: no NATS.
    #[arg(long)]
    nats_url: Option<String>,
    /// `all` (standalone, the default) or cluster roles, comma separated: `ingest`,
    /// `processing`, `notification` (overrides `node.role`). Cluster roles need --nats-url and
    /// --store.
    #[arg(long)]
    role: Option<String>,
    /// The node's name in a cluster (overrides `node.id`). Default: host name and HTTP port.
    #[arg(long)]
    node_id: Option<String>,
    /// Where the lake lives: `s3://bucket/prefix` or `file:///path` (overrides `store.url`).
    /// Default: the data directory.
    #[arg(long)]
    store: Option<String>,
    /// On SIGTERM or SIGINT, write every memtable to Parquet before exiting (sets
    /// `server.flush_on_exit`).
    #[arg(long)]
    flush_on_exit: bool,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Mints an HS256 JWT with the secret of `[auth.jwt] hs256_secret`, for development.
    Mint(MintArgs),
}

#[derive(Debug, Args)]
struct MintArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Tenant the token authenticates as.
    #[arg(long)]
    tenant: String,
    /// Comma-separated scopes: ingest, query, admin, each optionally limited to a table
    /// (`ingest:clicks`).
    #[arg(long, default_value = "ingest,query", value_delimiter = ',')]
    scopes: Vec<String>,
    /// Lifetime, e.g. 15m, 1h.
    #[arg(long, default_value = "1h")]
    ttl: String,
}

#[derive(Debug, Subcommand)]
enum WalCommand {
    /// Lists segments, record counts and sequence ranges.
    Inspect(WalArgs),
    /// Like inspect, and exits non-zero if any segment is damaged.
    Verify(WalArgs),
}

#[derive(Debug, Args)]
struct WalArgs {
    #[command(flatten)]
    config: ConfigArgs,
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Bench(cmd) => crate::bench::run(cmd),
        Command::Send(args) => crate::commands::send::run(args),
        Command::Query(args) => crate::commands::query::run_query(args),
        Command::Tables(args) => crate::commands::query::run_tables(args),
        Command::Tail(args) => crate::commands::tail::run(args),
        Command::Completions { shell } => {
            Ok(crate::commands::completions(shell, &mut Cli::command()))
        }
        Command::Rejects(cmd) => {
            let _guard = crate::telemetry::init("warn", &Default::default())?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            match cmd {
                RejectsCommand::List(args) => {
                    for r in rt.block_on(crate::rejects::list(&args.query()))? {
                        println!("{}", serde_json::to_string(&r)?);
                    }
                    Ok(ExitCode::SUCCESS)
                }
                RejectsCommand::Replay(args) => {
                    let report = rt.block_on(crate::rejects::replay(
                        &args.rejects.query(),
                        &args.key,
                        args.delete,
                    ))?;
                    println!("{}", serde_json::to_string_pretty(&report)?);
                    Ok(if report.still_rejected.is_empty() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    })
                }
            }
        }
        Command::Serve(args) => {
            let mut config = args.config.load()?;
            let _guard = crate::telemetry::init("info", &config.telemetry)?;
            if let Some(listen) = args.listen {
                config.server.listen = listen;
            }
            if args.flush_on_exit {
                config.server.flush_on_exit = true;
            }
            if let Some(url) = args.nats_url {
                config.nats.url = Some(url);
            }
            if let Some(role) = args.role {
                config.node.role = Some(role);
            }
            if let Some(id) = args.node_id {
                config.node.id = Some(id);
            }
            if let Some(store) = args.store {
                config.store.url = Some(store);
            }
            crate::server::serve(config)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Token(TokenCommand::Mint(args)) => {
            let _guard = crate::telemetry::init("warn", &Default::default())?;
            let config = args.config.load()?;
            let jwt = &config.auth.jwt;
            let Some(secret) = jwt.hs256_secret.as_deref() else {
                bail!(
                    "no HS256 secret configured: set [auth.jwt] hs256_secret or ALLUVIUM_AUTH__JWT__HS256_SECRET"
                );
            };
            let tenant = TenantId::new(&args.tenant)?;
            let scopes = args
                .scopes
                .iter()
                .map(|s| Grant::parse(s.trim()).map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<BTreeSet<_>>>()?;
            let ttl: HumanDuration = args.ttl.parse().map_err(anyhow::Error::msg)?;
            let token = mint_hs256(
                secret,
                &tenant,
                &scopes,
                ttl.0,
                jwt.issuer.as_deref(),
                jwt.audience.as_deref(),
            )?;
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Wal(cmd) => {
            let (args, verify) = match cmd {
                WalCommand::Inspect(a) => (a, false),
                WalCommand::Verify(a) => (a, true),
            };
            let _guard = crate::telemetry::init("warn", &Default::default())?;
            let config = args.config.load()?;
            let dir = config.data_dir.join("wal");
            let max = u32::try_from(config.wal.max_record_size.0).unwrap_or(u32::MAX);
            let reports = inspect(&dir, max)?;
            let mut damaged = false;
            for r in &reports {
                println!(
                    "segment {:020} {} bytes ({} valid) {} records",
                    r.id, r.bytes, r.valid_bytes, r.records
                );
                for (table, range) in &r.tables {
                    println!("  {table}: seq {}..={}", range.first, range.last);
                }
                if let Some(p) = &r.problem {
                    damaged |= matches!(p.kind, ProblemKind::Corrupt);
                    println!("  {:?} at byte {}: {}", p.kind, p.offset, p.reason);
                }
            }
            if reports.is_empty() {
                println!("no segments in {}", dir.display());
            }
            Ok(if verify && damaged {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}
