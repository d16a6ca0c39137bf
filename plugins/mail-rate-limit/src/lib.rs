//! mail-rate-limit: at most `limit` messages per sender (or authenticated user, or client
//! address) per `window`, counted in the plugin's key-value store at MAIL FROM. See README.md.

use corvus_sdk::{Config, Context, Hook, HookResult, Outcome, Plugin, domain_of, kv, log};

pub struct RateLimit {
    limit: i64,
    window: u32,
    by: By,
    exempt: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum By {
    Sender,
    Domain,
    User,
    Ip,
}

/// Seconds in "30s", "15m", "1h", "1d" or a plain number of seconds.
pub fn parse_window(s: &str) -> Option<u32> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u32 = num.parse().ok()?;
    let mult = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    n.checked_mul(mult).filter(|w| *w > 0)
}

impl RateLimit {
    fn key(&self, ctx: &Context) -> String {
        let sender = ctx.mail_from().to_ascii_lowercase();
        let user = ctx.user();
        match self.by {
            By::User if !user.is_empty() => format!("user:{}", user.to_ascii_lowercase()),
            By::Ip => format!("ip:{}", ctx.client_ip()),
            By::Domain if !sender.is_empty() => format!("domain:{}", domain_of(&sender)),
            _ if sender.is_empty() => format!("ip:{}", ctx.client_ip()),
            _ => format!("from:{sender}"),
        }
    }
}

impl Plugin for RateLimit {
    const NAME: &'static str = "mail-rate-limit";
    const HOOKS: &'static [Hook] = &[Hook::Mail];

    fn init(config: &Config) -> Result<Self, String> {
        let limit = config.int_or("limit", 100);
        if limit < 1 {
            return Err(format!("limit: {limit} must be at least 1"));
        }
        let window = match config.string("window") {
            Some(w) => parse_window(&w)
                .ok_or_else(|| format!("window: {w:?} is not a duration like \"1h\" or \"15m\""))?,
            None => 3600,
        };
        let by = match config.string_or("by", "sender").as_str() {
            "sender" => By::Sender,
            "domain" => By::Domain,
            "user" => By::User,
            "ip" => By::Ip,
            other => {
                return Err(format!(
                    "by: {other:?} is not \"sender\", \"domain\", \"user\" or \"ip\""
                ));
            }
        };
        Ok(RateLimit {
            limit,
            window,
            by,
            exempt: config
                .list("exempt")
                .unwrap_or_default()
                .into_iter()
                .map(|e| e.to_ascii_lowercase())
                .collect(),
        })
    }

    fn on_mail(&mut self, ctx: &Context) -> HookResult {
        let from = ctx.mail_from().to_ascii_lowercase();
        let client_ip = ctx.client_ip();
        if self
            .exempt
            .iter()
            .any(|e| *e == from || *e == domain_of(&from) || *e == client_ip)
        {
            return Ok(Outcome::next());
        }
        let key = self.key(ctx);
        let n = kv::incr(&key, 1, Some(self.window))?;
        if n > self.limit {
            if n == self.limit + 1 {
                log::warn(&format!(
                    "{key}: over {} messages in {} s",
                    self.limit, self.window
                ));
            }
            return Ok(Outcome::tempfail(
                451,
                format!(
                    "4.7.1 Too many messages from you ({} per {} s); try again later",
                    self.limit, self.window
                ),
            ));
        }
        Ok(Outcome::next())
    }
}

corvus_sdk::export!(RateLimit);

#[cfg(test)]
mod tests {
    use super::*;
    use corvus_sdk::testing::TestHost;

    #[test]
    fn limits_per_sender_within_the_window() {
        let mut h = TestHost::<RateLimit>::new(r#"{"limit": 2, "window": "1m"}"#).unwrap();
        assert_eq!(h.mail("a@x.example").unwrap().verdict.name(), "next");
        // A new session (instance) shares the counter.
        let mut h2 = h.new_instance().unwrap();
        assert_eq!(h2.mail("A@x.example").unwrap().verdict.name(), "next");
        assert_eq!(h.mail("a@x.example").unwrap().verdict.name(), "tempfail");
        assert_eq!(h.mail("b@x.example").unwrap().verdict.name(), "next");
        h.advance_clock(61);
        assert_eq!(h.mail("a@x.example").unwrap().verdict.name(), "next");
        assert_eq!(h.kv("from:a@x.example").as_deref(), Some(&b"1"[..]));
    }

    #[test]
    fn by_domain_and_exemptions() {
        let mut h = TestHost::<RateLimit>::new(
            r#"{"limit": 1, "by": "domain", "exempt": ["vip.example"]}"#,
        )
        .unwrap();
        assert_eq!(h.mail("a@x.example").unwrap().verdict.name(), "next");
        assert_eq!(h.mail("b@x.example").unwrap().verdict.name(), "tempfail");
        assert_eq!(h.mail("a@vip.example").unwrap().verdict.name(), "next");
        assert_eq!(h.mail("a@vip.example").unwrap().verdict.name(), "next");
        assert!(TestHost::<RateLimit>::new(r#"{"window": "soon"}"#).is_err());
        assert_eq!(parse_window("90"), Some(90));
        assert_eq!(parse_window("2h"), Some(7200));
    }
}
