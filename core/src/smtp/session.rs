//! The SMTP session loop: moves bytes between the socket and the codec, keeps the session
//! state, applies limits and timeouts, and hands accepted messages to the store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::codec::{
    Address, Body, Command, MailParams, RcptParams, SyntaxError, next_line, parse_command,
};
use super::data::{DataProblem, DataReceiver, Feed};
use super::reply::Reply;
use crate::config::{BareLfPolicy, FcrdnsPolicy};
use crate::dns::Fcrdns;
use crate::hooks::{HookCtx, HookPoint, Route, Verdict};
use crate::login::Login;
use crate::session::{Conn, Flow, Input, Line};

/// One accepted recipient of the open transaction.
#[derive(Debug, Clone)]
pub(super) struct Rcpt {
    pub(super) address: String,
    pub(super) route: Route,
    pub(super) params: RcptParams,
    pub(super) file_into: Option<String>,
}

/// The open mail transaction (between MAIL and the end of data).
#[derive(Debug)]
pub(super) struct Transaction {
    pub(super) from: Address,
    pub(super) params: MailParams,
    pub(super) rcpts: Vec<Rcpt>,
    /// SPF results from MAIL FROM (inbound `smtp` only).
    pub(super) spf: Option<crate::sender_auth::SpfCheck>,
    /// Hook decisions at MAIL and RCPT, for the message trace.
    pub(super) steps: Vec<crate::trace::Step>,
    /// Recipients refused at RCPT, and the last refusal.
    pub(super) refused: Vec<String>,
    pub(super) last_refusal: String,
    /// The trace of a transaction that ends without DATA because every recipient was
    /// refused (the end of DATA takes it and writes its own).
    pub(super) trace: Option<Box<crate::trace::Record>>,
}

impl Drop for Transaction {
    /// A transaction whose every recipient was refused is traced as rejected: "why was my
    /// mail refused" is most often answered at RCPT.
    fn drop(&mut self) {
        let Some(mut rec) = self.trace.take() else {
            return;
        };
        if self.refused.is_empty() || !self.rcpts.is_empty() {
            return;
        }
        rec.recipients = std::mem::take(&mut self.refused);
        rec.steps.append(&mut self.steps);
        rec.result = "rejected".into();
        rec.reply = std::mem::take(&mut self.last_refusal);
        crate::trace::emit(crate::trace::Event::Begin(rec));
    }
}

