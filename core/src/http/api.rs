//! The admin API (`/api/`): JSON over HTTP, every request authenticated with
//! `Authorization: Bearer <token>` (`corvus token create`). It does what the CLI does, through
//! the same commands (`admin::execute`), so both check input alike; lists are read from
//! the store directly to answer with structured JSON. Errors are `{"error": "…"}`: 400 bad
//! input, 401 no valid token, 404 unknown, 409 exists, 500 store failure.
//! `/api/openapi.json` describes every route (`ROUTES` is checked against it in tests).

use axum::Json;
use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Shared, error};
use crate::admin::{AdminCommand, AdminError};
use crate::store::StoreError;

/// The OpenAPI description served at `/api/openapi.json`.
const OPENAPI: &str = include_str!("openapi.json");

/// Every route the API answers, as `METHOD /api/path` in OpenAPI's template syntax; the
/// OpenAPI document lists exactly these (tested).
#[cfg(test)]
const ROUTES: &[&str] = &[
    "GET /api/openapi.json",
    "GET /api/users",
    "POST /api/users",
    "DELETE /api/users/{address}",
    "PUT /api/users/{address}/password",
    "GET /api/users/{address}/sieve",
    "GET /api/users/{address}/sieve/{name}",
    "PUT /api/users/{address}/sieve/{name}",
    "DELETE /api/users/{address}/sieve/{name}",
    "PUT /api/users/{address}/active-sieve",
    "GET /api/domains",
    "POST /api/domains",
    "DELETE /api/domains/{domain}",
    "GET /api/domains/{domain}/dns",
    "GET /api/aliases",
    "POST /api/aliases",
    "DELETE /api/aliases/{alias}",
    "GET /api/dkim",
    "POST /api/dkim",
    "GET /api/queue",
    "POST /api/queue/retry",
    "GET /api/queue/{id}",
    "DELETE /api/queue/{id}",
    "POST /api/queue/{id}/retry",
    "POST /api/reload",
    "GET /api/trace/{id}",
    "GET /api/traces",
    "GET /api/stats",
];

pub(super) fn routes(state: Shared) -> Router<Shared> {
    let authed = Router::new()
        .route("/users", get(users).post(user_add))
        .route("/users/{address}", delete(user_del))
        .route("/users/{address}/password", put(user_passwd))
        .route("/users/{address}/sieve", get(sieve_list))
        .route(
            "/users/{address}/sieve/{name}",
            get(sieve_get).put(sieve_put).delete(sieve_delete),
        )
        .route("/users/{address}/active-sieve", put(sieve_activate))
        .route("/domains", get(domains).post(domain_add))
        .route("/domains/{domain}", delete(domain_del))
        .route("/domains/{domain}/dns", get(domain_dns))
        .route("/aliases", get(aliases).post(alias_add))
        .route("/aliases/{alias}", delete(alias_del))
        .route("/dkim", get(dkim_list).post(dkim_generate))
        .route("/queue", get(queue))
        .route("/queue/retry", post(queue_retry_all))
        .route("/queue/{id}", get(queue_show).delete(queue_delete))
        .route("/queue/{id}/retry", post(queue_retry))
        .route("/reload", post(reload))
        .route("/trace/{id}", get(trace))
        .route("/traces", get(traces))
        .route("/stats", get(stats))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such API endpoint") })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "this endpoint does not take that method (see /api/openapi.json)",
            )
        })
        .layer(axum::middleware::from_fn_with_state(state, authenticate));
    Router::new()
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .merge(authed)
}

/// Let through requests with a valid token.
async fn authenticate(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let name = match token {
        Some(t) => match crate::api_tokens::verify(&s.store, t).await {
            Ok(n) => n,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        None => None,
    };
    let Some(name) = name else {
        let why = if token.is_some() {
            "the token is not valid (wrong, or revoked)"
        } else {
            "send Authorization: Bearer <token>; create one with `corvus token create NAME`"
        };
        let mut r = error(StatusCode::UNAUTHORIZED, why);
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
        return r;
    };
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let res = next.run(req).await;
    if method != axum::http::Method::GET {
        tracing::info!(token = %name, %method, path, status = res.status().as_u16(), "admin API");
    }
    res
}

/// The JSON body: an object with the fields of `T`; else 400 with what is wrong with it
/// (413 when it is larger than `[http] max_body`). serde would also read a struct from an
/// array, by position: not here.
fn body<T: serde::de::DeserializeOwned>(
    b: Result<Json<Value>, JsonRejection>,
) -> Result<T, Response> {
    let v = match b {
        Ok(Json(v)) => v,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(error(StatusCode::PAYLOAD_TOO_LARGE, e.body_text()));
        }
        Err(e) => return Err(error(StatusCode::BAD_REQUEST, e.body_text())),
    };
    if !v.is_object() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "the request body must be a JSON object",
        ));
    }
    serde_json::from_value(v)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid request: {e}")))
}

