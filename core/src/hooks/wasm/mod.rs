//! WASM plugins as hook engines (wasmtime, component model, the WIT package
//! `corvus:plugin` in `sdk/wit/v0.3/plugin.wit`, whose version a plugin must match; each
//! released version of the WIT keeps its folder under `sdk/wit/`).
//!
//! One process-wide [`Engine`] (pooling allocator, epoch interruption, a 10 ms ticker thread).
//! Per `[[hooks]] plugin = "x.wasm"` entry, once at load: the compiled component (from a cache
//! in `data_dir/plugin-cache`, keyed by the wasm's SHA-256 and the engine's compatibility hash;
//! compiled and stored on a miss), a [`Linker`] with the host imports plus a locked-down WASI,
//! and the `InstancePre`. Loading also checks the WIT version and runs `describe` and `init`
//! once, so a broken plugin or config is refused at load (and by `corvus check`).
//!
//! Instances: one per plugin per session, kept in the session's [`HookSession`] and reused
//! for that session's hooks. When the session ends the instance goes to its plugin's idle
//! pool (at most [`IDLE_MAX`], only if its memory stayed under [`IDLE_MEMORY_MAX`] and it has
//! capture room left) and serves a later session. `init` runs once per instance; each hook
//! call is given its session's id (the SDK builds a new plugin value when it changes, so
//! `&mut self` state lasts one session). A new instance costs tens of µs plus the reset of its
//! memory when it goes. A call without a session (queue deliveries) is a session of its own.
//! When the instance pool runs low, instances are not kept.
//!
//! Hooks have flat signatures (`func(session: u64) -> status`, WIT 0.3): the facts of a call
//! come from the `context` import, whose functions answer from the store's copy of the call's
//! [`HookCtx`], so a hook pays only for what it reads (the message included); a hook that does
//! more than `next` hands its outcome over through the `answer` import before it returns.
//!
//! Per call: an epoch deadline (CPU budget, counted in 10 ms ticks of guest execution; the
//! guest yields to tokio at every tick), a wall-clock deadline (checked at every tick, and
//! each DNS wait is cut to what is left of it: no timer per call), a memory cap with
//! `trap_on_grow_failure`, caps on log lines, DNS lookups and captured stdout/stderr. A trap, timeout or OOM fails that call only: the instance is
//! dropped (a trapped instance is poisoned) and the chain applies the entry's `on_error`.
//!
//! Calls are async ([`HookEngine::call_async`], used by SMTP sessions). The synchronous
//! [`HookEngine::call`] (IMAP/POP3 fetch hooks, CLI) runs the same future with
//! `block_in_place` on a multi-threaded runtime, or on a small runtime of its own.
//!
//! Layout: this file is the engine (`WasmHook`, one call, the check of what a plugin hands
//! over); `runtime.rs` the process-wide engine, pool and epoch ticker; `load.rs` compiling,
//! caching and the WIT version check; `instances.rs` instances, their idle pool and
//! [`HookSession`]; `host.rs` the host side of the WIT imports.

mod host;
mod instances;
mod load;
mod runtime;

pub use instances::HookSession;
pub use load::{LoadOptions, check_plugin};
pub use runtime::{Limits, TICK, configure};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::outcome::{self, Action, ActionError, cut};
use super::{
    Actions, HookCtx, HookEngine, HookError, HookFuture, HookPoint, OnError, PointSet, Verdict,
};
use host::{HostState, PluginEnv};
use instances::{IdlePool, Instance, Pooled, give_back, next_session_id};
use runtime::{KEEP_BELOW, runtime};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../sdk/wit/v0.3",
        world: "plugin",
        imports: {
            "corvus:plugin/dns": async | trappable,
            default: trappable,
        },
        exports: { default: async },
    });
}

use bindings::corvus::plugin as wit;
use bindings::corvus::plugin::types as wt;

/// The hook point of a WIT `hook`.
fn point_of(h: wt::Hook) -> HookPoint {
    match h {
        wt::Hook::Connect => HookPoint::Connect,
        wt::Hook::Helo => HookPoint::Helo,
        wt::Hook::Auth => HookPoint::Auth,
        wt::Hook::Mail => HookPoint::Mail,
        wt::Hook::Rcpt => HookPoint::Rcpt,
        wt::Hook::Data => HookPoint::Data,
        wt::Hook::Delivery => HookPoint::Delivery,
        wt::Hook::Fetch => HookPoint::Fetch,
    }
}

