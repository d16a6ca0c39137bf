//! WASM plugins as hook engines (wasmtime, component model, the WIT package
//! `corvus:plugin`). Two generations of it load: 0.4 (`sdk/wit/v0.4/plugin.wit`, one `on-hook`
//! export for every point, points listed by name in `handles`, actions as `answer`
//! functions, so that a new point or action is a patch release) and 0.3
//! (`sdk/wit/v0.3/plugin.wit`, one export per point, an `outcome` record), each with its own
//! `bindgen!` below; a plugin gets the generation its version names. Each released version
//! of the WIT keeps its folder under `sdk/wit/`.
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
//! Hooks have flat signatures (`func(session: u64) -> status` in 0.3, `func(hook: u32,
//! session: u64) -> status` in 0.4, the point by its [`HookPoint::number`]: its name as a
//! string added about 40% to a bare call): the facts of a call come from the `context`
//! import, whose functions answer from the store's copy of the call's [`HookCtx`], so a hook
//! pays only for what it reads (the message included); a hook that does more than `next`
//! hands its verdict and actions over through the `answer` import before it returns (both
//! generations fill one `host::Answer`, checked by the same rules).
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
//! caching, the WIT version check and the choice of generation; `instances.rs` instances
//! (either generation's bindings), their idle pool and [`HookSession`]; `host.rs` the host
//! side of the WIT imports of both generations.

mod host;
mod instances;
mod load;
mod runtime;

pub use crate::hooks::session::HookSession;
pub use load::{LoadOptions, check_plugin};
pub use runtime::{Limits, TICK, configure};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::outcome::{self, Action, ActionError, cut};
use super::{
    Actions, HookCtx, HookEngine, HookError, HookFuture, HookPoint, OnError, PointSet, Verdict,
};
use crate::hooks::session::next_session_id;
use host::{Answer, Given, Handed, PluginEnv};
use instances::{Bindings, IdlePool, Instance, Pooled, Pre, give_back};
use runtime::{KEEP_BELOW, runtime};

/// The host bindings of the two generations of the interface a plugin may be built
/// against: 0.3 (one export per hook point) and 0.4 (one `on-hook` export, hook points
/// numbered and listed by name, actions as `answer` functions).
mod bindings {
    pub mod v3 {
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
    pub mod v4 {
        wasmtime::component::bindgen!({
            path: "../sdk/wit/v0.4",
            world: "plugin",
            imports: {
                "corvus:plugin/dns": async | trappable,
                default: trappable,
            },
            exports: { default: async },
        });
    }
}

use bindings::v3::corvus::plugin as w3;
use bindings::v4::corvus::plugin as w4;

/// The hook point of a WIT 0.3 `hook`.
fn point_of(h: w3::types::Hook) -> HookPoint {
    use w3::types::Hook;
    match h {
        Hook::Connect => HookPoint::Connect,
        Hook::Helo => HookPoint::Helo,
        Hook::Auth => HookPoint::Auth,
        Hook::Mail => HookPoint::Mail,
        Hook::Rcpt => HookPoint::Rcpt,
        Hook::Data => HookPoint::Data,
        Hook::Delivery => HookPoint::Delivery,
        Hook::Fetch => HookPoint::Fetch,
    }
}

/// The WIT 0.3 `hook` of a hook point (0.4 names points by [`HookPoint::name`]).
fn hook_of(p: HookPoint) -> w3::types::Hook {
    use w3::types::Hook;
    match p {
        HookPoint::Connect => Hook::Connect,
        HookPoint::Helo => Hook::Helo,
        HookPoint::Auth => Hook::Auth,
        HookPoint::Mail => Hook::Mail,
        HookPoint::Rcpt => Hook::Rcpt,
        HookPoint::Data => Hook::Data,
        HookPoint::Delivery => Hook::Delivery,
        HookPoint::Fetch => Hook::Fetch,
    }
}

/// The generation of the interface a plugin was built against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Generation {
    V3,
    V4,
}

/// How a hook call ended (the `status` of either generation).
enum Status {
    Next,
    Done,
    Failed,
}

macro_rules! status_from {
    ($w:ident) => {
        impl From<$w::types::Status> for Status {
            fn from(s: $w::types::Status) -> Self {
                match s {
                    $w::types::Status::Next => Status::Next,
                    $w::types::Status::Done => Status::Done,
                    $w::types::Status::Failed => Status::Failed,
                }
            }
        }
    };
}

status_from!(w3);
status_from!(w4);

/// The WIT package this host implements.
pub const WIT_PACKAGE: &str = "corvus:plugin";
/// The newest version of [`WIT_PACKAGE`] this host implements (plugins built against an
/// older patch release of it load too).
pub const WIT_VERSION: &str = "0.4.1";
/// The previous generation, still loaded (plugins built against 0.3.x run unchanged).
pub const WIT_VERSION_PREVIOUS: &str = "0.3.0";

