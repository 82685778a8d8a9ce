//! Client bytes → startup packet, frames, decoded messages: never a panic
//! (outside the guarded codec calls); every frame decodes, is an ERROR for
//! its content (`ClientMsg::Invalid`), or is FATAL.
#![no_main]

mod common;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shardcar::wire::{decode_startup, decode_stream};

fuzz_target!(|data: &[u8]| {
    common::setup();
    let _ = decode_startup(&mut BytesMut::from(data));
    for decoded in decode_stream(&mut BytesMut::from(data)) {
        if let Err(e) = decoded {
            // Only a frame that cannot be trusted ends the session.
            assert!(e.fatal, "a non-fatal error must come back as ClientMsg::Invalid");
        }
    }
});
