//! The POP3 session loop: moves bytes between the socket and the codec, keeps the RFC 1939
//! state (AUTHORIZATION, TRANSACTION, UPDATE), authenticates, locks and snapshots the
//! maildrop, serves messages through the fetch hook, and applies deletions on QUIT.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::codec::{
    Command, MAX_COMMAND_LINE, MAX_SASL_LINE, Phase, RespCode, Response, SyntaxError, next_line,
    parse_command, write_message,
};
use super::maildrop::Maildrop;

use crate::hooks::{HookChain, HookCtx, HookPoint, Verdict};
use crate::login::{Credentials, Login, Refusal};
use crate::session::{Conn, Flow, Input, Line};

/// Output is written to the socket once this much is buffered, even mid-pipeline.
const FLUSH_AT: usize = 256 * 1024;

/// What the session waits for.
enum State {
    /// AUTHORIZATION, possibly after a USER command naming `user`.
    Authorization {
        /// Name given with USER, waiting for PASS.
        user: Option<String>,
    },
    /// AUTHORIZATION, inside `AUTH PLAIN` after the `+ ` continuation (RFC 5034 §4).
    Sasl,
    /// TRANSACTION: logged in with the maildrop locked and snapshotted.
    Transaction(Box<Open>),
}

/// An open maildrop.
struct Open {
    user: String,
    maildrop: Maildrop,
    /// UIDs sent with RETR that were not `\Seen` yet; flagged `\Seen` on QUIT.
    retrieved: HashSet<u32>,
    /// Released when the session ends, however it ends.
    lock: crate::store::lease::Held,
}

/// What a POP3 session uses of the server.
pub struct Deps {
    /// Settings (`[pop3]`).
    pub config: Arc<crate::config::Config>,
    /// The store holding the maildrops.
    pub store: crate::store::Store,
    /// TLS for STLS and the `pop3s` listener.
    pub tls: tokio_rustls::TlsAcceptor,
    /// The hook chain (`on_fetch`).
    pub hooks: Arc<HookChain>,
    /// USER/PASS and AUTH.
    pub login: Login,
    /// Fires on shutdown.
    pub shutdown: tokio_util::sync::CancellationToken,
}

struct Session {
    deps: Arc<Deps>,
    conn: Conn,
    listener: crate::listener::Listener,
    peer: SocketAddr,
    state: State,
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
        conn: Conn::new(stream, 16 * 1024),
        listener,
        peer,
        state: State::Authorization { user: None },
    };
    s.run().await
}

impl Session {
    fn reply(&mut self, r: Response) {
        if r.is_err() {
            tracing::debug!(reply = %r, "refused");
        }
        r.write_to(&mut self.conn.out);
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        self.conn.flush(None).await
    }

    fn phase(&self) -> Phase {
        match self.state {
            State::Transaction(_) => Phase::Transaction,
            _ => Phase::Authorization,
        }
    }

    /// Whether USER/PASS and AUTH may be used on this connection (RFC 2595 §2.2).
    fn login_allowed(&self) -> bool {
        self.conn.is_tls() || self.deps.config.pop3.allow_plaintext_auth
    }

