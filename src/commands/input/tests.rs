#![allow(clippy::unwrap_used)]

use super::csv_rows::infer;
use super::*;
use serde_json::Value;

use crate::client::{FieldType, Schema, TimeUnit};

fn all_rows(r: &mut dyn RowReader) -> anyhow::Result<Vec<(u64, String)>> {
    let mut rows = Vec::new();
    loop {
        let mut out = Vec::new();
        match r.next_row(&mut out)? {
            Some(line) => rows.push((line, String::from_utf8(out).unwrap())),
            None => return Ok(rows),
        }
    }
}

#[test]
fn formats_are_resolved_by_extension_then_content() {
    let p = |s: &str| Some(Path::new(s).to_path_buf());
    assert_eq!(
        resolve(Format::Auto, p("a.ndjson").as_deref(), b"", None),
        Resolved::Ndjson
    );
    assert_eq!(
        resolve(Format::Auto, p("a.jsonl").as_deref(), b"[", None),
        Resolved::Ndjson
    );
    assert_eq!(
        resolve(Format::Auto, p("a.csv").as_deref(), b"{", None),
        Resolved::Csv(b',')
    );
    assert_eq!(
        resolve(Format::Auto, p("a.TSV").as_deref(), b"", None),
        Resolved::Csv(b'\t')
    );
    assert_eq!(
        resolve(Format::Auto, p("a.json").as_deref(), b"  \n[{", None),
        Resolved::JsonArray
    );
    assert_eq!(
        resolve(Format::Auto, p("a.json").as_deref(), b"{\"a\":1}\n", None),
        Resolved::Ndjson
    );
    assert_eq!(
        resolve(Format::Auto, None, b"id,name\n", None),
        Resolved::Csv(b',')
    );
    assert_eq!(
        resolve(Format::Csv, None, b"[", Some(b';')),
        Resolved::Csv(b';')
    );
    assert_eq!(
        resolve(Format::Json, p("a.csv").as_deref(), b"", None),
        Resolved::JsonArray
    );
}

#[test]
fn ndjson_rows_lines_and_resume() {
    let text = "{\"a\":1}\n\n  {\"a\":2}  \r\n{\"a\":3}";
    let mut r = NdjsonReader::new(text.as_bytes(), Position::default());
    let mut first = Vec::new();
    assert_eq!(r.next_row(&mut first).unwrap(), Some(1));
    let after_first = r.position();
    assert_eq!(
        after_first,
        Position {
            byte: 8,
            line: 1,
            record: 1
        }
    );
    let rest = all_rows(&mut r).unwrap();
    assert_eq!(rest, vec![(3, "{\"a\":2}".into()), (4, "{\"a\":3}".into())]);
    assert_eq!(r.position().byte, text.len() as u64);
    // Resuming at the position after the first row reads the same rest.
    let mut again = NdjsonReader::new(&text.as_bytes()[after_first.byte as usize..], after_first);
    assert_eq!(all_rows(&mut again).unwrap(), rest);
}

#[test]
fn json_arrays_stream_element_by_element() {
    let text =
        "[\n  {\"a\": 1,\n   \"s\": \"x, ]}\\\" \\n y\"},\n  {\"b\": [1, {\"c\": 2}]} ,{}\n]\n";
    let mut r = JsonArrayReader::new(text.as_bytes(), Position::default());
    let mut out = Vec::new();
    assert_eq!(r.next_row(&mut out).unwrap(), Some(2));
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "{\"a\": 1,    \"s\": \"x, ]}\\\" \\n y\"}"
    );
    let pos = r.position();
    let rest = all_rows(&mut r).unwrap();
    assert_eq!(
        rest,
        vec![(4, "{\"b\": [1, {\"c\": 2}]}".into()), (4, "{}".into())]
    );
    for (_, row) in &rest {
        serde_json::from_str::<Value>(row).unwrap();
    }
    // Resuming after the first element.
    let mut again = JsonArrayReader::new(&text.as_bytes()[pos.byte as usize..], pos);
    assert_eq!(all_rows(&mut again).unwrap(), rest);
    // Empty arrays and empty input have no rows.
    assert!(
        all_rows(&mut JsonArrayReader::new(
            &b" [ ] "[..],
            Position::default()
        ))
        .unwrap()
        .is_empty()
    );
    assert!(
        all_rows(&mut JsonArrayReader::new(&b""[..], Position::default()))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn malformed_json_arrays_are_refused_with_their_line() {
    for (text, what) in [
        ("{\"a\":1}", "must start with '['"),
        ("[{\"a\":1},]", "trailing commas"),
        ("[{\"a\":1}\n{\"a\":2}]", "line 2: expected ','"),
        ("[{\"a\":1}", "before the array is closed"),
        (
            "[{\"a\":\n1",
            "line 1: the element starting here is not closed",
        ),
        ("[{\"a\":\"x\ny\"}]", "line break inside a string"),
        ("[{}] x", "after the end"),
    ] {
        let e = all_rows(&mut JsonArrayReader::new(
            text.as_bytes(),
            Position::default(),
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains(what), "{text:?}: {e}");
    }
}

fn schema() -> Schema {
    Schema::new()
        .required("id", FieldType::Int64)
        .field("small", FieldType::Int32)
        .field("ok", FieldType::Bool)
        .field("score", FieldType::Float64)
        .field("ts", FieldType::Timestamp(TimeUnit::Millisecond))
        .field("day", FieldType::Date)
        .field("tags", FieldType::List(Box::new(FieldType::String)))
        .field("name", FieldType::String)
}

#[test]
fn csv_cells_become_the_fields_types() {
    let text = "id,small,ok,score,ts,day,tags,name,extra\n\
                1,2,yes,1.5,2026-01-31T12:00:00Z,2026-01-31,\"[\"\"a\"\"]\",\" ada \",007\n\
                2,,false,3,1700000000000,19000,[],,4.5\n\
                3,-7,T,-0.25,,,,\"x,\n y\",true\n";
    let reader = csv::ReaderBuilder::new().from_reader(text.as_bytes());
    let mut r = CsvReader::new(reader, Some(&schema())).unwrap();
    let rows = all_rows(&mut r).unwrap();
    let values: Vec<Value> = rows
        .iter()
        .map(|(_, r)| serde_json::from_str(r).unwrap())
        .collect();
    assert_eq!(
        values[0],
        serde_json::json!({"id":1,"small":2,"ok":true,"score":1.5,"ts":"2026-01-31T12:00:00Z",
            "day":"2026-01-31","tags":["a"],"name":" ada ","extra":"007"})
    );
    assert_eq!(
        values[1],
        serde_json::json!({"id":2,"small":null,"ok":false,"score":3.0,"ts":1700000000000i64,
            "day":19000,"tags":[],"name":null,"extra":4.5})
    );
    assert_eq!(values[2]["name"], "x,\n y");
    assert_eq!(values[2]["extra"], true);
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), [2, 3, 4]);
    // Every row is one line.
    assert!(rows.iter().all(|(_, r)| !r.contains('\n')));
}

