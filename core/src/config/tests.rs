//! Config tests: loading, errors naming file and key, every section, and the examples.

use super::*;

fn write(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("corvus.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn unknown_key_is_rejected_with_file_and_key() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "hostname = \"mx\"\n[listen]\nsmpt = \"127.0.0.1:25\"\n",
    );
    let errs = Config::load(Some(&p)).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].contains("corvus.toml"), "{errs:?}");
    assert!(errs[0].contains("smpt"), "{errs:?}");
}

#[test]
fn bad_address_and_missing_cert() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "[listen]\nsmtp = \"nonsense\"\n[tls]\ncert = \"/nope/c.pem\"\nkey = \"/nope/k.pem\"\n",
    );
    let errs = Config::load(Some(&p)).unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.contains(".toml: listen.smtp: \"nonsense\"")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains(".toml: tls.cert: file /nope/c.pem")),
        "{errs:?}"
    );
}

#[test]
fn missing_listener_is_off_under_a_file() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "[listen]\nimap = [\"127.0.0.1:143\", \"[::1]:143\"]\n",
    );
    let c = Config::load(Some(&p)).unwrap();
    let l = c.listeners();
    assert_eq!(l.len(), 2);
    assert!(l.iter().all(|(k, _)| *k == Listener::Imap));
}

#[test]
fn sender_auth_section_with_domain_overrides() {
    let d = tempfile::tempdir().unwrap();
    let c = Config::load(Some(&write(d.path(), "hostname = \"mx\"\n"))).unwrap();
    assert!(c.sender_auth.enabled && !c.sender_auth.spf_reject_fail);
    assert_eq!(c.sender_auth.dmarc, DmarcMode::Enforce);
    let p = write(
        d.path(),
        "[sender_auth]\nspf_reject_fail = true\ntimeout = \"5s\"\ntrusted_arc_sealers = [\"fwd.example\"]\n[sender_auth.domains.\"partner.example\"]\ndmarc = \"monitor\"\nspf_reject_fail = false\n",
    );
    let c = Config::load(Some(&p)).unwrap();
    assert!(c.sender_auth.spf_reject_fail);
    assert_eq!(c.sender_auth.timeout, Duration::from_secs(5));
    let o = &c.sender_auth.domains["partner.example"];
    assert_eq!(o.dmarc, Some(DmarcMode::Monitor));
    assert_eq!(o.spf_reject_fail, Some(false));
    let p = write(d.path(), "[sender_auth]\ndmarc = \"maybe\"\n");
    let e = Config::load(Some(&p)).unwrap_err();
    assert!(e[0].contains("sender_auth.dmarc"), "{e:?}");
}

#[test]
fn durations_parse() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "[delivery]\nretry = [\"1m\", \"5m\"]\nexpire = \"2d\"\n",
    );
    let c = Config::load(Some(&p)).unwrap();
    assert_eq!(
        c.delivery.retry,
        vec![Duration::from_secs(60), Duration::from_secs(300)]
    );
    assert_eq!(c.delivery.expire, Duration::from_secs(172800));
    let p = write(d.path(), "[delivery]\nexpire = \"soon\"\n");
    let e = Config::load(Some(&p)).unwrap_err();
    assert!(e[0].contains("delivery.expire"), "{e:?}");
}

#[test]
fn hooks_entries_resolve_and_reject_unknown_keys() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("scripts")).unwrap();
    std::fs::write(d.path().join("scripts/a.rhai"), "fn on_rcpt(ctx) {}").unwrap();
    let p = write(
        d.path(),
        "[[hooks]]\nscript = \"scripts/a.rhai\"\nconfig = { delay = \"5m\", n = 3 }\non_error = \"continue\"\n",
    );
    let c = Config::load(Some(&p)).unwrap();
    assert_eq!(c.hooks.len(), 1);
    assert_eq!(c.hooks[0].script, d.path().join("scripts/a.rhai"));
    assert_eq!(c.hooks[0].config["n"], serde_json::json!(3));
    assert_eq!(c.hooks[0].on_error, crate::hooks::OnError::Continue);
    assert_eq!(c.source.as_deref(), Some(p.as_path()));

    let p = write(
        d.path(),
        "[[hooks]]\nscript = \"scripts/a.rhai\"\nonerror = \"x\"\n",
    );
    let e = Config::load(Some(&p)).unwrap_err();
    assert!(e[0].contains("onerror"), "{e:?}");
    let p = write(d.path(), "[[hooks]]\nscript = \"scripts/missing.rhai\"\n");
    let e = Config::load(Some(&p)).unwrap_err();
    assert!(e[0].contains(".toml: hooks[0].script: file"), "{e:?}");
    let p = write(
        d.path(),
        "[[hooks]]\nscript = \"scripts/a.rhai\"\non_error = \"maybe\"\n",
    );
    assert!(Config::load(Some(&p)).is_err());
}

