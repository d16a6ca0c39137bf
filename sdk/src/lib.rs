//! # corvus-sdk: write Corvus mail server plugins in Rust
//!
//! A plugin is a WebAssembly component (`wasm32-wasip2`) implementing the WIT world
//! `corvus:plugin/plugin@0.4.1` (`sdk/wit/v0.4/plugin.wit`). This crate holds the generated
//! bindings plus what makes them pleasant to use:
//!
//! - the [`Plugin`] trait: declare the hooks you handle, build your state in
//!   [`Plugin::init`] from the `config = { … }` table, override the `on_*` methods, which
//!   read the facts of the call from a [`Context`] (each fact is copied in only when asked);
//! - [`export!`]: turns a [`Plugin`] type into the component's exports (`describe` lists
//!   [`Plugin::HOOKS`] as the points it handles; `on-hook` calls the matching `on_*`
//!   method, and hands the [`Outcome`] over with the host's `answer` functions);
//! - verdict and outcome helpers ([`Outcome::reject`], [`Outcome::with_header`], …);
//! - the host imports as plain functions: [`log`], [`kv`], [`dns`], [`clock`], [`auth`], [`spam`], and
//!   [`Config`];
//! - [`testing`]: run a plugin's hooks natively (plain `cargo test`, no server, no WebAssembly)
//!   against synthetic events, with an in-memory kv store, canned DNS answers, a settable clock
//!   and captured log lines.
//!
//! ```ignore
//! use corvus_sdk::{Config, Context, Hook, HookResult, Outcome, Plugin};
//!
//! struct NoBob;
//!
//! impl Plugin for NoBob {
//!     const NAME: &'static str = "no-bob";
//!     const HOOKS: &'static [Hook] = &[Hook::Rcpt];
//!     fn init(_config: &Config) -> Result<Self, String> { Ok(NoBob) }
//!     fn on_rcpt(&mut self, ctx: &Context) -> HookResult {
//!         if ctx.rcpt().starts_with("bob@") { Ok(Outcome::reject(550, "5.1.1 no Bob here")) }
//!         else { Ok(Outcome::next()) }
//!     }
//! }
//!
//! corvus_sdk::export!(NoBob);
//! ```
//!
//! The author's guide is `sdk/README.md`.

// The generated bindings and the export macro name this crate by its public name.
extern crate self as corvus_sdk;

/// Bindings generated from `sdk/wit/v0.4/plugin.wit` by wit-bindgen.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit/v0.4",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "__export_plugin_raw",
        default_bindings_module: "corvus_sdk::bindings",
        additional_derives: [PartialEq],
        runtime_path: "corvus_sdk::__private::wit_bindgen::rt",
    });
}

pub use bindings::corvus::plugin::auth::AuthFacts;
pub use bindings::corvus::plugin::dns::DnsError;
pub use bindings::corvus::plugin::log::Level;
pub use bindings::corvus::plugin::spam::SpamFacts;
pub use bindings::corvus::plugin::types::{
    Credentials, FetchInfo, PluginInfo, Reply, Route, Verdict,
};

/// The version of the WIT package this SDK implements.
pub const WIT_VERSION: &str = "0.4.1";

/// A hook point (WIT 0.4 names them by string: see [`Hook::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    /// A client connected.
    Connect,
    /// HELO/EHLO.
    Helo,
    /// AUTH credentials were given.
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

/// A header field to prepend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// Side effects, applied only when the call succeeds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Actions {
    /// Header fields to prepend (data, delivery).
    pub add_headers: Vec<Header>,
    /// New recipient (rcpt).
    pub set_rcpt: Option<String>,
    /// Folder to file into (delivery).
    pub file_into: Option<String>,
}

/// What a hook answers: a verdict and actions.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub verdict: Verdict,
    pub actions: Actions,
}

