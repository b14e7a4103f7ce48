//! The row model shared by the WAL, the memtable and the flush path, and its binary codec.
//!
//! A [`Row`] holds one value per schema field, in schema order, plus the operation (insert or
//! delete). Values are typed by the schema; the codec is self-describing (a tag per value) so a
//! WAL record decodes without its schema. Decoding checks every length against the remaining
//! input before allocating, since the bytes come from disk.

/// Operation of a row: the hidden `_op` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    /// Insert (append tables) or upsert (tables with a primary key).
    Upsert = 0,
    /// Delete of the primary key: a tombstone.
    Delete = 1,
}

impl Op {
    /// Decodes the `_op` value.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Op::Upsert),
            1 => Some(Op::Delete),
            _ => None,
        }
    }
}

/// One typed value. Which variant is valid for a field is decided by the schema:
/// `Int` carries int32 and int64, `Float` float32 and float64, `Timestamp` counts the field's
/// unit since the Unix epoch, `Date` counts days since the Unix epoch.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL (or an absent JSON field).
    Null,
    /// bool
    Bool(bool),
    /// int32 / int64
    Int(i64),
    /// uint64
    UInt(u64),
    /// float32 / float64
    Float(f64),
    /// utf8
    Str(String),
    /// binary
    Bytes(Vec<u8>),
    /// timestamp in the field's unit since the epoch
    Timestamp(i64),
    /// days since the epoch
    Date(i32),
    /// list of values of the element type
    List(Vec<Value>),
}

impl Value {
    /// Bytes this value holds on the heap (its inline part lives in its row's value vector),
    /// as the allocator hands them out: see [`allocation_size`].
    pub fn heap_size(&self) -> usize {
        match self {
            Value::Str(s) => allocation_size(s.capacity()),
            Value::Bytes(b) => allocation_size(b.capacity()),
            Value::List(items) => {
                aligned_allocation_size(items.capacity() * std::mem::size_of::<Value>())
                    + items.iter().map(Value::heap_size).sum::<usize>()
            }
            _ => 0,
        }
    }
}

/// The size of the block an allocator of size classes returns for a request of `bytes`: 8 bytes,
/// then multiples of 16 up to 64, then four classes per power of two (the classes of mimalloc,
/// the server's allocator). Memtable accounting counts blocks, not requests, so that the budget
/// bounds what the process really holds.
pub const fn allocation_size(bytes: usize) -> usize {
    const WORD: usize = std::mem::size_of::<usize>();
    if bytes <= WORD {
        return if bytes == 0 { 0 } else { WORD };
    }
    if bytes <= 64 {
        return bytes.div_ceil(16) * 16;
    }
    let words = bytes.div_ceil(WORD);
    let log2 = (words - 1).ilog2();
    let step = 1usize << (log2 - 2);
    words.div_ceil(step) * step * WORD
}

/// [`allocation_size`] for a block of word-aligned values: mimalloc serves a request above 64
/// bytes that is not a power of two with room for its alignment, which can take the next class
/// (a 224-byte vector of 7 values takes 256 bytes; measured by `actors/tests/memtable_bytes.rs`).
pub const fn aligned_allocation_size(bytes: usize) -> usize {
    if bytes > 64 && !bytes.is_power_of_two() {
        allocation_size(bytes + std::mem::align_of::<usize>() - 1)
    } else {
        allocation_size(bytes)
    }
}

/// One event, validated against a schema version.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Insert/upsert or delete.
    pub op: Op,
    /// One value per schema field, in schema order.
    pub values: Vec<Value>,
}

impl Row {
    /// Bytes this row holds on the heap: its value vector and what the values own.
    pub fn heap_size(&self) -> usize {
        aligned_allocation_size(self.values.capacity() * std::mem::size_of::<Value>())
            + self.values.iter().map(Value::heap_size).sum::<usize>()
    }
}

