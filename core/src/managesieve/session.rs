//! The ManageSieve session loop (RFC 5804): moves bytes between the socket and the codec,
//! keeps the state (not authenticated, inside AUTHENTICATE, authenticated), and maps the
//! commands onto `crate::sieve::storage`, which the CLI and the admin API use too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::codec::{self, Code, Command, Parsed};
use crate::hooks::{HookCtx, HookPoint};
use crate::login::{Credentials, Login, Refusal};
use crate::session::{Conn, Flow, Input};
use crate::sieve::storage::{self, Refused};

/// What a ManageSieve session uses of the server.
pub struct Deps {
    /// Settings (`[managesieve]`, `[sieve]`).
    pub config: Arc<crate::config::Config>,
    /// The store holding the scripts.
    pub store: crate::store::Store,
    /// TLS for STARTTLS.
    pub tls: tokio_rustls::TlsAcceptor,
    /// AUTHENTICATE.
    pub login: Login,
    /// Fires on shutdown.
    pub shutdown: tokio_util::sync::CancellationToken,
}

enum State {
    /// Not logged in.
    Anonymous,
    /// AUTHENTICATE "PLAIN" sent without an initial response: the next line is it.
    Sasl,
    /// Logged in as this account.
    User(String),
}

struct Session {
    deps: Arc<Deps>,
    conn: Conn,
    listener: crate::listener::Listener,
    peer: SocketAddr,
    state: State,
    /// A login must succeed by then (from the connection, or from UNAUTHENTICATE).
    login_by: Instant,
}

/// The session on an open stream.
pub async fn session(
    deps: Arc<Deps>,
    stream: crate::net::Stream,
    peer: SocketAddr,
    listener: crate::listener::Listener,
) -> std::io::Result<()> {
    let deps_login_timeout = deps.config.managesieve.login_timeout;
    let mut s = Session {
        deps,
        conn: Conn::new(stream, 4 * 1024),
        listener,
        peer,
        state: State::Anonymous,
        login_by: Instant::now() + deps_login_timeout,
    };
    s.run().await
}

impl Session {
    fn ok(&mut self, text: &str) {
        codec::write_status(&mut self.conn.out, "OK", None, text);
    }

    fn no(&mut self, code: Option<Code>, text: &str) {
        tracing::debug!(text, "refused");
        codec::write_status(&mut self.conn.out, "NO", code, text);
    }

    fn login_allowed(&self) -> bool {
        self.conn.is_tls() || self.deps.config.managesieve.allow_plaintext_auth
    }

    /// Bytes a literal may have: a script over the limit still arrives whole, so that
    /// PUTSCRIPT can answer `QUOTA/MAXSIZE` and the session goes on; far bigger ones close
    /// the session.
    fn max_literal(&self) -> u64 {
        (self.deps.config.sieve.max_script_size as u64)
            .saturating_mul(4)
            .max(1 << 20)
    }

