//! Configuration: one TOML file plus `CORVUS_` environment overrides, loaded with figment
//! into one struct tree that rejects unknown keys.
//!
//! Which settings reload on SIGHUP (and `corvus reload`): the `[[hooks]]` list, whose scripts
//! are recompiled; every other setting is read at start only.
//!
//! Here: the struct tree and its defaults; `load.rs` (file, environment, error lines),
//! `check.rs` (validation beyond the types), `duration.rs` ("30s"-style durations).

use crate::listener::Listener;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod check;
mod duration;
mod load;
#[cfg(test)]
mod tests;

use duration::{dur, dur_list, opt_dur};

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
    /// Limits that hold for every listener: connections and failed logins.
    pub limits: Limits,
    /// SMTP server behaviour and limits.
    pub smtp: Smtp,
    /// IMAP server behaviour and limits.
    pub imap: Imap,
    /// POP3 server behaviour and limits.
    pub pop3: Pop3,
    /// ManageSieve server behaviour (the `managesieve` listener, RFC 5804).
    pub managesieve: ManageSieve,
    /// Limits on users' Sieve filters (RFC 5228).
    pub sieve: SieveLimits,
    /// Inbound sender authentication (SPF, DKIM, DMARC, ARC) on the `smtp` listener.
    pub sender_auth: SenderAuth,
    /// The HTTP listeners: admin API, console, metrics, health checks.
    pub http: Http,
    /// The message trace (`corvus trace`, `/api/trace/{id}`).
    pub trace: Trace,
    /// The MTA-STS policy this server publishes for its domains (RFC 8461).
    pub mta_sts: MtaSts,
    /// Certificates from an ACME CA (RFC 8555), e.g. Let's Encrypt.
    pub acme: Acme,
    /// SMTP TLS reports (RFC 8460) about outbound sessions to domains with a policy.
    pub tls_reports: TlsReports,
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
    /// What [`Config::load`] found to warn about (deprecated keys), one line each, naming
    /// the file and the key (not a key).
    #[serde(skip)]
    pub warnings: Vec<String>,
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
    /// URL of rspamd's normal worker (`http://127.0.0.1:11333`): scan messages at the end of
    /// data (`hooks::rspamd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rspamd: Option<String>,
    /// Address of a milter (`127.0.0.1:8891`, `inet:host:port` or `unix:/path.sock`): the
    /// Sendmail/Postfix milter protocol at every SMTP stage (`hooks::milter`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub milter: Option<String>,
    /// Table given to the script as `ctx.config` and to its optional `init(config)`.
    #[serde(default)]
    pub config: serde_json::Map<String, serde_json::Value>,
    /// When a call fails (error, limit exceeded): "tempfail" (451, the default), "continue"
    /// (skip this entry) or "reject" (550).
    #[serde(default)]
    pub on_error: OnError,
}

/// What a `[[hooks]]` entry runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind<'a> {
    /// A Rhai script.
    Script(&'a Path),
    /// A WASM plugin.
    Plugin(&'a Path),
    /// rspamd at this URL.
    Rspamd(&'a str),
    /// A milter at this address.
    Milter(&'a str),
}

impl HookEntry {
    /// What the entry runs (the first given of plugin, rspamd, milter, else the script).
    pub fn kind(&self) -> HookKind<'_> {
        if let Some(p) = &self.plugin {
            HookKind::Plugin(p)
        } else if let Some(u) = &self.rspamd {
            HookKind::Rspamd(u)
        } else if let Some(a) = &self.milter {
            HookKind::Milter(a)
        } else {
            HookKind::Script(&self.script)
        }
    }

    /// How many of script, plugin, rspamd and milter the entry gives.
    pub fn kinds_given(&self) -> usize {
        usize::from(!self.script.as_os_str().is_empty())
            + usize::from(self.plugin.is_some())
            + usize::from(self.rspamd.is_some())
            + usize::from(self.milter.is_some())
    }
}

/// What to do when a hook call fails (the verdict each gives: `hooks::OnError::verdict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Answer 451 (default): the client retries later.
    #[default]
    Tempfail,
    /// Skip the failing hook.
    Continue,
    /// Answer 550.
    Reject,
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
    "limits",
    "smtp",
    "imap",
    "pop3",
    "sender_auth",
    "http",
    "trace",
    "mta_sts",
    "acme",
    "tls_reports",
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
    /// ManageSieve with STARTTLS (port 4190, RFC 5804): users upload their Sieve filters.
    pub managesieve: Option<Addrs>,
    /// Plain HTTP: admin API, web console, `/metrics`, `/healthz`, `/readyz`. Meant for
    /// loopback or a private network.
    pub http: Option<Addrs>,
    /// The same over TLS, with the server's certificate.
    pub https: Option<Addrs>,
}

/// The HTTP listeners (`[http]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Empty: `/metrics` needs no token. Else scrapers send `Authorization: Bearer <token>`.
    pub metrics_token: String,
    /// How long a client has to send a request's headers (slow clients are cut off).
    #[serde(with = "dur")]
    pub header_timeout: Duration,
    /// Largest request body (JSON) the API reads.
    pub max_body: u64,
    /// Concurrent HTTP connections, over all HTTP listeners.
    pub max_connections: usize,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            metrics_token: String::new(),
            header_timeout: Duration::from_secs(10),
            max_body: 1024 * 1024,
            max_connections: 256,
        }
    }
}

