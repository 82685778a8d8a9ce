//! The comparison a merge of shards' rows sorts by is a total order for
//! every column type it accepts, on any bytes a server could send.
#![no_main]

mod common;

use std::cmp::Ordering;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use shardcar::scatter::compare::Order;

#[derive(Debug, Arbitrary)]
struct Input {
    type_oid: u8,
    binary: bool,
    text_in_c: bool,
    a: Vec<u8>,
    b: Vec<u8>,
    c: Vec<u8>,
}

/// The types merges order by (int2/4/8, oid, float4/8, numeric, bool, uuid, dates, text).
const TYPES: [u32; 14] = [20, 21, 23, 26, 700, 701, 1700, 16, 2950, 1082, 1114, 1184, 25, 1043];

fuzz_target!(|input: Input| {
    common::setup();
    let oid = TYPES[usize::from(input.type_oid) % TYPES.len()];
    let Ok(order) = Order::of(oid, input.text_in_c, input.binary) else { return };
    let (a, b, c) = (&input.a[..], &input.b[..], &input.c[..]);
    assert_eq!(order.compare(a, a), Ordering::Equal, "reflexive");
    assert_eq!(order.compare(a, b), order.compare(b, a).reverse(), "antisymmetric");
    if order.compare(a, b) != Ordering::Greater && order.compare(b, c) != Ordering::Greater {
        assert_ne!(order.compare(a, c), Ordering::Greater, "transitive");
    }
});
