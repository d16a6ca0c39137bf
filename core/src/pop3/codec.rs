//! POP3 wire format, sans I/O: command lines in ([`next_line`], [`parse_command`]), responses
//! out ([`Response`], [`write_message`]). Nothing here touches a socket or the store.
//!
//! References: RFC 1939 (the protocol), RFC 2449 (CAPA and response codes), RFC 2595 §4
//! (STLS), RFC 3206 (SYS and AUTH response codes), RFC 5034 (AUTH).

use std::fmt;

/// Longest command line we accept, CRLF included. RFC 2449 §4 raises RFC 1939's limit to
/// 255 octets; we allow some slack for clients with long user names.
pub const MAX_COMMAND_LINE: usize = 1024;

/// Longest line during an AUTH exchange (RFC 5034 §4: the 255-octet limit does not apply).
pub const MAX_SASL_LINE: usize = 8192;

/// A parsed command. Message numbers are 1-based as on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `USER name` (RFC 1939 §7).
    User(String),
    /// `PASS secret`; the argument is the rest of the line, spaces included (RFC 1939 §7).
    Pass(String),
    /// `APOP name digest` (recognised so it can be refused clearly; not offered).
    Apop,
    /// `AUTH [mechanism [initial-response]]` (RFC 5034); no mechanism lists the mechanisms.
    Auth {
        /// Mechanism name, upper-cased.
        mechanism: Option<String>,
        /// Base64 initial response (`=` for an empty one).
        initial: Option<String>,
    },
    /// `STAT`.
    Stat,
    /// `LIST [msg]`.
    List(Option<u32>),
    /// `RETR msg`.
    Retr(u32),
    /// `DELE msg`.
    Dele(u32),
    /// `NOOP`.
    Noop,
    /// `RSET`.
    Rset,
    /// `QUIT`.
    Quit,
    /// `TOP msg n`: the header and the first `n` body lines.
    Top(u32, u32),
    /// `UIDL [msg]`.
    Uidl(Option<u32>),
    /// `CAPA` (RFC 2449).
    Capa,
    /// `STLS` (RFC 2595).
    Stls,
}

/// The protocol states of RFC 1939 §3 in which a command may be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before a successful login.
    Authorization,
    /// Logged in, maildrop open.
    Transaction,
}

impl Command {
    /// Whether the command is valid in `phase` (RFC 1939 §§4–7, RFC 2449 §5, RFC 2595 §4).
    pub fn allowed_in(&self, phase: Phase) -> bool {
        use Command::*;
        match self {
            Capa | Quit => true,
            User(_) | Pass(_) | Apop | Auth { .. } | Stls => phase == Phase::Authorization,
            Stat | List(_) | Retr(_) | Dele(_) | Noop | Rset | Top(..) | Uidl(_) => {
                phase == Phase::Transaction
            }
        }
    }

    /// The command verb, for logs.
    pub fn name(&self) -> &'static str {
        use Command::*;
        match self {
            User(_) => "USER",
            Pass(_) => "PASS",
            Apop => "APOP",
            Auth { .. } => "AUTH",
            Stat => "STAT",
            List(_) => "LIST",
            Retr(_) => "RETR",
            Dele(_) => "DELE",
            Noop => "NOOP",
            Rset => "RSET",
            Quit => "QUIT",
            Top(..) => "TOP",
            Uidl(_) => "UIDL",
            Capa => "CAPA",
            Stls => "STLS",
        }
    }
}

/// Why a command line could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyntaxError {
    /// Empty line.
    Empty,
    /// Not a command we know.
    Unknown,
    /// Control characters or invalid UTF-8.
    Binary,
    /// Wrong arguments; the text says what was expected.
    Args(&'static str),
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyntaxError::Empty => write!(f, "Empty command"),
            SyntaxError::Unknown => write!(f, "Unknown command"),
            SyntaxError::Binary => write!(f, "Invalid characters in command"),
            SyntaxError::Args(t) => write!(f, "{t}"),
        }
    }
}

