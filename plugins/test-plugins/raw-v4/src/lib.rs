//! Test plugin written against `sdk/wit/v0.4` without the SDK, to break the hook protocol
//! on purpose (the SDK never does) and to use the 0.4 `answer` functions one by one.
//! `config.mode`:
//! "done-without-answer" returns `done` at rcpt without calling any `answer` function;
//! "failed-without-reason" returns `failed` without `answer.fail`;
//! "fail-then-verdict" calls `answer.fail` and `answer.verdict`, then returns `failed`;
//! "redirect" sets the recipient to `config.to` and accepts (rcpt);
//! "header-at-rcpt" adds a header at rcpt (where headers are not allowed);
//! "headers" adds `config.count` headers at data;
//! "hook-name" rejects with the text `context.hook()` gives;
//! "unknown-handle" lists a hook point no server knows (refused at load);
//! "context-in-init" reads `context.rcpt` in `init` (outside a hook call: init fails);
//! "bare" handles every point and answers each with `next` at once, touching nothing: the
//! least a 0.4 plugin can cost the host (benchmarks).

wit_bindgen::generate!({ path: "../../../sdk/wit/v0.4", world: "plugin" });

use corvus::plugin::types::{PluginInfo, Reply, Status, Verdict};
use corvus::plugin::{answer, config, context};
use exports::corvus::plugin::hooks::Guest;

struct Raw;

/// `config.mode`, read from the host once (at `describe` or `init`, whichever comes first);
/// hook calls make no import call for it.
static MODE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The hook points of 0.4.0 by number.
const POINTS: [&str; 8] = [
    "connect", "helo", "auth", "mail", "rcpt", "data", "delivery", "fetch",
];

fn mode() -> &'static str {
    MODE.get_or_init(|| config::get_string("mode").unwrap_or_default())
}

impl Guest for Raw {
    fn describe() -> PluginInfo {
        let handles: &[&str] = match mode() {
            "bare" => &POINTS,
            "unknown-handle" => &["rcpt", "teleport"],
            _ => &["rcpt", "data"],
        };
        PluginInfo {
            name: "raw-v4".into(),
            version: "0.1.0".into(),
            handles: handles.iter().map(|h| h.to_string()).collect(),
        }
    }
    fn init(_config: String) -> Result<(), String> {
        if mode() == "context-in-init" {
            let _ = context::rcpt();
        }
        Ok(())
    }
    fn on_hook(hook: u32, _session: u64) -> Status {
        let hook = POINTS.get(hook as usize).copied().unwrap_or("?");
        match (mode(), hook) {
            ("done-without-answer", "rcpt") => Status::Done,
            ("failed-without-reason", "rcpt") => Status::Failed,
            ("fail-then-verdict", "rcpt") => {
                answer::fail("raw-v4 fails on purpose");
                answer::verdict(&Verdict::Accept);
                Status::Failed
            }
            ("redirect", "rcpt") => {
                let to = config::get_string("to").unwrap_or_default();
                answer::set_rcpt(&to);
                answer::verdict(&Verdict::Accept);
                Status::Done
            }
            ("header-at-rcpt", "rcpt") => {
                answer::add_header("X-Raw", "at rcpt");
                Status::Done
            }
            ("headers", "data") => {
                let count = config::get_int("count").unwrap_or(1);
                for i in 0..count {
                    answer::add_header("X-Raw", &i.to_string());
                }
                Status::Done
            }
            ("hook-name", _) => {
                answer::verdict(&Verdict::Reject(Reply {
                    code: 550,
                    text: context::hook(),
                }));
                Status::Done
            }
            _ => Status::Next,
        }
    }
}

export!(Raw);
