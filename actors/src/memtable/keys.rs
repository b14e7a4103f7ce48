//! Order-preserving (memcomparable) encoding of sort keys.
//!
//! The memtable's skiplist orders rows by bytes; this encoding makes byte order equal the
//! order of the values: nulls first, integers and timestamps by value, strings and binaries
//! lexicographically (with `0x00` escaped so a prefix sorts before its extensions).

use crate::row::Value;

/// Appends the order-preserving encoding of `v` to `out`.
pub fn encode_key_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.push(0),
        Value::Bool(b) => out.extend_from_slice(&[1, *b as u8]),
        Value::Int(i) | Value::Timestamp(i) => {
            out.push(1);
            out.extend_from_slice(&((*i as u64) ^ (1 << 63)).to_be_bytes());
        }
        Value::Date(d) => {
            out.push(1);
            out.extend_from_slice(&((*d as u32) ^ (1 << 31)).to_be_bytes());
        }
        Value::UInt(u) => {
            out.push(1);
            out.extend_from_slice(&u.to_be_bytes());
        }
        Value::Float(f) => {
            // Total order on floats: flip all bits of negatives, the sign bit of positives.
            let bits = f.to_bits();
            let ordered = if bits >> 63 == 1 {
                !bits
            } else {
                bits ^ (1 << 63)
            };
            out.push(1);
            out.extend_from_slice(&ordered.to_be_bytes());
        }
        Value::Str(s) => {
            out.push(1);
            escape(s.as_bytes(), out);
        }
        Value::Bytes(b) => {
            out.push(1);
            escape(b, out);
        }
        Value::List(items) => {
            out.push(1);
            for item in items {
                out.push(1);
                encode_key_value(item, out);
            }
            out.push(0);
        }
    }
}

fn escape(bytes: &[u8], out: &mut Vec<u8>) {
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        encode_key_value(v, &mut out);
        out
    }

    proptest! {
        #[test]
        fn ints_keep_order(a: i64, b: i64) {
            prop_assert_eq!(a.cmp(&b), enc(&Value::Int(a)).cmp(&enc(&Value::Int(b))));
        }

        #[test]
        fn uints_keep_order(a: u64, b: u64) {
            prop_assert_eq!(a.cmp(&b), enc(&Value::UInt(a)).cmp(&enc(&Value::UInt(b))));
        }

        #[test]
        fn dates_keep_order(a: i32, b: i32) {
            prop_assert_eq!(a.cmp(&b), enc(&Value::Date(a)).cmp(&enc(&Value::Date(b))));
        }

        #[test]
        fn strings_keep_order(a in "[a\\x00b]{0,6}", b in "[a\\x00b]{0,6}") {
            prop_assert_eq!(a.cmp(&b), enc(&Value::Str(a.clone())).cmp(&enc(&Value::Str(b.clone()))));
        }

        #[test]
        fn composite_keys_keep_order(a: (i64, String), b: (i64, String)) {
            let key = |(i, s): &(i64, String)| {
                let mut out = Vec::new();
                encode_key_value(&Value::Int(*i), &mut out);
                encode_key_value(&Value::Str(s.clone()), &mut out);
                out
            };
            prop_assert_eq!(a.cmp(&b), key(&a).cmp(&key(&b)));
        }

        #[test]
        fn floats_keep_order(a in -1e300f64..1e300, b in -1e300f64..1e300) {
            prop_assert_eq!(a.partial_cmp(&b), Some(enc(&Value::Float(a)).cmp(&enc(&Value::Float(b)))));
        }
    }

    #[test]
    fn null_sorts_first() {
        assert!(enc(&Value::Null) < enc(&Value::Int(i64::MIN)));
        assert!(enc(&Value::Null) < enc(&Value::Str(String::new())));
    }
}
