//! Hook dispatch: one [`HookPoint`] enum, one [`Verdict`], one [`HookEngine`] trait that the
//! built-in policy, Rhai scripts and WASM plugins implement, and one [`HookChain`] that runs
//! them in order.
//!
//! Order at every point: the built-in policy runs first and can only refuse (so no script or
//! plugin can turn Corvus into an open relay); then the configured `[[hooks]]` entries in file
//! order. The first verdict other than `Continue` ends the chain. Actions (add header, change
//! recipient, file into a folder) accumulate along the chain.

pub mod builtin;
pub mod edits;
pub mod filter_config;
pub mod kv;
mod load;
pub mod milter;
pub mod outcome;
pub mod rhai;
pub mod rspamd;
pub mod script_test;
pub mod session;
#[cfg(feature = "wasm")]
pub mod wasm;
#[cfg(not(feature = "wasm"))]
#[path = "wasm_disabled.rs"]
pub mod wasm;

pub use load::{build_entries, reachable};
pub use outcome::Enhanced;
pub use wasm::HookSession;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Instant;

/// Where in a session a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookPoint {
    /// A client connected.
    Connect,
    /// HELO/EHLO.
    Helo,
    /// AUTH/LOGIN credentials.
    Auth,
    /// MAIL FROM.
    Mail,
    /// RCPT TO (once per recipient).
    Rcpt,
    /// End of message data.
    Data,
    /// Before a message is filed into a local mailbox or sent to a remote host.
    Delivery,
    /// Before message content is served over IMAP or POP3.
    Fetch,
}

impl HookPoint {
    /// Every hook point, in declaration order, which is each point's [`HookPoint::number`]
    /// (checked at compile time). A new variant goes last, so that numbers never change, and
    /// here too (the array's length is part of its type, so forgetting it fails to compile
    /// where the length is used).
    pub const ALL: [HookPoint; 8] = [
        HookPoint::Connect,
        HookPoint::Helo,
        HookPoint::Auth,
        HookPoint::Mail,
        HookPoint::Rcpt,
        HookPoint::Data,
        HookPoint::Delivery,
        HookPoint::Fetch,
    ];

    /// The point's name (`rcpt`): what WIT 0.4 plugins list in `handles` and get as `hook`.
    pub fn name(self) -> &'static str {
        &self.function_name()[3..]
    }

    /// The point's number, its place in [`HookPoint::ALL`] (what WIT 0.4 plugins get as
    /// `hook`; a new point is appended, so numbers never change).
    pub fn number(self) -> u32 {
        self as u32
    }

    /// The point named `name` (see [`HookPoint::name`]).
    pub fn from_name(name: &str) -> Option<HookPoint> {
        HookPoint::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Rhai function name (`on_rcpt`); the WIT 0.3 export is the same with `-`.
    pub fn function_name(self) -> &'static str {
        match self {
            HookPoint::Connect => "on_connect",
            HookPoint::Helo => "on_helo",
            HookPoint::Auth => "on_auth",
            HookPoint::Mail => "on_mail",
            HookPoint::Rcpt => "on_rcpt",
            HookPoint::Data => "on_data",
            HookPoint::Delivery => "on_delivery",
            HookPoint::Fetch => "on_fetch",
        }
    }
}

/// A set of hook points: the ones a script or plugin handles. One bit per variant of
/// [`HookPoint`], in a word that holds them all (checked at compile time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PointSet(u64);

const _: () = assert!(HookPoint::ALL.len() <= u64::BITS as usize);
const _: () = {
    let mut i = 0;
    while i < HookPoint::ALL.len() {
        assert!(
            HookPoint::ALL[i] as usize == i,
            "HookPoint::ALL is in declaration order"
        );
        i += 1;
    }
};

impl PointSet {
    /// Add `point`.
    pub fn insert(&mut self, point: HookPoint) {
        self.0 |= 1 << point as u32;
    }

    /// Whether `point` is in the set.
    pub fn contains(self, point: HookPoint) -> bool {
        self.0 & (1 << point as u32) != 0
    }

    /// The points in the set, in session order.
    pub fn iter(self) -> impl Iterator<Item = HookPoint> {
        HookPoint::ALL
            .into_iter()
            .filter(move |p| self.contains(*p))
    }

    /// The `on_*` names of the points in the set.
    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(HookPoint::function_name).collect()
    }
}

impl FromIterator<HookPoint> for PointSet {
    fn from_iter<I: IntoIterator<Item = HookPoint>>(points: I) -> Self {
        let mut set = PointSet::default();
        for p in points {
            set.insert(p);
        }
        set
    }
}

