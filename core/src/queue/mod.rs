//! The outbound queue: picks due messages from the store, routes each recipient domain (smart
//! host or MX records), delivers over SMTP, and records the outcome — delivered, retry later
//! (with the configured back-off), or bounced with a DSN. Nothing is dropped silently: an
//! entry leaves the store only once every recipient is delivered or bounced.

pub mod client;
pub mod dsn;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::dns::{MxRoute, host_addresses, mx_hosts};
use crate::hooks::{HookCtx, HookPoint, Verdict};
use crate::store::{QueueEntry, QueueRcpt, StoreError};
use client::{Client, ClientError, RemoteReply, TlsPolicy};
use dsn::RcptStatus;

/// Outcome for one recipient of one attempt.
#[derive(Debug, Clone)]
enum Outcome {
    Delivered(String),
    Temp(String),
    Perm {
        status: String,
        text: String,
        remote: Option<String>,
    },
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Idle connections kept for reuse, per remote address (RFC 5321 allows several
/// transactions per session; reuse saves the TCP and TLS handshakes).
type Pool = Arc<Mutex<HashMap<SocketAddr, Vec<(Client, std::time::Instant)>>>>;

/// How long an idle outbound connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(10);
/// Idle connections kept per remote address.
const POOL_PER_HOST: usize = 4;

fn pool_take(pool: &Pool, addr: SocketAddr) -> Option<Client> {
    let mut g = pool.lock().expect("pool");
    let v = g.get_mut(&addr)?;
    while let Some((c, since)) = v.pop() {
        if since.elapsed() < POOL_IDLE {
            return Some(c);
        }
    }
    None
}

fn pool_put(pool: &Pool, addr: SocketAddr, c: Client) -> Option<Client> {
    let mut g = pool.lock().expect("pool");
    let v = g.entry(addr).or_default();
    if v.len() >= POOL_PER_HOST {
        return Some(c);
    }
    v.push((c, std::time::Instant::now()));
    None
}

/// Close connections idle for too long.
fn pool_reap(pool: &Pool) {
    let mut stale = Vec::new();
    {
        let mut g = pool.lock().expect("pool");
        for v in g.values_mut() {
            let (keep, old): (Vec<_>, Vec<_>) =
                v.drain(..).partition(|(_, t)| t.elapsed() < POOL_IDLE);
            *v = keep;
            stale.extend(old.into_iter().map(|(c, _)| c));
        }
        g.retain(|_, v| !v.is_empty());
    }
    for c in stale {
        tokio::spawn(c.quit());
    }
}

/// How long a claim on a queue entry lasts without renewal (`[store] lease`). The runner
/// renews it every third of that while it delivers, so only a runner that died (or hangs)
/// loses it.
fn lease() -> Duration {
    crate::store::lease::duration()
}

/// What the queue runner uses: settings, the store, DNS, the hooks (`on_delivery` per
/// remote host), the delivery path (local recipients, bounces) and shutdown.
pub struct Deps {
    /// Settings (`[delivery]`, hostname, domains, TLS trust roots).
    pub config: Arc<crate::config::Config>,
    /// The store holding the queue.
    pub store: crate::store::Store,
    /// MX and address lookups.
    pub resolver: hickory_resolver::TokioResolver,
    /// The DNSSEC-validating resolver of DANE (`[dns] dnssec`), if on.
    pub dnssec: Option<hickory_resolver::TokioResolver>,
    /// The hook chain.
    pub hooks: Arc<crate::hooks::HookChain>,
    /// Local deliveries, bounces and delay notices; its wake-up starts a queue run.
    pub delivery: crate::delivery::Delivery,
    /// Fires on shutdown.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// Run the queue until shutdown.
///
/// The runner claims due entries from the store with a lease ([`crate::store::Queue::queue_claim`])
/// instead of reading the whole queue, so several runners over one store never deliver an
/// entry twice at once, and an entry whose runner died is taken over when its lease runs out.
pub async fn run(shared: Arc<Deps>) {
    let pool: Pool = Arc::new(Mutex::new(HashMap::new()));
    let inflight: Arc<Mutex<HashSet<String>>> = Arc::new(Mutex::new(HashSet::new()));
    let slots = shared.config.delivery.max_concurrency.max(1);
    let per_domain: Arc<Mutex<HashMap<String, Arc<Semaphore>>>> =
        Arc::new(Mutex::new(HashMap::new()));
    let owner: Arc<str> = format!(
        "{}{}/{}/{:08x}",
        crate::store::lease::node_prefix(),
        shared.config.hostname,
        std::process::id(),
        rand::random::<u32>()
    )
    .into();
    loop {
        pool_reap(&pool);
        let mut next = now() + 60;
        let free = slots.saturating_sub(inflight.lock().expect("inflight").len());
        match shared
            .store
            .queue_claim(&owner, now(), lease().as_secs() as i64, free)
            .await
        {
            Ok(claimed) => {
                if let Some(t) = claimed.next {
                    next = next.min(t);
                }
                for e in claimed.entries {
                    inflight.lock().expect("inflight").insert(e.id.clone());
                    let (shared, inflight, per_domain, pool, owner) = (
                        shared.clone(),
                        inflight.clone(),
                        per_domain.clone(),
                        pool.clone(),
                        owner.clone(),
                    );
                    tokio::spawn(async move {
                        let id = e.id.clone();
                        tokio::select! {
                            _ = attempt(&shared, e, &owner, &per_domain, &pool) => {}
                            _ = renew(&shared, &id, &owner) => {}
                        }
                        inflight.lock().expect("inflight").remove(&id);
                        shared.delivery.queue_wakeup().notify_one();
                    });
                }
            }
            Err(e) => tracing::error!(error = %e, "reading the queue failed"),
        }
        let wait = Duration::from_secs((next - now()).clamp(1, POOL_IDLE.as_secs() as i64) as u64);
        tokio::select! {
            _ = shared.delivery.queue_wakeup().notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
}

/// Keep the lease on entry `id` while its delivery runs (never returns).
async fn renew(shared: &Deps, id: &str, owner: &str) {
    let mut every = tokio::time::interval(lease() / 3);
    every.tick().await;
    loop {
        every.tick().await;
        let until = now() + lease().as_secs() as i64;
        if let Err(e) = shared.store.queue_renew(id, owner, until).await {
            tracing::warn!(queue_id = id, error = %e, "could not renew the queue lease");
        }
    }
}

/// One delivery attempt for every recipient of `entry`.
async fn attempt(
    shared: &Arc<Deps>,
    entry: QueueEntry,
    owner: &str,
    per_domain: &Mutex<HashMap<String, Arc<Semaphore>>>,
    pool: &Pool,
) {
    use tracing::Instrument;
    let span = tracing::info_span!("delivery", queue_id = %entry.id);
    attempt_in_span(shared, entry, owner, per_domain, pool)
        .instrument(span)
        .await
}

async fn attempt_in_span(
    shared: &Arc<Deps>,
    mut entry: QueueEntry,
    owner: &str,
    per_domain: &Mutex<HashMap<String, Arc<Semaphore>>>,
    pool: &Pool,
) {
    let message = match shared.store.blob(entry.blob).await {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "queued message bytes missing");
            return;
        }
    };
    // DKIM-sign mail from a domain that has a key.
    let sender_domain = entry
        .mail_from
        .rsplit_once('@')
        .map(|(_, d)| d.to_lowercase())
        .unwrap_or_default();
    let signed = crate::dkim::sign(&shared.store, &sender_domain, &message)
        .await
        .map(|h| {
            let mut m = h.into_bytes();
            m.extend_from_slice(&message);
            m
        });
    let mut by_domain: BTreeMap<String, Vec<QueueRcpt>> = BTreeMap::new();
    for r in &entry.rcpts {
        let d = r
            .address
            .rsplit_once('@')
            .map(|(_, d)| d.to_lowercase())
            .unwrap_or_default();
        by_domain.entry(d).or_default().push(r.clone());
    }
    let mut outcomes: Vec<(QueueRcpt, Outcome)> = Vec::new();
    for (domain, rcpts) in by_domain {
        let sem = per_domain
            .lock()
            .expect("per-domain")
            .entry(domain.clone())
            .or_insert_with(|| {
                Arc::new(Semaphore::new(shared.config.delivery.max_per_domain.max(1)))
            })
            .clone();
        let _permit = sem.acquire().await;
        let results = deliver_domain(
            shared,
            &entry,
            &domain,
            &rcpts,
            signed.as_deref().unwrap_or(&message),
            pool,
        )
        .await;
        outcomes.extend(rcpts.into_iter().zip(results));
        // Record the recipients delivered so far at once: a crash before the end of the
        // attempt then re-sends only to the others.
        if outcomes
            .iter()
            .any(|(_, o)| matches!(o, Outcome::Delivered(_)))
        {
            let mut progress = entry.clone();
            progress.rcpts.retain(|r| {
                !outcomes
                    .iter()
                    .any(|(d, o)| d.address == r.address && matches!(o, Outcome::Delivered(_)))
            });
            if let Err(e) = shared.store.queue_save(&progress, owner, false).await {
                tracing::warn!(error = %e, "could not record the delivered recipients");
            }
        }
    }
    finish(shared, &mut entry, owner, outcomes, &message).await;
}

/// Deliver to every recipient in one domain.
async fn deliver_domain(
    shared: &Arc<Deps>,
    entry: &QueueEntry,
    domain: &str,
    rcpts: &[QueueRcpt],
    message: &[u8],
    pool: &Pool,
) -> Vec<Outcome> {
    // Mail for a local domain never leaves over the network.
    if crate::routing::is_local_domain(&shared.store, &shared.config.domains, domain)
        .await
        .unwrap_or(false)
    {
        return deliver_local(shared, entry, rcpts, message).await;
    }
    let cfg = &shared.config.delivery;
    let (hosts, port, relay) = match &cfg.relay {
        Some(r) => {
            let (h, p) = r.rsplit_once(':').unwrap_or((r, "25"));
            (vec![h.to_string()], p.parse().unwrap_or(25), true)
        }
        None => match mx_hosts(&shared.resolver, domain).await {
            MxRoute::Hosts(h) => (h, cfg.port, false),
            MxRoute::NullMx => {
                return perm_all(
                    rcpts,
                    "5.1.10",
                    &format!("Domain {domain} accepts no mail (null MX, RFC 7505)"),
                );
            }
            MxRoute::NoSuchDomain => {
                return perm_all(rcpts, "5.1.2", &format!("Domain {domain} does not exist"));
            }
            MxRoute::TempFail(e) => {
                return vec![
                    Outcome::Temp(format!("DNS lookup for {domain} failed: {e}"));
                    rcpts.len()
                ];
            }
        },
    };
    let mut results: Vec<Option<Outcome>> = vec![None; rcpts.len()];
    let mut last_error = String::from("no mail exchanger could be reached");
    let tls = TlsRules::for_entry(shared, entry, domain, relay, message).await;
    // A REQUIRETLS message waits only for the network; once every host failed the
    // requirement, it bounces (RFC 8689 §4.2.1, 5.7.30).
    let mut requiretls_failed = false;
    let mut network_failed = false;
    // What on_delivery scripts see of the message (DLP, per-destination rules).
    let hook_message = Arc::new(message.to_vec());
    'hosts: for host in &hosts {
        // Delivery hook per recipient, now that the host is known.
        for (i, r) in rcpts.iter().enumerate() {
            if results[i].is_some() {
                continue;
            }
            let mut ctx = HookCtx::new(
                HookPoint::Delivery,
                crate::listener::Listener::Queue,
                std::net::Ipv4Addr::LOCALHOST.into(),
            );
            ctx.mail_from = entry.mail_from.clone();
            ctx.rcpt = r.address.clone();
            ctx.remote_mx = Some(host.clone());
            ctx.message = Some(hook_message.clone());
            let outcome = shared.hooks.run_async(&ctx, None).await;
            if !outcome.steps.is_empty() {
                let steps = outcome
                    .steps
                    .into_iter()
                    .map(|mut s| {
                        s.reason = format!("{} via {host}: {}", r.address, s.reason);
                        s
                    })
                    .collect();
                crate::trace::emit(crate::trace::Event::Steps(entry.id.clone(), steps));
            }
            match outcome.verdict {
                ref v @ Verdict::Reject { code, .. } => {
                    let text = v.wording();
                    results[i] = Some(Outcome::Perm {
                        status: dsn::status_of(code, &text),
                        text: format!("{code} {text}"),
                        remote: None,
                    })
                }
                ref v @ Verdict::Tempfail { code, .. } => {
                    let text = v.wording();
                    results[i] = Some(Outcome::Temp(format!("{code} {text}")))
                }
                Verdict::Discard => {
                    results[i] = Some(Outcome::Delivered("discarded by policy".into()))
                }
                _ => {}
            }
        }
        let need = match tls.host(shared, host).await {
            Ok(need) => need,
            Err(e) => {
                if entry.requiretls {
                    requiretls_failed = true;
                }
                tracing::info!(host, error = %e, "not delivering to this host");
                let kind = if e.starts_with("DANE") {
                    "dnssec-invalid"
                } else {
                    "validation-failure"
                };
                tls.report(shared, None, kind, host, "").await;
                last_error = e;
                continue;
            }
        };
        let addrs = match host_addresses(&shared.resolver, host).await {
            Ok(a) if !a.is_empty() => a,
            Ok(_) => {
                last_error = format!("{host}: no address records");
                network_failed = true;
                continue;
            }
            Err(e) => {
                last_error = format!("{host}: {e}");
                network_failed = true;
                continue;
            }
        };
        for ip in addrs {
            let pending: Vec<usize> = (0..rcpts.len()).filter(|&i| results[i].is_none()).collect();
            if pending.is_empty() {
                break 'hosts;
            }
            let addr = SocketAddr::new(ip, port);
            let reused = match pool_take(pool, addr) {
                // A connection made without a verified certificate is not reused where
                // one is needed.
                Some(c)
                    if (need.verified && !c.verified) || need.dane.is_some() || need.required =>
                {
                    c.quit().await;
                    None
                }
                Some(mut c) => match c.command("RSET", Duration::from_secs(30)).await {
                    Ok(r) if r.ok() => Some(c),
                    _ => None,
                },
                None => None,
            };
            let fresh = reused.is_none();
            let connected = match reused {
                Some(c) => Ok(c),
                None => {
                    let trust_roots = shared.config.tls.trust_roots.as_deref();
                    let policy = if let Some(records) = &need.dane {
                        TlsPolicy::Dane { records }
                    } else if need.required {
                        TlsPolicy::Required { trust_roots }
                    } else if (relay && cfg.relay_require_tls) || need.verified {
                        TlsPolicy::Verified { trust_roots }
                    } else {
                        TlsPolicy::Opportunistic { trust_roots }
                    };
                    let helo = cfg.helo_name.as_deref().unwrap_or(&shared.config.hostname);
                    Client::connect(addr, cfg.source_ip, helo, host, policy).await
                }
            };
            let mut client = match connected {
                Ok(c) => c,
                Err(ClientError::Reply(r)) if r.permanent() && relay => {
                    return fill(results, perm_reply(&r, host));
                }
                Err(e) => {
                    last_error = match &need.why {
                        Some(why) if (need.verified || need.required) && e.is_tls() => {
                            if entry.requiretls {
                                requiretls_failed = true;
                            }
                            let kind = if need.dane.is_some() && !e.to_string().contains("STARTTLS")
                            {
                                "tlsa-invalid"
                            } else {
                                crate::tls_report::result_type(&e.to_string())
                            };
                            tls.report(shared, Some(&need), kind, host, &ip.to_string())
                                .await;
                            format!("{why}: {host} [{ip}]: {e}")
                        }
                        _ => {
                            network_failed = true;
                            format!("{host} [{ip}]: {e}")
                        }
                    };
                    tracing::info!(host, %ip, error = %last_error, "connection failed; trying the next address");
                    continue;
                }
            };
            tracing::debug!(host, %ip, tls = %client.tls, reused = !fresh, "connected");
            // What a TLS report says of this session (a new one; a reused one was counted).
            let mut session_ok = fresh;
            if let Some(why) = &need.testing
                && fresh
                && (!client.verified || !tls.allows(host))
            {
                // A testing policy reports and delivers (RFC 8461 §5).
                tracing::warn!(host, %ip, tls = %client.tls, "{why}: the connection would have failed the policy ({}); delivering anyway", client.tls);
                let kind = match (&client.verify_error, client.tls.as_str()) {
                    (_, "none") => "starttls-not-supported",
                    (Some(e), _) => crate::tls_report::result_type(e),
                    _ => "validation-failure",
                };
                tls.report(shared, Some(&need), kind, host, &ip.to_string())
                    .await;
                session_ok = false;
            }
            if entry.requiretls && !client.has("REQUIRETLS") {
                requiretls_failed = true;
                last_error = format!(
                    "{host} [{ip}] does not support REQUIRETLS, which the sender asked for"
                );
                client.quit().await;
                continue;
            }
            if fresh && relay && cfg.relay_user.is_some() && !client.verified {
                // Credentials go only over TLS whose certificate names the smart host.
                last_error = format!(
                    "{host}: not sending the relay credentials: the connection is not TLS with a \
                     verified certificate ({}); set relay_require_tls, fix the certificate, or \
                     add its CA to tls.trust_roots",
                    client.tls
                );
                tracing::error!(host, %ip, tls = %client.tls, "smart host: credentials not sent over an unverified connection");
                client.quit().await;
                continue;
            }
            if fresh
                && relay
                && let (Some(u), Some(p)) = (&cfg.relay_user, &cfg.relay_password)
                && let Err(e) = client.auth(u, p).await
            {
                last_error = format!("{host}: authentication failed: {e}");
                client.quit().await;
                continue;
            }
            if client
                .size_limit()
                .is_some_and(|l| (message.len() as u64) > l)
            {
                client.quit().await;
                return fill(
                    results,
                    Outcome::Perm {
                        status: "5.3.4".into(),
                        text: format!("Message too big for {host}"),
                        remote: Some(host.clone()),
                    },
                );
            }
            let eight_bit = message.iter().any(|&b| b >= 0x80);
            if entry.smtputf8 && !client.has("SMTPUTF8") {
                client.quit().await;
                return fill(
                    results,
                    Outcome::Perm {
                        status: "5.6.7".into(),
                        text: format!("{host} does not support SMTPUTF8, which this message needs"),
                        remote: Some(host.clone()),
                    },
                );
            }
            let mut params = String::new();
            if client.has("SIZE") {
                params.push_str(&format!(" SIZE={}", message.len()));
            }
            if eight_bit && client.has("8BITMIME") {
                params.push_str(" BODY=8BITMIME");
            }
            if entry.smtputf8 {
                params.push_str(" SMTPUTF8");
            }
            if entry.requiretls {
                params.push_str(" REQUIRETLS");
            }
            let dsn = client.has("DSN");
            if dsn {
                if let Some(r) = &entry.ret {
                    params.push_str(&format!(" RET={r}"));
                }
                if let Some(e) = &entry.envid {
                    params.push_str(&format!(" ENVID={}", xtext(e)));
                }
            }
            let rcpt_args: Vec<(String, String)> = pending
                .iter()
                .map(|&i| {
                    let r = &rcpts[i];
                    let mut p = String::new();
                    if dsn {
                        if !r.notify.is_empty() {
                            p.push_str(&format!(" NOTIFY={}", r.notify.join(",")));
                        }
                        if let Some(o) = &r.orcpt {
                            let (t, a) = o.split_once(';').unwrap_or(("rfc822", o));
                            p.push_str(&format!(" ORCPT={t};{}", xtext(a)));
                        }
                    }
                    (r.address.clone(), p)
                })
                .collect();
            match client
                .send(&entry.mail_from, &params, &rcpt_args, message)
                .await
            {
                Ok(replies) => {
                    if session_ok && (need.verified || need.testing.is_some()) {
                        tls.report_success(shared, &need).await;
                    }
                    for (&i, reply) in pending.iter().zip(replies) {
                        if reply.ok() {
                            results[i] = Some(Outcome::Delivered(format!(
                                "{host} [{ip}] tls {}: {reply}",
                                client.tls
                            )));
                        } else if reply.permanent() {
                            results[i] = Some(perm_reply(&reply, host));
                        } else {
                            last_error = format!("{host} [{ip}]: {reply}");
                        }
                    }
                    if let Some(extra) = pool_put(pool, addr, client) {
                        extra.quit().await;
                    }
                }
                Err(e) => {
                    last_error = format!("{host} [{ip}]: {e}");
                    continue;
                }
            }
        }
    }
    if entry.requiretls && requiretls_failed && !network_failed {
        let text = format!("REQUIRETLS support required: {last_error}");
        return fill(
            results,
            Outcome::Perm {
                status: "5.7.30".into(),
                text,
                remote: None,
            },
        );
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Outcome::Temp(last_error.clone())))
        .collect()
}

/// What TLS delivery to one destination needs: from the domain's MTA-STS policy, the
/// message's REQUIRETLS or `TLS-Required: No`, and the smart host settings.
struct TlsRules {
    domain: String,
    /// The policy to apply, if any.
    policy: Option<crate::mta_sts::Policy>,
    /// REQUIRETLS on the message.
    requiretls: bool,
    /// A smart host delivers (MX policies do not apply).
    relay: bool,
    /// `TLS-Required: No` (RFC 8689 §5): policies are not enforced.
    optional: bool,
    /// Whether the MX RRset is DNSSEC-secure (DANE applies to its hosts); an error when its
    /// lookup was bogus. `Ok(false)` when DNSSEC is off.
    secure_mx: Result<bool, String>,
}

/// The TLS one host needs.
struct HostTls {
    /// TLS with a certificate valid for the host name, or no delivery.
    verified: bool,
    /// DANE: TLS with a certificate matching these TLSA records, or no delivery (it wins
    /// over MTA-STS, RFC 8461 §2).
    dane: Option<Vec<crate::dane::Tlsa>>,
    /// TLS required without authentication (TLSA records exist, none usable).
    required: bool,
    /// Why (for the failure text), when `verified`.
    why: Option<String>,
    /// A testing-mode policy applies: report what would have failed.
    testing: Option<String>,
}

impl TlsRules {
    /// Whether the policy (if any) lists MX `host`.
    fn allows(&self, host: &str) -> bool {
        self.policy.as_ref().is_none_or(|p| p.allows(host))
    }

