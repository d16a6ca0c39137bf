//! Inbound sender authentication on the `smtp` listener: SPF (RFC 7208) for the MAIL FROM
//! domain and the HELO name, DKIM (RFC 6376, RFC 8463) for every signature, DMARC (RFC 7489,
//! with the organizational domain of RFC 9989's tree walk guarded by [`psl`]), ARC (RFC 8617)
//! chain validation and sealing of forwarded mail, and the `Authentication-Results` header
//! (RFC 8601) that records it all.
//!
//! The checks run through mail-auth on the server's hickory resolver, with parsed records
//! cached within their TTL ([`cache`]) and every check bounded in time
//! (`sender_auth.timeout`). mail-auth itself bounds SPF to 10 DNS-querying mechanisms (and 10
//! MX names per `mx`), and ARC chains to 50 sets; Corvus adds SPF's limit of two void lookups
//! (RFC 7208 §4.6.4, [`cache::void_lookups`]) and bounds DKIM signatures per message
//! (`sender_auth.max_dkim_signatures`). DMARC `pct=` (RFC 7489 §6.6.4), which mail-auth's
//! DMARCbis parser drops, is applied here too ([`sample_policy`]).
//!
//! Policy (what the session does with the results) is in [`Checked::action`]: DMARC
//! `p=reject` → 550 5.7.1, `p=quarantine` → Junk, per `[sender_auth]` and its per-domain
//! overrides; a hook that returns `accept` at the data point overrides it.

pub mod cache;
pub mod headers;
pub mod psl;
pub mod report;
pub mod seal;
mod spf;

use std::fmt::Write as _;
use std::future::Future;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use mail_auth::dkim::DkimError;
use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcOutput,
    DmarcResult, Error, MessageAuthenticator, SpfOutput, SpfResult,
};

use crate::config::{Config, DmarcMode};
use cache::Caches;
use headers::{comment_text, pvalue};

/// Most DNS lookups in one SPF evaluation that may return no answer (RFC 7208 §4.6.4).
pub const MAX_VOID_LOOKUPS: usize = 2;

/// Results for hooks and scripts: each result as its RFC 8601 keyword ("pass", "fail",
/// "softfail", "neutral", "none", "temperror", "permerror", "policy"), "" when not checked.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AuthFacts {
    /// SPF result of the MAIL FROM identity (of the HELO identity for `<>`).
    pub spf: String,
    /// Domain SPF was checked for.
    pub spf_domain: String,
    /// SPF result of the HELO identity.
    pub spf_helo: String,
    /// Best DKIM result: "pass" when any signature passed.
    pub dkim: String,
    /// `d=` of the signatures that passed.
    pub dkim_domains: Vec<String>,
    /// DMARC result.
    pub dmarc: String,
    /// The RFC5322.From domain DMARC evaluated.
    pub dmarc_domain: String,
    /// The policy that applied: "none", "quarantine", "reject" ("" without a record).
    pub dmarc_policy: String,
    /// ARC chain result.
    pub arc: String,
    /// `d=` of the newest ARC seal, when there is a chain.
    pub arc_sealer: String,
    /// What Corvus will do: "accept", "quarantine" or "reject".
    pub action: String,
}

/// Calls `$m!` with the names of [`AuthFacts`]' string fields, that is every field but
/// `dkim_domains` (the struct's clone and the Rhai `ctx.auth` getters are written from it).
macro_rules! auth_string_fields {
    ($m:ident) => {
        $m! {
            spf,
            spf_domain,
            spf_helo,
            dkim,
            dmarc,
            dmarc_domain,
            dmarc_policy,
            arc,
            arc_sealer,
            action
        }
    };
}
pub(crate) use auth_string_fields;

