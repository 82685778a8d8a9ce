//! COPY data (text, CSV or binary) cut into rows, arriving in any chunks:
//! the same pieces, keys and errors whatever the chunking, and the pieces
//! are the data byte for byte.
#![no_main]

mod common;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use shardcar::scatter::copy::{BinaryKey, CsvOptions, Format, Piece, RowSplitter};

#[derive(Debug, Arbitrary)]
enum Kind {
    Text { header: bool, null: Vec<u8> },
    Csv { quote: u8, escape: u8, header: bool, null: Vec<u8>, force_not_null: bool, force_null: bool },
    Binary { key: u8 },
}

#[derive(Debug, Arbitrary)]
struct Input {
    kind: Kind,
    delimiter: u8,
    key_field: u8,
    /// Where the data is cut into chunks.
    cuts: Vec<u16>,
    data: Vec<u8>,
}

type Pieces = Result<Vec<(Vec<u8>, Option<String>, bool)>, String>;

fn format(input: &Input) -> Format {
    match &input.kind {
        Kind::Text { header, null } => Format::Text { delimiter: input.delimiter, null: null.clone(), header: *header },
        Kind::Csv { quote, escape, header, null, force_not_null, force_null } => Format::Csv(CsvOptions {
            delimiter: input.delimiter,
            quote: *quote,
            escape: *escape,
            null: null.clone(),
            header: *header,
            key_force_not_null: *force_not_null,
            key_force_null: *force_null,
        }),
        Kind::Binary { key } => Format::Binary {
            key: [BinaryKey::Int2, BinaryKey::Int4, BinaryKey::Int8, BinaryKey::Text, BinaryKey::Uuid]
                [usize::from(*key) % 5],
        },
    }
}

fn split(input: &Input, chunks: &[&[u8]]) -> Pieces {
    let mut s = RowSplitter::new(&format(input), usize::from(input.key_field % 8), usize::MAX);
    let mut out = Vec::new();
    let mut keep = |p: Piece<'_>| {
        out.push(match p {
            Piece::Row { bytes, key } => (bytes.to_vec(), key, false),
            Piece::Everyone(bytes) => (bytes.to_vec(), None, true),
        });
        Ok(())
    };
    for chunk in chunks {
        s.push(chunk, &mut keep).map_err(|e| e.message)?;
    }
    s.finish(&mut keep).map_err(|e| e.message)?;
    Ok(out)
}

fuzz_target!(|input: Input| {
    common::setup();
    let text_like = !matches!(input.kind, Kind::Binary { .. });
    // The statement's own checks refuse these (Postgres too).
    if text_like && matches!(input.delimiter, b'\n' | b'\r' | b'\\') {
        return;
    }
    if let Kind::Csv { quote, .. } = input.kind
        && (quote == input.delimiter || matches!(quote, b'\n' | b'\r'))
    {
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
    assert_eq!(split(&input, &chunks), whole, "chunking changed the pieces");
    let Ok(pieces) = whole else { return };
    let joined: Vec<u8> = pieces.iter().flat_map(|(bytes, ..)| bytes.iter().copied()).collect();
    if text_like {
        // Up to an end marker (`\.`), every byte is in a piece; a last row
        // without its line end (or whose newline was escaped) gets one.
        if !input.data.windows(2).any(|w| w == b"\\.") {
            let with_end = [&input.data[..], b"\n"].concat();
            let header_alone = pieces.is_empty();
            assert!(joined == input.data || joined == with_end || header_alone, "bytes changed: {pieces:?}");
        }
    } else {
        assert_eq!(joined, input.data, "binary data is passed on whole");
    }
});
