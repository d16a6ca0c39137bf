//! data-attachment-filter: rejects messages carrying executables, recognised by file name
//! extension and by magic bytes, parsing the MIME structure inside the plugin. See README.md.

use corvus_sdk::{Config, Context, Hook, HookResult, Outcome, Plugin, log};

const DEFAULT_EXTENSIONS: &[&str] = &[
    "exe", "com", "bat", "cmd", "scr", "pif", "cpl", "msi", "msp", "dll", "vbs", "vbe", "js",
    "jse", "wsf", "wsh", "hta", "ps1", "psm1", "jar", "lnk", "reg", "sys", "elf", "app",
];

/// One leaf part of a MIME message.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub content_type: String,
    pub filename: Option<String>,
    /// Decoded content (at most the first `MAGIC_BYTES` bytes are needed, but small parts are
    /// decoded whole).
    pub head: Vec<u8>,
}

const MAGIC_BYTES: usize = 64;
const MAX_DEPTH: usize = 8;
const MAX_PARTS: usize = 500;

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Header fields (lower-case name, unfolded value) and the body.
fn split(raw: &[u8]) -> (Vec<(String, String)>, &[u8]) {
    let (head, body) = if raw.starts_with(b"\r\n") {
        (&raw[..0], &raw[2..])
    } else if raw.starts_with(b"\n") {
        (&raw[..0], &raw[1..])
    } else {
        match find(raw, b"\r\n\r\n") {
            Some(i) => (&raw[..i], &raw[i + 4..]),
            None => match find(raw, b"\n\n") {
                Some(i) => (&raw[..i], &raw[i + 2..]),
                None => (raw, &raw[raw.len()..]),
            },
        }
    };
    let text = String::from_utf8_lossy(head);
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((n, v)) = line.split_once(':') {
            fields.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    (fields, body)
}

/// The value of parameter `name` in a header value like `text/plain; charset="x"`, with
/// RFC 2231 (`name*=utf-8''a%20b`, `name*0=`…) and RFC 2047 (`=?utf-8?B?…?=`) forms decoded.
pub fn param(value: &str, name: &str) -> Option<String> {
    let mut plain = None;
    let mut ext = None;
    let mut pieces: Vec<(u32, String)> = Vec::new();
    for p in split_params(value).into_iter().skip(1) {
        let Some((k, v)) = p.split_once('=') else {
            continue;
        };
        let k = k.trim().to_ascii_lowercase();
        let v = v.trim().trim_matches('"').to_string();
        if k == name {
            plain = Some(v);
        } else if k == format!("{name}*") {
            ext = Some(decode_2231(&v));
        } else if let Some(rest) = k.strip_prefix(&format!("{name}*")) {
            let (num, encoded) = match rest.strip_suffix('*') {
                Some(n) => (n, true),
                None => (rest, false),
            };
            if let Ok(n) = num.parse::<u32>() {
                pieces.push((n, if encoded { decode_2231(&v) } else { v }));
            }
        }
    }
    if let Some(e) = ext {
        return Some(e);
    }
    if !pieces.is_empty() {
        pieces.sort_by_key(|p| p.0);
        return Some(pieces.into_iter().map(|p| p.1).collect());
    }
    plain.map(|p| decode_2047(&p))
}

fn split_params(value: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    for c in value.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                out.last_mut().unwrap().push(c);
            }
            ';' if !quoted => out.push(String::new()),
            _ => out.last_mut().unwrap().push(c),
        }
    }
    out
}

