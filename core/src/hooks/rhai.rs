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

use std::cell::Cell;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ::rhai::{
    AST, Array, CallFnOptions, Dynamic, Engine, EvalAltResult, Map, ParseError, Position, Scope,
};

use super::outcome::{ActionError, CodeOutOfRange, cut};
use super::{Actions, HookCtx, HookEngine, HookError, HookPoint, OnError, PointSet, Verdict};
use crate::blocking::Wait;
use crate::config::HookEntry;
use crate::store::Store;

/// Names of everything the script API registers (properties, methods and functions); the
/// scripting guide and `corvus.d.rhai` must mention each (checked by a test).
pub const API_FUNCTIONS: &[&str] = &[
    // ctx properties
    "hook",
    "client_ip",
    "client_ptr",
    "helo",
    "tls",
    "user",
    "mail_from",
    "rcpt",
    "rcpts",
    "listener",
    "config",
    "to_map",
    "subject",
    "size",
    "body",
    "attachments",
    "spf",
    "dkim",
    "dmarc",
    "username",
    "password",
    "mechanism",
    "password_valid",
    "mailbox",
    "uid",
    "protocol",
    "remote",
    "mx",
    "auth",
    // ctx.auth properties (sender authentication)
    "spf_domain",
    "spf_helo",
    "dkim_domains",
    "dmarc_domain",
    "dmarc_policy",
    "arc",
    "arc_sealer",
    "action",
    // ctx methods
    "header",
    "headers",
    "add_header",
    "set_rcpt",
    "file_into",
    // verdicts
    "accept",
    "reject",
    "tempfail",
    "discard",
    "quarantine",
    "next",
    // functions
    "log",
    "kv_get",
    "kv_set",
    "kv_incr",
    "now",
    "parse_duration",
    "ip_in",
    "domain_of",
    "local_part",
];

/// Limits on one script call. Each one ends the call with an error when exceeded.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Rhai operations per call (about 6 ms of a tight loop in a release build).
    pub max_operations: u64,
    /// Wall-clock time per call, checked between operations (backstop for slow native calls).
    pub time_budget: Duration,
    /// Depth of nested function calls.
    pub max_call_levels: usize,
    /// Expression nesting at the top level and inside functions.
    pub max_expr_depth: (usize, usize),
    /// Longest string, in bytes (message bodies handed to scripts are cut to this).
    pub max_string_size: usize,
    /// Most elements in an array.
    pub max_array_size: usize,
    /// Most entries in an object map.
    pub max_map_size: usize,
    /// Most variables alive at once.
    pub max_variables: usize,
    /// Most functions a script may define.
    pub max_functions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_operations: 100_000,
            time_budget: Duration::from_millis(50),
            max_call_levels: 32,
            max_expr_depth: (64, 32),
            max_string_size: 1024 * 1024,
            max_array_size: 10_000,
            max_map_size: 10_000,
            max_variables: 1_000,
            max_functions: 256,
        }
    }
}

thread_local! {
    /// Deadline of the script call running on this thread (calls are synchronous, so one per
    /// thread at most); read by the engine's progress callback.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Arms the per-call deadline on this thread and restores the previous one when dropped.
struct DeadlineGuard(Option<Instant>);

impl DeadlineGuard {
    fn arm(budget: Duration) -> Self {
        DeadlineGuard(DEADLINE.replace(Some(Instant::now() + budget)))
    }
}

impl Drop for DeadlineGuard {
    fn drop(&mut self) {
        DEADLINE.set(self.0);
    }
}

/// Message text of the engine's progress callback when the deadline passes.
const OUT_OF_TIME: &str = "time budget exceeded";

/// Put every limit and restriction on `engine`: operations, sizes, depths, wall-clock time, no
/// modules or `eval`, strict variables. Scripts get no file, network or process access:
/// nothing registered here or in [`RhaiHook`] touches anything but the store's kv area.
pub fn harden(engine: &mut Engine, limits: &Limits) {
    engine.set_max_operations(limits.max_operations);
    engine.set_max_call_levels(limits.max_call_levels);
    engine.set_max_expr_depths(limits.max_expr_depth.0, limits.max_expr_depth.1);
    engine.set_max_string_size(limits.max_string_size);
    engine.set_max_array_size(limits.max_array_size);
    engine.set_max_map_size(limits.max_map_size);
    engine.set_max_variables(limits.max_variables);
    engine.set_max_functions(limits.max_functions);
    engine.set_max_modules(0);
    engine.set_module_resolver(::rhai::module_resolvers::DummyModuleResolver::new());
    engine.set_strict_variables(true);
    engine.disable_symbol("eval");
    engine.on_progress(|ops| {
        // Reading the clock costs about as much as a few operations: look every 64.
        if ops % 64 == 0
            && let Some(deadline) = DEADLINE.get()
            && Instant::now() >= deadline
        {
            return Some(OUT_OF_TIME.into());
        }
        None
    });
}

/// Where a script's `log`, `print` and `debug` lines go besides tracing: `corvus script test`
/// and the unit tests collect them.
pub type LogSink = Arc<Mutex<Vec<String>>>;

/// Log levels a script may use with `log(level, text)`.
#[derive(Debug, Clone, Copy)]
enum Level {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl Level {
    fn parse(s: &str) -> Option<Level> {
        Some(match s.to_ascii_lowercase().as_str() {
            "error" => Level::Error,
            "warn" | "warning" => Level::Warn,
            "info" => Level::Info,
            "debug" => Level::Debug,
            "trace" => Level::Trace,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        }
    }
}

/// What a script's engine knows about the script (shared by its registered functions).
struct ScriptEnv {
    name: String,
    kv_namespace: String,
    store: Option<Store>,
    sink: Option<LogSink>,
}

impl ScriptEnv {
    fn log(&self, level: Level, text: &str) {
        let script = self.name.as_str();
        match level {
            Level::Error => tracing::error!(script, "{text}"),
            Level::Warn => tracing::warn!(script, "{text}"),
            Level::Info => tracing::info!(script, "{text}"),
            Level::Debug => tracing::debug!(script, "{text}"),
            Level::Trace => tracing::trace!(script, "{text}"),
        }
        if let Some(sink) = &self.sink {
            let mut lines = sink.lock().unwrap_or_else(|e| e.into_inner());
            if lines.len() < 10_000 {
                lines.push(format!("[{}] {text}", level.name()));
            }
        }
    }

    fn store(&self, func: &str) -> Result<&Store, Box<EvalAltResult>> {
        self.store
            .as_ref()
            .ok_or_else(|| format!("{func}: no store here").into())
    }
}

/// The values of the header field `name` (case-insensitive) in message order, unfolded, with
/// RFC 2047 encoded words decoded; only the first when `first_only`. A direct scan of the
/// header block that copies nothing but the matching values: cheaper than parsing every field
/// for the one or two a script asks for.
fn header_values(raw: &[u8], name: &str, first_only: bool) -> Vec<String> {
    let head = &raw[..crate::message::header_end(raw)];
    let want = name.trim().as_bytes();
    let mut out = Vec::new();
    // The value being collected (of a matching field), continuation lines included.
    let mut current: Option<Vec<u8>> = None;
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            // Folded continuation: unfolding removes the line break, keeps the white space.
            if let Some(v) = current.as_mut() {
                v.extend_from_slice(line);
            }
            continue;
        }
        if let Some(v) = current.take() {
            out.push(finish_value(&v));
            if first_only {
                return out;
            }
        }
        if let Some(colon) = line.iter().position(|&b| b == b':')
            && line[..colon].trim_ascii().eq_ignore_ascii_case(want)
        {
            current = Some(line[colon + 1..].to_vec());
        }
    }
    if let Some(v) = current {
        out.push(finish_value(&v));
    }
    out
}

fn finish_value(v: &[u8]) -> String {
    let value = String::from_utf8_lossy(v.trim_ascii()).into_owned();
    if value.contains("=?") {
        decode_words(&value).unwrap_or(value)
    } else {
        value
    }
}

/// A header value with RFC 2047 encoded words decoded (mail-parser's unstructured reading,
/// the one it gives Subject).
fn decode_words(value: &str) -> Option<String> {
    let field = format!("Subject: {value}\r\n\r\n");
    mail_parser::MessageParser::new()
        .parse_headers(field.as_bytes())?
        .subject()
        .map(str::to_string)
}

/// Body text and attachments, from a full MIME parse on first use within one call.
#[derive(Debug, Default)]
struct BodyFacts {
    body: String,
    /// (name, content type, decoded size).
    attachments: Vec<(String, String, i64)>,
}

fn parse_body(raw: &[u8], max_text: usize) -> BodyFacts {
    use mail_parser::MimeHeaders;
    let Some(msg) = mail_parser::MessageParser::default().parse(raw) else {
        return BodyFacts::default();
    };
    let attachments = msg
        .attachments()
        .map(|p| {
            let ctype = p
                .content_type()
                .map(|c| match c.subtype() {
                    Some(sub) => format!("{}/{}", c.ctype(), sub),
                    None => c.ctype().to_string(),
                })
                .unwrap_or_else(|| "application/octet-stream".into())
                .to_ascii_lowercase();
            (
                p.attachment_name().unwrap_or_default().to_string(),
                ctype,
                p.contents().len() as i64,
            )
        })
        .collect();
    BodyFacts {
        body: cut(&msg.body_text(0).unwrap_or_default(), max_text).to_string(),
        attachments,
    }
}

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
    fn new(hook: HookCtx, config: ConfigView, max_text: usize) -> Self {
        ScriptCtx(Arc::new(CtxInner {
            hook,
            config,
            max_text,
            body: OnceLock::new(),
            actions: Mutex::new(Actions::default()),
        }))
    }

    fn hook(&self) -> &HookCtx {
        &self.0.hook
    }

    fn headers(&self, name: &str) -> Vec<String> {
        match &self.0.hook.message {
            Some(m) => header_values(m, name, false),
            None => Vec::new(),
        }
    }

    fn header(&self, name: &str) -> String {
        match &self.0.hook.message {
            Some(m) => header_values(m, name, true).pop().unwrap_or_default(),
            None => String::new(),
        }
    }

    fn body(&self) -> &BodyFacts {
        self.0.body.get_or_init(|| match &self.0.hook.message {
            Some(m) => parse_body(m, self.0.max_text),
            None => BodyFacts::default(),
        })
    }

    fn actions(&self) -> std::sync::MutexGuard<'_, Actions> {
        self.0.actions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_actions(&self) -> Actions {
        std::mem::take(&mut *self.actions())
    }
}

