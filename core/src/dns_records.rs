//! The DNS records a local domain should publish for this server, with the values for it:
//! MX, SPF, each DKIM key, DMARC, MTA-STS (the policy host and its id), TLS-RPT, the
//! autoconfig host and the RFC 6186 SRV records of the listeners clients use. Printed by
//! `corvus dns records DOMAIN` and shown (with what DNS answers now) by
//! `GET /api/domains/{domain}/dns`.

use crate::config::Config;
use crate::store::Store;

/// One record to publish.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Record {
    /// Owner name, fully qualified with the final dot.
    pub name: String,
    /// MX, TXT, CNAME or SRV.
    #[serde(rename = "type")]
    pub rtype: &'static str,
    /// The value, in zone-file presentation (TXT without quotes).
    pub value: String,
    /// What it is for: MX, SPF, DKIM, DMARC, MTA-STS, TLS-RPT, autoconfig, SRV.
    pub purpose: &'static str,
}

/// The records `domain` should publish.
pub async fn expected(
    config: &Config,
    store: &Store,
    domain: &str,
) -> Result<Vec<Record>, crate::store::StoreError> {
    let domain = domain.trim_end_matches('.').to_lowercase();
    let host = config.hostname.to_lowercase();
    let rec = |name: String, rtype, value: String, purpose| Record {
        name: format!("{}.", name.trim_end_matches('.')),
        rtype,
        value,
        purpose,
    };
    let mut out = vec![
        rec(domain.clone(), "MX", format!("10 {host}."), "MX"),
        rec(domain.clone(), "TXT", "v=spf1 mx -all".into(), "SPF"),
    ];
    for key in crate::dkim::keys(store, &domain).await? {
        let k = if key.algorithm == "ed25519" {
            "ed25519"
        } else {
            "rsa"
        };
        out.push(rec(
            format!("{}._domainkey.{domain}", key.selector),
            "TXT",
            format!("v=DKIM1; k={k}; p={}", key.public_key),
            "DKIM",
        ));
    }
    out.push(rec(
        format!("_dmarc.{domain}"),
        "TXT",
        format!("v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain}"),
        "DMARC",
    ));
    // Also in mode "none": that is how a policy is withdrawn (RFC 8461 §8.3), under a new id.
    out.push(rec(
        format!("mta-sts.{domain}"),
        "CNAME",
        format!("{host}."),
        "MTA-STS",
    ));
    out.push(rec(
        format!("_mta-sts.{domain}"),
        "TXT",
        format!("v=STSv1; id={}", crate::mta_sts::published_id(config)),
        "MTA-STS",
    ));
    out.push(rec(
        format!("_smtp._tls.{domain}"),
        "TXT",
        format!("v=TLSRPTv1; rua=mailto:postmaster@{domain}"),
        "TLS-RPT",
    ));
    out.push(rec(
        format!("autoconfig.{domain}"),
        "CNAME",
        format!("{host}."),
        "autoconfig",
    ));
    out.push(rec(
        format!("_autodiscover._tcp.{domain}"),
        "SRV",
        format!("0 1 443 {host}."),
        "autoconfig",
    ));
    let services = crate::autoconfig::services(config);
    for label in [
        "_imaps._tcp",
        "_imap._tcp",
        "_pop3s._tcp",
        "_pop3._tcp",
        "_submissions._tcp",
        "_submission._tcp",
    ] {
        // RFC 6186 §3: a service not offered is published with the target ".".
        let value = match services.iter().position(|s| s.srv == label) {
            Some(i) => format!("{i} 1 {} {host}.", services[i].port),
            None => "0 0 0 .".into(),
        };
        out.push(rec(format!("{label}.{domain}"), "SRV", value, "SRV"));
    }
    Ok(out)
}

/// The records as zone-file lines (TXT values quoted, in 255-byte strings).
pub fn zone_text(records: &[Record]) -> String {
    let width = records.iter().map(|r| r.name.len()).max().unwrap_or(0);
    let mut s = String::new();
    let mut purpose = "";
    for r in records {
        if r.purpose != purpose {
            purpose = r.purpose;
            s.push_str(&format!("; {purpose}\n"));
        }
        let value = if r.rtype == "TXT" {
            let b = r.value.as_bytes();
            b.chunks(255)
                .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            r.value.clone()
        };
        s.push_str(&format!(
            "{:width$} 3600 IN {:5} {value}\n",
            r.name, r.rtype
        ));
    }
    s
}

/// Of the answers at a record's name, those of its kind: for TXT records tagged `v=…`
/// (SPF, DMARC, MTA-STS, TLS-RPT), those with the same tag.
pub fn of_kind(r: &Record, answers: Vec<String>) -> Vec<String> {
    let tag = |s: &str| {
        s.split([';', ' '])
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    };
    if r.rtype != "TXT" || r.purpose == "DKIM" {
        return answers;
    }
    let want = tag(&r.value);
    answers.into_iter().filter(|a| tag(a) == want).collect()
}

