//! The SMTP session loop: moves bytes between the socket and the codec, keeps the session
//! state, applies limits and timeouts, and hands accepted messages to the store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tracing::Instrument;

use super::codec::{
    Address, Body, Command, MailParams, RcptParams, SyntaxError, next_line, parse_command,
};
use super::data::{DataProblem, DataReceiver, Feed};
use super::reply::Reply;
use crate::config::{BareLfPolicy, FcrdnsPolicy};
use crate::dns::Fcrdns;
use crate::hooks::{Credentials, HookCtx, HookPoint, Route, Verdict};
use crate::message::rfc5322_now;
use crate::net::Stream;
use crate::server::Shared;
use crate::{accounts, routing};

/// One accepted recipient of the open transaction.
#[derive(Debug, Clone)]
struct Rcpt {
    address: String,
    route: Route,
    params: RcptParams,
    file_into: Option<String>,
}

/// The open mail transaction (between MAIL and the end of data).
#[derive(Debug, Clone)]
struct Transaction {
    from: Address,
    params: MailParams,
    rcpts: Vec<Rcpt>,
    /// SPF results from MAIL FROM (inbound `smtp` only).
    spf: Option<crate::sender_auth::SpfCheck>,
}

/// What the session is waiting for.
enum State {
    /// A command line.
    Command,
    /// Message data after DATA.
    Data(Box<DataReceiver>),
    /// A BDAT chunk of `remaining` bytes; `last` marks the final chunk; `discard` when the
    /// chunk is read only to be thrown away.
    Bdat {
        remaining: u64,
        last: bool,
        discard: bool,
    },
    /// The next AUTH line.
    Auth(AuthStep),
}

enum AuthStep {
    Plain,
    LoginUser,
    LoginPass(String),
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
    helo: Option<String>,
    esmtp: bool,
    user: Option<String>,
    tx: Option<Transaction>,
    bdat: Option<Vec<u8>>,
    /// What already makes the BDAT message unacceptable (too big, no memory).
    bdat_problem: Option<DataProblem>,
    /// This session's share of the server-wide message memory (`smtp.max_message_memory`).
    memory: crate::memory::Reservation,
    errors: usize,
    messages: usize,
    discard_line: bool,
    fcrdns: Option<Fcrdns>,
    fcrdns_task: Option<tokio::task::JoinHandle<Fcrdns>>,
    deadline: Instant,
    /// Per-session hook state (warm plugin instances), dropped with the session.
    hooks: Arc<crate::hooks::HookSession>,
}

