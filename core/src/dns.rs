//! DNS: one hickory resolver built from `[dns]`, the FCrDNS check of a connecting host (PTR
//! lookup, then forward lookup of that name must give the address back), and MX routing for
//! outbound delivery (RFC 5321 §5.1, RFC 7505).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::rr::RData;

use crate::config::Config;
use crate::ttl_cache::TtlCache;

/// Build the resolver: the configured name servers, or the system's.
pub fn resolver(config: &Config) -> Result<TokioResolver, String> {
    builder(config, false)?
        .build()
        .map_err(|e| format!("DNS resolver: {e}"))
}

/// A resolver builder for the configured name servers (or the system's), validating DNSSEC
/// when `validate`.
fn builder(
    config: &Config,
    validate: bool,
) -> Result<hickory_resolver::ResolverBuilder<TokioRuntimeProvider>, String> {
    let servers = config.nameservers();
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_secs(5);
    opts.attempts = 2;
    opts.cache_size = 4096;
    opts.validate = validate;
    Ok(if servers.is_empty() {
        let mut b =
            TokioResolver::builder_tokio().map_err(|e| format!("system DNS configuration: {e}"))?;
        let o = b.options_mut();
        o.timeout = opts.timeout;
        o.attempts = opts.attempts;
        o.cache_size = opts.cache_size;
        o.validate = validate;
        b
    } else {
        opts.ndots = 0;
        let name_servers = servers.iter().map(name_server).collect();
        let rc = ResolverConfig::from_parts(None, vec![], name_servers);
        TokioResolver::builder_with_config(rc, TokioRuntimeProvider::default()).with_options(opts)
    })
}

/// The DNSSEC-validating resolver of DANE (`[dns] dnssec`): the same name servers, trusting
/// `[dns] trust_anchors` (or the IANA root keys). `None` when DNSSEC is off. Kept apart from
/// [`resolver`], so the lookups DANE does not need (SPF, DKIM, FCrDNS) do not fail on a
/// domain with broken DNSSEC.
pub fn validating_resolver(config: &Config) -> Result<Option<TokioResolver>, String> {
    if !config.dns.dnssec {
        return Ok(None);
    }
    let mut text = String::new();
    for p in &config.dns.trust_anchors {
        let t = std::fs::read_to_string(p)
            .map_err(|e| format!("dns.trust_anchors: {}: {e}", p.display()))?;
        text.push_str(&t);
        text.push('\n');
    }
    let anchors = if text.trim().is_empty() {
        hickory_resolver::proto::dnssec::TrustAnchors::default()
    } else {
        text.parse::<hickory_resolver::proto::dnssec::TrustAnchors>()
            .map_err(|e| format!("dns.trust_anchors: not DNSKEY records in zone-file form: {e}"))?
    };
    builder(config, true)?
        .with_trust_anchor(std::sync::Arc::new(anchors))
        .build()
        .map(Some)
        .map_err(|e| format!("DNSSEC resolver: {e}"))
}

/// What a validating lookup says about a name's DANE status.
#[derive(Debug, Clone)]
pub enum Dane {
    /// No DANE: the MX, the address records or the TLSA records are not signed, or there are
    /// no TLSA records (proven or not).
    None,
    /// Secure TLSA records: TLS with a certificate they match is required.
    Tlsa(Vec<crate::dane::Tlsa>),
    /// The lookup failed (bogus signatures, or no answer): the host must not be used now.
    Failed(String),
}

/// Whether every answer record of the data type asked is DNSSEC-secure (and there is one).
fn secure(records: &[hickory_resolver::proto::rr::Record]) -> bool {
    let data: Vec<_> = records
        .iter()
        .filter(|r| !matches!(r.data, RData::DNSSEC(_)))
        .collect();
    !data.is_empty() && data.iter().all(|r| r.proof.is_secure())
}

fn is_bogus(e: &NetError) -> bool {
    matches!(e, NetError::Dns(DnsError::DnssecBogus))
}

