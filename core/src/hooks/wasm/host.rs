//! The host side of the WIT imports: [`HostState`], the data of one store, and its
//! `impl Host` blocks for both generations of the interface (0.3 and 0.4). Their imports
//! have the same shapes but are distinct generated types: [`imports!`] writes the shared
//! ones (log, kv, config, clock, dns, context, auth) once for each generation, over
//! generation-neutral code here; `answer` differs (0.3 hands over an `outcome` record, 0.4
//! calls one function per action) and both fill the same [`Answer`].

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::runtime::{Limiter, runtime};
use super::{hook_of, w3, w4};
use crate::blocking::Wait;
use crate::hooks::kv;
use crate::hooks::outcome::{MAX_HEADERS, cut};
use crate::hooks::rhai::LogSink;
use crate::hooks::{HookCtx, HookPoint, Route};
use crate::store::Store;

/// What a plugin's host functions need (shared by all its instances).
pub(super) struct PluginEnv {
    /// Path for logs and errors.
    pub(super) name: String,
    pub(super) kv_namespace: String,
    pub(super) config: serde_json::Map<String, serde_json::Value>,
    pub(super) config_json: String,
    pub(super) store: Option<Store>,
    pub(super) resolver: Option<Arc<hickory_resolver::TokioResolver>>,
    pub(super) sink: Option<LogSink>,
}

impl PluginEnv {
    pub(super) fn log(&self, level: &str, text: &str) {
        let plugin = self.name.as_str();
        match level {
            "error" => tracing::error!(plugin, "{text}"),
            "warn" => tracing::warn!(plugin, "{text}"),
            "info" => tracing::info!(plugin, "{text}"),
            "debug" => tracing::debug!(plugin, "{text}"),
            _ => tracing::trace!(plugin, "{text}"),
        }
        if let Some(sink) = &self.sink {
            let mut lines = sink.lock().unwrap_or_else(|e| e.into_inner());
            if lines.len() < 10_000 {
                lines.push(format!("[{level}] {text}"));
            }
        }
    }
}

/// The data of one Store (one instance).
pub(super) struct HostState {
    pub(super) env: Arc<PluginEnv>,
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limits: Limiter,
    pub(super) stdout: MemoryOutputPipe,
    pub(super) stderr: MemoryOutputPipe,
    /// Bytes of stdout/stderr already forwarded to the log.
    pub(super) forwarded: (usize, usize),
    /// Epoch ticks seen in the current call, and the budget.
    pub(super) ticks: u64,
    pub(super) tick_budget: u64,
    pub(super) cpu_exceeded: bool,
    /// When the current call must end (its wall-clock limit), and whether it was cut there.
    pub(super) deadline: Instant,
    pub(super) wall_exceeded: bool,
    pub(super) dns_left: u32,
    pub(super) dns_timeout: Duration,
    pub(super) log_left: u32,
    pub(super) log_dropped: u32,
    /// The facts of the current call (the `context` and `auth` imports); the message is
    /// dropped when the call ends.
    pub(super) call: Option<HookCtx>,
    /// Whether a hook call is running (the `context` and `answer` imports work only then).
    pub(super) in_call: bool,
    /// What the hook handed over through the `answer` import.
    pub(super) answer: Answer,
    /// Longest message the `context.message` method hands over.
    pub(super) max_message: usize,
}

