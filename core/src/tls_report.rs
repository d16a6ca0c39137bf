//! SMTP TLS reporting (TLS-RPT, RFC 8460), optional and off by default (`[tls_reports]`).
//!
//! Collection: every outbound session to a domain with an MTA-STS policy counts as a
//! success or as a failure of a result type (RFC 8460 §4.3.2.3), per policy domain and
//! reporting period (aligned to multiples of `interval`, UTC), as counters in the store's
//! key-value area: nodes of a shared store add to the same report, and counts survive
//! restarts.
//!
//! Sending: a background task finds periods that have ended; for each policy domain one node
//! (a marker in the store decides which) looks up `_smtp._tls.<domain>`, builds the JSON
//! report (§4.4) and sends it, gzip-compressed, to each `rua`: `mailto:` through the
//! outbound queue as a `multipart/report; report-type="tlsrpt"` message (§5.3), `https:` as a
//! POST of `application/tlsrpt+gzip` (§5.4).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::store::Store;

/// Counters and the policy of each (period, domain).
const NS: &str = "tlsrpt";
/// Which (period, domain) reports a node has taken on.
const SENT_NS: &str = "tlsrpt-sent";

/// The policy a session was under, as the report describes it (§4.4 `policy`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyDesc {
    /// `sts` (or `no-policy-found` when the fetch failed without a cached policy).
    #[serde(rename = "policy-type")]
    pub kind: String,
    /// The policy's lines.
    #[serde(
        rename = "policy-string",
        skip_serializing_if = "Vec::is_empty",
        default
    )]
    pub lines: Vec<String>,
    /// The policy domain.
    #[serde(rename = "policy-domain")]
    pub domain: String,
    /// The MX patterns.
    #[serde(rename = "mx-host", skip_serializing_if = "Vec::is_empty", default)]
    pub mx: Vec<String>,
}

impl PolicyDesc {
    /// The description of an MTA-STS policy of `domain`.
    pub fn sts(domain: &str, p: &crate::mta_sts::Policy) -> PolicyDesc {
        let mut lines = vec![
            "version: STSv1".to_string(),
            format!("mode: {}", p.mode.as_str()),
        ];
        lines.extend(p.mx.iter().map(|m| format!("mx: {m}")));
        lines.push(format!("max_age: {}", p.max_age));
        PolicyDesc {
            kind: "sts".into(),
            lines,
            domain: domain.to_string(),
            mx: p.mx.clone(),
        }
    }

    /// A domain whose policy could not be had.
    pub fn none_found(domain: &str) -> PolicyDesc {
        PolicyDesc {
            kind: "no-policy-found".into(),
            lines: Vec::new(),
            domain: domain.to_string(),
            mx: Vec::new(),
        }
    }
}

/// One session's outcome.
#[derive(Debug, Clone)]
pub enum Outcome<'a> {
    /// TLS as the policy asks.
    Success,
    /// A failure of `kind` (a result type of §4.3.2.3) at MX `mx` [`ip`] (either may be "").
    Failure {
        /// Result type.
        kind: &'a str,
        /// Receiving MX host name.
        mx: &'a str,
        /// Receiving IP.
        ip: &'a str,
    },
}

/// The TLS-RPT result type of a TLS failure's text.
pub fn result_type(error: &str) -> &'static str {
    let e = error.to_ascii_lowercase();
    if e.contains("starttls") {
        "starttls-not-supported"
    } else if e.contains("notvalidforname") || e.contains("not valid for name") {
        "certificate-host-mismatch"
    } else if e.contains("expired") {
        "certificate-expired"
    } else if e.contains("unknownissuer")
        || e.contains("unknown issuer")
        || e.contains("badsignature")
    {
        "certificate-not-trusted"
    } else {
        "validation-failure"
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn period_start(t: i64, interval: i64) -> i64 {
    t - t.rem_euclid(interval.max(1))
}

/// `|` separates key parts; it appears in no host name or IP.
fn clean(s: &str) -> String {
    s.replace('|', "_")
}

/// Count one session (when reports are on).
pub async fn record(
    store: &Store,
    config: &crate::config::Config,
    policy: &PolicyDesc,
    outcome: Outcome<'_>,
) {
    let cfg = &config.tls_reports;
    if !cfg.enabled {
        return;
    }
    let interval = cfg.interval.as_secs().max(1) as i64;
    let period = period_start(now(), interval);
    let ttl = Some((interval * 3 + 86400) as u64);
    let base = format!("{period:012}|{}", clean(&policy.domain));
    if let Ok(v) = serde_json::to_vec(policy) {
        let _ = store.kv_set(NS, &format!("{base}|policy"), &v, ttl).await;
    }
    let key = match outcome {
        Outcome::Success => format!("{base}|ok"),
        Outcome::Failure { kind, mx, ip } => {
            format!("{base}|fail|{}|{}|{}", clean(kind), clean(mx), clean(ip))
        }
    };
    if let Err(e) = store.kv_incr(NS, &key, 1, ttl).await {
        tracing::debug!(error = %e, "TLS report counter not recorded");
    }
}

/// One report as collected.
#[derive(Debug, Default)]
struct Collected {
    policy: Option<PolicyDesc>,
    ok: i64,
    /// (result type, mx, ip) → count.
    failures: Vec<(String, String, String, i64)>,
    keys: Vec<String>,
}

/// What names one report: its domain, period, sender and id.
struct About<'a> {
    domain: &'a str,
    begin: i64,
    end: i64,
    org: &'a str,
    /// The contact (and sender) address.
    from: &'a str,
    report_id: &'a str,
    /// `[delivery] source_ip`, when set.
    sending_ip: &'a str,
}

