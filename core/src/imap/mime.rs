//! MIME structure for IMAP: part tree with byte offsets, BODYSTRUCTURE, ENVELOPE, sections
//! and BINARY decoding (RFC 9051 §7.5.2, RFC 2045/2046, RFC 3516).
//!
//! IMAP wants raw values (encoded words stay encoded, parameters undecoded) and exact byte
//! ranges, which a decoding parser such as mail-parser does not expose; so this module walks
//! the raw bytes itself. mail-parser is used where decoded text is wanted (SEARCH).

use super::response::{nstring, string};
mod address;
mod header;
#[cfg(test)]
mod tests;
mod transfer;

pub use address::{EnvAddr, parse_address_list};
pub use header::{ContentType, Field, field, parse_content_type, parse_header};
pub use transfer::{BinaryError, binary, decode_qp, without_nul};

use address::*;
use header::*;

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
