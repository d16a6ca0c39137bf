//! DNS: one hickory resolver built from `[dns]`, and the FCrDNS check of a connecting host
//! (PTR lookup, then forward lookup of that name must give the address back).

use std::net::IpAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;

use crate::config::Config;

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
        *b.options_mut() = opts;
        b
    } else {
        let mut rc = ResolverConfig::new();
        for s in servers {
            rc.add_name_server(NameServerConfig::new(s, Protocol::Udp));
            rc.add_name_server(NameServerConfig::new(s, Protocol::Tcp));
        }
        opts.ndots = 0;
        TokioResolver::builder_with_config(rc, TokioConnectionProvider::default())
            .with_options(opts)
    };
    Ok(builder.build())
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

/// PTR lookup of `ip`, then forward lookup of each name (RFC 8601 `iprev`).
pub async fn fcrdns(resolver: &TokioResolver, ip: IpAddr) -> Fcrdns {
    let names =
        match tokio::time::timeout(Duration::from_secs(10), resolver.reverse_lookup(ip)).await {
            Ok(Ok(r)) => r.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            Ok(Err(e)) if e.is_no_records_found() => return Fcrdns::None,
            _ => return Fcrdns::TempError,
        };
    let mut first = None;
    for name in names.into_iter().take(10) {
        let name = name.trim_end_matches('.').to_string();
        if let Ok(Ok(ips)) = tokio::time::timeout(
            Duration::from_secs(10),
            resolver.lookup_ip(format!("{name}.")),
        )
        .await
            && ips.iter().any(|a| a == ip)
        {
            return Fcrdns::Pass(name);
        }
        first.get_or_insert(name);
    }
    first.map(Fcrdns::Mismatch).unwrap_or(Fcrdns::None)
}
