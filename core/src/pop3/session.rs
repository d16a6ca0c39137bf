//! The POP3 session loop: moves bytes between the socket and the codec, keeps the RFC 1939
//! state (AUTHORIZATION, TRANSACTION, UPDATE), authenticates, locks and snapshots the
//! maildrop, serves messages through the fetch hook, and applies deletions on QUIT.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tracing::Instrument;

use super::codec::{
    Command, MAX_COMMAND_LINE, MAX_SASL_LINE, Phase, RespCode, Response, SyntaxError, next_line,
    parse_command, write_message,
};
use super::maildrop::Maildrop;

use crate::hooks::{HookCtx, HookPoint, Verdict};
use crate::net::Stream;
use crate::server::Shared;

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
    _lock: crate::store::lease::Held,
}

enum Flow {
    Continue,
    Close,
    StartTls,
}

struct Session {
    shared: Arc<Shared>,
    stream: Stream,
    listener: crate::listener::Listener,
    peer: SocketAddr,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    state: State,
    errors: usize,
    discard_line: bool,
}

/// Serve one POP3 connection. `implicit_tls` for the `pop3s` listener.
pub async fn serve(
    shared: Arc<Shared>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    listener: crate::listener::Listener,
    implicit_tls: bool,
) {
    let span = tracing::info_span!("pop3", session = %crate::net::session_id(), peer = %peer, listener = listener.name());
    async move {
        let Some(stream) = crate::net::accept_stream(tcp, implicit_tls, &shared.tls.pop3).await
        else {
            return;
        };
        let mut s = Session {
            shared,
            stream,
            listener,
            peer,
            inbuf: Vec::new(),
            out: Vec::with_capacity(16 * 1024),
            state: State::Authorization { user: None },
            errors: 0,
            discard_line: false,
        };
        tracing::debug!("connected");
        if let Err(e) = s.run().await {
            tracing::debug!(error = %e, "session ended with I/O error");
        }
        tracing::debug!("closed");
    }
    .instrument(span)
    .await
}

impl Session {
    fn reply(&mut self, r: Response) {
        if r.is_err() {
            tracing::debug!(reply = %r, "refused");
        }
        r.write_to(&mut self.out);
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    fn phase(&self) -> Phase {
        match self.state {
            State::Transaction(_) => Phase::Transaction,
            _ => Phase::Authorization,
        }
    }

    /// Whether USER/PASS and AUTH may be used on this connection (RFC 2595 §2.2).
    fn login_allowed(&self) -> bool {
        self.stream.is_tls() || self.shared.config.pop3.allow_plaintext_auth
    }

    async fn run(&mut self) -> std::io::Result<()> {
        // No APOP timestamp: APOP is not offered (RFC 1939 §7 makes it optional).
        self.reply(Response::ok("Corvus POP3 server ready"));
        let idle = self.shared.config.pop3.idle_timeout;
        // Until a login succeeds the whole session has this long (a client trickling a
        // byte at a time is not idle, but it is not logging in either).
        let login_by = Instant::now() + self.shared.config.pop3.login_timeout;
        loop {
            match self.process_input().await? {
                Flow::Continue => {}
                Flow::Close => return self.flush().await,
                Flow::StartTls => {
                    self.flush().await?;
                    // RFC 2595 §4 / RFC 3207 §4.2 by analogy: nothing pipelined behind STLS
                    // may be acted on once TLS is up.
                    self.inbuf.clear();
                    if !self.stream.start_tls(&self.shared.tls.pop3).await {
                        return Ok(());
                    }
                    self.state = State::Authorization { user: None };
                    continue;
                }
            }
            self.flush().await?;
            let waiting_for_command = self.inbuf.is_empty();
            let until = if matches!(self.state, State::Transaction(_)) {
                Instant::now() + idle
            } else {
                (Instant::now() + idle).min(login_by)
            };
            let read = tokio::select! {
                r = tokio::time::timeout_at(until.into(), self.stream.read_more(&mut self.inbuf)) => r,
                _ = self.shared.shutdown.cancelled(), if waiting_for_command => {
                    // No UPDATE state: marks are dropped, nothing is deleted.
                    self.reply(Response::err_code(RespCode::SysTemp, "Server shutting down, try again later"));
                    return self.flush().await;
                }
            };
            match read {
                // A dropped connection never enters UPDATE (RFC 1939 §6): nothing deleted.
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_)
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
                Err(_) => {
                    // RFC 1939 §3: on the autologout timer, close without UPDATE and without
                    // a response.
                    tracing::info!(after = ?idle, "idle timeout");
                    return Ok(());
                }
            }
        }
    }

    /// The longest line accepted in the current state for a line starting like `buf`.
    fn line_limit(&self, buf: &[u8]) -> usize {
        let auth = buf.len() >= 5 && buf[..5].eq_ignore_ascii_case(b"AUTH ");
        if matches!(self.state, State::Sasl) || auth {
            MAX_SASL_LINE
        } else {
            MAX_COMMAND_LINE
        }
    }

