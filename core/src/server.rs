//! Server lifecycle: open the store, bind listeners, accept connections into protocol
//! sessions, and shut down cleanly on SIGTERM/SIGINT.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::hooks::HookChain;
use crate::listener::{Listener, Protocol};
use crate::net::{AuthThrottle, ConnLimits, ConnRefused};
use crate::store::{Cached, SledStore, Store};

/// The services of a running server, each session kind getting only what it uses
/// (`smtp::session::Deps`, `imap::session::Deps`, `pop3::session::Deps`, `queue::Deps`).
/// Built once by [`run`]; nothing below the server imports this module.
struct Services {
    smtp: Arc<crate::smtp::session::Deps>,
    imap: Arc<crate::imap::session::Deps>,
    pop3: Arc<crate::pop3::session::Deps>,
    managesieve: Arc<crate::managesieve::session::Deps>,
    queue: Arc<crate::queue::Deps>,
    /// The DMARC report sender's, when reports are enabled (taken out to start it).
    reports: Option<crate::sender_auth::report::Deps>,
    /// The TLS report sender's, when TLS reports are enabled (taken out to start it).
    tls_reports: Option<crate::tls_report::Deps>,
    /// Connection counters.
    conn_limits: Arc<ConnLimits>,
    /// TLS of the `https` listener.
    http_tls: tokio_rustls::TlsAcceptor,
    /// The certificate every TLS listener presents (ACME swaps it).
    certificates: Arc<crate::tls::Certificates>,
    /// The hook chain, swapped on reload.
    hooks: Arc<HookChain>,
    config: Arc<Config>,
    store: Store,
    shutdown: CancellationToken,
}

impl Services {
    fn new(config: Arc<Config>, store: Store, hooks: HookChain) -> anyhow::Result<Self> {
        let tls = crate::tls::acceptors(&config)?;
        let resolver = crate::dns::resolver(&config).map_err(anyhow::Error::msg)?;
        let shutdown = CancellationToken::new();
        let hooks = Arc::new(hooks);
        let login = crate::login::Login::new(
            store.clone(),
            hooks.clone(),
            &config.domains,
            AuthThrottle::new(
                config.limits.max_auth_failures,
                config.limits.max_auth_failures_per_ip,
                config.limits.auth_fail_window,
            ),
        );
        let delivery = crate::delivery::Delivery::new(
            config.clone(),
            store.clone(),
            hooks.clone(),
            Arc::new(Notify::new()),
        );
        let sender_auth = Arc::new(crate::sender_auth::SenderAuth::new(
            &config,
            resolver.clone(),
            store.clone(),
        ));
        let tls_reports = config.tls_reports.enabled.then(|| crate::tls_report::Deps {
            config: config.clone(),
            store: store.clone(),
            resolver: resolver.clone(),
            delivery: delivery.clone(),
        });
        let reports =
            config
                .sender_auth
                .dmarc_reports
                .enabled
                .then(|| crate::sender_auth::report::Deps {
                    config: config.clone(),
                    sender_auth: sender_auth.clone(),
                    delivery: delivery.clone(),
                });
        Ok(Services {
            smtp: Arc::new(crate::smtp::session::Deps {
                config: config.clone(),
                store: store.clone(),
                tls: tls.smtp,
                hooks: hooks.clone(),
                resolver: resolver.clone(),
                fcrdns_cache: Default::default(),
                login: login.clone(),
                delivery: delivery.clone(),
                sender_auth,
                message_memory: crate::memory::MemoryBudget::new(
                    config.smtp.max_message_memory as usize,
                ),
                shutdown: shutdown.clone(),
            }),
            imap: Arc::new(crate::imap::session::Deps {
                config: config.clone(),
                store: store.clone(),
                tls: tls.imap,
                hooks: hooks.clone(),
                login: login.clone(),
                sort_keys: Default::default(),
                shutdown: shutdown.clone(),
            }),
            pop3: Arc::new(crate::pop3::session::Deps {
                config: config.clone(),
                store: store.clone(),
                tls: tls.pop3,
                hooks: hooks.clone(),
                login: login.clone(),
                shutdown: shutdown.clone(),
            }),
            managesieve: Arc::new(crate::managesieve::session::Deps {
                config: config.clone(),
                store: store.clone(),
                tls: tls.managesieve,
                login,
                shutdown: shutdown.clone(),
            }),
            queue: Arc::new(crate::queue::Deps {
                config: config.clone(),
                store: store.clone(),
                resolver,
                dnssec: crate::dns::validating_resolver(&config).map_err(anyhow::Error::msg)?,
                hooks: hooks.clone(),
                delivery,
                shutdown: shutdown.clone(),
            }),
            reports,
            tls_reports,
            http_tls: tls.http,
            certificates: tls.certificates,
            conn_limits: ConnLimits::with_protocols(
                config.limits.max_connections,
                config.limits.max_connections_per_ip,
                &[
                    ("smtp", config.smtp.max_smtp_connections),
                    ("imap", config.imap.max_connections),
                    ("pop3", config.pop3.max_connections),
                    ("managesieve", config.managesieve.max_connections),
                ],
            ),
            hooks,
            config,
            store,
            shutdown,
        })
    }
}

