//! SMTP command parsing (RFC 5321 §4.1 and extensions), sans I/O: bytes in, a [`Command`] or a
//! [`SyntaxError`] out. Line framing lives in [`next_line`].

use std::fmt;

/// An SMTP path (`<local@domain>`), or the null path `<>` (the default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Address {
    /// Local part exactly as given, unquoted (`"a b"` → `a b`).
    pub local: String,
    /// Domain, lower-cased; for an address literal, the literal with brackets.
    pub domain: String,
}

impl Address {
    /// Whether this is the null reverse-path `<>`.
    pub fn is_null(&self) -> bool {
        self.local.is_empty() && self.domain.is_empty()
    }

    /// Whether any part needs SMTPUTF8.
    pub fn is_utf8(&self) -> bool {
        !self.local.is_ascii() || !self.domain.is_ascii()
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_null() {
            return Ok(());
        }
        let needs_quotes = self.local.is_empty()
            || self.local.starts_with('.')
            || self.local.ends_with('.')
            || self.local.contains("..")
            || !self.local.chars().all(|c| is_atext(c) || c == '.');
        if needs_quotes {
            write!(f, "\"")?;
            for c in self.local.chars() {
                if c == '"' || c == '\\' {
                    write!(f, "\\")?;
                }
                write!(f, "{c}")?;
            }
            write!(f, "\"@{}", self.domain)
        } else {
            write!(f, "{}@{}", self.local, self.domain)
        }
    }
}

/// `BODY=` values (RFC 6152, RFC 3030).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// 7BIT
    SevenBit,
    /// 8BITMIME
    EightBitMime,
    /// BINARYMIME (needs BDAT)
    BinaryMime,
}

/// MAIL FROM parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    /// SIZE= (RFC 1870).
    pub size: Option<u64>,
    /// BODY=.
    pub body: Option<Body>,
    /// SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// RET= (RFC 3461): FULL or HDRS.
    pub ret: Option<String>,
    /// ENVID= (RFC 3461), xtext-decoded.
    pub envid: Option<String>,
    /// AUTH= (RFC 4954), kept as given.
    pub auth: Option<String>,
    /// REQUIRETLS (RFC 8689): every hop must use TLS with a verified certificate.
    pub requiretls: bool,
}

/// RCPT TO parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptParams {
    /// NOTIFY= values (RFC 3461): NEVER, SUCCESS, FAILURE, DELAY.
    pub notify: Vec<String>,
    /// ORCPT= (RFC 3461), as `type;address` with the address xtext-decoded.
    pub orcpt: Option<String>,
}

/// One parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// EHLO domain
    Ehlo(String),
    /// HELO domain
    Helo(String),
    /// MAIL FROM:<path> params
    Mail(Address, MailParams),
    /// RCPT TO:<path> params
    Rcpt(Address, RcptParams),
    /// DATA
    Data,
    /// BDAT size [LAST] (RFC 3030)
    Bdat(u64, bool),
    /// RSET
    Rset,
    /// NOOP
    Noop,
    /// QUIT
    Quit,
    /// VRFY string
    Vrfy(String),
    /// EXPN string
    Expn(String),
    /// HELP [topic]
    Help,
    /// STARTTLS
    StartTls,
    /// AUTH mechanism [initial-response]
    Auth(String, Option<String>),
}

/// Why a command line was refused; each maps to a 5xx reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    /// Unknown verb (500 5.5.1).
    #[error("command not recognized")]
    Unknown,
    /// Known verb, bad arguments (501 5.5.4 / 5.5.2).
    #[error("{0}")]
    Args(&'static str),
    /// Unsupported parameter (555 5.5.4).
    #[error("unsupported parameter {0}")]
    Param(String),
    /// The line held bytes that are not text (500 5.5.2).
    #[error("invalid characters in command")]
    Binary,
    /// A path that is not an address (501 with RFC 3463's X.1.7 for the sender, X.1.3 for a
    /// recipient).
    #[error("{0}")]
    Address(&'static str, Side),
}

/// Whose address a [`SyntaxError::Address`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// MAIL FROM (X.1.7, bad sender's address syntax).
    Sender,
    /// RCPT TO (X.1.3, bad destination address syntax).
    Recipient,
}

