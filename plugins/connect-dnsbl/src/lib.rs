//! connect-dnsbl: refuses clients whose address is listed in a DNS block list, at connect,
//! through the host's `dns` import. See README.md.

use corvus_sdk::{Config, Context, DnsError, Hook, HookResult, Outcome, Plugin, dns, log};

pub struct Dnsbl {
    zones: Vec<String>,
    /// Listing answers that count (empty: any 127.0.0.x answer).
    codes: Vec<String>,
    /// "reject" (554) or "tempfail" (451) when listed.
    action: String,
    /// What to do when a lookup fails temporarily: "continue" or "tempfail".
    on_dns_error: String,
    /// Addresses or networks never checked.
    skip: Vec<String>,
}

/// Whether `ip` is in `net` ("192.0.2.0/24", "::1/128" or a single address).
pub fn ip_in(ip: &str, net: &str) -> bool {
    use std::net::IpAddr;
    let (addr, len) = match net.split_once('/') {
        Some((a, l)) => (a, l.trim().parse::<u32>().ok()),
        None => (net, None),
    };
    let (Ok(ip), Ok(base)) = (ip.trim().parse::<IpAddr>(), addr.trim().parse::<IpAddr>()) else {
        return false;
    };
    match (ip, base) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let len = len.unwrap_or(32).min(32);
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let len = len.unwrap_or(128).min(128);
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

impl Plugin for Dnsbl {
    const NAME: &'static str = "connect-dnsbl";
    const HOOKS: &'static [Hook] = &[Hook::Connect];

    fn init(config: &Config) -> Result<Self, String> {
        let zones = config.list("zones").unwrap_or_default();
        if zones.is_empty() {
            return Err(
                "zones: give at least one block list zone, e.g. [\"zen.spamhaus.org\"]".into(),
            );
        }
        let action = config.string_or("action", "reject");
        if action != "reject" && action != "tempfail" {
            return Err(format!(
                "action: {action:?} is not \"reject\" or \"tempfail\""
            ));
        }
        let on_dns_error = config.string_or("on_dns_error", "continue");
        if on_dns_error != "continue" && on_dns_error != "tempfail" {
            return Err(format!(
                "on_dns_error: {on_dns_error:?} is not \"continue\" or \"tempfail\""
            ));
        }
        Ok(Dnsbl {
            zones: zones
                .into_iter()
                .map(|z| z.trim().trim_matches('.').to_ascii_lowercase())
                .collect(),
            codes: config.list("codes").unwrap_or_default(),
            action,
            on_dns_error,
            skip: config.list("skip").unwrap_or_default(),
        })
    }

    fn on_connect(&mut self, ctx: &Context) -> HookResult {
        let client_ip = ctx.client_ip();
        if self.skip.iter().any(|n| ip_in(&client_ip, n)) {
            return Ok(Outcome::next());
        }
        let Some(rev) = dns::reverse_ip(&client_ip) else {
            return Ok(Outcome::next());
        };
        for zone in &self.zones {
            let name = format!("{rev}.{zone}");
            match dns::a(&name) {
                Ok(answers) => {
                    let listed = answers.iter().any(|a| {
                        if self.codes.is_empty() {
                            a.starts_with("127.")
                        } else {
                            self.codes.iter().any(|c| c == a)
                        }
                    });
                    if listed {
                        log::info(&format!(
                            "{} is listed in {zone} ({})",
                            client_ip,
                            answers.join(", ")
                        ));
                        let text = format!(
                            "5.7.1 Service unavailable; client host [{}] blocked using {zone}",
                            client_ip
                        );
                        return Ok(if self.action == "reject" {
                            Outcome::reject(554, text)
                        } else {
                            Outcome::tempfail(451, text.replacen("5.7.1", "4.7.1", 1))
                        });
                    }
                }
                Err(DnsError::NotFound) => {}
                Err(e) => {
                    log::warn(&format!("{name}: lookup failed: {e:?}"));
                    if self.on_dns_error == "tempfail" {
                        return Ok(Outcome::tempfail(
                            451,
                            "4.4.3 Block list lookup failed, try again later",
                        ));
                    }
                }
            }
        }
        Ok(Outcome::next())
    }
}

corvus_sdk::export!(Dnsbl);

#[cfg(test)]
mod tests {
    use super::*;
    use corvus_sdk::testing::TestHost;

    const CFG: &str = r#"{"zones": ["bl.example", "bl2.example"], "skip": ["10.0.0.0/8"]}"#;

    #[test]
    fn listed_client_is_rejected() {
        let mut h = TestHost::<Dnsbl>::new(CFG).unwrap();
        h.set_dns("a", "7.2.0.192.bl2.example", Ok(vec!["127.0.0.2".into()]));
        let out = h.connect("192.0.2.7").unwrap();
        assert_eq!(out.verdict.name(), "reject");
        assert!(h.logs()[0].contains("listed in bl2.example"));
        assert_eq!(h.connect("192.0.2.8").unwrap().verdict.name(), "next");
    }

    #[test]
    fn skipped_networks_and_ipv6() {
        let mut h = TestHost::<Dnsbl>::new(CFG).unwrap();
        h.set_dns("a", "1.0.0.10.bl.example", Ok(vec!["127.0.0.2".into()]));
        assert_eq!(h.connect("10.0.0.1").unwrap().verdict.name(), "next");
        let rev = corvus_sdk::dns::reverse_ip("2001:db8::1").unwrap();
        assert!(
            rev.starts_with("1.0.0.0.") && rev.ends_with(".8.b.d.0.1.0.0.2"),
            "{rev}"
        );
        h.set_dns(
            "a",
            &format!("{rev}.bl.example"),
            Ok(vec!["127.0.0.4".into()]),
        );
        assert_eq!(h.connect("2001:db8::1").unwrap().verdict.name(), "reject");
    }

    #[test]
    fn dns_errors_follow_the_policy() {
        let mut h = TestHost::<Dnsbl>::new(
            r#"{"zones": ["bl.example"], "on_dns_error": "tempfail", "action": "tempfail"}"#,
        )
        .unwrap();
        h.set_dns(
            "a",
            "7.2.0.192.bl.example",
            Err(DnsError::Temporary("timeout".into())),
        );
        assert_eq!(h.connect("192.0.2.7").unwrap().verdict.name(), "tempfail");
        assert!(TestHost::<Dnsbl>::new("{}").is_err());
    }
}