/// A hook's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No opinion; the next entry decides.
    Continue,
    /// Accept; later entries are skipped.
    Accept,
    /// Permanent refusal with a 5xx code (hooks build it with [`Verdict::reject`]).
    Reject {
        /// SMTP code.
        code: u16,
        /// RFC 3463 enhanced status code, when the hook gave one (SMTP answers 5.7.1
        /// otherwise).
        enhanced: Option<Enhanced>,
        /// Text, without the enhanced code.
        text: String,
    },
    /// Temporary refusal with a 4xx code (hooks build it with [`Verdict::tempfail`]).
    Tempfail {
        /// SMTP code.
        code: u16,
        /// RFC 3463 enhanced status code, when the hook gave one (SMTP answers 4.7.1
        /// otherwise).
        enhanced: Option<Enhanced>,
        /// Text, without the enhanced code.
        text: String,
    },
    /// Accept and silently drop.
    Discard,
    /// Accept and deliver into Junk.
    Quarantine(String),
}

impl Verdict {
    /// Whether this verdict ends the chain.
    pub fn ends_chain(&self) -> bool {
        !matches!(self, Verdict::Continue)
    }

    /// Short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Continue => "continue",
            Verdict::Accept => "accept",
            Verdict::Reject { .. } => "reject",
            Verdict::Tempfail { .. } => "tempfail",
            Verdict::Discard => "discard",
            Verdict::Quarantine(_) => "quarantine",
        }
    }
}

/// Side effects a hook asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actions {
    /// Headers to prepend.
    pub add_headers: Vec<(String, String)>,
    /// New recipient (on rcpt).
    pub set_rcpt: Option<String>,
    /// Folder to file into (on delivery).
    pub file_into: Option<String>,
    /// Changes filters (milters, rspamd) made to the message and its envelope (data).
    pub edits: edits::MessageEdits,
    /// A spam filter's result (data): later entries see it as `ctx.spam`.
    pub spam: Option<Arc<SpamFacts>>,
}

/// What a spam filter (rspamd) made of a message: what later hooks see as `ctx.spam`, and
/// what the message's trace records.
#[derive(Debug, Clone, PartialEq)]
pub struct SpamFacts {
    /// The entry that scanned it (`rspamd http://…`).
    pub engine: String,
    /// Score.
    pub score: f64,
    /// The score at which the filter calls a message spam.
    pub required: f64,
    /// The filter's action (`no action`, `add header`, `reject`, …).
    pub action: String,
    /// The names of the symbols (rules) that matched, in the filter's order.
    pub symbols: Vec<String>,
}

// Scores come from JSON, which has no NaN.
impl Eq for SpamFacts {}

/// How a recipient resolved, as facts for the built-in policy and hooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Local account(s) (after alias expansion).
    Local(Vec<String>),
    /// A local domain without such a user.
    UnknownLocal,
    /// Another domain.
    Remote,
}

/// AUTH credentials as the client gave them, and what the account store made of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Username (authcid).
    pub username: String,
    /// Password.
    pub password: String,
    /// SASL mechanism (`PLAIN`, `LOGIN`) or the protocol's own command (`USER`).
    pub mechanism: String,
    /// Whether the account store accepted them.
    pub valid: bool,
}

/// The message about to be served (fetch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchFacts {
    /// Mailbox name.
    pub mailbox: String,
    /// The message's UID in that mailbox.
    pub uid: u32,
    /// `imap` or `pop3`.
    pub protocol: &'static str,
}

