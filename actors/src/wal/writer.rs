//! The WAL writer: recovery at open, group-commit appends, rotation and checkpoint deletion.
//!
//! [`Wal::open`] replays the existing segments and then always starts a fresh segment, so a
//! recovered (possibly truncated) file is never appended to. Each [`Wal::append`] encodes a whole
//! group of records into one buffer, writes it with one `write` and makes it durable with one
//! `fdatasync`. Every segment remembers the highest sequence per table it holds, which is all
//! [`Wal::checkpoint`] needs to decide that a sealed segment is covered by Parquet.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use tracing::{error, info, warn};

use super::reader;
use super::record::WalRecord;
use super::segment::{self, HEADER_LEN};
use super::{WalError, io_err, sync_dir};
use crate::ids::{Seq, TableRef};

/// Where and how the log is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalConfig {
    /// Directory of the segment files (`data/wal/` in a standalone node).
    pub dir: PathBuf,
    /// Size in bytes after which the next append starts a new segment; default 64 MiB.
    pub segment_size: u64,
    /// Largest record payload in bytes accepted on write and on read; default 64 MiB.
    pub max_record_size: u32,
}

impl WalConfig {
    /// Default [`WalConfig::segment_size`]: 64 MiB.
    pub const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;
    /// Default [`WalConfig::max_record_size`]: 64 MiB.
    pub const DEFAULT_MAX_RECORD_SIZE: u32 = 64 << 20;

    /// Returns a configuration for `dir` with the default sizes.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_size: Self::DEFAULT_SEGMENT_SIZE,
            max_record_size: Self::DEFAULT_MAX_RECORD_SIZE,
        }
    }
}

/// A point where the writer's I/O can be made to fail, to exercise poisoning: by a unit test
/// on one [`Wal`] (`inject_failure`), or process-wide through [`crate::failpoint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failpoint {
    /// The write of a group.
    Write,
    /// The `fdatasync` after the write.
    Sync,
    /// Creating the next segment on rotation.
    Rotate,
}

impl Failpoint {
    /// Its name in `ALLUVIUM_FAILPOINTS`.
    fn name(self) -> &'static str {
        match self {
            Failpoint::Write => "wal.write",
            Failpoint::Sync => "wal.sync",
            Failpoint::Rotate => "wal.rotate",
        }
    }
}

/// The segment receiving appends.
struct ActiveSegment {
    id: u64,
    path: PathBuf,
    file: File,
    /// Bytes written and synced, header included.
    len: u64,
    /// Seed of the frame checksums of this segment.
    salt: u32,
    max_seq: HashMap<TableRef, Seq>,
}

/// A segment that no longer receives appends.
#[derive(Debug)]
struct SealedSegment {
    path: PathBuf,
    max_seq: HashMap<TableRef, Seq>,
}

impl SealedSegment {
    /// Whether every record is at or below `committed` for its table.
    fn covered(&self, committed: &HashMap<TableRef, Seq>) -> bool {
        self.max_seq
            .iter()
            .all(|(table, &max)| max <= committed.get(table).copied().unwrap_or(0))
    }
}

/// The write-ahead log writer, owned by one thread.
pub struct Wal {
    config: WalConfig,
    current: ActiveSegment,
    /// Sealed segments by id.
    sealed: BTreeMap<u64, SealedSegment>,
    /// The cause of the failure that poisoned the log, if any.
    poisoned: Option<String>,
    /// Reused encoding buffer for a group.
    buf: Vec<u8>,
    #[cfg(test)]
    failpoint: Option<Failpoint>,
}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.config.dir)
            .field("current_segment", &self.current.id)
            .field("current_len", &self.current.len)
            .field("sealed_segments", &self.sealed.len())
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

/// Above this capacity the group buffer is released after use rather than kept.
const KEEP_BUFFER_BYTES: usize = 8 << 20;