/// What the session is waiting for.
pub(super) enum State {
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

pub(super) enum AuthStep {
    Plain,
    LoginUser,
    LoginPass(String),
}

/// What an SMTP session uses of the server.
pub struct Deps {
    /// Settings (`[smtp]`, hostname, domains).
    pub config: Arc<crate::config::Config>,
    /// The store (accounts, aliases, DKIM keys).
    pub store: crate::store::Store,
    /// TLS for STARTTLS and the `submissions` listener.
    pub tls: tokio_rustls::TlsAcceptor,
    /// The hook chain.
    pub hooks: Arc<crate::hooks::HookChain>,
    /// DNS, for the client's FCrDNS.
    pub resolver: hickory_resolver::TokioResolver,
    /// FCrDNS results of recent clients.
    pub fcrdns_cache: crate::dns::FcrdnsCache,
    /// AUTH.
    pub login: Login,
    /// Where accepted messages go.
    pub delivery: crate::delivery::Delivery,
    /// SPF/DKIM/DMARC/ARC checks of inbound mail.
    pub sender_auth: Arc<crate::sender_auth::SenderAuth>,
    /// Message bytes SMTP sessions may hold in memory at once (`smtp.max_message_memory`).
    pub message_memory: Arc<crate::memory::MemoryBudget>,
    /// Fires on shutdown.
    pub shutdown: tokio_util::sync::CancellationToken,
}

pub(super) struct Session {
    pub(super) deps: Arc<Deps>,
    pub(super) conn: Conn,
    pub(super) listener: crate::listener::Listener,
    pub(super) peer: SocketAddr,
    pub(super) state: State,
    pub(super) helo: Option<String>,
    pub(super) esmtp: bool,
    pub(super) user: Option<String>,
    /// The SASL mechanism `user` authenticated with.
    pub(super) auth_mechanism: Option<String>,
    pub(super) tx: Option<Transaction>,
    pub(super) bdat: Option<Vec<u8>>,
    /// What already makes the BDAT message unacceptable (too big, no memory).
    pub(super) bdat_problem: Option<DataProblem>,
    /// This session's share of the server-wide message memory (`smtp.max_message_memory`).
    pub(super) memory: crate::memory::Reservation,
    pub(super) messages: usize,
    pub(super) fcrdns: Option<Fcrdns>,
    pub(super) fcrdns_task: Option<tokio::task::JoinHandle<Fcrdns>>,
    pub(super) deadline: Instant,
    /// Per-session hook state (warm plugin instances), dropped with the session.
    pub(super) hooks: Arc<crate::hooks::HookSession>,
    /// Hook decisions at connect and HELO, for the trace of each message of the session
    /// (the last HELO's only).
    pub(super) session_steps: Vec<crate::trace::Step>,
}

/// The session on an open stream (after an implicit-TLS handshake; `crate::session::serve`
/// does that and the logging around it).
pub async fn session(
    deps: Arc<Deps>,
    stream: crate::net::Stream,
    peer: SocketAddr,
    listener: crate::listener::Listener,
) -> std::io::Result<()> {
    // A recent client's FCrDNS result is at hand; otherwise the lookups start now and run
    // in the background.
    let ip = peer.ip();
    let fcrdns = deps.fcrdns_cache.get(ip);
    let fcrdns_task = fcrdns.is_none().then(|| {
        let deps = deps.clone();
        tokio::spawn(async move { deps.fcrdns_cache.check(&deps.resolver, ip).await })
    });
    let deadline = Instant::now() + deps.config.smtp.session_timeout;
    let memory = crate::memory::Reservation::new(&deps.message_memory);
    let mut s = Session {
        deps,
        conn: Conn::new(stream, 1024),
        listener,
        peer,
        state: State::Command,
        helo: None,
        esmtp: false,
        user: None,
        auth_mechanism: None,
        tx: None,
        bdat: None,
        bdat_problem: None,
        memory,
        messages: 0,
        fcrdns,
        fcrdns_task,
        deadline,
        hooks: Arc::default(),
        session_steps: Vec::new(),
    };
    s.run().await
}

pub(super) fn r_is_permanent(v: &Verdict) -> bool {
    matches!(v, Verdict::Reject { .. })
}

impl Session {
    pub(super) fn host(&self) -> &str {
        &self.deps.config.hostname
    }

    pub(super) fn reply(&mut self, r: Reply) {
        if r.code >= 400 {
            tracing::debug!(reply = %r, "refused");
        }
        r.write_to(&mut self.conn.out);
    }

    pub(super) async fn flush(&mut self) -> std::io::Result<()> {
        self.conn.flush(None).await
    }

    pub(super) fn ctx(&self, point: HookPoint) -> HookCtx {
        let mut c = HookCtx::new(point, self.listener, self.peer.ip());
        c.client_port = self.peer.port();
        c.tls_info = self.conn.stream.tls_info().unwrap_or_default();
        c.auth_mechanism = self.auth_mechanism.clone().unwrap_or_default();
        c.client_ptr = self
            .fcrdns
            .as_ref()
            .map(|f| f.verified_name().to_string())
            .unwrap_or_default();
        c.helo = self.helo.clone().unwrap_or_default();
        c.tls = self.conn.is_tls();
        c.user = self.user.clone().unwrap_or_default();
        c.relay_network = self.deps.config.smtp.in_relay_networks(self.peer.ip());
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
    pub(super) async fn refresh_fcrdns(&mut self) {
        if self.fcrdns.is_none() && self.fcrdns_task.as_ref().is_some_and(|t| t.is_finished()) {
            self.fcrdns().await;
        }
    }

    /// Whether SPF/DKIM/DMARC/ARC checks apply: inbound mail on `smtp` from a client that
    /// has not logged in.
    pub(super) fn sender_checks(&self) -> bool {
        self.listener == crate::listener::Listener::Smtp
            && self.user.is_none()
            && self.deps.sender_auth.enabled()
    }

    pub(super) async fn fcrdns(&mut self) -> Fcrdns {
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

    pub(super) async fn run(&mut self) -> std::io::Result<()> {
        // Connect: FCrDNS policy, then the connect hooks.
        // The reverse lookup runs in the background; the greeting waits for it only when the
        // policy rejects on failure (a slow resolver must not stall every connection). Later
        // steps (hooks after connect, the Received header) use the result once it is there.
        let reject_policy = self.deps.config.smtp.fcrdns == FcrdnsPolicy::Reject;
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
            .deps
            .hooks
            .run_async(&self.ctx(HookPoint::Connect), Some(&*self.hooks))
            .await;
        self.session_steps = outcome.steps.clone();
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
                    // RFC 3207 §4.2: anything pipelined behind STARTTLS is discarded.
                    if !self.conn.start_tls(&self.deps.tls).await? {
                        return Ok(());
                    }
                    // RFC 3207 §4.2: forget everything learnt before TLS.
                    self.helo = None;
                    self.esmtp = false;
                    self.user = None;
                    self.auth_mechanism = None;
                    self.tx = None;
                    continue;
                }
            }
            // Need more input.
            self.flush().await?;
            let waiting_for_command =
                matches!(self.state, State::Command | State::Auth(_)) && self.conn.inbuf.is_empty();
            let timeout = match self.state {
                State::Data(_) | State::Bdat { .. } => self.deps.config.smtp.data_timeout,
                _ => self.deps.config.smtp.command_timeout,
            };
            let until = (Instant::now() + timeout).min(self.deadline);
            match self
                .conn
                .read(until, &self.deps.shutdown, waiting_for_command)
                .await?
            {
                Input::Data => {}
                Input::Closed => return Ok(()),
                Input::Shutdown => {
                    let r = Reply::shutting_down(self.host());
                    self.reply(r);
                    return self.flush().await;
                }
                Input::TimedOut => {
                    tracing::info!("timeout");
                    let r = Reply::timeout(self.host());
                    self.reply(r);
                    return self.flush().await;
                }
            }
        }
    }

