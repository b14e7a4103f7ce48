//! `alluvium query` and `alluvium tables`.

use std::io::{Read as _, Write};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use serde_json::Value;

use super::{ConnArgs, Output, with_stdout};
use crate::client::{Filter, Op, OrderBy, QueryRequest, Row, TableInfo, TimeRange};

/// Options of `alluvium query`.
#[derive(Debug, Args)]
pub struct QueryArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// The table to read.
    table: String,
    /// A condition: `col=v`, `col!=v`, `col<v`, `col<=v`, `col>v`, `col>=v`, `col in a,b,c`,
    /// `col is null`, `col is not null`, or a JSON filter object. Values are read as JSON when
    /// they are (`42`, `true`, `"7"`), else as text. Repeat it: every condition must hold.
    #[arg(long = "filter", short = 'f')]
    filters: Vec<String>,
    /// The request as JSON (inline, `@FILE`, or `-` for standard input), as
    /// `POST /v1/tables/{table}/query` takes it; the other options override its fields.
    #[arg(long)]
    json: Option<String>,
    /// Columns to return, comma separated.
    #[arg(long, value_delimiter = ',')]
    columns: Option<Vec<String>>,
    /// Most rows to return.
    #[arg(long)]
    limit: Option<usize>,
    /// Order by the primary key or the time column.
    #[arg(long, value_enum)]
    order_by: Option<Order>,
    /// Reverse the order.
    #[arg(long)]
    desc: bool,
    /// Only rows whose time column is at or after this (RFC 3339 or an integer).
    #[arg(long)]
    from: Option<String>,
    /// Only rows whose time column is before this.
    #[arg(long)]
    to: Option<String>,
    /// Read the table as of this catalog version.
    #[arg(long)]
    as_of: Option<u64>,
    /// Add the hidden columns `_seq`, `_op` and `_ingested_at`.
    #[arg(long)]
    include_hidden: bool,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    output: Output,
}

/// `--order-by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Order {
    /// The primary key.
    Key,
    /// The time column.
    Time,
}

/// Options of `alluvium tables`.
#[derive(Debug, Args)]
pub struct TablesArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    output: Output,
}

/// Runs `alluvium query`.
pub fn run_query(args: QueryArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let request = build_request(&args)?;
    let rows = client.query_iter(&args.table, &request)?;
    with_stdout(|out| match args.output {
        Output::Ndjson => {
            for row in rows {
                serde_json::to_writer(&mut *out, &row?)?;
                out.write_all(b"\n")?;
            }
            Ok(())
        }
        Output::Json => {
            out.write_all(b"[")?;
            for (i, row) in rows.enumerate() {
                out.write_all(if i == 0 { b"\n" } else { b",\n" })?;
                serde_json::to_writer(&mut *out, &row?)?;
            }
            out.write_all(b"\n]\n")?;
            Ok(())
        }
        Output::Table => {
            let rows = rows.collect::<Result<Vec<Row>, _>>()?;
            let columns = match &request.columns {
                Some(c) => c.clone(),
                None => column_names(&rows),
            };
            let cells: Vec<Vec<Value>> = rows
                .iter()
                .map(|r| {
                    columns
                        .iter()
                        .map(|c| r.get(c).cloned().unwrap_or(Value::Null))
                        .collect()
                })
                .collect();
            render_table(out, &columns, &cells)?;
            let n = rows.len();
            writeln!(out, "({n} row{})", if n == 1 { "" } else { "s" })?;
            Ok(())
        }
    })
}

/// Runs `alluvium tables`.
pub fn run_tables(args: TablesArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let tables = client.tables()?;
    with_stdout(|out| match args.output {
        Output::Json => {
            serde_json::to_writer_pretty(&mut *out, &tables)?;
            out.write_all(b"\n")?;
            Ok(())
        }
        Output::Ndjson => {
            for t in &tables {
                serde_json::to_writer(&mut *out, t)?;
                out.write_all(b"\n")?;
            }
            Ok(())
        }
        Output::Table => {
            let columns: Vec<String> = [
                "table",
                "version",
                "fields",
                "primary_key",
                "time_column",
                "partition_by",
                "evolution",
                "indexes",
            ]
            .map(String::from)
            .to_vec();
            let cells: Vec<Vec<Value>> = tables.iter().map(table_cells).collect();
            render_table(out, &columns, &cells)?;
            let n = tables.len();
            writeln!(out, "({n} table{})", if n == 1 { "" } else { "s" })?;
            Ok(())
        }
    })
}

fn table_cells(t: &TableInfo) -> Vec<Value> {
    let s = &t.schema;
    let text = |v: String| Value::String(v);
    vec![
        text(t.table.clone()),
        Value::from(t.schema_version),
        Value::from(s.fields.len()),
        text(s.primary_key.join(",")),
        text(s.time_column.clone().unwrap_or_default()),
        text(name_of(s.partition_by)),
        text(name_of(s.evolution)),
        text(s.indexes.join(",")),
    ]
}

