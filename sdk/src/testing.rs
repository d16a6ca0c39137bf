//! Run a plugin natively against synthetic events: `cargo test` in the plugin's crate, no
//! server and no WebAssembly. The host imports are replaced by an in-memory mock (per test
//! thread): the config table given to [`TestHost::new`], a kv store with expiry on a settable
//! clock, canned DNS answers and captured log lines.
//!
//! ```ignore
//! use corvus_sdk::testing::{TestHost, events};
//! let mut host = TestHost::<MyPlugin>::new(r#"{"threshold": 5}"#).unwrap();
//! let out = host.rcpt("a@example.com", "b@example.org").unwrap();
//! assert_eq!(out.verdict.name(), "next");
//! ```

use std::cell::RefCell;
use std::collections::HashMap;

use super::{AuthFacts, Context, Credentials, DnsError, FetchInfo, Hook, HookResult, Level};
use super::{Instance, Plugin, Route};

/// The facts of a synthetic hook call: what [`Context`]'s methods answer in a test. Build one
/// with [`events`] and change fields as needed.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub hook: Hook,
    pub listener: String,
    pub client_ip: String,
    pub client_ptr: String,
    pub helo: String,
    pub tls: bool,
    pub user: String,
    pub mail_from: String,
    pub rcpt: String,
    pub route: Route,
    pub rcpts: Vec<String>,
    pub spf: String,
    pub dkim: String,
    pub dmarc: String,
    pub credentials: Option<Credentials>,
    pub fetch: Option<FetchInfo>,
    pub remote_mx: Option<String>,
    pub message_size: u64,
    pub message_truncated: bool,
    pub message: Vec<u8>,
}

impl Event {
    /// An event for `hook` from 127.0.0.1 on the smtp listener, every other fact empty.
    pub fn empty(hook: Hook) -> Self {
        Event {
            hook,
            listener: "smtp".into(),
            client_ip: "127.0.0.1".into(),
            client_ptr: String::new(),
            helo: String::new(),
            tls: false,
            user: String::new(),
            mail_from: String::new(),
            rcpt: String::new(),
            route: Route::Unknown,
            rcpts: Vec::new(),
            spf: String::new(),
            dkim: String::new(),
            dmarc: String::new(),
            credentials: None,
            fetch: None,
            remote_mx: None,
            message_size: 0,
            message_truncated: false,
            message: Vec::new(),
        }
    }
}

#[derive(Default)]
struct Mock {
    config: serde_json::Map<String, serde_json::Value>,
    /// key → (value, expiry in clock seconds or 0)
    kv: HashMap<String, (Vec<u8>, i64)>,
    dns: HashMap<(String, String), Result<Vec<String>, DnsError>>,
    logs: Vec<String>,
    now: i64,
    monotonic_ms: u64,
    auth: Option<AuthFacts>,
    spam: Option<crate::SpamFacts>,
}

thread_local! {
    static MOCK: RefCell<Mock> = RefCell::new(Mock { now: 1_700_000_000, ..Mock::default() });
}

fn with<R>(f: impl FnOnce(&mut Mock) -> R) -> R {
    MOCK.with(|m| f(&mut m.borrow_mut()))
}

/// The mock imports (used by the SDK natively).
#[doc(hidden)]
pub mod mock {
    use super::*;

    fn text(v: &serde_json::Value) -> String {
        match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }

    pub fn log(level: Level, message: &str) {
        let l = match level {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        with(|m| m.logs.push(format!("[{l}] {message}")));
    }
    fn check_key(key: &str) -> Result<(), String> {
        if key.is_empty() || key.len() > 1024 {
            Err("kv: keys are 1 to 1024 bytes long".into())
        } else {
            Ok(())
        }
    }
    pub fn kv_get(key: &str) -> Result<Option<Vec<u8>>, String> {
        check_key(key)?;
        Ok(with(|m| match m.kv.get(key) {
            Some((v, exp)) if *exp == 0 || *exp > m.now => Some(v.clone()),
            _ => None,
        }))
    }
    pub fn kv_set(key: &str, value: &[u8], ttl: Option<u32>) -> Result<(), String> {
        check_key(key)?;
        if value.len() > 65536 {
            return Err("kv: values are at most 65536 bytes long".into());
        }
        with(|m| {
            let exp = ttl.map(|t| m.now + t as i64).unwrap_or(0);
            m.kv.insert(key.to_string(), (value.to_vec(), exp));
        });
        Ok(())
    }
    pub fn kv_incr(key: &str, delta: i64, ttl: Option<u32>) -> Result<i64, String> {
        check_key(key)?;
        Ok(with(|m| {
            let now = m.now;
            let (old, exp) = match m.kv.get(key) {
                Some((v, exp)) if *exp == 0 || *exp > now => (
                    std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                        .unwrap_or(0),
                    *exp,
                ),
                _ => (0, ttl.map(|t| now + t as i64).unwrap_or(0)),
            };
            let new = old.saturating_add(delta);
            m.kv.insert(key.to_string(), (new.to_string().into_bytes(), exp));
            new
        }))
    }
    pub fn dns(kind: &str, name: &str) -> Result<Vec<String>, DnsError> {
        let key = (
            kind.to_string(),
            name.trim_end_matches('.').to_ascii_lowercase(),
        );
        with(|m| m.dns.get(&key).cloned().unwrap_or(Err(DnsError::NotFound)))
    }
    pub fn now() -> i64 {
        with(|m| m.now)
    }
    pub fn auth_facts() -> AuthFacts {
        with(|m| m.auth.clone()).unwrap_or_else(super::no_auth_facts)
    }
    pub fn spam_facts() -> Option<crate::SpamFacts> {
        with(|m| m.spam.clone())
    }
    pub fn monotonic_ms() -> u64 {
        with(|m| {
            m.monotonic_ms += 1;
            m.monotonic_ms
        })
    }
    pub fn config_keys(_json: &str) -> Vec<String> {
        with(|m| m.config.keys().cloned().collect())
    }
    pub fn config_string(_json: &str, key: &str) -> Option<String> {
        with(|m| m.config.get(key).filter(|v| !v.is_null()).map(text))
    }
    pub fn config_int(_json: &str, key: &str) -> Option<i64> {
        with(|m| {
            m.config.get(key).and_then(|v| {
                v.as_i64()
                    .or_else(|| v.as_f64().map(|f| f as i64))
                    .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            })
        })
    }
    pub fn config_float(_json: &str, key: &str) -> Option<f64> {
        with(|m| {
            m.config.get(key).and_then(|v| {
                v.as_f64()
                    .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            })
        })
    }
    pub fn config_bool(_json: &str, key: &str) -> Option<bool> {
        with(|m| m.config.get(key).and_then(|v| v.as_bool()))
    }
    pub fn config_list(_json: &str, key: &str) -> Option<Vec<String>> {
        with(|m| {
            m.config
                .get(key)
                .and_then(|v| v.as_array())
                .map(|a| a.iter().map(text).collect())
        })
    }
    pub fn config_table(_json: &str, key: &str) -> Option<Vec<(String, String)>> {
        with(|m| {
            m.config
                .get(key)
                .and_then(|v| v.as_object())
                .map(|o| o.iter().map(|(k, v)| (k.clone(), text(v))).collect())
        })
    }
}

/// Synthetic events: contexts as the server would build them at each hook.
pub mod events {
    use super::super::{Credentials, FetchInfo, Hook, Route};
    use super::Event;

    /// A client at `ip` connected.
    pub fn connect(ip: &str) -> Event {
        let mut c = Event::empty(Hook::Connect);
        c.client_ip = ip.to_string();
        c
    }
    /// EHLO `name`.
    pub fn helo(ip: &str, name: &str) -> Event {
        let mut c = connect(ip);
        c.hook = Hook::Helo;
        c.helo = name.to_string();
        c
    }
    /// AUTH with a username and password; `valid` is what the account store said.
    pub fn auth(username: &str, password: &str, valid: bool) -> Event {
        let mut c = helo("127.0.0.1", "client.example");
        c.hook = Hook::Auth;
        c.listener = "submission".into();
        c.credentials = Some(Credentials {
            username: username.to_string(),
            password: password.to_string(),
            mechanism: "PLAIN".into(),
            valid,
        });
        c
    }
    /// MAIL FROM.
    pub fn mail(from: &str) -> Event {
        let mut c = helo("127.0.0.1", "client.example");
        c.hook = Hook::Mail;
        c.mail_from = from.to_string();
        c
    }
    /// RCPT TO (`to`), after MAIL FROM `from`.
    pub fn rcpt(from: &str, to: &str) -> Event {
        let mut c = mail(from);
        c.hook = Hook::Rcpt;
        c.rcpt = to.to_string();
        c.route = Route::Unknown;
        c
    }
    /// End of DATA of a message of `size` bytes.
    pub fn data(from: &str, rcpts: &[&str], size: usize) -> Event {
        let mut c = mail(from);
        c.hook = Hook::Data;
        c.rcpts = rcpts.iter().map(|r| r.to_string()).collect();
        c.message_size = size as u64;
        c
    }
    /// Before delivery to `rcpt`.
    pub fn delivery(from: &str, rcpt: &str, size: usize) -> Event {
        let mut c = data(from, &[rcpt], size);
        c.hook = Hook::Delivery;
        c.rcpt = rcpt.to_string();
        c
    }
    /// Before serving a message over IMAP.
    pub fn fetch(user: &str, mailbox: &str, uid: u32) -> Event {
        let mut c = Event::empty(Hook::Fetch);
        c.listener = "imap".into();
        c.user = user.to_string();
        c.fetch = Some(FetchInfo {
            mailbox: mailbox.to_string(),
            uid,
            protocol: "imap".into(),
        });
        c
    }
}

/// A plugin under test with the mock host, as one instance serving one session. The mock is
/// per thread and is reset by [`TestHost::new`].
pub struct TestHost<P: Plugin> {
    instance: Instance<P>,
    session: u64,
}

impl<P: Plugin> TestHost<P> {
    /// Reset the mock, set the config table (JSON text; "" or "{}" for none) and run `init`.
    pub fn new(config_json: &str) -> Result<Self, String> {
        let json = if config_json.trim().is_empty() {
            "{}"
        } else {
            config_json
        };
        let config: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(json).map_err(|e| format!("config is not a JSON object: {e}"))?;
        with(|m| {
            *m = Mock {
                config,
                now: 1_700_000_000,
                ..Mock::default()
            }
        });
        let mut instance = Instance::new();
        instance.init(json.to_string())?;
        Ok(TestHost {
            instance,
            session: 1,
        })
    }

