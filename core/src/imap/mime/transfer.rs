//! Content-Transfer-Encoding for BINARY (RFC 3516): decoding base64 and quoted-printable
//! parts, and re-encoding parts that hold a NUL.

use super::*;

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
