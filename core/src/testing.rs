//! Test support for protocol sessions: a store with an account and a few messages, the
//! services a session depends on, and the `C:`/`S:` [`transcript`] driver that runs a
//! session over an in-memory pipe, so protocol rules are testable without the binary,
//! sockets or Python (in the style of RFC examples).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::config::Config;
use crate::hooks::{HookChain, HookEngine};
use crate::login::Login;
use crate::net::{AuthThrottle, Stream};
use crate::store::{Placement, Store};

/// The test account.
pub const USER: &str = "alice@example.org";
/// Its password.
pub const PASSWORD: &str = "pw";

/// A settings value for tests: data in `dir`, plaintext logins allowed (the transcripts
/// run without TLS), `example.org` local.
pub fn config(dir: &std::path::Path) -> Config {
    let mut config = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    config.pop3.allow_plaintext_auth = true;
    config.imap.allow_plaintext_auth = true;
    config.smtp.allow_plaintext_auth = true;
    config.domains = vec!["example.org".into()];
    // No DNS in unit tests: no SPF/DKIM/DMARC lookups.
    config.sender_auth.enabled = false;
    config
}

/// A memory store with [`USER`] and one INBOX message per body in `bodies` (each with a
/// `Subject:` of its text).
pub async fn store(bodies: &[&str]) -> Store {
    let store: Store = Arc::new(crate::store::MemoryStore::new());
    store
        .create_account(USER, &crate::accounts::hash_password(PASSWORD))
        .await
        .unwrap();
    for body in bodies {
        let msg = format!("Subject: {body}\r\n\r\n{body}\r\n");
        let to = [Placement {
            user: USER.into(),
            mailbox: "INBOX".into(),
            flags: Vec::new(),
        }];
        store.deliver(msg.as_bytes(), 0, &to).await.unwrap();
    }
    store
}

/// A hook chain as the server builds it: the built-in policy, then `engines`.
pub fn hooks(engines: Vec<Arc<dyn HookEngine>>) -> Arc<HookChain> {
    let mut chain: Vec<Arc<dyn HookEngine>> = vec![Arc::new(crate::hooks::builtin::BuiltinPolicy)];
    chain.extend(engines);
    Arc::new(HookChain::new(chain))
}

/// The login service over `store` and `hooks`, with a generous throttle.
pub fn login(config: &Config, store: &Store, hooks: &Arc<HookChain>) -> Login {
    Login::new(
        store.clone(),
        hooks.clone(),
        &config.domains,
        AuthThrottle::new(5, 10, Duration::from_secs(60)),
    )
}

/// Run a session on one end of an in-memory pipe (`session` gets the server side) and
/// drive it from the other: `C: text` sends a line (`C:` alone an empty one), `S: text`
/// reads one and checks that it starts with `text` (`S:` alone is an empty line), `S*: text`
/// skips lines up to the one that starts with `text` not followed by `-` (the last line of
/// a multi-line reply).
/// Panics on the first mismatch.
pub async fn transcript<F, Fut>(session: F, trace: &str)
where
    F: FnOnce(Stream) -> Fut,
    Fut: Future<Output = std::io::Result<()>> + Send + 'static,
{
    let (client, server) = tokio::io::duplex(1 << 20);
    let running = tokio::spawn(session(Stream::Memory(server)));
    let (r, mut w) = tokio::io::split(client);
    let mut r = BufReader::new(r);
    for step in trace.lines().map(str::trim).filter(|l| !l.is_empty()) {
        // "S:" and "C:" alone (their trailing space trimmed away) are empty lines.
        let step = match step {
            "S:" => "S: ",
            "C:" => "C: ",
            other => other,
        };
        if let Some(c) = step.strip_prefix("C: ") {
            w.write_all(format!("{c}\r\n").as_bytes()).await.unwrap();
        } else if let Some(want) = step.strip_prefix("S*: ") {
            loop {
                let line = read_line(&mut r, want).await;
                // "250-…" continues a reply; "250 …" ends it.
                if line.starts_with(want) && line.as_bytes().get(want.len()) != Some(&b'-') {
                    break;
                }
            }
        } else if let Some(want) = step.strip_prefix("S: ") {
            let line = read_line(&mut r, want).await;
            let ok = if want.is_empty() {
                line == "\r\n"
            } else {
                line.starts_with(want) && line.ends_with("\r\n")
            };
            assert!(ok, "expected {want:?}, got {line:?}");
        } else {
            panic!("bad transcript step {step:?}");
        }
    }
    drop(w);
    running.abort();
}

/// The next line from the session (panics after 10 s without one).
async fn read_line(
    r: &mut BufReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>,
    want: &str,
) -> String {
    let mut line = String::new();
    let read = tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut line));
    let n = read
        .await
        .unwrap_or_else(|_| panic!("waiting for {want:?}: no reply"))
        .unwrap();
    assert!(n > 0, "waiting for {want:?}: the session closed");
    line
}

/// `\0user\0password` in base64: a SASL PLAIN response.
pub fn plain(user: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"))
}

/// The SMTP services over `store` and `hooks` (sender checks off: no DNS here).
pub fn smtp(
    config: Config,
    store: &Store,
    hooks: &Arc<HookChain>,
) -> Arc<crate::smtp::session::Deps> {
    let config = Arc::new(config);
    let resolver = crate::dns::resolver(&config).unwrap();
    Arc::new(crate::smtp::session::Deps {
        tls: crate::tls::acceptors(&config).unwrap().smtp,
        login: login(&config, store, hooks),
        delivery: crate::delivery::Delivery::new(
            config.clone(),
            store.clone(),
            hooks.clone(),
            Arc::default(),
        ),
        sender_auth: Arc::new(crate::sender_auth::SenderAuth::new(
            &config,
            resolver.clone(),
            store.clone(),
        )),
        resolver,
        fcrdns_cache: Default::default(),
        hooks: hooks.clone(),
        message_memory: crate::memory::MemoryBudget::new(1 << 30),
        shutdown: Default::default(),
        config,
        store: store.clone(),
    })
}

/// The IMAP services over `store` and `hooks`.
pub fn imap(
    config: Config,
    store: &Store,
    hooks: &Arc<HookChain>,
) -> Arc<crate::imap::session::Deps> {
    Arc::new(crate::imap::session::Deps {
        tls: crate::tls::acceptors(&config).unwrap().imap,
        login: login(&config, store, hooks),
        hooks: hooks.clone(),
        sort_keys: Default::default(),
        shutdown: Default::default(),
        config: Arc::new(config),
        store: store.clone(),
    })
}

/// Message metadata for `uids` (no flags, MODSEQ 1), for view and delta tests.
pub fn metas(uids: &[u32]) -> Vec<crate::store::MessageMeta> {
    uids.iter()
        .map(|&uid| crate::store::MessageMeta {
            uid,
            blob: 0,
            size: 0,
            flags: vec![],
            internal_date: 0,
            modseq: 1,
        })
        .collect()
}