/// What is known at a hook point. Fields not yet known are empty. Facts only: what an
/// engine keeps for a session (warm plugin instances) travels beside it, as a
/// [`HookSession`].
#[derive(Debug, Clone)]
pub struct HookCtx {
    /// Which point.
    pub point: HookPoint,
    /// The listener the client connected to (`ctx.listener` is its name).
    pub listener: crate::listener::Listener,
    /// Client address.
    pub client_ip: IpAddr,
    /// Verified (FCrDNS) PTR name or "".
    pub client_ptr: String,
    /// HELO/EHLO argument.
    pub helo: String,
    /// Whether the connection is encrypted.
    pub tls: bool,
    /// Authenticated user or "".
    pub user: String,
    /// Envelope sender.
    pub mail_from: String,
    /// Current recipient (rcpt, delivery).
    pub rcpt: String,
    /// Route of the current recipient (rcpt).
    pub route: Option<Route>,
    /// Accepted recipients so far.
    pub rcpts: Vec<String>,
    /// The message (data, delivery).
    pub message: Option<Arc<Vec<u8>>>,
    /// Sender authentication results with their domains, and ARC (SPF from mail on, the
    /// rest at data and delivery); empty strings when not checked. Scripts' and plugins'
    /// `spf`, `dkim` and `dmarc` are its `spf`, `dkim` and `dmarc`.
    pub auth: crate::sender_auth::AuthFacts,
    /// AUTH credentials (auth only).
    pub credentials: Option<Credentials>,
    /// The message about to be served (fetch only).
    pub fetch: Option<FetchFacts>,
    /// Delivery to a remote host: the MX about to be tried.
    pub remote_mx: Option<String>,
    /// The client is in `smtp.relay_networks` (Postfix's `mynetworks`): it may relay without
    /// AUTH.
    pub relay_network: bool,
    /// Client port (0 when not known).
    pub client_port: u16,
    /// The SASL mechanism the user authenticated with ("" when not authenticated).
    pub auth_mechanism: String,
    /// TLS version and cipher suite (`TLS1.3 TLS13_AES_256_GCM_SHA384`), "" without TLS.
    pub tls_info: String,
    /// The message's queue id (data), "" before.
    pub queue_id: String,
    /// A spam filter's result, once an earlier entry of the chain scanned the message.
    pub spam: Option<Arc<SpamFacts>>,
}

impl HookCtx {
    /// Become a copy of `other`, reusing this one's allocations (the facts a plugin instance
    /// answers for during a call).
    pub fn refresh_from(&mut self, other: &HookCtx) {
        self.point = other.point;
        self.listener = other.listener;
        self.client_ip = other.client_ip;
        self.client_ptr.clone_from(&other.client_ptr);
        self.helo.clone_from(&other.helo);
        self.tls = other.tls;
        self.user.clone_from(&other.user);
        self.mail_from.clone_from(&other.mail_from);
        self.rcpt.clone_from(&other.rcpt);
        self.route.clone_from(&other.route);
        self.rcpts.clone_from(&other.rcpts);
        self.message.clone_from(&other.message);
        self.auth.clone_from(&other.auth);
        self.credentials.clone_from(&other.credentials);
        self.fetch.clone_from(&other.fetch);
        self.remote_mx.clone_from(&other.remote_mx);
        self.relay_network = other.relay_network;
        self.client_port = other.client_port;
        self.auth_mechanism.clone_from(&other.auth_mechanism);
        self.tls_info.clone_from(&other.tls_info);
        self.queue_id.clone_from(&other.queue_id);
        self.spam.clone_from(&other.spam);
    }

    /// A context with only the connection facts filled in.
    pub fn new(point: HookPoint, listener: crate::listener::Listener, client_ip: IpAddr) -> Self {
        HookCtx {
            point,
            listener,
            client_ip,
            client_ptr: String::new(),
            helo: String::new(),
            tls: false,
            user: String::new(),
            mail_from: String::new(),
            rcpt: String::new(),
            route: None,
            rcpts: Vec::new(),
            message: None,
            auth: Default::default(),
            credentials: None,
            fetch: None,
            remote_mx: None,
            relay_network: false,
            client_port: 0,
            auth_mechanism: String::new(),
            tls_info: String::new(),
            queue_id: String::new(),
            spam: None,
        }
    }
}

/// Messages a user filed as spam or as ham (moved or copied into or out of Junk): what spam
/// filters learn from ([`HookEngine::learn`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnJob {
    /// True: spam; false: ham.
    pub spam: bool,
    /// The user (account address).
    pub user: String,
    /// The mailbox the messages are in now.
    pub mailbox: u64,
    /// Their UIDs there.
    pub uids: Vec<u32>,
}

/// A failure inside one hook call (script error, plugin trap, limit exceeded).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct HookError(pub String);

/// How to load a plugin (`wasm::LoadOptions`; the same whether or not the `wasm` feature is
/// built, so callers need no `cfg`).
#[derive(Clone, Default)]
pub struct PluginOptions {
    /// The entry's config table.
    pub config: serde_json::Map<String, serde_json::Value>,
    /// Failure policy.
    pub on_error: OnError,
    /// Store for the kv import (None: kv calls fail).
    pub store: Option<crate::store::Store>,
    /// Resolver for the dns import (None: lookups fail as temporary).
    pub resolver: Option<std::sync::Arc<hickory_resolver::TokioResolver>>,
    /// Where to cache compiled plugins (None: compile every time).
    pub cache_dir: Option<std::path::PathBuf>,
    /// Also collect log lines here.
    pub sink: Option<rhai::LogSink>,
}

