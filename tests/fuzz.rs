//! Bounded mutation fuzzing of the decoders that read bytes from outside the process: log
//! messages (the WAL record codec, as the replicated log carries it), index sidecars, ingest
//! bodies (the JSON translator), NATS subjects and signed webhook deliveries (signature
//! headers and the mapping of bodies into rows).
//!
//! Each target starts from its corpus, `tests/fuzz/<target>/` (seeds made by the encoders, and
//! every input that ever failed), runs every corpus file as a regression case, then runs
//! `ALLUVIUM_FUZZ_CASES` (default 100 000) mutations of them: bit flips, interesting bytes,
//! insertions, deletions, repeats, truncations and splices. A decoder must return an error or
//! a value that encodes back to itself; it must never panic. An input that makes it panic is
//! written to the corpus as `crash-<hash>` (commit it: it stays a regression case) and fails the
//! test with the seed to reproduce the run (`ALLUVIUM_FUZZ_SEED`). `ALLUVIUM_FUZZ_WRITE_SEEDS=1`
//! writes the encoders' seeds again.
#![allow(clippy::unwrap_used)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Instant;

use alluvium_actors::ids::{TableName, TableRef, TenantId};
use alluvium_actors::row::{Op, Row, Value};
use alluvium_actors::schema::translate::{BatchLimits, BodyFormat, parse_batch};
use alluvium_actors::schema::types::TableSchema;
use alluvium_actors::storage::index::{FileIndex, IndexBuilder};
use alluvium_actors::wal::WalRecord;
use alluvium_actors::wal::dedupe::IdempotencyKey;
use alluvium_nats::Subjects;

/// A small, fast, reproducible generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: [u8; 10] = [0, 1, 0x7f, 0x80, 0xff, b'"', b'[', b'{', b'\\', b'.'];