/// The message trace (`[trace]`): the story of each message, without its body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Trace {
    /// How long a trace is kept ("7d").
    #[serde(with = "dur")]
    pub retention: Duration,
    /// At most this many traces are kept; the oldest go first.
    pub max_traces: u64,
}

impl Default for Trace {
    fn default() -> Self {
        Trace {
            retention: Duration::from_secs(7 * 86400),
            max_traces: 100_000,
        }
    }
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
    /// Validate DNSSEC for outbound delivery's MX, address and TLSA lookups, and apply DANE
    /// (RFC 7672): TLSA records at `_25._tcp.<mx>` make TLS to that host mandatory and say
    /// which certificate it must present. Other lookups are not validated.
    pub dnssec: bool,
    /// Files of DNSKEY records (zone-file lines, e.g. `. 3600 IN DNSKEY 257 3 13 …`) trusted
    /// as DNSSEC anchors instead of the IANA root keys: for private roots and tests.
    pub trust_anchors: Vec<PathBuf>,
}

/// `[store]`: the storage backend.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Which backend keeps the data.
    pub backend: StoreBackend,
    /// With `backend = "postgres"`: the database, as a URL
    /// (`postgresql://corvus:secret@127.0.0.1:5432/corvus`) or as `key=value` pairs
    /// (`host=/run/postgresql dbname=corvus user=corvus` for a Unix socket).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// With `backend = "postgres"`: database connections per node.
    pub pool_size: usize,
    /// How long a node's claims outlive it: queue entries it delivers, POP3 maildrop
    /// locks and IMAP connection slots of its sessions. Renewed every third of it while
    /// the node runs; after a crash, another node takes them over when it runs out.
    #[serde(with = "dur")]
    pub lease: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::default(),
            url: None,
            pool_size: default_pool_size(),
            lease: Duration::from_secs(120),
        }
    }
}

fn default_pool_size() -> usize {
    16
}

/// Storage backends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// sled, embedded, in `data_dir/store` (one process).
    #[default]
    Sled,
    /// PostgreSQL at `[store] url`, shared by every node that points at it.
    Postgres,
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
    /// Apply the MTA-STS policies (RFC 8461) that destination domains publish: under an
    /// `enforce` policy, mail goes only to the listed MX hosts over TLS with a verified
    /// certificate, or waits in the queue.
    pub mta_sts: bool,
    /// Port of the HTTPS servers MTA-STS policies are fetched from (443; another value only
    /// for tests and private setups).
    pub mta_sts_port: u16,
    /// How long fetching one MTA-STS policy may take, all told.
    #[serde(with = "dur")]
    pub mta_sts_timeout: Duration,
}

/// A policy's mode (RFC 8461 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StsMode {
    /// Deliver only to matching MX hosts over TLS with a certificate valid for the MX name.
    Enforce,
    /// Check and report, deliver anyway.
    Testing,
    /// No policy (a published "none" withdraws an earlier one).
    None,
}

impl StsMode {
    /// The word in a policy file.
    pub fn as_str(self) -> &'static str {
        match self {
            StsMode::Enforce => "enforce",
            StsMode::Testing => "testing",
            StsMode::None => "none",
        }
    }
}

