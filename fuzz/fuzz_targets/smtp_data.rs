//! Any bytes as DATA, fed in chunks whose sizes come from the input: the decoder consumes
//! them without panicking and never keeps more than its limits.
#![no_main]
use corvus::smtp::data::{DataReceiver, Feed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&step, body)) = data.split_first() else {
        return;
    };
    let step = (step as usize % 64) + 1;
    let mut rx = DataReceiver::new(4096, 256);
    let mut buf = Vec::new();
    for chunk in body.chunks(step) {
        buf.extend_from_slice(chunk);
        match rx.feed(&buf) {
            Feed::More(n) => {
                assert!(n <= buf.len());
                buf.drain(..n);
                assert!(buf.len() <= 256 + step, "unbounded buffer");
            }
            Feed::Done(n) => {
                assert!(n <= buf.len());
                let _ = rx.finish();
                return;
            }
        }
    }
});
