//! Validation of what the types cannot check: addresses, referenced files, domain names
//! and limits that must agree with each other.

use super::*;

impl Config {
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
        for (key, addrs) in [("http", &self.listen.http), ("https", &self.listen.https)] {
            for s in addrs.iter().flat_map(|a| a.strings()) {
                if s.parse::<SocketAddr>().is_err() {
                    problems.push(format!(
                        "listen.{key}: {s:?} is not an address; write ip:port, e.g. \"127.0.0.1:8080\""
                    ));
                }
            }
        }
        if self.http.max_connections == 0 {
            problems.push("http.max_connections: must be at least 1".into());
        }
        if self.mta_sts.max_age > Duration::from_secs(31_557_600) {
            problems.push(
                "mta_sts.max_age: at most a year (31557600 s, RFC 8461 3.2); e.g. \"7d\"".into(),
            );
        }
        for mx in &self.mta_sts.mx {
            if !valid_mx_pattern(mx) {
                problems.push(format!(
                    "mta_sts.mx: {mx:?} is not a host name or a wildcard like \"*.example.org\""
                ));
            }
        }
        if self.acme.enabled() {
            if !self.acme.directory.starts_with("https://") {
                problems.push(format!(
                    "acme.directory: {:?} is not an https:// URL (e.g. \"https://acme-v02.api.letsencrypt.org/directory\")",
                    self.acme.directory
                ));
            }
            for d in &self.acme.domains {
                if !valid_mx_pattern(d) || d.starts_with("*.") {
                    problems.push(format!("acme.domains: {d:?} is not a host name (wildcards need DNS-01, which Corvus does not do)"));
                }
            }
            match self.acme.challenge {
                AcmeChallenge::Http01 if self.listen.http.is_none() => problems.push(
                    "acme.challenge: \"http-01\" needs [listen] http (on port 80 for a public CA); add it or use \"tls-alpn-01\"".into(),
                ),
                AcmeChallenge::TlsAlpn01 if self.listen.https.is_none() && self.listen.imaps.is_none() && self.listen.submissions.is_none() && self.listen.pop3s.is_none() => problems.push(
                    "acme.challenge: \"tls-alpn-01\" needs a TLS listener the CA reaches on port 443 ([listen] https); add it or use \"http-01\"".into(),
                ),
                _ => {}
            }
            if self.tls.cert.is_some() {
                problems.push(
                    "acme and tls.cert: choose one; with [acme], remove tls.cert and tls.key"
                        .into(),
                );
            }
        }
        if !self.dns.trust_anchors.is_empty() && !self.dns.dnssec {
            problems.push("dns.trust_anchors: set dns.dnssec = true too (the anchors are used only for DNSSEC validation)".into());
        }
        for p in &self.dns.trust_anchors {
            if !p.is_file() {
                problems.push(format!(
                    "dns.trust_anchors: file {} does not exist; fix the path (DNSKEY records in zone-file form) or remove it",
                    p.display()
                ));
            }
        }
        if self.delivery.mta_sts_port == 0 {
            problems.push("delivery.mta_sts_port: must not be 0 (443 unless testing)".into());
        }
        if self.trace.max_traces == 0 {
            problems
                .push("trace.max_traces: must be at least 1 (traces cannot be turned off)".into());
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
            match h.kinds_given() {
                0 => {
                    problems.push(format!(
                        "hooks[{i}]: give script = \"file.rhai\", plugin = \"file.wasm\", rspamd = \"http://127.0.0.1:11333\" or milter = \"127.0.0.1:8891\""
                    ));
                    continue;
                }
                1 => {}
                _ => {
                    problems.push(format!(
                        "hooks[{i}]: give one of script, plugin, rspamd and milter per entry"
                    ));
                    continue;
                }
            }
            match h.kind() {
                HookKind::Plugin(p) if !p.is_file() => problems.push(format!(
                    "hooks[{i}].plugin: file {} does not exist (relative paths start at the config file's directory)",
                    p.display()
                )),
                HookKind::Script(s) if !s.is_file() => problems.push(format!(
                    "hooks[{i}].script: file {} does not exist (relative paths start at the config file's directory)",
                    s.display()
                )),
                HookKind::Rspamd(_) | HookKind::Milter(_) => {
                    if let Err(e) = crate::hooks::filter_config::check(h) {
                        problems.push(format!("hooks[{i}].{e}"));
                    }
                }
                _ => {}
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
        problems.extend(self.store.check());
        if self.delivery.retry.is_empty() {
            problems
                .push("delivery.retry: give at least one interval, e.g. [\"1m\", \"5m\"]".into());
        }
        problems
    }
}

impl StoreConfig {
    /// `[store]`: a PostgreSQL backend needs a URL that parses; sled takes none.
    fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match (self.backend, &self.url) {
            (StoreBackend::Postgres, None) => problems.push(
                "store.url: required with backend = \"postgres\", e.g. \"postgresql://corvus:secret@127.0.0.1:5432/corvus\" or \"host=/run/postgresql dbname=corvus\"".into(),
            ),
            (StoreBackend::Postgres, Some(url)) => {
                if let Err(e) = crate::store::parse_url(url) {
                    problems.push(format!(
                        "{e}; write postgresql://user:password@host:port/database or host=/socket/dir dbname=database"
                    ));
                }
            }
            (StoreBackend::Sled, Some(_)) => problems.push(
                "store.url: only used with backend = \"postgres\" (sled keeps its data in data_dir)".into(),
            ),
            (StoreBackend::Sled, None) => {}
        }
        if !(1..=10_000).contains(&self.pool_size) {
            problems.push("store.pool_size: must be between 1 and 10000, e.g. 16".into());
        }
        if self.lease < Duration::from_secs(3) {
            problems.push("store.lease: must be at least 3s, e.g. \"120s\"".into());
        }
        problems
    }
}