/// A WASM plugin in the hook chain.
pub struct WasmHook {
    id: u64,
    env: Arc<PluginEnv>,
    pre: Pre,
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
    ) -> Result<Result<Option<Handed>, String>, wasmtime::Error> {
        let store = &mut inst.store;
        // What the `context` and `auth` imports answer during this call.
        let data = store.data_mut();
        data.in_call = true;
        data.answer = Answer::default();
        match &mut data.call {
            Some(c) => c.refresh_from(ctx),
            None => data.call = Some(ctx.clone()),
        }
        let r = match &inst.plugin {
            Bindings::V3(p) => {
                let hooks = p.corvus_plugin_hooks();
                match ctx.point {
                    HookPoint::Connect => hooks.call_on_connect(&mut *store, session).await,
                    HookPoint::Helo => hooks.call_on_helo(&mut *store, session).await,
                    HookPoint::Auth => hooks.call_on_auth(&mut *store, session).await,
                    HookPoint::Mail => hooks.call_on_mail(&mut *store, session).await,
                    HookPoint::Rcpt => hooks.call_on_rcpt(&mut *store, session).await,
                    HookPoint::Data => hooks.call_on_data(&mut *store, session).await,
                    HookPoint::Delivery => hooks.call_on_delivery(&mut *store, session).await,
                    HookPoint::Fetch => hooks.call_on_fetch(&mut *store, session).await,
                }
                .map(Status::from)
            }
            Bindings::V4(p) => p
                .corvus_plugin_hooks()
                .call_on_hook(&mut *store, ctx.point.number(), session)
                .await
                .map(Status::from),
        };
        let data = store.data_mut();
        data.in_call = false;
        // An idle instance must not keep the message (or the password) alive.
        if let Some(c) = &mut data.call {
            c.message = None;
            c.credentials = None;
        }
        let answer = std::mem::take(&mut data.answer);
        let missing = match self.pre.generation() {
            Generation::V3 => "answer.set-outcome",
            Generation::V4 => "an answer (answer.verdict or an action)",
        };
        Ok(match (r?, answer) {
            // A plain `next`: no verdict to convert, no actions to apply.
            (Status::Next, _) => Ok(None),
            (
                Status::Done,
                Answer {
                    handed: Some(h), ..
                },
            ) => Ok(Some(h)),
            (Status::Done, _) => Err(format!("returned done without {missing}")),
            (Status::Failed, Answer { fail: Some(m), .. }) => Err(m),
            (Status::Failed, _) => Err("failed (no reason given with answer.fail)".into()),
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
        let Some(mut outcome) = outcome else {
            return Ok(Verdict::Continue);
        };
        let verdict = from_wit_verdict(&self.env.name, func, outcome.verdict.take())?;
        apply_actions(
            &self.env.name,
            self.pre.generation(),
            ctx.point,
            outcome,
            actions,
        )?;
        Ok(verdict)
    }
}

/// The verdict a plugin handed over, checked by the shared rules; errors name the plugin
/// and hook (`x.wasm: on_rcpt: reject code 450 is not in 500..599`).
fn from_wit_verdict(name: &str, func: &str, v: Option<Given>) -> Result<Verdict, HookError> {
    let refusal = |kind: &str, r: Result<Verdict, outcome::CodeOutOfRange>| {
        r.map_err(|e| HookError(format!("{name}: {func}: {kind} {e}")))
    };
    Ok(match v {
        None | Some(Given::Next) => Verdict::Continue,
        Some(Given::Accept) => Verdict::Accept,
        Some(Given::Discard) => Verdict::Discard,
        Some(Given::Quarantine(r)) => Verdict::quarantine(&r),
        Some(Given::Reject(code, text)) => refusal("reject", Verdict::reject(code.into(), &text))?,
        Some(Given::Tempfail(code, text)) => {
            refusal("tempfail", Verdict::tempfail(code.into(), &text))?
        }
    })
}

/// The actions a plugin handed over, checked by the shared rules. Every action is checked
/// against the hook point before any value, and the header count before the headers.
fn apply_actions(
    name: &str,
    generation: Generation,
    point: HookPoint,
    a: Handed,
    out: &mut Actions,
) -> Result<(), HookError> {
    // The action's field in the WIT 0.3 `actions` record, or its 0.4 `answer` function.
    let field = |action: Action| match (action, generation) {
        (Action::AddHeader, Generation::V3) => "add-headers",
        (Action::AddHeader, Generation::V4) => "add-header",
        (Action::SetRcpt, _) => "set-rcpt",
        (Action::FileInto, _) => "file-into",
    };
    let err = |e: ActionError| {
        let m = match e {
            ActionError::NotHere(action) => {
                let names: Vec<_> = action
                    .points()
                    .iter()
                    .map(|p| match generation {
                        Generation::V3 => p.function_name().replace('_', "-"),
                        Generation::V4 => p.name().to_string(),
                    })
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
        (Action::AddHeader, !a.headers.is_empty()),
        (Action::SetRcpt, a.set_rcpt.is_some()),
        (Action::FileInto, a.file_into.is_some()),
    ] {
        if present && !action.allowed_at(point) {
            return Err(err(ActionError::NotHere(action)));
        }
    }
    if a.headers.len() > outcome::MAX_HEADERS {
        return Err(err(ActionError::TooManyHeaders));
    }
    for (name, value) in a.headers {
        out.add_header(point, &name, &value).map_err(err)?;
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