/// The report JSON (§4.4).
fn to_json(c: &Collected, a: &About<'_>) -> serde_json::Value {
    let About {
        domain,
        begin,
        end,
        org,
        from: contact,
        report_id,
        sending_ip,
    } = *a;
    let at = |t: i64| {
        chrono::DateTime::from_timestamp(t, 0)
            .unwrap_or_default()
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    let failed: i64 = c.failures.iter().map(|f| f.3).sum();
    let details: Vec<serde_json::Value> = c
        .failures
        .iter()
        .map(|(kind, mx, ip, n)| {
            let mut d = json!({ "result-type": kind, "failed-session-count": n });
            if !sending_ip.is_empty() {
                d["sending-mta-ip"] = json!(sending_ip);
            }
            if !mx.is_empty() {
                d["receiving-mx-hostname"] = json!(mx);
            }
            if !ip.is_empty() {
                d["receiving-ip"] = json!(ip);
            }
            d
        })
        .collect();
    let policy = c
        .policy
        .clone()
        .unwrap_or_else(|| PolicyDesc::none_found(domain));
    json!({
        "organization-name": org,
        "date-range": { "start-datetime": at(begin), "end-datetime": at(end - 1) },
        "contact-info": contact,
        "report-id": report_id,
        "policies": [{
            "policy": policy,
            "summary": {
                "total-successful-session-count": c.ok,
                "total-failure-session-count": failed,
            },
            "failure-details": details,
        }],
    })
}

/// The `rua` URIs of `_smtp._tls.<domain>` (§3): `None` on a DNS failure (try later).
async fn rua(resolver: &hickory_resolver::TokioResolver, domain: &str) -> Option<Vec<String>> {
    let answers =
        crate::dns_records::lookup(resolver, &format!("_smtp._tls.{domain}"), "TXT").await;
    let records: Vec<&String> = answers
        .iter()
        .filter(|t| t.trim_start().starts_with("v=TLSRPTv1"))
        .collect();
    let [one] = records.as_slice() else {
        return Some(Vec::new());
    };
    Some(
        one.split(';')
            .filter_map(|f| f.trim().strip_prefix("rua="))
            .flat_map(|v| v.split(','))
            .map(|u| u.trim().to_string())
            .filter(|u| u.starts_with("mailto:") || u.starts_with("https://"))
            .take(10)
            .collect(),
    )
}

/// What the sender uses.
pub struct Deps {
    /// Settings.
    pub config: Arc<crate::config::Config>,
    /// The store holding the counters.
    pub store: Store,
    /// DNS, for `_smtp._tls`.
    pub resolver: hickory_resolver::TokioResolver,
    /// Where mailto: reports go.
    pub delivery: crate::delivery::Delivery,
}

/// Send every report whose period has ended; returns how many were sent.
pub async fn send_due(d: &Deps) -> usize {
    let cfg = &d.config.tls_reports;
    let interval = cfg.interval.as_secs().max(1) as i64;
    let current = period_start(now(), interval);
    let Ok(rows) = d
        .store
        .kv_range(NS, "", &format!("{current:012}"), 100_000)
        .await
    else {
        return 0;
    };
    // Group by (period, domain).
    let mut groups: Vec<((i64, String), Collected)> = Vec::new();
    for (key, value) in rows {
        let parts: Vec<&str> = key.split('|').collect();
        let (Some(period), Some(domain)) =
            (parts.first().and_then(|p| p.parse().ok()), parts.get(1))
        else {
            continue;
        };
        let id = (period, domain.to_string());
        let pos = match groups.iter().position(|(k, _)| *k == id) {
            Some(p) => p,
            None => {
                groups.push((id, Collected::default()));
                groups.len() - 1
            }
        };
        let c = &mut groups[pos].1;
        c.keys.push(key.clone());
        let n: i64 = String::from_utf8_lossy(&value).trim().parse().unwrap_or(0);
        match parts.get(2..) {
            Some(["policy"]) => c.policy = serde_json::from_slice(&value).ok(),
            Some(["ok"]) => c.ok += n,
            Some(["fail", kind, mx, ip]) => {
                c.failures
                    .push((kind.to_string(), mx.to_string(), ip.to_string(), n))
            }
            _ => {}
        }
    }
    let (from, org) =
        crate::sender_auth::report::sender_and_org(&d.config, &cfg.from, &cfg.org_name);
    let sending_ip = d
        .config
        .delivery
        .source_ip
        .map(|ip| ip.to_string())
        .unwrap_or_default();
    let mut sent = 0;
    for ((period, domain), c) in groups {
        // One node sends each report.
        let marker = format!("{period:012}|{domain}");
        match d
            .store
            .kv_incr(SENT_NS, &marker, 1, Some((interval * 3 + 86400) as u64))
            .await
        {
            Ok(1) => {}
            _ => continue,
        }
        let Some(rua) = rua(&d.resolver, &domain).await else {
            // DNS failed: let a later look try again.
            let _ = d.store.kv_delete(SENT_NS, &marker).await;
            continue;
        };
        let report_id = format!("{period}.{domain}@{}", d.config.hostname);
        let about = About {
            domain: &domain,
            begin: period,
            end: period + interval,
            org: &org,
            from: &from,
            report_id: &report_id,
            sending_ip: &sending_ip,
        };
        let report = to_json(&c, &about);
        let body = serde_json::to_vec_pretty(&report).unwrap_or_default();
        let delivered = if rua.is_empty() {
            tracing::info!(
                domain,
                "TLS report dropped: the domain publishes no TLS-RPT record"
            );
            true
        } else {
            match crate::sender_auth::report::gzip(&body) {
                Ok(gz) => send(d, &rua, &about, &gz).await,
                Err(_) => false,
            }
        };
        if delivered {
            for key in &c.keys {
                let _ = d.store.kv_delete(NS, key).await;
            }
            if !rua.is_empty() {
                sent += 1;
            }
        } else {
            let _ = d.store.kv_delete(SENT_NS, &marker).await;
        }
    }
    sent
}

/// Send one report to every `rua`; true when at least one took it.
async fn send(d: &Deps, rua: &[String], a: &About<'_>, gz: &[u8]) -> bool {
    let (domain, from) = (a.domain, a.from);
    let mut ok = false;
    let mut mailto = Vec::new();
    for uri in rua {
        if let Some(addr) = uri.strip_prefix("mailto:") {
            let addr = addr.split('?').next().unwrap_or(addr).trim();
            if addr.contains('@') {
                mailto.push(addr.to_string());
            }
            continue;
        }
        let req = http::Request::builder()
            .method("POST")
            .uri(uri.as_str())
            .header("Content-Type", "application/tlsrpt+gzip")
            .header("User-Agent", concat!("corvus/", env!("CARGO_PKG_VERSION")))
            .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(gz)));
        let Ok(req) = req else { continue };
        let result = tokio::time::timeout(
            Duration::from_secs(30),
            crate::https::send(d.config.tls.trust_roots.as_deref(), req, 64 * 1024),
        )
        .await;
        match result {
            Ok(Ok((parts, _))) if parts.status.is_success() => {
                tracing::info!(domain, uri, "TLS report posted");
                ok = true;
            }
            Ok(Ok((parts, _))) => {
                tracing::warn!(domain, uri, status = %parts.status, "TLS report refused")
            }
            Ok(Err(e)) => tracing::warn!(domain, uri, error = %e, "TLS report not posted"),
            Err(_) => tracing::warn!(domain, uri, "TLS report not posted: no answer within 30 s"),
        }
    }
    if !mailto.is_empty() {
        let message = report_message(d, &mailto, a, gz);
        let entry = crate::sender_auth::report::report_entry(from, &mailto, "tls report");
        match d.delivery.deliver_generated(entry, message).await {
            Ok(_) => {
                tracing::info!(domain, rua = ?mailto, "TLS report queued");
                ok = true;
            }
            Err(e) => tracing::warn!(domain, error = %e, "TLS report not queued"),
        }
    }
    ok
}