/// `ctx.config` (Rhai type `Config`): the entry's config map, read-only and shared.
#[derive(Clone)]
pub struct ConfigView(Arc<Map>);

impl ConfigView {
    fn of(config: &Dynamic) -> Self {
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
pub struct AuthView(ScriptCtx);

fn describe_auth(a: &crate::sender_auth::AuthFacts) -> String {
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

/// `reject(…)` / `tempfail(…)`: the shared rules, errors worded for scripts
/// (`reject: code 450 is not in 500..599`).
fn checked_verdict(
    func: &str,
    make: fn(i64, &str) -> Result<Verdict, CodeOutOfRange>,
    code: i64,
    text: &str,
) -> Result<ScriptVerdict, Box<EvalAltResult>> {
    make(code, text)
        .map(ScriptVerdict)
        .map_err(|e| format!("{func}: {e}").into())
}

/// An action's error as scripts see it: `ctx.file_into is only available in on_delivery
/// (this is on_rcpt)`, `set_rcpt: "x" is not an address`.
fn action_error(func: &str, point: HookPoint, e: ActionError) -> Box<EvalAltResult> {
    match e {
        ActionError::NotHere(action) => {
            let names: Vec<_> = action.points().iter().map(|p| p.function_name()).collect();
            format!(
                "ctx.{func} is only available in {} (this is {})",
                names.join(" and "),
                point.function_name()
            )
            .into()
        }
        other => format!("{func}: {other}").into(),
    }
}

/// Whether `ip` lies in `net` ("192.0.2.0/24", "2001:db8::/32" or a single address).
pub fn ip_in_net(ip: IpAddr, net: &str) -> Result<bool, String> {
    let (addr, len) = match net.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (net, None),
    };
    let base: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("ip_in: {net:?} is not an address or network"))?;
    let bits = if base.is_ipv4() { 32 } else { 128 };
    let len: u32 = match len {
        Some(l) => l
            .trim()
            .parse()
            .ok()
            .filter(|l| *l <= bits)
            .ok_or_else(|| format!("ip_in: bad prefix length in {net:?}"))?,
        None => bits,
    };
    let ip = match (ip, base) {
        (IpAddr::V6(v6), IpAddr::V4(_)) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => return Ok(false),
        },
        _ => ip,
    };
    Ok(match (ip, base) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    })
}

fn parse_ip(ip: &str) -> Result<IpAddr, Box<EvalAltResult>> {
    ip.trim()
        .parse()
        .map_err(|_| format!("ip_in: {ip:?} is not an IP address").into())
}

fn ttl(seconds: i64) -> Option<u64> {
    (seconds > 0).then_some(seconds as u64)
}

fn check_key(func: &str, key: &str) -> Result<(), Box<EvalAltResult>> {
    if key.is_empty() || key.len() > 1024 {
        Err(format!("{func}: keys are 1 to 1024 bytes long").into())
    } else {
        Ok(())
    }
}

