//! The evaluator: a checked script run against one message and its envelope, sans I/O. It
//! returns the actions to take (RFC 5228 §2.10: the implicit keep unless cancelled) and what
//! fired where, for the message trace. A runtime error (a limit, a bad variable regex)
//! cancels every action and leaves the implicit keep, as §2.10.6 asks.

use std::collections::HashMap;
use std::sync::OnceLock;

use chrono::{Datelike, FixedOffset, TimeZone, Timelike};

use super::matching::{self, Matched};
use super::script::{
    AddressPart, BodyTransform, Cmd, FlagOp, Index, Match, Modifier, Node, Script, Str, Test, Zone,
};

/// Limits of one run.
#[derive(Debug, Clone, Copy)]
pub struct RunLimits {
    /// Work units (tests, comparisons, bytes compared / 64).
    pub max_steps: u64,
    /// `redirect` actions per message.
    pub max_redirects: usize,
    /// Actions per run (stores, redirects, vacation).
    pub max_actions: usize,
}

impl Default for RunLimits {
    fn default() -> Self {
        RunLimits {
            max_steps: 100_000,
            max_redirects: 4,
            max_actions: 32,
        }
    }
}

/// What the script runs against.
pub struct Context<'a> {
    /// The message, as it will be stored.
    pub message: &'a [u8],
    /// Envelope sender (empty for `<>`).
    pub from: &'a str,
    /// Envelope recipient (the address the message was sent to).
    pub to: &'a str,
    /// Whether a mailbox exists (for `mailboxexists`).
    pub mailbox_exists: &'a dyn Fn(&str) -> bool,
    /// Limits.
    pub limits: RunLimits,
    /// The time of `currentdate`.
    pub now: chrono::DateTime<FixedOffset>,
}

/// One action to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// File into a mailbox (INBOX for keep) with flags.
    Store {
        /// The mailbox.
        mailbox: String,
        /// Flags.
        flags: Vec<String>,
        /// `:create`.
        create: bool,
    },
    /// Send a copy on.
    Redirect(String),
    /// Refuse, with a reason.
    Reject(String),
    /// Reply (subject to the vacation rules).
    Vacation(VacationReply),
}

/// An evaluated `vacation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VacationReply {
    /// :days (or from :seconds), as the script said.
    pub days: Option<u64>,
    /// :subject.
    pub subject: Option<String>,
    /// :from.
    pub from: Option<String>,
    /// :addresses.
    pub addresses: Vec<String>,
    /// :mime.
    pub mime: bool,
    /// :handle.
    pub handle: Option<String>,
    /// The reason.
    pub reason: String,
}

/// The result of a run.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Actions in order, the implicit keep (when it stands) last.
    pub actions: Vec<Action>,
    /// What fired: `line N: what`.
    pub fired: Vec<String>,
    /// A runtime error (then `actions` is the implicit keep alone).
    pub error: Option<String>,
}

impl Outcome {
    /// Whether nothing is stored, sent on or refused: the message is dropped.
    pub fn discarded(&self) -> bool {
        !self
            .actions
            .iter()
            .any(|a| !matches!(a, Action::Vacation(_)))
    }
}

struct Run<'a, 'c> {
    script: &'a Script,
    ctx: &'a Context<'c>,
    vars: HashMap<String, String>,
    captures: Vec<String>,
    flags: Vec<String>,
    steps: u64,
    actions: Vec<Action>,
    implicit_keep: bool,
    fired: Vec<String>,
    parsed: OnceLock<Option<mail_parser::Message<'c>>>,
    /// The header fields, read once: (lower-cased name, value).
    headers: OnceLock<std::rc::Rc<Vec<(String, String)>>>,
    /// Addresses of each header value, parsed once (by value).
    addresses: std::cell::RefCell<HashMap<String, std::rc::Rc<Vec<String>>>>,
}

/// Control flow of the run.
enum Flow {
    Next,
    Stop,
}

