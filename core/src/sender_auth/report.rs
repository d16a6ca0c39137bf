//! DMARC aggregate reports (RFC 7489 §7.2), optional and off by default
//! (`[sender_auth.dmarc_reports]`).
//!
//! Collection: every DMARC evaluation of a domain that publishes `rua` adds to that domain's
//! report for the current period (periods are aligned to multiples of `interval` in UTC),
//! kept in the store's key-value area (`corvus.dmarc`), so results survive restarts. Identical
//! rows are counted, not repeated; domains per period and rows per report are capped.
//!
//! Sending: a background task finds periods that have ended, checks that each `rua` address
//! outside the policy domain has authorized reports (RFC 7489 §7.1, the
//! `<domain>._report._dmarc.<rua domain>` record), and queues one message per report with the
//! gzip-compressed XML attached; the outbound queue delivers (and DKIM-signs) it.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use mail_builder::MessageBuilder;
use serde::{Deserialize, Serialize};

use crate::store::lease::Held;
use crate::store::{QueueRcpt, Store};

const NS: &str = "corvus.dmarc";
const PENDING: &str = "pending";

/// One aggregated row: everything but the count identifies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// Client address.
    pub source_ip: String,
    /// Messages with exactly these results.
    pub count: u32,
    /// "none", "quarantine" or "reject": what we did.
    pub disposition: String,
    /// DMARC-aligned DKIM result ("pass"/"fail").
    pub dkim: String,
    /// DMARC-aligned SPF result ("pass"/"fail").
    pub spf: String,
    /// Why the published policy was not applied ("trusted_forwarder", "local_policy").
    pub reason: Option<String>,
    /// RFC5322.From domain.
    pub header_from: String,
    /// RFC5321.MailFrom domain.
    pub envelope_from: String,
    /// Each DKIM signature: (d=, s=, result).
    pub dkim_results: Vec<(String, String, String)>,
    /// SPF: (domain, scope "mfrom"/"helo", result).
    pub spf_result: (String, String, String),
}

impl Row {
    fn same(&self, o: &Row) -> bool {
        let mut a = self.clone();
        a.count = o.count;
        a == *o
    }
}

/// The published policy, as reported.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// "r" or "s".
    pub adkim: String,
    /// "r" or "s".
    pub aspf: String,
    /// p=
    pub p: String,
    /// sp=
    pub sp: String,
    /// np=
    pub np: String,
    /// t=y (testing)
    pub testing: bool,
}

/// One domain's report for one period.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// Policy domain.
    pub domain: String,
    /// Period start (Unix seconds).
    pub begin: i64,
    /// Period end.
    pub end: i64,
    /// Policy as last seen.
    pub policy: Published,
    /// `rua` addresses (without `mailto:`).
    pub rua: Vec<String>,
    /// Aggregated rows.
    pub rows: Vec<Row>,
    /// Rows dropped for the cap.
    pub dropped: u64,
}

/// One evaluation to add.
pub struct Evaluation {
    /// Policy domain (the From domain evaluated).
    pub domain: String,
    /// Published policy.
    pub policy: Published,
    /// Where reports go.
    pub rua: Vec<String>,
    /// The row (count 1).
    pub row: Row,
}

/// Collection and sending, bound to the store.
///
/// Several nodes sharing a store each collect into their own partial reports (a node holds
/// one of [`SLOTS`] slots, a lease, so each partial has one writer and no update is lost);
/// one node at a time (the holder of the sender lease) merges the partials of an ended
/// period into one report per domain, sends it and deletes them; each node then drops the
/// sent ones from its own index.
pub struct Reports {
    store: Store,
    config: crate::config::DmarcReports,
    lock: tokio::sync::Mutex<()>,
    /// This node's slot, taken at first use.
    slot: tokio::sync::OnceCell<Option<(usize, Held)>>,
    /// The sender lease, once this node has it.
    sender: tokio::sync::Mutex<Option<Held>>,
}

