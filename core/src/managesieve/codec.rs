//! The ManageSieve codec (RFC 5804), sans I/O: bytes in, one command (with its literals) out;
//! responses rendered to bytes. Strings are quoted (`"..."` with `\"` and `\\`) or literals
//! (`{N}` or `{N+}`, then CRLF and N octets; the server sends no continuation for either).

/// Longest command line, literals not counted.
pub const MAX_LINE: usize = 8 * 1024;

/// A command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `AUTHENTICATE mechanism [initial-response]`.
    Authenticate {
        /// Upper-cased.
        mechanism: String,
        /// The initial response (base64).
        initial: Option<String>,
    },
    /// `STARTTLS`.
    StartTls,
    /// `LOGOUT`.
    Logout,
    /// `CAPABILITY`.
    Capability,
    /// `NOOP [tag]`.
    Noop(Option<String>),
    /// `HAVESPACE name size`.
    HaveSpace(String, u64),
    /// `PUTSCRIPT name script`.
    PutScript(String, Vec<u8>),
    /// `LISTSCRIPTS`.
    ListScripts,
    /// `SETACTIVE name`.
    SetActive(String),
    /// `GETSCRIPT name`.
    GetScript(String),
    /// `DELETESCRIPT name`.
    DeleteScript(String),
    /// `RENAMESCRIPT old new`.
    RenameScript(String, String),
    /// `CHECKSCRIPT script`.
    CheckScript(Vec<u8>),
    /// `UNAUTHENTICATE`.
    Unauthenticate,
}

impl Command {
    /// Its name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Authenticate { .. } => "AUTHENTICATE",
            Command::StartTls => "STARTTLS",
            Command::Logout => "LOGOUT",
            Command::Capability => "CAPABILITY",
            Command::Noop(_) => "NOOP",
            Command::HaveSpace(..) => "HAVESPACE",
            Command::PutScript(..) => "PUTSCRIPT",
            Command::ListScripts => "LISTSCRIPTS",
            Command::SetActive(_) => "SETACTIVE",
            Command::GetScript(_) => "GETSCRIPT",
            Command::DeleteScript(_) => "DELETESCRIPT",
            Command::RenameScript(..) => "RENAMESCRIPT",
            Command::CheckScript(_) => "CHECKSCRIPT",
            Command::Unauthenticate => "UNAUTHENTICATE",
        }
    }

    /// Whether it needs a logged-in user.
    pub fn needs_auth(&self) -> bool {
        matches!(
            self,
            Command::HaveSpace(..)
                | Command::PutScript(..)
                | Command::ListScripts
                | Command::SetActive(_)
                | Command::GetScript(_)
                | Command::DeleteScript(_)
                | Command::RenameScript(..)
                | Command::CheckScript(_)
                | Command::Unauthenticate
        )
    }
}

/// One token of a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Atom(String),
    Str(Vec<u8>),
    Number(u64),
}

/// What the buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole command yet.
    Incomplete,
    /// A command, and the bytes it used.
    Command(Command, usize),
    /// A bad command (answer `NO` with the text), and the bytes to drop.
    Bad(String, usize),
    /// The line or a literal is over the limit: say so and close.
    TooBig(String),
}

