//! The memtable's byte gauge against what the allocator really hands out for its rows: the
//! budget that makes ingest push back is only honest if the gauge tracks real memory. The test
//! counts the usable size of every live block of mimalloc (the server's allocator).
#![allow(clippy::unwrap_used, missing_docs, unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};

use alluvium_actors::memtable::Memtable;
use alluvium_actors::schema::{BatchLimits, BodyFormat, TableSchema, parse_batch};
use mimalloc::MiMalloc;

/// mimalloc, counting the bytes of the blocks it has handed out and not yet taken back.
struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);

fn usable(ptr: *const u8) -> isize {
    // SAFETY: only called with live pointers returned by MiMalloc.
    unsafe { MiMalloc.usable_size(ptr) as isize }
}

// SAFETY: every call is forwarded to MiMalloc unchanged; the counter only observes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { MiMalloc.alloc(layout) };
        if !p.is_null() {
            HELD.fetch_add(usable(p), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { MiMalloc.alloc_zeroed(layout) };
        if !p.is_null() {
            HELD.fetch_add(usable(p), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(usable(ptr), Ordering::Relaxed);
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = usable(ptr);
        let p = unsafe { MiMalloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            HELD.fetch_add(usable(p) - old, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn held() -> isize {
    HELD.load(Ordering::Relaxed)
}

/// Inserts `batches` bodies made by `body(batch)` into a fresh memtable of `schema`; returns
/// (gauge, bytes really held) for the rows inserted after the first batch (which warms up
/// per-thread state of the skiplist's epochs).
fn measure(schema: &str, batches: usize, body: impl Fn(usize) -> String) -> (f64, f64) {
    let schema: TableSchema = serde_json::from_str(schema).unwrap();
    schema.validate().unwrap();
    let m = Memtable::new(1, Arc::new(schema.clone()), 1);
    let limits = BatchLimits::default();
    let mut seq = 1;
    let mut insert = |b: usize| {
        let rows = parse_batch(body(b).as_bytes(), BodyFormat::Json, &schema, &limits).unwrap();
        for row in rows {
            m.insert(seq, 0, row);
            seq += 1;
        }
    };
    insert(0);
    let (gauge0, held0) = (m.bytes(), held());
    for b in 1..batches {
        insert(b);
    }
    let gauge = (m.bytes() - gauge0) as f64;
    let real = (held() - held0) as f64;
    println!(
        "gauge {gauge} B, held {real} B, gauge/held {:.3}",
        gauge / real
    );
    (gauge, real)
}

fn assert_close((gauge, real): (f64, f64)) {
    let ratio = gauge / real;
    assert!(
        (0.95..=1.05).contains(&ratio),
        "the gauge counts {gauge} B for {real} B really held (ratio {ratio:.3})"
    );
}

#[test]
fn the_gauge_tracks_real_memory_for_log_events() {
    let schema = r#"{"fields":[
        {"name":"id","type":"string","nullable":false},
        {"name":"ts","type":"timestamp_ms","nullable":false},
        {"name":"host","type":"string"},
        {"name":"level","type":"string"},
        {"name":"latency","type":"float64"},
        {"name":"status","type":"int64"},
        {"name":"msg","type":"string"}],
      "time_column":"ts"}"#;
    assert_close(measure(schema, 100, |b| {
        let events: Vec<String> = (0..1000)
            .map(|i| {
                let n = b * 1000 + i;
                format!(
                    r#"{{"id":"run-{n:012}","ts":{},"host":"web-0{}","level":"info","latency":{}.5,"status":200,"msg":"GET /v1/items/{n} took {} ms {}"}}"#,
                    1_795_600_000_000u64 + n as u64,
                    n % 4,
                    n % 97,
                    n % 13,
                    "x".repeat(n % 120)
                )
            })
            .collect();
        format!("[{}]", events.join(","))
    }));
}

#[test]
fn the_gauge_tracks_real_memory_for_keyed_rows_with_lists() {
    let schema = r#"{"fields":[
        {"name":"k","type":"int64","nullable":false},
        {"name":"tags","type":"list<string>"},
        {"name":"v","type":"float64"}],
      "primary_key":["k"]}"#;
    assert_close(measure(schema, 50, |b| {
        let events: Vec<String> = (0..1000)
            .map(|i| {
                let n = b * 1000 + i;
                let tags: Vec<String> = (0..n % 5).map(|t| format!("\"tag-{t}-{n}\"")).collect();
                format!(r#"{{"k":{n},"tags":[{}],"v":{n}.25}}"#, tags.join(","))
            })
            .collect();
        format!("[{}]", events.join(","))
    }));
}