    /// The policy a TLS report files a session under: the host's DANE records, else the
    /// domain's MTA-STS policy.
    fn report_policy(&self, need: Option<&HostTls>) -> Option<crate::tls_report::PolicyDesc> {
        if let Some(records) = need.and_then(|n| n.dane.as_ref()) {
            let lines = records
                .iter()
                .map(|r| {
                    let hex: String = r.data.iter().map(|b| format!("{b:02x}")).collect();
                    format!("{} {} {} {hex}", r.usage, r.selector, r.matching)
                })
                .collect();
            return Some(crate::tls_report::PolicyDesc {
                kind: "tlsa".into(),
                lines,
                domain: self.domain.clone(),
                mx: Vec::new(),
            });
        }
        self.policy
            .as_ref()
            .map(|p| crate::tls_report::PolicyDesc::sts(&self.domain, p))
    }

    /// Count a failed session for TLS reports.
    async fn report(&self, shared: &Deps, need: Option<&HostTls>, kind: &str, mx: &str, ip: &str) {
        let desc = match (self.report_policy(need), kind) {
            (Some(d), _) => d,
            // A DANE lookup that failed has no records to name.
            (None, "dnssec-invalid") => crate::tls_report::PolicyDesc {
                kind: "tlsa".into(),
                lines: Vec::new(),
                domain: self.domain.clone(),
                mx: Vec::new(),
            },
            (None, _) => return,
        };
        let outcome = crate::tls_report::Outcome::Failure { kind, mx, ip };
        crate::tls_report::record(&shared.store, &shared.config, &desc, outcome).await;
    }

