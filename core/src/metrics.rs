//! The process's Prometheus metrics: one registry, filled where things happen (sessions,
//! hooks, the queue, logins, TLS, the store) and read by `GET /metrics` (`http::metrics`).
//!
//! Names follow Prometheus' conventions: `corvus_…_total` counters, `_seconds` histograms,
//! base units. Series whose labels are known in advance (listeners, results) exist from
//! the start at 0, so a rate over them is defined before the first event.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `listener`, `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerResult {
    /// `[listen]` key.
    pub listener: &'static str,
    /// What happened.
    pub result: &'static str,
}

/// `listener`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    /// `[listen]` key.
    pub listener: &'static str,
}

/// An SMTP transaction's end: `listener`, `result` (accepted, rejected, tempfailed), `reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SmtpTransaction {
    /// `[listen]` key.
    pub listener: &'static str,
    /// accepted, rejected, tempfailed.
    pub result: &'static str,
    /// Why (empty when accepted): hook, dmarc, size, content, storage, memory, recipients.
    pub reason: &'static str,
}

/// One label, `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// What happened.
    pub result: &'static str,
}

/// `mailbox` kind of a local filing: inbox, junk, other.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MailboxLabel {
    /// inbox, junk or other.
    pub mailbox: &'static str,
}

/// `domain` of queued recipients.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DomainLabel {
    /// Recipient domain.
    pub domain: String,
}

/// A hook call: `point`, `engine` (builtin, rhai, wasm, rspamd, milter), `entry`, `verdict`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookCall {
    /// Hook point (`on_rcpt`).
    pub point: &'static str,
    /// Engine kind.
    pub engine: &'static str,
    /// The entry: script or plugin path, filter address.
    pub entry: String,
    /// Its verdict, or "error".
    pub verdict: &'static str,
}

/// A hook call's timing: `point`, `engine`, `entry`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookTiming {
    /// Hook point.
    pub point: &'static str,
    /// Engine kind.
    pub engine: &'static str,
    /// The entry.
    pub entry: String,
}

/// `method` (spf, dkim, dmarc, arc) and `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SenderAuthResult {
    /// spf, dkim, dmarc, arc.
    pub method: &'static str,
    /// pass, fail, none, …
    pub result: String,
}

/// A login: `protocol` (smtp, imap, pop3) and `result` (success, failure).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Login {
    /// smtp, imap, pop3.
    pub protocol: &'static str,
    /// success or failure.
    pub result: &'static str,
}

/// A TLS handshake: `protocol` (smtp, imap, pop3, http), `version` (TLSv1.3, TLSv1.2;
/// none on failure), `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsHandshake {
    /// The protocol spoken over it.
    pub protocol: &'static str,
    /// Protocol version.
    pub version: &'static str,
    /// success or failure.
    pub result: &'static str,
}

/// A store operation: `op`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreOp {
    /// Operation name (deliver, messages, blob, …).
    pub op: &'static str,
}

