//! The HTTP listeners (`[listen] http`, `https`): health checks, `/metrics`, the admin API
//! (`/api/`), the web console (`/admin/`), and what is published to all: the MTA-STS policy
//! and client autoconfiguration.
//!
//! axum routes over hyper's HTTP/1.1 server connection, driven by our own accept loop:
//! `axum::serve` sets no header-read timer (a client trickling headers would hold a
//! connection forever) and knows no TLS or connection cap. Every connection gets
//! `[http] header_timeout` to send its request headers, bodies are capped at
//! `[http] max_body`, and at most `[http] max_connections` are served at once.

mod api;
mod console;
mod health;
mod metrics;
mod published;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Router;
use axum::http::{HeaderValue, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::store::Store;

/// What the HTTP handlers use of the server.
pub struct State {
    /// Settings.
    pub config: Arc<Config>,
    /// The store.
    pub store: Store,
    /// Reloads the hooks (`POST /api/reload`).
    pub reload: crate::control::Reloader,
    /// Wakes the queue (after a retry request).
    pub queue_wakeup: Arc<tokio::sync::Notify>,
    /// DNS, for the records a domain publishes.
    pub resolver: hickory_resolver::TokioResolver,
    /// Whether every listener is bound (`/readyz`).
    pub listening: AtomicBool,
    /// The dashboard's samples (`/api/stats`).
    pub(crate) stats: metrics::Samples,
}

/// Shared state of the handlers.
pub type Shared = Arc<State>;

impl State {
    /// The state for a server with `config` and `store`.
    pub fn new(
        config: Arc<Config>,
        store: Store,
        reload: crate::control::Reloader,
        queue_wakeup: Arc<tokio::sync::Notify>,
        resolver: hickory_resolver::TokioResolver,
    ) -> Shared {
        Arc::new(State {
            config,
            store,
            reload,
            queue_wakeup,
            resolver,
            listening: AtomicBool::new(false),
            stats: metrics::Samples::default(),
        })
    }
}

/// Every route.
pub fn router(state: Shared) -> Router {
    Router::new()
        .merge(health::routes())
        .merge(metrics::routes())
        .nest("/api", api::routes(state.clone()))
        .merge(console::routes())
        .merge(published::routes())
        .layer(axum::middleware::map_response(security_headers))
        .layer(axum::extract::DefaultBodyLimit::max(
            state.config.http.max_body as usize,
        ))
        .with_state(state)
}

/// Headers on every response: no sniffing, no framing, no referrer, nothing cached that
/// holds account data.
async fn security_headers(mut res: axum::response::Response) -> axum::response::Response {
    let h = res.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    res
}

/// Serve `listeners` (each with whether it speaks TLS) until `shutdown`; sessions are
/// tracked by `tracker` so a shutdown waits for requests in flight.
pub fn serve(
    state: Shared,
    listeners: Vec<(bool, SocketAddr, TcpListener)>,
    tls: tokio_rustls::TlsAcceptor,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    metrics::start_sampler(state.clone(), shutdown.clone());
    let app = router(state.clone());
    let slots = Arc::new(Semaphore::new(state.config.http.max_connections));
    for (is_tls, _addr, listener) in listeners {
        let app = app.clone();
        let tls = is_tls.then(|| tls.clone());
        let shutdown = shutdown.clone();
        let slots = slots.clone();
        let timeout = state.config.http.header_timeout;
        let tracker2 = tracker.clone();
        tracker.spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = listener.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!(error = %e, "http: accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    // Over the cap: close at once rather than queue without bound.
                    tracing::info!(%peer, "http: connection refused, too many connections");
                    continue;
                };
                let app = app.clone();
                let tls = tls.clone();
                let shutdown = shutdown.clone();
                tracker2.spawn(async move {
                    let _slot = slot;
                    let _ = tcp.set_nodelay(true);
                    match tls {
                        Some(acceptor) => {
                            let accepted =
                                tokio::time::timeout(timeout, acceptor.accept(tcp)).await;
                            let stream = accepted.ok().and_then(Result::ok);
                            let version = stream
                                .as_ref()
                                .and_then(|s| s.get_ref().1.protocol_version());
                            crate::metrics::tls_handshake(&acceptor, stream.is_some(), version);
                            if let Some(stream) = stream {
                                connection(stream, app, timeout, shutdown).await;
                            }
                        }
                        None => connection(tcp, app, timeout, shutdown).await,
                    }
                });
            }
        });
    }
}

/// One HTTP/1.1 connection: keep-alive, a header timeout per request, a graceful end on
/// shutdown.
async fn connection<S>(
    stream: S,
    app: Router,
    header_timeout: std::time::Duration,
    shutdown: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn).await;
        }
    }
}

/// A JSON error reply: `{"error": "…"}`.
pub(crate) fn error(
    status: axum::http::StatusCode,
    text: impl Into<String>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        status,
        axum::Json(serde_json::json!({ "error": text.into() })),
    )
        .into_response()
}
