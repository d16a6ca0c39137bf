//! The settings of the filter entries of `[[hooks]]` (`rspamd = …`, `milter = …`): their
//! address and their `config` table, read and checked once, so `corvus check`, start-up and
//! reload report the same one-line errors ("config.junk_score: must be a number, e.g. 6.0").

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::config::{HookEntry, HookKind};
use crate::listener::Listener;

/// An `http://host:port` URL (rspamd's workers speak plain HTTP, normally on loopback).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path prefix, "" or `/rspamd` (no trailing slash), for a worker behind a proxy.
    pub prefix: String,
}

impl HttpUrl {
    /// `http://host[:port][/prefix]`; the port defaults to 80.
    pub fn parse(url: &str) -> Result<HttpUrl, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            if url.starts_with("https://") {
                format!("{url:?}: https is not supported; rspamd listens on plain HTTP (keep it on loopback or a private network)")
            } else {
                format!("{url:?} is not an http:// URL, e.g. \"http://127.0.0.1:11333\"")
            }
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{url:?}: unclosed [ in the host"))?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() || host.contains(['@', ' ']) {
            return Err(format!(
                "{url:?} has no host, e.g. \"http://127.0.0.1:11333\""
            ));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{url:?}: {p:?} is not a port"))?,
            None => 80,
        };
        if path.contains(['?', '#', ' ']) {
            return Err(format!("{url:?}: give only a path prefix, no query"));
        }
        Ok(HttpUrl {
            host: host.to_string(),
            port,
            prefix: path.to_string(),
        })
    }

    /// `host:port` for connecting (brackets around IPv6).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.authority(), self.prefix)
    }
}

/// Where a milter listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MilterAddr {
    /// `host:port` (also Postfix's `inet:host:port`).
    Tcp(String),
    /// A Unix socket (`unix:/path`, Postfix's spelling).
    Unix(PathBuf),
}

impl MilterAddr {
    /// `host:port`, `inet:host:port`, `inet:port@host` (Sendmail), `unix:/path` or
    /// `local:/path`.
    pub fn parse(s: &str) -> Result<MilterAddr, String> {
        if let Some(p) = s.strip_prefix("unix:").or_else(|| s.strip_prefix("local:")) {
            if p.is_empty() {
                return Err(format!(
                    "{s:?}: give the socket's path, e.g. \"unix:/run/opendkim/opendkim.sock\""
                ));
            }
            return Ok(MilterAddr::Unix(PathBuf::from(p)));
        }
        let rest = s
            .strip_prefix("inet:")
            .or_else(|| s.strip_prefix("inet6:"))
            .unwrap_or(s);
        let hostport = match rest.split_once('@') {
            Some((port, host)) => format!("{host}:{port}"),
            None => rest.to_string(),
        };
        match hostport.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0) => {
                Ok(MilterAddr::Tcp(hostport))
            }
            _ => Err(format!(
                "{s:?} is not host:port or unix:/path, e.g. \"127.0.0.1:8891\""
            )),
        }
    }
}

impl std::fmt::Display for MilterAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MilterAddr::Tcp(a) => f.write_str(a),
            MilterAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// An rspamd entry's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RspamdSettings {
    /// The normal worker (`/checkv2`).
    pub url: HttpUrl,
    /// The controller (`/learnspam`, `/learnham`): `config.controller`, by default the
    /// worker's host with its port + 1 (rspamd's 11333 and 11334).
    pub controller: HttpUrl,
    /// Score from which a message goes to Junk (`config.junk_score`; None: rspamd's actions
    /// alone decide).
    pub junk_score: Option<f64>,
    /// Score from which a message is refused (`config.reject_score`; None: only rspamd's
    /// `reject` action refuses).
    pub reject_score: Option<f64>,
    /// Learn from users' moves into and out of Junk (`config.learn`, default true).
    pub learn: bool,
    /// The controller's password (`config.password`), sent as `Password:`.
    pub password: String,
    /// How long one scan or learn request may take (`config.timeout`, default 20 s).
    pub timeout: Duration,
    /// The listeners whose mail is scanned (`config.listeners`, default `["smtp"]`).
    pub listeners: Vec<Listener>,
    /// Messages larger than this are not scanned (`config.max_size`, default 25 MiB).
    pub max_size: u64,
}