    /// Count a session that went as the policy asks.
    async fn report_success(&self, shared: &Deps, need: &HostTls) {
        if let Some(desc) = self.report_policy(Some(need)) {
            let outcome = crate::tls_report::Outcome::Success;
            crate::tls_report::record(&shared.store, &shared.config, &desc, outcome).await;
        }
    }

    /// What delivery to MX `host` needs: DANE when the host has secure TLSA records (it wins
    /// over MTA-STS, RFC 8461 §2), else [`TlsRules::for_host`].
    async fn host(&self, shared: &Deps, host: &str) -> Result<HostTls, String> {
        if let Err(e) = &self.secure_mx {
            return Err(format!("DANE: {e}; not delivering to {host} now"));
        }
        if self.secure_mx == Ok(true)
            && let Some(resolver) = &shared.dnssec
        {
            match crate::dns::dane(resolver, host).await {
                crate::dns::Dane::Tlsa(records) => {
                    let usable: Vec<_> = records.into_iter().filter(|r| r.usable()).collect();
                    if !usable.is_empty() {
                        return Ok(HostTls {
                            verified: true,
                            why: Some(format!("DANE (TLSA records of {host})")),
                            dane: Some(usable),
                            required: false,
                            testing: None,
                        });
                    }
                    // TLSA records say the server does TLS; none says how to check it
                    // (RFC 7672 §3.1.3): TLS, unauthenticated, or no delivery.
                    return Ok(HostTls {
                        verified: false,
                        why: Some(format!(
                            "DANE (only unusable TLSA records for {host}: TLS required, unauthenticated)"
                        )),
                        dane: None,
                        required: true,
                        testing: None,
                    });
                }
                crate::dns::Dane::Failed(e) => {
                    return Err(format!("DANE: {e}; not delivering to {host} now"));
                }
                crate::dns::Dane::None => {}
            }
        }
        self.for_host(host)
    }

