//! auth-table: checks AUTH credentials against a table in the plugin's config. See README.md.

use corvus_sdk::{Config, Context, Hook, HookResult, Outcome, Plugin, log};

pub struct AuthTable {
    users: Vec<(String, String)>,
    /// "sufficient": a match logs in, anything else is left to the account store.
    /// "required": users in the table must match; unknown users are left to the store.
    /// "exclusive": only the table decides.
    mode: String,
}

/// Compare without an early exit on the first differing byte.
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = (a.len() != b.len()) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

impl Plugin for AuthTable {
    const NAME: &'static str = "auth-table";
    const HOOKS: &'static [Hook] = &[Hook::Auth];

    fn init(config: &Config) -> Result<Self, String> {
        let users: Vec<(String, String)> = config
            .table("users")
            .ok_or("users: give a table of address = \"password\"")?
            .into_iter()
            .map(|(u, p)| (u.to_ascii_lowercase(), p))
            .collect();
        let mode = config.string_or("mode", "sufficient");
        if !["sufficient", "required", "exclusive"].contains(&mode.as_str()) {
            return Err(format!(
                "mode: {mode:?} is not \"sufficient\", \"required\" or \"exclusive\""
            ));
        }
        Ok(AuthTable { users, mode })
    }

    fn on_auth(&mut self, ctx: &Context) -> HookResult {
        let Some(c) = ctx.credentials() else {
            return Ok(Outcome::next());
        };
        let user = c.username.to_ascii_lowercase();
        let entry = self.users.iter().find(|(u, _)| *u == user);
        let refuse = || Outcome::reject(535, "5.7.8 Authentication credentials invalid");
        Ok(match entry {
            Some((_, pw)) if same(pw, &c.password) => {
                log::info(&format!("{user} logged in from the table"));
                Outcome::accept()
            }
            Some(_) if self.mode != "sufficient" => {
                log::info(&format!("{user}: wrong password"));
                refuse()
            }
            None if self.mode == "exclusive" => refuse(),
            _ => Outcome::next(),
        })
    }
}

corvus_sdk::export!(AuthTable);

#[cfg(test)]
mod tests {
    use super::*;
    use corvus_sdk::testing::TestHost;

    const CFG: &str = r#"{"users": {"alice@example.com": "wonderland"}, "mode": "required"}"#;

    #[test]
    fn table_decides_for_its_users() {
        let mut h = TestHost::<AuthTable>::new(CFG).unwrap();
        assert_eq!(
            h.auth("Alice@example.com", "wonderland", false)
                .unwrap()
                .verdict
                .name(),
            "accept"
        );
        assert_eq!(
            h.auth("alice@example.com", "nope", true)
                .unwrap()
                .verdict
                .name(),
            "reject"
        );
        assert_eq!(
            h.auth("bob@example.com", "x", true).unwrap().verdict.name(),
            "next"
        );
    }

    #[test]
    fn modes() {
        let mut s = TestHost::<AuthTable>::new(r#"{"users": {"alice@example.com": "w"}}"#).unwrap();
        assert_eq!(
            s.auth("alice@example.com", "bad", true)
                .unwrap()
                .verdict
                .name(),
            "next"
        );
        let mut x = TestHost::<AuthTable>::new(
            r#"{"users": {"alice@example.com": "w"}, "mode": "exclusive"}"#,
        )
        .unwrap();
        assert_eq!(
            x.auth("bob@example.com", "x", true).unwrap().verdict.name(),
            "reject"
        );
        assert!(TestHost::<AuthTable>::new("{}").is_err());
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "abcd"));
    }
}