/// Why bytes did not decode as rows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The input ended inside a value.
    #[error("row data truncated at byte {0}")]
    Truncated(usize),
    /// An unknown value tag or op.
    #[error("unknown tag {tag} at byte {at}")]
    BadTag {
        /// The tag byte found.
        tag: u8,
        /// Its offset.
        at: usize,
    },
    /// A string that is not UTF-8.
    #[error("invalid utf-8 string at byte {0}")]
    BadUtf8(usize),
    /// Bytes left over after the declared rows.
    #[error("{0} trailing bytes after the rows")]
    Trailing(usize),
    /// Lists nested deeper than the codec allows.
    #[error("values nested too deeply at byte {0}")]
    TooDeep(usize),
}

const T_NULL: u8 = 0;
const T_FALSE: u8 = 1;
const T_TRUE: u8 = 2;
const T_INT: u8 = 3;
const T_UINT: u8 = 4;
const T_FLOAT: u8 = 5;
const T_STR: u8 = 6;
const T_BYTES: u8 = 7;
const T_TS: u8 = 8;
const T_DATE: u8 = 9;
const T_LIST: u8 = 10;
const MAX_DEPTH: usize = 16;

/// Appends the encoding of `rows` to `out`: a u32 row count, then per row the op, a u32 value
/// count and the tagged values (little endian throughout).
pub fn encode_rows(rows: &[Row], out: &mut Vec<u8>) {
    out.extend_from_slice(&(rows.len() as u32).to_le_bytes());
    for row in rows {
        out.push(row.op as u8);
        out.extend_from_slice(&(row.values.len() as u32).to_le_bytes());
        for v in &row.values {
            encode_value(v, out);
        }
    }
}

/// Length in bytes of [`encode_rows`]' output for `rows`, without encoding them.
pub fn encoded_len(rows: &[Row]) -> usize {
    4 + rows
        .iter()
        .map(|r| 5 + r.values.iter().map(value_len).sum::<usize>())
        .sum::<usize>()
}

fn value_len(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) => 1,
        Value::Int(_) | Value::UInt(_) | Value::Float(_) | Value::Timestamp(_) => 9,
        Value::Date(_) => 5,
        Value::Str(s) => 5 + s.len(),
        Value::Bytes(b) => 5 + b.len(),
        Value::List(items) => 5 + items.iter().map(value_len).sum::<usize>(),
    }
}

fn encode_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.push(T_NULL),
        Value::Bool(false) => out.push(T_FALSE),
        Value::Bool(true) => out.push(T_TRUE),
        Value::Int(i) => {
            out.push(T_INT);
            out.extend_from_slice(&i.to_le_bytes());
        }
        Value::UInt(u) => {
            out.push(T_UINT);
            out.extend_from_slice(&u.to_le_bytes());
        }
        Value::Float(f) => {
            out.push(T_FLOAT);
            out.extend_from_slice(&f.to_le_bytes());
        }
        Value::Str(s) => {
            out.push(T_STR);
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        Value::Bytes(b) => {
            out.push(T_BYTES);
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        }
        Value::Timestamp(t) => {
            out.push(T_TS);
            out.extend_from_slice(&t.to_le_bytes());
        }
        Value::Date(d) => {
            out.push(T_DATE);
            out.extend_from_slice(&d.to_le_bytes());
        }
        Value::List(items) => {
            out.push(T_LIST);
            out.extend_from_slice(&(items.len() as u32).to_le_bytes());
            for item in items {
                encode_value(item, out);
            }
        }
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.buf.len() - self.pos < n {
            return Err(CodecError::Truncated(self.pos));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// A count of items each at least `min_item` bytes long: checked against what is left so
    /// that a corrupt count never drives a huge allocation.
    fn count(&mut self, min_item: usize) -> Result<usize, CodecError> {
        let at = self.pos;
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item) > self.buf.len() - self.pos {
            return Err(CodecError::Truncated(at));
        }
        Ok(n)
    }
}

/// Decodes rows written by [`encode_rows`]; the whole input must be consumed.
pub fn decode_rows(buf: &[u8]) -> Result<Vec<Row>, CodecError> {
    let mut c = Cursor { buf, pos: 0 };
    let n = c.count(5)?;
    let mut rows = Vec::with_capacity(n);
    for _ in 0..n {
        let at = c.pos;
        let op = c.u8()?;
        let op = Op::from_u8(op).ok_or(CodecError::BadTag { tag: op, at })?;
        let nv = c.count(1)?;
        let mut values = Vec::with_capacity(nv);
        for _ in 0..nv {
            values.push(decode_value(&mut c, 0)?);
        }
        rows.push(Row { op, values });
    }
    if c.pos != buf.len() {
        return Err(CodecError::Trailing(buf.len() - c.pos));
    }
    Ok(rows)
}

