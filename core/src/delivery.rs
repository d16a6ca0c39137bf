//! The one delivery path. Every way a message reaches mailboxes or the queue goes through
//! here: SMTP end of data, the queue's local deliveries, bounces and delay notices (DSNs),
//! and DMARC aggregate reports.
//!
//! [`Delivery`] is the service: sessions, the queue and the report sender hold one.
//! [`Delivery::plan`] resolves each recipient's local targets to accounts (targets that are not
//! accounts, such as an alias's forward to another domain, join the remote recipients),
//! runs `on_delivery` once per account (reject or discard drop that copy; quarantine, or a
//! quarantined message, files into Junk; `file_into` picks the folder; added headers give
//! that account its own copy) and returns a [`Plan`]. [`Plan::into_ingest`] turns the plan
//! into one [`Ingest`]: every local placement and the queue entry for the remote recipients,
//! which [`Delivery::ingest`] has the store write all or nothing, durable before it returns.

use std::sync::Arc;

use tokio::sync::Notify;

use crate::config::Config;
use crate::hooks::{HookChain, HookCtx, HookPoint, HookSession, Route, Verdict};
use crate::store::{Filed, Ingest, Placement, QueueEntry, QueueRcpt, Receipt, Store, StoreError};

/// The delivery service: the store, the hook chain for `on_delivery`, the routing settings,
/// and the queue's wake-up.
#[derive(Clone)]
pub struct Delivery {
    config: Arc<Config>,
    store: Store,
    hooks: Arc<HookChain>,
    wakeup: Arc<Notify>,
    /// Users' Sieve filters, run after `on_delivery`.
    filters: Arc<crate::sieve::Filters>,
}

/// One recipient of a message, as routed.
#[derive(Debug, Clone)]
pub struct Recipient {
    /// The address as given (RCPT TO, the queued recipient, the bounce's recipient).
    pub address: String,
    /// Where it goes.
    pub route: Route,
    /// DSN NOTIFY values.
    pub notify: Vec<String>,
    /// DSN ORCPT.
    pub orcpt: Option<String>,
    /// Folder chosen at RCPT time (a `file_into` of `on_rcpt`).
    pub file_into: Option<String>,
}

impl Recipient {
    /// A recipient with no DSN parameters.
    pub fn new(address: &str, route: Route) -> Self {
        Recipient {
            address: address.to_string(),
            route,
            notify: Vec::new(),
            orcpt: None,
            file_into: None,
        }
    }

    fn queued(&self, address: String) -> QueueRcpt {
        QueueRcpt {
            address,
            notify: self.notify.clone(),
            orcpt: self.orcpt.clone(),
        }
    }
}

/// Where the copies of one message go.
#[derive(Debug, Default)]
pub struct Plan {
    /// Local copies: bodies (without Return-Path yet) and their placements.
    pub local: Vec<(Arc<Vec<u8>>, Vec<Placement>)>,
    /// Recipients for the queue.
    pub remote: Vec<QueueRcpt>,
    /// One line per hook decision, for `corvus queue show`.
    pub decisions: Vec<String>,
    /// Every `on_delivery` call, for the message trace.
    pub steps: Vec<crate::trace::Step>,
    /// Where each local copy goes, for the message trace.
    pub filed: Vec<crate::trace::Filed>,
    /// Messages the users' filters send once this one is stored (vacation replies, reject
    /// notices): [`Delivery::send_generated`] after the write.
    pub generated: Vec<(QueueEntry, Vec<u8>)>,
    /// Accounts whose Sieve script redirected the message: the queued copy says so
    /// (`X-Sieve-Redirected-From`), and their scripts do not redirect it again (loops).
    pub redirected_by: Vec<String>,
}

/// `on_delivery` asked to try again later, or a user's Sieve script refused the message
/// (`reject`/`ereject`, code 550). Honoured only with `may_tempfail` and one recipient: with
/// several, the others must not wait for one (a Sieve refusal then becomes a bounce).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tempfail {
    /// Reply code.
    pub code: u16,
    /// Enhanced status code, when the hook gave one.
    pub enhanced: Option<crate::hooks::Enhanced>,
    /// Reply text, without the enhanced code.
    pub text: String,
    /// A refusal (a Sieve `reject`), not a request to try later.
    pub permanent: bool,
}

