//! AUTH (RFC 4954) with PLAIN (RFC 4616) and LOGIN: the SASL exchange here, the decision
//! in `crate::login`.

use crate::hooks::HookPoint;
use crate::login::{Credentials, Refusal};
use crate::session::Flow;
use crate::smtp::reply::Reply;
use crate::smtp::session::{AuthStep, Session, State};

impl Session {
    pub(in crate::smtp) fn auth_allowed(&self) -> bool {
        self.auth_offered_here()
            && (self.conn.is_tls() || self.deps.config.smtp.allow_plaintext_auth)
    }

    /// AUTH on the port-25 listener only with `smtp.auth_on_smtp`: an MX that takes AUTH is a
    /// password-guessing target, and a session authenticated there relays.
    pub(in crate::smtp) fn auth_offered_here(&self) -> bool {
        self.listener != crate::listener::Listener::Smtp || self.deps.config.smtp.auth_on_smtp
    }

    pub(in crate::smtp) async fn auth(&mut self, mech: String, initial: Option<String>) -> Flow {
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
        if self.deps.login.throttled(self.peer.ip()) {
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
            ("LOGIN", Some(ir)) => self.login_user(&ir),
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

    /// LOGIN's user name (initial response or first answer): ask for the password.
    fn login_user(&mut self, response: &str) -> Flow {
        match crate::sasl::login_step(response) {
            Ok(user) => {
                // "Password:" in base64, as clients expect (draft-murchison-sasl-login).
                self.reply(Reply::new(334, "", "UGFzc3dvcmQ6"));
                self.state = State::Auth(AuthStep::LoginPass(user));
            }
            Err(_) => self.reply(Reply::new(501, "5.5.2", "Invalid base64")),
        }
        Flow::Continue
    }

    pub(in crate::smtp) async fn auth_line(&mut self, line: &[u8]) -> Flow {
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
            AuthStep::LoginUser => self.login_user(&text),
            AuthStep::LoginPass(user) => match crate::sasl::login_step(&text).ok() {
                Some(p) => self.login(Credentials::password(user, p, "LOGIN")).await,
                None => {
                    self.reply(Reply::new(501, "5.5.2", "Invalid base64"));
                    Flow::Continue
                }
            },
        }
    }

    pub(in crate::smtp) async fn auth_plain(&mut self, b64: &str) -> Flow {
        match crate::sasl::plain(b64) {
            Ok(creds) => self.login(Credentials::plain(creds)).await,
            Err(e) => {
                self.reply(Reply::new(501, "5.5.2", e.to_string()));
                Flow::Continue
            }
        }
    }

    /// Decide the login (`crate::login`) and answer it (RFC 4954 §6).
    pub(in crate::smtp) async fn login(&mut self, creds: Credentials) -> Flow {
        let ctx = self.ctx(HookPoint::Auth);
        let mechanism = creds.mech.to_string();
        match self.deps.login.login(ctx, Some(&*self.hooks), creds).await {
            Ok(account) => {
                self.user = Some(account);
                self.auth_mechanism = Some(mechanism);
                self.reply(Reply::new(235, "2.7.0", "Authentication successful"));
                Flow::Continue
            }
            Err(Refusal::Throttled) => {
                self.reply(Reply::new(
                    421,
                    "4.7.0",
                    "Too many failed authentications, try again later",
                ));
                Flow::Close
            }
            Err(Refusal::Failed { closing } | Refusal::NotAuthorized { closing }) => {
                self.auth_failed(closing)
            }
            // RFC 4954 §6: 454 4.7.0, or the enhanced code a hook gave.
            Err(Refusal::Temporary { enhanced, text }) => {
                let code = enhanced.map_or_else(|| "4.7.0".to_string(), |e| e.to_string());
                self.reply(Reply::new(454, &code, text));
                Flow::Continue
            }
        }
    }

    /// Answer a failed AUTH with 535 and count it; once the client's IP (or this account from
    /// it) reaches the limit, add 421 and close (every failure path, so the client always
    /// learns why).
    pub(in crate::smtp) fn auth_failed(&mut self, closing: bool) -> Flow {
        self.reply(Reply::auth_failed());
        if closing {
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
}