/// The facts of the hook call being handled. Each method asks the server for one fact (the
/// server copies only what a hook reads into the plugin), so read a fact once into a local
/// when a hook uses it many times. Strings not known at this hook are "".
pub struct Context<'a> {
    hook: Hook,
    session: u64,
    /// In WebAssembly the facts come from the host's `context` import.
    #[cfg(target_arch = "wasm32")]
    src: std::marker::PhantomData<&'a ()>,
    #[cfg(not(target_arch = "wasm32"))]
    src: &'a testing::Event,
}

/// One fact per method, read from the host (in WebAssembly) or from a [`testing::Event`].
macro_rules! facts {
    ($($(#[$doc:meta])* $name:ident -> $ty:ty;)*) => {
        impl Context<'_> {
            $(
                $(#[$doc])*
                pub fn $name(&self) -> $ty {
                    #[cfg(target_arch = "wasm32")]
                    return bindings::corvus::plugin::context::$name();
                    #[cfg(not(target_arch = "wasm32"))]
                    return self.src.$name.clone();
                }
            )*
        }
    };
}

facts! {
    /// Listener: "smtp", "submission", "submissions", "imap", …
    listener -> String;
    /// Client IP address in text form.
    client_ip -> String;
    /// Forward-confirmed PTR name of the client, or "".
    client_ptr -> String;
    /// HELO/EHLO name.
    helo -> String;
    /// Whether the connection is encrypted.
    tls -> bool;
    /// Authenticated user, or "".
    user -> String;
    /// Envelope sender ("" for the null sender).
    mail_from -> String;
    /// Current recipient (rcpt, delivery).
    rcpt -> String;
    /// How the current recipient resolved (rcpt).
    route -> Route;
    /// Recipients accepted so far.
    rcpts -> Vec<String>;
    /// SPF result (from mail on), "" when not checked.
    spf -> String;
    /// DKIM result (data), "" when not checked.
    dkim -> String;
    /// DMARC result (data), "" when not checked.
    dmarc -> String;
    /// AUTH credentials (auth only).
    credentials -> Option<Credentials>;
    /// What is being fetched (fetch only).
    fetch -> Option<FetchInfo>;
    /// Delivery to a remote host: the MX about to be tried.
    remote_mx -> Option<String>;
    /// Size of the whole message in bytes (data, delivery), 0 otherwise.
    message_size -> u64;
    /// Whether [`Context::message`] is cut short (the message is larger than the plugin's
    /// memory allows); [`Context::message_size`] is the real size.
    message_truncated -> bool;
    /// The raw message with CRLF line ends (data, delivery; empty at other hooks). Copied
    /// into the plugin on each call: keep it in a local.
    message -> Vec<u8>;
}

impl Context<'_> {
    /// The hook being called.
    pub fn hook(&self) -> Hook {
        self.hook
    }
    /// The session (SMTP, IMAP or POP3 connection) of this call, unique while the server
    /// runs; a queued delivery is a session of its own.
    pub fn session(&self) -> u64 {
        self.session
    }
}

/// What a hook returns: an outcome, or an error (a failed call; the server applies the entry's
/// `on_error` policy).
pub type HookResult = Result<Outcome, String>;

/// Every hook, in session order; a hook's place here is its number in WIT 0.4 (`on-hook`).
pub const ALL_HOOKS: [Hook; 8] = [
    Hook::Connect,
    Hook::Helo,
    Hook::Auth,
    Hook::Mail,
    Hook::Rcpt,
    Hook::Data,
    Hook::Delivery,
    Hook::Fetch,
];

/// A plugin. [`Plugin::init`] builds a new value for every session (SMTP connection) an
/// instance serves, so `&mut self` state lasts for that session only (the server reuses
/// instances between sessions; statics of your own would survive). State shared between
/// sessions belongs in [`kv`].
pub trait Plugin: Sized + 'static {
    /// Name in logs.
    const NAME: &'static str;
    /// Version in logs.
    const VERSION: &'static str = "0.1.0";
    /// The hooks this plugin implements; the server calls only these.
    const HOOKS: &'static [Hook];

    /// Build the plugin from its config table. An error refuses the plugin when the server
    /// loads it (and `corvus check` reports it).
    fn init(config: &Config) -> Result<Self, String>;

    /// A client connected.
    fn on_connect(&mut self, _ctx: &Context) -> HookResult {
        Ok(Outcome::next())
    }
    /// HELO/EHLO.
    fn on_helo(&mut self, _ctx: &Context) -> HookResult {
        Ok(Outcome::next())
    }
    /// AUTH credentials (`ctx.credentials()`). [`Outcome::accept`] lets the user in even when the
    /// account store refused the password; a reject refuses the login.
    fn on_auth(&mut self, _ctx: &Context) -> HookResult {
        Ok(Outcome::next())
    }
    /// MAIL FROM.
    fn on_mail(&mut self, _ctx: &Context) -> HookResult {
        Ok(Outcome::next())
    }
    /// RCPT TO.
    fn on_rcpt(&mut self, _ctx: &Context) -> HookResult {
        Ok(Outcome::next())
    }
    /// End of DATA; [`Context::message`] gives the message.
    fn on_data(&mut self, _ctx: &Context) -> HookResult {
        Ok(Outcome::next())
    }
    /// Before delivery of the message to `ctx.rcpt()`.
    fn on_delivery(&mut self, _ctx: &Context) -> HookResult {
        Ok(Outcome::next())
    }
    /// Before IMAP/POP3 serve a message.
    fn on_fetch(&mut self, _ctx: &Context) -> HookResult {
        Ok(Outcome::next())
    }
}

