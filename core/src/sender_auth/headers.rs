//! RFC 8601 helpers over raw header blocks: finding header fields, reading an
//! Authentication-Results authserv-id, removing forged ones, and writing values safely.

use std::borrow::Cow;

/// Byte ranges of the header fields of `raw` (each field with its continuation lines and
/// CRLF), up to the blank line that ends the header block.
pub fn fields(raw: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        if raw[i..].starts_with(b"\r\n") || raw[i] == b'\n' {
            break;
        }
        let start = i;
        loop {
            match memchr::memchr(b'\n', &raw[i..]) {
                Some(n) => i += n + 1,
                None => {
                    i = raw.len();
                    break;
                }
            }
            if i >= raw.len() || !matches!(raw[i], b' ' | b'\t') {
                break;
            }
        }
        out.push(start..i);
    }
    out
}

/// The field name of a raw header field (before the colon), if it has one.
pub fn field_name(field: &[u8]) -> Option<&[u8]> {
    let colon = memchr::memchr(b':', field)?;
    let name = field[..colon].trim_ascii_end();
    (!name.is_empty() && !name.iter().any(|b| b.is_ascii_whitespace())).then_some(name)
}

/// The authserv-id of an Authentication-Results value (RFC 8601 §2.2): the first token
/// after comments and folding whitespace, lower case, without a trailing dot.
pub fn authserv_id(value: &[u8]) -> String {
    let mut depth = 0usize;
    let mut escaped = false;
    let mut id = Vec::new();
    for &b in value {
        if depth > 0 {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'(' {
                depth += 1;
            } else if b == b')' {
                depth -= 1;
            }
            continue;
        }
        match b {
            b'(' => {
                if !id.is_empty() {
                    break;
                }
                depth = 1;
            }
            b' ' | b'\t' | b'\r' | b'\n' => {
                if !id.is_empty() {
                    break;
                }
            }
            b';' => break,
            b'"' => {} // a quoted authserv-id: keep the content
            _ => id.push(b),
        }
    }
    String::from_utf8_lossy(&id)
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// Remove every `Authentication-Results` field whose authserv-id is `ours` (RFC 8601 §5: a
/// forged result claiming to be from us must not reach the user). Returns the message
/// unchanged (borrowed) when there is none, and how many were removed.
pub fn strip_forged<'a>(raw: &'a [u8], ours: &str) -> (Cow<'a, [u8]>, usize) {
    let ours = ours.trim_end_matches('.').to_ascii_lowercase();
    let forged: Vec<std::ops::Range<usize>> = fields(raw)
        .into_iter()
        .filter(|r| {
            let f = &raw[r.clone()];
            field_name(f).is_some_and(|n| n.eq_ignore_ascii_case(b"Authentication-Results")) && {
                let colon = memchr::memchr(b':', f).unwrap_or(0);
                authserv_id(&f[colon + 1..]) == ours
            }
        })
        .collect();
    without(raw, &forged)
}

/// `raw` without the fields at `ranges` (in order), borrowed when there are none, and how
/// many were removed.
fn without<'a>(raw: &'a [u8], ranges: &[std::ops::Range<usize>]) -> (Cow<'a, [u8]>, usize) {
    if ranges.is_empty() {
        return (Cow::Borrowed(raw), 0);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut at = 0;
    for r in ranges {
        out.extend_from_slice(&raw[at..r.start]);
        at = r.end;
    }
    out.extend_from_slice(&raw[at..]);
    (Cow::Owned(out), ranges.len())
}

/// Remove every field named `name` (case-insensitive); the message unchanged (borrowed) when
/// there is none, and how many were removed.
pub fn strip_named<'a>(raw: &'a [u8], name: &str) -> (Cow<'a, [u8]>, usize) {
    let found: Vec<std::ops::Range<usize>> = fields(raw)
        .into_iter()
        .filter(|r| {
            field_name(&raw[r.clone()]).is_some_and(|n| n.eq_ignore_ascii_case(name.as_bytes()))
        })
        .collect();
    without(raw, &found)
}

/// A header value (RFC 8601 `pvalue`/`value`): as is when it is a plain token or
/// `local@domain` of token characters, else a quoted string. CR, LF and other controls are
/// dropped so a value can never start a new header field.
pub fn pvalue(s: &str) -> String {
    let clean: String = s.chars().filter(|c| !c.is_control()).collect();
    let plain = !clean.is_empty()
        && clean.chars().all(|c| {
            c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`{|}~@".contains(c) || !c.is_ascii()
        })
        && clean.matches('@').count() <= 1
        && !clean.starts_with('@');
    if plain {
        clean
    } else {
        let mut q = String::with_capacity(clean.len() + 2);
        q.push('"');
        for c in clean.chars() {
            if c == '"' || c == '\\' {
                q.push('\\');
            }
            q.push(c);
        }
        q.push('"');
        q
    }
}

/// Text safe inside a header comment: no parentheses, backslashes or controls.
pub fn comment_text(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() && !matches!(c, '(' | ')' | '\\'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_with_folding() {
        let m = b"A: 1\r\nB: 2\r\n\tmore\r\nC: 3\r\n\r\nbody: x\r\n";
        let f = fields(m);
        assert_eq!(f.len(), 3);
        assert_eq!(&m[f[1].clone()], b"B: 2\r\n\tmore\r\n");
        assert_eq!(field_name(&m[f[2].clone()]), Some(&b"C"[..]));
    }

    #[test]
    fn authserv_ids() {
        assert_eq!(authserv_id(b" mx.example.org; spf=pass"), "mx.example.org");
        assert_eq!(authserv_id(b" MX.Example.Org. 1; none"), "mx.example.org");
        assert_eq!(
            authserv_id(b" (comment (nested)) mx.example.org;\r\n\tdkim=pass"),
            "mx.example.org"
        );
        assert_eq!(authserv_id(b"\r\n\tmx.example.org;"), "mx.example.org");
        assert_eq!(authserv_id(b" other.example; none"), "other.example");
    }

    #[test]
    fn strips_only_ours() {
        let m = b"Authentication-Results: mx.example.org;\r\n\tdmarc=pass\r\nFrom: a@b\r\nauthentication-results:MX.EXAMPLE.ORG; dkim=pass\r\nAuthentication-Results: other.example; spf=pass\r\n\r\nAuthentication-Results: mx.example.org; body\r\n";
        let (out, n) = strip_forged(m, "mx.example.org");
        assert_eq!(n, 2);
        assert_eq!(
            &out[..],
            &b"From: a@b\r\nAuthentication-Results: other.example; spf=pass\r\n\r\nAuthentication-Results: mx.example.org; body\r\n"[..]
        );
        let (out, n) = strip_forged(b"From: a@b\r\n\r\nx", "mx.example.org");
        assert_eq!(n, 0);
        assert!(matches!(out, Cow::Borrowed(_)));
    }

    #[test]
    fn values_are_quoted_when_needed() {
        assert_eq!(pvalue("alice@a.test"), "alice@a.test");
        assert_eq!(pvalue("a.test"), "a.test");
        assert_eq!(pvalue("we ird\"x@a.test"), "\"we ird\\\"x@a.test\"");
        assert_eq!(pvalue("ab/c+="), "\"ab/c+=\"");
        assert_eq!(pvalue("x\r\nBcc: y"), "\"xBcc: y\"");
        assert_eq!(pvalue(""), "\"\"");
        assert_eq!(comment_text("a (b) \\c"), "a b c");
    }
}