const MAX_VAR_LEN: usize = 4096;
const MAX_VARS: usize = 128;

/// Run `script` against `ctx`.
pub fn run(script: &Script, ctx: &Context<'_>) -> Outcome {
    let mut r = Run {
        script,
        ctx,
        vars: HashMap::new(),
        captures: Vec::new(),
        flags: Vec::new(),
        steps: 0,
        actions: Vec::new(),
        implicit_keep: true,
        fired: Vec::new(),
        parsed: OnceLock::new(),
        headers: OnceLock::new(),
        addresses: Default::default(),
    };
    match r.block(&script.commands) {
        Ok(_) => {
            // An explicit store into INBOX (`fileinto :copy "INBOX"`, `keep :flags`) is the
            // implicit keep's copy already, with its own flags.
            let in_inbox = r.actions.iter().any(
                |a| matches!(a, Action::Store { mailbox, .. } if crate::store::is_inbox(mailbox)),
            );
            if r.implicit_keep && !in_inbox {
                let flags = r.flags.clone();
                r.store("INBOX".into(), flags, false);
            }
            Outcome {
                actions: r.actions,
                fired: r.fired,
                error: None,
            }
        }
        Err(e) => Outcome {
            actions: vec![Action::Store {
                mailbox: "INBOX".into(),
                flags: Vec::new(),
                create: false,
            }],
            fired: r.fired,
            error: Some(e),
        },
    }
}

type R<T> = Result<T, String>;

impl<'a, 'c> Run<'a, 'c> {
    fn step(&mut self, n: u64) -> R<()> {
        self.steps += n;
        if self.steps > self.ctx.limits.max_steps {
            return Err(format!(
                "the script needed more than {} evaluation steps and was stopped",
                self.ctx.limits.max_steps
            ));
        }
        Ok(())
    }

    fn block(&mut self, nodes: &'a [Node]) -> R<Flow> {
        for n in nodes {
            self.step(1)?;
            if let Flow::Stop = self.command(n)? {
                return Ok(Flow::Stop);
            }
        }
        Ok(Flow::Next)
    }

    fn count_action(&self, line: u32) -> R<()> {
        if self.actions.len() >= self.ctx.limits.max_actions {
            return Err(format!(
                "line {line}: more than {} actions",
                self.ctx.limits.max_actions
            ));
        }
        Ok(())
    }

    fn store(&mut self, mailbox: String, flags: Vec<String>, create: bool) {
        // RFC 5228 §2.10.3: filing twice into one mailbox files once (the flags of the
        // last filing win).
        for a in &mut self.actions {
            if let Action::Store {
                mailbox: m,
                flags: f,
                create: c,
            } = a
                && crate::store::canonical_mailbox(m) == crate::store::canonical_mailbox(&mailbox)
            {
                *f = flags;
                *c |= create;
                return;
            }
        }
        self.actions.push(Action::Store {
            mailbox,
            flags,
            create,
        });
    }