/// The WIT `hook` of a hook point.
fn hook_of(p: HookPoint) -> wt::Hook {
    match p {
        HookPoint::Connect => wt::Hook::Connect,
        HookPoint::Helo => wt::Hook::Helo,
        HookPoint::Auth => wt::Hook::Auth,
        HookPoint::Mail => wt::Hook::Mail,
        HookPoint::Rcpt => wt::Hook::Rcpt,
        HookPoint::Data => wt::Hook::Data,
        HookPoint::Delivery => wt::Hook::Delivery,
        HookPoint::Fetch => wt::Hook::Fetch,
    }
}

/// The WIT package version this host implements.
pub const WIT_PACKAGE: &str = "corvus:plugin";
/// See [`WIT_PACKAGE`].
pub const WIT_VERSION: &str = "0.3.0";

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A WASM plugin in the hook chain.
pub struct WasmHook {
    id: u64,
    env: Arc<PluginEnv>,
    pre: bindings::PluginPre<HostState>,
    points: PointSet,
    info: (String, String),
    on_error: OnError,
    /// Instances between sessions (see [`WasmHook::checkout`]).
    idle: Arc<IdlePool>,
    /// Calls made and instances created (for tests and benchmarks).
    pub stats: Arc<Stats>,
}

/// Counters of one plugin.
#[derive(Debug, Default)]
pub struct Stats {
    /// Instances created.
    pub instances: AtomicU64,
    /// Instances taken from the idle pool for a new session.
    pub reused: AtomicU64,
    /// `init` calls (one per instance).
    pub inits: AtomicU64,
    /// Failed calls.
    pub failures: AtomicU64,
}

impl WasmHook {
    async fn run(
        &self,
        inst: &mut Instance,
        ctx: &HookCtx,
        session: u64,
    ) -> Result<Result<Option<wt::Outcome>, String>, wasmtime::Error> {
        let hooks = inst.plugin.corvus_plugin_hooks();
        let store = &mut inst.store;
        // What the `context` and `auth` imports answer during this call.
        let data = store.data_mut();
        data.in_call = true;
        data.answer = None;
        match &mut data.call {
            Some(c) => c.refresh_from(ctx),
            None => data.call = Some(ctx.clone()),
        }
        let r = match ctx.point {
            HookPoint::Connect => hooks.call_on_connect(&mut *store, session).await,
            HookPoint::Helo => hooks.call_on_helo(&mut *store, session).await,
            HookPoint::Auth => hooks.call_on_auth(&mut *store, session).await,
            HookPoint::Mail => hooks.call_on_mail(&mut *store, session).await,
            HookPoint::Rcpt => hooks.call_on_rcpt(&mut *store, session).await,
            HookPoint::Data => hooks.call_on_data(&mut *store, session).await,
            HookPoint::Delivery => hooks.call_on_delivery(&mut *store, session).await,
            HookPoint::Fetch => hooks.call_on_fetch(&mut *store, session).await,
        };
        let data = store.data_mut();
        data.in_call = false;
        // An idle instance must not keep the message (or the password) alive.
        if let Some(c) = &mut data.call {
            c.message = None;
            c.credentials = None;
        }
        let answer = data.answer.take();
        Ok(match (r?, answer) {
            // A plain `next`: no verdict to convert, no actions to apply.
            (wt::Status::Next, _) => Ok(None),
            (wt::Status::Done, Some(Ok(outcome))) => Ok(Some(outcome)),
            (wt::Status::Done, _) => Err("returned done without answer.set-outcome".into()),
            (wt::Status::Failed, Some(Err(message))) => Err(message),
            (wt::Status::Failed, _) => Err("failed (no reason given with answer.fail)".into()),
        })
    }

    async fn call_inner(
        &self,
        ctx: &HookCtx,
        hook_session: Option<&HookSession>,
        actions: &mut Actions,
    ) -> Result<Verdict, HookError> {
        let rt = runtime()?;
        let func = ctx.point.function_name();
        // The session's slot for this plugin, reused for the next call.
        let mut slot = hook_session
            .and_then(|s| s.take(self.id))
            .and_then(|b| b.downcast::<Pooled>().ok());
        let warm = slot.as_mut().and_then(|p| p.inst.take());
        let mut inst = match warm {
            Some(i) => i,
            // Boxed: instantiation's future is large, and a call's future that held it would
            // be copied to the heap at every call.
            None => Box::pin(self.checkout()).await?,
        };
        self.arm(&mut inst);
        let session = match hook_session {
            Some(s) => s.id,
            None => next_session_id(),
        };
        let r = self.run(&mut inst, ctx, session).await;
        let result = match r {
            Err(e) => return Err(self.trap_error(func, &mut inst, e)),
            Ok(r) => r,
        };
        self.forward_output(&mut inst);
        let keep =
            (rt.live.load(Ordering::Relaxed) as f64) < rt.limits.instances as f64 * KEEP_BELOW;
        match hook_session {
            Some(s) if keep => {
                let slot = match slot {
                    Some(mut p) => {
                        p.inst = Some(inst);
                        p
                    }
                    None => Box::new(Pooled {
                        inst: Some(inst),
                        home: Arc::downgrade(&self.idle),
                    }),
                };
                s.put(self.id, slot)
            }
            Some(_) => {}
            // A call outside any session (a queued delivery) is a session of its own.
            None => give_back(&self.idle, inst),
        }
        let outcome = result
            .map_err(|m| HookError(format!("{}: {func}: {}", self.env.name, cut(&m, 1000))))?;
        let Some(outcome) = outcome else {
            return Ok(Verdict::Continue);
        };
        let verdict = from_wit_verdict(&self.env.name, func, outcome.verdict)?;
        apply_actions(&self.env.name, ctx.point, outcome.actions, actions)?;
        Ok(verdict)
    }
}

