//! End-to-end tests of the log on a real directory: append, reopen, damage files, reopen again.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::segment::{self, FRAME_HEADER_LEN, HEADER_LEN};
use super::writer::Failpoint;
use super::*;
use crate::ids::{Seq, TableName, TableRef, TenantId};
use crate::row::{Op, Row, Value};

fn table(name: &str) -> TableRef {
    TableRef::new(
        TenantId::new("acme").unwrap(),
        TableName::new(name).unwrap(),
    )
}

fn rec(name: &str, first_seq: Seq, n: u64) -> WalRecord {
    let rows = (first_seq..first_seq + n)
        .map(|s| Row {
            op: Op::Upsert,
            values: vec![Value::Int(s as i64), Value::Str(format!("payload-{s}"))],
        })
        .collect();
    WalRecord {
        table: table(name),
        schema_version: 1,
        first_seq,
        ingested_at_us: 1_700_000_000_000_000,
        rows,
        idempotency_key: None,
    }
}

fn config(dir: &Path, segment_size: u64) -> WalConfig {
    WalConfig {
        segment_size,
        ..WalConfig::new(dir)
    }
}

fn open(dir: &Path, segment_size: u64) -> Result<(Wal, Vec<WalRecord>), WalError> {
    let mut seen = Vec::new();
    let wal = Wal::open(config(dir, segment_size), |r| {
        seen.push(r);
        Ok(())
    })?;
    Ok((wal, seen))
}

fn frame_len(r: &WalRecord) -> u64 {
    let mut buf = Vec::new();
    segment::encode_frame(r, 0, u32::MAX, &mut buf).unwrap();
    buf.len() as u64
}

fn seg(dir: &Path, id: u64) -> PathBuf {
    dir.join(segment::file_name(id))
}

fn flip_bit(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x10;
    fs::write(path, bytes).unwrap();
}

fn expect_corrupt(dir: &Path, want_path: &Path, want_offset: u64) -> String {
    match open(dir, u64::MAX) {
        Err(e @ WalError::Corrupt { .. }) => {
            let WalError::Corrupt { path, offset, .. } = &e else {
                unreachable!()
            };
            assert_eq!(path, want_path);
            assert_eq!(*offset, want_offset, "{e}");
            e.to_string()
        }
        Err(e) => panic!("expected corruption, got {e}"),
        Ok(_) => panic!("expected corruption, the log opened"),
    }
}

#[test]
fn roundtrip_across_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, seen) = open(dir.path(), 200).unwrap();
    assert!(seen.is_empty());
    let mut written = Vec::new();
    for i in 0..20u64 {
        let group = vec![rec("a", i * 10 + 1, 3), rec("b", i + 1, 1)];
        wal.append(&group).unwrap();
        written.extend(group);
    }
    assert!(wal.segment_count() > 5, "{wal:?}");
    drop(wal);
    let (wal, seen) = open(dir.path(), 200).unwrap();
    assert_eq!(seen, written);
    // Reopening never appends into an old segment.
    assert_eq!(wal.current_segment_id(), wal.segment_count() as u64);
    assert_eq!(
        fs::metadata(seg(dir.path(), wal.current_segment_id()))
            .unwrap()
            .len(),
        HEADER_LEN
    );
}

#[test]
fn reopen_returns_exactly_what_was_appended_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut written = Vec::new();
    for round in 0..3u64 {
        let (mut wal, seen) = open(dir.path(), u64::MAX).unwrap();
        assert_eq!(seen, written, "round {round}");
        for i in 0..4 {
            let r = rec("a", round * 100 + i * 5 + 1, 5);
            wal.append(std::slice::from_ref(&r)).unwrap();
            written.push(r);
        }
        wal.append(&[]).unwrap();
    }
    let (_, seen) = open(dir.path(), u64::MAX).unwrap();
    assert_eq!(seen, written);
}

