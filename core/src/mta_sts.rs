//! MTA-STS (RFC 8461): the policies destination domains publish, as outbound delivery
//! applies them, and the policy this server publishes for its own domains.
//!
//! Outbound, per destination domain: the `_mta-sts.<domain>` TXT record names the policy's
//! id; the policy comes over HTTPS from `mta-sts.<domain>` (certificate verified, no
//! redirects, 64 KiB, `[delivery] mta_sts_timeout`) and is kept in the store's key-value
//! area until its `max_age` runs out, so every node of a shared store uses one copy. A
//! changed id fetches again; a failed fetch or a vanished TXT record keeps the cached policy
//! while it is valid (§5.1); with neither, the domain has no policy.
//!
//! Parsing and matching have no I/O and are tested here; the delivery side is in
//! `queue/`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::Store;

pub use crate::config::StsMode as Mode;

/// A policy as fetched and cached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// The TXT record's id when fetched.
    pub id: String,
    /// Mode.
    pub mode: Mode,
    /// MX patterns: host names or `*.` wildcards, lower case without a final dot.
    pub mx: Vec<String>,
    /// Seconds the policy may be kept.
    pub max_age: u64,
    /// When it was fetched (Unix seconds).
    pub fetched: i64,
}

/// The longest policy body read (RFC 8461 §3.3 suggests 64 KiB).
pub const MAX_POLICY_SIZE: usize = 64 * 1024;
/// `max_age` is at most a year (§3.2).
const MAX_AGE_LIMIT: u64 = 31_557_600;
/// Namespace of cached policies in the store's key-value area.
const NS: &str = "mta-sts";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The id of a `_mta-sts` TXT record (`v=STSv1; id=…;`), or why it is not one.
pub fn parse_txt(txt: &str) -> Result<String, String> {
    let mut fields = txt.split(';').map(str::trim).filter(|f| !f.is_empty());
    if fields.next() != Some("v=STSv1") {
        return Err("does not begin with v=STSv1".into());
    }
    let mut id = None;
    for f in fields {
        let (k, v) = f
            .split_once('=')
            .ok_or_else(|| format!("field {f:?} is not key=value"))?;
        if k.trim() == "id" {
            let v = v.trim();
            if v.is_empty() || v.len() > 32 || !v.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(format!("id {v:?} is not 1 to 32 letters and digits"));
            }
            id = Some(v.to_string());
        }
    }
    id.ok_or_else(|| "has no id".into())
}

pub use crate::config::valid_mx_pattern;

/// Parse a policy body (§3.2) fetched for TXT id `id`.
pub fn parse_policy(body: &[u8], id: &str, fetched: i64) -> Result<Policy, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the policy is not UTF-8".to_string())?;
    let (mut version, mut mode, mut max_age, mut mx) = (None, None, None, Vec::new());
    for (n, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| format!("line {}: {line:?} is not \"key: value\"", n + 1))?;
        let v = v.trim_matches(|c| c == ' ' || c == '\t');
        match k {
            "version" => version = Some(v.to_string()),
            "mode" => {
                mode = Some(match v {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    _ => return Err(format!("line {}: unknown mode {v:?}", n + 1)),
                })
            }
            "max_age" => {
                let age: u64 =
                    (!v.is_empty() && v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit()))
                        .then(|| v.parse().ok())
                        .flatten()
                        .ok_or_else(|| format!("line {}: max_age {v:?} is not a number", n + 1))?;
                max_age = Some(age.min(MAX_AGE_LIMIT));
            }
            "mx" => {
                let p = v.trim_end_matches('.').to_ascii_lowercase();
                if !valid_mx_pattern(&p) {
                    return Err(format!("line {}: mx {v:?} is not a host name", n + 1));
                }
                if mx.len() < 100 {
                    mx.push(p);
                }
            }
            // Unknown fields are ignored (§3.2).
            _ => {}
        }
    }
    if version.as_deref() != Some("STSv1") {
        return Err("no \"version: STSv1\"".into());
    }
    let mode = mode.ok_or("no mode")?;
    let max_age = max_age.ok_or("no max_age")?;
    if mx.is_empty() && mode != Mode::None {
        return Err("no mx".into());
    }
    Ok(Policy {
        id: id.to_string(),
        mode,
        mx,
        max_age,
        fetched,
    })
}

impl Policy {
    /// Whether MX host `host` is one the policy names (§4.1: a wildcard stands for exactly
    /// one left-most label).
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|p| match p.strip_prefix("*.") {
            Some(suffix) => host
                .split_once('.')
                .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
            None => *p == host,
        })
    }

    /// Whether it may still be used.
    pub fn valid(&self) -> bool {
        self.fetched + self.max_age as i64 > now()
    }
}

