//! What the HTTP listeners publish to the world without a token: this server's MTA-STS
//! policy (`/.well-known/mta-sts.txt`, RFC 8461 §3.2, served on the `mta-sts.<domain>`
//! host) and client autoconfiguration (Thunderbird's `config-v1.1.xml` at both its paths,
//! Outlook's autodiscover POST, an Apple `.mobileconfig` for one address). Answers name
//! only local domains; anything else is 404.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::Shared;

pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/.well-known/mta-sts.txt", get(mta_sts))
        .route("/mail/config-v1.1.xml", get(thunderbird))
        .route(
            "/.well-known/autoconfig/mail/config-v1.1.xml",
            get(thunderbird),
        )
        .route("/autodiscover/autodiscover.xml", post(autodiscover))
        .route("/Autodiscover/Autodiscover.xml", post(autodiscover))
        .route("/mail/mobileconfig", get(mobileconfig))
        .route("/.well-known/acme-challenge/{token}", get(acme_http))
}

/// HTTP-01 (RFC 8555 §8.3): the key authorization of a pending challenge, from the store
/// (any node can answer).
async fn acme_http(
    State(s): State<Shared>,
    axum::extract::Path(token): axum::extract::Path<String>,
) -> Response {
    let valid = !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return not_found("no such challenge".into());
    }
    match s.store.kv_get(crate::acme::HTTP_NS, &token).await {
        Ok(Some(v)) => {
            let mut r = text(StatusCode::OK, String::from_utf8_lossy(&v).into_owned());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            r
        }
        _ => not_found("no such challenge".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

fn not_found(what: String) -> Response {
    text(StatusCode::NOT_FOUND, format!("{what}\n"))
}

/// The host the client asked for, lower case, without port.
fn host(headers: &HeaderMap) -> String {
    let h = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let h = match h.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => h,
    };
    h.trim_end_matches('.').to_ascii_lowercase()
}

/// `Ok` when `address` is at a local domain, else the 404 to answer.
async fn local_address(s: &Shared, address: &str) -> Result<(), Response> {
    let domain = address
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default();
    if is_local(s, &domain).await {
        Ok(())
    } else {
        Err(not_found(format!(
            "{domain} is not a domain of this server"
        )))
    }
}

async fn is_local(s: &Shared, domain: &str) -> bool {
    crate::routing::is_local_domain(&s.store, &s.config.domains, domain)
        .await
        .unwrap_or(false)
}

/// The policy, for `mta-sts.<local domain>`; asked by another name (the server's own, an
/// address) it is served too: it is the same for every domain.
async fn mta_sts(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let host = host(&headers);
    if let Some(domain) = host.strip_prefix("mta-sts.")
        && !is_local(&s, domain).await
    {
        return not_found(format!("{domain} is not a domain of this server"));
    }
    let mut r = text(StatusCode::OK, crate::mta_sts::published(&s.config));
    // Senders cache by max_age themselves; a short HTTP lifetime keeps edits visible.
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=300"),
    );
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

#[derive(Deserialize)]
struct Address {
    emailaddress: Option<String>,
}

/// Thunderbird asks `autoconfig.<domain>/mail/config-v1.1.xml?emailaddress=…` and
/// `<domain>/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=…`.
async fn thunderbird(
    State(s): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<Address>,
) -> Response {
    let domain = match q.emailaddress.as_deref() {
        Some(a) if crate::autoconfig::valid_address(a) => a
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default(),
        Some(_) => {
            return text(
                StatusCode::BAD_REQUEST,
                "emailaddress is not an address\n".into(),
            );
        }
        None => {
            let h = host(&headers);
            h.strip_prefix("autoconfig.").unwrap_or(&h).to_string()
        }
    };
    if !is_local(&s, &domain).await {
        return not_found(format!("{domain} is not a domain of this server"));
    }
    xml(
        "application/xml; charset=utf-8",
        crate::autoconfig::thunderbird(&s.config, &domain),
    )
}

fn xml(content_type: &'static str, body: String) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Outlook POSTs a request naming `EMailAddress`; the answer lists the IMAP/POP3/SMTP
/// settings.
async fn autodiscover(State(s): State<Shared>, body: Bytes) -> Response {
    let request = String::from_utf8_lossy(&body);
    let Some(address) = crate::autoconfig::autodiscover_address(&request) else {
        return text(
            StatusCode::BAD_REQUEST,
            "the request names no EMailAddress\n".into(),
        );
    };
    if let Err(r) = local_address(&s, &address).await {
        return r;
    }
    xml(
        "application/xml; charset=utf-8",
        crate::autoconfig::autodiscover(&s.config, &address),
    )
}

/// `GET /mail/mobileconfig?emailaddress=…`: a profile to download on an Apple device.
async fn mobileconfig(State(s): State<Shared>, Query(q): Query<Address>) -> Response {
    let Some(address) = q
        .emailaddress
        .filter(|a| crate::autoconfig::valid_address(a))
    else {
        return text(
            StatusCode::BAD_REQUEST,
            "give ?emailaddress=user@domain\n".into(),
        );
    };
    if let Err(r) = local_address(&s, &address).await {
        return r;
    }
    let Some(profile) = crate::autoconfig::mobileconfig(&s.config, &address) else {
        return not_found("this server has no IMAP or POP3 and submission listeners".into());
    };
    let mut r = xml("application/x-apple-aspen-config", profile);
    let file = format!(
        "attachment; filename=\"{}.mobileconfig\"",
        address.replace(['"', '\\', '/'], "_")
    );
    if let Ok(v) = HeaderValue::from_str(&file) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    r
}