/// Find the next CRLF-terminated line in `buf`, returning the line without its terminator and
/// the number of bytes consumed. A bare LF also ends a command line (lenient, as most servers).
pub fn next_line(buf: &[u8]) -> Option<(&[u8], usize)> {
    let nl = memchr::memchr(b'\n', buf)?;
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Some((line, nl + 1))
}

/// Parse one command line (without CRLF).
pub fn parse_command(line: &[u8]) -> Result<Command, SyntaxError> {
    let line = std::str::from_utf8(line).map_err(|_| SyntaxError::Binary)?;
    if line.bytes().any(|b| b < 0x20 && b != b'\t') {
        return Err(SyntaxError::Binary);
    }
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], line[i + 1..].trim()),
        None => (line, ""),
    };
    let no_args = |c: Command| {
        if rest.is_empty() {
            Ok(c)
        } else {
            Err(SyntaxError::Args("no parameters allowed"))
        }
    };
    match verb.to_ascii_uppercase().as_str() {
        "EHLO" | "HELO" => {
            if rest.is_empty() || rest.contains(' ') {
                return Err(SyntaxError::Args(
                    "a domain name or address literal is required",
                ));
            }
            Ok(if verb.eq_ignore_ascii_case("EHLO") {
                Command::Ehlo(rest.into())
            } else {
                Command::Helo(rest.into())
            })
        }
        "MAIL" => {
            let arg = strip_keyword(rest, "FROM:")
                .ok_or(SyntaxError::Args("syntax: MAIL FROM:<address>"))?;
            let (addr, params) = parse_path(arg, true)?;
            Ok(Command::Mail(addr, parse_mail_params(params)?))
        }
        "RCPT" => {
            let arg =
                strip_keyword(rest, "TO:").ok_or(SyntaxError::Args("syntax: RCPT TO:<address>"))?;
            let (addr, params) = parse_path(arg, false)?;
            // RFC 5321 §4.1.1.3: <Postmaster> without a domain is allowed.
            Ok(Command::Rcpt(addr, parse_rcpt_params(params)?))
        }
        "DATA" => no_args(Command::Data),
        "BDAT" => {
            let mut it = rest.split_ascii_whitespace();
            let size = it
                .next()
                .and_then(|s| {
                    if s.bytes().all(|b| b.is_ascii_digit()) {
                        s.parse().ok()
                    } else {
                        None
                    }
                })
                .ok_or(SyntaxError::Args("syntax: BDAT size [LAST]"))?;
            let last = match it.next() {
                None => false,
                Some(l) if l.eq_ignore_ascii_case("LAST") => true,
                Some(_) => return Err(SyntaxError::Args("syntax: BDAT size [LAST]")),
            };
            if it.next().is_some() {
                return Err(SyntaxError::Args("syntax: BDAT size [LAST]"));
            }
            Ok(Command::Bdat(size, last))
        }
        "RSET" => no_args(Command::Rset),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => no_args(Command::Quit),
        "VRFY" if !rest.is_empty() => Ok(Command::Vrfy(rest.into())),
        "EXPN" if !rest.is_empty() => Ok(Command::Expn(rest.into())),
        "VRFY" | "EXPN" => Err(SyntaxError::Args("an argument is required")),
        "HELP" => Ok(Command::Help),
        "STARTTLS" => no_args(Command::StartTls),
        "AUTH" => {
            let mut it = rest.split_ascii_whitespace();
            let mech = it.next().ok_or(SyntaxError::Args(
                "syntax: AUTH mechanism [initial-response]",
            ))?;
            let initial = it.next().map(str::to_string);
            if it.next().is_some() {
                return Err(SyntaxError::Args(
                    "syntax: AUTH mechanism [initial-response]",
                ));
            }
            Ok(Command::Auth(mech.to_ascii_uppercase(), initial))
        }
        _ => Err(SyntaxError::Unknown),
    }
}