#[test]
fn unconvertible_cells_name_their_line_and_column() {
    for (row, what) in [
        (
            "x,1",
            "line 3, column 1 (\"id\"): \"x\" is not an integer (int64)",
        ),
        (
            "1,3000000000",
            "line 3, column 2 (\"small\"): \"3000000000\" is out of the range of int32",
        ),
        ("1,2,maybe", "column 3 (\"ok\"): \"maybe\" is not a bool"),
        (
            "1,2,true,NaN",
            "column 4 (\"score\"): \"NaN\" is not a finite number",
        ),
        (
            "1,2,true,1,yesterday",
            "column 5 (\"ts\"): \"yesterday\" is not a timestamp",
        ),
        (
            "1,2,true,1,0,31/01/2026",
            "column 6 (\"day\"): \"31/01/2026\" is not a date",
        ),
        (
            "1,2,true,1,0,0,a;b",
            "column 7 (\"tags\"): \"a;b\" is not a JSON array",
        ),
    ] {
        let text = format!(
            "id,small,ok,score,ts,day,tags\n1,1,true,1,0,0,[]\n{row}{}\n",
            ",".repeat(6 - row.matches(',').count())
        );
        let reader = csv::ReaderBuilder::new().from_reader(text.as_bytes());
        let mut r = CsvReader::new(reader, Some(&schema())).unwrap();
        let e = all_rows(&mut r).unwrap_err().to_string();
        assert!(e.contains(what), "{row}: {e}");
    }
    // A record with a wrong number of cells.
    let reader = csv::ReaderBuilder::new().from_reader(&b"a,b\n1,2\n3\n"[..]);
    let e = all_rows(&mut CsvReader::new(reader, None).unwrap()).unwrap_err();
    assert!(format!("{e:#}").contains("line: 3"), "{e:#}");
    // Bad headers.
    let reader = csv::ReaderBuilder::new().from_reader(&b"a,a\n"[..]);
    assert!(CsvReader::new(reader, None).is_err());
}

#[test]
fn csv_resumes_at_a_position() {
    let text = "\u{feff}id,name\n1,a\n2,\"b\nb\"\n3,c\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.csv");
    std::fs::write(&path, text).unwrap();
    let open = || {
        let f = std::fs::File::open(&path).unwrap();
        CsvReader::new(csv::ReaderBuilder::new().from_reader(f), None).unwrap()
    };
    let mut r = open();
    assert_eq!(r.columns().collect::<Vec<_>>(), ["id", "name"]);
    let mut out = Vec::new();
    assert_eq!(r.next_row(&mut out).unwrap(), Some(2));
    assert_eq!(String::from_utf8(out).unwrap(), "{\"id\":1,\"name\":\"a\"}");
    let pos = r.position();
    let rest = all_rows(&mut r).unwrap();
    assert_eq!(rest.iter().map(|r| r.0).collect::<Vec<_>>(), [3, 5]);
    let mut again = open();
    again.seek(pos).unwrap();
    assert_eq!(all_rows(&mut again).unwrap(), rest);
}

#[test]
fn inference_keeps_what_does_not_look_like_a_number() {
    let run = |cell: &str| {
        let mut out = Vec::new();
        infer(cell, cell.trim(), &mut out);
        String::from_utf8(out).unwrap()
    };
    assert_eq!(run("42"), "42");
    assert_eq!(run("-3"), "-3");
    assert_eq!(run("0"), "0");
    assert_eq!(run("0.5"), "0.5");
    assert_eq!(run("1e3"), "1000.0");
    assert_eq!(run("007"), "\"007\"");
    assert_eq!(run("99999999999999999999"), "\"99999999999999999999\"");
    assert_eq!(run("1-2"), "\"1-2\"");
    assert_eq!(run("abc"), "\"abc\"");
    assert_eq!(run("True"), "\"True\"");
}