    /// Act on every complete line buffered; returns when more input is needed.
    async fn process_input(&mut self) -> std::io::Result<Flow> {
        loop {
            let Some((line, used)) = next_line(&self.inbuf) else {
                if self.inbuf.len() > self.line_limit(&self.inbuf) {
                    // Drop the partial over-long line and skip the rest of it.
                    self.inbuf.clear();
                    if !self.discard_line {
                        self.discard_line = true;
                        self.reply(Response::err("Line too long"));
                        if self.count_error() {
                            return Ok(Flow::Close);
                        }
                    }
                }
                return Ok(Flow::Continue);
            };
            let line = line.to_vec();
            self.inbuf.drain(..used);
            if std::mem::take(&mut self.discard_line) {
                continue;
            }
            if line.len() + 2 > self.line_limit(&line) {
                self.reply(Response::err("Line too long"));
                if self.count_error() {
                    return Ok(Flow::Close);
                }
                continue;
            }
            let flow = if matches!(self.state, State::Sasl) {
                self.sasl_response(&line).await
            } else {
                self.command(&line).await
            };
            match flow {
                Flow::Continue => {}
                other => return Ok(other),
            }
            if self.out.len() >= FLUSH_AT {
                self.flush().await?;
            }
        }
    }

    /// Count a bad command; true when the session must close.
    fn count_error(&mut self) -> bool {
        self.errors += 1;
        if self.errors >= self.shared.config.pop3.max_errors {
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
                if self.stream.is_tls() {
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
                self.login(user, password, "USER").await
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
                        self.out.extend_from_slice(b"PLAIN\r\n.\r\n");
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
                self.out.extend_from_slice(body.as_bytes());
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
                self.out.extend_from_slice(body.as_bytes());
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
        if !self.stream.is_tls() {
            caps.push("STLS");
        }
        caps.push("IMPLEMENTATION Corvus");
        self.reply(Response::ok("Capability list follows"));
        for c in caps {
            self.out.extend_from_slice(c.as_bytes());
            self.out.extend_from_slice(b"\r\n");
        }
        self.out.extend_from_slice(b".\r\n");
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
        let message = match self.shared.store.blob(entry.blob).await {
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
        ctx.tls = self.stream.is_tls();
        ctx.user = open.user.clone();
        ctx.fetch = Some(crate::hooks::FetchFacts {
            mailbox: "INBOX".into(),
            uid: entry.uid,
            protocol: "pop3",
        });
        ctx.message = Some(message.clone());
        match self.shared.hooks.run(&ctx).verdict {
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
        write_message(&mut self.out, &message, body_lines);
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
        if creds.proxies() {
            // No proxy logins: acting as another user is not offered.
            let user = creds.authcid.as_str();
            let Ok(attempt) = self.shared.auth_throttle.begin(self.peer.ip(), user).await else {
                self.reply(Response::err_code(
                    RespCode::SysTemp,
                    "Too many failed logins from your address, try again later",
                ));
                return Flow::Close;
            };
            return self.auth_failed(attempt, user);
        }
        self.login(creds.authcid, creds.password, "PLAIN").await
    }

    /// Check credentials, lock and snapshot the maildrop, and enter TRANSACTION.
    async fn login(&mut self, user: String, pass: String, mech: &'static str) -> Flow {
        let ip = self.peer.ip();
        let Ok(attempt) = self.shared.auth_throttle.begin(ip, &user).await else {
            // Not [AUTH]: the credentials may be right; the address is cooling down.
            tracing::info!(user = %user, "login refused: too many failures");
            self.reply(Response::err_code(
                RespCode::SysTemp,
                "Too many failed logins from your address, try again later",
            ));
            return Flow::Close;
        };
        let valid = match self
            .shared
            .credential_cache
            .verify(&self.shared.store, &user, &pass)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                // Not the client's failure: the attempt is settled without counting.
                attempt.succeed();
                tracing::error!(error = %e, "credential check failed");
                self.reply(Response::err_code(
                    RespCode::SysTemp,
                    "Cannot check credentials now, try again later",
                ));
                return Flow::Continue;
            }
        };
        let mut ctx = HookCtx::new(HookPoint::Auth, self.listener, ip);
        ctx.tls = self.stream.is_tls();
        ctx.credentials = Some(crate::hooks::Credentials {
            username: user.clone(),
            password: pass,
            mechanism: mech.to_string(),
            valid: valid.is_some(),
        });
        let account = match self.shared.hooks.run(&ctx).verdict {
            Verdict::Accept => match crate::accounts::hook_accepted(
                &self.shared.store,
                &self.shared.config.domains,
                &user,
                valid,
            )
            .await
            {
                Some(a) => a,
                None => return self.auth_failed(attempt, &user),
            },
            Verdict::Continue => match valid {
                Some(a) => a,
                None => return self.auth_failed(attempt, &user),
            },
            v @ Verdict::Tempfail { .. } => {
                attempt.succeed();
                self.reply(Response::err_code(RespCode::SysTemp, v.wording()));
                return Flow::Continue;
            }
            _ => return self.auth_failed(attempt, &user),
        };
        attempt.succeed();

        // RFC 1939 §4: the maildrop is locked for the whole TRANSACTION state.
        // A lease in the store, so the lock holds across every node sharing it.
        let lock = match crate::store::lease::take(
            &self.shared.store,
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
        let store = &self.shared.store;
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
            _lock: lock,
        }));
        Flow::Continue
    }

