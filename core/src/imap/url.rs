//! IMAP URLs (RFC 5092) as CATENATE names its pieces (RFC 4469 §5): the subset that points
//! at one message, or a section of one, of the logged-in user. No I/O; the session resolves
//! the result against the store.
//!
//! Accepted forms:
//! - `imap://[user[;AUTH=…]@]host[:port]/mailbox[;UIDVALIDITY=n]/;UID=n[/;SECTION=s][/;PARTIAL=o[.l]]`
//! - the same from `/mailbox…` (absolute path, the server is this one);
//! - `;UID=n…` (relative to the selected mailbox).
//!
//! `;URLAUTH=` (RFC 4467) is not supported: such URLs are refused, like any other that names
//! something else than a message (a mailbox list, a search).

use super::codec::parse_url_section;
use super::mutf7;
use super::types::Section;

/// A parsed message URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageUrl {
    /// The user named in the authority (`user@host`), if any.
    pub user: Option<String>,
    /// The mailbox; `None` for a URL relative to the selected mailbox.
    pub mailbox: Option<String>,
    /// `;UIDVALIDITY=`, when given.
    pub uidvalidity: Option<u32>,
    /// `;UID=`.
    pub uid: u32,
    /// `;SECTION=`.
    pub section: Option<Section>,
    /// `;PARTIAL=offset[.length]`.
    pub partial: Option<(u32, Option<u32>)>,
}

/// Parse `url`; the error says what is wrong, for the `[BADURL]` response text.
pub fn parse(url: &str) -> Result<MessageUrl, &'static str> {
    let mut user = None;
    let mut rest = url;
    if let Some(after) = strip_prefix_ci(url, "imap://") {
        let (authority, path) = after.split_once('/').ok_or("No mailbox in the URL")?;
        if let Some((u, _host)) = authority.rsplit_once('@') {
            // `user;AUTH=mech`: the user is what comes before the first ';'.
            let name = u.split(';').next().unwrap_or_default();
            user = Some(percent_decode(name)?);
        }
        rest = path;
    } else if let Some(path) = url.strip_prefix('/') {
        rest = path;
    } else if !url.starts_with(';') {
        return Err("Not an IMAP message URL");
    }
    // Split into the mailbox (with its UIDVALIDITY) and the `/;key=value` parts.
    let mut mailbox = None;
    let mut uidvalidity = None;
    let mut params: Vec<&str> = Vec::new();
    if rest.starts_with(';') {
        if rest.len() != url.len() {
            return Err("Empty mailbox name");
        }
        params.push(rest);
    } else {
        let (mbox, tail) = match rest.find("/;") {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => return Err("No ;UID= in the URL"),
        };
        let (name, validity) = match mbox.split_once(';') {
            Some((n, v)) => (n, Some(v)),
            None => (mbox, None),
        };
        if let Some(v) = validity {
            let n = value_of(v, "UIDVALIDITY").ok_or("Bad mailbox parameter")?;
            uidvalidity = Some(number(n)?);
        }
        if name.is_empty() {
            return Err("Empty mailbox name");
        }
        let decoded = percent_decode(name)?;
        // RFC 5092 §3.3 names are UTF-8; a name written in modified UTF-7 is taken too.
        mailbox = Some(if decoded.contains('&') {
            mutf7::decode(&decoded).unwrap_or(decoded)
        } else {
            decoded
        });
        params.push(tail);
    }
    let mut uid = None;
    let mut section = None;
    let mut partial = None;
    for p in params.iter().flat_map(|t| t.split('/')) {
        let p = p.strip_prefix(';').ok_or("Bad URL component")?;
        if let Some(v) = value_of(p, "UID") {
            uid = Some(number(v)?);
        } else if let Some(v) = value_of(p, "SECTION") {
            let s = percent_decode(v)?;
            section = Some(parse_url_section(&s).ok_or("Bad SECTION")?);
        } else if let Some(v) = value_of(p, "PARTIAL") {
            partial = Some(match v.split_once('.') {
                Some((o, l)) => (number_or_zero(o)?, Some(number(l)?)),
                None => (number_or_zero(v)?, None),
            });
        } else if value_of(p, "URLAUTH").is_some() || value_of(p, "EXPIRE").is_some() {
            return Err("URLAUTH is not supported");
        } else {
            return Err("Unknown URL component");
        }
    }
    Ok(MessageUrl {
        user,
        mailbox,
        uidvalidity,
        uid: uid.ok_or("No ;UID= in the URL")?,
        section,
        partial,
    })
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

/// The value of `KEY=value` when `p` is that key (case-insensitive).
fn value_of<'a>(p: &'a str, key: &str) -> Option<&'a str> {
    let (k, v) = p.split_once('=')?;
    k.eq_ignore_ascii_case(key).then_some(v)
}

/// A non-zero 32-bit number (UIDs and UIDVALIDITY start at 1).
fn number(s: &str) -> Result<u32, &'static str> {
    match s.parse::<u32>() {
        Ok(n) if n > 0 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err("Bad number in the URL"),
    }
}

fn number_or_zero(s: &str) -> Result<u32, &'static str> {
    match s.parse::<u32>() {
        Ok(n) if s.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err("Bad number in the URL"),
    }
}

/// `%XX` escapes to bytes, the result UTF-8.
fn percent_decode(s: &str) -> Result<String, &'static str> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or("Bad %-escape")?;
            let v = std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("Bad %-escape")?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "The URL is not UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imap::types::SectionKind;

    #[test]
    fn the_forms_rfc_4469_uses() {
        // RFC 4469 §5's example.
        let u = parse("/Drafts;UIDVALIDITY=385759045/;UID=20/;SECTION=HEADER").unwrap();
        assert_eq!(u.mailbox.as_deref(), Some("Drafts"));
        assert_eq!((u.uidvalidity, u.uid), (Some(385759045), 20));
        assert_eq!(u.section.unwrap().kind, SectionKind::Header);
        let u = parse("imap://bob;AUTH=*@mail.example.org/INBOX/;UID=7/;SECTION=1.2.MIME").unwrap();
        assert_eq!(u.user.as_deref(), Some("bob"));
        assert_eq!(u.section.unwrap().part, [1, 2]);
        let u = parse(";UID=3/;PARTIAL=10.20").unwrap();
        assert_eq!(
            (u.mailbox, u.uid, u.partial),
            (None, 3, Some((10, Some(20))))
        );
        let u = parse("/Sent%20Items/;UID=1").unwrap();
        assert_eq!(u.mailbox.as_deref(), Some("Sent Items"));
        let u = parse("/&AMQ-pfel/;UID=1").unwrap();
        assert_eq!(u.mailbox.as_deref(), Some("Äpfel"));
    }

    #[test]
    fn what_is_not_one_message_is_refused() {
        for bad in [
            "",
            "http://x/INBOX/;UID=1",
            "/INBOX",
            "/INBOX/;UID=0",
            "/INBOX/;UID=x",
            "/INBOX;UIDVALIDITY=/;UID=1",
            "/INBOX/;UID=1/;SECTION=1.BOGUS",
            "/INBOX/;UID=1/;URLAUTH=anonymous",
            "/INBOX/;UID=1/;BOGUS=1",
            "/%ZZ/;UID=1",
            "/;UID=1",
            "imap://host",
            "INBOX/;UID=1",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
