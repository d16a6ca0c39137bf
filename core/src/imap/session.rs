//! The IMAP session loop and command handlers.
//!
//! State per RFC 9051 §3: not authenticated → authenticated → selected → logout. Untagged
//! updates from other sessions (new mail, flag changes, expunges) are merged into the
//! session's view by [`Session::sync`]; EXPUNGE responses are held back during FETCH, STORE
//! and SEARCH (RFC 9051 §7.5.1).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::sync::broadcast;
use tracing::Instrument;

use super::codec::{Frame, frame, parse};
use super::mime::{self, BinaryError};
use super::mutf7;
use super::response::{date_time, flag_list, literal, mailbox_name, string};
use super::search::{self, Candidate};
use super::sort;
use super::sort_keys::HeaderKeys;
use super::types::*;
use super::view::{Snapshot, View};
use crate::accounts;
use crate::blocking::Wait;
use crate::hooks::{HookCtx, HookPoint, Verdict};
use crate::net::Stream;
use crate::server::Shared;
use crate::store::MailStore;
use crate::store::{Change, Changes, FlagOp, Mailbox, MessageMeta, Placement, StoreError};

/// Output buffered before the session waits for the client to read it: FETCH responses
/// and pipelined commands are rendered at most this far ahead of the socket.
const OUT_HIGH: usize = 256 * 1024;

/// Largest literal before login (a user name or a password in a literal).
const LOGIN_LITERAL_MAX: u64 = 8 * 1024;

const SYSTEM_FLAGS: &str = "\\Answered \\Flagged \\Deleted \\Seen \\Draft";

struct Selected {
    mailbox: Mailbox,
    read_only: bool,
    /// Messages in sequence order (UID, flags, MODSEQ).
    msgs: View,
    /// Keywords announced to the client in FLAGS; a flag response never shows another
    /// before it is announced (RFC 9051 §7.3.5).
    keywords: Vec<String>,
    /// UID ranges (inclusive, ascending) that are `\Recent` in this session: the messages
    /// it was the first to see (SELECT claims them in the store), or, read-only, the ones
    /// no session has claimed yet (RFC 3501 §2.3.2). Empty in an IMAP4rev2 session.
    recent: Vec<(u32, u32)>,
    /// Searches whose result the client keeps up to date (RFC 5267 CONTEXT=SEARCH).
    live: Vec<LiveSearch>,
}

/// A `SEARCH`/`SORT RETURN (UPDATE)` result kept current with ADDTO/REMOVEFROM
/// (RFC 5267 §4.3).
struct LiveSearch {
    tag: String,
    uid: bool,
    key: SearchKey,
    /// The SORT criteria; `None` for SEARCH (mailbox order, context position 0).
    sort: Option<Vec<sort::Criterion>>,
    /// The result as the client knows it, as UIDs in the requested order.
    uids: Vec<u32>,
}

/// Most live searches one session keeps (RFC 5267 §4.3.1 asks for at least one); past
/// it a request gets `NO [NOUPDATE "tag"]` and its other return options.
const MAX_LIVE_SEARCHES: usize = 16;

impl LiveSearch {
    /// The ESEARCH lines that turn the client's result (`self.uids`) into `now`. `number`
    /// gives what the client calls a message (its UID, or its sequence number). SEARCH
    /// contexts use position 0 and sets in mailbox order; SORT contexts remove runs at their
    /// positions, then insert each new run where it belongs (RFC 5267 §4.3.3-4): the order
    /// of messages that stay never changes, since no sort key depends on flags.
    fn changes(&self, now: &[u32], number: &dyn Fn(u32) -> u32) -> String {
        let mut out = String::new();
        let kept: HashSet<u32> = now.iter().copied().collect();
        let had: HashSet<u32> = self.uids.iter().copied().collect();
        let line = |what: &str, pairs: &[(usize, Vec<u32>)]| {
            let body: Vec<String> = pairs
                .iter()
                .map(|(pos, ids)| {
                    let set = if self.sort.is_some() {
                        ordered_set(ids)
                    } else {
                        let mut sorted = ids.clone();
                        sorted.sort_unstable();
                        compress(&sorted)
                    };
                    format!("{pos} {set}")
                })
                .collect();
            format!(
                "* {} {what} ({})\r\n",
                esearch_head(&self.tag, self.uid),
                body.join(" ")
            )
        };
        let sorted = self.sort.is_some();
        // Removals: runs of the old list, at their position once earlier runs are gone.
        let mut removals: Vec<(usize, Vec<u32>)> = Vec::new();
        let mut removed = 0;
        let mut i = 0;
        while i < self.uids.len() {
            if kept.contains(&self.uids[i]) {
                i += 1;
                continue;
            }
            let start = i;
            let mut run = Vec::new();
            while i < self.uids.len() && !kept.contains(&self.uids[i]) {
                run.push(number(self.uids[i]));
                i += 1;
            }
            let pos = if sorted { start + 1 - removed } else { 0 };
            removed += run.len();
            match removals.last_mut() {
                Some(last) if !sorted => last.1.extend(run),
                _ => removals.push((pos, run)),
            }
        }
        if !removals.is_empty() {
            out.push_str(&line("REMOVEFROM", &removals));
        }
        // Additions: each new run at the position it has in `now`.
        let mut adds: Vec<(usize, Vec<u32>)> = Vec::new();
        for (idx, u) in now.iter().enumerate() {
            if had.contains(u) {
                continue;
            }
            let pos = if sorted { idx + 1 } else { 0 };
            match adds.last_mut() {
                Some(last) if !sorted || last.0 + last.1.len() == pos => last.1.push(number(*u)),
                _ => adds.push((pos, vec![number(*u)])),
            }
        }
        if !adds.is_empty() {
            out.push_str(&line("ADDTO", &adds));
        }
        out
    }
}

impl Selected {
    /// Whether `uid` is `\Recent` in this session.
    fn is_recent(&self, uid: u32) -> bool {
        let i = self.recent.partition_point(|r| r.1 < uid);
        self.recent.get(i).is_some_and(|r| r.0 <= uid)
    }

    /// How many messages of the view are `\Recent` (the RECENT response).
    fn recent_count(&self) -> usize {
        self.recent
            .iter()
            .map(|&(lo, hi)| {
                self.msgs.partition_uid(hi.saturating_add(1)) - self.msgs.partition_uid(lo)
            })
            .sum()
    }

    /// Take the messages above the store's `\Recent` mark up to `last` (the view's highest
    /// UID): claimed for this session when it is read-write, only looked at when read-only.
    async fn take_recent(&mut self, store: &dyn MailStore, last: u32) {
        let Ok(mark) = store
            .claim_recent(self.mailbox.id, last, !self.read_only)
            .await
        else {
            return;
        };
        let from = self.recent.last().map_or(mark, |r| r.1.max(mark)) + 1;
        if from > last {
            return;
        }
        match self.recent.last_mut() {
            Some(r) if r.1 + 1 == from => r.1 = last,
            _ => self.recent.push((from, last)),
        }
    }

    /// `flags`, with `\Recent` added when `uid` is recent in this session.
    fn shown_flags(&self, uid: u32, flags: &[String]) -> Vec<String> {
        let mut v = flags.to_vec();
        if self.is_recent(uid) {
            v.push("\\Recent".into());
        }
        v
    }

    /// The untagged FLAGS and PERMANENTFLAGS lines announcing the keywords among `flags` that
    /// the client has not been told of yet (they join the announced set), or nothing.
    fn announce<'a>(&mut self, flags: impl IntoIterator<Item = &'a String>) -> Option<String> {
        let before = self.keywords.len();
        for f in flags {
            if !f.starts_with('\\') && !self.keywords.iter().any(|k| k.eq_ignore_ascii_case(f)) {
                self.keywords.push(f.clone());
            }
        }
        (self.keywords.len() > before).then(|| flags_lines(&self.keywords, self.read_only))
    }
}

/// `* FLAGS (…)` and `* OK [PERMANENTFLAGS (… \*)]` for the system flags and `keywords`.
fn flags_lines(keywords: &[String], read_only: bool) -> String {
    let kw: String = keywords.iter().map(|k| format!(" {k}")).collect();
    if read_only {
        return format!("* FLAGS ({SYSTEM_FLAGS}{kw})\r\n");
    }
    format!(
        "* FLAGS ({SYSTEM_FLAGS}{kw})\r\n* OK [PERMANENTFLAGS ({SYSTEM_FLAGS}{kw} \\*)] Flags permitted\r\n"
    )
}

enum Pending {
    None,
    /// AUTHENTICATE PLAIN waiting for the client's response line.
    AuthPlain(String),
    /// IDLE with this tag, until DONE.
    Idle(String),
}

struct Session {
    shared: Arc<Shared>,
    stream: Stream,
    peer: SocketAddr,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    acked: usize,
    user: Option<String>,
    selected: Option<Selected>,
    rev2: bool,
    /// `ENABLE UTF8=ACCEPT` (RFC 6855): mailbox names are UTF-8 on the wire.
    utf8: bool,
    condstore: bool,
    qresync: bool,
    errors: usize,
    saved: Vec<u32>,
    watch: Option<Changes>,
    pending: Pending,
    /// Changes of the selected mailbox not yet applied to its view, in feed order.
    changes: Vec<Arc<Change>>,
    /// Changes were lost (the feed lagged): the next sync re-reads the mailbox.
    reread: bool,
    logout: bool,
    /// A write failed or timed out: the client is gone, nothing more is rendered for it.
    broken: bool,
    starttls: bool,
    /// This session's slot among its user's `imap.max_connections_per_user`; released when
    /// the session is dropped, however it ends.
    _user_slot: Option<crate::store::lease::Held>,
}

type CmdResult = Result<String, Resp>;

/// A tagged NO/BAD.
enum Resp {
    No(String),
    Bad(String),
}

fn no(s: impl Into<String>) -> Resp {
    Resp::No(s.into())
}

fn store_err(e: StoreError) -> Resp {
    match e {
        StoreError::NotFound(_) => no("[NONEXISTENT] No such mailbox"),
        StoreError::Exists(_) => no("[ALREADYEXISTS] Mailbox already exists"),
        StoreError::Invalid(t) => no(format!("[CANNOT] {t}")),
        other => {
            tracing::error!(error = %other, "store error");
            no("[SERVERBUG] Internal error, try again later")
        }
    }
}

/// Serve one IMAP connection.
pub async fn serve(
    shared: Arc<Shared>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    listener: crate::listener::Listener,
    implicit_tls: bool,
) {
    let span = tracing::info_span!("imap", session = %crate::net::session_id(), peer = %peer, listener = listener.name());
    async move {
        let Some(stream) = crate::net::accept_stream(tcp, implicit_tls, &shared.tls.imap).await
        else {
            return;
        };
        let mut s = Session {
            shared,
            stream,
            peer,
            inbuf: Vec::new(),
            out: Vec::with_capacity(4096),
            acked: 0,
            user: None,
            selected: None,
            rev2: false,
            utf8: false,
            condstore: false,
            qresync: false,
            errors: 0,
            saved: Vec::new(),
            watch: None,
            pending: Pending::None,
            changes: Vec::new(),
            reread: false,
            logout: false,
            broken: false,
            starttls: false,
            _user_slot: None,
        };
        if let Err(e) = s.run().await {
            tracing::debug!(error = %e, "session ended with I/O error");
        }
    }
    .instrument(span)
    .await
}

impl Session {
    fn capabilities(&self) -> String {
        let mut c = String::from("IMAP4rev1 IMAP4rev2 LITERAL+ SASL-IR ENABLE ID");
        if self.user.is_none() {
            if !self.stream.is_tls() {
                c.push_str(" STARTTLS");
            }
            if self.auth_allowed() {
                c.push_str(" AUTH=PLAIN");
            } else {
                c.push_str(" LOGINDISABLED");
            }
        } else {
            c.push_str(
                " IDLE NAMESPACE UIDPLUS MOVE UNSELECT CHILDREN LIST-EXTENDED LIST-STATUS SPECIAL-USE CREATE-SPECIAL-USE CONDSTORE QRESYNC ESEARCH SEARCHRES CONTEXT=SEARCH CONTEXT=SORT MULTIAPPEND CATENATE SORT SORT=DISPLAY ESORT THREAD=ORDEREDSUBJECT THREAD=REFERENCES STATUS=SIZE BINARY UTF8=ACCEPT",
            );
        }
        c
    }

    /// Whether mailbox names are UTF-8 on the wire (`UTF8=ACCEPT` or `IMAP4rev2` enabled)
    /// rather than modified UTF-7 (an IMAP4rev1 client).
    fn utf8_names(&self) -> bool {
        self.utf8 || self.rev2
    }

    /// Write a stored (UTF-8) mailbox name as this client reads names.
    fn put_name(&self, out: &mut Vec<u8>, name: &str) {
        if self.utf8_names() {
            mailbox_name(out, name);
        } else {
            string(out, mutf7::encode(name).as_bytes());
        }
    }

    /// Decode the modified UTF-7 mailbox names (and LIST reference and patterns) of a
    /// command from an IMAP4rev1 client into the store's UTF-8.
    fn decode_names(&self, mut command: Command) -> Result<Command, Resp> {
        fn d(name: &mut String) -> Result<(), Resp> {
            *name = mutf7::decode(name).map_err(|_| {
                no(
                    "[CANNOT] Mailbox name is not valid modified UTF-7 (RFC 3501 5.1.3); \
                     ENABLE UTF8=ACCEPT to use UTF-8 names",
                )
            })?;
            Ok(())
        }
        match &mut command {
            Command::Select { mailbox, .. }
            | Command::Append { mailbox, .. }
            | Command::Copy { mailbox, .. }
            | Command::Create(mailbox, _)
            | Command::Delete(mailbox)
            | Command::Subscribe(mailbox)
            | Command::Unsubscribe(mailbox)
            | Command::Status(mailbox, _) => d(mailbox)?,
            Command::Rename(a, b) => {
                d(a)?;
                d(b)?;
            }
            Command::List {
                reference,
                patterns,
                ..
            } => {
                d(reference)?;
                patterns.iter_mut().try_for_each(d)?;
            }
            _ => {}
        }
        Ok(command)
    }

    fn auth_allowed(&self) -> bool {
        self.stream.is_tls() || self.shared.config.imap.allow_plaintext_auth
    }

