//! Configuration: one TOML file plus `CORVUS_` environment overrides, loaded with figment
//! into one struct tree that rejects unknown keys.
//!
//! Which settings reload on SIGHUP (and `corvus reload`): the `[[hooks]]` list, whose scripts
//! are recompiled; every other setting is read at start only.

use crate::listener::Listener;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Name used in greetings, `Received` headers and the self-signed certificate.
    pub hostname: String,
    /// Directory holding the sled store, generated TLS files and the control socket.
    pub data_dir: PathBuf,
    /// Local mail domains (more can be added at run time with `corvus domain add`).
    pub domains: Vec<String>,
    /// Where mail to `postmaster@` any local domain (and to `<Postmaster>`) goes when no
    /// account or alias of that name exists (RFC 5321 §4.5.1); unset: the first account of
    /// the first local domain that has one.
    pub postmaster: Option<String>,
    /// Listening addresses; a missing key means that listener is off.
    pub listen: Listen,
    /// TLS certificate and key.
    pub tls: Tls,
    /// DNS resolver settings.
    pub dns: Dns,
    /// Where mail, accounts and the queue are kept.
    pub store: StoreConfig,
    /// Outbound delivery settings.
    pub delivery: Delivery,
    /// SMTP server behaviour and limits.
    pub smtp: Smtp,
    /// IMAP server behaviour and limits.
    pub imap: Imap,
    /// POP3 server behaviour and limits.
    pub pop3: Pop3,
    /// Inbound sender authentication (SPF, DKIM, DMARC, ARC) on the `smtp` listener.
    pub sender_auth: SenderAuth,
    /// Limits on WASM plugins (`[[hooks]] plugin = ...`), one set for the process.
    pub plugins: Plugins,
    /// Logging.
    pub log: Log,
    /// How long running sessions get to finish after SIGTERM/SIGINT.
    #[serde(with = "dur")]
    pub shutdown_timeout: Duration,
    /// Ordered hook entries (`[[hooks]]`), run after the built-in policy at every hook point.
    pub hooks: Vec<HookEntry>,
    /// The file this was loaded from (not a key; set by [`Config::load`], used for reloads).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// One `[[hooks]]` entry: a Rhai script (`script`) or a WASM plugin (`plugin`), and the table
/// handed to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookEntry {
    /// Path of the Rhai script; a relative path is resolved against the config file's directory.
    /// Empty for a plugin entry.
    #[serde(default)]
    pub script: PathBuf,
    /// Path of a WASM plugin (a `wasm32-wasip2` component built with the SDK); relative like
    /// `script`. Give either `script` or `plugin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<PathBuf>,
    /// Table given to the script as `ctx.config` and to its optional `init(config)`.
    #[serde(default)]
    pub config: serde_json::Map<String, serde_json::Value>,
    /// When a call fails (error, limit exceeded): "tempfail" (451, the default), "continue"
    /// (skip this entry) or "reject" (550).
    #[serde(default)]
    pub on_error: crate::hooks::OnError,
}

/// Top-level keys of [`Config`], for picking settings out of the environment.
const TOP_LEVEL_KEYS: &[&str] = &[
    "hostname",
    "data_dir",
    "domains",
    "listen",
    "tls",
    "dns",
    "store",
    "delivery",
    "smtp",
    "imap",
    "pop3",
    "sender_auth",
    "plugins",
    "log",
    "shutdown_timeout",
];

/// Listener addresses: each an address or a list of addresses.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    /// SMTP for inbound mail (port 25 in production).
    pub smtp: Option<Addrs>,
    /// Message submission with STARTTLS (port 587).
    pub submission: Option<Addrs>,
    /// Message submission over implicit TLS (port 465, RFC 8314).
    pub submissions: Option<Addrs>,
    /// IMAP with STARTTLS (port 143).
    pub imap: Option<Addrs>,
    /// IMAP over implicit TLS (port 993).
    pub imaps: Option<Addrs>,
    /// POP3 with STLS (port 110).
    pub pop3: Option<Addrs>,
    /// POP3 over implicit TLS (port 995).
    pub pop3s: Option<Addrs>,
}

/// One address or a list of them, as written in the file (validated by [`Config::check`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Addrs {
    /// `smtp = "0.0.0.0:25"`
    One(String),
    /// `smtp = ["0.0.0.0:25", "[::]:25"]`
    Many(Vec<String>),
}

impl Addrs {
    fn strings(&self) -> Vec<&str> {
        match self {
            Addrs::One(s) => vec![s.as_str()],
            Addrs::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// TLS files.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// PEM certificate chain. Without `cert` and `key`, a self-signed certificate is generated
    /// into `data_dir/tls/` on first start and reused.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
    /// PEM file of extra CA certificates trusted for outbound TLS (the smart host, MX
    /// delivery's verification record), besides the system's roots. Read at start.
    pub trust_roots: Option<PathBuf>,
}

/// DNS resolver settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dns {
    /// Name servers as `ip:port`; empty means the system resolver (/etc/resolv.conf).
    pub nameservers: Vec<String>,
}

/// `[store]`: the storage backend.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Which backend keeps the data.
    pub backend: StoreBackend,
}