/// What to do when a hook call fails (`on_error` of a `[[hooks]]` entry; the setting is
/// defined with the config, the verdict it gives here).
pub use crate::config::OnError;

impl OnError {
    /// The verdict this policy gives a failed call (None: the chain goes on).
    pub fn verdict(self) -> Option<Verdict> {
        match self {
            OnError::Continue => None,
            OnError::Tempfail => Some(Verdict::Tempfail {
                code: 451,
                enhanced: None,
                text: "Temporary local problem, try again later".into(),
            }),
            OnError::Reject => Some(Verdict::Reject {
                code: 550,
                enhanced: None,
                text: "Rejected by local policy".into(),
            }),
        }
    }
}

/// The future of [`HookEngine::call_async`].
pub type HookFuture<'a> = Pin<Box<dyn Future<Output = Result<Verdict, HookError>> + Send + 'a>>;

/// Something that decides at hook points.
pub trait HookEngine: Send + Sync {
    /// Name for logs (script path, plugin name, "builtin").
    fn name(&self) -> &str;
    /// Whether this engine has a handler for `point` (others are skipped at no cost).
    fn handles(&self, point: HookPoint) -> bool;
    /// Run the handler.
    fn call(&self, ctx: &HookCtx, actions: &mut Actions) -> Result<Verdict, HookError>;
    /// Run the handler without blocking the async runtime (WASM plugins), within `session`
    /// (where an engine keeps what lasts a session; None: the call is a session of its own).
    /// By default the same as [`Self::call`], run inline.
    fn call_async<'a>(
        &'a self,
        ctx: &'a HookCtx,
        session: Option<&'a HookSession>,
        actions: &'a mut Actions,
    ) -> HookFuture<'a> {
        let _ = session;
        Box::pin(std::future::ready(self.call(ctx, actions)))
    }
    /// Policy when `call` fails.
    fn on_error(&self) -> OnError {
        OnError::Tempfail
    }
    /// Learn from a user's filing (spam filters); must not wait. By default nothing.
    fn learn(&self, job: &LearnJob) {
        let _ = job;
    }
}

/// Result of running a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The deciding verdict (or Continue).
    pub verdict: Verdict,
    /// Accumulated actions.
    pub actions: Actions,
    /// One line per decision other than Continue, for `corvus queue show`.
    pub decisions: Vec<String>,
    /// Every entry's call, for the message trace.
    pub steps: Vec<crate::trace::Step>,
}

/// The ordered list of engines. The list can be swapped while sessions run ([`Self::replace`],
/// used by SIGHUP and `corvus reload`): a call in progress finishes on the list it started with.
#[derive(Default)]
pub struct HookChain {
    entries: RwLock<Arc<Vec<Arc<dyn HookEngine>>>>,
}

impl HookChain {
    /// A chain of `entries` in order (the built-in policy should be first).
    pub fn new(entries: Vec<Arc<dyn HookEngine>>) -> Self {
        HookChain {
            entries: RwLock::new(Arc::new(entries)),
        }
    }

    /// Put a new list of entries in place for every later call.
    pub fn replace(&self, entries: Vec<Arc<dyn HookEngine>>) {
        *self.entries.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(entries);
    }