/// Whether `p` is an MX pattern: a host name, or `*.` and a host name.
pub fn valid_mx_pattern(p: &str) -> bool {
    let name = p.strip_prefix("*.").unwrap_or(p);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// `[acme]`: the server's certificate from an ACME CA (RFC 8555), obtained at start when
/// none is valid, renewed at two thirds of its lifetime, kept in the store (shared by the
/// nodes of a shared store; one renews at a time) and presented by every TLS listener from
/// the next handshake on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Acme {
    /// The CA's directory URL (`https://acme-v02.api.letsencrypt.org/directory`); empty:
    /// ACME is off and `[tls]` applies.
    pub directory: String,
    /// Contact address given to the CA (expiry warnings).
    pub email: Option<String>,
    /// Names the certificate covers; empty: `hostname`.
    pub domains: Vec<String>,
    /// How the CA checks control of the names: "tls-alpn-01" (answered on every TLS listener;
    /// the CA connects to port 443) or "http-01" (answered on the `http` listener; the CA
    /// connects to port 80).
    pub challenge: AcmeChallenge,
}

impl Acme {
    /// Whether ACME is configured.
    pub fn enabled(&self) -> bool {
        !self.directory.is_empty()
    }
}

/// `[tls_reports]`: TLS-RPT (RFC 8460), off by default like DMARC reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsReports {
    /// Count outbound TLS successes and failures per policy domain and send each domain that
    /// publishes `_smtp._tls` an aggregate report per period.
    pub enabled: bool,
    /// Length of a reporting period (RFC 8460 §4.1: a day; periods start at multiples of it,
    /// UTC).
    #[serde(with = "dur")]
    pub interval: Duration,
    /// Sender and contact address of the reports; default `postmaster@` the first domain.
    pub from: Option<String>,
    /// Organization named in the reports; default the hostname.
    pub org_name: Option<String>,
}

impl Default for TlsReports {
    fn default() -> Self {
        TlsReports {
            enabled: false,
            interval: Duration::from_secs(86400),
            from: None,
            org_name: None,
        }
    }
}

/// ACME challenge types.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AcmeChallenge {
    /// RFC 8737.
    #[default]
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// RFC 8555 §8.3.
    #[serde(rename = "http-01")]
    Http01,
}

/// The MTA-STS policy served at `https://mta-sts.<domain>/.well-known/mta-sts.txt` for
/// every local domain (`[mta_sts]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MtaSts {
    /// "enforce": senders deliver only over verified TLS to the `mx` hosts; "testing":
    /// they deliver anyway and report failures; "none": the policy is withdrawn.
    pub mode: StsMode,
    /// How long senders keep the policy ("7d"; at most a year).
    #[serde(with = "dur")]
    pub max_age: Duration,
    /// MX host names the policy allows (wildcards like `*.example.org` allowed); empty:
    /// `hostname`.
    pub mx: Vec<String>,
}

impl Default for MtaSts {
    fn default() -> Self {
        MtaSts {
            mode: StsMode::Testing,
            max_age: Duration::from_secs(7 * 86400),
            mx: Vec::new(),
        }
    }
}

/// Limits that hold for every listener (SMTP, IMAP and POP3 together).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Connections open at once, all clients together.
    pub max_connections: usize,
    /// Connections open at once from one client IP.
    pub max_connections_per_ip: usize,
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_connections_per_ip: 50,
            max_auth_failures: 5,
            max_auth_failures_per_ip: 10,
            auth_fail_window: Duration::from_secs(300),
        }
    }
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
    /// Deprecated: `limits.max_connections` (read, with a warning, when that is not set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Deprecated: `limits.max_connections_per_ip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_ip: Option<usize>,
    /// SMTP connections (smtp, submission, submissions together) open at once, so SMTP
    /// cannot take every one of `limits.max_connections`.
    pub max_smtp_connections: usize,
    /// Bad commands in one session before it is closed.
    pub max_errors: usize,
    /// Deprecated: `limits.max_auth_failures`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_auth_failures: Option<u32>,
    /// Deprecated: `limits.max_auth_failures_per_ip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_auth_failures_per_ip: Option<u32>,
    /// Deprecated: `limits.auth_fail_window`.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_dur")]
    pub auth_fail_window: Option<Duration>,
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
    /// one of `limits.max_connections`.
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

