//! Tests of secondary index sidecars (the `tests` module of `index.rs`).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use proptest::prelude::*;

use super::*;

fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
    RecordBatch::try_from_iter(columns).unwrap()
}

fn ints(values: &[Option<i64>]) -> ArrayRef {
    Arc::new(Int64Array::from(values.to_vec()))
}

fn strs(values: &[Option<&str>]) -> ArrayRef {
    Arc::new(StringArray::from(values.to_vec()))
}

fn key(v: Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode_key_value(&v, &mut out);
    out
}

fn int_key(i: i64) -> Vec<u8> {
    key(Value::Int(i))
}

fn str_key(s: &str) -> Vec<u8> {
    key(Value::Str(s.into()))
}

/// Row-group counts of a file of `rows` rows cut every `per_group` rows.
fn groups_of(rows: u64, per_group: u64) -> Vec<u64> {
    let mut out = vec![per_group; (rows / per_group) as usize];
    if !rows.is_multiple_of(per_group) {
        out.push(rows % per_group);
    }
    out
}

/// An index of 11 rows in groups of 3 (`[3, 3, 3, 2]`), fed as batches of 2, 4 and 5 rows:
///
/// ```text
/// row    0 1 | 2 3 4 5 | 6 7 8 9 10
/// group  0 0 | 0 1 1 1 | 2 2 2 3 3
/// id     1 2 | 3 1 4 5 | 6 7 1 8 9
/// tag    a b | a - c c | - d d a -
/// ```
fn sample() -> FileIndex {
    let mut b = IndexBuilder::new(vec![("id".into(), 0), ("tag".into(), 1)], 3);
    b.observe(&batch(vec![
        ("id", ints(&[Some(1), Some(2)])),
        ("tag", strs(&[Some("a"), Some("b")])),
    ]));
    b.observe(&batch(vec![
        ("id", ints(&[Some(3), Some(1), Some(4), Some(5)])),
        ("tag", strs(&[Some("a"), None, Some("c"), Some("c")])),
    ]));
    b.observe(&batch(vec![
        ("id", ints(&[Some(6), Some(7), Some(1), Some(8), Some(9)])),
        ("tag", strs(&[None, Some("d"), Some("d"), Some("a"), None])),
    ]));
    b.finish(&[3, 3, 3, 2]).unwrap()
}

