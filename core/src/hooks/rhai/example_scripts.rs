//! The example scripts in `scripts/`, run through the engine with small configs (the
//! end-to-end suite runs them through real sessions).

use super::*;

fn script(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(name)
}

fn load(name: &str, config: serde_json::Value, store: &Store) -> RhaiHook {
    RhaiHook::load_file(
        &script(name),
        LoadOptions {
            config: config.as_object().unwrap().clone(),
            store: Some(store.clone()),
            ..LoadOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn run(h: &RhaiHook, c: &HookCtx) -> (Verdict, Actions) {
    let mut a = Actions::default();
    let v = h.call(c, &mut a).unwrap_or_else(|e| panic!("{e}"));
    (v, a)
}

fn ctx(point: HookPoint, from: &str, rcpt: &str) -> HookCtx {
    let mut c = HookCtx::new(
        point,
        crate::listener::Listener::Smtp,
        "198.51.100.20".parse().unwrap(),
    );
    c.mail_from = from.into();
    c.rcpt = rcpt.into();
    c
}

#[test]
fn every_script_compiles_and_checks() {
    let mut n = 0;
    for entry in std::fs::read_dir(script("")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "rhai") && !p.to_string_lossy().ends_with(".d.rhai") {
            check_script(&p).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 6);
}

#[test]
fn guide_and_definitions_cover_the_api() {
    let guide = std::fs::read_to_string(script("README.md")).unwrap();
    let defs = std::fs::read_to_string(script("corvus.d.rhai")).unwrap();
    for name in API_FUNCTIONS {
        assert!(
            guide.contains(&format!("`{name}"))
                || guide.contains(&format!("`ctx.{name}"))
                || guide.contains(&format!("`ctx.auth.{name}")),
            "README.md lacks {name}"
        );
        assert!(
            defs.contains(&format!("fn {name}(")) || defs.contains(&format!("get {name}(")),
            "corvus.d.rhai lacks {name}"
        );
    }
}

#[test]
fn greylist() {
    let s: Store = Arc::new(crate::store::MemoryStore::new());
    let h = load("rcpt_greylist.rhai", serde_json::json!({"delay": "1s"}), &s);
    let c = ctx(HookPoint::Rcpt, "a@x.example", "b@y.example");
    assert!(matches!(run(&h, &c).0, Verdict::Tempfail { code: 451, .. }));
    assert!(matches!(run(&h, &c).0, Verdict::Tempfail { code: 451, .. }));
    // Another address of the same /24 is the same client.
    let mut c2 = c.clone();
    c2.client_ip = "198.51.100.99".parse().unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(run(&h, &c2).0, Verdict::Continue);
    assert_eq!(run(&h, &c).0, Verdict::Continue);
    let mut authed = ctx(HookPoint::Rcpt, "a@x.example", "new@y.example");
    authed.user = "a@x.example".into();
    assert_eq!(run(&h, &authed).0, Verdict::Continue);
}

#[test]
fn rate_limit() {
    let s: Store = Arc::new(crate::store::MemoryStore::new());
    let h = load(
        "mail_rate_limit.rhai",
        serde_json::json!({"max": 2, "window": "1h"}),
        &s,
    );
    let c = ctx(HookPoint::Mail, "A@x.example", "");
    assert_eq!(run(&h, &c).0, Verdict::Continue);
    assert_eq!(
        run(&h, &ctx(HookPoint::Mail, "a@x.example", "")).0,
        Verdict::Continue
    );
    assert!(matches!(run(&h, &c).0, Verdict::Tempfail { code: 450, .. }));
    assert_eq!(
        run(&h, &ctx(HookPoint::Mail, "b@x.example", "")).0,
        Verdict::Continue
    );
}

#[test]
fn blocklist() {
    let s: Store = Arc::new(crate::store::MemoryStore::new());
    let h = load(
        "rcpt_blocklist.rhai",
        serde_json::json!({"senders": ["@Bad.example", "one@ok.example"], "recipients": ["gone@y.example"]}),
        &s,
    );
    assert!(matches!(
        run(&h, &ctx(HookPoint::Mail, "x@bad.EXAMPLE", "")).0,
        Verdict::Reject { code: 550, .. }
    ));
    assert!(matches!(
        run(&h, &ctx(HookPoint::Mail, "one@ok.example", "")).0,
        Verdict::Reject { .. }
    ));
    assert_eq!(
        run(&h, &ctx(HookPoint::Mail, "two@ok.example", "")).0,
        Verdict::Continue
    );
    assert!(matches!(
        run(
            &h,
            &ctx(HookPoint::Rcpt, "two@ok.example", "Gone@y.example")
        )
        .0,
        Verdict::Reject { .. }
    ));
    assert_eq!(
        run(
            &h,
            &ctx(HookPoint::Rcpt, "two@ok.example", "here@y.example")
        )
        .0,
        Verdict::Continue
    );
}

fn with_message(point: HookPoint, rcpt: &str, msg: &str) -> HookCtx {
    let mut c = ctx(point, "a@x.example", rcpt);
    c.message = Some(Arc::new(msg.as_bytes().to_vec()));
    c
}

#[test]
fn subject_tag() {
    let s: Store = Arc::new(crate::store::MemoryStore::new());
    let h = load(
        "data_subject_tag.rhai",
        serde_json::json!({"rules": [{"words": ["invoice"], "tag": "finance"}, {"words": ["news"], "tag": "bulk"}]}),
        &s,
    );
    let msg = "Subject: Your INVOICE and news\r\n\r\nbody\r\n";
    let (v, a) = run(&h, &with_message(HookPoint::Data, "", msg));
    assert_eq!(v, Verdict::Continue);
    assert_eq!(
        a.add_headers,
        vec![
            ("X-Corvus-Tag".to_string(), "finance".to_string()),
            ("X-Corvus-Tag".into(), "bulk".into())
        ]
    );
    let (_, a) = run(
        &h,
        &with_message(HookPoint::Data, "", "Subject: hello\r\n\r\n"),
    );
    assert!(a.add_headers.is_empty());
}

#[test]
fn fileinto() {
    let s: Store = Arc::new(crate::store::MemoryStore::new());
    let h = load(
        "delivery_fileinto.rhai",
        serde_json::json!({"rules": [
            {"header": "List-Id", "contains": "Rust-Users", "folder": "Lists/Rust"},
            {"header": "Subject", "contains": "report", "folder": "Reports", "rcpt": "boss@y.example"}
        ]}),
        &s,
    );
    let list = "List-Id: <rust-users.lists.example>\r\nSubject: hi\r\n\r\n";
    let (_, a) = run(&h, &with_message(HookPoint::Delivery, "b@y.example", list));
    assert_eq!(a.file_into.as_deref(), Some("Lists/Rust"));
    let report = "Subject: Weekly report\r\n\r\n";
    let (_, a) = run(
        &h,
        &with_message(HookPoint::Delivery, "b@y.example", report),
    );
    assert_eq!(a.file_into, None);
    let (_, a) = run(
        &h,
        &with_message(HookPoint::Delivery, "Boss@y.example", report),
    );
    assert_eq!(a.file_into.as_deref(), Some("Reports"));
}

#[test]
fn auth_allowlist() {
    let s: Store = Arc::new(crate::store::MemoryStore::new());
    let h = load(
        "auth_ip_allowlist.rhai",
        serde_json::json!({"allow": ["192.0.2.0/24"], "listeners": ["submission"]}),
        &s,
    );
    let auth = |listener: crate::listener::Listener, ip: &str| {
        let mut c = HookCtx::new(HookPoint::Auth, listener, ip.parse().unwrap());
        c.credentials = Some(crate::hooks::Credentials {
            username: "u@x".into(),
            password: "pw".into(),
            mechanism: "PLAIN".into(),
            valid: false,
        });
        run(&h, &c).0
    };
    assert!(matches!(
        auth(crate::listener::Listener::Submission, "127.0.0.1"),
        Verdict::Reject { code: 535, .. }
    ));
    assert_eq!(
        auth(crate::listener::Listener::Submission, "192.0.2.44"),
        Verdict::Continue
    );
    assert_eq!(
        auth(crate::listener::Listener::Imap, "127.0.0.1"),
        Verdict::Continue
    );
}