fn decode_value(c: &mut Cursor<'_>, depth: usize) -> Result<Value, CodecError> {
    let at = c.pos;
    let tag = c.u8()?;
    Ok(match tag {
        T_NULL => Value::Null,
        T_FALSE => Value::Bool(false),
        T_TRUE => Value::Bool(true),
        T_INT => Value::Int(i64::from_le_bytes(c.array()?)),
        T_UINT => Value::UInt(u64::from_le_bytes(c.array()?)),
        T_FLOAT => Value::Float(f64::from_le_bytes(c.array()?)),
        T_TS => Value::Timestamp(i64::from_le_bytes(c.array()?)),
        T_DATE => Value::Date(i32::from_le_bytes(c.array()?)),
        T_STR => {
            let n = c.count(1)?;
            let s = std::str::from_utf8(c.take(n)?).map_err(|_| CodecError::BadUtf8(at))?;
            Value::Str(s.to_owned())
        }
        T_BYTES => {
            let n = c.count(1)?;
            Value::Bytes(c.take(n)?.to_vec())
        }
        T_LIST => {
            if depth >= MAX_DEPTH {
                return Err(CodecError::TooDeep(at));
            }
            let n = c.count(1)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(decode_value(c, depth + 1)?);
            }
            Value::List(items)
        }
        tag => return Err(CodecError::BadTag { tag, at }),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn allocation_sizes_follow_the_size_classes() {
        let classes = [
            (0, 0),
            (1, 8),
            (8, 8),
            (9, 16),
            (24, 32),
            (64, 64),
            (65, 80),
            (88, 96),
        ];
        let more = [
            (129, 160),
            (224, 224),
            (225, 256),
            (1000, 1024),
            (1025, 1280),
        ];
        for (bytes, block) in classes.into_iter().chain(more) {
            assert_eq!(allocation_size(bytes), block, "{bytes} bytes");
        }
        // Word-aligned blocks that are not a power of two take room for their alignment.
        assert_eq!(aligned_allocation_size(64), 64);
        assert_eq!(aligned_allocation_size(96), 112);
        assert_eq!(aligned_allocation_size(224), 256);
        assert_eq!(aligned_allocation_size(256), 256);
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            any::<u64>().prop_map(Value::UInt),
            any::<f64>()
                .prop_filter("nan != nan", |f| !f.is_nan())
                .prop_map(Value::Float),
            ".{0,20}".prop_map(Value::Str),
            proptest::collection::vec(any::<u8>(), 0..20).prop_map(Value::Bytes),
            any::<i64>().prop_map(Value::Timestamp),
            any::<i32>().prop_map(Value::Date),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            proptest::collection::vec(inner, 0..4).prop_map(Value::List)
        })
    }

    fn row() -> impl Strategy<Value = Row> {
        (any::<bool>(), proptest::collection::vec(value(), 0..6)).prop_map(|(del, values)| Row {
            op: if del { Op::Delete } else { Op::Upsert },
            values,
        })
    }

    proptest! {
        #[test]
        fn roundtrips(rows in proptest::collection::vec(row(), 0..8)) {
            let mut buf = Vec::new();
            encode_rows(&rows, &mut buf);
            prop_assert_eq!(encoded_len(&rows), buf.len());
            prop_assert_eq!(decode_rows(&buf).unwrap(), rows);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_rows(&bytes);
        }

        #[test]
        fn truncation_is_an_error(rows in proptest::collection::vec(row(), 1..4), cut in 1usize..8) {
            let mut buf = Vec::new();
            encode_rows(&rows, &mut buf);
            let keep = buf.len().saturating_sub(cut);
            prop_assert!(decode_rows(&buf[..keep]).is_err());
        }
    }

    #[test]
    fn huge_count_does_not_allocate() {
        let buf = u32::MAX.to_le_bytes();
        assert_eq!(decode_rows(&buf), Err(CodecError::Truncated(0)));
    }
}
