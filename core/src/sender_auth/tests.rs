//! Checks end to end inside one process: a tiny DNS server on loopback answers from a table,
//! messages are signed with Corvus's own DKIM code, and [`SenderAuth`] verifies them.
//! (Independent signers and verifiers are exercised by tests/e2e/test_sender_auth.py.)
//! Also the warm-cache benchmark (`bench_check_message_warm_cache`, ignored by default).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use super::*;
use crate::config::{Config, SenderAuthDomain};
use crate::store::Store;
use crate::test_dns::TestDns;

struct Fixture {
    dns: TestDns,
    store: Store,
    _dir: tempfile::TempDir,
    config: Config,
}

impl Fixture {
    fn new() -> Self {
        let dns = TestDns::start();
        let dir = tempfile::tempdir().unwrap();
        let store: Store = Arc::new(crate::store::MemoryStore::new());
        let mut config = Config {
            hostname: "mx.rcpt.test".into(),
            ..Config::default()
        };
        config.dns.nameservers = vec![dns.addr.to_string()];
        Fixture {
            dns,
            store,
            _dir: dir,
            config,
        }
    }

    /// A domain with a DKIM key (published), SPF for `ip` and a DMARC record.
    async fn domain(&self, domain: &str, algorithm: &str, ip: &str, dmarc: &str) {
        let key = crate::dkim::generate(&self.store, domain, "sel", algorithm)
            .await
            .unwrap();
        let k = if algorithm == "ed25519" {
            "ed25519"
        } else {
            "rsa"
        };
        self.dns.txt(
            &format!("sel._domainkey.{domain}"),
            &format!("v=DKIM1; k={k}; p={}", key.public_key),
        );
        self.dns.txt(domain, &format!("v=spf1 ip4:{ip} -all"));
        self.dns.a(domain, ip);
        if !dmarc.is_empty() {
            self.dns.txt(&format!("_dmarc.{domain}"), dmarc);
        }
    }

    fn checker(&self) -> SenderAuth {
        let resolver = crate::dns::resolver(&self.config).unwrap();
        SenderAuth::new(&self.config, resolver, self.store.clone())
    }

    async fn signed(&self, from: &str, subject: &str) -> Vec<u8> {
        let domain = from.rsplit_once('@').unwrap().1;
        let msg = format!(
            "From: <{from}>\r\nTo: <bob@rcpt.test>\r\nSubject: {subject}\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <{subject}@x>\r\n\r\nBody line.\r\n"
        )
        .into_bytes();
        let sig = crate::dkim::sign(&self.store, domain, &msg)
            .await
            .expect("signed");
        let mut out = sig.into_bytes();
        out.extend_from_slice(&msg);
        out
    }
}

const SENDER_IP: &str = "192.0.2.10";

fn ip() -> IpAddr {
    SENDER_IP.parse().unwrap()
}

async fn check(auth: &SenderAuth, raw: &[u8], mail_from: &str) -> Checked {
    let env = Envelope {
        ip: ip(),
        helo: "mail.example",
        mail_from,
        spf: None,
    };
    auth.check_message(raw, &env).await
}

fn resinfo<'a>(header: &'a str, method: &str) -> Vec<&'a str> {
    header
        .split(';')
        .map(str::trim)
        .filter(|p| p.starts_with(&format!("{method}=")))
        .collect()
}