    async fn run(&mut self) -> std::io::Result<()> {
        // No APOP timestamp: APOP is not offered (RFC 1939 §7 makes it optional).
        self.reply(Response::ok("Corvus POP3 server ready"));
        let idle = self.deps.config.pop3.idle_timeout;
        // Until a login succeeds the whole session has this long (a client trickling a
        // byte at a time is not idle, but it is not logging in either).
        let login_by = Instant::now() + self.deps.config.pop3.login_timeout;
        loop {
            match self.process_input().await? {
                Flow::Continue => {}
                Flow::Close => return self.flush().await,
                Flow::StartTls => {
                    if !self.conn.start_tls(&self.deps.tls).await? {
                        return Ok(());
                    }
                    self.state = State::Authorization { user: None };
                    continue;
                }
            }
            self.flush().await?;
            let waiting_for_command = self.conn.inbuf.is_empty();
            let until = if matches!(self.state, State::Transaction(_)) {
                Instant::now() + idle
            } else {
                (Instant::now() + idle).min(login_by)
            };
            match self
                .conn
                .read(until, &self.deps.shutdown, waiting_for_command)
                .await?
            {
                Input::Data => {}
                // A dropped connection never enters UPDATE (RFC 1939 §6): nothing deleted.
                Input::Closed => return Ok(()),
                Input::Shutdown => {
                    // No UPDATE state: marks are dropped, nothing is deleted.
                    self.reply(Response::err_code(
                        RespCode::SysTemp,
                        "Server shutting down, try again later",
                    ));
                    return self.flush().await;
                }
                Input::TimedOut
                    if !matches!(self.state, State::Transaction(_))
                        && Instant::now() >= login_by =>
                {
                    tracing::info!("login timeout");
                    self.reply(Response::err_code(
                        RespCode::SysTemp,
                        "Login timeout, closing",
                    ));
                    return self.flush().await;
                }
                Input::TimedOut => {
                    // RFC 1939 §3: on the autologout timer, close without UPDATE and without
                    // a response.
                    tracing::info!(after = ?idle, "idle timeout");
                    return Ok(());
                }
            }
        }
    }

    /// Act on every complete line buffered; returns when more input is needed.
    async fn process_input(&mut self) -> std::io::Result<Flow> {
        loop {
            let sasl = matches!(self.state, State::Sasl);
            let line = match self.conn.next_line(next_line, |l| line_limit(sasl, l)) {
                Line::More => return Ok(Flow::Continue),
                Line::TooLong => {
                    self.reply(Response::err("Line too long"));
                    if self.count_error() {
                        return Ok(Flow::Close);
                    }
                    continue;
                }
                Line::Line(line) => line,
            };
            let flow = if sasl {
                self.sasl_response(&line).await
            } else {
                self.command(&line).await
            };
            match flow {
                Flow::Continue => {}
                other => return Ok(other),
            }
            if self.conn.out.len() >= FLUSH_AT {
                self.flush().await?;
            }
        }
    }

    /// Count a bad command; true when the session must close.
    fn count_error(&mut self) -> bool {
        if self.conn.count_error(self.deps.config.pop3.max_errors) {
            self.reply(Response::err("Too many errors, closing connection"));
            true
        } else {
            false
        }
    }

    /// Answer a refusal caused by the client and count it.
    fn bad(&mut self, r: Response) -> Flow {
        self.reply(r);
        if self.count_error() {
            Flow::Close
        } else {
            Flow::Continue
        }
    }

