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

struct Cursor<'a> {
    b: &'a [u8],
    p: usize,
}

type R<T> = Result<T, String>;

fn is_atom_char(c: u8) -> bool {
    c > 0x20 && c < 0x7f && !b"(){ %*\"\\]".contains(&c)
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.p).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.p += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> R<()> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected '{}'", c as char))
        }
    }

    fn sp(&mut self) -> R<()> {
        self.expect(b' ')
    }

    fn at_end(&self) -> bool {
        matches!(&self.b[self.p..], b"" | b"\r\n" | b"\n")
    }

    fn end(&self) -> R<()> {
        if self.at_end() {
            Ok(())
        } else {
            Err("unexpected extra arguments".into())
        }
    }

    /// An atom, allowing `]` only where the caller asks.
    fn atom_with(&mut self, extra: &[u8]) -> R<&'a str> {
        let start = self.p;
        while let Some(c) = self.peek() {
            if is_atom_char(c) || extra.contains(&c) {
                self.p += 1;
            } else {
                break;
            }
        }
        if start == self.p {
            return Err("expected an atom".into());
        }
        std::str::from_utf8(&self.b[start..self.p]).map_err(|_| "invalid atom".into())
    }

    fn atom(&mut self) -> R<&'a str> {
        self.atom_with(&[])
    }

    fn quoted(&mut self) -> R<Vec<u8>> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None | Some(b'\r') | Some(b'\n') => return Err("unterminated quoted string".into()),
                Some(b'"') => {
                    self.p += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.p += 1;
                    match self.peek() {
                        Some(c @ (b'"' | b'\\')) => {
                            out.push(c);
                            self.p += 1;
                        }
                        _ => return Err("bad escape in quoted string".into()),
                    }
                }
                Some(c) => {
                    out.push(c);
                    self.p += 1;
                }
            }
        }
    }

    fn literal(&mut self) -> R<Vec<u8>> {
        self.eat(b'~');
        self.expect(b'{')?;
        let start = self.p;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.p += 1;
        }
        let n: usize = std::str::from_utf8(&self.b[start..self.p])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("bad literal size")?;
        if !self.eat(b'+') {
            self.eat(b'-');
        }
        self.expect(b'}')?;
        self.eat(b'\r');
        self.expect(b'\n')?;
        if self.p.checked_add(n).is_none_or(|end| self.b.len() < end) {
            return Err("literal shorter than announced".into());
        }
        let v = self.b[self.p..self.p + n].to_vec();
        self.p += n;
        Ok(v)
    }

    /// Whether a quoted string or a literal (`{`, or `~{` for literal8) starts here; a `~`
    /// not followed by `{` is an atom character (RFC 9051 §9: `~foo` is an astring).
    fn at_string(&self) -> bool {
        match self.peek() {
            Some(b'"') | Some(b'{') => true,
            Some(b'~') => self.b.get(self.p + 1) == Some(&b'{'),
            _ => false,
        }
    }

    fn string(&mut self) -> R<Vec<u8>> {
        match self.peek() {
            Some(b'"') => self.quoted(),
            Some(b'{') | Some(b'~') => self.literal(),
            _ => Err("expected a string".into()),
        }
    }

    fn astring(&mut self) -> R<Vec<u8>> {
        if self.at_string() {
            self.string()
        } else {
            Ok(self.atom_with(b"]")?.as_bytes().to_vec())
        }
    }

    fn astring_utf8(&mut self) -> R<String> {
        String::from_utf8(self.astring()?).map_err(|_| "string is not UTF-8".into())
    }

    /// A mailbox name (astring; `INBOX` case-insensitive). Also accepts list-wildcards
    /// where `wild` is set (LIST patterns).
    fn mailbox(&mut self) -> R<String> {
        let s = self.astring_utf8()?;
        Ok(if s.eq_ignore_ascii_case("INBOX") {
            "INBOX".into()
        } else {
            s
        })
    }

    fn list_mailbox(&mut self) -> R<String> {
        if self.at_string() {
            String::from_utf8(self.string()?).map_err(|_| "not UTF-8".into())
        } else {
            Ok(self.atom_with(b"%*]")?.to_string())
        }
    }

    fn number(&mut self) -> R<u64> {
        let start = self.p;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.p += 1;
        }
        std::str::from_utf8(&self.b[start..self.p])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| "expected a number".into())
    }

    fn nz_number(&mut self) -> R<u32> {
        let n = self.number()?;
        if n == 0 || n > u32::MAX as u64 {
            Err("number out of range".into())
        } else {
            Ok(n as u32)
        }
    }

    fn seq_set(&mut self) -> R<SeqSet> {
        if self.eat(b'$') {
            return Ok(SeqSet::Saved);
        }
        let mut ranges = Vec::new();
        loop {
            let a = self.seq_number()?;
            let b = if self.eat(b':') {
                self.seq_number()?
            } else {
                a
            };
            ranges.push((a, b));
            if !self.eat(b',') {
                break;
            }
        }
        Ok(SeqSet::Ranges(ranges))
    }

    fn seq_number(&mut self) -> R<u32> {
        if self.eat(b'*') {
            Ok(STAR)
        } else {
            self.nz_number()
        }
    }

    fn flag(&mut self) -> R<String> {
        if self.eat(b'\\') {
            if self.eat(b'*') {
                return Ok("\\*".into());
            }
            let a = self.atom()?;
            let canonical = ["Seen", "Answered", "Flagged", "Deleted", "Draft", "Recent"]
                .iter()
                .find(|f| f.eq_ignore_ascii_case(a))
                .ok_or_else(|| format!("unknown system flag \\{a}"))?;
            Ok(format!("\\{canonical}"))
        } else {
            Ok(self.atom()?.to_string())
        }
    }

    fn flag_list(&mut self) -> R<Vec<String>> {
        let mut v = Vec::new();
        if self.eat(b'(') {
            if self.eat(b')') {
                return Ok(v);
            }
            loop {
                v.push(self.flag()?);
                if self.eat(b')') {
                    break;
                }
                self.sp()?;
            }
        } else {
            // RFC 3501 allows a single flag without parentheses in STORE.
            loop {
                v.push(self.flag()?);
                if !self.eat(b' ') {
                    break;
                }
            }
        }
        Ok(v)
    }

    fn paren_atoms(&mut self) -> R<Vec<String>> {
        self.expect(b'(')?;
        let mut v = Vec::new();
        if self.eat(b')') {
            return Ok(v);
        }
        loop {
            v.push(self.astring_utf8()?);
            if self.eat(b')') {
                return Ok(v);
            }
            self.sp()?;
        }
    }

    fn keyword(&mut self, kw: &str) -> bool {
        let end = self.p + kw.len();
        if end <= self.b.len() && self.b[self.p..end].eq_ignore_ascii_case(kw.as_bytes()) {
            let next = self.b.get(end).copied();
            if next.is_none_or(|c| !is_atom_char(c) || c == b'[' || c == b'.' && kw.ends_with('.'))
            {
                self.p = end;
                return true;
            }
        }
        false
    }
}

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

