//! One segment file: its header, the record framing, and a scan that reads one segment.
//!
//! Header (28 bytes): `magic [8] | format_version u32 | segment_id u64 | salt u32 | crc32 u32`
//! (the CRC covers the first 24 bytes). Frame: `len u32 | crc u32 | type u8 | payload[len]`,
//! where the CRC covers the four length bytes, the type byte and the payload, and starts from
//! the segment's random salt. All integers little endian.
//!
//! The salt keeps event payloads from passing for frames: recovery searches the bytes after a
//! damaged frame for a valid one to tell a torn tail from corruption, and a producer who embeds
//! a well-formed frame in an event cannot compute a checksum with a salt it never sees.
//!
//! The scan streams frames and checks each length against both the bytes left in the file and
//! the maximum record size before allocating its payload. It never modifies the file: it reports
//! the first problem and whether it is a torn tail (only possible in the last segment) or
//! corruption, and the caller decides what to do.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use super::record::{MIN_PAYLOAD_LEN, WalRecord};
use super::{WalError, io_err};

/// Identifies a WAL segment file.
pub(crate) const MAGIC: [u8; 8] = *b"ALLUVWAL";
/// Version of the segment and frame layout this build writes and reads.
pub(crate) const FORMAT_VERSION: u32 = 2;
/// Size of the segment header in bytes.
pub(crate) const HEADER_LEN: u64 = 28;
/// Size of a frame header (`len`, `crc`, `type`) in bytes.
pub(crate) const FRAME_HEADER_LEN: u64 = 9;
/// Frame type of a [`WalRecord`].
pub(crate) const RECORD_APPEND: u8 = 1;
/// Frame type of an append record that carries an idempotency key.
pub(crate) const RECORD_APPEND_KEYED: u8 = 2;

fn is_record_type(kind: u8) -> bool {
    kind == RECORD_APPEND || kind == RECORD_APPEND_KEYED
}

/// Whether a problem can be repaired by truncation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// The end of the last segment holds an interrupted write and nothing valid after it:
    /// recovery truncates it (or removes the segment if even its header is incomplete).
    TornTail,
    /// Damage that recovery refuses to repair.
    Corrupt,
}

/// The first problem found in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentProblem {
    /// Torn tail or corruption.
    pub kind: ProblemKind,
    /// Byte offset of the damaged header (0) or frame.
    pub offset: u64,
    /// What is wrong there.
    pub reason: String,
}

/// What a scan of one segment found.
#[derive(Debug)]
pub(crate) struct SegmentScan {
    /// Size of the file when the scan started.
    pub file_len: u64,
    /// Length of the intact prefix: 0 if the header is bad, else the end of the last good frame.
    pub valid_len: u64,
    /// Intact records delivered to the callback.
    pub records: u64,
    /// The first problem, if any; nothing after it was read.
    pub problem: Option<SegmentProblem>,
}

/// The file name of segment `id`.
pub(crate) fn file_name(id: u64) -> String {
    format!("{id:020}.wal")
}

