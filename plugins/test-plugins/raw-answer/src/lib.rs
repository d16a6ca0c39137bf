//! Test plugin written against `sdk/wit/v0.3` (the previous generation, which the host still
//! loads) without the SDK, to break the hook protocol on
//! purpose (the SDK never does). `config.mode` at on-rcpt:
//! "done-without-outcome" returns `done` without calling `answer.set-outcome`;
//! "failed-without-reason" returns `failed` without `answer.fail`;
//! "outcome-then-next" hands over a reject, then returns `next` (the status decides: next);
//! "context-in-init" reads `context.rcpt` in `init` (outside a hook call: init fails);
//! "reject" rejects with 550 and the text `config.text`;
//! "header-at-rcpt" hands over a header at rcpt (where headers are not allowed);
//! "bare" declares every hook and answers each with `next` at once, touching nothing: the
//! least a plugin can cost the host (benchmarks).

wit_bindgen::generate!({ path: "../../../sdk/wit/v0.3", world: "plugin" });

use corvus::plugin::types::{Actions, Header, Hook, Outcome, PluginInfo, Reply, Status, Verdict};
use corvus::plugin::{answer, config, context};
use exports::corvus::plugin::hooks::Guest;

struct Raw;

/// `config.mode`, read from the host once (at `describe` or `init`, whichever comes first);
/// hook calls make no import call for it.
static MODE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Hooks it declares only in "bare" mode (which answers `next` to everything).
macro_rules! next_only {
    ($($name:ident;)*) => {
        $(fn $name(_session: u64) -> Status {
            Status::Next
        })*
    };
}

fn mode() -> &'static str {
    MODE.get_or_init(|| config::get_string("mode").unwrap_or_default())
}

impl Guest for Raw {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "raw-answer".into(),
            version: "0.1.0".into(),
            hooks: if mode() == "bare" {
                vec![
                    Hook::Connect,
                    Hook::Helo,
                    Hook::Auth,
                    Hook::Mail,
                    Hook::Rcpt,
                    Hook::Data,
                    Hook::Delivery,
                    Hook::Fetch,
                ]
            } else {
                vec![Hook::Rcpt]
            },
        }
    }
    fn init(_config: String) -> Result<(), String> {
        if mode() == "context-in-init" {
            let _ = context::rcpt();
        }
        Ok(())
    }
    fn on_rcpt(_session: u64) -> Status {
        let outcome = |verdict, add_headers| Outcome {
            verdict,
            actions: Actions {
                add_headers,
                set_rcpt: None,
                file_into: None,
            },
        };
        match mode() {
            "done-without-outcome" => Status::Done,
            "reject" => {
                let text = config::get_string("text").unwrap_or_default();
                answer::set_outcome(&outcome(Verdict::Reject(Reply { code: 550, text }), vec![]));
                Status::Done
            }
            "header-at-rcpt" => {
                let header = Header {
                    name: "X-Raw".into(),
                    value: "at rcpt".into(),
                };
                answer::set_outcome(&outcome(Verdict::Next, vec![header]));
                Status::Done
            }
            "failed-without-reason" => Status::Failed,
            "outcome-then-next" => {
                let text = "not used".into();
                answer::set_outcome(&outcome(Verdict::Reject(Reply { code: 550, text }), vec![]));
                Status::Next
            }
            _ => Status::Next,
        }
    }
    next_only! {
        on_connect;
        on_helo;
        on_auth;
        on_mail;
        on_data;
        on_delivery;
        on_fetch;
    }
}

export!(Raw);