/// Storage backends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// sled, embedded, in `data_dir/store` (one process).
    #[default]
    Sled,
}

/// Outbound delivery settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Delivery {
    /// Remote SMTP port for outbound delivery.
    pub port: u16,
    /// Retry intervals after a temporary failure; the last one repeats.
    #[serde(with = "dur_list")]
    pub retry: Vec<Duration>,
    /// Give up (and bounce) after this long in the queue.
    #[serde(with = "dur")]
    pub expire: Duration,
    /// Send everything through this smart host (`host:port`) instead of looking up MX records.
    pub relay: Option<String>,
    /// User name for AUTH PLAIN at the smart host.
    pub relay_user: Option<String>,
    /// Password for AUTH PLAIN at the smart host.
    pub relay_password: Option<String>,
    /// Refuse to send to the smart host without STARTTLS.
    pub relay_require_tls: bool,
    /// Send the sender a "delayed" notice once a message has waited this long (off when unset).
    #[serde(with = "opt_dur", skip_serializing_if = "Option::is_none")]
    pub delay_warning: Option<Duration>,
    /// Source address of outbound connections (the address your SPF record and PTR name
    /// cover, on a host with several); unset: the system chooses.
    pub source_ip: Option<std::net::IpAddr>,
    /// Name given in EHLO to remote servers; unset: `hostname`.
    pub helo_name: Option<String>,
    /// Outbound deliveries in progress at once.
    pub max_concurrency: usize,
    /// Outbound deliveries in progress at once to one destination domain.
    pub max_per_domain: usize,
}

/// SMTP server behaviour and limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Smtp {
    /// Largest message accepted, in bytes (advertised with SIZE).
    pub max_message_size: u64,
    /// Message bytes all SMTP sessions together may hold in memory while receiving; a
    /// message that finds no room is answered `452 4.3.1` (try again later).
    pub max_message_memory: u64,
    /// Most recipients in one transaction (advertised as LIMITS RCPTMAX).
    pub max_recipients: usize,
    /// Most transactions in one session (advertised as LIMITS MAILMAX).
    pub max_messages_per_session: usize,
    /// Longest command line in bytes, CRLF included.
    pub max_command_line: usize,
    /// Longest line inside a message, in bytes, CRLF included.
    pub max_data_line: usize,
    /// Time to wait for a command (RFC 5321 §4.5.3.2 suggests 5 minutes).
    #[serde(with = "dur")]
    pub command_timeout: Duration,
    /// Time to wait for each block of message data.
    #[serde(with = "dur")]
    pub data_timeout: Duration,
    /// Longest whole session.
    #[serde(with = "dur")]
    pub session_timeout: Duration,
    /// Connections open at once, all clients together.
    pub max_connections: usize,
    /// Connections open at once from one client IP.
    pub max_connections_per_ip: usize,
    /// SMTP connections (smtp, submission, submissions together) open at once, so SMTP
    /// cannot take every one of `max_connections`.
    pub max_smtp_connections: usize,
    /// Bad commands in one session before it is closed.
    pub max_errors: usize,
    /// Failed logins at one account from one IP within `auth_fail_window` before that IP is
    /// refused for that account (SMTP, IMAP and POP3 together; a success resets only its own
    /// account's count).
    pub max_auth_failures: u32,
    /// Failed logins from one IP, at any accounts, within `auth_fail_window` before that IP
    /// is refused for every account (successes do not reset it).
    pub max_auth_failures_per_ip: u32,
    /// Window (and back-off) for `max_auth_failures`.
    #[serde(with = "dur")]
    pub auth_fail_window: Duration,
    /// Offer AUTH on connections without TLS (off: AUTH needs STARTTLS or implicit TLS).
    pub allow_plaintext_auth: bool,
    /// Client networks that may relay without AUTH, as Postfix's `mynetworks`: printers and
    /// applications on a LAN (`["10.0.0.0/8", "192.0.2.7"]`). Empty by default: localhost
    /// gets nothing either. Every other client still needs AUTH to send elsewhere.
    pub relay_networks: Vec<String>,
    /// Offer AUTH on the `smtp` (port 25) listener too. Off: AUTH belongs on submission; an
    /// MX that takes AUTH is a password-guessing target, and a session authenticated there
    /// relays.
    pub auth_on_smtp: bool,
    /// Answer VRFY with 250/550 for local users; off answers 252 to everything.
    pub vrfy: bool,
    /// Let an authenticated user send with any MAIL FROM, not only its own addresses.
    pub allow_any_sender: bool,
    /// What to do when the client's PTR name does not resolve back to its IP (FCrDNS):
    /// "record" (only note it) or "reject".
    pub fcrdns: FcrdnsPolicy,
    /// Bare LF or bare CR inside DATA: "reject" (550 5.6.0, RFC 5321 §2.3.8) or "normalize"
    /// (store as CRLF).
    pub bare_lf: BareLfPolicy,
}

