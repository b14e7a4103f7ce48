//! `alluvium send TABLE FILE|-`: streams NDJSON, a JSON array or CSV to a table, in batches
//! sent with bounded concurrency, resumable and stored exactly once.
//!
//! How a file is stored once however often the command is killed and rerun:
//!
//! - Batches are cut deterministically (at `--batch-rows` rows, or once they reach
//!   `--batch-bytes`), and batch `i` of a file carries the idempotency key
//!   `send-{identity}-{i}`, where the identity hashes the file's canonical path, size and
//!   modification time, the table, the format and the batch sizes. A batch sent again (a
//!   retry, a rerun) is answered by the server as a duplicate and stored nothing more.
//! - The checkpoint (`FILE.alluvium-send` by default) records the byte offset and index of
//!   the first batch not yet acknowledged, after every acknowledgement that extends the
//!   acknowledged prefix (batches are acknowledged out of order with `--parallel` above 1).
//!   A rerun starts there, so it never resends what the checkpoint covers, and resends with
//!   the same keys the few batches that were in flight. Those are recognized as long as the
//!   server remembers their keys (`ingest.idempotency_window`, 15 minutes by default): rerun
//!   an interrupted send within it.
//! - A file that changed since the checkpoint was written is refused (its identity differs);
//!   `--restart` sends it from the start with the new identity's keys.
//!
//! Reading is streamed, so the size of the file does not matter; a JSON array is read
//! element by element too. Memory holds about `2 × --parallel + 1` batches.

mod plan;

use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use super::ConnArgs;
use super::checkpoint::{self, Checkpoint};
use super::input::{
    CsvReader, Format, JsonArrayReader, NdjsonReader, Position, Resolved, RowReader, resolve,
};
use crate::client::{Client, Schema};
use crate::config::ByteSize;
use plan::{Plan, ProgressLines};

/// Options of `alluvium send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// The table to send to.
    table: String,
    /// The file to send, or `-` for standard input (not resumable).
    file: PathBuf,
    /// Input format. `auto`: by extension (.ndjson, .jsonl, .json, .csv, .tsv), else by the
    /// first byte (`[` a JSON array, `{` NDJSON, anything else CSV).
    #[arg(long, value_enum, default_value = "auto")]
    format: Format,
    /// CSV field delimiter (default: `,`, or a tab for .tsv files).
    #[arg(long)]
    delimiter: Option<char>,
    /// Most rows in one batch.
    #[arg(long, default_value_t = crate::client::DEFAULT_BATCH_ROWS as u64,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    batch_rows: u64,
    /// A batch is closed once its JSON reaches this size (keep it well under the server's
    /// `server.body_limit`, 16MiB by default).
    #[arg(long, default_value = "4MiB")]
    batch_bytes: ByteSize,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    parallel: u64,
    /// Checkpoint file. Default: FILE.alluvium-send next to the file.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Keeps no checkpoint (a rerun then resends everything, recognized as duplicates only
    /// within the server's idempotency window).
    #[arg(long, conflicts_with = "checkpoint")]
    no_checkpoint: bool,
    /// Ignores the checkpoint and sends the file from the start.
    #[arg(long)]
    restart: bool,
    /// Sends bodies uncompressed.
    #[arg(long)]
    no_gzip: bool,
    /// No progress bar on a terminal, and no progress lines (every 5 s) elsewhere.
    #[arg(long)]
    no_progress: bool,
    /// Prints the final report as JSON.
    #[arg(long)]
    json: bool,
}

/// The final report.
#[derive(Debug, Clone, Default, Serialize)]
struct Report {
    table: String,
    file: String,
    format: String,
    /// Rows acknowledged in this run, duplicates included.
    rows: u64,
    /// Of them, rows the server already had (batches answered as duplicates).
    duplicate_rows: u64,
    batches: u64,
    duplicate_batches: u64,
    retries: u64,
    /// Input bytes acknowledged in this run.
    bytes: u64,
    /// Bytes sent (gzipped), once per batch.
    wire_bytes: u64,
    elapsed_s: f64,
    rows_per_s: f64,
    mb_per_s: f64,
    /// The batch this run started at (after a checkpoint), and the rows before it.
    resumed_at_batch: u64,
    skipped_rows: u64,
    /// Whether the whole input is acknowledged.
    complete: bool,
    checkpoint: Option<String>,
}

impl Report {
    fn line(&self) -> String {
        let mut s = format!(
            "sent {} rows in {} batches ({} duplicate batches, {} rows already stored), {:.1} MB \
             in {:.2} s: {:.0} rows/s, {:.1} MB/s",
            self.rows,
            self.batches,
            self.duplicate_batches,
            self.duplicate_rows,
            self.bytes as f64 / 1e6,
            self.elapsed_s,
            self.rows_per_s,
            self.mb_per_s
        );
        if self.retries > 0 {
            s.push_str(&format!(", {} retries", self.retries));
        }
        if self.resumed_at_batch > 0 {
            s.push_str(&format!(
                "; resumed at batch {} after {} rows",
                self.resumed_at_batch, self.skipped_rows
            ));
        }
        if !self.complete {
            s.push_str("; INCOMPLETE");
        }
        s
    }
}