#[test]
fn creates_a_missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("data").join("wal");
    let (mut wal, _) = open(&nested, u64::MAX).unwrap();
    wal.append(&[rec("a", 1, 1)]).unwrap();
    assert!(seg(&nested, 1).is_file());
}

#[test]
fn torn_tail_at_every_byte_of_the_last_record() {
    let pristine = tempfile::tempdir().unwrap();
    let (a, b, c) = (rec("a", 1, 2), rec("b", 1, 1), rec("a", 3, 2));
    {
        let (mut wal, _) = open(pristine.path(), u64::MAX).unwrap();
        wal.append(&[a.clone(), b.clone()]).unwrap();
        wal.append(std::slice::from_ref(&c)).unwrap();
    }
    let bytes = fs::read(seg(pristine.path(), 1)).unwrap();
    let c_start = HEADER_LEN + frame_len(&a) + frame_len(&b);
    assert_eq!(c_start + frame_len(&c), bytes.len() as u64);

    for cut in c_start..bytes.len() as u64 {
        let dir = tempfile::tempdir().unwrap();
        fs::write(seg(dir.path(), 1), &bytes[..cut as usize]).unwrap();
        let (mut wal, seen) = open(dir.path(), u64::MAX).unwrap();
        assert_eq!(seen, vec![a.clone(), b.clone()], "cut at {cut}");
        assert_eq!(
            fs::metadata(seg(dir.path(), 1)).unwrap().len(),
            c_start,
            "cut at {cut}"
        );
        let d = rec("a", 3, 1);
        wal.append(std::slice::from_ref(&d)).unwrap();
        drop(wal);
        let (_, seen) = open(dir.path(), u64::MAX).unwrap();
        assert_eq!(seen, vec![a.clone(), b.clone(), d], "cut at {cut}");
    }
}

#[test]
fn zero_filled_and_garbage_tails_are_torn() {
    for tail in [
        vec![0u8; 4096],
        (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect(),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let a = rec("a", 1, 3);
        open(dir.path(), u64::MAX)
            .unwrap()
            .0
            .append(std::slice::from_ref(&a))
            .unwrap();
        let path = seg(dir.path(), 1);
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(&tail);
        fs::write(&path, bytes).unwrap();
        let (_, seen) = open(dir.path(), u64::MAX).unwrap();
        assert_eq!(seen, vec![a.clone()]);
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            HEADER_LEN + frame_len(&a)
        );
    }
}

#[test]
fn headerless_last_segment_is_removed() {
    for content in [vec![], vec![b'A'; 10], vec![0u8; 24], vec![0u8; 300]] {
        let dir = tempfile::tempdir().unwrap();
        let a = rec("a", 1, 1);
        open(dir.path(), u64::MAX)
            .unwrap()
            .0
            .append(std::slice::from_ref(&a))
            .unwrap();
        // A crash right after creating segment 2.
        fs::write(seg(dir.path(), 2), &content).unwrap();
        let (wal, seen) = open(dir.path(), u64::MAX).unwrap();
        assert_eq!(seen, vec![a.clone()], "{} bytes", content.len());
        assert!(!seg(dir.path(), 2).exists());
        assert_eq!(wal.current_segment_id(), 3);
    }
}

#[test]
fn flipped_bit_in_a_sealed_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (rec("a", 1, 2), rec("a", 3, 2));
    open(dir.path(), u64::MAX)
        .unwrap()
        .0
        .append(&[a.clone(), b.clone()])
        .unwrap();
    open(dir.path(), u64::MAX)
        .unwrap()
        .0
        .append(&[rec("a", 5, 1)])
        .unwrap();
    let path = seg(dir.path(), 1);
    let b_at = HEADER_LEN + frame_len(&a);
    flip_bit(&path, b_at + FRAME_HEADER_LEN + 20);
    let shown = expect_corrupt(dir.path(), &path, b_at);
    assert!(shown.contains(&path.display().to_string()), "{shown}");
    assert!(shown.contains(&format!("byte {b_at}")), "{shown}");
    assert!(shown.contains("alluvium wal verify"), "{shown}");
    // Nothing was repaired: the damaged file is intact for inspection.
    assert_eq!(fs::metadata(&path).unwrap().len(), b_at + frame_len(&b));
}

