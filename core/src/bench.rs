//! `corvus bench`: a load generator for a running Corvus — mixed SMTP, IMAP and POP3 traffic
//! for a set time, reporting throughput, latency percentiles and errors (and the server's
//! memory when its PID is given). It only ever connects to the addresses it is told.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Plain SMTP listener to send to.
    pub smtp: Option<SocketAddr>,
    /// Plain IMAP listener (allow_plaintext_auth must be on).
    pub imap: Option<SocketAddr>,
    /// Plain POP3 listener (plaintext login allowed).
    pub pop3: Option<SocketAddr>,
    /// Account that receives the SMTP traffic and is read over IMAP/POP3.
    pub user: String,
    /// Its password.
    pub password: String,
    /// Concurrent clients per protocol.
    pub clients: usize,
    /// Run time.
    pub duration: Duration,
    /// Message size in bytes.
    pub size: usize,
    /// Server PID, to sample its resident memory.
    pub server_pid: Option<u32>,
    /// Steady state for long runs: every IMAP and POP3 client has its own account
    /// ([`account`]), SMTP sends to those accounts in turn, and each session deletes the
    /// messages it read, so mailboxes stay small instead of growing for the whole run.
    pub per_client_accounts: bool,
}

/// The `i`th derived account of `user`: `bench@example.org` → `bench3@example.org`.
pub fn account(user: &str, i: usize) -> String {
    match user.split_once('@') {
        Some((local, domain)) => format!("{local}{i}@{domain}"),
        None => format!("{user}{i}"),
    }
}

#[derive(Default)]
struct Stats {
    latencies: Mutex<Vec<Duration>>,
    errors: AtomicU64,
    last_error: Mutex<String>,
}

impl Stats {
    async fn ok(&self, d: Duration) {
        self.latencies.lock().await.push(d);
    }
    async fn err(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().await = e;
    }
}

type R<T> = Result<T, String>;

async fn connect(addr: SocketAddr) -> R<BufReader<TcpStream>> {
    let s = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    Ok(BufReader::new(s))
}

async fn line(s: &mut BufReader<TcpStream>) -> R<String> {
    let mut l = String::new();
    let n = tokio::time::timeout(Duration::from_secs(30), s.read_line(&mut l))
        .await
        .map_err(|_| "read timeout")?
        .map_err(|e| e.to_string())?;
    if n == 0 {
        return Err("connection closed".into());
    }
    Ok(l)
}

/// Read an SMTP reply; error unless its code starts with `want`.
async fn smtp_reply(s: &mut BufReader<TcpStream>, want: char) -> R<()> {
    loop {
        let l = line(s).await?;
        if l.as_bytes().get(3) != Some(&b'-') {
            return if l.starts_with(want) {
                Ok(())
            } else {
                Err(format!("SMTP: {}", l.trim_end()))
            };
        }
    }
}

async fn smtp_session(
    addr: SocketAddr,
    to: &(dyn Fn() -> String + Sync),
    body: &[u8],
    stats: &Stats,
    stop: &AtomicBool,
) -> R<()> {
    let mut s = connect(addr).await?;
    smtp_reply(&mut s, '2').await?;
    s.get_mut()
        .write_all(b"EHLO bench.test\r\n")
        .await
        .map_err(|e| e.to_string())?;
    smtp_reply(&mut s, '2').await?;
    // Stay under the server's default MAILMAX (100 per session): reconnect every 90.
    for _ in 0..90 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let t = Instant::now();
        let cmd = format!(
            "MAIL FROM:<bench@bench.test>\r\nRCPT TO:<{}>\r\nDATA\r\n",
            to()
        );
        s.get_mut()
            .write_all(cmd.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        smtp_reply(&mut s, '2').await?;
        smtp_reply(&mut s, '2').await?;
        smtp_reply(&mut s, '3').await?;
        s.get_mut()
            .write_all(body)
            .await
            .map_err(|e| e.to_string())?;
        smtp_reply(&mut s, '2').await?;
        stats.ok(t.elapsed()).await;
    }
    let _ = s.get_mut().write_all(b"QUIT\r\n").await;
    Ok(())
}