/// Serve one SMTP connection. `implicit_tls` for the `submissions` listener.
pub async fn serve(
    shared: Arc<Shared>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    listener: crate::listener::Listener,
    implicit_tls: bool,
) {
    let span = tracing::info_span!("smtp", session = %crate::net::session_id(), peer = %peer, listener = listener.name());
    async move {
        let Some(stream) = crate::net::accept_stream(tcp, implicit_tls, &shared.tls.smtp).await
        else {
            return;
        };
        // A recent client's FCrDNS result is at hand; otherwise the lookups start now and run
        // in the background.
        let ip = peer.ip();
        let fcrdns = shared.fcrdns_cache.get(ip);
        let fcrdns_task = fcrdns.is_none().then(|| {
            let shared = shared.clone();
            tokio::spawn(async move { shared.fcrdns_cache.check(&shared.resolver, ip).await })
        });
        let deadline = Instant::now() + shared.config.smtp.session_timeout;
        let memory = crate::memory::Reservation::new(&shared.message_memory);
        let mut s = Session {
            shared,
            stream,
            listener,
            peer,
            inbuf: Vec::new(),
            out: Vec::with_capacity(1024),
            state: State::Command,
            helo: None,
            esmtp: false,
            user: None,
            tx: None,
            bdat: None,
            bdat_problem: None,
            memory,
            errors: 0,
            messages: 0,
            discard_line: false,
            fcrdns,
            fcrdns_task,
            deadline,
            hooks: Arc::default(),
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
    fn host(&self) -> &str {
        &self.shared.config.hostname
    }

    fn reply(&mut self, r: Reply) {
        if r.code >= 400 {
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

    fn ctx(&self, point: HookPoint) -> HookCtx {
        let mut c = HookCtx::new(point, self.listener, self.peer.ip());
        c.client_ptr = self
            .fcrdns
            .as_ref()
            .map(|f| f.verified_name().to_string())
            .unwrap_or_default();
        c.helo = self.helo.clone().unwrap_or_default();
        c.tls = self.stream.is_tls();
        c.user = self.user.clone().unwrap_or_default();
        c.relay_network = self.shared.config.smtp.in_relay_networks(self.peer.ip());
        if let Some(tx) = &self.tx {
            c.mail_from = tx.from.to_string();
            c.rcpts = tx.rcpts.iter().map(|r| r.address.clone()).collect();
            if let Some(spf) = &tx.spf {
                c.auth = crate::sender_auth::SenderAuth::spf_facts(spf);
            }
        }
        c
    }

    /// Take the reverse-lookup result if it has arrived, without waiting.
    async fn refresh_fcrdns(&mut self) {
        if self.fcrdns.is_none() && self.fcrdns_task.as_ref().is_some_and(|t| t.is_finished()) {
            self.fcrdns().await;
        }
    }

    /// Whether SPF/DKIM/DMARC/ARC checks apply: inbound mail on `smtp` from a client that
    /// has not logged in.
    fn sender_checks(&self) -> bool {
        self.listener == crate::listener::Listener::Smtp
            && self.user.is_none()
            && self.shared.sender_auth.enabled()
    }

    async fn fcrdns(&mut self) -> Fcrdns {
        if let Some(f) = &self.fcrdns {
            return f.clone();
        }
        let f = match self.fcrdns_task.take() {
            Some(t) => match tokio::time::timeout(Duration::from_secs(6), t).await {
                Ok(Ok(f)) => f,
                _ => Fcrdns::TempError,
            },
            None => Fcrdns::TempError,
        };
        self.fcrdns = Some(f.clone());
        f
    }

    async fn run(&mut self) -> std::io::Result<()> {
        // Connect: FCrDNS policy, then the connect hooks.
        // The reverse lookup runs in the background; the greeting waits for it only when the
        // policy rejects on failure (a slow resolver must not stall every connection). Later
        // steps (hooks after connect, the Received header) use the result once it is there.
        let reject_policy = self.shared.config.smtp.fcrdns == FcrdnsPolicy::Reject;
        let f = if reject_policy {
            self.fcrdns().await
        } else {
            Fcrdns::TempError
        };
        if reject_policy && !matches!(f, Fcrdns::Pass(_)) {
            self.reply(Reply::new(
                550,
                "5.7.25",
                "Reverse DNS of your address does not resolve back to it",
            ));
            return self.flush().await;
        }
        let outcome = self
            .shared
            .hooks
            .run_async(&self.ctx(HookPoint::Connect), Some(&*self.hooks))
            .await;
        if let Some(reply) = Reply::refusal(&outcome.verdict) {
            self.reply(reply);
            return self.flush().await;
        }
        let greeting = format!("{} ESMTP Corvus ready", self.host());
        self.reply(Reply::new(220, "", greeting));
        loop {
            match self.process_input().await? {
                Flow::Continue => {}
                Flow::Close => return self.flush().await,
                Flow::StartTls => {
                    self.flush().await?;
                    // RFC 3207 §4.2: discard anything pipelined behind STARTTLS.
                    self.inbuf.clear();
                    if !self.stream.start_tls(&self.shared.tls.smtp).await {
                        return Ok(());
                    }
                    // RFC 3207 §4.2: forget everything learnt before TLS.
                    self.helo = None;
                    self.esmtp = false;
                    self.user = None;
                    self.tx = None;
                    continue;
                }
            }
            // Need more input.
            self.flush().await?;
            let waiting_for_command =
                matches!(self.state, State::Command | State::Auth(_)) && self.inbuf.is_empty();
            let timeout = match self.state {
                State::Data(_) | State::Bdat { .. } => self.shared.config.smtp.data_timeout,
                _ => self.shared.config.smtp.command_timeout,
            };
            let until = (Instant::now() + timeout).min(self.deadline);
            let read = tokio::select! {
                r = tokio::time::timeout_at(until.into(), self.stream.read_more(&mut self.inbuf)) => r,
                _ = self.shared.shutdown.cancelled(), if waiting_for_command => {
                    let r = Reply::shutting_down(self.host());
                    self.reply(r);
                    return self.flush().await;
                }
            };
            match read {
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    tracing::info!("timeout");
                    let r = Reply::timeout(self.host());
                    self.reply(r);
                    return self.flush().await;
                }
            }
        }
    }

    /// Consume as much buffered input as possible. Returns when more input is needed.
    async fn process_input(&mut self) -> std::io::Result<Flow> {
        loop {
            match &mut self.state {
                State::Data(rx) => match rx.feed(&self.inbuf) {
                    Feed::More(n) => {
                        self.inbuf.drain(..n);
                        if !self.memory.cover(rx.kept()) {
                            tracing::warn!(
                                held = self.shared.message_memory.used(),
                                "smtp.max_message_memory reached: message refused with 452"
                            );
                            rx.stop_keeping();
                            self.memory.release();
                        }
                        return Ok(Flow::Continue);
                    }
                    Feed::Done(n) => {
                        self.inbuf.drain(..n);
                        let State::Data(rx) = std::mem::replace(&mut self.state, State::Command)
                        else {
                            unreachable!()
                        };
                        let allow_bare = self.shared.config.smtp.bare_lf == BareLfPolicy::Normalize;
                        let result = rx.finish_with(allow_bare);
                        let reply = self.end_of_data(result).await;
                        self.memory.release();
                        self.reply(reply);
                        if self.shared.shutdown.is_cancelled() {
                            let r = Reply::shutting_down(self.host());
                            self.reply(r);
                            return Ok(Flow::Close);
                        }
                    }
                },
                State::Bdat {
                    remaining,
                    last,
                    discard,
                } => {
                    let take = (*remaining).min(self.inbuf.len() as u64) as usize;
                    let (last, discard) = (*last, *discard);
                    *remaining -= take as u64;
                    let done = *remaining == 0;
                    if !discard && self.bdat_problem.is_none() {
                        let max = self.shared.config.smtp.max_message_size as usize;
                        let buf = self.bdat.get_or_insert_with(Vec::new);
                        if buf.len() + take > max {
                            self.bdat_problem = Some(DataProblem::TooBig);
                            *buf = Vec::new();
                        } else if !self.memory.cover(buf.len() + take) {
                            tracing::warn!(
                                held = self.shared.message_memory.used(),
                                "smtp.max_message_memory reached: message refused with 452"
                            );
                            self.bdat_problem = Some(DataProblem::NoMemory);
                            *buf = Vec::new();
                            self.memory.release();
                        } else {
                            buf.extend_from_slice(&self.inbuf[..take]);
                        }
                    }
                    self.inbuf.drain(..take);
                    if !done {
                        return Ok(Flow::Continue);
                    }
                    self.state = State::Command;
                    let reply = if discard {
                        Reply::bad_sequence("BDAT chunk discarded: no valid transaction")
                    } else if last {
                        let msg = self.bdat.take().unwrap_or_default();
                        let result = if let Some(p) = self.bdat_problem.take() {
                            Err(p)
                        } else {
                            let allow_bare =
                                self.shared.config.smtp.bare_lf == BareLfPolicy::Normalize;
                            super::data::check_chunked(msg, allow_bare)
                        };
                        let r = self.end_of_data(result).await;
                        self.memory.release();
                        r
                    } else {
                        let n = self.bdat.as_ref().map(|b| b.len()).unwrap_or(0);
                        Reply::new(250, "2.0.0", format!("{n} octets received"))
                    };
                    self.reply(reply);
                }
                State::Command | State::Auth(_) => {
                    let max = self.shared.config.smtp.max_command_line;
                    let Some((line, used)) = next_line(&self.inbuf) else {
                        if self.inbuf.len() > max {
                            // Drop the partial over-long line and skip the rest of it.
                            self.inbuf.clear();
                            if !self.discard_line {
                                self.discard_line = true;
                                self.reply(Reply::line_too_long());
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
                    if line.len() + 2 > max {
                        self.reply(Reply::line_too_long());
                        if self.count_error() {
                            return Ok(Flow::Close);
                        }
                        continue;
                    }
                    let flow = if matches!(self.state, State::Auth(_)) {
                        self.auth_line(&line).await
                    } else {
                        self.command(&line).await
                    };
                    match flow {
                        Flow::Continue => {}
                        other => return Ok(other),
                    }
                }
            }
        }
    }

    /// Count a bad command; true when the session must close.
    fn count_error(&mut self) -> bool {
        self.errors += 1;
        if self.errors >= self.shared.config.smtp.max_errors {
            self.reply(Reply::new(
                421,
                "4.7.0",
                "Too many errors, closing connection",
            ));
            true
        } else {
            false
        }
    }

    async fn command(&mut self, line: &[u8]) -> Flow {
        self.refresh_fcrdns().await;
        let cmd = match parse_command(line) {
            Ok(c) => c,
            Err(e) => {
                let r = match e {
                    SyntaxError::Unknown => Reply::unrecognized(),
                    SyntaxError::Binary => {
                        Reply::new(500, "5.5.2", "Invalid characters in command")
                    }
                    SyntaxError::Args(t) => Reply::new(501, "5.5.4", t),
                    SyntaxError::Address(t, side) => Reply::new(
                        501,
                        match side {
                            super::codec::Side::Sender => "5.1.7",
                            super::codec::Side::Recipient => "5.1.3",
                        },
                        t,
                    ),
                    SyntaxError::Param(p) => {
                        Reply::new(555, "5.5.4", format!("Unsupported parameter {p}"))
                    }
                };
                self.reply(r);
                return if self.count_error() {
                    Flow::Close
                } else {
                    Flow::Continue
                };
            }
        };
        match cmd {
            Command::Ehlo(d) => self.hello(d, true).await,
            Command::Helo(d) => self.hello(d, false).await,
            Command::Mail(from, params) => self.mail(from, params).await,
            Command::Rcpt(to, params) => self.rcpt(to, params).await,
            Command::Data => {
                let r = self.check_ready_for_data();
                match r {
                    Some(r) => self.reply(r),
                    None if self.bdat.is_some() => self.reply(Reply::bad_sequence(
                        "DATA cannot follow BDAT in one transaction",
                    )),
                    None if self
                        .tx
                        .as_ref()
                        .is_some_and(|t| t.params.body == Some(Body::BinaryMime)) =>
                    {
                        self.reply(Reply::bad_sequence("BODY=BINARYMIME requires BDAT"))
                    }
                    None => {
                        self.reply(Reply::new(
                            354,
                            "",
                            "Start mail input; end with <CRLF>.<CRLF>",
                        ));
                        let c = &self.shared.config.smtp;
                        // Keep a little more than the limit so "too big" is detected, not truncated silently.
                        self.state = State::Data(Box::new(DataReceiver::new(
                            c.max_message_size as usize + 1,
                            c.max_data_line,
                        )));
                    }
                }
                Flow::Continue
            }
            Command::Bdat(size, last) => {
                let problem = self.check_ready_for_data();
                let discard = problem.is_some();
                if discard {
                    self.bdat = None;
                } else if self.bdat.is_none() {
                    self.bdat = Some(Vec::new());
                }
                if size > self.shared.config.smtp.max_message_size {
                    self.bdat_problem = Some(DataProblem::TooBig);
                    self.bdat = None;
                }
                if size == 0 {
                    self.state = State::Bdat {
                        remaining: 0,
                        last,
                        discard,
                    };
                } else {
                    self.state = State::Bdat {
                        remaining: size,
                        last,
                        discard,
                    };
                }
                Flow::Continue
            }
            Command::Rset => {
                self.tx = None;
                self.bdat = None;
                self.bdat_problem = None;
                self.memory.release();
                self.reply(Reply::ok());
                Flow::Continue
            }
            Command::Noop => {
                self.reply(Reply::ok());
                Flow::Continue
            }
            Command::Quit => {
                self.reply(Reply::bye());
                Flow::Close
            }
            Command::Vrfy(arg) => {
                let r = self.vrfy(&arg);
                self.reply(r.await);
                Flow::Continue
            }
            Command::Expn(_) => {
                self.reply(Reply::new(502, "5.5.1", "EXPN not available"));
                Flow::Continue
            }
            Command::Help => {
                self.reply(Reply::new(
                    214,
                    "2.0.0",
                    "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH",
                ));
                Flow::Continue
            }
            Command::StartTls => {
                if self.stream.is_tls() {
                    self.reply(Reply::bad_sequence("TLS already active"));
                    Flow::Continue
                } else if self.tx.is_some() {
                    self.reply(Reply::bad_sequence(
                        "STARTTLS not allowed during a mail transaction",
                    ));
                    Flow::Continue
                } else {
                    self.reply(Reply::new(220, "2.0.0", "Ready to start TLS"));
                    Flow::StartTls
                }
            }
            Command::Auth(mech, initial) => self.auth(mech, initial).await,
        }
    }

    fn auth_allowed(&self) -> bool {
        self.auth_offered_here()
            && (self.stream.is_tls() || self.shared.config.smtp.allow_plaintext_auth)
    }

    /// AUTH on the port-25 listener only with `smtp.auth_on_smtp`: an MX that takes AUTH is a
    /// password-guessing target, and a session authenticated there relays.
    fn auth_offered_here(&self) -> bool {
        self.listener != crate::listener::Listener::Smtp || self.shared.config.smtp.auth_on_smtp
    }

    async fn hello(&mut self, domain: String, esmtp: bool) -> Flow {
        self.tx = None;
        self.bdat = None;
        let outcome = {
            let mut c = self.ctx(HookPoint::Helo);
            c.helo = domain.clone();
            self.shared.hooks.run_async(&c, Some(&*self.hooks)).await
        };
        if let Some(r) = Reply::refusal(&outcome.verdict) {
            self.reply(r);
            return Flow::Continue;
        }
        self.helo = Some(domain.clone());
        self.esmtp = esmtp;
        let greeting = format!("{} Hello {} [{}]", self.host(), domain, self.peer.ip());
        if !esmtp {
            self.reply(Reply::new(250, "", greeting));
            return Flow::Continue;
        }
        let c = &self.shared.config.smtp;
        let mut lines = vec![
            greeting,
            "PIPELINING".into(),
            format!("SIZE {}", c.max_message_size),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
            "CHUNKING".into(),
            "DSN".into(),
            format!(
                "LIMITS RCPTMAX={} MAILMAX={}",
                c.max_recipients, c.max_messages_per_session
            ),
        ];
        if !self.stream.is_tls() {
            lines.push("STARTTLS".into());
        }
        if self.auth_allowed() && self.user.is_none() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        if c.vrfy {
            lines.push("VRFY".into());
        }
        lines.push("HELP".into());
        self.reply(Reply {
            code: 250,
            enhanced: String::new(),
            lines,
        });
        Flow::Continue
    }

    async fn mail(&mut self, from: Address, params: MailParams) -> Flow {
        if self.helo.is_none() {
            self.reply(Reply::bad_sequence("Send HELO/EHLO first"));
            return Flow::Continue;
        }
        if self.tx.is_some() {
            self.reply(Reply::bad_sequence("Nested MAIL command"));
            return Flow::Continue;
        }
        if !self.esmtp && params != MailParams::default() {
            self.reply(Reply::new(555, "5.5.4", "Parameters need EHLO"));
            return Flow::Continue;
        }
        if self.messages >= self.shared.config.smtp.max_messages_per_session {
            self.reply(Reply::new(
                421,
                "4.5.3",
                "Too many messages in this session, reconnect",
            ));
            return Flow::Close;
        }
        let max = self.shared.config.smtp.max_message_size;
        if params.size.is_some_and(|s| s > max) {
            self.reply(Reply::too_big(max));
            return Flow::Continue;
        }
        if params
            .size
            .is_some_and(|s| !self.shared.message_memory.has_room(s as usize))
        {
            self.reply(Reply::new(
                452,
                "4.3.1",
                "Insufficient system storage for a message of that size now, try again later",
            ));
            return Flow::Continue;
        }
        if params.body == Some(Body::BinaryMime) {
            // Not offered: a binary body could not be kept NUL-free and CRLF-only for IMAP
            // and for a next hop (RFC 3030 §3 needs BINARYMIME at every hop).
            self.reply(Reply::new(555, "5.5.4", "BODY=BINARYMIME is not supported"));
            return Flow::Continue;
        }
        if from.is_utf8() && !params.smtputf8 {
            self.reply(Reply::new(
                553,
                "5.6.7",
                "Non-ASCII address needs the SMTPUTF8 parameter",
            ));
            return Flow::Continue;
        }
        let mut ctx = self.ctx(HookPoint::Mail);
        ctx.mail_from = from.to_string();
        let spf = if self.sender_checks() {
            let helo = self.helo.clone().unwrap_or_default();
            let sender = if from.is_null() {
                String::new()
            } else {
                from.to_string()
            };
            // Boxed here and below: the sender-authentication futures (the resolver's lookups
            // inside) are 12–13 KB each, and inline they made every session's future, hence
            // every connection, that much bigger.
            let spf = Box::pin(
                self.shared
                    .sender_auth
                    .check_spf(self.peer.ip(), &helo, &sender),
            )
            .await;
            if let Some(text) = self.shared.sender_auth.spf_refusal(&spf) {
                tracing::info!(from = %from, "MAIL refused: SPF fail");
                self.reply(Reply::new(550, "5.7.23", text));
                return Flow::Continue;
            }
            ctx.auth = crate::sender_auth::SenderAuth::spf_facts(&spf);
            Some(spf)
        } else {
            None
        };
        let outcome = self.shared.hooks.run_async(&ctx, Some(&*self.hooks)).await;
        if let Some(r) = Reply::refusal(&outcome.verdict) {
            self.reply(r);
            return Flow::Continue;
        }
        // An authenticated sender must use its own address, on submission and on the smtp
        // listener alike (AUTH there allows relaying, so it must not allow forging either).
        if let Some(user) = &self.user
            && !self.shared.config.smtp.allow_any_sender
        {
            let owned = !from.is_null()
                && routing::owns_address(&self.shared.store, user, &from.to_string())
                    .await
                    .unwrap_or(false);
            if !owned {
                self.reply(Reply::new(
                    553,
                    "5.7.1",
                    format!("Sender address not owned by user {user}"),
                ));
                return Flow::Continue;
            }
        }
        tracing::debug!(from = %from, "MAIL");
        self.tx = Some(Transaction {
            from,
            params,
            rcpts: Vec::new(),
            spf,
        });
        self.reply(Reply::new(250, "2.1.0", "Sender OK"));
        Flow::Continue
    }

    async fn rcpt(&mut self, to: Address, params: RcptParams) -> Flow {
        let Some(tx) = &self.tx else {
            self.reply(Reply::bad_sequence("Need MAIL before RCPT"));
            return Flow::Continue;
        };
        if tx.rcpts.len() >= self.shared.config.smtp.max_recipients {
            self.reply(Reply::new(452, "4.5.3", "Too many recipients"));
            return Flow::Continue;
        }
        if to.is_utf8() && !tx.params.smtputf8 {
            self.reply(Reply::new(
                553,
                "5.6.7",
                "Non-ASCII address needs SMTPUTF8 on MAIL FROM",
            ));
            return Flow::Continue;
        }
        let mut address = if to.domain.is_empty() {
            // <Postmaster> (RFC 5321 §4.1.1.3): the postmaster of our first domain.
            format!(
                "postmaster@{}",
                self.shared
                    .config
                    .domains
                    .first()
                    .map(String::as_str)
                    .unwrap_or("localhost")
            )
        } else {
            to.to_string()
        };
        let mut route = match self.resolve(&address).await {
            Ok(r) => r,
            Err(r) => {
                self.reply(r);
                return Flow::Continue;
            }
        };
        let mut ctx = self.ctx(HookPoint::Rcpt);
        ctx.rcpt = address.clone();
        ctx.route = Some(route.clone());
        let outcome = self.shared.hooks.run_async(&ctx, Some(&*self.hooks)).await;
        if let Some(r) = Reply::refusal(&outcome.verdict) {
            self.reply(r);
            if r_is_permanent(&outcome.verdict) && self.count_error() {
                return Flow::Close;
            }
            return Flow::Continue;
        }
        if let Some(new) = outcome.actions.set_rcpt {
            // A rewritten recipient passes the built-in policy again.
            let Some(parsed) = super::codec::parse_mailbox(&new) else {
                self.reply(Reply::new(
                    451,
                    "4.3.0",
                    "Recipient rewrite produced an invalid address",
                ));
                return Flow::Continue;
            };
            address = parsed.to_string();
            route = match self.resolve(&address).await {
                Ok(r) => r,
                Err(r) => {
                    self.reply(r);
                    return Flow::Continue;
                }
            };
            let mut c2 = ctx.clone();
            c2.rcpt = address.clone();
            c2.route = Some(route.clone());
            let mut ignored = crate::hooks::Actions::default();
            if let Ok(v) = crate::hooks::HookEngine::call(
                &crate::hooks::builtin::BuiltinPolicy,
                &c2,
                &mut ignored,
            ) && let Some(r) = Reply::refusal(&v)
            {
                self.reply(r);
                return Flow::Continue;
            }
        }
        tracing::debug!(rcpt = %address, "RCPT");
        if let Some(tx) = &mut self.tx {
            tx.rcpts.push(Rcpt {
                address,
                route,
                params,
                file_into: None,
            });
        }
        self.reply(Reply::new(250, "2.1.5", "Recipient OK"));
        Flow::Continue
    }

    async fn resolve(&self, address: &str) -> Result<Route, Reply> {
        routing::resolve(
            &self.shared.store,
            &self.shared.config.domains,
            self.shared.config.postmaster.as_deref(),
            address,
        )
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "recipient lookup failed");
            Reply::local_error()
        })
    }

    async fn vrfy(&self, arg: &str) -> Reply {
        if !self.shared.config.smtp.vrfy {
            return Reply::new(
                252,
                "2.5.0",
                "Cannot VRFY user, but will accept message and attempt delivery",
            );
        }
        let arg = arg.trim().trim_start_matches('<').trim_end_matches('>');
        let address = if arg.contains('@') {
            arg.to_string()
        } else {
            format!(
                "{arg}@{}",
                self.shared
                    .config
                    .domains
                    .first()
                    .map(String::as_str)
                    .unwrap_or("localhost")
            )
        };
        match self.resolve(&address).await {
            Ok(Route::Local(_)) => {
                Reply::new(250, "2.1.5", format!("<{}>", address.to_lowercase()))
            }
            Ok(Route::Remote) => Reply::new(551, "5.1.6", "User not local"),
            Ok(Route::UnknownLocal) => Reply::mailbox_unavailable(),
            Err(r) => r,
        }
    }

    fn check_ready_for_data(&self) -> Option<Reply> {
        match &self.tx {
            None => Some(Reply::bad_sequence("Need MAIL command")),
            Some(tx) if tx.rcpts.is_empty() => {
                Some(Reply::new(554, "5.5.1", "No valid recipients"))
            }
            Some(_) => None,
        }
    }

    async fn auth(&mut self, mech: String, initial: Option<String>) -> Flow {
        if !self.auth_offered_here() {
            self.reply(Reply::new(
                503,
                "5.5.1",
                "AUTH is not offered on this port; submit on the submission port (587 or 465)",
            ));
            return Flow::Continue;
        }
        if !self.auth_allowed() {
            self.reply(Reply::new(
                538,
                "5.7.11",
                "Encryption required: use STARTTLS first",
            ));
            return Flow::Continue;
        }
        if self.user.is_some() {
            self.reply(Reply::bad_sequence("Already authenticated"));
            return Flow::Continue;
        }
        if self.tx.is_some() {
            self.reply(Reply::bad_sequence(
                "AUTH not allowed during a mail transaction",
            ));
            return Flow::Continue;
        }
        if self.shared.auth_throttle.blocked(self.peer.ip()) {
            self.reply(Reply::new(
                421,
                "4.7.0",
                "Too many failed authentications, try again later",
            ));
            return Flow::Close;
        }
        match (mech.as_str(), initial) {
            ("PLAIN", Some(ir)) => self.auth_plain(&ir).await,
            ("PLAIN", None) => {
                self.reply(Reply::new(334, "", ""));
                self.state = State::Auth(AuthStep::Plain);
                Flow::Continue
            }
            ("LOGIN", Some(ir)) => match crate::sasl::login_step(&ir).ok() {
                Some(u) => {
                    self.reply(Reply::new(334, "", "UGFzc3dvcmQ6"));
                    self.state = State::Auth(AuthStep::LoginPass(u));
                    Flow::Continue
                }
                None => {
                    self.reply(Reply::new(501, "5.5.2", "Invalid base64"));
                    Flow::Continue
                }
            },
            ("LOGIN", None) => {
                self.reply(Reply::new(334, "", "VXNlcm5hbWU6"));
                self.state = State::Auth(AuthStep::LoginUser);
                Flow::Continue
            }
            _ => {
                self.reply(Reply::new(
                    504,
                    "5.5.4",
                    "Unrecognized authentication mechanism",
                ));
                Flow::Continue
            }
        }
    }

    async fn auth_line(&mut self, line: &[u8]) -> Flow {
        let State::Auth(step) = std::mem::replace(&mut self.state, State::Command) else {
            return Flow::Continue;
        };
        let text = String::from_utf8_lossy(line).trim().to_string();
        if text == "*" {
            self.reply(Reply::new(501, "5.0.0", "Authentication cancelled"));
            return Flow::Continue;
        }
        match step {
            AuthStep::Plain => self.auth_plain(&text).await,
            AuthStep::LoginUser => match crate::sasl::login_step(&text).ok() {
                Some(u) => {
                    self.reply(Reply::new(334, "", "UGFzc3dvcmQ6"));
                    self.state = State::Auth(AuthStep::LoginPass(u));
                    Flow::Continue
                }
                None => {
                    self.reply(Reply::new(501, "5.5.2", "Invalid base64"));
                    Flow::Continue
                }
            },
            AuthStep::LoginPass(user) => match crate::sasl::login_step(&text).ok() {
                Some(p) => match self.admit(&user).await {
                    Some(attempt) => self.check_credentials(attempt, user, p, "LOGIN").await,
                    None => Flow::Close,
                },
                None => {
                    self.reply(Reply::new(501, "5.5.2", "Invalid base64"));
                    Flow::Continue
                }
            },
        }
    }

    async fn auth_plain(&mut self, b64: &str) -> Flow {
        let creds = match crate::sasl::plain(b64) {
            Ok(c) => c,
            Err(e) => {
                self.reply(Reply::new(501, "5.5.2", e.to_string()));
                return Flow::Continue;
            }
        };
        let Some(attempt) = self.admit(&creds.authcid).await else {
            return Flow::Close;
        };
        if creds.proxies() {
            tracing::info!(user = %creds.authcid, authz = %creds.authzid, "authentication failed: authzid differs");
            return self.auth_failed(attempt);
        }
        self.check_credentials(attempt, creds.authcid, creds.password, "PLAIN")
            .await
    }

    /// Admit an authentication attempt at `user` (net::AuthThrottle), or answer 421 and close.
    async fn admit(&mut self, user: &str) -> Option<crate::net::AuthAttempt> {
        match self.shared.auth_throttle.begin(self.peer.ip(), user).await {
            Ok(a) => Some(a),
            Err(_) => {
                tracing::info!(user = %user, "authentication refused: too many failures");
                self.reply(Reply::new(
                    421,
                    "4.7.0",
                    "Too many failed authentications, try again later",
                ));
                None
            }
        }
    }

    async fn check_credentials(
        &mut self,
        attempt: crate::net::AuthAttempt,
        user: String,
        pass: String,
        mech: &str,
    ) -> Flow {
        let valid = self
            .shared
            .credential_cache
            .verify(&self.shared.store, &user, &pass)
            .await
            .ok()
            .flatten();
        let mut ctx = self.ctx(HookPoint::Auth);
        ctx.credentials = Some(Credentials {
            username: user.clone(),
            password: pass,
            mechanism: mech.to_string(),
            valid: valid.is_some(),
        });
        let outcome = self.shared.hooks.run_async(&ctx, Some(&*self.hooks)).await;
        let accepted = match outcome.verdict {
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
        match accepted {
            Some(account) => {
                tracing::info!(user = %account, mech, "authenticated");
                attempt.succeed();
                self.user = Some(account);
                self.reply(Reply::new(235, "2.7.0", "Authentication successful"));
                Flow::Continue
            }
            None => {
                tracing::info!(user = %user, mech, "authentication failed");
                self.auth_failed(attempt)
            }
        }
    }

    /// Answer a failed AUTH with 535 and count it; once the client's IP (or this account from
    /// it) reaches the limit, add 421 and close (every failure path, so the client always
    /// learns why).
    fn auth_failed(&mut self, attempt: crate::net::AuthAttempt) -> Flow {
        let blocked = attempt.fail();
        self.reply(Reply::auth_failed());
        if blocked {
            self.reply(Reply::new(
                421,
                "4.7.0",
                "Too many failed authentications, try again later",
            ));
            Flow::Close
        } else {
            Flow::Continue
        }
    }

    /// Everything after the last byte of message data: checks, hooks, storage, the reply.
    async fn end_of_data(&mut self, data: Result<Vec<u8>, DataProblem>) -> Reply {
        let Some(tx) = self.tx.take() else {
            return Reply::bad_sequence("Need MAIL command");
        };
        self.bdat = None;
        let max = self.shared.config.smtp.max_message_size;
        let mut body = match data {
            Ok(b) if b.len() as u64 > max => return Reply::too_big(max),
            Ok(b) => b,
            Err(DataProblem::TooBig) => return Reply::too_big(max),
            Err(DataProblem::LineTooLong) => {
                return Reply::new(
                    554,
                    "5.6.0",
                    format!(
                        "Message has a line longer than {} bytes",
                        self.shared.config.smtp.max_data_line
                    ),
                );
            }
            Err(DataProblem::BareNewline) => {
                return Reply::new(
                    550,
                    "5.6.0",
                    "Bare LF or CR in message; lines must end with CRLF (RFC 5321 2.3.8)",
                );
            }
            Err(DataProblem::Nul) => {
                return Reply::new(550, "5.6.0", "NUL bytes are not allowed in a message");
            }
            Err(DataProblem::NoMemory) => {
                return Reply::new(
                    452,
                    "4.3.1",
                    "Insufficient system storage: too many messages in transit, try again later",
                );
            }
        };
        self.messages += 1;
        let queue_id = format!("{:016X}", rand::random::<u64>());
        let fcrdns = self.fcrdns().await;
        // Sender authentication (inbound smtp): results for the header, hooks and policy.
        let checked = if self.sender_checks() {
            let helo = self.helo.clone().unwrap_or_default();
            let sender = if tx.from.is_null() {
                String::new()
            } else {
                tx.from.to_string()
            };
            let env = crate::sender_auth::Envelope {
                ip: self.peer.ip(),
                helo: &helo,
                mail_from: &sender,
                spf: tx.spf.as_ref(),
            };
            Some(Box::pin(self.shared.sender_auth.check_message(&body, &env)).await)
        } else {
            None
        };
        let mut msg = Vec::with_capacity(body.len() + 1024);
        if self.listener == crate::listener::Listener::Smtp {
            // RFC 8601 §5: no Authentication-Results claiming to be ours may pass through.
            let host = self.host().to_string();
            if let (std::borrow::Cow::Owned(stripped), n) =
                crate::sender_auth::headers::strip_forged(&body, &host)
            {
                tracing::info!(removed = n, "removed forged Authentication-Results");
                body = stripped;
            }
            match (&checked, &self.user) {
                (Some(c), _) => msg.extend_from_slice(c.header.as_bytes()),
                (None, Some(u)) if self.shared.sender_auth.enabled() => msg
                    .extend_from_slice(self.shared.sender_auth.authenticated_header(u).as_bytes()),
                _ => {}
            }
        }
        msg.extend_from_slice(self.received_header(&tx, &queue_id, &fcrdns).as_bytes());
        if self.listener.is_submission() || self.user.is_some() {
            let added = super::trace_headers::submission_fields(
                &body,
                &queue_id,
                chrono::Utc::now().timestamp(),
                self.host(),
                &rfc5322_now(),
            );
            msg.extend_from_slice(added.as_bytes());
        }
        msg.extend_from_slice(&body);
        drop(body);

        let mut ctx = self.ctx(HookPoint::Data);
        ctx.mail_from = tx.from.to_string();
        ctx.rcpts = tx.rcpts.iter().map(|r| r.address.clone()).collect();
        if let Some(c) = &checked {
            ctx.auth = c.facts.clone();
        }
        let msg = Arc::new(msg);
        ctx.message = Some(msg.clone());
        let outcome = self.shared.hooks.run_async(&ctx, Some(&*self.hooks)).await;
        let decisions = outcome.decisions.clone();
        if let Some(r) = Reply::refusal(&outcome.verdict) {
            return r;
        }
        let quarantine = match &outcome.verdict {
            Verdict::Discard => {
                tracing::info!(queue_id, "message discarded by hook");
                return Reply::new(250, "2.0.0", format!("Ok: queued as {queue_id}"));
            }
            Verdict::Quarantine(reason) => Some(reason.clone()),
            _ => None,
        };
        // DMARC policy, unless a hook accepted the message explicitly.
        let quarantine = match checked.as_ref().map(|c| &c.action) {
            _ if outcome.verdict == Verdict::Accept => quarantine,
            Some(crate::sender_auth::Action::Reject(text)) => {
                tracing::info!(queue_id, from = %tx.from, "message rejected by DMARC policy");
                return Reply::new(550, "5.7.1", text.clone());
            }
            Some(crate::sender_auth::Action::Quarantine(why)) => {
                quarantine.or_else(|| Some(why.clone()))
            }
            _ => quarantine,
        };
        let msg = crate::message::prepend_headers(&msg, &outcome.actions.add_headers);

        // Where every copy goes (on_delivery per local account), then one write.
        let rcpts: Vec<crate::delivery::Recipient> = tx
            .rcpts
            .iter()
            .map(|r| crate::delivery::Recipient {
                address: r.address.clone(),
                route: r.route.clone(),
                notify: r.params.notify.clone(),
                orcpt: r.params.orcpt.clone(),
                file_into: r.file_into.clone(),
            })
            .collect();
        let plan = match crate::delivery::plan(
            &self.shared,
            &ctx,
            Some(&*self.hooks),
            &msg,
            &rcpts,
            quarantine.is_some(),
            true,
        )
        .await
        {
            Ok(plan) => plan,
            Err(t) => return Reply::hook_refusal(t.code, t.enhanced.as_ref(), &t.text, false),
        };
        let remote = !plan.remote.is_empty();
        // Mail an alias forwards to another domain leaves ARC-sealed (RFC 8617).
        let mut queued = msg.clone();
        if let Some(c) = &checked
            && remote
            && let Some(domain) = forwarding_domain(&tx.rcpts)
            && let Some(set) = self
                .shared
                .sender_auth
                .arc_seal(&msg, c, &self.shared.store, &domain)
                .await
        {
            let mut sealed = set.into_bytes();
            sealed.extend_from_slice(&msg);
            queued = Arc::new(sealed);
        }
        let now = chrono::Utc::now().timestamp();
        let mut entry = crate::delivery::queue_entry(&queue_id, &tx.from.to_string(), vec![], now);
        entry.ret = tx.params.ret.clone();
        entry.envid = tx.params.envid.clone();
        entry.smtputf8 = tx.params.smtputf8;
        entry.decisions = decisions;
        // RFC 5321 §4.4: final delivery records the envelope sender in Return-Path.
        let reverse_path = if tx.from.is_null() {
            String::new()
        } else {
            tx.from.to_string()
        };
        let ingest = plan.into_ingest(&reverse_path, now, Some((entry, queued)));
        // Architecture invariant: 250 after DATA only once the one write for the message
        // (every local copy and the queue entry) is durable; on an error nothing of it is
        // visible, so the client's retry cannot duplicate a copy.
        if let Err(e) = self.shared.store.ingest(ingest).await {
            tracing::error!(error = %e, "storing message failed");
            return Reply::local_error();
        }
        if remote {
            self.shared.queue_wakeup.notify_one();
        }
        // One line per message: the sender-authentication results ride on it.
        match &checked {
            Some(c) => tracing::info!(
                queue_id, size = msg.len(), rcpts = tx.rcpts.len(), from = %tx.from,
                spf = %c.facts.spf, dkim = %c.facts.dkim, dmarc = %c.facts.dmarc,
                arc = %c.facts.arc, "message accepted"
            ),
            None => tracing::info!(
                queue_id, size = msg.len(), rcpts = tx.rcpts.len(), from = %tx.from,
                "message accepted"
            ),
        }
        Reply::new(250, "2.0.0", format!("Ok: queued as {queue_id}"))
    }

    fn received_header(&self, tx: &Transaction, queue_id: &str, fcrdns: &Fcrdns) -> String {
        let tls = self.stream.tls_info();
        super::trace_headers::received(&super::trace_headers::Trace {
            helo: self.helo.as_deref().unwrap_or_default(),
            fcrdns,
            ip: self.peer.ip(),
            host: self.host(),
            smtputf8: tx.params.smtputf8,
            esmtp: self.esmtp,
            tls: tls.as_deref(),
            user: self.user.as_deref(),
            queue_id,
            rcpt: (tx.rcpts.len() == 1).then(|| tx.rcpts[0].address.as_str()),
            date: &rfc5322_now(),
        })
    }
}

/// The domain of the alias that forwards this message elsewhere (the ARC sealing domain):
/// a local recipient whose targets include an address in another domain; else any local one.
fn forwarding_domain(rcpts: &[Rcpt]) -> Option<String> {
    let domain = |a: &str| a.rsplit_once('@').map(|(_, d)| d.to_lowercase());
    let local = rcpts.iter().filter_map(|r| match &r.route {
        Route::Local(t) => Some((domain(&r.address)?, t)),
        _ => None,
    });
    let mut first = None;
    for (d, targets) in local {
        if targets
            .iter()
            .any(|t| domain(t).as_deref() != Some(d.as_str()))
        {
            return Some(d);
        }
        first.get_or_insert(d);
    }
    first
}

fn r_is_permanent(v: &Verdict) -> bool {
    matches!(v, Verdict::Reject { .. })
}
