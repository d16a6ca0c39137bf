//! Any bytes as an SMTP command line: the parser returns a command or an error, never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Some((line, used)) = corvus::smtp::codec::next_line(rest) {
        let _ = corvus::smtp::codec::parse_command(line);
        rest = &rest[used..];
    }
    let _ = corvus::smtp::codec::parse_command(rest);
});