/// Open the store at the configured place, with the error an admin can act on.
pub fn open_store(config: &Config) -> anyhow::Result<Store> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("data_dir {}: cannot create", config.data_dir.display()))?;
    make_private(&config.data_dir)?;
    crate::store::lease::set_duration(config.store.lease);
    // The one place that names a backend type (besides `store/` itself). The metadata
    // cache is a layer over whichever backend is configured.
    match config.store.backend {
        crate::config::StoreBackend::Sled => Ok(Arc::new(Cached::new(SledStore::open(
            &config.store_path(),
        )?))),
        crate::config::StoreBackend::Postgres => {
            let store = crate::blocking::wait(async {
                let store = connect_postgres(config).await?;
                store.check_schema().await?;
                anyhow::Ok(store)
            })?;
            Ok(Arc::new(Cached::new(store)))
        }
    }
}

/// `corvus store migrate`: create the configured database's schema, or bring it up to this
/// Corvus's version; what was done, in words.
pub fn migrate_store(config: &Config) -> anyhow::Result<String> {
    match config.store.backend {
        crate::config::StoreBackend::Sled => Ok(format!(
            "nothing to do: the sled store at {} is created and upgraded when opened",
            config.store_path().display()
        )),
        crate::config::StoreBackend::Postgres => crate::blocking::wait(async {
            let store = connect_postgres(config).await?;
            let (before, after) = store.migrate().await?;
            anyhow::Ok(match before {
                0 => format!("created the Corvus schema (version {after})"),
                b if b == after => format!("the schema is up to date (version {after})"),
                b => format!("upgraded the schema from version {b} to {after}"),
            })
        }),
    }
}