/// Whether the MX RRset of `domain` is DNSSEC-secure (RFC 7672 §2.2.1: DANE applies only
/// to MX hosts learned securely); an error when it is bogus.
pub async fn secure_mx(resolver: &TokioResolver, domain: &str) -> Result<bool, String> {
    let name = format!("{}.", domain.trim_end_matches('.'));
    match tokio::time::timeout(Duration::from_secs(15), resolver.mx_lookup(name)).await {
        Ok(Ok(l)) => Ok(secure(l.answers())),
        Ok(Err(e)) if is_bogus(&e) => Err(format!(
            "MX lookup of {domain}: DNSSEC validation failed (bogus)"
        )),
        _ => Ok(false),
    }
}

/// The DANE status of MX host `host` (RFC 7672 §2.2.2): its address records must be secure,
/// then its `_25._tcp` TLSA records decide.
pub async fn dane(resolver: &TokioResolver, host: &str) -> Dane {
    let host = host.trim_end_matches('.');
    let timeout = Duration::from_secs(15);
    // A and AAAA apart: a combined lookup hides a bogus answer behind the other family's.
    let v4 = tokio::time::timeout(timeout, resolver.ipv4_lookup(format!("{host}."))).await;
    let v6 = tokio::time::timeout(timeout, resolver.ipv6_lookup(format!("{host}."))).await;
    let mut any_secure = false;
    for r in [
        v4.map(|r| r.map(|l| secure(l.answers()))),
        v6.map(|r| r.map(|l| secure(l.answers()))),
    ] {
        match r {
            Ok(Ok(s)) => any_secure |= s,
            Ok(Err(e)) if is_bogus(&e) => {
                return Dane::Failed(format!(
                    "address lookup of {host}: DNSSEC validation failed (bogus)"
                ));
            }
            _ => {}
        }
    }
    if !any_secure {
        return Dane::None;
    }
    let name = format!("_25._tcp.{host}.");
    let answer = tokio::time::timeout(
        timeout,
        resolver.lookup(name.as_str(), hickory_resolver::proto::rr::RecordType::TLSA),
    )
    .await;
    match answer {
        Err(_) => Dane::Failed(format!("TLSA lookup of {name}: no answer in time")),
        Ok(Err(e)) if is_bogus(&e) => Dane::Failed(format!(
            "TLSA lookup of {name}: DNSSEC validation failed (bogus)"
        )),
        Ok(Err(e)) if e.is_no_records_found() || e.is_nx_domain() => Dane::None,
        Ok(Err(NetError::Dns(DnsError::Nsec { .. }))) => Dane::None,
        Ok(Err(e)) => Dane::Failed(format!("TLSA lookup of {name}: {e}")),
        Ok(Ok(l)) => {
            let records: Vec<crate::dane::Tlsa> = l
                .answers()
                .iter()
                .filter(|r| r.proof.is_secure())
                .filter_map(|r| match &r.data {
                    RData::TLSA(t) => Some(crate::dane::Tlsa {
                        usage: t.cert_usage.into(),
                        selector: t.selector.into(),
                        matching: t.matching.into(),
                        data: t.cert_data.clone(),
                    }),
                    _ => None,
                })
                .take(100)
                .collect();
            if records.is_empty() {
                Dane::None
            } else {
                Dane::Tlsa(records)
            }
        }
    }
}

fn name_server(s: &SocketAddr) -> NameServerConfig {
    let mut udp = ConnectionConfig::udp();
    udp.port = s.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = s.port();
    NameServerConfig::new(s.ip(), true, vec![udp, tcp])
}

/// Result of the forward-confirmed reverse DNS check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fcrdns {
    /// The PTR name resolves back to the address.
    Pass(String),
    /// A PTR name exists but does not resolve back.
    Mismatch(String),
    /// No PTR record.
    None,
    /// Lookup failed (timeout, SERVFAIL).
    TempError,
}

impl Fcrdns {
    /// The verified name, or "".
    pub fn verified_name(&self) -> &str {
        match self {
            Fcrdns::Pass(n) => n,
            _ => "",
        }
    }
}

