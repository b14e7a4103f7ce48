//! Secondary index sidecars: for each data file, the distinct values of declared columns and the
//! Parquet row groups that hold them, so a query filtering on `column = v` or `column IN (...)`
//! skips whole files and row groups without opening them.
//!
//! This module is pure: it neither does I/O nor knows about actors. Data flows like this:
//!
//! 1. The writer of a data file (flush or compaction) feeds every batch it writes, in file order,
//!    to an [`IndexBuilder`] as well.
//! 2. Once the Parquet file is finished, [`IndexBuilder::finish`] takes the row counts of the row
//!    groups actually written; the index is only produced when they match the boundaries the
//!    builder assumed (row `r` of the file in row group `r / rows_per_group`).
//! 3. [`FileIndex::encode`] gives the bytes stored next to the data file at [`sidecar_path`].
//! 4. Queries [`FileIndex::decode`] the sidecar (caching it by [`FileIndex::memory_size`]) and ask
//!    [`FileIndex::row_groups_for`] which row groups may hold the values they look for.
//!
//! An index is an optimisation, never the truth: a missing or unreadable sidecar, or a column
//! left out of one, only means that queries read the file without pruning by that column.
//!
//! Values are stored in the order-preserving key encoding of [`encode_key_value`], so probes
//! are encoded the same way and an int32 column matches an int64 probe of the same number. Nulls
//! are not indexed (`column = v` is never true of a null). Columns of types that [`key_value_at`]
//! does not support (floats, lists) are not indexed, nor are columns with more than
//! [`MAX_INDEX_VALUES`] distinct values (or more than 64 MiB of them) in one file.
//!
//! # Format
//!
//! All integers little-endian.
//!
//! ```text
//! header (24 bytes):
//!   magic "ALVINDEX" (8) | format version u16 | reserved u16 (0) | crc32 u32 of the body
//!   | body length u64 (equal to the bytes that follow the header)
//! body:
//!   row_groups u32 | column count u32
//!   per column:
//!     name length u16 | name (UTF-8) | value count u32
//!     per value, strictly increasing by bytes:
//!       length u32 | encoded value | bitmap of ceil(row_groups / 8) bytes
//!       (bit g % 8 of byte g / 8 set = row group g holds the value)
//! ```
//!
//! Decoding checks every length against the remaining input before allocating, verifies the
//! checksum before parsing the body, and rejects unsorted or repeated values, repeated column
//! names, bitmap bits beyond the last row group and trailing bytes.

use std::collections::HashMap;
use std::fmt;

use arrow::array::{Array, RecordBatch};

use crate::memtable::keys::encode_key_value;
use crate::row::Value;
use crate::schema::arrow::key_value_at;

/// Version of the sidecar format written.
pub const INDEX_FORMAT_VERSION: u16 = 1;

/// First bytes of every sidecar.
pub const INDEX_MAGIC: &[u8; 8] = b"ALVINDEX";

/// Most distinct values one column of one file indexes; beyond it the column is left out of that
/// file's sidecar (queries then just do not prune by it).
pub const MAX_INDEX_VALUES: usize = 1 << 21;

/// Most bytes of distinct encoded values one column of one file indexes, so that a column of
/// long unique strings cannot make the builder hold gigabytes; beyond it the column is left out.
const MAX_INDEX_BYTES: usize = 64 << 20;

/// Bytes of the fixed header: magic, version, reserved, checksum, body length.
const HEADER_LEN: usize = 8 + 2 + 2 + 4 + 8;

/// Byte range of the checksum within the header.
const CRC_AT: std::ops::Range<usize> = 12..16;

/// Returns the object path of the sidecar of a data file: `.../x.parquet` -> `.../x.index` (any
/// other path gets `.index` appended).
pub fn sidecar_path(data_path: &str) -> String {
    match data_path.strip_suffix(".parquet") {
        Some(stem) => format!("{stem}.index"),
        None => format!("{data_path}.index"),
    }
}

