//! The rspamd engine against a canned worker: what goes out (the protocol headers, the
//! message), what comes back applied; and the cost of the exchange (an ignored bench).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use super::RspamdHook;
use crate::config::HookEntry;
use crate::hooks::{Actions, HookCtx, HookEngine, HookPoint, Verdict};

/// A clean message's reply from rspamd 3.4 (tests/e2e/support/filters.py's offline rspamd).
const CLEAN: &str = include_str!("fixtures/checkv2_clean.json");

/// A worker on its own thread answering every request with `reply` and `Connection: close`,
/// as rspamd 3.4 does; the requests' heads are kept.
fn canned_worker(reply: &'static str) -> (String, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keep = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let mut r = BufReader::new(s);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let len: usize = head
                .to_ascii_lowercase()
                .lines()
                .find_map(|l| l.strip_prefix("content-length: ").map(str::to_string))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            {
                let mut seen = keep.lock().unwrap();
                if seen.len() < 8 {
                    seen.push(head);
                }
            }
            let mut s = r.into_inner();
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nConnection: close\r\nServer: rspamd/3.4\r\nContent-Length: {}\r\nContent-Type: application/json\r\n\r\n{reply}",
                reply.len()
            );
        }
    });
    (url, seen)
}

fn hook(url: &str) -> RspamdHook {
    let entry: HookEntry = serde_json::from_value(serde_json::json!({
        "rspamd": url,
        "config": {"junk_score": 6.0, "learn": false},
    }))
    .unwrap();
    RspamdHook::load(&entry, url, Arc::new(crate::store::MemoryStore::new())).unwrap()
}

fn data_ctx(message: Vec<u8>) -> HookCtx {
    let mut c = HookCtx::new(
        HookPoint::Data,
        crate::listener::Listener::Smtp,
        "192.0.2.1".parse().unwrap(),
    );
    c.helo = "client.example".into();
    c.client_ptr = "client.example".into();
    c.mail_from = "ann@remote.example".into();
    c.rcpts = vec!["alice@example.org".into()];
    c.queue_id = "0123456789ABCDEF".into();
    c.message = Some(Arc::new(message));
    c
}

fn message(body_lines: usize) -> Vec<u8> {
    let mut m = b"From: Ann <ann@remote.example>\r\nTo: alice@example.org\r\nSubject: Quarterly figures\r\nX-Spam-Status: Yes, forged\r\n\r\n".to_vec();
    for _ in 0..body_lines {
        m.extend_from_slice(b"Hello Alice, the figures are attached below as promised.\r\n");
    }
    m
}

#[tokio::test]
async fn a_scan_sends_the_envelope_and_applies_the_answer() {
    let (url, seen) = canned_worker(CLEAN);
    let h = hook(&url);
    let ctx = data_ctx(message(3));
    let mut a = Actions::default();
    let v = h.call_async(&ctx, None, &mut a).await.unwrap();
    assert_eq!(v, Verdict::Continue);
    // Header names go out in lower case (rspamd reads them without case).
    let head = seen.lock().unwrap()[0].to_ascii_lowercase();
    for line in [
        "POST /checkv2 HTTP/1.1\r\n",
        "IP: 192.0.2.1\r\n",
        "Helo: client.example\r\n",
        "Hostname: client.example\r\n",
        "From: ann@remote.example\r\n",
        "Rcpt: alice@example.org\r\n",
        "Deliver-To: alice@example.org\r\n",
        "Queue-ID: 0123456789ABCDEF\r\n",
    ] {
        assert!(
            head.contains(&line.to_ascii_lowercase()),
            "{line:?} missing in {head}"
        );
    }
    let spam = a.spam.as_ref().unwrap();
    assert_eq!((spam.score, spam.action.as_str()), (0.1, "no action"));
    let out = String::from_utf8(crate::hooks::edits::apply(
        ctx.message.as_ref().unwrap(),
        &a.edits,
    ))
    .unwrap();
    assert!(!out.contains("forged"), "{out}");
    assert!(out.contains("X-Spam-Status: No, score=0.10 required=15.00 tests="));
    assert!(out.contains("X-Spam-Score: 0.10\r\n"));
    // Another listener's mail is not scanned.
    let mut sub = ctx.clone();
    sub.listener = crate::listener::Listener::Submission;
    let mut a = Actions::default();
    assert_eq!(
        h.call_async(&sub, None, &mut a).await.unwrap(),
        Verdict::Continue
    );
    assert!(a.spam.is_none());
}

#[tokio::test]
async fn a_worker_that_answers_an_error_or_nothing_fails_the_call() {
    let (url, _) = canned_worker(r#"{"error":"bad request"}"#);
    let mut a = Actions::default();
    let e = hook(&url)
        .call_async(&data_ctx(message(1)), None, &mut a)
        .await
        .unwrap_err();
    assert!(e.0.ends_with("rspamd: bad request"), "{e}");
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let e = hook(&url)
        .call_async(&data_ctx(message(1)), None, &mut a)
        .await
        .unwrap_err();
    assert!(e.0.starts_with(&format!("rspamd {url}: ")), "{e}");
}

fn thread_cpu() -> std::time::Duration {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns = s
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    std::time::Duration::from_nanos(ns)
}

/// Corvus's own CPU per scanned message: the request, the reply parsed, the verdict and the
/// header edits applied to a 5 KB message, against a worker on another thread that answers
/// at once with rspamd 3.4's reply (one connection per request, as rspamd closes it). Not a
/// test: `cargo test --release -p corvus --lib bench_rspamd_exchange -- --ignored --nocapture`
/// (a current-thread runtime: the client's work is this thread's CPU).
#[tokio::test(flavor = "current_thread")]
#[ignore]
async fn bench_rspamd_exchange() {
    let (url, _) = canned_worker(CLEAN);
    let h = hook(&url);
    let ctx = data_ctx(message(85));
    let n = 3000u32;
    for _ in 0..50 {
        let mut a = Actions::default();
        h.call_async(&ctx, None, &mut a).await.unwrap();
    }
    let (wall, cpu) = (std::time::Instant::now(), thread_cpu());
    for _ in 0..n {
        let mut a = Actions::default();
        h.call_async(&ctx, None, &mut a).await.unwrap();
        let out = crate::hooks::edits::apply(ctx.message.as_ref().unwrap(), &a.edits);
        assert!(out.len() > 5000);
    }
    let (wall, cpu) = (wall.elapsed() / n, (thread_cpu() - cpu) / n);
    println!(
        "BENCH rspamd exchange, {} byte message: {:.1} µs CPU/message, {:.1} µs wall",
        ctx.message.as_ref().unwrap().len(),
        cpu.as_secs_f64() * 1e6,
        wall.as_secs_f64() * 1e6
    );
}