/// The tokens of the command at the start of `buf`, or where it stands.
fn tokens(buf: &[u8], max_literal: u64) -> Result<Option<(Vec<Token>, usize)>, Parsed> {
    let mut i = 0;
    let mut out = Vec::new();
    let mut line_bytes = 0usize;
    loop {
        // Skip spaces.
        while i < buf.len() && buf[i] == b' ' {
            i += 1;
            line_bytes += 1;
        }
        if line_bytes > MAX_LINE {
            return Err(Parsed::TooBig("line too long".into()));
        }
        let Some(&c) = buf.get(i) else {
            if buf.len() - i + line_bytes > MAX_LINE {
                return Err(Parsed::TooBig("line too long".into()));
            }
            return Ok(None);
        };
        match c {
            b'\r' | b'\n' => {
                let end = if c == b'\r' {
                    match buf.get(i + 1) {
                        None => return Ok(None),
                        Some(b'\n') => i + 2,
                        Some(_) => {
                            return Err(Parsed::Bad("bare CR in command".into(), i + 1));
                        }
                    }
                } else {
                    i + 1
                };
                return Ok(Some((out, end)));
            }
            b'"' => {
                let mut s = Vec::new();
                let mut j = i + 1;
                loop {
                    match buf.get(j) {
                        None => {
                            if j - i + line_bytes > MAX_LINE {
                                return Err(Parsed::TooBig("line too long".into()));
                            }
                            return Ok(None);
                        }
                        Some(b'"') => break,
                        Some(b'\\') => match buf.get(j + 1) {
                            None => return Ok(None),
                            Some(&e @ (b'"' | b'\\')) => {
                                s.push(e);
                                j += 2;
                            }
                            Some(_) => {
                                return Err(Parsed::Bad(
                                    "only \\\" and \\\\ may be escaped in a quoted string".into(),
                                    skip_line(buf, j),
                                ));
                            }
                        },
                        Some(b'\r' | b'\n') => {
                            return Err(Parsed::Bad(
                                "line break inside a quoted string".into(),
                                skip_line(buf, j),
                            ));
                        }
                        Some(&b) => {
                            s.push(b);
                            j += 1;
                        }
                    }
                }
                line_bytes += j + 1 - i;
                out.push(Token::Str(s));
                i = j + 1;
            }
            b'{' => {
                let Some(close) = buf[i..].iter().position(|&b| b == b'}') else {
                    if buf.len() - i > 24 {
                        return Err(Parsed::Bad("bad literal".into(), skip_line(buf, i)));
                    }
                    return Ok(None);
                };
                let inner = &buf[i + 1..i + close];
                let digits = inner.strip_suffix(b"+").unwrap_or(inner);
                let n: u64 = match std::str::from_utf8(digits).ok().and_then(|d| {
                    (!d.is_empty() && d.len() <= 19 && d.bytes().all(|b| b.is_ascii_digit()))
                        .then(|| d.parse().ok())
                        .flatten()
                }) {
                    Some(n) => n,
                    None => return Err(Parsed::Bad("bad literal".into(), skip_line(buf, i))),
                };
                let after = i + close + 1;
                match (buf.get(after), buf.get(after + 1)) {
                    (None, _) | (Some(b'\r'), None) => return Ok(None),
                    (Some(b'\r'), Some(b'\n')) => {}
                    _ => {
                        return Err(Parsed::Bad(
                            "a literal's size must end the line".into(),
                            skip_line(buf, i),
                        ));
                    }
                }
                if n > max_literal {
                    return Err(Parsed::TooBig(format!(
                        "literal of {n} octets is over the limit of {max_literal}"
                    )));
                }
                let start = after + 2;
                let end = start + n as usize;
                if buf.len() < end {
                    return Ok(None);
                }
                out.push(Token::Str(buf[start..end].to_vec()));
                line_bytes = 0;
                i = end;
            }
            _ => {
                let start = i;
                while i < buf.len() && !matches!(buf[i], b' ' | b'\r' | b'\n' | b'"' | b'{') {
                    i += 1;
                }
                if i >= buf.len() {
                    if i - start + line_bytes > MAX_LINE {
                        return Err(Parsed::TooBig("line too long".into()));
                    }
                    return Ok(None);
                }
                line_bytes += i - start;
                let word = &buf[start..i];
                if word.iter().all(u8::is_ascii_digit) && word.len() <= 19 {
                    out.push(Token::Number(
                        std::str::from_utf8(word)
                            .unwrap()
                            .parse()
                            .unwrap_or(u64::MAX),
                    ));
                } else {
                    out.push(Token::Atom(String::from_utf8_lossy(word).into_owned()));
                }
            }
        }
    }
}

fn skip_line(buf: &[u8], from: usize) -> usize {
    match buf[from..].iter().position(|&b| b == b'\n') {
        Some(p) => from + p + 1,
        None => buf.len(),
    }
}

fn string(t: Option<&Token>) -> Option<String> {
    match t {
        Some(Token::Str(s)) => String::from_utf8(s.clone()).ok(),
        _ => None,
    }
}

