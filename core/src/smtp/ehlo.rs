//! EHLO and HELO (RFC 5321 §4.1.1.1): the greeting reply and the extensions offered.

use crate::hooks::HookPoint;
use crate::session::Flow;
use crate::smtp::reply::Reply;
use crate::smtp::session::Session;

impl Session {
    pub(in crate::smtp) async fn hello(&mut self, domain: String, esmtp: bool) -> Flow {
        self.tx = None;
        self.bdat = None;
        let outcome = {
            let mut c = self.ctx(HookPoint::Helo);
            c.helo = domain.clone();
            self.deps.hooks.run_async(&c, Some(&*self.hooks)).await
        };
        self.session_steps
            .retain(|s| s.stage != HookPoint::Helo.function_name());
        self.session_steps.extend(outcome.steps.iter().cloned());
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
        let c = &self.deps.config.smtp;
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
        if !self.conn.is_tls() {
            lines.push("STARTTLS".into());
        } else {
            // RFC 8689: offered only where it may be used, in a TLS session.
            lines.push("REQUIRETLS".into());
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
}
