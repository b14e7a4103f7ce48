//! Recovery over all segments of a WAL directory, and the read-only [`inspect`] scan.
//!
//! Segments are read in id order. Only the last one may end in a torn tail, which recovery
//! truncates (or removes, when even the header is incomplete) and logs; corruption anywhere else
//! stops recovery with [`WalError::Corrupt`]. [`inspect`] reads the same way but never modifies a
//! file, reporting each segment's first problem instead.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use tracing::{debug, warn};

use super::record::WalRecord;
use super::segment::{self, ProblemKind, SegmentProblem};
use super::{WalError, io_err, sync_dir};
use crate::ids::{Seq, TableRef};

/// A segment that survived recovery, with the highest sequence per table it holds.
#[derive(Debug)]
pub(crate) struct RecoveredSegment {
    pub id: u64,
    pub path: PathBuf,
    pub max_seq: HashMap<TableRef, Seq>,
}

/// The outcome of recovery: the segments left on disk and the id for the next one.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub segments: Vec<RecoveredSegment>,
    pub next_id: u64,
}

/// The segment files of `dir`, sorted by id. Other files are ignored.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let name = entry.file_name();
        match name.to_str().and_then(segment::parse_file_name) {
            Some(id) => segments.push((id, entry.path())),
            None => debug!(file = ?entry.path(), "ignoring non-segment file in wal dir"),
        }
    }
    segments.sort_unstable_by_key(|(id, _)| *id);
    Ok(segments)
}

/// Replays every segment of `dir` in order into `on_record`, repairing a torn tail of the last
/// segment and failing on any other damage. Records already delivered when an error is returned
/// must be discarded by the caller.
pub(crate) fn recover(
    dir: &Path,
    max_record_size: u32,
    on_record: &mut dyn FnMut(WalRecord) -> Result<(), WalError>,
) -> Result<Recovered, WalError> {
    let listed = list_segments(dir)?;
    let next_id = listed.last().map_or(1, |(id, _)| id.saturating_add(1));
    let mut segments = Vec::with_capacity(listed.len());
    let count = listed.len();
    for (i, (id, path)) in listed.into_iter().enumerate() {
        let last = i + 1 == count;
        let mut max_seq: HashMap<TableRef, Seq> = HashMap::new();
        let scan = segment::scan(&path, id, max_record_size, last, &mut |record| {
            if !record.rows.is_empty() {
                let seq = max_seq.entry(record.table.clone()).or_default();
                *seq = (*seq).max(record.last_seq());
            }
            on_record(record)
        })?;
        match scan.problem {
            None => {}
            Some(SegmentProblem {
                kind: ProblemKind::Corrupt,
                offset,
                reason,
            }) => {
                return Err(WalError::Corrupt {
                    path,
                    offset,
                    reason,
                });
            }
            Some(SegmentProblem {
                kind: ProblemKind::TornTail,
                offset,
                reason,
            }) => {
                let dropped = scan.file_len - scan.valid_len;
                if scan.valid_len == 0 {
                    // Crash while creating the segment: nothing in it was ever acknowledged.
                    fs::remove_file(&path).map_err(io_err("remove torn segment", &path))?;
                    sync_dir(dir)?;
                    warn!(path = %path.display(), offset, reason = %reason, bytes = dropped, "removed wal segment with a torn header");
                    continue;
                }
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err("open for truncation", &path))?;
                file.set_len(scan.valid_len)
                    .and_then(|()| file.sync_all())
                    .map_err(io_err("truncate torn tail of", &path))?;
                warn!(path = %path.display(), offset, reason = %reason, bytes = dropped, records = scan.records, "truncated torn wal tail");
            }
        }
        segments.push(RecoveredSegment { id, path, max_seq });
    }
    Ok(Recovered { segments, next_id })
}

/// An inclusive range of sequences of one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    /// Lowest sequence.
    pub first: Seq,
    /// Highest sequence.
    pub last: Seq,
}

/// What [`inspect`] found in one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentReport {
    /// Segment id, from the file name.
    pub id: u64,
    /// The segment file.
    pub path: PathBuf,
    /// File size in bytes.
    pub bytes: u64,
    /// Bytes up to the end of the last intact record (0 if the header is bad).
    pub valid_bytes: u64,
    /// Intact records before the first problem.
    pub records: u64,
    /// Sequence range per table over the intact records that hold rows.
    pub tables: BTreeMap<TableRef, SeqRange>,
    /// The first problem; a torn tail is only reported for the last segment.
    pub problem: Option<SegmentProblem>,
}

/// Scans every segment of the WAL in `dir` read-only and reports per segment its records,
/// per-table sequence ranges, size and first problem. Unlike recovery it goes on past a corrupt
/// segment, so one run lists all damage.
pub fn inspect(dir: &Path, max_record_size: u32) -> Result<Vec<SegmentReport>, WalError> {
    let listed = list_segments(dir)?;
    let count = listed.len();
    let mut reports = Vec::with_capacity(count);
    for (i, (id, path)) in listed.into_iter().enumerate() {
        let mut tables: BTreeMap<TableRef, SeqRange> = BTreeMap::new();
        let scan = segment::scan(&path, id, max_record_size, i + 1 == count, &mut |record| {
            if !record.rows.is_empty() {
                let (first, last) = (record.first_seq, record.last_seq());
                tables
                    .entry(record.table)
                    .and_modify(|r| {
                        r.first = r.first.min(first);
                        r.last = r.last.max(last);
                    })
                    .or_insert(SeqRange { first, last });
            }
            Ok(())
        })?;
        reports.push(SegmentReport {
            id,
            path,
            bytes: scan.file_len,
            valid_bytes: scan.valid_len,
            records: scan.records,
            tables,
            problem: scan.problem,
        });
    }
    Ok(reports)
}
