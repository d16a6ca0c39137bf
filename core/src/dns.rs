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
    let servers = config.nameservers();
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_secs(5);
    opts.attempts = 2;
    opts.cache_size = 4096;
    let builder = if servers.is_empty() {
        let mut b =
            TokioResolver::builder_tokio().map_err(|e| format!("system DNS configuration: {e}"))?;
        let o = b.options_mut();
        o.timeout = opts.timeout;
        o.attempts = opts.attempts;
        o.cache_size = opts.cache_size;
        b
    } else {
        opts.ndots = 0;
        let name_servers = servers.iter().map(name_server).collect();
        let rc = ResolverConfig::from_parts(None, vec![], name_servers);
        TokioResolver::builder_with_config(rc, TokioRuntimeProvider::default()).with_options(opts)
    };
    builder.build().map_err(|e| format!("DNS resolver: {e}"))
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
