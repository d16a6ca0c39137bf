//! `GET /metrics` (Prometheus text format 0.0.4, or OpenMetrics when the scraper asks for
//! it) and the dashboard's samples of the last hour (`GET /api/stats`).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use super::Shared;
use crate::metrics::{DomainLabel, m, sum_samples};

/// Seconds between dashboard samples.
pub(super) const INTERVAL: u64 = 30;
/// Samples kept: one hour.
const KEPT: usize = 120;

pub(super) fn routes() -> Router<Shared> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let token = &s.config.http.metrics_token;
    if !token.is_empty() {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Compared as digests: the time taken says nothing about the token's bytes.
        let digest = |t: &str| ring::digest::digest(&ring::digest::SHA256, t.as_bytes());
        let ok = given.is_some_and(|g| digest(g).as_ref() == digest(token).as_ref());
        if !ok {
            let mut r = super::error(
                StatusCode::UNAUTHORIZED,
                "a valid metrics token is required",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
            return r;
        }
    }
    refresh_queue(&s).await;
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            m().openmetrics(),
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            m().prometheus_text(),
        )
            .into_response()
    }
}

/// The queue gauges, read from the store at each scrape (every node sees the whole queue
/// of a shared database).
async fn refresh_queue(s: &Shared) {
    let Ok(queue) = s.store.queue().await else {
        return;
    };
    let now = chrono::Utc::now().timestamp();
    m().queue_entries.set(queue.len() as i64);
    m().queue_oldest_age.set(
        queue
            .iter()
            .map(|e| now - e.created)
            .max()
            .unwrap_or(0)
            .max(0),
    );
    let mut by_domain: HashMap<String, i64> = HashMap::new();
    for e in &queue {
        for r in &e.rcpts {
            let d = r.address.rsplit_once('@').map_or("", |(_, d)| d);
            *by_domain.entry(d.to_lowercase()).or_default() += 1;
        }
    }
    let mut top: Vec<(String, i64)> = by_domain.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top.truncate(10);
    m().queue_domain_recipients.clear();
    for (domain, n) in top {
        m().queue_domain_recipients
            .get_or_create(&DomainLabel { domain })
            .set(n);
    }
}

/// One point of the dashboard.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Sample {
    t: i64,
    connections_open: u64,
    smtp_accepted: u64,
    smtp_rejected: u64,
    smtp_tempfailed: u64,
    rcpt_refused: u64,
    queue_entries: u64,
    deliveries_local: u64,
    deliveries_remote: u64,
    auth_failures: u64,
}

/// The last hour of samples.
#[derive(Default)]
pub(crate) struct Samples(Mutex<VecDeque<Sample>>);

async fn sample(s: &Shared) -> Sample {
    refresh_queue(s).await;
    let text = m().openmetrics();
    let sum = |name: &str, want: &[(&str, &str)]| sum_samples(&text, name, want);
    Sample {
        t: chrono::Utc::now().timestamp(),
        connections_open: sum("corvus_sessions_open", &[]),
        smtp_accepted: sum("corvus_smtp_transactions_total", &[("result", "accepted")]),
        smtp_rejected: sum("corvus_smtp_transactions_total", &[("result", "rejected")]),
        smtp_tempfailed: sum(
            "corvus_smtp_transactions_total",
            &[("result", "tempfailed")],
        ),
        rcpt_refused: sum("corvus_smtp_recipients_refused_total", &[]),
        queue_entries: sum("corvus_queue_entries", &[]),
        deliveries_local: sum("corvus_local_deliveries_total", &[]),
        deliveries_remote: sum("corvus_queue_deliveries_total", &[("result", "delivered")]),
        auth_failures: sum("corvus_auth_attempts_total", &[("result", "failure")]),
    }
}

/// Take a sample every [`INTERVAL`] seconds until `shutdown`.
pub(super) fn start_sampler(s: Shared, shutdown: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        loop {
            let point = sample(&s).await;
            {
                let mut q = s.stats.0.lock().unwrap_or_else(|e| e.into_inner());
                if q.len() == KEPT {
                    q.pop_front();
                }
                q.push_back(point);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(INTERVAL)) => {}
            }
        }
    });
}

/// The samples of the last hour and one taken now.
pub(super) async fn stats(s: &Shared) -> serde_json::Value {
    let mut points: Vec<Sample> = s
        .stats
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect();
    points.push(sample(s).await);
    serde_json::json!({ "interval": INTERVAL, "samples": points })
}