/// What delivery learns about a domain's policy.
#[derive(Debug, Clone)]
pub struct Lookup {
    /// The policy to apply (none when mode is `none`).
    pub policy: Option<Policy>,
    /// What went wrong on the way, if anything (a failed fetch, a bad record): for the log,
    /// the trace and TLS reports.
    pub problem: Option<String>,
    /// The TLS-RPT result type of the problem (RFC 8460 §4.3.2.3).
    pub problem_kind: Option<&'static str>,
}

/// The policy of `domain`, from the cache or fetched.
pub async fn lookup(
    resolver: &hickory_resolver::TokioResolver,
    store: &Store,
    trust_roots: Option<&std::path::Path>,
    port: u16,
    timeout: Duration,
    domain: &str,
) -> Lookup {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let cached: Option<Policy> = store
        .kv_get(NS, &domain)
        .await
        .ok()
        .flatten()
        .and_then(|v| serde_json::from_slice(&v).ok())
        .filter(Policy::valid);
    let usable = |p: Option<Policy>| p.filter(|p| p.mode != Mode::None);
    let id = match txt_id(resolver, &domain).await {
        Ok(Some(id)) => id,
        Ok(None) => {
            return Lookup {
                policy: usable(cached),
                problem: None,
                problem_kind: None,
            };
        }
        Err(e) => {
            return Lookup {
                problem: Some(format!("MTA-STS record of {domain}: {e}")),
                problem_kind: Some("sts-policy-invalid"),
                policy: usable(cached),
            };
        }
    };
    if let Some(c) = &cached
        && c.id == id
    {
        return Lookup {
            policy: usable(cached),
            problem: None,
            problem_kind: None,
        };
    }
    match fetch(resolver, trust_roots, port, timeout, &domain, &id).await {
        Ok(p) => {
            if let Ok(v) = serde_json::to_vec(&p) {
                let _ = store.kv_set(NS, &domain, &v, Some(p.max_age.max(1))).await;
            }
            tracing::info!(domain, id, mode = p.mode.as_str(), mx = ?p.mx, max_age = p.max_age, "MTA-STS policy fetched");
            Lookup {
                policy: usable(Some(p)),
                problem: None,
                problem_kind: None,
            }
        }
        Err((kind, e)) => {
            let e = format!("MTA-STS policy of {domain}: {e}");
            tracing::warn!(domain, error = %e, cached = cached.is_some(), "MTA-STS policy fetch failed");
            Lookup {
                policy: usable(cached),
                problem: Some(e),
                problem_kind: Some(kind),
            }
        }
    }
}

/// The policy id published at `_mta-sts.<domain>`: `None` when there is no single STSv1
/// record (§3.1: then the domain has no policy), an error when DNS failed.
async fn txt_id(
    resolver: &hickory_resolver::TokioResolver,
    domain: &str,
) -> Result<Option<String>, String> {
    use hickory_resolver::proto::rr::RData;
    let name = format!("_mta-sts.{domain}.");
    let answer =
        match tokio::time::timeout(Duration::from_secs(10), resolver.txt_lookup(name)).await {
            Err(_) => return Err("TXT lookup timed out".into()),
            Ok(Err(e)) if e.is_no_records_found() || e.is_nx_domain() => return Ok(None),
            Ok(Err(e)) => return Err(format!("TXT lookup failed: {e}")),
            Ok(Ok(a)) => a,
        };
    let records: Vec<String> = answer
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(t) => Some(
                t.txt_data
                    .iter()
                    .map(|d| String::from_utf8_lossy(d).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        })
        .filter(|t| t.starts_with("v=STSv1"))
        .collect();
    match records.as_slice() {
        [one] => parse_txt(one)
            .map(Some)
            .map_err(|e| format!("TXT record {one:?} {e}")),
        [] => Ok(None),
        _ => Err(format!("{} STSv1 TXT records (must be one)", records.len())),
    }
}

/// Fetch and parse the policy of `domain` (§3.3). An error comes with its TLS-RPT result
/// type.
async fn fetch(
    resolver: &hickory_resolver::TokioResolver,
    trust_roots: Option<&std::path::Path>,
    port: u16,
    timeout: Duration,
    domain: &str,
    id: &str,
) -> Result<Policy, (&'static str, String)> {
    const FETCH: &str = "sts-policy-fetch-error";
    let host = format!("mta-sts.{domain}");
    let r = crate::https::get(
        resolver,
        trust_roots,
        &host,
        port,
        "/.well-known/mta-sts.txt",
        MAX_POLICY_SIZE,
        timeout,
    )
    .await
    .map_err(|e| {
        let kind = match &e {
            crate::https::HttpsError::Connect(t) if t.starts_with("TLS") => "sts-webpki-invalid",
            _ => FETCH,
        };
        (
            kind,
            format!("fetching https://{host}/.well-known/mta-sts.txt: {e}"),
        )
    })?;
    if r.status != 200 {
        return Err((
            FETCH,
            format!(
                "https://{host}/.well-known/mta-sts.txt answered {} (redirects are not followed)",
                r.status
            ),
        ));
    }
    let media = r.content_type.split(';').next().unwrap_or("").trim();
    if media != "text/plain" {
        return Err((
            "sts-policy-invalid",
            format!(
                "https://{host}/.well-known/mta-sts.txt is {:?}, not text/plain",
                r.content_type
            ),
        ));
    }
    parse_policy(&r.body, id, now()).map_err(|e| {
        (
            "sts-policy-invalid",
            format!("policy at https://{host}: {e}"),
        )
    })
}

