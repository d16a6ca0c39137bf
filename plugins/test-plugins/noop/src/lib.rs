//! Test plugin: handles every hook and always answers `next` (benchmarks, chain tests).
//! With `config = { tag = "x" }` it adds `X-Noop: x` on data; with `auth = true`, an
//! `X-Noop-Auth` header listing the sender-authentication facts it got from the host.

use corvus_sdk::{ALL_HOOKS, Config, Context, Hook, HookResult, Outcome, Plugin};

pub struct Noop {
    tag: Option<String>,
    auth: bool,
    calls: u64,
}

impl Plugin for Noop {
    const NAME: &'static str = "noop";
    const HOOKS: &'static [Hook] = &ALL_HOOKS;

    fn init(config: &Config) -> Result<Self, String> {
        Ok(Noop {
            tag: config.string("tag"),
            auth: config.bool("auth").unwrap_or(false),
            calls: 0,
        })
    }
    fn on_connect(&mut self, _ctx: &Context) -> HookResult {
        self.calls += 1;
        Ok(Outcome::next())
    }
    fn on_rcpt(&mut self, _ctx: &Context) -> HookResult {
        self.calls += 1;
        Ok(Outcome::next())
    }
    fn on_data(&mut self, _ctx: &Context, _message: &[u8]) -> HookResult {
        self.calls += 1;
        let mut out = match &self.tag {
            // The number of calls this instance has seen shows whether the instance is reused
            // within a session.
            Some(t) => Outcome::next().with_header("X-Noop", format!("{t} calls={}", self.calls)),
            None => Outcome::next(),
        };
        if self.auth {
            out = out.with_header("X-Noop-Auth", describe_auth(&corvus_sdk::auth::facts()));
        }
        Ok(out)
    }
}

/// "spf=… (domain) helo=… dkim=… [d1 d2] dmarc=… (domain, policy) arc=… (sealer) action=…".
pub fn describe_auth(a: &corvus_sdk::AuthFacts) -> String {
    format!(
        "spf={} ({}) helo={} dkim={} [{}] dmarc={} ({}, {}) arc={} ({}) action={}",
        a.spf,
        a.spf_domain,
        a.spf_helo,
        a.dkim,
        a.dkim_domains.join(" "),
        a.dmarc,
        a.dmarc_domain,
        a.dmarc_policy,
        a.arc,
        a.arc_sealer,
        a.action
    )
}

corvus_sdk::export!(Noop);

#[cfg(test)]
mod tests {
    use super::*;
    use corvus_sdk::testing::TestHost;

    #[test]
    fn counts_calls_and_tags() {
        let mut h = TestHost::<Noop>::new(r#"{"tag":"t"}"#).unwrap();
        h.connect("192.0.2.1").unwrap();
        let out = h.data("a@x", &["b@y"], "Subject: s\n\nhi\n").unwrap();
        assert_eq!(out.actions.add_headers[0].value, "t calls=2");
    }

    #[test]
    fn reports_the_auth_facts() {
        let mut h = TestHost::<Noop>::new(r#"{"auth":true}"#).unwrap();
        h.set_auth(corvus_sdk::AuthFacts {
            dkim: "pass".into(),
            dkim_domains: vec!["a.example".into(), "b.example".into()],
            ..corvus_sdk::testing::no_auth_facts()
        });
        let out = h.data("a@x", &["b@y"], "Subject: s\n\nhi\n").unwrap();
        assert_eq!(out.actions.add_headers[0].name, "X-Noop-Auth");
        assert!(
            out.actions.add_headers[0]
                .value
                .contains("dkim=pass [a.example b.example]")
        );
    }
}
