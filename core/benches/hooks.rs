//! Per-call cost of the hook chain at every hook point: the built-in policy alone, each
//! example script in `scripts/` at its own hook, and three typical scripts
//! (`benches/scripts/typical_*.rhai`) that act at every point.
//!
//! Run with `cargo bench --bench hooks` (release profile); prints a Markdown table of the
//! median over 15 batches of the mean time per `HookChain::run`, in microseconds.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use corvus::hooks::builtin::BuiltinPolicy;
use corvus::hooks::rhai::{LoadOptions, POINTS, RhaiHook};
use corvus::hooks::{HookChain, HookCtx, HookEngine, HookPoint, Route};
use corvus::store::{SledStore, Store};

const MESSAGE: &str = "Received: from client.example (client.example [192.0.2.7])\r\n\tby mx.example.test (Corvus) with ESMTP id 0123456789ABCDEF; Sun, 22 Nov 2026 07:00:00 +0000\r\nFrom: Alice Example <alice@remote.example>\r\nTo: Bob <bob@example.test>\r\nSubject: Your invoice for November\r\nDate: Sun, 22 Nov 2026 07:00:00 +0000\r\nMessage-ID: <bench@remote.example>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n";

fn ctx(point: HookPoint) -> HookCtx {
    let mut c = HookCtx::new(point, "smtp", "192.0.2.7".parse().unwrap());
    c.client_ptr = "client.example".into();
    c.helo = "client.example".into();
    match point {
        HookPoint::Connect | HookPoint::Helo => {}
        HookPoint::Auth => {
            c.credentials = Some(("bob@example.test".into(), "pw".into(), "PLAIN".into()));
            c.credentials_valid = true;
        }
        HookPoint::Fetch => {
            c.user = "bob@example.test".into();
            c.fetch = Some(("INBOX".into(), 42, "imap"));
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

/// Median over batches of the mean µs per run.
fn measure(chain: &HookChain, c: &HookCtx) -> f64 {
    let per_batch = 2000;
    for _ in 0..500 {
        black_box(chain.run(c));
    }
    let mut means: Vec<f64> = (0..15)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_batch {
                black_box(chain.run(black_box(c)));
            }
            t.elapsed().as_secs_f64() * 1e6 / per_batch as f64
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
                &root.join(format!("benches/scripts/typical_{i}.rhai")),
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
    for p in POINTS {
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
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