    /// A refused login: count it against the client's address, close once it is throttled.
    fn auth_failed(&mut self, attempt: crate::net::AuthAttempt, user: &str) -> Flow {
        tracing::info!(user = %user, "authentication failed");
        if attempt.fail() {
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
        let store = &self.shared.store;
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
            Ok(removed) => match self.shared.store.commit().await {
                Ok(()) => Ok(removed.len()),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        // The lock is released only now, after the deletions are in place.
        drop(open);
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

/// The answer to USER, PASS and AUTH on a plain connection when that is not allowed.
fn plaintext_refusal() -> Response {
    Response::err_code(
        RespCode::Auth,
        "Plaintext authentication disallowed on non-secure connections; use STLS first",
    )
}

#[cfg(test)]
mod tests {
    //! Transcripts over a real loopback socket, with hook engines that only tests can
    //! install (the e2e suite cannot configure a fetch hook yet).

    use super::*;
    use crate::accounts;
    use crate::config::Config;
    use crate::hooks::{Actions, HookChain, HookEngine, HookError};
    use crate::net::{AuthThrottle, ConnLimits};
    use crate::store::{Placement, Store};
    use std::time::Duration;
    use tokio::io::{AsyncBufReadExt, BufReader};

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
                    code: 550,
                    enhanced: None,
                    text: "Quarantined by policy".into(),
                },
                Some((_, 3, _)) => Verdict::Tempfail {
                    code: 451,
                    enhanced: None,
                    text: "Scanner busy".into(),
                },
                _ => Verdict::Continue,
            })
        }
    }

    async fn start(dir: &std::path::Path) -> (Arc<Shared>, SocketAddr) {
        let mut config = Config {
            data_dir: dir.to_path_buf(),
            ..Config::default()
        };
        config.pop3.allow_plaintext_auth = true;
        let store: Store = Arc::new(crate::store::MemoryStore::new());
        store
            .create_account("alice@example.org", &accounts::hash_password("pw"))
            .await
            .unwrap();
        for body in ["one", "two", "three"] {
            let msg = format!("Subject: {body}\r\n\r\n{body}\r\n");
            let to = [Placement {
                user: "alice@example.org".into(),
                mailbox: "INBOX".into(),
                flags: Vec::new(),
            }];
            store.deliver(msg.as_bytes(), 0, &to).await.unwrap();
        }
        let shared = Arc::new(Shared {
            tls: crate::tls::acceptors(&config).unwrap(),
            resolver: crate::dns::resolver(&config).unwrap(),
            fcrdns_cache: Default::default(),
            hooks: HookChain::new(vec![Arc::new(FetchPolicy)]),
            auth_throttle: AuthThrottle::new(5, 10, Duration::from_secs(60)),
            conn_limits: ConnLimits::new(10, 10),
            queue_wakeup: Arc::default(),

            credential_cache: Arc::new(accounts::CredentialCache::new(Duration::from_secs(60))),
            shutdown: Default::default(),
            message_memory: crate::memory::MemoryBudget::new(1 << 30),
            sort_keys: Default::default(),
            sender_auth: crate::sender_auth::SenderAuth::new(
                &config,
                crate::dns::resolver(&config).unwrap(),
                store.clone(),
            ),
            config: Arc::new(config),
            store,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let s2 = shared.clone();
        tokio::spawn(async move {
            while let Ok((tcp, peer)) = listener.accept().await {
                tokio::spawn(serve(
                    s2.clone(),
                    tcp,
                    peer,
                    crate::listener::Listener::Pop3,
                    false,
                ));
            }
        });
        (shared, addr)
    }

    /// Run `C:` lines against the server and check each `S:` line (a prefix of the reply).
    async fn transcript(addr: SocketAddr, trace: &str) {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (r, mut w) = tcp.into_split();
        let mut r = BufReader::new(r);
        for step in trace.lines().map(str::trim).filter(|l| !l.is_empty()) {
            // "S:" alone (its trailing space trimmed away) is an empty line.
            let step = if step == "S:" { "S: " } else { step };
            if let Some(c) = step.strip_prefix("C: ") {
                w.write_all(format!("{c}\r\n").as_bytes()).await.unwrap();
            } else if let Some(want) = step.strip_prefix("S: ") {
                let mut line = String::new();
                r.read_line(&mut line).await.unwrap();
                let ok = if want.is_empty() {
                    line == "\r\n"
                } else {
                    line.starts_with(want) && line.ends_with("\r\n")
                };
                assert!(ok, "expected {want:?}, got {line:?}");
            } else {
                panic!("bad transcript step {step:?}");
            }
        }
    }

    #[tokio::test]
    async fn fetch_hook_can_refuse_retr_and_top() {
        let d = tempfile::tempdir().unwrap();
        let (shared, addr) = start(d.path()).await;
        transcript(
            addr,
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
        let (_shared, addr) = start(d.path()).await;
        transcript(
            addr,
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