    async fn for_entry(
        shared: &Deps,
        entry: &QueueEntry,
        domain: &str,
        relay: bool,
        message: &[u8],
    ) -> TlsRules {
        let optional = !entry.requiretls && tls_required_no(message);
        let cfg = &shared.config.delivery;
        let lookup = !relay && (cfg.mta_sts || entry.requiretls);
        let policy = if lookup {
            let l = crate::mta_sts::lookup(
                &shared.resolver,
                &shared.store,
                shared.config.tls.trust_roots.as_deref(),
                cfg.mta_sts_port,
                cfg.mta_sts_timeout,
                domain,
            )
            .await;
            if let (Some(kind), None) = (l.problem_kind, &l.policy) {
                // No policy to apply: the report says the fetch failed.
                let desc = crate::tls_report::PolicyDesc {
                    kind: "sts".into(),
                    lines: Vec::new(),
                    domain: domain.to_string(),
                    mx: Vec::new(),
                };
                let outcome = crate::tls_report::Outcome::Failure {
                    kind,
                    mx: "",
                    ip: "",
                };
                crate::tls_report::record(&shared.store, &shared.config, &desc, outcome).await;
            }
            if let Some(p) = &l.problem {
                crate::trace::emit(crate::trace::Event::Steps(
                    entry.id.clone(),
                    vec![crate::trace::Step::now(
                        "delivery",
                        "mta-sts",
                        "problem",
                        p.clone(),
                    )],
                ));
            }
            l.policy
        } else {
            None
        };
        let secure_mx = match (&shared.dnssec, relay || optional) {
            (Some(r), false) => crate::dns::secure_mx(r, domain).await,
            _ => Ok(false),
        };
        TlsRules {
            domain: domain.to_string(),
            policy,
            requiretls: entry.requiretls,
            relay,
            optional,
            secure_mx,
        }
    }