fn status_of(e: &AdminError) -> StatusCode {
    match e {
        AdminError::Usage(_) | AdminError::MailboxIo(_) => StatusCode::BAD_REQUEST,
        AdminError::Store(s) => store_status(s),
    }
}

fn store_status(e: &StoreError) -> StatusCode {
    match e {
        StoreError::NotFound(_) => StatusCode::NOT_FOUND,
        StoreError::Exists(_) => StatusCode::CONFLICT,
        StoreError::Invalid(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn store_error(e: StoreError) -> Response {
    error(store_status(&e), e.to_string())
}

/// Run a CLI command (blocking store calls, on the blocking pool) and make it durable.
async fn run(s: &Shared, cmd: AdminCommand) -> Result<String, Response> {
    let store = s.store.clone();
    let config = s.config.clone();
    let done = tokio::task::spawn_blocking(move || crate::admin::execute(&store, &config, cmd))
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match done {
        Ok(text) => {
            s.store.commit().await.map_err(store_error)?;
            Ok(text)
        }
        Err(e) => Err(error(status_of(&e), e.to_string())),
    }
}

fn ok(status: StatusCode, v: Value) -> Response {
    (status, Json(v)).into_response()
}

type ApiResult = Result<Response, Response>;

async fn users(State(s): State<Shared>) -> ApiResult {
    let mut v: Vec<String> = s
        .store
        .accounts()
        .await
        .map_err(store_error)?
        .into_iter()
        .map(|a| a.address)
        .collect();
    v.sort();
    let list: Vec<Value> = v.into_iter().map(|a| json!({ "address": a })).collect();
    Ok(ok(StatusCode::OK, json!(list)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    address: String,
    password: String,
    #[serde(default)]
    create_domain: bool,
}

async fn user_add(State(s): State<Shared>, b: Result<Json<Value>, JsonRejection>) -> ApiResult {
    let u: NewUser = body(b)?;
    let address = u.address.to_lowercase();
    let message = run(
        &s,
        AdminCommand::UserAdd {
            address: u.address,
            password: u.password,
            create_domain: u.create_domain,
        },
    )
    .await?;
    Ok(ok(
        StatusCode::CREATED,
        json!({ "address": address, "message": message }),
    ))
}

/// 404 unless `address` has an account (the store's delete of a missing one may succeed).
async fn require_user(s: &Shared, address: &str) -> Result<(), Response> {
    match s.store.account(address).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(error(
            StatusCode::NOT_FOUND,
            format!("no user {}", address.to_lowercase()),
        )),
        Err(e) => Err(store_error(e)),
    }
}

async fn user_del(State(s): State<Shared>, Path(address): Path<String>) -> ApiResult {
    require_user(&s, &address).await?;
    let message = run(&s, AdminCommand::UserDel { address }).await?;
    Ok(ok(StatusCode::OK, json!({ "message": message })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Password {
    password: String,
}

async fn user_passwd(
    State(s): State<Shared>,
    Path(address): Path<String>,
    b: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let p: Password = body(b)?;
    require_user(&s, &address).await?;
    let message = run(
        &s,
        AdminCommand::UserPasswd {
            address,
            password: p.password,
        },
    )
    .await?;
    Ok(ok(StatusCode::OK, json!({ "message": message })))
}

/// Local domains: from the config file, then from the store.
async fn local_domains(s: &Shared) -> Result<Vec<(String, &'static str)>, Response> {
    let mut out: Vec<(String, &'static str)> = s
        .config
        .domains
        .iter()
        .map(|d| (d.to_lowercase(), "config"))
        .collect();
    for d in s.store.domains().await.map_err(store_error)? {
        if !out.iter().any(|(o, _)| *o == d) {
            out.push((d, "store"));
        }
    }
    Ok(out)
}

async fn domains(State(s): State<Shared>) -> ApiResult {
    let list: Vec<Value> = local_domains(&s)
        .await?
        .into_iter()
        .map(|(d, source)| json!({ "domain": d, "source": source }))
        .collect();
    Ok(ok(StatusCode::OK, json!(list)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDomain {
    domain: String,
}

async fn domain_add(State(s): State<Shared>, b: Result<Json<Value>, JsonRejection>) -> ApiResult {
    let d: NewDomain = body(b)?;
    let domain = d.domain.to_lowercase();
    if s.config
        .domains
        .iter()
        .any(|c| c.eq_ignore_ascii_case(&domain))
    {
        return Err(error(
            StatusCode::CONFLICT,
            format!("{domain} is already local (set in the config file)"),
        ));
    }
    let message = run(&s, AdminCommand::DomainAdd { domain: d.domain }).await?;
    Ok(ok(
        StatusCode::CREATED,
        json!({ "domain": domain, "message": message }),
    ))
}

async fn domain_del(State(s): State<Shared>, Path(domain): Path<String>) -> ApiResult {
    let known = s.store.domains().await.map_err(store_error)?;
    if !known.contains(&domain.to_lowercase()) {
        let why = if s
            .config
            .domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(&domain))
        {
            format!("{domain} is set in the config file (domains); remove it there")
        } else {
            format!("no local domain {domain}")
        };
        return Err(error(StatusCode::NOT_FOUND, why));
    }
    let message = run(&s, AdminCommand::DomainDel { domain }).await?;
    Ok(ok(StatusCode::OK, json!({ "message": message })))
}

/// The records a local domain should publish, each with what DNS answers now.
async fn domain_dns(State(s): State<Shared>, Path(domain): Path<String>) -> ApiResult {
    let domain = domain.to_lowercase();
    if !local_domains(&s).await?.iter().any(|(d, _)| *d == domain) {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("no local domain {domain}"),
        ));
    }
    let mut records = Vec::new();
    for r in crate::dns_records::expected(&s.config, &s.store, &domain)
        .await
        .map_err(store_error)?
    {
        let answers = crate::dns_records::lookup(&s.resolver, &r.name, r.rtype).await;
        let published = crate::dns_records::of_kind(&r, answers);
        let ok = crate::dns_records::matches(&r, &published);
        records.push(json!({
            "type": r.rtype, "name": r.name, "value": r.value,
            "purpose": r.purpose, "published": published, "ok": ok,
        }));
    }
    Ok(ok_json(json!({ "domain": domain, "records": records })))
}

fn ok_json(v: Value) -> Response {
    ok(StatusCode::OK, v)
}

async fn sieve_list(State(s): State<Shared>, Path(address): Path<String>) -> ApiResult {
    require_user(&s, &address).await?;
    let list: Vec<Value> = crate::sieve::storage::list(&s.store, &address)
        .await
        .map_err(store_error)?
        .into_iter()
        .map(|(name, active)| json!({ "name": name, "active": active }))
        .collect();
    Ok(ok_json(json!(list)))
}

async fn sieve_get(
    State(s): State<Shared>,
    Path((address, name)): Path<(String, String)>,
) -> ApiResult {
    require_user(&s, &address).await?;
    let list = crate::sieve::storage::list(&s.store, &address)
        .await
        .map_err(store_error)?;
    let active = list.iter().any(|(n, a)| *n == name && *a);
    match crate::sieve::storage::get(&s.store, &address, &name)
        .await
        .map_err(store_error)?
    {
        Some(script) => Ok(ok_json(
            json!({ "name": name, "active": active, "script": script }),
        )),
        None => Err(error(
            StatusCode::NOT_FOUND,
            format!("no Sieve script {name}"),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSieve {
    script: String,
    #[serde(default)]
    activate: bool,
}

async fn sieve_put(
    State(s): State<Shared>,
    Path((address, name)): Path<(String, String)>,
    b: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let n: NewSieve = body(b)?;
    require_user(&s, &address).await?;
    let message = run(
        &s,
        AdminCommand::SievePut {
            address,
            name,
            script: n.script,
            activate: n.activate,
        },
    )
    .await?;
    Ok(ok_json(json!({ "message": message })))
}

async fn sieve_delete(
    State(s): State<Shared>,
    Path((address, name)): Path<(String, String)>,
) -> ApiResult {
    require_user(&s, &address).await?;
    if crate::sieve::storage::get(&s.store, &address, &name)
        .await
        .map_err(store_error)?
        .is_none()
    {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("no Sieve script {name}"),
        ));
    }
    let message = run(&s, AdminCommand::SieveDelete { address, name }).await?;
    Ok(ok_json(json!({ "message": message })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActiveSieve {
    name: String,
}

async fn sieve_activate(
    State(s): State<Shared>,
    Path(address): Path<String>,
    b: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let a: ActiveSieve = body(b)?;
    require_user(&s, &address).await?;
    if !a.name.is_empty()
        && crate::sieve::storage::get(&s.store, &address, &a.name)
            .await
            .map_err(store_error)?
            .is_none()
    {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("no Sieve script {}", a.name),
        ));
    }
    let message = run(
        &s,
        AdminCommand::SieveActivate {
            address,
            name: a.name,
        },
    )
    .await?;
    Ok(ok_json(json!({ "message": message })))
}

async fn aliases(State(s): State<Shared>) -> ApiResult {
    let list: Vec<Value> = s
        .store
        .aliases()
        .await
        .map_err(store_error)?
        .into_iter()
        .map(|(a, t)| json!({ "alias": a, "targets": t }))
        .collect();
    Ok(ok_json(json!(list)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAlias {
    alias: String,
    targets: Vec<String>,
}

async fn alias_add(State(s): State<Shared>, b: Result<Json<Value>, JsonRejection>) -> ApiResult {
    let a: NewAlias = body(b)?;
    let alias = a.alias.to_lowercase();
    let message = run(
        &s,
        AdminCommand::AliasAdd {
            alias: a.alias,
            targets: a.targets,
        },
    )
    .await?;
    Ok(ok(
        StatusCode::CREATED,
        json!({ "alias": alias, "message": message }),
    ))
}

async fn alias_del(State(s): State<Shared>, Path(alias): Path<String>) -> ApiResult {
    let known = s.store.aliases().await.map_err(store_error)?;
    if !known.iter().any(|(a, _)| a.eq_ignore_ascii_case(&alias)) {
        return Err(error(StatusCode::NOT_FOUND, format!("no alias {alias}")));
    }
    let message = run(&s, AdminCommand::AliasDel { alias }).await?;
    Ok(ok_json(json!({ "message": message })))
}

fn dkim_json(domain: &str, k: &crate::dkim::DkimKey) -> Value {
    let kind = if k.algorithm == "ed25519" {
        "ed25519"
    } else {
        "rsa"
    };
    json!({
        "domain": domain,
        "selector": k.selector,
        "algorithm": k.algorithm,
        "record_name": format!("{}._domainkey.{domain}.", k.selector),
        "record_value": format!("v=DKIM1; k={kind}; p={}", k.public_key),
    })
}

async fn dkim_list(State(s): State<Shared>) -> ApiResult {
    let mut out = Vec::new();
    for (d, _) in local_domains(&s).await? {
        for k in crate::dkim::keys(&s.store, &d).await.map_err(store_error)? {
            out.push(dkim_json(&d, &k));
        }
    }
    Ok(ok_json(json!(out)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDkim {
    domain: String,
    #[serde(default = "default_selector")]
    selector: String,
    #[serde(default = "default_algorithm")]
    algorithm: String,
}

fn default_selector() -> String {
    "corvus".into()
}

fn default_algorithm() -> String {
    "ed25519".into()
}

async fn dkim_generate(
    State(s): State<Shared>,
    b: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let k: NewDkim = body(b)?;
    let domain = k.domain.to_lowercase();
    let selector = k.selector.clone();
    run(
        &s,
        AdminCommand::DkimGenerate {
            domain: k.domain,
            selector: k.selector,
            algorithm: k.algorithm,
        },
    )
    .await?;
    let keys = crate::dkim::keys(&s.store, &domain)
        .await
        .map_err(store_error)?;
    let key = keys
        .iter()
        .find(|x| x.selector == selector)
        .ok_or_else(|| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the new key is not in the store",
            )
        })?;
    Ok(ok(StatusCode::CREATED, dkim_json(&domain, key)))
}

fn rfc3339(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn queue_json(e: &crate::store::QueueEntry) -> Value {
    json!({
        "id": e.id,
        "sender": e.mail_from,
        "recipients": e.rcpts.iter().map(|r| r.address.clone()).collect::<Vec<_>>(),
        "attempts": e.attempts,
        "created": rfc3339(e.created),
        "next_attempt": rfc3339(e.next_attempt),
        "last_error": e.last_error,
    })
}

async fn queue(State(s): State<Shared>) -> ApiResult {
    let mut q = s.store.queue().await.map_err(store_error)?;
    q.sort_by_key(|e| e.created);
    Ok(ok_json(json!(q.iter().map(queue_json).collect::<Vec<_>>())))
}

async fn queue_entry(s: &Shared, id: &str) -> Result<crate::store::QueueEntry, Response> {
    s.store
        .queue_entry(id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| error(StatusCode::NOT_FOUND, format!("no queue entry {id}")))
}

async fn queue_show(State(s): State<Shared>, Path(id): Path<String>) -> ApiResult {
    let e = queue_entry(&s, &id).await?;
    let msg = s.store.blob(e.blob).await.unwrap_or_default();
    let head = &msg[..crate::message::header_end(&msg)];
    let mut v = queue_json(&e);
    v["decisions"] = json!(e.decisions);
    v["size"] = json!(msg.len());
    v["headers"] = json!(String::from_utf8_lossy(head).trim_end());
    Ok(ok_json(v))
}

async fn queue_delete(State(s): State<Shared>, Path(id): Path<String>) -> ApiResult {
    queue_entry(&s, &id).await?;
    let message = run(&s, AdminCommand::QueueDelete { id }).await?;
    Ok(ok_json(json!({ "message": message })))
}

async fn queue_retry(State(s): State<Shared>, Path(id): Path<String>) -> ApiResult {
    queue_entry(&s, &id).await?;
    let message = run(&s, AdminCommand::QueueFlush { id: Some(id) }).await?;
    s.queue_wakeup.notify_one();
    Ok(ok_json(json!({ "message": message })))
}

async fn queue_retry_all(State(s): State<Shared>) -> ApiResult {
    let message = run(&s, AdminCommand::QueueFlush { id: None }).await?;
    s.queue_wakeup.notify_one();
    Ok(ok_json(json!({ "message": message })))
}

async fn reload(State(s): State<Shared>) -> ApiResult {
    let reload = s.reload.clone();
    match tokio::task::spawn_blocking(move || reload()).await {
        Ok(Ok(text)) => Ok(ok_json(json!({ "message": text }))),
        Ok(Err(text)) => Err(error(StatusCode::BAD_REQUEST, text)),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

async fn trace(State(s): State<Shared>, Path(id): Path<String>) -> ApiResult {
    match crate::trace::get(&s.store, &id)
        .await
        .map_err(store_error)?
    {
        Some(r) => Ok(ok_json(json!(r))),
        None => Err(error(
            StatusCode::NOT_FOUND,
            format!(
                "no trace for {id} (a queue id or a Message-ID; traces are kept for [trace] retention)"
            ),
        )),
    }
}

/// Search parameters as given in the query string (times as RFC 3339 or Unix seconds).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TraceParams {
    sender: Option<String>,
    recipient: Option<String>,
    message_id: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
}

fn parse_time(key: &str, v: &Option<String>) -> Result<Option<i64>, Response> {
    let Some(v) = v.as_deref().map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if let Ok(n) = v.parse::<i64>() {
        return Ok(Some(n));
    }
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|d| Some(d.timestamp()))
        .map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                format!("{key}: {v:?} is not a time; give RFC 3339 (2026-12-07T10:00:00Z) or Unix seconds"),
            )
        })
}

async fn traces(
    State(s): State<Shared>,
    q: Result<Query<TraceParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(p) = q.map_err(|e| error(StatusCode::BAD_REQUEST, e.body_text()))?;
    let query = crate::trace::Query {
        since: parse_time("since", &p.since)?,
        until: parse_time("until", &p.until)?,
        sender: p.sender,
        recipient: p.recipient,
        message_id: p.message_id,
        limit: p.limit,
    };
    let found = crate::trace::search(&s.store, &query)
        .await
        .map_err(store_error)?;
    Ok(ok_json(json!(found)))
}

async fn stats(State(s): State<Shared>) -> ApiResult {
    Ok(ok_json(super::metrics::stats(&s).await))
}

/// The routes the OpenAPI document lists, as `METHOD /api/path`.
#[cfg(test)]
fn documented_routes() -> std::collections::BTreeSet<String> {
    let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
    let mut out = std::collections::BTreeSet::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, ops) in paths {
            for method in ops.as_object().into_iter().flat_map(|o| o.keys()) {
                if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                    out.insert(format!("{} /api{path}", method.to_uppercase()));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn the_openapi_document_lists_exactly_the_routes_served() {
        let served: BTreeSet<String> = ROUTES.iter().map(|r| r.to_string()).collect();
        assert_eq!(documented_routes(), served);
    }
}