/// How many nodes can collect reports at once.
const SLOTS: usize = 64;

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The index of a slot's partial reports.
fn index_key(slot: usize) -> String {
    format!("{PENDING}/{slot}")
}

/// The parts of one report to send: (index, partial key) each.
pub(crate) type Parts = Vec<(String, String)>;

impl Reports {
    /// Reports kept in `store`.
    pub fn new(store: Store, config: crate::config::DmarcReports) -> Self {
        Reports {
            store,
            config,
            lock: tokio::sync::Mutex::new(()),
            slot: tokio::sync::OnceCell::new(),
            sender: tokio::sync::Mutex::new(None),
        }
    }

    /// Whether collection is on.
    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    fn period(&self, t: i64) -> (i64, i64) {
        let len = self.config.interval.as_secs().max(1) as i64;
        let begin = t - t.rem_euclid(len);
        (begin, begin + len)
    }

    /// This node's slot; `None` when every slot is held (or the store failed).
    async fn slot(&self) -> Option<usize> {
        let got = self
            .slot
            .get_or_init(|| async {
                match crate::store::lease::take_slot(&self.store, "dmarc-reports:node", SLOTS).await
                {
                    Ok(Some(held)) => {
                        let k = held.name().rsplit('#').next()?.parse().ok()?;
                        Some((k, held))
                    }
                    Ok(None) => {
                        tracing::warn!(
                            "DMARC reports not collected: all {SLOTS} node slots are held"
                        );
                        None
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "DMARC reports not collected: no node slot");
                        None
                    }
                }
            })
            .await;
        got.as_ref().map(|(k, _)| *k)
    }

    async fn index(&self, key: &str) -> Vec<String> {
        self.store
            .kv_get(NS, key)
            .await
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_slice(&v).ok())
            .unwrap_or_default()
    }

    async fn set_index(&self, key: &str, keys: &[String]) -> crate::store::Result<()> {
        self.store
            .kv_set(NS, key, &serde_json::to_vec(keys)?, None)
            .await
    }

    /// This node's partial reports (their keys).
    #[cfg(test)]
    async fn pending(&self) -> Vec<String> {
        match self.slot().await {
            Some(k) => self.index(&index_key(k)).await,
            None => Vec::new(),
        }
    }

    /// Add one evaluation to its period's report.
    pub async fn record(&self, e: Evaluation) {
        if !self.config.enabled || e.rua.is_empty() || e.domain.is_empty() {
            return;
        }
        let Some(slot) = self.slot().await else {
            return;
        };
        let _g = self.lock.lock().await;
        let (begin, end) = self.period(now());
        let key = format!("{begin}/{}/{slot}", e.domain);
        let mut report: Report = match self.store.kv_get(NS, &key).await {
            Ok(Some(v)) => serde_json::from_slice(&v).unwrap_or_default(),
            _ => {
                let index = index_key(slot);
                let mut pending = self.index(&index).await;
                let this_period = pending
                    .iter()
                    .filter(|k| k.starts_with(&format!("{begin}/")))
                    .count();
                if this_period >= self.config.max_domains {
                    tracing::info!(domain = %e.domain, "DMARC report not collected: max_domains reached for this period");
                    return;
                }
                pending.push(key.clone());
                if let Err(err) = self.set_index(&index, &pending).await {
                    tracing::warn!(error = %err, "DMARC report index not saved");
                    return;
                }
                Report {
                    domain: e.domain.clone(),
                    begin,
                    end,
                    ..Default::default()
                }
            }
        };
        report.policy = e.policy;
        report.rua = e.rua;
        report.add(e.row, self.config.max_rows);
        match serde_json::to_vec(&report) {
            Ok(v) => {
                if let Err(err) = self.store.kv_set(NS, &key, &v, None).await {
                    tracing::warn!(error = %err, "DMARC report not saved");
                }
            }
            Err(err) => tracing::warn!(error = %err, "DMARC report not encoded"),
        }
    }

    /// Reports whose period has ended, each merged from every node's part (removed from the
    /// store by [`Self::forget`]); only on the node holding the sender lease.
    async fn due(&self) -> Vec<(Parts, Report)> {
        self.due_at(now()).await
    }

    async fn due_at(&self, t: i64) -> Vec<(Parts, Report)> {
        self.prune().await;
        {
            let mut sender = self.sender.lock().await;
            if sender.is_none() {
                match crate::store::lease::take(&self.store, "dmarc-reports:sender").await {
                    Ok(Some(held)) => *sender = Some(held),
                    Ok(None) => return Vec::new(),
                    Err(e) => {
                        tracing::warn!(error = %e, "DMARC reports: cannot take the sender lease");
                        return Vec::new();
                    }
                }
            }
        }
        // The index of each slot, and the one of versions before slots.
        let indexes = std::iter::once(PENDING.to_string()).chain((0..SLOTS).map(index_key));
        let mut merged: std::collections::BTreeMap<(i64, String), (Parts, Report)> =
            Default::default();
        for index in indexes {
            for k in self.index(&index).await {
                let Ok(Some(v)) = self.store.kv_get(NS, &k).await else {
                    continue;
                };
                let Ok(part) = serde_json::from_slice::<Report>(&v) else {
                    continue;
                };
                if part.end > t {
                    continue;
                }
                let (parts, report) = merged
                    .entry((part.begin, part.domain.clone()))
                    .or_insert_with(|| {
                        (
                            Vec::new(),
                            Report {
                                domain: part.domain.clone(),
                                begin: part.begin,
                                end: part.end,
                                ..Default::default()
                            },
                        )
                    });
                parts.push((index.clone(), k));
                report.policy = part.policy;
                report.rua = part.rua;
                report.dropped += part.dropped;
                for row in part.rows {
                    report.add(row, self.config.max_rows);
                }
            }
        }
        merged.into_values().collect()
    }

    /// Delete a sent (or dropped) report's parts. Each node drops them from its own index
    /// ([`Self::prune`]); the index of versions before slots only the sender writes.
    async fn forget(&self, parts: &Parts) {
        for (index, key) in parts {
            // TTL 0: gone at the next read.
            let _ = self.store.kv_set(NS, key, b"", Some(0)).await;
            if index == PENDING {
                let mut pending = self.index(PENDING).await;
                pending.retain(|k| k != key);
                let _ = self.set_index(PENDING, &pending).await;
            }
        }
        self.prune().await;
    }

    /// Drop from this node's index the parts that are gone (sent by whichever node sends;
    /// under the lock [`Self::record`] writes with, so a part being written is never gone).
    async fn prune(&self) {
        let Some(slot) = self.slot.get().and_then(|s| s.as_ref().map(|(k, _)| *k)) else {
            return;
        };
        let _g = self.lock.lock().await;
        let index = index_key(slot);
        let pending = self.index(&index).await;
        let mut kept = Vec::with_capacity(pending.len());
        for k in &pending {
            if matches!(self.store.kv_get(NS, k).await, Ok(Some(_))) {
                kept.push(k.clone());
            }
        }
        if kept.len() != pending.len() {
            let _ = self.set_index(&index, &kept).await;
        }
    }
}