/// The next line in `buf` without its line ending, and the bytes it used (CRLF or bare LF).
/// `None` until a whole line is buffered.
pub fn next_line(buf: &[u8]) -> Option<(&[u8], usize)> {
    let nl = memchr::memchr(b'\n', buf)?;
    let line = &buf[..nl];
    Some((line.strip_suffix(b"\r").unwrap_or(line), nl + 1))
}

/// Parse one command line (without its line ending). Keywords are case-insensitive
/// (RFC 1939 §3).
pub fn parse_command(line: &[u8]) -> Result<Command, SyntaxError> {
    let line = std::str::from_utf8(line).map_err(|_| SyntaxError::Binary)?;
    if line.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
        return Err(SyntaxError::Binary);
    }
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    if verb.is_empty() {
        return Err(SyntaxError::Empty);
    }
    let args: Vec<&str> = rest.split_ascii_whitespace().collect();
    let none = |c: Command| {
        if args.is_empty() {
            Ok(c)
        } else {
            Err(SyntaxError::Args("This command takes no arguments"))
        }
    };
    match verb.to_ascii_uppercase().as_str() {
        "USER" => match args.as_slice() {
            [name] => Ok(Command::User((*name).to_string())),
            _ => Err(SyntaxError::Args("Usage: USER name")),
        },
        // RFC 1939 §7: a server may treat spaces in the argument as part of the password.
        "PASS" if rest.is_empty() => Err(SyntaxError::Args("Usage: PASS password")),
        "PASS" => Ok(Command::Pass(rest.to_string())),
        "APOP" => Ok(Command::Apop),
        "AUTH" => match args.as_slice() {
            [] => Ok(Command::Auth {
                mechanism: None,
                initial: None,
            }),
            [m] => Ok(Command::Auth {
                mechanism: Some(m.to_ascii_uppercase()),
                initial: None,
            }),
            [m, ir] => Ok(Command::Auth {
                mechanism: Some(m.to_ascii_uppercase()),
                initial: Some((*ir).to_string()),
            }),
            _ => Err(SyntaxError::Args(
                "Usage: AUTH mechanism [initial-response]",
            )),
        },
        "STAT" => none(Command::Stat),
        "NOOP" => none(Command::Noop),
        "RSET" => none(Command::Rset),
        "QUIT" => none(Command::Quit),
        "CAPA" => none(Command::Capa),
        "STLS" => none(Command::Stls),
        "LIST" => optional_number(&args, "Usage: LIST [message-number]").map(Command::List),
        "UIDL" => optional_number(&args, "Usage: UIDL [message-number]").map(Command::Uidl),
        "RETR" => one_number(&args, "Usage: RETR message-number").map(Command::Retr),
        "DELE" => one_number(&args, "Usage: DELE message-number").map(Command::Dele),
        "TOP" => match args.as_slice() {
            [m, n] => match (number(m), number(n)) {
                (Some(m), Some(n)) => Ok(Command::Top(m, n)),
                _ => Err(SyntaxError::Args("Usage: TOP message-number lines")),
            },
            _ => Err(SyntaxError::Args("Usage: TOP message-number lines")),
        },
        _ => Err(SyntaxError::Unknown),
    }
}

/// A decimal number as RFC 1939 §3 allows it (digits only, no sign).
fn number(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn one_number(args: &[&str], usage: &'static str) -> Result<u32, SyntaxError> {
    match args {
        [a] => number(a).ok_or(SyntaxError::Args(usage)),
        _ => Err(SyntaxError::Args(usage)),
    }
}

fn optional_number(args: &[&str], usage: &'static str) -> Result<Option<u32>, SyntaxError> {
    match args {
        [] => Ok(None),
        [a] => number(a).map(Some).ok_or(SyntaxError::Args(usage)),
        _ => Err(SyntaxError::Args(usage)),
    }
}

/// Extended response codes (RFC 2449 §8, RFC 3206) in `-ERR [CODE] text`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RespCode {
    /// The maildrop is locked by another session (RFC 2449 §8.1.2).
    InUse,
    /// Logging in too soon after the previous login (RFC 2449 §8.1.1).
    LoginDelay,
    /// A temporary problem on our side; try again later (RFC 3206 §4).
    SysTemp,
    /// A permanent problem on our side; retrying will not help (RFC 3206 §4).
    SysPerm,
    /// Credentials refused, or not acceptable on this connection (RFC 3206 §5).
    Auth,
}