fn latency_buckets() -> Histogram {
    // 50 µs … ~26 s.
    Histogram::new(exponential_buckets(0.000_05, 2.5, 15))
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    /// Connections per listener and what became of them (accepted, refused by limits).
    pub connections: Family<ListenerResult, Counter>,
    /// Sessions open now per listener.
    pub sessions_open: Family<ListenerLabel, Gauge>,
    /// SMTP transactions by how they ended.
    pub smtp_transactions: Family<SmtpTransaction, Counter>,
    /// Recipients refused at RCPT, by reason.
    pub smtp_rcpt_refused: Family<ResultLabel, Counter>,
    /// Copies filed into local mailboxes.
    pub local_deliveries: Family<MailboxLabel, Counter>,
    /// Queue entries now.
    pub queue_entries: Gauge,
    /// Age of the oldest queue entry, seconds.
    pub queue_oldest_age: Gauge,
    /// Recipients queued now for the destination domains with the most of them.
    pub queue_domain_recipients: Family<DomainLabel, Gauge>,
    /// Remote delivery attempts per recipient by result (delivered, deferred, bounced).
    pub queue_deliveries: Family<ResultLabel, Counter>,
    /// DSNs sent (failed, delayed).
    pub dsns: Family<ResultLabel, Counter>,
    /// Hook calls by verdict.
    pub hook_calls: Family<HookCall, Counter>,
    /// Hook call latency.
    pub hook_duration: Family<HookTiming, Histogram, fn() -> Histogram>,
    /// Sender authentication results on inbound mail.
    pub sender_auth: Family<SenderAuthResult, Counter>,
    /// Logins by protocol and result.
    pub logins: Family<Login, Counter>,
    /// TLS handshakes.
    pub tls_handshakes: Family<TlsHandshake, Counter>,
    /// Store operation latency.
    pub store_ops: Family<StoreOp, Histogram, fn() -> Histogram>,
    /// Trace events dropped because the trace writer was behind.
    pub trace_dropped: Counter,
    /// Process resident memory, bytes.
    pub process_rss: Gauge,
    /// Process CPU time, seconds (read from the kernel at each scrape).
    pub process_cpu: Counter<f64, std::sync::atomic::AtomicU64>,
    /// The CPU time the counter holds.
    cpu_seen: std::sync::Mutex<f64>,
    /// Open file descriptors.
    pub process_fds: Gauge,
    /// Start time, Unix seconds.
    pub process_start: Gauge,
}

