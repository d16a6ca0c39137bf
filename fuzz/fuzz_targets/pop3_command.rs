//! Any bytes as POP3 input: command lines parse to a command or an error, never panic; a
//! response built from client text is exactly one line; and any bytes sent as a message
//! (RETR, or TOP with a line count taken from the input) come out dot-stuffed so that the
//! terminating `.` line is the only one, i.e. a message cannot end the response early.
#![no_main]
use corvus::pop3::codec::{Response, next_line, parse_command, write_message};
use libfuzzer_sys::fuzz_target;

fn one_line(r: &Response) {
    let mut out = Vec::new();
    r.write_to(&mut out);
    assert!(out.ends_with(b"\r\n"));
    let body = &out[..out.len() - 2];
    assert!(!body.contains(&b'\n') && !body.contains(&b'\r'), "{out:?}");
}

fuzz_target!(|data: &[u8]| {
    // Commands, as the session reads them.
    let mut rest = data;
    while let Some((line, used)) = next_line(rest) {
        assert!(used <= rest.len() && line.len() < used);
        match parse_command(line) {
            Ok(cmd) => one_line(&Response::ok(format!("{cmd:?}"))),
            Err(e) => one_line(&Response::err(format!(
                "{e} {}",
                String::from_utf8_lossy(line)
            ))),
        }
        rest = &rest[used..];
    }
    let _ = parse_command(rest);

    // The same bytes as a message.
    let top = match data.first() {
        Some(&b) if b & 1 == 1 => Some(u32::from(b >> 1)),
        _ => None,
    };
    let mut out = Vec::new();
    write_message(&mut out, data, top);
    assert!(out.ends_with(b".\r\n"), "{out:?}");
    let lines: Vec<&[u8]> = out[..out.len() - 1].split(|&b| b == b'\n').collect();
    let (last, body) = lines.split_last().unwrap();
    assert_eq!(*last, b".\r");
    for l in body {
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        assert_ne!(
            l, b".",
            "a line of the message ends the response early: {out:?}"
        );
    }
});
