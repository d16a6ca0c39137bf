//! Host tests with small plugins from `plugins/test-plugins` (built by `tests/build-plugins`
//! into `target/plugins/wasm32-wasip2/release/`; set CORVUS_PLUGIN_DIR to look elsewhere).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::load::{compatible, generation_of};
use super::runtime::runtime;
use super::*;
use crate::hooks::rhai::LogSink;
use crate::hooks::{Enhanced, HookChain, Outcome, Route};
use crate::store::Store;

fn plugin_path(name: &str) -> PathBuf {
    let dir = std::env::var_os("CORVUS_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins/wasm32-wasip2/release")
        });
    let p = dir.join(format!("{}.wasm", name.replace('-', "_")));
    assert!(
        p.is_file(),
        "{} is missing: build the plugins first with tests/build-plugins",
        p.display()
    );
    p
}

/// A cache directory shared by the tests of this process (compiling in a debug host is slow;
/// the cache makes each plugin compile once).
fn cache_dir() -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap())
        .path()
        .to_path_buf()
}

fn store() -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().unwrap();
    let s: Store = Arc::new(crate::store::MemoryStore::new());
    (d, s)
}

fn load(name: &str, config: serde_json::Value, sink: Option<LogSink>) -> Result<WasmHook, String> {
    let serde_json::Value::Object(config) = config else {
        panic!("config must be an object")
    };
    WasmHook::load_file(
        &plugin_path(name),
        LoadOptions {
            config,
            cache_dir: Some(cache_dir()),
            sink,
            ..LoadOptions::default()
        },
    )
}

fn misbehave(mode: &str) -> WasmHook {
    load(
        "misbehave",
        serde_json::json!({"mode": mode, "when_rcpt": "bad@y.example"}),
        None,
    )
    .unwrap()
}

/// The facts of a call and the session it runs in (None: a call outside any session, as
/// for a queued delivery), as a client session makes calls.
struct Call {
    ctx: HookCtx,
    session: Option<Arc<HookSession>>,
}

impl std::ops::Deref for Call {
    type Target = HookCtx;
    fn deref(&self) -> &HookCtx {
        &self.ctx
    }
}

impl std::ops::DerefMut for Call {
    fn deref_mut(&mut self) -> &mut HookCtx {
        &mut self.ctx
    }
}

fn rcpt(to: &str, session: Option<Arc<HookSession>>) -> Call {
    let mut c = HookCtx::new(
        HookPoint::Rcpt,
        crate::listener::Listener::Smtp,
        "192.0.2.7".parse().unwrap(),
    );
    c.mail_from = "a@x.example".into();
    c.rcpt = to.into();
    Call { ctx: c, session }
}

/// A blocking call in the call's session (what [`HookEngine::call`] does without one).
fn call_with(h: &WasmHook, c: &Call, a: &mut Actions) -> Result<Verdict, HookError> {
    crate::blocking::run(h.call_async(&c.ctx, c.session.as_deref(), a))
}

async fn call_in(h: &WasmHook, c: &Call, a: &mut Actions) -> Result<Verdict, HookError> {
    h.call_async(&c.ctx, c.session.as_deref(), a).await
}

fn call(h: &WasmHook, c: &Call) -> Result<Verdict, HookError> {
    call_with(h, c, &mut Actions::default())
}

#[test]
fn loads_describes_and_answers() {
    let h = load("noop", serde_json::json!({}), None).unwrap();
    assert_eq!(h.info().0, "noop");
    assert_eq!(h.handled_points().len(), 8);
    assert_eq!(
        call(&h, &rcpt("b@y.example", None)).unwrap(),
        Verdict::Continue
    );
    let r = load("misbehave", serde_json::json!({"mode": "reject"}), None).unwrap();
    assert_eq!(
        call(&r, &rcpt("b@y.example", None)).unwrap(),
        Verdict::Reject {
            code: 550,
            enhanced: Some(Enhanced::known("5.7.1")),
            text: "misbehave says no".into()
        }
    );
}

#[test]
fn plugins_are_called_only_at_the_hooks_they_declare() {
    let dnsbl = load(
        "connect_dnsbl",
        serde_json::json!({"zones": ["bl.example"]}),
        None,
    )
    .unwrap();
    assert_eq!(dnsbl.handled_points(), ["on_connect"]);
    let auth = load(
        "auth_table",
        serde_json::json!({"users": {"a@y.example": "secret"}}),
        None,
    )
    .unwrap();
    assert_eq!(auth.handled_points(), ["on_auth"]);
    // A chain skips an entry at the hooks it does not handle: no instance is made or taken
    // from the idle pool for it. At its own hook it is called.
    let dnsbl = Arc::new(dnsbl);
    let used = || {
        dnsbl.stats.instances.load(Ordering::Relaxed) + dnsbl.stats.reused.load(Ordering::Relaxed)
    };
    let before = used();
    let chain = HookChain::new(vec![dnsbl.clone()]);
    assert_eq!(
        chain.run(&rcpt("b@y.example", None)).verdict,
        Verdict::Continue
    );
    assert_eq!(used(), before);
    let mut connect = rcpt("", None);
    connect.point = HookPoint::Connect;
    chain.run(&connect);
    assert_eq!(used(), before + 1);
}