/// Runs `alluvium send`.
pub fn run(args: SendArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?.with_gzip(!args.no_gzip);
    let delimiter = match args.delimiter {
        None => None,
        Some(c) if c.is_ascii() => Some(c as u8),
        Some(c) => bail!("the CSV delimiter must be one ASCII character, not {c:?}"),
    };
    let batch_rows = usize::try_from(args.batch_rows)?;
    let batch_bytes = usize::try_from(args.batch_bytes.0.max(1))?;
    let stdin = args.file.as_os_str() == "-";
    let source = if stdin {
        if args.checkpoint.is_some() {
            bail!("standard input cannot be resumed: --checkpoint needs a file");
        }
        Source::stdin()
    } else {
        Source::file(&args.file)?
    };
    let format = resolve(
        args.format,
        (!stdin).then_some(args.file.as_path()),
        &source.head,
        delimiter,
    );
    let schema = match format {
        Resolved::Csv(_) => table_schema(&client, &args.table)?,
        _ => None,
    };
    let label = if stdin {
        "standard input".to_string()
    } else {
        args.file.display().to_string()
    };
    let identity = match &source.identity {
        Some(file) => checkpoint::identity(&[
            file,
            &args.table,
            &format.name(),
            &batch_rows.to_string(),
            &batch_bytes.to_string(),
        ]),
        None => crate::client::random_id(),
    };
    let cp_path = match (&args.checkpoint, stdin || args.no_checkpoint) {
        (_, true) => None,
        (Some(p), false) => Some(p.clone()),
        (None, false) => Some(checkpoint::default_path(&args.file)),
    };
    let mut cp = Checkpoint::new(&identity, &label, &args.table);
    if let Some(path) = &cp_path
        && !args.restart
        && let Some(found) = Checkpoint::load(path)?
    {
        if found.identity != identity {
            bail!(
                "the checkpoint {} records a send of another version of {label}, or to another \
                 table or with other --format/--batch-rows/--batch-bytes; rerun with the same \
                 options, or pass --restart to send the whole file again",
                path.display()
            );
        }
        cp = found;
    }
    let mut report = Report {
        table: args.table.clone(),
        file: label.clone(),
        format: format.name(),
        resumed_at_batch: cp.next_batch,
        skipped_rows: cp.rows,
        checkpoint: cp_path.as_ref().map(|p| p.display().to_string()),
        ..Default::default()
    };
    if cp.complete {
        report.complete = true;
        eprintln!(
            "{label} was sent completely already (checkpoint {}); pass --restart to send it again",
            report.checkpoint.as_deref().unwrap_or("?")
        );
        print_report(&report, args.json);
        return Ok(ExitCode::SUCCESS);
    }
    let start = cp.position;
    let size = source.size;
    let mut reader = source.open(format, start, schema.as_ref())?;
    let terminal = std::io::stderr().is_terminal();
    let progress = progress_bar(!args.no_progress && terminal, size, start.byte);
    let plan = Plan {
        client,
        table: args.table.clone(),
        key_prefix: format!("send-{identity}"),
        label,
        parallel: usize::try_from(args.parallel)?,
        batch_rows,
        batch_bytes,
        checkpoint: cp_path,
        progress_lines: (!args.no_progress && !terminal).then(|| ProgressLines {
            size,
            start_byte: start.byte,
            last: Instant::now(),
        }),
    };
    let t0 = Instant::now();
    let outcome = plan.run(reader.as_mut(), cp, &progress);
    progress.finish_and_clear();
    let elapsed = t0.elapsed().as_secs_f64().max(1e-9);
    report.rows = outcome.rows;
    report.duplicate_rows = outcome.duplicate_rows;
    report.batches = outcome.batches;
    report.duplicate_batches = outcome.duplicate_batches;
    report.retries = outcome.retries;
    report.bytes = outcome.position.byte.saturating_sub(start.byte);
    report.wire_bytes = outcome.wire_bytes;
    report.elapsed_s = elapsed;
    report.rows_per_s = outcome.rows as f64 / elapsed;
    report.mb_per_s = report.bytes as f64 / 1e6 / elapsed;
    report.complete = outcome.error.is_none();
    print_report(&report, args.json);
    match outcome.error {
        None => Ok(ExitCode::SUCCESS),
        Some(e) => Err(e),
    }
}

fn print_report(report: &Report, json: bool) {
    if json {
        match serde_json::to_string(report) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("error: cannot write the report: {e}"),
        }
    } else {
        println!("{}", report.line());
    }
}

