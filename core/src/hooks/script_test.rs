//! `corvus script test`: run one script against a synthetic event and report its verdict,
//! actions and log lines, so script authors can try a script without sending mail.
//!
//! The script's `kv_*` state lives in a throwaway store for the duration of the command;
//! `repeat` runs the same event several times against that state (to watch a greylist or a
//! rate limit change its mind).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::rhai::{LoadOptions, RhaiHook};
use super::{Actions, HookCtx, HookEngine, HookPoint, OnError, Verdict};
use crate::store::{MemoryStore, Store};

/// The synthetic event.
#[derive(Debug, Clone)]
pub struct TestEvent {
    /// Hook point to call.
    pub point: HookPoint,
    /// Listener name.
    pub listener: crate::listener::Listener,
    /// Client address.
    pub ip: IpAddr,
    /// Verified PTR name.
    pub ptr: String,
    /// HELO name.
    pub helo: String,
    /// Whether TLS is on.
    pub tls: bool,
    /// Authenticated user.
    pub user: String,
    /// Envelope sender.
    pub from: String,
    /// Recipients; on rcpt the last one is the current recipient and the others were
    /// accepted before it; on delivery the first is the current one.
    pub to: Vec<String>,
    /// Raw message for data and delivery (a small one is made up when missing).
    pub message: Option<Vec<u8>>,
    /// AUTH username, password and mechanism.
    pub credentials: Option<(String, String, String)>,
    /// Whether the account store accepted the credentials.
    pub credentials_valid: bool,
    /// Fetch: mailbox, UID, protocol.
    pub fetch: Option<(String, u32, &'static str)>,
    /// Delivery to a remote host: the MX.
    pub mx: Option<String>,
}

/// Hook point from its short name ("rcpt") or function name ("on_rcpt").
pub fn parse_point(s: &str) -> Result<HookPoint, String> {
    let short = s.trim().trim_start_matches("on_").to_ascii_lowercase();
    super::HookPoint::ALL
        .iter()
        .copied()
        .find(|p| p.function_name()[3..] == short)
        .ok_or_else(|| {
            format!("--hook {s:?}: use connect, helo, auth, mail, rcpt, data, delivery or fetch")
        })
}

/// Listener name as the static string the hook context wants.
pub fn parse_listener(s: &str) -> Result<crate::listener::Listener, String> {
    crate::listener::Listener::from_name(s).ok_or_else(|| {
        let names: Vec<_> = crate::listener::Listener::ALL.map(|l| l.name()).to_vec();
        format!("--listener {s:?}: use one of {}", names.join(", "))
    })
}

impl TestEvent {
    /// The hook context for this event.
    pub fn ctx(&self) -> HookCtx {
        let mut c = HookCtx::new(self.point, self.listener, self.ip);
        c.client_ptr = self.ptr.clone();
        c.helo = self.helo.clone();
        c.tls = self.tls;
        c.user = self.user.clone();
        if !matches!(
            self.point,
            HookPoint::Connect | HookPoint::Helo | HookPoint::Auth
        ) {
            c.mail_from = self.from.clone();
        }
        match self.point {
            HookPoint::Rcpt => {
                if let Some((last, before)) = self.to.split_last() {
                    c.rcpt = last.clone();
                    c.rcpts = before.to_vec();
                }
            }
            HookPoint::Data | HookPoint::Delivery => {
                c.rcpts = self.to.clone();
                if self.point == HookPoint::Delivery {
                    c.rcpt = self.to.first().cloned().unwrap_or_default();
                    c.remote_mx = self.mx.clone();
                }
                let msg = self
                    .message
                    .clone()
                    .unwrap_or_else(|| self.sample_message());
                c.message = Some(Arc::new(msg));
            }
            HookPoint::Auth => {
                let (username, password, mechanism) = self
                    .credentials
                    .clone()
                    .unwrap_or_else(|| (self.user.clone(), String::new(), "PLAIN".into()));
                c.credentials = Some(super::Credentials {
                    username,
                    password,
                    mechanism,
                    valid: self.credentials_valid,
                });
            }
            HookPoint::Fetch => {
                let (mailbox, uid, protocol) = self
                    .fetch
                    .clone()
                    .unwrap_or_else(|| ("INBOX".into(), 1, "imap"));
                c.fetch = Some(super::FetchFacts {
                    mailbox,
                    uid,
                    protocol,
                });
            }
            _ => {}
        }
        c
    }

