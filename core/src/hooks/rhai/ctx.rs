//! What a script sees: [`ScriptCtx`] (the Rhai type `Ctx`) over the facts of one hook call,
//! with the message parsed lazily; [`ConfigView`] (`ctx.config`), [`AuthView`]
//! (`ctx.auth`) and [`ScriptVerdict`] (what `accept()`, `reject(…)`, … return).

use std::sync::{Arc, Mutex, OnceLock};

use ::rhai::{Dynamic, Map};

use crate::hooks::{Actions, HookCtx, Verdict};
use crate::message::{BodyFacts, header_values, parse_body};

struct CtxInner {
    hook: HookCtx,
    config: ConfigView,
    max_text: usize,
    body: OnceLock<BodyFacts>,
    actions: Mutex<Actions>,
}

/// The `ctx` handed to a script function (Rhai type `Ctx`). Cloning shares it, so actions a
/// script takes through any copy land in the same place.
#[derive(Clone)]
pub struct ScriptCtx(Arc<CtxInner>);

impl ScriptCtx {
    pub(super) fn new(hook: HookCtx, config: ConfigView, max_text: usize) -> Self {
        ScriptCtx(Arc::new(CtxInner {
            hook,
            config,
            max_text,
            body: OnceLock::new(),
            actions: Mutex::new(Actions::default()),
        }))
    }

    pub(super) fn hook(&self) -> &HookCtx {
        &self.0.hook
    }

    pub(super) fn config(&self) -> &ConfigView {
        &self.0.config
    }

    pub(super) fn headers(&self, name: &str) -> Vec<String> {
        match &self.0.hook.message {
            Some(m) => header_values(m, name, false),
            None => Vec::new(),
        }
    }

    pub(super) fn header(&self, name: &str) -> String {
        match &self.0.hook.message {
            Some(m) => header_values(m, name, true).pop().unwrap_or_default(),
            None => String::new(),
        }
    }

    pub(super) fn body(&self) -> &BodyFacts {
        self.0.body.get_or_init(|| match &self.0.hook.message {
            Some(m) => parse_body(m, self.0.max_text),
            None => BodyFacts::default(),
        })
    }

    pub(super) fn actions(&self) -> std::sync::MutexGuard<'_, Actions> {
        self.0.actions.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn take_actions(&self) -> Actions {
        std::mem::take(&mut *self.actions())
    }
}

/// `ctx.config` (Rhai type `Config`): the entry's config map, read-only and shared.
#[derive(Clone)]
pub struct ConfigView(pub(super) Arc<Map>);

impl ConfigView {
    pub(super) fn of(config: &Dynamic) -> Self {
        ConfigView(Arc::new(
            config
                .read_lock::<Map>()
                .map(|m| m.clone())
                .unwrap_or_default(),
        ))
    }
}

/// `ctx.auth` (Rhai type `Auth`): read-only view of the sender authentication facts.
#[derive(Clone)]
pub struct AuthView(pub(super) ScriptCtx);

pub(super) fn describe_auth(a: &crate::sender_auth::AuthFacts) -> String {
    format!(
        "spf={} ({}) dkim={} ({}) dmarc={} ({}, policy {}) arc={} ({}) action={}",
        a.spf,
        a.spf_domain,
        a.dkim,
        a.dkim_domains.join(" "),
        a.dmarc,
        a.dmarc_domain,
        a.dmarc_policy,
        a.arc,
        a.arc_sealer,
        a.action
    )
}

/// A verdict as a Rhai value (type `Verdict`), returned by `accept()`, `reject(…)`, ….
#[derive(Debug, Clone)]
pub struct ScriptVerdict(pub Verdict);