/// Whether the `published` answers (as [`lookup`] gives them) carry `r`.
pub fn matches(r: &Record, published: &[String]) -> bool {
    let squash = |s: &str| {
        s.chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_lowercase()
            .trim_end_matches('.')
            .to_string()
    };
    match r.purpose {
        "MX" => {
            let host = r.value.split_once(' ').map(|(_, h)| h).unwrap_or("");
            published.iter().any(|v| {
                v.split_once(' ')
                    .is_some_and(|(_, h)| squash(h) == squash(host))
            })
        }
        "SPF" | "DMARC" | "TLS-RPT" => {
            let prefix = squash(r.value.split(';').next().unwrap_or(&r.value));
            let prefix = prefix.split(' ').next().unwrap_or("");
            let wanted = if r.purpose == "SPF" { "v=spf1" } else { prefix };
            published
                .iter()
                .filter(|p| squash(p).starts_with(wanted))
                .count()
                == 1
        }
        "DKIM" => {
            let p = r.value.rsplit_once("p=").map(|(_, p)| p).unwrap_or("");
            published
                .iter()
                .any(|v| squash(v).contains(&format!("p={}", p.to_ascii_lowercase())))
        }
        _ => published.iter().any(|v| squash(v) == squash(&r.value)),
    }
}

/// What DNS answers for `name` and `rtype`, in presentation form (MX: "pref host", SRV:
/// "prio weight port target"), empty on any failure.
pub async fn lookup(
    resolver: &hickory_resolver::TokioResolver,
    name: &str,
    rtype: &str,
) -> Vec<String> {
    use hickory_resolver::proto::rr::{RData, RecordType};
    let fqdn = format!("{}.", name.trim_end_matches('.'));
    let kind = match rtype {
        "MX" => RecordType::MX,
        "CNAME" => RecordType::CNAME,
        "SRV" => RecordType::SRV,
        _ => RecordType::TXT,
    };
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        resolver.lookup(fqdn.as_str(), kind),
    )
    .await
    .ok()
    .and_then(Result::ok);
    let Some(answer) = answer else {
        return Vec::new();
    };
    answer
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::MX(m) if kind == RecordType::MX => {
                Some(format!("{} {}", m.preference, m.exchange.to_ascii()))
            }
            RData::TXT(t) if kind == RecordType::TXT => Some(
                t.txt_data
                    .iter()
                    .map(|d| String::from_utf8_lossy(d).into_owned())
                    .collect(),
            ),
            RData::CNAME(c) if kind == RecordType::CNAME => Some(c.0.to_ascii()),
            RData::SRV(s) if kind == RecordType::SRV => Some(format!(
                "{} {} {} {}",
                s.priority,
                s.weight,
                s.port,
                s.target.to_ascii()
            )),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_records_of_a_domain_name_this_server() {
        let store: Store = std::sync::Arc::new(crate::store::MemoryStore::default());
        let mut c = Config {
            hostname: "mail.example.org".into(),
            ..Default::default()
        };
        c.listen.imaps = Some(crate::config::Addrs::One("0.0.0.0:993".into()));
        c.listen.submission = Some(crate::config::Addrs::One("0.0.0.0:587".into()));
        let r = expected(&c, &store, "Example.ORG").await.unwrap();
        let find = |name: &str| {
            r.iter()
                .find(|x| x.name == name)
                .unwrap_or_else(|| panic!("{name}"))
        };
        assert_eq!(find("example.org.").value, "10 mail.example.org.");
        assert!(
            find("_mta-sts.example.org.")
                .value
                .starts_with("v=STSv1; id=")
        );
        assert_eq!(find("mta-sts.example.org.").value, "mail.example.org.");
        assert_eq!(
            find("_imaps._tcp.example.org.").value,
            "0 1 993 mail.example.org."
        );
        assert_eq!(
            find("_submission._tcp.example.org.").value,
            "1 1 587 mail.example.org."
        );
        assert_eq!(find("_pop3._tcp.example.org.").value, "0 0 0 .");
        assert!(
            find("_smtp._tls.example.org.")
                .value
                .starts_with("v=TLSRPTv1;")
        );
        let text = zone_text(&r);
        assert!(text.contains("\"v=spf1 mx -all\""), "{text}");
        // Matching what DNS answers.
        let mx = find("example.org.");
        assert!(matches(mx, &["10 MAIL.example.org.".into()]));
        assert!(!matches(mx, &["10 other.example.org.".into()]));
        let sts = find("_mta-sts.example.org.");
        assert!(matches(sts, &[sts.value.replace("; ", ";")]));
        assert!(!matches(sts, &["v=STSv1; id=old".into()]));
    }
}