/// A network of `smtp.relay_networks`: `10.0.0.0/8`, `2001:db8::/32` or one address.
fn parse_network(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

impl Smtp {
    /// Whether `ip` is in `relay_networks` (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn in_relay_networks(&self, ip: std::net::IpAddr) -> bool {
        if self.relay_networks.is_empty() {
            return false;
        }
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        self.relay_networks
            .iter()
            .filter_map(|n| parse_network(n))
            .any(|n| n.contains(&ip))
    }
}

/// IMAP server behaviour and limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Imap {
    /// Allow LOGIN/AUTHENTICATE without TLS.
    pub allow_plaintext_auth: bool,
    /// Largest literal (APPEND message or string) in bytes.
    pub max_literal: u64,
    /// Longest command line in bytes (literals not counted).
    pub max_line: usize,
    /// Inactivity before an unauthenticated or idle session is closed (RFC 9051 §5.4: ≥ 30m
    /// once authenticated).
    #[serde(with = "dur")]
    pub idle_timeout: Duration,
    /// Time allowed to log in after connecting.
    #[serde(with = "dur")]
    pub login_timeout: Duration,
    /// Bad commands in one session before it is closed.
    pub max_errors: usize,
    /// IMAP connections (imap and imaps together) open at once, so IMAP cannot take every
    /// one of `smtp.max_connections`.
    pub max_connections: usize,
    /// Logged-in sessions one user may hold at once, from all addresses together; one more
    /// LOGIN/AUTHENTICATE gets `NO [UNAVAILABLE]`. (Dovecot's `mail_max_userip_connections`
    /// is 10 per user and IP; 20 per user fits a phone, a laptop and a tablet with a few
    /// connections each.)
    pub max_connections_per_user: usize,
}

impl Default for Imap {
    fn default() -> Self {
        Imap {
            allow_plaintext_auth: false,
            max_literal: 64 * 1024 * 1024,
            max_line: 64 * 1024,
            idle_timeout: Duration::from_secs(30 * 60),
            login_timeout: Duration::from_secs(60),
            max_errors: 20,
            max_connections: 6_000,
            max_connections_per_user: 20,
        }
    }
}

/// POP3 server behaviour and limits (the `pop3` and `pop3s` listeners).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pop3 {
    /// Accept USER/PASS and AUTH on the plain `pop3` listener before STLS (off: they are
    /// refused with `-ERR [AUTH]` until the connection is encrypted, RFC 2595 §2.2).
    pub allow_plaintext_auth: bool,
    /// Close a session that sends nothing for this long, without entering the UPDATE state
    /// (RFC 1939 §3 asks for at least 10 minutes).
    #[serde(with = "dur")]
    pub idle_timeout: Duration,
    /// Time allowed to log in after connecting, however busy the client is meanwhile.
    #[serde(with = "dur")]
    pub login_timeout: Duration,
    /// Bad commands in one session before it is closed.
    pub max_errors: usize,
    /// POP3 connections (pop3 and pop3s together) open at once, so POP3 cannot take every
    /// one of `smtp.max_connections`.
    pub max_connections: usize,
}

impl Default for Pop3 {
    fn default() -> Self {
        Pop3 {
            allow_plaintext_auth: false,
            idle_timeout: Duration::from_secs(600),
            login_timeout: Duration::from_secs(60),
            max_errors: 10,
            max_connections: 2_000,
        }
    }
}

/// Limits on WASM plugins. Every call of every plugin runs under them; a call that exceeds
/// one fails alone (its hook's `on_error` applies). They size the instance pool, so a change
/// takes effect at the next start, not on reload.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Plugins {
    /// Guest CPU time per call (measured in 10 ms ticks).
    #[serde(with = "dur")]
    pub cpu_time: Duration,
    /// Wall-clock time per call, host calls such as DNS lookups included.
    #[serde(with = "dur")]
    pub wall_time: Duration,
    /// Linear memory per plugin instance, in MiB.
    pub memory_mib: u32,
    /// Largest message handed to on-data / on-delivery, in bytes; a longer one is cut and
    /// flagged as truncated in the context.
    pub max_message: usize,
    /// DNS lookups per call.
    pub dns_lookups: u32,
    /// Time per DNS lookup.
    #[serde(with = "dur")]
    pub dns_timeout: Duration,
    /// Log lines per call (each cut to 4 KiB).
    pub log_lines: u32,
    /// Plugin instances alive at once across all sessions. The pool reserves (but does not
    /// commit) about `instances × 2 × memory_mib` of address space.
    pub instances: u32,
}

impl Default for Plugins {
    fn default() -> Self {
        Plugins {
            cpu_time: Duration::from_millis(100),
            wall_time: Duration::from_secs(5),
            memory_mib: 128,
            max_message: 32 << 20,
            dns_lookups: 10,
            dns_timeout: Duration::from_secs(2),
            log_lines: 100,
            instances: 256,
        }
    }
}