#[tokio::test]
async fn aligned_ed25519_and_spf_pass() {
    let f = Fixture::new();
    f.domain("ok.test", "ed25519", SENDER_IP, "v=DMARC1; p=reject")
        .await;
    let auth = f.checker();
    let c = check(&auth, &f.signed("a@ok.test", "hello").await, "a@ok.test").await;
    assert!(
        c.header
            .starts_with("Authentication-Results: mx.rcpt.test;\r\n\t"),
        "{}",
        c.header
    );
    assert!(c.header.ends_with("\r\n") && !c.header[..c.header.len() - 2].contains("\r\n\r\n"));
    assert!(
        resinfo(&c.header, "spf")[0].starts_with("spf=pass"),
        "{}",
        c.header
    );
    let dkim = resinfo(&c.header, "dkim");
    assert_eq!(dkim.len(), 1);
    assert!(
        dkim[0].starts_with("dkim=pass header.d=ok.test"),
        "{}",
        c.header
    );
    assert!(dkim[0].contains("header.a=ed25519-sha256"), "{}", c.header);
    assert!(
        resinfo(&c.header, "dmarc")[0]
            .starts_with("dmarc=pass (p=reject dis=none) header.from=ok.test"),
        "{}",
        c.header
    );
    assert_eq!(c.action, Action::Accept);
    assert_eq!(c.facts.spf, "pass");
    assert_eq!(c.facts.dkim, "pass");
    assert_eq!(c.facts.dkim_domains, vec!["ok.test".to_string()]);
    assert_eq!(c.facts.dmarc, "pass");
    assert_eq!(c.facts.dmarc_policy, "reject");
    assert_eq!(c.facts.arc, "none");
}

#[tokio::test]
async fn tampered_rsa_fails_and_reject_policy_rejects() {
    let f = Fixture::new();
    f.domain("bank.test", "rsa", "198.51.100.1", "v=DMARC1; p=reject")
        .await;
    let auth = f.checker();
    let mut raw = f.signed("ceo@bank.test", "pay").await;
    let at = raw.len() - 4;
    raw[at] = b'X'; // body changed after signing
    let c = check(&auth, &raw, "ceo@bank.test").await;
    let dkim = resinfo(&c.header, "dkim");
    assert!(
        dkim[0].starts_with("dkim=fail reason=\"body hash did not verify\" header.d=bank.test"),
        "{}",
        c.header
    );
    assert!(
        resinfo(&c.header, "spf")[0].starts_with("spf=fail"),
        "{}",
        c.header
    );
    assert!(resinfo(&c.header, "dmarc")[0].starts_with("dmarc=fail (p=reject dis=reject)"));
    assert!(matches!(&c.action, Action::Reject(t) if t.contains("bank.test")));
    assert_eq!(c.facts.action, "reject");
}

#[tokio::test]
async fn quarantine_and_per_domain_overrides() {
    let mut f = Fixture::new();
    f.domain(
        "q.test",
        "ed25519",
        "198.51.100.1",
        "v=DMARC1; p=quarantine",
    )
    .await;
    f.domain("r.test", "ed25519", "198.51.100.1", "v=DMARC1; p=reject")
        .await;
    f.domain("m.test", "ed25519", "198.51.100.1", "v=DMARC1; p=reject")
        .await;
    f.config.sender_auth.domains.insert(
        "r.test".into(),
        SenderAuthDomain {
            dmarc: Some(DmarcMode::Quarantine),
            ..Default::default()
        },
    );
    f.config.sender_auth.domains.insert(
        "m.test".into(),
        SenderAuthDomain {
            dmarc: Some(DmarcMode::Monitor),
            ..Default::default()
        },
    );
    let auth = f.checker();
    // Unsigned, from an address SPF does not allow: DMARC fails for all three.
    let unsigned =
        |from: &str| format!("From: <{from}>\r\nSubject: x\r\n\r\nbody\r\n").into_bytes();
    let c = check(&auth, &unsigned("a@q.test"), "a@q.test").await;
    assert!(matches!(c.action, Action::Quarantine(_)), "{:?}", c.action);
    assert!(c.header.contains("dkim=none"), "{}", c.header);
    let c = check(&auth, &unsigned("a@r.test"), "a@r.test").await;
    assert!(matches!(c.action, Action::Quarantine(_)), "{:?}", c.action);
    let c = check(&auth, &unsigned("a@m.test"), "a@m.test").await;
    assert_eq!(c.action, Action::Accept);
    assert!(
        c.header.contains("dmarc=fail (p=reject dis=none)"),
        "{}",
        c.header
    );
}

