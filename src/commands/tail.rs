//! `alluvium tail`: commit events as they happen, until interrupted.

use std::process::ExitCode;

use clap::{Args, ValueEnum};

use super::{ConnArgs, with_stdout};
use crate::client::{CommitEvent, CommitKind, EventFilter};

/// Options of `alluvium tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Only this table's events.
    #[arg(long)]
    table: Option<String>,
    /// Only these kinds, comma separated: flushed, compacted, schema.
    #[arg(long, value_delimiter = ',')]
    kinds: Vec<CommitKind>,
    /// Start after this event id (`{catalog_version}:{index}`); `0` replays every event.
    /// Default: from the next commit on.
    #[arg(long)]
    after: Option<String>,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<u64>,
    /// `line`: one readable line per event; `ndjson`: each event's JSON.
    #[arg(long, short = 'o', value_enum, default_value = "line")]
    output: TailOutput,
}

/// How `tail` prints events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TailOutput {
    /// One readable line per event.
    Line,
    /// One JSON object per event.
    Ndjson,
}

/// Runs `alluvium tail`.
pub fn run(args: TailArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let filter = EventFilter {
        table: args.table.clone(),
        kinds: args.kinds.clone(),
        after: args.after.clone(),
    };
    let events = client.events(&filter)?;
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!(
            "following commit events of {}{} (Ctrl-C to stop)",
            client.url(),
            args.table
                .as_deref()
                .map(|t| format!(", table {t}"))
                .unwrap_or_default()
        );
    }
    with_stdout(|out| {
        if args.count == Some(0) {
            return Ok(());
        }
        for (printed, event) in (1u64..).zip(events) {
            let event = event?;
            match args.output {
                TailOutput::Ndjson => {
                    serde_json::to_writer(&mut *out, &event)?;
                    writeln!(out)?;
                }
                TailOutput::Line => writeln!(out, "{}", line(&event))?,
            }
            // Each event as soon as it arrives, also into a pipe.
            out.flush()?;
            if args.count.is_some_and(|c| printed >= c) {
                break;
            }
        }
        Ok(())
    })
}

/// One readable line.
fn line(e: &CommitEvent) -> String {
    let what = match e.kind {
        CommitKind::Flushed => format!(
            "+{} file{} ({} rows){}",
            e.files_added.len(),
            plural(e.files_added.len()),
            e.rows_added,
            e.committed_seq
                .map(|s| format!(", committed through seq {s}"))
                .unwrap_or_default()
        ),
        CommitKind::Compacted => format!(
            "{} file{} ({} rows) -> {} file{} ({} rows)",
            e.files_removed.len(),
            plural(e.files_removed.len()),
            e.rows_removed,
            e.files_added.len(),
            plural(e.files_added.len()),
            e.rows_added
        ),
        CommitKind::Schema => format!("schema version {}", e.schema_version),
        CommitKind::Unknown => format!(
            "+{} files, -{} files",
            e.files_added.len(),
            e.files_removed.len()
        ),
    };
    format!(
        "{} {} {:<9} {}/{} v{}: {what}",
        e.committed_at,
        e.id,
        e.kind.as_str(),
        e.tenant,
        e.table,
        e.catalog_version
    )
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn readable_lines() {
        let e: CommitEvent = serde_json::from_value(serde_json::json!({
            "id": "12:0", "lake_id": "l", "kind": "flushed", "tenant": "default", "table": "clicks",
            "catalog_version": 12, "committed_at": "2026-11-25T10:00:00.000Z", "schema_version": 1,
            "files_added": [{"path": "p", "partition": "all", "size_bytes": 10, "rows": 2,
                             "min_seq": 1, "max_seq": 2, "schema_version": 1}],
            "files_removed": [], "rows_added": 2, "rows_removed": 0, "committed_seq": 2
        }))
        .unwrap();
        assert_eq!(
            line(&e),
            "2026-11-25T10:00:00.000Z 12:0 flushed   default/clicks v12: +1 file (2 rows), committed through seq 2"
        );
    }
}