/// Describe a plugin type (what `describe` exports): [`Plugin::HOOKS`] by name.
pub fn describe<P: Plugin>() -> PluginInfo {
    PluginInfo {
        name: P::NAME.to_string(),
        version: P::VERSION.to_string(),
        handles: P::HOOKS.iter().map(|h| h.name().to_string()).collect(),
    }
}

/// Call the hook of `plugin` that `ctx.hook()` names.
pub fn dispatch<P: Plugin>(plugin: &mut P, ctx: &Context) -> HookResult {
    match ctx.hook {
        Hook::Connect => plugin.on_connect(ctx),
        Hook::Helo => plugin.on_helo(ctx),
        Hook::Auth => plugin.on_auth(ctx),
        Hook::Mail => plugin.on_mail(ctx),
        Hook::Rcpt => plugin.on_rcpt(ctx),
        Hook::Data => plugin.on_data(ctx),
        Hook::Delivery => plugin.on_delivery(ctx),
        Hook::Fetch => plugin.on_fetch(ctx),
    }
}

impl Hook {
    /// The hook named `name` ("connect", "helo", …).
    pub fn from_name(name: &str) -> Option<Hook> {
        ALL_HOOKS.into_iter().find(|h| h.name() == name)
    }

    /// "connect", "helo", … (what `describe` lists in `handles`).
    pub fn name(self) -> &'static str {
        match self {
            Hook::Connect => "connect",
            Hook::Helo => "helo",
            Hook::Auth => "auth",
            Hook::Mail => "mail",
            Hook::Rcpt => "rcpt",
            Hook::Data => "data",
            Hook::Delivery => "delivery",
            Hook::Fetch => "fetch",
        }
    }
}

impl Verdict {
    /// Short name: "next", "accept", "reject", …
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Next => "next",
            Verdict::Accept => "accept",
            Verdict::Reject(_) => "reject",
            Verdict::Tempfail(_) => "tempfail",
            Verdict::Discard => "discard",
            Verdict::Quarantine(_) => "quarantine",
        }
    }
}