/// Parses a segment file name, ignoring anything that is not exactly `{20 digits}.wal`.
pub(crate) fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The header of segment `id`.
pub(crate) fn encode_header(id: u64, salt: u32) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&id.to_le_bytes());
    h[20..24].copy_from_slice(&salt.to_le_bytes());
    let crc = crc32fast::hash(&h[..24]);
    h[24..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The salt bytes of a header, whether or not the header checks out.
fn header_salt(h: &[u8; HEADER_LEN as usize]) -> u32 {
    u32::from_le_bytes([h[20], h[21], h[22], h[23]])
}

enum HeaderError {
    /// Bytes that may come from an interrupted segment creation.
    Damaged(String),
    /// A checksummed header that is wrong: never a torn write.
    Invalid(String),
}

/// Checks a header and returns the segment's salt.
fn check_header(h: &[u8; HEADER_LEN as usize], expected_id: u64) -> Result<u32, HeaderError> {
    let le32 = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    if h[..8] != MAGIC {
        return Err(HeaderError::Damaged(
            "bad magic, not a wal segment header".into(),
        ));
    }
    if crc32fast::hash(&h[..24]) != le32(24) {
        return Err(HeaderError::Damaged(
            "segment header checksum mismatch".into(),
        ));
    }
    let version = le32(8);
    if version != FORMAT_VERSION {
        return Err(HeaderError::Invalid(format!(
            "unsupported wal format version {version} (this build reads version {FORMAT_VERSION})"
        )));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&h[12..20]);
    let id = u64::from_le_bytes(id);
    if id != expected_id {
        return Err(HeaderError::Invalid(format!(
            "header names segment {id} but the file name says {expected_id}"
        )));
    }
    Ok(header_salt(h))
}

fn frame_crc(salt: u32, len: [u8; 4], kind: u8, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(salt);
    h.update(&len);
    h.update(&[kind]);
    h.update(payload);
    h.finalize()
}

/// Appends the frame of `record`, checksummed with the segment's `salt`, to `out`. If the
/// payload exceeds `max` bytes, `out` is left as it was and the payload size is returned as the
/// error.
pub(crate) fn encode_frame(
    record: &WalRecord,
    salt: u32,
    max: u32,
    out: &mut Vec<u8>,
) -> Result<(), usize> {
    let start = out.len();
    let body = start + FRAME_HEADER_LEN as usize;
    out.resize(body, 0);
    record.encode_payload(out);
    let size = out.len() - body;
    let len = match u32::try_from(size) {
        Ok(len) if len <= max => len.to_le_bytes(),
        _ => {
            out.truncate(start);
            return Err(size);
        }
    };
    let kind = match record.idempotency_key {
        Some(_) => RECORD_APPEND_KEYED,
        None => RECORD_APPEND,
    };
    let crc = frame_crc(salt, len, kind, &out[body..]);
    out[start..start + 4].copy_from_slice(&len);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out[start + 8] = kind;
    Ok(())
}

/// Reads segment `id` at `path` from start to end, handing every intact record to `on_record`
/// in order and stopping at the first problem.
///
/// In the last segment (`last`), a damaged header or frame with no valid frame anywhere after
/// it is a [`ProblemKind::TornTail`]; everywhere else damage is [`ProblemKind::Corrupt`]. A frame
/// whose checksum matches but whose type or payload is invalid is always corruption.
pub(crate) fn scan(
    path: &Path,
    id: u64,
    max_record_size: u32,
    last: bool,
    on_record: &mut dyn FnMut(WalRecord) -> Result<(), WalError>,
) -> Result<SegmentScan, WalError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let file_len = file.metadata().map_err(io_err("stat", path))?.len();
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut out = SegmentScan {
        file_len,
        valid_len: 0,
        records: 0,
        problem: None,
    };
    let corrupt = |offset, reason| {
        Some(SegmentProblem {
            kind: ProblemKind::Corrupt,
            offset,
            reason,
        })
    };
    // Damage that an interrupted write could have produced: torn only at the very end.
    let damaged =
        |salt: u32, offset: u64, reason: String| -> Result<Option<SegmentProblem>, WalError> {
            let torn =
                last && !valid_frame_after(path, salt, offset + 1, file_len, max_record_size)?;
            let kind = if torn {
                ProblemKind::TornTail
            } else {
                ProblemKind::Corrupt
            };
            Ok(Some(SegmentProblem {
                kind,
                offset,
                reason,
            }))
        };

    if file_len < HEADER_LEN {
        out.problem = damaged(
            0,
            0,
            format!("segment of {file_len} bytes has no complete header"),
        )?;
        return Ok(out);
    }
    let mut header = [0u8; HEADER_LEN as usize];
    reader
        .read_exact(&mut header)
        .map_err(io_err("read", path))?;
    let salt = match check_header(&header, id) {
        Ok(salt) => salt,
        Err(HeaderError::Damaged(reason)) => {
            out.problem = damaged(header_salt(&header), 0, reason)?;
            return Ok(out);
        }
        Err(HeaderError::Invalid(reason)) => {
            out.problem = corrupt(0, reason);
            return Ok(out);
        }
    };

    let mut pos = HEADER_LEN;
    out.valid_len = pos;
    while pos < file_len {
        let remaining = file_len - pos;
        if remaining < FRAME_HEADER_LEN {
            out.problem = damaged(
                salt,
                pos,
                format!("incomplete frame header ({remaining} bytes)"),
            )?;
            break;
        }
        let mut fh = [0u8; FRAME_HEADER_LEN as usize];
        reader.read_exact(&mut fh).map_err(io_err("read", path))?;
        let len_bytes = [fh[0], fh[1], fh[2], fh[3]];
        let len = u32::from_le_bytes(len_bytes);
        let crc = u32::from_le_bytes([fh[4], fh[5], fh[6], fh[7]]);
        let kind = fh[8];
        // Both checks come before the allocation: the length is untrusted.
        if len > max_record_size {
            let reason =
                format!("frame length {len} exceeds the maximum record size {max_record_size}");
            out.problem = damaged(salt, pos, reason)?;
            break;
        }
        if u64::from(len) > remaining - FRAME_HEADER_LEN {
            let left = remaining - FRAME_HEADER_LEN;
            let reason = format!("frame length {len} runs past the end of the file ({left} left)");
            out.problem = damaged(salt, pos, reason)?;
            break;
        }
        let mut payload = vec![0u8; len as usize];
        reader
            .read_exact(&mut payload)
            .map_err(io_err("read", path))?;
        if frame_crc(salt, len_bytes, kind, &payload) != crc {
            out.problem = damaged(salt, pos, "frame checksum mismatch".into())?;
            break;
        }
        if !is_record_type(kind) {
            out.problem = corrupt(pos, format!("unknown record type {kind}"));
            break;
        }
        let record = match WalRecord::decode_payload(&payload, kind == RECORD_APPEND_KEYED) {
            Ok(record) => record,
            Err(reason) => {
                out.problem = corrupt(pos, format!("checksummed record does not decode: {reason}"));
                break;
            }
        };
        drop(payload);
        on_record(record)?;
        pos += FRAME_HEADER_LEN + u64::from(len);
        out.valid_len = pos;
        out.records += 1;
    }
    Ok(out)
}