impl Report {
    /// Count `row` in: a row identical but for its count adds to it; a new one is kept up
    /// to `max_rows`, then only counted as dropped.
    fn add(&mut self, row: Row, max_rows: usize) {
        if let Some(r) = self.rows.iter_mut().find(|r| r.same(&row)) {
            r.count = r.count.saturating_add(row.count);
        } else if self.rows.len() < max_rows {
            self.rows.push(row);
        } else {
            self.dropped += 1;
        }
    }
}

fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c if c.is_control() => {}
            c => o.push(c),
        }
    }
    o
}

/// The aggregate report XML (RFC 7489 Appendix C).
pub fn to_xml(r: &Report, org_name: &str, email: &str, report_id: &str) -> String {
    let e = xml_escape;
    let mut x = String::with_capacity(1024 + r.rows.len() * 600);
    x.push_str(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<feedback>\n  <version>1.0</version>\n",
    );
    x.push_str(&format!(
        "  <report_metadata>\n    <org_name>{}</org_name>\n    <email>{}</email>\n    <report_id>{}</report_id>\n    <date_range>\n      <begin>{}</begin>\n      <end>{}</end>\n    </date_range>\n",
        e(org_name), e(email), e(report_id), r.begin, r.end
    ));
    if r.dropped > 0 {
        x.push_str(&format!(
            "    <error>{} results not included (row limit)</error>\n",
            r.dropped
        ));
    }
    x.push_str("  </report_metadata>\n");
    let p = &r.policy;
    x.push_str(&format!(
        "  <policy_published>\n    <domain>{}</domain>\n    <adkim>{}</adkim>\n    <aspf>{}</aspf>\n    <p>{}</p>\n    <sp>{}</sp>\n    <np>{}</np>\n    <pct>100</pct>\n    <testing>{}</testing>\n  </policy_published>\n",
        e(&r.domain), e(&p.adkim), e(&p.aspf), e(&p.p), e(&p.sp), e(&p.np),
        if p.testing { "y" } else { "n" }
    ));
    for row in &r.rows {
        x.push_str(&format!(
            "  <record>\n    <row>\n      <source_ip>{}</source_ip>\n      <count>{}</count>\n      <policy_evaluated>\n        <disposition>{}</disposition>\n        <dkim>{}</dkim>\n        <spf>{}</spf>\n",
            e(&row.source_ip), row.count, e(&row.disposition), e(&row.dkim), e(&row.spf)
        ));
        if let Some(reason) = &row.reason {
            x.push_str(&format!(
                "        <reason>\n          <type>{}</type>\n        </reason>\n",
                e(reason)
            ));
        }
        x.push_str(&format!(
            "      </policy_evaluated>\n    </row>\n    <identifiers>\n      <envelope_from>{}</envelope_from>\n      <header_from>{}</header_from>\n    </identifiers>\n    <auth_results>\n",
            e(&row.envelope_from), e(&row.header_from)
        ));
        for (d, s, res) in &row.dkim_results {
            x.push_str(&format!(
                "      <dkim>\n        <domain>{}</domain>\n        <selector>{}</selector>\n        <result>{}</result>\n      </dkim>\n",
                e(d), e(s), e(res)
            ));
        }
        let (d, scope, res) = &row.spf_result;
        x.push_str(&format!(
            "      <spf>\n        <domain>{}</domain>\n        <scope>{}</scope>\n        <result>{}</result>\n      </spf>\n    </auth_results>\n  </record>\n",
            e(d), e(scope), e(res)
        ));
    }
    x.push_str("</feedback>\n");
    x
}