/// The policy this server publishes (`[mta_sts]`), as served.
pub fn published(config: &crate::config::Config) -> String {
    let c = &config.mta_sts;
    let mut s = format!("version: STSv1\r\nmode: {}\r\n", c.mode.as_str());
    if c.mx.is_empty() {
        s.push_str(&format!("mx: {}\r\n", config.hostname.to_ascii_lowercase()));
    }
    for mx in &c.mx {
        s.push_str(&format!("mx: {mx}\r\n"));
    }
    s.push_str(&format!("max_age: {}\r\n", c.max_age.as_secs()));
    s
}

/// The id to publish in `_mta-sts` TXT records: it changes whenever the policy does.
pub fn published_id(config: &crate::config::Config) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, published(config).as_bytes());
    d.as_ref()
        .iter()
        .take(10)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_records() {
        assert_eq!(
            parse_txt("v=STSv1; id=20160831085700Z;").unwrap(),
            "20160831085700Z"
        );
        assert_eq!(parse_txt("v=STSv1;id=abc").unwrap(), "abc");
        assert_eq!(parse_txt("v=STSv1; id=abc; ext=1").unwrap(), "abc");
        assert!(parse_txt("v=STSv2; id=abc").is_err());
        assert!(parse_txt("id=abc; v=STSv1").is_err());
        assert!(parse_txt("v=STSv1;").is_err());
        assert!(parse_txt("v=STSv1; id=a-b").is_err());
        assert!(parse_txt(&format!("v=STSv1; id={}", "a".repeat(33))).is_err());
    }

    #[test]
    fn policies_parse_as_rfc_8461_says() {
        // The RFC's example (§3.2), with LF endings, and extra fields ignored.
        let body = b"version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmx: backupmx.example.com\nmax_age: 604800\nfuture: 1\n";
        let p = parse_policy(body, "x", 0).unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(
            p.mx,
            ["mail.example.com", "*.example.net", "backupmx.example.com"]
        );
        assert_eq!(p.max_age, 604800);
        assert!(p.allows("mail.example.com."));
        assert!(p.allows("MX1.example.net"));
        assert!(!p.allows("a.b.example.net"), "a wildcard is one label");
        assert!(!p.allows("example.net"));
        assert!(!p.allows("mail.example.com.evil"));
        // CRLF, and a huge max_age capped to a year.
        let p = parse_policy(
            b"version: STSv1\r\nmode: testing\r\nmx: a.test\r\nmax_age: 9999999999\r\n",
            "y",
            0,
        )
        .unwrap();
        assert_eq!((p.mode, p.max_age), (Mode::Testing, MAX_AGE_LIMIT));
        // mode none needs no mx.
        assert!(parse_policy(b"version: STSv1\nmode: none\nmax_age: 1\n", "z", 0).is_ok());
        for bad in [
            &b"mode: enforce\nmx: a.test\nmax_age: 1\n"[..],
            b"version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n",
            b"version: STSv1\nmode: enforce\nmax_age: 1\n",
            b"version: STSv1\nmode: enforce\nmx: a.test\n",
            b"version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -5\n",
            b"version: STSv1\nmode: enforce\nmx: a..test\nmax_age: 5\n",
            b"<html>not a policy</html>",
            b"\xff\xfe",
        ] {
            assert!(
                parse_policy(bad, "b", 0).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_published_policy_parses_and_its_id_follows_it() {
        let mut c = crate::config::Config {
            hostname: "mx.example.org".into(),
            ..Default::default()
        };
        let p = parse_policy(published(&c).as_bytes(), "i", now()).unwrap();
        assert_eq!(p.mx, ["mx.example.org"]);
        assert_eq!(p.mode, Mode::Testing);
        assert_eq!(p.max_age, 7 * 86400);
        let id = published_id(&c);
        assert!(parse_txt(&format!("v=STSv1; id={id}")).is_ok());
        c.mta_sts.mode = Mode::Enforce;
        assert_ne!(published_id(&c), id);
    }
}