#[test]
fn imap_section() {
    let d = tempfile::tempdir().unwrap();
    let c = Config::load(Some(&write(d.path(), "hostname = \"mx\"\n"))).unwrap();
    assert_eq!(c.imap.max_connections_per_user, 20);
    let p = write(d.path(), "[imap]\nmax_connections_per_user = 3\n");
    assert_eq!(
        Config::load(Some(&p))
            .unwrap()
            .imap
            .max_connections_per_user,
        3
    );
    let p = write(d.path(), "[imap]\nmax_connections_per_users = 3\n");
    let e = Config::load(Some(&p)).unwrap_err();
    assert!(e[0].contains("max_connections_per_users"), "{e:?}");
    let p = write(d.path(), "[imap]\nmax_connections_per_user = 0\n");
    let e = Config::load(Some(&p)).unwrap_err();
    assert!(
        e[0].contains(".toml: imap.max_connections_per_user"),
        "{e:?}"
    );
}

#[test]
fn pop3_section() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "[pop3]\nallow_plaintext_auth = true\nidle_timeout = \"15m\"\nmax_errors = 3\n",
    );
    let c = Config::load(Some(&p)).unwrap();
    assert!(c.pop3.allow_plaintext_auth);
    assert_eq!(c.pop3.idle_timeout, Duration::from_secs(900));
    assert_eq!(c.pop3.max_errors, 3);
    let p = write(d.path(), "[pop3]\nidle = \"1m\"\n");
    let e = Config::load(Some(&p)).unwrap_err();
    assert!(e[0].contains("idle"), "{e:?}");
    let p = write(d.path(), "[pop3]\nidle_timeout = \"0s\"\n");
    let e = Config::load(Some(&p)).unwrap_err();
    assert!(e[0].contains(".toml: pop3.idle_timeout"), "{e:?}");
}

/// examples/corvus.toml promises every key: each key of the config tree (from the
/// serialized defaults) appears there, set or commented out, under its table.
#[test]
fn the_example_config_shows_every_key() {
    fn keys(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        let serde_json::Value::Object(map) = v else {
            return;
        };
        for (k, v) in map {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                // Maps keyed by domain (empty by default) are shown by example.
                serde_json::Value::Object(m) if m.is_empty() => {}
                serde_json::Value::Object(_) => keys(&path, v, out),
                _ => out.push(path),
            }
        }
    }
    let mut all = Vec::new();
    // Keys left out of the serialized form while unset are set here.
    let mut config = Config::default();
    config.delivery.delay_warning = Some(Duration::from_secs(3600));
    keys("", &serde_json::to_value(config).unwrap(), &mut all);
    keys(
        "",
        &serde_json::to_value(Config::default()).unwrap(),
        &mut all,
    );
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/corvus.toml"),
    )
    .unwrap();
    let mut shown = std::collections::HashSet::new();
    let mut table = String::new();
    for line in text.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            if !name.starts_with('[') {
                table = name.to_string();
            }
            continue;
        }
        let body = t.trim_start_matches('#').trim_start();
        if let Some((key, _)) = body.split_once('=') {
            let key = key.trim();
            if !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit())
            {
                shown.insert(if table.is_empty() {
                    key.to_string()
                } else {
                    format!("{table}.{key}")
                });
            }
        }
    }
    let missing: Vec<&String> = all
        .iter()
        .filter(|k| !shown.contains(*k) && *k != "source" && *k != "hooks")
        .collect();
    assert!(
        missing.is_empty(),
        "keys missing from examples/corvus.toml: {missing:?}"
    );
}

