//! Small helpers over raw RFC 5322 messages: header scans that need no full MIME parse, and
//! the body text and attachments of one ([`parse_body`]).

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

/// The values of the header field `name` (case-insensitive) in message order, unfolded, with
/// RFC 2047 encoded words decoded; only the first when `first_only`. A direct scan of the
/// header block that copies nothing but the matching values: cheaper than parsing every field
/// for the one or two a script asks for.
pub fn header_values(raw: &[u8], name: &str, first_only: bool) -> Vec<String> {
    let head = &raw[..header_end(raw)];
    let want = name.trim().as_bytes();
    let mut out = Vec::new();
    // The value being collected (of a matching field), continuation lines included.
    let mut current: Option<Vec<u8>> = None;
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            // Folded continuation: unfolding removes the line break, keeps the white space.
            if let Some(v) = current.as_mut() {
                v.extend_from_slice(line);
            }
            continue;
        }
        if let Some(v) = current.take() {
            out.push(finish_value(&v));
            if first_only {
                return out;
            }
        }
        if let Some(colon) = line.iter().position(|&b| b == b':')
            && line[..colon].trim_ascii().eq_ignore_ascii_case(want)
        {
            current = Some(line[colon + 1..].to_vec());
        }
    }
    if let Some(v) = current {
        out.push(finish_value(&v));
    }
    out
}

/// Every header field of `raw` in order: (name as written, value unfolded, encoded words
/// decoded), for code that asks about many fields of one message (Sieve).
pub fn all_headers(raw: &[u8]) -> Vec<(String, String)> {
    let head = &raw[..header_end(raw)];
    let mut out: Vec<(String, String)> = Vec::new();
    let mut current: Option<(String, Vec<u8>)> = None;
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            if let Some((_, v)) = current.as_mut() {
                v.extend_from_slice(line);
            }
            continue;
        }
        if let Some((n, v)) = current.take() {
            out.push((n, finish_value(&v)));
        }
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            let name = String::from_utf8_lossy(line[..colon].trim_ascii()).into_owned();
            current = Some((name, line[colon + 1..].to_vec()));
        }
    }
    if let Some((n, v)) = current {
        out.push((n, finish_value(&v)));
    }
    out
}

fn finish_value(v: &[u8]) -> String {
    let value = String::from_utf8_lossy(v.trim_ascii()).into_owned();
    if value.contains("=?") {
        decode_words(&value).unwrap_or(value)
    } else {
        value
    }
}

/// A header value with RFC 2047 encoded words decoded (mail-parser's unstructured reading,
/// the one it gives Subject).
fn decode_words(value: &str) -> Option<String> {
    let field = format!("Subject: {value}\r\n\r\n");
    mail_parser::MessageParser::new()
        .parse_headers(field.as_bytes())?
        .subject()
        .map(str::to_string)
}

/// Body text and attachments, from a full MIME parse on first use within one call.
#[derive(Debug, Default)]
pub struct BodyFacts {
    /// The first text part, cut to the limit given.
    pub body: String,
    /// (name, content type, decoded size).
    pub attachments: Vec<(String, String, i64)>,
}

/// The body text (at most `max_text` bytes, cut at a character boundary) and the
/// attachments of `raw`.
pub fn parse_body(raw: &[u8], max_text: usize) -> BodyFacts {
    use mail_parser::MimeHeaders;
    let Some(msg) = mail_parser::MessageParser::default().parse(raw) else {
        return BodyFacts::default();
    };
    let attachments = msg
        .attachments()
        .map(|p| {
            let ctype = p
                .content_type()
                .map(|c| match c.subtype() {
                    Some(sub) => format!("{}/{}", c.ctype(), sub),
                    None => c.ctype().to_string(),
                })
                .unwrap_or_else(|| "application/octet-stream".into())
                .to_ascii_lowercase();
            (
                p.attachment_name().unwrap_or_default().to_string(),
                ctype,
                p.contents().len() as i64,
            )
        })
        .collect();
    let mut body = msg.body_text(0).unwrap_or_default().into_owned();
    body.truncate(body.floor_char_boundary(max_text));
    BodyFacts { body, attachments }
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

    #[test]
    fn headers_are_unfolded_and_decoded() {
        let raw = b"Subject: =?utf-8?B?w6l0w6k=?= and\r\n\tmore\r\nX-A:  v \r\nbad line\r\n x-a : second\r\nX-A: third\r\n\r\nX-A: body\r\n";
        assert_eq!(header_values(raw, "subject", true), vec!["été and\tmore"]);
        assert_eq!(header_values(raw, "x-a", false), vec!["v", "third"]);
        assert_eq!(header_values(raw, "X-A", true), vec!["v"]);
        assert!(header_values(raw, "missing", false).is_empty());
        assert!(header_values(b"\r\nX-A: body only", "x-a", false).is_empty());
        // Unterminated header block: the last field still counts.
        assert_eq!(header_values(b"X-A: 1\r\n\t2", "x-a", true), vec!["1\t2"]);
    }
}