    fn untagged(&mut self, s: &str) {
        self.out.extend_from_slice(b"* ");
        self.out.extend_from_slice(s.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// Write what is buffered, waiting for the client to take it (back-pressure). A write
    /// that fails, or makes no progress for `imap.idle_timeout`, ends the session: the output
    /// is dropped and [`Self::broken`] set, so no command renders more for a vanished client.
    async fn flush(&mut self) -> std::io::Result<()> {
        if self.broken {
            self.out.clear();
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        if !self.out.is_empty() {
            let timeout = self.shared.config.imap.idle_timeout;
            let written = tokio::time::timeout(timeout, async {
                self.stream.write_all(&self.out).await?;
                self.stream.flush().await
            })
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
            self.out.clear();
            if self.out.capacity() > OUT_HIGH * 2 {
                // One big FETCH must not leave its buffer with an idle session.
                self.out = Vec::with_capacity(4096);
            }
            if let Err(e) = written {
                self.broken = true;
                return Err(e);
            }
        }
        Ok(())
    }

    /// A CONDSTORE-enabling command (RFC 7162 §3.1: FETCH or SEARCH with MODSEQ, STORE with
    /// UNCHANGEDSINCE, STATUS with HIGHESTMODSEQ): from now on untagged FETCH responses carry
    /// MODSEQ, and the first time, with a mailbox selected, the client is told its
    /// HIGHESTMODSEQ (it did not ask for it at SELECT).
    fn enable_condstore(&mut self) {
        if self.condstore {
            return;
        }
        self.condstore = true;
        if let Some(sel) = &self.selected {
            let line = format!("OK [HIGHESTMODSEQ {}] Highest", sel.mailbox.highest_modseq);
            self.untagged(&line);
        }
    }

    /// Write out the buffer once it holds [`OUT_HIGH`] bytes; false when the client is gone.
    async fn drain_output(&mut self) -> bool {
        !self.broken && (self.out.len() < OUT_HIGH || self.flush().await.is_ok())
    }

    async fn run(&mut self) -> std::io::Result<()> {
        let greet = format!(
            "OK [CAPABILITY {}] {} Corvus IMAP ready",
            self.capabilities(),
            self.shared.config.hostname
        );
        self.untagged(&greet);
        let started = Instant::now();
        loop {
            self.process().await?;
            if self.logout {
                return self.flush().await;
            }
            if self.starttls {
                self.starttls = false;
                self.flush().await?;
                self.inbuf.clear();
                if !self.stream.start_tls(&self.shared.tls.imap).await {
                    return Ok(());
                }
                continue;
            }
            self.flush().await?;
            let cfg = &self.shared.config.imap;
            let timeout = if self.user.is_none() {
                cfg.login_timeout
                    .saturating_sub(started.elapsed())
                    .max(Duration::from_millis(1))
            } else {
                cfg.idle_timeout
            };
            let idle = matches!(self.pending, Pending::Idle(_));
            tokio::select! {
                r = tokio::time::timeout(timeout, self.stream.read_more(&mut self.inbuf)) => match r {
                    Ok(Ok(0)) => return Ok(()),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e),
                    Err(_) => {
                        self.untagged("BYE Autologout; idle for too long");
                        return self.flush().await;
                    }
                },
                ev = recv_event(&mut self.watch), if idle => {
                    let open = ev.is_some();
                    match ev {
                        Some(Some(change)) => self.take_change(change),
                        Some(None) => self.reread = true, // changes lost: re-read
                        None => {}
                    }
                    if open {
                        self.sync(true).await;
                    }
                }
                _ = self.shared.shutdown.cancelled(), if self.inbuf.is_empty() => {
                    self.untagged("BYE [UNAVAILABLE] Server shutting down");
                    return self.flush().await;
                }
            }
        }
    }

    /// Handle every complete command in the buffer.
    async fn process(&mut self) -> std::io::Result<()> {
        loop {
            if self.logout || self.starttls {
                return Ok(());
            }
            // Continuation lines (AUTHENTICATE response, IDLE's DONE).
            if !matches!(self.pending, Pending::None) {
                let Some(nl) = memchr::memchr(b'\n', &self.inbuf) else {
                    if self.inbuf.len() > 64 * 1024 {
                        self.untagged("BYE Line too long");
                        self.logout = true;
                    }
                    return Ok(());
                };
                let line: Vec<u8> = self.inbuf.drain(..nl + 1).collect();
                let text = String::from_utf8_lossy(&line).trim().to_string();
                match std::mem::replace(&mut self.pending, Pending::None) {
                    Pending::Idle(tag) => {
                        if text.eq_ignore_ascii_case("DONE") {
                            self.sync(true).await;
                            self.out.extend_from_slice(
                                format!("{tag} OK IDLE terminated\r\n").as_bytes(),
                            );
                        } else {
                            self.out.extend_from_slice(
                                format!("{tag} BAD Expected DONE\r\n").as_bytes(),
                            );
                        }
                    }
                    Pending::AuthPlain(tag) => {
                        let r = if text == "*" {
                            Err(Resp::Bad("Authentication cancelled".into()))
                        } else {
                            self.auth_plain(&text).await
                        };
                        self.finish(&tag, r);
                    }
                    Pending::None => {}
                }
                continue;
            }
            let cfg = &self.shared.config.imap;
            // Before login a command needs no more than a user name and a password: small
            // literals, and one command no longer than a line (chained literals included).
            let (max_literal, max_command) = if self.user.is_none() {
                (LOGIN_LITERAL_MAX, cfg.max_line as u64)
            } else {
                (cfg.max_literal, cfg.max_literal + cfg.max_line as u64)
            };
            match frame(
                &self.inbuf,
                self.acked,
                cfg.max_line,
                max_literal,
                max_command,
            ) {
                Frame::NeedMore { continuation } => {
                    if continuation {
                        self.out.extend_from_slice(b"+ Ready for literal data\r\n");
                        self.acked += 1;
                    }
                    return Ok(());
                }
                Frame::LineTooLong => {
                    self.untagged("BYE Command line too long");
                    self.logout = true;
                    return Ok(());
                }
                Frame::LiteralTooBig { tag, nonsync, end } => {
                    if nonsync {
                        self.untagged("BYE [TOOBIG] Literal too large");
                        self.logout = true;
                        return Ok(());
                    }
                    // Drop the command up to the refused announcement (the client will not
                    // send that literal) and go on with whatever follows it.
                    self.inbuf.drain(..end);
                    self.acked = 0;
                    self.out.extend_from_slice(
                        format!("{tag} NO [TOOBIG] Literal too large\r\n").as_bytes(),
                    );
                }
                Frame::Complete(n) => {
                    let bytes: Vec<u8> = self.inbuf.drain(..n).collect();
                    self.acked = 0;
                    match parse(&bytes) {
                        Ok(t) => {
                            drop(bytes);
                            self.command(t).await;
                            // Pipelined commands wait for the client to read earlier answers.
                            if !self.drain_output().await {
                                return Err(std::io::ErrorKind::BrokenPipe.into());
                            }
                        }
                        Err(e) if e.is_no() => {
                            self.out.extend_from_slice(
                                format!("{} NO {}\r\n", e.tag, e.text).as_bytes(),
                            );
                        }
                        Err(e) => {
                            self.errors += 1;
                            self.out.extend_from_slice(
                                format!("{} BAD {}\r\n", e.tag, e.text).as_bytes(),
                            );
                            if self.errors >= self.shared.config.imap.max_errors {
                                self.untagged("BYE Too many errors");
                                self.logout = true;
                            }
                        }
                    }
                }
            }
        }
    }

    fn finish(&mut self, tag: &str, r: CmdResult) {
        let line = match r {
            Ok(t) => format!("{tag} OK {t}\r\n"),
            Err(Resp::No(t)) => format!("{tag} NO {t}\r\n"),
            Err(Resp::Bad(t)) => {
                self.errors += 1;
                format!("{tag} BAD {t}\r\n")
            }
        };
        self.out.extend_from_slice(line.as_bytes());
    }

    async fn command(&mut self, t: Tagged) {
        let Tagged { tag, command } = t;
        let authed = self.user.is_some();
        let r: CmdResult = match command {
            Command::Capability => {
                let c = format!("CAPABILITY {}", self.capabilities());
                self.untagged(&c);
                Ok("CAPABILITY completed".into())
            }
            Command::Noop => {
                self.sync(true).await;
                Ok("NOOP completed".into())
            }
            Command::Logout => {
                self.untagged("BYE Logging out");
                self.logout = true;
                Ok("LOGOUT completed".into())
            }
            Command::Id(_) => {
                self.untagged(&format!(
                    "ID (\"name\" \"Corvus\" \"version\" \"{}\")",
                    env!("CARGO_PKG_VERSION")
                ));
                Ok("ID completed".into())
            }
            Command::StartTls if self.stream.is_tls() => {
                Err(Resp::Bad("TLS already active".into()))
            }
            Command::StartTls if authed => Err(Resp::Bad("STARTTLS only before login".into())),
            Command::StartTls => {
                self.finish(&tag, Ok("Begin TLS negotiation now".into()));
                self.starttls = true;
                return;
            }
            Command::Login(..) | Command::Authenticate(..) if authed => {
                Err(Resp::Bad("Already authenticated".into()))
            }
            Command::Login(_, _) | Command::Authenticate(..) if !self.auth_allowed() => Err(no(
                "[PRIVACYREQUIRED] Use STARTTLS or the TLS port before logging in",
            )),
            Command::Login(u, p) => self.login(u, p, "LOGIN").await,
            Command::Authenticate(mech, initial) => {
                if mech != "PLAIN" {
                    Err(no("[CANNOT] Unsupported mechanism"))
                } else if let Some(ir) = initial {
                    self.auth_plain(&ir).await
                } else {
                    self.out.extend_from_slice(b"+ \r\n");
                    self.pending = Pending::AuthPlain(tag);
                    return;
                }
            }
            Command::Enable(caps) if authed => {
                let mut on = Vec::new();
                for c in caps {
                    match c.as_str() {
                        "IMAP4REV2" => {
                            self.rev2 = true;
                            on.push("IMAP4rev2");
                        }
                        "CONDSTORE" => {
                            self.condstore = true;
                            on.push("CONDSTORE");
                        }
                        "UTF8=ACCEPT" => {
                            self.utf8 = true;
                            on.push("UTF8=ACCEPT");
                        }
                        "QRESYNC" => {
                            self.qresync = true;
                            self.condstore = true;
                            on.push("QRESYNC");
                        }
                        _ => {}
                    }
                }
                self.untagged(format!("ENABLED {}", on.join(" ")).trim_end());
                Ok("ENABLE completed".into())
            }
            Command::Enable(_) => Err(Resp::Bad("Log in first".into())),
            _ if !authed => Err(Resp::Bad("Log in first".into())),
            command if !self.utf8_names() && has_names(&command) => {
                match self.decode_names(command) {
                    Ok(command) => return self.named(tag, command).await,
                    Err(e) => Err(e),
                }
            }
            command => return self.named(tag, command).await,
        };
        self.finish(&tag, r);
    }

    /// The commands of the authenticated and selected states, mailbox names in UTF-8.
    async fn named(&mut self, tag: String, command: Command) {
        let selected = self.selected.is_some();
        let r: CmdResult = match command {
            Command::Select {
                mailbox,
                read_only,
                condstore,
                qresync,
            } => self.select(mailbox, read_only, condstore, qresync).await,
            Command::Create(name, special) => self.create(&name, special.as_deref()).await,
            Command::Delete(name) => self.delete(&name).await,
            Command::Rename(a, b) => self.rename(&a, &b).await,
            Command::Subscribe(n) => self
                .shared
                .store
                .set_subscribed(self.me(), &n, true)
                .await
                .map_err(store_err)
                .map(|_| "SUBSCRIBE completed".into()),
            Command::Unsubscribe(n) => self
                .shared
                .store
                .set_subscribed(self.me(), &n, false)
                .await
                .map_err(store_err)
                .map(|_| "UNSUBSCRIBE completed".into()),
            Command::List {
                lsub,
                reference,
                patterns,
                select,
                ret,
                status,
            } => {
                self.list(
                    lsub,
                    &reference,
                    &patterns,
                    &select,
                    &ret,
                    status.as_deref(),
                )
                .await
            }
            Command::Namespace => {
                self.untagged("NAMESPACE ((\"\" \"/\")) NIL NIL");
                Ok("NAMESPACE completed".into())
            }
            Command::Status(name, items) => self
                .status(&name, &items)
                .await
                .map(|_| "STATUS completed".into()),
            Command::Append { mailbox, messages } => {
                if messages.iter().any(|m| m.utf8) && !self.utf8_names() {
                    Err(Resp::Bad(
                        "APPEND with UTF8 data needs ENABLE UTF8=ACCEPT first (RFC 6855)".into(),
                    ))
                } else {
                    self.append(&mailbox, messages).await
                }
            }
            Command::Idle => {
                self.sync(true).await;
                self.out.extend_from_slice(b"+ idling\r\n");
                self.pending = Pending::Idle(tag);
                return;
            }
            _ if !selected => Err(Resp::Bad("No mailbox selected".into())),
            Command::Close => {
                let sel = self.selected.take().expect("selected");
                self.saved.clear();
                if !sel.read_only {
                    // The stored flags, not this session's view: another session may have
                    // set or cleared \Deleted since this one last synchronised.
                    let uids: Vec<u32> = self
                        .shared
                        .store
                        .messages(sel.mailbox.id)
                        .await
                        .unwrap_or_default()
                        .iter()
                        .filter(|m| has_flag(m, "\\Deleted"))
                        .map(|m| m.uid)
                        .collect();
                    let user = self.user.clone().unwrap_or_default();
                    if let Err(e) = self
                        .shared
                        .store
                        .expunge(&user, sel.mailbox.id, &uids)
                        .await
                    {
                        tracing::error!(error = %e, "expunge on CLOSE failed");
                    }
                    let _ = self.shared.store.commit().await;
                }
                Ok("CLOSE completed".into())
            }
            Command::Unselect => {
                self.selected = None;
                self.saved.clear();
                Ok("UNSELECT completed".into())
            }
            Command::Expunge(set) => self.expunge(set).await,
            Command::Search { uid, ret, key } => self.search(&tag, uid, ret, key).await,
            Command::CancelUpdate(tags) => {
                let sel = self.selected.as_mut().expect("selected");
                let before = sel.live.len();
                sel.live.retain(|l| !tags.contains(&l.tag));
                if sel.live.len() + tags.len() > before {
                    // RFC 5267 §4.4: a tag with no update in progress.
                    Err(no("Unknown tag"))
                } else {
                    Ok("Updates cancelled".into())
                }
            }
            Command::Sort {
                uid,
                ret,
                criteria,
                key,
            } => self.sort(&tag, uid, ret, &criteria, key).await,
            Command::Thread {
                uid,
                references,
                key,
            } => self.thread(uid, references, key).await,
            Command::Fetch {
                uid,
                set,
                items,
                changed_since,
                vanished,
            } => self.fetch(uid, &set, &items, changed_since, vanished).await,
            Command::Store {
                uid,
                set,
                mode,
                silent,
                flags,
                unchanged_since,
            } => {
                self.store(uid, &set, mode, silent, flags, unchanged_since)
                    .await
            }
            Command::Copy {
                uid,
                set,
                mailbox,
                is_move,
            } => self.copy(uid, &set, &mailbox, is_move).await,
            // Handled by `command` before it gets here.
            Command::Capability
            | Command::Noop
            | Command::Logout
            | Command::StartTls
            | Command::Authenticate(..)
            | Command::Login(..)
            | Command::Enable(_)
            | Command::Id(_) => Err(Resp::Bad("Unexpected command".into())),
        };
        self.finish(&tag, r);
    }

    /// The logged-in user ("" before login).
    fn me(&self) -> &str {
        self.user.as_deref().unwrap_or_default()
    }

    async fn login(&mut self, user: String, pass: String, mech: &str) -> CmdResult {
        let ip = self.peer.ip();
        let Ok(attempt) = self.shared.auth_throttle.begin(ip, &user).await else {
            tracing::info!(user = %user, "login refused: too many failures");
            return Err(no("[UNAVAILABLE] Too many failed logins, try again later"));
        };
        // Cached: clients log in again and again, and every argon2 check costs tens of
        // milliseconds of CPU and a 19 MiB buffer (which the allocator keeps).
        let valid = self
            .shared
            .credential_cache
            .verify(&self.shared.store, &user, &pass)
            .await
            .ok()
            .flatten();
        let mut ctx = HookCtx::new(HookPoint::Auth, crate::listener::Listener::Imap, ip);
        ctx.tls = self.stream.is_tls();
        ctx.credentials = Some(crate::hooks::Credentials {
            username: user.clone(),
            password: pass,
            mechanism: mech.to_string(),
            valid: valid.is_some(),
        });
        let outcome = self.shared.hooks.run(&ctx);
        let account = match outcome.verdict {
            Verdict::Accept => {
                accounts::hook_accepted(
                    &self.shared.store,
                    &self.shared.config.domains,
                    &user,
                    valid,
                )
                .await
            }
            Verdict::Continue => valid,
            _ => None,
        };
        match account {
            Some(a) => {
                attempt.succeed();
                let max = self.shared.config.imap.max_connections_per_user;
                // Slots are leases in the store: the limit holds across every node.
                match crate::store::lease::take_slot(&self.shared.store, &format!("imap:{a}"), max)
                    .await
                {
                    Ok(Some(slot)) => self._user_slot = Some(slot),
                    Ok(None) => {
                        tracing::warn!(user = %a, max, "login refused: too many sessions for this user");
                        return Err(no(format!(
                            "[UNAVAILABLE] Too many connections for this user ({max} of {max} in use); close one and retry"
                        )));
                    }
                    Err(e) => return Err(store_err(e)),
                }
                tracing::info!(user = %a, "logged in");
                self.watch = Some(self.shared.store.watch(&a));
                self.user = Some(a);
                Ok(format!("[CAPABILITY {}] Logged in", self.capabilities()))
            }
            None => {
                attempt.fail();
                tracing::info!(user = %user, "login failed");
                tokio::time::sleep(Duration::from_millis(300)).await;
                Err(no("[AUTHENTICATIONFAILED] Invalid credentials"))
            }
        }
    }

    async fn auth_plain(&mut self, b64: &str) -> CmdResult {
        let creds = crate::sasl::plain(b64).map_err(|e| Resp::Bad(e.to_string()))?;
        if creds.proxies() {
            if let Ok(attempt) = self
                .shared
                .auth_throttle
                .begin(self.peer.ip(), &creds.authcid)
                .await
            {
                attempt.fail();
            }
            return Err(no("[AUTHORIZATIONFAILED] Proxy authentication not allowed"));
        }
        self.login(creds.authcid, creds.password, "PLAIN").await
    }

    fn check_name(name: &str) -> Result<(), Resp> {
        let bad = name.is_empty()
            || name.len() > 255
            || name.starts_with('/')
            || name.ends_with('/')
            || name.contains("//")
            || name.split('/').any(|c| c == "." || c == "..")
            || name.contains(['%', '*', '\0', '\r', '\n'])
            || name.chars().any(char::is_control);
        if bad {
            Err(no("[CANNOT] Invalid mailbox name"))
        } else {
            Ok(())
        }
    }

    async fn create(&mut self, name: &str, special: Option<&str>) -> CmdResult {
        let name = name.trim_end_matches('/');
        Self::check_name(name)?;
        if name.eq_ignore_ascii_case("INBOX") {
            return Err(no("[ALREADYEXISTS] INBOX exists"));
        }
        // RFC 6154 attributes, stored in their canonical spelling.
        let special = match special {
            None => None,
            Some(s) => Some(
                [
                    "\\Sent",
                    "\\Drafts",
                    "\\Trash",
                    "\\Junk",
                    "\\Archive",
                    "\\All",
                    "\\Flagged",
                ]
                .iter()
                .find(|x| x.eq_ignore_ascii_case(s))
                .map(|x| x.to_string())
                .ok_or_else(|| no("[USEATTR] Unsupported special-use attribute"))?,
            ),
        };
        // Create missing parents too (RFC 9051 §6.3.4).
        let user = self.user.clone().unwrap_or_default();
        if self
            .shared
            .store
            .mailbox(&user, name)
            .await
            .map_err(store_err)?
            .is_some()
        {
            return Err(no("[ALREADYEXISTS] Mailbox already exists"));
        }
        self.create_parents(&user, name).await?;
        self.shared
            .store
            .create_mailbox(&user, name, special.as_deref())
            .await
            .map_err(store_err)?;
        Ok("CREATE completed".into())
    }

    async fn delete(&mut self, name: &str) -> CmdResult {
        if name.eq_ignore_ascii_case("INBOX") {
            return Err(no("[CANNOT] INBOX cannot be deleted"));
        }
        if self
            .selected
            .as_ref()
            .is_some_and(|s| s.mailbox.name == name)
        {
            self.selected = None;
        }
        self.shared
            .store
            .delete_mailbox(self.me(), name)
            .await
            .map_err(store_err)?;
        Ok("DELETE completed".into())
    }

    async fn rename(&mut self, a: &str, b: &str) -> CmdResult {
        let b = b.trim_end_matches('/');
        Self::check_name(b)?;
        let user = self.user.clone().unwrap_or_default();
        if self
            .shared
            .store
            .mailbox(&user, a)
            .await
            .map_err(store_err)?
            .is_none()
        {
            return Err(no("[NONEXISTENT] No such mailbox"));
        }
        if self
            .shared
            .store
            .mailbox(&user, b)
            .await
            .map_err(store_err)?
            .is_some()
            || b.eq_ignore_ascii_case("INBOX")
        {
            return Err(no("[ALREADYEXISTS] Mailbox already exists"));
        }
        let a_prefix = format!("{a}/");
        if b.starts_with(&a_prefix) {
            return Err(no("[CANNOT] Cannot move a mailbox into itself"));
        }
        // Create the superior names the new name needs (RFC 9051 §6.3.6).
        self.create_parents(&user, b).await?;
        self.shared
            .store
            .rename_mailbox(self.me(), a, b)
            .await
            .map_err(store_err)?;
        Ok("RENAME completed".into())
    }

    /// Create the missing superior hierarchy levels of `name` as mailboxes.
    async fn create_parents(&self, user: &str, name: &str) -> Result<(), Resp> {
        let parts: Vec<&str> = name.split('/').collect();
        for i in 1..parts.len() {
            let parent = parts[..i].join("/");
            if self
                .shared
                .store
                .mailbox(user, &parent)
                .await
                .map_err(store_err)?
                .is_none()
            {
                match self.shared.store.create_mailbox(user, &parent, None).await {
                    Ok(_) | Err(StoreError::Exists(_)) => {}
                    Err(e) => return Err(store_err(e)),
                }
            }
        }
        Ok(())
    }

    async fn list(
        &mut self,
        lsub: bool,
        reference: &str,
        patterns: &[String],
        select: &[String],
        ret: &[String],
        status: Option<&[StatusItem]>,
    ) -> CmdResult {
        let user = self.user.clone().unwrap_or_default();
        if patterns.len() == 1 && patterns[0].is_empty() && !lsub {
            self.untagged("LIST (\\Noselect) \"/\" \"\"");
            return Ok("LIST completed".into());
        }
        let mut boxes = self
            .shared
            .store
            .mailboxes(&user)
            .await
            .map_err(store_err)?;
        boxes.sort_by(|a, b| (a.name != "INBOX", &a.name).cmp(&(b.name != "INBOX", &b.name)));
        let names: HashSet<String> = boxes.iter().map(|m| m.name.clone()).collect();
        let subscribed_only = lsub || select.iter().any(|s| s == "SUBSCRIBED");
        let special_only = select.iter().any(|s| s == "SPECIAL-USE");
        let want_special = ret.iter().any(|r| r == "SPECIAL-USE") || special_only || !lsub;
        let want_subscribed =
            ret.iter().any(|r| r == "SUBSCRIBED") || select.iter().any(|s| s == "SUBSCRIBED");
        let full_patterns: Vec<String> =
            patterns.iter().map(|p| format!("{reference}{p}")).collect();
        let matches = |name: &str| full_patterns.iter().any(|p| wildmatch(p, name));
        let subscriptions: HashSet<String> = if want_subscribed || subscribed_only {
            self.shared
                .store
                .subscriptions(self.me())
                .await
                .map_err(store_err)?
                .into_iter()
                .collect()
        } else {
            HashSet::new()
        };
        if subscribed_only {
            let recursive = select.iter().any(|s| s == "RECURSIVEMATCH");
            let lines = subscribed_lines(
                lsub,
                recursive,
                &subscriptions,
                &boxes,
                &names,
                &matches,
                want_special,
            );
            for (name, attrs, childinfo) in lines {
                let mut line = format!(
                    "* {} ({}) \"/\" ",
                    if lsub { "LSUB" } else { "LIST" },
                    attrs.join(" ")
                )
                .into_bytes();
                self.put_name(&mut line, &name);
                if childinfo {
                    line.extend_from_slice(b" (\"CHILDINFO\" (\"SUBSCRIBED\"))");
                }
                line.extend_from_slice(b"\r\n");
                self.out.extend_from_slice(&line);
                if let Some(items) = status
                    && let Some(mb) = boxes.iter().find(|m| m.name == name)
                {
                    self.status_of(mb, items).await?;
                }
            }
            return Ok(format!("{} completed", if lsub { "LSUB" } else { "LIST" }));
        }
        // Levels of hierarchy without a mailbox of their own (a parent that was deleted)
        // are listed as \Noselect when the pattern stops at them, so that a client
        // browsing level by level with "%" still finds the children (RFC 9051 §6.3.9).
        let mut missing: Vec<String> = Vec::new();
        if !special_only && (lsub || select.is_empty()) {
            for mb in &boxes {
                if matches(&mb.name) {
                    continue;
                }
                let mut end = 0;
                while let Some(i) = mb.name[end..].find('/') {
                    let parent = &mb.name[..end + i];
                    end += i + 1;
                    if !names.contains(parent)
                        && !missing.iter().any(|m| m == parent)
                        && matches(parent)
                    {
                        missing.push(parent.to_string());
                    }
                }
            }
        }
        missing.sort();
        for name in &missing {
            let mut line = format!(
                "* {} (\\Noselect \\HasChildren) \"/\" ",
                if lsub { "LSUB" } else { "LIST" }
            )
            .into_bytes();
            self.put_name(&mut line, name);
            line.extend_from_slice(b"\r\n");
            self.out.extend_from_slice(&line);
        }
        for mb in &boxes {
            if !matches(&mb.name) {
                continue;
            }
            if special_only && mb.special_use.is_none() {
                continue;
            }
            let has_children = names
                .iter()
                .any(|n| n.starts_with(&format!("{}/", mb.name)));
            let mut attrs = vec![
                if has_children {
                    "\\HasChildren"
                } else {
                    "\\HasNoChildren"
                }
                .to_string(),
            ];
            if want_subscribed && subscriptions.contains(&mb.name) {
                attrs.push("\\Subscribed".into());
            }
            if want_special && let Some(s) = &mb.special_use {
                attrs.push(s.clone());
            }
            let mut line = Vec::new();
            line.extend_from_slice(
                format!(
                    "* {} ({}) \"/\" ",
                    if lsub { "LSUB" } else { "LIST" },
                    attrs.join(" ")
                )
                .as_bytes(),
            );
            self.put_name(&mut line, &mb.name);
            line.extend_from_slice(b"\r\n");
            self.out.extend_from_slice(&line);
            if let Some(items) = status {
                self.status_of(mb, items).await?;
            }
        }
        Ok(format!("{} completed", if lsub { "LSUB" } else { "LIST" }))
    }

    async fn status(&mut self, name: &str, items: &[StatusItem]) -> Result<(), Resp> {
        let user = self.user.clone().unwrap_or_default();
        let mb = self
            .shared
            .store
            .mailbox(&user, name)
            .await
            .map_err(store_err)?
            .ok_or_else(|| no("[NONEXISTENT] No such mailbox"))?;
        self.status_of(&mb, items).await
    }

    async fn status_of(&mut self, mb: &Mailbox, items: &[StatusItem]) -> Result<(), Resp> {
        let msgs = self.shared.store.messages(mb.id).await.map_err(store_err)?;
        let mut parts = Vec::new();
        for i in items {
            parts.push(match i {
                StatusItem::Messages => format!("MESSAGES {}", msgs.len()),
                StatusItem::Recent => {
                    // The selected mailbox: this session's own \Recent messages (as Dovecot).
                    if let Some(sel) = self.selected.as_ref().filter(|s| s.mailbox.id == mb.id) {
                        parts.push(format!("RECENT {}", sel.recent_count()));
                        continue;
                    }
                    // Not claimed: STATUS changes nothing (RFC 3501 §6.3.10).
                    let mark = self
                        .shared
                        .store
                        .claim_recent(mb.id, 0, false)
                        .await
                        .map_err(store_err)?;
                    let first = msgs.partition_point(|m| m.uid <= mark);
                    format!("RECENT {}", msgs.len() - first)
                }
                StatusItem::UidNext => format!("UIDNEXT {}", mb.uidnext),
                StatusItem::UidValidity => format!("UIDVALIDITY {}", mb.uidvalidity),
                StatusItem::Unseen => format!(
                    "UNSEEN {}",
                    msgs.iter().filter(|m| !has_flag(m, "\\Seen")).count()
                ),
                StatusItem::Deleted => format!(
                    "DELETED {}",
                    msgs.iter().filter(|m| has_flag(m, "\\Deleted")).count()
                ),
                StatusItem::Size => format!("SIZE {}", msgs.iter().map(|m| m.size).sum::<u64>()),
                StatusItem::HighestModseq => format!("HIGHESTMODSEQ {}", mb.highest_modseq),
            });
        }
        let mut line = b"* STATUS ".to_vec();
        self.put_name(&mut line, &mb.name);
        line.extend_from_slice(format!(" ({})\r\n", parts.join(" ")).as_bytes());
        self.out.extend_from_slice(&line);
        if items.contains(&StatusItem::HighestModseq) {
            self.enable_condstore();
        }
        Ok(())
    }

    async fn select(
        &mut self,
        name: String,
        read_only: bool,
        condstore: bool,
        qresync: Option<(u32, u64, Option<SeqSet>)>,
    ) -> CmdResult {
        // Closing the previous mailbox is announced to rev2 and QRESYNC clients, which need
        // it to tell the old mailbox's responses from the new one's (RFC 9051 §6.3.2,
        // RFC 7162 §3.2.11).
        if self.selected.take().is_some() && (self.rev2 || self.qresync) {
            self.untagged("OK [CLOSED] Previous mailbox closed");
        }
        self.saved.clear(); // `$` does not survive a mailbox change (RFC 5182 §2.1)
        // Changes so far concern the previous view; the new one is read whole below.
        self.drain_events();
        self.changes.clear();
        self.reread = false;
        if condstore {
            self.condstore = true;
        }
        if qresync.is_some() && !self.qresync {
            return Err(Resp::Bad("Enable QRESYNC first".into()));
        }
        let user = self.user.clone().unwrap_or_default();
        let mb = self
            .shared
            .store
            .mailbox(&user, &name)
            .await
            .map_err(store_err)?
            .ok_or_else(|| no("[NONEXISTENT] No such mailbox"))?;
        // The view, keywords and first unseen: a snapshot the store keeps with its cache of
        // big mailboxes while the mailbox is unchanged (no pass over 100,000 records when
        // it is there).
        let snap: Snapshot = {
            let d = self
                .shared
                .store
                .derived(mb.id, &|msgs| Arc::new(Snapshot::build(msgs)))
                .await
                .map_err(store_err)?;
            match d.downcast::<Snapshot>() {
                Ok(s) => (*s).clone(),
                // Another kind of derived value (none exists today): build it here.
                Err(_) => {
                    Snapshot::build(&self.shared.store.messages(mb.id).await.map_err(store_err)?)
                }
            }
        };
        // QRESYNC: what changed since the client's MODSEQ, asked of the store after the
        // snapshot. Only what the snapshot agrees with is reported now: an expunge after the
        // snapshot reaches this session through the change feed, as any later change.
        let mut resync: Vec<String> = Vec::new();
        if let Some((uv, modseq, known)) = &qresync
            && *uv == mb.uidvalidity
        {
            let since = self
                .shared
                .store
                .changes_since(&user, mb.id, *modseq)
                .await
                .map_err(store_err)?;
            let view = &snap.view;
            let known = |u: u32| {
                known
                    .as_ref()
                    .is_none_or(|set| set.contains(u, mb.uidnext, &[]))
            };
            let vanished: Vec<u32> = if since.complete {
                since
                    .expunged
                    .into_iter()
                    .filter(|u| known(*u) && view.position(*u).is_none())
                    .collect()
            } else {
                // Expunges from before the store kept them: every UID the client may know
                // that is gone (RFC 7162 §3.2.5.1 allows a superset).
                (1..mb.uidnext)
                    .filter(|u| known(*u) && view.position(*u).is_none())
                    .collect()
            };
            if !vanished.is_empty() {
                resync.push(format!("VANISHED (EARLIER) {}", compress(&vanished)));
            }
            for m in &since.changed {
                if let Some(i) = view.position(m.uid)
                    && view.modseq(i) > *modseq
                {
                    resync.push(format!(
                        "{} FETCH (UID {} FLAGS ({}) MODSEQ ({}))",
                        i + 1,
                        m.uid,
                        view.flags(i).join(" "),
                        view.modseq(i)
                    ));
                }
            }
        }
        let Snapshot {
            view,
            keywords,
            first_unseen,
        } = snap;
        let kw = if keywords.is_empty() {
            String::new()
        } else {
            format!(" {}", keywords.join(" "))
        };
        let mut sel = Selected {
            mailbox: mb.clone(),
            read_only,
            msgs: view,
            keywords,
            recent: Vec::new(),
            live: Vec::new(),
        };
        if !self.rev2 {
            sel.take_recent(self.shared.store.as_ref(), sel.msgs.last_uid())
                .await;
        }
        self.untagged(&format!("{} EXISTS", sel.msgs.len()));
        if !self.rev2 {
            self.untagged(&format!("{} RECENT", sel.recent_count()));
        }
        self.untagged(&format!("FLAGS ({SYSTEM_FLAGS}{kw})"));
        if read_only {
            // Nothing can be changed permanently in a read-only mailbox (RFC 9051 §7.1).
            self.untagged("OK [PERMANENTFLAGS ()] No permanent flags permitted");
        } else {
            self.untagged(&format!(
                "OK [PERMANENTFLAGS ({SYSTEM_FLAGS}{kw} \\*)] Flags permitted"
            ));
        }
        if !self.rev2
            && let Some(i) = first_unseen
        {
            self.untagged(&format!("OK [UNSEEN {}] First unseen", i + 1));
        }
        self.untagged(&format!("OK [UIDVALIDITY {}] UIDs valid", mb.uidvalidity));
        self.untagged(&format!("OK [UIDNEXT {}] Predicted next UID", mb.uidnext));
        self.untagged(&format!("OK [HIGHESTMODSEQ {}] Highest", mb.highest_modseq));
        for line in &resync {
            self.untagged(line);
        }
        self.selected = Some(sel);
        Ok(format!(
            "[{}] {} completed",
            if read_only { "READ-ONLY" } else { "READ-WRITE" },
            if read_only { "EXAMINE" } else { "SELECT" }
        ))
    }

    /// APPEND, with MULTIAPPEND (RFC 3502) and CATENATE (RFC 4469): every message is built
    /// and checked first, so an error stores none of them; then they are stored in order,
    /// and a store failure takes back the ones already written.
    async fn append(&mut self, name: &str, messages: Vec<AppendMessage>) -> CmdResult {
        let user = self.user.clone().unwrap_or_default();
        let mb = self
            .shared
            .store
            .mailbox(&user, name)
            .await
            .map_err(store_err)?
            .ok_or_else(|| no("[TRYCREATE] No such mailbox"))?;
        let limit = self.shared.config.imap.max_literal;
        let mut built = Vec::with_capacity(messages.len());
        for m in messages {
            let mut bytes = Vec::new();
            let mut binary = false;
            for part in m.parts {
                match part {
                    AppendPart::Text { data, binary: b } => {
                        binary |= b;
                        if b {
                            bytes.extend_from_slice(&data);
                        } else {
                            bytes.extend_from_slice(&normalize_crlf(&data));
                        }
                    }
                    AppendPart::Url(url) => {
                        bytes.extend_from_slice(&self.catenate_url(&url).await?)
                    }
                }
                if bytes.len() as u64 > limit {
                    return Err(no("[TOOBIG] The message would be too big"));
                }
            }
            if bytes.is_empty() {
                return Err(no("Empty message"));
            }
            // BODY[] must never carry NUL (RFC 3516 §4.2): binary parts are stored base64.
            if binary && bytes.contains(&0) {
                bytes = mime::without_nul(&bytes).ok_or_else(|| {
                    no("[UNKNOWN-CTE] A NUL outside a body part cannot be stored")
                })?;
            }
            let flags: Vec<String> = m.flags.into_iter().filter(|f| f != "\\Recent").collect();
            let date = m.date.unwrap_or_else(|| chrono::Utc::now().timestamp());
            built.push((bytes, flags, date));
        }
        let store = &self.shared.store;
        let mut uids = Vec::new();
        for (bytes, flags, date) in built {
            let placement = Placement {
                user: user.clone(),
                mailbox: mb.name.clone(),
                flags,
            };
            match store.deliver(&bytes, date, &[placement]).await {
                Ok(u) => uids.extend(u),
                Err(e) => {
                    // All or none (RFC 3502 §6.3.11).
                    let _ = store.expunge(&user, mb.id, &uids).await;
                    return Err(store_err(e));
                }
            }
        }
        self.shared.store.commit().await.map_err(store_err)?;
        if self
            .selected
            .as_ref()
            .is_some_and(|s| s.mailbox.id == mb.id)
        {
            self.sync(false).await;
        }
        Ok(format!(
            "[APPENDUID {} {}] APPEND completed",
            mb.uidvalidity,
            compress(&uids)
        ))
    }

    /// The bytes a CATENATE `URL` names (RFC 4469 §5, IMAP URLs of RFC 5092): absolute
    /// (`imap://user@host/…`, the user must be this one), absolute path (`/mailbox…`) or
    /// relative to the selected mailbox (`;UID=…`), with `;UIDVALIDITY=` checked when
    /// given, `;SECTION=` and `;PARTIAL=`. Anything else, or a message that is not there,
    /// is `NO [BADURL "url"]`.
    async fn catenate_url(&self, url: &str) -> Result<Vec<u8>, Resp> {
        let bad = |why: &str| {
            no(format!(
                "[BADURL {}] {why}",
                String::from_utf8_lossy(&imap_string(url.as_bytes()))
            ))
        };
        let user = self.user.clone().unwrap_or_default();
        let parsed = super::url::parse(url).map_err(bad)?;
        if parsed
            .user
            .as_deref()
            .is_some_and(|u| !u.eq_ignore_ascii_case(&user))
        {
            return Err(bad("Another user's message"));
        }
        let mb = match &parsed.mailbox {
            Some(name) => self
                .shared
                .store
                .mailbox(&user, name)
                .await
                .map_err(store_err)?
                .ok_or_else(|| bad("No such mailbox"))?,
            None => match &self.selected {
                Some(sel) => sel.mailbox.clone(),
                None => return Err(bad("A relative URL needs a selected mailbox")),
            },
        };
        if parsed.uidvalidity.is_some_and(|v| v != mb.uidvalidity) {
            return Err(bad("UIDVALIDITY does not match"));
        }
        let meta = self
            .shared
            .store
            .message(mb.id, parsed.uid)
            .await
            .map_err(store_err)?
            .ok_or_else(|| bad("No such message"))?;
        let raw = self.shared.store.blob(meta.blob).await.map_err(store_err)?;
        let mut bytes = match &parsed.section {
            None => raw,
            Some(sec) => {
                let root = mime::parse_message(&raw);
                mime::section_bytes(&raw, &root, &sec.part, &sec.kind)
                    .ok_or_else(|| bad("No such section"))?
            }
        };
        if let Some((offset, len)) = parsed.partial {
            let start = (offset as usize).min(bytes.len());
            let end = len.map_or(bytes.len(), |l| {
                start.saturating_add(l as usize).min(bytes.len())
            });
            bytes = bytes[start..end].to_vec();
        }
        Ok(bytes)
    }

    /// Merge changes made elsewhere into the selected view and report them. The changes
    /// come from the store's feed with their content, so nothing is read again, except
    /// after the feed lagged (changes lost), when the mailbox is re-read and compared.
    async fn sync(&mut self, allow_expunge: bool) {
        self.drain_events();
        let Some(sel) = &self.selected else { return };
        if !self.reread && self.changes.is_empty() {
            return;
        }
        let delta = if self.reread {
            match self.shared.store.messages(sel.mailbox.id).await {
                Ok(fresh) => Delta::between(&sel.msgs, &fresh),
                Err(_) => return,
            }
        } else {
            Delta::from_changes(&sel.msgs, &self.changes)
        };
        self.reread = false;
        self.changes.clear();
        let condstore = self.condstore;
        let qresync = self.qresync;
        let sel = self.selected.as_mut().expect("selected");
        let recent_before = sel.recent_count();
        let mut out = Vec::new();
        // Keywords new to the client (set by another session, or on a new message) are
        // announced before any response that could show them.
        let new_flags = delta
            .flags
            .iter()
            .flat_map(|(_, f, _)| f.iter())
            .chain(delta.appended.iter().flat_map(|m| m.flags.iter()));
        if let Some(lines) = sel.announce(new_flags) {
            out.extend_from_slice(lines.as_bytes());
        }
        if allow_expunge && !delta.gone.is_empty() {
            let gone = sel
                .msgs
                .retain_uids(|u| delta.gone.binary_search(&u).is_err());
            // Live searches lose the expunged messages first, numbered as the client still
            // numbers them (RFC 5267 §4.3).
            if !gone.is_empty() {
                let old_seq: HashMap<u32, u32> =
                    gone.iter().map(|&(i, u)| (u, i as u32 + 1)).collect();
                for live in &mut sel.live {
                    let now: Vec<u32> = live
                        .uids
                        .iter()
                        .copied()
                        .filter(|u| !old_seq.contains_key(u))
                        .collect();
                    let uid = live.uid;
                    let number = |u: u32| if uid { u } else { old_seq[&u] };
                    out.extend_from_slice(live.changes(&now, &number).as_bytes());
                    live.uids = now;
                }
            }
            if qresync {
                if !gone.is_empty() {
                    let mut vanished: Vec<u32> = gone.iter().map(|g| g.1).collect();
                    vanished.sort_unstable();
                    out.extend_from_slice(
                        format!("* VANISHED {}\r\n", compress(&vanished)).as_bytes(),
                    );
                }
            } else {
                // Descending, so each number is valid when the client applies it.
                for (i, _) in &gone {
                    out.extend_from_slice(format!("* {} EXPUNGE\r\n", i + 1).as_bytes());
                }
            }
        }
        // Flag changes for messages both sides know.
        for (uid, flags, modseq) in &delta.flags {
            let Some(i) = sel.msgs.position(*uid) else {
                continue;
            };
            if *modseq == sel.msgs.modseq(i) {
                continue;
            }
            if flags.as_slice() != sel.msgs.flags(i) {
                let ms = if condstore {
                    format!(" MODSEQ ({modseq})")
                } else {
                    String::new()
                };
                out.extend_from_slice(
                    format!(
                        "* {} FETCH (UID {uid} FLAGS ({}){ms})\r\n",
                        i + 1,
                        sel.shown_flags(*uid, flags).join(" ")
                    )
                    .as_bytes(),
                );
            }
            sel.msgs.set(i, flags, *modseq);
        }
        let before = sel.msgs.len();
        for m in &delta.appended {
            if m.uid > sel.msgs.last_uid() {
                sel.msgs.push(m);
            }
        }
        let grew = sel.msgs.len() != before;
        if grew {
            out.extend_from_slice(format!("* {} EXISTS\r\n", sel.msgs.len()).as_bytes());
            if !self.rev2 {
                sel.take_recent(self.shared.store.as_ref(), sel.msgs.last_uid())
                    .await;
            }
        }
        // RECENT follows EXISTS, and any change of the count by expunges (RFC 3501 §7.3.2).
        if !self.rev2 && (grew || sel.recent_count() != recent_before) {
            out.extend_from_slice(format!("* {} RECENT\r\n", sel.recent_count()).as_bytes());
        }
        if let Ok(Some(mb)) = self
            .shared
            .store
            .mailbox(self.user.as_deref().unwrap_or_default(), &sel.mailbox.name)
            .await
        {
            sel.mailbox = mb;
        }
        // Expunges held back now must be reported by a later sync.
        if !allow_expunge && !delta.gone.is_empty() {
            self.changes.push(Arc::new(Change::Expunged {
                mailbox: sel.mailbox.id,
                uids: delta.gone,
                modseq: 0,
            }));
        }
        self.out.extend_from_slice(&out);
        self.live_updates().await;
    }

    /// Re-run the live searches (RFC 5267 §4.3) on the current view and tell the client how
    /// each result changed: ADDTO and REMOVEFROM with position 0 (an unordered SEARCH).
    async fn live_updates(&mut self) {
        let Some(sel) = self.selected.as_ref() else {
            return;
        };
        if sel.live.is_empty() {
            return;
        }
        let mut lines = String::new();
        let mut fresh: Vec<Vec<u32>> = Vec::with_capacity(sel.live.len());
        for live in &sel.live {
            let now = self
                .live_result(&live.key, live.sort.as_deref())
                .await
                .unwrap_or_else(|_| live.uids.clone());
            let number = |u: u32| {
                if live.uid {
                    u
                } else {
                    sel.msgs.position(u).map_or(0, |i| i as u32 + 1)
                }
            };
            lines.push_str(&live.changes(&now, &number));
            fresh.push(now);
        }
        let sel = self.selected.as_mut().expect("selected");
        for (live, now) in sel.live.iter_mut().zip(fresh) {
            live.uids = now;
        }
        self.out.extend_from_slice(lines.as_bytes());
    }

    /// The UIDs `key` matches now, in mailbox order or sorted by `sort`.
    async fn live_result(
        &self,
        key: &SearchKey,
        sort_by: Option<&[sort::Criterion]>,
    ) -> Result<Vec<u32>, Resp> {
        let hits = self.search_hits(key).await?;
        match sort_by {
            None => Ok(hits.iter().map(|h| h.1).collect()),
            Some(criteria) => self.sorted(&hits, true, criteria).await,
        }
    }

    /// The messages of `hits` in `criteria`'s order, as UIDs or sequence numbers.
    async fn sorted(
        &self,
        hits: &[(u32, u32, u64)],
        uid: bool,
        criteria: &[sort::Criterion],
    ) -> Result<Vec<u32>, Resp> {
        let content = criteria
            .iter()
            .any(|c| !matches!(c.key, sort::SortKey::Arrival | sort::SortKey::Size));
        let mut fields: Vec<sort::SortFields> = self
            .sort_inputs(hits, uid, content)
            .await?
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        sort::sort(&mut fields, criteria);
        Ok(fields.iter().map(|f| f.id).collect())
    }

    /// Start keeping a search's result current (RFC 5267 §4.3): BAD when the tag already
    /// names a live search, `NO [NOUPDATE]` (and the other return options still answered)
    /// past [`MAX_LIVE_SEARCHES`].
    /// Returns the `NO [NOUPDATE]` line to send after the command's ESEARCH, if refused.
    fn start_live(&mut self, live: LiveSearch) -> Result<Option<String>, Resp> {
        let sel = self.selected.as_mut().expect("selected");
        if sel.live.iter().any(|l| l.tag == live.tag) {
            return Err(Resp::Bad("Tag reuse".into()));
        }
        if sel.live.len() >= MAX_LIVE_SEARCHES {
            let tag = String::from_utf8_lossy(&imap_string(live.tag.as_bytes())).into_owned();
            return Ok(Some(format!("NO [NOUPDATE {tag}] Too many contexts")));
        }
        sel.live.push(live);
        Ok(None)
    }

    /// Take the store's change events: those for the selected mailbox (or a lost count of
    /// them) mark the view as needing a re-read.
    fn drain_events(&mut self) {
        while let Some(w) = &mut self.watch {
            match w.try_recv() {
                Ok(change) => self.take_change(change),
                Err(broadcast::error::TryRecvError::Lagged(_)) => self.reread = true,
                Err(_) => break,
            }
        }
    }

    /// Keep a change of the selected mailbox's messages for the next sync.
    fn take_change(&mut self, change: Arc<Change>) {
        let selected = self.selected.as_ref().map(|s| s.mailbox.id);
        if change.messages_of().is_some() && change.messages_of() == selected && !self.reread {
            self.changes.push(change);
        }
    }

    /// Indices (0-based) of the selected messages in `set`, ascending and without
    /// duplicates. A sequence number beyond the session's view of the mailbox (or `*` in
    /// an empty one) is a BAD (RFC 9051 §9, `seq-number`); UIDs that do not exist are not.
    fn resolve(&self, uid: bool, set: &SeqSet) -> Result<Vec<usize>, Resp> {
        let sel = self.selected.as_ref().expect("selected");
        if !uid {
            check_seq_set(set, sel.msgs.len())?;
        }
        Ok(resolve_set(&sel.msgs, uid, set, &self.saved))
    }

    async fn expunge(&mut self, set: Option<SeqSet>) -> CmdResult {
        let sel = self.selected.as_ref().expect("selected");
        if sel.read_only {
            return Err(no("[READ-ONLY] Mailbox is read-only"));
        }
        // Flags set by other sessions count too: learn them first (their FETCH responses
        // are sent; expunges stay held back until after ours).
        self.sync(false).await;
        let filter: Option<HashSet<usize>> = set
            .as_ref()
            .map(|s| self.resolve(true, s).map(|v| v.into_iter().collect()))
            .transpose()?;
        let sel = self.selected.as_ref().expect("selected");
        let uids: Vec<u32> = (0..sel.msgs.len())
            .filter(|i| {
                has(sel.msgs.flags(*i), "\\Deleted")
                    && filter.as_ref().is_none_or(|f| f.contains(i))
            })
            .map(|i| sel.msgs.uid(i))
            .collect();
        let user = self.user.clone().unwrap_or_default();
        self.shared
            .store
            .expunge(&user, sel.mailbox.id, &uids)
            .await
            .map_err(store_err)?;
        self.shared.store.commit().await.map_err(store_err)?;
        self.sync(true).await;
        Ok("EXPUNGE completed".into())
    }

    /// The messages of the selected mailbox that `key` matches, in sequence order:
    /// (sequence number, UID, MODSEQ). SEARCH, SORT and THREAD share it.
    async fn search_hits(&self, key: &SearchKey) -> Result<Vec<(u32, u32, u64)>, Resp> {
        let sel = self.selected.as_ref().expect("selected");
        // No BAD for sequence numbers beyond the mailbox here: in SEARCH a sequence set is a
        // key that matches no message (RFC 9051 errata 6505; Dovecot answers so too).
        let needs = search::needs_content(key);
        // Size, date and blob are not in the view: one snapshot of the mailbox's metadata
        // when a key needs them, walked alongside (both are in UID order).
        let metas = if search::needs_meta(key) {
            self.shared
                .store
                .messages(sel.mailbox.id)
                .await
                .map_err(store_err)?
        } else {
            Vec::new()
        };
        let mut next_meta = 0;
        let max_seq = sel.msgs.len() as u32;
        let max_uid = sel.msgs.last_uid();
        let mut hits: Vec<(u32, u32, u64)> = Vec::new();
        for i in 0..sel.msgs.len() {
            let uid = sel.msgs.uid(i);
            while next_meta < metas.len() && metas[next_meta].uid < uid {
                next_meta += 1;
            }
            // Missing when another session expunged it (this session was not told yet).
            let meta = metas.get(next_meta).filter(|m| m.uid == uid);
            let c = Candidate {
                seq: i as u32 + 1,
                uid,
                flags: sel.msgs.flags(i),
                modseq: sel.msgs.modseq(i),
                size: meta.map_or(0, |m| m.size),
                internal_date: meta.map_or(0, |m| m.internal_date),
                max_seq,
                max_uid,
                saved: &self.saved,
                recent: sel.is_recent(uid),
            };
            let store = &self.shared.store;
            let blob = meta.map(|m| m.blob);
            let mut load = || match blob {
                // Synchronous for the matcher; the embedded backends answer at once.
                Some(b) if needs => store.blob(b).wait().ok(),
                _ => None,
            };
            let mut cache = None;
            if search::matches(key, &c, &mut load, &mut cache) {
                hits.push((i as u32 + 1, uid, c.modseq));
            }
        }
        Ok(hits)
    }

    /// What SORT and THREAD read of the messages `hits` names: size and internal date from
    /// the metadata, the rest from each message's header (not loaded when `content` is
    /// false: ARRIVAL and SIZE need none).
    async fn sort_inputs(
        &self,
        hits: &[(u32, u32, u64)],
        uid: bool,
        content: bool,
    ) -> Result<Vec<(sort::SortFields, Arc<HeaderKeys>)>, Resp> {
        let sel = self.selected.as_ref().expect("selected");
        // (uid, internal date, size, blob) of every message, read from the store's cache
        // without copying each record's flags (a 100,000-message SORT spent most of its
        // time cloning the metadata list).
        let mut metas: Vec<(u32, i64, u64, u64)> = Vec::new();
        self.shared
            .store
            .with_messages(sel.mailbox.id, &mut |msgs| {
                metas = msgs
                    .iter()
                    .map(|m| (m.uid, m.internal_date, m.size, m.blob))
                    .collect();
            })
            .await
            .map_err(store_err)?;
        let mut out = Vec::with_capacity(hits.len());
        let mut next = 0;
        for &(seq, u, _) in hits {
            while next < metas.len() && metas[next].0 < u {
                next += 1;
            }
            let meta = metas.get(next).filter(|m| m.0 == u);
            let keys = match meta {
                Some(&(_, _, _, blob)) if content => {
                    let store = &self.shared.store;
                    self.shared
                        .sort_keys
                        .get(blob, || store.blob(blob).wait().ok())
                }
                _ => Arc::default(),
            };
            let arrival = meta.map_or(0, |m| m.1);
            let f = sort::SortFields {
                seq,
                id: if uid { u } else { seq },
                arrival,
                date: keys.date.unwrap_or(arrival),
                size: meta.map_or(0, |m| m.2),
                subject: keys.subject.clone(),
                from: keys.from.clone(),
                to: keys.to.clone(),
                cc: keys.cc.clone(),
                display_from: keys.display_from.clone(),
                display_to: keys.display_to.clone(),
            };
            out.push((f, keys));
        }
        Ok(out)
    }

    /// SORT (RFC 5256 §3) and ESORT's RETURN options (RFC 5267 §3.1).
    async fn sort(
        &mut self,
        tag: &str,
        uid: bool,
        ret: Option<Vec<String>>,
        criteria: &[sort::Criterion],
        key: SearchKey,
    ) -> CmdResult {
        self.sync(false).await;
        let hits = self.search_hits(&key).await?;
        let ids = self.sorted(&hits, uid, criteria).await?;
        match ret {
            None => {
                let mut line = String::from("SORT");
                for n in &ids {
                    line.push_str(&format!(" {n}"));
                }
                self.untagged(&line);
            }
            Some(opts) => {
                let (opts, update) = result_options(opts);
                let mut refused = None;
                if update {
                    let uids = self.live_result(&key, Some(criteria)).await?;
                    refused = self.start_live(LiveSearch {
                        tag: tag.to_string(),
                        uid,
                        key: key.clone(),
                        sort: Some(criteria.to_vec()),
                        uids,
                    })?;
                }
                let mut line = esearch_head(tag, uid);
                // MIN and MAX are the first and last in sort order; ALL keeps that order
                // (RFC 5267 §3.1), with ranges only where the order ascends by one; so does
                // PARTIAL (§4.4), over positions in sort order.
                for o in &opts {
                    match (o.as_str(), ids.first(), ids.last()) {
                        ("MIN", Some(first), _) => line.push_str(&format!(" MIN {first}")),
                        ("MAX", _, Some(last)) => line.push_str(&format!(" MAX {last}")),
                        ("COUNT", ..) => line.push_str(&format!(" COUNT {}", ids.len())),
                        ("ALL", Some(_), _) => {
                            line.push_str(&format!(" ALL {}", ordered_set(&ids)))
                        }
                        (o, ..) if o.starts_with("PARTIAL ") => {
                            line.push_str(&partial_item(o, &ids, ordered_set))
                        }
                        _ => {}
                    }
                }
                self.untagged(&line);
                if let Some(no) = refused {
                    self.untagged(&no);
                }
            }
        }
        Ok(if uid {
            "UID SORT completed"
        } else {
            "SORT completed"
        }
        .into())
    }

    /// THREAD (RFC 5256 §3): ORDEREDSUBJECT or REFERENCES.
    async fn thread(&mut self, uid: bool, references: bool, key: SearchKey) -> CmdResult {
        self.sync(false).await;
        let hits = self.search_hits(&key).await?;
        let msgs: Vec<sort::ThreadMsg> = self
            .sort_inputs(&hits, uid, true)
            .await?
            .into_iter()
            .map(|(f, keys)| sort::ThreadMsg {
                id: f.id,
                seq: f.seq,
                message_id: keys.message_id.clone(),
                references: keys.references.clone(),
                subject: f.subject,
                is_reply: keys.is_reply,
                date: f.date,
            })
            .collect();
        let threads = if references {
            sort::thread_references(&msgs)
        } else {
            sort::thread_orderedsubject(&msgs)
        };
        let body = sort::render(&threads);
        self.untagged(&if body.is_empty() {
            "THREAD".to_string()
        } else {
            format!("THREAD {body}")
        });
        Ok(if uid {
            "UID THREAD completed"
        } else {
            "THREAD completed"
        }
        .into())
    }

    async fn search(
        &mut self,
        tag: &str,
        uid: bool,
        ret: Option<Vec<String>>,
        key: SearchKey,
    ) -> CmdResult {
        self.sync(false).await;
        if has_modseq_key(&key) {
            self.enable_condstore();
        }
        let hits = self.search_hits(&key).await?;
        let nums: Vec<u32> = hits.iter().map(|h| if uid { h.1 } else { h.0 }).collect();
        let modseq = has_modseq_key(&key).then(|| hits.iter().map(|h| h.2).max().unwrap_or(0));
        match ret {
            None if !self.rev2 => {
                let mut line = String::from("SEARCH");
                for n in &nums {
                    line.push_str(&format!(" {n}"));
                }
                if let Some(ms) = modseq
                    && !nums.is_empty()
                {
                    line.push_str(&format!(" (MODSEQ {ms})"));
                }
                self.untagged(&line);
            }
            ret => {
                let (opts, update) = result_options(ret.unwrap_or_default());
                let mut refused = None;
                if update {
                    // Later changes to the result reach the client as ADDTO/REMOVEFROM.
                    refused = self.start_live(LiveSearch {
                        tag: tag.to_string(),
                        uid,
                        key: key.clone(),
                        sort: None,
                        uids: hits.iter().map(|h| h.1).collect(),
                    })?;
                }
                if opts.iter().any(|o| o == "SAVE") {
                    // With MIN and/or MAX, only those are saved (RFC 5182 §2.4).
                    let (want_min, want_max) = (
                        opts.iter().any(|o| o == "MIN"),
                        opts.iter().any(|o| o == "MAX"),
                    );
                    self.saved = if (want_min || want_max) && !hits.is_empty() {
                        let mut v = Vec::new();
                        if want_min {
                            v.push(hits[0].1);
                        }
                        if want_max && hits.len() > 1 {
                            v.push(hits[hits.len() - 1].1);
                        }
                        v
                    } else {
                        hits.iter().map(|h| h.1).collect()
                    };
                    if opts.len() == 1 && !update {
                        return Ok("SEARCH completed, result saved".into());
                    }
                }
                let mut line = esearch_head(tag, uid);
                for o in &opts {
                    match o.as_str() {
                        "MIN" if !nums.is_empty() => {
                            line.push_str(&format!(" MIN {}", nums.iter().min().unwrap_or(&0)))
                        }
                        "MAX" if !nums.is_empty() => {
                            line.push_str(&format!(" MAX {}", nums.iter().max().unwrap_or(&0)))
                        }
                        "COUNT" => line.push_str(&format!(" COUNT {}", nums.len())),
                        "ALL" if !nums.is_empty() => {
                            let mut s = nums.clone();
                            s.sort();
                            line.push_str(&format!(" ALL {}", compress(&s)));
                        }
                        // RFC 5267 §4.4: the results at positions lo..=hi (1-based).
                        o if o.starts_with("PARTIAL ") => {
                            line.push_str(&partial_item(o, &nums, compress))
                        }
                        _ => {}
                    }
                }
                // RFC 7162 §3.1.5: with MIN and/or MAX alone, MODSEQ is that of the message(s)
                // returned, not of every match.
                let only_min_max = opts
                    .iter()
                    .all(|o| matches!(o.as_str(), "MIN" | "MAX" | "SAVE"))
                    && opts.iter().any(|o| o == "MIN" || o == "MAX");
                let modseq = match (modseq, hits.first(), hits.last()) {
                    (Some(_), Some(first), Some(last)) if only_min_max => {
                        let mut ms = 0;
                        if opts.iter().any(|o| o == "MIN") {
                            ms = ms.max(first.2);
                        }
                        if opts.iter().any(|o| o == "MAX") {
                            ms = ms.max(last.2);
                        }
                        Some(ms)
                    }
                    (m, ..) => m,
                };
                if let Some(ms) = modseq
                    && !nums.is_empty()
                {
                    line.push_str(&format!(" MODSEQ {ms}"));
                }
                self.untagged(&line);
                if let Some(no) = refused {
                    self.untagged(&no);
                }
            }
        }
        Ok("SEARCH completed".into())
    }

    async fn fetch(
        &mut self,
        uid: bool,
        set: &SeqSet,
        items: &[FetchItem],
        changed_since: Option<u64>,
        vanished: bool,
    ) -> CmdResult {
        if vanished && (!uid || !self.qresync || changed_since.is_none()) {
            return Err(Resp::Bad(
                "VANISHED needs UID FETCH, QRESYNC and CHANGEDSINCE".into(),
            ));
        }
        self.sync(false).await;
        let indices = self.resolve(uid, set)?;
        if changed_since.is_some() || items.contains(&FetchItem::Modseq) {
            self.enable_condstore();
        }
        if vanished
            && let (Some(sel), SeqSet::Ranges(_), Some(since)) =
                (&self.selected, set, changed_since)
        {
            // Exactly the UIDs expunged after CHANGEDSINCE when the store kept them, else
            // every UID of the set that is gone (RFC 7162 §3.2.6 allows a superset).
            let user = self.user.as_deref().unwrap_or_default();
            let logged = self
                .shared
                .store
                .changes_since(user, sel.mailbox.id, since)
                .await
                .ok()
                .filter(|c| c.complete)
                .map(|c| c.expunged);
            let in_set = |u: &u32| set.contains(*u, sel.mailbox.uidnext, &[]);
            let gone: Vec<u32> = match logged {
                Some(expunged) => expunged
                    .into_iter()
                    .filter(|u| in_set(u) && sel.msgs.position(*u).is_none())
                    .collect(),
                None => (1..sel.mailbox.uidnext)
                    .filter(|u| in_set(u) && sel.msgs.position(*u).is_none())
                    .collect(),
            };
            if !gone.is_empty() {
                self.untagged(&format!("VANISHED (EARLIER) {}", compress(&gone)));
            }
        }
        let sets_seen = items.iter().any(|i| {
            matches!(
                i,
                FetchItem::Section { peek: false, .. } | FetchItem::Binary { peek: false, .. }
            )
        });
        let wants_content = items.iter().any(|i| {
            matches!(
                i,
                FetchItem::Section { .. }
                    | FetchItem::Binary { .. }
                    | FetchItem::BinarySize(_)
                    | FetchItem::Envelope
                    | FetchItem::Body
                    | FetchItem::BodyStructure
            )
        });
        let serves_body = items
            .iter()
            .any(|i| matches!(i, FetchItem::Section { .. } | FetchItem::Binary { .. }));
        let user = self.user.clone().unwrap_or_default();
        let read_only = self.selected.as_ref().is_some_and(|s| s.read_only);
        let mut denied = false;
        let mut deferred = false;
        let mut failed = false;
        // Size, date and blob are not in the session's view; look them up when needed.
        let needs_meta = wants_content
            || items
                .iter()
                .any(|i| matches!(i, FetchItem::Rfc822Size | FetchItem::InternalDate));
        for idx in indices {
            let sel = self.selected.as_ref().expect("selected");
            if idx >= sel.msgs.len() {
                continue;
            }
            let (msg_uid, modseq) = (sel.msgs.uid(idx), sel.msgs.modseq(idx));
            if changed_since.is_some_and(|c| modseq <= c) {
                continue;
            }
            let stored = if needs_meta {
                match self.shared.store.message(sel.mailbox.id, msg_uid).await {
                    Ok(Some(m)) => Some(m),
                    _ => continue, // expunged meanwhile
                }
            } else {
                None
            };
            let meta = MessageMeta {
                uid: msg_uid,
                blob: stored.as_ref().map_or(0, |m| m.blob),
                size: stored.as_ref().map_or(0, |m| m.size),
                flags: sel.msgs.flags(idx).to_vec(),
                internal_date: stored.as_ref().map_or(0, |m| m.internal_date),
                modseq,
            };
            let body = if wants_content {
                match self.shared.store.blob(meta.blob).await {
                    Ok(b) => Some(Arc::new(b)),
                    Err(_) => continue, // expunged meanwhile
                }
            } else {
                None
            };
            if serves_body {
                let mut ctx = HookCtx::new(
                    HookPoint::Fetch,
                    crate::listener::Listener::Imap,
                    self.peer.ip(),
                );
                ctx.message = body.clone();
                ctx.user = user.clone();
                ctx.tls = self.stream.is_tls();
                ctx.fetch = Some(crate::hooks::FetchFacts {
                    mailbox: sel.mailbox.name.clone(),
                    uid: meta.uid,
                    protocol: "imap",
                });
                // The reason goes to the log, not to the client (which learns only that
                // the message was withheld, for good or for now).
                match self.shared.hooks.run(&ctx).verdict {
                    v @ Verdict::Reject { .. } => {
                        tracing::info!(mailbox = %sel.mailbox.name, uid = meta.uid, reason = %v.wording(), "fetch refused by hook");
                        denied = true;
                        continue;
                    }
                    v @ Verdict::Tempfail { .. } => {
                        tracing::info!(mailbox = %sel.mailbox.name, uid = meta.uid, reason = %v.wording(), "fetch deferred by hook");
                        deferred = true;
                        continue;
                    }
                    _ => {}
                }
            }
            let mut meta = meta;
            let mut flags_changed = false;
            if sets_seen && !read_only && !has_flag(&meta, "\\Seen") {
                // Added in the store's transaction, not written from this session's copy,
                // so that a concurrent flag change by another session is kept.
                if let Ok((done, _)) = self
                    .shared
                    .store
                    .update_flags(
                        &user,
                        self.selected.as_ref().expect("sel").mailbox.id,
                        &[meta.uid],
                        FlagOp::Add,
                        &["\\Seen".to_string()],
                        None,
                    )
                    .await
                    && let Some(u) = done.first()
                {
                    meta.flags = u.flags.clone();
                    meta.modseq = u.modseq;
                    flags_changed = true;
                    if let Some(s) = self.selected.as_mut() {
                        s.msgs.set(idx, &meta.flags, meta.modseq);
                    }
                }
            }
            if let Some(s) = self.selected.as_ref()
                && s.is_recent(meta.uid)
            {
                meta.flags.push("\\Recent".into());
            }
            let (line, cte_failed) = render(
                idx + 1,
                &meta,
                body.as_deref().map(Vec::as_slice),
                items,
                uid,
                flags_changed,
                self.condstore,
            );
            failed |= cte_failed;
            self.out.extend_from_slice(&line);
            if !self.drain_output().await {
                return Err(no("[UNAVAILABLE] The client stopped reading"));
            }
        }
        // The other messages were served; NO says some were not (RFC 9051 §6.4.5).
        if denied {
            return Err(no("[NOPERM] Some messages were withheld by policy"));
        }
        if deferred {
            return Err(no(
                "[UNAVAILABLE] Some messages are temporarily unavailable, try again later",
            ));
        }
        if failed {
            return Err(no(
                "[UNKNOWN-CTE] Cannot decode the content transfer encoding",
            ));
        }
        Ok("FETCH completed".into())
    }

    async fn store(
        &mut self,
        uid: bool,
        set: &SeqSet,
        mode: StoreMode,
        silent: bool,
        flags: Vec<String>,
        unchanged_since: Option<u64>,
    ) -> CmdResult {
        if self.selected.as_ref().is_some_and(|s| s.read_only) {
            return Err(no("[READ-ONLY] Mailbox is read-only"));
        }
        self.sync(false).await;
        if unchanged_since.is_some() {
            self.enable_condstore();
        }
        let indices = self.resolve(uid, set)?;
        let flags: Vec<String> = flags.into_iter().filter(|f| f != "\\Recent").collect();
        let sel = self.selected.as_ref().expect("selected");
        let uids: Vec<u32> = indices.iter().map(|&i| sel.msgs.uid(i)).collect();
        let op = match mode {
            StoreMode::Replace => FlagOp::Replace,
            StoreMode::Add => FlagOp::Add,
            StoreMode::Remove => FlagOp::Remove,
        };
        let user = self.user.clone().unwrap_or_default();
        let mbid = sel.mailbox.id;
        // The new flags are computed from the stored ones inside the store's transaction, so
        // concurrent STOREs from other sessions are not overwritten.
        let (updates, modified_uids) = self
            .shared
            .store
            .update_flags(&user, mbid, &uids, op, &flags, unchanged_since)
            .await
            .map_err(store_err)?;
        if updates.iter().any(|u| u.changed) {
            self.shared.store.commit().await.map_err(store_err)?;
        }
        let condstore = self.condstore;
        let sel = self.selected.as_mut().expect("selected");
        if let Some(lines) = sel.announce(updates.iter().flat_map(|u| u.flags.iter())) {
            self.out.extend_from_slice(lines.as_bytes());
        }
        let mut modified = Vec::new();
        for u in &modified_uids {
            if let Some(i) = sel.msgs.position(*u) {
                modified.push(if uid { *u } else { i as u32 + 1 });
            }
        }
        for u in &updates {
            let Some(i) = sel.msgs.position(u.uid) else {
                continue;
            };
            sel.msgs.set(i, &u.flags, u.modseq);
            if !silent || (condstore && unchanged_since.is_some()) {
                let mut line = format!("* {} FETCH (", i + 1);
                if uid {
                    line.push_str(&format!("UID {} ", u.uid));
                }
                line.push_str(&format!(
                    "FLAGS ({})",
                    sel.shown_flags(u.uid, &u.flags).join(" ")
                ));
                if condstore {
                    line.push_str(&format!(" MODSEQ ({})", u.modseq));
                }
                line.push_str(")\r\n");
                self.out.extend_from_slice(line.as_bytes());
            }
        }
        self.live_updates().await;
        if !modified.is_empty() {
            return Ok(format!(
                "[MODIFIED {}] Conditional STORE failed for some messages",
                compress(&modified)
            ));
        }
        Ok("STORE completed".into())
    }

    async fn copy(&mut self, uid: bool, set: &SeqSet, target: &str, is_move: bool) -> CmdResult {
        if is_move && self.selected.as_ref().is_some_and(|s| s.read_only) {
            return Err(no("[READ-ONLY] Mailbox is read-only"));
        }
        self.sync(false).await;
        let user = self.user.clone().unwrap_or_default();
        let indices = self.resolve(uid, set)?;
        let sel = self.selected.as_ref().expect("selected");
        let uids: Vec<u32> = indices.iter().map(|&i| sel.msgs.uid(i)).collect();
        if self
            .shared
            .store
            .mailbox(&user, target)
            .await
            .map_err(store_err)?
            .is_none()
        {
            return Err(no("[TRYCREATE] No such mailbox"));
        }
        let (uv, pairs) = self
            .shared
            .store
            .copy(&user, sel.mailbox.id, &uids, target)
            .await
            .map_err(store_err)?;
        let code = if pairs.is_empty() {
            String::new()
        } else {
            let src: Vec<u32> = pairs.iter().map(|p| p.0).collect();
            let dst: Vec<u32> = pairs.iter().map(|p| p.1).collect();
            format!("[COPYUID {uv} {} {}] ", list_plain(&src), list_plain(&dst))
        };
        if is_move {
            let mbid = sel.mailbox.id;
            self.shared
                .store
                .expunge(&user, mbid, &uids)
                .await
                .map_err(store_err)?;
            self.shared.store.commit().await.map_err(store_err)?;
            if !code.is_empty() {
                self.untagged(&format!("OK {}Moved", code));
            }
            self.sync(true).await;
            return Ok("MOVE completed".into());
        }
        self.shared.store.commit().await.map_err(store_err)?;
        if self
            .selected
            .as_ref()
            .is_some_and(|s| s.mailbox.name == target)
        {
            self.sync(false).await;
        }
        Ok(format!("{code}COPY completed"))
    }
}

/// The RETURN options that ask for result data, and whether UPDATE was asked for. CONTEXT
/// is a hint (RFC 5267 §4.2) and goes; no option means ALL (RFC 4731 §3.1), but UPDATE
/// alone asks for no result now.
fn result_options(mut opts: Vec<String>) -> (Vec<String>, bool) {
    opts.retain(|o| o != "CONTEXT");
    let update = opts.iter().any(|o| o == "UPDATE");
    opts.retain(|o| o != "UPDATE");
    if opts.is_empty() && !update {
        opts.push("ALL".into());
    }
    (opts, update)
}

/// ` PARTIAL (lo:hi set)` for a `PARTIAL lo:hi` return option: the results at those
/// positions written by `set` (sort order or mailbox order), `NIL` when there are none.
fn partial_item(option: &str, results: &[u32], set: fn(&[u32]) -> String) -> String {
    let (range, picked) = partial(option, results);
    let set = if picked.is_empty() {
        "NIL".to_string()
    } else {
        set(picked)
    };
    format!(" PARTIAL ({range} {set})")
}

/// The range of a `PARTIAL lo:hi` return option and the results at those positions
/// (1-based; a range past the end gives what there is, RFC 5267 §4.4).
fn partial<'a>(option: &'a str, results: &'a [u32]) -> (&'a str, &'a [u32]) {
    let range = option.strip_prefix("PARTIAL ").unwrap_or(option);
    let (lo, hi) = range.split_once(':').unwrap_or((range, range));
    let lo = lo.parse::<usize>().unwrap_or(1).max(1);
    let hi = hi.parse::<usize>().unwrap_or(lo).min(results.len());
    (range, if lo <= hi { &results[lo - 1..hi] } else { &[] })
}

/// `ESEARCH (TAG "tag")` and ` UID` for a UID command: the start of every ESEARCH
/// response (RFC 4731 §3.1 / RFC 9051 §7.3.4: the correlator is the command's tag).
fn esearch_head(tag: &str, uid: bool) -> String {
    let mut line = String::from("ESEARCH (TAG ");
    line.push_str(&String::from_utf8_lossy(&imap_string(tag.as_bytes())));
    line.push(')');
    if uid {
        line.push_str(" UID");
    }
    line
}

/// A list of numbers in the given order as a sequence set, joining only runs that ascend
/// by one (ESORT's ALL keeps the sort order, RFC 5267 §3.1).
fn ordered_set(ids: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < ids.len() {
        let mut j = i;
        while j + 1 < ids.len() && ids[j + 1] == ids[j].wrapping_add(1) {
            j += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if j > i {
            out.push_str(&format!("{}:{}", ids[i], ids[j]));
        } else {
            out.push_str(&ids[i].to_string());
        }
        i = j + 1;
    }
    out
}

/// Render one `* n FETCH (...)` line. Returns the line and whether a BINARY item failed
/// to decode (RFC 3516 [UNKNOWN-CTE]).
pub fn render(
    seq: usize,
    meta: &MessageMeta,
    body: Option<&[u8]>,
    items: &[FetchItem],
    uid: bool,
    flags_changed: bool,
    condstore: bool,
) -> (Vec<u8>, bool) {
    let mut failed = false;
    let idx = seq - 1;
    // The MIME structure is computed only for items that need it (not for BODY[]).
    let parsed = std::cell::OnceCell::new();
    let root = || body.map(|b| parsed.get_or_init(|| mime::parse_message(b)));
    let mut line = format!("* {} FETCH (", idx + 1).into_bytes();
    let mut first = true;
    let mut sep = |line: &mut Vec<u8>| {
        if !first {
            line.push(b' ');
        }
        first = false;
    };
    let mut did_uid = false;
    let mut did_flags = false;
    for item in items {
        match item {
            FetchItem::Uid => {
                sep(&mut line);
                line.extend_from_slice(format!("UID {}", meta.uid).as_bytes());
                did_uid = true;
            }
            FetchItem::Flags => {
                sep(&mut line);
                line.extend_from_slice(b"FLAGS ");
                flag_list(&mut line, &meta.flags);
                did_flags = true;
            }
            FetchItem::InternalDate => {
                sep(&mut line);
                line.extend_from_slice(
                    format!("INTERNALDATE {}", date_time(meta.internal_date)).as_bytes(),
                );
            }
            FetchItem::Rfc822Size => {
                sep(&mut line);
                line.extend_from_slice(format!("RFC822.SIZE {}", meta.size).as_bytes());
            }
            FetchItem::Modseq => {
                sep(&mut line);
                line.extend_from_slice(format!("MODSEQ ({})", meta.modseq).as_bytes());
            }
            FetchItem::Envelope => {
                sep(&mut line);
                line.extend_from_slice(b"ENVELOPE ");
                if let (Some(b), Some(r)) = (body, root()) {
                    mime::envelope(b, r, &mut line);
                }
            }
            FetchItem::Body | FetchItem::BodyStructure => {
                sep(&mut line);
                let ext = matches!(item, FetchItem::BodyStructure);
                line.extend_from_slice(if ext { b"BODYSTRUCTURE " } else { b"BODY " });
                if let (Some(b), Some(r)) = (body, root()) {
                    mime::body_structure(b, r, ext, &mut line);
                }
            }
            FetchItem::Section {
                section,
                partial,
                legacy,
                ..
            } => {
                let Some(b) = body else {
                    continue;
                };
                let data: Option<std::borrow::Cow<'_, [u8]>> =
                    if section.part.is_empty() && section.kind == SectionKind::Full {
                        Some(std::borrow::Cow::Borrowed(b))
                    } else {
                        let r = root().expect("body present");
                        mime::section_bytes(b, r, &section.part, &section.kind)
                            .map(std::borrow::Cow::Owned)
                    };
                sep(&mut line);
                match legacy {
                    Some(name) => line.extend_from_slice(name.as_bytes()),
                    None => {
                        line.extend_from_slice(b"BODY[");
                        line.extend_from_slice(section_name(section).as_bytes());
                        line.push(b']');
                    }
                }
                write_partial(
                    &mut line,
                    data.as_deref().unwrap_or(b""),
                    *partial,
                    data.is_none(),
                );
            }
            FetchItem::Binary { part, partial, .. } => {
                let (Some(b), Some(r)) = (body, root()) else {
                    continue;
                };
                match mime::binary(b, r, part) {
                    Ok(data) => {
                        sep(&mut line);
                        line.extend_from_slice(format!("BINARY[{}]", join_part(part)).as_bytes());
                        write_partial(&mut line, &data, *partial, false);
                    }
                    Err(BinaryError::UnknownCte) => failed = true,
                    Err(BinaryError::NoPart) => {
                        sep(&mut line);
                        line.extend_from_slice(
                            format!("BINARY[{}] NIL", join_part(part)).as_bytes(),
                        );
                    }
                }
            }
            FetchItem::BinarySize(part) => {
                let (Some(b), Some(r)) = (body, root()) else {
                    continue;
                };
                match mime::binary(b, r, part) {
                    Ok(data) => {
                        sep(&mut line);
                        line.extend_from_slice(
                            format!("BINARY.SIZE[{}] {}", join_part(part), data.len()).as_bytes(),
                        );
                    }
                    Err(BinaryError::UnknownCte) => failed = true,
                    Err(BinaryError::NoPart) => {
                        sep(&mut line);
                        line.extend_from_slice(
                            format!("BINARY.SIZE[{}] 0", join_part(part)).as_bytes(),
                        );
                    }
                }
            }
        }
    }
    if uid && !did_uid {
        sep(&mut line);
        line.extend_from_slice(format!("UID {}", meta.uid).as_bytes());
    }
    if flags_changed && !did_flags {
        sep(&mut line);
        line.extend_from_slice(b"FLAGS ");
        flag_list(&mut line, &meta.flags);
    }
    if condstore && !items.contains(&FetchItem::Modseq) {
        sep(&mut line);
        line.extend_from_slice(format!("MODSEQ ({})", meta.modseq).as_bytes());
    }
    line.extend_from_slice(b")\r\n");
    (line, failed)
}

/// Indices (0-based, ascending, no duplicates) of the messages of `msgs` (in UID order) that
/// `set` names: UIDs when `uid`, else sequence numbers; `$` is the saved UIDs. Ranges are
/// mapped directly (sequence numbers) or by binary search (UIDs), never by scanning every
/// message per range.
pub fn resolve_set(msgs: &View, uid: bool, set: &SeqSet, saved: &[u32]) -> Vec<usize> {
    let n = msgs.len();
    let mut out: Vec<usize> = match set {
        SeqSet::Saved => {
            let saved: HashSet<u32> = saved.iter().copied().collect();
            return (0..n).filter(|&i| saved.contains(&msgs.uid(i))).collect();
        }
        SeqSet::Ranges(ranges) => {
            let mut v = Vec::new();
            let star = if uid {
                msgs.last_uid().max(1)
            } else {
                n as u32
            };
            for &(a, b) in ranges {
                let a = if a == STAR { star } else { a };
                let b = if b == STAR { star } else { b };
                let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                if uid {
                    let start = msgs.partition_uid(lo);
                    let end = if hi == u32::MAX {
                        msgs.len()
                    } else {
                        msgs.partition_uid(hi + 1)
                    }
                    .max(start);
                    v.extend(start..end);
                } else if lo >= 1 && (lo as usize) <= n {
                    v.extend(lo as usize - 1..(hi as usize).min(n));
                }
            }
            v
        }
    };
    if let SeqSet::Ranges(r) = set
        && r.len() > 1
    {
        out.sort_unstable();
        out.dedup();
    }
    out
}

/// The answer of LSUB and of LIST (SUBSCRIBED …): (name, attributes, CHILDINFO) for every
/// subscribed name the patterns match, whether its mailbox exists or not (RFC 9051 §6.3.9),
/// and for a level the patterns stop at above a subscribed name they do not match: LSUB lists
/// it `\Noselect` (RFC 3501 §6.3.9), LIST with RECURSIVEMATCH with CHILDINFO ("SUBSCRIBED")
/// (RFC 5258 §3.5).
fn subscribed_lines(
    lsub: bool,
    recursive: bool,
    subscriptions: &HashSet<String>,
    boxes: &[Mailbox],
    names: &HashSet<String>,
    matches: &dyn Fn(&str) -> bool,
    want_special: bool,
) -> Vec<(String, Vec<String>, bool)> {
    let mut listed: std::collections::BTreeMap<String, (bool, bool)> = Default::default();
    for name in subscriptions {
        if matches(name) {
            listed.entry(name.clone()).or_default().0 = true;
            continue;
        }
        let mut end = 0;
        while let Some(i) = name[end..].find('/') {
            let parent = &name[..end + i];
            end += i + 1;
            if matches(parent) {
                listed.entry(parent.to_string()).or_default().1 = true;
            }
        }
    }
    let mut out = Vec::new();
    for (name, (subscribed, has_subscribed_child)) in listed {
        let exists = names.contains(&name);
        let mut attrs = Vec::new();
        if lsub {
            if !subscribed {
                attrs.push("\\Noselect".to_string());
            }
            out.push((name, attrs, false));
            continue;
        }
        if !subscribed && !recursive {
            continue;
        }
        if subscribed {
            attrs.push("\\Subscribed".to_string());
        }
        if !exists {
            attrs.push("\\NonExistent".to_string());
        } else if want_special
            && let Some(s) = boxes
                .iter()
                .find(|m| m.name == name)
                .and_then(|m| m.special_use.clone())
        {
            attrs.push(s);
        }
        out.push((name, attrs, recursive && has_subscribed_child));
    }
    out
}

/// Whether a command carries mailbox names (see [`Session::decode_names`]).
fn has_names(c: &Command) -> bool {
    matches!(
        c,
        Command::Select { .. }
            | Command::Append { .. }
            | Command::Copy { .. }
            | Command::Create(..)
            | Command::Delete(_)
            | Command::Subscribe(_)
            | Command::Unsubscribe(_)
            | Command::Status(..)
            | Command::Rename(..)
            | Command::List { .. }
    )
}

/// A BAD when a sequence set names a message beyond `n` (the session's message count), or
/// `*` while the mailbox is empty (RFC 9051 §9: "The server should respond with a tagged BAD
/// response to a command that uses a message sequence number greater than the number of
/// messages in the selected mailbox. This includes "*" if the selected mailbox is empty.").
/// `$` holds UIDs and is never out of range.
fn check_seq_set(set: &SeqSet, n: usize) -> Result<(), Resp> {
    let SeqSet::Ranges(ranges) = set else {
        return Ok(());
    };
    for &(a, b) in ranges {
        for x in [a, b] {
            if x == STAR && n == 0 {
                return Err(Resp::Bad(
                    "Invalid sequence set: the mailbox is empty, so * names no message".into(),
                ));
            }
            if x != STAR && x as usize > n {
                return Err(Resp::Bad(format!(
                    "Invalid sequence number {x}: the mailbox has {n} message{}",
                    if n == 1 { "" } else { "s" }
                )));
            }
        }
    }
    Ok(())
}

/// The next change from the store: `Some(None)` when changes were lost (lagged), `None`
/// when the feed closed.
async fn recv_event(w: &mut Option<Changes>) -> Option<Option<Arc<Change>>> {
    match w {
        Some(r) => match r.recv().await {
            Ok(change) => Some(Some(change)),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(None),
            Err(broadcast::error::RecvError::Closed) => None,
        },
        None => std::future::pending().await,
    }
}

/// What a sync applies to a session's view: expunged UIDs (ascending, all in the view),
/// flag changes newer than the view's, and new messages (ascending UIDs above the view's).
#[derive(Debug, Default, PartialEq)]
struct Delta {
    gone: Vec<u32>,
    flags: Vec<(u32, Vec<String>, u64)>,
    appended: Vec<MessageMeta>,
}

impl Delta {
    /// Compare the view with the mailbox as read from the store (both in UID order).
    fn between(view: &View, fresh: &[MessageMeta]) -> Delta {
        let in_fresh = |uid: u32| fresh.binary_search_by_key(&uid, |m| m.uid);
        let mut d = Delta::default();
        for (i, uid) in view.uids().enumerate() {
            match in_fresh(uid) {
                Err(_) => d.gone.push(uid),
                Ok(j) if fresh[j].modseq != view.modseq(i) => {
                    d.flags.push((uid, fresh[j].flags.clone(), fresh[j].modseq))
                }
                Ok(_) => {}
            }
        }
        let last = view.last_uid();
        d.appended = fresh[fresh.partition_point(|m| m.uid <= last)..].to_vec();
        d
    }

    /// Fold the feed's changes (in order) into one delta against the view. A flag change
    /// older than what the view (or an earlier change) has is dropped; a message added
    /// and expunged in the same batch is never shown.
    fn from_changes(view: &View, changes: &[Arc<Change>]) -> Delta {
        let mut d = Delta::default();
        let mut flags: HashMap<u32, (Vec<String>, u64)> = HashMap::new();
        let mut gone: Vec<u32> = Vec::new();
        for change in changes {
            match change.as_ref() {
                Change::Appended { messages, .. } => {
                    for m in messages {
                        let last = d.appended.last().map_or(view.last_uid(), |a| a.uid);
                        if m.uid > last {
                            d.appended.push(m.clone());
                        }
                    }
                }
                Change::Flags { changes, .. } => {
                    for (uid, f, modseq) in changes {
                        let newer = flags.get(uid).is_none_or(|(_, ms)| modseq > ms);
                        if newer {
                            flags.insert(*uid, (f.clone(), *modseq));
                        }
                    }
                }
                Change::Expunged { uids, .. } => gone.extend_from_slice(uids),
                _ => {}
            }
        }
        gone.sort_unstable();
        gone.dedup();
        d.appended.retain(|m| gone.binary_search(&m.uid).is_err());
        for m in &mut d.appended {
            if let Some((f, ms)) = flags.remove(&m.uid)
                && ms > m.modseq
            {
                m.flags = f;
                m.modseq = ms;
            }
        }
        d.gone = gone
            .into_iter()
            .filter(|u| view.position(*u).is_some())
            .collect();
        let mut flags: Vec<(u32, Vec<String>, u64)> = flags
            .into_iter()
            .filter(|(uid, (_, ms))| {
                d.gone.binary_search(uid).is_err()
                    && view.position(*uid).is_some_and(|i| *ms > view.modseq(i))
            })
            .map(|(uid, (f, ms))| (uid, f, ms))
            .collect();
        flags.sort_unstable_by_key(|f| f.0);
        d.flags = flags;
        d
    }
}

fn has_flag(m: &MessageMeta, f: &str) -> bool {
    has(&m.flags, f)
}

fn has(flags: &[String], f: &str) -> bool {
    flags.iter().any(|x| x.eq_ignore_ascii_case(f))
}

fn has_modseq_key(k: &SearchKey) -> bool {
    match k {
        SearchKey::Modseq(_) => true,
        SearchKey::And(v) => v.iter().any(has_modseq_key),
        SearchKey::Or(a, b) => has_modseq_key(a) || has_modseq_key(b),
        SearchKey::Not(a) => has_modseq_key(a),
        _ => false,
    }
}

/// Sorted numbers as a compact IMAP set: `1:3,7,9:10`.
pub fn compress(nums: &[u32]) -> String {
    let mut v = nums.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let start = v[i];
        let mut end = start;
        while i + 1 < v.len() && v[i + 1] == end + 1 {
            i += 1;
            end = v[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}:{end}")
        });
        i += 1;
    }
    out.join(",")
}