impl std::fmt::Display for Tempfail {
    /// `451 4.2.0 text`: the code and the hook's wording.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let wording = crate::hooks::outcome::wording(self.enhanced.as_ref(), &self.text);
        write!(f, "{} {wording}", self.code)
    }
}

impl Delivery {
    /// The service over `store`, with `hooks` for `on_delivery`; `wakeup` wakes the queue.
    pub fn new(
        config: Arc<Config>,
        store: Store,
        hooks: Arc<HookChain>,
        wakeup: Arc<Notify>,
    ) -> Self {
        let filters = Arc::new(crate::sieve::Filters::new(
            store.clone(),
            config.sieve.clone(),
        ));
        Delivery {
            config,
            store,
            hooks,
            wakeup,
            filters,
        }
    }

    /// What wakes the outbound queue (it waits on it).
    pub fn queue_wakeup(&self) -> &Arc<Notify> {
        &self.wakeup
    }

    /// Decide where every copy of `message` goes. `ctx` carries the facts of the session (or of
    /// the queue) for `on_delivery`, which runs in the client's `session` when there is one;
    /// `quarantine` files every local copy into Junk.
    pub async fn plan(
        &self,
        ctx: &HookCtx,
        session: Option<&HookSession>,
        message: &Arc<Vec<u8>>,
        rcpts: &[Recipient],
        quarantine: bool,
        may_tempfail: bool,
    ) -> Result<Plan, Tempfail> {
        let mut plan = Plan::default();
        let mut bodies: Vec<Placement> = Vec::new();
        for rcpt in rcpts {
            let targets = match &rcpt.route {
                Route::Local(t) => t,
                Route::Remote => {
                    plan.remote.push(rcpt.queued(rcpt.address.clone()));
                    continue;
                }
                Route::UnknownLocal => continue,
            };
            for target in targets {
                // A target that is no account (an alias forwarding elsewhere) is relayed.
                if !self.store.account_exists(target).await.unwrap_or(false) {
                    if !plan.remote.iter().any(|r| r.address == *target) {
                        plan.remote.push(rcpt.queued(target.clone()));
                    }
                    continue;
                }
                let already = bodies.iter().any(|p| p.user == *target)
                    || plan
                        .local
                        .iter()
                        .any(|(_, ps)| ps.iter().any(|p| p.user == *target));
                if already {
                    continue;
                }
                let mut dctx = ctx.clone();
                dctx.point = HookPoint::Delivery;
                dctx.rcpt = target.clone();
                dctx.message = Some(message.clone());
                let mut d = self.hooks.run_async(&dctx, session).await;
                plan.decisions.append(&mut d.decisions);
                plan.steps.append(&mut d.steps);
                // The user's own filter runs when the admin's hooks left the copy alone
                // (no reject, discard, quarantine or folder of theirs).
                let admin_decided = matches!(
                    d.verdict,
                    Verdict::Reject { .. }
                        | Verdict::Discard
                        | Verdict::Quarantine(_)
                        | Verdict::Tempfail { .. }
                ) || quarantine
                    || d.actions.file_into.is_some()
                    || rcpt.file_into.is_some();
                if !admin_decided
                    && let Some(ran) = self
                        .filters
                        .run(target, &rcpt.address, &ctx.mail_from, message)
                        .await
                {
                    // Refused in the reply only when this copy is the whole message: one
                    // recipient that is one account (not an alias of several).
                    let single =
                        may_tempfail && session.is_some() && rcpts.len() == 1 && targets.len() == 1;
                    match self
                        .apply_sieve(&mut plan, ctx, rcpt, target, message, ran, single)
                        .await
                    {
                        Ok(placements) => {
                            for p in &placements {
                                plan.filed.push(crate::trace::Filed {
                                    recipient: rcpt.address.clone(),
                                    user: target.clone(),
                                    mailbox: p.mailbox.clone(),
                                });
                            }
                            if d.actions.add_headers.is_empty() {
                                bodies.extend(placements);
                            } else if !placements.is_empty() {
                                let own = crate::message::prepend_headers(
                                    message,
                                    &d.actions.add_headers,
                                );
                                plan.local.push((own, placements));
                            }
                            continue;
                        }
                        Err(refusal) => return Err(refusal),
                    }
                }
                let folder = match d.verdict {
                    Verdict::Reject { .. } | Verdict::Discard => {
                        tracing::info!(rcpt = %target, "copy dropped by on_delivery");
                        continue;
                    }
                    Verdict::Tempfail {
                        code,
                        enhanced,
                        text,
                    } if may_tempfail && rcpts.len() == 1 => {
                        return Err(Tempfail {
                            code,
                            enhanced,
                            text,
                            permanent: false,
                        });
                    }
                    Verdict::Quarantine(_) => "Junk".to_string(),
                    _ if quarantine => "Junk".to_string(),
                    _ => d
                        .actions
                        .file_into
                        .or_else(|| rcpt.file_into.clone())
                        .unwrap_or_else(|| "INBOX".into()),
                };
                plan.filed.push(crate::trace::Filed {
                    recipient: rcpt.address.clone(),
                    user: target.clone(),
                    mailbox: folder.clone(),
                });
                let placement = Placement {
                    user: target.clone(),
                    mailbox: folder,
                    flags: Vec::new(),
                };
                if d.actions.add_headers.is_empty() {
                    bodies.push(placement);
                } else {
                    let own = crate::message::prepend_headers(message, &d.actions.add_headers);
                    plan.local.push((own, vec![placement]));
                }
            }
        }
        if !bodies.is_empty() {
            plan.local.insert(0, (message.clone(), bodies));
        }
        Ok(plan)
    }