/// `corvus store copy --from sled:PATH --to URL`: copy the sled store of a stopped server
/// (PATH is its data_dir or the store directory in it) into the PostgreSQL database at URL,
/// which must have this Corvus's schema (`corvus store migrate`), then compare both
/// (`store::transfer`). Progress lines go to `progress`; the summary, and whether the
/// target holds everything of the source.
pub fn copy_store(
    from: &str,
    to: &str,
    progress: &mut (dyn FnMut(&str) + Send),
) -> anyhow::Result<(String, bool)> {
    use crate::store::transfer;
    let Some(path) = from.strip_prefix("sled:") else {
        anyhow::bail!(
            "--from {from:?}: give the store to copy as sled:PATH (the data_dir of the \
             stopped server, or the store directory in it)"
        );
    };
    let path = std::path::Path::new(path);
    // Never create an empty store where the admin mistyped a path.
    let path = if path.join("store").join("db").is_file() {
        path.join("store")
    } else if path.join("db").is_file() {
        path.to_path_buf()
    } else {
        anyhow::bail!(
            "--from: no sled store at {} (neither {}/store nor {} holds one)",
            path.display(),
            path.display(),
            path.display()
        );
    };
    if to.starts_with("sled:") {
        anyhow::bail!(
            "--to: copying into sled is not supported; give a PostgreSQL database (a \
             postgresql:// URL or key=value pairs, as [store] url takes)"
        );
    }
    let source = match SledStore::open(&path) {
        Ok(s) => s,
        Err(crate::store::StoreError::Locked(p)) => anyhow::bail!(
            "the sled store at {p} is locked by another process, most likely a running \
             `corvus serve`: stop that server first (the copy must be the only one using \
             the store)"
        ),
        Err(e) => return Err(e.into()),
    };
    crate::blocking::wait(async {
        let target = crate::store::PostgresStore::connect(to, 2)
            .await
            .context("--to")?;
        target.check_schema().await?;
        progress(&format!(
            "copying the sled store at {} into {}",
            path.display(),
            crate::store::redact_url(to)
        ));
        let copied = transfer::copy(&source, &target, progress).await?;
        progress("verifying");
        let verified = transfer::verify(&source, &target, progress).await?;
        anyhow::Ok((format!("{copied}\n{verified}"), verified.ok()))
    })
}

/// `corvus check`: which store the configuration names, and for PostgreSQL that it answers
/// (address, credentials) with the schema of this Corvus.
pub fn check_store(config: &Config) -> anyhow::Result<String> {
    match config.store.backend {
        crate::config::StoreBackend::Sled => {
            Ok(format!("store: sled at {}", config.store_path().display()))
        }
        crate::config::StoreBackend::Postgres => crate::blocking::wait(async {
            let store = connect_postgres(config).await?;
            store.check_schema().await?;
            let url = config.store.url.as_deref().unwrap_or_default();
            anyhow::Ok(format!(
                "store: postgres at {}, schema version {}",
                crate::store::redact_url(url),
                crate::store::SCHEMA_VERSION
            ))
        }),
    }
}

/// The pool of `[store] backend = "postgres"` (the schema unchecked).
async fn connect_postgres(config: &Config) -> anyhow::Result<crate::store::PostgresStore> {
    let url = config
        .store
        .url
        .as_deref()
        .context("store.url: required with backend = \"postgres\"")?;
    Ok(crate::store::PostgresStore::connect_with(
        url,
        config.store.pool_size,
        config.tls.trust_roots.as_deref(),
    )
    .await?)
}

/// Files are created readable by their owner only: the store holds every password hash,
/// the DKIM private keys and all mail. Set once, at the start of every command.
pub fn private_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Take group and other permissions off everything under `dir` (and `dir` itself): a
/// data_dir made by an older Corvus, or copied with a looser umask, had its store
/// world-readable. Logged when anything changed.
pub fn make_private(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut fixed = 0usize;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(path) = todo.pop() {
        let meta = std::fs::symlink_metadata(&path)
            .with_context(|| format!("data_dir: cannot read {}", path.display()))?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o700))
                .with_context(|| {
                    format!(
                        "data_dir: {} is readable by others and cannot be made private; run corvus as its owner or chmod -R go-rwx it",
                        path.display()
                    )
                })?;
            fixed += 1;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)
                .with_context(|| format!("data_dir: cannot list {}", path.display()))?
            {
                todo.push(entry?.path());
            }
        }
    }
    if fixed > 0 {
        tracing::warn!(
            data_dir = %dir.display(),
            fixed,
            "data_dir: took group and other permissions off files and directories that others could read"
        );
    }
    Ok(())
}

