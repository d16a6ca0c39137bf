//! Everything after the last byte of a message (DATA or the last BDAT chunk): size and
//! line checks, sender authentication, trace headers, the `on_data` hook, and the one
//! delivery write (`crate::delivery`) whose success is the 250.

use std::sync::Arc;

use crate::dns::Fcrdns;
use crate::hooks::{HookPoint, Route, Verdict};
use crate::message::rfc5322_now;
use crate::smtp::data::DataProblem;
use crate::smtp::reply::Reply;
use crate::smtp::session::{Rcpt, Session, Transaction};

/// The domain of the alias that forwards this message elsewhere (the ARC sealing domain):
/// a local recipient whose targets include an address in another domain; else any local one.
pub(in crate::smtp) fn forwarding_domain(rcpts: &[Rcpt]) -> Option<String> {
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

/// What the end of DATA leaves for the message trace and the transaction metric.
#[derive(Default)]
pub(in crate::smtp) struct DataTrace {
    rec: crate::trace::Record,
    /// Why the message was refused (`corvus_smtp_transactions_total{reason}`).
    reason: &'static str,
    /// Accepted and dropped (a hook's discard, a filter that removed every recipient).
    discarded: bool,
}

fn policy_step(verdict: &str, reason: String) -> crate::trace::Step {
    crate::trace::Step {
        at: crate::trace::now_rfc3339(),
        stage: "policy".into(),
        engine: "corvus".into(),
        verdict: verdict.into(),
        reason,
        micros: 0,
    }
}

impl Session {
    pub(in crate::smtp) fn check_ready_for_data(&self) -> Option<Reply> {
        match &self.tx {
            None => Some(Reply::bad_sequence("Need MAIL command")),
            Some(tx) if tx.rcpts.is_empty() => {
                Some(Reply::new(554, "5.5.1", "No valid recipients"))
            }
            Some(_) => None,
        }
    }

    /// Everything after the last byte of message data: checks, hooks, storage, the reply;
    /// then the transaction's metric and its message trace.
    pub(in crate::smtp) async fn end_of_data(
        &mut self,
        data: Result<Vec<u8>, DataProblem>,
    ) -> Reply {
        let Some(mut tx) = self.tx.take() else {
            return Reply::bad_sequence("Need MAIL command");
        };
        tx.trace = None;
        let mut t = DataTrace::default();
        t.rec.id = crate::delivery::new_queue_id();
        t.rec.created = crate::trace::now_rfc3339();
        t.rec.created_unix = chrono::Utc::now().timestamp();
        t.rec.sender = tx.from.to_string();
        t.rec.recipients = tx.rcpts.iter().map(|r| r.address.clone()).collect();
        t.rec.steps = self.session_steps.clone();
        t.rec.steps.extend(tx.steps.iter().cloned());
        let reply = self.decide_data(tx, data, &mut t).await;
        // After the checks: FCrDNS is known by then, when the message got that far.
        t.rec.connection = self.trace_connection();
        let (result, reason) = match reply.code {
            200..=399 if t.discarded => ("discarded", ""),
            200..=399 => ("accepted", ""),
            400..=499 => ("tempfailed", t.reason),
            _ => ("rejected", t.reason),
        };
        let metric_result = if result == "discarded" {
            "accepted"
        } else {
            result
        };
        crate::metrics::m().smtp_transaction(self.listener.name(), metric_result, reason);
        t.rec.result = result.to_string();
        t.rec.reply = reply.to_string().trim_end().to_string();
        crate::trace::emit(crate::trace::Event::Begin(Box::new(t.rec)));
        reply
    }

    /// The session's facts for the trace.
    pub(in crate::smtp) fn trace_connection(&self) -> crate::trace::Connection {
        let (ptr, fcrdns) = match &self.fcrdns {
            Some(Fcrdns::Pass(n)) => (Some(n.clone()), "pass"),
            Some(Fcrdns::Mismatch(n)) => (Some(n.clone()), "fail"),
            Some(Fcrdns::None) => (None, "none"),
            Some(Fcrdns::TempError) => (None, "temperror"),
            None => (None, "pending"),
        };
        crate::trace::Connection {
            listener: self.listener.name().to_string(),
            ip: self.peer.ip().to_string(),
            ptr,
            fcrdns: fcrdns.to_string(),
            helo: self.helo.clone(),
            tls: self.conn.stream.tls_info(),
            user: self.user.clone(),
        }
    }

    async fn decide_data(
        &mut self,
        mut tx: Transaction,
        data: Result<Vec<u8>, DataProblem>,
        t: &mut DataTrace,
    ) -> Reply {
        self.bdat = None;
        let max = self.deps.config.smtp.max_message_size;
        t.reason = "content";
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
                        self.deps.config.smtp.max_data_line
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
                t.reason = "memory";
                return Reply::new(
                    452,
                    "4.3.1",
                    "Insufficient system storage: too many messages in transit, try again later",
                );
            }
        };
        self.messages += 1;
        let queue_id = t.rec.id.clone();
        t.rec.size = body.len() as u64;
        t.rec.message_id = crate::message::header_values(&body, "Message-ID", true)
            .into_iter()
            .next()
            .map(|m| m.trim().to_string());
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
            Some(Box::pin(self.deps.sender_auth.check_message(&body, &env)).await)
        } else {
            None
        };
        // The Sieve redirect-loop mark is ours alone: one from outside could stop a user's
        // redirect.
        if let (std::borrow::Cow::Owned(stripped), n) =
            crate::sender_auth::headers::strip_named(&body, "X-Sieve-Redirected-From")
        {
            tracing::info!(removed = n, "removed X-Sieve-Redirected-From from outside");
            body = stripped;
        }
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
                (None, Some(u)) if self.deps.sender_auth.enabled() => {
                    msg.extend_from_slice(self.deps.sender_auth.authenticated_header(u).as_bytes())
                }
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
        ctx.queue_id = queue_id.clone();
        ctx.mail_from = tx.from.to_string();
        ctx.rcpts = tx.rcpts.iter().map(|r| r.address.clone()).collect();
        if let Some(c) = &checked {
            ctx.auth = c.facts.clone();
        }
        let msg = Arc::new(msg);
        ctx.message = Some(msg.clone());
        if let Some(c) = &checked {
            t.rec.sender_auth = Some(crate::trace::SenderAuth {
                spf: c.facts.spf.to_string(),
                dkim: c.facts.dkim.to_string(),
                dmarc: c.facts.dmarc.to_string(),
                arc: c.facts.arc.to_string(),
            });
            for (method, result) in [
                ("spf", &c.facts.spf),
                ("dkim", &c.facts.dkim),
                ("dmarc", &c.facts.dmarc),
                ("arc", &c.facts.arc),
            ] {
                crate::metrics::m()
                    .sender_auth
                    .get_or_create(&crate::metrics::SenderAuthResult {
                        method,
                        result: result.to_string(),
                    })
                    .inc();
            }
        }
        let outcome = self.deps.hooks.run_async(&ctx, Some(&*self.hooks)).await;
        t.rec.steps.extend(outcome.steps.iter().cloned());
        if let Some(s) = &outcome.actions.spam {
            t.rec.spam = Some(crate::trace::Spam {
                engine: s.engine.clone(),
                score: s.score,
                required: s.required,
                action: s.action.clone(),
                symbols: s.symbols.clone(),
            });
        }
        t.reason = "hook";
        if let Some(r) = Reply::refusal(&outcome.verdict) {
            return r;
        }
        let mut decisions = outcome.decisions.clone();
        if let Some(s) = &outcome.actions.spam {
            decisions.push(format!(
                "on_data {}: score {:.2} (required {:.2}), action {:?}, symbols {}",
                s.engine,
                s.score,
                s.required,
                s.action,
                s.symbols.join(",")
            ));
        }
        let quarantine = match &outcome.verdict {
            Verdict::Discard => {
                t.discarded = true;
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
                t.reason = "dmarc";
                t.rec
                    .steps
                    .push(policy_step("reject", format!("DMARC policy: {text}")));
                tracing::info!(queue_id, from = %tx.from, "message rejected by DMARC policy");
                return Reply::new(550, "5.7.1", text.clone());
            }
            Some(crate::sender_auth::Action::Quarantine(why)) => {
                t.rec
                    .steps
                    .push(policy_step("quarantine", format!("DMARC policy: {why}")));
                quarantine.or_else(|| Some(why.clone()))
            }
            _ => quarantine,
        };
        // Filters' edits first (their header positions are in the message they saw), then
        // the headers scripts and plugins add on top.
        let edits = &outcome.actions.edits;
        let msg = if edits.changes_message() {
            Arc::new(crate::hooks::edits::apply(&msg, edits))
        } else {
            msg
        };
        let msg = crate::message::prepend_headers(&msg, &outcome.actions.add_headers);
        if !edits.is_empty() && !self.apply_envelope_edits(&mut tx, edits, &queue_id).await {
            t.discarded = true;
            t.rec.steps.push(policy_step(
                "discard",
                "a filter removed every recipient".into(),
            ));
            return Reply::new(250, "2.0.0", format!("Ok: queued as {queue_id}"));
        }

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
        let mut plan = match self
            .deps
            .delivery
            .plan(
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
            Err(e) => {
                t.reason = "hook";
                return Reply::hook_refusal(e.code, e.enhanced.as_ref(), &e.text, e.permanent);
            }
        };
        t.rec.steps.extend(plan.steps.iter().cloned());
        t.rec.filed = plan.filed.clone();
        if !plan.remote.is_empty() {
            t.rec.steps.push(policy_step(
                "queue",
                format!(
                    "queued for {}",
                    plan.remote
                        .iter()
                        .map(|r| r.address.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let remote = !plan.remote.is_empty();
        // Mail an alias forwards to another domain leaves ARC-sealed (RFC 8617).
        let mut queued = msg.clone();
        if let Some(c) = &checked
            && remote
            && let Some(domain) = forwarding_domain(&tx.rcpts)
            && let Some(set) = self
                .deps
                .sender_auth
                .arc_seal(&msg, c, &self.deps.store, &domain)
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
        entry.requiretls = tx.params.requiretls;
        entry.decisions = decisions;
        // RFC 5321 §4.4: final delivery records the envelope sender in Return-Path.
        let reverse_path = if tx.from.is_null() {
            String::new()
        } else {
            tx.from.to_string()
        };
        let generated = std::mem::take(&mut plan.generated);
        let ingest = plan.into_ingest(&reverse_path, now, Some((entry, queued)));
        // Architecture invariant: 250 after DATA only once the one write for the message
        // (every local copy and the queue entry) is durable; on an error nothing of it is
        // visible, so the client's retry cannot duplicate a copy.
        if let Err(e) = self.deps.delivery.ingest(ingest).await {
            t.reason = "storage";
            tracing::error!(error = %e, "storing message failed");
            return Reply::local_error();
        }
        self.deps.delivery.send_generated(generated).await;
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

    /// A filter's changes to the envelope (new sender, recipients added and removed). False
    /// when no recipient is left: the message is accepted and dropped, as Postfix does.
    async fn apply_envelope_edits(
        &self,
        tx: &mut Transaction,
        edits: &crate::hooks::edits::MessageEdits,
        queue_id: &str,
    ) -> bool {
        if let Some(from) = &edits.mail_from {
            match super::codec::parse_mailbox(from) {
                Some(a) => tx.from = a,
                None if from.is_empty() => tx.from = super::codec::Address::default(),
                None => tracing::warn!(
                    queue_id,
                    from,
                    "filter gave an invalid sender; kept the old one"
                ),
            }
        }
        for gone in &edits.del_rcpts {
            tx.rcpts.retain(|r| !r.address.eq_ignore_ascii_case(gone));
        }
        for added in &edits.add_rcpts {
            let Some(a) = super::codec::parse_mailbox(added) else {
                tracing::warn!(
                    queue_id,
                    rcpt = added,
                    "filter added an invalid recipient; ignored"
                );
                continue;
            };
            let address = a.to_string();
            if tx
                .rcpts
                .iter()
                .any(|r| r.address.eq_ignore_ascii_case(&address))
            {
                continue;
            }
            match self.resolve(&address).await {
                Ok(Route::UnknownLocal) => {
                    tracing::warn!(
                        queue_id,
                        rcpt = address,
                        "filter added an unknown local recipient; ignored"
                    );
                }
                Ok(route) => tx.rcpts.push(Rcpt {
                    address,
                    route,
                    params: Default::default(),
                    file_into: None,
                }),
                Err(_) => {
                    tracing::warn!(
                        queue_id,
                        rcpt = address,
                        "could not route a recipient a filter added; ignored"
                    );
                }
            }
        }
        if tx.rcpts.is_empty() {
            tracing::info!(
                queue_id,
                "a filter removed every recipient; message dropped"
            );
            return false;
        }
        true
    }

    pub(in crate::smtp) fn received_header(
        &self,
        tx: &Transaction,
        queue_id: &str,
        fcrdns: &Fcrdns,
    ) -> String {
        let tls = self.conn.stream.tls_info();
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
