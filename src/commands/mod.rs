//! The client commands of the binary: `send`, `query`, `tables`, `tail` and `completions`,
//! all over [`crate::client`]. Their arguments are defined here and in the submodules; the
//! dispatch is in [`crate::cli`].

pub mod input;
pub mod query;
pub mod send;
pub mod tail;

mod checkpoint;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};

use crate::client::Client;
use crate::config::HumanDuration;

/// Where the server is and who is asking.
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// Base URL of the server.
    #[arg(long, env = "ALLUVIUM_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// API key or JWT.
    #[arg(long, env = "ALLUVIUM_API_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// File holding the API key (e.g. data/bootstrap.key); wins over --key.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Timeout of connecting and of each read or write, e.g. 30s.
    #[arg(long, default_value = "60s")]
    pub timeout: HumanDuration,
    /// Retries of a request refused for now (429, 503) or cut by the network.
    #[arg(long, default_value_t = 8)]
    pub retries: u32,
}

impl ConnArgs {
    /// The credential from --key-file, --key or ALLUVIUM_API_KEY.
    pub fn key(&self) -> anyhow::Result<String> {
        if let Some(f) = &self.key_file {
            let key = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the key file {}", f.display()))?;
            return Ok(key.trim().to_string());
        }
        match &self.key {
            Some(k) => Ok(k.trim().to_string()),
            None => bail!("give the API key with --key, --key-file or ALLUVIUM_API_KEY"),
        }
    }

    /// A client with these settings.
    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(&self.url, &self.key()?)?
            .with_timeout(self.timeout.0)
            .with_max_retries(self.retries))
    }
}

/// How rows and lists are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// One JSON array.
    Json,
    /// One JSON object per line.
    Ndjson,
}

/// Runs `body` writing to stdout; a closed pipe (`| head`) ends it quietly.
pub(crate) fn with_stdout(
    body: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>,
) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result = body(&mut out).and_then(|()| out.flush().map_err(Into::into));
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if is_broken_pipe(&e) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e),
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `alluvium completions SHELL`: the completion script of `command` on stdout.
pub fn completions(shell: clap_complete::Shell, command: &mut clap::Command) -> ExitCode {
    let name = command.get_name().to_string();
    clap_complete::generate(shell, command, name, &mut std::io::stdout());
    ExitCode::SUCCESS
}
