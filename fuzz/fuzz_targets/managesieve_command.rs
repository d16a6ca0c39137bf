//! Any bytes as ManageSieve input: the codec takes a command (with its literals), a bad
//! command with the bytes to drop, "incomplete", or "too big", never panics, and always
//! makes progress on a complete command, so a session cannot spin on input it already has.
#![no_main]
use corvus::managesieve::codec::{Parsed, parse, parse_sasl, write_string};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    for _ in 0..1000 {
        match parse(rest, 4096) {
            Parsed::Incomplete | Parsed::TooBig(_) => break,
            Parsed::Command(cmd, used) => {
                assert!(used > 0 && used <= rest.len());
                let mut out = Vec::new();
                write_string(&mut out, format!("{cmd:?}").as_bytes());
                rest = &rest[used..];
            }
            Parsed::Bad(_, used) => {
                assert!(used > 0 && used <= rest.len(), "{used} of {}", rest.len());
                rest = &rest[used..];
            }
        }
    }
    let _ = parse_sasl(data);
});