/// The JSON name of an enum value (`day`, `additive`), or nothing.
fn name_of<T: serde::Serialize>(v: Option<T>) -> String {
    v.and_then(|v| serde_json::to_value(v).ok())
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// The request: `--json`, then the other options over it.
fn build_request(args: &QueryArgs) -> anyhow::Result<QueryRequest> {
    let mut req = match &args.json {
        None => QueryRequest::default(),
        Some(text) => {
            let text = read_arg(text)?;
            serde_json::from_str(&text).context("--json is not a query request")?
        }
    };
    let mut filters: Vec<Filter> = req.filter.take().into_iter().collect();
    for f in &args.filters {
        filters.push(parse_filter(f).with_context(|| format!("--filter {f:?}"))?);
    }
    req.filter = match filters.len() {
        0 => None,
        1 => filters.pop(),
        _ => Some(Filter::and(filters)),
    };
    if let Some(c) = &args.columns {
        req.columns = Some(c.iter().map(|s| s.trim().to_string()).collect());
    }
    if args.limit.is_some() {
        req.limit = args.limit;
    }
    if let Some(o) = args.order_by {
        req.order_by = Some(match o {
            Order::Key => OrderBy::Key,
            Order::Time => OrderBy::Time,
        });
    }
    req.descending |= args.desc;
    req.include_hidden |= args.include_hidden;
    if args.as_of.is_some() {
        req.as_of = args.as_of;
    }
    if args.from.is_some() || args.to.is_some() {
        let range = req.time_range.get_or_insert_with(TimeRange::default);
        if let Some(f) = &args.from {
            range.from = Some(value(f));
        }
        if let Some(t) = &args.to {
            range.to = Some(value(t));
        }
    }
    Ok(req)
}

/// An argument's text, `@FILE`'s content, or standard input for `-`.
fn read_arg(text: &str) -> anyhow::Result<String> {
    if text == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        return Ok(s);
    }
    match text.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("cannot read {path}")),
        None => Ok(text.to_string()),
    }
}

/// A value as JSON when it is JSON, else as text.
fn value(text: &str) -> Value {
    let t = text.trim();
    serde_json::from_str(t).unwrap_or_else(|_| Value::String(t.to_string()))
}

/// One `--filter`.
fn parse_filter(text: &str) -> anyhow::Result<Filter> {
    let t = text.trim();
    if t.starts_with('{') {
        return serde_json::from_str(t).context("not a JSON filter");
    }
    let lower = t.to_ascii_lowercase();
    for (suffix, f) in [
        (" is not null", Filter::not_null as fn(String) -> Filter),
        (" is null", Filter::is_null as fn(String) -> Filter),
    ] {
        if let Some(col) = lower.strip_suffix(suffix) {
            return Ok(f(column(&t[..col.len()])?));
        }
    }
    if let Some(i) = lower.find(" in ") {
        let col = column(&t[..i])?;
        let list = t[i + 4..].trim();
        let values = match serde_json::from_str::<Value>(list) {
            Ok(Value::Array(items)) => items,
            _ => list.split(',').map(value).collect(),
        };
        return Ok(Filter::cmp(col, Op::In, values));
    }
    let Some(at) = t.find(['=', '!', '<', '>']) else {
        bail!(
            "expected col=value, col!=value, col<value, col<=value, col>value, col>=value, col in a,b, col is null or a JSON filter"
        );
    };
    let rest = &t[at..];
    let (op, len) = if rest.starts_with("!=") {
        (Op::Ne, 2)
    } else if rest.starts_with("<=") {
        (Op::Le, 2)
    } else if rest.starts_with(">=") {
        (Op::Ge, 2)
    } else if rest.starts_with("==") {
        (Op::Eq, 2)
    } else if rest.starts_with('=') {
        (Op::Eq, 1)
    } else if rest.starts_with('<') {
        (Op::Lt, 1)
    } else if rest.starts_with('>') {
        (Op::Gt, 1)
    } else {
        bail!("'!' must be followed by '='");
    };
    Ok(Filter::cmp(column(&t[..at])?, op, value(&t[at + len..])))
}

fn column(text: &str) -> anyhow::Result<String> {
    let c = text.trim();
    if c.is_empty() {
        bail!("no column name");
    }
    Ok(c.to_string())
}

/// Column names of `rows` in the order they first appear.
fn column_names(rows: &[Row]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for r in rows {
        for k in r.keys() {
            if !names.iter().any(|n| n == k) {
                names.push(k.clone());
            }
        }
    }
    names
}

/// Longest cell shown, in characters.
const MAX_CELL: usize = 60;

/// A cell as text: strings as they are (control characters escaped), null as nothing, other
/// values as JSON; cut at [`MAX_CELL`] characters.
fn cell_text(v: &Value) -> String {
    let full = match v {
        Value::Null => String::new(),
        Value::String(s) => {
            let mut t = String::with_capacity(s.len());
            for c in s.chars() {
                if c.is_control() {
                    t.extend(c.escape_default());
                } else {
                    t.push(c);
                }
            }
            t
        }
        other => other.to_string(),
    };
    if full.chars().count() > MAX_CELL {
        let mut cut: String = full.chars().take(MAX_CELL - 1).collect();
        cut.push('…');
        cut
    } else {
        full
    }
}

