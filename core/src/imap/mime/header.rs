//! Header fields as IMAP wants them: raw names and values with byte offsets, and the
//! Content-Type with its parameters (RFC 2045 §5.1, RFC 2231 continuations).

/// One header field: raw name and raw value (after the colon, folding kept, no final CRLF).
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    /// Field name as written.
    pub name: &'a [u8],
    /// Value as written.
    pub value: &'a [u8],
    /// The whole field including its line ending(s).
    pub raw: &'a [u8],
}

/// Parse a header block starting at `msg[start..]`; returns the fields and the offset where the
/// body starts (after the blank line), or the end of the message if there is none.
pub fn parse_header<'a>(msg: &'a [u8], start: usize, end: usize) -> (Vec<Field<'a>>, usize) {
    let mut fields: Vec<Field<'a>> = Vec::new();
    let mut p = start;
    let mut cur: Option<(usize, usize)> = None; // field start, colon
    let flush = |fields: &mut Vec<Field<'a>>, cur: Option<(usize, usize)>, upto: usize| {
        if let Some((s, colon)) = cur {
            let raw = &msg[s..upto];
            let mut v = &msg[colon + 1..upto];
            if let Some(x) = v.strip_suffix(b"\n") {
                v = x.strip_suffix(b"\r").unwrap_or(x);
            }
            fields.push(Field {
                name: trim_ascii_end(&msg[s..colon]),
                value: v,
                raw,
            });
        }
    };
    while p < end {
        let nl = memchr::memchr(b'\n', &msg[p..end])
            .map(|i| p + i + 1)
            .unwrap_or(end);
        let line = &msg[p..nl];
        if line == b"\r\n" || line == b"\n" {
            flush(&mut fields, cur.take(), p);
            return (fields, nl);
        }
        if matches!(line.first(), Some(b' ') | Some(b'\t')) && cur.is_some() {
            p = nl;
            continue;
        }
        flush(&mut fields, cur.take(), p);
        if let Some(colon) = memchr::memchr(b':', line) {
            let name = &line[..colon];
            if !name.is_empty() {
                cur = Some((p, p + colon));
            }
        }
        p = nl;
    }
    flush(&mut fields, cur.take(), end);
    (fields, end)
}

fn trim_ascii_end(b: &[u8]) -> &[u8] {
    let mut e = b.len();
    while e > 0 && (b[e - 1] == b' ' || b[e - 1] == b'\t') {
        e -= 1;
    }
    &b[..e]
}

pub(super) fn trim(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

/// First field with this name (case-insensitive).
pub fn field<'a>(fields: &[Field<'a>], name: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case(name.as_bytes()))
        .map(|f| f.value)
}

/// Last field with this name.
pub(super) fn last_field<'a>(fields: &[Field<'a>], name: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .rev()
        .find(|f| f.name.eq_ignore_ascii_case(name.as_bytes()))
        .map(|f| f.value)
}

/// Unfold a raw value (remove CRLF before WSP).
pub(super) fn unfold(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'\r' && v.get(i + 1) == Some(&b'\n') {
            i += 2;
            continue;
        }
        if v[i] == b'\n' {
            i += 1;
            continue;
        }
        out.push(v[i]);
        i += 1;
    }
    out
}

/// A parsed Content-Type.
#[derive(Debug, Clone, Default)]
pub struct ContentType {
    /// Type as written ("" if unparsable).
    pub ty: String,
    /// Subtype as written.
    pub sub: String,
    /// Parameters (names lower-case), or None for an unparsable field.
    pub params: Option<Vec<(String, String)>>,
}