#[test]
fn the_context_answers_every_fact_and_lends_the_message() {
    let h = load("noop", serde_json::json!({"facts": true}), None).unwrap();
    let mut c = rcpt("b@y.example", None);
    c.point = HookPoint::Data;
    c.client_ptr = "mx.x.example".into();
    c.helo = "mx.x.example".into();
    c.tls = true;
    c.user = "carol@example.test".into();
    c.route = Some(Route::Local(vec!["bob".into(), "eve".into()]));
    c.rcpts = vec!["b@y.example".into(), "c@y.example".into()];
    c.auth.spf = "pass".into();
    c.auth.dkim = "fail".into();
    c.auth.dmarc = "none".into();
    c.credentials = Some(crate::hooks::Credentials {
        username: "u".into(),
        password: "p".into(),
        mechanism: "PLAIN".into(),
        valid: true,
    });
    c.fetch = Some(crate::hooks::FetchFacts {
        mailbox: "INBOX".into(),
        uid: 7,
        protocol: "imap",
    });
    c.remote_mx = Some("mx.y.example".into());
    c.message = Some(Arc::new(b"Subject: x\r\n\r\nhi\r\n".to_vec()));
    let mut a = Actions::default();
    call_with(&h, &c, &mut a).unwrap();
    assert_eq!(
        a.add_headers[0].1,
        "hook=data listener=smtp ip=192.0.2.7 ptr=mx.x.example helo=mx.x.example tls=true \
         user=carol@example.test from=a@x.example rcpt=b@y.example route=local:bob,eve \
         rcpts=b@y.example,c@y.example spf=pass dkim=fail dmarc=none credentials=u/p/PLAIN/true \
         fetch=INBOX/7/imap mx=mx.y.example size=18 truncated=false message=18"
    );
    // A message larger than the plugins' message limit is cut, and says so.
    let max = runtime().unwrap().limits.max_message;
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    big.resize(max + 10, b'x');
    c.message = Some(Arc::new(big));
    let mut a = Actions::default();
    call_with(&h, &c, &mut a).unwrap();
    assert!(
        a.add_headers[0]
            .1
            .ends_with(&format!(" size={} truncated=true message={max}", max + 10)),
        "{}",
        a.add_headers[0].1
    );
}

#[test]
fn plugins_read_the_sender_authentication_facts() {
    let h = load("noop", serde_json::json!({"auth": true}), None).unwrap();
    let mut data = rcpt("b@y.example", None);
    data.point = HookPoint::Data;
    data.message = Some(Arc::new(b"Subject: x\r\n\r\nhi\r\n".to_vec()));
    data.auth = crate::sender_auth::AuthFacts {
        spf: "pass".into(),
        spf_domain: "x.example".into(),
        spf_helo: "none".into(),
        dkim: "pass".into(),
        dkim_domains: vec!["x.example".into(), "esp.example".into()],
        dmarc: "pass".into(),
        dmarc_domain: "x.example".into(),
        dmarc_policy: "reject".into(),
        arc: "pass".into(),
        arc_sealer: "lists.example".into(),
        action: "accept".into(),
    };
    let mut a = Actions::default();
    call_with(&h, &data, &mut a).unwrap();
    assert_eq!(
        a.add_headers,
        vec![(
            "X-Noop-Auth".to_string(),
            "spf=pass (x.example) helo=none dkim=pass [x.example esp.example] \
             dmarc=pass (x.example, reject) arc=pass (lists.example) action=accept"
                .to_string()
        )]
    );
    // The next call's facts, not the previous call's: before DATA there are none.
    data.auth = Default::default();
    let mut a = Actions::default();
    call_with(&h, &data, &mut a).unwrap();
    assert_eq!(
        a.add_headers[0].1,
        "spf= () helo= dkim= [] dmarc= (, ) arc= () action="
    );
}