    /// Map a user's Sieve outcome onto this delivery: the placements of the copy (none when
    /// discarded), redirects joining the remote recipients, vacation replies and reject
    /// notices for [`Plan::generated`], and a `sieve` step for the trace. `single`: a reject
    /// may refuse the message in the SMTP reply (one recipient, in a client's session).
    #[allow(clippy::too_many_arguments)]
    async fn apply_sieve(
        &self,
        plan: &mut Plan,
        ctx: &HookCtx,
        rcpt: &Recipient,
        user: &str,
        message: &Arc<Vec<u8>>,
        ran: crate::sieve::Ran,
        single: bool,
    ) -> Result<Vec<Placement>, Tempfail> {
        use crate::sieve::Action;
        let mut notes = ran.outcome.fired.clone();
        let mut placements = Vec::new();
        let mut verdicts: Vec<&str> = Vec::new();
        let looped = crate::message::header_values(message, "X-Sieve-Redirected-From", false)
            .iter()
            .any(|v| v.trim().eq_ignore_ascii_case(user));
        for action in &ran.outcome.actions {
            match action {
                Action::Store { mailbox, flags, .. } => {
                    verdicts.push(if crate::store::is_inbox(mailbox) {
                        "keep"
                    } else {
                        "fileinto"
                    });
                    placements.push(Placement {
                        user: user.to_string(),
                        mailbox: mailbox.clone(),
                        flags: crate::sieve::imap_flags(flags),
                    });
                }
                Action::Redirect(to) if looped => {
                    notes.push(format!("redirect to {to} skipped: the message was redirected by this user before (a loop); kept"));
                    if !placements
                        .iter()
                        .any(|p| crate::store::is_inbox(&p.mailbox))
                    {
                        placements.push(Placement {
                            user: user.to_string(),
                            mailbox: "INBOX".into(),
                            flags: Vec::new(),
                        });
                    }
                }
                Action::Redirect(to) => {
                    verdicts.push("redirect");
                    if !plan
                        .remote
                        .iter()
                        .any(|r| r.address.eq_ignore_ascii_case(to))
                    {
                        plan.remote.push(rcpt.queued(to.clone()));
                    }
                    if !plan.redirected_by.iter().any(|u| u == user) {
                        plan.redirected_by.push(user.to_string());
                    }
                }
                Action::Reject(reason) => {
                    verdicts.push("reject");
                    let text: String = reason
                        .lines()
                        .next()
                        .unwrap_or("")
                        .chars()
                        .filter(|c| !c.is_control())
                        .take(200)
                        .collect();
                    let text = if text.trim().is_empty() {
                        "Rejected by the recipient's filter".to_string()
                    } else {
                        text
                    };
                    if single {
                        emit_sieve_step(plan, &ran, &verdicts, &notes);
                        return Err(Tempfail {
                            code: 550,
                            enhanced: crate::hooks::Enhanced::parse("5.7.1"),
                            text,
                            permanent: true,
                        });
                    }
                    if ctx.mail_from.is_empty() {
                        notes.push("reject: the sender is <>, no notice sent".into());
                        continue;
                    }
                    let status = crate::queue::dsn::RcptStatus {
                        rcpt: rcpt.queued(rcpt.address.clone()),
                        action: "failed",
                        status: "5.7.1".into(),
                        remote_mta: None,
                        diagnostic: format!("550 5.7.1 {text}"),
                    };
                    let now = chrono::Utc::now().timestamp();
                    let original = queue_entry(&new_queue_id(), &ctx.mail_from, vec![], now);
                    let bounce = crate::queue::dsn::build(
                        &self.config.hostname,
                        &original,
                        &[status],
                        message,
                    );
                    let mut entry = queue_entry(
                        &new_queue_id(),
                        "",
                        vec![QueueRcpt {
                            address: ctx.mail_from.clone(),
                            notify: vec![],
                            orcpt: None,
                        }],
                        now,
                    );
                    entry.decisions = vec![format!("sieve reject by {user}")];
                    entry.warned = true;
                    plan.generated.push((entry, bounce));
                    notes.push(format!("reject notice sent to <{}>", ctx.mail_from));
                }
                Action::Vacation(reply) => {
                    let sender = ctx.mail_from.as_str();
                    if let Some(why) =
                        crate::sieve::vacation::refusal(message, sender, user, &rcpt.address, reply)
                    {
                        notes.push(format!("vacation: no reply, {why}"));
                        continue;
                    }
                    let key = crate::sieve::vacation::memory_key(user, sender, reply);
                    let period = crate::sieve::vacation::period(reply, self.filters.limits());
                    match self
                        .store
                        .kv_incr("sieve-vacation", &key, 1, Some(period))
                        .await
                    {
                        Ok(1) => {}
                        Ok(_) => {
                            notes.push(format!(
                                "vacation: <{sender}> was answered within the last {} days",
                                period / 86_400
                            ));
                            continue;
                        }
                        Err(e) => {
                            notes.push(format!("vacation: no reply, store error {e}"));
                            continue;
                        }
                    }
                    verdicts.push("vacation");
                    let bytes = crate::sieve::vacation::build(
                        message,
                        sender,
                        user,
                        &self.config.hostname,
                        reply,
                    );
                    let mut entry = queue_entry(
                        &new_queue_id(),
                        "",
                        vec![QueueRcpt {
                            address: sender.to_string(),
                            notify: vec![],
                            orcpt: None,
                        }],
                        chrono::Utc::now().timestamp(),
                    );
                    entry.smtputf8 = !sender.is_ascii();
                    entry.decisions = vec![format!("sieve vacation reply from {user}")];
                    entry.warned = true;
                    plan.generated.push((entry, bytes));
                    notes.push(format!("vacation reply sent to <{sender}>"));
                }
            }
        }
        if placements.is_empty() && !verdicts.contains(&"redirect") && !verdicts.contains(&"reject")
        {
            verdicts.push("discard");
        }
        emit_sieve_step(plan, &ran, &verdicts, &notes);
        Ok(placements)
    }