/// Errors decoding a sidecar.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The bytes do not start with [`INDEX_MAGIC`].
    #[error("not an index sidecar: starts with \"{}\" instead of \"ALVINDEX\"", found.escape_ascii())]
    BadMagic {
        /// The first eight bytes found.
        found: [u8; 8],
    },
    /// The sidecar was written in a format version this build cannot read.
    #[error("unsupported index format version {found} (this build reads version {supported})")]
    UnsupportedVersion {
        /// Version in the header.
        found: u16,
        /// Version this build reads.
        supported: u16,
    },
    /// The body does not hash to the checksum in the header.
    #[error("index checksum mismatch: header says {expected:#010x}, body hashes to {found:#010x}")]
    ChecksumMismatch {
        /// Checksum recorded in the header.
        expected: u32,
        /// Checksum of the body read.
        found: u32,
    },
    /// The input ends before a field it declares.
    #[error(
        "index truncated at byte {offset}: the {what} needs {needed} bytes but {available} remain"
    )]
    Truncated {
        /// Offset of the field that could not be read.
        offset: usize,
        /// The field.
        what: &'static str,
        /// Bytes the field needs.
        needed: u64,
        /// Bytes left from `offset` on.
        available: u64,
    },
    /// The input is complete and its checksum matches, but it breaks a rule of the format.
    #[error("malformed index at byte {offset}: {reason}")]
    Malformed {
        /// Offset of the offending field.
        offset: usize,
        /// The rule broken.
        reason: String,
    },
}

/// The row groups holding one value, in increasing order. Most values of selective columns sit
/// in a single row group, which needs no allocation.
enum Groups {
    One(u32),
    Many(Vec<u32>),
}

impl Groups {
    /// Records row group `g`, which is never below the groups recorded before.
    fn push(&mut self, g: u32) {
        match self {
            Groups::One(first) if *first != g => *self = Groups::Many(vec![*first, g]),
            Groups::One(_) => {}
            Groups::Many(v) => {
                if v.last() != Some(&g) {
                    v.push(g);
                }
            }
        }
    }

    fn as_slice(&self) -> &[u32] {
        match self {
            Groups::One(g) => std::slice::from_ref(g),
            Groups::Many(v) => v,
        }
    }
}

/// One column being indexed; `values` is `None` once the column is dropped.
struct ColumnBuilder {
    name: String,
    position: usize,
    values: Option<HashMap<Box<[u8]>, Groups>>,
    bytes: usize,
}

impl fmt::Debug for ColumnBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ColumnBuilder");
        d.field("name", &self.name)
            .field("position", &self.position);
        match &self.values {
            Some(values) => d.field("values", &values.len()).field("bytes", &self.bytes),
            None => d.field("dropped", &true),
        };
        d.finish()
    }
}

/// Collects, batch by batch, the values of the indexed columns of one data file.
#[derive(Debug)]
pub struct IndexBuilder {
    columns: Vec<ColumnBuilder>,
    rows_per_group: u64,
    max_values: usize,
    rows: u64,
}

impl IndexBuilder {
    /// Indexes `columns` = (column name, position in the batches written). `rows_per_group` =
    /// rows per Parquet row group the writer uses (0 is taken as 1). A name given twice is
    /// indexed once, at its first position.
    pub fn new(columns: Vec<(String, usize)>, rows_per_group: usize) -> Self {
        let mut builders: Vec<ColumnBuilder> = Vec::with_capacity(columns.len());
        for (name, position) in columns {
            if builders.iter().any(|b| b.name == name) {
                continue;
            }
            // A name the format cannot spell is left out rather than written wrongly.
            let values = (name.len() <= usize::from(u16::MAX)).then(HashMap::new);
            builders.push(ColumnBuilder {
                name,
                position,
                values,
                bytes: 0,
            });
        }
        Self {
            columns: builders,
            rows_per_group: (rows_per_group as u64).max(1),
            max_values: MAX_INDEX_VALUES,
            rows: 0,
        }
    }

    /// Lowers [`MAX_INDEX_VALUES`] (for tests); a larger `max` is ignored.
    pub fn with_max_values(mut self, max: usize) -> Self {
        self.max_values = max.min(MAX_INDEX_VALUES);
        self
    }

    /// Records the rows of `batch`, which follow the rows observed before in file order (row `r`
    /// of the file is in row group `r / rows_per_group`). Nulls are not indexed. Columns whose
    /// type `key_value_at` does not support, that are missing from the batch, or that pass the
    /// limits on distinct values are dropped.
    pub fn observe(&mut self, batch: &RecordBatch) {
        let mut scratch = Vec::new();
        for column in &mut self.columns {
            let Some(values) = column.values.as_mut() else {
                continue;
            };
            let kept = match batch.columns().get(column.position) {
                Some(array) => observe_column(
                    values,
                    &mut column.bytes,
                    array.as_ref(),
                    self.rows,
                    self.rows_per_group,
                    self.max_values,
                    &mut scratch,
                ),
                None => false,
            };
            if !kept {
                // Frees the map: a dropped column costs nothing from here on.
                column.values = None;
            }
        }
        self.rows += batch.num_rows() as u64;
    }