impl RespCode {
    /// The code as written between brackets.
    pub fn as_str(self) -> &'static str {
        match self {
            RespCode::InUse => "IN-USE",
            RespCode::LoginDelay => "LOGIN-DELAY",
            RespCode::SysTemp => "SYS/TEMP",
            RespCode::SysPerm => "SYS/PERM",
            RespCode::Auth => "AUTH",
        }
    }
}

/// A single-line status response (`+OK …`, `-ERR [CODE] …`) or a SASL continuation (`+ …`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// `+OK text`.
    Ok(String),
    /// `-ERR [code] text`.
    Err(Option<RespCode>, String),
    /// `+ base64` (RFC 5034 §4 server challenge).
    Continue(String),
}

impl Response {
    /// `+OK text`.
    pub fn ok(text: impl Into<String>) -> Self {
        Response::Ok(text.into())
    }

    /// `-ERR text`.
    pub fn err(text: impl Into<String>) -> Self {
        Response::Err(None, text.into())
    }

    /// `-ERR [code] text`.
    pub fn err_code(code: RespCode, text: impl Into<String>) -> Self {
        Response::Err(Some(code), text.into())
    }

    /// Whether this is an `-ERR`.
    pub fn is_err(&self) -> bool {
        matches!(self, Response::Err(..))
    }

    /// Append the wire form to `out`. CR and LF in the text (which may come from a hook
    /// script) become spaces, so a response is always exactly one line.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let (status, text) = match self {
            Response::Ok(t) => ("+OK".to_string(), t),
            Response::Err(None, t) => ("-ERR".to_string(), t),
            Response::Err(Some(c), t) => (format!("-ERR [{}]", c.as_str()), t),
            Response::Continue(t) => ("+".to_string(), t),
        };
        out.extend_from_slice(status.as_bytes());
        if !text.is_empty() || matches!(self, Response::Continue(_)) {
            out.push(b' ');
        }
        out.extend(
            text.bytes()
                .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
        out.extend_from_slice(b"\r\n");
    }
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut v = Vec::new();
        self.write_to(&mut v);
        f.write_str(String::from_utf8_lossy(&v).trim_end())
    }
}