/// Register the `Ctx` and `Verdict` types and every function of the script API.
fn register_api(e: &mut Engine, env: Arc<ScriptEnv>) {
    e.register_type_with_name::<ScriptCtx>("Ctx");
    e.register_type_with_name::<ScriptVerdict>("Verdict");

    // Properties: facts known at this point, "" / 0 / false / [] when not known.
    e.register_get("hook", |c: &mut ScriptCtx| {
        c.hook()
            .point
            .function_name()
            .trim_start_matches("on_")
            .to_string()
    });
    e.register_get("client_ip", |c: &mut ScriptCtx| {
        c.hook().client_ip.to_string()
    });
    e.register_get("client_ptr", |c: &mut ScriptCtx| {
        c.hook().client_ptr.clone()
    });
    e.register_get("helo", |c: &mut ScriptCtx| c.hook().helo.clone());
    e.register_get("tls", |c: &mut ScriptCtx| c.hook().tls);
    e.register_get("user", |c: &mut ScriptCtx| c.hook().user.clone());
    e.register_get("mail_from", |c: &mut ScriptCtx| c.hook().mail_from.clone());
    e.register_get("rcpt", |c: &mut ScriptCtx| c.hook().rcpt.clone());
    e.register_get("rcpts", |c: &mut ScriptCtx| -> Array {
        c.hook().rcpts.iter().map(|r| r.clone().into()).collect()
    });
    e.register_get("listener", |c: &mut ScriptCtx| {
        c.hook().listener.to_string()
    });
    e.register_get("config", |c: &mut ScriptCtx| c.0.config.clone());
    // `ctx.config` is a read-only view of the map (type `Config`), shared by every call
    // instead of copied into each: `cfg.key` and `cfg[key]` read an entry (() when absent),
    // `key in cfg`, and `to_map()` gives a copy to change.
    e.register_type_with_name::<ConfigView>("Config");
    e.register_indexer_get(|c: &mut ConfigView, key: &str| -> Dynamic {
        c.0.get(key).cloned().unwrap_or(Dynamic::UNIT)
    });
    e.register_fn("contains", |c: &mut ConfigView, key: &str| {
        c.0.contains_key(key)
    });
    e.register_fn("get", |c: &mut ConfigView, key: &str| -> Dynamic {
        c.0.get(key).cloned().unwrap_or(Dynamic::UNIT)
    });
    e.register_fn("len", |c: &mut ConfigView| c.0.len() as i64);
    e.register_fn("is_empty", |c: &mut ConfigView| c.0.is_empty());
    e.register_fn("keys", |c: &mut ConfigView| -> Array {
        c.0.keys().map(|k| k.as_str().into()).collect()
    });
    e.register_fn("values", |c: &mut ConfigView| -> Array {
        c.0.values().cloned().collect()
    });
    e.register_fn("to_map", |c: &mut ConfigView| -> Map { (*c.0).clone() });
    e.register_fn("to_string", |c: &mut ConfigView| {
        Dynamic::from_map((*c.0).clone()).to_string()
    });
    e.register_fn("to_debug", |c: &mut ConfigView| {
        format!("{:?}", Dynamic::from_map((*c.0).clone()))
    });
    e.register_get("subject", |c: &mut ScriptCtx| c.header("subject"));
    e.register_get("size", |c: &mut ScriptCtx| {
        c.hook()
            .message
            .as_ref()
            .map(|m| m.len() as i64)
            .unwrap_or(0)
    });
    e.register_get("body", |c: &mut ScriptCtx| c.body().body.clone());
    e.register_get("attachments", |c: &mut ScriptCtx| -> Array {
        c.body()
            .attachments
            .iter()
            .map(|(name, ctype, size)| {
                let mut m = Map::new();
                m.insert("name".into(), name.clone().into());
                m.insert("content_type".into(), ctype.clone().into());
                m.insert("size".into(), (*size).into());
                m.into()
            })
            .collect()
    });
    e.register_get("spf", |c: &mut ScriptCtx| c.hook().auth_results[0].clone());
    e.register_get("dkim", |c: &mut ScriptCtx| c.hook().auth_results[1].clone());
    e.register_get("dmarc", |c: &mut ScriptCtx| {
        c.hook().auth_results[2].clone()
    });
    e.register_get("username", |c: &mut ScriptCtx| {
        c.hook()
            .credentials
            .as_ref()
            .map(|x| x.0.clone())
            .unwrap_or_default()
    });
    e.register_get("password", |c: &mut ScriptCtx| {
        c.hook()
            .credentials
            .as_ref()
            .map(|x| x.1.clone())
            .unwrap_or_default()
    });
    e.register_get("mechanism", |c: &mut ScriptCtx| {
        c.hook()
            .credentials
            .as_ref()
            .map(|x| x.2.clone())
            .unwrap_or_default()
    });
    e.register_get("password_valid", |c: &mut ScriptCtx| {
        c.hook().credentials_valid
    });
    e.register_get("mailbox", |c: &mut ScriptCtx| {
        c.hook()
            .fetch
            .as_ref()
            .map(|f| f.0.clone())
            .unwrap_or_default()
    });
    e.register_get("uid", |c: &mut ScriptCtx| {
        c.hook().fetch.as_ref().map(|f| f.1 as i64).unwrap_or(0)
    });
    e.register_get("protocol", |c: &mut ScriptCtx| {
        c.hook()
            .fetch
            .as_ref()
            .map(|f| f.2.to_string())
            .unwrap_or_default()
    });
    e.register_get("remote", |c: &mut ScriptCtx| c.hook().remote_mx.is_some());
    e.register_get("mx", |c: &mut ScriptCtx| {
        c.hook().remote_mx.clone().unwrap_or_default()
    });

    // Sender authentication results with their domains (`ctx.auth.*`): SPF from on_mail on,
    // the rest in on_data and on_delivery; "" / [] when not checked.
    e.register_type_with_name::<AuthView>("Auth");
    e.register_get("auth", |c: &mut ScriptCtx| AuthView(c.clone()));
    macro_rules! auth_str {
        ($($name:ident),*) => {$(
            e.register_get(stringify!($name), |a: &mut AuthView| a.0.hook().auth.$name.clone());
        )*};
    }
    crate::sender_auth::auth_string_fields!(auth_str);
    e.register_get("dkim_domains", |a: &mut AuthView| -> Array {
        a.0.hook()
            .auth
            .dkim_domains
            .iter()
            .map(|d| d.clone().into())
            .collect()
    });
    e.register_fn("to_string", |a: &mut AuthView| {
        describe_auth(&a.0.hook().auth)
    });
    e.register_fn("to_debug", |a: &mut AuthView| {
        describe_auth(&a.0.hook().auth)
    });

    // Header lookups (case-insensitive names).
    e.register_fn("header", |c: &mut ScriptCtx, name: &str| c.header(name));
    e.register_fn("headers", |c: &mut ScriptCtx, name: &str| -> Array {
        c.headers(name).into_iter().map(Into::into).collect()
    });

    // Actions.
    e.register_fn(
        "add_header",
        |c: &mut ScriptCtx, name: &str, value: &str| -> Result<(), Box<EvalAltResult>> {
            let point = c.hook().point;
            c.actions()
                .add_header(point, name, value)
                .map_err(|e| action_error("add_header", point, e))
        },
    );
    e.register_fn(
        "set_rcpt",
        |c: &mut ScriptCtx, address: &str| -> Result<(), Box<EvalAltResult>> {
            let point = c.hook().point;
            c.actions()
                .set_rcpt(point, address)
                .map_err(|e| action_error("set_rcpt", point, e))
        },
    );
    e.register_fn(
        "file_into",
        |c: &mut ScriptCtx, folder: &str| -> Result<(), Box<EvalAltResult>> {
            let point = c.hook().point;
            c.actions()
                .file_into(point, folder)
                .map_err(|e| action_error("file_into", point, e))
        },
    );
    e.register_fn("to_string", |c: &mut ScriptCtx| {
        format!("Ctx({})", c.hook().point.function_name())
    });
    e.register_fn("to_debug", |c: &mut ScriptCtx| {
        format!("Ctx({})", c.hook().point.function_name())
    });

    // Verdicts.
    e.register_fn("accept", || ScriptVerdict(Verdict::Accept));
    e.register_fn("next", || ScriptVerdict(Verdict::Continue));
    e.register_fn("discard", || ScriptVerdict(Verdict::Discard));
    e.register_fn("quarantine", |reason: &str| {
        ScriptVerdict(Verdict::quarantine(reason))
    });
    e.register_fn("reject", |code: i64, text: &str| {
        checked_verdict("reject", Verdict::reject, code, text)
    });
    e.register_fn("reject", |text: &str| {
        checked_verdict("reject", Verdict::reject, 550, text)
    });
    e.register_fn("tempfail", |code: i64, text: &str| {
        checked_verdict("tempfail", Verdict::tempfail, code, text)
    });
    e.register_fn("tempfail", |text: &str| {
        checked_verdict("tempfail", Verdict::tempfail, 451, text)
    });
    e.register_fn("to_string", |v: &mut ScriptVerdict| v.0.describe());
    e.register_fn("to_debug", |v: &mut ScriptVerdict| v.0.describe());

    // Logging.
    let env2 = env.clone();
    e.register_fn(
        "log",
        move |level: &str, text: &str| -> Result<(), Box<EvalAltResult>> {
            let l = Level::parse(level).ok_or_else(|| {
                format!("log: level {level:?} is not error, warn, info, debug or trace")
            })?;
            env2.log(l, text);
            Ok(())
        },
    );

    // Key-value state, namespaced per script.
    let env2 = env.clone();
    e.register_fn(
        "kv_get",
        move |key: &str| -> Result<Dynamic, Box<EvalAltResult>> {
            check_key("kv_get", key)?;
            let store = env2.store("kv_get")?;
            match store.kv_get(&env2.kv_namespace, key).wait() {
                Ok(Some(v)) => Ok(String::from_utf8_lossy(&v).into_owned().into()),
                Ok(None) => Ok(Dynamic::UNIT),
                Err(e) => Err(format!("kv_get: {e}").into()),
            }
        },
    );
    let env2 = env.clone();
    e.register_fn(
        "kv_set",
        move |key: &str, value: Dynamic, ttl_seconds: i64| -> Result<(), Box<EvalAltResult>> {
            check_key("kv_set", key)?;
            let value = value.to_string();
            if value.len() > 65536 {
                return Err("kv_set: values are at most 65536 bytes long".into());
            }
            let store = env2.store("kv_set")?;
            store
                .kv_set(&env2.kv_namespace, key, value.as_bytes(), ttl(ttl_seconds))
                .wait()
                .map_err(|e| format!("kv_set: {e}").into())
        },
    );
    let env2 = env.clone();
    let incr = move |key: &str, delta: i64, ttl_seconds: i64| -> Result<i64, Box<EvalAltResult>> {
        check_key("kv_incr", key)?;
        let store = env2.store("kv_incr")?;
        store
            .kv_incr(&env2.kv_namespace, key, delta, ttl(ttl_seconds))
            .wait()
            .map_err(|e| format!("kv_incr: {e}").into())
    };
    let incr2 = incr.clone();
    e.register_fn("kv_incr", move |key: &str, ttl_seconds: i64| {
        incr2(key, 1, ttl_seconds)
    });
    e.register_fn("kv_incr", incr);

    // Helpers.
    e.register_fn("now", || chrono::Utc::now().timestamp());
    e.register_fn(
        "parse_duration",
        |s: &str| -> Result<i64, Box<EvalAltResult>> {
            humantime::parse_duration(s.trim())
                .map(|d| d.as_secs() as i64)
                .map_err(|e| {
                    format!("parse_duration: {s:?} is not a duration like \"30s\" or \"5m\" ({e})")
                        .into()
                })
        },
    );
    e.register_fn(
        "ip_in",
        |ip: &str, net: &str| -> Result<bool, Box<EvalAltResult>> {
            ip_in_net(parse_ip(ip)?, net).map_err(Into::into)
        },
    );
    e.register_fn(
        "ip_in",
        |ip: &str, nets: Array| -> Result<bool, Box<EvalAltResult>> {
            let ip = parse_ip(ip)?;
            for n in nets {
                let n = n
                    .into_immutable_string()
                    .map_err(|t| format!("ip_in: list holds a {t}, not a string"))?;
                if ip_in_net(ip, &n)? {
                    return Ok(true);
                }
            }
            Ok(false)
        },
    );
    e.register_fn("domain_of", |address: &str| -> String {
        address
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default()
    });
    e.register_fn("local_part", |address: &str| -> String {
        let a = address.trim().trim_start_matches('<').trim_end_matches('>');
        a.rsplit_once('@')
            .map(|(l, _)| l.to_string())
            .unwrap_or_else(|| a.to_string())
    });
}

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