/// Parse the command at the start of `buf`. `max_literal` bounds a literal's size.
pub fn parse(buf: &[u8], max_literal: u64) -> Parsed {
    let (toks, used) = match tokens(buf, max_literal) {
        Ok(Some(x)) => x,
        Ok(None) => return Parsed::Incomplete,
        Err(p) => return p,
    };
    let bad = |m: &str| Parsed::Bad(m.to_string(), used);
    let Some(Token::Atom(verb)) = toks.first() else {
        return bad(if toks.is_empty() {
            "empty command"
        } else {
            "a command starts with its name"
        });
    };
    let verb = verb.to_ascii_uppercase();
    let args = &toks[1..];
    let n = args.len();
    let want = |k: usize| -> Result<(), Parsed> {
        if n == k {
            Ok(())
        } else {
            Err(Parsed::Bad(
                format!("{verb} takes {k} argument{}", if k == 1 { "" } else { "s" }),
                used,
            ))
        }
    };
    let name_arg = |i: usize| string(args.get(i));
    let cmd = match verb.as_str() {
        "AUTHENTICATE" => {
            if !(1..=2).contains(&n) {
                return bad("AUTHENTICATE takes a mechanism and an optional initial response");
            }
            let Some(mech) = name_arg(0) else {
                return bad("the mechanism is a string");
            };
            let initial = match args.get(1) {
                None => None,
                Some(_) => match name_arg(1) {
                    Some(s) => Some(s),
                    None => return bad("the initial response is a string"),
                },
            };
            Command::Authenticate {
                mechanism: mech.to_ascii_uppercase(),
                initial,
            }
        }
        "STARTTLS" | "LOGOUT" | "CAPABILITY" | "LISTSCRIPTS" | "UNAUTHENTICATE" => {
            if let Err(p) = want(0) {
                return p;
            }
            match verb.as_str() {
                "STARTTLS" => Command::StartTls,
                "LOGOUT" => Command::Logout,
                "CAPABILITY" => Command::Capability,
                "LISTSCRIPTS" => Command::ListScripts,
                _ => Command::Unauthenticate,
            }
        }
        "NOOP" => match n {
            0 => Command::Noop(None),
            1 => match name_arg(0) {
                Some(t) => Command::Noop(Some(t)),
                None => return bad("NOOP's tag is a string"),
            },
            _ => return bad("NOOP takes at most one argument"),
        },
        "HAVESPACE" => {
            if let Err(p) = want(2) {
                return p;
            }
            match (name_arg(0), args.get(1)) {
                (Some(name), Some(Token::Number(size))) => Command::HaveSpace(name, *size),
                _ => return bad("HAVESPACE takes a script name and a number"),
            }
        }
        "PUTSCRIPT" => {
            if let Err(p) = want(2) {
                return p;
            }
            match (name_arg(0), args.get(1)) {
                (Some(name), Some(Token::Str(s))) => Command::PutScript(name, s.clone()),
                _ => return bad("PUTSCRIPT takes a script name and the script"),
            }
        }
        "CHECKSCRIPT" => {
            if let Err(p) = want(1) {
                return p;
            }
            match args.first() {
                Some(Token::Str(s)) => Command::CheckScript(s.clone()),
                _ => return bad("CHECKSCRIPT takes the script"),
            }
        }
        "SETACTIVE" | "GETSCRIPT" | "DELETESCRIPT" => {
            if let Err(p) = want(1) {
                return p;
            }
            let Some(name) = name_arg(0) else {
                return bad("the script name is a string");
            };
            match verb.as_str() {
                "SETACTIVE" => Command::SetActive(name),
                "GETSCRIPT" => Command::GetScript(name),
                _ => Command::DeleteScript(name),
            }
        }
        "RENAMESCRIPT" => {
            if let Err(p) = want(2) {
                return p;
            }
            match (name_arg(0), name_arg(1)) {
                (Some(a), Some(b)) => Command::RenameScript(a, b),
                _ => return bad("RENAMESCRIPT takes two script names"),
            }
        }
        _ => {
            let shown: String = verb.chars().take(32).filter(|c| !c.is_control()).collect();
            return Parsed::Bad(format!("unknown command {shown}"), used);
        }
    };
    Parsed::Command(cmd, used)
}

/// One SASL continuation response: a string (quoted or literal) on its own line.
pub fn parse_sasl(buf: &[u8]) -> Parsed {
    match tokens(buf, 64 * 1024) {
        Ok(None) => Parsed::Incomplete,
        Err(p) => p,
        Ok(Some((toks, used))) => match toks.as_slice() {
            [Token::Str(s)] => match String::from_utf8(s.clone()) {
                Ok(s) => Parsed::Command(
                    Command::Authenticate {
                        mechanism: String::new(),
                        initial: Some(s),
                    },
                    used,
                ),
                Err(_) => Parsed::Bad("not UTF-8".into(), used),
            },
            // Some clients send the bare base64 line, as in IMAP.
            [Token::Atom(a)] => Parsed::Command(
                Command::Authenticate {
                    mechanism: String::new(),
                    initial: Some(a.clone()),
                },
                used,
            ),
            _ => Parsed::Bad("expected the SASL response as a string".into(), used),
        },
    }
}

/// A string in a response: quoted when short and plain, else a literal.
pub fn write_string(out: &mut Vec<u8>, s: &[u8]) {
    let plain = s.len() <= 1024 && !s.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0));
    if plain {
        out.push(b'"');
        for &b in s {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(format!("{{{}}}\r\n", s.len()).as_bytes());
        out.extend_from_slice(s);
    }
}