    async fn command(&mut self, line: &[u8]) -> Flow {
        let cmd = match parse_command(line) {
            Ok(c) => c,
            Err(e) => {
                let text = match e {
                    SyntaxError::Unknown => {
                        let verb = String::from_utf8_lossy(line);
                        let verb = verb.split(' ').next().unwrap_or("").to_ascii_uppercase();
                        format!("Unknown command {verb}")
                    }
                    other => other.to_string(),
                };
                return self.bad(Response::err(text));
            }
        };
        if !cmd.allowed_in(self.phase()) {
            let text = match self.phase() {
                Phase::Authorization => format!("{} is only valid after login", cmd.name()),
                Phase::Transaction => format!("{} is not valid after login", cmd.name()),
            };
            return self.bad(Response::err(text));
        }
        match cmd {
            Command::Capa => {
                self.capa();
                Flow::Continue
            }
            Command::Quit => self.quit().await,
            Command::Stls => {
                if self.conn.is_tls() {
                    self.bad(Response::err("Command not permitted when TLS active"))
                } else {
                    self.reply(Response::ok("Begin TLS negotiation"));
                    Flow::StartTls
                }
            }
            Command::User(name) => {
                if !self.login_allowed() {
                    return self.bad(plaintext_refusal());
                }
                self.state = State::Authorization { user: Some(name) };
                // Say nothing about whether the user exists.
                self.reply(Response::ok("Send your password"));
                Flow::Continue
            }
            Command::Pass(password) => {
                if !self.login_allowed() {
                    return self.bad(plaintext_refusal());
                }
                let user =
                    match std::mem::replace(&mut self.state, State::Authorization { user: None }) {
                        State::Authorization { user: Some(u) } => u,
                        _ => return self.bad(Response::err("Give USER first")),
                    };
                self.login(Credentials::password(user, password, "USER"))
                    .await
            }
            Command::Apop => self.bad(Response::err(
                "APOP is not supported; use USER/PASS or AUTH PLAIN",
            )),
            Command::Auth { mechanism, initial } => {
                if !self.login_allowed() {
                    return self.bad(plaintext_refusal());
                }
                self.state = State::Authorization { user: None };
                match (mechanism.as_deref(), initial) {
                    // RFC 1734 style listing, which some clients still probe with.
                    (None, _) => {
                        self.reply(Response::ok("Supported mechanisms follow"));
                        self.conn.out.extend_from_slice(b"PLAIN\r\n.\r\n");
                        Flow::Continue
                    }
                    (Some("PLAIN"), Some(ir)) => self.auth_plain(&ir).await,
                    (Some("PLAIN"), None) => {
                        self.reply(Response::Continue(String::new()));
                        self.state = State::Sasl;
                        Flow::Continue
                    }
                    (Some(_), _) => self.bad(Response::err("Unrecognized authentication type")),
                }
            }
            Command::Stat => {
                let (n, size) = self.open().maildrop.stat();
                self.reply(Response::ok(format!("{n} {size}")));
                Flow::Continue
            }
            Command::List(None) => {
                let open = self.open();
                let (n, size) = open.maildrop.stat();
                let mut body = String::with_capacity(n * 12 + 3);
                for (i, e) in open.maildrop.live() {
                    body.push_str(&format!("{i} {}\r\n", e.size));
                }
                body.push_str(".\r\n");
                self.reply(Response::ok(format!("{n} messages ({size} octets)")));
                self.conn.out.extend_from_slice(body.as_bytes());
                Flow::Continue
            }
            Command::List(Some(n)) => {
                let r = match self.open().maildrop.get(n) {
                    Ok(e) => Response::ok(format!("{n} {}", e.size)),
                    Err(e) => Response::err(e.to_string()),
                };
                self.reply(r);
                Flow::Continue
            }
            Command::Uidl(None) => {
                let open = self.open();
                let mut body = String::new();
                for (i, e) in open.maildrop.live() {
                    body.push_str(&format!("{i} {}\r\n", open.maildrop.unique_id(e)));
                }
                body.push_str(".\r\n");
                self.reply(Response::ok("Unique-ID listing follows"));
                self.conn.out.extend_from_slice(body.as_bytes());
                Flow::Continue
            }
            Command::Uidl(Some(n)) => {
                let open = self.open();
                let r = match open.maildrop.get(n) {
                    Ok(e) => Response::ok(format!("{n} {}", open.maildrop.unique_id(e))),
                    Err(e) => Response::err(e.to_string()),
                };
                self.reply(r);
                Flow::Continue
            }
            Command::Retr(n) => {
                self.send_message(n, None).await;
                Flow::Continue
            }
            Command::Top(n, lines) => {
                self.send_message(n, Some(lines)).await;
                Flow::Continue
            }
            Command::Dele(n) => {
                let r = match self.open_mut().maildrop.delete(n) {
                    Ok(()) => Response::ok(format!("Message {n} deleted")),
                    Err(e) => Response::err(e.to_string()),
                };
                self.reply(r);
                Flow::Continue
            }
            Command::Rset => {
                let open = self.open_mut();
                open.maildrop.reset();
                let (n, size) = open.maildrop.stat();
                self.reply(Response::ok(format!(
                    "Maildrop has {n} messages ({size} octets)"
                )));
                Flow::Continue
            }
            Command::Noop => {
                self.reply(Response::ok(""));
                Flow::Continue
            }
        }
    }

    /// The open maildrop. Only called for commands that `allowed_in` limits to TRANSACTION.
    fn open(&self) -> &Open {
        match &self.state {
            State::Transaction(open) => open,
            _ => unreachable!("TRANSACTION command outside TRANSACTION state"),
        }
    }

    fn open_mut(&mut self) -> &mut Open {
        match &mut self.state {
            State::Transaction(open) => open,
            _ => unreachable!("TRANSACTION command outside TRANSACTION state"),
        }
    }