/// ManageSieve server behaviour (the `managesieve` listener, RFC 5804).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManageSieve {
    /// Accept AUTHENTICATE before STARTTLS (off: refused with `NO (ENCRYPT-NEEDED)`).
    pub allow_plaintext_auth: bool,
    /// Close a session that sends nothing for this long.
    #[serde(with = "dur")]
    pub idle_timeout: Duration,
    /// Time allowed to log in after connecting.
    #[serde(with = "dur")]
    pub login_timeout: Duration,
    /// Bad commands in one session before it is closed.
    pub max_errors: usize,
    /// ManageSieve connections open at once.
    pub max_connections: usize,
}

impl Default for ManageSieve {
    fn default() -> Self {
        ManageSieve {
            allow_plaintext_auth: false,
            idle_timeout: Duration::from_secs(600),
            login_timeout: Duration::from_secs(60),
            max_errors: 10,
            max_connections: 500,
        }
    }
}

/// Limits on users' Sieve filters (`[sieve]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SieveLimits {
    /// Largest script, in bytes.
    pub max_script_size: usize,
    /// Scripts per user.
    pub max_scripts: usize,
    /// `redirect` actions per message (ManageSieve `MAXREDIRECTS`).
    pub max_redirects: usize,
    /// Actions (keep, fileinto, redirect, vacation) per run.
    pub max_actions: usize,
    /// Evaluation budget per run (tests, comparisons, and bytes compared / 64); a script
    /// over it stops with an error and the message is kept in INBOX.
    pub max_steps: u64,
    /// `vacation` without `:days` answers a sender once in this many days.
    pub vacation_days: u64,
    /// The shortest `:days` honoured.
    pub vacation_min_days: u64,
    /// The longest `:days` honoured.
    pub vacation_max_days: u64,
}

impl Default for SieveLimits {
    fn default() -> Self {
        SieveLimits {
            max_script_size: 64 * 1024,
            max_scripts: 16,
            max_redirects: 4,
            max_actions: 32,
            max_steps: 100_000,
            vacation_days: 7,
            vacation_min_days: 1,
            vacation_max_days: 90,
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
    /// one of `limits.max_connections`.
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
            limits: Limits::default(),
            smtp: Smtp::default(),
            imap: Imap::default(),
            pop3: Pop3::default(),
            managesieve: ManageSieve::default(),
            sieve: SieveLimits::default(),
            plugins: Plugins::default(),
            sender_auth: SenderAuth::default(),
            http: Http::default(),
            trace: Trace::default(),
            mta_sts: MtaSts::default(),
            acme: Acme::default(),
            tls_reports: TlsReports::default(),
            log: Log::default(),
            shutdown_timeout: Duration::from_secs(30),
            hooks: Vec::new(),
            source: None,
            warnings: Vec::new(),
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
            mta_sts: true,
            mta_sts_port: 443,
            mta_sts_timeout: Duration::from_secs(60),
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
            max_connections: None,
            max_connections_per_ip: None,
            max_smtp_connections: 5_000,
            max_errors: 10,
            max_auth_failures: None,
            max_auth_failures_per_ip: None,
            auth_on_smtp: false,
            relay_networks: Vec::new(),
            auth_fail_window: None,
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
                managesieve: one(14190),
                http: one(2080),
                https: None,
            },
            ..Config::default()
        }
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

    /// Parsed HTTP listener addresses, each with whether it speaks TLS.
    pub fn http_listeners(&self) -> Vec<(bool, SocketAddr)> {
        let mut out = Vec::new();
        for (tls, addrs) in [(false, &self.listen.http), (true, &self.listen.https)] {
            for s in addrs.iter().flat_map(|a| a.strings()) {
                if let Ok(a) = s.parse() {
                    out.push((tls, a));
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

    /// The first local domain (the postmaster's, the sample address's), or `localhost`
    /// when none is configured.
    pub fn first_domain(&self) -> &str {
        self.domains.first().map_or("localhost", String::as_str)
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
            (Listener::ManageSieve, &self.managesieve),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
        .collect()
    }
}