/// The FCrDNS check (RFC 8601 `iprev`): PTR lookup of `ip`, then forward lookup of each
/// name. Also until when its answer holds: the earliest expiry of the DNS answers it rests
/// on (a negative answer's from its SOA), `None` when it must not be kept (temporary failure,
/// a forward lookup that failed, a negative answer without an SOA, RFC 2308 §5).
async fn fcrdns(resolver: &TokioResolver, ip: IpAddr) -> (Fcrdns, Option<Instant>) {
    let negative = |e: &NetError| match e {
        NetError::Dns(DnsError::NoRecordsFound(n)) => n
            .negative_ttl
            .map(|ttl| Instant::now() + Duration::from_secs(u64::from(ttl))),
        _ => None,
    };
    let (names, mut until) =
        match tokio::time::timeout(Duration::from_secs(10), resolver.reverse_lookup(ip)).await {
            Ok(Ok(r)) => (
                r.answers()
                    .iter()
                    .filter_map(|rec| match &rec.data {
                        RData::PTR(p) => Some(p.to_ascii()),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
                Some(r.valid_until()),
            ),
            Ok(Err(e)) if e.is_no_records_found() || e.is_nx_domain() => {
                return (Fcrdns::None, negative(&e));
            }
            _ => return (Fcrdns::TempError, None),
        };
    let mut first = None;
    for name in names.into_iter().take(10) {
        let name = name.trim_end_matches('.').to_string();
        match tokio::time::timeout(
            Duration::from_secs(10),
            resolver.lookup_ip(format!("{name}.")),
        )
        .await
        {
            Ok(Ok(ips)) => {
                until = until.min(Some(ips.valid_until()));
                if ips.iter().any(|a| a == ip) {
                    return (Fcrdns::Pass(name), until);
                }
            }
            Ok(Err(e)) if e.is_no_records_found() => until = until.min(negative(&e)),
            _ => until = None,
        }
        first.get_or_insert(name);
    }
    (first.map(Fcrdns::Mismatch).unwrap_or(Fcrdns::None), until)
}

/// FCrDNS results by client address, each kept as long as the DNS answers behind it (at most
/// five minutes): a busy MX sees the same hosts again and again, and each check is two or three
/// lookups. At most 10,000 addresses (a flood of new ones empties the cache, it does not grow).
pub struct FcrdnsCache(TtlCache<IpAddr, Fcrdns>);

impl Default for FcrdnsCache {
    fn default() -> Self {
        FcrdnsCache(TtlCache::new(10_000, Duration::from_secs(300)))
    }
}

impl FcrdnsCache {
    /// The kept result for `ip`, if it is still valid.
    pub fn get(&self, ip: IpAddr) -> Option<Fcrdns> {
        self.0.get(&ip)
    }

    /// The kept result, or a fresh check (kept when its answers allow).
    pub async fn check(&self, resolver: &TokioResolver, ip: IpAddr) -> Fcrdns {
        if let Some(f) = self.get(ip) {
            return f;
        }
        let (f, until) = fcrdns(resolver, ip).await;
        if let Some(until) = until {
            self.0.insert(ip, f.clone(), until);
        }
        f
    }
}

/// Where to deliver mail for a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxRoute {
    /// Hosts in the order to try them (preference order, equal preferences shuffled).
    Hosts(Vec<String>),
    /// RFC 7505 null MX: the domain accepts no mail.
    NullMx,
    /// The domain does not exist.
    NoSuchDomain,
    /// DNS failed temporarily.
    TempFail(String),
}

/// Resolve the mail exchangers of `domain` (RFC 5321 §5.1): MX records by preference; with
/// none, the domain itself as the implicit MX when it has an address.
pub async fn mx_hosts(resolver: &TokioResolver, domain: &str) -> MxRoute {
    let fqdn = format!("{}.", domain.trim_end_matches('.'));
    match tokio::time::timeout(Duration::from_secs(30), resolver.mx_lookup(fqdn.as_str())).await {
        Ok(Ok(lookup)) => {
            let mut mx: Vec<(u16, String)> = lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(m) => Some((
                        m.preference,
                        m.exchange.to_ascii().trim_end_matches('.').to_lowercase(),
                    )),
                    _ => None,
                })
                .collect();
            if mx.is_empty() {
                return implicit_mx(resolver, domain).await;
            }
            if mx.len() == 1 && mx[0].1.is_empty() {
                return MxRoute::NullMx;
            }
            mx.retain(|(_, h)| !h.is_empty());
            // Equal preferences in random order (RFC 5321 §5.1).
            use rand::seq::SliceRandom;
            mx.shuffle(&mut rand::rng());
            mx.sort_by_key(|(p, _)| *p);
            MxRoute::Hosts(mx.into_iter().map(|(_, h)| h).collect())
        }
        Ok(Err(e)) if e.is_nx_domain() => MxRoute::NoSuchDomain,
        Ok(Err(e)) if e.is_no_records_found() => implicit_mx(resolver, domain).await,
        Ok(Err(e)) => MxRoute::TempFail(e.to_string()),
        Err(_) => MxRoute::TempFail("DNS timeout".into()),
    }
}

