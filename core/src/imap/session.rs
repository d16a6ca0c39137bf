//! The IMAP session loop: reads and frames commands (literals included), checks each
//! against the state it is valid in ([`super::state`]), dispatches it to its handler in
//! [`super::cmd`], and writes the replies with back-pressure.
//!
//! State per RFC 9051 §3: not authenticated → authenticated → selected → logout. Untagged
//! updates from other sessions (new mail, flag changes, expunges) are merged into the
//! session's view by `Session::sync` ([`super::sync`]); EXPUNGE responses are held back during
//! FETCH, STORE and SEARCH (RFC 9051 §7.5.1).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::codec::{Frame, frame, parse};
use super::mutf7;
use super::response::{mailbox_name, string};
use super::types::*;
use crate::imap::cmd::{CmdResult, Resp, no, store_err};
use crate::imap::selected::{Selected, has_flag};
use crate::imap::state::State;
use crate::login::{Credentials, Login};
use crate::session::{Conn, Input};
use crate::store::{Change, Changes};
use tokio::sync::broadcast;

/// Output buffered before the session waits for the client to read it: FETCH responses
/// and pipelined commands are rendered at most this far ahead of the socket.
pub(super) const OUT_HIGH: usize = 256 * 1024;

/// Largest literal before login (a user name or a password in a literal).
pub(super) const LOGIN_LITERAL_MAX: u64 = 8 * 1024;

pub(super) enum Pending {
    None,
    /// AUTHENTICATE PLAIN waiting for the client's response line.
    AuthPlain(String),
    /// IDLE with this tag, until DONE.
    Idle(String),
}

/// How a missing mailbox is answered ([`Session::mailbox_named`]).
pub(super) enum Missing {
    /// `[TRYCREATE]`: the client may create it and retry.
    TryCreate,
    /// `[NONEXISTENT]`.
    Nonexistent,
}

/// What an IMAP session uses of the server.
pub struct Deps {
    /// Settings (`[imap]`).
    pub config: Arc<crate::config::Config>,
    /// The store holding the mailboxes.
    pub store: crate::store::Store,
    /// TLS for STARTTLS and the `imaps` listener.
    pub tls: tokio_rustls::TlsAcceptor,
    /// The hook chain (`on_fetch`).
    pub hooks: Arc<crate::hooks::HookChain>,
    /// LOGIN and AUTHENTICATE.
    pub login: Login,
    /// Header keys of SORT and THREAD, by blob (shared by all IMAP sessions).
    pub sort_keys: Arc<super::sort_keys::KeyCache>,
    /// Fires on shutdown.
    pub shutdown: tokio_util::sync::CancellationToken,
}

pub(super) struct Session {
    pub(super) deps: Arc<Deps>,
    pub(super) conn: Conn,
    pub(super) listener: crate::listener::Listener,
    pub(super) peer: SocketAddr,
    pub(super) acked: usize,
    pub(super) user: Option<String>,
    pub(super) selected: Option<Selected>,
    pub(super) rev2: bool,
    /// `ENABLE UTF8=ACCEPT` (RFC 6855): mailbox names are UTF-8 on the wire.
    pub(super) utf8: bool,
    pub(super) condstore: bool,
    pub(super) qresync: bool,
    pub(super) saved: Vec<u32>,
    pub(super) watch: Option<Changes>,
    pub(super) pending: Pending,
    /// Changes of the selected mailbox not yet applied to its view, in feed order.
    pub(super) changes: Vec<Arc<Change>>,
    /// Changes were lost (the feed lagged): the next sync re-reads the mailbox.
    pub(super) reread: bool,
    pub(super) logout: bool,
    pub(super) starttls: bool,
    /// This session's slot among its user's `imap.max_connections_per_user`; released when
    /// the session is dropped, however it ends.
    pub(super) _user_slot: Option<crate::store::lease::Held>,
}