/// A milter entry's settings (Postfix's names for the timeouts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MilterSettings {
    /// Where it listens.
    pub addr: MilterAddr,
    /// Connecting and negotiating (`config.connect_timeout`, default 30 s, Postfix's
    /// `milter_connect_timeout`).
    pub connect_timeout: Duration,
    /// One SMTP-stage command (`config.command_timeout`, default 30 s).
    pub command_timeout: Duration,
    /// The message content and end of message (`config.content_timeout`, default 300 s).
    pub content_timeout: Duration,
    /// The listeners whose sessions go through it (`config.listeners`, default every SMTP
    /// listener).
    pub listeners: Vec<Listener>,
}

const RSPAMD_KEYS: &[&str] = &[
    "junk_score",
    "reject_score",
    "learn",
    "password",
    "controller",
    "timeout",
    "listeners",
    "max_size",
];
const MILTER_KEYS: &[&str] = &[
    "connect_timeout",
    "command_timeout",
    "content_timeout",
    "listeners",
];

fn unknown_keys(table: &Map<String, Value>, known: &[&str], what: &str) -> Result<(), String> {
    match table.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(format!(
            "config.{k}: not a setting of {what} (known: {})",
            known.join(", ")
        )),
        None => Ok(()),
    }
}

fn number(table: &Map<String, Value>, key: &str, example: &str) -> Result<Option<f64>, String> {
    match table.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| format!("config.{key}: must be a number, e.g. {example}")),
    }
}

fn duration(table: &Map<String, Value>, key: &str, default: Duration) -> Result<Duration, String> {
    let bad = || format!("config.{key}: must be a duration of at least 1s, e.g. \"30s\"");
    match table.get(key) {
        None => Ok(default),
        Some(Value::String(s)) => humantime::parse_duration(s)
            .ok()
            .filter(|d| *d >= Duration::from_secs(1))
            .ok_or_else(bad),
        Some(_) => Err(bad()),
    }
}

fn listeners(table: &Map<String, Value>, default: &[Listener]) -> Result<Vec<Listener>, String> {
    let bad = || {
        "config.listeners: must list SMTP listener names, e.g. [\"smtp\", \"submission\"]"
            .to_string()
    };
    match table.get("listeners") {
        None => Ok(default.to_vec()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .and_then(Listener::from_name)
                    .filter(|l| l.protocol() == crate::listener::Protocol::Smtp)
                    .ok_or_else(bad)
            })
            .collect(),
        Some(_) => Err(bad()),
    }
}

impl RspamdSettings {
    /// The settings of an `rspamd = URL` entry.
    pub fn from_entry(url: &str, table: &Map<String, Value>) -> Result<Self, String> {
        let url = HttpUrl::parse(url).map_err(|e| format!("rspamd: {e}"))?;
        unknown_keys(table, RSPAMD_KEYS, "rspamd")?;
        let controller = match table.get("controller") {
            None => HttpUrl {
                port: url.port.checked_add(1).unwrap_or(url.port),
                ..url.clone()
            },
            Some(Value::String(s)) => {
                HttpUrl::parse(s).map_err(|e| format!("config.controller: {e}"))?
            }
            Some(_) => {
                return Err(
                    "config.controller: must be a URL, e.g. \"http://127.0.0.1:11334\"".into(),
                );
            }
        };
        let learn = match table.get("learn") {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err("config.learn: must be true or false".into()),
        };
        let password = match table.get("password") {
            None => String::new(),
            Some(Value::String(s)) if !s.contains(['\r', '\n']) => s.clone(),
            Some(_) => return Err("config.password: must be a string on one line".into()),
        };
        let max_size = match table.get("max_size") {
            None => 25 << 20,
            Some(v) => v
                .as_u64()
                .filter(|n| *n > 0)
                .ok_or("config.max_size: must be a size in bytes, e.g. 26214400")?,
        };
        Ok(RspamdSettings {
            url,
            controller,
            junk_score: number(table, "junk_score", "6.0")?,
            reject_score: number(table, "reject_score", "15.0")?,
            learn,
            password,
            timeout: duration(table, "timeout", Duration::from_secs(20))?,
            listeners: listeners(table, &[Listener::Smtp])?,
            max_size,
        })
    }
}