/// Raise the open-file limit to the hard limit: every connection is a file descriptor, and
/// the common default soft limit (1024) is far below `max_connections`.
fn raise_fd_limit(want: u64) {
    match rlimit::increase_nofile_limit(want.saturating_add(256)) {
        Ok(n) if n < want => tracing::warn!(
            limit = n,
            max_connections = want,
            "open-file limit is below max_connections; raise it (ulimit -n / LimitNOFILE=)"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
}

/// Run the server until SIGTERM/SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    raise_fd_limit(config.limits.max_connections as u64);
    // Handlers first: a SIGTERM that arrives while we start up (say, right after a listener
    // opens) must still end in a clean shutdown, not in the default action.
    let signals = wait_for_signal().context("installing SIGTERM/SIGINT handlers")?;
    // SIGHUP reloads the hook scripts; installed now so an early one cannot kill the process.
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let config = Arc::new(config);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("data_dir {}: cannot create", config.data_dir.display()))?;
    let _data_dir = lock_data_dir(&config)?;
    crate::store::lease::set_node(&node_id(&config)?);
    let store = open_store(&config)?;
    // What this node's previous run held (a crash, or a stop that could not reach the
    // store) is given back at once rather than when its leases run out.
    match store
        .release_held_by(&crate::store::lease::node_prefix())
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            released = n,
            "gave back the claims of this node's previous run"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "could not give back the claims of this node's previous run")
        }
    }
    // A node sharing its database with others publishes their changes to its sessions.
    store.follow_others();
    let hooks = crate::hooks::build_entries(&config, &store)
        .map_err(|problems| anyhow::anyhow!("hooks: {}", problems.join("\n")))?;
    let mut services = Services::new(config.clone(), store.clone(), HookChain::new(hooks))?;
    let reports = services.reports.take();
    let tls_reports = services.tls_reports.take();
    let services = Arc::new(services);
    let shutdown = services.shutdown.clone();
    if config.acme.enabled() {
        // A valid stored certificate is presented from the first handshake; the manager
        // orders or renews in the background.
        if let Some(s) = crate::acme::install_stored(&config, &store, &services.certificates).await
        {
            tracing::info!(domains = ?s.domains, not_after = s.not_after, "acme: stored certificate installed");
        }
        crate::acme::spawn(
            config.clone(),
            store.clone(),
            services.certificates.clone(),
            shutdown.clone(),
        );
    }

    let mut bound = Vec::new();
    for (proto, addr) in config.listeners() {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("listen.{proto}: cannot bind {addr}"))?;
        bound.push((proto, addr, l));
    }
    let mut http_bound = Vec::new();
    for (tls, addr) in config.http_listeners() {
        let key = if tls { "https" } else { "http" };
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("listen.{key}: cannot bind {addr}"))?;
        http_bound.push((tls, addr, l));
    }
    let for_reload = services.clone();
    let reloader: crate::control::Reloader =
        Arc::new(move || reload_hooks(&for_reload.config, &for_reload.store, &for_reload.hooks));
    crate::control::serve(
        &config.control_socket(),
        store.clone(),
        services.config.clone(),
        shutdown.clone(),
        services.queue.delivery.queue_wakeup().clone(),
        reloader.clone(),
    )
    .await
    .with_context(|| format!("control socket {}", config.control_socket().display()))?;

    println!(
        "corvus {} running as {}; data in {}",
        env!("CARGO_PKG_VERSION"),
        config.hostname,
        config.data_dir.display()
    );
    for (proto, addr, _) in &bound {
        println!("  {proto:<12} listening on {addr}");
    }
    for (tls, addr, _) in &http_bound {
        let key = if *tls { "https" } else { "http" };
        println!("  {key:<12} listening on {addr} (admin console at /admin/, metrics at /metrics)");
    }
    if store.accounts().await?.is_empty() {
        // The exact command: with the config file the server runs from (the CLI then finds
        // the same data_dir and control socket from any directory).
        let config_arg = match &config.source {
            Some(path) => {
                let path = std::path::absolute(path).unwrap_or_else(|_| path.clone());
                format!("-c '{}' ", path.display())
            }
            None => String::new(),
        };
        println!(
            "No accounts yet. Add one with:  corvus {config_arg}user add alice@{} --password 'secret'",
            config.first_domain()
        );
    }

    tokio::spawn(reload_on_sighup(services.clone(), hangups));

    let tracker = TaskTracker::new();
    crate::trace::start(store.clone(), &config.trace, shutdown.clone());
    let http = crate::http::State::new(
        config.clone(),
        store.clone(),
        reloader,
        services.queue.delivery.queue_wakeup().clone(),
        services.queue.resolver.clone(),
    );
    crate::http::serve(
        http.clone(),
        http_bound,
        services.http_tls.clone(),
        shutdown.clone(),
        &tracker,
    );
    tracker.spawn(crate::queue::run(services.queue.clone()));
    if let Some(deps) = tls_reports {
        tracker.spawn(crate::tls_report::run(deps, shutdown.clone()));
    }
    if let Some(deps) = reports {
        tracker.spawn(crate::sender_auth::report::run(deps, shutdown.clone()));
    }
    for (proto, _addr, listener) in bound {
        let services = services.clone();
        let tracker2 = tracker.clone();
        tracker.spawn(accept_loop(services, listener, proto, tracker2));
    }

    http.listening
        .store(true, std::sync::atomic::Ordering::Relaxed);
    signals.await;
    tracing::info!("shutting down: no new connections; waiting for sessions to finish");
    shutdown.cancel();
    tracker.close();
    if tokio::time::timeout(config.shutdown_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?config.shutdown_timeout, "sessions still running after the shutdown timeout; closing them");
    }
    store.commit().await?;
    // Locks of the sessions that just ended go back to the store now, so a restarted node
    // (or another one) does not wait for them to run out.
    crate::store::lease::settle(Duration::from_secs(5)).await;
    tracing::info!("store flushed; bye");
    Ok(())
}