/// The session on an open stream (after an implicit-TLS handshake; `crate::session::serve`
/// does that and the logging around it).
pub async fn session(
    deps: Arc<Deps>,
    stream: crate::net::Stream,
    peer: SocketAddr,
    listener: crate::listener::Listener,
) -> std::io::Result<()> {
    let mut s = Session {
        deps,
        conn: Conn::new(stream, 4096),
        listener,
        peer,
        acked: 0,
        user: None,
        selected: None,
        rev2: false,
        utf8: false,
        condstore: false,
        qresync: false,
        saved: Vec::new(),
        watch: None,
        pending: Pending::None,
        changes: Vec::new(),
        reread: false,
        logout: false,
        starttls: false,
        _user_slot: None,
    };
    s.run().await
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

impl Session {
    pub(super) fn capabilities(&self) -> String {
        let mut c = String::from("IMAP4rev1 IMAP4rev2 LITERAL+ SASL-IR ENABLE ID");
        if self.user.is_none() {
            if !self.conn.is_tls() {
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
    pub(super) fn utf8_names(&self) -> bool {
        self.utf8 || self.rev2
    }

    /// Write a stored (UTF-8) mailbox name as this client reads names.
    pub(super) fn put_name(&self, out: &mut Vec<u8>, name: &str) {
        if self.utf8_names() {
            mailbox_name(out, name);
        } else {
            string(out, mutf7::encode(name).as_bytes());
        }
    }

    /// Decode the modified UTF-7 mailbox names (and LIST reference and patterns) of a
    /// command from an IMAP4rev1 client into the store's UTF-8.
    pub(super) fn decode_names(&self, mut command: Command) -> Result<Command, Resp> {
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

    pub(super) fn auth_allowed(&self) -> bool {
        self.conn.is_tls() || self.deps.config.imap.allow_plaintext_auth
    }

    pub(super) fn untagged(&mut self, s: &str) {
        self.conn.out.extend_from_slice(b"* ");
        self.conn.out.extend_from_slice(s.as_bytes());
        self.conn.out.extend_from_slice(b"\r\n");
    }

    /// Write what is buffered, waiting for the client to take it (back-pressure). A write
    /// that fails, or makes no progress for `imap.idle_timeout`, ends the session: no
    /// command renders more for a vanished client.
    pub(super) async fn flush(&mut self) -> std::io::Result<()> {
        let written = self
            .conn
            .flush(Some(self.deps.config.imap.idle_timeout))
            .await;
        if self.conn.out.capacity() > OUT_HIGH * 2 {
            // One big FETCH must not leave its buffer with an idle session.
            self.conn.out = Vec::with_capacity(4096);
        }
        written
    }

    /// A CONDSTORE-enabling command (RFC 7162 §3.1: FETCH or SEARCH with MODSEQ, STORE with
    /// UNCHANGEDSINCE, STATUS with HIGHESTMODSEQ): from now on untagged FETCH responses carry
    /// MODSEQ, and the first time, with a mailbox selected, the client is told its
    /// HIGHESTMODSEQ (it did not ask for it at SELECT).
    pub(super) fn enable_condstore(&mut self) {
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
    pub(super) async fn drain_output(&mut self) -> bool {
        !self.conn.is_broken() && (self.conn.out.len() < OUT_HIGH || self.flush().await.is_ok())
    }

    pub(super) async fn run(&mut self) -> std::io::Result<()> {
        let greet = format!(
            "OK [CAPABILITY {}] {} Corvus IMAP ready",
            self.capabilities(),
            self.deps.config.hostname
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
                if !self.conn.start_tls(&self.deps.tls).await? {
                    return Ok(());
                }
                continue;
            }
            self.flush().await?;
            let cfg = &self.deps.config.imap;
            let timeout = if self.user.is_none() {
                cfg.login_timeout
                    .saturating_sub(started.elapsed())
                    .max(Duration::from_millis(1))
            } else {
                cfg.idle_timeout
            };
            let idle = matches!(self.pending, Pending::Idle(_));
            let waiting_for_command = self.conn.inbuf.is_empty();
            let until = Instant::now() + timeout;
            tokio::select! {
                r = self.conn.read(until, &self.deps.shutdown, waiting_for_command) => match r? {
                    Input::Data => {}
                    Input::Closed => return Ok(()),
                    Input::TimedOut => {
                        self.untagged("BYE Autologout; idle for too long");
                        return self.flush().await;
                    }
                    Input::Shutdown => {
                        self.untagged("BYE [UNAVAILABLE] Server shutting down");
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
            }
        }
    }

    /// Handle every complete command in the buffer.
    pub(super) async fn process(&mut self) -> std::io::Result<()> {
        loop {
            if self.logout || self.starttls {
                return Ok(());
            }
            // Continuation lines (AUTHENTICATE response, IDLE's DONE).
            if !matches!(self.pending, Pending::None) {
                let Some(nl) = memchr::memchr(b'\n', &self.conn.inbuf) else {
                    if self.conn.inbuf.len() > 64 * 1024 {
                        self.untagged("BYE Line too long");
                        self.logout = true;
                    }
                    return Ok(());
                };
                let line: Vec<u8> = self.conn.inbuf.drain(..nl + 1).collect();
                let text = String::from_utf8_lossy(&line).trim().to_string();
                match std::mem::replace(&mut self.pending, Pending::None) {
                    Pending::Idle(tag) => {
                        if text.eq_ignore_ascii_case("DONE") {
                            self.sync(true).await;
                            self.conn.out.extend_from_slice(
                                format!("{tag} OK IDLE terminated\r\n").as_bytes(),
                            );
                        } else {
                            self.conn.out.extend_from_slice(
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
            let cfg = &self.deps.config.imap;
            // Before login a command needs no more than a user name and a password: small
            // literals, and one command no longer than a line (chained literals included).
            let (max_literal, max_command) = if self.user.is_none() {
                (LOGIN_LITERAL_MAX, cfg.max_line as u64)
            } else {
                (cfg.max_literal, cfg.max_literal + cfg.max_line as u64)
            };
            match frame(
                &self.conn.inbuf,
                self.acked,
                cfg.max_line,
                max_literal,
                max_command,
            ) {
                Frame::NeedMore { continuation } => {
                    if continuation {
                        self.conn
                            .out
                            .extend_from_slice(b"+ Ready for literal data\r\n");
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
                    self.conn.inbuf.drain(..end);
                    self.acked = 0;
                    self.conn.out.extend_from_slice(
                        format!("{tag} NO [TOOBIG] Literal too large\r\n").as_bytes(),
                    );
                }
                Frame::Complete(n) => {
                    let bytes: Vec<u8> = self.conn.inbuf.drain(..n).collect();
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
                            self.conn.out.extend_from_slice(
                                format!("{} NO {}\r\n", e.tag, e.text).as_bytes(),
                            );
                        }
                        Err(e) => {
                            self.conn.out.extend_from_slice(
                                format!("{} BAD {}\r\n", e.tag, e.text).as_bytes(),
                            );
                            if self.conn.count_error(self.deps.config.imap.max_errors) {
                                self.untagged("BYE Too many errors");
                                self.logout = true;
                            }
                        }
                    }
                }
            }
        }
    }

    pub(super) fn finish(&mut self, tag: &str, r: CmdResult) {
        let line = match r {
            Ok(t) => format!("{tag} OK {t}\r\n"),
            Err(Resp::No(t)) => format!("{tag} NO {t}\r\n"),
            Err(Resp::Bad(t)) => {
                // Counted; the limit is enforced at the next unparsable command.
                let _ = self.conn.count_error(usize::MAX);
                format!("{tag} BAD {t}\r\n")
            }
        };
        self.conn.out.extend_from_slice(line.as_bytes());
    }

    /// The logged-in user's mailbox `name`, or NO: `[TRYCREATE]` where the client may
    /// create it and retry (APPEND, COPY; RFC 9051 §7.1), `[NONEXISTENT]` elsewhere.
    pub(super) async fn mailbox_named(
        &self,
        name: &str,
        missing: Missing,
    ) -> Result<crate::store::Mailbox, Resp> {
        let user = self.user.as_deref().unwrap_or_default();
        self.deps
            .store
            .mailbox(user, name)
            .await
            .map_err(store_err)?
            .ok_or_else(|| match missing {
                Missing::TryCreate => no("[TRYCREATE] No such mailbox"),
                Missing::Nonexistent => no("[NONEXISTENT] No such mailbox"),
            })
    }

    /// Where the session is (RFC 9051 §3).
    pub(super) fn state(&self) -> State {
        match (&self.user, &self.selected) {
            (None, _) => State::NotAuthenticated,
            (Some(_), None) => State::Authenticated,
            (Some(_), Some(_)) => State::Selected,
        }
    }

    pub(super) async fn command(&mut self, t: Tagged) {
        let Tagged { tag, command } = t;
        if let Err(text) = super::state::check(&command, self.state()) {
            return self.finish(&tag, Err(Resp::Bad(text.into())));
        }
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
            Command::StartTls if self.conn.is_tls() => Err(Resp::Bad("TLS already active".into())),
            Command::StartTls => {
                self.finish(&tag, Ok("Begin TLS negotiation now".into()));
                self.starttls = true;
                return;
            }
            Command::Login(_, _) | Command::Authenticate(..) if !self.auth_allowed() => Err(no(
                "[PRIVACYREQUIRED] Use STARTTLS or the TLS port before logging in",
            )),
            Command::Login(u, p) => self.login(Credentials::password(u, p, "LOGIN")).await,
            Command::Authenticate(mech, initial) => {
                if mech != "PLAIN" {
                    Err(no("[CANNOT] Unsupported mechanism"))
                } else if let Some(ir) = initial {
                    self.auth_plain(&ir).await
                } else {
                    self.conn.out.extend_from_slice(b"+ \r\n");
                    self.pending = Pending::AuthPlain(tag);
                    return;
                }
            }
            Command::Enable(caps) => {
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
    pub(super) async fn named(&mut self, tag: String, command: Command) {
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
                .deps
                .store
                .set_subscribed(self.me(), &n, true)
                .await
                .map_err(store_err)
                .map(|_| "SUBSCRIBE completed".into()),
            Command::Unsubscribe(n) => self
                .deps
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
                self.conn.out.extend_from_slice(b"+ idling\r\n");
                self.pending = Pending::Idle(tag);
                return;
            }
            Command::Close => {
                let sel = self.selected.take().expect("selected");
                self.saved.clear();
                if !sel.read_only {
                    // The stored flags, not this session's view: another session may have
                    // set or cleared \Deleted since this one last synchronised.
                    let uids: Vec<u32> = self
                        .deps
                        .store
                        .messages(sel.mailbox.id)
                        .await
                        .unwrap_or_default()
                        .iter()
                        .filter(|m| has_flag(m, "\\Deleted"))
                        .map(|m| m.uid)
                        .collect();
                    let user = self.user.clone().unwrap_or_default();
                    if let Err(e) = self.deps.store.expunge(&user, sel.mailbox.id, &uids).await {
                        tracing::error!(error = %e, "expunge on CLOSE failed");
                    }
                    let _ = self.deps.store.commit().await;
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
    pub(super) fn me(&self) -> &str {
        self.user.as_deref().unwrap_or_default()
    }
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