#[test]
fn torn_looking_end_of_a_sealed_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let a = rec("a", 1, 2);
    open(dir.path(), u64::MAX)
        .unwrap()
        .0
        .append(std::slice::from_ref(&a))
        .unwrap();
    open(dir.path(), u64::MAX)
        .unwrap()
        .0
        .append(&[rec("a", 3, 1)])
        .unwrap();
    let path = seg(dir.path(), 1);
    let len = fs::metadata(&path).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 1)
        .unwrap();
    expect_corrupt(dir.path(), &path, HEADER_LEN);
}

#[test]
fn corrupt_header_of_a_sealed_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path(), u64::MAX)
        .unwrap()
        .0
        .append(&[rec("a", 1, 1)])
        .unwrap();
    open(dir.path(), u64::MAX)
        .unwrap()
        .0
        .append(&[rec("a", 2, 1)])
        .unwrap();
    let path = seg(dir.path(), 1);
    flip_bit(&path, 14);
    expect_corrupt(dir.path(), &path, 0);
    // A renamed segment (id in header differs from its name) is caught too.
    flip_bit(&path, 14);
    fs::rename(&path, seg(dir.path(), 0)).unwrap();
    expect_corrupt(dir.path(), &seg(dir.path(), 0), 0);
}

#[test]
fn flipped_bit_mid_last_segment_followed_by_valid_records_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (rec("a", 1, 1), rec("a", 2, 1), rec("a", 3, 1));
    let (mut wal, _) = open(dir.path(), u64::MAX).unwrap();
    wal.append(&[a.clone(), b.clone(), c]).unwrap();
    drop(wal);
    let path = seg(dir.path(), 1);
    let b_at = HEADER_LEN + frame_len(&a);
    // The checksum, the length and the payload each count.
    for (i, offset) in [b_at + 5, b_at, b_at + FRAME_HEADER_LEN + 3]
        .into_iter()
        .enumerate()
    {
        let copy = tempfile::tempdir().unwrap();
        let mut bytes = fs::read(&path).unwrap();
        bytes[offset as usize] ^= if i == 1 { 0x40 } else { 0x01 };
        fs::write(seg(copy.path(), 1), bytes).unwrap();
        expect_corrupt(copy.path(), &seg(copy.path(), 1), b_at);
    }
}

#[test]
fn huge_length_is_refused_without_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (rec("a", 1, 1), rec("a", 2, 1));
    open(dir.path(), u64::MAX)
        .unwrap()
        .0
        .append(&[a.clone(), b])
        .unwrap();
    let path = seg(dir.path(), 1);
    let mut bytes = fs::read(&path).unwrap();
    let at = HEADER_LEN as usize;
    bytes[at..at + 4].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    fs::write(&path, &bytes).unwrap();
    // Last segment, valid record after it: corruption, not a torn tail.
    let shown = expect_corrupt(dir.path(), &path, HEADER_LEN);
    assert!(shown.contains("maximum record size"), "{shown}");
    // Within the maximum but past the end of the file: also refused before allocating.
    let mut config = WalConfig::new(dir.path());
    config.max_record_size = u32::MAX;
    let err = Wal::open(config, |_| Ok(())).unwrap_err();
    assert!(err.to_string().contains("past the end"), "{err}");
}