/// The report message (§5.3): `multipart/report; report-type="tlsrpt"`, a text part and the
/// gzip'd JSON.
fn report_message(d: &Deps, to: &[String], a: &About<'_>, gz: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let About {
        domain,
        org,
        from,
        report_id,
        begin,
        end,
        ..
    } = *a;
    let file = format!("{org}!{domain}!{begin}!{end}.json.gz");
    let boundary = format!("tlsrpt-{}", crate::delivery::new_queue_id());
    let b64 = base64::engine::general_purpose::STANDARD.encode(gz);
    let mut m = String::new();
    m.push_str(&format!("From: <{from}>\r\n"));
    m.push_str(&format!(
        "To: {}\r\n",
        to.iter()
            .map(|a| format!("<{a}>"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    m.push_str(&format!(
        "Subject: Report Domain: {domain} Submitter: {org} Report-ID: <{report_id}>\r\n"
    ));
    m.push_str(&format!("Date: {}\r\n", chrono::Utc::now().to_rfc2822()));
    m.push_str(&format!(
        "Message-ID: <{}.tlsrpt@{}>\r\n",
        crate::delivery::new_queue_id(),
        d.config.hostname
    ));
    m.push_str(&format!("TLS-Report-Domain: {domain}\r\n"));
    m.push_str(&format!("TLS-Report-Submitter: {org}\r\n"));
    m.push_str("Auto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\n");
    m.push_str(&format!(
        "Content-Type: multipart/report; report-type=\"tlsrpt\"; boundary=\"{boundary}\"\r\n\r\n"
    ));
    m.push_str(&format!(
        "--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\
         This is an SMTP TLS report (RFC 8460) for {domain} from {org}.\r\n\r\n"
    ));
    m.push_str(&format!(
        "--{boundary}\r\nContent-Type: application/tlsrpt+gzip\r\n\
         Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"{file}\"\r\n\r\n"
    ));
    for chunk in b64.as_bytes().chunks(76) {
        m.push_str(&String::from_utf8_lossy(chunk));
        m.push_str("\r\n");
    }
    m.push_str(&format!("--{boundary}--\r\n"));
    m.into_bytes()
}

/// The sending task.
pub async fn run(d: Deps, shutdown: tokio_util::sync::CancellationToken) {
    let interval = d.config.tls_reports.interval;
    crate::sender_auth::report::every_part_of(interval, &shutdown, || send_due(&d)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified_as_rfc_8460_names_them() {
        assert_eq!(
            result_type("mx [1.2.3.4] does not offer STARTTLS and TLS is required"),
            "starttls-not-supported"
        );
        assert_eq!(
            result_type("invalid peer certificate: NotValidForName"),
            "certificate-host-mismatch"
        );
        assert_eq!(
            result_type("invalid peer certificate: certificate not valid for name \"x\""),
            "certificate-host-mismatch"
        );
        assert_eq!(
            result_type("invalid peer certificate: Expired"),
            "certificate-expired"
        );
        assert_eq!(
            result_type("invalid peer certificate: UnknownIssuer"),
            "certificate-not-trusted"
        );
        assert_eq!(result_type("something else"), "validation-failure");
    }

    #[tokio::test]
    async fn counts_add_up_per_domain_and_the_json_has_the_rfc_fields() {
        let store: Store = Arc::new(crate::store::MemoryStore::new());
        let mut config = crate::config::Config::default();
        config.tls_reports.enabled = true;
        let p = PolicyDesc {
            kind: "sts".into(),
            lines: vec!["version: STSv1".into()],
            domain: "b.test".into(),
            mx: vec!["mx.b.test".into()],
        };
        record(&store, &config, &p, Outcome::Success).await;
        record(&store, &config, &p, Outcome::Success).await;
        let fail = Outcome::Failure {
            kind: "certificate-host-mismatch",
            mx: "mx.b.test",
            ip: "192.0.2.1",
        };
        record(&store, &config, &p, fail.clone()).await;
        record(&store, &config, &p, fail).await;
        let rows = store.kv_range(NS, "", "", 100).await.unwrap();
        assert_eq!(rows.len(), 3, "{rows:?}");
        let mut c = Collected::default();
        for (k, v) in rows {
            let n: i64 = String::from_utf8_lossy(&v).parse().unwrap_or(0);
            if k.ends_with("|ok") {
                c.ok = n;
            } else if k.contains("|fail|") {
                c.failures.push((
                    "certificate-host-mismatch".into(),
                    "mx.b.test".into(),
                    "192.0.2.1".into(),
                    n,
                ));
            } else {
                c.policy = serde_json::from_slice(&v).ok();
            }
        }
        let about = About {
            domain: "b.test",
            begin: 0,
            end: 86400,
            org: "org",
            from: "postmaster@a.test",
            report_id: "id",
            sending_ip: "",
        };
        let j = to_json(&c, &about);
        assert_eq!(j["date-range"]["end-datetime"], "1970-01-01T23:59:59Z");
        let pol = &j["policies"][0];
        assert_eq!(pol["policy"]["policy-type"], "sts");
        assert_eq!(pol["summary"]["total-successful-session-count"], 2);
        assert_eq!(pol["summary"]["total-failure-session-count"], 2);
        assert_eq!(pol["failure-details"][0]["receiving-ip"], "192.0.2.1");
        assert!(pol["failure-details"][0].get("sending-mta-ip").is_none());
    }
}