#[test]
fn pct_sampling_rule() {
    use mail_auth::dmarc::Policy::{None as PNone, Quarantine, Reject};
    assert_eq!(pct_tag("v=DMARC1; p=reject; pct=25"), 25);
    assert_eq!(pct_tag("v=DMARC1; PCT = 0 ;p=reject"), 0);
    assert_eq!(pct_tag("v=DMARC1; p=reject"), 100);
    assert_eq!(pct_tag("v=DMARC1; p=reject; pct=101"), 100);
    assert_eq!(pct_tag("v=DMARC1; p=reject; pct=x"), 100);
    // pct=100 (or absent): always the policy.
    for roll in 0..100 {
        assert_eq!(sample_policy(Reject, 100, roll), (Reject, false));
    }
    // pct=0: never the policy; one step less strict.
    for roll in 0..100 {
        assert_eq!(sample_policy(Reject, 0, roll), (Quarantine, true));
        assert_eq!(sample_policy(Quarantine, 0, roll), (PNone, true));
    }
    // pct=30: rolls 0..30 get the policy, 30 of the 100 possible rolls.
    let applied = (0..100)
        .filter(|r| sample_policy(Reject, 30, *r) == (Reject, false))
        .count();
    assert_eq!(applied, 30);
    assert_eq!(sample_policy(Reject, 30, 29), (Reject, false));
    assert_eq!(sample_policy(Reject, 30, 30), (Quarantine, true));
    assert_eq!(sample_policy(PNone, 0, 50), (PNone, false));
}

#[tokio::test]
async fn pct_sampling_with_an_injected_roll() {
    let f = Fixture::new();
    f.domain(
        "half.test",
        "ed25519",
        "198.51.100.1",
        "v=DMARC1; p=reject; pct=50",
    )
    .await;
    // Subdomain mail under an organizational record: the record that applied is found.
    f.domain(
        "org.test",
        "ed25519",
        "198.51.100.1",
        "v=DMARC1; p=none; sp=quarantine; pct=10",
    )
    .await;
    f.dns.a("sub.org.test", "198.51.100.1");
    let unsigned =
        |from: &str| format!("From: <{from}>\r\nSubject: x\r\n\r\nbody\r\n").into_bytes();
    let roll = Arc::new(std::sync::atomic::AtomicU8::new(0));
    let r = roll.clone();
    let auth = f
        .checker()
        .with_pct_roll(move || r.load(std::sync::atomic::Ordering::SeqCst));
    let set = |v: u8| roll.store(v, std::sync::atomic::Ordering::SeqCst);

    set(49);
    let c = check(&auth, &unsigned("a@half.test"), "a@half.test").await;
    assert!(matches!(c.action, Action::Reject(_)), "{:?}", c.action);
    assert!(
        c.header.contains("dmarc=fail (p=reject dis=reject pct=50)"),
        "{}",
        c.header
    );
    set(50);
    let c = check(&auth, &unsigned("a@half.test"), "a@half.test").await;
    assert!(matches!(c.action, Action::Quarantine(_)), "{:?}", c.action);
    assert!(
        c.header
            .contains("dmarc=fail (p=reject dis=quarantine pct=50 sampled-out)"),
        "{}",
        c.header
    );
    assert_eq!(c.facts.action, "quarantine");
    assert_eq!(c.facts.dmarc_policy, "reject");

    set(9);
    let c = check(&auth, &unsigned("a@sub.org.test"), "a@sub.org.test").await;
    assert!(matches!(c.action, Action::Quarantine(_)), "{:?}", c.action);
    set(10);
    let c = check(&auth, &unsigned("a@sub.org.test"), "a@sub.org.test").await;
    assert_eq!(c.action, Action::Accept);
    assert!(
        c.header
            .contains("dmarc=fail (p=quarantine dis=none pct=10 sampled-out)"),
        "{}",
        c.header
    );
    // Passing mail is not sampled at all.
    let c = check(&auth, &f.signed("a@half.test", "ok").await, "a@half.test").await;
    assert_eq!(c.action, Action::Accept);
    assert!(!c.header.contains("pct="), "{}", c.header);
}