    /// Returns the index, given the row counts of the row groups actually written. `None` when
    /// those counts do not match the assumed boundaries (every group but the last has
    /// `rows_per_group` rows and their total equals the rows observed) or when no column is left.
    pub fn finish(self, row_group_rows: &[u64]) -> Option<FileIndex> {
        let expected_groups = self.rows.div_ceil(self.rows_per_group);
        let total = row_group_rows
            .iter()
            .try_fold(0u64, |sum, &n| sum.checked_add(n))?;
        let full = row_group_rows
            .split_last()
            .map_or(&[][..], |(_, full)| full);
        if row_group_rows.len() as u64 != expected_groups
            || total != self.rows
            || full.iter().any(|&n| n != self.rows_per_group)
        {
            return None;
        }
        let row_groups = u32::try_from(row_group_rows.len()).ok()?;
        let bitmap_len = bitmap_len(row_groups);
        let columns: Vec<ColumnIndex> = self
            .columns
            .into_iter()
            .filter_map(|c| {
                let values = c.values?;
                let mut entries: Vec<(Box<[u8]>, Groups)> = values.into_iter().collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                let mut column = ColumnIndex {
                    name: c.name,
                    data: Vec::with_capacity(c.bytes),
                    ends: Vec::with_capacity(entries.len()),
                    bitmaps: vec![0; entries.len() * bitmap_len],
                };
                for (i, (value, groups)) in entries.iter().enumerate() {
                    column.data.extend_from_slice(value);
                    column.ends.push(column.data.len());
                    let bitmap = &mut column.bitmaps[i * bitmap_len..(i + 1) * bitmap_len];
                    for &g in groups.as_slice() {
                        // Observed groups are below `row_groups` since the counts matched.
                        if let Some(byte) = bitmap.get_mut(g as usize / 8) {
                            *byte |= 1 << (g % 8);
                        }
                    }
                }
                Some(column)
            })
            .collect();
        if columns.is_empty() {
            return None;
        }
        Some(FileIndex {
            row_groups,
            columns,
        })
    }
}

/// Records the values of one column of a batch; returns false when the column must be dropped.
fn observe_column(
    values: &mut HashMap<Box<[u8]>, Groups>,
    bytes: &mut usize,
    array: &dyn Array,
    first_row: u64,
    rows_per_group: u64,
    max_values: usize,
    scratch: &mut Vec<u8>,
) -> bool {
    if array.null_count() == array.len() {
        return true;
    }
    for i in 0..array.len() {
        let value = match key_value_at(array, i) {
            None => return false,
            Some(Value::Null) => continue,
            Some(v) => v,
        };
        scratch.clear();
        encode_key_value(&value, scratch);
        // Saturates only past 2^32 row groups, which `finish` then refuses.
        let group = u32::try_from((first_row + i as u64) / rows_per_group).unwrap_or(u32::MAX);
        if let Some(groups) = values.get_mut(scratch.as_slice()) {
            groups.push(group);
            continue;
        }
        if values.len() >= max_values
            || *bytes + scratch.len() > MAX_INDEX_BYTES
            || u32::try_from(scratch.len()).is_err()
        {
            return false;
        }
        *bytes += scratch.len();
        values.insert(scratch.as_slice().into(), Groups::One(group));
    }
    true
}

/// Bytes of the row-group bitmap of one value.
fn bitmap_len(row_groups: u32) -> usize {
    (row_groups as usize).div_ceil(8)
}

/// The values of one column, flattened to keep the many small values of a file cheap to hold.
#[derive(Clone, PartialEq, Eq)]
struct ColumnIndex {
    name: String,
    /// The encoded values, concatenated in strictly increasing order.
    data: Vec<u8>,
    /// End of each value in `data`.
    ends: Vec<usize>,
    /// One bitmap per value, `bitmap_len(row_groups)` bytes each.
    bitmaps: Vec<u8>,
}

impl ColumnIndex {
    fn len(&self) -> usize {
        self.ends.len()
    }

    fn value(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.data[start..self.ends[i]]
    }

    /// Position of `probe` among the values, by binary search.
    fn find(&self, probe: &[u8]) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.value(mid).cmp(probe) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }
}