/// Read IMAP lines until the tagged reply; literals are skipped. Returns the last
/// `* n EXISTS` seen.
async fn imap_until(s: &mut BufReader<TcpStream>, tag: &str) -> R<Option<usize>> {
    let mut exists = None;
    loop {
        let l = line(s).await?;
        if let Some(n) = l
            .strip_prefix("* ")
            .and_then(|r| r.trim_end().strip_suffix(" EXISTS"))
            .and_then(|n| n.parse().ok())
        {
            exists = Some(n);
        }
        if let Some(n) = l
            .trim_end()
            .strip_suffix('}')
            .and_then(|x| x.rsplit_once('{'))
            .and_then(|(_, n)| n.parse::<usize>().ok())
        {
            let mut buf = vec![0u8; n];
            s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            continue;
        }
        if l.starts_with(&format!("{tag} ")) {
            return if l[tag.len() + 1..].starts_with("OK") {
                Ok(exists)
            } else {
                Err(format!("IMAP: {}", l.trim_end()))
            };
        }
    }
}

async fn imap_session(
    addr: SocketAddr,
    user: &str,
    pass: &str,
    delete: bool,
    stats: &Stats,
) -> R<()> {
    let t = Instant::now();
    let mut s = connect(addr).await?;
    line(&mut s).await?;
    let mut script = vec![
        format!("a LOGIN \"{user}\" \"{pass}\"\r\n"),
        "b SELECT INBOX\r\n".into(),
    ];
    let mut i = 0;
    while i < script.len() {
        let cmd = script[i].clone();
        s.get_mut()
            .write_all(cmd.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let seen = imap_until(&mut s, &cmd[..1]).await?;
        if cmd.starts_with("b ") {
            // What follows depends on the mailbox: no sequence set on an empty one.
            let exists = seen.unwrap_or(0);
            let k = exists.min(5);
            if exists > 0 {
                script.push("c FETCH 1:* (FLAGS)\r\n".into());
                script.push(format!("d FETCH 1:{k} (BODY.PEEK[])\r\n"));
            }
            script.push("e SEARCH SUBJECT bench\r\n".into());
            if delete && exists > 0 {
                script.push(format!("g STORE 1:{k} +FLAGS.SILENT (\\Deleted)\r\n"));
                script.push("h EXPUNGE\r\n".into());
            }
            script.push("f LOGOUT\r\n".into());
        }
        i += 1;
    }
    stats.ok(t.elapsed()).await;
    Ok(())
}

async fn pop3_ok(s: &mut BufReader<TcpStream>) -> R<String> {
    let l = line(s).await?;
    if l.starts_with("+OK") {
        Ok(l)
    } else {
        Err(format!("POP3: {}", l.trim_end()))
    }
}

async fn pop3_multiline(s: &mut BufReader<TcpStream>) -> R<()> {
    pop3_ok(s).await?;
    loop {
        if line(s).await? == ".\r\n" {
            return Ok(());
        }
    }
}

async fn pop3_session(
    addr: SocketAddr,
    user: &str,
    pass: &str,
    delete: bool,
    stats: &Stats,
) -> R<()> {
    let t = Instant::now();
    let mut s = connect(addr).await?;
    pop3_ok(&mut s).await?;
    let mut count = 0;
    for cmd in [
        format!("USER {user}\r\n"),
        format!("PASS {pass}\r\n"),
        "STAT\r\n".into(),
    ] {
        s.get_mut()
            .write_all(cmd.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let reply = pop3_ok(&mut s).await?;
        if cmd.starts_with("STAT") {
            count = reply
                .split_whitespace()
                .nth(1)
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(0);
        }
    }
    for i in 1..=count.min(3) {
        s.get_mut()
            .write_all(format!("TOP {i} 5\r\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        pop3_multiline(&mut s).await?;
        if delete {
            s.get_mut()
                .write_all(format!("DELE {i}\r\n").as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            pop3_ok(&mut s).await?;
        }
    }
    s.get_mut()
        .write_all(b"QUIT\r\n")
        .await
        .map_err(|e| e.to_string())?;
    pop3_ok(&mut s).await?;
    stats.ok(t.elapsed()).await;
    Ok(())
}

fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn percentile(v: &[Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Run the benchmark and print a report. Returns the total number of errors.
pub async fn run(o: BenchOptions) -> u64 {
    let stop = Arc::new(AtomicBool::new(false));
    let mut body = format!(
        "From: bench@bench.test\r\nTo: {}\r\nSubject: bench\r\n\r\n",
        o.user
    )
    .into_bytes();
    while body.len() < o.size {
        body.extend_from_slice(
            b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n",
        );
    }
    body.extend_from_slice(b".\r\n");
    let body = Arc::new(body);
    let kinds: Vec<(&str, Option<SocketAddr>)> =
        vec![("smtp", o.smtp), ("imap", o.imap), ("pop3", o.pop3)];
    let mut stats = Vec::new();
    let mut tasks = Vec::new();
    let next_rcpt = Arc::new(AtomicU64::new(0));
    for (name, addr) in kinds {
        let Some(addr) = addr else { continue };
        let st = Arc::new(Stats::default());
        stats.push((name, st.clone()));
        for c in 0..o.clients {
            let (st, stop, body, pass, next) = (
                st.clone(),
                stop.clone(),
                body.clone(),
                o.password.clone(),
                next_rcpt.clone(),
            );
            let (per_client, clients, base) = (o.per_client_accounts, o.clients, o.user.clone());
            // IMAP client c reads account c+1, POP3 client c account clients+c+1.
            let user = match (per_client, name) {
                (true, "imap") => account(&base, c + 1),
                (true, "pop3") => account(&base, clients + c + 1),
                _ => base.clone(),
            };
            tasks.push(tokio::spawn(async move {
                let to = move || {
                    if per_client {
                        let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                        account(&base, n % (2 * clients) + 1)
                    } else {
                        base.clone()
                    }
                };
                while !stop.load(Ordering::Relaxed) {
                    let r = match name {
                        "smtp" => smtp_session(addr, &to, &body, &st, &stop).await,
                        "imap" => imap_session(addr, &user, &pass, per_client, &st).await,
                        _ => pop3_session(addr, &user, &pass, per_client, &st).await,
                    };
                    if let Err(e) = r {
                        st.err(e).await;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }));
        }
    }
    let start = Instant::now();
    let mut rss = Vec::new();
    while start.elapsed() < o.duration {
        if let Some(pid) = o.server_pid
            && let Some(kb) = rss_kb(pid)
        {
            rss.push((start.elapsed().as_secs(), kb));
        }
        let step = Duration::from_secs(10)
            .min(o.duration.saturating_sub(start.elapsed()))
            .max(Duration::from_millis(10));
        eprintln!("bench: {:>4}s elapsed …", start.elapsed().as_secs());
        tokio::time::sleep(step).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{:<6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "proto", "ops", "ops/s", "p50 ms", "p99 ms", "max ms", "errors"
    );
    let mut total_errors = 0;
    for (name, st) in stats {
        let mut l = st.latencies.lock().await.clone();
        l.sort();
        let errors = st.errors.load(Ordering::Relaxed);
        total_errors += errors;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{name:<6} {:>9} {:>9.1} {:>9.2} {:>9.2} {:>9.2} {:>7}",
            l.len(),
            l.len() as f64 / secs,
            ms(percentile(&l, 0.5)),
            ms(percentile(&l, 0.99)),
            ms(l.last().copied().unwrap_or_default()),
            errors
        );
        if errors > 0 {
            println!("       last error: {}", st.last_error.lock().await);
        }
    }
    if !rss.is_empty() {
        let s: Vec<String> = rss
            .iter()
            .map(|(t, kb)| format!("{t}s:{}MB", kb / 1024))
            .collect();
        println!("server RSS: {}", s.join(" "));
    }
    total_errors
}
