//! The milter engine against a scripted milter on a thread of its own: the order of events
//! in a session (abort between transactions, catching up when an entry joins late), what
//! a refusal at RCPT covers, modifications at the end of message; and the cost of the
//! exchange (an ignored bench).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use super::MilterHook;
use crate::config::HookEntry;
use crate::hooks::edits::HeaderEdit;
use crate::hooks::{Actions, HookCtx, HookEngine, HookPoint, HookSession, Verdict};

/// What the scripted milter answers to one event (command byte and data); the default is
/// CONTINUE for every event that expects a reply.
type Script = fn(u8, &[u8]) -> Vec<Vec<u8>>;

fn packet(code: u8, data: &[u8]) -> Vec<u8> {
    let mut p = ((data.len() + 1) as u32).to_be_bytes().to_vec();
    p.push(code);
    p.extend_from_slice(data);
    p
}

fn continue_all(cmd: u8, _data: &[u8]) -> Vec<Vec<u8>> {
    match cmd {
        b'D' | b'A' | b'Q' => vec![],
        _ => vec![packet(b'c', b"")],
    }
}

/// A milter listening on a free port: every connection's events (command letters, `R`
/// with its recipient) are logged, one string per connection.
fn milter(script: Script) -> (String, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let log = Arc::new(Mutex::new(Vec::new()));
    let keep = log.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let log = keep.clone();
            std::thread::spawn(move || serve(s, script, log));
        }
    });
    (addr, log)
}

fn serve(mut s: TcpStream, script: Script, log: Arc<Mutex<Vec<String>>>) {
    let i = {
        let mut l = log.lock().unwrap();
        l.push(String::new());
        l.len() - 1
    };
    loop {
        let mut len = [0u8; 4];
        if s.read_exact(&mut len).is_err() {
            return;
        }
        let mut p = vec![0; u32::from_be_bytes(len) as usize];
        if s.read_exact(&mut p).is_err() {
            return;
        }
        let (cmd, data) = (p[0], &p[1..]);
        if cmd != b'D' {
            let mut l = log.lock().unwrap();
            l[i].push(cmd as char);
            if cmd == b'R' {
                let rcpt = data.split(|&b| b == 0).next().unwrap_or_default();
                l[i].push_str(&String::from_utf8_lossy(rcpt));
                l[i].push(' ');
            }
        }
        let replies = if cmd == b'O' {
            // Version 6, every action, every event with a reply.
            let mut d = 6u32.to_be_bytes().to_vec();
            d.extend_from_slice(&0x1FFu32.to_be_bytes());
            d.extend_from_slice(&0u32.to_be_bytes());
            vec![packet(b'O', &d)]
        } else {
            script(cmd, data)
        };
        for r in replies {
            if s.write_all(&r).is_err() {
                return;
            }
        }
        if cmd == b'Q' {
            return;
        }
    }
}

fn hook(addr: &str) -> MilterHook {
    let entry: HookEntry = serde_json::from_value(serde_json::json!({
        "milter": addr,
        "config": {"command_timeout": "5s", "content_timeout": "5s"},
    }))
    .unwrap();
    MilterHook::load(&entry, addr, "mx.example.org").unwrap()
}

fn ctx(point: HookPoint) -> HookCtx {
    let mut c = HookCtx::new(
        point,
        crate::listener::Listener::Smtp,
        "192.0.2.1".parse().unwrap(),
    );
    c.helo = "client.example".into();
    c.mail_from = "ann@remote.example".into();
    c
}

fn message() -> Arc<Vec<u8>> {
    Arc::new(b"From: ann@remote.example\r\nSubject: hi\r\n\r\nbody\r\n".to_vec())
}

async fn at(h: &MilterHook, s: Option<&HookSession>, c: &HookCtx) -> (Verdict, Actions) {
    let mut a = Actions::default();
    let v = h.call_async(c, s, &mut a).await.unwrap();
    (v, a)
}

/// One transaction through every point of a session.
async fn transaction(h: &MilterHook, s: &HookSession, rcpts: &[&str]) -> (Verdict, Actions) {
    at(h, Some(s), &ctx(HookPoint::Mail)).await;
    let mut c = ctx(HookPoint::Rcpt);
    for r in rcpts {
        c.rcpt = r.to_string();
        at(h, Some(s), &c).await;
    }
    let mut c = ctx(HookPoint::Data);
    c.rcpts = rcpts.iter().map(|r| r.to_string()).collect();
    c.message = Some(message());
    at(h, Some(s), &c).await
}

