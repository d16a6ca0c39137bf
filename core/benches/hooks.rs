//! Per-call cost of the hook chain at every hook point: the built-in policy alone, each
//! example script in `scripts/` at its own hook, and three typical scripts
//! (`bench/scripts/typical_*.rhai` at the repository root) that act at every point.
//!
//! Run with `cargo bench --bench hooks` (release profile); prints a Markdown table of the
//! median over 15 batches of the mean time per `HookChain::run`, in microseconds of this
//! thread's CPU time (so the figures hold on a loaded machine).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use corvus::hooks::builtin::BuiltinPolicy;
use corvus::hooks::rhai::{LoadOptions, RhaiHook};
use corvus::hooks::{HookChain, HookCtx, HookEngine, HookPoint, Route};
use corvus::store::{SledStore, Store};

const MESSAGE: &str = "Received: from client.example (client.example [192.0.2.7])\r\n\tby mx.example.test (Corvus) with ESMTP id 0123456789ABCDEF; Sun, 22 Nov 2026 07:00:00 +0000\r\nFrom: Alice Example <alice@remote.example>\r\nTo: Bob <bob@example.test>\r\nSubject: Your invoice for November\r\nDate: Sun, 22 Nov 2026 07:00:00 +0000\r\nMessage-ID: <bench@remote.example>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n";

fn ctx(point: HookPoint) -> HookCtx {
    let mut c = HookCtx::new(
        point,
        corvus::listener::Listener::Smtp,
        "192.0.2.7".parse().unwrap(),
    );
    c.client_ptr = "client.example".into();
    c.helo = "client.example".into();
    match point {
        HookPoint::Connect | HookPoint::Helo => {}
        HookPoint::Auth => {
            c.credentials = Some(corvus::hooks::Credentials {
                username: "bob@example.test".into(),
                password: "pw".into(),
                mechanism: "PLAIN".into(),
                valid: true,
            });
        }
        HookPoint::Fetch => {
            c.user = "bob@example.test".into();
            c.fetch = Some(corvus::hooks::FetchFacts {
                mailbox: "INBOX".into(),
                uid: 42,
                protocol: "imap",
            });
        }
        _ => {
            c.mail_from = "alice@remote.example".into();
            c.rcpt = "bob@example.test".into();
            c.route = Some(Route::Local(vec!["bob@example.test".into()]));
            if matches!(point, HookPoint::Data | HookPoint::Delivery) {
                c.rcpts = vec!["bob@example.test".into(), "carol@example.test".into()];
                let mut m = MESSAGE.as_bytes().to_vec();
                for i in 0..30 {
                    m.extend_from_slice(
                        format!("Line {i} of a short letter about nothing much at all.\r\n")
                            .as_bytes(),
                    );
                }
                c.message = Some(Arc::new(m));
            }
        }
    }
    c
}

/// Microseconds this thread has spent on a CPU (`/proc/thread-self/schedstat`, updated at
/// scheduler ticks: batches are long enough for that to matter little), so that other work on a
/// loaded machine does not count. Wall-clock time where schedstat is not available.
fn cpu_now() -> f64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    match std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
    {
        Some(ns) => ns / 1e3,
        None => START.get_or_init(Instant::now).elapsed().as_secs_f64() * 1e6,
    }
}

/// Median over batches of the mean µs (of CPU time) per run.
fn measure(chain: &HookChain, c: &HookCtx) -> f64 {
    // Warm up, and size batches to at most about 50 ms each (by the wall clock, which is
    // at least the CPU time).
    let t = Instant::now();
    for _ in 0..500 {
        black_box(chain.run(c));
    }
    let per_call = (t.elapsed().as_secs_f64() * 1e6 / 500.0).max(0.01);
    let per_batch = ((50_000.0 / per_call) as usize).clamp(2000, 200_000);
    let mut means: Vec<f64> = (0..15)
        .map(|_| {
            let t = cpu_now();
            for _ in 0..per_batch {
                black_box(chain.run(black_box(c)));
            }
            (cpu_now() - t) / per_batch as f64
        })
        .collect();
    means.sort_by(|a, b| a.total_cmp(b));
    means[means.len() / 2]
}