/// Inbound sender authentication on the `smtp` listener (submission is never checked: its
/// senders have logged in).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SenderAuth {
    /// Check SPF, DKIM, DMARC and ARC and add an `Authentication-Results` header to every
    /// message received on `smtp`. Off: no checks and no header (forged
    /// `Authentication-Results` claiming our hostname are removed either way).
    pub enabled: bool,
    /// Refuse MAIL FROM with 550 5.7.23 when SPF for the sender's domain (for `<>`, the HELO
    /// name) is a hard `fail`. Off by default: forwarded mail fails SPF too.
    pub spf_reject_fail: bool,
    /// What a DMARC failure does: "enforce" (p=reject: 550 5.7.1 at end of data;
    /// p=quarantine: filed into the recipient's Junk), "quarantine" (both into Junk) or
    /// "monitor" (only recorded in the header and for hooks).
    pub dmarc: DmarcMode,
    /// Domains whose ARC seals are trusted: when the ARC chain validates and its newest seal
    /// is from one of them, a DMARC failure is not acted on (mail they forwarded).
    pub trusted_arc_sealers: Vec<String>,
    /// ARC-seal messages that an alias forwards to another domain, with the DKIM key of the
    /// alias's domain (`corvus dkim generate`), so the next hop can trust our results.
    pub arc_seal: bool,
    /// Longest time the DNS work of one check may take (SPF at MAIL FROM; DKIM, ARC and
    /// DMARC at end of data each); a check cut short reports `temperror`.
    #[serde(with = "dur")]
    pub timeout: Duration,
    /// Entries in each cache of parsed DNS records (TXT, MX, A, AAAA, PTR); an entry lives no
    /// longer than its record's TTL.
    pub cache_entries: usize,
    /// DKIM signatures verified per message; further ones are ignored.
    pub max_dkim_signatures: usize,
    /// Overrides for sender domains (the MAIL FROM domain for `spf_reject_fail`, the From
    /// domain for `dmarc`); a key matches the domain and its subdomains, the longest wins:
    /// `[sender_auth.domains."partner.example"]` with `dmarc = "monitor"`.
    pub domains: std::collections::BTreeMap<String, SenderAuthDomain>,
    /// DMARC aggregate reports to the domains that ask for them (`rua`).
    pub dmarc_reports: DmarcReports,
}

/// DMARC aggregate reporting (RFC 7489 §7.2).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DmarcReports {
    /// Collect DMARC results per period and send aggregate reports to the `rua` addresses
    /// of the domains evaluated (only addresses the domain has authorized, RFC 7489 §7.1).
    pub enabled: bool,
    /// Length of a reporting period (periods start at multiples of it, UTC).
    #[serde(with = "dur")]
    pub interval: Duration,
    /// Sender and contact address of the reports; default `postmaster@` the first domain.
    pub from: Option<String>,
    /// Organization named in the reports; default the hostname.
    pub org_name: Option<String>,
    /// Most policy domains collected per period.
    pub max_domains: usize,
    /// Most distinct result rows per report (more are counted as dropped).
    pub max_rows: usize,
}

impl Default for DmarcReports {
    fn default() -> Self {
        DmarcReports {
            enabled: false,
            interval: Duration::from_secs(86400),
            from: None,
            org_name: None,
            max_domains: 1000,
            max_rows: 1000,
        }
    }
}

/// Per-domain overrides of [`SenderAuth`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SenderAuthDomain {
    /// Replaces `spf_reject_fail` for MAIL FROM domains under this one.
    pub spf_reject_fail: Option<bool>,
    /// Replaces `dmarc` for From domains under this one.
    pub dmarc: Option<DmarcMode>,
}

/// What a DMARC failure does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DmarcMode {
    /// Honour the published policy: reject or quarantine.
    Enforce,
    /// Quarantine (Junk) instead of rejecting.
    Quarantine,
    /// Record only.
    Monitor,
}

impl Default for SenderAuth {
    fn default() -> Self {
        SenderAuth {
            enabled: true,
            spf_reject_fail: false,
            dmarc: DmarcMode::Enforce,
            trusted_arc_sealers: Vec::new(),
            arc_seal: true,
            timeout: Duration::from_secs(20),
            cache_entries: 10_000,
            max_dkim_signatures: 10,
            domains: Default::default(),
            dmarc_reports: DmarcReports::default(),
        }
    }
}

/// FCrDNS mismatch policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FcrdnsPolicy {
    /// Note the result in the Received header and hook context only.
    Record,
    /// Refuse the connection with 550 5.7.25.
    Reject,
}

/// What to do with bare LF / bare CR in message data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BareLfPolicy {
    /// Reject the message after end of data.
    Reject,
    /// Store the line with CRLF.
    Normalize,
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// Filter directive such as "info" or "corvus=debug"; `RUST_LOG` wins when set.
    pub level: String,
    /// "plain" or "json".
    pub format: LogFormat,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