/// A report's sender (`from`, else `postmaster@` the first domain) and organization
/// (`org_name`, else the hostname).
pub(crate) fn sender_and_org(
    config: &crate::config::Config,
    from: &Option<String>,
    org_name: &Option<String>,
) -> (String, String) {
    let from = from.clone().unwrap_or_else(|| {
        format!(
            "postmaster@{}",
            config
                .domains
                .first()
                .map(String::as_str)
                .unwrap_or(&config.hostname)
        )
    });
    let org = org_name.clone().unwrap_or_else(|| config.hostname.clone());
    (from, org)
}

/// The queue entry of a report from `from` to `to`: no DSNs asked for, none ever warned
/// about, headers only if one bounces.
pub(crate) fn report_entry(from: &str, to: &[String], what: &str) -> crate::store::QueueEntry {
    let rcpts = to
        .iter()
        .map(|a| QueueRcpt {
            address: a.clone(),
            notify: vec!["NEVER".into()],
            orcpt: None,
        })
        .collect();
    let mut entry =
        crate::delivery::queue_entry(&crate::delivery::new_queue_id(), from, rcpts, now());
    entry.ret = Some("HDRS".into());
    entry.decisions = vec![what.into()];
    entry.warned = true;
    entry
}

/// `data` gzip-compressed (the reports' attachments).
pub(crate) fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = mail_auth::flate2::write::GzEncoder::new(
        Vec::new(),
        mail_auth::flate2::Compression::default(),
    );
    enc.write_all(data)?;
    enc.finish()
}

