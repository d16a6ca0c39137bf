//! MAIL FROM (RFC 5321 §4.1.1.2) with its parameters (SIZE, BODY, SMTPUTF8, RET, ENVID,
//! REQUIRETLS…), the SPF check of inbound mail and the `on_mail` hook.

use crate::hooks::HookPoint;
use crate::routing;
use crate::session::Flow;
use crate::smtp::codec::{Address, Body, MailParams};
use crate::smtp::reply::Reply;
use crate::smtp::session::{Session, Transaction};

impl Session {
    pub(in crate::smtp) async fn mail(&mut self, from: Address, params: MailParams) -> Flow {
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
        if self.messages >= self.deps.config.smtp.max_messages_per_session {
            self.reply(Reply::new(
                421,
                "4.5.3",
                "Too many messages in this session, reconnect",
            ));
            return Flow::Close;
        }
        let max = self.deps.config.smtp.max_message_size;
        if params.size.is_some_and(|s| s > max) {
            self.reply(Reply::too_big(max));
            return Flow::Continue;
        }
        if params
            .size
            .is_some_and(|s| !self.deps.message_memory.has_room(s as usize))
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
        if params.requiretls && !self.conn.is_tls() {
            // RFC 8689 §4.1: REQUIRETLS only in a session that uses TLS (and it is only
            // advertised there).
            self.reply(Reply::new(
                530,
                "5.7.10",
                "REQUIRETLS needs a TLS session; use STARTTLS first",
            ));
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
                self.deps
                    .sender_auth
                    .check_spf(self.peer.ip(), &helo, &sender),
            )
            .await;
            if let Some(text) = self.deps.sender_auth.spf_refusal(&spf) {
                tracing::info!(from = %from, "MAIL refused: SPF fail");
                self.reply(Reply::new(550, "5.7.23", text));
                return Flow::Continue;
            }
            ctx.auth = crate::sender_auth::SenderAuth::spf_facts(&spf);
            Some(spf)
        } else {
            None
        };
        let outcome = self.deps.hooks.run_async(&ctx, Some(&*self.hooks)).await;
        if let Some(r) = Reply::refusal(&outcome.verdict) {
            self.reply(r);
            return Flow::Continue;
        }
        // An authenticated sender must use its own address, on submission and on the smtp
        // listener alike (AUTH there allows relaying, so it must not allow forging either).
        if let Some(user) = &self.user
            && !self.deps.config.smtp.allow_any_sender
        {
            let owned = !from.is_null()
                && routing::owns_address(&self.deps.store, user, &from.to_string())
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
            steps: outcome.steps,
            refused: Vec::new(),
            last_refusal: String::new(),
            trace: None,
        });
        self.reply(Reply::new(250, "2.1.0", "Sender OK"));
        Flow::Continue
    }
}
