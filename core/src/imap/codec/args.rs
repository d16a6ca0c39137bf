//! The arguments of IMAP commands beyond single tokens (RFC 9051 §9): STATUS and FETCH
//! items, body sections, APPEND messages, RETURN options and SEARCH keys.

use super::lexer::*;
use super::*;

impl Cursor<'_> {
    pub(super) fn mailbox_ref(&mut self) -> R<String> {
        String::from_utf8(self.astring()?).map_err(|_| "not UTF-8".into())
    }

    pub(super) fn status_items(&mut self) -> R<Vec<StatusItem>> {
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

    pub(super) fn fetch_items(&mut self) -> R<Vec<FetchItem>> {
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

    pub(super) fn fetch_item(&mut self) -> R<FetchItem> {
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

    pub(super) fn section(&mut self, binary: bool) -> R<Section> {
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
    pub(super) fn append_message(&mut self) -> R<AppendMessage> {
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
    pub(super) fn return_options(
        &mut self,
        verb: &str,
        allowed: &[&str],
    ) -> R<Option<Vec<String>>> {
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
    pub(super) fn charset_and_keys(&mut self) -> R<SearchKey> {
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

    pub(super) fn search_key(&mut self, depth: usize) -> R<SearchKey> {
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