/// What the report sender uses: settings, the checker that collected the reports, and
/// the delivery path its reports leave by.
pub struct Deps {
    /// Settings (`[sender_auth.dmarc_reports]`, hostname, domains).
    pub config: Arc<crate::config::Config>,
    /// The checker holding the collected reports.
    pub sender_auth: Arc<super::SenderAuth>,
    /// Where reports go.
    pub delivery: crate::delivery::Delivery,
}

/// Send every report whose period has ended. Returns how many were queued.
pub async fn send_due(shared: &Deps) -> usize {
    let auth = &shared.sender_auth;
    let Some(reports) = auth.reports() else {
        return 0;
    };
    let cfg = &shared.config.sender_auth.dmarc_reports;
    let (from, org) = sender_and_org(&shared.config, &cfg.from, &cfg.org_name);
    let mut sent = 0;
    for (parts, report) in reports.due().await {
        // RFC 7489 §7.1: a destination outside the policy domain must have agreed.
        let Some(allowed) = auth.authorized_rua(&report.domain, &report.rua).await else {
            tracing::info!(domain = %report.domain, "DMARC report postponed: DNS failure checking rua authorization");
            continue;
        };
        if allowed.is_empty() || report.rows.is_empty() {
            tracing::info!(domain = %report.domain, "DMARC report dropped: no authorized rua address");
            reports.forget(&parts).await;
            continue;
        }
        let report_id = format!(
            "{}.{}@{}",
            report.begin, report.domain, shared.config.hostname
        );
        let xml = to_xml(&report, &org, &from, &report_id);
        let Ok(gz) = gzip(xml.as_bytes()) else {
            continue;
        };
        let file = format!(
            "{org}!{}!{}!{}.xml.gz",
            report.domain, report.begin, report.end
        );
        let subject = format!(
            "Report Domain: {} Submitter: {org} Report-ID: <{report_id}>",
            report.domain
        );
        let text = format!(
            "DMARC aggregate report for {} from {org}, {} to {} (Unix time).\r\n",
            report.domain, report.begin, report.end
        );
        let built = MessageBuilder::new()
            .from(from.as_str())
            .to(allowed.iter().map(String::as_str).collect::<Vec<_>>())
            .header("Subject", mail_builder::headers::raw::Raw::new(subject))
            .text_body(text)
            .attachment("application/gzip", file, gz)
            .write_to_vec();
        let Ok(message) = built else {
            continue;
        };
        let entry = report_entry(&from, &allowed, "dmarc aggregate report");
        match shared.delivery.deliver_generated(entry, message).await {
            Ok(_) => {
                tracing::info!(domain = %report.domain, rua = ?allowed, rows = report.rows.len(), "DMARC aggregate report queued");
                reports.forget(&parts).await;
                sent += 1;
            }
            Err(e) => tracing::warn!(error = %e, "DMARC report not queued"),
        }
    }
    sent
}

/// The sending task: checks for finished periods until shutdown.
pub async fn run(shared: Deps, shutdown: tokio_util::sync::CancellationToken) {
    let interval = shared.config.sender_auth.dmarc_reports.interval;
    every_part_of(interval, &shutdown, || send_due(&shared)).await;
}