impl Drop for HostState {
    fn drop(&mut self) {
        if let Ok(rt) = runtime() {
            rt.live.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A key checked by the shared rule, its error as plugins see it (`kv: keys are 1 to 1024
/// bytes long`).
pub(super) fn check_key(key: &str) -> Result<(), String> {
    kv::check_key(key).map_err(|e| format!("kv: {e}"))
}

impl HostState {
    pub(super) fn kv_store(&self) -> Result<&Store, String> {
        self.env
            .store
            .as_ref()
            .ok_or_else(|| "kv: no store here".to_string())
    }
}

pub(super) fn json_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Why a lookup failed (the `dns-error` of either generation).
pub(super) enum DnsFail {
    NotFound,
    Temporary(String),
    Invalid(String),
    LimitExceeded,
}

/// What a lookup that ran out of time answers (`dns-error.temporary`).
pub(super) const DNS_TIMED_OUT: &str = "timeout";

#[derive(Clone, Copy)]
pub(super) enum DnsKind {
    A,
    Aaaa,
    Txt,
    Ptr,
}

impl HostState {
    /// A lookup, bounded by the DNS timeout and by what is left of the call's wall-clock
    /// time: when the call's time runs out, the call traps.
    pub(super) async fn lookup(
        &mut self,
        kind: DnsKind,
        name: String,
    ) -> wasmtime::Result<Result<Vec<String>, DnsFail>> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            self.wall_exceeded = true;
            return Err(wasmtime::Trap::Interrupt.into());
        }
        let cut_by_wall = left < self.dns_timeout;
        let r = self
            .lookup_within(kind, name, self.dns_timeout.min(left))
            .await;
        if cut_by_wall && matches!(&r, Err(DnsFail::Temporary(t)) if t == DNS_TIMED_OUT) {
            self.wall_exceeded = true;
            return Err(wasmtime::Trap::Interrupt.into());
        }
        Ok(r)
    }

    pub(super) async fn lookup_within(
        &mut self,
        kind: DnsKind,
        name: String,
        timeout: Duration,
    ) -> Result<Vec<String>, DnsFail> {
        if self.dns_left == 0 {
            return Err(DnsFail::LimitExceeded);
        }
        self.dns_left -= 1;
        let Some(resolver) = self.env.resolver.clone() else {
            return Err(DnsFail::Temporary("no resolver".into()));
        };
        let name = name.trim().to_string();
        if name.is_empty() || name.len() > 253 || name.contains(char::is_whitespace) {
            return Err(DnsFail::Invalid(format!(
                "{:?} is not a DNS name",
                cut(&name, 300)
            )));
        }
        use hickory_resolver::proto::rr::RData;
        let texts = |lookup: hickory_resolver::lookup::Lookup| -> Vec<String> {
            lookup
                .answers()
                .iter()
                .filter_map(|rec| match &rec.data {
                    RData::A(a) => Some(a.to_string()),
                    RData::AAAA(a) => Some(a.to_string()),
                    RData::TXT(t) => Some(
                        t.txt_data
                            .iter()
                            .map(|d| String::from_utf8_lossy(d).into_owned())
                            .collect::<String>(),
                    ),
                    RData::PTR(p) => Some(p.to_ascii().trim_end_matches('.').to_string()),
                    _ => None,
                })
                .collect()
        };
        let result = match kind {
            DnsKind::A => tokio::time::timeout(timeout, resolver.ipv4_lookup(name.as_str()))
                .await
                .map(|r| r.map(texts)),
            DnsKind::Aaaa => tokio::time::timeout(timeout, resolver.ipv6_lookup(name.as_str()))
                .await
                .map(|r| r.map(texts)),
            DnsKind::Txt => tokio::time::timeout(timeout, resolver.txt_lookup(name.as_str()))
                .await
                .map(|r| r.map(texts)),
            DnsKind::Ptr => {
                let ip: std::net::IpAddr = name
                    .parse()
                    .map_err(|_| DnsFail::Invalid(format!("{name:?} is not an IP address")))?;
                tokio::time::timeout(timeout, resolver.reverse_lookup(ip))
                    .await
                    .map(|r| r.map(texts))
            }
        };
        match result {
            Err(_) => Err(DnsFail::Temporary(DNS_TIMED_OUT.into())),
            Ok(Ok(v)) => {
                if v.is_empty() {
                    Err(DnsFail::NotFound)
                } else {
                    Ok(v.into_iter().take(64).collect())
                }
            }
            Ok(Err(e)) => {
                if e.is_no_records_found() || e.is_nx_domain() {
                    Err(DnsFail::NotFound)
                } else {
                    Err(DnsFail::Temporary(e.to_string()))
                }
            }
        }
    }
}

impl HostState {
    /// The facts of the current call; asking outside a hook call (in `init`) traps.
    pub(super) fn facts(&self) -> wasmtime::Result<&HookCtx> {
        match &self.call {
            Some(c) if self.in_call => Ok(c),
            _ => Err(wasmtime::Error::msg("context used outside a hook call")),
        }
    }
}

/// The imports both generations share, for the generation whose bindings are `$w`
/// (`context.hook` answers `$hook(point)`, of type `$hook_ty`).
macro_rules! imports {
    ($w:ident, $hook_ty:ty, $hook:expr) => {
        impl $w::log::Host for HostState {
            fn log(&mut self, level: $w::log::Level, message: String) -> wasmtime::Result<()> {
                if self.log_left == 0 {
                    self.log_dropped += 1;
                    return Ok(());
                }
                self.log_left -= 1;
                let level = match level {
                    $w::log::Level::Trace => "trace",
                    $w::log::Level::Debug => "debug",
                    $w::log::Level::Info => "info",
                    $w::log::Level::Warn => "warn",
                    $w::log::Level::Error => "error",
                };
                self.env.log(level, cut(&message, 4096));
                Ok(())
            }
        }

        impl $w::kv::Host for HostState {
            fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, String>> {
                Ok((|| {
                    check_key(&key)?;
                    self.kv_store()?
                        .kv_get(&self.env.kv_namespace, &key)
                        .wait()
                        .map_err(|e| format!("kv: {e}"))
                })())
            }

            fn set(
                &mut self,
                key: String,
                value: Vec<u8>,
                ttl_secs: Option<u32>,
            ) -> wasmtime::Result<Result<(), String>> {
                Ok((|| {
                    check_key(&key)?;
                    kv::check_value(value.len())
                        .map_err(|e| format!("kv: {e} (got {})", value.len()))?;
                    self.kv_store()?
                        .kv_set(
                            &self.env.kv_namespace,
                            &key,
                            &value,
                            ttl_secs.and_then(|t| kv::ttl(t.into())),
                        )
                        .wait()
                        .map_err(|e| format!("kv: {e}"))
                })())
            }

            fn incr(
                &mut self,
                key: String,
                delta: i64,
                ttl_secs: Option<u32>,
            ) -> wasmtime::Result<Result<i64, String>> {
                Ok((|| {
                    check_key(&key)?;
                    self.kv_store()?
                        .kv_incr(
                            &self.env.kv_namespace,
                            &key,
                            delta,
                            ttl_secs.and_then(|t| kv::ttl(t.into())),
                        )
                        .wait()
                        .map_err(|e| format!("kv: {e}"))
                })())
            }
        }

        impl $w::config::Host for HostState {
            fn json(&mut self) -> wasmtime::Result<String> {
                Ok(self.env.config_json.clone())
            }
            fn keys(&mut self) -> wasmtime::Result<Vec<String>> {
                Ok(self.env.config.keys().cloned().collect())
            }
            fn get_string(&mut self, key: String) -> wasmtime::Result<Option<String>> {
                Ok(self
                    .env
                    .config
                    .get(&key)
                    .filter(|v| !v.is_null())
                    .map(json_text))
            }
            fn get_int(&mut self, key: String) -> wasmtime::Result<Option<i64>> {
                Ok(self.env.config.get(&key).and_then(|v| {
                    v.as_i64()
                        .or_else(|| v.as_f64().map(|f| f as i64))
                        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                }))
            }
            fn get_float(&mut self, key: String) -> wasmtime::Result<Option<f64>> {
                Ok(self.env.config.get(&key).and_then(|v| {
                    v.as_f64()
                        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                }))
            }
            fn get_bool(&mut self, key: String) -> wasmtime::Result<Option<bool>> {
                Ok(self.env.config.get(&key).and_then(|v| v.as_bool()))
            }
            fn get_list(&mut self, key: String) -> wasmtime::Result<Option<Vec<String>>> {
                Ok(self
                    .env
                    .config
                    .get(&key)
                    .and_then(|v| v.as_array())
                    .map(|a| a.iter().map(json_text).collect()))
            }
            fn get_table(
                &mut self,
                key: String,
            ) -> wasmtime::Result<Option<Vec<(String, String)>>> {
                Ok(self
                    .env
                    .config
                    .get(&key)
                    .and_then(|v| v.as_object())
                    .map(|o| o.iter().map(|(k, v)| (k.clone(), json_text(v))).collect()))
            }
        }

        impl $w::clock::Host for HostState {
            fn now(&mut self) -> wasmtime::Result<i64> {
                Ok(chrono::Utc::now().timestamp())
            }
            fn monotonic_ms(&mut self) -> wasmtime::Result<u64> {
                static START: OnceLock<Instant> = OnceLock::new();
                Ok(START.get_or_init(Instant::now).elapsed().as_millis() as u64)
            }
        }

        impl From<DnsFail> for $w::dns::DnsError {
            fn from(e: DnsFail) -> Self {
                match e {
                    DnsFail::NotFound => Self::NotFound,
                    DnsFail::Temporary(t) => Self::Temporary(t),
                    DnsFail::Invalid(t) => Self::Invalid(t),
                    DnsFail::LimitExceeded => Self::LimitExceeded,
                }
            }
        }

        impl $w::dns::Host for HostState {
            async fn a(
                &mut self,
                name: String,
            ) -> wasmtime::Result<Result<Vec<String>, $w::dns::DnsError>> {
                Ok(self.lookup(DnsKind::A, name).await?.map_err(Into::into))
            }
            async fn aaaa(
                &mut self,
                name: String,
            ) -> wasmtime::Result<Result<Vec<String>, $w::dns::DnsError>> {
                Ok(self.lookup(DnsKind::Aaaa, name).await?.map_err(Into::into))
            }
            async fn txt(
                &mut self,
                name: String,
            ) -> wasmtime::Result<Result<Vec<String>, $w::dns::DnsError>> {
                Ok(self.lookup(DnsKind::Txt, name).await?.map_err(Into::into))
            }
            async fn ptr(
                &mut self,
                ip: String,
            ) -> wasmtime::Result<Result<Vec<String>, $w::dns::DnsError>> {
                Ok(self.lookup(DnsKind::Ptr, ip).await?.map_err(Into::into))
            }
        }

        impl $w::types::Host for HostState {}

        impl $w::context::Host for HostState {
            fn hook(&mut self) -> wasmtime::Result<$hook_ty> {
                Ok($hook(self.facts()?.point))
            }
            fn listener(&mut self) -> wasmtime::Result<String> {
                Ok(self.facts()?.listener.to_string())
            }
            fn client_ip(&mut self) -> wasmtime::Result<String> {
                Ok(self.facts()?.client_ip.to_string())
            }
            fn client_ptr(&mut self) -> wasmtime::Result<String> {
                Ok(self.facts()?.client_ptr.clone())
            }
            fn helo(&mut self) -> wasmtime::Result<String> {
                Ok(self.facts()?.helo.clone())
            }
            fn tls(&mut self) -> wasmtime::Result<bool> {
                Ok(self.facts()?.tls)
            }
            fn user(&mut self) -> wasmtime::Result<String> {
                Ok(self.facts()?.user.clone())
            }
            fn mail_from(&mut self) -> wasmtime::Result<String> {
                Ok(self.facts()?.mail_from.clone())
            }
            fn rcpt(&mut self) -> wasmtime::Result<String> {
                Ok(self.facts()?.rcpt.clone())
            }
            fn route(&mut self) -> wasmtime::Result<$w::types::Route> {
                Ok(match &self.facts()?.route {
                    None => $w::types::Route::Unknown,
                    Some(Route::Local(v)) => $w::types::Route::Local(v.clone()),
                    Some(Route::UnknownLocal) => $w::types::Route::UnknownLocal,
                    Some(Route::Remote) => $w::types::Route::Remote,
                })
            }
            fn rcpts(&mut self) -> wasmtime::Result<Vec<String>> {
                Ok(self.facts()?.rcpts.clone())
            }
            fn spf(&mut self) -> wasmtime::Result<String> {
                Ok(self.facts()?.auth.spf.clone())
            }
            fn dkim(&mut self) -> wasmtime::Result<String> {
                Ok(self.facts()?.auth.dkim.clone())
            }
            fn dmarc(&mut self) -> wasmtime::Result<String> {
                Ok(self.facts()?.auth.dmarc.clone())
            }
            fn credentials(&mut self) -> wasmtime::Result<Option<$w::types::Credentials>> {
                Ok(self
                    .facts()?
                    .credentials
                    .as_ref()
                    .map(|c| $w::types::Credentials {
                        username: c.username.clone(),
                        password: c.password.clone(),
                        mechanism: c.mechanism.clone(),
                        valid: c.valid,
                    }))
            }
            fn fetch(&mut self) -> wasmtime::Result<Option<$w::types::FetchInfo>> {
                Ok(self.facts()?.fetch.as_ref().map(|f| $w::types::FetchInfo {
                    mailbox: f.mailbox.clone(),
                    uid: f.uid,
                    protocol: f.protocol.to_string(),
                }))
            }
            fn remote_mx(&mut self) -> wasmtime::Result<Option<String>> {
                Ok(self.facts()?.remote_mx.clone())
            }
            fn message_size(&mut self) -> wasmtime::Result<u64> {
                Ok(self.facts()?.message.as_ref().map_or(0, |m| m.len() as u64))
            }
            fn message_truncated(&mut self) -> wasmtime::Result<bool> {
                let max = self.max_message;
                Ok(self
                    .facts()?
                    .message
                    .as_ref()
                    .is_some_and(|m| m.len() > max))
            }
            fn message(&mut self) -> wasmtime::Result<Vec<u8>> {
                let max = self.max_message;
                Ok(match &self.facts()?.message {
                    Some(m) => m[..m.len().min(max)].to_vec(),
                    None => Vec::new(),
                })
            }
        }

        impl $w::auth::Host for HostState {
            fn facts(&mut self) -> wasmtime::Result<$w::auth::AuthFacts> {
                // Outside a hook call (`init`) every fact is empty.
                let none = crate::sender_auth::AuthFacts::default();
                let a = match &self.call {
                    Some(c) if self.in_call => &c.auth,
                    _ => &none,
                };
                Ok($w::auth::AuthFacts {
                    spf: a.spf.clone(),
                    spf_domain: a.spf_domain.clone(),
                    spf_helo: a.spf_helo.clone(),
                    dkim: a.dkim.clone(),
                    dkim_domains: a.dkim_domains.clone(),
                    dmarc: a.dmarc.clone(),
                    dmarc_domain: a.dmarc_domain.clone(),
                    dmarc_policy: a.dmarc_policy.clone(),
                    arc: a.arc.clone(),
                    arc_sealer: a.arc_sealer.clone(),
                    action: a.action.clone(),
                })
            }
        }
    };
}

imports!(w3, w3::types::Hook, hook_of);
imports!(w4, String, |p: HookPoint| p.name().to_string());

/// `spam` (WIT 0.4.1): a spam filter's result, for the current call only.
impl w4::spam::Host for HostState {
    fn facts(&mut self) -> wasmtime::Result<Option<w4::spam::SpamFacts>> {
        let spam = match &self.call {
            Some(c) if self.in_call => c.spam.as_deref(),
            _ => None,
        };
        Ok(spam.map(|s| w4::spam::SpamFacts {
            score: s.score,
            required: s.required,
            action: s.action.clone(),
            symbols: s.symbols.clone(),
            engine: s.engine.clone(),
        }))
    }
}

/// A verdict as a plugin hands it over (either generation), before the shared rules check it.
pub(super) enum Given {
    Next,
    Accept,
    Reject(u16, String),
    Tempfail(u16, String),
    Discard,
    Quarantine(String),
}

/// What a hook handed over: a verdict and actions (`answer.set-outcome` in 0.3; the 0.4
/// `answer` functions, of which the last verdict, recipient and folder count).
#[derive(Default)]
pub(super) struct Handed {
    /// None: `next`.
    pub(super) verdict: Option<Given>,
    /// At most one more than [`MAX_HEADERS`] are kept (enough to refuse the call).
    pub(super) headers: Vec<(String, String)>,
    pub(super) set_rcpt: Option<String>,
    pub(super) file_into: Option<String>,
}

/// What the `answer` import got during a call; the status the hook returns decides which
/// part counts.
#[derive(Default)]
pub(super) struct Answer {
    pub(super) handed: Option<Handed>,
    /// `answer.fail`'s message.
    pub(super) fail: Option<String>,
}

/// The verdict of a generation's `verdict` variant.
macro_rules! given_from {
    ($w:ident) => {
        impl From<$w::types::Verdict> for Given {
            fn from(v: $w::types::Verdict) -> Self {
                use $w::types::Verdict as V;
                match v {
                    V::Next => Given::Next,
                    V::Accept => Given::Accept,
                    V::Reject(r) => Given::Reject(r.code, r.text),
                    V::Tempfail(r) => Given::Tempfail(r.code, r.text),
                    V::Discard => Given::Discard,
                    V::Quarantine(r) => Given::Quarantine(r),
                }
            }
        }
    };
}

given_from!(w3);
given_from!(w4);

impl HostState {
    /// The answer being handed over; outside a hook call the answer functions trap.
    pub(super) fn answering(&mut self) -> wasmtime::Result<&mut Answer> {
        if !self.in_call {
            return Err(wasmtime::Error::msg("answer given outside a hook call"));
        }
        Ok(&mut self.answer)
    }