    /// The entries in force now.
    pub fn entries(&self) -> Arc<Vec<Arc<dyn HookEngine>>> {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Hand a user's filing to every entry that learns from it (never waits).
    pub fn learn(&self, job: LearnJob) {
        for engine in self.entries().iter() {
            engine.learn(&job);
        }
    }

    /// [`Self::run_async`] from synchronous code (`corvus script test`, benches): scripts
    /// decide on the first poll; a plugin's call is waited for (`crate::blocking::wait`).
    pub fn run(&self, ctx: &HookCtx) -> Outcome {
        crate::blocking::wait(self.run_async(ctx, None))
    }

    /// Run every entry that handles `ctx.point` until one decides; plugins yield to the
    /// runtime while they run. A client session passes its `session` (plugins keep a warm
    /// instance there); None makes each call a session of its own.
    pub async fn run_async(&self, ctx: &HookCtx, session: Option<&HookSession>) -> Outcome {
        let entries = self.entries();
        let mut actions = Actions::default();
        let mut decisions = Vec::new();
        let mut steps = Vec::new();
        // The facts as later entries see them, once an entry changed them: a spam filter's
        // result, and the message as filters (milters, rspamd) edited it.
        let mut updated: Option<HookCtx> = None;
        for engine in entries.iter() {
            if !engine.handles(ctx.point) {
                continue;
            }
            let cur = updated.as_ref().unwrap_or(ctx);
            let body_ptr = |a: &Actions| a.edits.body.as_ref().map(|b| b.as_ptr() as usize);
            let edits_before = (actions.edits.headers.len(), body_ptr(&actions));
            let started = Instant::now();
            let result = engine.call_async(cur, session, &mut actions).await;
            let edited = edits_before != (actions.edits.headers.len(), body_ptr(&actions));
            let rescored =
                actions.spam.as_ref().map(Arc::as_ptr) != cur.spam.as_ref().map(Arc::as_ptr);
            if edited || rescored {
                let mut next = cur.clone();
                next.spam.clone_from(&actions.spam);
                if edited && let Some(original) = &ctx.message {
                    next.message = Some(Arc::new(edits::apply(original, &actions.edits)));
                }
                updated = Some(next);
            }
            let cur = updated.as_ref().unwrap_or(ctx);
            let settled = settle(
                engine.as_ref(),
                cur,
                result,
                started,
                &mut decisions,
                &mut steps,
            );
            if let Some(verdict) = settled {
                return Outcome {
                    verdict,
                    actions,
                    decisions,
                    steps,
                };
            }
        }
        Outcome {
            verdict: Verdict::Continue,
            actions,
            decisions,
            steps,
        }
    }
}

/// The verdict of one entry's call (its `on_error` policy applied to a failure), if it ends
/// the chain.
fn settle(
    engine: &dyn HookEngine,
    ctx: &HookCtx,
    result: Result<Verdict, HookError>,
    started: Instant,
    decisions: &mut Vec<String>,
    steps: &mut Vec<crate::trace::Step>,
) -> Option<Verdict> {
    let took = started.elapsed();
    let point = ctx.point.function_name();
    let step = |verdict: &str, reason: String| crate::trace::Step {
        at: crate::trace::now_rfc3339(),
        stage: point.to_string(),
        engine: engine.name().to_string(),
        verdict: verdict.to_string(),
        reason,
        micros: took.as_micros() as u64,
    };
    let verdict = match result {
        Ok(v) => {
            crate::metrics::m().hook_call(point, engine.name(), v.name(), took);
            v
        }
        Err(e) => {
            crate::metrics::m().hook_call(point, engine.name(), "error", took);
            let micros = took.as_micros();
            tracing::warn!(hook = point, engine = engine.name(), error = %e, micros, "hook failed");
            let v = engine.on_error().verdict();
            let policy = match &v {
                Some(v) => format!("on_error gives {}", v.name()),
                None => "on_error = continue".to_string(),
            };
            steps.push(step("error", format!("{e}; {policy}")));
            let v = v?;
            if v.ends_chain() {
                decisions.push(format!("{point} {}: {}", engine.name(), v.decision()));
            }
            return v.ends_chain().then_some(v);
        }
    };
    // The built-in policy letting a message through says nothing a trace needs.
    if !(verdict == Verdict::Continue && engine.name() == "builtin") {
        steps.push(step(verdict.name(), verdict.describe()));
    }
    if !verdict.ends_chain() {
        return None;
    }
    let micros = took.as_micros();
    tracing::info!(
        hook = ctx.point.function_name(),
        engine = engine.name(),
        verdict = verdict.name(),
        micros,
        "hook verdict"
    );
    decisions.push(format!(
        "{} {}: {}",
        ctx.point.function_name(),
        engine.name(),
        verdict.decision()
    ));
    Some(verdict)
}

#[cfg(test)]
mod point_set_tests {
    use super::*;

    #[test]
    fn every_point_has_its_own_bit_and_iterates_in_session_order() {
        let all: PointSet = HookPoint::ALL.into_iter().collect();
        assert_eq!(all.iter().collect::<Vec<_>>(), HookPoint::ALL);
        for p in HookPoint::ALL {
            let one: PointSet = [p].into_iter().collect();
            assert!(one.contains(p));
            assert_eq!(one.iter().count(), 1, "{p:?}");
            assert_eq!(one.names(), vec![p.function_name()]);
        }
        let some: PointSet = [HookPoint::Fetch, HookPoint::Connect].into_iter().collect();
        assert_eq!(some.names(), vec!["on_connect", "on_fetch"]);
        assert!(!PointSet::default().contains(HookPoint::Data));
    }
}