impl Outcome {
    /// No opinion: the next hook decides.
    pub fn next() -> Self {
        Self::verdict(Verdict::Next)
    }
    /// Accept; later hooks are skipped.
    pub fn accept() -> Self {
        Self::verdict(Verdict::Accept)
    }
    /// Permanent refusal (code 500..599; the text may start with an enhanced code).
    pub fn reject(code: u16, text: impl Into<String>) -> Self {
        Self::verdict(Verdict::Reject(Reply {
            code,
            text: text.into(),
        }))
    }
    /// Temporary refusal (code 400..499).
    pub fn tempfail(code: u16, text: impl Into<String>) -> Self {
        Self::verdict(Verdict::Tempfail(Reply {
            code,
            text: text.into(),
        }))
    }
    /// Accept and drop silently.
    pub fn discard() -> Self {
        Self::verdict(Verdict::Discard)
    }
    /// Accept and file into Junk.
    pub fn quarantine(reason: impl Into<String>) -> Self {
        Self::verdict(Verdict::Quarantine(reason.into()))
    }
    /// An outcome with this verdict and no actions.
    pub fn verdict(verdict: Verdict) -> Self {
        Outcome {
            verdict,
            actions: Actions::default(),
        }
    }
    /// Also prepend a header field (data, delivery).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.actions.add_headers.push(Header {
            name: name.into(),
            value: value.into(),
        });
        self
    }
    /// Also change the recipient (rcpt).
    pub fn with_rcpt(mut self, address: impl Into<String>) -> Self {
        self.actions.set_rcpt = Some(address.into());
        self
    }
    /// Also file into a folder (delivery).
    pub fn with_folder(mut self, folder: impl Into<String>) -> Self {
        self.actions.file_into = Some(folder.into());
        self
    }
}

/// The domain of an address, lower-cased ("" if none).
pub fn domain_of(address: &str) -> String {
    address
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default()
}

/// The local part of an address.
pub fn local_part(address: &str) -> String {
    let a = address.trim().trim_start_matches('<').trim_end_matches('>');
    a.rsplit_once('@')
        .map(|(l, _)| l.to_string())
        .unwrap_or_else(|| a.to_string())
}

/// The plugin's `config = { … }` table. Values are asked from the server once and kept:
/// the table does not change while an instance lives, and [`Plugin::init`] runs again for
/// every session.
#[derive(Debug, Clone)]
pub struct Config {
    json: String,
    seen: std::cell::RefCell<Vec<(&'static str, String, Seen)>>,
}

/// A value [`Config`] already asked for.
#[derive(Debug, Clone)]
enum Seen {
    Keys(Vec<String>),
    String(Option<String>),
    Int(Option<i64>),
    Float(Option<f64>),
    Bool(Option<bool>),
    List(Option<Vec<String>>),
    Table(Option<Vec<(String, String)>>),
}

/// Ask the host for `key` as `$kind` once, then answer from [`Config::seen`].
macro_rules! config_value {
    ($self:ident, $key:expr, $kind:ident, $host:expr) => {{
        let kind = stringify!($kind);
        let hit = $self.seen.borrow().iter().find_map(|(k, name, v)| match v {
            Seen::$kind(v) if *k == kind && name == $key => Some(v.clone()),
            _ => None,
        });
        match hit {
            Some(v) => v,
            None => {
                let v = $host;
                $self
                    .seen
                    .borrow_mut()
                    .push((kind, $key.to_string(), Seen::$kind(v.clone())));
                v
            }
        }
    }};
}

impl Config {
    /// The config as the host handed it to `init`.
    pub fn from_json(json: String) -> Self {
        Config {
            json,
            seen: Default::default(),
        }
    }
    /// The whole table as JSON text.
    pub fn json(&self) -> &str {
        &self.json
    }
    /// Top-level keys.
    pub fn keys(&self) -> Vec<String> {
        config_value!(self, "", Keys, host::config_keys(&self.json))
    }
    /// A string (numbers and booleans in text form).
    pub fn string(&self, key: &str) -> Option<String> {
        config_value!(self, key, String, host::config_string(&self.json, key))
    }
    /// A string or `default`.
    pub fn string_or(&self, key: &str, default: &str) -> String {
        self.string(key).unwrap_or_else(|| default.to_string())
    }
    /// An integer.
    pub fn int(&self, key: &str) -> Option<i64> {
        config_value!(self, key, Int, host::config_int(&self.json, key))
    }
    /// An integer or `default`.
    pub fn int_or(&self, key: &str, default: i64) -> i64 {
        self.int(key).unwrap_or(default)
    }
    /// A number.
    pub fn float(&self, key: &str) -> Option<f64> {
        config_value!(self, key, Float, host::config_float(&self.json, key))
    }
    /// A number or `default`.
    pub fn float_or(&self, key: &str, default: f64) -> f64 {
        self.float(key).unwrap_or(default)
    }
    /// A boolean.
    pub fn bool(&self, key: &str) -> Option<bool> {
        config_value!(self, key, Bool, host::config_bool(&self.json, key))
    }
    /// A list of strings (other elements in text form).
    pub fn list(&self, key: &str) -> Option<Vec<String>> {
        config_value!(self, key, List, host::config_list(&self.json, key))
    }
    /// A table of strings (other values in text form).
    pub fn table(&self, key: &str) -> Option<Vec<(String, String)>> {
        config_value!(self, key, Table, host::config_table(&self.json, key))
    }
}

/// Log into the server's log.
pub mod log {
    pub use super::Level;