async fn implicit_mx(resolver: &TokioResolver, domain: &str) -> MxRoute {
    match host_addresses(resolver, domain).await {
        Ok(a) if !a.is_empty() => MxRoute::Hosts(vec![domain.to_string()]),
        Ok(_) => MxRoute::NoSuchDomain,
        Err(e) => MxRoute::TempFail(e),
    }
}

/// A and AAAA addresses of a host (an IP literal is returned as is).
pub async fn host_addresses(resolver: &TokioResolver, host: &str) -> Result<Vec<IpAddr>, String> {
    if let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(vec![ip]);
    }
    match tokio::time::timeout(
        Duration::from_secs(30),
        resolver.lookup_ip(format!("{}.", host.trim_end_matches('.'))),
    )
    .await
    {
        Ok(Ok(ips)) => Ok(ips.iter().collect()),
        Ok(Err(e)) if e.is_no_records_found() || e.is_nx_domain() => Ok(Vec::new()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("DNS timeout".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_dns::TestDns;

    fn resolver_for(dns: &TestDns) -> TokioResolver {
        let mut config = Config::default();
        config.dns.nameservers = vec![dns.addr.to_string()];
        resolver(&config).unwrap()
    }

    #[tokio::test]
    async fn fcrdns_results_are_kept_for_the_next_connection() {
        let dns = TestDns::start();
        let pass: IpAddr = "192.0.2.10".parse().unwrap();
        let liar: IpAddr = "192.0.2.11".parse().unwrap();
        let nameless: IpAddr = "192.0.2.12".parse().unwrap();
        dns.ptr(pass, "mail.good.test.");
        dns.a("mail.good.test", "192.0.2.10");
        dns.ptr(liar, "mail.bad.test.");
        dns.a("mail.bad.test", "192.0.2.99");
        let cache = FcrdnsCache::default();
        let expected = [
            (pass, Fcrdns::Pass("mail.good.test".into())),
            (liar, Fcrdns::Mismatch("mail.bad.test".into())),
            (nameless, Fcrdns::None),
        ];
        let r = resolver_for(&dns);
        for (ip, want) in &expected {
            assert_eq!(cache.get(*ip), None);
            assert_eq!(&cache.check(&r, *ip).await, want, "{ip}");
        }
        let asked = dns.queries();
        assert!(
            asked >= 5,
            "PTR and forward lookups went to the server: {asked}"
        );
        // A resolver with an empty cache of its own: the answers come from ours, no query.
        let fresh = resolver_for(&dns);
        for (ip, want) in &expected {
            assert_eq!(cache.get(*ip).as_ref(), Some(want), "{ip}");
            assert_eq!(&cache.check(&fresh, *ip).await, want, "{ip}");
        }
        assert_eq!(dns.queries(), asked);
        // Without the cache, the same resolver asks the server.
        assert_eq!(fcrdns(&fresh, pass).await.0, expected[0].1);
        assert!(dns.queries() > asked);
    }

    #[tokio::test]
    async fn temporary_failures_are_not_kept() {
        // Nothing listens there: the lookups time out (shortened for the test).
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut config = Config::default();
        config.dns.nameservers = vec![sock.local_addr().unwrap().to_string()];
        drop(sock);
        let r = resolver(&config).unwrap();
        let cache = FcrdnsCache::default();
        let ip: IpAddr = "192.0.2.20".parse().unwrap();
        assert_eq!(cache.check(&r, ip).await, Fcrdns::TempError);
        assert_eq!(cache.get(ip), None);
    }
}