/// The metrics of this process.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Shorthand for [`METRICS`].
pub fn m() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let m = Metrics {
            registry: Registry::default(),
            connections: Family::default(),
            sessions_open: Family::default(),
            smtp_transactions: Family::default(),
            smtp_rcpt_refused: Family::default(),
            local_deliveries: Family::default(),
            queue_entries: Gauge::default(),
            queue_oldest_age: Gauge::default(),
            queue_domain_recipients: Family::default(),
            queue_deliveries: Family::default(),
            dsns: Family::default(),
            hook_calls: Family::default(),
            hook_duration: Family::new_with_constructor(latency_buckets),
            sender_auth: Family::default(),
            logins: Family::default(),
            tls_handshakes: Family::default(),
            store_ops: Family::new_with_constructor(latency_buckets),
            trace_dropped: Counter::default(),
            process_rss: Gauge::default(),
            process_cpu: Counter::default(),
            cpu_seen: std::sync::Mutex::new(0.0),
            process_fds: Gauge::default(),
            process_start: Gauge::default(),
        };
        m.known_series();
        m.process_start.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
        );
        let mut m = m;
        m.register();
        m
    }

    /// Series that exist at 0 before their first event.
    fn known_series(&self) {
        use crate::listener::Listener;
        for l in Listener::ALL {
            let listener = l.name();
            for result in ["accepted", "refused"] {
                let _ = self
                    .connections
                    .get_or_create(&ListenerResult { listener, result });
            }
            let _ = self
                .sessions_open
                .get_or_create(&ListenerLabel { listener });
            if l.protocol() == crate::listener::Protocol::Smtp {
                let _ = self.smtp_transactions.get_or_create(&SmtpTransaction {
                    listener,
                    result: "accepted",
                    reason: "",
                });
            }
        }
        for result in ["delivered", "deferred", "bounced"] {
            let _ = self.queue_deliveries.get_or_create(&ResultLabel { result });
        }
        for result in ["failed", "delayed"] {
            let _ = self.dsns.get_or_create(&ResultLabel { result });
        }
        for mailbox in ["inbox", "junk", "other"] {
            let _ = self
                .local_deliveries
                .get_or_create(&MailboxLabel { mailbox });
        }
        for protocol in ["smtp", "imap", "pop3"] {
            for result in ["success", "failure"] {
                let _ = self.logins.get_or_create(&Login { protocol, result });
            }
        }
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "corvus_connections",
            "TCP connections per listener: accepted into a session, or refused by a connection limit",
            self.connections.clone(),
        );
        r.register(
            "corvus_sessions_open",
            "Sessions open now per listener",
            self.sessions_open.clone(),
        );
        r.register(
            "corvus_smtp_transactions",
            "SMTP transactions that reached the end of DATA, by result (accepted, rejected, tempfailed) and reason",
            self.smtp_transactions.clone(),
        );
        r.register(
            "corvus_smtp_recipients_refused",
            "Recipients refused at RCPT TO, by reason (result label)",
            self.smtp_rcpt_refused.clone(),
        );
        r.register(
            "corvus_local_deliveries",
            "Message copies filed into local mailboxes (inbox, junk, other)",
            self.local_deliveries.clone(),
        );
        r.register(
            "corvus_queue_entries",
            "Messages in the outbound queue",
            self.queue_entries.clone(),
        );
        r.register(
            "corvus_queue_oldest_age_seconds",
            "Age of the oldest message in the outbound queue",
            self.queue_oldest_age.clone(),
        );
        r.register(
            "corvus_queue_domain_recipients",
            "Recipients waiting in the queue for the 10 destination domains with the most",
            self.queue_domain_recipients.clone(),
        );
        r.register(
            "corvus_queue_deliveries",
            "Outbound delivery results per recipient (delivered, deferred, bounced)",
            self.queue_deliveries.clone(),
        );
        r.register(
            "corvus_dsns_sent",
            "Delivery status notifications queued (failed, delayed)",
            self.dsns.clone(),
        );
        r.register(
            "corvus_hook_calls",
            "Hook calls per point, engine and entry, by verdict (error when the call failed)",
            self.hook_calls.clone(),
        );
        r.register(
            "corvus_hook_duration_seconds",
            "Time a hook call took",
            self.hook_duration.clone(),
        );
        r.register(
            "corvus_sender_auth_results",
            "Inbound sender authentication results (spf, dkim, dmarc, arc)",
            self.sender_auth.clone(),
        );
        r.register(
            "corvus_auth_attempts",
            "Logins (SMTP AUTH, IMAP, POP3) by result",
            self.logins.clone(),
        );
        r.register(
            "corvus_tls_handshakes",
            "TLS handshakes per listener and protocol version",
            self.tls_handshakes.clone(),
        );
        r.register(
            "corvus_store_operation_duration_seconds",
            "Time store operations took",
            self.store_ops.clone(),
        );
        r.register(
            "corvus_trace_events_dropped",
            "Message trace events dropped because the trace writer fell behind",
            self.trace_dropped.clone(),
        );
        r.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            self.process_rss.clone(),
        );
        r.register(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            self.process_cpu.clone(),
        );
        r.register(
            "process_open_fds",
            "Open file descriptors",
            self.process_fds.clone(),
        );
        r.register(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds",
            self.process_start.clone(),
        );
    }

    /// The registry in the OpenMetrics text format (`application/openmetrics-text`).
    pub fn openmetrics(&self) -> String {
        self.refresh_process();
        let mut out = String::with_capacity(16 * 1024);
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The registry in Prometheus' text format 0.0.4 (`text/plain`): OpenMetrics names
    /// counter families without `_total` in `# TYPE`, where the older format names the
    /// sample; there is no `# EOF`.
    pub fn prometheus_text(&self) -> String {
        to_prometheus_text(&self.openmetrics())
    }

    fn refresh_process(&self) {
        let (rss, cpu) = process_stat();
        self.process_rss.set(rss as i64);
        let mut seen = self.cpu_seen.lock().unwrap_or_else(|e| e.into_inner());
        if cpu > *seen {
            self.process_cpu.inc_by(cpu - *seen);
            *seen = cpu;
        }
        let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
        self.process_fds.set(fds as i64);
    }

    /// Record a hook call.
    pub fn hook_call(
        &self,
        point: &'static str,
        entry: &str,
        verdict: &'static str,
        took: Duration,
    ) {
        let engine = engine_kind(entry);
        self.hook_calls
            .get_or_create(&HookCall {
                point,
                engine,
                entry: entry.to_string(),
                verdict,
            })
            .inc();
        self.hook_duration
            .get_or_create(&HookTiming {
                point,
                engine,
                entry: entry.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// Record how an SMTP transaction ended.
    pub fn smtp_transaction(
        &self,
        listener: &'static str,
        result: &'static str,
        reason: &'static str,
    ) {
        self.smtp_transactions
            .get_or_create(&SmtpTransaction {
                listener,
                result,
                reason,
            })
            .inc();
    }

    /// Record a login.
    pub fn login(&self, protocol: &'static str, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.logins.get_or_create(&Login { protocol, result }).inc();
    }

    /// Record a store operation's latency.
    pub fn store_op(&self, op: &'static str, took: Duration) {
        self.store_ops
            .get_or_create(&StoreOp { op })
            .observe(took.as_secs_f64());
    }
}

/// Record an inbound TLS handshake; the protocol is the acceptor's ALPN name.
pub fn tls_handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    ok: bool,
    version: Option<rustls::ProtocolVersion>,
) {
    let protocol = match acceptor.config().alpn_protocols.first().map(Vec::as_slice) {
        Some(b"smtp") => "smtp",
        Some(b"imap") => "imap",
        Some(b"pop3") => "pop3",
        Some(b"http/1.1") => "http",
        _ => "other",
    };
    let version = match version {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        Some(_) => "other",
        None => "none",
    };
    m().tls_handshakes
        .get_or_create(&TlsHandshake {
            protocol,
            version,
            result: if ok { "success" } else { "failure" },
        })
        .inc();
}

/// The engine kind of a hook entry by its name (see each engine's `name`).
fn engine_kind(entry: &str) -> &'static str {
    if entry == "builtin" {
        "builtin"
    } else if entry.starts_with("rspamd ") {
        "rspamd"
    } else if entry.starts_with("milter ") {
        "milter"
    } else if entry.ends_with(".wasm") {
        "wasm"
    } else {
        "rhai"
    }
}

/// Sum of the samples named `name` whose labels include every pair of `want`.
pub fn sum_samples(text: &str, name: &str, want: &[(&str, &str)]) -> u64 {
    let mut total = 0f64;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once("} ") {
                Some((l, v)) => (l, v),
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(v) => ("", v),
                None => continue,
            },
        };
        if want
            .iter()
            .all(|(k, v)| labels.split(',').any(|p| p == format!("{k}=\"{v}\"")))
        {
            total += value.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    total as u64
}

/// OpenMetrics text → Prometheus text 0.0.4.
fn to_prometheus_text(om: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            counters.insert(name.to_string());
        }
    }
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        for prefix in ["# HELP ", "# TYPE "] {
            if let Some(rest) = line.strip_prefix(prefix) {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{prefix}{name}_total {tail}\n"));
                } else {
                    out.push_str(line);
                    out.push('\n');
                }
                break;
            }
        }
        if !line.starts_with('#') {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Resident bytes and CPU seconds from `/proc/self/stat`.
fn process_stat() -> (u64, f64) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return (0, 0.0);
    };
    // Fields after the command name (which may hold spaces) start at state (field 3).
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return (0, 0.0);
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    // utime = field 14, stime = 15, rss = 24 (1-based); here index = field - 3.
    let ticks = rustix::param::clock_ticks_per_second().max(1) as f64;
    let cpu = (num(11) + num(12)) as f64 / ticks;
    let rss = num(21) * rustix::param::page_size() as u64;
    (rss, cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_counters_with_total_and_has_no_eof() {
        m().connections
            .get_or_create(&ListenerResult {
                listener: "smtp",
                result: "accepted",
            })
            .inc();
        let om = m().openmetrics();
        assert!(om.contains("# TYPE corvus_connections counter"), "{om}");
        assert!(om.ends_with("# EOF\n"));
        let text = m().prometheus_text();
        assert!(
            text.contains("# TYPE corvus_connections_total counter"),
            "{text}"
        );
        assert!(text.contains("# HELP corvus_connections_total TCP connections"));
        assert!(!text.contains("# EOF"));
        assert!(text.contains("corvus_connections_total{listener=\"smtp\",result=\"accepted\"}"));
        assert!(
            sum_samples(&text, "corvus_connections_total", &[("listener", "smtp")]) >= 1,
            "{text}"
        );
        assert!(text.contains("process_resident_memory_bytes "));
        let (rss, _) = process_stat();
        assert!(rss > 0);
    }
}