/// A sidecar around `body`, with a valid checksum.
fn wrap(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(INDEX_MAGIC);
    out.extend_from_slice(&INDEX_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// A body of one row group and one column `c` holding `values` in the given order, each in
/// row group 0.
fn body_with_values(values: &[&[u8]]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&1u32.to_le_bytes());
    body.extend_from_slice(&1u32.to_le_bytes());
    body.extend_from_slice(&1u16.to_le_bytes());
    body.push(b'c');
    body.extend_from_slice(&(values.len() as u32).to_le_bytes());
    for v in values {
        body.extend_from_slice(&(v.len() as u32).to_le_bytes());
        body.extend_from_slice(v);
        body.push(1);
    }
    body
}

fn malformed(bytes: &[u8]) -> String {
    match FileIndex::decode(bytes) {
        Err(e @ IndexError::Malformed { .. }) => e.to_string(),
        other => panic!("expected a malformed error, got {other:?}"),
    }
}

#[test]
fn sidecar_sits_next_to_its_data_file() {
    assert_eq!(
        sidecar_path("t/acme/clicks/data/p=1/00ab.parquet"),
        "t/acme/clicks/data/p=1/00ab.index"
    );
    assert_eq!(sidecar_path("x"), "x.index");
    assert_eq!(sidecar_path("x.parquet.tmp"), "x.parquet.tmp.index");
}

#[test]
fn encoding_round_trips() {
    let index = sample();
    let bytes = index.encode();
    assert_eq!(&bytes[..8], INDEX_MAGIC);
    let back = FileIndex::decode(&bytes).unwrap();
    assert_eq!(back, index);
    assert_eq!(back.encode(), bytes);
    assert_eq!(back.columns(), vec!["id", "tag"]);
    assert_eq!(back.row_groups(), 4);
}

#[test]
fn probes_find_the_row_groups_of_their_values() {
    let index = sample();
    let id = |probes: &[i64]| {
        let keys: Vec<Vec<u8>> = probes.iter().map(|&i| int_key(i)).collect();
        index.row_groups_for("id", &keys).unwrap()
    };
    assert_eq!(id(&[1]), vec![0, 1, 2]);
    assert_eq!(id(&[3]), vec![0]);
    assert_eq!(id(&[5]), vec![1]);
    assert_eq!(id(&[8, 9]), vec![3]);
    assert_eq!(id(&[9, 2, 9]), vec![0, 3]);
    assert_eq!(id(&[42]), Vec::<usize>::new());
    assert_eq!(id(&[]), Vec::<usize>::new());
    let tag = |probes: &[&str]| {
        let keys: Vec<Vec<u8>> = probes.iter().map(|s| str_key(s)).collect();
        index.row_groups_for("tag", &keys).unwrap()
    };
    assert_eq!(tag(&["a"]), vec![0, 3]);
    assert_eq!(tag(&["c"]), vec![1]);
    assert_eq!(tag(&["d"]), vec![2]);
    assert_eq!(tag(&["b", "c"]), vec![0, 1]);
    assert_eq!(index.row_groups_for("nope", &[int_key(1)]), None);
}

#[test]
fn int32_and_int64_values_probe_alike() {
    let build = |array: ArrayRef| {
        let mut b = IndexBuilder::new(vec![("n".into(), 0)], 2);
        b.observe(&batch(vec![("n", array)]));
        b.finish(&[2, 1]).unwrap()
    };
    let narrow = build(Arc::new(Int32Array::from(vec![-7, 300, -7])));
    let wide = build(Arc::new(Int64Array::from(vec![-7i64, 300, -7])));
    assert_eq!(narrow.encode(), wide.encode());
    assert_eq!(
        narrow.row_groups_for("n", &[int_key(-7)]).unwrap(),
        vec![0, 1]
    );
    assert_eq!(
        narrow.row_groups_for("n", &[int_key(300)]).unwrap(),
        vec![0]
    );
}

#[test]
fn nulls_are_not_indexed() {
    let mut b = IndexBuilder::new(vec![("s".into(), 0), ("empty".into(), 1)], 4);
    b.observe(&batch(vec![
        ("s", strs(&[None, Some("x"), None])),
        ("empty", strs(&[None, None, None])),
    ]));
    let index = b.finish(&[3]).unwrap();
    assert_eq!(index.columns(), vec!["s", "empty"]);
    assert_eq!(index.columns[0].len(), 1);
    assert_eq!(
        index.row_groups_for("s", &[key(Value::Null)]).unwrap(),
        Vec::<usize>::new()
    );
    assert_eq!(index.row_groups_for("s", &[str_key("x")]).unwrap(), vec![0]);
    // A column without values proves that no row of the file matches any probe.
    assert_eq!(
        index.row_groups_for("empty", &[str_key("x")]).unwrap(),
        Vec::<usize>::new()
    );
}

#[test]
fn too_many_distinct_values_drop_the_column() {
    let mut b =
        IndexBuilder::new(vec![("many".into(), 0), ("few".into(), 1)], 10).with_max_values(3);
    b.observe(&batch(vec![
        ("many", ints(&[Some(1), Some(2), Some(3), Some(1)])),
        ("few", ints(&[Some(1), Some(1), Some(2), Some(3)])),
    ]));
    // Exactly at the limit: still indexed.
    assert_eq!(b.columns[0].values.as_ref().unwrap().len(), 3);
    b.observe(&batch(vec![
        ("many", ints(&[Some(4)])),
        ("few", ints(&[Some(2)])),
    ]));
    // Past it: the map is freed.
    assert!(b.columns[0].values.is_none());
    let index = b.finish(&[5]).unwrap();
    assert_eq!(index.columns(), vec!["few"]);
    assert_eq!(index.row_groups_for("many", &[int_key(1)]), None);

    let mut b = IndexBuilder::new(vec![("many".into(), 0)], 10).with_max_values(1);
    b.observe(&batch(vec![("many", ints(&[Some(1), Some(2)]))]));
    assert_eq!(b.finish(&[2]), None, "no column left");
}

#[test]
fn unsupported_or_missing_columns_are_dropped() {
    let mut b = IndexBuilder::new(
        vec![("f".into(), 0), ("gone".into(), 7), ("i".into(), 1)],
        10,
    );
    b.observe(&batch(vec![
        (
            "f",
            Arc::new(Float64Array::from(vec![1.5, 2.5])) as ArrayRef,
        ),
        ("i", ints(&[Some(1), None])),
    ]));
    let index = b.finish(&[2]).unwrap();
    assert_eq!(index.columns(), vec!["i"]);
}

#[test]
fn finish_refuses_row_groups_other_than_assumed() {
    let build = || {
        let mut b = IndexBuilder::new(vec![("n".into(), 0)], 3);
        b.observe(&batch(vec![("n", ints(&[Some(1); 5]))]));
        b.observe(&batch(vec![("n", ints(&[Some(2); 6]))]));
        b
    };
    assert!(build().finish(&[3, 3, 3, 2]).is_some());
    for wrong in [
        &[][..],
        &[11],
        &[3, 3, 5],
        &[3, 3, 3, 3],
        &[3, 3, 3, 1],
        &[4, 4, 3],
        &[3, 3, 3, 2, 0],
        &[2, 3, 3, 3],
        &[u64::MAX, 12],
    ] {
        assert_eq!(build().finish(wrong), None, "{wrong:?}");
    }
    // A file without rows has no row groups.
    let empty = IndexBuilder::new(vec![("n".into(), 0)], 3);
    assert_eq!(empty.finish(&[]).unwrap().row_groups(), 0);
    assert_eq!(
        IndexBuilder::new(vec![("n".into(), 0)], 3).finish(&[0]),
        None
    );
}

#[test]
fn strings_with_zero_bytes_stay_distinct() {
    let values = ["a\0b", "a", "a\0", "", "\0", "a\0b"];
    let mut b = IndexBuilder::new(vec![("s".into(), 0), ("b".into(), 1)], 2);
    b.observe(&batch(vec![
        (
            "s",
            Arc::new(StringArray::from(values.to_vec())) as ArrayRef,
        ),
        (
            "b",
            Arc::new(BinaryArray::from_iter_values(
                values.iter().map(|s| s.as_bytes()),
            )),
        ),
    ]));
    let index = FileIndex::decode(&b.finish(&[2, 2, 2]).unwrap().encode()).unwrap();
    assert_eq!(index.columns[0].len(), 5);
    let s = |v: &str| index.row_groups_for("s", &[str_key(v)]).unwrap();
    assert_eq!(s("a\0b"), vec![0, 2]);
    assert_eq!(s("a"), vec![0]);
    assert_eq!(s("a\0"), vec![1]);
    assert_eq!(s(""), vec![1]);
    assert_eq!(s("\0"), vec![2]);
    assert_eq!(s("a\0\0"), Vec::<usize>::new());
    let bytes = |v: &str| {
        let probe = key(Value::Bytes(v.as_bytes().to_vec()));
        index.row_groups_for("b", &[probe]).unwrap()
    };
    assert_eq!(bytes("a\0"), vec![1]);
    assert_eq!(bytes("a\0b"), vec![0, 2]);
}

#[test]
fn many_row_groups_span_several_bitmap_bytes() {
    let rows: Vec<Option<i64>> = (0..40).map(|r| Some(r % 7)).collect();
    let mut b = IndexBuilder::new(vec![("n".into(), 0)], 2);
    b.observe(&batch(vec![("n", ints(&rows))]));
    let index = FileIndex::decode(&b.finish(&groups_of(40, 2)).unwrap().encode()).unwrap();
    assert_eq!(index.row_groups(), 20);
    let expected: Vec<usize> = (0..40).filter(|r| r % 7 == 3).map(|r| r / 2).collect();
    assert_eq!(index.row_groups_for("n", &[int_key(3)]).unwrap(), expected);
}

#[test]
fn memory_size_counts_the_values() {
    let index = sample();
    let held: usize = index
        .columns
        .iter()
        .map(|c| c.data.len() + c.bitmaps.len())
        .sum();
    assert!(index.memory_size() > held);
    assert!(format!("{index:?}").contains("values: 9"));
}

#[test]
fn decode_rejects_bad_magic() {
    let mut bytes = sample().encode();
    bytes[0] = b'P';
    let err = FileIndex::decode(&bytes).unwrap_err();
    assert!(matches!(err, IndexError::BadMagic { .. }), "{err:?}");
    assert!(err.to_string().contains("PLVINDEX"), "{err}");
}

#[test]
fn decode_rejects_a_future_version() {
    let mut bytes = sample().encode();
    bytes[8..10].copy_from_slice(&2u16.to_le_bytes());
    let err = FileIndex::decode(&bytes).unwrap_err();
    assert!(
        matches!(
            err,
            IndexError::UnsupportedVersion {
                found: 2,
                supported: 1
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "unsupported index format version 2 (this build reads version 1)"
    );
}

#[test]
fn decode_rejects_any_flipped_body_bit() {
    let bytes = sample().encode();
    for at in HEADER_LEN..bytes.len() {
        let mut bad = bytes.clone();
        bad[at] ^= 0x10;
        let err = FileIndex::decode(&bad).unwrap_err();
        assert!(
            matches!(err, IndexError::ChecksumMismatch { .. }),
            "byte {at}: {err:?}"
        );
    }
    let mut bad = bytes.clone();
    bad[CRC_AT.start] ^= 1;
    assert!(matches!(
        FileIndex::decode(&bad),
        Err(IndexError::ChecksumMismatch { .. })
    ));
}

#[test]
fn decode_rejects_every_truncation() {
    let bytes = sample().encode();
    for len in 0..bytes.len() {
        let err = FileIndex::decode(&bytes[..len]).unwrap_err();
        assert!(
            matches!(err, IndexError::Truncated { .. }),
            "prefix of {len}: {err:?}"
        );
    }
    let err = FileIndex::decode(&bytes[..30]).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "index truncated at byte 24: the body needs {} bytes but 6 remain",
            bytes.len() - 24
        )
    );
}

#[test]
fn decode_rejects_trailing_bytes() {
    let mut bytes = sample().encode();
    bytes.push(0);
    assert!(malformed(&bytes).contains("1 bytes follow the body"));
    // Also when the header counts them, so the checksum covers them.
    let mut body = body_with_values(&[b"a"]);
    body.extend_from_slice(b"xy");
    assert!(malformed(&wrap(&body)).contains("2 bytes follow the last column"));
}

#[test]
fn decode_rejects_unsorted_or_repeated_values() {
    assert!(FileIndex::decode(&wrap(&body_with_values(&[b"a", b"b"]))).is_ok());
    let err = malformed(&wrap(&body_with_values(&[b"b", b"a"])));
    assert!(err.contains("strictly increasing"), "{err}");
    let err = malformed(&wrap(&body_with_values(&[b"a", b"c", b"c"])));
    assert!(err.contains("value 2 of column \"c\""), "{err}");
    // The empty value sorts first.
    assert!(malformed(&wrap(&body_with_values(&[b"a", b""]))).contains("strictly"));
}

#[test]
fn decode_rejects_other_broken_rules() {
    // Bits past the last row group.
    let mut body = body_with_values(&[b"a"]);
    *body.last_mut().unwrap() = 0b10;
    assert!(malformed(&wrap(&body)).contains("past the 1 of the file"));
    // A column named twice.
    let mut body = body_with_values(&[]);
    body[4..8].copy_from_slice(&2u32.to_le_bytes());
    body.extend_from_within(8..15);
    assert!(malformed(&wrap(&body)).contains("appears twice"));
    // A name that is not UTF-8.
    let mut body = body_with_values(&[]);
    body[10] = 0xFF;
    assert!(malformed(&wrap(&body)).contains("UTF-8"));
    // A non-zero reserved field.
    let mut bytes = wrap(&body_with_values(&[]));
    bytes[10] = 1;
    assert!(malformed(&bytes).contains("reserved"));
}

#[test]
fn huge_declared_counts_do_not_allocate() {
    let mut body = Vec::new();
    body.extend_from_slice(&u32::MAX.to_le_bytes());
    body.extend_from_slice(&u32::MAX.to_le_bytes());
    let err = FileIndex::decode(&wrap(&body)).unwrap_err();
    assert!(matches!(err, IndexError::Truncated { .. }), "{err:?}");
    let mut body = body_with_values(&[]);
    body[11..15].copy_from_slice(&u32::MAX.to_le_bytes());
    body.extend_from_slice(&u32::MAX.to_le_bytes());
    let err = FileIndex::decode(&wrap(&body)).unwrap_err();
    assert!(
        matches!(err, IndexError::Truncated { what: "value", .. }),
        "{err:?}"
    );
}

proptest! {
    #[test]
    fn probes_agree_with_a_scan(
        rows in proptest::collection::vec(proptest::option::of(0i64..12), 0..60),
        cuts in proptest::collection::vec(1usize..9, 0..10),
        per_group in 1usize..6,
    ) {
        let mut b = IndexBuilder::new(vec![("n".into(), 0)], per_group);
        let mut start = 0usize;
        for cut in cuts.iter().chain(std::iter::once(&usize::MAX)) {
            let end = start.saturating_add(*cut).min(rows.len());
            b.observe(&batch(vec![("n", ints(&rows[start..end]))]));
            start = end;
        }
        let index = b.finish(&groups_of(rows.len() as u64, per_group as u64)).unwrap();
        let back = FileIndex::decode(&index.encode()).unwrap();
        prop_assert_eq!(&back, &index);
        for probe in [vec![0], vec![3, 5], vec![11, 12, 0]] {
            let mut expected: Vec<usize> = rows
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_some_and(|v| probe.contains(&v)))
                .map(|(r, _)| r / per_group)
                .collect();
            expected.dedup();
            let keys: Vec<Vec<u8>> = probe.iter().map(|&i| int_key(i)).collect();
            prop_assert_eq!(back.row_groups_for("n", &keys).unwrap(), expected);
        }
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = FileIndex::decode(&bytes);
        let _ = FileIndex::decode(&wrap(&bytes));
    }

    #[test]
    fn mutated_bodies_never_panic(at in 0usize..200, byte in any::<u8>()) {
        let mut body = sample().encode().split_off(HEADER_LEN);
        let at = at % body.len();
        body[at] = byte;
        if let Ok(index) = FileIndex::decode(&wrap(&body)) {
            prop_assert_eq!(FileIndex::decode(&index.encode()).unwrap(), index);
        }
    }
}

#[test]
fn a_huge_declared_row_group_count_costs_nothing_to_probe() {
    let mut body = body_with_values(&[]);
    body[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    let index = FileIndex::decode(&wrap(&body)).unwrap();
    assert_eq!(index.row_groups(), u32::MAX as usize);
    assert_eq!(
        index.row_groups_for("c", &[str_key("x")]).unwrap(),
        Vec::<usize>::new()
    );
}