    /// Log at `level`.
    pub fn log(level: Level, message: &str) {
        super::host::log(level, message)
    }
    /// Log at error level.
    pub fn error(message: &str) {
        log(Level::Error, message)
    }
    /// Log at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message)
    }
    /// Log at info level.
    pub fn info(message: &str) {
        log(Level::Info, message)
    }
    /// Log at debug level.
    pub fn debug(message: &str) {
        log(Level::Debug, message)
    }
}

/// The plugin's persistent key-value store (shared by all its instances).
pub mod kv {
    /// Read a key (None when missing or expired).
    pub fn get(key: &str) -> Result<Option<Vec<u8>>, String> {
        super::host::kv_get(key)
    }
    /// Read a key as text.
    pub fn get_string(key: &str) -> Result<Option<String>, String> {
        Ok(get(key)?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }
    /// Write a key; with `ttl_secs` it expires.
    pub fn set(key: &str, value: &[u8], ttl_secs: Option<u32>) -> Result<(), String> {
        super::host::kv_set(key, value, ttl_secs)
    }
    /// Add `delta` to a counter and return the new value; `ttl_secs` is set when it starts.
    pub fn incr(key: &str, delta: i64, ttl_secs: Option<u32>) -> Result<i64, String> {
        super::host::kv_incr(key, delta, ttl_secs)
    }
}

/// DNS lookups through the server's resolver (limited per call).
pub mod dns {
    pub use super::DnsError;

    /// IPv4 addresses of `name`.
    pub fn a(name: &str) -> Result<Vec<String>, DnsError> {
        super::host::dns("a", name)
    }
    /// IPv6 addresses of `name`.
    pub fn aaaa(name: &str) -> Result<Vec<String>, DnsError> {
        super::host::dns("aaaa", name)
    }
    /// TXT records of `name`.
    pub fn txt(name: &str) -> Result<Vec<String>, DnsError> {
        super::host::dns("txt", name)
    }
    /// PTR names of an IP address.
    pub fn ptr(ip: &str) -> Result<Vec<String>, DnsError> {
        super::host::dns("ptr", ip)
    }
    /// The reversed-label form of an IP address for DNS block lists: "192.0.2.7" →
    /// "7.2.0.192", IPv6 as 32 reversed nibbles. None if `ip` is not an address.
    pub fn reverse_ip(ip: &str) -> Option<String> {
        let ip: std::net::IpAddr = ip.trim().parse().ok()?;
        Some(match ip {
            std::net::IpAddr::V4(v4) => {
                let o = v4.octets();
                format!("{}.{}.{}.{}", o[3], o[2], o[1], o[0])
            }
            std::net::IpAddr::V6(v6) => {
                let mut parts = Vec::with_capacity(32);
                for b in v6.octets().iter().rev() {
                    parts.push(format!("{:x}", b & 0xf));
                    parts.push(format!("{:x}", b >> 4));
                }
                parts.join(".")
            }
        })
    }
}

/// Time.
pub mod clock {
    /// Seconds since the Unix epoch.
    pub fn now() -> i64 {
        super::host::now()
    }
    /// Milliseconds since an arbitrary start.
    pub fn monotonic_ms() -> u64 {
        super::host::monotonic_ms()
    }
}

/// Sender authentication of the current message: the facts Rhai scripts read as `ctx.auth`
/// (SPF from `on_mail` on; DKIM, DMARC and ARC from `on_data` on, for inbound mail on the
/// smtp listener; empty strings where a check did not run).
///
/// ```ignore
/// let a = corvus_sdk::auth::facts();
/// if a.dmarc == "fail" && a.arc != "pass" { return Ok(Outcome::quarantine("DMARC failed")); }
/// ```
pub mod auth {
    pub use super::AuthFacts;