    /// The verdict and actions of the 0.4 answer functions (one each, added up).
    fn handing(&mut self) -> wasmtime::Result<&mut Handed> {
        Ok(self.answering()?.handed.get_or_insert_default())
    }
}

/// 0.3: one outcome record (the last answer of a call, outcome or failure, wins).
impl w3::answer::Host for HostState {
    fn set_outcome(&mut self, outcome: w3::types::Outcome) -> wasmtime::Result<()> {
        let a = outcome.actions;
        *self.answering()? = Answer {
            handed: Some(Handed {
                verdict: Some(outcome.verdict.into()),
                headers: a
                    .add_headers
                    .into_iter()
                    .map(|h| (h.name, h.value))
                    .collect(),
                set_rcpt: a.set_rcpt,
                file_into: a.file_into,
            }),
            fail: None,
        };
        Ok(())
    }
    fn fail(&mut self, message: String) -> wasmtime::Result<()> {
        *self.answering()? = Answer {
            handed: None,
            fail: Some(message),
        };
        Ok(())
    }
}

/// 0.4: one function per verdict or action (a new action is a new function).
impl w4::answer::Host for HostState {
    fn verdict(&mut self, verdict: w4::types::Verdict) -> wasmtime::Result<()> {
        self.handing()?.verdict = Some(verdict.into());
        Ok(())
    }
    fn add_header(&mut self, name: String, value: String) -> wasmtime::Result<()> {
        let h = self.handing()?;
        if h.headers.len() <= MAX_HEADERS {
            h.headers.push((name, value));
        }
        Ok(())
    }
    fn set_rcpt(&mut self, address: String) -> wasmtime::Result<()> {
        self.handing()?.set_rcpt = Some(address);
        Ok(())
    }
    fn file_into(&mut self, folder: String) -> wasmtime::Result<()> {
        self.handing()?.file_into = Some(folder);
        Ok(())
    }
    fn fail(&mut self, message: String) -> wasmtime::Result<()> {
        self.answering()?.fail = Some(message);
        Ok(())
    }
}