fn strip_keyword<'a>(s: &'a str, kw: &str) -> Option<&'a str> {
    // Compared as bytes: `kw` is ASCII, but `s` may have a multi-byte character across
    // `kw.len()` (slicing the str there panicked: `MAIL fDA\u{d9}…`, found by fuzzing).
    if s.len() >= kw.len() && s.as_bytes()[..kw.len()].eq_ignore_ascii_case(kw.as_bytes()) {
        // Lenient: allow spaces after the colon (`MAIL FROM: <a@b>`), as common clients send.
        Some(s[kw.len()..].trim_start())
    } else {
        None
    }
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// Parse `<path> params…`. Returns the address and the remaining parameter text.
fn parse_path(s: &str, allow_null: bool) -> Result<(Address, &str), SyntaxError> {
    let side = if allow_null {
        Side::Sender
    } else {
        Side::Recipient
    };
    let bad = SyntaxError::Address("bad address syntax", side);
    // Only `<>` is the null path: an empty argument is no path at all.
    if s.trim().is_empty() {
        return Err(SyntaxError::Args("an address is required, <> for none"));
    }
    let (inner, rest) = if let Some(body) = s.strip_prefix('<') {
        let end = find_path_end(body).ok_or(bad.clone())?;
        (&body[..end], &body[end + 1..])
    } else {
        // Lenient: an address without brackets, up to the first space.
        let end = s.find(' ').unwrap_or(s.len());
        (&s[..end], &s[end..])
    };
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(bad);
    }
    if inner.is_empty() {
        return if allow_null {
            Ok((
                Address {
                    local: String::new(),
                    domain: String::new(),
                },
                rest.trim(),
            ))
        } else {
            Err(SyntaxError::Args("an empty recipient is not allowed"))
        };
    }
    // RFC 5321 §4.1.2 / §3.3: a source route (`@a,@b:`) is accepted and ignored.
    let mailbox = if inner.starts_with('@') {
        let colon = inner.find(':').ok_or(bad.clone())?;
        &inner[colon + 1..]
    } else {
        inner
    };
    if !allow_null && mailbox.eq_ignore_ascii_case("postmaster") {
        return Ok((
            Address {
                local: "postmaster".into(),
                domain: String::new(),
            },
            rest.trim(),
        ));
    }
    Ok((parse_mailbox(mailbox).ok_or(bad)?, rest.trim()))
}

/// Index of the `>` closing a path, skipping quoted strings.
fn find_path_end(s: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escape = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escape => escape = false,
            '\\' if quoted => escape = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// RFC 5321 Mailbox = Local-part "@" ( Domain / address-literal ), with RFC 6531 UTF-8.
pub fn parse_mailbox(s: &str) -> Option<Address> {
    let (local, domain) = if let Some(q) = s.strip_prefix('"') {
        let mut local = String::new();
        let mut chars = q.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => local.push(chars.next()?.1),
                '"' => {
                    end = Some(i);
                    break;
                }
                c if (c as u32) < 0x20 => return None,
                c => local.push(c),
            }
        }
        let rest = &q[end? + 1..];
        (local, rest.strip_prefix('@')?)
    } else {
        let (l, d) = s.rsplit_once('@')?;
        if l.is_empty()
            || l.starts_with('.')
            || l.ends_with('.')
            || l.contains("..")
            || !l.chars().all(|c| is_atext(c) || c == '.')
        {
            return None;
        }
        (l.to_string(), d)
    };
    if local.len() > 64 * 4 || !valid_domain(domain) {
        return None;
    }
    let domain = domain.to_lowercase();
    Some(Address { local, domain })
}

