//! smtp-floor: the least an SMTP receiver does per message, in Corvus' I/O model — tokio
//! sessions on a multi-thread runtime, one group-commit thread that appends each message to
//! one file and `fdatasync`s before the 250. No parsing beyond finding lines, no checks, no
//! index, no log. `--threads` uses a thread per connection with blocking I/O instead (the
//! Postfix smtpd model, with the write and `fdatasync` done by the session itself).
//!
//! Usage: smtp-floor [--threads] ADDRESS FILE
//!
//! The benchmark measures this server's CPU per message beside Corvus': a floor for the
//! machine (loopback TCP, wake-ups, the disk flush), not a mail server.

use std::io::{Read, Write};
use std::sync::{mpsc, Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

/// A message to make durable, and whom to tell.
type Commit = (Vec<u8>, oneshot::Sender<()>);

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let threads = args.first().is_some_and(|a| a == "--threads");
    if threads {
        args.remove(0);
    }
    let [addr, path] = <[String; 2]>::try_from(args).unwrap_or_else(|_| {
        eprintln!("usage: smtp-floor [--threads] ADDRESS FILE");
        std::process::exit(2)
    });
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    if threads {
        serve_threads(&addr, file)
    } else {
        serve_tokio(&addr, file)
    }
}

fn serve_tokio(addr: &str, mut file: std::fs::File) {
    let (tx, rx) = mpsc::channel::<Commit>();
    // Group commit: everything queued while the previous flush ran shares the next one.
    std::thread::spawn(move || {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            batch.extend(rx.try_iter());
            for (message, _) in &batch {
                file.write_all(message).expect("write");
            }
            file.sync_data().expect("fdatasync");
            for (_, done) in batch {
                let _ = done.send(());
            }
        }
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = session_tokio(stream, tx).await;
            });
        }
    });
}

async fn session_tokio(
    mut s: tokio::net::TcpStream,
    commits: mpsc::Sender<Commit>,
) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    s.write_all(GREETING).await?;
    let mut dialog = Dialog::default();
    let mut buf = [0u8; 8192];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        dialog.input.extend_from_slice(&buf[..n]);
        while let Some(step) = dialog.next_step() {
            match step {
                Step::Reply(r) => s.write_all(r).await?,
                Step::Store(message) => {
                    let (done, wait) = oneshot::channel();
                    commits.send((message, done)).expect("committer");
                    wait.await.expect("committer");
                    s.write_all(QUEUED).await?;
                }
                Step::Quit => return s.write_all(BYE).await,
            }
        }
    }
}

fn serve_threads(addr: &str, file: std::fs::File) {
    let listener = std::net::TcpListener::bind(addr).expect("bind");
    let file = Arc::new(Mutex::new(file));
    for stream in listener.incoming().flatten() {
        let file = file.clone();
        std::thread::spawn(move || {
            let _ = session_blocking(stream, &file);
        });
    }
}

fn session_blocking(
    mut s: std::net::TcpStream,
    file: &Mutex<std::fs::File>,
) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    s.write_all(GREETING)?;
    let mut dialog = Dialog::default();
    let mut buf = [0u8; 8192];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        dialog.input.extend_from_slice(&buf[..n]);
        while let Some(step) = dialog.next_step() {
            match step {
                Step::Reply(r) => s.write_all(r)?,
                Step::Store(message) => {
                    let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
                    f.write_all(&message)?;
                    f.sync_data()?;
                    drop(f);
                    s.write_all(QUEUED)?;
                }
                Step::Quit => return s.write_all(BYE),
            }
        }
    }
}

const GREETING: &[u8] = b"220 floor ESMTP\r\n";
const OK: &[u8] = b"250 2.0.0 Ok\r\n";
const GO_AHEAD: &[u8] = b"354 End data with <CR><LF>.<CR><LF>\r\n";
const QUEUED: &[u8] = b"250 2.0.0 Ok: queued\r\n";
const BYE: &[u8] = b"221 2.0.0 Bye\r\n";

/// The dialog without I/O: input goes in, steps come out.
#[derive(Default)]
struct Dialog {
    input: Vec<u8>,
    in_data: bool,
    /// How far `input` was searched for the end of data.
    scanned: usize,
}

enum Step {
    Reply(&'static [u8]),
    /// The message, end-of-data line included (the benchmark counts those).
    Store(Vec<u8>),
    Quit,
}

impl Dialog {
    fn next_step(&mut self) -> Option<Step> {
        if self.in_data {
            let from = self.scanned.saturating_sub(4);
            let end = find(&self.input[from..], b"\r\n.\r\n").map(|i| from + i + 5);
            let Some(end) = end else {
                self.scanned = self.input.len();
                return None;
            };
            self.in_data = false;
            self.scanned = 0;
            return Some(Step::Store(self.input.drain(..end).collect()));
        }
        let end = find(&self.input, b"\r\n")? + 2;
        let verb = &self.input[..end.min(4)];
        let step = if verb.eq_ignore_ascii_case(b"DATA") {
            self.in_data = true;
            Step::Reply(GO_AHEAD)
        } else if verb.eq_ignore_ascii_case(b"QUIT") {
            Step::Quit
        } else {
            Step::Reply(OK)
        };
        self.input.drain(..end);
        Some(step)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