/// The verdict a plugin handed over, checked by the shared rules; errors name the plugin
/// and hook (`x.wasm: on_rcpt: reject code 450 is not in 500..599`).
fn from_wit_verdict(name: &str, func: &str, v: wt::Verdict) -> Result<Verdict, HookError> {
    let refusal = |kind: &str, r: Result<Verdict, outcome::CodeOutOfRange>| {
        r.map_err(|e| HookError(format!("{name}: {func}: {kind} {e}")))
    };
    Ok(match v {
        wt::Verdict::Next => Verdict::Continue,
        wt::Verdict::Accept => Verdict::Accept,
        wt::Verdict::Discard => Verdict::Discard,
        wt::Verdict::Quarantine(r) => Verdict::quarantine(&r),
        wt::Verdict::Reject(r) => refusal("reject", Verdict::reject(r.code.into(), &r.text))?,
        wt::Verdict::Tempfail(r) => refusal("tempfail", Verdict::tempfail(r.code.into(), &r.text))?,
    })
}

/// The actions a plugin handed over, checked by the shared rules. Every action is checked
/// against the hook point before any value, and the header count before the headers.
fn apply_actions(
    name: &str,
    point: HookPoint,
    a: wt::Actions,
    out: &mut Actions,
) -> Result<(), HookError> {
    // The action's field in the WIT `actions` record.
    let field = |action: Action| match action {
        Action::AddHeader => "add-headers",
        Action::SetRcpt => "set-rcpt",
        Action::FileInto => "file-into",
    };
    let err = |e: ActionError| {
        let m = match e {
            ActionError::NotHere(action) => {
                let names: Vec<_> = action
                    .points()
                    .iter()
                    .map(|p| p.function_name().replace('_', "-"))
                    .collect();
                format!(
                    "{} is only available in {}",
                    field(action),
                    names.join(" and ")
                )
            }
            ActionError::BadAddress(_) => format!("{}: {e}", field(Action::SetRcpt)),
            ActionError::BadFolder(_) => format!("{}: {e}", field(Action::FileInto)),
            other => other.to_string(),
        };
        HookError(format!("{name}: {}: {m}", point.function_name()))
    };
    for (action, present) in [
        (Action::AddHeader, !a.add_headers.is_empty()),
        (Action::SetRcpt, a.set_rcpt.is_some()),
        (Action::FileInto, a.file_into.is_some()),
    ] {
        if present && !action.allowed_at(point) {
            return Err(err(ActionError::NotHere(action)));
        }
    }
    if a.add_headers.len() > outcome::MAX_HEADERS {
        return Err(err(ActionError::TooManyHeaders));
    }
    for h in a.add_headers {
        out.add_header(point, &h.name, &h.value).map_err(err)?;
    }
    if let Some(r) = a.set_rcpt {
        out.set_rcpt(point, &r).map_err(err)?;
    }
    if let Some(f) = a.file_into {
        out.file_into(point, &f).map_err(err)?;
    }
    Ok(())
}

impl HookEngine for WasmHook {
    fn name(&self) -> &str {
        &self.env.name
    }

    fn handles(&self, point: HookPoint) -> bool {
        self.points.contains(point)
    }

    fn call(&self, ctx: &HookCtx, actions: &mut Actions) -> Result<Verdict, HookError> {
        crate::blocking::run(self.call_async(ctx, None, actions))
    }

    fn call_async<'a>(
        &'a self,
        ctx: &'a HookCtx,
        session: Option<&'a HookSession>,
        actions: &'a mut Actions,
    ) -> HookFuture<'a> {
        Box::pin(async move {
            // Actions count only from a call that succeeded.
            let mut mine = Actions::default();
            let r = self.call_inner(ctx, session, &mut mine).await;
            if r.is_err() {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
            } else {
                actions.merge(mine);
            }
            r
        })
    }

    fn on_error(&self) -> OnError {
        self.on_error
    }
}

#[cfg(test)]
mod tests;