fn hexval(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn decode_2231(v: &str) -> String {
    // charset'language'percent-encoded
    let data = match v.splitn(3, '\'').collect::<Vec<_>>().as_slice() {
        [_, _, d] => *d,
        _ => v,
    };
    let b = data.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hexval(b[i + 1]), hexval(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn decode_2047(v: &str) -> String {
    let mut out = String::new();
    let mut rest = v;
    while let Some(start) = rest.find("=?") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let parts: Vec<&str> = after.splitn(3, '?').collect();
        if parts.len() == 3
            && let Some(end) = parts[2].find("?=")
        {
            let text = &parts[2][..end];
            let bytes = match parts[1].to_ascii_lowercase().as_str() {
                "b" => base64(text.as_bytes()),
                _ => q_decode(text),
            };
            out.push_str(&String::from_utf8_lossy(&bytes));
            rest = &parts[2][end + 2..];
            continue;
        }
        out.push_str("=?");
        rest = after;
    }
    out.push_str(rest);
    out
}

fn q_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'_' => out.push(b' '),
            b'=' if i + 2 < b.len() => {
                if let (Some(h), Some(l)) = (hexval(b[i + 1]), hexval(b[i + 2])) {
                    out.push(h * 16 + l);
                    i += 2;
                } else {
                    out.push(b'=');
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    out
}

/// Decode base64, skipping line breaks and anything outside the alphabet.
pub fn base64(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for &c in data {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            _ => continue,
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn quoted_printable(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i] == b'=' {
            if data.get(i + 1) == Some(&b'\r') && data.get(i + 2) == Some(&b'\n') {
                i += 3;
                continue;
            }
            if data.get(i + 1) == Some(&b'\n') {
                i += 2;
                continue;
            }
            if let (Some(h), Some(l)) = (
                data.get(i + 1).and_then(|b| hexval(*b)),
                data.get(i + 2).and_then(|b| hexval(*b)),
            ) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(data[i]);
        i += 1;
    }
    out
}

/// Every leaf part of a message (nested multiparts and attached messages included).
pub fn parts(raw: &[u8]) -> Vec<Part> {
    let mut out = Vec::new();
    walk(raw, 0, &mut out);
    out
}

fn walk(raw: &[u8], depth: usize, out: &mut Vec<Part>) {
    if depth > MAX_DEPTH || out.len() >= MAX_PARTS {
        return;
    }
    let (fields, body) = split(raw);
    let get = |n: &str| {
        fields
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    let ctype_full = get("content-type");
    let ctype = ctype_full
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let ctype = if ctype.is_empty() {
        "text/plain".to_string()
    } else {
        ctype
    };
    if ctype.starts_with("multipart/")
        && let Some(boundary) = param(ctype_full, "boundary")
    {
        for sub in split_multipart(body, boundary.as_bytes()) {
            walk(sub, depth + 1, out);
        }
        return;
    }
    if ctype == "message/rfc822" {
        walk(body, depth + 1, out);
    }
    let disposition = get("content-disposition");
    let filename = param(disposition, "filename").or_else(|| param(ctype_full, "name"));
    let encoding = get("content-transfer-encoding").trim().to_ascii_lowercase();
    // Enough encoded input for MAGIC_BYTES decoded bytes (base64 lines add CRLFs).
    let sample = &body[..body.len().min(MAGIC_BYTES * 2 + 64)];
    let head = match encoding.as_str() {
        "base64" => base64(sample),
        "quoted-printable" => quoted_printable(sample),
        _ => sample.to_vec(),
    };
    out.push(Part {
        content_type: ctype,
        filename,
        head: head[..head.len().min(MAGIC_BYTES)].to_vec(),
    });
}

/// The bodies between `--boundary` lines.
fn split_multipart<'a>(body: &'a [u8], boundary: &[u8]) -> Vec<&'a [u8]> {
    let mut delim = b"--".to_vec();
    delim.extend_from_slice(boundary);
    let mut out = Vec::new();
    let mut starts: Vec<(usize, usize)> = Vec::new(); // (line start, content start)
    let mut i = 0;
    while i <= body.len() {
        let line_end = body[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|p| i + p)
            .unwrap_or(body.len());
        let line = &body[i..line_end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.starts_with(&delim) {
            let rest = &line[delim.len()..];
            starts.push((i, line_end + 1));
            if rest.starts_with(b"--") {
                break;
            }
        }
        if line_end >= body.len() {
            break;
        }
        i = line_end + 1;
    }
    for w in starts.windows(2) {
        let (content, next_line) = (w[0].1, w[1].0);
        if content <= next_line && content <= body.len() {
            let mut part = &body[content..next_line];
            // The line break before a delimiter belongs to the delimiter.
            part = part.strip_suffix(b"\n").unwrap_or(part);
            part = part.strip_suffix(b"\r").unwrap_or(part);
            out.push(part);
        }
    }
    out
}

/// What kind of executable the bytes start with, if any.
pub fn magic(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(b"MZ") {
        Some("Windows executable")
    } else if head.starts_with(b"\x7fELF") {
        Some("ELF executable")
    } else if head.starts_with(&[0xfe, 0xed, 0xfa, 0xce])
        || head.starts_with(&[0xfe, 0xed, 0xfa, 0xcf])
        || head.starts_with(&[0xce, 0xfa, 0xed, 0xfe])
        || head.starts_with(&[0xcf, 0xfa, 0xed, 0xfe])
        || head.starts_with(&[0xca, 0xfe, 0xba, 0xbe])
    {
        Some("Mach-O executable")
    } else if head.starts_with(b"#!") {
        Some("script")
    } else {
        None
    }
}

pub struct AttachmentFilter {
    extensions: Vec<String>,
    check_magic: bool,
    code: u16,
}

impl AttachmentFilter {
    /// Why the message must be refused, if it must.
    pub fn verdict(&self, raw: &[u8]) -> Option<String> {
        for p in parts(raw) {
            if let Some(name) = &p.filename {
                let lower = name.trim().trim_end_matches('.').to_ascii_lowercase();
                if let Some((_, ext)) = lower.rsplit_once('.')
                    && self.extensions.iter().any(|e| e == ext)
                {
                    return Some(format!("executable attachment {name:?}"));
                }
            }
            if self.check_magic
                && (p.filename.is_some() || !p.content_type.starts_with("text/"))
                && let Some(kind) = magic(&p.head)
            {
                let name = p.filename.as_deref().unwrap_or("(unnamed)");
                return Some(format!("attachment {name:?} is a {kind}"));
            }
        }
        None
    }
}

impl Plugin for AttachmentFilter {
    const NAME: &'static str = "data-attachment-filter";
    const HOOKS: &'static [Hook] = &[Hook::Data];

    fn init(config: &Config) -> Result<Self, String> {
        let mut extensions: Vec<String> = match config.list("extensions") {
            Some(l) => l,
            None => DEFAULT_EXTENSIONS.iter().map(|s| s.to_string()).collect(),
        };
        extensions.extend(config.list("extra_extensions").unwrap_or_default());
        let extensions = extensions
            .into_iter()
            .map(|e| e.trim().trim_start_matches('.').to_ascii_lowercase())
            .collect();
        let code = config.int_or("code", 552);
        if !(500..=599).contains(&code) {
            return Err(format!("code: {code} is not in 500..599"));
        }
        Ok(AttachmentFilter {
            extensions,
            check_magic: config.bool("magic").unwrap_or(true),
            code: code as u16,
        })
    }

    fn on_data(&mut self, ctx: &Context) -> HookResult {
        match self.verdict(&ctx.message()) {
            Some(why) => {
                log::info(&format!("refused message from {}: {why}", ctx.mail_from()));
                Ok(Outcome::reject(
                    self.code,
                    format!("5.7.1 Message refused: {why}; executables are not accepted"),
                ))
            }
            None => Ok(Outcome::next()),
        }
    }
}

corvus_sdk::export!(AttachmentFilter);

#[cfg(test)]
mod tests {
    use super::*;
    use corvus_sdk::testing::TestHost;

    fn multipart(name_header: &str, content: &str) -> String {
        format!(
            "From: a@x\nTo: b@y\nSubject: files\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"BOUND\"\n\n--BOUND\nContent-Type: text/plain\n\nsee attached\n--BOUND\n{name_header}\nContent-Transfer-Encoding: base64\n\n{content}\n--BOUND--\n"
        )
    }

    // "MZ\x90\x00" and "%PDF-1.4" in base64.
    const MZ: &str = "TVqQAAMAAAAEAAAA";
    const PDF: &str = "JVBERi0xLjQK";

    fn verdict(msg: &str) -> &'static str {
        let mut h = TestHost::<AttachmentFilter>::new("{}").unwrap();
        h.data("a@x", &["b@y"], msg).unwrap().verdict.name()
    }

    #[test]
    fn by_name() {
        let m = multipart(
            "Content-Type: application/octet-stream\nContent-Disposition: attachment; filename=\"invoice.PDF.exe\"",
            PDF,
        );
        assert_eq!(verdict(&m), "reject");
        let m = multipart("Content-Type: application/pdf; name=\"invoice.pdf\"", PDF);
        assert_eq!(verdict(&m), "next");
    }

    #[test]
    fn by_magic_bytes_under_an_innocent_name() {
        let m = multipart(
            "Content-Type: application/pdf\nContent-Disposition: attachment; filename=\"invoice.pdf\"",
            MZ,
        );
        assert_eq!(verdict(&m), "reject");
    }

    #[test]
    fn encoded_names_and_nesting() {
        // RFC 2231 and RFC 2047 ("setup.exe").
        let m = multipart(
            "Content-Type: application/octet-stream\nContent-Disposition: attachment;\n filename*=utf-8''set%75p.exe",
            PDF,
        );
        assert_eq!(verdict(&m), "reject");
        let m = multipart(
            "Content-Type: application/octet-stream; name=\"=?utf-8?B?c2V0dXAuZXhl?=\"",
            PDF,
        );
        assert_eq!(verdict(&m), "reject");
        // An executable inside a forwarded message inside a multipart.
        let inner = multipart(
            "Content-Type: application/octet-stream\nContent-Disposition: attachment; filename=\"a.bin\"",
            MZ,
        );
        let outer = format!(
            "From: a@x\nContent-Type: multipart/mixed; boundary=OUT\n\n--OUT\nContent-Type: message/rfc822\n\n{inner}\n--OUT--\n"
        );
        assert_eq!(verdict(&outer), "reject");
        assert_eq!(
            verdict("From: a@x\nSubject: hi\n\nMZ is fine in text\n"),
            "next"
        );
    }

    #[test]
    fn parser_details() {
        assert_eq!(
            base64(b"TVqQ\r\nAAMA"),
            vec![0x4d, 0x5a, 0x90, 0x00, 0x03, 0x00]
        );
        assert_eq!(
            param(
                "attachment; filename*0=\"a\"; filename*1=\"b.exe\"",
                "filename"
            )
            .as_deref(),
            Some("ab.exe")
        );
        assert_eq!(
            param("text/plain; name=\"x;y.txt\"", "name").as_deref(),
            Some("x;y.txt")
        );
        let ps =
            parts(crate::tests::multipart("Content-Type: image/png; name=a.png", PDF).as_bytes());
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[1].filename.as_deref(), Some("a.png"));
        assert!(ps[1].head.starts_with(b"%PDF"));
    }
}