/// Hold `data_dir` for this process (an exclusive lock on `data_dir/serve.lock`, which
/// names the holder's pid) as long as the returned file is open: two servers on one
/// data_dir would take each other's control socket, and on a shared database each would
/// give back the other's claims at start.
fn lock_data_dir(config: &Config) -> anyhow::Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    let path = config.data_dir.join("serve.lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("{}: cannot open", path.display()))?;
    if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        anyhow::bail!(
            "data_dir {} is in use by another process (a running `corvus serve`, pid {}); \
             stop it, or give this server its own data_dir",
            config.data_dir.display(),
            pid.trim()
        );
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    Ok(file)
}

/// This node's id: random, made at its first start and kept in `data_dir/node-id`. Names
/// of its leases and queue claims start with it, so a restart gives back what its previous
/// run held.
fn node_id(config: &Config) -> anyhow::Result<String> {
    let path = config.data_dir.join("node-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok(id.to_string());
        }
    }
    let id = format!("{:016x}", rand::random::<u64>());
    std::fs::write(&path, &id).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(id)
}

/// Re-read the config file and put its `[[hooks]]` in place. Nothing changes unless every
/// script compiles (and its `init` succeeds); sessions keep running throughout.
pub fn reload_hooks(running: &Config, store: &Store, hooks: &HookChain) -> Result<String, String> {
    let config = match &running.source {
        Some(path) => Config::load(Some(path)).map_err(|p| p.join("\n"))?,
        None => {
            return Err(
                "no config file to reload (the server runs on the embedded default)".into(),
            );
        }
    };
    let entries = crate::hooks::build_entries(&config, store).map_err(|p| p.join("\n"))?;
    let n = entries.len() - 1;
    hooks.replace(entries);
    tracing::info!(scripts = n, "hooks reloaded");
    Ok(format!("reloaded {n} hook script(s)"))
}