#[tokio::test]
async fn spf_void_lookup_limit() {
    let f = Fixture::new();
    f.dns.txt(
        "v3.test",
        &format!("v=spf1 a:nx1.v.test mx:nx2.v.test exists:nx3.v.test ip4:{SENDER_IP} -all"),
    );
    f.dns.txt(
        "v2.test",
        &format!("v=spf1 a:nx1.v.test exists:nx3.v.test exists:yes.test ip4:{SENDER_IP} -all"),
    );
    f.dns.a("yes.test", "203.0.113.1");
    // An MX whose host has no address is not a void lookup of its own.
    f.dns.txt(
        "mx.test",
        &format!("v=spf1 mx:mx.test a:nx1.v.test a:nx2.v.test ip4:{SENDER_IP} -all"),
    );
    f.dns.mx("mx.test", "nohost.mx.test.");
    let auth = f.checker();
    // Twice each: with cold and with warm caches.
    for _ in 0..2 {
        let spf = auth.check_spf(ip(), "helo.test", "a@v3.test").await;
        assert_eq!(spf.effective().result(), SpfResult::PermError);
        assert!(
            spf.effective()
                .explanation()
                .is_some_and(|e| e.starts_with("3 void DNS lookups")),
            "{:?}",
            spf.effective()
        );
        let spf = auth.check_spf(ip(), "helo.test", "a@v2.test").await;
        assert_eq!(spf.effective().result(), SpfResult::Pass);
        let spf = auth.check_spf(ip(), "helo.test", "a@mx.test").await;
        assert_eq!(spf.effective().result(), SpfResult::Pass);
    }
}

#[tokio::test]
async fn spf_hard_fail_refusal_follows_config() {
    let mut f = Fixture::new();
    f.domain("s.test", "ed25519", "198.51.100.1", "").await;
    f.domain("ok.test", "ed25519", SENDER_IP, "").await;
    f.config.sender_auth.spf_reject_fail = true;
    f.config.sender_auth.domains.insert(
        "s.test".into(),
        SenderAuthDomain {
            spf_reject_fail: Some(false),
            ..Default::default()
        },
    );
    f.dns.txt("strict.test", "v=spf1 -all");
    let auth = f.checker();
    let spf = auth.check_spf(ip(), "mail.example", "x@strict.test").await;
    assert_eq!(spf.effective().result(), SpfResult::Fail);
    assert!(auth.spf_refusal(&spf).is_some());
    // The override for s.test turns rejection off.
    let spf = auth.check_spf(ip(), "mail.example", "x@s.test").await;
    assert_eq!(spf.effective().result(), SpfResult::Fail);
    assert!(auth.spf_refusal(&spf).is_none());
    let spf = auth.check_spf(ip(), "mail.example", "x@ok.test").await;
    assert_eq!(SenderAuth::spf_facts(&spf).spf, "pass");
    assert!(auth.spf_refusal(&spf).is_none());
}

#[tokio::test]
async fn psl_guard_refuses_alignment_across_a_public_suffix() {
    // A DMARC record at co.uk without psd=y makes the tree walk treat co.uk as the
    // organizational domain of every name under it; the embedded list refuses that.
    let f = Fixture::new();
    f.dns.txt("_dmarc.co.uk", "v=DMARC1; p=none");
    f.dns.txt("_dmarc.victim.co.uk", "v=DMARC1; p=reject");
    f.domain("evil.co.uk", "ed25519", SENDER_IP, "").await;
    let auth = f.checker();
    // SPF passes for evil.co.uk, From is victim.co.uk.
    let raw = b"From: <boss@victim.co.uk>\r\nSubject: x\r\n\r\nbody\r\n";
    let c = check(&auth, raw, "a@evil.co.uk").await;
    assert_eq!(c.facts.spf, "pass");
    assert_eq!(c.facts.dmarc, "fail", "{}", c.header);
    assert!(matches!(c.action, Action::Reject(_)));
}