    fn command(&mut self, n: &'a Node) -> R<Flow> {
        let line = n.pos.line;
        match &n.cmd {
            Cmd::If {
                branches,
                otherwise,
            } => {
                for (test, body) in branches {
                    if self.test(test)? {
                        return self.block(body);
                    }
                }
                if let Some(body) = otherwise {
                    return self.block(body);
                }
            }
            Cmd::Stop => {
                self.fired.push(format!("line {line}: stop"));
                return Ok(Flow::Stop);
            }
            Cmd::Keep { flags } => {
                self.count_action(line)?;
                let flags = match flags {
                    Some(f) => self.flag_list(f),
                    None => self.flags.clone(),
                };
                self.fired.push(format!("line {line}: keep"));
                self.store("INBOX".into(), flags, false);
                self.implicit_keep = false;
            }
            Cmd::Discard => {
                self.fired.push(format!("line {line}: discard"));
                self.implicit_keep = false;
            }
            Cmd::FileInto {
                mailbox,
                copy,
                create,
                flags,
            } => {
                self.count_action(line)?;
                let mailbox = self.expand(mailbox);
                // Names IMAP would refuse go to INBOX at delivery (`settle_mailboxes`); a
                // line break or NUL cannot be a name anywhere.
                if mailbox.is_empty()
                    || mailbox.len() > 1000
                    || mailbox.contains(['\r', '\n', '\0'])
                {
                    return Err(format!("line {line}: invalid mailbox name \"{mailbox}\""));
                }
                let flags = match flags {
                    Some(f) => self.flag_list(f),
                    None => self.flags.clone(),
                };
                self.fired
                    .push(format!("line {line}: fileinto \"{mailbox}\""));
                self.store(mailbox, flags, *create);
                if !copy {
                    self.implicit_keep = false;
                }
            }
            Cmd::Redirect { address, copy } => {
                self.count_action(line)?;
                let address = self.expand(address);
                let Some(bare) = super::script::parse_one_address(&address) else {
                    return Err(format!("line {line}: \"{address}\" is not a valid address"));
                };
                let redirects = self
                    .actions
                    .iter()
                    .filter(|a| matches!(a, Action::Redirect(_)))
                    .count();
                if redirects >= self.ctx.limits.max_redirects {
                    return Err(format!(
                        "line {line}: more than {} redirects",
                        self.ctx.limits.max_redirects
                    ));
                }
                self.fired.push(format!("line {line}: redirect to {bare}"));
                if !self
                    .actions
                    .iter()
                    .any(|a| matches!(a, Action::Redirect(x) if x.eq_ignore_ascii_case(&bare)))
                {
                    self.actions.push(Action::Redirect(bare));
                }
                if !copy {
                    self.implicit_keep = false;
                }
            }
            Cmd::Reject { reason } => {
                // RFC 5429 §2.1: one refusal per message (each becomes a notice).
                if self.actions.iter().any(|a| matches!(a, Action::Reject(_))) {
                    return Err(format!("line {line}: reject used twice"));
                }
                self.count_action(line)?;
                let reason = self.expand(reason);
                self.fired.push(format!("line {line}: reject"));
                self.actions.push(Action::Reject(reason));
                self.implicit_keep = false;
            }
            Cmd::Flags { op, var, flags } => {
                let list = self.flag_list(flags);
                let current = match var {
                    Some(v) => split_flags(self.vars.get(v).map(String::as_str).unwrap_or("")),
                    None => self.flags.clone(),
                };
                let new = match op {
                    FlagOp::Set => dedup_flags(list),
                    FlagOp::Add => dedup_flags(current.into_iter().chain(list).collect()),
                    FlagOp::Remove => current
                        .into_iter()
                        .filter(|f| !list.iter().any(|l| l.eq_ignore_ascii_case(f)))
                        .collect(),
                };
                match var {
                    Some(v) => self.set_var(v, new.join(" "))?,
                    None => self.flags = new,
                }
            }
            Cmd::Set {
                name,
                value,
                modifiers,
            } => {
                let mut v = self.expand(value);
                for m in modifiers {
                    v = modify(&v, *m);
                }
                self.set_var(name, v)?;
            }
            Cmd::Vacation(v) => {
                self.count_action(line)?;
                if self
                    .actions
                    .iter()
                    .any(|a| matches!(a, Action::Vacation(_)))
                {
                    return Err(format!("line {line}: vacation used twice"));
                }
                let reply = VacationReply {
                    days: v.days,
                    subject: v.subject.as_ref().map(|s| self.expand(s)),
                    from: v.from.as_ref().map(|s| self.expand(s)),
                    addresses: v.addresses.iter().map(|s| self.expand(s)).collect(),
                    mime: v.mime,
                    handle: v.handle.as_ref().map(|s| self.expand(s)),
                    reason: self.expand(&v.reason),
                };
                self.fired.push(format!("line {line}: vacation"));
                self.actions.push(Action::Vacation(reply));
            }
        }
        // RFC 5429 §2.1: reject cannot be combined with keeping, filing or sending on.
        let rejected = self.actions.iter().any(|a| matches!(a, Action::Reject(_)));
        if rejected
            && self.actions.iter().any(|a| {
                matches!(
                    a,
                    Action::Store { .. } | Action::Redirect(_) | Action::Vacation(_)
                )
            })
        {
            return Err(format!(
                "line {line}: reject cannot be combined with keep, fileinto, redirect or vacation"
            ));
        }
        Ok(Flow::Next)
    }