    /// CAPA (RFC 2449 §5). The list depends only on the connection, not on the state:
    /// capabilities of the AUTHORIZATION state must be announced in both states.
    fn capa(&mut self) {
        let mut caps = vec!["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"];
        if self.login_allowed() {
            caps.push("USER");
            caps.push("SASL PLAIN");
        }
        if !self.conn.is_tls() {
            caps.push("STLS");
        }
        caps.push("IMPLEMENTATION Corvus");
        self.reply(Response::ok("Capability list follows"));
        for c in caps {
            self.conn.out.extend_from_slice(c.as_bytes());
            self.conn.out.extend_from_slice(b"\r\n");
        }
        self.conn.out.extend_from_slice(b".\r\n");
    }

    /// RETR (`body_lines` None) or TOP: fetch hook, then the dot-stuffed message.
    async fn send_message(&mut self, n: u32, body_lines: Option<u32>) {
        let open = self.open();
        let entry = match open.maildrop.get(n) {
            Ok(e) => e.clone(),
            Err(e) => {
                self.reply(Response::err(e.to_string()));
                return;
            }
        };
        let message = match self.deps.store.blob(entry.blob).await {
            Ok(m) => Arc::new(m),
            Err(crate::store::StoreError::NotFound(_)) => {
                // Expunged by another session (IMAP) after our snapshot.
                self.reply(Response::err(format!("Message {n} no longer exists")));
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, uid = entry.uid, "reading message failed");
                self.reply(Response::err_code(
                    RespCode::SysTemp,
                    "Cannot read the message now, try again later",
                ));
                return;
            }
        };
        let mut ctx = HookCtx::new(HookPoint::Fetch, self.listener, self.peer.ip());
        ctx.tls = self.conn.is_tls();
        ctx.user = open.user.clone();
        ctx.fetch = Some(crate::hooks::FetchFacts {
            mailbox: "INBOX".into(),
            uid: entry.uid,
            protocol: "pop3",
        });
        ctx.message = Some(message.clone());
        match self.deps.hooks.run_async(&ctx, None).await.verdict {
            v @ Verdict::Reject { .. } => {
                self.reply(Response::err(v.wording()));
                return;
            }
            v @ Verdict::Tempfail { .. } => {
                self.reply(Response::err_code(RespCode::SysTemp, v.wording()));
                return;
            }
            _ => {}
        }
        match body_lines {
            None => {
                self.reply(Response::ok(format!("{} octets", entry.size)));
                if !entry.seen {
                    self.open_mut().retrieved.insert(entry.uid);
                }
            }
            Some(_) => self.reply(Response::ok("Top of message follows")),
        }
        write_message(&mut self.conn.out, &message, body_lines);
    }

    async fn sasl_response(&mut self, line: &[u8]) -> Flow {
        self.state = State::Authorization { user: None };
        let text = String::from_utf8_lossy(line).trim().to_string();
        if text == "*" {
            // RFC 5034 §4: a cancelled exchange is answered with -ERR.
            self.reply(Response::err("AUTH cancelled"));
            return Flow::Continue;
        }
        self.auth_plain(&text).await
    }

    /// RFC 4616 PLAIN (`crate::sasl`).
    async fn auth_plain(&mut self, b64: &str) -> Flow {
        let creds = match crate::sasl::plain(b64) {
            Ok(c) => c,
            Err(crate::sasl::SaslError::Base64) => {
                return self.bad(Response::err("Invalid base64 in AUTH response"));
            }
            Err(e) => return self.bad(Response::err(e.to_string())),
        };
        self.login(Credentials::plain(creds)).await
    }

    /// Check credentials (`crate::login`), lock and snapshot the maildrop, and enter
    /// TRANSACTION.
    async fn login(&mut self, creds: Credentials) -> Flow {
        let mech = creds.mech;
        let mut ctx = HookCtx::new(HookPoint::Auth, self.listener, self.peer.ip());
        ctx.tls = self.conn.is_tls();
        let account = match self.deps.login.login(ctx, None, creds).await {
            Ok(account) => account,
            // Not [AUTH]: the credentials may be right; the address is cooling down.
            Err(Refusal::Throttled) => {
                self.reply(Response::err_code(
                    RespCode::SysTemp,
                    "Too many failed logins from your address, try again later",
                ));
                return Flow::Close;
            }
            Err(Refusal::Failed { closing } | Refusal::NotAuthorized { closing }) => {
                return self.auth_failed(closing);
            }
            Err(Refusal::Temporary { enhanced, text }) => {
                let text = crate::hooks::outcome::wording(enhanced.as_ref(), &text);
                self.reply(Response::err_code(RespCode::SysTemp, text));
                return Flow::Continue;
            }
        };

        // RFC 1939 §4: the maildrop is locked for the whole TRANSACTION state.
        // A lease in the store, so the lock holds across every node sharing it.
        let lock = match crate::store::lease::take(
            &self.deps.store,
            &format!("pop3:{}", crate::store::normalize_address(&account)),
        )
        .await
        {
            Ok(lock) => lock,
            Err(e) => {
                tracing::error!(error = %e, "taking the maildrop lock failed");
                self.reply(Response::err_code(RespCode::SysTemp, "Try again later"));
                return Flow::Continue;
            }
        };
        let Some(lock) = lock else {
            tracing::info!(user = %account, "maildrop in use by another POP3 session");
            self.reply(Response::err_code(
                RespCode::InUse,
                "Maildrop is locked by another POP3 session",
            ));
            return Flow::Continue;
        };
        let store = &self.deps.store;
        let snapshot = async {
            let Some(inbox) = store.mailbox(&account, "INBOX").await? else {
                return Ok(None);
            };
            let messages = store.messages(inbox.id).await?;
            Ok::<_, crate::store::StoreError>(Some(Maildrop::new(
                inbox.id,
                inbox.uidvalidity,
                &messages,
            )))
        }
        .await;
        let maildrop = match snapshot {
            Ok(Some(m)) => m,
            Ok(None) => {
                tracing::warn!(user = %account, "account has no INBOX");
                self.reply(Response::err_code(
                    RespCode::SysPerm,
                    "There is no mailbox for this account",
                ));
                return Flow::Continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "opening the maildrop failed");
                self.reply(Response::err_code(
                    RespCode::SysTemp,
                    "Cannot open the maildrop now, try again later",
                ));
                return Flow::Continue;
            }
        };
        let (n, size) = maildrop.stat();
        tracing::info!(user = %account, mech, messages = n, "logged in");
        self.reply(Response::ok(format!(
            "Logged in, {n} messages ({size} octets)"
        )));
        self.state = State::Transaction(Box::new(Open {
            user: account,
            maildrop,
            retrieved: HashSet::new(),
            lock,
        }));
        Flow::Continue
    }

    /// A refused login: count it against the client's address, close once it is throttled.
    fn auth_failed(&mut self, closing: bool) -> Flow {
        if closing {
            self.reply(Response::err_code(
                RespCode::Auth,
                "Authentication failed; too many failures from your address, closing",
            ));
            Flow::Close
        } else {
            self.reply(Response::err_code(RespCode::Auth, "Authentication failed"));
            Flow::Continue
        }
    }

    /// QUIT: in TRANSACTION, enter UPDATE (RFC 1939 §6): flag retrieved messages `\Seen`,
    /// expunge the ones marked deleted, and make that durable before answering.
    async fn quit(&mut self) -> Flow {
        let State::Transaction(open) =
            std::mem::replace(&mut self.state, State::Authorization { user: None })
        else {
            self.reply(Response::ok("Corvus POP3 server signing off"));
            return Flow::Close;
        };
        let deleted = open.maildrop.deleted_uids();
        let seen: Vec<u32> = open
            .retrieved
            .iter()
            .copied()
            .filter(|u| !deleted.contains(u))
            .collect();
        // Only the holder of the lock may change the maildrop: a lease that ran out while
        // the store was unreachable may have gone to another session since.
        if !deleted.is_empty() || !seen.is_empty() {
            let why = match open.lock.confirm().await {
                Ok(true) => None,
                Ok(false) => Some("the maildrop lock was lost to another session".to_string()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(why) = why {
                tracing::warn!(error = %why, "update state refused: maildrop lock not confirmed");
                drop(open);
                self.reply(Response::err_code(
                    RespCode::SysTemp,
                    "The maildrop lock could not be confirmed; nothing was deleted, try again",
                ));
                return Flow::Close;
            }
        }
        let store = &self.deps.store;
        let (user, mailbox_id) = (open.user.clone(), open.maildrop.mailbox_id);
        let updated = async {
            if !seen.is_empty() {
                // Best effort: a message read over POP3 shows as read over IMAP.
                if let Err(e) = mark_seen(store, &user, mailbox_id, &seen).await {
                    tracing::warn!(error = %e, "marking retrieved messages \\Seen failed");
                }
            }
            if deleted.is_empty() {
                Ok(Vec::new())
            } else {
                store.expunge(&user, mailbox_id, &deleted).await
            }
        }
        .await;
        let result = match updated {
            Ok(removed) if deleted.is_empty() => Ok(removed.len()),
            Ok(removed) => match self.deps.store.commit().await {
                Ok(()) => Ok(removed.len()),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        // The lock is released only now, after the deletions are in place, and before the
        // answer: a client that logs in again at once (here or on another node) finds it
        // free.
        if let Err(e) = open.lock.release().await {
            tracing::warn!(error = %e, "could not give the maildrop lock back");
        }
        match result {
            Ok(n) => {
                tracing::info!(deleted = n, "update state done");
                self.reply(Response::ok(format!(
                    "Corvus POP3 server signing off ({n} messages deleted)"
                )));
            }
            Err(e) => {
                tracing::error!(error = %e, "update state failed");
                self.reply(Response::err_code(
                    RespCode::SysTemp,
                    "Some deleted messages not removed",
                ));
            }
        }
        Flow::Close
    }
}

/// Add `\Seen` to `uids`, keeping their other flags as they are now.
async fn mark_seen(
    store: &crate::store::Store,
    user: &str,
    mailbox_id: u64,
    uids: &[u32],
) -> crate::store::Result<()> {
    let wanted: HashSet<u32> = uids.iter().copied().collect();
    let changes: Vec<(u32, Vec<String>)> = store
        .messages(mailbox_id)
        .await?
        .into_iter()
        .filter(|m| wanted.contains(&m.uid))
        .filter(|m| !m.flags.iter().any(|f| f.eq_ignore_ascii_case("\\Seen")))
        .map(|m| {
            let mut flags = m.flags;
            flags.push("\\Seen".into());
            (m.uid, flags)
        })
        .collect();
    if !changes.is_empty() {
        store.set_flags(user, mailbox_id, &changes).await?;
    }
    Ok(())
}

/// The longest line accepted for a line starting like `buf` (`sasl`: inside an AUTH
/// exchange, whose responses are longer).
fn line_limit(sasl: bool, buf: &[u8]) -> usize {
    let auth = buf.len() >= 5 && buf[..5].eq_ignore_ascii_case(b"AUTH ");
    if sasl || auth {
        MAX_SASL_LINE
    } else {
        MAX_COMMAND_LINE
    }
}

/// The answer to USER, PASS and AUTH on a plain connection when that is not allowed.
fn plaintext_refusal() -> Response {
    Response::err_code(
        RespCode::Auth,
        "Plaintext authentication disallowed on non-secure connections; use STLS first",
    )
}

#[cfg(test)]
mod tests {
    //! Transcripts over an in-memory pipe, with hook engines that only tests can install
    //! (the e2e suite cannot configure a fetch hook yet).

    use super::*;
    use crate::hooks::{Actions, HookEngine, HookError};
    use crate::testing;

    /// Refuses fetches of UID 2 permanently and of UID 3 temporarily.
    struct FetchPolicy;

    impl HookEngine for FetchPolicy {
        fn name(&self) -> &str {
            "test-fetch"
        }
        fn handles(&self, point: HookPoint) -> bool {
            point == HookPoint::Fetch
        }
        fn call(&self, ctx: &HookCtx, _: &mut Actions) -> Result<Verdict, HookError> {
            assert_eq!(ctx.user, "alice@example.org");
            assert!(ctx.message.is_some());
            let fetch = ctx
                .fetch
                .as_ref()
                .map(|f| (f.mailbox.as_str(), f.uid, f.protocol));
            Ok(match fetch {
                Some(("INBOX", 2, "pop3")) => Verdict::Reject {
                    enhanced: None,
                    code: 550,
                    text: "Quarantined by policy".into(),
                },
                Some((_, 3, _)) => Verdict::Tempfail {
                    enhanced: None,
                    code: 451,
                    text: "Scanner busy".into(),
                },
                _ => Verdict::Continue,
            })
        }
    }

    /// The POP3 services over a store with three messages, with [`FetchPolicy`].
    async fn deps(dir: &std::path::Path) -> Arc<Deps> {
        let config = testing::config(dir);
        let store = testing::store(&["one", "two", "three"]).await;
        let hooks = testing::hooks(vec![Arc::new(FetchPolicy)]);
        Arc::new(Deps {
            tls: crate::tls::acceptors(&config).unwrap().pop3,
            login: testing::login(&config, &store, &hooks),
            hooks,
            shutdown: Default::default(),
            config: Arc::new(config),
            store,
        })
    }

    /// Run `trace` against a session on `deps`.
    async fn transcript(deps: &Arc<Deps>, trace: &str) {
        let (deps, peer) = (deps.clone(), "127.0.0.1:1110".parse().unwrap());
        testing::transcript(
            move |stream| session(deps, stream, peer, crate::listener::Listener::Pop3),
            trace,
        )
        .await;
    }

    #[tokio::test]
    async fn fetch_hook_can_refuse_retr_and_top() {
        let d = tempfile::tempdir().unwrap();
        let shared = deps(d.path()).await;
        transcript(
            &shared,
            "S: +OK Corvus POP3 server ready
             C: USER alice@example.org
             S: +OK
             C: PASS pw
             S: +OK Logged in, 3 messages
             C: RETR 1
             S: +OK 21 octets
             S: Subject: one
             S: 
             S: one
             S: .
             C: RETR 2
             S: -ERR Quarantined by policy
             C: TOP 2 0
             S: -ERR Quarantined by policy
             C: RETR 3
             S: -ERR [SYS/TEMP] Scanner busy
             C: DELE 2
             S: +OK
             C: QUIT
             S: +OK Corvus POP3 server signing off (1 messages deleted)",
        )
        .await;
        // RETR 1 marked the message \Seen; DELE 2 removed it; 3 is untouched.
        let inbox = shared
            .store
            .mailbox("alice@example.org", "INBOX")
            .await
            .unwrap()
            .unwrap();
        let msgs = shared.store.messages(inbox.id).await.unwrap();
        assert_eq!(msgs.iter().map(|m| m.uid).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(msgs[0].flags, vec!["\\Seen".to_string()]);
        assert!(msgs[1].flags.is_empty());
    }

    #[tokio::test]
    async fn rfc1939_states_and_errors() {
        let d = tempfile::tempdir().unwrap();
        let shared = deps(d.path()).await;
        transcript(
            &shared,
            "S: +OK
             C: STAT
             S: -ERR STAT is only valid after login
             C: PASS pw
             S: -ERR Give USER first
             C: USER alice@example.org
             S: +OK
             C: PASS wrong
             S: -ERR [AUTH] Authentication failed
             C: PASS pw
             S: -ERR Give USER first
             C: APOP alice@example.org c4c9334bac560ecc979e58001b3e22fb
             S: -ERR APOP is not supported
             C: AUTH
             S: +OK
             S: PLAIN
             S: .
             C: USER alice@example.org
             S: +OK
             C: PASS pw
             S: +OK Logged in, 3 messages (67 octets)
             C: USER alice@example.org
             S: -ERR USER is not valid after login
             C: LIST
             S: +OK 3 messages (67 octets)
             S: 1 21
             S: 2 21
             S: 3 25
             S: .
             C: UIDL 0
             S: -ERR No such message: 0
             C: DELE 1
             S: +OK Message 1 deleted
             C: LIST 1
             S: -ERR Message 1 already deleted
             C: STAT
             S: +OK 2 46
             C: RSET
             S: +OK Maildrop has 3 messages (67 octets)
             C: NOOP
             S: +OK
             C: QUIT
             S: +OK Corvus POP3 server signing off (0 messages deleted)",
        )
        .await;
    }
}
