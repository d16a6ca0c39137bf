//! Modified UTF-7 mailbox names (RFC 3501 §5.1.3, RFC 9051 Appendix A): what IMAP4rev1
//! clients send and expect. Corvus stores names in UTF-8; a session converts at the wire
//! unless the client enabled `UTF8=ACCEPT` or `IMAP4rev2` (RFC 6855, RFC 9051 §5.1).
//!
//! Printable US-ASCII other than `&` stands for itself, `&` is `&-`, and every other run of
//! characters is UTF-16BE in base64 (with `,` for `/`, no padding) between `&` and `-`.
//! Decoding is strict: anything [`encode`] would not have produced (printable ASCII inside
//! a base64 run, two adjacent runs, leftover bits, a lone surrogate, 8-bit bytes, a run that
//! is not closed) is refused, so one name has exactly one spelling on the wire.

/// The modified base64 alphabet.
const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

fn b64_value(c: u8) -> Option<u32> {
    B64.iter().position(|&x| x == c).map(|i| i as u32)
}

fn direct(c: char) -> bool {
    (' '..='~').contains(&c)
}

/// UTF-8 → modified UTF-7.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut run: Vec<u16> = Vec::new();
    for c in name.chars() {
        if direct(c) {
            flush_run(&mut out, &mut run);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut buf = [0u16; 2];
            run.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    flush_run(&mut out, &mut run);
    out
}

fn flush_run(out: &mut String, run: &mut Vec<u16>) {
    if run.is_empty() {
        return;
    }
    out.push('&');
    let mut bits: u32 = 0;
    let mut n = 0;
    for unit in run.drain(..) {
        bits = (bits << 16) | unit as u32;
        n += 16;
        while n >= 6 {
            n -= 6;
            out.push(B64[((bits >> n) & 63) as usize] as char);
        }
        bits &= (1 << n) - 1;
    }
    if n > 0 {
        out.push(B64[((bits << (6 - n)) & 63) as usize] as char);
    }
    out.push('-');
}

/// Why a name is not valid modified UTF-7.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid;

/// Modified UTF-7 → UTF-8, refusing every non-canonical spelling.
pub fn decode(wire: &str) -> Result<String, Invalid> {
    let b = wire.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    // Where the last base64 run ended: a run starting right there should have been one run.
    let mut run_end = None;
    while i < b.len() {
        let c = b[i];
        if !(0x20..0x7f).contains(&c) {
            return Err(Invalid);
        }
        if c != b'&' {
            out.push(c as char);
            i += 1;
            continue;
        }
        if b.get(i + 1) == Some(&b'-') {
            out.push('&');
            i += 2;
            continue;
        }
        if run_end == Some(i) {
            return Err(Invalid);
        }
        let start = i + 1;
        let len = b[start..].iter().position(|&c| c == b'-').ok_or(Invalid)?; // not closed
        decode_run(&b[start..start + len], &mut out)?;
        i = start + len + 1;
        run_end = Some(i);
    }
    Ok(out)
}

fn decode_run(run: &[u8], out: &mut String) -> Result<(), Invalid> {
    let mut units: Vec<u16> = Vec::with_capacity(run.len() * 6 / 16);
    let mut bits: u32 = 0;
    let mut n = 0;
    for &c in run {
        let v = b64_value(c).ok_or(Invalid)?;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 16 {
            n -= 16;
            units.push((bits >> n) as u16);
            bits &= (1 << n) - 1;
        }
    }
    // Only the padding of the last sextet may remain, and it must be zero.
    if n >= 6 || bits != 0 || units.is_empty() {
        return Err(Invalid);
    }
    for c in char::decode_utf16(units.iter().copied()) {
        let c = c.map_err(|_| Invalid)?;
        if direct(c) {
            return Err(Invalid); // printable ASCII must be sent as itself
        }
        out.push(c);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_examples() {
        // RFC 3501 §5.1.3.
        assert_eq!(
            decode("~peter/mail/&U,BTFw-/&ZeVnLIqe-").unwrap(),
            "~peter/mail/台北/日本語"
        );
        assert_eq!(
            encode("~peter/mail/台北/日本語"),
            "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
        );
        // The usual German and French folder names.
        assert_eq!(encode("Entwürfe"), "Entw&APw-rfe");
        assert_eq!(decode("Entw&APw-rfe").unwrap(), "Entwürfe");
        assert_eq!(encode("Éléments envoyés"), "&AMk-l&AOk-ments envoy&AOk-s");
        assert_eq!(encode("Gelöschte Elemente"), "Gel&APY-schte Elemente");
    }

    #[test]
    fn ampersand_and_plain_ascii() {
        assert_eq!(encode("a&b"), "a&-b");
        assert_eq!(encode("&"), "&-");
        assert_eq!(decode("&-&-").unwrap(), "&&");
        assert_eq!(decode("Tom & Jerry").ok(), None); // bare '&' starts a run: invalid
        assert_eq!(decode("Tom &- Jerry").unwrap(), "Tom & Jerry");
        assert_eq!(encode("plain-name_1 (x)"), "plain-name_1 (x)");
        assert_eq!(decode("plain-name_1 (x)").unwrap(), "plain-name_1 (x)");
        assert_eq!(decode("").unwrap(), "");
    }

    #[test]
    fn surrogate_pairs() {
        // U+1F600 is D83D DE00 in UTF-16.
        assert_eq!(encode("😀"), "&2D3eAA-");
        assert_eq!(decode("&2D3eAA-").unwrap(), "😀");
        assert_eq!(decode("a&2D3eAA-b&AOQ-").unwrap(), "a😀bä");
        // A lone high or low surrogate.
        assert!(decode("&2D0-").is_err());
        assert!(decode("&3gA-").is_err());
    }

    #[test]
    fn non_canonical_spellings_are_refused() {
        assert!(decode("&AGE-").is_err(), "'a' (0x61) encoded");
        assert!(decode("&AOQ-&APY-").is_err(), "two adjacent runs");
        assert!(decode("&AOQA9g-").is_ok(), "the same as one run");
        assert!(decode("&AOR-").is_err(), "non-zero leftover bits");
        assert!(decode("&AOQA-").is_err(), "a whole extra sextet");
        assert!(decode("&-").is_ok());
        assert!(decode("&").is_err(), "run not closed");
        assert!(decode("&AOQ").is_err(), "run not closed");
        assert!(decode("&A=Q-").is_err(), "not in the alphabet");
        assert!(decode("&AOQ/-").is_err(), "'/' is ',' here");
        assert!(decode("Entwürfe").is_err(), "8-bit");
        assert!(decode("a\tb").is_err(), "control character");
        // '-' right after a literal '&' or after a plain '-' does not make the next run
        // adjacent.
        assert_eq!(decode("&-&AOQ-").unwrap(), "&ä");
        assert_eq!(decode("x-&AOQ-").unwrap(), "x-ä");
        assert_eq!(decode("&AOQ--").unwrap(), "ä-");
    }

    #[test]
    fn round_trips() {
        for s in [
            "INBOX",
            "Entwürfe",
            "a&b&&c",
            "日本語/台北",
            "😀😀x😀",
            "Ünïcödé & more/sub-folder",
            "\u{7f}\u{80}\u{ffff}",
            "tab\there",
            "ä-ö",
            "-&-",
        ] {
            let w = encode(s);
            assert!(w.bytes().all(|c| (0x20..0x7f).contains(&c)), "{w}");
            assert_eq!(decode(&w).as_deref(), Ok(s), "{s} via {w}");
        }
        // Every character of the BMP outside printable ASCII and the surrogates, and a few
        // beyond, alone and between ASCII.
        for cp in (0x80u32..0xd800)
            .step_by(7)
            .chain(0xe000..0x10000)
            .chain([0x10000, 0x10ffff])
        {
            let c = char::from_u32(cp).unwrap();
            let s = format!("a{c}{c}b{c}");
            assert_eq!(decode(&encode(&s)).as_deref(), Ok(s.as_str()));
        }
    }
}