    fn set_var(&mut self, name: &str, mut value: String) -> R<()> {
        if !self.vars.contains_key(name) && self.vars.len() >= MAX_VARS {
            return Err(format!("more than {MAX_VARS} variables"));
        }
        value.truncate(value.floor_char_boundary(MAX_VAR_LEN));
        self.vars.insert(name.to_string(), value);
        Ok(())
    }

    fn flag_list(&self, flags: &[Str]) -> Vec<String> {
        dedup_flags(
            flags
                .iter()
                .flat_map(|f| split_flags(&self.expand(f)))
                .collect(),
        )
    }

    /// `${...}` expanded (RFC 5229 §3) when the script uses variables.
    fn expand(&self, s: &str) -> String {
        if !self.script.variables || !s.contains("${") {
            return s.to_string();
        }
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            let end = after.find('}');
            let name = end.map(|e| &after[..e]);
            let valid = name.is_some_and(|n| {
                !n.is_empty()
                    && (n.bytes().all(|b| b.is_ascii_digit())
                        || n.split('.').all(|p| {
                            !p.is_empty()
                                && !p.as_bytes()[0].is_ascii_digit()
                                && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                        }))
            });
            match (valid, name, end) {
                (true, Some(n), Some(e)) => {
                    if n.bytes().all(|b| b.is_ascii_digit()) {
                        if let Ok(i) = n.parse::<usize>()
                            && let Some(c) = self.captures.get(i)
                        {
                            out.push_str(c);
                        }
                    } else if let Some(v) = self.vars.get(&n.to_ascii_lowercase()) {
                        out.push_str(v);
                    }
                    rest = &after[e + 1..];
                }
                _ => {
                    out.push_str("${");
                    rest = after;
                }
            }
            if out.len() > 4 * MAX_VAR_LEN {
                break;
            }
        }
        out.push_str(rest);
        out
    }

    fn expand_all(&self, list: &[Str]) -> Vec<String> {
        list.iter().map(|s| self.expand(s)).collect()
    }

    /// `s` expanded, borrowed when there is nothing to expand (most keys and names).
    fn expand_cow<'s>(&self, s: &'s str) -> std::borrow::Cow<'s, str> {
        if !self.script.variables || !s.contains("${") {
            std::borrow::Cow::Borrowed(s)
        } else {
            std::borrow::Cow::Owned(self.expand(s))
        }
    }

    /// Match and record match variables (RFC 5229 §3.2: only `:matches` and `:regex` set
    /// them, and only on success).
    fn matched<V: AsRef<str>>(&mut self, values: &[V], keys: &[Str], m: Match) -> R<bool> {
        let keys: Vec<std::borrow::Cow<'_, str>> =
            keys.iter().map(|k| self.expand_cow(k)).collect();
        let Matched {
            hit,
            captures,
            cost,
        } = matching::matches(
            values,
            &keys,
            m,
            self.ctx.limits.max_steps.saturating_sub(self.steps),
        );
        self.step(cost)?;
        if hit
            && self.script.variables
            && let Some(c) = captures
        {
            self.captures = c;
        }
        Ok(hit)
    }

    fn test(&mut self, t: &'a Test) -> R<bool> {
        self.step(1)?;
        Ok(match t {
            Test::True => true,
            Test::False => false,
            Test::Not(x) => !self.test(x)?,
            Test::AllOf(list) => {
                for x in list {
                    if !self.test(x)? {
                        return Ok(false);
                    }
                }
                true
            }
            Test::AnyOf(list) => {
                for x in list {
                    if self.test(x)? {
                        return Ok(true);
                    }
                }
                false
            }
            Test::Exists(names) => {
                let headers = self.headers();
                names.iter().all(|n| {
                    let n = self.expand_cow(n);
                    headers.iter().any(|(h, _)| h.eq_ignore_ascii_case(&n))
                })
            }
            Test::Size { over, limit } => {
                let size = self.ctx.message.len() as u64;
                if *over { size > *limit } else { size < *limit }
            }
            Test::Header {
                names,
                m,
                keys,
                index,
            } => {
                let headers = self.headers();
                let values = self.header_values(&headers, names, *index);
                self.step(values.len() as u64)?;
                self.matched(&values, keys, *m)?
            }
            Test::Address {
                part,
                names,
                m,
                keys,
                index,
            } => {
                let headers = self.headers();
                let raw = self.header_values(&headers, names, *index);
                let values: Vec<String> = {
                    let mut cache = self.addresses.borrow_mut();
                    let mut out = Vec::new();
                    for v in raw {
                        let list = match cache.get(v) {
                            Some(l) => l.clone(),
                            None => {
                                // RFC 5228 §2.7.4: a value that is no address list is
                                // still its whole text for :all.
                                let mut parsed = addresses_in(v);
                                if parsed.is_empty() && !v.trim().is_empty() && !v.contains(':') {
                                    parsed.push(v.trim().to_string());
                                }
                                let l = std::rc::Rc::new(parsed);
                                cache.insert(v.to_string(), l.clone());
                                l
                            }
                        };
                        out.extend(list.iter().filter_map(|a| address_part(a, *part)));
                    }
                    out
                };
                self.step(values.len() as u64)?;
                self.matched(&values, keys, *m)?
            }
            Test::Envelope {
                part,
                names,
                m,
                keys,
            } => {
                let mut values = Vec::new();
                for n in names {
                    let a = if n.eq_ignore_ascii_case("from") {
                        self.ctx.from
                    } else {
                        self.ctx.to
                    };
                    // RFC 5228 §5.4: the null reverse-path is the empty string, whatever
                    // the part.
                    if a.is_empty() {
                        values.push(String::new());
                    } else if let Some(v) = address_part(a, *part) {
                        values.push(v);
                    }
                }
                self.matched(&values, keys, *m)?
            }
            Test::Body { transform, m, keys } => {
                let values = self.body(transform);
                let cost = values.iter().map(|v| v.len() as u64 / 64).sum::<u64>();
                self.step(cost)?;
                self.matched(&values, keys, *m)?
            }
            Test::Date {
                header,
                zone,
                part,
                m,
                keys,
                index,
            } => {
                let part = self.expand(part).to_ascii_lowercase();
                let dates: Vec<chrono::DateTime<FixedOffset>> = match header {
                    None => vec![self.in_zone(self.ctx.now, zone)],
                    Some(h) => {
                        let h = self.expand(h);
                        let headers = self.headers();
                        let values = self.header_values(&headers, std::slice::from_ref(&h), *index);
                        values
                            .iter()
                            .filter_map(|v| parse_date(&h, v))
                            .map(|d| self.in_zone(d, zone))
                            .collect()
                    }
                };
                let values: Vec<String> =
                    dates.iter().filter_map(|d| date_part(d, &part)).collect();
                self.matched(&values, keys, *m)?
            }
            Test::String { sources, m, keys } => {
                let mut values = self.expand_all(sources);
                // RFC 5229 §5: for :count, empty strings are not counted.
                if matches!(m.kind, super::script::MatchType::Count(_)) {
                    values.retain(|v| !v.is_empty());
                }
                self.matched(&values, keys, *m)?
            }
            Test::HasFlag { vars, m, keys } => {
                let values: Vec<String> = if vars.is_empty() {
                    self.flags.clone()
                } else {
                    vars.iter()
                        .flat_map(|v| {
                            split_flags(self.vars.get(v).map(String::as_str).unwrap_or(""))
                        })
                        .collect()
                };
                self.matched(&values, keys, *m)?
            }
            Test::MailboxExists(names) => self
                .expand_all(names)
                .iter()
                .all(|n| (self.ctx.mailbox_exists)(n)),
        })
    }

    fn in_zone(
        &self,
        d: chrono::DateTime<FixedOffset>,
        zone: &Zone,
    ) -> chrono::DateTime<FixedOffset> {
        match zone {
            Zone::Original => d,
            Zone::Local => d.with_timezone(self.ctx.now.offset()),
            Zone::Fixed(z) => match parse_zone(&self.expand(z)) {
                Some(off) => d.with_timezone(&off),
                None => d,
            },
        }
    }

    /// The header fields (lower-cased names), read once per run.
    fn headers(&self) -> std::rc::Rc<Vec<(String, String)>> {
        self.headers
            .get_or_init(|| {
                std::rc::Rc::new(
                    crate::message::all_headers(self.ctx.message)
                        .into_iter()
                        .map(|(n, v)| (n.to_ascii_lowercase(), v))
                        .collect(),
                )
            })
            .clone()
    }

    fn header_values<'h>(
        &self,
        headers: &'h [(String, String)],
        names: &[Str],
        index: Option<Index>,
    ) -> Vec<&'h str> {
        let mut out = Vec::new();
        for n in names {
            let n = self.expand_cow(n);
            let mut all: Vec<&str> = headers
                .iter()
                .filter(|(h, _)| h.eq_ignore_ascii_case(&n))
                .map(|(_, v)| v.as_str())
                .collect();
            if let Some(ix) = index {
                let i = ix.n as usize - 1;
                let pick = if ix.last {
                    all.len().checked_sub(i + 1).map(|j| all.swap_remove(j))
                } else if i < all.len() {
                    Some(all.swap_remove(i))
                } else {
                    None
                };
                all = pick.into_iter().collect();
            }
            out.extend(all);
        }
        out
    }

    fn body(&self, transform: &BodyTransform) -> Vec<String> {
        let msg = self.ctx.message;
        if let BodyTransform::Raw = transform {
            let start = body_start(msg);
            return vec![String::from_utf8_lossy(&msg[start..]).into_owned()];
        }
        let parsed = self
            .parsed
            .get_or_init(|| mail_parser::MessageParser::default().parse(msg));
        let Some(parsed) = parsed else {
            return Vec::new();
        };
        let types: Vec<String> = match transform {
            BodyTransform::Content(t) => t
                .iter()
                .map(|t| self.expand(t).to_ascii_lowercase())
                .collect(),
            _ => Vec::new(),
        };
        let mut out = Vec::new();
        body_parts(parsed, transform, &types, &mut out, 0);
        out
    }
}