/// Field by field, so that `clone_from` reuses the strings' buffers (plugin calls refresh a
/// copy of the hook context for every call).
macro_rules! auth_facts_clone {
    ($($f:ident),*) => {
        impl Clone for AuthFacts {
            fn clone(&self) -> Self {
                AuthFacts { dkim_domains: self.dkim_domains.clone(), $($f: self.$f.clone()),* }
            }
            fn clone_from(&mut self, other: &Self) {
                self.dkim_domains.clone_from(&other.dkim_domains);
                $(self.$f.clone_from(&other.$f);)*
            }
        }
    };
}
auth_string_fields!(auth_facts_clone);

/// What the checks ask the session to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Deliver normally.
    Accept,
    /// Deliver into Junk; the text says why.
    Quarantine(String),
    /// Refuse with 550 5.7.1 and this text.
    Reject(String),
}

/// SPF results for one transaction (computed at MAIL FROM).
#[derive(Debug, Clone)]
pub struct SpfCheck {
    /// HELO identity.
    pub helo: SpfOutput,
    /// MAIL FROM identity; `None` for the null sender (the HELO result stands for it).
    pub mail_from: Option<SpfOutput>,
    /// The HELO name checked.
    pub helo_name: String,
    /// The MAIL FROM address ("" for `<>`).
    pub sender: String,
}

impl SpfCheck {
    /// The result that counts for the sender (RFC 7208 §2.4: HELO stands in for `<>`).
    pub fn effective(&self) -> &SpfOutput {
        self.mail_from.as_ref().unwrap_or(&self.helo)
    }
}

/// Everything the end-of-data check found.
pub struct Checked {
    /// The `Authentication-Results:` field, CRLF-terminated.
    pub header: String,
    /// Results for hooks.
    pub facts: AuthFacts,
    /// Policy decision.
    pub action: Action,
    /// Results in mail-auth's form, for the ARC-Authentication-Results of a seal.
    aar: AuthenticationResults<'static>,
}

/// The checker: mail-auth on the server's resolver, record caches and the settings.
pub struct SenderAuth {
    auth: MessageAuthenticator,
    caches: Caches,
    config: crate::config::SenderAuth,
    hostname: &'static str,
    reports: Option<report::Reports>,
    /// Uniform in 0..100 for DMARC `pct=` sampling; replaceable for tests.
    pct_roll: Box<dyn Fn() -> u8 + Send + Sync>,
}

/// Everything about the envelope the message checks need.
pub struct Envelope<'a> {
    /// Client address.
    pub ip: IpAddr,
    /// HELO/EHLO name.
    pub helo: &'a str,
    /// MAIL FROM address, "" for `<>`.
    pub mail_from: &'a str,
    /// SPF results from MAIL FROM, when they were computed there.
    pub spf: Option<&'a SpfCheck>,
}

fn spf_word(r: SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

fn dkim_word(r: &DkimResult) -> &'static str {
    match r {
        DkimResult::Pass => "pass",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::Fail(_) => "fail",
        DkimResult::PermError(_) => "permerror",
        DkimResult::TempError(_) => "temperror",
        DkimResult::None => "none",
    }
}

fn dkim_reason(r: &DkimResult) -> Option<String> {
    let e = match r {
        DkimResult::Neutral(e)
        | DkimResult::Fail(e)
        | DkimResult::PermError(e)
        | DkimResult::TempError(e) => e,
        _ => return None,
    };
    Some(match e {
        Error::Dkim(DkimError::FailedBodyHashMatch) => "body hash did not verify".into(),
        Error::Dkim(DkimError::SignatureExpired) => "signature expired".into(),
        Error::Crypto(_) => "signature did not verify".into(),
        Error::Dns(mail_auth::DnsError::RecordNotFound(_)) => "no key for signature".into(),
        Error::Dns(mail_auth::DnsError::InvalidRecordType) | Error::ParseError => {
            "key record unusable".into()
        }
        Error::Dns(mail_auth::DnsError::Resolver(_)) => "key lookup failed".into(),
        other => other.to_string(),
    })
}