    /// What delivery to MX `host` needs, or why it must not go there.
    fn for_host(&self, host: &str) -> Result<HostTls, String> {
        let d = &self.domain;
        if self.requiretls {
            if self.relay {
                return Ok(HostTls {
                    dane: None,
                    required: false,
                    verified: true,
                    why: Some("REQUIRETLS".into()),
                    testing: None,
                });
            }
            return match &self.policy {
                Some(p) if p.allows(host) => Ok(HostTls {
                    dane: None,
                    required: false,
                    verified: true,
                    why: Some(format!("REQUIRETLS (MTA-STS policy of {d})")),
                    testing: None,
                }),
                Some(_) => Err(format!(
                    "REQUIRETLS: MX host {host} is not in the MTA-STS policy of {d}"
                )),
                None => Err(format!(
                    "REQUIRETLS: {d} publishes no MTA-STS policy that would authenticate MX host {host}"
                )),
            };
        }
        let Some(p) = self.policy.as_ref().filter(|_| !self.optional) else {
            return Ok(HostTls {
                dane: None,
                required: false,
                verified: false,
                why: None,
                testing: None,
            });
        };
        match p.mode {
            crate::mta_sts::Mode::Enforce if !p.allows(host) => Err(format!(
                "MTA-STS policy of {d} (enforce): MX host {host} is not one of {}",
                p.mx.join(", ")
            )),
            crate::mta_sts::Mode::Enforce => Ok(HostTls {
                dane: None,
                required: false,
                verified: true,
                why: Some(format!("MTA-STS policy of {d} (enforce)")),
                testing: None,
            }),
            _ => {
                let why = format!("MTA-STS policy of {d} (testing)");
                if !p.allows(host) {
                    tracing::warn!(
                        host,
                        domain = d,
                        "{why}: MX host not in the policy; delivering anyway"
                    );
                }
                Ok(HostTls {
                    dane: None,
                    required: false,
                    verified: false,
                    why: None,
                    testing: Some(why),
                })
            }
        }
    }
}

/// Whether the message's header says `TLS-Required: No` (RFC 8689 §5).
fn tls_required_no(message: &[u8]) -> bool {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(message.len());
    message[..end].split(|&b| b == b'\n').any(|line| {
        let line = String::from_utf8_lossy(line);
        line.split_once(':').is_some_and(|(k, v)| {
            k.eq_ignore_ascii_case("TLS-Required") && v.trim().eq_ignore_ascii_case("no")
        })
    })
}

fn fill(results: Vec<Option<Outcome>>, o: Outcome) -> Vec<Outcome> {
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| o.clone()))
        .collect()
}