    fn sample_message(&self) -> Vec<u8> {
        format!(
            "From: <{}>\r\nTo: {}\r\nSubject: Test message\r\nDate: {}\r\nMessage-ID: <script-test@corvus>\r\n\r\nThis is a test message made up by corvus script test.\r\n",
            self.from,
            self.to
                .iter()
                .map(|t| format!("<{t}>"))
                .collect::<Vec<_>>()
                .join(", "),
            crate::message::rfc5322_now()
        )
        .into_bytes()
    }
}

/// Make CRLF line ends out of a file that may use bare LF.
pub fn to_crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 32);
    let mut prev = 0u8;
    for &b in raw {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

/// What a test run found.
pub struct Report {
    /// Text to print.
    pub text: String,
    /// Whether a call failed.
    pub failed: bool,
}

/// Load `path` with `config` and run `event` `repeat` times. A script that does not load is
/// an `Err` with the one-line problem.
pub fn run(
    path: &Path,
    config: serde_json::Map<String, serde_json::Value>,
    on_error: OnError,
    event: &TestEvent,
    repeat: u32,
) -> Result<Report, String> {
    // A throwaway store: the script's kv calls work and nothing touches the disk.
    let store: Option<Store> = Some(Arc::new(MemoryStore::new()));
    let sink = Arc::new(Mutex::new(Vec::new()));
    // A `.wasm` file is a plugin: the same event, verdict and report.
    let hook: Box<dyn HookEngine> = if path.extension().is_some_and(|e| e == "wasm") {
        Box::new(super::wasm::WasmHook::load_file(
            path,
            super::wasm::LoadOptions {
                config,
                on_error,
                store: store.clone(),
                sink: Some(sink.clone()),
                ..Default::default()
            },
        )?)
    } else {
        Box::new(RhaiHook::load_file(
            path,
            LoadOptions {
                config,
                on_error,
                store: store.clone(),
                sink: Some(sink.clone()),
                ..LoadOptions::default()
            },
        )?)
    };
    let mut text = String::new();
    let mut failed = false;
    let init_logs = std::mem::take(&mut *sink.lock().unwrap_or_else(|e| e.into_inner()));
    for l in init_logs {
        let _ = writeln!(text, "init log: {l}");
    }
    let func = event.point.function_name();
    if !hook.handles(event.point) {
        let points: Vec<&str> = super::HookPoint::ALL
            .iter()
            .filter(|p| hook.handles(**p))
            .map(|p| p.function_name())
            .collect();
        let _ = writeln!(
            text,
            "hook:     {func} (not handled by this script or plugin; it handles {})",
            if points.is_empty() {
                "no hook functions".to_string()
            } else {
                points.join(", ")
            }
        );
        let _ = writeln!(text, "verdict:  continue");
        return Ok(Report { text, failed });
    }
    let ctx = event.ctx();
    for run in 1..=repeat.max(1) {
        if repeat > 1 {
            let _ = writeln!(text, "-- run {run} of {repeat}");
        }
        let _ = writeln!(text, "hook:     {func}");
        let mut actions = Actions::default();
        let started = Instant::now();
        let result = hook.call(&ctx, &mut actions);
        let micros = started.elapsed().as_micros();
        match result {
            Ok(v) => {
                let _ = writeln!(text, "verdict:  {}", v.describe());
            }
            Err(e) => {
                failed = true;
                let _ = writeln!(text, "error:    {e}");
                let v = on_error.verdict().unwrap_or(Verdict::Continue);
                let _ = writeln!(
                    text,
                    "verdict:  {} (on_error = {})",
                    v.describe(),
                    format!("{on_error:?}").to_lowercase()
                );
            }
        }
        let mut acts = Vec::new();
        for (n, v) in &actions.add_headers {
            acts.push(format!("add_header {n}: {v}"));
        }
        if let Some(r) = &actions.set_rcpt {
            acts.push(format!("set_rcpt {r}"));
        }
        if let Some(f) = &actions.file_into {
            acts.push(format!("file_into {f}"));
        }
        if acts.is_empty() {
            let _ = writeln!(text, "actions:  none");
        } else {
            for a in acts {
                let _ = writeln!(text, "action:   {a}");
            }
        }
        let logs = std::mem::take(&mut *sink.lock().unwrap_or_else(|e| e.into_inner()));
        for l in logs {
            let _ = writeln!(text, "log:      {l}");
        }
        let _ = writeln!(text, "time:     {micros} µs");
    }
    Ok(Report { text, failed })
}
