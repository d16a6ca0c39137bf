//! Test plugin written against `sdk/wit` without the SDK, to break the hook protocol on
//! purpose (the SDK never does). `config.mode` at on-rcpt:
//! "done-without-outcome" returns `done` without calling `answer.set-outcome`;
//! "failed-without-reason" returns `failed` without `answer.fail`;
//! "outcome-then-next" hands over a reject, then returns `next` (the status decides: next);
//! "context-in-init" reads `context.rcpt` in `init` (outside a hook call: init fails);
//! "bare" declares every hook and answers each with `next` at once, touching nothing: the
//! least a plugin can cost the host (benchmarks).

wit_bindgen::generate!({ path: "../../../sdk/wit/v0.3", world: "plugin" });

use corvus::plugin::types::{Actions, Hook, Outcome, PluginInfo, Reply, Status, Verdict};
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
        match mode() {
            "done-without-outcome" => Status::Done,
            "failed-without-reason" => Status::Failed,
            "outcome-then-next" => {
                answer::set_outcome(&Outcome {
                    verdict: Verdict::Reject(Reply {
                        code: 550,
                        text: "not used".into(),
                    }),
                    actions: Actions {
                        add_headers: Vec::new(),
                        set_rcpt: None,
                        file_into: None,
                    },
                });
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