#[tokio::test]
async fn arc_seal_then_validate_and_trust() {
    let mut f = Fixture::new();
    f.domain("orig.test", "ed25519", SENDER_IP, "v=DMARC1; p=reject")
        .await;
    f.domain("fwd.test", "rsa", "203.0.113.1", "").await;
    let auth = f.checker();
    // At the forwarder: the original passes.
    let raw = b"From: <a@orig.test>\r\nTo: <list@fwd.test>\r\nSubject: s\r\n\r\nbody\r\n".to_vec();
    let c = check(&auth, &raw, "a@orig.test").await;
    assert_eq!(c.facts.dmarc, "pass");
    let mut forwarded = c.header.clone().into_bytes();
    forwarded.extend_from_slice(&raw);
    let set = auth
        .arc_seal(&forwarded, &c, &f.store, "fwd.test")
        .await
        .expect("sealed");
    assert!(
        set.starts_with("ARC-Seal: i=1; a=rsa-sha256; s=sel; d=fwd.test; cv=none;"),
        "{set}"
    );
    assert!(set.contains("ARC-Message-Signature: i=1;"));
    assert!(set.contains("ARC-Authentication-Results: i=1; mx.rcpt.test;"));
    let mut sealed = set.into_bytes();
    sealed.extend_from_slice(&forwarded);

    // At the next hop (another IP: SPF fails, so DMARC fails), untrusted then trusted.
    f.config.hostname = "mx.next.test".into();
    let next = f.checker();
    let env = Envelope {
        ip: "203.0.113.1".parse().unwrap(),
        helo: "mx.fwd.test",
        mail_from: "a@orig.test",
        spf: None,
    };
    let c2 = next.check_message(&sealed, &env).await;
    assert_eq!(c2.facts.arc, "pass", "{}", c2.header);
    assert_eq!(c2.facts.arc_sealer, "fwd.test");
    assert_eq!(c2.facts.dmarc, "fail");
    assert!(matches!(c2.action, Action::Reject(_)));
    f.config.sender_auth.trusted_arc_sealers = vec!["fwd.test".into()];
    let trusting = f.checker();
    let c3 = trusting.check_message(&sealed, &env).await;
    assert_eq!(c3.action, Action::Accept);
    assert!(
        c3.header.contains("override=trusted ARC sealer fwd.test"),
        "{}",
        c3.header
    );
    // A second seal continues the chain with cv=pass.
    let mut again = c3.header.clone().into_bytes();
    again.extend_from_slice(&sealed);
    let set2 = trusting
        .arc_seal(&again, &c3, &f.store, "fwd.test")
        .await
        .expect("sealed again");
    assert!(
        set2.starts_with("ARC-Seal: i=2;") && set2.contains("cv=pass"),
        "{set2}"
    );
    // Tampering after the seal breaks the chain.
    let mut broken = sealed.clone();
    let at = broken.len() - 3;
    broken[at] = b'Z';
    let c4 = trusting.check_message(&broken, &env).await;
    assert_eq!(c4.facts.arc, "fail", "{}", c4.header);
    assert!(matches!(c4.action, Action::Reject(_)));
}

#[tokio::test]
async fn records_are_cached_within_ttl() {
    let f = Fixture::new();
    f.domain("c.test", "ed25519", SENDER_IP, "v=DMARC1; p=reject")
        .await;
    let auth = f.checker();
    let raw = f.signed("a@c.test", "cache").await;
    let spf = auth.check_spf(ip(), "mail.example", "a@c.test").await;
    let env = Envelope {
        ip: ip(),
        helo: "mail.example",
        mail_from: "a@c.test",
        spf: Some(&spf),
    };
    auth.check_message(&raw, &env).await;
    let cold = f.dns.queries();
    assert!(cold > 0);
    assert!(!auth.caches().txt.is_empty());
    let spf = auth.check_spf(ip(), "mail.example", "a@c.test").await;
    let env = Envelope {
        spf: Some(&spf),
        ..env
    };
    let c = auth.check_message(&raw, &env).await;
    assert_eq!(c.facts.dkim, "pass");
    // Everything came from the caches (the resolver's own cache keeps the negative answers).
    assert_eq!(f.dns.queries(), cold, "warm checks queried the DNS again");
}

