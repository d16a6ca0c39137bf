//! rspamd in the hook chain (`[[hooks]] rspamd = "http://127.0.0.1:11333"`): at the end of
//! data the message goes to the normal worker's `/checkv2` with the envelope and connection
//! facts rspamd uses, and its answer becomes a verdict, header edits and `ctx.spam`
//! ([`reply`]). Users' moves into and out of Junk teach its controller ([`learn`]).

pub mod http;
pub mod learn;
pub mod reply;

use super::filter_config::RspamdSettings;
use super::{
    Actions, HookCtx, HookEngine, HookError, HookFuture, HookPoint, HookSession, LearnJob, OnError,
    Verdict,
};
use crate::config::HookEntry;
use crate::store::Store;

/// rspamd as a hook engine.
pub struct RspamdHook {
    name: String,
    settings: RspamdSettings,
    worker: http::Client,
    learner: Option<learn::Learner>,
    on_error: OnError,
}

impl RspamdHook {
    /// The engine of an `rspamd = URL` entry; `store` is where learning reads messages from.
    pub fn load(entry: &HookEntry, url: &str, store: Store) -> Result<Self, String> {
        let settings = RspamdSettings::from_entry(url, &entry.config)?;
        let learner = settings.learn.then(|| {
            learn::Learner::new(
                http::Client::new(settings.controller.clone()),
                settings.password.clone(),
                settings.timeout,
                store,
            )
        });
        Ok(RspamdHook {
            name: format!("rspamd {}", settings.url),
            worker: http::Client::new(settings.url.clone()),
            learner,
            settings,
            on_error: entry.on_error,
        })
    }

    /// The request headers for one scan (rspamd's protocol, `/checkv2`).
    fn request_headers(ctx: &HookCtx) -> Vec<(&'static str, String)> {
        let mut h = vec![
            ("IP", ctx.client_ip.to_string()),
            ("Helo", ctx.helo.clone()),
            (
                "From",
                if ctx.mail_from.is_empty() {
                    "<>".to_string()
                } else {
                    ctx.mail_from.clone()
                },
            ),
        ];
        if !ctx.client_ptr.is_empty() {
            h.push(("Hostname", ctx.client_ptr.clone()));
        }
        for r in &ctx.rcpts {
            h.push(("Rcpt", r.clone()));
        }
        // Per-user statistics and settings classify for the one recipient.
        if let [only] = ctx.rcpts.as_slice() {
            h.push(("Deliver-To", only.clone()));
        }
        if !ctx.queue_id.is_empty() {
            h.push(("Queue-ID", ctx.queue_id.clone()));
        }
        if !ctx.user.is_empty() {
            h.push(("User", ctx.user.clone()));
        }
        if ctx.tls {
            let mut tls = ctx.tls_info.split(' ');
            h.push(("TLS-Version", tls.next().unwrap_or("TLS").to_string()));
            if let Some(c) = tls.next() {
                h.push(("TLS-Cipher", c.to_string()));
            }
        }
        h
    }

    async fn scan(&self, ctx: &HookCtx, actions: &mut Actions) -> Result<Verdict, HookError> {
        if !self.settings.listeners.contains(&ctx.listener) {
            return Ok(Verdict::Continue);
        }
        let Some(msg) = &ctx.message else {
            return Ok(Verdict::Continue);
        };
        if msg.len() as u64 > self.settings.max_size {
            tracing::debug!(
                size = msg.len(),
                "message larger than rspamd's max_size: not scanned"
            );
            return Ok(Verdict::Continue);
        }
        let headers = Self::request_headers(ctx);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let fail = |e: String| HookError(format!("{}: {e}", self.name));
        let resp = self
            .worker
            .post(
                "/checkv2",
                &headers,
                bytes::Bytes::from_owner(Shared(msg.clone())),
                self.settings.timeout,
            )
            .await
            .map_err(|e| fail(e.to_string()))?;
        if resp.status != 200 {
            let body = String::from_utf8_lossy(&resp.body);
            return Err(fail(format!(
                "HTTP {}: {}",
                resp.status,
                super::outcome::cut(body.trim(), 200)
            )));
        }
        let d = reply::decide(
            &resp.body,
            &self.name,
            reply::Thresholds {
                junk: self.settings.junk_score,
                reject: self.settings.reject_score,
            },
        )
        .map_err(fail)?;
        if let Some(f) = &d.facts {
            // The message's trace: which entry, what it found, under the queue id.
            tracing::info!(
                queue_id = %ctx.queue_id, engine = %self.name, score = f.score,
                action = %f.action, symbols = %f.symbols.join(","), verdict = d.verdict.name(),
                "rspamd scanned"
            );
        }
        actions.edits.merge(d.edits);
        if d.facts.is_some() {
            actions.spam = d.facts;
        }
        Ok(d.verdict)
    }
}

impl HookEngine for RspamdHook {
    fn name(&self) -> &str {
        &self.name
    }

    fn handles(&self, point: HookPoint) -> bool {
        point == HookPoint::Data
    }

    fn call(&self, ctx: &HookCtx, actions: &mut Actions) -> Result<Verdict, HookError> {
        crate::blocking::wait(self.scan(ctx, actions))
    }

    fn call_async<'a>(
        &'a self,
        ctx: &'a HookCtx,
        _session: Option<&'a HookSession>,
        actions: &'a mut Actions,
    ) -> HookFuture<'a> {
        Box::pin(self.scan(ctx, actions))
    }

    fn on_error(&self) -> OnError {
        self.on_error
    }

    fn learn(&self, job: &LearnJob) {
        if let Some(l) = &self.learner {
            l.submit(job.clone());
        }
    }
}

/// The message, shared with the session, as the request body (no copy).
struct Shared(std::sync::Arc<Vec<u8>>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Whether rspamd at `url` answers `/ping` (for `corvus check`: a warning when not).
pub async fn ping(url: &str) -> Result<(), String> {
    let url = super::filter_config::HttpUrl::parse(url)?;
    let c = http::Client::new(url.clone());
    match c.get("/ping", std::time::Duration::from_secs(3)).await {
        Ok(r) if r.status == 200 => Ok(()),
        Ok(r) => Err(format!("{url} answered HTTP {} to /ping", r.status)),
        Err(e) => Err(format!("{url}: {e}")),
    }
}

#[cfg(test)]
mod tests;
