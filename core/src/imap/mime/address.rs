//! Address lists for ENVELOPE (RFC 9051 §7.5.2, RFC 5322 §3.4): a tokenizer and parser
//! of raw `From`/`To`/… values into (name, route, mailbox, host), groups included.

use super::*;

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

pub(super) fn address_list(out: &mut Vec<u8>, list: &[EnvAddr]) {
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

pub(super) fn addresses(fields: &[Field<'_>], name: &str) -> Vec<EnvAddr> {
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
