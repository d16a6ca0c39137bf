//! The tokens of the IMAP grammar (RFC 9051 §9): a cursor over a command's bytes that reads
//! atoms, quoted strings, literals, numbers, sequence sets and flags.

use super::*;

pub(super) struct Cursor<'a> {
    pub(super) b: &'a [u8],
    pub(super) p: usize,
}

pub(super) type R<T> = Result<T, String>;

pub(super) fn is_atom_char(c: u8) -> bool {
    c > 0x20 && c < 0x7f && !b"(){ %*\"\\]".contains(&c)
}

impl<'a> Cursor<'a> {
    pub(super) fn peek(&self) -> Option<u8> {
        self.b.get(self.p).copied()
    }

    pub(super) fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.p += 1;
            true
        } else {
            false
        }
    }

    pub(super) fn expect(&mut self, c: u8) -> R<()> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected '{}'", c as char))
        }
    }

    pub(super) fn sp(&mut self) -> R<()> {
        self.expect(b' ')
    }

    pub(super) fn at_end(&self) -> bool {
        matches!(&self.b[self.p..], b"" | b"\r\n" | b"\n")
    }

    pub(super) fn end(&self) -> R<()> {
        if self.at_end() {
            Ok(())
        } else {
            Err("unexpected extra arguments".into())
        }
    }

    /// An atom, allowing `]` only where the caller asks.
    pub(super) fn atom_with(&mut self, extra: &[u8]) -> R<&'a str> {
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

    pub(super) fn atom(&mut self) -> R<&'a str> {
        self.atom_with(&[])
    }

    pub(super) fn quoted(&mut self) -> R<Vec<u8>> {
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

    pub(super) fn literal(&mut self) -> R<Vec<u8>> {
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
    pub(super) fn at_string(&self) -> bool {
        match self.peek() {
            Some(b'"') | Some(b'{') => true,
            Some(b'~') => self.b.get(self.p + 1) == Some(&b'{'),
            _ => false,
        }
    }

    pub(super) fn string(&mut self) -> R<Vec<u8>> {
        match self.peek() {
            Some(b'"') => self.quoted(),
            Some(b'{') | Some(b'~') => self.literal(),
            _ => Err("expected a string".into()),
        }
    }

    pub(super) fn astring(&mut self) -> R<Vec<u8>> {
        if self.at_string() {
            self.string()
        } else {
            Ok(self.atom_with(b"]")?.as_bytes().to_vec())
        }
    }

    pub(super) fn astring_utf8(&mut self) -> R<String> {
        String::from_utf8(self.astring()?).map_err(|_| "string is not UTF-8".into())
    }

    /// A mailbox name (astring; `INBOX` case-insensitive). Also accepts list-wildcards
    /// where `wild` is set (LIST patterns).
    pub(super) fn mailbox(&mut self) -> R<String> {
        let s = self.astring_utf8()?;
        Ok(if s.eq_ignore_ascii_case("INBOX") {
            "INBOX".into()
        } else {
            s
        })
    }

    pub(super) fn list_mailbox(&mut self) -> R<String> {
        if self.at_string() {
            String::from_utf8(self.string()?).map_err(|_| "not UTF-8".into())
        } else {
            Ok(self.atom_with(b"%*]")?.to_string())
        }
    }

    pub(super) fn number(&mut self) -> R<u64> {
        let start = self.p;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.p += 1;
        }
        std::str::from_utf8(&self.b[start..self.p])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| "expected a number".into())
    }

    pub(super) fn nz_number(&mut self) -> R<u32> {
        let n = self.number()?;
        if n == 0 || n > u32::MAX as u64 {
            Err("number out of range".into())
        } else {
            Ok(n as u32)
        }
    }

    pub(super) fn seq_set(&mut self) -> R<SeqSet> {
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

    pub(super) fn seq_number(&mut self) -> R<u32> {
        if self.eat(b'*') {
            Ok(STAR)
        } else {
            self.nz_number()
        }
    }

    pub(super) fn flag(&mut self) -> R<String> {
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

    pub(super) fn flag_list(&mut self) -> R<Vec<String>> {
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

    pub(super) fn paren_atoms(&mut self) -> R<Vec<String>> {
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

    pub(super) fn keyword(&mut self, kw: &str) -> bool {
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