    /// The facts for the message of the current hook call (asked from the host on each call).
    pub fn facts() -> AuthFacts {
        super::host::auth_facts()
    }
}

/// A spam filter's result for the message of the current hook call (WIT 0.4.1): what Rhai
/// scripts read as `ctx.spam`. Set in `on_data` for plugins placed after an `rspamd` entry
/// that scanned the message; `None` otherwise.
///
/// ```ignore
/// if let Some(s) = corvus_sdk::spam::facts() {
///     if s.score > 3.0 && s.symbols.iter().any(|x| x == "R_SPF_FAIL") {
///         return Ok(Outcome::quarantine("spam score with an SPF failure"));
///     }
/// }
/// ```
pub mod spam {
    pub use super::SpamFacts;

    /// The result, asked from the host on each call.
    pub fn facts() -> Option<SpamFacts> {
        super::host::spam_facts()
    }
}

/// The host imports: the real ones in WebAssembly, the [`testing`] mock natively.
#[cfg(target_arch = "wasm32")]
mod host {
    use super::bindings::corvus::plugin as b;
    use super::{DnsError, Level};

    pub fn log(level: Level, message: &str) {
        b::log::log(level, message)
    }
    pub fn kv_get(key: &str) -> Result<Option<Vec<u8>>, String> {
        b::kv::get(key)
    }
    pub fn kv_set(key: &str, value: &[u8], ttl: Option<u32>) -> Result<(), String> {
        b::kv::set(key, value, ttl)
    }
    pub fn kv_incr(key: &str, delta: i64, ttl: Option<u32>) -> Result<i64, String> {
        b::kv::incr(key, delta, ttl)
    }
    pub fn dns(kind: &str, name: &str) -> Result<Vec<String>, DnsError> {
        match kind {
            "a" => b::dns::a(name),
            "aaaa" => b::dns::aaaa(name),
            "txt" => b::dns::txt(name),
            _ => b::dns::ptr(name),
        }
    }
    pub fn now() -> i64 {
        b::clock::now()
    }
    pub fn monotonic_ms() -> u64 {
        b::clock::monotonic_ms()
    }
    pub fn auth_facts() -> super::AuthFacts {
        b::auth::facts()
    }
    pub fn spam_facts() -> Option<super::SpamFacts> {
        b::spam::facts()
    }
    pub fn config_keys(_json: &str) -> Vec<String> {
        b::config::keys()
    }
    pub fn config_string(_json: &str, key: &str) -> Option<String> {
        b::config::get_string(key)
    }
    pub fn config_int(_json: &str, key: &str) -> Option<i64> {
        b::config::get_int(key)
    }
    pub fn config_float(_json: &str, key: &str) -> Option<f64> {
        b::config::get_float(key)
    }
    pub fn config_bool(_json: &str, key: &str) -> Option<bool> {
        b::config::get_bool(key)
    }
    pub fn config_list(_json: &str, key: &str) -> Option<Vec<String>> {
        b::config::get_list(key)
    }
    pub fn config_table(_json: &str, key: &str) -> Option<Vec<(String, String)>> {
        b::config::get_table(key)
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod host {
    pub use super::testing::mock::*;
}

#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

/// Turn a [`Plugin`] type into the component's exports. Use once, at the crate root:
/// `corvus_sdk::export!(MyPlugin);`. Natively (tests) it expands to nothing.
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::__private::{Guest, Instance, Status, answer};
            use $crate::PluginInfo;
            ::std::thread_local! {
                static __CORVUS_PLUGIN: ::std::cell::RefCell<Instance<$plugin>> =
                    const { ::std::cell::RefCell::new(Instance::new()) };
            }
            pub struct __CorvusExport;
            impl Guest for __CorvusExport {
                fn describe() -> PluginInfo {
                    $crate::describe::<$plugin>()
                }
                fn init(
                    config: ::std::string::String,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    __CORVUS_PLUGIN.with(|p| p.borrow_mut().init(config))
                }
                fn on_hook(hook: u32, session: u64) -> Status {
                    answer(__CORVUS_PLUGIN.with(|p| p.borrow_mut().call(hook, session)))
                }
            }
    $crate::bindings::__export_plugin_raw!(__CorvusExport with_types_in $crate::bindings);
        };
    };
}

