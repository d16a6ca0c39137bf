//! RCPT TO (RFC 5321 §4.1.1.3): routing, the `on_rcpt` hook, DSN parameters (RFC 3461);
//! and VRFY (§3.5.3).

use crate::hooks::{HookPoint, Route};
use crate::routing;
use crate::session::Flow;
use crate::smtp::codec::{Address, RcptParams};
use crate::smtp::reply::Reply;
use crate::smtp::session::{Rcpt, Session, r_is_permanent};

impl Session {
    /// A refused recipient, in the metrics and the transaction's trace.
    fn note_refusal(&mut self, address: &str, reply: &Reply, by: &'static str) {
        crate::metrics::m()
            .smtp_rcpt_refused
            .get_or_create(&crate::metrics::ResultLabel { result: by })
            .inc();
        // The trace starts at the first refusal: most transactions never need one.
        let draft = self
            .tx
            .as_ref()
            .is_some_and(|tx| tx.trace.is_none())
            .then(|| self.trace_draft());
        if let Some(tx) = &mut self.tx {
            if let Some(d) = draft {
                tx.trace = Some(Box::new(d));
            }
            tx.refused.push(address.to_string());
            tx.last_refusal = reply.to_string().trim_end().to_string();
        }
    }

    /// The trace of this transaction, should every recipient be refused.
    fn trace_draft(&self) -> crate::trace::Record {
        crate::trace::Record {
            id: crate::delivery::new_queue_id(),
            created: crate::trace::now_rfc3339(),
            created_unix: chrono::Utc::now().timestamp(),
            sender: self
                .tx
                .as_ref()
                .map(|tx| tx.from.to_string())
                .unwrap_or_default(),
            connection: self.trace_connection(),
            steps: self.session_steps.clone(),
            ..Default::default()
        }
    }

    pub(in crate::smtp) async fn rcpt(&mut self, to: Address, params: RcptParams) -> Flow {
        let Some(tx) = &self.tx else {
            self.reply(Reply::bad_sequence("Need MAIL before RCPT"));
            return Flow::Continue;
        };
        if tx.rcpts.len() >= self.deps.config.smtp.max_recipients {
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
            format!("postmaster@{}", self.deps.config.first_domain())
        } else {
            to.to_string()
        };
        let mut route = match self.resolve(&address).await {
            Ok(r) => r,
            Err(r) => {
                self.note_refusal(&address, &r, "routing");
                self.reply(r);
                return Flow::Continue;
            }
        };
        let mut ctx = self.ctx(HookPoint::Rcpt);
        ctx.rcpt = address.clone();
        ctx.route = Some(route.clone());
        let outcome = self.deps.hooks.run_async(&ctx, Some(&*self.hooks)).await;
        if let Some(tx) = &mut self.tx {
            tx.steps.extend(outcome.steps.iter().cloned().map(|mut s| {
                s.reason = format!("{address}: {}", s.reason);
                s
            }));
        }
        if let Some(r) = Reply::refusal(&outcome.verdict) {
            // The built-in policy (unknown user, relay denied) or a hook entry.
            let by = match outcome.steps.last() {
                Some(step) if step.engine == "builtin" => "policy",
                _ => "hook",
            };
            self.note_refusal(&address, &r, by);
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

    pub(in crate::smtp) async fn resolve(&self, address: &str) -> Result<Route, Reply> {
        routing::resolve(
            &self.deps.store,
            &self.deps.config.domains,
            self.deps.config.postmaster.as_deref(),
            address,
        )
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "recipient lookup failed");
            Reply::local_error()
        })
    }

    pub(in crate::smtp) async fn vrfy(&self, arg: &str) -> Reply {
        if !self.deps.config.smtp.vrfy {
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
            format!("{arg}@{}", self.deps.config.first_domain())
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
}