fn valid_domain(d: &str) -> bool {
    if let Some(lit) = d.strip_prefix('[') {
        let Some(lit) = lit.strip_suffix(']') else {
            return false;
        };
        let ip = lit.strip_prefix("IPv6:").unwrap_or(lit);
        return ip.parse::<std::net::IpAddr>().is_ok();
    }
    !d.is_empty()
        && d.len() <= 255
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
        })
}

fn split_param(p: &str) -> (String, Option<&str>) {
    match p.split_once('=') {
        Some((k, v)) => (k.to_ascii_uppercase(), Some(v)),
        None => (p.to_ascii_uppercase(), None),
    }
}

fn parse_mail_params(s: &str) -> Result<MailParams, SyntaxError> {
    let mut p = MailParams::default();
    for param in s.split_ascii_whitespace() {
        let (key, value) = split_param(param);
        match (key.as_str(), value) {
            ("SIZE", Some(v)) => {
                p.size = Some(
                    v.parse()
                        .map_err(|_| SyntaxError::Args("SIZE must be a number"))?,
                );
            }
            ("BODY", Some(v)) => {
                p.body = Some(match v.to_ascii_uppercase().as_str() {
                    "7BIT" => Body::SevenBit,
                    "8BITMIME" => Body::EightBitMime,
                    "BINARYMIME" => Body::BinaryMime,
                    _ => return Err(SyntaxError::Param(param.into())),
                });
            }
            ("SMTPUTF8", None) => p.smtputf8 = true,
            ("REQUIRETLS", None) => p.requiretls = true,
            ("RET", Some(v))
                if v.eq_ignore_ascii_case("FULL") || v.eq_ignore_ascii_case("HDRS") =>
            {
                p.ret = Some(v.to_ascii_uppercase());
            }
            ("ENVID", Some(v)) => {
                // RFC 3461 §4.4: printable (graphic) US-ASCII, at most 100 characters.
                let envid = xtext_decode(v)
                    .filter(|e| e.len() <= 100 && e.bytes().all(|b| b.is_ascii_graphic()))
                    .ok_or(SyntaxError::Args(
                        "ENVID must be xtext of printable US-ASCII (RFC 3461 4.4)",
                    ))?;
                p.envid = Some(envid)
            }
            ("AUTH", Some(v)) => p.auth = Some(v.to_string()),
            _ => return Err(SyntaxError::Param(param.into())),
        }
    }
    Ok(p)
}

fn parse_rcpt_params(s: &str) -> Result<RcptParams, SyntaxError> {
    let mut p = RcptParams::default();
    for param in s.split_ascii_whitespace() {
        let (key, value) = split_param(param);
        match (key.as_str(), value) {
            ("NOTIFY", Some(v)) => {
                let vals: Vec<String> = v.split(',').map(|x| x.to_ascii_uppercase()).collect();
                let ok = vals
                    .iter()
                    .all(|x| matches!(x.as_str(), "NEVER" | "SUCCESS" | "FAILURE" | "DELAY"));
                if !ok || (vals.len() > 1 && vals.iter().any(|x| x == "NEVER")) {
                    return Err(SyntaxError::Args(
                        "NOTIFY takes NEVER, or SUCCESS/FAILURE/DELAY",
                    ));
                }
                p.notify = vals;
            }
            ("ORCPT", Some(v)) => {
                let (kind, addr) = v
                    .split_once(';')
                    .ok_or(SyntaxError::Args("ORCPT must be type;address"))?;
                // RFC 3461 §4.2: an atom for the type, and an address of printable US-ASCII
                // (a quoted local part may hold spaces; nothing else below 0x21).
                let addr = xtext_decode(addr)
                    .filter(|a| !a.is_empty() && a.bytes().all(|b| (0x20..0x7f).contains(&b)))
                    .ok_or(SyntaxError::Args(
                        "ORCPT must be xtext of printable US-ASCII (RFC 3461 4.2)",
                    ))?;
                let atom = |k: &str| {
                    !k.is_empty()
                        && k.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
                };
                if !atom(kind) {
                    return Err(SyntaxError::Args(
                        "ORCPT type must be an atom such as rfc822",
                    ));
                }
                p.orcpt = Some(format!("{kind};{addr}"));
            }
            _ => return Err(SyntaxError::Param(param.into())),
        }
    }
    Ok(p)
}