/// Where the body begins (after the first empty line, CRLF or bare LF).
fn body_start(msg: &[u8]) -> usize {
    if msg.starts_with(b"\r\n") {
        return 2;
    }
    if msg.starts_with(b"\n") {
        return 1;
    }
    let crlf = memchr::memmem::find(msg, b"\r\n\r\n").map(|i| i + 4);
    let lf = memchr::memmem::find(msg, b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(msg.len()),
    }
}

/// The parts `body` looks at (RFC 5173 §5): text parts (`:text`), or those whose type is in
/// `types` (`:content`), descending into multiparts and attached messages; a matching
/// message/rfc822 part gives the attached message's header.
fn body_parts(
    msg: &mail_parser::Message<'_>,
    transform: &BodyTransform,
    types: &[String],
    out: &mut Vec<String>,
    depth: usize,
) {
    use mail_parser::{MimeHeaders, PartType};
    if depth > 8 {
        return;
    }
    for part in &msg.parts {
        let (ctype, sub) = part
            .content_type()
            .map(|c| {
                (
                    c.ctype().to_ascii_lowercase(),
                    c.subtype().unwrap_or("").to_ascii_lowercase(),
                )
            })
            .unwrap_or_else(|| ("text".into(), "plain".into()));
        let wanted = match transform {
            BodyTransform::Text => ctype == "text",
            _ => types.iter().any(|t| match t.split_once('/') {
                _ if t.is_empty() => true,
                Some((a, b)) => *a == ctype && *b == sub,
                None => *t == ctype,
            }),
        };
        match &part.body {
            PartType::Message(nested) => {
                if wanted && !matches!(transform, BodyTransform::Text) {
                    let raw = nested.raw_message.as_ref();
                    out.push(String::from_utf8_lossy(&raw[..body_start(raw)]).into_owned());
                }
                body_parts(nested, transform, types, out, depth + 1);
            }
            PartType::Multipart(_) => {}
            PartType::Text(t) if wanted => out.push(t.to_string()),
            PartType::Html(h) if wanted => out.push(if matches!(transform, BodyTransform::Text) {
                strip_html(h)
            } else {
                h.to_string()
            }),
            PartType::Binary(b) | PartType::InlineBinary(b) if wanted => {
                out.push(String::from_utf8_lossy(b).into_owned())
            }
            _ => {}
        }
    }
}