/// Writes aligned columns: a header, a rule, the rows; numbers right-aligned.
fn render_table(
    out: &mut dyn Write,
    columns: &[String],
    rows: &[Vec<Value>],
) -> anyhow::Result<()> {
    let texts: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(cell_text).collect())
        .collect();
    let width = |s: &str| s.chars().count();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            texts
                .iter()
                .map(|r| r.get(i).map_or(0, |s| width(s)))
                .chain(std::iter::once(width(c)))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let numeric: Vec<bool> = (0..columns.len())
        .map(|i| {
            rows.iter().any(|r| r.get(i).is_some_and(Value::is_number))
                && rows
                    .iter()
                    .all(|r| r.get(i).is_none_or(|v| v.is_number() || v.is_null()))
        })
        .collect();
    let line = |cells: &[String], out: &mut dyn Write| -> std::io::Result<()> {
        let mut s = String::new();
        for (i, w) in widths.iter().enumerate() {
            let text = cells.get(i).map_or("", String::as_str);
            let pad = w.saturating_sub(width(text));
            if i > 0 {
                s.push_str("  ");
            }
            if numeric[i] {
                s.extend(std::iter::repeat_n(' ', pad));
                s.push_str(text);
            } else {
                s.push_str(text);
                if i + 1 < widths.len() {
                    s.extend(std::iter::repeat_n(' ', pad));
                }
            }
        }
        writeln!(out, "{}", s.trim_end())
    };
    line(columns, out)?;
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(&rule, out)?;
    for r in &texts {
        line(r, out)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(text: &str) -> Value {
        serde_json::to_value(parse_filter(text).unwrap()).unwrap()
    }

    #[test]
    fn filters_from_the_command_line() {
        assert_eq!(
            f("user=ada"),
            json!({"column":"user","op":"=","value":"ada"})
        );
        assert_eq!(f(" id >= 2 "), json!({"column":"id","op":">=","value":2}));
        assert_eq!(f("id!=2"), json!({"column":"id","op":"!=","value":2}));
        assert_eq!(f("x<1.5"), json!({"column":"x","op":"<","value":1.5}));
        assert_eq!(f("ok==true"), json!({"column":"ok","op":"=","value":true}));
        assert_eq!(
            f("code=\"007\""),
            json!({"column":"code","op":"=","value":"007"})
        );
        assert_eq!(
            f("code=007"),
            json!({"column":"code","op":"=","value":"007"})
        );
        assert_eq!(
            f("ts>2026-01-01T00:00:00Z"),
            json!({"column":"ts","op":">","value":"2026-01-01T00:00:00Z"})
        );
        assert_eq!(
            f("user in ada,bob"),
            json!({"column":"user","op":"in","value":["ada","bob"]})
        );
        assert_eq!(
            f("id IN [1, 2]"),
            json!({"column":"id","op":"in","value":[1,2]})
        );
        assert_eq!(
            f("msg is null"),
            json!({"column":"msg","op":"is_null","value":true})
        );
        assert_eq!(
            f("msg IS NOT NULL"),
            json!({"column":"msg","op":"is_null","value":false})
        );
        assert_eq!(
            f(r#"{"or":[{"column":"a","op":"=","value":1}]}"#),
            json!({"or":[{"column":"a","op":"=","value":1}]})
        );
        for bad in ["", "user", "=3", "a!3", "{\"nope\":1}"] {
            assert!(parse_filter(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn options_override_the_json_request() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            q: QueryArgs,
        }
        let cli = Cli::parse_from([
            "x",
            "t",
            "--json",
            r#"{"limit":5,"columns":["a"],"filter":{"column":"a","op":"=","value":1}}"#,
            "--limit",
            "2",
            "-f",
            "b>3",
            "--order-by",
            "time",
            "--desc",
            "--from",
            "2026-01-01T00:00:00Z",
            "--key",
            "k",
        ]);
        let req = build_request(&cli.q).unwrap();
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            json!({"columns":["a"],"limit":2,
                   "filter":{"and":[{"column":"a","op":"=","value":1},{"column":"b","op":">","value":3}]},
                   "time_range":{"from":"2026-01-01T00:00:00Z"},"order_by":"time","descending":true})
        );
    }

    #[test]
    fn tables_are_aligned() {
        let mut out = Vec::new();
        render_table(
            &mut out,
            &["id".into(), "user".into(), "tags".into()],
            &[
                vec![json!(1), json!("ada"), json!(["a", "b"])],
                vec![json!(100), json!("line\nbreak"), json!(null)],
            ],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            " id  user         tags\n---  -----------  ---------\n  1  ada          [\"a\",\"b\"]\n100  line\\nbreak\n"
        );
        let long = cell_text(&json!("x".repeat(100)));
        assert_eq!(long.chars().count(), MAX_CELL);
        assert!(long.ends_with('…'));
    }
}