impl Default for Config {
    /// The defaults used under a config file: every listener off unless the file names it.
    fn default() -> Self {
        Config {
            hostname: "localhost".into(),
            data_dir: PathBuf::from("./corvus-data"),
            domains: vec!["localhost".into()],
            postmaster: None,
            listen: Listen::default(),
            tls: Tls::default(),
            dns: Dns::default(),
            store: StoreConfig::default(),
            delivery: Delivery::default(),
            smtp: Smtp::default(),
            imap: Imap::default(),
            pop3: Pop3::default(),
            plugins: Plugins::default(),
            sender_auth: SenderAuth::default(),
            log: Log::default(),
            shutdown_timeout: Duration::from_secs(30),
            hooks: Vec::new(),
            source: None,
        }
    }
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            port: 25,
            retry: ["1m", "5m", "30m", "2h", "6h"]
                .iter()
                .map(|s| humantime::parse_duration(s).expect("static"))
                .collect(),
            expire: Duration::from_secs(5 * 86400),
            relay: None,
            relay_user: None,
            relay_password: None,
            relay_require_tls: true,
            source_ip: None,
            helo_name: None,
            delay_warning: None,
            max_concurrency: 50,
            max_per_domain: 10,
        }
    }
}

impl Default for Smtp {
    fn default() -> Self {
        Smtp {
            max_message_size: 50 * 1024 * 1024,
            max_message_memory: 512 * 1024 * 1024,
            max_recipients: 100,
            max_messages_per_session: 100,
            max_command_line: 4096,
            max_data_line: 64 * 1024,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            session_timeout: Duration::from_secs(1800),
            max_connections: 10_000,
            max_connections_per_ip: 50,
            max_smtp_connections: 5_000,
            max_errors: 10,
            max_auth_failures: 5,
            max_auth_failures_per_ip: 10,
            auth_on_smtp: false,
            relay_networks: Vec::new(),
            auth_fail_window: Duration::from_secs(300),
            allow_plaintext_auth: false,
            vrfy: false,
            allow_any_sender: false,
            fcrdns: FcrdnsPolicy::Record,
            bare_lf: BareLfPolicy::Reject,
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".into(),
            format: LogFormat::Plain,
        }
    }
}

impl Config {
    /// The embedded default: every listener on loopback, used when no file is given.
    pub fn embedded() -> Self {
        let one = |p: u16| Some(Addrs::One(format!("127.0.0.1:{p}")));
        Config {
            listen: Listen {
                smtp: one(2525),
                submission: one(2587),
                submissions: one(2465),
                imap: one(2143),
                imaps: one(2993),
                pop3: one(2110),
                pop3s: one(2995),
            },
            ..Config::default()
        }
    }

    /// Load from `file` (or the embedded default when `None`), then apply `CORVUS_`
    /// environment overrides (`__` separates nesting levels: `CORVUS_LISTEN__SMTP`).
    /// Returns every problem found, one line each.
    pub fn load(file: Option<&Path>) -> Result<Config, Vec<String>> {
        let figment = Self::figment(file)?;
        let mut config: Config = figment.extract().map_err(|e| {
            e.into_iter()
                .map(|e| describe_figment_error(&e, file))
                .collect::<Vec<_>>()
        })?;
        if let Some(file) = file {
            let dir = file.parent().unwrap_or(Path::new(""));
            for h in &mut config.hooks {
                if h.script.is_relative() && !h.script.as_os_str().is_empty() {
                    h.script = dir.join(&h.script);
                }
                if let Some(p) = &mut h.plugin
                    && p.is_relative()
                {
                    *p = dir.join(&*p);
                }
            }
            config.source = Some(file.to_path_buf());
        }
        let problems = config.check();
        if problems.is_empty() {
            Ok(config)
        } else {
            // "file: key: what is wrong", like the parse errors above.
            Err(match file {
                Some(f) => problems
                    .into_iter()
                    .map(|p| format!("{}: {p}", f.display()))
                    .collect(),
                None => problems,
            })
        }
    }

    fn figment(file: Option<&Path>) -> Result<Figment, Vec<String>> {
        let base = match file {
            Some(path) => {
                if !path.is_file() {
                    return Err(vec![format!(
                        "{}: no such config file (run without -c for the embedded default, or copy examples/corvus.toml)",
                        path.display()
                    )]);
                }
                Figment::from(Serialized::defaults(Config::default())).merge(Toml::file(path))
            }
            None => Figment::from(Serialized::defaults(Config::embedded())),
        };
        // Only variables whose first segment is a top-level key are settings: CORVUS_CONFIG
        // (the CLI's -c) or a tool's CORVUS_BIN are not. Inside a table, unknown keys are
        // still rejected (CORVUS_SMTP__VRYF is an error).
        let known = |k: &figment::value::UncasedStr| {
            let top = k
                .as_str()
                .split("__")
                .next()
                .unwrap_or("")
                .to_ascii_lowercase();
            TOP_LEVEL_KEYS.contains(&top.as_str())
        };
        Ok(base.merge(Env::prefixed("CORVUS_").filter(known).split("__")))
    }