/// HTML as text for `body :text`: tags dropped; block elements and line breaks become a
/// line break, inline ones nothing ("hello <b>html</b>" is "hello html").
fn strip_html(h: &str) -> String {
    const BLOCK: &[&str] = &[
        "br",
        "p",
        "div",
        "li",
        "tr",
        "td",
        "th",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "ul",
        "ol",
        "table",
        "blockquote",
        "pre",
        "hr",
    ];
    let mut out = String::with_capacity(h.len());
    let mut tag: Option<String> = None;
    for c in h.chars() {
        match (&mut tag, c) {
            (None, '<') => tag = Some(String::new()),
            (Some(t), '>') => {
                let name: String = t
                    .trim_start_matches('/')
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric())
                    .collect::<String>()
                    .to_ascii_lowercase();
                if BLOCK.contains(&name.as_str()) {
                    out.push('\n');
                }
                tag = None;
            }
            (Some(t), c) => {
                if t.len() < 16 {
                    t.push(c);
                }
            }
            (None, c) => out.push(c),
        }
    }
    out
}

/// Flags from a space-separated list.
pub fn split_flags(s: &str) -> Vec<String> {
    s.split_ascii_whitespace().map(str::to_string).collect()
}

fn dedup_flags(list: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for f in list {
        if !out.iter().any(|x| x.eq_ignore_ascii_case(&f)) {
            out.push(f);
        }
    }
    out
}