/// ARC results are reported as none, pass, fail or temperror (RFC 8617 §4.4).
fn arc_word(r: &DkimResult) -> &'static str {
    match r {
        DkimResult::Pass => "pass",
        DkimResult::None => "none",
        DkimResult::TempError(_) => "temperror",
        _ => "fail",
    }
}

fn policy_word(p: Policy) -> &'static str {
    match p {
        Policy::Reject => "reject",
        Policy::Quarantine => "quarantine",
        Policy::None | Policy::Unspecified => "none",
    }
}

/// The `pct=` tag of a DMARC record (RFC 7489 §6.3): 100 when absent or not an integer in
/// 0..=100 (an invalid tag is ignored, §6.3).
pub fn pct_tag(record: &str) -> u8 {
    record
        .split(';')
        .filter_map(|tag| tag.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("pct"))
        .and_then(|(_, v)| v.trim().parse::<u8>().ok())
        .filter(|p| *p <= 100)
        .unwrap_or(100)
}

/// RFC 7489 §6.6.4 sampling: the policy applies to `pct` percent of failing messages (those
/// with `roll` < `pct`, `roll` uniform in 0..100); the others get the next less strict
/// policy (reject → quarantine, quarantine → none). Returns the policy to apply and whether
/// the message was sampled out.
pub fn sample_policy(policy: Policy, pct: u8, roll: u8) -> (Policy, bool) {
    if pct >= 100 || roll < pct {
        return (policy, false);
    }
    match policy {
        Policy::Reject => (Policy::Quarantine, true),
        Policy::Quarantine => (Policy::None, true),
        other => (other, false),
    }
}

fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
}

/// Run `fut`, or give `fallback` when it takes longer than `limit`.
async fn bounded<T>(
    limit: Duration,
    fut: impl Future<Output = T>,
    fallback: impl FnOnce() -> T,
) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => {
            tracing::info!(?limit, "sender authentication check timed out");
            fallback()
        }
    }
}

fn timeout_error() -> Error {
    Error::Dns(mail_auth::DnsError::Resolver("timed out".into()))
}

impl SenderAuth {
    /// The checker for `config`, sharing `resolver` (and so its cache and name servers)
    /// with the rest of the server.
    pub fn new(config: &Config, resolver: TokioResolver, store: crate::store::Store) -> Self {
        let c = &config.sender_auth;
        SenderAuth {
            reports: c
                .dmarc_reports
                .enabled
                .then(|| report::Reports::new(store, c.dmarc_reports.clone())),
            auth: MessageAuthenticator(resolver),
            caches: Caches::new(c.cache_entries, Duration::from_secs(24 * 3600)),
            config: c.clone(),
            // One string per server for mail-auth's borrowed authserv-id.
            hostname: Box::leak(config.hostname.clone().into_boxed_str()),
            pct_roll: Box::new(|| rand::random_range(0..100u8)),
        }
    }

    /// Use `roll` (uniform in 0..100) instead of the random source for DMARC `pct=`
    /// sampling, so tests can decide which side of the sample a message falls on.
    pub fn with_pct_roll(mut self, roll: impl Fn() -> u8 + Send + Sync + 'static) -> Self {
        self.pct_roll = Box::new(roll);
        self
    }

    /// The `pct=` of the DMARC record mail-auth applied (`applied`, found at `from_domain` or
    /// one of its parents): mail-auth 0.13 parses DMARCbis records and drops the tag, so the
    /// TXT records are read again (from the resolver's cache) and the one that parses to the
    /// applied record is taken. 100 when absent, invalid or not found in time.
    async fn published_pct(&self, from_domain: &str, applied: &mail_auth::dmarc::Dmarc) -> u8 {
        use mail_auth::common::parse::TxtRecordParser;
        let walk = async {
            let mut domain = from_domain.trim_end_matches('.').to_ascii_lowercase();
            // The same bound as the DMARCbis tree walk (RFC 9989 §4.10.1: at most 8 queries).
            for _ in 0..8 {
                if domain.is_empty() {
                    break;
                }
                let name = format!("_dmarc.{domain}.");
                if let Ok(lookup) = self.auth.resolver().txt_lookup(name.as_str()).await {
                    for record in lookup.answers() {
                        let hickory_resolver::proto::rr::RData::TXT(txt) = &record.data else {
                            continue;
                        };
                        let text: Vec<u8> = txt
                            .txt_data
                            .iter()
                            .flat_map(|c| c.iter().copied())
                            .collect();
                        if mail_auth::dmarc::Dmarc::parse(&text).is_ok_and(|d| d == *applied) {
                            return pct_tag(&String::from_utf8_lossy(&text));
                        }
                    }
                }
                domain = domain
                    .split_once('.')
                    .map(|(_, p)| p.to_string())
                    .unwrap_or_default();
            }
            100
        };
        bounded(self.config.timeout, walk, || 100).await
    }