    /// Send what users' filters generated (vacation replies, reject notices), once the
    /// message they answer is stored. A failure is logged: the message itself is safe.
    pub async fn send_generated(&self, generated: Vec<(QueueEntry, Vec<u8>)>) {
        for (entry, bytes) in generated {
            let id = entry.id.clone();
            if let Err(e) = Box::pin(self.deliver_generated(entry, bytes)).await {
                tracing::warn!(queue_id = %id, error = %e, "could not queue a Sieve reply");
            }
        }
    }

    /// Write `ingest` (all or nothing, durable when this returns) and wake the queue when it
    /// queued something.
    pub async fn ingest(&self, ingest: Ingest) -> Result<Receipt, StoreError> {
        let queued = ingest
            .queue
            .as_ref()
            .is_some_and(|(e, _)| !e.rcpts.is_empty());
        let kinds: Vec<&'static str> = ingest
            .filed
            .iter()
            .flat_map(|f| f.placements.iter())
            .map(|p| {
                if p.mailbox.eq_ignore_ascii_case("INBOX") {
                    "inbox"
                } else if p.mailbox.eq_ignore_ascii_case("Junk") {
                    "junk"
                } else {
                    "other"
                }
            })
            .collect();
        let receipt = self.store.ingest(ingest).await?;
        for mailbox in kinds {
            crate::metrics::m()
                .local_deliveries
                .get_or_create(&crate::metrics::MailboxLabel { mailbox })
                .inc();
        }
        if queued {
            self.wakeup.notify_one();
        }
        Ok(receipt)
    }
}

