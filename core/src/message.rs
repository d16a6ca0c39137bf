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

/// Format one header field, folding nothing and stripping CR/LF so values cannot inject
/// further fields.
pub fn format_field(name: &str, value: &str) -> String {
    let clean: String = value
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    format!("{name}: {clean}\r\n")
}

/// RFC 5322 date for now.
pub fn rfc5322_now() -> String {
    chrono::Local::now()
        .format("%a, %d %b %Y %H:%M:%S %z")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