    /// Whether checks run at all.
    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// Our authserv-id.
    pub fn authserv_id(&self) -> &str {
        self.hostname
    }

    /// DMARC aggregate report collection, when on.
    pub fn reports(&self) -> Option<&report::Reports> {
        self.reports.as_ref()
    }

    /// The `rua` addresses of `domain` that may receive its reports (RFC 7489 §7.1);
    /// `None` on a temporary DNS failure.
    pub async fn authorized_rua(&self, domain: &str, rua: &[String]) -> Option<Vec<String>> {
        let ok = tokio::time::timeout(
            self.config.timeout,
            self.auth
                .verify_dmarc_report_address(domain, rua, Some(&self.caches.txt)),
        )
        .await
        .ok()??;
        Some(ok.into_iter().cloned().collect())
    }

    /// The record caches (for statistics and benchmarks).
    pub fn caches(&self) -> &Caches {
        &self.caches
    }

    fn override_for<T>(
        &self,
        domain: &str,
        pick: impl Fn(&crate::config::SenderAuthDomain) -> Option<T>,
    ) -> Option<T> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        self.config
            .domains
            .iter()
            .filter(|(k, _)| {
                let k = k.trim_end_matches('.').to_ascii_lowercase();
                domain == k || domain.ends_with(&format!(".{k}"))
            })
            .filter_map(|(k, v)| pick(v).map(|p| (k.len(), p)))
            .max_by_key(|(len, _)| *len)
            .map(|(_, p)| p)
    }

    fn dmarc_mode(&self, from_domain: &str) -> DmarcMode {
        self.override_for(from_domain, |d| d.dmarc)
            .unwrap_or(self.config.dmarc)
    }

    /// Keep the negative answers among an evaluation's TXT lookups (see [`cache::not_found`]):
    /// domains without SPF or DMARC records are common, and mail-auth keeps only positive
    /// answers, so each message from such a domain went through the resolver again. The
    /// resolver still has the answer cached; it is kept for its SOA's negative TTL (RFC 2308;
    /// none without an SOA), and errors other than "no records" are never kept.
    async fn keep_missing_txt(&self, log: &[cache::Access]) {
        use hickory_resolver::net::{DnsError, NetError};
        for name in cache::txt_misses(log) {
            if self.caches.txt.get(name.as_str()).is_some() {
                continue; // kept already (a kept negative answer reads as a miss)
            }
            let r = tokio::time::timeout(
                self.config.timeout,
                self.auth.resolver().txt_lookup(name.as_str()),
            )
            .await;
            if let Ok(Err(NetError::Dns(DnsError::NoRecordsFound(n)))) = r
                && let Some(ttl) = n.negative_ttl
            {
                let until = Instant::now() + Duration::from_secs(u64::from(ttl));
                self.caches.txt.insert(
                    name.into_boxed_str(),
                    cache::not_found(n.response_code),
                    until,
                );
            }
        }
    }

    /// Verify a received message (`raw`: the bytes as the client sent them) and decide.
    pub async fn check_message(&self, raw: &[u8], env: &Envelope<'_>) -> Checked {
        let computed;
        let spf = match env.spf {
            Some(s) => s,
            None => {
                computed = self.check_spf(env.ip, env.helo, env.mail_from).await;
                &computed
            }
        };
        let limit = self.config.timeout;
        let Some(mut msg) = AuthenticatedMessage::parse(raw) else {
            // No header block at all: nothing to verify beyond SPF.
            let facts = AuthFacts {
                dkim: "none".into(),
                dmarc: "none".into(),
                arc: "none".into(),
                action: "accept".into(),
                ..Self::spf_facts(spf)
            };
            let mut header = self.header_start();
            self.push_spf(&mut header, spf, env.ip);
            header.push_str(";\r\n\tdkim=none;\r\n\tarc=none;\r\n\tdmarc=none\r\n");
            return Checked {
                header,
                facts,
                action: Action::Accept,
                aar: AuthenticationResults::new(self.hostname),
            };
        };
        msg.dkim_headers.truncate(self.config.max_dkim_signatures);

        // DKIM: every signature (up to the limit).
        let dkim_check = bounded(
            limit,
            self.auth.verify_dkim(self.caches.params(&msg)),
            || {
                msg.dkim_headers
                    .iter()
                    .map(|h| DkimOutput::temp_err(timeout_error()).with_signature(&h.header))
                    .collect()
            },
        );
        // ARC.
        let arc_check = bounded(
            limit,
            self.auth.verify_arc(self.caches.params(&msg)),
            || ArcOutput::default().with_result(DkimResult::TempError(timeout_error())),
        );
        let (dkim_raw, arc) = tokio::join!(dkim_check, arc_check);
        // RFC 6376 §6.1: a body hash mismatch and an expired signature are PERMFAILs of
        // that signature, which RFC 8601 reports as "fail" (mail-auth says "neutral").
        let dkim: Vec<DkimOutput> = dkim_raw
            .into_iter()
            .map(|o| match o.result() {
                DkimResult::Neutral(
                    e @ Error::Dkim(DkimError::FailedBodyHashMatch | DkimError::SignatureExpired),
                ) => {
                    let failed = DkimOutput::fail(e.clone());
                    match o
                        .signature()
                        .and_then(|s| msg.dkim_headers.iter().find(|h| std::ptr::eq(&h.header, s)))
                    {
                        Some(h) => failed.with_signature(&h.header),
                        None => failed,
                    }
                }
                _ => o,
            })
            .collect();

        // DMARC, against the MAIL FROM identity (HELO for <>).
        let spf_out = spf.effective();
        let mf_domain = if env.mail_from.is_empty() {
            env.helo
        } else {
            domain_of(env.mail_from)
        }
        .to_ascii_lowercase();
        let from_domain_hint = domain_of(msg.from()).to_string();
        let dmarc_log = std::sync::Mutex::new(Vec::new());
        let dmarc_caches = self.caches.recording(&dmarc_log);
        let dmarc = bounded(
            limit,
            self.auth.verify_dmarc(
                dmarc_caches.params(DmarcParameters::new(&msg, &dkim, &mf_domain, spf_out)),
            ),
            || {
                DmarcOutput::default()
                    .with_domain(&from_domain_hint)
                    .with_spf_result(DmarcResult::TempError(timeout_error()))
                    .with_dkim_result(DmarcResult::TempError(timeout_error()))
            },
        )
        .await;
        let dmarc_log = dmarc_log.into_inner().unwrap_or_else(|e| e.into_inner());
        self.keep_missing_txt(&dmarc_log).await;
        let from_domain = dmarc.domain().to_string();
        let passing: Vec<String> = dkim
            .iter()
            .filter(|o| *o.result() == DkimResult::Pass)
            .filter_map(|o| o.signature().map(|s| s.d.to_ascii_lowercase()))
            .collect();
        // mail-auth's relaxed alignment uses the DNS tree walk; also require the same
        // organizational domain by the embedded public suffix list (see psl).
        let spf_aligned = *dmarc.spf_result() == DmarcResult::Pass
            && psl::same_organization(&mf_domain, &from_domain);
        let dkim_aligned = *dmarc.dkim_result() == DmarcResult::Pass
            && passing
                .iter()
                .any(|d| psl::same_organization(d, &from_domain));
        let has_record = dmarc.dmarc_record().is_some();
        let dmarc_word = if spf_aligned || dkim_aligned {
            "pass"
        } else if matches!(dmarc.spf_result(), DmarcResult::TempError(_))
            || matches!(dmarc.dkim_result(), DmarcResult::TempError(_))
        {
            "temperror"
        } else if !has_record {
            if matches!(dmarc.spf_result(), DmarcResult::PermError(_))
                || matches!(dmarc.dkim_result(), DmarcResult::PermError(_))
            {
                "permerror"
            } else {
                "none"
            }
        } else {
            "fail"
        };
        let policy = dmarc.policy();

        // ARC: who sealed last, and may they vouch for mail that fails DMARC here?
        let arc_word = arc_word(arc.result());
        let arc_sealer = arc
            .sets()
            .last()
            .map(|s| s.seal.header.d.to_ascii_lowercase())
            .unwrap_or_default();
        let arc_trusted = arc_word == "pass"
            && self
                .config
                .trusted_arc_sealers
                .iter()
                .any(|t| t.trim_end_matches('.').eq_ignore_ascii_case(&arc_sealer));

        // pct= sampling (RFC 7489 §6.6.4), only where it can change something.
        let mut pct = 100;
        let mut sampled_out = false;
        let mut applied = policy;
        if dmarc_word == "fail"
            && matches!(policy, Policy::Reject | Policy::Quarantine)
            && let Some(record) = dmarc.dmarc_record()
        {
            pct = self.published_pct(&from_domain, record).await;
            (applied, sampled_out) = sample_policy(policy, pct, (self.pct_roll)());
        }

        // Policy.
        let mode = self.dmarc_mode(&from_domain);
        let mut overridden = None;
        let mut action = if dmarc_word != "fail" {
            Action::Accept
        } else {
            match (applied, mode) {
                (_, DmarcMode::Monitor) | (Policy::None | Policy::Unspecified, _) => Action::Accept,
                (Policy::Reject, DmarcMode::Enforce) => Action::Reject(format!(
                    "Message rejected: the DMARC policy of {from_domain} rejects mail that fails authentication"
                )),
                _ => Action::Quarantine(format!("DMARC policy of {from_domain}")),
            }
        };
        if action != Action::Accept && arc_trusted {
            overridden = Some(format!("trusted ARC sealer {arc_sealer}"));
            action = Action::Accept;
        }

        // Aggregate reports.
        if let (Some(reports), Some(record)) = (&self.reports, dmarc.dmarc_record())
            && !record.rua.is_empty()
        {
            use mail_auth::dmarc::Alignment;
            let al = |a: Alignment| if a == Alignment::Strict { "s" } else { "r" };
            reports
                .record(report::Evaluation {
                    domain: from_domain.clone(),
                    policy: report::Published {
                        adkim: al(record.adkim).into(),
                        aspf: al(record.aspf).into(),
                        p: policy_word(record.p).into(),
                        sp: policy_word(record.sp).into(),
                        np: policy_word(record.np).into(),
                        testing: record.t,
                    },
                    rua: record.rua.iter().map(|u| u.uri().to_string()).collect(),
                    row: report::Row {
                        source_ip: env.ip.to_string(),
                        count: 1,
                        disposition: match &action {
                            Action::Reject(_) => "reject",
                            Action::Quarantine(_) => "quarantine",
                            Action::Accept => "none",
                        }
                        .into(),
                        dkim: if dkim_aligned { "pass" } else { "fail" }.into(),
                        spf: if spf_aligned { "pass" } else { "fail" }.into(),
                        reason: if overridden.is_some() {
                            Some("trusted_forwarder".into())
                        } else if sampled_out {
                            Some("sampled_out".into())
                        } else if dmarc_word == "fail"
                            && policy != Policy::None
                            && action == Action::Accept
                        {
                            Some("local_policy".into())
                        } else {
                            None
                        },
                        header_from: from_domain.clone(),
                        envelope_from: mf_domain.clone(),
                        dkim_results: dkim
                            .iter()
                            .filter_map(|o| {
                                o.signature().map(|s| {
                                    (s.d.clone(), s.s.clone(), dkim_word(o.result()).to_string())
                                })
                            })
                            .collect(),
                        spf_result: (
                            spf_out.domain().to_string(),
                            if spf.mail_from.is_some() {
                                "mfrom"
                            } else {
                                "helo"
                            }
                            .into(),
                            spf_word(spf_out.result()).into(),
                        ),
                    },
                })
                .await;
        }

        // The header.
        let mut header = self.header_start();
        self.push_spf(&mut header, spf, env.ip);
        if dkim.is_empty() {
            header.push_str(";\r\n\tdkim=none");
        }
        for o in &dkim {
            let _ = write!(header, ";\r\n\tdkim={}", dkim_word(o.result()));
            if let Some(r) = dkim_reason(o.result()) {
                let _ = write!(header, " reason={}", pvalue(&r));
            }
            if let Some(s) = o.signature() {
                let _ = write!(header, " header.d={}", pvalue(&s.d));
                if !s.i.is_empty() {
                    let _ = write!(header, " header.i={}", pvalue(&s.i));
                }
                let _ = write!(header, " header.s={}", pvalue(&s.s));
                if !s.b.is_empty() {
                    use base64::Engine as _;
                    let b =
                        base64::engine::general_purpose::STANDARD.encode(&s.b[..s.b.len().min(6)]);
                    let _ = write!(header, " header.b={}", pvalue(&b));
                }
                let _ = write!(
                    header,
                    " header.a={}",
                    match s.a {
                        mail_auth::common::crypto::Algorithm::RsaSha256 => "rsa-sha256",
                        mail_auth::common::crypto::Algorithm::RsaSha1 => "rsa-sha1",
                        mail_auth::common::crypto::Algorithm::Ed25519Sha256 => "ed25519-sha256",
                    }
                );
            }
        }
        let _ = write!(header, ";\r\n\tarc={arc_word}");
        if !arc.sets().is_empty() {
            let _ = write!(
                header,
                " (i={} sealer={})",
                arc.sets().len(),
                comment_text(&arc_sealer)
            );
        }
        let _ = write!(header, " smtp.remote-ip={}", pvalue(&env.ip.to_string()));
        let _ = write!(header, ";\r\n\tdmarc={dmarc_word}");
        if has_record {
            let dis = match &action {
                Action::Reject(_) => "reject",
                Action::Quarantine(_) => "quarantine",
                Action::Accept => "none",
            };
            let _ = write!(header, " (p={} dis={dis}", policy_word(policy));
            if pct < 100 {
                let _ = write!(header, " pct={pct}");
            }
            if sampled_out {
                header.push_str(" sampled-out");
            }
            if let Some(o) = &overridden {
                let _ = write!(header, " override={}", comment_text(o));
            }
            header.push(')');
        }
        if !from_domain.is_empty() {
            let _ = write!(header, " header.from={}", pvalue(&from_domain));
        }
        header.push_str("\r\n");

        let facts = AuthFacts {
            dkim: if passing.is_empty() {
                dkim.first()
                    .map(|o| dkim_word(o.result()))
                    .unwrap_or("none")
                    .into()
            } else {
                "pass".into()
            },
            dkim_domains: passing,
            dmarc: dmarc_word.into(),
            dmarc_domain: from_domain.clone(),
            dmarc_policy: if has_record {
                policy_word(policy).into()
            } else {
                String::new()
            },
            arc: arc_word.into(),
            arc_sealer,
            action: match &action {
                Action::Accept => "accept",
                Action::Quarantine(_) => "quarantine",
                Action::Reject(_) => "reject",
            }
            .into(),
            ..Self::spf_facts(spf)
        };
        // debug: the session's "message accepted" line repeats the four results at info.
        tracing::debug!(
            spf = %facts.spf, dkim = %facts.dkim, dmarc = %facts.dmarc, arc = %facts.arc,
            from_domain = %facts.dmarc_domain, action = %facts.action, dmarc_pct = pct,
            dmarc_sampled_out = sampled_out,
            "sender authentication"
        );

        let mut aar = AuthenticationResults::new(self.hostname);
        if let Some(mf) = &spf.mail_from {
            aar = aar.with_spf_mailfrom_result(mf, env.ip, env.mail_from, env.helo);
        } else {
            aar = aar.with_spf_ehlo_result(&spf.helo, env.ip, env.helo);
        }
        let aar = aar
            .with_dkim_results(&dkim, msg.from())
            .with_arc_result(&arc, env.ip)
            .with_dmarc_result(&if dmarc_word == "fail" {
                // Our verdict (record present, nothing aligned, or the suffix guard refused
                // the alignment) in the form mail-auth's builder prints as "fail".
                dmarc
                    .clone()
                    .with_spf_result(DmarcResult::Fail(Error::NotAligned))
                    .with_dkim_result(DmarcResult::Fail(Error::NotAligned))
            } else {
                dmarc.clone()
            });
        Checked {
            header,
            facts,
            action,
            aar,
        }
    }

    fn header_start(&self) -> String {
        let mut h = String::with_capacity(512);
        h.push_str("Authentication-Results: ");
        h.push_str(&pvalue(self.hostname));
        h
    }

    fn push_spf(&self, h: &mut String, spf: &SpfCheck, ip: IpAddr) {
        let host = comment_text(self.hostname);
        let ip_text = ip.to_string();
        let describe = |out: &SpfOutput, who: &str| -> String {
            let who = comment_text(who);
            match out.result() {
                SpfResult::Pass => {
                    format!("{host}: domain of {who} designates {ip_text} as permitted sender")
                }
                SpfResult::Fail => format!(
                    "{host}: domain of {who} does not designate {ip_text} as permitted sender"
                ),
                SpfResult::SoftFail => format!(
                    "{host}: domain of transitioning {who} does not designate {ip_text} as permitted sender"
                ),
                SpfResult::Neutral => {
                    format!("{host}: {ip_text} is neither permitted nor denied by domain of {who}")
                }
                SpfResult::None => format!("{host}: domain of {who} does not publish SPF"),
                SpfResult::TempError => {
                    format!("{host}: temporary DNS error checking SPF of {who}")
                }
                SpfResult::PermError => match out.explanation() {
                    Some(why) => format!(
                        "{host}: SPF record of {who} is invalid: {}",
                        comment_text(why)
                    ),
                    None => format!("{host}: SPF record of {who} is invalid"),
                },
            }
        };
        if let Some(mf) = &spf.mail_from {
            let _ = write!(
                h,
                ";\r\n\tspf={} ({}) smtp.mailfrom={}",
                spf_word(mf.result()),
                describe(mf, &spf.sender),
                pvalue(&spf.sender)
            );
        }
        let _ = write!(
            h,
            ";\r\n\tspf={} ({}) smtp.helo={}",
            spf_word(spf.helo.result()),
            describe(&spf.helo, &spf.helo_name),
            pvalue(&spf.helo_name)
        );
    }

    /// The header for mail from a client that logged in on the `smtp` listener: its senders
    /// are ours, so no SPF/DKIM/DMARC verdict applies (RFC 8601 `auth` method).
    pub fn authenticated_header(&self, user: &str) -> String {
        format!(
            "{};\r\n\tauth=pass smtp.auth={}\r\n",
            self.header_start(),
            pvalue(user)
        )
    }
}

#[cfg(test)]
mod tests;