/// Numbers in the given order (COPYUID pairs must correspond).
fn list_plain(nums: &[u32]) -> String {
    nums.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn join_part(p: &[u32]) -> String {
    p.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(".")
}

fn section_name(s: &Section) -> String {
    let mut out = join_part(&s.part);
    let kind = match &s.kind {
        SectionKind::Full => String::new(),
        SectionKind::Header => "HEADER".into(),
        SectionKind::Text => "TEXT".into(),
        SectionKind::Mime => "MIME".into(),
        SectionKind::HeaderFields(f) => format!("HEADER.FIELDS ({})", f.join(" ").to_uppercase()),
        SectionKind::HeaderFieldsNot(f) => {
            format!("HEADER.FIELDS.NOT ({})", f.join(" ").to_uppercase())
        }
    };
    if !kind.is_empty() {
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(&kind);
    }
    out
}

fn write_partial(line: &mut Vec<u8>, data: &[u8], partial: Option<(u64, u64)>, nil: bool) {
    match partial {
        Some((off, len)) => {
            line.extend_from_slice(format!("<{off}> ").as_bytes());
            let s = (off as usize).min(data.len());
            let e = (off.saturating_add(len) as usize).min(data.len());
            literal(line, &data[s..e]);
        }
        None if nil => line.extend_from_slice(b" NIL"),
        None => {
            line.push(b' ');
            literal(line, data);
        }
    }
}

/// Bare LF → CRLF (a lone CR is kept), as stored messages are CRLF.
pub fn normalize_crlf(m: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.len() + m.len() / 50);
    for (i, &b) in m.iter().enumerate() {
        if b == b'\n' && (i == 0 || m[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// IMAP LIST wildcard match: `*` matches anything, `%` anything but `/`.
///
/// Dynamic programming over (pattern position, name position), so the time is bounded by
/// their product whatever the pattern: a backtracking matcher takes exponential time on a
/// pattern like `*a*a*a*a*a*b` (a client-chosen LIST pattern could stall a worker thread).
pub fn wildmatch(pattern: &str, name: &str) -> bool {
    fn m(p: &[u8], n: &[u8]) -> bool {
        // at[j]: the pattern so far matches n[..j].
        let mut at = vec![false; n.len() + 1];
        at[0] = true;
        let mut next = vec![false; n.len() + 1];
        for &c in p {
            match c {
                b'*' => {
                    let mut any = false;
                    for j in 0..=n.len() {
                        any |= at[j];
                        next[j] = any;
                    }
                }
                b'%' => {
                    let mut any = false;
                    for j in 0..=n.len() {
                        if j > 0 && n[j - 1] == b'/' {
                            any = false;
                        }
                        any |= at[j];
                        next[j] = any;
                    }
                }
                _ => {
                    next[0] = false;
                    for j in 1..=n.len() {
                        next[j] = at[j - 1] && n[j - 1] == c;
                    }
                }
            }
            std::mem::swap(&mut at, &mut next);
            if !at.contains(&true) {
                return false;
            }
        }
        at[n.len()]
    }
    // "INBOX" is case-insensitive, also as the start of a pattern. Compared as bytes: the
    // pattern may start with a multi-byte character (slicing the str there would panic).
    let p = pattern.as_bytes();
    if name == "INBOX" && p.len() >= 5 && p[..5].eq_ignore_ascii_case(b"INBOX") {
        let mut q = b"INBOX".to_vec();
        q.extend_from_slice(&p[5..]);
        return m(&q, name.as_bytes());
    }
    m(p, name.as_bytes())
}

/// Helper for tests and tools: write a string as IMAP would.
pub fn imap_string(s: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    string(&mut v, s);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metas(uids: &[u32]) -> Vec<MessageMeta> {
        uids.iter()
            .map(|&uid| MessageMeta {
                uid,
                blob: 0,
                size: 0,
                flags: vec![],
                internal_date: 0,
                modseq: 1,
            })
            .collect()
    }

    /// The feed's changes fold into what a re-read would find, without reading.
    #[test]
    fn changes_fold_into_the_same_delta_a_reread_finds() {
        let view = View::new(&metas(&[1, 2, 3]));
        let meta = |uid: u32, flags: &[&str], modseq: u64| MessageMeta {
            uid,
            blob: 0,
            size: 0,
            flags: flags.iter().map(|f| f.to_string()).collect(),
            internal_date: 0,
            modseq,
        };
        let changes = [
            Change::Appended {
                mailbox: 1,
                messages: vec![meta(4, &[], 5), meta(5, &[], 6)],
            },
            // A newer flag change of 2 arrives before an older one: the older is dropped.
            Change::Flags {
                mailbox: 1,
                changes: vec![(2, vec!["\\Seen".into(), "$B".into()], 9)],
            },
            Change::Flags {
                mailbox: 1,
                changes: vec![(2, vec!["\\Seen".into()], 8), (4, vec!["$A".into()], 7)],
            },
            // Expunged: one the view has, one appended in this batch, one unknown.
            Change::Expunged {
                mailbox: 1,
                uids: vec![5, 3, 77],
                modseq: 10,
            },
            // The session's own STORE, already in its view (same MODSEQ): nothing to do.
            Change::Flags {
                mailbox: 1,
                changes: vec![(1, vec![], 1)],
            },
            // An append the view already has (read at SELECT): skipped.
            Change::Appended {
                mailbox: 1,
                messages: vec![meta(2, &[], 1)],
            },
        ]
        .map(Arc::new);
        let d = Delta::from_changes(&view, &changes);
        assert_eq!(d.gone, vec![3]);
        assert_eq!(
            d.flags,
            vec![(2, vec!["\\Seen".to_string(), "$B".to_string()], 9)]
        );
        assert_eq!(d.appended, vec![meta(4, &["$A"], 7)]);
        // The same end state read from the store gives the same delta.
        let fresh = [
            meta(1, &[], 1),
            meta(2, &["\\Seen", "$B"], 9),
            meta(4, &["$A"], 7),
        ];
        assert_eq!(Delta::between(&view, &fresh), d);
    }

    #[test]
    fn resolve_sets() {
        let m = View::new(&metas(&[2, 5, 6, 9, 20]));
        let r = |uid, s: SeqSet| resolve_set(&m, uid, &s, &[6, 20]);
        let ranges = |v: &[(u32, u32)]| SeqSet::Ranges(v.to_vec());
        // Sequence numbers, `*`, reversed ranges, overlaps, beyond the end.
        assert_eq!(r(false, ranges(&[(1, 2)])), vec![0, 1]);
        assert_eq!(r(false, ranges(&[(STAR, 4)])), vec![3, 4]);
        assert_eq!(
            r(false, ranges(&[(4, 9), (2, 3), (3, 3)])),
            vec![1, 2, 3, 4]
        );
        assert_eq!(r(false, ranges(&[(6, 9)])), Vec::<usize>::new());
        // UIDs: ranges between existing UIDs, `*` is the highest UID, even if below.
        assert_eq!(r(true, ranges(&[(3, 6)])), vec![1, 2]);
        assert_eq!(r(true, ranges(&[(21, STAR)])), vec![4]);
        // 4294967295 is a number, not `*` (RFC 9051 §9).
        assert_eq!(r(true, ranges(&[(21, u32::MAX)])), Vec::<usize>::new());
        assert_eq!(r(true, ranges(&[(1, 1), (7, 8)])), Vec::<usize>::new());
        assert_eq!(r(true, ranges(&[(9, 9), (2, 2)])), vec![0, 3]);
        // `$` holds UIDs.
        assert_eq!(r(true, SeqSet::Saved), vec![2, 4]);
        assert_eq!(r(false, SeqSet::Saved), vec![2, 4]);
        // Empty mailbox.
        let empty = View::default();
        assert!(resolve_set(&empty, false, &ranges(&[(1, STAR)]), &[]).is_empty());
        assert!(resolve_set(&empty, true, &ranges(&[(1, STAR)]), &[]).is_empty());
        assert!(resolve_set(&empty, true, &ranges(&[(1, u32::MAX)]), &[]).is_empty());
    }

    #[test]
    fn sequence_numbers_beyond_the_mailbox_are_bad() {
        let r = |v: &[(u32, u32)]| SeqSet::Ranges(v.to_vec());
        let bad = |set: SeqSet, n| matches!(check_seq_set(&set, n), Err(Resp::Bad(_)));
        assert!(!bad(r(&[(1, 3)]), 3));
        assert!(!bad(r(&[(STAR, 1)]), 3));
        assert!(bad(r(&[(u32::MAX, 1)]), 3)); // a number, not `*`
        assert!(bad(r(&[(1, 4)]), 3));
        assert!(bad(r(&[(2, 2), (4, 4)]), 3));
        assert!(bad(r(&[(1, 1)]), 0));
        assert!(bad(r(&[(STAR, STAR)]), 0)); // `*` in an empty mailbox
        assert!(!bad(SeqSet::Saved, 0));
    }

    #[test]
    fn sets_and_wildcards() {
        assert_eq!(compress(&[5, 1, 2, 3, 9]), "1:3,5,9");
        assert!(wildmatch("*", "a/b"));
        assert!(!wildmatch("%", "a/b"));
        assert!(wildmatch("a/%", "a/b"));
        assert!(wildmatch("inbox", "INBOX"));
        assert!(wildmatch("inbox/%", "INBOX") == wildmatch("INBOX/%", "INBOX"));
        assert!(wildmatch("%/%", "a/b") && !wildmatch("%/%", "a/b/c") && wildmatch("%/*", "a/b/c"));
        assert!(wildmatch("a*%b", "axxb") && !wildmatch("a%b", "a/b") && wildmatch("a*b", "a/b"));
        assert!(
            wildmatch("", "") && !wildmatch("", "a") && wildmatch("**", "") && !wildmatch("x", "")
        );
        // A pattern starting with a multi-byte character (this panicked: the INBOX check
        // sliced the str at byte 5).
        assert!(!wildmatch(
            "\u{2024}\u{2024}/bob@example.org/INBOX",
            "INBOX"
        ));
        assert!(!wildmatch("INB\u{e9}", "INBOX"));
        // Many stars against a long name that almost matches: polynomial, not exponential
        // (this did not finish with the old backtracking matcher).
        let name = "a".repeat(250);
        assert!(!wildmatch(&format!("{}b", "*a".repeat(40)), &name));
        assert!(wildmatch(&format!("{}%", "%a".repeat(40)), &name));
        // UTF-8 names and patterns (a multi-byte character across byte 5 once panicked).
        assert!(wildmatch("Bücher*", "Bücher/2024"));
        assert!(wildmatch("日本語/%", "日本語/台北"));
        assert!(!wildmatch("日本語/%", "日本語/台北/x"));
        assert!(!wildmatch("Bücher", "INBOX"));
        assert_eq!(normalize_crlf(b"a\nb\r\nc\rd"), b"a\r\nb\r\nc\rd");
    }

    fn live(sort: bool, uids: &[u32]) -> LiveSearch {
        LiveSearch {
            tag: "C01".into(),
            uid: true,
            key: SearchKey::All,
            sort: sort.then(|| {
                vec![sort::Criterion {
                    key: sort::SortKey::Arrival,
                    reverse: false,
                }]
            }),
            uids: uids.to_vec(),
        }
    }

    #[test]
    fn context_updates_follow_rfc_5267() {
        let same = |u: u32| u;
        // §4.3.3: a result of 2734:2735 that becomes 2731:2735; the preferred form.
        let l = live(true, &[2734, 2735]);
        assert_eq!(
            l.changes(&[2731, 2732, 2733, 2734, 2735], &same),
            "* ESEARCH (TAG \"C01\") UID ADDTO (1 2731:2733)\r\n"
        );
        // §4.3.4: removals at positions, each counted once the runs before are gone; the
        // order of a sorted result is kept in its sets.
        let l = live(true, &[9, 3, 7, 5, 1]);
        assert_eq!(
            l.changes(&[3, 1], &same),
            "* ESEARCH (TAG \"C01\") UID REMOVEFROM (1 9 2 7,5)\r\n"
        );
        let l = live(true, &[9, 3]);
        assert_eq!(
            l.changes(&[4, 9, 8, 3, 2], &same),
            "* ESEARCH (TAG \"C01\") UID ADDTO (1 4 3 8 5 2)\r\n"
        );
        // A SEARCH context: position 0, sets in mailbox order.
        let l = live(false, &[1, 2, 3, 4]);
        assert_eq!(
            l.changes(&[1, 4, 6, 7], &same),
            "* ESEARCH (TAG \"C01\") UID REMOVEFROM (0 2:3)\r\n* ESEARCH (TAG \"C01\") UID ADDTO (0 6:7)\r\n"
        );
        assert_eq!(l.changes(&[1, 2, 3, 4], &same), "");
    }

    #[test]
    fn partial_ranges() {
        let r = [5, 7, 9, 11];
        assert_eq!(partial("PARTIAL 2:3", &r), ("2:3", &r[1..3]));
        assert_eq!(partial("PARTIAL 3:10", &r), ("3:10", &r[2..]));
        assert_eq!(partial("PARTIAL 9:10", &r).1, &[] as &[u32]);
    }
}