/// A short form: a column can hold millions of values.
impl fmt::Debug for ColumnIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ColumnIndex")
            .field("name", &self.name)
            .field("values", &self.len())
            .field("value_bytes", &self.data.len())
            .finish()
    }
}

/// The secondary index of one data file: per indexed column, its distinct non-null values and
/// the row groups holding each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileIndex {
    row_groups: u32,
    columns: Vec<ColumnIndex>,
}

impl FileIndex {
    /// Encodes the index in the sidecar format (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let body_len = 8 + self
            .columns
            .iter()
            .map(|c| 2 + c.name.len() + 4 + 4 * c.len() + c.data.len() + c.bitmaps.len())
            .sum::<usize>();
        let mut out = Vec::with_capacity(HEADER_LEN + body_len);
        out.extend_from_slice(INDEX_MAGIC);
        out.extend_from_slice(&INDEX_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // checksum, filled in below
        out.extend_from_slice(&(body_len as u64).to_le_bytes());
        out.extend_from_slice(&self.row_groups.to_le_bytes());
        // The casts below cannot truncate: the builder and the decoder both keep names within
        // u16, values within u32 bytes and columns and values within u32 counts.
        out.extend_from_slice(&(self.columns.len() as u32).to_le_bytes());
        let bitmap_len = bitmap_len(self.row_groups);
        for c in &self.columns {
            out.extend_from_slice(&(c.name.len() as u16).to_le_bytes());
            out.extend_from_slice(c.name.as_bytes());
            out.extend_from_slice(&(c.len() as u32).to_le_bytes());
            for i in 0..c.len() {
                let value = c.value(i);
                out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                out.extend_from_slice(value);
                out.extend_from_slice(&c.bitmaps[i * bitmap_len..(i + 1) * bitmap_len]);
            }
        }
        let crc = crc32fast::hash(&out[HEADER_LEN..]);
        out[CRC_AT].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a sidecar written by [`FileIndex::encode`], explaining any failure.
    pub fn decode(bytes: &[u8]) -> Result<FileIndex, IndexError> {
        let mut c = Cursor { buf: bytes, pos: 0 };
        let found: [u8; 8] = c.array("magic")?;
        if &found != INDEX_MAGIC {
            return Err(IndexError::BadMagic { found });
        }
        let version = u16::from_le_bytes(c.array("format version")?);
        if version != INDEX_FORMAT_VERSION {
            return Err(IndexError::UnsupportedVersion {
                found: version,
                supported: INDEX_FORMAT_VERSION,
            });
        }
        let reserved_at = c.pos;
        let reserved = u16::from_le_bytes(c.array("reserved field")?);
        let expected = u32::from_le_bytes(c.array("checksum")?);
        let body_len = u64::from_le_bytes(c.array("body length")?);
        let remaining = c.remaining() as u64;
        if body_len > remaining {
            return Err(IndexError::Truncated {
                offset: c.pos,
                what: "body",
                needed: body_len,
                available: remaining,
            });
        }
        if body_len < remaining {
            return Err(IndexError::Malformed {
                offset: HEADER_LEN + body_len as usize,
                reason: format!(
                    "{} bytes follow the body of {body_len} bytes the header declares",
                    remaining - body_len
                ),
            });
        }
        if reserved != 0 {
            return Err(IndexError::Malformed {
                offset: reserved_at,
                reason: format!("the reserved header field is {reserved}, not 0"),
            });
        }
        let found = crc32fast::hash(&bytes[HEADER_LEN..]);
        if found != expected {
            return Err(IndexError::ChecksumMismatch { expected, found });
        }
        decode_body(c)
    }

    /// Returns the names of the indexed columns.
    pub fn columns(&self) -> Vec<&str> {
        self.columns.iter().map(|c| c.name.as_str()).collect()
    }

    /// Returns the number of row groups of the data file.
    pub fn row_groups(&self) -> usize {
        self.row_groups as usize
    }

    /// Returns the row groups (sorted, unique) that hold at least one of `values` (each encoded
    /// with `encode_key_value`) in `column`; `None` when the column is not in this index.
    pub fn row_groups_for(&self, column: &str, values: &[Vec<u8>]) -> Option<Vec<usize>> {
        let c = self.columns.iter().find(|c| c.name == column)?;
        let bitmap_len = bitmap_len(self.row_groups);
        let bitmap = |i: usize| &c.bitmaps[i * bitmap_len..(i + 1) * bitmap_len];
        // The union is only allocated once a value matched, so its size is bounded by the
        // bitmaps actually held, whatever row group count a sidecar declares.
        let mut hit: Option<Vec<u8>> = None;
        for i in values.iter().filter_map(|probe| c.find(probe)) {
            match hit.as_mut() {
                None => hit = Some(bitmap(i).to_vec()),
                Some(hit) => hit.iter_mut().zip(bitmap(i)).for_each(|(h, b)| *h |= b),
            }
        }
        let mut groups = Vec::new();
        for (byte_at, &byte) in hit.iter().flatten().enumerate() {
            groups.extend(
                (0..8)
                    .filter(|bit| byte & (1 << bit) != 0)
                    .map(|bit| byte_at * 8 + bit),
            );
        }
        Some(groups)
    }

    /// Returns the approximate bytes held in memory (for a cache budget).
    pub fn memory_size(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.columns.capacity() * std::mem::size_of::<ColumnIndex>()
            + self
                .columns
                .iter()
                .map(|c| {
                    c.name.capacity()
                        + c.data.capacity()
                        + c.ends.capacity() * std::mem::size_of::<usize>()
                        + c.bitmaps.capacity()
                })
                .sum::<usize>()
    }
}

/// Parses the body, whose length and checksum were verified; `c` stands at its first byte.
fn decode_body(mut c: Cursor<'_>) -> Result<FileIndex, IndexError> {
    let row_groups = u32::from_le_bytes(c.array("row group count")?);
    let bitmap_len = bitmap_len(row_groups);
    // Bits of the last bitmap byte that name row groups past the end must be clear.
    let stray_bits: u8 = match row_groups % 8 {
        0 => 0,
        used => !((1u8 << used) - 1),
    };
    let column_count = u32::from_le_bytes(c.array("column count")?) as usize;
    // A column takes at least its name length and value count: 6 bytes.
    let mut columns: Vec<ColumnIndex> = Vec::with_capacity(column_count.min(c.remaining() / 6));
    for _ in 0..column_count {
        let name_at = c.pos;
        let name_len = u16::from_le_bytes(c.array("column name length")?) as usize;
        let name = std::str::from_utf8(c.take(name_len, "column name")?).map_err(|_| {
            IndexError::Malformed {
                offset: name_at,
                reason: "a column name is not UTF-8".into(),
            }
        })?;
        if columns.iter().any(|k| k.name == name) {
            return Err(IndexError::Malformed {
                offset: name_at,
                reason: format!("column {name:?} appears twice"),
            });
        }
        let count = u32::from_le_bytes(c.array("value count")?) as usize;
        // A value takes at least its length and its bitmap.
        let fits = count.min(c.remaining() / (4 + bitmap_len));
        let mut column = ColumnIndex {
            name: name.to_string(),
            data: Vec::new(),
            ends: Vec::with_capacity(fits),
            bitmaps: Vec::with_capacity(fits * bitmap_len),
        };
        // Start of the previous value in `column.data`.
        let mut last_start = 0;
        for i in 0..count {
            let value_at = c.pos;
            let len = u32::from_le_bytes(c.array("value length")?) as usize;
            let value = c.take(len, "value")?;
            if i > 0 && value <= &column.data[last_start..] {
                return Err(IndexError::Malformed {
                    offset: value_at,
                    reason: format!(
                        "value {i} of column {name:?} does not follow value {} in strictly \
                         increasing order",
                        i - 1
                    ),
                });
            }
            last_start = column.data.len();
            column.data.extend_from_slice(value);
            column.ends.push(column.data.len());
            let bitmap_at = c.pos;
            let bitmap = c.take(bitmap_len, "row group bitmap")?;
            if bitmap.last().is_some_and(|&last| last & stray_bits != 0) {
                return Err(IndexError::Malformed {
                    offset: bitmap_at,
                    reason: format!(
                        "the bitmap of value {i} of column {name:?} marks row groups past the \
                         {row_groups} of the file"
                    ),
                });
            }
            column.bitmaps.extend_from_slice(bitmap);
        }
        columns.push(column);
    }
    if c.remaining() > 0 {
        return Err(IndexError::Malformed {
            offset: c.pos,
            reason: format!("{} bytes follow the last column", c.remaining()),
        });
    }
    Ok(FileIndex {
        row_groups,
        columns,
    })
}

/// Reads fields off a byte slice, refusing to read past its end.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], IndexError> {
        if self.remaining() < n {
            return Err(IndexError::Truncated {
                offset: self.pos,
                what,
                needed: n as u64,
                available: self.remaining() as u64,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], IndexError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
}

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