/// What [`export!`] keeps per instance: the config, and the plugin value of the session being
/// served.
#[doc(hidden)]
pub struct Instance<P> {
    config: Option<Config>,
    plugin: Option<P>,
    /// The session `plugin` belongs to; None for a value `init` built that no session used yet.
    session: Option<u64>,
}

impl<P: Plugin> Instance<P> {
    pub const fn new() -> Self {
        Instance {
            config: None,
            plugin: None,
            session: None,
        }
    }

    /// `init`: build a plugin value now, so a bad config refuses the plugin at load.
    pub fn init(&mut self, config: String) -> Result<(), String> {
        let config = Config::from_json(config);
        self.plugin = Some(P::init(&config)?);
        self.config = Some(config);
        self.session = None;
        Ok(())
    }

    /// A hook call (in `ctx.session`): a new session gets a new plugin value.
    pub fn call_in(&mut self, ctx: &Context) -> HookResult {
        let session = ctx.session;
        let Some(config) = &self.config else {
            return Err("the host called a hook before init".into());
        };
        if self.session != Some(session) {
            if self.session.is_some() || self.plugin.is_none() {
                self.plugin = None;
                self.plugin = Some(P::init(config)?);
            }
            self.session = Some(session);
        }
        match &mut self.plugin {
            Some(p) => dispatch(p, ctx),
            None => Err("the host called a hook before init".into()),
        }
    }

    /// A call of `on-hook`: the host calls only the points `describe` listed.
    #[cfg(target_arch = "wasm32")]
    pub fn call(&mut self, hook: u32, session: u64) -> HookResult {
        let Some(&hook) = ALL_HOOKS.get(hook as usize) else {
            return Err(format!(
                "the host called hook {hook}, one this plugin does not know"
            ));
        };
        self.call_in(&Context {
            hook,
            session,
            src: std::marker::PhantomData,
        })
    }
}

impl<P: Plugin> Default for Instance<P> {
    fn default() -> Self {
        Self::new()
    }
}

/// Hand a hook's result to the host: a plain `next` is the return value alone; anything
/// else goes through the `answer` functions first (the verdict unless `next`, then each
/// action).
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub fn answer(result: HookResult) -> bindings::corvus::plugin::types::Status {
    use bindings::corvus::plugin::answer as host;
    use bindings::corvus::plugin::types::Status;
    match result {
        Ok(o) if o.verdict == Verdict::Next && o.actions == Actions::default() => Status::Next,
        Ok(o) => {
            if o.verdict != Verdict::Next {
                host::verdict(&o.verdict);
            }
            for h in &o.actions.add_headers {
                host::add_header(&h.name, &h.value);
            }
            if let Some(r) = &o.actions.set_rcpt {
                host::set_rcpt(r);
            }
            if let Some(f) = &o.actions.file_into {
                host::file_into(f);
            }
            Status::Done
        }
        Err(message) => {
            host::fail(&message);
            Status::Failed
        }
    }
}

#[doc(hidden)]
pub mod __private {
    pub use super::HookResult;
    pub use super::Instance;
    #[cfg(target_arch = "wasm32")]
    pub use super::answer;
    pub use super::bindings::corvus::plugin::types::Status;
    pub use super::bindings::exports::corvus::plugin::hooks::Guest;
    pub use wit_bindgen;
}
