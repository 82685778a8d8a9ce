//! COPY text cut into rows, arriving in any chunks: the same rows and keys
//! whatever the chunking, and the rows are the data byte for byte.
#![no_main]

mod common;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use shardcar::scatter::copy::RowSplitter;

#[derive(Debug, Arbitrary)]
struct Input {
    delimiter: u8,
    key_field: u8,
    /// Where the data is cut into chunks.
    cuts: Vec<u16>,
    data: Vec<u8>,
}

type Rows = Result<Vec<(Vec<u8>, Option<String>)>, String>;

fn split(input: &Input, chunks: &[&[u8]]) -> Rows {
    let mut s = RowSplitter::new(input.delimiter, usize::from(input.key_field % 8));
    let mut rows = Vec::new();
    for chunk in chunks {
        s.push(chunk, |r| {
            rows.push((r.bytes.to_vec(), r.key));
            Ok(())
        })?;
    }
    s.finish(|r| {
        rows.push((r.bytes.to_vec(), r.key));
        Ok(())
    })?;
    Ok(rows)
}

fuzz_target!(|input: Input| {
    common::setup();
    if input.delimiter == b'\n' || input.delimiter == b'\\' {
        return;
    }
    let whole = split(&input, &[&input.data]);
    let mut cuts: Vec<usize> = input.cuts.iter().map(|&c| usize::from(c) % (input.data.len() + 1)).collect();
    cuts.sort_unstable();
    let mut chunks = Vec::new();
    let mut at = 0;
    for c in cuts {
        chunks.push(&input.data[at..c]);
        at = c;
    }
    chunks.push(&input.data[at..]);
    assert_eq!(split(&input, &chunks), whole, "chunking changed the rows");
    if let Ok(rows) = whole {
        let joined: Vec<u8> = rows.iter().flat_map(|(bytes, _)| bytes.iter().copied()).collect();
        // Up to an end marker (`\.`), every byte is in a row (a last row
        // without a newline gets one).
        if !input.data.windows(2).any(|w| w == b"\\.") {
            let mut data = input.data.clone();
            if !data.is_empty() && !data.ends_with(b"\n") {
                data.push(b'\n');
            }
            assert_eq!(joined, data);
        }
    }
});
