//! Ordering values in Postgres's text or binary output format, as Postgres
//! orders them, for the types a k-way merge can compare exactly; other
//! types are refused before any row is sent.

use std::cmp::Ordering;

/// How one column's values compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Integer,
    Float,
    Numeric,
    /// Byte order: text under the C collation, uuid, bool (`f` < `t`).
    Bytes,
    /// ISO dates and timestamps (DateStyle ISO), with `-infinity`/`infinity`.
    DateTime,
    /// Binary big-endian signed integers: int2/4/8, and dates and
    /// timestamps (days or microseconds; infinities are the extremes).
    BinarySigned,
    /// Binary float4/float8.
    BinaryFloat,
}

impl Order {
    /// The comparison for a type OID; `text_in_c`: the database collation
    /// is C; `binary`: values come in binary format.
    pub fn of(type_oid: u32, text_in_c: bool, binary: bool) -> Result<Order, String> {
        if binary {
            return Ok(match type_oid {
                20 | 21 | 23 | 1082 | 1114 | 1184 => Order::BinarySigned,
                700 | 701 => Order::BinaryFloat,
                // oid (unsigned, fixed width), bool, uuid: byte order is value order.
                26 | 16 | 2950 => Order::Bytes,
                25 | 1043 | 19 if text_in_c => Order::Bytes,
                1700 => return Err("ordering numeric values in binary format across shards is not supported".into()),
                _ => {
                    return Order::of(type_oid, text_in_c, false).and(Err(format!(
                        "ordering by a column of type oid {type_oid} in binary format across shards is not supported"
                    )));
                }
            });
        }
        Ok(match type_oid {
            20 | 21 | 23 | 26 => Order::Integer,
            700 | 701 => Order::Float,
            1700 => Order::Numeric,
            16 | 2950 => Order::Bytes,
            1082 | 1114 | 1184 => Order::DateTime,
            25 | 1043 | 19 if text_in_c => Order::Bytes,
            25 | 1043 | 19 => {
                return Err("ordering text across shards needs the C collation on the shards \
                            (their order cannot be reproduced by shardcar otherwise)"
                    .into());
            }
            other => return Err(format!("ordering by a column of type oid {other} across shards is not supported")),
        })
    }

    /// Compares two non-NULL values in text format.
    pub fn compare(self, a: &[u8], b: &[u8]) -> Ordering {
        match self {
            Order::Bytes => a.cmp(b),
            Order::Integer => parse::<i64>(a).cmp(&parse::<i64>(b)),
            Order::Float => float_key(a).total_cmp(&float_key(b)),
            Order::Numeric => numeric(a, b),
            Order::DateTime => datetime_rank(a).cmp(&datetime_rank(b)).then_with(|| a.cmp(b)),
            Order::BinarySigned => signed(a).cmp(&signed(b)),
            Order::BinaryFloat => binary_float(a).total_cmp(&binary_float(b)),
        }
    }
}

fn signed(v: &[u8]) -> i64 {
    match v.len() {
        2 => i16::from_be_bytes([v[0], v[1]]).into(),
        4 => i32::from_be_bytes([v[0], v[1], v[2], v[3]]).into(),
        8 => i64::from_be_bytes([v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]]),
        _ => 0,
    }
}

/// Postgres sorts every NaN above all other values.
fn binary_float(v: &[u8]) -> f64 {
    let f = match v.len() {
        4 => f32::from_be_bytes([v[0], v[1], v[2], v[3]]).into(),
        8 => f64::from_be_bytes([v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]]),
        _ => 0.0,
    };
    if f.is_nan() { f64::NAN.copysign(1.0) } else { f }
}

fn parse<T: std::str::FromStr + Default>(v: &[u8]) -> T {
    std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()).unwrap_or_default()
}

/// Postgres sorts NaN above every other float, infinity included: so does
/// `total_cmp` for the (positive) NaN that parsing `NaN` gives.
fn float_key(v: &[u8]) -> f64 {
    parse::<f64>(v)
}

/// `-infinity` first, `infinity` last, other ISO values by their text.
fn datetime_rank(v: &[u8]) -> i8 {
    match v {
        b"-infinity" => -1,
        b"infinity" => 1,
        _ => 0,
    }
}