/// Tells whether any valid frame starts at or after byte `from` of the file: if one does, the
/// damage before it cannot be a torn tail. Reads only bytes that exist (bounded by the file).
fn valid_frame_after(
    path: &Path,
    salt: u32,
    from: u64,
    file_len: u64,
    max_record_size: u32,
) -> Result<bool, WalError> {
    if from >= file_len {
        return Ok(false);
    }
    let mut file = File::open(path).map_err(io_err("open", path))?;
    file.seek(SeekFrom::Start(from))
        .map_err(io_err("seek", path))?;
    let mut buf = Vec::new();
    file.take(file_len - from)
        .read_to_end(&mut buf)
        .map_err(io_err("read", path))?;
    Ok(contains_valid_frame(&buf, salt, max_record_size))
}

/// Searches `buf` at every byte offset for a complete frame with a matching checksum. Cheap
/// plausibility checks (type, length, payload prefix) come first so that garbage or zeros cost
/// no checksum work.
fn contains_valid_frame(buf: &[u8], salt: u32, max_record_size: u32) -> bool {
    let fh = FRAME_HEADER_LEN as usize;
    let max = max_record_size as usize;
    let mut at = 0;
    while at + fh + MIN_PAYLOAD_LEN <= buf.len() {
        let kind = buf[at + 8];
        if is_record_type(kind) {
            let len_bytes = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
            let len = u32::from_le_bytes(len_bytes) as usize;
            if (MIN_PAYLOAD_LEN..=max).contains(&len) && len <= buf.len() - at - fh {
                let payload = &buf[at + fh..at + fh + len];
                let crc = u32::from_le_bytes([buf[at + 4], buf[at + 5], buf[at + 6], buf[at + 7]]);
                if WalRecord::plausible_payload(payload)
                    && frame_crc(salt, len_bytes, kind, payload) == crc
                {
                    return true;
                }
            }
        }
        at += 1;
    }
    false
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ids::{TableName, TableRef, TenantId};

    fn record() -> WalRecord {
        WalRecord {
            table: TableRef::new(TenantId::new("t").unwrap(), TableName::new("x").unwrap()),
            schema_version: 1,
            first_seq: 1,
            ingested_at_us: 0,
            rows: Vec::new(),
            idempotency_key: None,
        }
    }

    #[test]
    fn file_names_roundtrip_and_reject_strangers() {
        assert_eq!(file_name(7), "00000000000000000007.wal");
        assert_eq!(parse_file_name(&file_name(u64::MAX)), Some(u64::MAX));
        for bad in [
            "7.wal",
            "0000000000000000000a.wal",
            "00000000000000000007.tmp",
            "",
        ] {
            assert_eq!(parse_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn header_checks_magic_crc_and_id() {
        let h = encode_header(9, 0xdead_beef);
        assert_eq!(check_header(&h, 9).ok(), Some(0xdead_beef));
        assert!(matches!(check_header(&h, 8), Err(HeaderError::Invalid(_))));
        let mut bad = h;
        bad[13] ^= 1;
        assert!(matches!(
            check_header(&bad, 9),
            Err(HeaderError::Damaged(_))
        ));
        assert!(matches!(
            check_header(&[0; HEADER_LEN as usize], 9),
            Err(HeaderError::Damaged(_))
        ));
    }

    #[test]
    fn frames_are_found_only_when_intact() {
        let mut buf = vec![0u8; 5];
        encode_frame(&record(), 7, 1024, &mut buf).unwrap();
        assert!(contains_valid_frame(&buf, 7, 1024));
        // The same bytes under another segment's salt are not a frame.
        assert!(!contains_valid_frame(&buf, 8, 1024));
        assert!(!contains_valid_frame(&buf[..buf.len() - 1], 7, 1024));
        let last = buf.len() - 1;
        buf[last] ^= 0x40;
        assert!(!contains_valid_frame(&buf, 7, 1024));
        assert!(!contains_valid_frame(&[0u8; 4096], 7, 1024));
    }

    #[test]
    fn oversized_frame_is_refused_and_leaves_the_buffer() {
        let mut buf = vec![1, 2, 3];
        assert_eq!(
            encode_frame(&record(), 7, 10, &mut buf),
            Err(MIN_PAYLOAD_LEN)
        );
        assert_eq!(buf, vec![1, 2, 3]);
    }
}