    /// Validate what the types cannot: addresses, referenced files, domain names.
    pub fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (key, addrs) in self.listen.entries() {
            for s in addrs.strings() {
                if s.parse::<SocketAddr>().is_err() {
                    problems.push(format!(
                        "listen.{key}: {s:?} is not an address; write ip:port, e.g. \"0.0.0.0:25\" or \"[::]:25\""
                    ));
                }
            }
        }
        match (&self.tls.cert, &self.tls.key) {
            (Some(_), None) | (None, Some(_)) => problems.push(
                "tls: set both cert and key, or neither (a self-signed certificate is then generated)".into(),
            ),
            (Some(c), Some(k)) => {
                for (key, p) in [("tls.cert", c), ("tls.key", k)] {
                    if !p.is_file() {
                        problems.push(format!(
                            "{key}: file {} does not exist; fix the path or remove the key to use a self-signed certificate",
                            p.display()
                        ));
                    }
                }
            }
            (None, None) => {}
        }
        for n in &self.smtp.relay_networks {
            if parse_network(n).is_none() {
                problems.push(format!(
                    "smtp.relay_networks: {n:?} is not a network; write an address with a prefix length such as \"10.0.0.0/8\", or one address"
                ));
            }
        }
        if let Some(p) = &self.tls.trust_roots
            && !p.is_file()
        {
            problems.push(format!(
                "tls.trust_roots: file {} does not exist; fix the path (a PEM file of CA certificates) or remove the key",
                p.display()
            ));
        }
        for ns in &self.dns.nameservers {
            if ns.parse::<SocketAddr>().is_err() {
                problems.push(format!(
                    "dns.nameservers: {ns:?} is not ip:port, e.g. \"127.0.0.1:53\""
                ));
            }
        }
        if self.hostname.trim().is_empty() {
            problems.push("hostname: must not be empty".into());
        }
        for d in &self.domains {
            if d.is_empty() || d.contains(['@', ' ', '/']) {
                problems.push(format!("domains: {d:?} is not a domain name"));
            }
        }
        for (i, h) in self.hooks.iter().enumerate() {
            let has_script = !h.script.as_os_str().is_empty();
            if let Some(p) = &h.plugin {
                if has_script {
                    problems.push(format!(
                        "hooks[{i}]: give either script or plugin, not both"
                    ));
                } else if !p.is_file() {
                    problems.push(format!(
                        "hooks[{i}].plugin: file {} does not exist (relative paths start at the config file's directory)",
                        p.display()
                    ));
                }
                continue;
            }
            if !has_script {
                problems.push(format!(
                    "hooks[{i}]: give script = \"file.rhai\" or plugin = \"file.wasm\""
                ));
            } else if !h.script.is_file() {
                problems.push(format!(
                    "hooks[{i}].script: file {} does not exist (relative paths start at the config file's directory)",
                    h.script.display()
                ));
            }
        }
        if let Some(r) = &self.delivery.relay
            && r.rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
        {
            problems.push(format!(
                "delivery.relay: {r:?} is not host:port, e.g. \"smtp.provider.example:587\""
            ));
        }
        let pl = &self.plugins;
        if pl.cpu_time < Duration::from_millis(10) || pl.wall_time < pl.cpu_time {
            problems.push(
                "plugins.cpu_time: must be at least \"10ms\" and not above plugins.wall_time"
                    .into(),
            );
        }
        if !(1..=4096).contains(&pl.memory_mib) {
            problems.push("plugins.memory_mib: must be between 1 and 4096, e.g. 128".into());
        }
        if !(1..=100_000).contains(&pl.instances) {
            problems.push("plugins.instances: must be between 1 and 100000, e.g. 256".into());
        }
        if pl.max_message as u64 >= u64::from(pl.memory_mib) << 20 {
            problems.push(format!(
                "plugins.max_message: {} bytes does not fit in plugins.memory_mib = {}; raise memory_mib or lower max_message",
                pl.max_message, pl.memory_mib
            ));
        }
        if self.imap.max_connections_per_user == 0 {
            problems.push(
                "imap.max_connections_per_user: must be at least 1 (0 would refuse every login)"
                    .into(),
            );
        }
        if self.pop3.idle_timeout.is_zero() {
            problems.push("pop3.idle_timeout: must be longer than zero, e.g. \"10m\"".into());
        }
        if self.delivery.retry.is_empty() {
            problems
                .push("delivery.retry: give at least one interval, e.g. [\"1m\", \"5m\"]".into());
        }
        problems
    }

    /// Parsed listener addresses by protocol key (only the ones that are on).
    pub fn listeners(&self) -> Vec<(Listener, SocketAddr)> {
        let mut out = Vec::new();
        for (key, addrs) in self.listen.entries() {
            for s in addrs.strings() {
                if let Ok(a) = s.parse() {
                    out.push((key, a));
                }
            }
        }
        out
    }

    /// Parsed DNS servers.
    pub fn nameservers(&self) -> Vec<SocketAddr> {
        self.dns
            .nameservers
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect()
    }

    /// Path of the control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.data_dir.join("control.sock")
    }

    /// Path of the sled database.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("store")
    }
}

