//! Test plugin: handles every hook and always answers `next` (benchmarks, chain tests).
//! With `config = { tag = "x" }` it adds `X-Noop: x` on data; with `auth = true`, an
//! `X-Noop-Auth` header listing the sender-authentication facts it got from the host; with
//! `spam = true`, `X-Noop-Spam` with the spam filter's result (`score action symbols`, or
//! `none`).

use corvus_sdk::{ALL_HOOKS, Config, Context, Hook, HookResult, Outcome, Plugin, Route};

pub struct Noop {
    tag: Option<String>,
    auth: bool,
    /// Add X-Noop-Spam with the spam facts (data).
    spam: bool,
    /// Add X-Noop-Size with the length of the message it read (data).
    read_message: bool,
    /// Add X-Noop-Facts with every fact of the context (data).
    facts: bool,
    calls: u64,
}

impl Plugin for Noop {
    const NAME: &'static str = "noop";
    const HOOKS: &'static [Hook] = &ALL_HOOKS;

    fn init(config: &Config) -> Result<Self, String> {
        Ok(Noop {
            tag: config.string("tag"),
            auth: config.bool("auth").unwrap_or(false),
            spam: config.bool("spam").unwrap_or(false),
            read_message: config.bool("read_message").unwrap_or(false),
            facts: config.bool("facts").unwrap_or(false),
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
    fn on_data(&mut self, ctx: &Context) -> HookResult {
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
        if self.spam {
            let spam = match corvus_sdk::spam::facts() {
                Some(s) => format!("{:.2} {} {}", s.score, s.action, s.symbols.join(",")),
                None => "none".into(),
            };
            out = out.with_header("X-Noop-Spam", spam);
        }
        if self.read_message {
            out = out.with_header("X-Noop-Size", ctx.message().len().to_string());
        }
        if self.facts {
            out = out.with_header("X-Noop-Facts", describe_context(ctx));
        }
        Ok(out)
    }
}

/// "spf=… (domain) helo=… dkim=… [d1 d2] dmarc=… (domain, policy) arc=… (sealer) action=…".
/// Every fact of a context on one line (what the host tests compare).
pub fn describe_context(c: &Context) -> String {
    let route = match c.route() {
        Route::Unknown => "unknown".to_string(),
        Route::Local(users) => format!("local:{}", users.join(",")),
        Route::UnknownLocal => "unknown-local".to_string(),
        Route::Remote => "remote".to_string(),
    };
    let credentials = c
        .credentials()
        .map(|k| format!("{}/{}/{}/{}", k.username, k.password, k.mechanism, k.valid))
        .unwrap_or_default();
    let fetch = c
        .fetch()
        .map(|f| format!("{}/{}/{}", f.mailbox, f.uid, f.protocol))
        .unwrap_or_default();
    format!(
        "hook={} listener={} ip={} ptr={} helo={} tls={} user={} from={} rcpt={} route={} \
         rcpts={} spf={} dkim={} dmarc={} credentials={} fetch={} mx={} size={} truncated={} \
         message={}",
        c.hook().name(),
        c.listener(),
        c.client_ip(),
        c.client_ptr(),
        c.helo(),
        c.tls(),
        c.user(),
        c.mail_from(),
        c.rcpt(),
        route,
        c.rcpts().join(","),
        c.spf(),
        c.dkim(),
        c.dmarc(),
        credentials,
        fetch,
        c.remote_mx().unwrap_or_default(),
        c.message_size(),
        c.message_truncated(),
        c.message().len(),
    )
}

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
    fn state_lasts_one_session() {
        let mut h = TestHost::<Noop>::new(r#"{"tag":"t"}"#).unwrap();
        h.connect("192.0.2.1").unwrap();
        h.next_session();
        let out = h.data("a@x", &["b@y"], "Subject: s\n\nhi\n").unwrap();
        assert_eq!(out.actions.add_headers[0].value, "t calls=1");
    }

    #[test]
    fn reads_the_message_and_the_facts() {
        let mut h = TestHost::<Noop>::new(r#"{"read_message":true,"facts":true}"#).unwrap();
        let out = h
            .data("a@x", &["b@y", "c@y"], "Subject: s\n\nhi\n")
            .unwrap();
        assert_eq!(out.actions.add_headers[0].value, "18");
        let facts = &out.actions.add_headers[1].value;
        assert!(
            facts.starts_with("hook=data listener=smtp ip=127.0.0.1 "),
            "{facts}"
        );
        assert!(
            facts.contains(" from=a@x rcpt= route=unknown rcpts=b@y,c@y "),
            "{facts}"
        );
        assert!(
            facts.ends_with(" size=18 truncated=false message=18"),
            "{facts}"
        );
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
