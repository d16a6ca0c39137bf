//! `GET /healthz` (the process serves) and `GET /readyz` (the store answers and every
//! listener is bound: what a load balancer in front of several nodes checks).

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use super::Shared;

pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
}

async fn readyz(State(s): State<Shared>) -> (StatusCode, String) {
    if !s.listening.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: listeners are not bound yet\n".into(),
        );
    }
    match tokio::time::timeout(Duration::from_secs(3), s.store.kv_get("health", "ping")).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready\n".into()),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the store does not answer: {e}\n"),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the store did not answer within 3 s\n".into(),
        ),
    }
}
