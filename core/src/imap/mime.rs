//! MIME structure for IMAP: part tree with byte offsets, BODYSTRUCTURE, ENVELOPE, sections
//! and BINARY decoding (RFC 9051 §7.5.2, RFC 2045/2046, RFC 3516).
//!
//! IMAP wants raw values (encoded words stay encoded, parameters undecoded) and exact byte
//! ranges, which a decoding parser such as mail-parser does not expose; so this module walks
//! the raw bytes itself. mail-parser is used where decoded text is wanted (SEARCH).

use super::response::{nstring, string};

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

fn trim(b: &[u8]) -> &[u8] {
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
fn last_field<'a>(fields: &[Field<'a>], name: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .rev()
        .find(|f| f.name.eq_ignore_ascii_case(name.as_bytes()))
        .map(|f| f.value)
}

/// Unfold a raw value (remove CRLF before WSP).
fn unfold(v: &[u8]) -> Vec<u8> {
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
    fn is(&self, ty: &str, sub: &str) -> bool {
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
fn skip_cfws(v: &[u8], mut i: usize) -> usize {
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

fn read_token(v: &[u8], i: usize) -> (String, usize) {
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
fn parse_params(v: &[u8], mut i: usize) -> Vec<(String, String)> {
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

/// A node of the MIME tree with byte offsets into the message.
#[derive(Debug, Clone)]
pub struct Part {
    /// Start of this part's header.
    pub start: usize,
    /// Start of the body.
    pub body: usize,
    /// End of the body.
    pub end: usize,
    /// Content-Type (defaulted).
    pub ctype: ContentType,
    /// Whether the Content-Type was defaulted (no field).
    pub defaulted: bool,
    /// Children for multipart, the encapsulated message for message/rfc822.
    pub kind: Kind,
}

/// Part kinds.
#[derive(Debug, Clone)]
pub enum Kind {
    /// A leaf.
    Leaf,
    /// multipart/*
    Multipart(Vec<Part>),
    /// message/rfc822: the encapsulated message (its header starts at the body).
    Message(Box<Part>),
}

/// A boundary line found while scanning: which level of the boundary stack it closes or
/// separates, and where it is.
#[derive(Debug, Clone, Copy)]
struct Hit {
    level: usize,
    close: bool,
    line_start: usize,
    next: usize,
}

/// Boundaries longer than RFC 2046's 70 characters are compared on their first 70, as
/// Dovecot does; a delimiter line matches by prefix, innermost boundary first.
const MAX_BOUNDARY: usize = 70;

fn match_boundary(line: &[u8], stack: &[Vec<u8>]) -> Option<(usize, bool)> {
    let rest = line.strip_prefix(b"--")?;
    for (i, b) in stack.iter().enumerate().rev() {
        if let Some(after) = rest.strip_prefix(b.as_slice()) {
            return Some((i, after.starts_with(b"--")));
        }
    }
    None
}

/// Find the next boundary line of any level at or after `pos`.
fn scan(msg: &[u8], mut pos: usize, end: usize, stack: &[Vec<u8>]) -> Option<Hit> {
    if stack.is_empty() {
        return None;
    }
    while pos < end {
        let nl = memchr::memchr(b'\n', &msg[pos..end])
            .map(|i| pos + i + 1)
            .unwrap_or(end);
        if msg[pos] == b'-'
            && let Some((level, close)) = match_boundary(&msg[pos..nl], stack)
        {
            return Some(Hit {
                level,
                close,
                line_start: pos,
                next: nl,
            });
        }
        pos = nl;
    }
    None
}

/// Where a part ends: before the line ending that precedes the boundary line (RFC 2046
/// §5.1.1), when that line ending lies inside the region scanned since `region_start`.
fn part_end(msg: &[u8], region_start: usize, hit: Option<Hit>, end: usize) -> usize {
    let Some(h) = hit else { return end };
    let mut e = h.line_start;
    if e > region_start && msg[e - 1] == b'\n' {
        e -= 1;
        if e > region_start && msg[e - 1] == b'\r' {
            e -= 1;
        }
    }
    e
}

/// Parse the part starting at `start`; `stack` holds the boundaries of the enclosing
/// multiparts. Returns the part and the boundary line that ended it, if any.
fn parse_part_in(
    msg: &[u8],
    start: usize,
    end: usize,
    stack: &mut Vec<Vec<u8>>,
    digest: bool,
    depth: usize,
) -> (Part, Option<Hit>) {
    // The header cannot extend past the next boundary line (nor the line ending before it).
    let first = scan(msg, start, end, stack);
    let limit = part_end(msg, start, first, end);
    let (fields, body) = parse_header(msg, start, first.map(|h| h.line_start).unwrap_or(end));
    let (ctype, defaulted) = match field(&fields, "Content-Type") {
        Some(v) => (parse_content_type(v), false),
        None if digest => (
            ContentType {
                ty: "message".into(),
                sub: "rfc822".into(),
                params: Some(vec![]),
            },
            true,
        ),
        None => (
            ContentType {
                ty: "text".into(),
                sub: "plain".into(),
                params: Some(vec![]),
            },
            true,
        ),
    };
    let leaf = |ctype: ContentType, kind: Kind| {
        let kind = match kind {
            Kind::Multipart(c) if c.is_empty() => {
                Kind::Multipart(vec![empty_child(limit.max(body))])
            }
            k => k,
        };
        (
            Part {
                start,
                body: body.min(limit),
                end: limit,
                ctype,
                defaulted,
                kind,
            },
            first,
        )
    };
    let multipart = ctype.ty.eq_ignore_ascii_case("multipart")
        && ctype.param("boundary").is_some_and(|b| !b.is_empty());
    if body >= limit && first.is_some() && !multipart {
        // Nothing but (part of) a header before the next boundary: an empty body.
        let kind = if ctype.ty.eq_ignore_ascii_case("multipart") {
            Kind::Multipart(Vec::new())
        } else {
            Kind::Leaf
        };
        let kind = match kind {
            Kind::Multipart(_) => Kind::Multipart(vec![empty_child(limit)]),
            k => k,
        };
        return (
            Part {
                start,
                body: limit,
                end: limit,
                ctype,
                defaulted,
                kind,
            },
            first,
        );
    }
    if depth > 50 {
        return leaf(ctype, Kind::Leaf);
    }
    if ctype.ty.eq_ignore_ascii_case("multipart") {
        let boundary = ctype
            .param("boundary")
            .map(|b| b.as_bytes()[..b.len().min(MAX_BOUNDARY)].to_vec());
        let Some(boundary) = boundary.filter(|b| !b.is_empty()) else {
            return leaf(ctype, Kind::Multipart(Vec::new()));
        };
        let is_digest = ctype.sub.eq_ignore_ascii_case("digest");
        stack.push(boundary);
        let level = stack.len() - 1;
        let mut children = Vec::new();
        let mut hit = scan(msg, body, end, stack);
        loop {
            match hit {
                Some(h) if h.level == level && !h.close => {
                    let (child, next) =
                        parse_part_in(msg, h.next, end, stack, is_digest, depth + 1);
                    children.push(child);
                    hit = next;
                }
                Some(h) if h.level == level => {
                    // Closed: the epilogue runs to the next outer boundary.
                    stack.pop();
                    let outer = scan(msg, h.next, end, stack);
                    let e = part_end(msg, h.next, outer, end);
                    if children.is_empty() {
                        children.push(empty_child(e));
                    }
                    return (
                        Part {
                            start,
                            body,
                            end: e,
                            ctype,
                            defaulted,
                            kind: Kind::Multipart(children),
                        },
                        outer,
                    );
                }
                other => {
                    // An outer boundary (or the end) before our close delimiter.
                    stack.pop();
                    let e = children
                        .last()
                        .map(|c| c.end)
                        .unwrap_or_else(|| part_end(msg, body, other, end));
                    if children.is_empty() {
                        children.push(empty_child(e));
                    }
                    return (
                        Part {
                            start,
                            body,
                            end: e,
                            ctype,
                            defaulted,
                            kind: Kind::Multipart(children),
                        },
                        other,
                    );
                }
            }
        }
    }
    if ctype.is("message", "rfc822") {
        let (inner, hit) = parse_part_in(msg, body, end, stack, false, depth + 1);
        let e = match hit {
            // An encapsulated message that is all header keeps the line ending before the
            // boundary (as Dovecot does).
            Some(h) if inner.body >= inner.end => h.line_start,
            _ => inner.end.max(part_end(msg, body, hit, end)),
        };
        return (
            Part {
                start,
                body,
                end: e,
                ctype,
                defaulted,
                kind: Kind::Message(Box::new(inner)),
            },
            hit,
        );
    }
    leaf(ctype, Kind::Leaf)
}

/// The empty text/plain child given to a multipart without parts (the grammar needs one).
fn empty_child(at: usize) -> Part {
    Part {
        start: at,
        body: at,
        end: at,
        ctype: ContentType {
            ty: "text".into(),
            sub: "plain".into(),
            params: Some(vec![]),
        },
        defaulted: true,
        kind: Kind::Leaf,
    }
}

impl Part {
    /// Child `n` (1-based) in IMAP numbering.
    fn child(&self, n: u32) -> Option<&Part> {
        match &self.kind {
            Kind::Multipart(c) => c.get(n as usize - 1),
            Kind::Message(inner) => inner.as_message_child(n),
            Kind::Leaf => None,
        }
    }

    /// Child `n` of a message whose root is `self`.
    fn as_message_child(&self, n: u32) -> Option<&Part> {
        match &self.kind {
            Kind::Multipart(c) => c.get(n as usize - 1),
            _ if n == 1 => Some(self),
            _ => None,
        }
    }

    /// The part at an IMAP part path from the message root.
    pub fn find(&self, path: &[u32]) -> Option<&Part> {
        let mut cur = self.as_message_child(*path.first()?)?;
        for &n in &path[1..] {
            cur = cur.child(n)?;
        }
        Some(cur)
    }
}

/// Parse a whole message.
pub fn parse_message(msg: &[u8]) -> Part {
    parse_part_in(msg, 0, msg.len(), &mut Vec::new(), false, 0).0
}

fn lines(b: &[u8]) -> usize {
    memchr::memchr_iter(b'\n', b).count()
}

/// Write BODYSTRUCTURE (`ext`) or BODY of `part`.
pub fn body_structure(msg: &[u8], part: &Part, ext: bool, out: &mut Vec<u8>) {
    let (fields, _) = parse_header(msg, part.start, part.body);
    out.push(b'(');
    match &part.kind {
        Kind::Multipart(children) => {
            if children.is_empty() {
                // The grammar needs one child: an empty text/plain (as Dovecot does).
                out.extend_from_slice(
                    b"(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0",
                );
                if ext {
                    out.extend_from_slice(b" NIL NIL NIL NIL");
                }
                out.push(b')');
            }
            for c in children {
                body_structure(msg, c, ext, out);
            }
            out.push(b' ');
            string(out, part.ctype.sub.as_bytes());
            if ext {
                out.push(b' ');
                params(out, &part.ctype.params);
                extension(out, &fields);
            }
        }
        _ => {
            let (ty, sub) = (&part.ctype.ty, &part.ctype.sub);
            string(out, ty.as_bytes());
            out.push(b' ');
            string(out, sub.as_bytes());
            out.push(b' ');
            let mut p = part.ctype.params.clone();
            if ty.eq_ignore_ascii_case("text")
                && let Some(list) = &mut p
                && !list.iter().any(|(n, _)| n == "charset")
            {
                list.push(("charset".into(), "us-ascii".into()));
            }
            params(out, &p);
            out.push(b' ');
            nstring(out, field(&fields, "Content-ID").map(trim));
            out.push(b' ');
            nstring(out, field(&fields, "Content-Description").map(trim));
            out.push(b' ');
            match field(&fields, "Content-Transfer-Encoding").map(trim) {
                Some(e) if !e.is_empty() => string(out, e),
                _ => string(out, b"7bit"),
            }
            let body = &msg[part.body..part.end];
            out.extend_from_slice(format!(" {}", body.len()).as_bytes());
            if let Kind::Message(inner) = &part.kind {
                out.push(b' ');
                envelope(msg, inner, out);
                out.push(b' ');
                body_structure(msg, inner, ext, out);
                out.extend_from_slice(format!(" {}", lines(body)).as_bytes());
            } else if ty.eq_ignore_ascii_case("text") {
                out.extend_from_slice(format!(" {}", lines(body)).as_bytes());
            }
            if ext {
                out.push(b' ');
                nstring(out, field(&fields, "Content-MD5").map(trim));
                extension(out, &fields);
            }
        }
    }
    out.push(b')');
}

fn params(out: &mut Vec<u8>, p: &Option<Vec<(String, String)>>) {
    match p {
        Some(list) if !list.is_empty() => {
            out.push(b'(');
            for (i, (n, v)) in list.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                string(out, n.as_bytes());
                out.push(b' ');
                string(out, v.as_bytes());
            }
            out.push(b')');
        }
        _ => out.extend_from_slice(b"NIL"),
    }
}

/// disposition, language, location.
fn extension(out: &mut Vec<u8>, fields: &[Field<'_>]) {
    out.push(b' ');
    match field(fields, "Content-Disposition") {
        Some(v) => {
            let u = unfold(v);
            let i = skip_cfws(&u, 0);
            let (ty, j) = read_token(&u, i);
            let p = parse_params(&u, j);
            out.push(b'(');
            string(out, ty.as_bytes());
            out.push(b' ');
            params(out, &Some(p));
            out.push(b')');
        }
        None => out.extend_from_slice(b"NIL"),
    }
    out.push(b' ');
    match field(fields, "Content-Language") {
        Some(v) => {
            let u = unfold(v);
            let langs: Vec<&[u8]> = u
                .split(|&c| c == b',')
                .map(trim)
                .filter(|l| !l.is_empty())
                .collect();
            if langs.is_empty() {
                out.extend_from_slice(b"NIL");
            } else {
                out.push(b'(');
                for (i, l) in langs.iter().enumerate() {
                    if i > 0 {
                        out.push(b' ');
                    }
                    string(out, l);
                }
                out.push(b')');
            }
        }
        None => out.extend_from_slice(b"NIL"),
    }
    out.push(b' ');
    nstring(
        out,
        field(fields, "Content-Location")
            .map(unfold)
            .as_deref()
            .map(trim),
    );
}

/// Write the ENVELOPE of the message rooted at `part`.
pub fn envelope(msg: &[u8], part: &Part, out: &mut Vec<u8>) {
    let (fields, _) = parse_header(msg, part.start, part.body);
    // Raw values with the line breaks of folding removed (the folding whitespace stays).
    let raw = |name: &str| {
        last_field(&fields, name).map(|v| {
            let mut u = unfold(v.trim_ascii_start());
            for c in u.iter_mut() {
                if *c == b'\t' {
                    *c = b' ';
                }
            }
            u
        })
    };
    out.push(b'(');
    nstring(out, raw("Date").as_deref());
    out.push(b' ');
    nstring(out, raw("Subject").as_deref());
    let from = addresses(&fields, "From");
    let sender = addresses(&fields, "Sender");
    let reply_to = addresses(&fields, "Reply-To");
    for (i, list) in [
        from.clone(),
        if sender.is_empty() {
            from.clone()
        } else {
            sender
        },
        if reply_to.is_empty() {
            from.clone()
        } else {
            reply_to
        },
        addresses(&fields, "To"),
        addresses(&fields, "Cc"),
        addresses(&fields, "Bcc"),
    ]
    .iter()
    .enumerate()
    {
        let _ = i;
        out.push(b' ');
        address_list(out, list);
    }
    out.push(b' ');
    nstring(out, raw("In-Reply-To").as_deref());
    out.push(b' ');
    nstring(out, raw("Message-ID").as_deref());
    out.push(b')');
}

/// (name adl mailbox host); a group start is (NIL NIL name NIL), its end (NIL NIL NIL NIL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvAddr {
    /// Display name.
    pub name: Option<Vec<u8>>,
    /// Source route.
    pub adl: Option<Vec<u8>>,
    /// Local part (or group name).
    pub mailbox: Option<Vec<u8>>,
    /// Domain.
    pub host: Option<Vec<u8>>,
}

fn address_list(out: &mut Vec<u8>, list: &[EnvAddr]) {
    if list.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for a in list {
        out.push(b'(');
        nstring(out, a.name.as_deref());
        out.push(b' ');
        nstring(out, a.adl.as_deref());
        out.push(b' ');
        nstring(out, a.mailbox.as_deref());
        out.push(b' ');
        nstring(out, a.host.as_deref());
        out.push(b')');
    }
    out.push(b')');
}

fn addresses(fields: &[Field<'_>], name: &str) -> Vec<EnvAddr> {
    let mut out = Vec::new();
    for f in fields
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case(name.as_bytes()))
    {
        out.extend(parse_address_list(&unfold(f.value)));
    }
    out
}

/// Tokens of an address header.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(Vec<u8>),
    Quoted(Vec<u8>),
    Comment(Vec<u8>),
    Special(u8),
    Literal(Vec<u8>),
}

fn tokenize(v: &[u8]) -> Vec<Tok> {
    let mut t = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let c = v[i];
        match c {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'"' => {
                let mut s = Vec::new();
                i += 1;
                while i < v.len() && v[i] != b'"' {
                    if v[i] == b'\\' && i + 1 < v.len() {
                        i += 1;
                    }
                    s.push(v[i]);
                    i += 1;
                }
                i += 1;
                t.push(Tok::Quoted(s));
            }
            b'(' => {
                let mut depth = 0;
                let mut s = Vec::new();
                while i < v.len() {
                    match v[i] {
                        b'\\' if i + 1 < v.len() => {
                            i += 1;
                            s.push(v[i]);
                        }
                        b'(' => {
                            if depth > 0 {
                                s.push(b'(');
                            }
                            depth += 1;
                        }
                        b')' => {
                            depth -= 1;
                            if depth == 0 {
                                i += 1;
                                break;
                            }
                            s.push(b')');
                        }
                        x => s.push(x),
                    }
                    i += 1;
                }
                t.push(Tok::Comment(s));
            }
            b'[' => {
                let e = memchr::memchr(b']', &v[i..])
                    .map(|k| i + k + 1)
                    .unwrap_or(v.len());
                t.push(Tok::Literal(v[i..e].to_vec()));
                i = e;
            }
            b'<' | b'>' | b'@' | b',' | b';' | b':' | b'.' => {
                t.push(Tok::Special(c));
                i += 1;
            }
            _ => {
                let s = i;
                while i < v.len() && !b" \t\r\n\"(<>@,;:.[".contains(&v[i]) {
                    i += 1;
                }
                t.push(Tok::Word(v[s..i].to_vec()));
            }
        }
    }
    t
}

/// Parse an RFC 5322 address list into ENVELOPE addresses (groups flattened with markers).
pub fn parse_address_list(v: &[u8]) -> Vec<EnvAddr> {
    let toks = tokenize(v);
    let mut out = Vec::new();
    // Split into top-level items by ',' but keep groups (name: ... ;) together.
    let mut i = 0;
    while i < toks.len() {
        // Find the extent of this item.
        let mut j = i;
        let mut in_angle = false;
        let mut group = false;
        while j < toks.len() {
            match &toks[j] {
                Tok::Special(b'<') => in_angle = true,
                Tok::Special(b'>') => in_angle = false,
                Tok::Special(b':') if !in_angle && !group => group = true,
                Tok::Special(b';') if group => {
                    j += 1;
                    break;
                }
                Tok::Special(b',') if !in_angle && !group => break,
                _ => {}
            }
            j += 1;
        }
        let item = &toks[i..j];
        if group {
            let colon = item
                .iter()
                .position(|t| *t == Tok::Special(b':'))
                .unwrap_or(0);
            let name = phrase(&item[..colon]);
            out.push(EnvAddr {
                name: None,
                adl: None,
                mailbox: Some(name.unwrap_or_default()),
                host: None,
            });
            // The group's members: after its colon, up to its last ';' (a ';' before the
            // colon, as in "a;b:c", is not the group's end).
            let inner = &item[colon + 1..];
            let inner_end = inner
                .iter()
                .rposition(|t| *t == Tok::Special(b';'))
                .unwrap_or(inner.len());
            for sub in inner[..inner_end].split(|t| *t == Tok::Special(b',')) {
                if let Some(a) = mailbox(sub) {
                    out.push(a);
                }
            }
            out.push(EnvAddr {
                name: None,
                adl: None,
                mailbox: None,
                host: None,
            });
        } else if let Some(a) = mailbox(item) {
            out.push(a);
        }
        i = j + 1;
    }
    out
}

fn phrase(toks: &[Tok]) -> Option<Vec<u8>> {
    let mut words: Vec<Vec<u8>> = Vec::new();
    for t in toks {
        match t {
            Tok::Word(w) | Tok::Quoted(w) => words.push(w.clone()),
            Tok::Special(b'.') => {
                if let Some(l) = words.last_mut() {
                    l.push(b'.');
                } else {
                    words.push(b".".to_vec());
                }
            }
            _ => {}
        }
    }
    if words.is_empty() {
        None
    } else {
        Some(words.join(&b' '))
    }
}

fn mailbox(toks: &[Tok]) -> Option<EnvAddr> {
    if toks.iter().all(|t| matches!(t, Tok::Comment(_))) {
        return None;
    }
    if let Some(lt) = toks.iter().position(|t| *t == Tok::Special(b'<')) {
        let gt = toks
            .iter()
            .rposition(|t| *t == Tok::Special(b'>'))
            .unwrap_or(toks.len());
        let name = phrase(&toks[..lt]).filter(|n| !n.is_empty());
        let mut inner = &toks[lt + 1..gt.max(lt + 1)];
        let mut adl = None;
        if let Some(colon) = inner.iter().position(|t| *t == Tok::Special(b':')) {
            let route: Vec<u8> = inner[..colon]
                .iter()
                .flat_map(|t| match t {
                    Tok::Word(w) => w.clone(),
                    Tok::Special(c) => vec![*c],
                    _ => vec![],
                })
                .collect();
            adl = Some(route);
            inner = &inner[colon + 1..];
        }
        let (mb, host) = addr_spec(inner);
        return Some(EnvAddr {
            name,
            adl,
            mailbox: Some(mb),
            host: Some(host),
        });
    }
    let (mb, host) = addr_spec(toks);
    let comment = toks.iter().rev().find_map(|t| {
        if let Tok::Comment(c) = t {
            Some(c.clone())
        } else {
            None
        }
    });
    Some(EnvAddr {
        name: comment,
        adl: None,
        mailbox: Some(mb),
        host: Some(host),
    })
}

fn addr_spec(toks: &[Tok]) -> (Vec<u8>, Vec<u8>) {
    let at = toks.iter().rposition(|t| *t == Tok::Special(b'@'));
    let join = |ts: &[Tok]| -> Vec<u8> {
        let mut v = Vec::new();
        for t in ts {
            match t {
                Tok::Word(w) | Tok::Literal(w) => v.extend_from_slice(w),
                Tok::Quoted(w) => v.extend_from_slice(w),
                Tok::Special(b'.') => v.push(b'.'),
                _ => {}
            }
        }
        v
    };
    match at {
        Some(a) => {
            let local = join(&toks[..a]);
            let host = join(&toks[a + 1..]);
            if host.is_empty() {
                (local, b"MISSING_DOMAIN".to_vec())
            } else {
                (local, host)
            }
        }
        None => {
            let local = join(toks);
            if local.is_empty() {
                (b"MISSING_MAILBOX".to_vec(), b"MISSING_DOMAIN".to_vec())
            } else {
                (local, b"MISSING_DOMAIN".to_vec())
            }
        }
    }
}

/// Bytes of a BODY[section] (without partial).
pub fn section_bytes(
    msg: &[u8],
    root: &Part,
    part: &[u32],
    kind: &super::types::SectionKind,
) -> Option<Vec<u8>> {
    use super::types::SectionKind as K;
    // The message whose HEADER/TEXT is meant: the root, or an encapsulated message.
    let target_msg = |p: &Part| -> Option<Part> {
        if part.is_empty() {
            return Some(p.clone());
        }
        match &p.kind {
            Kind::Message(inner) => Some((**inner).clone()),
            _ => None,
        }
    };
    let node = if part.is_empty() {
        root
    } else {
        root.find(part)?
    };
    Some(match kind {
        K::Full => {
            if part.is_empty() {
                msg.to_vec()
            } else {
                msg[node.body..node.end].to_vec()
            }
        }
        K::Mime => {
            if part.is_empty() {
                return None;
            }
            let (_, body) = parse_header(msg, node.start, node.end);
            msg[node.start..body.min(node.body)].to_vec()
        }
        K::Header => {
            let m = target_msg(node)?;
            msg[m.start..m.body].to_vec()
        }
        K::Text => {
            let m = target_msg(node)?;
            msg[m.body..m.end].to_vec()
        }
        K::HeaderFields(names) | K::HeaderFieldsNot(names) => {
            let m = target_msg(node)?;
            let (fields, _) = parse_header(msg, m.start, m.body);
            let want = matches!(kind, K::HeaderFields(_));
            let mut out = Vec::new();
            for f in &fields {
                let hit = names
                    .iter()
                    .any(|n| f.name.eq_ignore_ascii_case(n.as_bytes()));
                if hit == want {
                    out.extend_from_slice(f.raw);
                    if !f.raw.ends_with(b"\n") {
                        out.extend_from_slice(b"\r\n");
                    }
                }
            }
            out.extend_from_slice(b"\r\n");
            out
        }
    })
}

/// Why BINARY could not decode a part.
#[derive(Debug, PartialEq, Eq)]
pub enum BinaryError {
    /// No such part, or not a leaf.
    NoPart,
    /// Content-Transfer-Encoding unknown or body undecodable.
    UnknownCte,
}

/// Decoded content of a leaf part (RFC 3516).
pub fn binary(msg: &[u8], root: &Part, part: &[u32]) -> Result<Vec<u8>, BinaryError> {
    let node = if part.is_empty() {
        root
    } else {
        root.find(part).ok_or(BinaryError::NoPart)?
    };
    if part.is_empty() && !matches!(node.kind, Kind::Leaf) {
        return Ok(msg.to_vec());
    }
    // A message/rfc822 part is content like a leaf: the encapsulated message, decoded by the
    // part's transfer encoding (RFC 3516 §4.2; Dovecot answers the same). Only a multipart
    // has no content of its own.
    if matches!(node.kind, Kind::Multipart(_)) {
        return Err(BinaryError::NoPart);
    }
    let (fields, _) = parse_header(msg, node.start, node.end);
    let body = &msg[node.body..node.end];
    let cte = field(&fields, "Content-Transfer-Encoding")
        .map(|v| String::from_utf8_lossy(trim(v)).to_ascii_lowercase());
    match cte.as_deref() {
        None | Some("7bit") | Some("8bit") | Some("binary") | Some("") => Ok(body.to_vec()),
        Some("base64") => decode_base64(body).ok_or(BinaryError::UnknownCte),
        Some("quoted-printable") => Ok(decode_qp(body)),
        _ => Err(BinaryError::UnknownCte),
    }
}

fn decode_base64(b: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let clean: Vec<u8> = b
        .iter()
        .copied()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let cfg = base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true);
    base64::engine::GeneralPurpose::new(&base64::alphabet::STANDARD, cfg)
        .decode(clean)
        .ok()
}

/// Quoted-printable decoding (RFC 2045 §6.7), lenient with bad escapes. A `=` followed by
/// nothing but spaces or tabs up to the line end is a soft line break, and spaces and tabs at
/// the end of an encoded line are transport padding, removed (rule 3).
pub fn decode_qp(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if matches!(b[i], b' ' | b'\t') {
            let mut j = i;
            while j < b.len() && matches!(b[j], b' ' | b'\t') {
                j += 1;
            }
            if j == b.len() || b[j] == b'\n' || (b[j] == b'\r' && b.get(j + 1) == Some(&b'\n')) {
                i = j; // trailing whitespace: dropped
                continue;
            }
        }
        if b[i] == b'=' {
            let mut j = i + 1;
            while j < b.len() && matches!(b[j], b' ' | b'\t') {
                j += 1;
            }
            if b.get(j) == Some(&b'\r') && b.get(j + 1) == Some(&b'\n') {
                i = j + 2;
                continue;
            }
            if b.get(j) == Some(&b'\n') {
                i = j + 1;
                continue;
            }
            if j == b.len() {
                break; // a soft break at the very end
            }
            if let (Some(h), Some(l)) = (b.get(i + 1), b.get(i + 2))
                && let Ok(v) =
                    u8::from_str_radix(std::str::from_utf8(&[*h, *l]).unwrap_or("zz"), 16)
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// `msg` with every leaf part whose body holds a NUL re-encoded as base64 (RFC 3516 §4.2:
/// a message APPENDed as binary must still be NUL-free in BODY[]; BINARY[] decodes it back
/// to the same bytes). `None` when a NUL lies outside every leaf body (in a header or a
/// boundary), which no transfer encoding can carry.
pub fn without_nul(msg: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine as _;
    fn leaves<'p>(p: &'p Part, out: &mut Vec<&'p Part>) {
        match &p.kind {
            Kind::Leaf => out.push(p),
            Kind::Multipart(children) => children.iter().for_each(|c| leaves(c, out)),
            Kind::Message(inner) => leaves(inner, out),
        }
    }
    let root = parse_message(msg);
    let mut parts = Vec::new();
    leaves(&root, &mut parts);
    let mut out = Vec::with_capacity(msg.len() + msg.len() / 2 + 64);
    let mut pos = 0;
    for leaf in parts {
        if leaf.start < pos || !msg[leaf.body..leaf.end].contains(&0) {
            continue;
        }
        out.extend_from_slice(&msg[pos..leaf.start]);
        // The part's header without its Content-Transfer-Encoding, then base64's.
        let mut skipping = false;
        let mut ended = false;
        for line in msg[leaf.start..leaf.body].split_inclusive(|&b| b == b'\n') {
            if line == b"\r\n" || line == b"\n" {
                out.extend_from_slice(b"Content-Transfer-Encoding: base64\r\n");
                out.extend_from_slice(line);
                ended = true;
                break;
            }
            if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
                if !skipping {
                    out.extend_from_slice(line);
                }
                continue;
            }
            let name = line.split(|&b| b == b':').next().unwrap_or_default();
            skipping = trim(name).eq_ignore_ascii_case(b"Content-Transfer-Encoding");
            if !skipping {
                out.extend_from_slice(line);
            }
        }
        if !ended {
            out.extend_from_slice(b"Content-Transfer-Encoding: base64\r\n\r\n");
        }
        let encoded = base64::engine::general_purpose::STANDARD.encode(&msg[leaf.body..leaf.end]);
        for (i, chunk) in encoded.as_bytes().chunks(76).enumerate() {
            if i > 0 {
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(chunk);
        }
        if !msg[leaf.end..].starts_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        pos = leaf.end;
    }
    out.extend_from_slice(&msg[pos..]);
    (!out.contains(&0)).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_parts_with_nul_become_base64_and_decode_to_the_same_bytes() {
        let payload: Vec<u8> = (0u8..=255).collect();
        let mut msg = b"Subject: b\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\nContent-Type: text/plain\r\n\r\nplain\r\n--zz\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding:\r\n binary\r\n\r\n".to_vec();
        msg.extend_from_slice(&payload);
        msg.extend_from_slice(b"\r\n--zz--\r\n");
        let out = without_nul(&msg).unwrap();
        assert!(!out.contains(&0));
        let root = parse_message(&out);
        assert!(matches!(binary(&out, &root, &[2]), Ok(ref b) if *b == payload));
        assert!(matches!(binary(&out, &root, &[1]), Ok(ref b) if b == b"plain"));
        assert!(!String::from_utf8_lossy(&out).contains("binary"));
        // A single-part message, and a NUL in a header, which nothing can carry.
        let mut single = b"Content-Transfer-Encoding: binary\r\n\r\n".to_vec();
        single.extend_from_slice(&payload);
        let out = without_nul(&single).unwrap();
        assert!(matches!(binary(&out, &parse_message(&out), &[]), Ok(ref b) if *b == payload));
        assert_eq!(without_nul(b"Subject: a\0b\r\n\r\nbody\r\n"), None);
    }

    /// Found by the CI fuzz run (imap_mime): a ';' before a group's ':' panicked ENVELOPE.
    #[test]
    fn a_semicolon_before_the_group_colon_does_not_panic() {
        let a = parse_address_list(b"a;b:c");
        assert_eq!(
            a.first().and_then(|x| x.mailbox.clone()),
            Some(b"a b".to_vec())
        );
        let crash = b"k:\x02\nCC:J\xf1;k:\nCC:J\xf1\x01\x00k:\x02\nC\xb9:J\x00\x00\xf1k";
        let root = parse_message(crash);
        let mut out = Vec::new();
        envelope(crash, &root, &mut out);
    }

    #[test]
    fn quoted_printable_soft_breaks_and_padding() {
        assert_eq!(decode_qp(b"soft=\r\nbreak"), b"softbreak");
        assert_eq!(decode_qp(b"soft=  \r\nbreak"), b"softbreak");
        assert_eq!(decode_qp(b"pad   \r\nnext\t\r\n"), b"pad\r\nnext\r\n");
        assert_eq!(decode_qp(b"caf=C3=A9=\r\n"), "café".as_bytes());
        assert_eq!(decode_qp(b"hard=0D=0A\r\nend="), b"hard\r\n\r\nend");
        assert_eq!(decode_qp(b"a = b"), b"a = b");
    }

    #[test]
    fn addresses_and_groups() {
        let a = parse_address_list(
            b"\"Alice, A.\" <alice@example.com>, bob@example.net (Bob), undisclosed:;",
        );
        assert_eq!(a.len(), 4);
        assert_eq!(a[0].name.as_deref(), Some(&b"Alice, A."[..]));
        assert_eq!(a[1].name.as_deref(), Some(&b"Bob"[..]));
        assert_eq!(a[2].mailbox.as_deref(), Some(&b"undisclosed"[..]));
        assert_eq!(
            a[3],
            EnvAddr {
                name: None,
                adl: None,
                mailbox: None,
                host: None
            }
        );
        let r = parse_address_list(b"<@relay1.example,@relay2.example:joe@example.org>");
        assert_eq!(
            r[0].adl.as_deref(),
            Some(&b"@relay1.example,@relay2.example"[..])
        );
    }

    #[test]
    fn rfc2231_join() {
        let ct = parse_content_type(
            b"application/x; title*0=\"part one,\"; title*1=\" part two\"; title*2*=%2C%20three",
        );
        assert_eq!(ct.param("title*"), Some("''part one, part two%2C%20three"));
    }
}