#[test]
fn plugins_read_a_spam_filters_result() {
    let h = load("noop", serde_json::json!({"spam": true}), None).unwrap();
    let mut data = rcpt("b@y.example", None);
    data.point = HookPoint::Data;
    data.message = Some(Arc::new(b"Subject: x\r\n\r\nhi\r\n".to_vec()));
    let mut a = Actions::default();
    call_with(&h, &data, &mut a).unwrap();
    assert_eq!(a.add_headers[0].1, "none");
    data.spam = Some(Arc::new(crate::hooks::SpamFacts {
        engine: "rspamd http://127.0.0.1:11333".into(),
        score: 7.25,
        required: 15.0,
        action: "add header".into(),
        symbols: vec!["BAYES_SPAM".into(), "R_SPF_FAIL".into()],
    }));
    let mut a = Actions::default();
    call_with(&h, &data, &mut a).unwrap();
    assert_eq!(a.add_headers[0].1, "7.25 add header BAYES_SPAM,R_SPF_FAIL");
}

#[test]
fn a_plugin_built_for_0_4_0_runs_on_this_host() {
    // raw-v4 as built against corvus:plugin@0.4.0, before the `spam` interface (0.4.1).
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/hooks/wasm/fixtures/raw_v4_built_for_0.4.0.wasm");
    let h = WasmHook::load_file(
        &path,
        LoadOptions {
            cache_dir: Some(cache_dir()),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let data = rcpt("b@y.example", None);
    let mut a = Actions::default();
    call_with(&h, &data, &mut a).unwrap();
}

#[test]
fn one_warm_instance_per_session() {
    let h = load("noop", serde_json::json!({"tag": "t"}), None).unwrap();
    let session = Arc::new(HookSession::default());
    let mut data = rcpt("b@y.example", Some(session.clone()));
    data.point = HookPoint::Data;
    data.message = Some(Arc::new(b"Subject: x\r\n\r\nhi\r\n".to_vec()));
    for _ in 0..3 {
        call(&h, &rcpt("b@y.example", Some(session.clone()))).unwrap();
    }
    let mut a = Actions::default();
    call_with(&h, &data, &mut a).unwrap();
    // The fourth call of the same instance.
    assert_eq!(
        a.add_headers,
        vec![("X-Noop".to_string(), "t calls=4".to_string())]
    );
    assert_eq!(
        h.stats.instances.load(Ordering::Relaxed),
        2,
        "probe + one per session"
    );
    // Another session gets its own instance, with its own state.
    let mut a = Actions::default();
    data.session = Some(Arc::new(HookSession::default()));
    call_with(&h, &data, &mut a).unwrap();
    assert_eq!(a.add_headers[0].1, "t calls=1");
    assert_eq!(h.stats.instances.load(Ordering::Relaxed), 3);
    // When a session ends its instance waits in the plugin's idle pool; the next session
    // (here a call without one, as for a queued delivery) gets it, with no `init` call: the
    // SDK sees the new `context.session` and starts afresh, and no instance is created.
    drop(session);
    data.session = None;
    for _ in 0..2 {
        let mut a = Actions::default();
        call_with(&h, &data, &mut a).unwrap();
        assert_eq!(a.add_headers[0].1, "t calls=1");
    }
    assert_eq!(h.stats.instances.load(Ordering::Relaxed), 3);
    assert!(h.stats.reused.load(Ordering::Relaxed) >= 2);
    // A new session after that is also served from the pool.
    let mut a = Actions::default();
    data.session = Some(Arc::new(HookSession::default()));
    call_with(&h, &data, &mut a).unwrap();
    call_with(&h, &data, &mut a).unwrap();
    assert_eq!(a.add_headers[1].1, "t calls=2");
    assert_eq!(h.stats.instances.load(Ordering::Relaxed), 3);
    // `init` ran once per instance, not once per session.
    assert_eq!(h.stats.inits.load(Ordering::Relaxed), 3);
}

#[test]
fn instances_that_grew_big_are_not_kept_idle() {
    let h = load("noop", serde_json::json!({"read_message": true}), None).unwrap();
    let mut data = rcpt("b@y.example", Some(Arc::new(HookSession::default())));
    data.point = HookPoint::Data;
    // The plugin reads a 20 MB message into its memory, which grows past 16 MiB.
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    big.resize(20 << 20, b'x');
    data.message = Some(Arc::new(big));
    call_with(&h, &data, &mut Actions::default()).unwrap();
    data.session = None; // the session ends: its instance is dropped, not pooled
    data.message = Some(Arc::new(b"Subject: small\r\n\r\nhi\r\n".to_vec()));
    call_with(&h, &data, &mut Actions::default()).unwrap();
    assert_eq!(h.stats.reused.load(Ordering::Relaxed), 0);
    assert_eq!(
        h.stats.instances.load(Ordering::Relaxed),
        3,
        "probe + big + a new one"
    );
    // The small one was kept.
    call_with(&h, &data, &mut Actions::default()).unwrap();
    assert_eq!(h.stats.reused.load(Ordering::Relaxed), 1);
}

#[test]
fn infinite_loop_hits_the_cpu_limit_and_the_next_call_works() {
    let h = misbehave("loop");
    let session = Arc::new(HookSession::default());
    let started = Instant::now();
    let e = call(&h, &rcpt("bad@y.example", Some(session.clone()))).unwrap_err();
    let took = started.elapsed();
    assert!(e.0.contains("CPU time limit exceeded"), "{e}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // The poisoned instance was dropped; the session gets a fresh one.
    assert_eq!(
        call(&h, &rcpt("good@y.example", Some(session))).unwrap(),
        Verdict::Continue
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_plugin_does_not_block_other_calls() {
    let h = Arc::new(misbehave("loop"));
    let h2 = h.clone();
    let bad = tokio::spawn(async move {
        let c = rcpt("bad@y.example", None);
        let mut a = Actions::default();
        call_in(&h2, &c, &mut a).await
    });
    // While the loop runs (100 ms budget), 20 normal calls complete.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let started = Instant::now();
    for _ in 0..20 {
        let c = rcpt("good@y.example", None);
        let mut a = Actions::default();
        assert_eq!(call_in(&h, &c, &mut a).await.unwrap(), Verdict::Continue);
    }
    let good_time = started.elapsed();
    let r = bad.await.unwrap();
    assert!(r.unwrap_err().0.contains("CPU time limit"));
    assert!(
        !bad_is_blocking(good_time),
        "normal calls took {good_time:?}"
    );
}

fn bad_is_blocking(t: Duration) -> bool {
    t > Duration::from_secs(2)
}

#[test]
fn memory_bomb_fails_cleanly() {
    let h = misbehave("oom");
    let e = call(&h, &rcpt("bad@y.example", None)).unwrap_err();
    assert!(e.0.contains("memory limit exceeded"), "{e}");
    assert_eq!(
        call(&h, &rcpt("good@y.example", None)).unwrap(),
        Verdict::Continue
    );
}

#[test]
fn panic_trap_and_recursion_fail_cleanly() {
    for (mode, want) in [
        ("panic", "panic on purpose"),
        ("trap", "trap"),
        ("recurse", "trap"),
        ("error", "error on purpose"),
    ] {
        let h = misbehave(mode);
        let session = Arc::new(HookSession::default());
        let e = call(&h, &rcpt("bad@y.example", Some(session.clone()))).unwrap_err();
        assert!(e.0.contains(want), "{mode}: {e}");
        assert_eq!(
            call(&h, &rcpt("good@y.example", Some(session))).unwrap(),
            Verdict::Continue,
            "{mode}"
        );
    }
}

#[tokio::test]
async fn huge_value_in_a_host_call_is_refused() {
    let (_d, s) = store();
    let h = WasmHook::load_file(
        &plugin_path("misbehave"),
        LoadOptions {
            config: serde_json::json!({"mode": "big-kv"})
                .as_object()
                .unwrap()
                .clone(),
            store: Some(s.clone()),
            cache_dir: Some(cache_dir()),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let e = call(&h, &rcpt("x@y.example", None)).unwrap_err();
    assert!(e.0.contains("at most 65536 bytes"), "{e}");
    assert_eq!(s.kv_get("wasm:misbehave", "big").await.unwrap(), None);
}

#[test]
fn log_and_output_floods_are_capped() {
    let sink: LogSink = Arc::new(Mutex::new(Vec::new()));
    let h = load(
        "misbehave",
        serde_json::json!({"mode": "big-log"}),
        Some(sink.clone()),
    )
    .unwrap();
    let _ = call(&h, &rcpt("x@y.example", None));
    let lines = sink.lock().unwrap().clone();
    let kept = lines.iter().filter(|l| l.starts_with("[info] yyy")).count();
    assert!(kept <= 100, "{kept} lines kept");
    assert!(lines.iter().all(|l| l.len() < 5000));

    let sink: LogSink = Arc::new(Mutex::new(Vec::new()));
    let h = load(
        "misbehave",
        serde_json::json!({"mode": "stdout"}),
        Some(sink.clone()),
    )
    .unwrap();
    // Output beyond the cap fails the write; Rust's println! then panics: the call fails.
    let e = call(&h, &rcpt("x@y.example", None)).unwrap_err();
    let lines = sink.lock().unwrap().clone();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("stdout: stdout line 0 from a chatty plugin")),
        "{e}: {:?}",
        &lines[..lines.len().min(5)]
    );
    assert!(lines.len() <= 200, "{} lines", lines.len());
}

#[test]
fn wrong_wit_version_is_refused_with_a_clear_message() {
    let e = load("wrong-version", serde_json::json!({}), None)
        .err()
        .expect("must be refused");
    assert!(
        e.contains("built for corvus:plugin@0.9.0")
            && e.contains("provides corvus:plugin@0.4.1 and 0.3.0"),
        "{e}"
    );
}

#[test]
fn older_patch_versions_are_compatible_newer_ones_not() {
    assert_eq!((WIT_VERSION, WIT_VERSION_PREVIOUS), ("0.4.1", "0.3.0"));
    for (v, host, ok) in [
        ("0.1.0", "0.3.0", false),
        ("0.2.0", "0.3.0", false),
        ("0.2.1", "0.3.0", false),
        ("0.3.0", "0.3.0", true),
        ("0.3.1", "0.3.0", false),
        ("0.4.0", "0.3.0", false),
        ("0.4.0", "0.4.0", true),
        ("0.4.0", "0.4.2", true),
        ("0.4.2", "0.4.1", false),
        ("0.0.9", "0.3.0", false),
        ("1.0.0", "0.3.0", false),
        ("1.0.0", "1.2.0", true),
        ("x", "0.3.0", false),
    ] {
        assert_eq!(compatible(v, host), ok, "{v} on {host}");
    }
    // Both generations load; anything else is refused.
    for (v, generation) in [
        ("0.2.0", None),
        ("0.3.0", Some(Generation::V3)),
        ("0.3.1", None),
        ("0.4.0", Some(Generation::V4)),
        ("0.4.1", Some(Generation::V4)),
        ("0.4.2", None),
        ("0.5.0", None),
    ] {
        assert_eq!(generation_of(v), generation, "{v}");
    }
}

#[test]
fn garbage_and_core_modules_are_refused() {
    let e = WasmHook::from_bytes("x.wasm", b"hello", LoadOptions::default())
        .err()
        .unwrap();
    assert!(e.contains("not a WebAssembly file"), "{e}");
    let e = WasmHook::from_bytes("x.wasm", b"\0asm\x01\0\0\0", LoadOptions::default())
        .err()
        .unwrap();
    assert!(e.contains("core WebAssembly module"), "{e}");
}

#[test]
fn init_errors_refuse_the_plugin_at_load() {
    let e = load("misbehave", serde_json::json!({"mode": "init-fail"}), None)
        .err()
        .unwrap();
    assert!(e.contains("init: misbehave: init fails on purpose"), "{e}");
}

#[test]
fn hooks_that_break_the_answer_protocol_fail_their_call_only() {
    // A plugin written without the SDK (of either generation) returns `done` or `failed`
    // without handing anything over: that call fails with a reason; the instance keeps
    // serving. `failed` uses `fail`'s message even when a verdict was given too.
    for (name, mode, want) in [
        (
            "raw-answer",
            "done-without-outcome",
            "raw_answer.wasm: on_rcpt: returned done without answer.set-outcome",
        ),
        (
            "raw-answer",
            "failed-without-reason",
            "on_rcpt: failed (no reason given with answer.fail)",
        ),
        (
            "raw-v4",
            "done-without-answer",
            "raw_v4.wasm: on_rcpt: returned done without an answer",
        ),
        (
            "raw-v4",
            "failed-without-reason",
            "on_rcpt: failed (no reason given with answer.fail)",
        ),
        (
            "raw-v4",
            "fail-then-verdict",
            "on_rcpt: raw-v4 fails on purpose",
        ),
    ] {
        let h = load(name, serde_json::json!({ "mode": mode }), None).unwrap();
        let session = Arc::new(HookSession::default());
        for _ in 0..2 {
            let e = call(&h, &rcpt("b@y.example", Some(session.clone()))).unwrap_err();
            assert!(e.0.contains(want), "{mode}: {e}");
        }
    }
    // The status decides: an outcome handed over before returning `next` is not used.
    let h = load(
        "raw-answer",
        serde_json::json!({"mode": "outcome-then-next"}),
        None,
    )
    .unwrap();
    assert_eq!(
        call(&h, &rcpt("b@y.example", None)).unwrap(),
        Verdict::Continue
    );
    // The facts exist only during a hook call: asking in `init` fails it (the plugin is
    // refused at load).
    for name in ["raw-answer", "raw-v4"] {
        let e = load(name, serde_json::json!({"mode": "context-in-init"}), None)
            .err()
            .expect("must be refused");
        assert!(
            e.contains("context used outside a hook call"),
            "{name}: {e}"
        );
    }
}

#[test]
fn the_bare_benchmark_plugins_handle_every_hook_and_answer_next() {
    // raw-answer (0.3) and raw-v4 in "bare" mode: what the throughput bench uses as the least
    // a plugin of each generation costs.
    for name in ["raw-answer", "raw-v4"] {
        let h = load(name, serde_json::json!({"mode": "bare"}), None).unwrap();
        assert_eq!(h.handled_points().len(), 8, "{:?}", h.handled_points());
        let session = Arc::new(HookSession::default());
        for point in [
            HookPoint::Connect,
            HookPoint::Helo,
            HookPoint::Mail,
            HookPoint::Rcpt,
            HookPoint::Data,
            HookPoint::Delivery,
        ] {
            let mut c = rcpt("b@y.example", Some(session.clone()));
            c.point = point;
            assert_eq!(call(&h, &c).unwrap(), Verdict::Continue, "{name} {point:?}");
        }
        assert_eq!(h.stats.failures.load(Ordering::Relaxed), 0);
    }
}

#[test]
fn both_generations_load_and_their_answers_follow_the_same_rules() {
    // raw-answer is built against 0.3, the SDK plugins against 0.4.
    let v3 = load(
        "raw-answer",
        serde_json::json!({"mode": "reject", "text": "5.7.1 no"}),
        None,
    )
    .unwrap();
    let v4 = load("misbehave", serde_json::json!({"mode": "reject"}), None).unwrap();
    assert_eq!(v3.pre.generation(), Generation::V3);
    assert_eq!(v4.pre.generation(), Generation::V4);
    let reject = |text: &str| Verdict::Reject {
        code: 550,
        enhanced: Some(Enhanced::known("5.7.1")),
        text: text.into(),
    };
    assert_eq!(call(&v3, &rcpt("b@y.example", None)).unwrap(), reject("no"));
    assert_eq!(
        call(&v4, &rcpt("b@y.example", None)).unwrap(),
        reject("misbehave says no")
    );
    // An action where it is not allowed fails the call, named as each generation spells it.
    for (name, want) in [
        (
            "raw-answer",
            "on_rcpt: add-headers is only available in on-data and on-delivery",
        ),
        (
            "raw-v4",
            "on_rcpt: add-header is only available in data and delivery",
        ),
    ] {
        let h = load(name, serde_json::json!({"mode": "header-at-rcpt"}), None).unwrap();
        let e = call(&h, &rcpt("b@y.example", None)).unwrap_err();
        assert!(e.0.contains(want), "{name}: {e}");
    }
    // Headers added by an SDK plugin (0.4: one `answer.add-header` call each).
    let noop = load("noop", serde_json::json!({"tag": "t"}), None).unwrap();
    let mut c = rcpt("b@y.example", None);
    c.point = HookPoint::Data;
    let mut a = Actions::default();
    assert_eq!(call_with(&noop, &c, &mut a).unwrap(), Verdict::Continue);
    assert_eq!(
        a.add_headers,
        [("X-Noop".to_string(), "t calls=1".to_string())]
    );
}

#[test]
fn the_0_4_answer_functions_add_up() {
    let raw = |mode: &str, extra: serde_json::Value| {
        let mut config = serde_json::json!({ "mode": mode });
        config
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        load("raw-v4", config, None).unwrap()
    };
    // A verdict and an action, each its own call.
    let h = raw("redirect", serde_json::json!({"to": "c@y.example"}));
    let mut a = Actions::default();
    assert_eq!(
        call_with(&h, &rcpt("b@y.example", None), &mut a).unwrap(),
        Verdict::Accept
    );
    assert_eq!(a.set_rcpt.as_deref(), Some("c@y.example"));
    // `context.hook` is the point's name.
    let h = raw("hook-name", serde_json::json!({}));
    let e = call(&h, &rcpt("b@y.example", None)).unwrap();
    assert!(
        matches!(&e, Verdict::Reject { text, .. } if text == "rcpt"),
        "{e:?}"
    );
    // The header limit holds however many times a plugin calls `add-header`.
    let h = raw("headers", serde_json::json!({"count": 1000}));
    let mut c = rcpt("b@y.example", None);
    c.point = HookPoint::Data;
    let e = call(&h, &c).unwrap_err();
    assert!(e.0.contains("on_data: at most 32 headers per call"), "{e}");
    let h = raw("headers", serde_json::json!({"count": 3}));
    let mut a = Actions::default();
    call_with(&h, &c, &mut a).unwrap();
    assert_eq!(a.add_headers.len(), 3);
}

#[test]
fn a_hook_point_the_server_does_not_know_is_refused_at_load() {
    // A plugin built against a newer 0.4.x that handles a point this server lacks.
    let e = load(
        "raw-v4",
        serde_json::json!({"mode": "unknown-handle"}),
        None,
    )
    .err()
    .expect("must be refused");
    assert!(
        e.contains("describe: handles \"teleport\", a hook point this server does not know")
            && e.contains("needs a newer server"),
        "{e}"
    );
}

#[test]
fn a_0_4_plugin_links_against_a_grown_interface() {
    // What makes a new hook point or action a patch release: a component imports only the
    // functions it calls (wit-component drops the others from its type), and the linker
    // matches imports by name, so functions the host gained since do not matter.
    let rt = runtime().unwrap();
    let wasm = std::fs::read(plugin_path("raw-v4")).unwrap();
    let component = wasmtime::component::Component::new(&rt.engine, &wasm).unwrap();
    let imported = |interface: &str| -> Vec<String> {
        let ty = component.component_type();
        let (_, item) = ty
            .imports(&rt.engine)
            .find(|(n, _)| *n == format!("corvus:plugin/{interface}@0.4.1"))
            .unwrap_or_else(|| panic!("{interface} not imported"));
        let wasmtime::component::types::ComponentItem::ComponentInstance(i) = item.ty else {
            panic!("{interface} is not an instance")
        };
        let mut names: Vec<String> = i.exports(&rt.engine).map(|(n, _)| n.to_string()).collect();
        names.sort();
        names
    };
    // raw-v4 asks for two of the 21 facts, and calls four of the five answer functions:
    // `file-into` is not in its type (`decision` is the type `verdict` takes).
    assert_eq!(imported("context"), ["hook", "rcpt"]);
    assert_eq!(
        imported("answer"),
        ["add-header", "decision", "fail", "set-rcpt", "verdict"]
    );
    // A host whose 0.4 interface grew (a new fact, a new action) still links and runs it.
    let mut linker = super::load::linker(&rt.engine, Generation::V4).unwrap();
    for (interface, function) in [("context", "grown-fact"), ("answer", "grown-action")] {
        linker
            .instance(&format!("corvus:plugin/{interface}@0.4.1"))
            .unwrap()
            .func_wrap(function, |_, (): ()| Ok((7u32,)))
            .unwrap();
    }
    let pre = super::load::prepare(&linker, &component, Generation::V4).unwrap();
    let h = load("raw-v4", serde_json::json!({"mode": "hook-name"}), None).unwrap();
    let grown = WasmHook { pre, ..h };
    let e = call(&grown, &rcpt("b@y.example", None)).unwrap();
    assert!(
        matches!(&e, Verdict::Reject { text, .. } if text == "rcpt"),
        "{e:?}"
    );
}

#[test]
fn compiled_plugins_are_cached() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LoadOptions {
        cache_dir: Some(dir.path().to_path_buf()),
        ..LoadOptions::default()
    };
    let t0 = Instant::now();
    WasmHook::load_file(&plugin_path("noop"), opts.clone()).unwrap();
    let cold = t0.elapsed();
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(files.len(), 2, "artifact and checksum");
    let t1 = Instant::now();
    WasmHook::load_file(&plugin_path("noop"), opts.clone()).unwrap();
    let warm = t1.elapsed();
    assert!(warm < cold, "cached load {warm:?} vs compile {cold:?}");
    // A corrupted artifact is recompiled, not loaded.
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|e| e == "cwasm") {
            std::fs::write(&p, b"garbage").unwrap();
        }
    }
    WasmHook::load_file(&plugin_path("noop"), opts).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_applies_on_error_to_plugin_failures() {
    let mk = |on_error| {
        WasmHook::load_file(
            &plugin_path("misbehave"),
            LoadOptions {
                config: serde_json::json!({"mode": "panic"})
                    .as_object()
                    .unwrap()
                    .clone(),
                on_error,
                cache_dir: Some(cache_dir()),
                ..LoadOptions::default()
            },
        )
        .unwrap()
    };
    let cont = tokio::task::spawn_blocking(move || mk(OnError::Continue))
        .await
        .unwrap();
    let temp = tokio::task::spawn_blocking(move || mk(OnError::Tempfail))
        .await
        .unwrap();
    let chain = HookChain::new(vec![Arc::new(cont)]);
    let o: Outcome = chain.run_async(&rcpt("x@y.example", None), None).await;
    assert_eq!(o.verdict, Verdict::Continue);
    chain.replace(vec![Arc::new(temp)]);
    let o = chain.run_async(&rcpt("x@y.example", None), None).await;
    assert!(matches!(o.verdict, Verdict::Tempfail { code: 451, .. }));
    // The blocking entry point gives the same.
    let o = tokio::task::spawn_blocking(move || chain.run(&rcpt("x@y.example", None)))
        .await
        .unwrap();
    assert!(matches!(o.verdict, Verdict::Tempfail { code: 451, .. }));
}

/// Per-call overhead with a warm instance (run with `--ignored --nocapture`; a benchmark,
/// not a test).
#[test]
#[ignore]
fn bench_per_call_overhead() {
    // Wall time inflates when the machine is busy; the thread's CPU time does not.
    fn cpu_now() -> Duration {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    }
    /// Five runs of `n` calls of `call(i)`; prints the median CPU and wall time per call.
    async fn measure(what: &str, n: usize, mut call: impl AsyncFnMut(usize)) {
        let (mut wall, mut cpu) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            let (t, c0) = (Instant::now(), cpu_now());
            for i in 0..n {
                call(i).await;
            }
            cpu.push((cpu_now() - c0).as_nanos() as f64 / n as f64 / 1000.0);
            wall.push(t.elapsed().as_nanos() as f64 / n as f64 / 1000.0);
        }
        wall.sort_by(|a, b| a.partial_cmp(b).unwrap());
        cpu.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "{what:<34} CPU median {:.2} µs/call, wall median {:.2} µs/call (CPU runs: {:?})",
            cpu[2],
            wall[2],
            cpu.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>()
        );
    }
    let h = load("noop", serde_json::json!({}), None).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let session = Arc::new(HookSession::default());
        let msg = Arc::new(vec![b'x'; 50 * 1024]);
        for point in [HookPoint::Connect, HookPoint::Rcpt, HookPoint::Data] {
            let mut c = rcpt("b@y.example", Some(session.clone()));
            c.point = point;
            if point == HookPoint::Data {
                c.message = Some(msg.clone());
            }
            let mut a = Actions::default();
            call_in(&h, &c, &mut a).await.unwrap();
            let what = format!("warm {}", point.function_name());
            measure(&what, 2000, async |_| {
                let mut a = Actions::default();
                call_in(&h, &c, &mut a).await.unwrap();
            })
            .await;
        }
        // The least a call costs in each generation: 0.3 calls `on-rcpt`, 0.4 `on-hook` with
        // the point's name (a string lowered into the plugin, matched there).
        for name in ["raw-answer", "raw-v4"] {
            let bare = load(name, serde_json::json!({"mode": "bare"}), None).unwrap();
            let c = rcpt("b@y.example", Some(session.clone()));
            let mut a = Actions::default();
            call_in(&bare, &c, &mut a).await.unwrap();
            measure(&format!("bare {name} on_rcpt"), 5000, async |_| {
                let mut a = Actions::default();
                call_in(&bare, &c, &mut a).await.unwrap();
            })
            .await;
        }
        // Caches gone cold, as in a server between two hooks: 4 MiB (twice the L2 cache here)
        // written before each call, and only the call timed (less the cost of reading the
        // clock twice); medians of 5 × 300 calls.
        let mut junk = vec![0u64; 512 * 1024];
        let c = rcpt("b@y.example", Some(session.clone()));
        let median = |mut v: Vec<f64>| {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            v[v.len() / 2]
        };
        let mut cold = Vec::new();
        for _ in 0..5 {
            let (mut calls, mut clock) = (Vec::new(), Vec::new());
            for k in 0..300usize {
                for j in (0..junk.len()).step_by(8) {
                    junk[j] = junk[j].wrapping_add(k as u64);
                }
                std::hint::black_box(&junk);
                let t0 = cpu_now();
                clock.push((cpu_now() - t0).as_nanos() as f64);
                let t0 = cpu_now();
                let mut a = Actions::default();
                call_in(&h, &c, &mut a).await.unwrap();
                calls.push((cpu_now() - t0).as_nanos() as f64);
            }
            cold.push((median(calls) - median(clock)) / 1000.0);
        }
        cold.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "{:<34} CPU median {:.2} µs/call (runs: {:?})",
            "on_rcpt, cold caches",
            cold[2],
            cold.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>()
        );
        // Many sessions in turn, as on a busy server: each call finds its instance's memory
        // and the store's state gone cold, as the others ran in between.
        for sessions in [16, 64] {
            let ctxs: Vec<Call> = (0..sessions)
                .map(|_| rcpt("b@y.example", Some(Arc::new(HookSession::default()))))
                .collect();
            let what = format!("on_rcpt, {sessions} sessions in turn");
            measure(&what, 2000, async |i| {
                let mut a = Actions::default();
                call_in(&h, &ctxs[i % sessions], &mut a).await.unwrap();
            })
            .await;
        }
        // A call outside any session takes an idle instance (a new session for the plugin).
        measure("idle instance, new session, on_rcpt", 2000, async |_| {
            let c = rcpt("b@y.example", None);
            let mut a = Actions::default();
            call_in(&h, &c, &mut a).await.unwrap();
        })
        .await;
        // A new instance: instantiation and `init` (and its memory reset when it goes).
        measure("new instance + init", 300, async |_| {
            drop(h.instantiate().await.unwrap());
        })
        .await;
    });
}

#[test]
fn plugins_built_for_an_older_minor_version_are_refused() {
    // corvus:plugin@0.2.0, where hooks got a borrowed context and returned a result record.
    let e = load("previous-version", serde_json::json!({}), None)
        .err()
        .expect("must be refused");
    assert!(
        e.contains("built for corvus:plugin@0.2.0")
            && e.contains("provides corvus:plugin@0.4.1 and 0.3.0")
            && e.contains("rebuild it"),
        "{e}"
    );
}