#[tokio::test]
async fn negative_txt_answers_are_kept() {
    let f = Fixture::new();
    // A domain with an address but neither SPF nor DMARC records (NOERROR without TXT), and
    // one that does not exist at all (NXDOMAIN).
    f.dns.a("plain.test", "203.0.113.9");
    let auth = f.checker();
    for from in ["a@plain.test", "a@nowhere.test"] {
        let domain = from.split('@').nth(1).unwrap();
        let raw = format!("From: {from}\r\nSubject: x\r\n\r\nhello\r\n").into_bytes();
        let mut facts = Vec::new();
        for round in 0..2 {
            let c = check(&auth, &raw, from).await;
            facts.push((c.facts.spf.clone(), c.facts.dmarc.clone(), c.header.clone()));
            // Both names are kept as "not found", and read back as the same result.
            for name in [format!("{domain}."), format!("_dmarc.{domain}.")] {
                let kept = auth.caches().txt.get(name.as_str());
                assert!(
                    kept.as_ref().is_some_and(cache::Targets::negative),
                    "round {round}: {name} not kept as not found (kept: {})",
                    kept.is_some()
                );
            }
        }
        assert_eq!(facts[0].0, "none", "{from}");
        assert_eq!(facts[0].1, "none", "{from}");
        assert_eq!(
            facts[0], facts[1],
            "{from}: a kept negative answer evaluates differently"
        );
    }
}

/// On-CPU time of this thread (Linux), so the figure does not depend on how busy the
/// machine is; wall time is printed too.
fn thread_cpu() -> std::time::Duration {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns = s
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    std::time::Duration::from_nanos(ns)
}

/// Cost of the checks per message with a warm DNS cache. Not a test:
/// `cargo test -p corvus --lib bench_check_message_warm_cache -- --ignored --nocapture`
/// (a current-thread runtime: with the cache warm nothing leaves this thread).
#[tokio::test(flavor = "current_thread")]
#[ignore]
async fn bench_check_message_warm_cache() {
    let f = Fixture::new();
    f.domain("ed.test", "ed25519", SENDER_IP, "v=DMARC1; p=reject")
        .await;
    f.domain("rsa.test", "rsa", SENDER_IP, "v=DMARC1; p=reject")
        .await;
    f.domain("fwd.test", "rsa", "203.0.113.1", "").await;
    let auth = f.checker();
    let ed = f.signed("a@ed.test", "bench").await;
    let rsa = f.signed("a@rsa.test", "bench").await;
    // An RSA-signed message with one ARC set on top.
    let c = check(&auth, &rsa, "a@rsa.test").await;
    let mut fwd = c.header.clone().into_bytes();
    fwd.extend_from_slice(&rsa);
    let set = auth.arc_seal(&fwd, &c, &f.store, "fwd.test").await.unwrap();
    let mut arc = set.into_bytes();
    arc.extend_from_slice(&fwd);
    let unsigned = b"From: <a@ed.test>\r\nSubject: x\r\n\r\nbody\r\n".to_vec();
    let n: u32 = 500;
    for (name, raw, from) in [
        ("unsigned (SPF + DMARC only)", unsigned, "a@ed.test"),
        ("ed25519 DKIM", ed, "a@ed.test"),
        ("RSA-2048 DKIM", rsa, "a@rsa.test"),
        ("RSA-2048 DKIM + 1 ARC set", arc, "a@rsa.test"),
    ] {
        // Warm up.
        for _ in 0..5 {
            check(&auth, &raw, from).await;
        }
        let q = f.dns.queries();
        let (wall, cpu) = (Instant::now(), thread_cpu());
        for _ in 0..n {
            let c = check(&auth, &raw, from).await;
            assert_eq!(c.action, Action::Accept);
        }
        let (wall, cpu) = (wall.elapsed() / n, (thread_cpu() - cpu) / n);
        println!(
            "BENCH {name:<28} {:>8.1} µs CPU/message {:>8.1} µs wall  ({} DNS queries in {n} messages)",
            cpu.as_secs_f64() * 1e6,
            wall.as_secs_f64() * 1e6,
            f.dns.queries() - q
        );
    }
}

#[test]
fn helo_address_literals_and_bare_words_get_no_spf_check() {
    // RFC 7208 §2.3: only a fully qualified domain name is checked.
    for h in [
        "[127.0.0.1]",
        "[IPv6:::1]",
        "127.0.0.1",
        "localhost",
        "x(y)",
        "",
    ] {
        assert!(!super::spf::helo_is_a_domain(h), "{h}");
    }
    for h in ["mx.example.org", "mail.example.org.", "a-b_c.test"] {
        assert!(super::spf::helo_is_a_domain(h), "{h}");
    }
}