#[test]
fn every_example_config_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            Config::load(Some(&p)).unwrap_or_else(|e| panic!("{}: {e:?}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 1);
}

#[test]
fn limits_table_sets_the_server_wide_limits() {
    let d = tempfile::tempdir().unwrap();
    let c = Config::load(Some(&write(d.path(), "hostname = \"mx\"\n"))).unwrap();
    assert_eq!(c.limits, Limits::default());
    let p = write(
        d.path(),
        "[limits]\nmax_connections = 300\nmax_connections_per_ip = 7\nmax_auth_failures = 2\n\
         max_auth_failures_per_ip = 4\nauth_fail_window = \"1m\"\n",
    );
    let c = Config::load(Some(&p)).unwrap();
    assert_eq!(
        c.limits,
        Limits {
            max_connections: 300,
            max_connections_per_ip: 7,
            max_auth_failures: 2,
            max_auth_failures_per_ip: 4,
            auth_fail_window: Duration::from_secs(60),
        }
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn old_smtp_limit_keys_still_work_with_a_warning() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "[smtp]\nmax_connections = 300\nmax_connections_per_ip = 7\nmax_auth_failures = 2\n\
         max_auth_failures_per_ip = 4\nauth_fail_window = \"1m\"\n",
    );
    let c = Config::load(Some(&p)).unwrap();
    assert_eq!(c.limits.max_connections, 300);
    assert_eq!(c.limits.max_connections_per_ip, 7);
    assert_eq!(c.limits.max_auth_failures, 2);
    assert_eq!(c.limits.max_auth_failures_per_ip, 4);
    assert_eq!(c.limits.auth_fail_window, Duration::from_secs(60));
    assert_eq!(c.warnings.len(), 5, "{:?}", c.warnings);
    assert_eq!(
        c.warnings[0],
        format!(
            "{}: smtp.max_connections: deprecated; write limits.max_connections instead ([limits] holds the limits of every listener)",
            p.display()
        )
    );
    for key in [
        "max_connections_per_ip",
        "max_auth_failures",
        "auth_fail_window",
    ] {
        assert!(
            c.warnings.iter().any(|w| w.contains(&format!(
                ": smtp.{key}: deprecated; write limits.{key} instead"
            ))),
            "{key}: {:?}",
            c.warnings
        );
    }
    // The same value under both names: only the warning.
    let p = write(
        d.path(),
        "[smtp]\nmax_connections = 300\n[limits]\nmax_connections = 300\n",
    );
    let c = Config::load(Some(&p)).unwrap();
    assert_eq!(c.limits.max_connections, 300);
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
}

#[test]
fn old_and_new_limit_keys_with_different_values_are_an_error() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "[smtp]\nmax_auth_failures = 3\n[limits]\nmax_auth_failures = 5\n",
    );
    let errs = Config::load(Some(&p)).unwrap_err();
    assert_eq!(
        errs,
        vec![format!(
            "{}: smtp.max_auth_failures: deprecated, and limits.max_auth_failures is set to another value; keep only limits.max_auth_failures",
            p.display()
        )]
    );
}

#[test]
fn store_section_postgres_needs_a_url_that_parses() {
    let d = tempfile::tempdir().unwrap();
    let load = |store: &str| Config::load(Some(&write(d.path(), &format!("[store]\n{store}"))));
    let c = load(
        "backend = \"postgres\"\nurl = \"postgresql://corvus:pw@127.0.0.1:5432/corvus\"\npool_size = 4\n",
    )
    .unwrap();
    assert_eq!(c.store.backend, StoreBackend::Postgres);
    assert_eq!(c.store.pool_size, 4);
    let c = load("backend = \"postgres\"\nurl = \"host=/run/postgresql dbname=corvus\"\n").unwrap();
    assert_eq!(c.store.pool_size, 16);
    let errs = load("backend = \"postgres\"\n").unwrap_err();
    assert!(
        errs.iter().any(|e| e.contains("store.url: required")),
        "{errs:?}"
    );
    let errs = load("backend = \"postgres\"\nurl = \"postgresql://h:notaport/db\"\n").unwrap_err();
    assert!(errs.iter().any(|e| e.contains("store url:")), "{errs:?}");
    let errs = load("url = \"postgresql://h/db\"\n").unwrap_err();
    assert!(
        errs.iter().any(|e| e.contains("only used with")),
        "{errs:?}"
    );
    let errs = load("backend = \"postgres\"\nurl = \"host=/x\"\npool_size = 0\n").unwrap_err();
    assert!(
        errs.iter().any(|e| e.contains("store.pool_size")),
        "{errs:?}"
    );
}