    fn capabilities(&mut self) {
        let mut out = Vec::new();
        let mut cap = |k: &str, v: Option<&str>| {
            codec::write_string(&mut out, k.as_bytes());
            if let Some(v) = v {
                out.push(b' ');
                codec::write_string(&mut out, v.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        };
        cap("IMPLEMENTATION", Some("Corvus"));
        let sasl = if self.login_allowed() { "PLAIN" } else { "" };
        cap("SASL", Some(sasl));
        cap("SIEVE", Some(&crate::sieve::extensions()));
        if !self.conn.is_tls() {
            cap("STARTTLS", None);
        }
        let redirects = self.deps.config.sieve.max_redirects.to_string();
        cap("MAXREDIRECTS", Some(&redirects));
        if let State::User(u) = &self.state {
            cap("OWNER", Some(u));
        }
        cap("UNAUTHENTICATE", None);
        cap("VERSION", Some("1.0"));
        self.conn.out.extend_from_slice(&out);
    }

    async fn run(&mut self) -> std::io::Result<()> {
        self.capabilities();
        self.ok("Corvus ManageSieve ready");
        let idle = self.deps.config.managesieve.idle_timeout;
        loop {
            match self.process_input().await {
                Flow::Continue => {}
                Flow::Close => return self.conn.flush(None).await,
                Flow::StartTls => {
                    if !self.conn.start_tls(&self.deps.tls).await? {
                        return Ok(());
                    }
                    // RFC 5804 §2.2: the capabilities again, now over TLS.
                    self.state = State::Anonymous;
                    self.capabilities();
                    self.ok("TLS negotiation successful");
                    continue;
                }
            }
            self.conn.flush(None).await?;
            let waiting = self.conn.inbuf.is_empty();
            let until = match self.state {
                State::User(_) => Instant::now() + idle,
                _ => (Instant::now() + idle).min(self.login_by),
            };
            match self.conn.read(until, &self.deps.shutdown, waiting).await? {
                Input::Data => {}
                Input::Closed => return Ok(()),
                Input::Shutdown => {
                    codec::write_status(
                        &mut self.conn.out,
                        "BYE",
                        Some(Code::TryLater),
                        "Server shutting down",
                    );
                    return self.conn.flush(None).await;
                }
                Input::TimedOut => {
                    tracing::info!("timeout");
                    codec::write_status(&mut self.conn.out, "BYE", None, "Timeout, closing");
                    return self.conn.flush(None).await;
                }
            }
        }
    }

    /// Count a client error; true when the session must close.
    fn bad(&mut self, text: &str) -> Flow {
        self.no(None, text);
        if self
            .conn
            .count_error(self.deps.config.managesieve.max_errors)
        {
            codec::write_status(&mut self.conn.out, "BYE", None, "Too many errors, closing");
            Flow::Close
        } else {
            Flow::Continue
        }
    }

    async fn process_input(&mut self) -> Flow {
        loop {
            let parsed = if matches!(self.state, State::Sasl) {
                codec::parse_sasl(&self.conn.inbuf)
            } else {
                codec::parse(&self.conn.inbuf, self.max_literal())
            };
            let flow = match parsed {
                Parsed::Incomplete => return Flow::Continue,
                Parsed::TooBig(why) => {
                    tracing::info!(why, "command too big");
                    codec::write_status(&mut self.conn.out, "BYE", Some(Code::MaxSize), &why);
                    return Flow::Close;
                }
                Parsed::Bad(why, used) => {
                    self.conn.inbuf.drain(..used.min(self.conn.inbuf.len()));
                    if matches!(self.state, State::Sasl) {
                        self.state = State::Anonymous;
                    }
                    self.bad(&why)
                }
                Parsed::Command(cmd, used) => {
                    self.conn.inbuf.drain(..used);
                    if matches!(self.state, State::Sasl) {
                        self.state = State::Anonymous;
                        let Command::Authenticate { initial, .. } = cmd else {
                            unreachable!("parse_sasl gives AUTHENTICATE")
                        };
                        self.sasl(initial.unwrap_or_default()).await
                    } else {
                        self.command(cmd).await
                    }
                }
            };
            if flow != Flow::Continue {
                return flow;
            }
        }
    }

    fn user(&self) -> Option<&str> {
        match &self.state {
            State::User(u) => Some(u),
            _ => None,
        }
    }

    fn refused(&mut self, r: Refused) {
        let (code, text) = match &r {
            Refused::Nonexistent => (Some(Code::Nonexistent), r.to_string()),
            Refused::AlreadyExists => (Some(Code::AlreadyExists), r.to_string()),
            Refused::Active => (Some(Code::Active), r.to_string()),
            Refused::TooBig(_) => (Some(Code::MaxSize), r.to_string()),
            Refused::TooMany(_) => (Some(Code::MaxScripts), r.to_string()),
            Refused::BadName | Refused::Invalid(_) => (None, r.to_string()),
            Refused::Store(e) => {
                tracing::error!(error = %e, "ManageSieve store error");
                (Some(Code::TryLater), "Try again later".to_string())
            }
        };
        self.no(code, &text);
    }

    async fn command(&mut self, cmd: Command) -> Flow {
        if cmd.needs_auth() && self.user().is_none() {
            return self.bad(&format!("{} needs a login first", cmd.name()));
        }
        let store = self.deps.store.clone();
        let limits = self.deps.config.sieve.clone();
        match cmd {
            Command::Capability => {
                self.capabilities();
                self.ok("Capability completed");
            }
            Command::Noop(None) => self.ok("Done"),
            Command::Noop(Some(tag)) => {
                self.conn.out.extend_from_slice(b"OK (TAG ");
                codec::write_string(&mut self.conn.out, tag.as_bytes());
                self.conn.out.extend_from_slice(b") \"Done\"\r\n");
            }
            Command::Logout => {
                self.ok("Logout completed");
                return Flow::Close;
            }
            Command::StartTls => {
                if self.conn.is_tls() {
                    return self.bad("TLS is already active");
                }
                if self.user().is_some() {
                    return self.bad("STARTTLS is only allowed before AUTHENTICATE");
                }
                self.ok("Begin TLS negotiation now");
                return Flow::StartTls;
            }
            Command::Authenticate { mechanism, initial } => {
                if self.user().is_some() {
                    return self.bad("Already authenticated");
                }
                if !self.login_allowed() {
                    self.no(Some(Code::EncryptNeeded), "Use STARTTLS first");
                    return Flow::Continue;
                }
                if mechanism != "PLAIN" {
                    return self.bad("Unsupported mechanism; use PLAIN");
                }
                match initial {
                    Some(ir) => return self.sasl(ir).await,
                    None => {
                        self.conn.out.extend_from_slice(b"\"\"\r\n");
                        self.state = State::Sasl;
                    }
                }
            }
            Command::Unauthenticate => {
                self.state = State::Anonymous;
                self.login_by = Instant::now() + self.deps.config.managesieve.login_timeout;
                self.ok("Unauthenticate completed");
            }
            Command::HaveSpace(name, size) => {
                let user = self.user().unwrap_or_default().to_string();
                match storage::has_space(&store, &limits, &user, &name, size).await {
                    Ok(()) => self.ok("Putscript would succeed"),
                    Err(r) => self.refused(r),
                }
            }
            Command::PutScript(name, bytes) => {
                let user = self.user().unwrap_or_default().to_string();
                let Ok(text) = String::from_utf8(bytes) else {
                    return self.bad("the script is not UTF-8");
                };
                match storage::put(&store, &limits, &user, &name, &text).await {
                    Ok(()) => {
                        tracing::info!(user, script = name, "Sieve script stored");
                        self.ok("Putscript completed");
                    }
                    Err(r) => self.refused(r),
                }
            }
            Command::CheckScript(bytes) => match String::from_utf8(bytes) {
                Err(_) => self.no(None, "the script is not UTF-8"),
                Ok(text) => match storage::check(&limits, &text) {
                    Ok(_) => self.ok("Script is valid"),
                    Err(r) => self.refused(r),
                },
            },
            Command::ListScripts => {
                let user = self.user().unwrap_or_default().to_string();
                match storage::list(&store, &user).await {
                    Ok(list) => {
                        for (name, active) in list {
                            codec::write_string(&mut self.conn.out, name.as_bytes());
                            if active {
                                self.conn.out.extend_from_slice(b" ACTIVE");
                            }
                            self.conn.out.extend_from_slice(b"\r\n");
                        }
                        self.ok("Listscripts completed");
                    }
                    Err(e) => self.refused(Refused::Store(e)),
                }
            }
            Command::GetScript(name) => {
                let user = self.user().unwrap_or_default().to_string();
                match storage::get(&store, &user, &name).await {
                    Ok(Some(text)) => {
                        self.conn
                            .out
                            .extend_from_slice(format!("{{{}}}\r\n", text.len()).as_bytes());
                        self.conn.out.extend_from_slice(text.as_bytes());
                        self.conn.out.extend_from_slice(b"\r\n");
                        self.ok("Getscript completed");
                    }
                    Ok(None) => self.refused(Refused::Nonexistent),
                    Err(e) => self.refused(Refused::Store(e)),
                }
            }
            Command::SetActive(name) => {
                let user = self.user().unwrap_or_default().to_string();
                match storage::activate(&store, &user, &name).await {
                    Ok(()) => {
                        tracing::info!(user, script = name, "Sieve script activated");
                        self.ok("Setactive completed");
                    }
                    Err(r) => self.refused(r),
                }
            }
            Command::DeleteScript(name) => {
                let user = self.user().unwrap_or_default().to_string();
                match storage::delete(&store, &user, &name).await {
                    Ok(()) => self.ok("Deletescript completed"),
                    Err(r) => self.refused(r),
                }
            }
            Command::RenameScript(from, to) => {
                let user = self.user().unwrap_or_default().to_string();
                match storage::rename(&store, &user, &from, &to).await {
                    Ok(()) => self.ok("Renamescript completed"),
                    Err(r) => self.refused(r),
                }
            }
        }
        Flow::Continue
    }

    /// The PLAIN response (initial or after the empty challenge).
    async fn sasl(&mut self, b64: String) -> Flow {
        if b64.trim() == "*" {
            self.no(None, "Authentication cancelled");
            return Flow::Continue;
        }
        let creds = match crate::sasl::plain(&b64) {
            Ok(c) => c,
            Err(e) => return self.bad(&e.to_string()),
        };
        let mut ctx = HookCtx::new(HookPoint::Auth, self.listener, self.peer.ip());
        ctx.tls = self.conn.is_tls();
        match self
            .deps
            .login
            .login(ctx, None, Credentials::plain(creds))
            .await
        {
            Ok(account) => {
                tracing::info!(user = %account, "logged in");
                self.state = State::User(account);
                self.ok("Logged in");
                Flow::Continue
            }
            Err(Refusal::Throttled) => {
                codec::write_status(
                    &mut self.conn.out,
                    "BYE",
                    Some(Code::TryLater),
                    "Too many failed logins from your address, try again later",
                );
                Flow::Close
            }
            Err(Refusal::Failed { closing } | Refusal::NotAuthorized { closing }) => {
                if closing {
                    codec::write_status(
                        &mut self.conn.out,
                        "BYE",
                        None,
                        "Authentication failed; too many failures, closing",
                    );
                    Flow::Close
                } else {
                    self.no(None, "Authentication failed");
                    Flow::Continue
                }
            }
            Err(Refusal::Temporary { enhanced, text }) => {
                let text = crate::hooks::outcome::wording(enhanced.as_ref(), &text);
                self.no(Some(Code::TryLater), &text);
                Flow::Continue
            }
        }
    }
}