impl Listen {
    fn entries(&self) -> Vec<(Listener, &Addrs)> {
        [
            (Listener::Smtp, &self.smtp),
            (Listener::Submission, &self.submission),
            (Listener::Submissions, &self.submissions),
            (Listener::Imap, &self.imap),
            (Listener::Imaps, &self.imaps),
            (Listener::Pop3, &self.pop3),
            (Listener::Pop3s, &self.pop3s),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
        .collect()
    }
}

/// Turn a figment error into one line naming the source, the key and the fix.
fn describe_figment_error(e: &figment::Error, file: Option<&Path>) -> String {
    let source = match e.metadata.as_ref() {
        Some(m) if m.name.contains("environment") => "environment".to_string(),
        Some(m) => m
            .source
            .as_ref()
            .map(|s| s.to_string())
            .or_else(|| file.map(|f| f.display().to_string()))
            .unwrap_or_else(|| m.name.to_string()),
        None => file
            .map(|f| f.display().to_string())
            .unwrap_or_else(|| "config".into()),
    };
    let key = if e.path.is_empty() {
        String::new()
    } else {
        format!("{}: ", e.path.join("."))
    };
    let hint = match &e.kind {
        figment::error::Kind::UnknownField(..) => {
            " (remove it or fix its spelling; examples/corvus.toml lists every key)"
        }
        _ => "",
    };
    format!("{source}: {key}{}{hint}", e.kind)
}

/// Serde helpers for durations written like "30s", "5m", "5d".
mod dur {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "{s:?} is not a duration like \"30s\", \"5m\", \"2h\", \"5d\" ({e})"
            ))
        })
    }
}

mod opt_dur {
    use serde::{Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::dur::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::dur::deserialize(d).map(Some)
    }
}