fn perm_all(rcpts: &[QueueRcpt], status: &str, text: &str) -> Vec<Outcome> {
    vec![
        Outcome::Perm {
            status: status.into(),
            text: text.into(),
            remote: None
        };
        rcpts.len()
    ]
}

fn perm_reply(r: &RemoteReply, host: &str) -> Outcome {
    Outcome::Perm {
        status: dsn::status_of(r.code, &r.text),
        text: r.to_string(),
        remote: Some(host.to_string()),
    }
}

/// Local recipients of a queued message go through the one delivery path (`on_delivery`,
/// folders, Junk) in one write; an alias target in another domain becomes a new queue
/// entry inside that same write.
async fn deliver_local(
    shared: &Arc<Deps>,
    entry: &QueueEntry,
    rcpts: &[QueueRcpt],
    message: &[u8],
) -> Vec<Outcome> {
    let mut outcomes: Vec<Option<Outcome>> = vec![None; rcpts.len()];
    let mut local = Vec::new();
    for (i, r) in rcpts.iter().enumerate() {
        match crate::routing::resolve(
            &shared.store,
            &shared.config.domains,
            shared.config.postmaster.as_deref(),
            &r.address,
        )
        .await
        {
            Ok(route @ crate::hooks::Route::Local(_)) => local.push((
                i,
                crate::delivery::Recipient {
                    address: r.address.clone(),
                    route,
                    notify: r.notify.clone(),
                    orcpt: r.orcpt.clone(),
                    file_into: None,
                },
            )),
            Ok(_) => {
                outcomes[i] = Some(Outcome::Perm {
                    status: "5.1.1".into(),
                    text: "550 5.1.1 No such user here".into(),
                    remote: None,
                })
            }
            Err(e) => outcomes[i] = Some(Outcome::Temp(e.to_string())),
        }
    }
    if !local.is_empty() {
        let recipients: Vec<_> = local.iter().map(|(_, r)| r.clone()).collect();
        let message = Arc::new(message.to_vec());
        let ctx = crate::delivery::queue_ctx(&entry.mail_from, &recipients);
        let result = match shared
            .delivery
            .plan(&ctx, None, &message, &recipients, false, true)
            .await
        {
            Err(t) => Err(t.to_string()),
            Ok(mut plan) => {
                let generated = std::mem::take(&mut plan.generated);
                let mut forward = crate::delivery::queue_entry(
                    &crate::delivery::new_queue_id(),
                    &entry.mail_from,
                    Vec::new(),
                    now(),
                );
                forward.ret = entry.ret.clone();
                forward.envid = entry.envid.clone();
                forward.smtputf8 = entry.smtputf8;
                forward.decisions = vec![format!("forwarded from queue entry {}", entry.id)];
                let (filed, steps) = (plan.filed.clone(), plan.steps.clone());
                let ingest = plan.into_ingest(&entry.mail_from, now(), Some((forward, message)));
                match shared.delivery.ingest(ingest).await {
                    Ok(_) => {
                        shared.delivery.send_generated(generated).await;
                        crate::trace::emit(crate::trace::Event::Steps(entry.id.clone(), steps));
                        crate::trace::emit(crate::trace::Event::Filed(entry.id.clone(), filed));
                        Ok(())
                    }
                    Err(e) => Err(format!("local delivery failed: {e}")),
                }
            }
        };
        for (i, _) in &local {
            outcomes[*i] = Some(match &result {
                Ok(()) => Outcome::Delivered("local".into()),
                Err(e) => Outcome::Temp(e.clone()),
            });
        }
    }
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Outcome::Temp("not attempted".into())))
        .collect()
}

