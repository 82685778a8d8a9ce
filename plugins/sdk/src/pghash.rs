//! PostgreSQL's own hash partitioning, so that a shard key lands on the shard
//! whose index equals the remainder of a `PARTITION BY HASH` table with
//! `MODULUS <shards>`: integers hash as `hashint8extended` (which agrees with
//! int2 and int4 for the values they share), text as `hashtextextended` under
//! a deterministic collation, NULL as no value (remainder 0).
//!
//! A port of `src/common/hashfn.c` (Bob Jenkins' lookup3, little-endian)
//! and `compute_partition_hash_value` — no crate provides these.

use crate::Value;

/// `HASH_PARTITION_SEED` in `src/include/catalog/partition.h`.
pub const PARTITION_SEED: u64 = 0x7A5B_2236_7996_DCFD;

/// The partition (and so shard) index of `key` among `count`, as Postgres
/// would place it in a hash-partitioned table with `MODULUS count`.
pub fn partition(key: &Value, count: usize) -> usize {
    if count == 0 {
        return 0;
    }
    let row_hash = match key {
        Value::Null => 0,
        other => combine64(0, extended(other, PARTITION_SEED)),
    };
    (row_hash % count as u64) as usize
}

/// The seeded 64-bit hash Postgres computes for a value of its type.
pub fn extended(key: &Value, seed: u64) -> u64 {
    match key {
        Value::Null => 0,
        Value::Int(v) => int8_extended(*v, seed),
        Value::Text(s) => bytes_extended(s.as_bytes(), seed),
    }
}

/// `hashint8extended`: the high half folded into the low one, so that small
/// values hash like `hashint4extended`.
pub fn int8_extended(v: i64, seed: u64) -> u64 {
    let hi = (v >> 32) as u32;
    let lo = v as u32 ^ if v >= 0 { hi } else { !hi };
    uint32_extended(lo, seed)
}

/// `hash_combine64`.
pub fn combine64(a: u64, b: u64) -> u64 {
    a ^ b.wrapping_add(0x49a0_f4dd_15e5_a8e3).wrapping_add(a << 54).wrapping_add(a >> 7)
}

fn mix(mut a: u32, mut b: u32, mut c: u32) -> (u32, u32, u32) {
    a = a.wrapping_sub(c) ^ c.rotate_left(4);
    c = c.wrapping_add(b);
    b = b.wrapping_sub(a) ^ a.rotate_left(6);
    a = a.wrapping_add(c);
    c = c.wrapping_sub(b) ^ b.rotate_left(8);
    b = b.wrapping_add(a);
    a = a.wrapping_sub(c) ^ c.rotate_left(16);
    c = c.wrapping_add(b);
    b = b.wrapping_sub(a) ^ a.rotate_left(19);
    a = a.wrapping_add(c);
    c = c.wrapping_sub(b) ^ b.rotate_left(4);
    b = b.wrapping_add(a);
    (a, b, c)
}

fn finish(mut a: u32, mut b: u32, mut c: u32) -> u64 {
    c = (c ^ b).wrapping_sub(b.rotate_left(14));
    a = (a ^ c).wrapping_sub(c.rotate_left(11));
    b = (b ^ a).wrapping_sub(a.rotate_left(25));
    c = (c ^ b).wrapping_sub(b.rotate_left(16));
    a = (a ^ c).wrapping_sub(c.rotate_left(4));
    b = (b ^ a).wrapping_sub(a.rotate_left(14));
    c = (c ^ b).wrapping_sub(b.rotate_left(24));
    ((b as u64) << 32) | c as u64
}

fn seeded(len: u32, seed: u64) -> (u32, u32, u32) {
    let start = 0x9e37_79b9u32.wrapping_add(len).wrapping_add(3_923_095);
    let (a, b, c) = (start, start, start);
    if seed == 0 {
        return (a, b, c);
    }
    mix(a.wrapping_add((seed >> 32) as u32), b.wrapping_add(seed as u32), c)
}

/// `hash_bytes_uint32_extended`.
pub fn uint32_extended(k: u32, seed: u64) -> u64 {
    let (a, b, c) = seeded(4, seed);
    finish(a.wrapping_add(k), b, c)
}

/// `hash_bytes_extended`.
pub fn bytes_extended(k: &[u8], seed: u64) -> u64 {
    let (mut a, mut b, mut c) = seeded(k.len() as u32, seed);
    let word = |bytes: &[u8]| u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let mut rest = k;
    while rest.len() >= 12 {
        a = a.wrapping_add(word(&rest[0..4]));
        b = b.wrapping_add(word(&rest[4..8]));
        c = c.wrapping_add(word(&rest[8..12]));
        (a, b, c) = mix(a, b, c);
        rest = &rest[12..];
    }
    // The last 11 bytes: a and b take theirs little-endian; c's lowest byte
    // is reserved for the length, so its bytes start one place higher.
    for (i, &byte) in rest.iter().enumerate() {
        let byte = byte as u32;
        match i {
            0..=3 => a = a.wrapping_add(byte << (8 * i)),
            4..=7 => b = b.wrapping_add(byte << (8 * (i - 4))),
            _ => c = c.wrapping_add(byte << (8 * (i - 7))),
        }
    }
    finish(a, b, c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values computed by PostgreSQL 15: `SELECT hashint8extended(42, seed)`, ...
    #[test]
    fn matches_postgres() {
        let s = PARTITION_SEED;
        assert_eq!(int8_extended(42, s) as i64, 7363975540656877951);
        assert_eq!(int8_extended(-7, s) as i64, -7298374200968567817);
        assert_eq!(int8_extended(0, 0) as i64, 4154612158245552303);
        assert_eq!(bytes_extended(b"acme", s) as i64, -3006037837944560592);
        assert_eq!(bytes_extended(b"a longer tenant name here", s) as i64, -4080222085918227424);
        assert_eq!(bytes_extended(b"", s) as i64, -5700645584453517373);
    }

    /// Partitions of `PARTITION BY HASH` tables filled by PostgreSQL 15.
    #[test]
    fn places_keys_as_postgres_partitions_them() {
        let ints = [(1, 0), (2, 0), (3, 1), (4, 1), (5, 1), (6, 1), (7, 1), (8, 1), (42, 0)];
        for (k, part) in ints {
            assert_eq!(partition(&Value::Int(k), 2), part, "bigint {k}");
        }
        let texts = [("acme", 2), ("globex", 2), ("hooli", 2), ("initech", 0), ("umbrella", 1)];
        for (k, part) in texts {
            assert_eq!(partition(&Value::Text(k.into()), 3), part, "text {k}");
        }
    }

    #[test]
    fn null_goes_to_remainder_zero() {
        assert_eq!(partition(&Value::Null, 7), 0);
    }
}