fn load(path: &Path, config: serde_json::Value, store: &Store) -> Arc<dyn HookEngine> {
    Arc::new(
        RhaiHook::load_file(
            path,
            LoadOptions {
                config: config.as_object().cloned().unwrap_or_default(),
                store: Some(store.clone()),
                ..LoadOptions::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}")),
    )
}

fn main() {
    // `cargo bench` passes --bench; ignore arguments.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("corvus-bench-hooks-{}", std::process::id()));
    let store: Store = Arc::new(SledStore::open(&dir).expect("store"));
    let builtin: Arc<dyn HookEngine> = Arc::new(BuiltinPolicy);
    let scripts = root.join("../scripts");
    let typical: Vec<Arc<dyn HookEngine>> = (1..=3)
        .map(|i| {
            load(
                &root.join(format!("../bench/scripts/typical_{i}.rhai")),
                serde_json::json!({}),
                &store,
            )
        })
        .collect();

    println!("| hook | built-in only | + 1 typical script | + 3 typical scripts |");
    println!("|---|---:|---:|---:|");
    let base = HookChain::new(vec![builtin.clone()]);
    let one = HookChain::new(vec![builtin.clone(), typical[1].clone()]);
    let mut all = vec![builtin.clone()];
    all.extend(typical.iter().cloned());
    let three = HookChain::new(all);
    for p in HookPoint::ALL {
        let c = ctx(p);
        let (b, o, t) = (measure(&base, &c), measure(&one, &c), measure(&three, &c));
        println!(
            "| {} | {b:.2} | {o:.2} (+{:.2}) | {t:.2} (+{:.2}) |",
            p.function_name(),
            o - b,
            t - b
        );
    }

    println!();
    println!("| example script | hook | µs per call (built-in + script) |");
    println!("|---|---|---:|");
    let examples: [(&str, HookPoint, serde_json::Value); 6] = [
        (
            "rcpt_greylist.rhai",
            HookPoint::Rcpt,
            serde_json::json!({"delay": "0s"}),
        ),
        (
            "mail_rate_limit.rhai",
            HookPoint::Mail,
            serde_json::json!({"max": 1_000_000_000, "window": "1h"}),
        ),
        (
            "rcpt_blocklist.rhai",
            HookPoint::Rcpt,
            serde_json::json!({"senders": ["@bad.example"], "recipients": ["old@example.test", "gone@example.test"]}),
        ),
        (
            "data_subject_tag.rhai",
            HookPoint::Data,
            serde_json::json!({"rules": [{"words": ["invoice", "payment"], "tag": "finance"}, {"words": ["webinar"], "tag": "bulk"}]}),
        ),
        (
            "delivery_fileinto.rhai",
            HookPoint::Delivery,
            serde_json::json!({"rules": [{"header": "List-Id", "contains": "rust", "folder": "Lists/Rust"}, {"header": "Subject", "contains": "invoice", "folder": "Finance"}]}),
        ),
        (
            "auth_ip_allowlist.rhai",
            HookPoint::Auth,
            serde_json::json!({"allow": ["192.0.2.0/24", "2001:db8::/32"]}),
        ),
    ];
    for (file, point, config) in examples {
        let chain = HookChain::new(vec![
            builtin.clone(),
            load(&scripts.join(file), config, &store),
        ]);
        let c = ctx(point);
        // The greylist passes from the second call on (delay 0s): measure that path.
        chain.run(&c);
        chain.run(&c);
        println!(
            "| {file} | {} | {:.2} |",
            point.function_name(),
            measure(&chain, &c)
        );
    }

    println!();
    println!("| where the time goes (on_data, one script) | µs per call |");
    println!("|---|---:|");
    let parts: [(&str, &str); 8] = [
        ("empty function", "fn on_data(ctx) { }"),
        (
            "read 5 envelope properties",
            "fn on_data(ctx) { let x = [ctx.client_ip, ctx.helo, ctx.mail_from, ctx.rcpt, ctx.user]; }",
        ),
        (
            "read ctx.config twice",
            "fn on_data(ctx) { let a = ctx.config; let b = ctx.config; }",
        ),
        ("ctx.subject", "fn on_data(ctx) { let s = ctx.subject; }"),
        (
            "ctx.header(\"List-Id\")",
            "fn on_data(ctx) { let s = ctx.header(\"List-Id\"); }",
        ),
        ("ctx.body", "fn on_data(ctx) { let s = ctx.body; }"),
        (
            "add_header",
            "fn on_data(ctx) { ctx.add_header(\"X-A\", \"b\"); }",
        ),
        (
            "loop over 3 words, contains",
            "fn on_data(ctx) { let s = \"your invoice for november\"; for w in [\"invoice\", \"webinar\", \"lottery\"] { if s.contains(w) { } } }",
        ),
    ];
    let config = serde_json::json!({"rules": [{"words": ["invoice", "payment"], "tag": "finance"}, {"words": ["webinar"], "tag": "bulk"}]});
    for (what, src) in parts {
        let h: Arc<dyn HookEngine> = Arc::new(
            RhaiHook::from_source(
                "part.rhai",
                src,
                LoadOptions {
                    config: config.as_object().cloned().unwrap_or_default(),
                    ..LoadOptions::default()
                },
            )
            .unwrap_or_else(|e| panic!("{e}")),
        );
        let chain = HookChain::new(vec![h]);
        println!("| {what} | {:.2} |", measure(&chain, &ctx(HookPoint::Data)));
    }

    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