/// A response code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// `NONEXISTENT`.
    Nonexistent,
    /// `ALREADYEXISTS`.
    AlreadyExists,
    /// `ACTIVE`.
    Active,
    /// `QUOTA/MAXSIZE`.
    MaxSize,
    /// `QUOTA/MAXSCRIPTS`.
    MaxScripts,
    /// `ENCRYPT-NEEDED`.
    EncryptNeeded,
    /// `AUTH-TOO-WEAK`.
    AuthTooWeak,
    /// `TRYLATER`.
    TryLater,
    /// `WARNINGS`.
    Warnings,
}

impl Code {
    fn as_str(self) -> &'static str {
        match self {
            Code::Nonexistent => "NONEXISTENT",
            Code::AlreadyExists => "ALREADYEXISTS",
            Code::Active => "ACTIVE",
            Code::MaxSize => "QUOTA/MAXSIZE",
            Code::MaxScripts => "QUOTA/MAXSCRIPTS",
            Code::EncryptNeeded => "ENCRYPT-NEEDED",
            Code::AuthTooWeak => "AUTH-TOO-WEAK",
            Code::TryLater => "TRYLATER",
            Code::Warnings => "WARNINGS",
        }
    }
}

/// `OK`, `NO` or `BYE` with an optional code and text.
pub fn write_status(out: &mut Vec<u8>, status: &str, code: Option<Code>, text: &str) {
    out.extend_from_slice(status.as_bytes());
    if let Some(c) = code {
        out.extend_from_slice(b" (");
        out.extend_from_slice(c.as_str().as_bytes());
        out.push(b')');
    }
    if !text.is_empty() {
        out.push(b' ');
        write_string(out, text.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(s: &str) -> Command {
        match parse(s.as_bytes(), 1000) {
            Parsed::Command(c, used) => {
                assert_eq!(used, s.len(), "{s}");
                c
            }
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn commands_with_quoted_strings_and_literals() {
        assert_eq!(
            cmd("Authenticate \"PLAIN\" \"AGFAYgBj\"\r\n"),
            Command::Authenticate {
                mechanism: "PLAIN".into(),
                initial: Some("AGFAYgBj".into())
            }
        );
        assert_eq!(
            cmd("PUTSCRIPT \"my \\\"s\\\"\" {5+}\r\nkeep;\r\n"),
            Command::PutScript("my \"s\"".into(), b"keep;".to_vec())
        );
        assert_eq!(
            cmd("PUTSCRIPT {2}\r\nab {4}\r\nx\r\ny\r\n"),
            Command::PutScript("ab".into(), b"x\r\ny".to_vec())
        );
        assert_eq!(
            cmd("havespace \"a\" 100\r\n"),
            Command::HaveSpace("a".into(), 100)
        );
        assert_eq!(cmd("NOOP\n"), Command::Noop(None));
        assert_eq!(
            cmd("RENAMESCRIPT \"a\" \"b\"\r\n"),
            Command::RenameScript("a".into(), "b".into())
        );
    }

    #[test]
    fn incomplete_bad_and_too_big() {
        assert_eq!(
            parse(b"PUTSCRIPT \"a\" {10+}\r\nkeep", 1000),
            Parsed::Incomplete
        );
        assert_eq!(parse(b"NOOP", 1000), Parsed::Incomplete);
        assert!(
            matches!(parse(b"FROB\r\nNOOP\r\n", 1000), Parsed::Bad(t, 6) if t.contains("unknown command FROB"))
        );
        assert!(matches!(
            parse(b"PUTSCRIPT \"a\" {2000000000+}\r\n", 1000),
            Parsed::TooBig(_)
        ));
        assert!(matches!(parse(b"GETSCRIPT\r\n", 1000), Parsed::Bad(..)));
        assert!(matches!(
            parse(b"NOOP \"a\\x\"\r\nNOOP\r\n", 1000),
            Parsed::Bad(_, 12)
        ));
        let long = vec![b'A'; MAX_LINE + 10];
        assert!(matches!(parse(&long, 1000), Parsed::TooBig(_)));
        assert!(matches!(parse(b"\x00\xff\xfe\r\n", 1000), Parsed::Bad(..)));
    }

    #[test]
    fn responses() {
        let mut out = Vec::new();
        write_status(&mut out, "NO", Some(Code::MaxSize), "too \"big\"");
        assert_eq!(out, b"NO (QUOTA/MAXSIZE) \"too \\\"big\\\"\"\r\n");
        let mut out = Vec::new();
        write_string(&mut out, b"a\r\nb");
        assert_eq!(out, b"{4}\r\na\r\nb");
    }
}