async fn reload_on_sighup(services: Arc<Services>, mut hangups: tokio::signal::unix::Signal) {
    while hangups.recv().await.is_some() {
        let s = services.clone();
        match tokio::task::spawn_blocking(move || reload_hooks(&s.config, &s.store, &s.hooks)).await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::error!(problems = %e, "SIGHUP: reload failed; keeping the running hooks")
            }
            Err(e) => tracing::error!(error = %e, "SIGHUP: reload task failed"),
        }
    }
}

/// Install the SIGTERM and SIGINT handlers now; the returned future resolves on either.
fn wait_for_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}

async fn accept_loop(
    shared: Arc<Services>,
    listener: TcpListener,
    proto: Listener,
    tracker: TaskTracker,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let slot = match shared
            .conn_limits
            .acquire(peer.ip(), proto.protocol().name())
        {
            Ok(s) => s,
            Err(why) => {
                connection_metric(proto, "refused");
                tracing::info!(%peer, ?why, "connection refused by limits");
                tracker.spawn(refuse(tcp, proto, why));
                continue;
            }
        };
        connection_metric(proto, "accepted");
        let shared = shared.clone();
        tracker.spawn(async move {
            let _slot = slot;
            let open = crate::metrics::m()
                .sessions_open
                .get_or_create(&crate::metrics::ListenerLabel {
                    listener: proto.name(),
                })
                .clone();
            open.inc();
            session(shared, tcp, peer, proto).await;
            open.dec();
        });
    }
}

fn connection_metric(proto: Listener, result: &'static str) {
    crate::metrics::m()
        .connections
        .get_or_create(&crate::metrics::ListenerResult {
            listener: proto.name(),
            result,
        })
        .inc();
}

/// The session for `proto`, boxed at its own size. As one `async fn` matching on the protocol,
/// the task held room for every protocol's session side by side (66 KB where SMTP needs 33),
/// and spawning copied all of it for each connection.
fn session(
    services: Arc<Services>,
    tcp: TcpStream,
    peer: SocketAddr,
    proto: Listener,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    use crate::session::serve;
    match proto.protocol() {
        Protocol::Smtp => Box::pin(async move {
            let deps = services.smtp.clone();
            serve(tcp, peer, proto, &services.smtp.tls, |stream| {
                crate::smtp::session::session(deps, stream, peer, proto)
            })
            .await
        }),
        Protocol::Imap => Box::pin(async move {
            let deps = services.imap.clone();
            serve(tcp, peer, proto, &services.imap.tls, |stream| {
                crate::imap::session::session(deps, stream, peer, proto)
            })
            .await
        }),
        Protocol::Pop3 => Box::pin(async move {
            let deps = services.pop3.clone();
            serve(tcp, peer, proto, &services.pop3.tls, |stream| {
                crate::pop3::session::session(deps, stream, peer, proto)
            })
            .await
        }),
        Protocol::ManageSieve => Box::pin(async move {
            let deps = services.managesieve.clone();
            serve(tcp, peer, proto, &services.managesieve.tls, |stream| {
                crate::managesieve::session::session(deps, stream, peer, proto)
            })
            .await
        }),
    }
}

async fn refuse(mut tcp: TcpStream, proto: Listener, why: ConnRefused) {
    let text = match why {
        ConnRefused::Total => "too many connections",
        ConnRefused::PerIp => "too many connections from your address",
        ConnRefused::Protocol => "too many connections to this service",
    };
    // Nothing in plain text on an implicit-TLS port.
    let line = match (proto.implicit_tls(), proto.protocol()) {
        (true, _) => String::new(),
        (false, Protocol::Smtp) => format!("421 4.7.0 {text}, try again later\r\n"),
        (false, Protocol::Imap) => format!("* BYE [UNAVAILABLE] {text}\r\n"),
        (false, Protocol::Pop3) => format!("-ERR [SYS/TEMP] {text}\r\n"),
        (false, Protocol::ManageSieve) => format!("BYE (TRYLATER) \"{text}\"\r\n"),
    };
    if !line.is_empty() {
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.write_all(line.as_bytes())).await;
    }
}
