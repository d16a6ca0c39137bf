//! The IMAP framing layer as the session drives it: bytes arrive in chunks whose sizes come
//! from the input, under limits that also come from the input (the small ones before login,
//! the large ones after). The framer never panics (literal sizes past u64, chained literals),
//! never claims more bytes than it was given, and never asks for more input once the
//! buffered command is past its limits: the session's buffer stays bounded by one command.
#![no_main]
use corvus::imap::codec::{Frame, frame, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, body)) = data.split_first() else {
        return;
    };
    let step = (knobs as usize % 32) + 1;
    let (max_line, max_literal, max_command) = if knobs & 0x80 == 0 {
        (1024, 64, 2048)
    } else {
        (4096, 1 << 16, (1 << 16) + 4096)
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut acked = 0;
    for chunk in body.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            match frame(&buf, acked, max_line, max_literal, max_command) {
                Frame::Complete(n) => {
                    assert!(n > 0 && n <= buf.len());
                    assert!(
                        n as u64 <= max_command + max_line as u64,
                        "command past its cap"
                    );
                    let _ = parse(&buf[..n]);
                    buf.drain(..n);
                    acked = 0;
                }
                Frame::NeedMore { continuation } => {
                    if continuation {
                        acked += 1;
                    }
                    assert!(
                        buf.len() as u64 <= max_command + max_line as u64 + step as u64,
                        "the framer waits for more with {} bytes buffered",
                        buf.len()
                    );
                    break;
                }
                Frame::LineTooLong => return,
                Frame::LiteralTooBig { end, nonsync, .. } => {
                    assert!(end <= buf.len());
                    if nonsync {
                        return;
                    }
                    buf.drain(..end);
                    acked = 0;
                }
            }
        }
    }
});