fn build_engine(env: Arc<ScriptEnv>, limits: &Limits) -> Engine {
    let mut e = Engine::new();
    harden(&mut e, limits);
    let env2 = env.clone();
    e.on_print(move |s| env2.log(Level::Info, s));
    let env2 = env.clone();
    e.on_debug(move |s, _src, pos| match pos.line() {
        Some(l) => env2.log(Level::Debug, &format!("{s} (line {l})")),
        None => env2.log(Level::Debug, s),
    });
    register_api(&mut e, env);
    e
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
mod tests {
    use super::*;
    use crate::hooks::Enhanced;
    use crate::hooks::HookChain;

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s: Store = Arc::new(crate::store::MemoryStore::new());
        (d, s)
    }

    fn load(source: &str) -> RhaiHook {
        RhaiHook::from_source("t.rhai", source, LoadOptions::default())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn ctx(point: HookPoint) -> HookCtx {
        let mut c = HookCtx::new(
            point,
            crate::listener::Listener::Smtp,
            "192.0.2.7".parse().unwrap(),
        );
        c.helo = "client.example".into();
        c.mail_from = "a@x.example".into();
        c.rcpt = "b@y.example".into();
        c.rcpts = vec!["c@y.example".into()];
        c
    }

    fn call(h: &RhaiHook, c: &HookCtx) -> (Result<Verdict, HookError>, Actions) {
        let mut a = Actions::default();
        let r = h.call(c, &mut a);
        (r, a)
    }

    fn verdict_of(body: &str) -> Result<Verdict, HookError> {
        let h = load(&format!("fn on_rcpt(ctx) {{ {body} }}"));
        call(&h, &ctx(HookPoint::Rcpt)).0
    }

    #[test]
    fn each_verdict() {
        assert_eq!(verdict_of("accept()").unwrap(), Verdict::Accept);
        assert_eq!(verdict_of("next()").unwrap(), Verdict::Continue);
        assert_eq!(verdict_of("").unwrap(), Verdict::Continue);
        assert_eq!(verdict_of("return;").unwrap(), Verdict::Continue);
        assert_eq!(verdict_of("discard()").unwrap(), Verdict::Discard);
        assert_eq!(
            verdict_of(r#"quarantine("spammy")"#).unwrap(),
            Verdict::Quarantine("spammy".into())
        );
        assert_eq!(
            verdict_of(r#"reject(554, "5.7.1 go away")"#).unwrap(),
            Verdict::Reject {
                code: 554,
                enhanced: Some(Enhanced::known("5.7.1")),
                text: "go away".into()
            }
        );
        assert_eq!(
            verdict_of(r#"reject("no")"#).unwrap(),
            Verdict::Reject {
                code: 550,
                enhanced: None,
                text: "no".into()
            }
        );
        assert_eq!(
            verdict_of(r#"tempfail(450, "later")"#).unwrap(),
            Verdict::Tempfail {
                code: 450,
                enhanced: None,
                text: "later".into()
            }
        );
        assert_eq!(
            verdict_of(r#"tempfail("later")"#).unwrap(),
            Verdict::Tempfail {
                code: 451,
                enhanced: None,
                text: "later".into()
            }
        );
        // Reply text cannot carry line breaks into the SMTP reply.
        assert_eq!(
            verdict_of(r#"reject(550, "a\r\n250 ok")"#).unwrap(),
            Verdict::Reject {
                code: 550,
                enhanced: None,
                text: "a  250 ok".into()
            }
        );
        let e = verdict_of(r#"reject(450, "wrong class")"#).unwrap_err();
        assert!(e.0.contains("reject: code 450 is not in 500..599"), "{e}");
        let e = verdict_of(r#""accept""#).unwrap_err();
        assert!(e.0.contains("returned a string"), "{e}");
    }

    #[test]
    fn each_action() {
        let h = load(
            r#"
            fn on_rcpt(ctx) { ctx.set_rcpt("<new@y.example>"); }
            fn on_data(ctx) { ctx.add_header("X-Tag", "one"); ctx.add_header("X-Tag", "two"); }
            fn on_delivery(ctx) { ctx.file_into("Lists/Rust"); ctx.add_header("X-Rcpt", ctx.rcpt); }
            fn on_mail(ctx) { ctx.file_into("Junk"); }
            "#,
        );
        let (r, a) = call(&h, &ctx(HookPoint::Rcpt));
        assert_eq!(r.unwrap(), Verdict::Continue);
        assert_eq!(a.set_rcpt.as_deref(), Some("new@y.example"));
        let (_, a) = call(&h, &ctx(HookPoint::Data));
        assert_eq!(
            a.add_headers,
            vec![
                ("X-Tag".into(), "one".into()),
                ("X-Tag".into(), "two".into())
            ]
        );
        let (_, a) = call(&h, &ctx(HookPoint::Delivery));
        assert_eq!(a.file_into.as_deref(), Some("Lists/Rust"));
        assert_eq!(a.add_headers, vec![("X-Rcpt".into(), "b@y.example".into())]);
        // Actions are only offered where they mean something.
        let (r, a) = call(&h, &ctx(HookPoint::Mail));
        let e = r.unwrap_err();
        assert!(
            e.0.contains("ctx.file_into is only available in on_delivery"),
            "{e}"
        );
        assert_eq!(a, Actions::default());
        // A call that fails leaves no actions behind.
        let h = load(r#"fn on_data(ctx) { ctx.add_header("X-A", "1"); throw "boom"; }"#);
        let (r, a) = call(&h, &ctx(HookPoint::Data));
        assert!(r.unwrap_err().0.contains("boom"));
        assert!(a.add_headers.is_empty());
        let h = load(r#"fn on_data(ctx) { ctx.add_header("Bad Name", "1"); }"#);
        assert!(call(&h, &ctx(HookPoint::Data)).0.is_err());
    }

    #[test]
    fn every_ctx_field() {
        let msg = concat!(
            "From: Alice <a@x.example>\r\n",
            "To: b@y.example\r\n",
            "Subject: =?utf-8?q?Caf=C3=A9?= news\r\n",
            "X-Multi: one\r\n",
            "X-Multi: two\r\n",
            "MIME-Version: 1.0\r\n",
            "Content-Type: multipart/mixed; boundary=\"b\"\r\n",
            "\r\n",
            "--b\r\n",
            "Content-Type: text/plain; charset=utf-8\r\n",
            "\r\n",
            "Hello there\r\n",
            "--b\r\n",
            "Content-Type: application/pdf; name=\"r.pdf\"\r\n",
            "Content-Disposition: attachment; filename=\"r.pdf\"\r\n",
            "Content-Transfer-Encoding: base64\r\n",
            "\r\n",
            "JVBERi0xLjQK\r\n",
            "--b--\r\n",
        );
        let h = load(
            r#"
            fn on_data(ctx) {
                let a = ctx.attachments;
                let body = ctx.body;
                body.trim();
                let parts = [ctx.hook, ctx.client_ip, ctx.client_ptr, ctx.helo, `${ctx.tls}`, ctx.user,
                    ctx.mail_from, ctx.rcpt, `${ctx.rcpts}`, ctx.listener, `${ctx.config.k}`,
                    ctx.subject, `${ctx.size}`, ctx.header("x-multi"), `${ctx.headers("X-MULTI")}`,
                    ctx.header("missing"), body, `${a.len()}`, a[0].name, a[0].content_type,
                    `${a[0].size}`, ctx.spf, ctx.dkim, ctx.dmarc, ctx.header("From")];
                ctx.add_header("X-Facts", parts.reduce(|s, x| s + "|" + x, ""));
            }
            fn on_auth(ctx) {
                if ctx.username == "u@x" && ctx.password == "pw" && ctx.mechanism == "LOGIN" && ctx.password_valid {
                    accept()
                } else { reject("bad") }
            }
            fn on_fetch(ctx) { if ctx.mailbox == "Junk" && ctx.uid == 7 && ctx.protocol == "pop3" { reject("no") } }
            fn on_delivery(ctx) { if ctx.remote && ctx.mx == "mx.y.example" { tempfail("later") } }
            "#,
        );
        let config = json_to_dynamic(&serde_json::json!({"k": "v"}));
        let h = RhaiHook {
            view: ConfigView::of(&config),
            config,
            ..h
        };
        let mut c = ctx(HookPoint::Data);
        c.client_ptr = "ptr.example".into();
        c.tls = true;
        c.user = "me@x.example".into();
        c.auth_results = ["pass".into(), "none".into(), "fail".into()];
        c.message = Some(Arc::new(msg.as_bytes().to_vec()));
        let (r, a) = call(&h, &c);
        r.unwrap();
        assert_eq!(
            a.add_headers[0].1,
            format!(
                "|data|192.0.2.7|ptr.example|client.example|true|me@x.example|a@x.example|b@y.example|[\"c@y.example\"]|smtp|v|Café news|{}|one|[\"one\", \"two\"]||Hello there|1|r.pdf|application/pdf|9|pass|none|fail|Alice <a@x.example>",
                msg.len()
            )
        );

        let mut c = ctx(HookPoint::Auth);
        c.credentials = Some(("u@x".into(), "pw".into(), "LOGIN".into()));
        c.credentials_valid = true;
        assert_eq!(call(&h, &c).0.unwrap(), Verdict::Accept);
        c.credentials_valid = false;
        assert!(matches!(call(&h, &c).0.unwrap(), Verdict::Reject { .. }));

        let mut c = ctx(HookPoint::Fetch);
        c.fetch = Some(("Junk".into(), 7, "pop3"));
        assert!(matches!(call(&h, &c).0.unwrap(), Verdict::Reject { .. }));

        let mut c = ctx(HookPoint::Delivery);
        assert_eq!(call(&h, &c).0.unwrap(), Verdict::Continue);
        c.remote_mx = Some("mx.y.example".into());
        assert!(matches!(call(&h, &c).0.unwrap(), Verdict::Tempfail { .. }));
    }

    #[test]
    fn sender_auth_facts() {
        let h = load(
            r#"
            fn on_data(ctx) {
                let a = ctx.auth;
                ctx.add_header("X-A", [a.spf, a.spf_domain, a.spf_helo, a.dkim, `${a.dkim_domains}`,
                    a.dmarc, a.dmarc_domain, a.dmarc_policy, a.arc, a.arc_sealer, a.action].reduce(|s, x| s + "|" + x, ""));
                ctx.add_header("X-B", `${ctx.auth}`);
                if ctx.auth.arc == "pass" && "sign.example" in ctx.auth.dkim_domains { return accept(); }
            }
            fn on_mail(ctx) { if ctx.auth.spf == "fail" && ctx.auth.dkim == "" { reject("spf") } }
            "#,
        );
        let mut c = ctx(HookPoint::Data);
        c.auth = crate::sender_auth::AuthFacts {
            spf: "pass".into(),
            spf_domain: "x.example".into(),
            spf_helo: "none".into(),
            dkim: "pass".into(),
            dkim_domains: vec!["x.example".into(), "sign.example".into()],
            dmarc: "fail".into(),
            dmarc_domain: "from.example".into(),
            dmarc_policy: "reject".into(),
            arc: "pass".into(),
            arc_sealer: "list.example".into(),
            action: "reject".into(),
        };
        let (r, a) = call(&h, &c);
        assert_eq!(r.unwrap(), Verdict::Accept);
        assert_eq!(
            a.add_headers[0].1,
            "|pass|x.example|none|pass|[\"x.example\", \"sign.example\"]|fail|from.example|reject|pass|list.example|reject"
        );
        assert_eq!(
            a.add_headers[1].1,
            "spf=pass (x.example) dkim=pass (x.example sign.example) dmarc=fail (from.example, policy reject) arc=pass (list.example) action=reject"
        );
        c.auth.arc = "fail".into();
        assert_eq!(call(&h, &c).0.unwrap(), Verdict::Continue);
        // Not checked: empty values.
        let (r, a) = call(&h, &ctx(HookPoint::Data));
        assert_eq!(r.unwrap(), Verdict::Continue);
        assert_eq!(a.add_headers[0].1, "|||||[]||||||");
        let mut c = ctx(HookPoint::Mail);
        c.auth.spf = "fail".into();
        assert!(matches!(call(&h, &c).0.unwrap(), Verdict::Reject { .. }));
    }

    #[test]
    fn config_is_a_shared_read_only_view() {
        let h = RhaiHook::from_source(
            "t.rhai",
            r#"
            fn on_rcpt(ctx) {
                let c = ctx.config;
                let m = c.to_map();
                m.extra = 1;
                reject(`${c.delay} ${c["list"]} ${"delay" in c} ${"nope" in c} ${c.nope == ()} ${c.len()} ${c.keys()} ${m.extra} ${c.get("delay")} ${ctx.config.list.len()}`)
            }
            fn on_mail(ctx) { let c = ctx.config; c.delay = "changed"; }
            fn on_helo(ctx) { ctx.config.list.push(3); }
            "#,
            LoadOptions {
                config: serde_json::json!({"delay": "5m", "list": [1, 2]})
                    .as_object()
                    .unwrap()
                    .clone(),
                ..LoadOptions::default()
            },
        )
        .unwrap();
        let text = || match call(&h, &ctx(HookPoint::Rcpt)).0.unwrap() {
            Verdict::Reject { text, .. } => text,
            v => panic!("{v:?}"),
        };
        let want = "5m [1, 2] true false true 2 [\"delay\", \"list\"] 1 5m 2";
        assert_eq!(text(), want);
        // Changing it fails the call and changes nothing for the next one.
        assert!(call(&h, &ctx(HookPoint::Mail)).0.is_err());
        let _ = call(&h, &ctx(HookPoint::Helo)).0;
        assert_eq!(text(), want);
    }

    #[test]
    fn headers_are_unfolded_and_decoded() {
        let raw = b"Subject: =?utf-8?B?w6l0w6k=?= and\r\n\tmore\r\nX-A:  v \r\nbad line\r\n x-a : second\r\nX-A: third\r\n\r\nX-A: body\r\n";
        assert_eq!(header_values(raw, "subject", true), vec!["été and\tmore"]);
        assert_eq!(header_values(raw, "x-a", false), vec!["v", "third"]);
        assert_eq!(header_values(raw, "X-A", true), vec!["v"]);
        assert!(header_values(raw, "missing", false).is_empty());
        assert!(header_values(b"\r\nX-A: body only", "x-a", false).is_empty());
        // Unterminated header block: the last field still counts.
        assert_eq!(header_values(b"X-A: 1\r\n\t2", "x-a", true), vec!["1\t2"]);
    }

    #[test]
    fn handles_only_defined_points() {
        let h = load("fn on_rcpt(ctx) {} fn helper(x) { x }");
        assert!(h.handles(HookPoint::Rcpt));
        for p in HookPoint::ALL.iter().filter(|p| **p != HookPoint::Rcpt) {
            assert!(!h.handles(*p), "{p:?}");
        }
        let e = RhaiHook::from_source("t.rhai", "\nfn on_recpt(ctx) {}", LoadOptions::default())
            .err()
            .unwrap();
        assert!(
            e.starts_with("t.rhai:2:1: fn on_recpt is not a hook point"),
            "{e}"
        );
        let e = RhaiHook::from_source("t.rhai", "fn on_rcpt() {}", LoadOptions::default())
            .err()
            .unwrap();
        assert!(e.contains("must take one parameter"), "{e}");
    }

    #[test]
    fn syntax_error_is_file_line_column() {
        let e = RhaiHook::from_source(
            "scripts/x.rhai",
            "fn on_rcpt(ctx) {\n    let x = ;\n}\n",
            LoadOptions::default(),
        )
        .err()
        .unwrap();
        assert!(e.starts_with("scripts/x.rhai:2:13: "), "{e}");
        assert!(!e.contains('\n'), "{e}");
        // Undefined variables are compile errors (strict variables).
        let e = RhaiHook::from_source(
            "x.rhai",
            "fn on_rcpt(ctx) {\n  undefined_thing + 1\n}",
            LoadOptions::default(),
        )
        .err()
        .unwrap();
        assert!(e.starts_with("x.rhai:2:3: "), "{e}");
        // Modules and eval are not available.
        let h = load(r#"fn on_rcpt(ctx) { import "os" as os; }"#);
        assert!(call(&h, &ctx(HookPoint::Rcpt)).0.is_err());
        let e = RhaiHook::from_source(
            "x.rhai",
            r#"fn on_rcpt(ctx) { eval("1") }"#,
            LoadOptions::default(),
        )
        .err()
        .unwrap();
        assert!(e.contains("'eval' is disabled"), "{e}");
        // check_script reports the same way.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bad.rhai");
        std::fs::write(&p, "fn on_rcpt(ctx) {\n  if { \n}").unwrap();
        let e = check_script(&p).unwrap_err();
        assert!(e.starts_with(&format!("{}:2:", p.display())), "{e}");
    }

    #[test]
    fn runtime_error_names_script_line_and_function() {
        let h = load("fn helper(x) {\n  x.no_such_method()\n}\nfn on_rcpt(ctx) {\n  helper(1)\n}");
        let e = call(&h, &ctx(HookPoint::Rcpt)).0.unwrap_err();
        assert!(e.0.starts_with("t.rhai:2:5: on_rcpt: "), "{e}");
        assert!(e.0.contains("no_such_method"), "{e}");
    }

    #[test]
    fn endless_loop_fails_within_the_budget() {
        let h = load("fn on_rcpt(ctx) {\n  let i = 0;\n  loop { i += 1; }\n}");
        let t = Instant::now();
        let e = call(&h, &ctx(HookPoint::Rcpt)).0.unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(e.0.contains("too many operations"), "{e}");
        // Limits point at the hook function.
        assert!(e.0.starts_with("t.rhai:1:1: on_rcpt: "), "{e}");
        // Without an operations cap, the wall-clock budget stops it.
        let h = RhaiHook::from_source(
            "t.rhai",
            "fn on_rcpt(ctx) { let i = 0; while true { i += 1; } }",
            LoadOptions {
                limits: Limits {
                    max_operations: 0,
                    time_budget: Duration::from_millis(30),
                    ..Limits::default()
                },
                ..LoadOptions::default()
            },
        )
        .unwrap();
        let t = Instant::now();
        let e = call(&h, &ctx(HookPoint::Rcpt)).0.unwrap_err();
        let took = t.elapsed();
        assert!(e.0.contains("time budget exceeded (30 ms)"), "{e}");
        assert!(
            took >= Duration::from_millis(30) && took < Duration::from_secs(1),
            "{took:?}"
        );
        // The next call on the same thread has a fresh budget.
        let h2 = load("fn on_rcpt(ctx) { accept() }");
        assert_eq!(call(&h2, &ctx(HookPoint::Rcpt)).0.unwrap(), Verdict::Accept);
    }

    #[test]
    fn huge_string_and_deep_recursion_fail() {
        let h = load(r#"fn on_rcpt(ctx) { let s = "x"; loop { s += s; } }"#);
        let e = call(&h, &ctx(HookPoint::Rcpt)).0.unwrap_err();
        assert!(e.0.contains("too large"), "{e}");
        let h = load(r#"fn on_rcpt(ctx) { let s = ""; s.pad(100000000, "y"); }"#);
        let e = call(&h, &ctx(HookPoint::Rcpt)).0.unwrap_err();
        assert!(e.0.contains("too large"), "{e}");
        let h = load("fn down(n) { down(n + 1) }\nfn on_rcpt(ctx) { down(0) }");
        let e = call(&h, &ctx(HookPoint::Rcpt)).0.unwrap_err();
        assert!(e.0.to_lowercase().contains("stack overflow"), "{e}");
        // Growing an array is checked too (in a debug build the time budget may come first).
        let h = load("fn on_rcpt(ctx) { let a = []; loop { a.push(1); } }");
        let e = call(&h, &ctx(HookPoint::Rcpt)).0.unwrap_err();
        assert!(
            e.0.contains("too large") || e.0.contains("time budget"),
            "{e}"
        );
    }

    #[test]
    fn kv_is_namespaced_and_expires() {
        let (_d, s) = store();
        let opts = LoadOptions {
            store: Some(s.clone()),
            ..LoadOptions::default()
        };
        let src = r#"
            fn on_rcpt(ctx) {
                let n = kv_incr("n:" + ctx.rcpt, 60);
                kv_set("short", "v", 1);
                kv_set("forever", 42, 0);
                let seen = kv_get("seen");
                kv_set("seen", "yes", 60);
                reject(`${n} ${seen} ${kv_get("short")} ${kv_get("forever")} ${kv_incr("n:" + ctx.rcpt, 10, 60)}`)
            }
            fn on_mail(ctx) { reject(`${kv_get("short")} ${kv_get("forever")}`) }
        "#;
        let a = RhaiHook::from_source("dir/a.rhai", src, opts.clone()).unwrap();
        let b = RhaiHook::from_source("other/b.rhai", src, opts).unwrap();
        let text = |h: &RhaiHook, p| match call(h, &ctx(p)).0.unwrap() {
            Verdict::Reject { text, .. } => text,
            v => panic!("{v:?}"),
        };
        assert_eq!(text(&a, HookPoint::Rcpt), "1  v 42 11");
        assert_eq!(text(&a, HookPoint::Rcpt), "12 yes v 42 22");
        // Another script has its own namespace.
        assert_eq!(text(&b, HookPoint::Rcpt), "1  v 42 11");
        assert_eq!(s.kv_get("rhai:a", "seen").wait().unwrap().unwrap(), b"yes");
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(text(&a, HookPoint::Mail), " 42");
        // Without a store the kv functions fail the call.
        let h = load(r#"fn on_rcpt(ctx) { kv_get("x") }"#);
        assert!(call(&h, &ctx(HookPoint::Rcpt)).0.is_err());
    }

    #[test]
    fn init_shapes_config_and_can_refuse() {
        let h = RhaiHook::from_source(
            "t.rhai",
            r#"
            fn init(config) {
                if !("delay" in config) { throw "config.delay is required"; }
                config.delay_secs = parse_duration(config.delay);
                config
            }
            fn on_rcpt(ctx) { reject(`${ctx.config.delay_secs}`) }
            "#,
            LoadOptions {
                config: serde_json::json!({"delay": "5m"})
                    .as_object()
                    .unwrap()
                    .clone(),
                ..LoadOptions::default()
            },
        )
        .unwrap();
        assert_eq!(
            call(&h, &ctx(HookPoint::Rcpt)).0.unwrap(),
            Verdict::Reject {
                code: 550,
                enhanced: None,
                text: "300".into()
            }
        );
        let e = RhaiHook::from_source(
            "t.rhai",
            "fn init(config) {\n  if !(\"delay\" in config) { throw \"config.delay is required\"; }\n}",
            LoadOptions::default(),
        )
        .err()
        .unwrap();
        assert!(e.starts_with("t.rhai:2:"), "{e}");
        assert!(
            e.contains("init: ") && e.contains("config.delay is required"),
            "{e}"
        );
    }

    #[test]
    fn log_print_and_helpers() {
        let sink: LogSink = Arc::default();
        let h = RhaiHook::from_source(
            "t.rhai",
            r#"
            fn on_connect(ctx) {
                log("warn", "from " + ctx.client_ip);
                print("printed");
                let ok = ip_in(ctx.client_ip, "192.0.2.0/24") && !ip_in(ctx.client_ip, ["10.0.0.0/8", "::1"])
                    && ip_in("::ffff:192.0.2.9", "192.0.2.0/28") && ip_in("2001:db8::1", "2001:db8::/32");
                log("info", `${ok} ${domain_of("<A@Example.ORG>")} ${local_part("a.b@x")} ${now() > 1700000000} ${parse_duration("1h")}`);
            }
            fn on_helo(ctx) { log("loud", "x") }
            "#,
            LoadOptions {
                sink: Some(sink.clone()),
                ..LoadOptions::default()
            },
        )
        .unwrap();
        call(&h, &ctx(HookPoint::Connect)).0.unwrap();
        assert_eq!(
            *sink.lock().unwrap(),
            vec![
                "[warn] from 192.0.2.7".to_string(),
                "[info] printed".into(),
                "[info] true example.org a.b true 3600".into()
            ]
        );
        assert!(call(&h, &ctx(HookPoint::Helo)).0.is_err());
    }

    #[test]
    fn chain_applies_on_error_policy() {
        let failing = |on_error| {
            RhaiHook::from_source(
                "bad.rhai",
                "fn on_rcpt(ctx) { loop {} }",
                LoadOptions {
                    on_error,
                    ..LoadOptions::default()
                },
            )
            .unwrap()
        };
        let after = load(r#"fn on_rcpt(ctx) { reject(554, "second") }"#);
        let after = Arc::new(after);
        for (policy, want) in [
            (OnError::Tempfail, 451),
            (OnError::Reject, 550),
            (OnError::Continue, 554),
        ] {
            let chain = HookChain::new(vec![Arc::new(failing(policy)), after.clone()]);
            let out = chain.run(&ctx(HookPoint::Rcpt));
            let code = match out.verdict {
                Verdict::Reject { code, .. } | Verdict::Tempfail { code, .. } => code,
                v => panic!("{v:?}"),
            };
            assert_eq!(code, want, "{policy:?}");
        }
        // A replaced chain is used by the next run.
        let chain = HookChain::new(vec![Arc::new(failing(OnError::Tempfail))]);
        chain.replace(vec![after.clone()]);
        assert!(matches!(
            chain.run(&ctx(HookPoint::Rcpt)).verdict,
            Verdict::Reject { code: 554, .. }
        ));
    }

    #[test]
    fn hooks_are_send_and_sync() {
        fn is<T: Send + Sync>() {}
        is::<RhaiHook>();
    }
}

/// The example scripts in `scripts/`, run through the engine with small configs (the
/// end-to-end suite runs them through real sessions).
#[cfg(test)]
mod example_scripts {
    use super::*;

    fn script(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../scripts")
            .join(name)
    }

    fn load(name: &str, config: serde_json::Value, store: &Store) -> RhaiHook {
        RhaiHook::load_file(
            &script(name),
            LoadOptions {
                config: config.as_object().unwrap().clone(),
                store: Some(store.clone()),
                ..LoadOptions::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn run(h: &RhaiHook, c: &HookCtx) -> (Verdict, Actions) {
        let mut a = Actions::default();
        let v = h.call(c, &mut a).unwrap_or_else(|e| panic!("{e}"));
        (v, a)
    }

    fn ctx(point: HookPoint, from: &str, rcpt: &str) -> HookCtx {
        let mut c = HookCtx::new(
            point,
            crate::listener::Listener::Smtp,
            "198.51.100.20".parse().unwrap(),
        );
        c.mail_from = from.into();
        c.rcpt = rcpt.into();
        c
    }

    #[test]
    fn every_script_compiles_and_checks() {
        let mut n = 0;
        for entry in std::fs::read_dir(script("")).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "rhai")
                && !p.to_string_lossy().ends_with(".d.rhai")
            {
                check_script(&p).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 6);
    }

    #[test]
    fn guide_and_definitions_cover_the_api() {
        let guide = std::fs::read_to_string(script("README.md")).unwrap();
        let defs = std::fs::read_to_string(script("corvus.d.rhai")).unwrap();
        for name in API_FUNCTIONS {
            assert!(
                guide.contains(&format!("`{name}"))
                    || guide.contains(&format!("`ctx.{name}"))
                    || guide.contains(&format!("`ctx.auth.{name}")),
                "README.md lacks {name}"
            );
            assert!(
                defs.contains(&format!("fn {name}(")) || defs.contains(&format!("get {name}(")),
                "corvus.d.rhai lacks {name}"
            );
        }
    }

    #[test]
    fn greylist() {
        let s: Store = Arc::new(crate::store::MemoryStore::new());
        let h = load("rcpt_greylist.rhai", serde_json::json!({"delay": "1s"}), &s);
        let c = ctx(HookPoint::Rcpt, "a@x.example", "b@y.example");
        assert!(matches!(run(&h, &c).0, Verdict::Tempfail { code: 451, .. }));
        assert!(matches!(run(&h, &c).0, Verdict::Tempfail { code: 451, .. }));
        // Another address of the same /24 is the same client.
        let mut c2 = c.clone();
        c2.client_ip = "198.51.100.99".parse().unwrap();
        std::thread::sleep(Duration::from_millis(2100));
        assert_eq!(run(&h, &c2).0, Verdict::Continue);
        assert_eq!(run(&h, &c).0, Verdict::Continue);
        let mut authed = ctx(HookPoint::Rcpt, "a@x.example", "new@y.example");
        authed.user = "a@x.example".into();
        assert_eq!(run(&h, &authed).0, Verdict::Continue);
    }

    #[test]
    fn rate_limit() {
        let s: Store = Arc::new(crate::store::MemoryStore::new());
        let h = load(
            "mail_rate_limit.rhai",
            serde_json::json!({"max": 2, "window": "1h"}),
            &s,
        );
        let c = ctx(HookPoint::Mail, "A@x.example", "");
        assert_eq!(run(&h, &c).0, Verdict::Continue);
        assert_eq!(
            run(&h, &ctx(HookPoint::Mail, "a@x.example", "")).0,
            Verdict::Continue
        );
        assert!(matches!(run(&h, &c).0, Verdict::Tempfail { code: 450, .. }));
        assert_eq!(
            run(&h, &ctx(HookPoint::Mail, "b@x.example", "")).0,
            Verdict::Continue
        );
    }

    #[test]
    fn blocklist() {
        let s: Store = Arc::new(crate::store::MemoryStore::new());
        let h = load(
            "rcpt_blocklist.rhai",
            serde_json::json!({"senders": ["@Bad.example", "one@ok.example"], "recipients": ["gone@y.example"]}),
            &s,
        );
        assert!(matches!(
            run(&h, &ctx(HookPoint::Mail, "x@bad.EXAMPLE", "")).0,
            Verdict::Reject { code: 550, .. }
        ));
        assert!(matches!(
            run(&h, &ctx(HookPoint::Mail, "one@ok.example", "")).0,
            Verdict::Reject { .. }
        ));
        assert_eq!(
            run(&h, &ctx(HookPoint::Mail, "two@ok.example", "")).0,
            Verdict::Continue
        );
        assert!(matches!(
            run(
                &h,
                &ctx(HookPoint::Rcpt, "two@ok.example", "Gone@y.example")
            )
            .0,
            Verdict::Reject { .. }
        ));
        assert_eq!(
            run(
                &h,
                &ctx(HookPoint::Rcpt, "two@ok.example", "here@y.example")
            )
            .0,
            Verdict::Continue
        );
    }

    fn with_message(point: HookPoint, rcpt: &str, msg: &str) -> HookCtx {
        let mut c = ctx(point, "a@x.example", rcpt);
        c.message = Some(Arc::new(msg.as_bytes().to_vec()));
        c
    }

    #[test]
    fn subject_tag() {
        let s: Store = Arc::new(crate::store::MemoryStore::new());
        let h = load(
            "data_subject_tag.rhai",
            serde_json::json!({"rules": [{"words": ["invoice"], "tag": "finance"}, {"words": ["news"], "tag": "bulk"}]}),
            &s,
        );
        let msg = "Subject: Your INVOICE and news\r\n\r\nbody\r\n";
        let (v, a) = run(&h, &with_message(HookPoint::Data, "", msg));
        assert_eq!(v, Verdict::Continue);
        assert_eq!(
            a.add_headers,
            vec![
                ("X-Corvus-Tag".to_string(), "finance".to_string()),
                ("X-Corvus-Tag".into(), "bulk".into())
            ]
        );
        let (_, a) = run(
            &h,
            &with_message(HookPoint::Data, "", "Subject: hello\r\n\r\n"),
        );
        assert!(a.add_headers.is_empty());
    }

    #[test]
    fn fileinto() {
        let s: Store = Arc::new(crate::store::MemoryStore::new());
        let h = load(
            "delivery_fileinto.rhai",
            serde_json::json!({"rules": [
                {"header": "List-Id", "contains": "Rust-Users", "folder": "Lists/Rust"},
                {"header": "Subject", "contains": "report", "folder": "Reports", "rcpt": "boss@y.example"}
            ]}),
            &s,
        );
        let list = "List-Id: <rust-users.lists.example>\r\nSubject: hi\r\n\r\n";
        let (_, a) = run(&h, &with_message(HookPoint::Delivery, "b@y.example", list));
        assert_eq!(a.file_into.as_deref(), Some("Lists/Rust"));
        let report = "Subject: Weekly report\r\n\r\n";
        let (_, a) = run(
            &h,
            &with_message(HookPoint::Delivery, "b@y.example", report),
        );
        assert_eq!(a.file_into, None);
        let (_, a) = run(
            &h,
            &with_message(HookPoint::Delivery, "Boss@y.example", report),
        );
        assert_eq!(a.file_into.as_deref(), Some("Reports"));
    }

    #[test]
    fn auth_allowlist() {
        let s: Store = Arc::new(crate::store::MemoryStore::new());
        let h = load(
            "auth_ip_allowlist.rhai",
            serde_json::json!({"allow": ["192.0.2.0/24"], "listeners": ["submission"]}),
            &s,
        );
        let auth = |listener: crate::listener::Listener, ip: &str| {
            let mut c = HookCtx::new(HookPoint::Auth, listener, ip.parse().unwrap());
            c.credentials = Some(("u@x".into(), "pw".into(), "PLAIN".into()));
            run(&h, &c).0
        };
        assert!(matches!(
            auth(crate::listener::Listener::Submission, "127.0.0.1"),
            Verdict::Reject { code: 535, .. }
        ));
        assert_eq!(
            auth(crate::listener::Listener::Submission, "192.0.2.44"),
            Verdict::Continue
        );
        assert_eq!(
            auth(crate::listener::Listener::Imap, "127.0.0.1"),
            Verdict::Continue
        );
    }
}