impl Wal {
    /// Recovers every segment in `config.dir` (created if missing) in order, calling
    /// `on_record` for each intact record in log order, then opens a fresh segment for appends.
    ///
    /// A torn tail of the last segment is truncated (or the segment removed when its header is
    /// incomplete) and logged. Any other damage returns [`WalError::Corrupt`] naming the segment
    /// and byte offset, and nothing is modified. Records already delivered when `open` fails
    /// must be discarded by the caller; an error from `on_record` stops recovery and is returned.
    pub fn open(
        config: WalConfig,
        mut on_record: impl FnMut(WalRecord) -> Result<(), WalError>,
    ) -> Result<Wal, WalError> {
        create_dir(&config.dir)?;
        let recovered = reader::recover(&config.dir, config.max_record_size, &mut on_record)?;
        let sealed: BTreeMap<u64, SealedSegment> = recovered
            .segments
            .into_iter()
            .map(|s| {
                let sealed = SealedSegment {
                    path: s.path,
                    max_seq: s.max_seq,
                };
                (s.id, sealed)
            })
            .collect();
        let current = create_segment(&config.dir, recovered.next_id)?;
        info!(dir = %config.dir.display(), segment = current.id, sealed = sealed.len(), "wal opened");
        Ok(Wal {
            config,
            current,
            sealed,
            poisoned: None,
            buf: Vec::new(),
            #[cfg(test)]
            failpoint: None,
        })
    }

    /// Appends `records` as one group: writes them all, then makes them durable with a single
    /// `fdatasync`, returning only after it returned.
    ///
    /// Starts a new segment first when the current one holds records and has reached
    /// `segment_size`. If any record exceeds `max_record_size`, returns
    /// [`WalError::RecordTooLarge`] and writes nothing. A failed write, sync or rotation poisons
    /// the log: this call and every later one return [`WalError::Poisoned`].
    pub fn append(&mut self, records: &[WalRecord]) -> Result<(), WalError> {
        self.check_poisoned()?;
        if records.is_empty() {
            return Ok(());
        }
        // Encoded (and so size-checked) before anything changes on disk.
        self.encode_group(records)?;
        let full = self.current.len > HEADER_LEN && self.current.len >= self.config.segment_size;
        if full {
            if let Err(e) = self.rotate() {
                return Err(self.poison(format!("cannot start a new segment: {e}")));
            }
            // Frames are checksummed with the segment's salt: encode again for the new one.
            self.encode_group(records)?;
        }
        if let Err(e) = self.write_group() {
            let path = self.current.path.display().to_string();
            return Err(self.poison(format!("cannot write or sync {path}: {e}")));
        }
        self.current.len += self.buf.len() as u64;
        for record in records.iter().filter(|r| !r.rows.is_empty()) {
            let seq = self
                .current
                .max_seq
                .entry(record.table.clone())
                .or_default();
            *seq = (*seq).max(record.last_seq());
        }
        if self.buf.capacity() > KEEP_BUFFER_BYTES {
            self.buf = Vec::new();
        }
        Ok(())
    }

    fn encode_group(&mut self, records: &[WalRecord]) -> Result<(), WalError> {
        let max = self.config.max_record_size;
        self.buf.clear();
        for record in records {
            segment::encode_frame(record, self.current.salt, max, &mut self.buf)
                .map_err(|size| WalError::RecordTooLarge { size, max })?;
        }
        Ok(())
    }

    /// Whether [`Wal::checkpoint`] with `committed` would delete a segment.
    pub fn any_covered(&self, committed: &HashMap<TableRef, Seq>) -> bool {
        self.sealed.values().any(|s| s.covered(committed))
    }

