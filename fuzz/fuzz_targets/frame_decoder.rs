//! Fuzz target: the control protocol's frame decoder, fed any byte stream cut into chunks of
//! any size, must never panic. It refuses an oversized frame as soon as its length arrives,
//! never buffers more than one frame plus one chunk, and every message it returns encodes
//! back to a frame that decodes to the same message.
//!
//! Input: one byte that seeds the chunk sizes, then the stream. Both directions decode it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use ztmesh_common::wire::{
    encode_frame, ClientMsg, FrameDecoder, ServerMsg, MAX_CLIENT_FRAME, MAX_SERVER_FRAME,
};

/// Largest chunk pushed at once.
const MAX_CHUNK: usize = 64;

/// Decodes `stream` pushed in chunks; stops at the first error, as a connection would.
fn decode_all<T: DeserializeOwned>(seed: u8, stream: &[u8], max: usize, check: impl Fn(&T)) {
    let mut d = FrameDecoder::new(max);
    let mut rest = stream;
    let mut x = u32::from(seed);
    while !rest.is_empty() {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = ((x >> 16) as usize % MAX_CHUNK + 1).min(rest.len());
        d.push(&rest[..n]);
        rest = &rest[n..];
        loop {
            match d.announced_len() {
                Err(_) => return,
                Ok(Some(len)) => assert!(len <= max),
                Ok(None) => {}
            }
            match d.next_msg::<T>() {
                Ok(Some(m)) => check(&m),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(d.pending() <= 4 + max + MAX_CHUNK);
    }
}

/// Decodes the single frame `f`.
fn decode_one<T: DeserializeOwned>(f: &[u8], max: usize) -> T {
    let mut d = FrameDecoder::new(max);
    d.push(f);
    let m = d.next_msg::<T>().expect("re-encoded frame decodes");
    assert_eq!(d.pending(), 0);
    m.expect("re-encoded frame is complete")
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    decode_all::<ClientMsg>(seed, stream, MAX_CLIENT_FRAME, |m| {
        // Posture numbers may be NaN, so compare encodings rather than messages.
        let f = encode_frame(m).expect("decoded message encodes");
        let again: ClientMsg = decode_one(&f, MAX_CLIENT_FRAME);
        assert_eq!(encode_frame(&again).expect("encodes"), f);
    });
    decode_all::<ServerMsg>(seed, stream, MAX_SERVER_FRAME, |m| {
        let f = encode_frame(m).expect("decoded message encodes");
        assert_eq!(&decode_one::<ServerMsg>(&f, MAX_SERVER_FRAME), m);
    });
});