impl MilterSettings {
    /// The settings of a `milter = ADDRESS` entry.
    pub fn from_entry(addr: &str, table: &Map<String, Value>) -> Result<Self, String> {
        let addr = MilterAddr::parse(addr).map_err(|e| format!("milter: {e}"))?;
        unknown_keys(table, MILTER_KEYS, "milter")?;
        Ok(MilterSettings {
            addr,
            connect_timeout: duration(table, "connect_timeout", Duration::from_secs(30))?,
            command_timeout: duration(table, "command_timeout", Duration::from_secs(30))?,
            content_timeout: duration(table, "content_timeout", Duration::from_secs(300))?,
            listeners: listeners(
                table,
                &[Listener::Smtp, Listener::Submission, Listener::Submissions],
            )?,
        })
    }
}

/// Check a filter entry's address and config table (Ok for scripts and plugins). The error
/// starts with the key (`rspamd: …`, `config.junk_score: …`).
pub fn check(entry: &HookEntry) -> Result<(), String> {
    match entry.kind() {
        HookKind::Rspamd(url) => RspamdSettings::from_entry(url, &entry.config).map(|_| ()),
        HookKind::Milter(addr) => MilterSettings::from_entry(addr, &entry.config).map(|_| ()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn table(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn rspamd_settings_and_their_defaults() {
        let s = RspamdSettings::from_entry("http://127.0.0.1:11333", &Map::new()).unwrap();
        assert_eq!(s.controller.to_string(), "http://127.0.0.1:11334");
        assert!(s.learn && s.junk_score.is_none() && s.reject_score.is_none());
        assert_eq!(s.listeners, [Listener::Smtp]);
        let s = RspamdSettings::from_entry(
            "http://[::1]:8080/rspamd/",
            &table(
                json!({"junk_score": 6, "reject_score": 15.5, "learn": false,
                "controller": "http://10.0.0.1:11334", "listeners": ["smtp", "submission"]}),
            ),
        )
        .unwrap();
        assert_eq!(s.url.authority(), "[::1]:8080");
        assert_eq!(s.url.prefix, "/rspamd");
        assert_eq!((s.junk_score, s.reject_score), (Some(6.0), Some(15.5)));
        assert_eq!(s.listeners, [Listener::Smtp, Listener::Submission]);
    }

    #[test]
    fn rspamd_errors_name_the_key_and_the_fix() {
        let e = |url: &str, t: Value| RspamdSettings::from_entry(url, &table(t)).unwrap_err();
        assert!(
            e("https://x", json!({})).starts_with("rspamd: \"https://x\": https is not supported")
        );
        assert!(e("127.0.0.1:11333", json!({})).contains("is not an http:// URL"));
        assert!(e("http://x:0", json!({})).contains("is not a port"));
        assert_eq!(
            e("http://x", json!({"junk_score": "high"})),
            "config.junk_score: must be a number, e.g. 6.0"
        );
        assert!(
            e("http://x", json!({"junkscore": 1}))
                .starts_with("config.junkscore: not a setting of rspamd (known: junk_score")
        );
        assert!(e("http://x", json!({"listeners": ["imap"]})).starts_with("config.listeners:"));
        assert!(e("http://x", json!({"timeout": "0s"})).starts_with("config.timeout:"));
    }

    #[test]
    fn milter_addresses_in_postfix_and_sendmail_spelling() {
        let p = |s: &str| MilterAddr::parse(s);
        assert_eq!(
            p("127.0.0.1:8891"),
            Ok(MilterAddr::Tcp("127.0.0.1:8891".into()))
        );
        assert_eq!(
            p("inet:localhost:8891"),
            Ok(MilterAddr::Tcp("localhost:8891".into()))
        );
        assert_eq!(
            p("inet:8891@127.0.0.1"),
            Ok(MilterAddr::Tcp("127.0.0.1:8891".into()))
        );
        assert_eq!(
            p("unix:/run/opendkim/opendkim.sock"),
            Ok(MilterAddr::Unix("/run/opendkim/opendkim.sock".into()))
        );
        assert!(p("unix:").is_err() && p("8891").is_err() && p("host:x").is_err());
        let s = MilterSettings::from_entry("127.0.0.1:8891", &Map::new()).unwrap();
        assert_eq!(s.content_timeout, Duration::from_secs(300));
        assert_eq!(s.listeners.len(), 3);
        let e = MilterSettings::from_entry("127.0.0.1:8891", &table(json!({"command_timeout": 5})))
            .unwrap_err();
        assert!(
            e.starts_with("config.command_timeout: must be a duration"),
            "{e}"
        );
    }
}