/// One to four mutations of `seed`, sometimes spliced with `other`.
fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let len = b.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                b[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                b[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                b.splice(at..at, bytes);
            }
            3 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(16));
                b.drain(at..at + n);
            }
            4 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(16));
                let piece = b[at..at + n].to_vec();
                b.splice(at..at, piece);
            }
            5 if len > 0 => b.truncate(rng.below(len)),
            6 if !other.is_empty() => {
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                b.truncate(cut);
                b.extend_from_slice(&other[from..]);
            }
            _ => {
                // A little-endian length or count field set to something large or zero.
                if len >= 4 {
                    let at = rng.below(len - 3);
                    let v: u32 = [0, 1, u32::MAX, 0x7fff_ffff, 1 << 20][rng.below(5)];
                    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    b
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz")
        .join(target)
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Writes the encoders' seeds when `ALLUVIUM_FUZZ_WRITE_SEEDS` is set; reads the corpus.
fn corpus(target: &str, seeds: &[Vec<u8>]) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    if std::env::var_os("ALLUVIUM_FUZZ_WRITE_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), s).unwrap();
        }
    }
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("no corpus at {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let corpus: Vec<_> = files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    assert!(!corpus.is_empty(), "the corpus {} is empty", dir.display());
    corpus
}

/// Runs the corpus, then the mutations, through `check`, which says whether the decoder
/// accepted the input (counted, to show how deep the mutations get).
fn fuzz(target: &str, seeds: &[Vec<u8>], check: impl Fn(&[u8]) -> bool) {
    let corpus = corpus(target, seeds);
    for (name, input) in &corpus {
        if catch_unwind(AssertUnwindSafe(|| check(input))).is_err() {
            panic!("{target}: corpus file {name} fails again");
        }
    }
    let cases: usize = std::env::var("ALLUVIUM_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let seed: u64 = std::env::var("ALLUVIUM_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let mut rng = Rng(seed);
    let started = Instant::now();
    // Quiet panics while fuzzing; each failing input is reported once, below.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut failure = None;
    let mut accepted = 0usize;
    for case in 0..cases {
        let (_, a) = &corpus[rng.below(corpus.len())];
        let (_, b) = &corpus[rng.below(corpus.len())];
        let input = mutate(&mut rng, a, b);
        match catch_unwind(AssertUnwindSafe(|| check(&input))) {
            Ok(ok) => accepted += usize::from(ok),
            Err(e) => {
                let what = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failure = Some((case, input, what));
                break;
            }
        }
    }
    std::panic::set_hook(hook);
    if let Some((case, input, what)) = failure {
        let path = corpus_dir(target).join(format!("crash-{:016x}", fnv(&input)));
        std::fs::write(&path, &input).unwrap();
        panic!(
            "{target}: case {case} of ALLUVIUM_FUZZ_SEED={seed} failed ({what}); the input is in {}",
            path.display()
        );
    }
    eprintln!(
        "{target}: {} corpus files and {cases} mutations ({accepted} accepted) in {:?} \
         (ALLUVIUM_FUZZ_SEED={seed})",
        corpus.len(),
        started.elapsed()
    );
}

fn record(rows: Vec<Row>, key: Option<&str>) -> WalRecord {
    WalRecord {
        table: TableRef::new(
            TenantId::new("acme").unwrap(),
            TableName::new("clicks").unwrap(),
        ),
        schema_version: 2,
        first_seq: 1000,
        ingested_at_us: 1_764_547_200_000_000,
        rows,
        idempotency_key: key.map(|k| IdempotencyKey {
            key: k.into(),
            body_hash: 0xfeed,
        }),
    }
}

/// Sets the checksum of a log message to match its bytes, so that mutations reach the record
/// decoder behind it.
fn fix_checksum(msg: &mut [u8]) {
    if msg.len() >= 9 {
        let crc = crc32fast::hash(&msg[9..]);
        msg[5..9].copy_from_slice(&crc.to_le_bytes());
    }
}

#[test]
fn log_messages() {
    let row = |op, values| Row { op, values };
    let seeds = vec![
        record(vec![], None).encode_message(),
        record(
            vec![row(
                Op::Upsert,
                vec![Value::Int(7), Value::Str("a".into()), Value::Null],
            )],
            Some("batch-1"),
        )
        .encode_message(),
        record(
            vec![
                row(
                    Op::Upsert,
                    vec![
                        Value::Bool(true),
                        Value::UInt(u64::MAX),
                        Value::Float(-0.5),
                        Value::Bytes(vec![0, 255]),
                        Value::Timestamp(-1),
                        Value::Date(19_000),
                        Value::List(vec![Value::Int(1), Value::Null]),
                    ],
                ),
                row(Op::Delete, vec![Value::Str("gone".into())]),
            ],
            None,
        )
        .encode_message(),
    ];
    fuzz("log_message", &seeds, |input| {
        let mut fixed = input.to_vec();
        fix_checksum(&mut fixed);
        let mut accepted = false;
        for bytes in [input, &fixed[..]] {
            if let Ok(r) = WalRecord::decode_message(bytes) {
                accepted = true;
                // Compared as bytes: a NaN float is not equal to itself.
                let encoded = r.encode_message();
                let again = WalRecord::decode_message(&encoded).unwrap();
                assert!(
                    again.encode_message() == encoded,
                    "a decoded record does not encode back to itself"
                );
            }
        }
        accepted
    });
}

fn sample_index() -> Vec<Vec<u8>> {
    use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
    use std::sync::Arc;
    let mut b = IndexBuilder::new(vec![("id".into(), 0), ("tag".into(), 1)], 2);
    let ids: ArrayRef = Arc::new(Int64Array::from(vec![
        Some(1),
        Some(2),
        None,
        Some(4),
        Some(5),
    ]));
    let tags: ArrayRef = Arc::new(StringArray::from(vec![
        Some("a"),
        Some("b"),
        Some("a"),
        None,
        Some("long tag value"),
    ]));
    b.observe(&RecordBatch::try_from_iter([("id", ids), ("tag", tags)]).unwrap());
    let full = b.finish(&[2, 2, 1]).unwrap().encode();
    let mut one = IndexBuilder::new(vec![("id".into(), 0)], 10);
    let ids: ArrayRef = Arc::new(Int64Array::from(vec![Some(9)]));
    one.observe(&RecordBatch::try_from_iter([("id", ids)]).unwrap());
    vec![full, one.finish(&[1]).unwrap().encode()]
}

/// An index sidecar's header: magic (8 bytes), version (2), reserved (2), checksum (4, at 12)
/// and body length (8, at 16).
const INDEX_HEADER_LEN: usize = 24;

#[test]
fn index_sidecars() {
    fuzz("index_sidecar", &sample_index(), |input| {
        // Half the inputs get a header that matches their body (length and checksum), so that
        // mutations reach the body decoder behind it.
        let mut fixed = input.to_vec();
        if fixed.len() >= INDEX_HEADER_LEN {
            let body = (fixed.len() - INDEX_HEADER_LEN) as u64;
            fixed[16..24].copy_from_slice(&body.to_le_bytes());
            let crc = crc32fast::hash(&fixed[INDEX_HEADER_LEN..]);
            fixed[12..16].copy_from_slice(&crc.to_le_bytes());
        }
        let input: &[u8] = if fnv(input).is_multiple_of(2) {
            input
        } else {
            &fixed
        };
        if let Ok(ix) = FileIndex::decode(input) {
            let bytes = ix.encode();
            let again = FileIndex::decode(&bytes).unwrap();
            assert_eq!(
                again.encode(),
                bytes,
                "a decoded index does not encode back"
            );
            return true;
        }
        false
    });
}

#[test]
fn ingest_bodies() {
    let schema: TableSchema = serde_json::from_value(serde_json::json!({
        "fields": [
            {"name": "id", "type": "int64", "nullable": false},
            {"name": "name", "type": "string"},
            {"name": "score", "type": "float64"},
            {"name": "ok", "type": "bool"},
            {"name": "ts", "type": "timestamp_ms"},
            {"name": "day", "type": "date"},
            {"name": "raw", "type": "binary"},
            {"name": "tags", "type": "list<string>"},
            {"name": "small", "type": "int32"},
            {"name": "big", "type": "uint64"}
        ],
        "primary_key": ["id"]
    }))
    .unwrap();
    let limits = BatchLimits {
        max_rows: 1000,
        max_depth: 8,
    };
    let seeds: Vec<Vec<u8>> = [
        r#"{"id": 1}"#,
        r#"[{"id": 1, "name": "a", "score": 1.5, "ok": true}, {"id": 2, "_op": "delete"}]"#,
        r#"{"id": 3, "ts": "2026-11-25T10:00:00.123Z", "day": "2026-11-25", "raw": "AAEC", "tags": ["x", "y"], "small": -5, "big": 18446744073709551615}"#,
        "{\"id\": 4, \"name\": \"\\u00e9\\n\"}\n{\"id\": 5, \"ts\": 1764547200000}\n",
        r#"{"id": 6, "score": 1e308, "name": null, "tags": []}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    fuzz("ingest_body", &seeds, |input| {
        let mut accepted = false;
        for format in [BodyFormat::Json, BodyFormat::Ndjson] {
            if let Ok(rows) = parse_batch(input, format, &schema, &limits) {
                accepted = true;
                assert!(!rows.is_empty() && rows.len() <= limits.max_rows);
                for r in &rows {
                    assert_eq!(
                        r.values.len(),
                        schema.fields.len(),
                        "a row of the wrong width"
                    );
                }
            }
        }
        accepted
    });
}

#[test]
fn nats_subjects() {
    let subjects = Subjects::new("alluvium").unwrap();
    let seeds: Vec<Vec<u8>> = [
        "alluvium.ingest.acme.clicks",
        "alluvium.events.acme.clicks.flushed",
        "alluvium.events.acme.clicks.compacted",
        "alluvium.ingest.acme.clicks.extra",
        "alluvium.ingest.a b.c",
        "alluvium.events.*.>.schema",
        "alluvium.ingest.acme.",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let bad = |c: char| c == '.' || c == '*' || c == '>' || c.is_whitespace() || c.is_control();
    fuzz("nats_subject", &seeds, |input| {
        let Ok(subject) = std::str::from_utf8(input) else {
            return false;
        };
        let ingest = subjects.parse_ingest(subject);
        if let Some((tenant, table)) = ingest {
            for token in [tenant, table] {
                assert!(!token.is_empty() && !token.contains(bad), "token {token:?}");
            }
            assert_eq!(subject, subjects.ingest(tenant, table).unwrap());
        }
        let events = subjects.parse_events(subject);
        if let Some((tenant, table, kind)) = events {
            for token in [tenant, table] {
                assert!(!token.is_empty() && !token.contains(bad), "token {token:?}");
            }
            assert_eq!(subject, subjects.events(tenant, table, kind).unwrap());
        }
        ingest.is_some() || events.is_some()
    });
}

#[test]
fn webhook_deliveries() {
    use alluvium_pipelines::notification::webhooks::hmac_sha256_hex;
    use alluvium_pipelines::sources::webhook::{
        DEFAULT_MAX_BODY, Delivery, Hook, HookConfig, HookError, Scheme, SignatureEncoding,
    };
    const SECRET: &str = "fuzz-secret-0123456789abcdef";
    const NOW: u64 = 1_800_000_000;
    let hook = |scheme, fields: &[(&str, &str)], body_column: Option<&str>| {
        Hook::new(HookConfig {
            name: "fuzz".into(),
            tenant: "acme".into(),
            table: "t".into(),
            scheme,
            secrets: vec![SECRET.into()],
            tolerance: std::time::Duration::from_secs(300),
            max_body: DEFAULT_MAX_BODY,
            signature_header: None,
            signature_prefix: None,
            encoding: SignatureEncoding::Hex,
            timestamp_header: None,
            body_column: body_column.map(str::to_string),
            fields: fields
                .iter()
                .map(|(c, p)| (c.to_string(), p.to_string()))
                .collect(),
            headers: [("event".to_string(), "X-Event".to_string())].into(),
        })
        .unwrap()
    };
    let stripe = hook(Scheme::Stripe, &[], None);
    let slack = hook(
        Scheme::Slack,
        &[("id", "/event_id"), ("n", "/a/0/b")],
        Some("raw"),
    );
    let sign = |message: &[&[u8]]| hmac_sha256_hex(SECRET.as_bytes(), message);
    // An input is `<Stripe-Signature value>\n<body>`.
    let seeds: Vec<Vec<u8>> = [
        r#"{"id":"evt_1","type":"invoice.paid","data":{"object":{"amount_paid":2000}}}"#,
        r#"[{"event_id":"Ev1","a":[{"b":1}]},{"x":null}]"#,
        r#"{"type":"url_verification","challenge":"abc"}"#,
        "not json at all",
    ]
    .iter()
    .map(|body| {
        let t = NOW.to_string();
        let header = format!("t={t},v1={}", sign(&[t.as_bytes(), b".", body.as_bytes()]));
        format!("{header}\n{body}").into_bytes()
    })
    .collect();
    fuzz("webhook_delivery", &seeds, |input| {
        let split = input
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(input.len());
        let header = String::from_utf8_lossy(&input[..split]).into_owned();
        let body = input.get(split + 1..).unwrap_or_default();
        // The header as the mutation left it: any answer but a panic.
        let as_sent = stripe.receive(&[("Stripe-Signature", header.as_str())][..], body, NOW);
        // Correctly signed: only the body can be wrong, and accepted rows are what they say.
        let t = NOW.to_string();
        let good = format!("t={t},v1={}", sign(&[t.as_bytes(), b".", body]));
        let ts = NOW.to_string();
        let slack_sig = format!("v0={}", sign(&[b"v0:", ts.as_bytes(), b":", body]));
        let mut accepted = as_sent.is_ok();
        for result in [
            stripe.receive(
                &[("Stripe-Signature", good.as_str()), ("X-Event", "e")][..],
                body,
                NOW,
            ),
            slack.receive(
                &[
                    ("X-Slack-Signature", slack_sig.as_str()),
                    ("X-Slack-Request-Timestamp", ts.as_str()),
                ][..],
                body,
                NOW,
            ),
        ] {
            match result {
                Ok(Delivery::Rows {
                    body: rows,
                    rows: n,
                    idempotency_key,
                }) => {
                    let parsed: Vec<serde_json::Value> = serde_json::from_slice(&rows).unwrap();
                    assert_eq!(parsed.len(), n);
                    assert!(parsed.iter().all(serde_json::Value::is_object));
                    assert!(idempotency_key.starts_with("hook:fuzz:"));
                    accepted = true;
                }
                Ok(Delivery::Answer(a)) => assert!(a.is_object()),
                Err(HookError::Body(_)) => {}
                Err(e) => panic!("a correctly signed delivery was refused: {e}"),
            }
        }
        accepted
    });
}