/// The trace's record of one Sieve run.
fn emit_sieve_step(plan: &mut Plan, ran: &crate::sieve::Ran, verdicts: &[&str], notes: &[String]) {
    let mut reason = format!("script \"{}\"", ran.name);
    if let Some(e) = &ran.outcome.error {
        reason.push_str(&format!(": error: {e}; kept in INBOX"));
    }
    if !notes.is_empty() {
        reason.push_str(": ");
        reason.push_str(&notes.join("; "));
    }
    let mut v: Vec<&str> = Vec::new();
    for x in verdicts {
        if !v.contains(x) {
            v.push(x);
        }
    }
    let verdict = if ran.outcome.error.is_some() {
        "error".to_string()
    } else {
        v.join("+")
    };
    tracing::info!(script = %ran.name, verdict, reason, "sieve");
    plan.steps.push(crate::trace::Step {
        at: crate::trace::now_rfc3339(),
        stage: "sieve".into(),
        engine: "sieve".into(),
        verdict,
        reason,
        micros: ran.micros,
    });
}

impl Plan {
    /// Whether nothing is to be stored.
    pub fn is_empty(&self) -> bool {
        self.local.is_empty() && self.remote.is_empty()
    }

    /// The one write for this plan: local copies with `Return-Path: <reverse_path>` (RFC 5321
    /// §4.4), and `queue` (its recipients replaced by the plan's remote ones) carrying
    /// `queued` when there are remote recipients.
    pub fn into_ingest(
        self,
        reverse_path: &str,
        now: i64,
        queue: Option<(QueueEntry, Arc<Vec<u8>>)>,
    ) -> Ingest {
        let filed = self
            .local
            .into_iter()
            .map(|(body, placements)| Filed {
                message: Arc::new(crate::message::with_return_path(&body, reverse_path)),
                placements,
            })
            .collect();
        let queue = match queue {
            Some((mut entry, bytes)) if !self.remote.is_empty() => {
                entry.rcpts = self.remote;
                entry.decisions.extend(self.decisions);
                // Redirected by users' filters: say so, for their loop check.
                let bytes = if self.redirected_by.is_empty() {
                    bytes
                } else {
                    let headers: Vec<(String, String)> = self
                        .redirected_by
                        .iter()
                        .map(|u| ("X-Sieve-Redirected-From".to_string(), u.clone()))
                        .collect();
                    crate::message::prepend_headers(&bytes, &headers)
                };
                Some((entry, bytes))
            }
            _ => None,
        };
        Ingest {
            internal_date: now,
            filed,
            queue,
        }
    }
}

