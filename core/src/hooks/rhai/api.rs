//! The script API: every property, method and function a script can call
//! ([`API_FUNCTIONS`]), registered on a script's engine by [`build_engine`], with what those
//! functions know about their script ([`ScriptEnv`]: its name, kv namespace, store, log).

use std::net::IpAddr;
use std::sync::Arc;

use ::rhai::{Array, Dynamic, Engine, EvalAltResult, Map};

use super::LogSink;
use super::ctx::{AuthView, ConfigView, ScriptCtx, ScriptVerdict, describe_auth};
use super::limits::{Limits, harden};
use crate::blocking::Wait;
use crate::hooks::kv::{self, KvError};
use crate::hooks::outcome::{ActionError, CodeOutOfRange};
use crate::hooks::{HookPoint, Verdict};
use crate::ipnet::ip_in_net;
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
pub(super) struct ScriptEnv {
    pub(super) name: String,
    pub(super) kv_namespace: String,
    pub(super) store: Option<Store>,
    pub(super) sink: Option<LogSink>,
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

fn parse_ip(ip: &str) -> Result<IpAddr, Box<EvalAltResult>> {
    ip.trim()
        .parse()
        .map_err(|_| format!("ip_in: {ip:?} is not an IP address").into())
}

/// A kv rule's error as scripts see it (`kv_set: keys are 1 to 1024 bytes long`).
fn kv_error(func: &str, e: KvError) -> Box<EvalAltResult> {
    format!("{func}: {e}").into()
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
    e.register_get("config", |c: &mut ScriptCtx| c.config().clone());
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
    e.register_get("spf", |c: &mut ScriptCtx| c.hook().auth.spf.clone());
    e.register_get("dkim", |c: &mut ScriptCtx| c.hook().auth.dkim.clone());
    e.register_get("dmarc", |c: &mut ScriptCtx| c.hook().auth.dmarc.clone());
    e.register_get("username", |c: &mut ScriptCtx| {
        c.hook()
            .credentials
            .as_ref()
            .map(|x| x.username.clone())
            .unwrap_or_default()
    });
    e.register_get("password", |c: &mut ScriptCtx| {
        c.hook()
            .credentials
            .as_ref()
            .map(|x| x.password.clone())
            .unwrap_or_default()
    });
    e.register_get("mechanism", |c: &mut ScriptCtx| {
        c.hook()
            .credentials
            .as_ref()
            .map(|x| x.mechanism.clone())
            .unwrap_or_default()
    });
    e.register_get("password_valid", |c: &mut ScriptCtx| {
        c.hook().credentials.as_ref().is_some_and(|x| x.valid)
    });
    e.register_get("mailbox", |c: &mut ScriptCtx| {
        c.hook()
            .fetch
            .as_ref()
            .map(|f| f.mailbox.clone())
            .unwrap_or_default()
    });
    e.register_get("uid", |c: &mut ScriptCtx| {
        c.hook().fetch.as_ref().map(|f| f.uid as i64).unwrap_or(0)
    });
    e.register_get("protocol", |c: &mut ScriptCtx| {
        c.hook()
            .fetch
            .as_ref()
            .map(|f| f.protocol.to_string())
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
    // A spam filter's result (rspamd earlier in the chain): a map, or () when none scanned.
    e.register_get("spam", |c: &mut ScriptCtx| -> Dynamic {
        let Some(s) = &c.hook().spam else {
            return Dynamic::UNIT;
        };
        let mut m = Map::new();
        m.insert("engine".into(), s.engine.clone().into());
        m.insert("score".into(), Dynamic::from_float(s.score));
        m.insert("required".into(), Dynamic::from_float(s.required));
        m.insert("action".into(), s.action.clone().into());
        let symbols: Array = s.symbols.iter().map(|x| x.clone().into()).collect();
        m.insert("symbols".into(), symbols.into());
        m.into()
    });
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
            kv::check_key(key).map_err(|e| kv_error("kv_get", e))?;
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
            kv::check_key(key).map_err(|e| kv_error("kv_set", e))?;
            let value = value.to_string();
            kv::check_value(value.len()).map_err(|e| kv_error("kv_set", e))?;
            let store = env2.store("kv_set")?;
            store
                .kv_set(
                    &env2.kv_namespace,
                    key,
                    value.as_bytes(),
                    kv::ttl(ttl_seconds),
                )
                .wait()
                .map_err(|e| format!("kv_set: {e}").into())
        },
    );
    let env2 = env.clone();
    let incr = move |key: &str, delta: i64, ttl_seconds: i64| -> Result<i64, Box<EvalAltResult>> {
        kv::check_key(key).map_err(|e| kv_error("kv_incr", e))?;
        let store = env2.store("kv_incr")?;
        store
            .kv_incr(&env2.kv_namespace, key, delta, kv::ttl(ttl_seconds))
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

pub(super) fn build_engine(env: Arc<ScriptEnv>, limits: &Limits) -> Engine {
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
