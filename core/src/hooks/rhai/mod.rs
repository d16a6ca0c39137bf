//! Rhai scripts as hook engines.
//!
//! One [`RhaiHook`] per `[[hooks]]` entry. It owns a hardened [`Engine`] of its own (so the
//! script's `kv_*`, `log` and `print` know which script they belong to), the script's [`AST`]
//! compiled once, and the entry's config table. A hook call runs the script function
//! `on_<point>(ctx)` with `eval_ast(false)`, so the top level is never evaluated again, inline on
//! the calling thread and bounded by the limits that [`harden`] sets.
//!
//! What a script sees is [`ScriptCtx`] (the Rhai type `Ctx`): read-only properties for the
//! facts in [`HookCtx`], methods for the actions, and a message parsed lazily with mail-parser
//! the first time a script asks for the subject, body or attachments. A call that fails (a
//! thrown error, a limit, a bad return value) fails only that call: the error names the
//! script, line and column, and the chain applies the entry's `on_error` policy.
//!
//! The script API is documented for authors in `scripts/README.md` and declared for editors in
//! `scripts/corvus.d.rhai`; [`API_FUNCTIONS`] lists it so a test keeps the three in step.
//!
//! Layout: this file loads a script and calls it; `api.rs` registers the script API,
//! `ctx.rs` is what a script sees, `limits.rs` the sandbox. The rules for verdicts and
//! actions are the engines' shared ones ([`super::outcome`]).

mod api;
mod ctx;
mod limits;

pub use api::API_FUNCTIONS;
pub use ctx::{AuthView, ConfigView, ScriptCtx, ScriptVerdict};
pub use limits::{Limits, harden};

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::rhai::{
    AST, Array, CallFnOptions, Dynamic, Engine, EvalAltResult, Map, ParseError, Position, Scope,
};

use super::{Actions, HookCtx, HookEngine, HookError, HookPoint, OnError, PointSet, Verdict};
use crate::config::HookEntry;
use crate::store::Store;
use api::{ScriptEnv, build_engine};
use limits::{DeadlineGuard, OUT_OF_TIME};

/// Where a script's `log`, `print` and `debug` lines go besides tracing: `corvus script test`
/// and the unit tests collect them.
pub type LogSink = Arc<Mutex<Vec<String>>>;

/// JSON (the config table) as Rhai values.
pub fn json_to_dynamic(v: &serde_json::Value) -> Dynamic {
    use serde_json::Value;
    match v {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => (*b).into(),
        Value::Number(n) => match n.as_i64() {
            Some(i) => i.into(),
            None => n.as_f64().unwrap_or(0.0).into(),
        },
        Value::String(s) => s.clone().into(),
        Value::Array(a) => a.iter().map(json_to_dynamic).collect::<Array>().into(),
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| (k.as_str().into(), json_to_dynamic(v)))
            .collect::<Map>()
            .into(),
    }
}

/// `file:line:column: message` for a syntax error.
fn describe_parse_error(name: &str, e: &ParseError) -> String {
    format!("{}: {}", locate(name, e.position()), e.err_type())
}

fn locate(name: &str, pos: Position) -> String {
    match (pos.line(), pos.position()) {
        (Some(l), Some(c)) => format!("{name}:{l}:{c}"),
        (Some(l), None) => format!("{name}:{l}"),
        _ => name.to_string(),
    }
}

/// `file:line:column: function: message` for a failed call, at the innermost position. Rhai
/// reports limit errors (operations, time, depth, sizes) at the call site, which for a hook
/// is the host: those point at the hook function's definition instead.
fn describe_eval_error(
    name: &str,
    source: &str,
    func: &str,
    budget: Duration,
    e: &EvalAltResult,
) -> String {
    let inner = e.unwrap_inner();
    let pos = [inner.position(), e.position()]
        .into_iter()
        .find(|p| !p.is_none())
        .unwrap_or_else(|| find_fn(source, func));
    let text = match inner {
        EvalAltResult::ErrorTerminated(..) => {
            format!("{OUT_OF_TIME} ({} ms)", budget.as_millis())
        }
        EvalAltResult::ErrorTooManyOperations(..) => {
            "too many operations (endless loop?)".to_string()
        }
        _ => {
            let full = inner.to_string();
            let suffix = format!(" ({})", inner.position());
            full.strip_suffix(&suffix).unwrap_or(&full).to_string()
        }
    };
    format!("{}: {func}: {text}", locate(name, pos))
}