mod dur_list {
    use serde::{Deserialize, Deserializer, Serializer, ser::SerializeSeq};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for d in v {
            seq.serialize_element(&humantime::format_duration(*d).to_string())?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        v.iter()
            .map(|s| {
                humantime::parse_duration(s).map_err(|e| {
                    serde::de::Error::custom(format!("{s:?} is not a duration like \"1m\" ({e})"))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("corvus.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn unknown_key_is_rejected_with_file_and_key() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "hostname = \"mx\"\n[listen]\nsmpt = \"127.0.0.1:25\"\n",
        );
        let errs = Config::load(Some(&p)).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("corvus.toml"), "{errs:?}");
        assert!(errs[0].contains("smpt"), "{errs:?}");
    }

    #[test]
    fn bad_address_and_missing_cert() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "[listen]\nsmtp = \"nonsense\"\n[tls]\ncert = \"/nope/c.pem\"\nkey = \"/nope/k.pem\"\n",
        );
        let errs = Config::load(Some(&p)).unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.contains(".toml: listen.smtp: \"nonsense\"")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.contains(".toml: tls.cert: file /nope/c.pem")),
            "{errs:?}"
        );
    }

    #[test]
    fn missing_listener_is_off_under_a_file() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "[listen]\nimap = [\"127.0.0.1:143\", \"[::1]:143\"]\n",
        );
        let c = Config::load(Some(&p)).unwrap();
        let l = c.listeners();
        assert_eq!(l.len(), 2);
        assert!(l.iter().all(|(k, _)| *k == Listener::Imap));
    }

    #[test]
    fn sender_auth_section_with_domain_overrides() {
        let d = tempfile::tempdir().unwrap();
        let c = Config::load(Some(&write(d.path(), "hostname = \"mx\"\n"))).unwrap();
        assert!(c.sender_auth.enabled && !c.sender_auth.spf_reject_fail);
        assert_eq!(c.sender_auth.dmarc, DmarcMode::Enforce);
        let p = write(
            d.path(),
            "[sender_auth]\nspf_reject_fail = true\ntimeout = \"5s\"\ntrusted_arc_sealers = [\"fwd.example\"]\n[sender_auth.domains.\"partner.example\"]\ndmarc = \"monitor\"\nspf_reject_fail = false\n",
        );
        let c = Config::load(Some(&p)).unwrap();
        assert!(c.sender_auth.spf_reject_fail);
        assert_eq!(c.sender_auth.timeout, Duration::from_secs(5));
        let o = &c.sender_auth.domains["partner.example"];
        assert_eq!(o.dmarc, Some(DmarcMode::Monitor));
        assert_eq!(o.spf_reject_fail, Some(false));
        let p = write(d.path(), "[sender_auth]\ndmarc = \"maybe\"\n");
        let e = Config::load(Some(&p)).unwrap_err();
        assert!(e[0].contains("sender_auth.dmarc"), "{e:?}");
    }

    #[test]
    fn durations_parse() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "[delivery]\nretry = [\"1m\", \"5m\"]\nexpire = \"2d\"\n",
        );
        let c = Config::load(Some(&p)).unwrap();
        assert_eq!(
            c.delivery.retry,
            vec![Duration::from_secs(60), Duration::from_secs(300)]
        );
        assert_eq!(c.delivery.expire, Duration::from_secs(172800));
        let p = write(d.path(), "[delivery]\nexpire = \"soon\"\n");
        let e = Config::load(Some(&p)).unwrap_err();
        assert!(e[0].contains("delivery.expire"), "{e:?}");
    }

    #[test]
    fn hooks_entries_resolve_and_reject_unknown_keys() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("scripts")).unwrap();
        std::fs::write(d.path().join("scripts/a.rhai"), "fn on_rcpt(ctx) {}").unwrap();
        let p = write(
            d.path(),
            "[[hooks]]\nscript = \"scripts/a.rhai\"\nconfig = { delay = \"5m\", n = 3 }\non_error = \"continue\"\n",
        );
        let c = Config::load(Some(&p)).unwrap();
        assert_eq!(c.hooks.len(), 1);
        assert_eq!(c.hooks[0].script, d.path().join("scripts/a.rhai"));
        assert_eq!(c.hooks[0].config["n"], serde_json::json!(3));
        assert_eq!(c.hooks[0].on_error, crate::hooks::OnError::Continue);
        assert_eq!(c.source.as_deref(), Some(p.as_path()));

        let p = write(
            d.path(),
            "[[hooks]]\nscript = \"scripts/a.rhai\"\nonerror = \"x\"\n",
        );
        let e = Config::load(Some(&p)).unwrap_err();
        assert!(e[0].contains("onerror"), "{e:?}");
        let p = write(d.path(), "[[hooks]]\nscript = \"scripts/missing.rhai\"\n");
        let e = Config::load(Some(&p)).unwrap_err();
        assert!(e[0].contains(".toml: hooks[0].script: file"), "{e:?}");
        let p = write(
            d.path(),
            "[[hooks]]\nscript = \"scripts/a.rhai\"\non_error = \"maybe\"\n",
        );
        assert!(Config::load(Some(&p)).is_err());
    }

    #[test]
    fn imap_section() {
        let d = tempfile::tempdir().unwrap();
        let c = Config::load(Some(&write(d.path(), "hostname = \"mx\"\n"))).unwrap();
        assert_eq!(c.imap.max_connections_per_user, 20);
        let p = write(d.path(), "[imap]\nmax_connections_per_user = 3\n");
        assert_eq!(
            Config::load(Some(&p))
                .unwrap()
                .imap
                .max_connections_per_user,
            3
        );
        let p = write(d.path(), "[imap]\nmax_connections_per_users = 3\n");
        let e = Config::load(Some(&p)).unwrap_err();
        assert!(e[0].contains("max_connections_per_users"), "{e:?}");
        let p = write(d.path(), "[imap]\nmax_connections_per_user = 0\n");
        let e = Config::load(Some(&p)).unwrap_err();
        assert!(
            e[0].contains(".toml: imap.max_connections_per_user"),
            "{e:?}"
        );
    }

    #[test]
    fn pop3_section() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "[pop3]\nallow_plaintext_auth = true\nidle_timeout = \"15m\"\nmax_errors = 3\n",
        );
        let c = Config::load(Some(&p)).unwrap();
        assert!(c.pop3.allow_plaintext_auth);
        assert_eq!(c.pop3.idle_timeout, Duration::from_secs(900));
        assert_eq!(c.pop3.max_errors, 3);
        let p = write(d.path(), "[pop3]\nidle = \"1m\"\n");
        let e = Config::load(Some(&p)).unwrap_err();
        assert!(e[0].contains("idle"), "{e:?}");
        let p = write(d.path(), "[pop3]\nidle_timeout = \"0s\"\n");
        let e = Config::load(Some(&p)).unwrap_err();
        assert!(e[0].contains(".toml: pop3.idle_timeout"), "{e:?}");
    }

    /// examples/corvus.toml promises every key: each key of the config tree (from the
    /// serialized defaults) appears there, set or commented out, under its table.
    #[test]
    fn the_example_config_shows_every_key() {
        fn keys(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
            let serde_json::Value::Object(map) = v else {
                return;
            };
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match v {
                    // Maps keyed by domain (empty by default) are shown by example.
                    serde_json::Value::Object(m) if m.is_empty() => {}
                    serde_json::Value::Object(_) => keys(&path, v, out),
                    _ => out.push(path),
                }
            }
        }
        let mut all = Vec::new();
        // Keys left out of the serialized form while unset are set here.
        let mut config = Config::default();
        config.delivery.delay_warning = Some(Duration::from_secs(3600));
        keys("", &serde_json::to_value(config).unwrap(), &mut all);
        keys(
            "",
            &serde_json::to_value(Config::default()).unwrap(),
            &mut all,
        );
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/corvus.toml"),
        )
        .unwrap();
        let mut shown = std::collections::HashSet::new();
        let mut table = String::new();
        for line in text.lines() {
            let t = line.trim();
            if let Some(name) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
                if !name.starts_with('[') {
                    table = name.to_string();
                }
                continue;
            }
            let body = t.trim_start_matches('#').trim_start();
            if let Some((key, _)) = body.split_once('=') {
                let key = key.trim();
                if !key.is_empty()
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit())
                {
                    shown.insert(if table.is_empty() {
                        key.to_string()
                    } else {
                        format!("{table}.{key}")
                    });
                }
            }
        }
        let missing: Vec<&String> = all
            .iter()
            .filter(|k| !shown.contains(*k) && *k != "source" && *k != "hooks")
            .collect();
        assert!(
            missing.is_empty(),
            "keys missing from examples/corvus.toml: {missing:?}"
        );
    }

    #[test]
    fn every_example_config_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "toml") {
                Config::load(Some(&p)).unwrap_or_else(|e| panic!("{}: {e:?}", p.display()));
                n += 1;
            }
        }
        assert!(n >= 1);
    }
}