    /// Deletes every sealed segment whose records all have sequences at or below
    /// `committed[table]` for their table (a table missing from the map counts as committed up
    /// to 0), then fsyncs the directory. The current segment is never deleted. Returns the
    /// number of segments deleted.
    pub fn checkpoint(&mut self, committed: &HashMap<TableRef, Seq>) -> Result<usize, WalError> {
        self.check_poisoned()?;
        let doomed: Vec<u64> = self
            .sealed
            .iter()
            .filter(|(_, s)| s.covered(committed))
            .map(|(&id, _)| id)
            .collect();
        if doomed.is_empty() {
            return Ok(0);
        }
        let mut deleted = 0;
        let mut failure = None;
        for id in doomed {
            let Some(segment) = self.sealed.get(&id) else {
                continue;
            };
            match std::fs::remove_file(&segment.path) {
                Ok(()) => deleted += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    warn!(path = %segment.path.display(), "wal segment already gone at checkpoint");
                }
                Err(e) => {
                    failure = Some(io_err("delete", &segment.path)(e));
                    break;
                }
            }
            self.sealed.remove(&id);
        }
        // The deletes done so far must be made durable even if a later one failed.
        sync_dir(&self.config.dir)?;
        if let Some(e) = failure {
            return Err(e);
        }
        info!(
            deleted,
            remaining = self.sealed.len() + 1,
            "wal checkpoint deleted segments"
        );
        Ok(deleted)
    }

    /// Tells whether a failed write or sync has poisoned the log.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    /// The id of the segment receiving appends.
    pub fn current_segment_id(&self) -> u64 {
        self.current.id
    }

    /// The number of segments on disk, the current one included.
    pub fn segment_count(&self) -> usize {
        self.sealed.len() + 1
    }

    /// Largest payload one record may have.
    pub fn max_record_size(&self) -> u32 {
        self.config.max_record_size
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    /// Makes the next I/O at `at` fail, once.
    #[cfg(test)]
    pub(crate) fn inject_failure(&mut self, at: Failpoint) {
        self.failpoint = Some(at);
    }

    fn check_poisoned(&self) -> Result<(), WalError> {
        match &self.poisoned {
            Some(cause) => Err(WalError::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    fn poison(&mut self, cause: String) -> WalError {
        error!(cause = %cause, "wal poisoned, writes refused until restart");
        self.poisoned = Some(cause.clone());
        WalError::Poisoned { cause }
    }

    fn write_group(&mut self) -> io::Result<()> {
        self.fail_at(Failpoint::Write)?;
        self.current.file.write_all(&self.buf)?;
        self.fail_at(Failpoint::Sync)?;
        self.current.file.sync_data()
    }

    /// Seals the current segment (already synced by its last append) and starts the next.
    fn rotate(&mut self) -> Result<(), WalError> {
        self.fail_at(Failpoint::Rotate)
            .map_err(io_err("create", &self.current.path))?;
        let next = create_segment(&self.config.dir, self.current.id.saturating_add(1))?;
        let old = std::mem::replace(&mut self.current, next);
        info!(
            sealed = old.id,
            bytes = old.len,
            segment = self.current.id,
            "wal segment rotated"
        );
        let sealed = SealedSegment {
            path: old.path,
            max_seq: old.max_seq,
        };
        self.sealed.insert(old.id, sealed);
        Ok(())
    }

    /// Fails (or aborts) when a failpoint is set at `at`: the per-log test seam first, then
    /// the process-wide failpoints, whose check is a single relaxed load when none is set.
    #[inline]
    fn fail_at(&mut self, at: Failpoint) -> io::Result<()> {
        #[cfg(test)]
        if self.failpoint == Some(at) {
            self.failpoint = None;
            return Err(io::Error::other(format!("injected {at:?} failure")));
        }
        crate::failpoint::hit(at.name())
    }
}

/// Creates the log directory if needed, making its entry in the parent durable.
fn create_dir(dir: &Path) -> Result<(), WalError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => Ok(()),
    }
}

/// Creates segment `id` with its header, durable (file and directory entry) on return.
fn create_segment(dir: &Path, id: u64) -> Result<ActiveSegment, WalError> {
    let path = dir.join(segment::file_name(id));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io_err("create", &path))?;
    let salt: u32 = rand::random();
    file.write_all(&segment::encode_header(id, salt))
        .and_then(|()| file.sync_data())
        .map_err(io_err("write header of", &path))?;
    sync_dir(dir)?;
    Ok(ActiveSegment {
        id,
        path,
        file,
        len: HEADER_LEN,
        salt,
        max_seq: HashMap::new(),
    })
}
