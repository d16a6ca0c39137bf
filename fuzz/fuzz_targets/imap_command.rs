//! Any bytes as IMAP input: framing and parsing never panic, and a complete frame never
//! claims more bytes than were given.
#![no_main]
use corvus::imap::codec::{Frame, frame, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    loop {
        match frame(rest, usize::MAX, 8192, 65536, 1 << 20) {
            Frame::Complete(n) => {
                assert!(n <= rest.len());
                let _ = parse(&rest[..n]);
                rest = &rest[n..];
            }
            _ => break,
        }
    }
});
