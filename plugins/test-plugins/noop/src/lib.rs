//! Test plugin: handles every hook and always answers `next` (benchmarks, chain tests).
//! With `config = { tag = "x" }` it adds `X-Noop: x` on data.

use corvus_sdk::{ALL_HOOKS, Config, Context, Hook, HookResult, Outcome, Plugin};

pub struct Noop {
    tag: Option<String>,
    calls: u64,
}

impl Plugin for Noop {
    const NAME: &'static str = "noop";
    const HOOKS: &'static [Hook] = &ALL_HOOKS;

    fn init(config: &Config) -> Result<Self, String> {
        Ok(Noop {
            tag: config.string("tag"),
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
        Ok(match &self.tag {
            // The number of calls this instance has seen shows whether the instance is reused
            // within a session.
            Some(t) => Outcome::next().with_header("X-Noop", format!("{t} calls={}", self.calls)),
            None => Outcome::next(),
        })
    }
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
}