#[test]
fn checkpoint_deletes_only_covered_sealed_segments() {
    let dir = tempfile::tempdir().unwrap();
    // Every append after the first in a segment rotates: one group per segment.
    let (mut wal, _) = open(dir.path(), 1).unwrap();
    wal.append(&[rec("a", 1, 2)]).unwrap(); // segment 1
    wal.append(&[rec("b", 1, 1), rec("a", 3, 1)]).unwrap(); // segment 2
    wal.append(&[rec("a", 4, 1)]).unwrap(); // segment 3
    wal.append(&[rec("b", 2, 1)]).unwrap(); // segment 4, current
    assert_eq!(wal.current_segment_id(), 4);

    let mut committed = HashMap::new();
    assert_eq!(wal.checkpoint(&committed).unwrap(), 0);
    committed.insert(table("a"), 3);
    // Segment 2 also holds table b, which counts as committed at 0.
    assert_eq!(wal.checkpoint(&committed).unwrap(), 1);
    assert!(!seg(dir.path(), 1).exists());
    assert!(seg(dir.path(), 2).exists());
    committed.insert(table("a"), 10);
    committed.insert(table("b"), 10);
    assert_eq!(wal.checkpoint(&committed).unwrap(), 2);
    assert!(
        seg(dir.path(), 4).exists(),
        "the current segment is never deleted"
    );
    assert_eq!(wal.segment_count(), 1);
    drop(wal);
    let (_, seen) = open(dir.path(), 1).unwrap();
    assert_eq!(seen, vec![rec("b", 2, 1)]);
}

#[test]
fn recovered_segments_can_be_checkpointed() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path(), u64::MAX)
        .unwrap()
        .0
        .append(&[rec("a", 1, 5)])
        .unwrap();
    let (mut wal, _) = open(dir.path(), u64::MAX).unwrap();
    assert_eq!(
        wal.checkpoint(&HashMap::from([(table("a"), 4)])).unwrap(),
        0
    );
    assert_eq!(
        wal.checkpoint(&HashMap::from([(table("a"), 5)])).unwrap(),
        1
    );
    assert!(!seg(dir.path(), 1).exists());
}

#[test]
fn a_failed_sync_poisons_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), u64::MAX).unwrap();
    wal.append(&[rec("a", 1, 1)]).unwrap();
    wal.inject_failure(Failpoint::Sync);
    assert!(matches!(
        wal.append(&[rec("a", 2, 1)]),
        Err(WalError::Poisoned { .. })
    ));
    assert!(wal.is_poisoned());
    // The failpoint fired once; the log still refuses, never retrying the sync.
    let err = wal.append(&[rec("a", 3, 1)]).unwrap_err();
    assert!(err.to_string().contains("injected Sync failure"), "{err}");
    assert!(matches!(
        wal.checkpoint(&HashMap::new()),
        Err(WalError::Poisoned { .. })
    ));
    drop(wal);
    // The unacknowledged record may or may not survive a real crash; here it was written.
    let (_, seen) = open(dir.path(), u64::MAX).unwrap();
    assert_eq!(seen[0], rec("a", 1, 1));
    assert!(seen.len() <= 2);
}

#[test]
fn failed_write_and_rotation_poison_too() {
    for (fp, segment_size) in [(Failpoint::Write, u64::MAX), (Failpoint::Rotate, 1)] {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(dir.path(), segment_size).unwrap();
        wal.append(&[rec("a", 1, 1)]).unwrap();
        wal.inject_failure(fp);
        assert!(matches!(
            wal.append(&[rec("a", 2, 1)]),
            Err(WalError::Poisoned { .. })
        ));
        assert!(matches!(
            wal.append(&[rec("a", 3, 1)]),
            Err(WalError::Poisoned { .. })
        ));
        drop(wal);
        let (_, seen) = open(dir.path(), segment_size).unwrap();
        assert_eq!(seen, vec![rec("a", 1, 1)], "{fp:?}");
    }
}

#[test]
fn oversized_record_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = WalConfig::new(dir.path());
    config.max_record_size = 200;
    let mut wal = Wal::open(config.clone(), |_| Ok(())).unwrap();
    let err = wal.append(&[rec("a", 1, 1), rec("a", 2, 50)]).unwrap_err();
    assert!(
        matches!(err, WalError::RecordTooLarge { max: 200, .. }),
        "{err}"
    );
    assert!(!wal.is_poisoned());
    assert_eq!(fs::metadata(seg(dir.path(), 1)).unwrap().len(), HEADER_LEN);
    wal.append(&[rec("a", 1, 1)]).unwrap();
    drop(wal);
    let mut seen = Vec::new();
    Wal::open(config, |r| {
        seen.push(r);
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, vec![rec("a", 1, 1)]);
}