/// Line and column of `fn NAME` in `source`, for problems that Rhai reports without position.
fn find_fn(source: &str, fname: &str) -> Position {
    let needle = format!("fn {fname}");
    for (i, line) in source.lines().enumerate() {
        if let Some(col) = line.find(&needle) {
            let rest = &line[col + needle.len()..];
            if rest.starts_with(|c: char| c == '(' || c.is_whitespace()) {
                return Position::new(i as u16 + 1, col as u16 + 1);
            }
        }
    }
    Position::NONE
}

/// Which hook points `ast` handles; an `on_*` function that is not a hook point, or a hook
/// or `init` function with the wrong parameters, is an error.
fn hook_points(name: &str, source: &str, ast: &AST) -> Result<PointSet, String> {
    let mut set = PointSet::default();
    for f in ast.iter_functions() {
        let here = || locate(name, find_fn(source, f.name));
        if let Some(point) = HookPoint::ALL
            .into_iter()
            .find(|p| p.function_name() == f.name)
        {
            if f.params.len() != 1 {
                return Err(format!(
                    "{}: fn {} must take one parameter: {}(ctx)",
                    here(),
                    f.name,
                    f.name
                ));
            }
            set.insert(point);
        } else if f.name == "init" {
            if f.params.len() != 1 {
                return Err(format!(
                    "{}: fn init must take one parameter: init(config)",
                    here()
                ));
            }
        } else if f.name.starts_with("on_") {
            let names: Vec<_> = HookPoint::ALL.iter().map(|p| p.function_name()).collect();
            return Err(format!(
                "{}: fn {} is not a hook point; hook functions are {}",
                here(),
                f.name,
                names.join(", ")
            ));
        }
    }
    Ok(set)
}

/// A Rhai script in the hook chain.
pub struct RhaiHook {
    name: String,
    source: String,
    engine: Engine,
    ast: AST,
    points: PointSet,
    config: Dynamic,
    /// `config` as scripts see it in `ctx.config`.
    view: ConfigView,
    on_error: OnError,
    limits: Limits,
}

/// How to load a script.
#[derive(Clone)]
pub struct LoadOptions {
    /// The entry's config table.
    pub config: serde_json::Map<String, serde_json::Value>,
    /// Failure policy.
    pub on_error: OnError,
    /// Store for `kv_*` (None: the kv functions fail).
    pub store: Option<Store>,
    /// Limits per call.
    pub limits: Limits,
    /// Also collect log lines here.
    pub sink: Option<LogSink>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            config: Default::default(),
            on_error: OnError::Tempfail,
            store: None,
            limits: Limits::default(),
            sink: None,
        }
    }
}

impl RhaiHook {
    /// Load the script of a `[[hooks]]` entry: compile it, check its hook functions, run its
    /// `init(config)`. The error is one line, `file:line:column: message` where known.
    pub fn load(entry: &HookEntry, store: Store) -> Result<Self, String> {
        Self::load_file(
            &entry.script,
            LoadOptions {
                config: entry.config.clone(),
                on_error: entry.on_error,
                store: Some(store),
                ..LoadOptions::default()
            },
        )
    }

    /// Load a script file.
    pub fn load_file(path: &Path, opts: LoadOptions) -> Result<Self, String> {
        let source = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        Self::from_source(&path.display().to_string(), &source, opts)
    }