/// The table's schema, to type CSV cells; `None` (cells typed by their look) when the
/// credential may not read it.
fn table_schema(client: &Client, table: &str) -> anyhow::Result<Option<Schema>> {
    match client.get_table(table) {
        Ok(info) => Ok(Some(info.schema)),
        Err(e) if e.status() == Some(403) => {
            eprintln!(
                "warning: cannot read the schema of {table} ({e}); CSV cells are typed by their look"
            );
            Ok(None)
        }
        Err(e) => {
            Err(anyhow::Error::new(e).context(format!("reading the schema of table {table}")))
        }
    }
}

/// The input: a file or standard input, with its first bytes for format detection.
struct Source {
    file: Option<File>,
    /// Canonical path, size and modification time of a file.
    identity: Option<String>,
    size: Option<u64>,
    head: Vec<u8>,
    stdin: Option<BufReader<std::io::Stdin>>,
}

impl Source {
    fn stdin() -> Source {
        let mut reader = BufReader::with_capacity(1 << 20, std::io::stdin());
        let head = reader.fill_buf().map(<[u8]>::to_vec).unwrap_or_default();
        Source {
            file: None,
            identity: None,
            size: None,
            head,
            stdin: Some(reader),
        }
    }

    fn file(path: &Path) -> anyhow::Result<Source> {
        let mut file =
            File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            bail!("{} is not a regular file", path.display());
        }
        let canonical = std::fs::canonicalize(path)?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let mut head = vec![0; 64 << 10];
        let n = read_full(&mut file, &mut head)?;
        head.truncate(n);
        file.seek(SeekFrom::Start(0))?;
        Ok(Source {
            file: Some(file),
            identity: Some(format!("{}\0{}\0{mtime}", canonical.display(), meta.len())),
            size: Some(meta.len()),
            head,
            stdin: None,
        })
    }

    /// A reader of the rows from `start` on.
    fn open(
        self,
        format: Resolved,
        start: Position,
        schema: Option<&Schema>,
    ) -> anyhow::Result<Box<dyn RowReader>> {
        if let Some(stdin) = self.stdin {
            return Ok(match format {
                Resolved::Ndjson => Box::new(NdjsonReader::new(stdin, start)),
                Resolved::JsonArray => Box::new(JsonArrayReader::new(stdin, start)),
                Resolved::Csv(d) => {
                    Box::new(CsvReader::new(csv_builder(d).from_reader(stdin), schema)?)
                }
            });
        }
        let mut file = self.file.ok_or_else(|| anyhow!("no input"))?;
        if let Some(size) = self.size
            && start.byte > size
        {
            bail!("the checkpoint is past the end of the file; pass --restart");
        }
        Ok(match format {
            Resolved::Ndjson => {
                file.seek(SeekFrom::Start(start.byte))?;
                Box::new(NdjsonReader::new(
                    BufReader::with_capacity(1 << 20, file),
                    start,
                ))
            }
            Resolved::JsonArray => {
                file.seek(SeekFrom::Start(start.byte))?;
                Box::new(JsonArrayReader::new(file, start))
            }
            Resolved::Csv(d) => {
                let mut r = CsvReader::new(csv_builder(d).from_reader(file), schema)?;
                if start.byte > 0 {
                    r.seek(start)?;
                }
                Box::new(r)
            }
        })
    }
}

fn csv_builder(delimiter: u8) -> csv::ReaderBuilder {
    let mut b = csv::ReaderBuilder::new();
    b.delimiter(delimiter)
        .has_headers(true)
        .buffer_capacity(1 << 20);
    b
}

fn read_full(r: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn progress_bar(visible: bool, total: Option<u64>, start: u64) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let (bar, template) = match total {
        Some(t) => (
            ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr()),
            "{spinner} {bytes}/{total_bytes} [{wide_bar}] {binary_bytes_per_sec} {msg}, eta {eta}",
        ),
        None => (
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            "{spinner} {bytes} {binary_bytes_per_sec} {msg}",
        ),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_position(start);
    bar.reset_eta();
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_report_line_says_everything() {
        let r = Report {
            rows: 1000,
            batches: 2,
            duplicate_batches: 1,
            duplicate_rows: 500,
            bytes: 2_000_000,
            elapsed_s: 2.0,
            rows_per_s: 500.0,
            mb_per_s: 1.0,
            resumed_at_batch: 3,
            skipped_rows: 1500,
            complete: true,
            ..Default::default()
        };
        assert_eq!(
            r.line(),
            "sent 1000 rows in 2 batches (1 duplicate batches, 500 rows already stored), 2.0 MB \
             in 2.00 s: 500 rows/s, 1.0 MB/s; resumed at batch 3 after 1500 rows"
        );
    }
}