#[test]
fn replay_callback_errors_stop_recovery() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path(), u64::MAX)
        .unwrap()
        .0
        .append(&[rec("a", 1, 1), rec("a", 2, 1)])
        .unwrap();
    let mut calls = 0;
    let err = Wal::open(WalConfig::new(dir.path()), |_| {
        calls += 1;
        Err(WalError::Replay {
            reason: "memtable full".into(),
        })
    })
    .unwrap_err();
    assert_eq!(calls, 1);
    assert!(err.to_string().contains("memtable full"), "{err}");
}

#[test]
fn inspect_reports_without_modifying() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), 1).unwrap();
    wal.append(&[rec("a", 1, 2), rec("b", 7, 3)]).unwrap();
    wal.append(&[rec("a", 3, 1)]).unwrap();
    drop(wal);
    let clean = inspect(dir.path(), u32::MAX).unwrap();
    assert_eq!(clean.len(), 2);
    assert_eq!(clean[0].records, 2);
    assert_eq!(clean[0].tables[&table("a")], SeqRange { first: 1, last: 2 });
    assert_eq!(clean[0].tables[&table("b")], SeqRange { first: 7, last: 9 });
    assert_eq!(clean[1].tables[&table("a")], SeqRange { first: 3, last: 3 });
    assert!(
        clean
            .iter()
            .all(|r| r.problem.is_none() && r.bytes == r.valid_bytes)
    );

    // Damage the first segment and tear the second: both are reported, nothing is changed.
    let first = seg(dir.path(), 1);
    flip_bit(&first, HEADER_LEN + 2);
    let second = seg(dir.path(), 2);
    let mut bytes = fs::read(&second).unwrap();
    bytes.truncate(bytes.len() - 3);
    fs::write(&second, &bytes).unwrap();
    let reports = inspect(dir.path(), u32::MAX).unwrap();
    let p0 = reports[0].problem.as_ref().unwrap();
    assert_eq!(
        (p0.kind, p0.offset, reports[0].records),
        (ProblemKind::Corrupt, HEADER_LEN, 0)
    );
    let p1 = reports[1].problem.as_ref().unwrap();
    assert_eq!((p1.kind, p1.offset), (ProblemKind::TornTail, HEADER_LEN));
    assert_eq!(fs::read(&second).unwrap(), bytes);
}

#[test]
fn a_frame_forged_inside_an_event_does_not_turn_a_torn_tail_into_corruption() {
    let dir = tempfile::tempdir().unwrap();
    // A producer embeds a complete, well-formed frame (checksummed without the segment's
    // secret salt, which it cannot know) in an event, as binary data.
    let mut forged = Vec::new();
    segment::encode_frame(&rec("t", 1, 1), 0, u32::MAX, &mut forged).unwrap();
    let mut hostile = rec("t", 2, 1);
    hostile.rows[0].values[1] = Value::Bytes(forged.clone());
    let a = rec("t", 1, 1);
    {
        let (mut wal, _) = open(dir.path(), u64::MAX).unwrap();
        wal.append(std::slice::from_ref(&a)).unwrap();
        wal.append(std::slice::from_ref(&hostile)).unwrap();
    }
    // The crash tears the hostile record after the forged frame but before its end.
    let path = seg(dir.path(), 1);
    let full = fs::metadata(&path).unwrap().len();
    let cut = full - 3;
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(cut)
        .unwrap();
    let (_wal, seen) = open(dir.path(), u64::MAX).expect("a torn tail must recover");
    assert_eq!(seen, vec![a]);
}