fn modify(v: &str, m: Modifier) -> String {
    match m {
        Modifier::Lower => v.to_lowercase(),
        Modifier::Upper => v.to_uppercase(),
        Modifier::LowerFirst | Modifier::UpperFirst => {
            let mut c = v.chars();
            match c.next() {
                Some(f) if m == Modifier::LowerFirst => f.to_lowercase().chain(c).collect(),
                Some(f) => f.to_uppercase().chain(c).collect(),
                None => String::new(),
            }
        }
        Modifier::QuoteWildcard => {
            let mut out = String::with_capacity(v.len());
            for c in v.chars() {
                if matches!(c, '*' | '?' | '\\') {
                    out.push('\\');
                }
                out.push(c);
            }
            out
        }
        Modifier::Length => v.chars().count().to_string(),
    }
}

/// The addresses (`local@domain`) in a header value; a group's members count, its name not.
pub fn addresses_in(value: &str) -> Vec<String> {
    let field = format!("To: {value}\r\n\r\n");
    let Some(m) = mail_parser::MessageParser::new().parse_headers(field.as_bytes()) else {
        return Vec::new();
    };
    let Some(list) = m.to() else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|a| a.address().map(str::to_string))
        .collect()
}

/// A part of an address (RFC 5228 §2.7.4; RFC 5233 with `+` as the separator); `None` when
/// the part does not exist (`:detail` without a `+`).
pub fn address_part(a: &str, part: AddressPart) -> Option<String> {
    let (local, domain) = match a.rsplit_once('@') {
        Some((l, d)) => (l, Some(d)),
        None => (a, None),
    };
    Some(match part {
        AddressPart::All => a.to_string(),
        AddressPart::Local => local.to_string(),
        AddressPart::Domain => domain?.to_string(),
        AddressPart::User => local.split_once('+').map_or(local, |(u, _)| u).to_string(),
        AddressPart::Detail => local.split_once('+')?.1.to_string(),
    })
}

