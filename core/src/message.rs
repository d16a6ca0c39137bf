//! Small helpers over raw RFC 5322 messages that do not need a full MIME parse.

/// Length of the header block including the blank line (or the whole message if none).
pub fn header_end(msg: &[u8]) -> usize {
    if msg.starts_with(b"\r\n") {
        return 2;
    }
    memchr::memmem::find(msg, b"\r\n\r\n")
        .map(|i| i + 4)
        .unwrap_or(msg.len())
}

/// Whether the header block has a field named `name` (case-insensitive).
pub fn has_header(msg: &[u8], name: &str) -> bool {
    let head = &msg[..header_end(msg)];
    head.split(|&b| b == b'\n').any(|line| {
        line.len() > name.len()
            && line[..name.len()].eq_ignore_ascii_case(name.as_bytes())
            && line[name.len()..].trim_ascii_start().starts_with(b":")
    })
}

/// Whether `name` is a valid header field name (RFC 5322 §3.6.8: printable ASCII but colon).
pub fn valid_field_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 76
        && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

/// Longest header line we write, without its CRLF (RFC 5322 §2.1.1: at most 998 octets).
pub const MAX_HEADER_LINE: usize = 998;

/// Format one header field. CR and LF in the value become spaces, so a value cannot inject
/// further fields. A field that would not fit on one line of [`MAX_HEADER_LINE`] octets is
/// folded (RFC 5322 §2.2.3) before a space, or inside a run without spaces (which adds one
/// space to the unfolded value): an over-long line would otherwise be refused by the next
/// hop, or hard-wrapped by it so that the rest of the value starts a new field.
pub fn format_field(name: &str, value: &str) -> String {
    let clean: String = value
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    if name.len() + 2 + clean.len() <= MAX_HEADER_LINE {
        return format!("{name}: {clean}\r\n");
    }
    // Fold at spaces when a line passes 78 octets (the recommended length), and inside a run
    // without spaces when it would pass the hard limit.
    const SOFT: usize = 78;
    let mut out = format!("{name}:");
    let mut line = out.len();
    for (i, word) in clean.split(' ').enumerate() {
        // A fold goes before the space that separated this word from the last one.
        if i > 0 && line + 1 + word.len() > SOFT {
            out.push_str("\r\n");
            line = 0;
        }
        out.push(' ');
        line += 1;
        let mut rest = word;
        while line + rest.len() > MAX_HEADER_LINE {
            let mut cut = MAX_HEADER_LINE - line;
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            out.push_str(&rest[..cut]);
            out.push_str("\r\n ");
            line = 1;
            rest = &rest[cut..];
        }
        out.push_str(rest);
        line += rest.len();
    }
    out.push_str("\r\n");
    out
}

/// RFC 5322 date for now.
pub fn rfc5322_now() -> String {
    chrono::Local::now()
        .format("%a, %d %b %Y %H:%M:%S %z")
        .to_string()
}

/// The message as filed at final delivery (RFC 5321 §4.4): a `Return-Path: <reverse-path>`
/// field on top, carrying the envelope sender (`<>` for bounces), and every `Return-Path`
/// the message arrived with removed (with its folded lines), so the field tells the truth.
pub fn with_return_path(msg: &[u8], reverse_path: &str) -> Vec<u8> {
    let clean: String = reverse_path
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '<' | '>'))
        .collect();
    let head_end = header_end(msg);
    let mut out = Vec::with_capacity(msg.len() + clean.len() + 18);
    out.extend_from_slice(b"Return-Path: <");
    out.extend_from_slice(clean.as_bytes());
    out.extend_from_slice(b">\r\n");
    let head = &msg[..head_end];
    let mut pos = 0;
    let mut dropping = false;
    while pos < head.len() {
        let end = memchr::memchr(b'\n', &head[pos..]).map_or(head.len(), |i| pos + i + 1);
        let line = &head[pos..end];
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation {
            dropping = line.len() > 11
                && line[..11].eq_ignore_ascii_case(b"Return-Path")
                && line[11..].trim_ascii_start().starts_with(b":");
        }
        if !dropping {
            out.extend_from_slice(line);
        }
        pos = end;
    }
    out.extend_from_slice(&msg[head_end..]);
    out
}