/// Record the attempt: drop finished recipients, bounce failures, schedule a retry.
async fn finish(
    shared: &Arc<Deps>,
    entry: &mut QueueEntry,
    owner: &str,
    outcomes: Vec<(QueueRcpt, Outcome)>,
    message: &[u8],
) {
    let cfg = &shared.config.delivery;
    entry.attempts += 1;
    let expired = now() - entry.created >= cfg.expire.as_secs() as i64;
    let mut bounces = Vec::new();
    let mut remaining = Vec::new();
    trace_attempt(&entry.id, &outcomes, expired);
    for (rcpt, o) in outcomes {
        match o {
            Outcome::Delivered(how) => tracing::info!(rcpt = %rcpt.address, %how, "delivered"),
            Outcome::Perm {
                status,
                text,
                remote,
            } => {
                tracing::info!(rcpt = %rcpt.address, %text, "permanent failure");
                bounces.push(RcptStatus {
                    rcpt,
                    action: "failed",
                    status,
                    remote_mta: remote,
                    diagnostic: text,
                });
            }
            Outcome::Temp(text) if expired => {
                tracing::info!(rcpt = %rcpt.address, %text, "expired in the queue");
                let diag = format!("Delivery gave up after {} attempts: {text}", entry.attempts);
                bounces.push(RcptStatus {
                    rcpt,
                    action: "failed",
                    status: "4.4.7".into(),
                    remote_mta: None,
                    diagnostic: diag,
                });
            }
            Outcome::Temp(text) => {
                tracing::info!(rcpt = %rcpt.address, %text, "temporary failure; will retry");
                entry.last_error = Some(text);
                remaining.push(rcpt);
            }
        }
    }
    // A bounce for every failed recipient that asked for one, never for the null sender.
    let wanted: Vec<RcptStatus> = bounces
        .into_iter()
        .filter(|b| dsn::wants(&b.rcpt, b.action))
        .collect();
    if !wanted.is_empty() && !entry.mail_from.is_empty() {
        let bounce = dsn::build(&shared.config.hostname, entry, &wanted, message);
        match send_bounce(shared, &entry.mail_from, entry.requiretls, bounce).await {
            Ok(dsn_id) => trace_dsn(entry, &dsn_id, "failed", wanted.iter().map(|b| &b.rcpt)),
            Err(e) => tracing::error!(error = %e, "could not queue the bounce"),
        }
    }
    // Optional delay warning, once, to senders who did not opt out (RFC 3461 NOTIFY=DELAY).
    if let Some(after) = cfg.delay_warning
        && !entry.warned
        && !entry.mail_from.is_empty()
        && !remaining.is_empty()
        && now() - entry.created >= after.as_secs() as i64
    {
        let delayed: Vec<RcptStatus> = remaining
            .iter()
            .filter(|r| r.notify.is_empty() || dsn::wants(r, "delayed"))
            .map(|r| RcptStatus {
                rcpt: r.clone(),
                action: "delayed",
                status: "4.4.7".into(),
                remote_mta: None,
                diagnostic: entry.last_error.clone().unwrap_or_default(),
            })
            .collect();
        if !delayed.is_empty() {
            let notice = dsn::build(&shared.config.hostname, entry, &delayed, message);
            match send_bounce(shared, &entry.mail_from, entry.requiretls, notice).await {
                Ok(dsn_id) => trace_dsn(entry, &dsn_id, "delayed", delayed.iter().map(|b| &b.rcpt)),
                Err(e) => tracing::error!(error = %e, "could not queue the delay warning"),
            }
        }
        entry.warned = true;
    }
    entry.rcpts = remaining;
    let result = if entry.rcpts.is_empty() {
        shared.store.queue_complete(&entry.id, owner)
    } else {
        let idx = (entry.attempts as usize - 1).min(cfg.retry.len().saturating_sub(1));
        let delay = cfg
            .retry
            .get(idx)
            .copied()
            .unwrap_or(Duration::from_secs(300));
        entry.next_attempt = now() + delay.as_secs() as i64;
        shared.store.queue_save(entry, owner, true)
    };
    match result.await {
        Ok(()) => {}
        Err(StoreError::NotFound(_)) => {
            tracing::info!("the entry was deleted from the queue during the delivery attempt");
        }
        Err(StoreError::Invalid(e)) => tracing::warn!(error = %e, "lease lost during the attempt"),
        Err(e) => tracing::error!(error = %e, "updating the queue failed"),
    }
    let _ = shared.store.commit().await;
}