fn parse_zone(z: &str) -> Option<FixedOffset> {
    let b = z.as_bytes();
    if b.len() != 5 || !(b[0] == b'+' || b[0] == b'-') || !b[1..].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let h: i32 = z[1..3].parse().ok()?;
    let m: i32 = z[3..5].parse().ok()?;
    let secs = (h * 3600 + m * 60) * if b[0] == b'-' { -1 } else { 1 };
    FixedOffset::east_opt(secs)
}

/// The date in a header value (for `Received`, the part after the last `;`).
fn parse_date(header: &str, value: &str) -> Option<chrono::DateTime<FixedOffset>> {
    let v = if header.eq_ignore_ascii_case("received") {
        value.rsplit_once(';').map_or(value, |(_, d)| d)
    } else {
        value
    };
    let d = mail_parser::DateTime::parse_rfc822(v.trim())?;
    if !d.is_valid() {
        return None;
    }
    let offset =
        (d.tz_hour as i32 * 3600 + d.tz_minute as i32 * 60) * if d.tz_before_gmt { -1 } else { 1 };
    let zone = FixedOffset::east_opt(offset)?;
    zone.with_ymd_and_hms(
        d.year as i32,
        d.month as u32,
        d.day as u32,
        d.hour as u32,
        d.minute as u32,
        d.second as u32,
    )
    .single()
}

/// A date part (RFC 5260 §4.2).
pub fn date_part(d: &chrono::DateTime<FixedOffset>, part: &str) -> Option<String> {
    let zone = {
        let s = d.offset().local_minus_utc();
        let sign = if s < 0 { '-' } else { '+' };
        let s = s.abs();
        format!("{sign}{:02}{:02}", s / 3600, (s % 3600) / 60)
    };
    Some(match part {
        "year" => format!("{:04}", d.year()),
        "month" => format!("{:02}", d.month()),
        "day" => format!("{:02}", d.day()),
        "date" => d.format("%Y-%m-%d").to_string(),
        "julian" => {
            let epoch = chrono::NaiveDate::from_ymd_opt(1858, 11, 17)?;
            (d.date_naive() - epoch).num_days().to_string()
        }
        "hour" => format!("{:02}", d.hour()),
        "minute" => format!("{:02}", d.minute()),
        "second" => format!("{:02}", d.second()),
        "time" => d.format("%H:%M:%S").to_string(),
        "iso8601" => {
            let z = if zone == "+0000" {
                "Z".to_string()
            } else {
                format!("{}:{}", &zone[..3], &zone[3..])
            };
            format!("{}{z}", d.format("%Y-%m-%dT%H:%M:%S"))
        }
        "std11" => format!("{} {zone}", d.format("%a, %d %b %Y %H:%M:%S")),
        "zone" => zone,
        "weekday" => d.weekday().num_days_from_sunday().to_string(),
        _ => return None,
    })
}