    /// Load a script from text; `name` names it in logs and errors, and (its file stem) the
    /// script's kv namespace.
    pub fn from_source(name: &str, source: &str, opts: LoadOptions) -> Result<Self, String> {
        let stem = Path::new(name)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| name.to_string());
        let env = Arc::new(ScriptEnv {
            name: name.to_string(),
            kv_namespace: format!("rhai:{stem}"),
            store: opts.store,
            sink: opts.sink,
        });
        let engine = build_engine(env, &opts.limits);
        let mut ast = engine
            .compile(source)
            .map_err(|e| describe_parse_error(name, &e))?;
        ast.set_source(name);
        let points = hook_points(name, source, &ast)?;
        let mut hook = RhaiHook {
            name: name.to_string(),
            source: source.to_string(),
            engine,
            ast,
            points,
            config: json_to_dynamic(&serde_json::Value::Object(opts.config)),
            view: ConfigView(Arc::default()),
            on_error: opts.on_error,
            limits: opts.limits,
        };
        if hook.ast.iter_functions().any(|f| f.name == "init") {
            let r = hook.call_fn("init", (hook.config.clone(),))?;
            if r.is_map() {
                hook.config = r;
            } else if !r.is_unit() {
                return Err(format!(
                    "{}: init returned a {}; return a map (the config the hooks see) or nothing",
                    name,
                    r.type_name()
                ));
            }
        }
        hook.view = ConfigView::of(&hook.config);
        Ok(hook)
    }

    /// The config the hook functions see (after `init`).
    pub fn config(&self) -> &Dynamic {
        &self.config
    }

    fn call_fn(&self, func: &str, args: impl ::rhai::FuncArgs) -> Result<Dynamic, String> {
        let _deadline = DeadlineGuard::arm(self.limits.time_budget);
        self.engine
            .call_fn_with_options::<Dynamic>(
                CallFnOptions::new().eval_ast(false).rewind_scope(false),
                &mut Scope::new(),
                &self.ast,
                func,
                args,
            )
            .map_err(|e| {
                describe_eval_error(&self.name, &self.source, func, self.limits.time_budget, &e)
            })
    }
}
/// Compile a script file and check its hook functions without running anything, for
/// `corvus check`. The error is one line, `file:line:column: message`.
pub fn check_script(path: &Path) -> Result<(), String> {
    let source = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let name = path.display().to_string();
    let env = Arc::new(ScriptEnv {
        name: name.clone(),
        kv_namespace: String::new(),
        store: None,
        sink: None,
    });
    let engine = build_engine(env, &Limits::default());
    let ast = engine
        .compile(&source)
        .map_err(|e| describe_parse_error(&name, &e))?;
    hook_points(&name, &source, &ast).map(|_| ())
}

impl HookEngine for RhaiHook {
    fn name(&self) -> &str {
        &self.name
    }

    fn handles(&self, point: HookPoint) -> bool {
        self.points.contains(point)
    }

    fn call(&self, ctx: &HookCtx, actions: &mut Actions) -> Result<Verdict, HookError> {
        let sctx = ScriptCtx::new(ctx.clone(), self.view.clone(), self.limits.max_string_size);
        let func = ctx.point.function_name();
        let r = self.call_fn(func, (sctx.clone(),)).map_err(HookError)?;
        let verdict = if r.is_unit() {
            Verdict::Continue
        } else if r.is::<ScriptVerdict>() {
            r.cast::<ScriptVerdict>().0
        } else {
            return Err(HookError(format!(
                "{}: {func}: returned a {}; return accept(), reject(…), tempfail(…), discard(), quarantine(…), next() or nothing",
                self.name,
                r.type_name()
            )));
        };
        // Actions count only from a call that succeeded.
        actions.merge(sctx.take_actions());
        Ok(verdict)
    }

    fn on_error(&self) -> OnError {
        self.on_error
    }
}

/// Names of the hook points a script file handles (for `corvus script test` messages).
pub fn handled_points(hook: &RhaiHook) -> Vec<&'static str> {
    hook.points.names()
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod example_scripts;