/// One attempt's results in the message trace and the delivery metrics: one entry per
/// distinct result.
fn trace_attempt(id: &str, outcomes: &[(QueueRcpt, Outcome)], expired: bool) {
    let mut groups: Vec<crate::trace::Attempt> = Vec::new();
    for (rcpt, o) in outcomes {
        let (result, text, host) = match o {
            Outcome::Delivered(t) => ("delivered", t.clone(), None),
            Outcome::Perm {
                text,
                status,
                remote,
            } => ("bounced", format!("{status} {text}"), remote.clone()),
            Outcome::Temp(t) if expired => ("bounced", format!("expired: {t}"), None),
            Outcome::Temp(t) => ("deferred", t.clone(), None),
        };
        crate::metrics::m()
            .queue_deliveries
            .get_or_create(&crate::metrics::ResultLabel { result })
            .inc();
        match groups
            .iter_mut()
            .find(|g| g.result == result && g.reply == text)
        {
            Some(g) => g.recipients.push(rcpt.address.clone()),
            None => {
                // A reached host: "host [ip] tls X: reply" or "host [ip]: reply".
                let (mx, tls) = match (text.find(" ["), text.find(']')) {
                    (Some(a), Some(b)) if a < b && !text[..a].contains(' ') => {
                        let tls = text[b + 1..]
                            .strip_prefix(" tls ")
                            .and_then(|t| t.split_once(": "))
                            .map(|(t, _)| t.to_string())
                            .filter(|t| t != "none");
                        (Some(text[..=b].to_string()), tls)
                    }
                    _ => (host, None),
                };
                groups.push(crate::trace::Attempt {
                    at: crate::trace::now_rfc3339(),
                    recipients: vec![rcpt.address.clone()],
                    mx,
                    tls,
                    reply: crate::trace::clip(&text),
                    result: result.to_string(),
                });
            }
        }
    }
    for g in groups {
        crate::trace::emit(crate::trace::Event::Attempt(id.to_string(), g));
    }
}

/// A DSN sent for `entry`, in the trace and the metrics.
fn trace_dsn<'a>(
    entry: &QueueEntry,
    dsn_id: &str,
    action: &'static str,
    rcpts: impl Iterator<Item = &'a QueueRcpt>,
) {
    crate::metrics::m()
        .dsns
        .get_or_create(&crate::metrics::ResultLabel { result: action })
        .inc();
    let list: Vec<&str> = rcpts.map(|r| r.address.as_str()).collect();
    crate::trace::emit(crate::trace::Event::Steps(
        entry.id.clone(),
        vec![crate::trace::Step {
            at: crate::trace::now_rfc3339(),
            stage: "dsn".into(),
            engine: "queue".into(),
            verdict: action.into(),
            reason: format!(
                "DSN ({action}) {dsn_id} sent to <{}> for {}",
                entry.mail_from,
                list.join(", ")
            ),
            micros: 0,
        }],
    ));
}

/// Deliver a bounce or delay notice from `<>`: through the one delivery path (the sender's
/// mailbox when local, else the queue). Its queue id.
/// Queue a DSN to `to`; one about a REQUIRETLS message goes with REQUIRETLS too.
async fn send_bounce(
    shared: &Arc<Deps>,
    to: &str,
    requiretls: bool,
    bounce: Vec<u8>,
) -> Result<String, StoreError> {
    let rcpt = QueueRcpt {
        address: to.to_string(),
        notify: vec![],
        orcpt: None,
    };
    let mut entry =
        crate::delivery::queue_entry(&crate::delivery::new_queue_id(), "", vec![rcpt], now());
    entry.smtputf8 = !to.is_ascii();
    entry.decisions = vec!["bounce".into()];
    entry.warned = true;
    entry.requiretls = requiretls;
    let id = entry.id.clone();
    shared
        .delivery
        .deliver_generated(entry, bounce)
        .await
        .map(|_| id)
}

/// RFC 3461 xtext encoding.
fn xtext(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if (33..=126).contains(&b) && b != b'+' && b != b'=' {
                (b as char).to_string()
            } else {
                format!("+{b:02X}")
            }
        })
        .collect()
}