impl Cursor<'_> {
    fn mailbox_ref(&mut self) -> R<String> {
        String::from_utf8(self.astring()?).map_err(|_| "not UTF-8".into())
    }

    fn status_items(&mut self) -> R<Vec<StatusItem>> {
        self.expect(b'(')?;
        let mut v = Vec::new();
        loop {
            let a = self.atom()?.to_ascii_uppercase();
            v.push(match a.as_str() {
                "MESSAGES" => StatusItem::Messages,
                "RECENT" => StatusItem::Recent,
                "UIDNEXT" => StatusItem::UidNext,
                "UIDVALIDITY" => StatusItem::UidValidity,
                "UNSEEN" => StatusItem::Unseen,
                "DELETED" => StatusItem::Deleted,
                "SIZE" => StatusItem::Size,
                "HIGHESTMODSEQ" => StatusItem::HighestModseq,
                _ => return Err(format!("unknown STATUS item {a}")),
            });
            if self.eat(b')') {
                return Ok(v);
            }
            self.sp()?;
        }
    }

    fn fetch_items(&mut self) -> R<Vec<FetchItem>> {
        if self.keyword("ALL") {
            return Ok(vec![
                FetchItem::Flags,
                FetchItem::InternalDate,
                FetchItem::Rfc822Size,
                FetchItem::Envelope,
            ]);
        }
        if self.keyword("FAST") {
            return Ok(vec![
                FetchItem::Flags,
                FetchItem::InternalDate,
                FetchItem::Rfc822Size,
            ]);
        }
        if self.keyword("FULL") {
            return Ok(vec![
                FetchItem::Flags,
                FetchItem::InternalDate,
                FetchItem::Rfc822Size,
                FetchItem::Envelope,
                FetchItem::Body,
            ]);
        }
        if self.eat(b'(') {
            let mut v = Vec::new();
            loop {
                v.push(self.fetch_item()?);
                if self.eat(b')') {
                    return Ok(v);
                }
                self.sp()?;
            }
        }
        Ok(vec![self.fetch_item()?])
    }

    fn fetch_item(&mut self) -> R<FetchItem> {
        let start = self.p;
        let mut name = self.atom()?.to_ascii_uppercase();
        if let Some(i) = name.find('[') {
            self.p = start + i;
            name.truncate(i);
        }
        Ok(match name.as_str() {
            "FLAGS" => FetchItem::Flags,
            "INTERNALDATE" => FetchItem::InternalDate,
            "RFC822.SIZE" => FetchItem::Rfc822Size,
            "ENVELOPE" => FetchItem::Envelope,
            "BODYSTRUCTURE" => FetchItem::BodyStructure,
            "UID" => FetchItem::Uid,
            "MODSEQ" => FetchItem::Modseq,
            "RFC822" => FetchItem::Section {
                section: Section::default(),
                peek: false,
                partial: None,
                legacy: Some("RFC822"),
            },
            "RFC822.HEADER" => FetchItem::Section {
                section: Section {
                    kind: SectionKind::Header,
                    ..Default::default()
                },
                peek: true,
                partial: None,
                legacy: Some("RFC822.HEADER"),
            },
            "RFC822.TEXT" => FetchItem::Section {
                section: Section {
                    kind: SectionKind::Text,
                    ..Default::default()
                },
                peek: false,
                partial: None,
                legacy: Some("RFC822.TEXT"),
            },
            "BODY" | "BODY.PEEK" | "BINARY" | "BINARY.PEEK" | "BINARY.SIZE" => {
                if self.peek() != Some(b'[') {
                    if name == "BODY" {
                        return Ok(FetchItem::Body);
                    }
                    return Err(format!("{name} needs a section"));
                }
                self.p += 1;
                let binary = name.starts_with("BINARY");
                let section = self.section(binary)?;
                self.expect(b']')?;
                let mut partial = None;
                if name != "BINARY.SIZE" && self.eat(b'<') {
                    let a = self.number()?;
                    self.expect(b'.')?;
                    let n = self.number()?;
                    if n == 0 {
                        return Err("partial length must be positive".into());
                    }
                    self.expect(b'>')?;
                    partial = Some((a, n));
                }
                match name.as_str() {
                    "BINARY.SIZE" => FetchItem::BinarySize(section.part),
                    "BINARY" | "BINARY.PEEK" => FetchItem::Binary {
                        part: section.part,
                        peek: name == "BINARY.PEEK",
                        partial,
                    },
                    _ => FetchItem::Section {
                        section,
                        peek: name == "BODY.PEEK",
                        partial,
                        legacy: None,
                    },
                }
            }
            _ => return Err(format!("unknown FETCH item {name}")),
        })
    }

    fn section(&mut self, binary: bool) -> R<Section> {
        let mut s = Section::default();
        loop {
            match self.peek() {
                Some(c) if c.is_ascii_digit() => {
                    s.part.push(self.nz_number()?);
                    if !self.eat(b'.') {
                        return Ok(s);
                    }
                }
                _ => break,
            }
        }
        if binary || self.peek() == Some(b']') {
            if !s.part.is_empty() && self.b.get(self.p.wrapping_sub(1)) == Some(&b'.') {
                return Err("bad section".into());
            }
            return Ok(s);
        }
        let word = self.atom()?.to_ascii_uppercase();
        s.kind = match word.as_str() {
            "HEADER" => SectionKind::Header,
            "TEXT" => SectionKind::Text,
            "MIME" if !s.part.is_empty() => SectionKind::Mime,
            "HEADER.FIELDS" | "HEADER.FIELDS.NOT" => {
                self.sp()?;
                let fields = self.paren_atoms()?;
                if fields.is_empty() {
                    return Err("empty header list".into());
                }
                if word == "HEADER.FIELDS" {
                    SectionKind::HeaderFields(fields)
                } else {
                    SectionKind::HeaderFieldsNot(fields)
                }
            }
            _ => return Err(format!("bad section {word}")),
        };
        Ok(s)
    }

    /// One message of APPEND: `[flag-list SP] [date-time SP]` then a literal, `UTF8
    /// (literal8)` (RFC 6855 §4) or `CATENATE (…)` (RFC 4469 §5).
    fn append_message(&mut self) -> R<AppendMessage> {
        let mut flags = Vec::new();
        if self.peek() == Some(b'(') {
            flags = self.flag_list()?;
            self.sp()?;
        }
        let mut date = None;
        if self.peek() == Some(b'"') {
            let d = String::from_utf8(self.quoted()?).map_err(|_| "bad date")?;
            date = Some(parse_date_time(&d).ok_or("invalid date-time")?);
            self.sp()?;
        }
        let text = |c: &mut Self| -> R<AppendPart> {
            let binary = c.peek() == Some(b'~');
            Ok(AppendPart::Text {
                data: c.literal()?,
                binary,
            })
        };
        let utf8 = self.keyword("UTF8");
        let parts = if utf8 {
            self.sp()?;
            self.expect(b'(')?;
            if self.peek() != Some(b'~') {
                return Err("UTF8 APPEND data must be a literal8 (~{n})".into());
            }
            let data = self.literal()?;
            self.expect(b')')?;
            vec![AppendPart::Text {
                data,
                binary: false,
            }]
        } else if self.keyword("CATENATE") {
            self.sp()?;
            self.expect(b'(')?;
            let mut parts = Vec::new();
            loop {
                if self.keyword("TEXT") {
                    self.sp()?;
                    parts.push(text(self)?);
                } else if self.keyword("URL") {
                    self.sp()?;
                    parts.push(AppendPart::Url(self.astring_utf8()?));
                } else {
                    return Err("CATENATE expects TEXT or URL".into());
                }
                if self.eat(b')') {
                    break;
                }
                self.sp()?;
            }
            parts
        } else {
            vec![text(self)?]
        };
        Ok(AppendMessage {
            flags,
            date,
            parts,
            utf8,
        })
    }

    /// An optional `RETURN (opts) SP` of SEARCH (RFC 4731) or SORT (RFC 5267), options
    /// upper-cased; one outside `allowed` is BAD.
    fn return_options(&mut self, verb: &str, allowed: &[&str]) -> R<Option<Vec<String>>> {
        if !self.keyword("RETURN") {
            return Ok(None);
        }
        self.sp()?;
        let opts: Vec<String> = self
            .paren_atoms()?
            .into_iter()
            .map(|s| s.to_ascii_uppercase())
            .collect();
        // PARTIAL takes a range (RFC 5267 §4.4): kept as one option, `PARTIAL lo:hi`.
        let mut out: Vec<String> = Vec::with_capacity(opts.len());
        let mut it = opts.into_iter();
        while let Some(o) = it.next() {
            if !allowed.contains(&o.as_str()) {
                return Err(format!("unknown {verb} return option {o}"));
            }
            if o == "PARTIAL" {
                let range = it.next().ok_or("PARTIAL needs a range")?;
                let (lo, hi) = range.split_once(':').ok_or("PARTIAL range broken")?;
                let (lo, hi): (u32, u32) = match (lo.parse::<u32>(), hi.parse::<u32>()) {
                    (Ok(a), Ok(b)) if a > 0 && b > 0 => (a.min(b), a.max(b)),
                    _ => return Err("PARTIAL range broken".into()),
                };
                out.push(format!("PARTIAL {lo}:{hi}"));
            } else {
                out.push(o);
            }
        }
        // RFC 5267 §4.4: one PARTIAL, one ALL, or neither.
        if out
            .iter()
            .filter(|o| *o == "ALL" || o.starts_with("PARTIAL"))
            .count()
            > 1
        {
            return Err("only one of ALL and PARTIAL".into());
        }
        self.sp()?;
        Ok(Some(out))
    }

    /// SORT's and THREAD's `charset SP search-key *(SP search-key)` (RFC 5256 §5): the
    /// charset is required there.
    fn charset_and_keys(&mut self) -> R<SearchKey> {
        let cs = self.astring_utf8()?;
        // A missing search key is a syntax error (BAD) before it is a charset question.
        self.sp()?;
        if !cs.eq_ignore_ascii_case("UTF-8") && !cs.eq_ignore_ascii_case("US-ASCII") {
            return Err("[BADCHARSET (UTF-8 US-ASCII)] unsupported charset".into());
        }
        let mut keys = vec![self.search_key(0)?];
        while self.eat(b' ') {
            keys.push(self.search_key(0)?);
        }
        Ok(SearchKey::And(keys))
    }

    fn search_key(&mut self, depth: usize) -> R<SearchKey> {
        if depth > 32 {
            return Err("search nesting too deep".into());
        }
        if self.eat(b'(') {
            let mut v = vec![self.search_key(depth + 1)?];
            while self.eat(b' ') {
                v.push(self.search_key(depth + 1)?);
            }
            self.expect(b')')?;
            return Ok(SearchKey::And(v));
        }
        if matches!(self.peek(), Some(b'0'..=b'9' | b'*' | b'$')) {
            return Ok(SearchKey::Seq(self.seq_set()?));
        }
        let word = self.atom()?.to_ascii_uppercase();
        let arg = |c: &mut Self| -> R<String> {
            c.sp()?;
            String::from_utf8(c.astring()?).map_err(|_| "search string is not UTF-8".into())
        };
        Ok(match word.as_str() {
            "ALL" => SearchKey::All,
            "ANSWERED" => SearchKey::Flag("\\Answered".into(), true),
            "UNANSWERED" => SearchKey::Flag("\\Answered".into(), false),
            "DELETED" => SearchKey::Flag("\\Deleted".into(), true),
            "UNDELETED" => SearchKey::Flag("\\Deleted".into(), false),
            "DRAFT" => SearchKey::Flag("\\Draft".into(), true),
            "UNDRAFT" => SearchKey::Flag("\\Draft".into(), false),
            "FLAGGED" => SearchKey::Flag("\\Flagged".into(), true),
            "UNFLAGGED" => SearchKey::Flag("\\Flagged".into(), false),
            "SEEN" => SearchKey::Flag("\\Seen".into(), true),
            "UNSEEN" => SearchKey::Flag("\\Seen".into(), false),
            // RFC 3501 §6.4.4: NEW is RECENT UNSEEN, OLD is NOT RECENT.
            "RECENT" => SearchKey::Flag("\\Recent".into(), true),
            "OLD" => SearchKey::Flag("\\Recent".into(), false),
            "NEW" => SearchKey::And(vec![
                SearchKey::Flag("\\Recent".into(), true),
                SearchKey::Flag("\\Seen".into(), false),
            ]),
            "KEYWORD" => {
                self.sp()?;
                SearchKey::Flag(self.atom()?.to_string(), true)
            }
            "UNKEYWORD" => {
                self.sp()?;
                SearchKey::Flag(self.atom()?.to_string(), false)
            }
            "BCC" | "CC" | "FROM" | "TO" | "SUBJECT" => SearchKey::Header(word.clone(), arg(self)?),
            "HEADER" => {
                let name = arg(self)?;
                let value = arg(self)?;
                SearchKey::Header(name, value)
            }
            "BODY" => SearchKey::Body(arg(self)?),
            "TEXT" => SearchKey::Text(arg(self)?),
            "BEFORE" | "ON" | "SINCE" | "SENTBEFORE" | "SENTON" | "SENTSINCE" => {
                let d = arg(self)?;
                let day = parse_date(&d).ok_or("invalid date")?;
                SearchKey::Date(word.clone(), day)
            }
            "LARGER" => {
                self.sp()?;
                SearchKey::Larger(self.number()?)
            }
            "SMALLER" => {
                self.sp()?;
                SearchKey::Smaller(self.number()?)
            }
            "UID" => {
                self.sp()?;
                SearchKey::Uid(self.seq_set()?)
            }
            "NOT" => {
                self.sp()?;
                SearchKey::Not(Box::new(self.search_key(depth + 1)?))
            }
            "OR" => {
                self.sp()?;
                let a = self.search_key(depth + 1)?;
                self.sp()?;
                let b = self.search_key(depth + 1)?;
                SearchKey::Or(Box::new(a), Box::new(b))
            }
            "MODSEQ" => {
                self.sp()?;
                if self.peek() == Some(b'"') {
                    self.quoted()?;
                    self.sp()?;
                    self.atom()?;
                    self.sp()?;
                }
                SearchKey::Modseq(self.number()?)
            }
            _ => return Err(format!("unknown search key {word}")),
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_with_literals() {
        assert_eq!(frame(b"a NOOP\r\n", 0, 100, 100, 1000), Frame::Complete(8));
        assert_eq!(
            frame(b"a LOGIN {5}\r\n", 0, 100, 100, 1000),
            Frame::NeedMore { continuation: true }
        );
        assert_eq!(
            frame(b"a LOGIN {5}\r\n", 1, 100, 100, 1000),
            Frame::NeedMore {
                continuation: false
            }
        );
        assert_eq!(
            frame(b"a LOGIN {5+}\r\n", 0, 100, 100, 1000),
            Frame::NeedMore {
                continuation: false
            }
        );
        assert_eq!(
            frame(b"a LOGIN {5}\r\nalice {3}\r\npwd\r\n", 2, 100, 100, 1000),
            Frame::Complete(29)
        );
        assert!(matches!(
            frame(b"a APPEND x {999}\r\n", 0, 100, 100, 1000),
            Frame::LiteralTooBig {
                end: 18,
                nonsync: false,
                ..
            }
        ));
        // Too large in a later line: the whole command so far is to be dropped.
        assert_eq!(
            frame(b"b LOGIN {3}\r\nabc {999}\r\nc NOOP\r\n", 1, 100, 100, 1000),
            Frame::LiteralTooBig {
                tag: "b".into(),
                nonsync: false,
                end: 24
            }
        );
        assert_eq!(frame(&[b'x'; 200], 0, 100, 100, 1000), Frame::LineTooLong);
    }

    #[test]
    fn unknown_list_options_are_bad() {
        for bad in [
            &b"a LIST (BOGUS) \"\" *\r\n"[..],
            b"a LIST (RECURSIVEMATCH) \"\" *\r\n",
            b"a LIST \"\" * RETURN (BOGUS)\r\n",
            b"a LIST (REMOTE RECURSIVEMATCH) \"\" *\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        for good in [
            &b"a LIST (SUBSCRIBED RECURSIVEMATCH) \"\" *\r\n"[..],
            b"a LIST (REMOTE) \"\" * RETURN (CHILDREN SUBSCRIBED)\r\n",
            b"a LIST (SPECIAL-USE) \"\" * RETURN (SPECIAL-USE STATUS (MESSAGES))\r\n",
        ] {
            assert!(parse(good).is_ok(), "{:?}", String::from_utf8_lossy(good));
        }
    }

    #[test]
    fn tilde_starts_an_atom_unless_a_literal8_follows() {
        let t = parse(b"a CREATE ~foo\r\n").unwrap();
        assert_eq!(t.command, Command::Create("~foo".into(), None));
        let t = parse(b"a SELECT ~\r\n").unwrap();
        assert!(matches!(t.command, Command::Select { ref mailbox, .. } if mailbox == "~"));
        let t = parse(b"a CREATE ~{3}\r\nabc\r\n").unwrap();
        assert_eq!(t.command, Command::Create("abc".into(), None));
    }

    #[test]
    fn huge_literal_sizes_are_refused() {
        // Past u64 (it used to be no literal at all, and the parser's `p + n` overflowed).
        for line in [
            &b"c LOGIN {18446744073709551615}\r\n"[..],
            b"c LOGIN {99999999999999999999}\r\n",
            b"c LOGIN {99999999999999999999+}\r\n",
        ] {
            assert!(
                matches!(frame(line, 0, 100, 100, 1000), Frame::LiteralTooBig { .. }),
                "{line:?}"
            );
        }
        assert!(parse(b"c LOGIN {18446744073709551615}\r\nab\r\n").is_err());
        // The whole command is capped, chained literals included.
        let chained = b"a LOGIN {60}\r\n";
        assert!(matches!(
            frame(chained, 0, 100, 100, 50),
            Frame::LiteralTooBig { .. }
        ));
        let mut two = b"a LOGIN {40+}\r\n".to_vec();
        two.extend_from_slice(&[b'x'; 40]);
        two.extend_from_slice(b" {40+}\r\n");
        assert!(matches!(
            frame(&two, 0, 100, 100, 80),
            Frame::LiteralTooBig { nonsync: true, .. }
        ));
        assert!(matches!(
            frame(&two, 0, 100, 100, 200),
            Frame::NeedMore { .. }
        ));
    }

    #[test]
    fn commands() {
        let t = parse(b"a1 LOGIN {5}\r\nalice \"p w\\\"d\"\r\n").unwrap();
        assert_eq!(t.command, Command::Login("alice".into(), "p w\"d".into()));
        let t =
            parse(b"A UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (From Subject)]<0.100>)\r\n")
                .unwrap();
        match t.command {
            Command::Fetch {
                uid: true, items, ..
            } => {
                assert_eq!(items.len(), 2);
                assert!(matches!(
                    &items[1],
                    FetchItem::Section {
                        peek: true,
                        partial: Some((0, 100)),
                        ..
                    }
                ));
            }
            other => panic!("{other:?}"),
        }
        let t = parse(b"b SEARCH OR FROM alice NOT SEEN 1:5,7\r\n").unwrap();
        assert!(matches!(t.command, Command::Search { .. }));
        assert!(parse(b"c FETCH 1 (BOGUS)\r\n").is_err());
        assert_eq!(parse(b"\r\n").unwrap_err().tag, "*");
        let t = parse(b"d STORE 2:4 +FLAGS.SILENT (\\seen $Junk)\r\n").unwrap();
        assert_eq!(
            t.command,
            Command::Store {
                uid: false,
                set: SeqSet::Ranges(vec![(2, 4)]),
                mode: StoreMode::Add,
                silent: true,
                flags: vec!["\\Seen".into(), "$Junk".into()],
                unchanged_since: None
            }
        );
        let t = parse(b"e LIST \"\" \"*\" RETURN (SPECIAL-USE STATUS (MESSAGES))\r\n").unwrap();
        assert!(matches!(
            t.command,
            Command::List {
                status: Some(_),
                ..
            }
        ));
        let t = parse(b"f APPEND Drafts (\\Draft) \"05-Jan-2024 10:00:00 +0000\" {3+}\r\nabc\r\n")
            .unwrap();
        let text = |data: &[u8], binary: bool| AppendPart::Text {
            data: data.to_vec(),
            binary,
        };
        assert!(matches!(t.command, Command::Append { ref messages, .. }
            if messages.len() == 1 && messages[0].parts == [text(b"abc", false)]));
        let t = parse(b"a APPEND INBOX (\\Seen) UTF8 (~{3}\r\nabc)\r\n").unwrap();
        assert!(matches!(t.command, Command::Append { ref messages, .. }
            if messages[0].utf8 && messages[0].parts == [text(b"abc", false)]));
        // MULTIAPPEND (RFC 3502 §6.3.11's example shape) and CATENATE (RFC 4469 §5).
        let t = parse(
            b"m APPEND saved-messages (\\Seen) {3+}\r\none (\\Seen) \"05-Jan-2024 10:00:00 +0000\" ~{3+}\r\ntwo {5+}\r\nthree\r\n",
        )
        .unwrap();
        let Command::Append { messages, .. } = t.command else {
            panic!("not an APPEND")
        };
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[1].parts, [text(b"two", true)]);
        assert!(messages[1].date.is_some() && messages[2].flags.is_empty());
        let t = parse(
            b"c APPEND Drafts CATENATE (URL \"/Drafts;UIDVALIDITY=385759045/;UID=20/;SECTION=HEADER\" TEXT {4+}\r\n\r\nhi URL \"/Drafts;UIDVALIDITY=385759045/;UID=20/;SECTION=1.MIME\")\r\n",
        )
        .unwrap();
        let Command::Append { messages, .. } = t.command else {
            panic!("not an APPEND")
        };
        assert_eq!(messages[0].parts.len(), 3);
        assert_eq!(messages[0].parts[1], text(b"\r\nhi", false));
        assert!(parse(b"c APPEND Drafts CATENATE ()\r\n").is_err());
        assert!(parse(b"c APPEND Drafts CATENATE (BOGUS {1+}\r\nx)\r\n").is_err());
        assert!(parse(b"c APPEND Drafts\r\n").is_err());
        assert_eq!(
            parse_url_section("1.2.HEADER"),
            Some(Section {
                part: vec![1, 2],
                kind: SectionKind::Header
            })
        );
        assert_eq!(parse_url_section("1.BOGUS"), None);
        assert!(parse(b"a APPEND INBOX UTF8 ({3}\r\nabc)\r\n").is_err());
        assert!(parse(b"a APPEND INBOX UTF8 (~{3}\r\nabc\r\n").is_err());
        // CREATE-SPECIAL-USE takes attributes, which are not system flags.
        let t = parse(b"h CREATE \"Everything\" (USE (\\All))\r\n").unwrap();
        assert_eq!(
            t.command,
            Command::Create("Everything".into(), Some("\\All".into()))
        );
        let t = parse(b"h CREATE Arch (USE (\\Archive))\r\n").unwrap();
        assert_eq!(
            t.command,
            Command::Create("Arch".into(), Some("\\Archive".into()))
        );
        assert!(parse(b"h CREATE x (USE (All))\r\n").is_err());
        // An unsupported charset is NO [BADCHARSET], not BAD; unknown RETURN options are BAD.
        let e = parse(b"s SEARCH CHARSET KOI8-R SUBJECT x\r\n").unwrap_err();
        assert!(e.is_no() && e.text.starts_with("[BADCHARSET"));
        let e = parse(b"s SEARCH RETURN (BOGUS) ALL\r\n").unwrap_err();
        assert!(!e.is_no());
        assert!(parse(b"s SEARCH RETURN (SAVE MIN) ALL\r\n").is_ok());
        let t = parse(b"s SEARCH NEW\r\n").unwrap();
        assert!(matches!(t.command, Command::Search { ref key, .. }
        if *key == SearchKey::And(vec![SearchKey::And(vec![
            SearchKey::Flag("\\Recent".into(), true),
            SearchKey::Flag("\\Seen".into(), false),
        ])])));
        let t = parse(b"g FETCH 1 BODY[1.2.MIME]\r\n").unwrap();
        assert!(matches!(t.command, Command::Fetch { .. }));
    }
}
