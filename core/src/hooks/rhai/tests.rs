//! Unit tests of the Rhai engine: verdicts, actions, context, limits, errors, kv.

use std::time::{Duration, Instant};

use super::*;
use crate::blocking::Wait;
use crate::hooks::{Enhanced, HookChain};

fn store() -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().unwrap();
    let s: Store = Arc::new(crate::store::MemoryStore::new());
    (d, s)
}

fn load(source: &str) -> RhaiHook {
    RhaiHook::from_source("t.rhai", source, LoadOptions::default())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn ctx(point: HookPoint) -> HookCtx {
    let mut c = HookCtx::new(
        point,
        crate::listener::Listener::Smtp,
        "192.0.2.7".parse().unwrap(),
    );
    c.helo = "client.example".into();
    c.mail_from = "a@x.example".into();
    c.rcpt = "b@y.example".into();
    c.rcpts = vec!["c@y.example".into()];
    c
}

fn call(h: &RhaiHook, c: &HookCtx) -> (Result<Verdict, HookError>, Actions) {
    let mut a = Actions::default();
    let r = h.call(c, &mut a);
    (r, a)
}

fn verdict_of(body: &str) -> Result<Verdict, HookError> {
    let h = load(&format!("fn on_rcpt(ctx) {{ {body} }}"));
    call(&h, &ctx(HookPoint::Rcpt)).0
}

#[test]
fn each_verdict() {
    assert_eq!(verdict_of("accept()").unwrap(), Verdict::Accept);
    assert_eq!(verdict_of("next()").unwrap(), Verdict::Continue);
    assert_eq!(verdict_of("").unwrap(), Verdict::Continue);
    assert_eq!(verdict_of("return;").unwrap(), Verdict::Continue);
    assert_eq!(verdict_of("discard()").unwrap(), Verdict::Discard);
    assert_eq!(
        verdict_of(r#"quarantine("spammy")"#).unwrap(),
        Verdict::Quarantine("spammy".into())
    );
    assert_eq!(
        verdict_of(r#"reject(554, "5.7.1 go away")"#).unwrap(),
        Verdict::Reject {
            code: 554,
            enhanced: Some(Enhanced::known("5.7.1")),
            text: "go away".into()
        }
    );
    assert_eq!(
        verdict_of(r#"reject("no")"#).unwrap(),
        Verdict::Reject {
            code: 550,
            enhanced: None,
            text: "no".into()
        }
    );
    assert_eq!(
        verdict_of(r#"tempfail(450, "later")"#).unwrap(),
        Verdict::Tempfail {
            code: 450,
            enhanced: None,
            text: "later".into()
        }
    );
    assert_eq!(
        verdict_of(r#"tempfail("later")"#).unwrap(),
        Verdict::Tempfail {
            code: 451,
            enhanced: None,
            text: "later".into()
        }
    );
    // Reply text cannot carry line breaks into the SMTP reply.
    assert_eq!(
        verdict_of(r#"reject(550, "a\r\n250 ok")"#).unwrap(),
        Verdict::Reject {
            code: 550,
            enhanced: None,
            text: "a  250 ok".into()
        }
    );
    let e = verdict_of(r#"reject(450, "wrong class")"#).unwrap_err();
    assert!(e.0.contains("reject: code 450 is not in 500..599"), "{e}");
    let e = verdict_of(r#""accept""#).unwrap_err();
    assert!(e.0.contains("returned a string"), "{e}");
}

#[test]
fn each_action() {
    let h = load(
        r#"
            fn on_rcpt(ctx) { ctx.set_rcpt("<new@y.example>"); }
            fn on_data(ctx) { ctx.add_header("X-Tag", "one"); ctx.add_header("X-Tag", "two"); }
            fn on_delivery(ctx) { ctx.file_into("Lists/Rust"); ctx.add_header("X-Rcpt", ctx.rcpt); }
            fn on_mail(ctx) { ctx.file_into("Junk"); }
            "#,
    );
    let (r, a) = call(&h, &ctx(HookPoint::Rcpt));
    assert_eq!(r.unwrap(), Verdict::Continue);
    assert_eq!(a.set_rcpt.as_deref(), Some("new@y.example"));
    let (_, a) = call(&h, &ctx(HookPoint::Data));
    assert_eq!(
        a.add_headers,
        vec![
            ("X-Tag".into(), "one".into()),
            ("X-Tag".into(), "two".into())
        ]
    );
    let (_, a) = call(&h, &ctx(HookPoint::Delivery));
    assert_eq!(a.file_into.as_deref(), Some("Lists/Rust"));
    assert_eq!(a.add_headers, vec![("X-Rcpt".into(), "b@y.example".into())]);
    // Actions are only offered where they mean something.
    let (r, a) = call(&h, &ctx(HookPoint::Mail));
    let e = r.unwrap_err();
    assert!(
        e.0.contains("ctx.file_into is only available in on_delivery"),
        "{e}"
    );
    assert_eq!(a, Actions::default());
    // A call that fails leaves no actions behind.
    let h = load(r#"fn on_data(ctx) { ctx.add_header("X-A", "1"); throw "boom"; }"#);
    let (r, a) = call(&h, &ctx(HookPoint::Data));
    assert!(r.unwrap_err().0.contains("boom"));
    assert!(a.add_headers.is_empty());
    let h = load(r#"fn on_data(ctx) { ctx.add_header("Bad Name", "1"); }"#);
    assert!(call(&h, &ctx(HookPoint::Data)).0.is_err());
}

#[test]
fn every_ctx_field() {
    let msg = concat!(
        "From: Alice <a@x.example>\r\n",
        "To: b@y.example\r\n",
        "Subject: =?utf-8?q?Caf=C3=A9?= news\r\n",
        "X-Multi: one\r\n",
        "X-Multi: two\r\n",
        "MIME-Version: 1.0\r\n",
        "Content-Type: multipart/mixed; boundary=\"b\"\r\n",
        "\r\n",
        "--b\r\n",
        "Content-Type: text/plain; charset=utf-8\r\n",
        "\r\n",
        "Hello there\r\n",
        "--b\r\n",
        "Content-Type: application/pdf; name=\"r.pdf\"\r\n",
        "Content-Disposition: attachment; filename=\"r.pdf\"\r\n",
        "Content-Transfer-Encoding: base64\r\n",
        "\r\n",
        "JVBERi0xLjQK\r\n",
        "--b--\r\n",
    );
    let h = load(
        r#"
            fn on_data(ctx) {
                let a = ctx.attachments;
                let body = ctx.body;
                body.trim();
                let parts = [ctx.hook, ctx.client_ip, ctx.client_ptr, ctx.helo, `${ctx.tls}`, ctx.user,
                    ctx.mail_from, ctx.rcpt, `${ctx.rcpts}`, ctx.listener, `${ctx.config.k}`,
                    ctx.subject, `${ctx.size}`, ctx.header("x-multi"), `${ctx.headers("X-MULTI")}`,
                    ctx.header("missing"), body, `${a.len()}`, a[0].name, a[0].content_type,
                    `${a[0].size}`, ctx.spf, ctx.dkim, ctx.dmarc, ctx.header("From")];
                ctx.add_header("X-Facts", parts.reduce(|s, x| s + "|" + x, ""));
            }
            fn on_auth(ctx) {
                if ctx.username == "u@x" && ctx.password == "pw" && ctx.mechanism == "LOGIN" && ctx.password_valid {
                    accept()
                } else { reject("bad") }
            }
            fn on_fetch(ctx) { if ctx.mailbox == "Junk" && ctx.uid == 7 && ctx.protocol == "pop3" { reject("no") } }
            fn on_delivery(ctx) { if ctx.remote && ctx.mx == "mx.y.example" { tempfail("later") } }
            "#,
    );
    let config = json_to_dynamic(&serde_json::json!({"k": "v"}));
    let h = RhaiHook {
        view: ConfigView::of(&config),
        config,
        ..h
    };
    let mut c = ctx(HookPoint::Data);
    c.client_ptr = "ptr.example".into();
    c.tls = true;
    c.user = "me@x.example".into();
    c.auth.spf = "pass".into();
    c.auth.dkim = "none".into();
    c.auth.dmarc = "fail".into();
    c.message = Some(Arc::new(msg.as_bytes().to_vec()));
    let (r, a) = call(&h, &c);
    r.unwrap();
    assert_eq!(
        a.add_headers[0].1,
        format!(
            "|data|192.0.2.7|ptr.example|client.example|true|me@x.example|a@x.example|b@y.example|[\"c@y.example\"]|smtp|v|Café news|{}|one|[\"one\", \"two\"]||Hello there|1|r.pdf|application/pdf|9|pass|none|fail|Alice <a@x.example>",
            msg.len()
        )
    );

    let mut c = ctx(HookPoint::Auth);
    c.credentials = Some(crate::hooks::Credentials {
        username: "u@x".into(),
        password: "pw".into(),
        mechanism: "LOGIN".into(),
        valid: true,
    });
    assert_eq!(call(&h, &c).0.unwrap(), Verdict::Accept);
    c.credentials.as_mut().unwrap().valid = false;
    assert!(matches!(call(&h, &c).0.unwrap(), Verdict::Reject { .. }));

    let mut c = ctx(HookPoint::Fetch);
    c.fetch = Some(crate::hooks::FetchFacts {
        mailbox: "Junk".into(),
        uid: 7,
        protocol: "pop3",
    });
    assert!(matches!(call(&h, &c).0.unwrap(), Verdict::Reject { .. }));

    let mut c = ctx(HookPoint::Delivery);
    assert_eq!(call(&h, &c).0.unwrap(), Verdict::Continue);
    c.remote_mx = Some("mx.y.example".into());
    assert!(matches!(call(&h, &c).0.unwrap(), Verdict::Tempfail { .. }));
}

#[test]
fn sender_auth_facts() {
    let h = load(
        r#"
            fn on_data(ctx) {
                let a = ctx.auth;
                ctx.add_header("X-A", [a.spf, a.spf_domain, a.spf_helo, a.dkim, `${a.dkim_domains}`,
                    a.dmarc, a.dmarc_domain, a.dmarc_policy, a.arc, a.arc_sealer, a.action].reduce(|s, x| s + "|" + x, ""));
                ctx.add_header("X-B", `${ctx.auth}`);
                if ctx.auth.arc == "pass" && "sign.example" in ctx.auth.dkim_domains { return accept(); }
            }
            fn on_mail(ctx) { if ctx.auth.spf == "fail" && ctx.auth.dkim == "" { reject("spf") } }
            "#,
    );
    let mut c = ctx(HookPoint::Data);
    c.auth = crate::sender_auth::AuthFacts {
        spf: "pass".into(),
        spf_domain: "x.example".into(),
        spf_helo: "none".into(),
        dkim: "pass".into(),
        dkim_domains: vec!["x.example".into(), "sign.example".into()],
        dmarc: "fail".into(),
        dmarc_domain: "from.example".into(),
        dmarc_policy: "reject".into(),
        arc: "pass".into(),
        arc_sealer: "list.example".into(),
        action: "reject".into(),
    };
    let (r, a) = call(&h, &c);
    assert_eq!(r.unwrap(), Verdict::Accept);
    assert_eq!(
        a.add_headers[0].1,
        "|pass|x.example|none|pass|[\"x.example\", \"sign.example\"]|fail|from.example|reject|pass|list.example|reject"
    );
    assert_eq!(
        a.add_headers[1].1,
        "spf=pass (x.example) dkim=pass (x.example sign.example) dmarc=fail (from.example, policy reject) arc=pass (list.example) action=reject"
    );
    c.auth.arc = "fail".into();
    assert_eq!(call(&h, &c).0.unwrap(), Verdict::Continue);
    // Not checked: empty values.
    let (r, a) = call(&h, &ctx(HookPoint::Data));
    assert_eq!(r.unwrap(), Verdict::Continue);
    assert_eq!(a.add_headers[0].1, "|||||[]||||||");
    let mut c = ctx(HookPoint::Mail);
    c.auth.spf = "fail".into();
    assert!(matches!(call(&h, &c).0.unwrap(), Verdict::Reject { .. }));
}

#[test]
fn config_is_a_shared_read_only_view() {
    let h = RhaiHook::from_source(
            "t.rhai",
            r#"
            fn on_rcpt(ctx) {
                let c = ctx.config;
                let m = c.to_map();
                m.extra = 1;
                reject(`${c.delay} ${c["list"]} ${"delay" in c} ${"nope" in c} ${c.nope == ()} ${c.len()} ${c.keys()} ${m.extra} ${c.get("delay")} ${ctx.config.list.len()}`)
            }
            fn on_mail(ctx) { let c = ctx.config; c.delay = "changed"; }
            fn on_helo(ctx) { ctx.config.list.push(3); }
            "#,
            LoadOptions {
                config: serde_json::json!({"delay": "5m", "list": [1, 2]})
                    .as_object()
                    .unwrap()
                    .clone(),
                ..LoadOptions::default()
            },
        )
        .unwrap();
    let text = || match call(&h, &ctx(HookPoint::Rcpt)).0.unwrap() {
        Verdict::Reject { text, .. } => text,
        v => panic!("{v:?}"),
    };
    let want = "5m [1, 2] true false true 2 [\"delay\", \"list\"] 1 5m 2";
    assert_eq!(text(), want);
    // Changing it fails the call and changes nothing for the next one.
    assert!(call(&h, &ctx(HookPoint::Mail)).0.is_err());
    let _ = call(&h, &ctx(HookPoint::Helo)).0;
    assert_eq!(text(), want);
}

#[test]
fn handles_only_defined_points() {
    let h = load("fn on_rcpt(ctx) {} fn helper(x) { x }");
    assert!(h.handles(HookPoint::Rcpt));
    for p in HookPoint::ALL.iter().filter(|p| **p != HookPoint::Rcpt) {
        assert!(!h.handles(*p), "{p:?}");
    }
    let e = RhaiHook::from_source("t.rhai", "\nfn on_recpt(ctx) {}", LoadOptions::default())
        .err()
        .unwrap();
    assert!(
        e.starts_with("t.rhai:2:1: fn on_recpt is not a hook point"),
        "{e}"
    );
    let e = RhaiHook::from_source("t.rhai", "fn on_rcpt() {}", LoadOptions::default())
        .err()
        .unwrap();
    assert!(e.contains("must take one parameter"), "{e}");
}

#[test]
fn syntax_error_is_file_line_column() {
    let e = RhaiHook::from_source(
        "scripts/x.rhai",
        "fn on_rcpt(ctx) {\n    let x = ;\n}\n",
        LoadOptions::default(),
    )
    .err()
    .unwrap();
    assert!(e.starts_with("scripts/x.rhai:2:13: "), "{e}");
    assert!(!e.contains('\n'), "{e}");
    // Undefined variables are compile errors (strict variables).
    let e = RhaiHook::from_source(
        "x.rhai",
        "fn on_rcpt(ctx) {\n  undefined_thing + 1\n}",
        LoadOptions::default(),
    )
    .err()
    .unwrap();
    assert!(e.starts_with("x.rhai:2:3: "), "{e}");
    // Modules and eval are not available.
    let h = load(r#"fn on_rcpt(ctx) { import "os" as os; }"#);
    assert!(call(&h, &ctx(HookPoint::Rcpt)).0.is_err());
    let e = RhaiHook::from_source(
        "x.rhai",
        r#"fn on_rcpt(ctx) { eval("1") }"#,
        LoadOptions::default(),
    )
    .err()
    .unwrap();
    assert!(e.contains("'eval' is disabled"), "{e}");
    // check_script reports the same way.
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("bad.rhai");
    std::fs::write(&p, "fn on_rcpt(ctx) {\n  if { \n}").unwrap();
    let e = check_script(&p).unwrap_err();
    assert!(e.starts_with(&format!("{}:2:", p.display())), "{e}");
}

#[test]
fn runtime_error_names_script_line_and_function() {
    let h = load("fn helper(x) {\n  x.no_such_method()\n}\nfn on_rcpt(ctx) {\n  helper(1)\n}");
    let e = call(&h, &ctx(HookPoint::Rcpt)).0.unwrap_err();
    assert!(e.0.starts_with("t.rhai:2:5: on_rcpt: "), "{e}");
    assert!(e.0.contains("no_such_method"), "{e}");
}

#[test]
fn endless_loop_fails_within_the_budget() {
    let h = load("fn on_rcpt(ctx) {\n  let i = 0;\n  loop { i += 1; }\n}");
    let t = Instant::now();
    let e = call(&h, &ctx(HookPoint::Rcpt)).0.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(e.0.contains("too many operations"), "{e}");
    // Limits point at the hook function.
    assert!(e.0.starts_with("t.rhai:1:1: on_rcpt: "), "{e}");
    // Without an operations cap, the wall-clock budget stops it.
    let h = RhaiHook::from_source(
        "t.rhai",
        "fn on_rcpt(ctx) { let i = 0; while true { i += 1; } }",
        LoadOptions {
            limits: Limits {
                max_operations: 0,
                time_budget: Duration::from_millis(30),
                ..Limits::default()
            },
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let t = Instant::now();
    let e = call(&h, &ctx(HookPoint::Rcpt)).0.unwrap_err();
    let took = t.elapsed();
    assert!(e.0.contains("time budget exceeded (30 ms)"), "{e}");
    assert!(
        took >= Duration::from_millis(30) && took < Duration::from_secs(1),
        "{took:?}"
    );
    // The next call on the same thread has a fresh budget.
    let h2 = load("fn on_rcpt(ctx) { accept() }");
    assert_eq!(call(&h2, &ctx(HookPoint::Rcpt)).0.unwrap(), Verdict::Accept);
}

#[test]
fn huge_string_and_deep_recursion_fail() {
    let h = load(r#"fn on_rcpt(ctx) { let s = "x"; loop { s += s; } }"#);
    let e = call(&h, &ctx(HookPoint::Rcpt)).0.unwrap_err();
    assert!(e.0.contains("too large"), "{e}");
    let h = load(r#"fn on_rcpt(ctx) { let s = ""; s.pad(100000000, "y"); }"#);
    let e = call(&h, &ctx(HookPoint::Rcpt)).0.unwrap_err();
    assert!(e.0.contains("too large"), "{e}");
    let h = load("fn down(n) { down(n + 1) }\nfn on_rcpt(ctx) { down(0) }");
    let e = call(&h, &ctx(HookPoint::Rcpt)).0.unwrap_err();
    assert!(e.0.to_lowercase().contains("stack overflow"), "{e}");
    // Growing an array is checked too (in a debug build the time budget may come first).
    let h = load("fn on_rcpt(ctx) { let a = []; loop { a.push(1); } }");
    let e = call(&h, &ctx(HookPoint::Rcpt)).0.unwrap_err();
    assert!(
        e.0.contains("too large") || e.0.contains("time budget"),
        "{e}"
    );
}

#[test]
fn kv_is_namespaced_and_expires() {
    let (_d, s) = store();
    let opts = LoadOptions {
        store: Some(s.clone()),
        ..LoadOptions::default()
    };
    let src = r#"
            fn on_rcpt(ctx) {
                let n = kv_incr("n:" + ctx.rcpt, 60);
                kv_set("short", "v", 1);
                kv_set("forever", 42, 0);
                let seen = kv_get("seen");
                kv_set("seen", "yes", 60);
                reject(`${n} ${seen} ${kv_get("short")} ${kv_get("forever")} ${kv_incr("n:" + ctx.rcpt, 10, 60)}`)
            }
            fn on_mail(ctx) { reject(`${kv_get("short")} ${kv_get("forever")}`) }
        "#;
    let a = RhaiHook::from_source("dir/a.rhai", src, opts.clone()).unwrap();
    let b = RhaiHook::from_source("other/b.rhai", src, opts).unwrap();
    let text = |h: &RhaiHook, p| match call(h, &ctx(p)).0.unwrap() {
        Verdict::Reject { text, .. } => text,
        v => panic!("{v:?}"),
    };
    assert_eq!(text(&a, HookPoint::Rcpt), "1  v 42 11");
    assert_eq!(text(&a, HookPoint::Rcpt), "12 yes v 42 22");
    // Another script has its own namespace.
    assert_eq!(text(&b, HookPoint::Rcpt), "1  v 42 11");
    assert_eq!(s.kv_get("rhai:a", "seen").wait().unwrap().unwrap(), b"yes");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(text(&a, HookPoint::Mail), " 42");
    // Without a store the kv functions fail the call.
    let h = load(r#"fn on_rcpt(ctx) { kv_get("x") }"#);
    assert!(call(&h, &ctx(HookPoint::Rcpt)).0.is_err());
}

#[test]
fn init_shapes_config_and_can_refuse() {
    let h = RhaiHook::from_source(
        "t.rhai",
        r#"
            fn init(config) {
                if !("delay" in config) { throw "config.delay is required"; }
                config.delay_secs = parse_duration(config.delay);
                config
            }
            fn on_rcpt(ctx) { reject(`${ctx.config.delay_secs}`) }
            "#,
        LoadOptions {
            config: serde_json::json!({"delay": "5m"})
                .as_object()
                .unwrap()
                .clone(),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(
        call(&h, &ctx(HookPoint::Rcpt)).0.unwrap(),
        Verdict::Reject {
            code: 550,
            enhanced: None,
            text: "300".into()
        }
    );
    let e = RhaiHook::from_source(
        "t.rhai",
        "fn init(config) {\n  if !(\"delay\" in config) { throw \"config.delay is required\"; }\n}",
        LoadOptions::default(),
    )
    .err()
    .unwrap();
    assert!(e.starts_with("t.rhai:2:"), "{e}");
    assert!(
        e.contains("init: ") && e.contains("config.delay is required"),
        "{e}"
    );
}

#[test]
fn log_print_and_helpers() {
    let sink: LogSink = Arc::default();
    let h = RhaiHook::from_source(
            "t.rhai",
            r#"
            fn on_connect(ctx) {
                log("warn", "from " + ctx.client_ip);
                print("printed");
                let ok = ip_in(ctx.client_ip, "192.0.2.0/24") && !ip_in(ctx.client_ip, ["10.0.0.0/8", "::1"])
                    && ip_in("::ffff:192.0.2.9", "192.0.2.0/28") && ip_in("2001:db8::1", "2001:db8::/32");
                log("info", `${ok} ${domain_of("<A@Example.ORG>")} ${local_part("a.b@x")} ${now() > 1700000000} ${parse_duration("1h")}`);
            }
            fn on_helo(ctx) { log("loud", "x") }
            "#,
            LoadOptions {
                sink: Some(sink.clone()),
                ..LoadOptions::default()
            },
        )
        .unwrap();
    call(&h, &ctx(HookPoint::Connect)).0.unwrap();
    assert_eq!(
        *sink.lock().unwrap(),
        vec![
            "[warn] from 192.0.2.7".to_string(),
            "[info] printed".into(),
            "[info] true example.org a.b true 3600".into()
        ]
    );
    assert!(call(&h, &ctx(HookPoint::Helo)).0.is_err());
}

#[test]
fn chain_applies_on_error_policy() {
    let failing = |on_error| {
        RhaiHook::from_source(
            "bad.rhai",
            "fn on_rcpt(ctx) { loop {} }",
            LoadOptions {
                on_error,
                ..LoadOptions::default()
            },
        )
        .unwrap()
    };
    let after = load(r#"fn on_rcpt(ctx) { reject(554, "second") }"#);
    let after = Arc::new(after);
    for (policy, want) in [
        (OnError::Tempfail, 451),
        (OnError::Reject, 550),
        (OnError::Continue, 554),
    ] {
        let chain = HookChain::new(vec![Arc::new(failing(policy)), after.clone()]);
        let out = chain.run(&ctx(HookPoint::Rcpt));
        let code = match out.verdict {
            Verdict::Reject { code, .. } | Verdict::Tempfail { code, .. } => code,
            v => panic!("{v:?}"),
        };
        assert_eq!(code, want, "{policy:?}");
    }
    // A replaced chain is used by the next run.
    let chain = HookChain::new(vec![Arc::new(failing(OnError::Tempfail))]);
    chain.replace(vec![after.clone()]);
    assert!(matches!(
        chain.run(&ctx(HookPoint::Rcpt)).verdict,
        Verdict::Reject { code: 554, .. }
    ));
}

#[test]
fn hooks_are_send_and_sync() {
    fn is<T: Send + Sync>() {}
    is::<RhaiHook>();
}