#[tokio::test]
async fn a_session_is_one_connection_with_each_event_once_and_an_abort_between_transactions() {
    let (addr, log) = milter(continue_all);
    let h = hook(&addr);
    let s = HookSession::default();
    at(&h, Some(&s), &ctx(HookPoint::Connect)).await;
    at(&h, Some(&s), &ctx(HookPoint::Helo)).await;
    let (v, _) = transaction(&h, &s, &["a@example.org", "b@example.org"]).await;
    assert_eq!(v, Verdict::Continue);
    // A MAIL that was refused later (no DATA), then a new transaction.
    at(&h, Some(&s), &ctx(HookPoint::Mail)).await;
    transaction(&h, &s, &["c@example.org"]).await;
    drop(s);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(
        log.lock().unwrap().as_slice(),
        ["OCHMR<a@example.org> R<b@example.org> TLLNBEMAMR<c@example.org> TLLNBEQ"]
    );
}

#[tokio::test]
async fn an_entry_that_joins_at_data_catches_up_on_a_connection_of_its_own() {
    let (addr, log) = milter(continue_all);
    let h = hook(&addr);
    let mut c = ctx(HookPoint::Data);
    c.rcpts = vec!["a@example.org".into(), "b@example.org".into()];
    c.message = Some(message());
    assert_eq!(at(&h, None, &c).await.0, Verdict::Continue);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(
        log.lock().unwrap().as_slice(),
        ["OCHMR<a@example.org> R<b@example.org> TLLNBEQ"]
    );
}

fn refuse_b_then_edit(cmd: u8, data: &[u8]) -> Vec<Vec<u8>> {
    match cmd {
        b'R' if data.starts_with(b"<b@") => {
            vec![packet(b'y', b"550 5.7.1 not %%b%%\0")]
        }
        b'E' => vec![
            packet(b'i', b"\0\0\0\0X-Top\0first\0"),
            packet(b'm', b"\0\0\0\x01Subject\0[tag] hi\0"),
            packet(b'+', b"<carol@example.org>\0"),
            packet(b'-', b"<a@example.org>\0"),
            packet(b'e', b"<changed@example.org>\0"),
            packet(b'b', b"new body\n"),
            packet(b'p', b""),
            packet(b'q', b"looks odd\0"),
            packet(b'c', b""),
        ],
        _ => continue_all(cmd, data),
    }
}

#[tokio::test]
async fn a_refusal_at_rcpt_covers_that_recipient_and_modifications_come_at_the_end() {
    let (addr, _) = milter(refuse_b_then_edit);
    let h = hook(&addr);
    let s = HookSession::default();
    at(&h, Some(&s), &ctx(HookPoint::Mail)).await;
    let mut c = ctx(HookPoint::Rcpt);
    c.rcpt = "a@example.org".into();
    assert_eq!(at(&h, Some(&s), &c).await.0, Verdict::Continue);
    c.rcpt = "b@example.org".into();
    assert_eq!(
        at(&h, Some(&s), &c).await.0,
        Verdict::reject(550, "5.7.1 not %b%").unwrap()
    );
    let mut c = ctx(HookPoint::Data);
    c.rcpts = vec!["a@example.org".into()];
    c.message = Some(message());
    let (v, a) = at(&h, Some(&s), &c).await;
    assert!(matches!(v, Verdict::Quarantine(r) if r.ends_with(": looks odd")));
    let e = &a.edits;
    assert_eq!(e.add_rcpts, ["carol@example.org"]);
    assert_eq!(e.del_rcpts, ["a@example.org"]);
    assert_eq!(e.mail_from.as_deref(), Some("changed@example.org"));
    assert_eq!(e.body.as_deref(), Some(&b"new body\n"[..]));
    assert_eq!(
        e.headers[0],
        HeaderEdit::Insert {
            index: 0,
            name: "X-Top".into(),
            value: "first".into()
        }
    );
    let out = crate::hooks::edits::apply(&message(), e);
    assert_eq!(
        out,
        b"X-Top: first\r\nFrom: ann@remote.example\r\nSubject: [tag] hi\r\n\r\nnew body\r\n"
    );
}

fn accept_at_connect(cmd: u8, data: &[u8]) -> Vec<Vec<u8>> {
    match cmd {
        b'C' => vec![packet(b'a', b"")],
        _ => continue_all(cmd, data),
    }
}