    /// Consume as much buffered input as possible. Returns when more input is needed.
    pub(super) async fn process_input(&mut self) -> std::io::Result<Flow> {
        loop {
            match &mut self.state {
                State::Data(rx) => match rx.feed(&self.conn.inbuf) {
                    Feed::More(n) => {
                        self.conn.inbuf.drain(..n);
                        if !self.memory.cover(rx.kept()) {
                            tracing::warn!(
                                held = self.deps.message_memory.used(),
                                "smtp.max_message_memory reached: message refused with 452"
                            );
                            rx.stop_keeping();
                            self.memory.release();
                        }
                        return Ok(Flow::Continue);
                    }
                    Feed::Done(n) => {
                        self.conn.inbuf.drain(..n);
                        let State::Data(rx) = std::mem::replace(&mut self.state, State::Command)
                        else {
                            unreachable!()
                        };
                        let allow_bare = self.deps.config.smtp.bare_lf == BareLfPolicy::Normalize;
                        let result = rx.finish_with(allow_bare);
                        let reply = self.end_of_data(result).await;
                        self.memory.release();
                        self.reply(reply);
                        if self.deps.shutdown.is_cancelled() {
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
                    let take = (*remaining).min(self.conn.inbuf.len() as u64) as usize;
                    let (last, discard) = (*last, *discard);
                    *remaining -= take as u64;
                    let done = *remaining == 0;
                    if !discard && self.bdat_problem.is_none() {
                        let max = self.deps.config.smtp.max_message_size as usize;
                        let buf = self.bdat.get_or_insert_with(Vec::new);
                        if buf.len() + take > max {
                            self.bdat_problem = Some(DataProblem::TooBig);
                            *buf = Vec::new();
                        } else if !self.memory.cover(buf.len() + take) {
                            tracing::warn!(
                                held = self.deps.message_memory.used(),
                                "smtp.max_message_memory reached: message refused with 452"
                            );
                            self.bdat_problem = Some(DataProblem::NoMemory);
                            *buf = Vec::new();
                            self.memory.release();
                        } else {
                            buf.extend_from_slice(&self.conn.inbuf[..take]);
                        }
                    }
                    self.conn.inbuf.drain(..take);
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
                                self.deps.config.smtp.bare_lf == BareLfPolicy::Normalize;
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
                    let max = self.deps.config.smtp.max_command_line;
                    let line = match self.conn.next_line(next_line, |_| max) {
                        Line::More => return Ok(Flow::Continue),
                        Line::TooLong => {
                            self.reply(Reply::line_too_long());
                            if self.count_error() {
                                return Ok(Flow::Close);
                            }
                            continue;
                        }
                        Line::Line(line) => line,
                    };
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
    pub(super) fn count_error(&mut self) -> bool {
        if self.conn.count_error(self.deps.config.smtp.max_errors) {
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

    pub(super) async fn command(&mut self, line: &[u8]) -> Flow {
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
                        let c = &self.deps.config.smtp;
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
                if size > self.deps.config.smtp.max_message_size {
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
                if self.conn.is_tls() {
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
}
