//! Any bytes as a Sieve script: the parser and checker give a script or an error with a
//! position inside the text, never panic; a script that compiles runs against a message (the
//! same bytes, so headers and bodies vary too) within its step budget, and the actions are
//! well formed: at least one of them, or the message counts as discarded.
#![no_main]
use corvus::sieve::eval::{Context, RunLimits, run};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match corvus::sieve::compile(text) {
        Err(e) => {
            let lines = text.split('\n').count() as u32;
            assert!(
                e.pos.line >= 1 && e.pos.line <= lines + 1,
                "{e} in {lines} lines"
            );
        }
        Ok(script) => {
            let exists = |m: &str| m.len() % 2 == 0;
            let ctx = Context {
                message: data,
                from: "sender@example.com",
                to: "user+detail@example.org",
                mailbox_exists: &exists,
                limits: RunLimits {
                    max_steps: 20_000,
                    ..RunLimits::default()
                },
                now: chrono::DateTime::parse_from_rfc3339("2026-12-07T12:00:00+01:00").unwrap(),
            };
            let o = run(&script, &ctx);
            assert!(!o.actions.is_empty() || o.error.is_none());
            if o.error.is_some() {
                assert_eq!(
                    o.actions.len(),
                    1,
                    "an error leaves the implicit keep alone"
                );
            }
        }
    }
});