#[tokio::test]
async fn an_accept_at_connect_leaves_the_session_alone_and_a_dead_milter_fails_every_stage() {
    let (addr, log) = milter(accept_at_connect);
    let h = hook(&addr);
    let s = HookSession::default();
    at(&h, Some(&s), &ctx(HookPoint::Connect)).await;
    let (v, _) = transaction(&h, &s, &["a@example.org"]).await;
    assert_eq!(v, Verdict::Continue);
    assert_eq!(log.lock().unwrap().as_slice(), ["OC"]);
    // Nobody listening: each stage of the session fails (its on_error applies each time).
    let gone = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = gone.local_addr().unwrap().to_string();
    drop(gone);
    let h = hook(&addr);
    let s = HookSession::default();
    let mut a = Actions::default();
    let e = h
        .call_async(&ctx(HookPoint::Connect), Some(&s), &mut a)
        .await
        .unwrap_err();
    assert!(e.0.contains("connecting:"), "{e}");
    let e = h
        .call_async(&ctx(HookPoint::Mail), Some(&s), &mut a)
        .await
        .unwrap_err();
    assert!(e.0.contains("failed earlier in this session"), "{e}");
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

fn edit_at_eom(cmd: u8, data: &[u8]) -> Vec<Vec<u8>> {
    match cmd {
        b'E' => vec![packet(b'h', b"X-Milter\0seen\0"), packet(b'c', b"")],
        _ => continue_all(cmd, data),
    }
}

/// Corvus's own CPU per message for a milter that wants every event with a reply (the usual
/// libmilter filter) and adds a header: MAIL, RCPT, DATA, 6 headers, end of header, one body
/// chunk, end of message = 12 round trips, the edits applied to a 5 KB message; on one
/// session's connection, against a milter on another thread that answers at once. Not a
/// test: `cargo test --release -p corvus --lib bench_milter_exchange -- --ignored
/// --nocapture`.
#[tokio::test(flavor = "current_thread")]
#[ignore]
async fn bench_milter_exchange() {
    let (addr, log) = milter(edit_at_eom);
    let h = hook(&addr);
    let s = HookSession::default();
    at(&h, Some(&s), &ctx(HookPoint::Connect)).await;
    at(&h, Some(&s), &ctx(HookPoint::Helo)).await;
    let mut body = b"From: ann@remote.example\r\nTo: alice@example.org\r\nSubject: Quarterly figures\r\nDate: Mon, 07 Dec 2026 02:00:00 +0000\r\nMessage-ID: <1@remote.example>\r\nMIME-Version: 1.0\r\n\r\n".to_vec();
    for _ in 0..85 {
        body.extend_from_slice(b"Hello Alice, the figures are attached below as promised.\r\n");
    }
    let body = Arc::new(body);
    let n = 3000u32;
    async fn run(h: &MilterHook, s: &HookSession, body: &Arc<Vec<u8>>) -> Vec<u8> {
        at(h, Some(s), &ctx(HookPoint::Mail)).await;
        let mut c = ctx(HookPoint::Rcpt);
        c.rcpt = "alice@example.org".into();
        at(h, Some(s), &c).await;
        let mut c = ctx(HookPoint::Data);
        c.rcpts = vec!["alice@example.org".into()];
        c.message = Some(body.clone());
        let (_, a) = at(h, Some(s), &c).await;
        crate::hooks::edits::apply(body, &a.edits)
    }
    for _ in 0..50 {
        run(&h, &s, &body).await;
    }
    let letters = |l: &str| l.chars().filter(char::is_ascii_uppercase).count();
    let before = letters(&log.lock().unwrap()[0]);
    let (wall, cpu) = (std::time::Instant::now(), thread_cpu());
    for _ in 0..n {
        let out = run(&h, &s, &body).await;
        assert!(out.starts_with(b"From:"));
    }
    let (wall, cpu) = (wall.elapsed() / n, (thread_cpu() - cpu) / n);
    let events = letters(&log.lock().unwrap()[0]) - before;
    println!(
        "BENCH milter exchange, {} byte message: {:.1} µs CPU/message, {:.1} µs wall, {:.1} events per message",
        body.len(),
        cpu.as_secs_f64() * 1e6,
        wall.as_secs_f64() * 1e6,
        events as f64 / f64::from(n)
    );
}
