//! Writers for IMAP response syntax: strings (quoted or literal), NIL, flag lists, dates.

/// Write `s` as a quoted string when that is safe, else as a literal (8-bit, CR/LF, quote
/// and backslash force a literal, as Dovecot does for ENVELOPE values).
pub fn string(out: &mut Vec<u8>, s: &[u8]) {
    let quotable = s.len() < 1024
        && s.iter()
            .all(|&c| (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\');
    if quotable {
        out.push(b'"');
        out.extend_from_slice(s);
        out.push(b'"');
    } else {
        literal(out, s);
    }
}

/// Write a literal `{n}\r\n…`; `~{n}` when the bytes contain NUL (RFC 3516 literal8).
pub fn literal(out: &mut Vec<u8>, s: &[u8]) {
    if s.contains(&0) {
        out.push(b'~');
    }
    out.extend_from_slice(format!("{{{}}}\r\n", s.len()).as_bytes());
    out.extend_from_slice(s);
}

/// A string or NIL.
pub fn nstring(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"NIL"),
    }
}

/// `(\Seen $Junk)`
pub fn flag_list(out: &mut Vec<u8>, flags: &[String]) {
    out.push(b'(');
    out.extend_from_slice(flags.join(" ").as_bytes());
    out.push(b')');
}

/// IMAP date-time `"17-Jul-1996 02:44:25 -0700"` of Unix seconds (UTC).
pub fn date_time(secs: i64) -> String {
    let d = chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default();
    d.format("\"%d-%b-%Y %H:%M:%S +0000\"").to_string()
}

/// A UTF-8 mailbox name for LIST/STATUS responses: quoted (UTF-8 inside quotes is valid in
/// IMAP4rev2 and after `ENABLE UTF8=ACCEPT`, RFC 9051 §4.3, RFC 6855 §3) unless it holds a
/// quote, backslash or control character, then a literal.
pub fn mailbox_name(out: &mut Vec<u8>, name: &str) {
    let quotable =
        name.len() < 1024 && !name.contains(['"', '\\']) && !name.chars().any(char::is_control);
    if quotable {
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.push(b'"');
    } else {
        literal(out, name.as_bytes());
    }
}

/// Helper for tests and tools: write a string as IMAP would.
pub fn imap_string(s: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    string(&mut v, s);
    v
}
