//! IMAP command framing and parsing (RFC 9051 §9, RFC 3501 §9), sans I/O.
//!
//! [`frame`] finds where a command ends (literals included) and tells the session when a
//! synchronising literal needs a `+` continuation; [`parse`] turns the complete bytes into a
//! tagged [`Command`].

use super::types::*;

/// Result of looking for a complete command in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete command occupies this many bytes.
    Complete(usize),
    /// More bytes are needed; `continuation` when the client waits for `+` before sending
    /// the literal announced last.
    NeedMore {
        /// Send a continuation request now.
        continuation: bool,
    },
    /// A line without CRLF grew past the limit.
    LineTooLong,
    /// A literal larger than the limit was announced; `tag` for the reply, and whether it
    /// was non-synchronising (then its bytes are on the way and the connection must close).
    LiteralTooBig {
        /// Command tag, if one could be read.
        tag: String,
        /// `{n+}` literal.
        nonsync: bool,
        /// Bytes up to the end of the line that announced the literal: the refused command
        /// (earlier lines and literals included) to drop before reading on.
        end: usize,
    },
}

/// Scan `buf` for a whole command. `acked` counts literals already answered with `+`.
/// `max_literal` bounds each literal and `max_command` the whole command (lines and literals
/// together), so chained literals cannot add up past it.
pub fn frame(
    buf: &[u8],
    acked: usize,
    max_line: usize,
    max_literal: u64,
    max_command: u64,
) -> Frame {
    let mut pos = 0;
    let mut literals = 0;
    loop {
        let Some(nl) = memchr::memchr(b'\n', &buf[pos..]).map(|i| pos + i) else {
            return if buf.len() - pos > max_line {
                Frame::LineTooLong
            } else {
                Frame::NeedMore {
                    continuation: false,
                }
            };
        };
        if nl - pos > max_line {
            return Frame::LineTooLong;
        }
        let line = &buf[pos..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some((size, nonsync)) = literal_suffix(line) else {
            return Frame::Complete(nl + 1);
        };
        let start = nl + 1;
        if size > max_literal || (start as u64).saturating_add(size) > max_command {
            let tag = buf
                .split(|&b| b == b' ')
                .next()
                .map(|t| String::from_utf8_lossy(t).into_owned())
                .unwrap_or_default();
            return Frame::LiteralTooBig {
                tag,
                nonsync,
                end: nl + 1,
            };
        }
        if (buf.len() as u64) < start as u64 + size {
            return Frame::NeedMore {
                continuation: !nonsync && literals >= acked,
            };
        }
        literals += 1;
        pos = start + size as usize;
    }
}

/// `{123}`, `{123+}` or `~{123}` at the end of a line.
fn literal_suffix(line: &[u8]) -> Option<(u64, bool)> {
    let body = line.strip_suffix(b"}")?;
    let open = body.iter().rposition(|&b| b == b'{')?;
    let mut digits = &body[open + 1..];
    let nonsync = if let Some(d) = digits
        .strip_suffix(b"+")
        .or_else(|| digits.strip_suffix(b"-"))
    {
        digits = d;
        true
    } else {
        false
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // A size past u64 is still a literal announcement: a too big one.
    let n = std::str::from_utf8(digits)
        .ok()?
        .parse()
        .unwrap_or(u64::MAX);
    Some((n, nonsync))
}

/// A parse failure: the tag (if readable) and the text for `BAD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The command's tag, or `*` when none could be read.
    pub tag: String,
    /// What was wrong.
    pub text: String,
}

impl ParseError {
    /// Whether the command was well-formed but asks for something unsupported, which is
    /// answered with NO rather than BAD (SEARCH CHARSET → `NO [BADCHARSET]`, RFC 9051 §6.4.4).
    pub fn is_no(&self) -> bool {
        self.text.starts_with("[BADCHARSET")
    }
}

mod args;
mod lexer;
#[cfg(test)]
mod tests;

use lexer::{Cursor, R};

/// Parse one complete command (as delimited by [`frame`]).
pub fn parse(bytes: &[u8]) -> Result<Tagged, ParseError> {
    let mut c = Cursor { b: bytes, p: 0 };
    let tag = match c.atom_with(b"") {
        Ok(t) if !t.contains('+') => t.to_string(),
        _ => {
            return Err(ParseError {
                tag: "*".into(),
                text: "missing or invalid tag".into(),
            });
        }
    };
    let err = |text: String| ParseError {
        tag: tag.clone(),
        text,
    };
    c.sp().map_err(err)?;
    let mut verb = c.atom().map_err(err)?.to_ascii_uppercase();
    let mut uid = false;
    if verb == "UID" {
        c.sp().map_err(err)?;
        verb = c.atom().map_err(err)?.to_ascii_uppercase();
        uid = true;
        if !matches!(
            verb.as_str(),
            "FETCH" | "STORE" | "SEARCH" | "COPY" | "MOVE" | "EXPUNGE" | "SORT" | "THREAD"
        ) {
            return Err(err(format!("UID {verb} is not a command")));
        }
    }
    let command = parse_args(&mut c, &verb, uid).map_err(err)?;
    c.end().map_err(err)?;
    Ok(Tagged { tag, command })
}

fn parse_args(c: &mut Cursor<'_>, verb: &str, uid: bool) -> R<Command> {
    Ok(match verb {
        "CAPABILITY" => Command::Capability,
        "NOOP" => Command::Noop,
        "CHECK" => Command::Noop,
        "LOGOUT" => Command::Logout,
        "STARTTLS" => Command::StartTls,
        "IDLE" => Command::Idle,
        "CLOSE" => Command::Close,
        "UNSELECT" => Command::Unselect,
        "CANCELUPDATE" => {
            let mut tags = Vec::new();
            while c.eat(b' ') {
                tags.push(String::from_utf8(c.quoted()?).map_err(|_| "bad tag")?);
            }
            if tags.is_empty() {
                return Err("CANCELUPDATE needs a tag".into());
            }
            Command::CancelUpdate(tags)
        }
        "NAMESPACE" => Command::Namespace,
        "EXPUNGE" if uid => {
            c.sp()?;
            Command::Expunge(Some(c.seq_set()?))
        }
        "EXPUNGE" => Command::Expunge(None),
        "LOGIN" => {
            c.sp()?;
            let u = c.astring_utf8()?;
            c.sp()?;
            let p = c.astring_utf8()?;
            Command::Login(u, p)
        }
        "AUTHENTICATE" => {
            c.sp()?;
            let mech = c.atom()?.to_ascii_uppercase();
            let initial = if c.eat(b' ') {
                Some(c.atom_with(b"=")?.to_string())
            } else {
                None
            };
            Command::Authenticate(mech, initial)
        }
        "ENABLE" => {
            let mut caps = Vec::new();
            while c.eat(b' ') {
                caps.push(c.atom()?.to_ascii_uppercase());
            }
            if caps.is_empty() {
                return Err("ENABLE needs capability names".into());
            }
            Command::Enable(caps)
        }
        "SELECT" | "EXAMINE" => {
            c.sp()?;
            let mailbox = c.mailbox()?;
            let mut condstore = false;
            let mut qresync = None;
            if c.eat(b' ') {
                c.expect(b'(')?;
                loop {
                    let p = c.atom()?.to_ascii_uppercase();
                    match p.as_str() {
                        "CONDSTORE" => condstore = true,
                        "QRESYNC" => {
                            c.sp()?;
                            c.expect(b'(')?;
                            let uv = c.number()? as u32;
                            c.sp()?;
                            let ms = c.number()?;
                            let mut known = None;
                            if c.eat(b' ') && c.peek() != Some(b'(') {
                                known = Some(c.seq_set()?);
                                c.eat(b' ');
                            }
                            if c.peek() == Some(b'(') {
                                // seq-match-data: ignored (we answer from UIDs).
                                let mut depth = 0;
                                while let Some(ch) = c.peek() {
                                    c.p += 1;
                                    if ch == b'(' {
                                        depth += 1;
                                    } else if ch == b')' {
                                        depth -= 1;
                                        if depth == 0 {
                                            break;
                                        }
                                    }
                                }
                            }
                            c.expect(b')')?;
                            qresync = Some((uv, ms, known));
                        }
                        _ => return Err(format!("unknown SELECT parameter {p}")),
                    }
                    if c.eat(b')') {
                        break;
                    }
                    c.sp()?;
                }
            }
            Command::Select {
                mailbox,
                read_only: verb == "EXAMINE",
                condstore,
                qresync,
            }
        }
        "CREATE" => {
            c.sp()?;
            let m = c.mailbox()?;
            let mut special = None;
            if c.eat(b' ') {
                // RFC 6154 CREATE-SPECIAL-USE: (USE (\Sent))
                c.expect(b'(')?;
                if !c.keyword("USE") {
                    return Err("unknown CREATE parameter".into());
                }
                c.sp()?;
                // Special-use attributes are `\` atoms, not flags (`\All`, `\Archive`, …).
                c.expect(b'(')?;
                let mut attrs = Vec::new();
                while !c.eat(b')') {
                    if !attrs.is_empty() {
                        c.sp()?;
                    }
                    c.expect(b'\\')?;
                    attrs.push(format!("\\{}", c.atom()?));
                }
                special = attrs.into_iter().next();
                c.expect(b')')?;
            }
            Command::Create(m, special)
        }
        "DELETE" => {
            c.sp()?;
            Command::Delete(c.mailbox()?)
        }
        "RENAME" => {
            c.sp()?;
            let a = c.mailbox()?;
            c.sp()?;
            let b = c.mailbox()?;
            Command::Rename(a, b)
        }
        "SUBSCRIBE" => {
            c.sp()?;
            Command::Subscribe(c.mailbox()?)
        }
        "UNSUBSCRIBE" => {
            c.sp()?;
            Command::Unsubscribe(c.mailbox()?)
        }
        "LIST" | "LSUB" => {
            c.sp()?;
            let mut sel = Vec::new();
            if verb == "LIST" && c.peek() == Some(b'(') {
                sel = c
                    .paren_atoms()?
                    .into_iter()
                    .map(|s| s.to_ascii_uppercase())
                    .collect();
                c.sp()?;
            }
            let reference = c.mailbox_ref()?;
            c.sp()?;
            let mut patterns = Vec::new();
            if c.peek() == Some(b'(') {
                c.p += 1;
                loop {
                    patterns.push(c.list_mailbox()?);
                    if c.eat(b')') {
                        break;
                    }
                    c.sp()?;
                }
            } else {
                patterns.push(c.list_mailbox()?);
            }
            let mut ret = Vec::new();
            let mut status = None;
            if c.eat(b' ') {
                if !c.keyword("RETURN") {
                    return Err("expected RETURN".into());
                }
                c.sp()?;
                c.expect(b'(')?;
                if !c.eat(b')') {
                    loop {
                        let opt = c.atom()?.to_ascii_uppercase();
                        if opt == "STATUS" {
                            c.sp()?;
                            status = Some(c.status_items()?);
                        } else {
                            ret.push(opt);
                        }
                        if c.eat(b')') {
                            break;
                        }
                        c.sp()?;
                    }
                }
            }
            // RFC 5258 §3: an option the server does not know, or RECURSIVEMATCH without a
            // selection option it modifies, is a BAD (RFC 6154 adds SPECIAL-USE to both).
            const SELECTION: [&str; 4] = ["SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"];
            const RETURN: [&str; 3] = ["SUBSCRIBED", "CHILDREN", "SPECIAL-USE"];
            if let Some(o) = sel.iter().find(|o| !SELECTION.contains(&o.as_str())) {
                return Err(format!("unknown LIST selection option {o}"));
            }
            if sel.iter().any(|o| o == "RECURSIVEMATCH")
                && !sel.iter().any(|o| o == "SUBSCRIBED" || o == "SPECIAL-USE")
            {
                return Err("RECURSIVEMATCH needs another selection option (RFC 5258 3)".into());
            }
            if let Some(o) = ret.iter().find(|o| !RETURN.contains(&o.as_str())) {
                return Err(format!("unknown LIST return option {o}"));
            }
            Command::List {
                lsub: verb == "LSUB",
                reference,
                patterns,
                select: sel,
                ret,
                status,
            }
        }
        "STATUS" => {
            c.sp()?;
            let m = c.mailbox()?;
            c.sp()?;
            Command::Status(m, c.status_items()?)
        }
        "APPEND" => {
            c.sp()?;
            let mailbox = c.mailbox()?;
            let mut messages = Vec::new();
            // MULTIAPPEND (RFC 3502): more messages follow while a space does.
            while c.eat(b' ') {
                messages.push(c.append_message()?);
            }
            if messages.is_empty() {
                return Err("APPEND needs a message".into());
            }
            Command::Append { mailbox, messages }
        }
        "SEARCH" => {
            c.sp()?;
            let ret = c.return_options(
                "SEARCH",
                &[
                    "MIN", "MAX", "ALL", "COUNT", "SAVE", "PARTIAL", "UPDATE", "CONTEXT",
                ],
            )?;
            if c.keyword("CHARSET") {
                c.sp()?;
                let cs = c.astring_utf8()?;
                if !cs.eq_ignore_ascii_case("UTF-8") && !cs.eq_ignore_ascii_case("US-ASCII") {
                    return Err("[BADCHARSET (UTF-8 US-ASCII)] unsupported charset".into());
                }
                c.sp()?;
            }
            let mut keys = vec![c.search_key(0)?];
            while c.eat(b' ') {
                keys.push(c.search_key(0)?);
            }
            Command::Search {
                uid,
                ret,
                key: SearchKey::And(keys),
            }
        }
        "SORT" => {
            use super::sort::{Criterion, SortKey};
            c.sp()?;
            let ret = c.return_options(
                "SORT",
                &["MIN", "MAX", "ALL", "COUNT", "PARTIAL", "UPDATE", "CONTEXT"],
            )?;
            let words = c.paren_atoms()?;
            let mut criteria = Vec::new();
            let mut reverse = false;
            for w in &words {
                let key = match w.to_ascii_uppercase().as_str() {
                    "REVERSE" if !reverse => {
                        reverse = true;
                        continue;
                    }
                    "ARRIVAL" => SortKey::Arrival,
                    "CC" => SortKey::Cc,
                    "DATE" => SortKey::Date,
                    "FROM" => SortKey::From,
                    "SIZE" => SortKey::Size,
                    "SUBJECT" => SortKey::Subject,
                    "TO" => SortKey::To,
                    "DISPLAYFROM" => SortKey::DisplayFrom,
                    "DISPLAYTO" => SortKey::DisplayTo,
                    _ => return Err(format!("unknown sort criterion {w}")),
                };
                criteria.push(Criterion { key, reverse });
                reverse = false;
            }
            if criteria.is_empty() || reverse {
                return Err("a sort criterion is missing".into());
            }
            c.sp()?;
            let key = c.charset_and_keys()?;
            Command::Sort {
                uid,
                ret,
                criteria,
                key,
            }
        }
        "THREAD" => {
            c.sp()?;
            let algorithm = c.atom()?.to_ascii_uppercase();
            let references = match algorithm.as_str() {
                "REFERENCES" => true,
                "ORDEREDSUBJECT" => false,
                _ => return Err(format!("unknown threading algorithm {algorithm}")),
            };
            c.sp()?;
            let key = c.charset_and_keys()?;
            Command::Thread {
                uid,
                references,
                key,
            }
        }
        "FETCH" => {
            c.sp()?;
            let set = c.seq_set()?;
            c.sp()?;
            let items = c.fetch_items()?;
            let mut changed_since = None;
            let mut vanished = false;
            if c.eat(b' ') {
                c.expect(b'(')?;
                loop {
                    if c.keyword("CHANGEDSINCE") {
                        c.sp()?;
                        changed_since = Some(c.number()?);
                    } else if c.keyword("VANISHED") {
                        vanished = true;
                    } else {
                        return Err("unknown FETCH modifier".into());
                    }
                    if c.eat(b')') {
                        break;
                    }
                    c.sp()?;
                }
            }
            Command::Fetch {
                uid,
                set,
                items,
                changed_since,
                vanished,
            }
        }
        "STORE" => {
            c.sp()?;
            let set = c.seq_set()?;
            c.sp()?;
            let mut unchanged_since = None;
            if c.eat(b'(') {
                if !c.keyword("UNCHANGEDSINCE") {
                    return Err("unknown STORE modifier".into());
                }
                c.sp()?;
                unchanged_since = Some(c.number()?);
                c.expect(b')')?;
                c.sp()?;
            }
            let item = c.atom()?.to_ascii_uppercase();
            let (mode, rest) = match item.as_bytes().first() {
                Some(b'+') => (StoreMode::Add, &item[1..]),
                Some(b'-') => (StoreMode::Remove, &item[1..]),
                _ => (StoreMode::Replace, &item[..]),
            };
            let silent = match rest {
                "FLAGS" => false,
                "FLAGS.SILENT" => true,
                _ => return Err("expected FLAGS, +FLAGS or -FLAGS".into()),
            };
            c.sp()?;
            let flags = c.flag_list()?;
            // \Recent is a fetch-only flag (RFC 3501 §2.3.2, `flag` in §9 does not include
            // it): a client cannot set or clear it.
            if flags.iter().any(|f| f == "\\Recent") {
                return Err("\\Recent cannot be stored (RFC 3501 2.3.2)".into());
            }
            Command::Store {
                uid,
                set,
                mode,
                silent,
                flags,
                unchanged_since,
            }
        }
        "COPY" | "MOVE" => {
            c.sp()?;
            let set = c.seq_set()?;
            c.sp()?;
            let m = c.mailbox()?;
            Command::Copy {
                uid,
                set,
                mailbox: m,
                is_move: verb == "MOVE",
            }
        }
        "ID" => {
            c.sp()?;
            if c.keyword("NIL") {
                Command::Id(Vec::new())
            } else {
                c.expect(b'(')?;
                let mut v = Vec::new();
                if !c.eat(b')') {
                    loop {
                        let k = String::from_utf8_lossy(&c.string()?).into_owned();
                        c.sp()?;
                        let val = if c.keyword("NIL") {
                            None
                        } else {
                            Some(String::from_utf8_lossy(&c.string()?).into_owned())
                        };
                        v.push((k, val));
                        if c.eat(b')') {
                            break;
                        }
                        c.sp()?;
                    }
                }
                Command::Id(v)
            }
        }
        _ => return Err(format!("unknown command {verb}")),
    })
}
/// A section spec as written in an IMAP URL's `;SECTION=` (RFC 5092 §3: `1.2.HEADER`, the
/// same grammar as inside FETCH's brackets).
pub fn parse_url_section(s: &str) -> Option<Section> {
    let mut c = Cursor {
        b: s.as_bytes(),
        p: 0,
    };
    let sec = c.section(false).ok()?;
    (c.p == s.len()).then_some(sec)
}

/// Parse `1-Feb-2024` into days since the Unix epoch.
pub fn parse_date(s: &str) -> Option<i64> {
    chrono::NaiveDate::parse_from_str(s.trim(), "%d-%b-%Y")
        .ok()
        .map(|d| {
            d.and_hms_opt(0, 0, 0)
                .expect("midnight")
                .and_utc()
                .timestamp()
                / 86400
        })
}

/// Parse an IMAP date-time `"01-Feb-2024 10:00:00 +0100"` into Unix seconds.
pub fn parse_date_time(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_str(s.trim(), "%d-%b-%Y %H:%M:%S %z")
        .ok()
        .map(|d| d.timestamp())
}