    /// Another instance of the same plugin, sharing the kv store, DNS answers, clock and log.
    pub fn new_instance(&self) -> Result<Self, String> {
        let json = with(|m| serde_json::Value::Object(m.config.clone()).to_string());
        let mut instance = Instance::new();
        instance.init(json)?;
        Ok(TestHost {
            instance,
            session: self.session + 1000,
        })
    }

    /// Let this instance serve the next session, as the server does with idle instances:
    /// the plugin value is built again, so per-session state starts afresh.
    pub fn next_session(&mut self) {
        self.session += 1;
    }

    /// Call the hook `event.hook` as the server would, in this host's session: hooks the
    /// plugin does not declare in [`Plugin::HOOKS`] are not called (the outcome is `next`).
    /// `message` (data, delivery), when not empty, is what [`Context::message`] answers
    /// (otherwise `event.message`).
    pub fn call(&mut self, event: &Event, message: &[u8]) -> HookResult {
        if !P::HOOKS.contains(&event.hook) {
            return Ok(super::Outcome::next());
        }
        let mut event = event.clone();
        if matches!(event.hook, Hook::Data | Hook::Delivery) && !message.is_empty() {
            event.message = message.to_vec();
            if event.message_size == 0 {
                event.message_size = message.len() as u64;
            }
        }
        let ctx = Context {
            hook: event.hook,
            session: self.session,
            src: &event,
        };
        self.instance.call_in(&ctx)
    }

    /// on-connect from `ip`.
    pub fn connect(&mut self, ip: &str) -> HookResult {
        self.call(&events::connect(ip), b"")
    }
    /// on-helo.
    pub fn helo(&mut self, ip: &str, name: &str) -> HookResult {
        self.call(&events::helo(ip, name), b"")
    }
    /// on-auth.
    pub fn auth(&mut self, username: &str, password: &str, valid: bool) -> HookResult {
        self.call(&events::auth(username, password, valid), b"")
    }
    /// on-mail.
    pub fn mail(&mut self, from: &str) -> HookResult {
        self.call(&events::mail(from), b"")
    }
    /// on-rcpt.
    pub fn rcpt(&mut self, from: &str, to: &str) -> HookResult {
        self.call(&events::rcpt(from, to), b"")
    }
    /// on-data with `message` (LF line ends are turned into CRLF, as the server hands them).
    pub fn data(&mut self, from: &str, rcpts: &[&str], message: &str) -> HookResult {
        let raw = crlf(message);
        self.call(&events::data(from, rcpts, raw.len()), &raw)
    }

    /// Log lines so far, "[level] text".
    pub fn logs(&self) -> Vec<String> {
        with(|m| m.logs.clone())
    }
    /// Answer DNS lookups of `kind` ("a", "aaaa", "txt", "ptr") for `name`.
    pub fn set_dns(&self, kind: &str, name: &str, answer: Result<Vec<String>, DnsError>) {
        with(|m| {
            m.dns.insert(
                (
                    kind.to_string(),
                    name.trim_end_matches('.').to_ascii_lowercase(),
                ),
                answer,
            )
        });
    }
    /// What [`crate::auth::facts`] answers from now on (until then: every field empty, as
    /// for a message no check ran on).
    pub fn set_auth(&self, facts: AuthFacts) {
        with(|m| m.auth = Some(facts));
    }
    /// What [`crate::spam::facts`] answers from now on (until then: `None`, no filter ran).
    pub fn set_spam(&self, facts: Option<crate::SpamFacts>) {
        with(|m| m.spam = facts);
    }
    /// Move the mock clock forward (kv expiry follows it).
    pub fn advance_clock(&self, secs: i64) {
        with(|m| m.now += secs);
    }
    /// Read the kv store directly.
    pub fn kv(&self, key: &str) -> Option<Vec<u8>> {
        mock::kv_get(key).ok().flatten()
    }
}

/// Sender authentication facts with every field empty (no check ran); a base for
/// [`TestHost::set_auth`]: `AuthFacts { dmarc: "fail".into(), ..no_auth_facts() }`.
pub fn no_auth_facts() -> AuthFacts {
    AuthFacts {
        spf: String::new(),
        spf_domain: String::new(),
        spf_helo: String::new(),
        dkim: String::new(),
        dkim_domains: Vec::new(),
        dmarc: String::new(),
        dmarc_domain: String::new(),
        dmarc_policy: String::new(),
        arc: String::new(),
        arc_sealer: String::new(),
        action: String::new(),
    }
}

/// `text` with bare LF line ends turned into CRLF.
pub fn crlf(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 40);
    let mut prev = 0u8;
    for &b in text.as_bytes() {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}