/// Numeric text (`-12.50`, `NaN`, `Infinity`, `-Infinity`) by value.
fn numeric(a: &[u8], b: &[u8]) -> Ordering {
    fn rank(v: &[u8]) -> i8 {
        match v {
            b"-Infinity" => -2,
            b"Infinity" => 2,
            b"NaN" => 3,
            _ => 0,
        }
    }
    let (ra, rb) = (rank(a), rank(b));
    if ra != 0 || rb != 0 {
        return ra.cmp(&rb).then(Ordering::Equal);
    }
    let (neg_a, ma) = split_sign(a);
    let (neg_b, mb) = split_sign(b);
    let zero = |m: &[u8]| m.iter().all(|c| *c == b'0' || *c == b'.');
    let (neg_a, neg_b) = (neg_a && !zero(ma), neg_b && !zero(mb));
    match (neg_a, neg_b) {
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => magnitude(ma, mb),
        (true, true) => magnitude(mb, ma),
    }
}

fn split_sign(v: &[u8]) -> (bool, &[u8]) {
    match v.first() {
        Some(b'-') => (true, &v[1..]),
        Some(b'+') => (false, &v[1..]),
        _ => (false, v),
    }
}

/// Compares unsigned decimal strings by value.
fn magnitude(a: &[u8], b: &[u8]) -> Ordering {
    let split = |v: &[u8]| -> (Vec<u8>, Vec<u8>) {
        let (int, frac) = match v.iter().position(|c| *c == b'.') {
            Some(p) => (&v[..p], &v[p + 1..]),
            None => (v, &[][..]),
        };
        let int: Vec<u8> = int.iter().copied().skip_while(|c| *c == b'0').collect();
        let mut frac = frac.to_vec();
        while frac.last() == Some(&b'0') {
            frac.pop();
        }
        (int, frac)
    };
    let (ia, fa) = split(a);
    let (ib, fb) = split(b);
    ia.len().cmp(&ib.len()).then_with(|| ia.cmp(&ib)).then_with(|| fa.cmp(&fb))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numerics_compare_by_value() {
        let sorted = ["-Infinity", "-100.5", "-2", "-0.001", "0", "0.00", "0.5", "2", "10", "10.01", "Infinity", "NaN"];
        for (i, a) in sorted.iter().enumerate() {
            for (j, b) in sorted.iter().enumerate() {
                let want =
                    if (a, b) == (&"0", &"0.00") || (a, b) == (&"0.00", &"0") { Ordering::Equal } else { i.cmp(&j) };
                assert_eq!(Order::Numeric.compare(a.as_bytes(), b.as_bytes()), want, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn floats_put_nan_last_and_integers_compare_numerically() {
        let f = |a: &str, b: &str| Order::Float.compare(a.as_bytes(), b.as_bytes());
        assert_eq!(f("NaN", "Infinity"), Ordering::Greater);
        assert_eq!(f("-Infinity", "-1e300"), Ordering::Less);
        assert_eq!(f("2.5", "10"), Ordering::Less);
        assert_eq!(Order::Integer.compare(b"9", b"10"), Ordering::Less);
        assert_eq!(Order::Integer.compare(b"-9", b"-10"), Ordering::Greater);
    }

    #[test]
    fn dates_and_text() {
        let d = |a: &str, b: &str| Order::DateTime.compare(a.as_bytes(), b.as_bytes());
        assert_eq!(d("-infinity", "0001-01-01"), Ordering::Less);
        assert_eq!(d("infinity", "9999-12-31 23:59:59"), Ordering::Greater);
        assert_eq!(d("2024-01-02 10:00:00", "2024-01-10 09:00:00"), Ordering::Less);
        assert!(Order::of(25, false, false).is_err());
        assert_eq!(Order::of(25, true, false), Ok(Order::Bytes));
        assert!(Order::of(3802, true, false).unwrap_err().contains("3802"));
        assert!(Order::of(1700, true, true).unwrap_err().contains("binary"));
        let b = Order::of(23, true, true).unwrap();
        assert_eq!(b.compare(&(-5i32).to_be_bytes(), &3i32.to_be_bytes()), Ordering::Less);
        let f = Order::of(701, true, true).unwrap();
        assert_eq!(f.compare(&f64::NAN.to_be_bytes(), &f64::INFINITY.to_be_bytes()), Ordering::Greater);
        assert_eq!(f.compare(&(-1.5f64).to_be_bytes(), &0.25f64.to_be_bytes()), Ordering::Less);
    }
}