/// Call `f` every quarter of `interval` (1 s to 5 min) until `shutdown`: the loop of the
/// report senders, which look for periods that have ended.
pub(crate) async fn every_part_of<F, Fut>(
    interval: Duration,
    shutdown: &tokio_util::sync::CancellationToken,
    mut f: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future,
{
    let tick = (interval / 4).clamp(Duration::from_secs(1), Duration::from_secs(300));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.cancelled() => return,
        }
        f().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ip: &str, disposition: &str) -> Row {
        Row {
            source_ip: ip.into(),
            count: 1,
            disposition: disposition.into(),
            dkim: "fail".into(),
            spf: "pass".into(),
            reason: None,
            header_from: "a.test".into(),
            envelope_from: "a.test".into(),
            dkim_results: vec![("a.test".into(), "s1".into(), "fail".into())],
            spf_result: ("a.test".into(), "mfrom".into(), "pass".into()),
        }
    }

    #[tokio::test]
    async fn rows_aggregate_and_xml_is_escaped() {
        let store: Store = Arc::new(crate::store::MemoryStore::new());
        let cfg = crate::config::DmarcReports {
            enabled: true,
            ..Default::default()
        };
        let reports = Reports::new(store, cfg);
        for (ip, d) in [
            ("192.0.2.1", "none"),
            ("192.0.2.1", "none"),
            ("192.0.2.2", "reject"),
        ] {
            reports
                .record(Evaluation {
                    domain: "a.test".into(),
                    policy: Published {
                        p: "reject".into(),
                        ..Default::default()
                    },
                    rua: vec!["agg@a.test".into()],
                    row: row(ip, d),
                })
                .await;
        }
        let pending = reports.pending().await;
        assert_eq!(pending.len(), 1);
        let r: Report = serde_json::from_slice(
            &reports
                .store
                .kv_get(NS, &pending[0])
                .await
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(r.rows.len(), 2);
        assert_eq!(r.rows[0].count, 2);
        assert_eq!(r.end - r.begin, 86400);
        assert!(reports.due().await.is_empty(), "the period has not ended");
        let x = to_xml(&r, "Org <&>", "p@a.test", "id1");
        assert!(x.contains("<org_name>Org &lt;&amp;&gt;</org_name>"));
        assert!(x.contains("<count>2</count>"));
        assert!(x.contains("<disposition>reject</disposition>"));
        assert!(x.contains("<scope>mfrom</scope>"));
        let due = reports.due_at(r.end).await;
        assert_eq!(due.len(), 1);
        reports.forget(&due[0].0).await;
        assert!(reports.pending().await.is_empty());
        assert!(
            reports
                .store
                .kv_get(NS, &pending[0])
                .await
                .unwrap()
                .is_none()
        );
    }

    /// Three nodes on one store collect into their own parts; one of them (the sender)
    /// sends one merged report per domain and period; every node's index empties.
    #[tokio::test]
    async fn nodes_collect_apart_and_one_report_is_sent() {
        let store: Store = Arc::new(crate::store::MemoryStore::new());
        let cfg = crate::config::DmarcReports {
            enabled: true,
            ..Default::default()
        };
        let nodes: Vec<Reports> = (0..3)
            .map(|_| Reports::new(store.clone(), cfg.clone()))
            .collect();
        let eval = |ip: &str| Evaluation {
            domain: "a.test".into(),
            policy: Published::default(),
            rua: vec!["agg@a.test".into()],
            row: row(ip, "none"),
        };
        for (i, n) in nodes.iter().enumerate() {
            for _ in 0..=i {
                n.record(eval("192.0.2.1")).await;
            }
            n.record(eval("192.0.2.9")).await;
        }
        let slots: std::collections::HashSet<usize> = {
            let mut v = std::collections::HashSet::new();
            for n in &nodes {
                v.insert(n.slot().await.unwrap());
            }
            v
        };
        assert_eq!(slots.len(), 3, "one slot per node");
        let end = nodes[0].period(now()).1;
        let mut sent = Vec::new();
        for n in &nodes {
            let due = n.due_at(end).await;
            for (parts, r) in &due {
                assert_eq!(parts.len(), 3);
                n.forget(parts).await;
                sent.push(r.clone());
            }
        }
        assert_eq!(sent.len(), 1, "one report, from one node");
        let count = |ip: &str| {
            sent[0]
                .rows
                .iter()
                .find(|r| r.source_ip == ip)
                .map(|r| r.count)
        };
        assert_eq!((count("192.0.2.1"), count("192.0.2.9")), (Some(6), Some(3)));
        for n in &nodes {
            n.prune().await;
            assert!(n.pending().await.is_empty());
        }
    }
}