impl ContentType {
    pub(super) fn is(&self, ty: &str, sub: &str) -> bool {
        self.ty.eq_ignore_ascii_case(ty) && self.sub.eq_ignore_ascii_case(sub)
    }
    /// A parameter value.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .as_ref()?
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

const TSPECIALS: &[u8] = b"()<>@,;:\\\"/[]?=";

fn is_token(c: u8) -> bool {
    c > 0x20 && c < 0x7f && !TSPECIALS.contains(&c) || c >= 0x80
}

/// Skip whitespace and (nested) comments.
pub(super) fn skip_cfws(v: &[u8], mut i: usize) -> usize {
    loop {
        while i < v.len() && v[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < v.len() && v[i] == b'(' {
            let mut depth = 0;
            while i < v.len() {
                match v[i] {
                    b'\\' => i += 1,
                    b'(' => depth += 1,
                    b')' => {
                        depth -= 1;
                        if depth == 0 {
                            i += 1;
                            break;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            continue;
        }
        return i;
    }
}

pub(super) fn read_token(v: &[u8], i: usize) -> (String, usize) {
    let mut j = i;
    while j < v.len() && is_token(v[j]) {
        j += 1;
    }
    (String::from_utf8_lossy(&v[i..j]).into_owned(), j)
}

fn read_quoted(v: &[u8], mut i: usize) -> (String, usize) {
    // v[i] == '"'
    i += 1;
    let mut out = Vec::new();
    while i < v.len() {
        match v[i] {
            b'\\' if i + 1 < v.len() => {
                out.push(v[i + 1]);
                i += 2;
            }
            b'"' => return (String::from_utf8_lossy(&out).into_owned(), i + 1),
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), i)
}

/// Parse `type/subtype; a=b; c="d"` (RFC 2045 §5.1), keeping values raw and joining
/// RFC 2231 continuations without decoding them.
pub fn parse_content_type(value: &[u8]) -> ContentType {
    let unparsable = ContentType {
        ty: String::new(),
        sub: String::new(),
        params: None,
    };
    let v = unfold(value);
    let mut i = skip_cfws(&v, 0);
    let (ty, j) = read_token(&v, i);
    i = skip_cfws(&v, j);
    if ty.is_empty() {
        return unparsable;
    }
    if v.get(i) != Some(&b'/') {
        // A bare type without a subtype keeps the type (`text` → "text" ""); with anything
        // after it, it is unparsable.
        if i < v.len() {
            return unparsable;
        }
        return ContentType {
            ty,
            sub: String::new(),
            params: Some(parse_params(&v, i)),
        };
    }
    i = skip_cfws(&v, i + 1);
    let (sub, j) = read_token(&v, i);
    i = skip_cfws(&v, j);
    // An empty subtype, or text after the subtype without a `;`, is unparsable.
    if sub.is_empty() || (i < v.len() && v[i] != b';') {
        return unparsable;
    }
    let params = parse_params(&v, i);
    ContentType {
        ty,
        sub,
        params: Some(params),
    }
}

/// Parameters after the main value: `; name=value`...
pub(super) fn parse_params(v: &[u8], mut i: usize) -> Vec<(String, String)> {
    let mut raw: Vec<(String, String)> = Vec::new();
    loop {
        i = skip_cfws(v, i);
        if i >= v.len() {
            break;
        }
        if v[i] != b';' {
            // Garbage: skip to the next ';'.
            match memchr::memchr(b';', &v[i..]) {
                Some(k) => i += k,
                None => break,
            }
            continue;
        }
        i = skip_cfws(v, i + 1);
        let (name, j) = read_token(v, i);
        i = skip_cfws(v, j);
        if name.is_empty() || v.get(i) != Some(&b'=') {
            continue;
        }
        i = skip_cfws(v, i + 1);
        let (value, j) = if v.get(i) == Some(&b'"') {
            read_quoted(v, i)
        } else {
            read_token(v, i)
        };
        i = j;
        if value.is_empty() && v.get(j.wrapping_sub(1)) != Some(&b'"') {
            continue;
        }
        raw.push((name.to_ascii_lowercase(), value));
    }
    join_rfc2231(raw)
}

fn join_rfc2231(raw: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        let (name, value) = &raw[i];
        if let Some((base, idx)) = split_section(name)
            && idx.0 == 0
        {
            let mut segs = vec![(value.clone(), idx.1)];
            let mut k = i + 1;
            let mut want = 1;
            while k < raw.len() {
                match split_section(&raw[k].0) {
                    Some((b2, (n, enc))) if b2 == base && n == want => {
                        segs.push((raw[k].1.clone(), enc));
                        want += 1;
                        k += 1;
                    }
                    _ => break,
                }
            }
            let any_enc = segs.iter().any(|s| s.1);
            let mut joined = String::new();
            if any_enc && !segs[0].1 {
                joined.push_str("''");
            }
            for (s, _) in &segs {
                joined.push_str(s);
            }
            out.push((
                if any_enc {
                    format!("{base}*")
                } else {
                    base.to_string()
                },
                joined,
            ));
            i = k;
            continue;
        }
        out.push((name.clone(), value.clone()));
        i += 1;
    }
    out
}

/// `name*0*` → (name, (0, encoded)).
fn split_section(name: &str) -> Option<(&str, (u32, bool))> {
    let (base, rest) = name.split_once('*')?;
    let (num, enc) = match rest.strip_suffix('*') {
        Some(n) => (n, true),
        None => (rest, false),
    };
    let n: u32 = num.parse().ok()?;
    Some((base, (n, enc)))
}
