//! The web console (`/admin/`): a few static files compiled into the binary, plain HTML,
//! CSS and JavaScript that talk to the admin API. No cookies: the console keeps the API
//! token in the tab's sessionStorage and sends it as `Authorization: Bearer`, so a
//! request forged by another site carries no credentials (CSRF). The strict
//! Content-Security-Policy allows scripts, styles and requests from this origin only.
//!
//! `CORVUS_CONSOLE_DIR=/path` serves the files from that directory instead (for working
//! on the console without rebuilding).

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use super::Shared;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The embedded files.
const FILES: &[(&str, &[u8])] = &[
    ("index.html", include_bytes!("console/index.html")),
    ("app.js", include_bytes!("console/app.js")),
    ("app.css", include_bytes!("console/app.css")),
];

pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/admin/") }))
        .route("/admin", get(|| async { Redirect::to("/admin/") }))
        .route("/admin/", get(|| file(Path("index.html".to_string()))))
        .route("/admin/{name}", get(file))
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, e)| e) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

async fn file(Path(name): Path<String>) -> Response {
    let safe = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !safe {
        return StatusCode::NOT_FOUND.into_response();
    }
    let body: Option<Vec<u8>> = match std::env::var_os("CORVUS_CONSOLE_DIR") {
        Some(dir) => std::fs::read(std::path::Path::new(&dir).join(&name)).ok(),
        None => FILES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, b)| b.to_vec()),
    };
    let Some(body) = body else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut r = ([(header::CONTENT_TYPE, content_type(&name))], body).into_response();
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    r
}