/// A new queue entry, due now.
pub fn queue_entry(id: &str, mail_from: &str, rcpts: Vec<QueueRcpt>, now: i64) -> QueueEntry {
    QueueEntry {
        id: id.to_string(),
        mail_from: mail_from.to_string(),
        rcpts,
        ret: None,
        envid: None,
        created: now,
        next_attempt: now,
        attempts: 0,
        last_error: None,
        blob: 0,
        smtputf8: false,
        decisions: Vec::new(),
        warned: false,
        requiretls: false,
        lease: None,
    }
}

/// The facts of a delivery the queue makes (no client: listener `queue`, loopback
/// address), for `on_delivery`.
pub fn queue_ctx(mail_from: &str, rcpts: &[Recipient]) -> HookCtx {
    let mut ctx = HookCtx::new(
        HookPoint::Delivery,
        crate::listener::Listener::Queue,
        std::net::Ipv4Addr::LOCALHOST.into(),
    );
    ctx.mail_from = mail_from.to_string();
    ctx.rcpts = rcpts.iter().map(|r| r.address.clone()).collect();
    ctx
}

/// A fresh queue id: 16 hex digits, the first 11 the time in milliseconds, the last 5
/// random. Ids sort by creation time, so the message trace is keyed by the id alone
/// (`trace`) and a time range is a key range.
pub fn new_queue_id() -> String {
    let ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let random = rand::random::<u64>() & 0xF_FFFF;
    format!("{:016X}", (ms << 20) | random)
}

impl Delivery {
    /// Deliver a message the server writes itself (a DSN, a delay notice, a DMARC report):
    /// `entry` names the sender and recipients; local recipients get it in their mailboxes
    /// (through `on_delivery`), the others through the queue with `entry`'s settings. Returns
    /// once it is durable; wakes the queue when something was queued.
    pub async fn deliver_generated(
        &self,
        entry: QueueEntry,
        message: Vec<u8>,
    ) -> Result<Receipt, StoreError> {
        let mut rcpts = Vec::with_capacity(entry.rcpts.len());
        for r in &entry.rcpts {
            let route = match crate::routing::resolve(
                &self.store,
                &self.config.domains,
                self.config.postmaster.as_deref(),
                &r.address,
            )
            .await?
            {
                Route::UnknownLocal => Route::Remote,
                route => route,
            };
            rcpts.push(Recipient {
                address: r.address.clone(),
                route,
                notify: r.notify.clone(),
                orcpt: r.orcpt.clone(),
                file_into: None,
            });
        }
        let message = Arc::new(message);
        let ctx = queue_ctx(&entry.mail_from, &rcpts);
        // A generated message is never held back: a tempfail files it as usual.
        let mut plan = self
            .plan(&ctx, None, &message, &rcpts, false, false)
            .await
            .unwrap_or_default();
        let generated = std::mem::take(&mut plan.generated);
        let mail_from = entry.mail_from.clone();
        let now = chrono::Utc::now().timestamp();
        // Generated mail (bounces, reports) has a trace of its own.
        let mut rec = crate::trace::Record {
            id: entry.id.clone(),
            created: crate::trace::now_rfc3339(),
            created_unix: now,
            message_id: crate::message::header_values(&message, "Message-ID", true)
                .into_iter()
                .next(),
            sender: mail_from.clone(),
            recipients: rcpts.iter().map(|r| r.address.clone()).collect(),
            size: message.len() as u64,
            result: "accepted".into(),
            reply: format!("generated: {}", entry.decisions.join(", ")),
            steps: plan.steps.clone(),
            filed: plan.filed.clone(),
            ..Default::default()
        };
        rec.connection.listener = "queue".into();
        rec.connection.ip = "127.0.0.1".into();
        rec.connection.fcrdns = "none".into();
        let receipt = self
            .ingest(plan.into_ingest(&mail_from, now, Some((entry, message))))
            .await?;
        crate::trace::emit(crate::trace::Event::Begin(Box::new(rec)));
        // A reply to a reply (a vacation answering a reject notice) is refused by the
        // vacation rules (Auto-Submitted); the recursion ends there.
        Box::pin(self.send_generated(generated)).await;
        Ok(receipt)
    }
}
