//! Rendering FETCH responses (RFC 9051 §7.5.2), sans I/O: body sections, partial ranges,
//! BINARY (RFC 3516) and the literal forms.

use crate::imap::mime::{self, BinaryError};
use crate::imap::response::{date_time, flag_list, literal};
use crate::imap::seqset::join_part;
use crate::imap::types::*;
use crate::store::MessageMeta;

/// Render one `* n FETCH (...)` line. Returns the line and whether a BINARY item failed
/// to decode (RFC 3516 [UNKNOWN-CTE]).
pub fn render(
    seq: usize,
    meta: &MessageMeta,
    body: Option<&[u8]>,
    items: &[FetchItem],
    uid: bool,
    flags_changed: bool,
    condstore: bool,
) -> (Vec<u8>, bool) {
    let mut failed = false;
    let idx = seq - 1;
    // The MIME structure is computed only for items that need it (not for BODY[]).
    let parsed = std::cell::OnceCell::new();
    let root = || body.map(|b| parsed.get_or_init(|| mime::parse_message(b)));
    let mut line = format!("* {} FETCH (", idx + 1).into_bytes();
    let mut first = true;
    let mut sep = |line: &mut Vec<u8>| {
        if !first {
            line.push(b' ');
        }
        first = false;
    };
    let mut did_uid = false;
    let mut did_flags = false;
    for item in items {
        match item {
            FetchItem::Uid => {
                sep(&mut line);
                line.extend_from_slice(format!("UID {}", meta.uid).as_bytes());
                did_uid = true;
            }
            FetchItem::Flags => {
                sep(&mut line);
                line.extend_from_slice(b"FLAGS ");
                flag_list(&mut line, &meta.flags);
                did_flags = true;
            }
            FetchItem::InternalDate => {
                sep(&mut line);
                line.extend_from_slice(
                    format!("INTERNALDATE {}", date_time(meta.internal_date)).as_bytes(),
                );
            }
            FetchItem::Rfc822Size => {
                sep(&mut line);
                line.extend_from_slice(format!("RFC822.SIZE {}", meta.size).as_bytes());
            }
            FetchItem::Modseq => {
                sep(&mut line);
                line.extend_from_slice(format!("MODSEQ ({})", meta.modseq).as_bytes());
            }
            FetchItem::Envelope => {
                sep(&mut line);
                line.extend_from_slice(b"ENVELOPE ");
                if let (Some(b), Some(r)) = (body, root()) {
                    mime::envelope(b, r, &mut line);
                }
            }
            FetchItem::Body | FetchItem::BodyStructure => {
                sep(&mut line);
                let ext = matches!(item, FetchItem::BodyStructure);
                line.extend_from_slice(if ext { b"BODYSTRUCTURE " } else { b"BODY " });
                if let (Some(b), Some(r)) = (body, root()) {
                    mime::body_structure(b, r, ext, &mut line);
                }
            }
            FetchItem::Section {
                section,
                partial,
                legacy,
                ..
            } => {
                let Some(b) = body else {
                    continue;
                };
                let data: Option<std::borrow::Cow<'_, [u8]>> =
                    if section.part.is_empty() && section.kind == SectionKind::Full {
                        Some(std::borrow::Cow::Borrowed(b))
                    } else {
                        let r = root().expect("body present");
                        mime::section_bytes(b, r, &section.part, &section.kind)
                            .map(std::borrow::Cow::Owned)
                    };
                sep(&mut line);
                match legacy {
                    Some(name) => line.extend_from_slice(name.as_bytes()),
                    None => {
                        line.extend_from_slice(b"BODY[");
                        line.extend_from_slice(section_name(section).as_bytes());
                        line.push(b']');
                    }
                }
                write_partial(
                    &mut line,
                    data.as_deref().unwrap_or(b""),
                    *partial,
                    data.is_none(),
                );
            }
            FetchItem::Binary { part, partial, .. } => {
                let (Some(b), Some(r)) = (body, root()) else {
                    continue;
                };
                match mime::binary(b, r, part) {
                    Ok(data) => {
                        sep(&mut line);
                        line.extend_from_slice(format!("BINARY[{}]", join_part(part)).as_bytes());
                        write_partial(&mut line, &data, *partial, false);
                    }
                    Err(BinaryError::UnknownCte) => failed = true,
                    Err(BinaryError::NoPart) => {
                        sep(&mut line);
                        line.extend_from_slice(
                            format!("BINARY[{}] NIL", join_part(part)).as_bytes(),
                        );
                    }
                }
            }
            FetchItem::BinarySize(part) => {
                let (Some(b), Some(r)) = (body, root()) else {
                    continue;
                };
                match mime::binary(b, r, part) {
                    Ok(data) => {
                        sep(&mut line);
                        line.extend_from_slice(
                            format!("BINARY.SIZE[{}] {}", join_part(part), data.len()).as_bytes(),
                        );
                    }
                    Err(BinaryError::UnknownCte) => failed = true,
                    Err(BinaryError::NoPart) => {
                        sep(&mut line);
                        line.extend_from_slice(
                            format!("BINARY.SIZE[{}] 0", join_part(part)).as_bytes(),
                        );
                    }
                }
            }
        }
    }
    if uid && !did_uid {
        sep(&mut line);
        line.extend_from_slice(format!("UID {}", meta.uid).as_bytes());
    }
    if flags_changed && !did_flags {
        sep(&mut line);
        line.extend_from_slice(b"FLAGS ");
        flag_list(&mut line, &meta.flags);
    }
    if condstore && !items.contains(&FetchItem::Modseq) {
        sep(&mut line);
        line.extend_from_slice(format!("MODSEQ ({})", meta.modseq).as_bytes());
    }
    line.extend_from_slice(b")\r\n");
    (line, failed)
}

pub(in crate::imap) fn section_name(s: &Section) -> String {
    let mut out = join_part(&s.part);
    let kind = match &s.kind {
        SectionKind::Full => String::new(),
        SectionKind::Header => "HEADER".into(),
        SectionKind::Text => "TEXT".into(),
        SectionKind::Mime => "MIME".into(),
        SectionKind::HeaderFields(f) => format!("HEADER.FIELDS ({})", f.join(" ").to_uppercase()),
        SectionKind::HeaderFieldsNot(f) => {
            format!("HEADER.FIELDS.NOT ({})", f.join(" ").to_uppercase())
        }
    };
    if !kind.is_empty() {
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(&kind);
    }
    out
}

pub(in crate::imap) fn write_partial(
    line: &mut Vec<u8>,
    data: &[u8],
    partial: Option<(u64, u64)>,
    nil: bool,
) {
    match partial {
        Some((off, len)) => {
            line.extend_from_slice(format!("<{off}> ").as_bytes());
            let s = (off as usize).min(data.len());
            let e = (off.saturating_add(len) as usize).min(data.len());
            literal(line, &data[s..e]);
        }
        None if nil => line.extend_from_slice(b" NIL"),
        None => {
            line.push(b' ');
            literal(line, data);
        }
    }
}

/// Bare LF → CRLF (a lone CR is kept), as stored messages are CRLF.
pub fn normalize_crlf(m: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.len() + m.len() / 50);
    for (i, &b) in m.iter().enumerate() {
        if b == b'\n' && (i == 0 || m[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_line_ends_become_crlf() {
        assert_eq!(normalize_crlf(b"a\nb\r\nc\rd"), b"a\r\nb\r\nc\rd");
    }
}