/// The message with hook-added header fields in front (invalid names are skipped).
pub fn prepend_headers(
    msg: &std::sync::Arc<Vec<u8>>,
    headers: &[(String, String)],
) -> std::sync::Arc<Vec<u8>> {
    if headers.is_empty() {
        return msg.clone();
    }
    let mut with = Vec::with_capacity(msg.len() + 256);
    for (name, value) in headers {
        if valid_field_name(name) {
            with.extend_from_slice(format_field(name, value).as_bytes());
        }
    }
    with.extend_from_slice(msg);
    std::sync::Arc::new(with)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_path_is_added_and_arrived_ones_removed() {
        let m = b"Return-Path: <forged@evil.test>\r\nFrom: a\r\nreturn-path :\r\n <x@y>\r\nSubject: s\r\n\r\nReturn-Path: body stays\r\n";
        assert_eq!(
            with_return_path(m, "s@o.test"),
            b"Return-Path: <s@o.test>\r\nFrom: a\r\nSubject: s\r\n\r\nReturn-Path: body stays\r\n"
        );
        assert_eq!(
            with_return_path(b"\r\nbody", ""),
            b"Return-Path: <>\r\n\r\nbody"
        );
        assert_eq!(
            with_return_path(b"A: b\r\n\r\n", "x\r\n<y>"),
            b"Return-Path: <xy>\r\nA: b\r\n\r\n"
        );
    }

    #[test]
    fn headers() {
        let m = b"Subject: x\r\nDate : y\r\n\r\nMessage-ID: body\r\n";
        assert!(has_header(m, "date"));
        assert!(!has_header(m, "message-id"));
        assert_eq!(header_end(m), 24);
        assert!(valid_field_name("X-Spam-Score"));
        assert!(!valid_field_name("X: y"));
        assert_eq!(format_field("X", "a\r\nBcc: evil"), "X: a  Bcc: evil\r\n");
    }

    /// Unfold (RFC 5322 §2.2.3: remove every CRLF followed by white space).
    fn unfold(field: &str) -> String {
        field.trim_end_matches("\r\n").replace("\r\n ", " ")
    }

    #[test]
    fn long_values_are_folded_never_injected() {
        // Long, with spaces: folded before spaces only, so unfolding gives the value back.
        let value = format!(
            "{} Bcc: evil@example.net {}",
            "word ".repeat(300),
            "x".repeat(50)
        );
        let f = format_field("X-Long", &value);
        assert_eq!(unfold(&f), format!("X-Long: {value}"));
        // One run of 5000 octets with a fake field where a naive 998-octet wrap would put it.
        let value = format!(
            "{}Bcc: evil@example.net{}",
            "a".repeat(990 - 8),
            "b".repeat(4000)
        );
        let f = format_field("X-Run", &value);
        assert_eq!(
            unfold(&f).replace(' ', ""),
            format!("X-Run:{}", value.replace(' ', ""))
        );
        for f in [f, format_field("X-Multi", &"é".repeat(3000))] {
            assert!(f.ends_with("\r\n"));
            let lines: Vec<&str> = f.trim_end_matches("\r\n").split("\r\n").collect();
            assert!(lines.len() > 1);
            for (i, l) in lines.iter().enumerate() {
                assert!(
                    l.len() <= MAX_HEADER_LINE,
                    "line {i} has {} octets",
                    l.len()
                );
                assert!(!l.contains('\r') && !l.contains('\n'));
                // Every line after the first is a continuation, never a field of its own.
                assert!(
                    i == 0 || l.starts_with(' '),
                    "line {i} starts a field: {l:.40}"
                );
            }
        }
        // Short values are unchanged.
        assert_eq!(
            format_field("X-Tag", &"t".repeat(900)),
            format!("X-Tag: {}\r\n", "t".repeat(900))
        );
    }
}