/// Append the body of a multi-line response for `message` (RFC 1939 §3): every line that
/// starts with `.` gets another `.` in front, a final CRLF is added when the message does
/// not end with one, and the terminating `.CRLF` follows. With `body_lines`, only the header,
/// the blank line and that many body lines are sent (TOP, RFC 1939 §7).
pub fn write_message(out: &mut Vec<u8>, message: &[u8], body_lines: Option<u32>) {
    let part = match body_lines {
        None => message,
        Some(n) => top_part(message, n),
    };
    out.reserve(part.len() + part.len() / 64 + 5);
    let mut at_line_start = true;
    let mut rest = part;
    while !rest.is_empty() {
        if at_line_start && rest[0] == b'.' {
            out.push(b'.');
        }
        match memchr::memchr(b'\n', rest) {
            Some(i) => {
                out.extend_from_slice(&rest[..=i]);
                rest = &rest[i + 1..];
                at_line_start = true;
            }
            None => {
                out.extend_from_slice(rest);
                rest = &[];
                at_line_start = false;
            }
        }
    }
    if !part.is_empty() && !part.ends_with(b"\r\n") {
        // A message ending without a line break, or in a bare LF: close the line first so the
        // terminator stands on its own line.
        if part.ends_with(b"\n") {
            out.pop();
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

/// The header, the blank line after it, and the first `n` lines of the body.
fn top_part(message: &[u8], n: u32) -> &[u8] {
    let head = crate::message::header_end(message);
    let mut end = head;
    for _ in 0..n {
        if end >= message.len() {
            break;
        }
        end = match memchr::memchr(b'\n', &message[end..]) {
            Some(i) => end + i + 1,
            None => message.len(),
        };
    }
    &message[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        use Command::*;
        let cases: &[(&str, Result<Command, SyntaxError>)] = &[
            (
                "USER alice@example.org",
                Ok(User("alice@example.org".into())),
            ),
            ("user Alice", Ok(User("Alice".into()))),
            ("USER", Err(SyntaxError::Args("Usage: USER name"))),
            ("USER a b", Err(SyntaxError::Args("Usage: USER name"))),
            ("PASS secret", Ok(Pass("secret".into()))),
            ("pass two words ", Ok(Pass("two words ".into()))),
            ("PASS", Err(SyntaxError::Args("Usage: PASS password"))),
            ("STAT", Ok(Stat)),
            ("stat", Ok(Stat)),
            ("StAt", Ok(Stat)),
            (
                "STAT 1",
                Err(SyntaxError::Args("This command takes no arguments")),
            ),
            ("LIST", Ok(List(None))),
            ("LIST 3", Ok(List(Some(3)))),
            ("list  3 ", Ok(List(Some(3)))),
            (
                "LIST -1",
                Err(SyntaxError::Args("Usage: LIST [message-number]")),
            ),
            (
                "LIST +1",
                Err(SyntaxError::Args("Usage: LIST [message-number]")),
            ),
            (
                "LIST x",
                Err(SyntaxError::Args("Usage: LIST [message-number]")),
            ),
            (
                "LIST 99999999999",
                Err(SyntaxError::Args("Usage: LIST [message-number]")),
            ),
            (
                "LIST 1 2",
                Err(SyntaxError::Args("Usage: LIST [message-number]")),
            ),
            ("RETR 1", Ok(Retr(1))),
            ("RETR", Err(SyntaxError::Args("Usage: RETR message-number"))),
            ("RETR 0", Ok(Retr(0))),
            ("DELE 2", Ok(Dele(2))),
            ("TOP 1 0", Ok(Top(1, 0))),
            ("top 2 10", Ok(Top(2, 10))),
            (
                "TOP 1",
                Err(SyntaxError::Args("Usage: TOP message-number lines")),
            ),
            (
                "TOP 1 x",
                Err(SyntaxError::Args("Usage: TOP message-number lines")),
            ),
            ("UIDL", Ok(Uidl(None))),
            ("UIDL 7", Ok(Uidl(Some(7)))),
            ("NOOP", Ok(Noop)),
            ("RSET", Ok(Rset)),
            ("QUIT", Ok(Quit)),
            ("quit", Ok(Quit)),
            ("CAPA", Ok(Capa)),
            ("STLS", Ok(Stls)),
            ("APOP a 0123", Ok(Apop)),
            (
                "AUTH",
                Ok(Auth {
                    mechanism: None,
                    initial: None,
                }),
            ),
            (
                "auth plain",
                Ok(Auth {
                    mechanism: Some("PLAIN".into()),
                    initial: None,
                }),
            ),
            (
                "AUTH PLAIN AGFsaWNlAHNlY3JldA==",
                Ok(Auth {
                    mechanism: Some("PLAIN".into()),
                    initial: Some("AGFsaWNlAHNlY3JldA==".into()),
                }),
            ),
            (
                "AUTH PLAIN a b",
                Err(SyntaxError::Args(
                    "Usage: AUTH mechanism [initial-response]",
                )),
            ),
            ("", Err(SyntaxError::Empty)),
            (" STAT", Err(SyntaxError::Empty)),
            ("HELO x", Err(SyntaxError::Unknown)),
            ("STAT\0", Err(SyntaxError::Binary)),
        ];
        for (line, want) in cases {
            assert_eq!(&parse_command(line.as_bytes()), want, "{line:?}");
        }
        assert_eq!(parse_command(b"\xff\xfe"), Err(SyntaxError::Binary));
    }

    #[test]
    fn states() {
        use Phase::*;
        let table: &[(&str, bool, bool)] = &[
            // command, allowed in AUTHORIZATION, allowed in TRANSACTION
            ("USER a", true, false),
            ("PASS a", true, false),
            ("AUTH PLAIN", true, false),
            ("STLS", true, false),
            ("CAPA", true, true),
            ("QUIT", true, true),
            ("STAT", false, true),
            ("LIST", false, true),
            ("RETR 1", false, true),
            ("DELE 1", false, true),
            ("NOOP", false, true),
            ("RSET", false, true),
            ("TOP 1 1", false, true),
            ("UIDL", false, true),
        ];
        for (line, auth, tx) in table {
            let c = parse_command(line.as_bytes()).unwrap();
            assert_eq!(c.allowed_in(Authorization), *auth, "{line}");
            assert_eq!(c.allowed_in(Transaction), *tx, "{line}");
        }
    }

    #[test]
    fn lines() {
        assert_eq!(next_line(b"STAT\r\nLIST"), Some((&b"STAT"[..], 6)));
        assert_eq!(next_line(b"STAT\nX"), Some((&b"STAT"[..], 5)));
        assert_eq!(next_line(b"STAT"), None);
    }

    #[test]
    fn responses() {
        let cases: &[(Response, &str)] = &[
            (Response::ok("2 320"), "+OK 2 320\r\n"),
            (Response::ok(""), "+OK\r\n"),
            (Response::err("no such message"), "-ERR no such message\r\n"),
            (
                Response::err_code(RespCode::InUse, "maildrop locked"),
                "-ERR [IN-USE] maildrop locked\r\n",
            ),
            (
                Response::err_code(RespCode::SysTemp, "a\r\nb"),
                "-ERR [SYS/TEMP] a  b\r\n",
            ),
            (Response::Continue(String::new()), "+ \r\n"),
        ];
        for (r, want) in cases {
            let mut out = Vec::new();
            r.write_to(&mut out);
            assert_eq!(String::from_utf8(out).unwrap(), *want);
        }
    }

    fn msg(m: &[u8], top: Option<u32>) -> String {
        let mut out = Vec::new();
        write_message(&mut out, m, top);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn dot_stuffing_and_termination() {
        let cases: &[(&str, &str)] = &[
            ("A: b\r\n\r\nbody\r\n", "A: b\r\n\r\nbody\r\n.\r\n"),
            (
                "A: b\r\n\r\n.hidden\r\n..two\r\n.\r\nend\r\n",
                "A: b\r\n\r\n..hidden\r\n...two\r\n..\r\nend\r\n.\r\n",
            ),
            ("A: b\r\n\r\nno newline", "A: b\r\n\r\nno newline\r\n.\r\n"),
            (".first", "..first\r\n.\r\n"),
            ("bare lf\n.x\n", "bare lf\n..x\r\n.\r\n"),
            ("", ".\r\n"),
        ];
        for (m, want) in cases {
            assert_eq!(msg(m.as_bytes(), None), *want, "{m:?}");
        }
    }

    #[test]
    fn top() {
        let m = b"Subject: x\r\nFrom: y\r\n\r\nl1\r\n.l2\r\nl3\r\n";
        assert_eq!(msg(m, Some(0)), "Subject: x\r\nFrom: y\r\n\r\n.\r\n");
        assert_eq!(
            msg(m, Some(2)),
            "Subject: x\r\nFrom: y\r\n\r\nl1\r\n..l2\r\n.\r\n"
        );
        assert_eq!(
            msg(m, Some(100)),
            "Subject: x\r\nFrom: y\r\n\r\nl1\r\n..l2\r\nl3\r\n.\r\n"
        );
        // No body at all: the whole message is the header.
        assert_eq!(msg(b"Subject: x\r\n", Some(5)), "Subject: x\r\n.\r\n");
        // Last body line without CRLF.
        assert_eq!(
            msg(b"S: x\r\n\r\na\r\nb", Some(5)),
            "S: x\r\n\r\na\r\nb\r\n.\r\n"
        );
    }
}