/// Decode RFC 3461 xtext (`+XX` hex escapes; every other character `!` to `~` but `+` and
/// `=`). What the escapes decode to is for the caller to check.
pub fn xtext_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'+' {
            let hex = s.get(i + 1..i + 3)?;
            if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else if !b[i].is_ascii_graphic() || b[i] == b'=' {
            return None;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsn_xtext_cannot_carry_control_characters() {
        for bad in [
            "MAIL FROM:<a@b.test> ENVID=x+0D+0AReporting-MTA:+20dns;evil",
            "MAIL FROM:<a@b.test> ENVID=x+00",
            "MAIL FROM:<a@b.test> ENVID=a+20b",
            "MAIL FROM:<a@b.test> ENVID=a=b",
        ] {
            assert!(parse_command(bad.as_bytes()).is_err(), "{bad}");
        }
        for bad in [
            "RCPT TO:<a@b.test> ORCPT=rfc822;a+0D+0AAction:+20delivered@b.test",
            "RCPT TO:<a@b.test> ORCPT=rfc822;a+7F@b.test",
            "RCPT TO:<a@b.test> ORCPT=rfc+0A822;a@b.test",
            "RCPT TO:<a@b.test> ORCPT=rfc822;a+zz@b.test",
        ] {
            assert!(parse_command(bad.as_bytes()).is_err(), "{bad}");
        }
        let ok = parse_command(b"MAIL FROM:<a@b.test> ENVID=QQ+2B314").unwrap();
        assert!(matches!(ok, Command::Mail(_, p) if p.envid.as_deref() == Some("QQ+314")));
        let ok = parse_command(b"RCPT TO:<a@b.test> ORCPT=rfc822;\"a+20b\"@b.test").unwrap();
        assert!(
            matches!(ok, Command::Rcpt(_, p) if p.orcpt.as_deref() == Some("rfc822;\"a b\"@b.test"))
        );
    }

    fn addr(l: &str, d: &str) -> Address {
        Address {
            local: l.into(),
            domain: d.into(),
        }
    }

    #[test]
    fn table() {
        let cases: &[(&str, Result<Command, SyntaxError>)] = &[
            (
                "EHLO mx.example.org",
                Ok(Command::Ehlo("mx.example.org".into())),
            ),
            ("helo [127.0.0.1]", Ok(Command::Helo("[127.0.0.1]".into()))),
            (
                "EHLO",
                Err(SyntaxError::Args(
                    "a domain name or address literal is required",
                )),
            ),
            (
                "MAIL FROM:<a@Example.ORG>",
                Ok(Command::Mail(
                    addr("a", "example.org"),
                    MailParams::default(),
                )),
            ),
            (
                "MAIL FROM:<>",
                Ok(Command::Mail(addr("", ""), MailParams::default())),
            ),
            (
                "mail from: <a@b.c> SIZE=100 BODY=8BITMIME",
                Ok(Command::Mail(
                    addr("a", "b.c"),
                    MailParams {
                        size: Some(100),
                        body: Some(Body::EightBitMime),
                        ..Default::default()
                    },
                )),
            ),
            (
                "MAIL FROM:<a@b.c> FOO=1",
                Err(SyntaxError::Param("FOO=1".into())),
            ),
            (
                "RCPT TO:<@relay.example:bob@other.org>",
                Ok(Command::Rcpt(
                    addr("bob", "other.org"),
                    RcptParams::default(),
                )),
            ),
            (
                "RCPT TO:<\"user@other\"@local.test>",
                Ok(Command::Rcpt(
                    addr("user@other", "local.test"),
                    RcptParams::default(),
                )),
            ),
            (
                "RCPT TO:<user@other@local.test>",
                Err(SyntaxError::Address("bad address syntax", Side::Recipient)),
            ),
            (
                "RCPT TO:<Postmaster>",
                Ok(Command::Rcpt(addr("postmaster", ""), RcptParams::default())),
            ),
            (
                "RCPT TO:<>",
                Err(SyntaxError::Args("an empty recipient is not allowed")),
            ),
            (
                "RCPT TO:<b@x.y> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+40x.y",
                Ok(Command::Rcpt(
                    addr("b", "x.y"),
                    RcptParams {
                        notify: vec!["SUCCESS".into(), "FAILURE".into()],
                        orcpt: Some("rfc822;b@x.y".into()),
                    },
                )),
            ),
            (
                "RCPT TO:<b@x.y> NOTIFY=NEVER,SUCCESS",
                Err(SyntaxError::Args(
                    "NOTIFY takes NEVER, or SUCCESS/FAILURE/DELAY",
                )),
            ),
            (
                "RCPT TO:<用户@例子.测试>",
                Ok(Command::Rcpt(
                    addr("用户", "例子.测试"),
                    RcptParams::default(),
                )),
            ),
            ("BDAT 100 LAST", Ok(Command::Bdat(100, true))),
            (
                "BDAT -1",
                Err(SyntaxError::Args("syntax: BDAT size [LAST]")),
            ),
            ("DATA x", Err(SyntaxError::Args("no parameters allowed"))),
            (
                "MAIL FROM:",
                Err(SyntaxError::Args("an address is required, <> for none")),
            ),
            (
                "MAIL FROM:<a b>",
                Err(SyntaxError::Address("bad address syntax", Side::Sender)),
            ),
            (
                "AUTH plain dGVzdA==",
                Ok(Command::Auth("PLAIN".into(), Some("dGVzdA==".into()))),
            ),
            ("FOO", Err(SyntaxError::Unknown)),
            ("NOOP\0", Err(SyntaxError::Binary)),
        ];
        for (line, want) in cases {
            assert_eq!(&parse_command(line.as_bytes()), want, "{line}");
        }
        assert_eq!(parse_command(b"\xff\xfe"), Err(SyntaxError::Binary));
    }

    /// Fuzzer find (smtp_command): a multi-byte character across the keyword length panicked
    /// `strip_keyword` (str sliced inside the character) before any authentication.
    #[test]
    fn multibyte_char_where_the_keyword_ends_is_a_syntax_error() {
        let crash = b"MAIL fDA`\xc3\x993%Vw[\nNwwNP \xc3";
        let (line, _) = next_line(crash).unwrap();
        assert!(matches!(parse_command(line), Err(SyntaxError::Args(_))));
        for line in [
            "MAIL FRO\u{e9}:<a@b>",
            "RCPT T\u{e9}:<a@b>",
            "MAIL \u{e9}",
            "RCPT \u{1f600}",
        ] {
            assert!(
                matches!(parse_command(line.as_bytes()), Err(SyntaxError::Args(_))),
                "{line}"
            );
        }
    }

    #[test]
    fn display_quotes_when_needed() {
        assert_eq!(addr("a.b", "x.y").to_string(), "a.b@x.y");
        assert_eq!(addr("a b", "x.y").to_string(), "\"a b\"@x.y");
    }

    #[test]
    fn lines() {
        assert_eq!(next_line(b"NOOP\r\nQUIT"), Some((&b"NOOP"[..], 6)));
        assert_eq!(next_line(b"NOOP"), None);
        assert_eq!(next_line(b"NOOP\nX"), Some((&b"NOOP"[..], 5)));
    }
}
