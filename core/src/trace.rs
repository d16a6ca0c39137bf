//! The message trace: for every message that reached the end of DATA, accepted or refused,
//! the story a postmaster needs, without the message body. Connection facts, each hook's
//! verdict (engine, entry, time, reason), sender authentication, spam score, where each
//! copy was filed, and every remote delivery attempt up to delivery or DSN.
//!
//! Kept in the store's key-value area, so every node sharing a database sees every trace:
//! namespace `trace`, queue id → [`Record`] as JSON, one key per message. Queue ids begin
//! with the time in milliseconds (`delivery::new_queue_id`), so the keys are in time order:
//! a time range is a key range, which searches walk from the newest a page at a time
//! (stopping at their limit) and pruning from the oldest; a Message-ID is found by walking
//! from the newest. Sessions and the queue hand events to one writer task over a
//! bounded channel ([`emit`]) and never wait for it; when it falls behind, events are
//! dropped and counted (`corvus_trace_events_dropped_total`). A pruner removes traces older
//! than `[trace] retention` and the oldest beyond `[trace] max_traces`.

use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::store::{Store, StoreError};

const NS: &str = "trace";
/// Bounds on one record: a trace never grows without limit, whatever a peer does.
const MAX_STEPS: usize = 100;
const MAX_ATTEMPTS: usize = 50;
const MAX_TEXT: usize = 500;
const MAX_RCPTS: usize = 100;

/// The connection a message came in on.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Connection {
    /// `[listen]` key (`queue` for bounces and reports).
    pub listener: String,
    /// Client IP.
    pub ip: String,
    /// The client's PTR name, if any.
    pub ptr: Option<String>,
    /// Forward-confirmed reverse DNS: pass, fail, none.
    pub fcrdns: String,
    /// EHLO/HELO name.
    pub helo: Option<String>,
    /// TLS version and cipher, when the session used TLS.
    pub tls: Option<String>,
    /// The authenticated user.
    pub user: Option<String>,
}

/// Sender authentication results.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SenderAuth {
    /// SPF result.
    pub spf: String,
    /// DKIM result.
    pub dkim: String,
    /// DMARC result.
    pub dmarc: String,
    /// ARC result.
    pub arc: String,
}

/// A spam filter's result.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Spam {
    /// The filter.
    pub engine: String,
    /// Its score.
    pub score: f64,
    /// The score at which it calls a message spam.
    pub required: f64,
    /// Its action.
    pub action: String,
    /// The symbols (rules) that matched.
    pub symbols: Vec<String>,
}

/// One decision on the way.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Step {
    /// RFC 3339 time.
    pub at: String,
    /// Hook point (`on_data`) or `policy`, `delivery`, `dsn`, `queue`.
    pub stage: String,
    /// The hook entry or part of Corvus that decided.
    pub engine: String,
    /// Its verdict.
    pub verdict: String,
    /// Why, in words.
    pub reason: String,
    /// How long it took, microseconds.
    pub micros: u64,
}

impl Step {
    /// A step taken now by a part of Corvus (no hook timing).
    pub fn now(stage: &str, engine: &str, verdict: &str, reason: String) -> Step {
        Step {
            at: now_rfc3339(),
            stage: stage.into(),
            engine: engine.into(),
            verdict: verdict.into(),
            reason,
            micros: 0,
        }
    }
}

/// Where one copy went.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Filed {
    /// The envelope recipient.
    pub recipient: String,
    /// The account it was filed for.
    pub user: String,
    /// The mailbox.
    pub mailbox: String,
}

/// One remote delivery attempt.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Attempt {
    /// RFC 3339 time.
    pub at: String,
    /// The recipients it was for.
    pub recipients: Vec<String>,
    /// The host tried (`mx.example.org[192.0.2.1]:25`), if one was reached.
    pub mx: Option<String>,
    /// TLS version, when the connection used it.
    pub tls: Option<String>,
    /// The remote reply or the error.
    pub reply: String,
    /// delivered, deferred, bounced.
    pub result: String,
}

/// The whole story of one message.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// Queue id (the one in `250 … queued as`).
    pub id: String,
    /// RFC 3339 time of the end of DATA.
    pub created: String,
    /// Unix seconds of the same.
    pub created_unix: i64,
    /// The Message-ID header field's value.
    pub message_id: Option<String>,
    /// Envelope sender (empty for `<>`).
    pub sender: String,
    /// Envelope recipients.
    pub recipients: Vec<String>,
    /// Message size in bytes.
    pub size: u64,
    /// accepted, rejected, tempfailed, discarded.
    pub result: String,
    /// The reply the client got.
    pub reply: String,
    /// The connection.
    pub connection: Connection,
    /// Sender authentication, when it ran.
    pub sender_auth: Option<SenderAuth>,
    /// Spam filter result, when one scanned it.
    pub spam: Option<Spam>,
    /// Decisions in order.
    pub steps: Vec<Step>,
    /// Local copies.
    pub filed: Vec<Filed>,
    /// Remote delivery attempts.
    pub attempts: Vec<Attempt>,
}

/// A record's entry in the search list.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Queue id.
    pub id: String,
    /// RFC 3339.
    pub created: String,
    /// Message-ID.
    pub message_id: Option<String>,
    /// Envelope sender.
    pub sender: String,
    /// Envelope recipients.
    pub recipients: Vec<String>,
    /// accepted, rejected, …
    pub result: String,
}

impl Record {
    /// Bound every list and text of the record.
    fn bound(&mut self) {
        self.steps.truncate(MAX_STEPS);
        self.attempts.truncate(MAX_ATTEMPTS);
        self.recipients.truncate(MAX_RCPTS);
        self.filed.truncate(MAX_RCPTS);
        self.reply = clip(&self.reply);
        for s in &mut self.steps {
            s.reason = clip(&s.reason);
        }
        if let Some(m) = &mut self.message_id {
            *m = clip(m);
        }
    }

    fn summary(&self) -> Summary {
        Summary {
            id: self.id.clone(),
            created: self.created.clone(),
            message_id: self.message_id.clone(),
            sender: self.sender.clone(),
            recipients: self.recipients.clone(),
            result: self.result.clone(),
        }
    }
}

/// At most [`MAX_TEXT`] bytes of `s`, cut at a character boundary.
pub fn clip(s: &str) -> String {
    if s.len() <= MAX_TEXT {
        return s.to_string();
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Now, RFC 3339 in UTC with seconds.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A change to a trace.
#[derive(Debug)]
pub enum Event {
    /// A new trace (end of DATA).
    Begin(Box<Record>),
    /// Decisions taken later (delivery hooks, the queue).
    Steps(String, Vec<Step>),
    /// Copies filed later (the queue's local deliveries).
    Filed(String, Vec<Filed>),
    /// A remote delivery attempt.
    Attempt(String, Attempt),
}

impl Event {
    fn id(&self) -> &str {
        match self {
            Event::Begin(r) => &r.id,
            Event::Steps(id, _) | Event::Filed(id, _) | Event::Attempt(id, _) => id,
        }
    }
}

static WRITER: OnceLock<mpsc::Sender<Event>> = OnceLock::new();

/// Hand an event to the trace writer, if this process runs one (a server does; CLI
/// commands and unit tests do not). Never waits.
pub fn emit(event: Event) {
    let Some(tx) = WRITER.get() else { return };
    if tx.try_send(event).is_err() {
        crate::metrics::m().trace_dropped.inc();
    }
}

/// Start the writer and the pruner (once per process; `corvus serve`).
pub fn start(
    store: Store,
    config: &crate::config::Trace,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let (tx, rx) = mpsc::channel(16_384);
    if WRITER.set(tx).is_err() {
        return;
    }
    tokio::spawn(write_loop(store.clone(), rx));
    let retention = config.retention;
    let max = config.max_traces;
    tokio::spawn(async move {
        loop {
            match prune(&store, retention, max).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "pruned message traces"),
                Err(e) => tracing::warn!(error = %e, "pruning message traces failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(600)) => {}
            }
        }
    });
}

async fn write_loop(store: Store, mut rx: mpsc::Receiver<Event>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 256).await > 0 {
        // Events of one message in order; different messages side by side.
        let mut groups: Vec<Vec<Event>> = Vec::new();
        for ev in batch.drain(..) {
            match groups.iter_mut().find(|g| g[0].id() == ev.id()) {
                Some(g) => g.push(ev),
                None => groups.push(vec![ev]),
            }
        }
        let mut set = tokio::task::JoinSet::new();
        for group in groups {
            let store = store.clone();
            set.spawn(async move {
                if let Err(e) = apply(&store, group).await {
                    tracing::warn!(error = %e, "writing a message trace failed");
                }
            });
        }
        while set.join_next().await.is_some() {}
    }
}

/// Apply one message's events to its stored trace: one key per message.
async fn apply(store: &Store, events: Vec<Event>) -> Result<(), StoreError> {
    let id = events[0].id().to_string();
    let mut rec: Option<Record> = None;
    for ev in events {
        match ev {
            Event::Begin(r) => rec = Some(*r),
            other => {
                if rec.is_none() {
                    rec = by_id(store, &id).await?;
                }
                let Some(r) = rec.as_mut() else {
                    // Traced before this Corvus kept traces, or pruned.
                    continue;
                };
                match other {
                    Event::Steps(_, s) => r.steps.extend(s),
                    Event::Filed(_, f) => r.filed.extend(f),
                    Event::Attempt(_, a) => r.attempts.push(a),
                    Event::Begin(_) => unreachable!("matched above"),
                }
            }
        }
    }
    let Some(mut rec) = rec else { return Ok(()) };
    rec.bound();
    let json = serde_json::to_vec(&rec).expect("serializable");
    store.kv_set(NS, &id, &json, None).await
}

/// The first key of the traces made at `ms` or later (queue ids begin with the time:
/// `delivery::new_queue_id`).
fn key_at(ms: i64) -> String {
    format!("{:016X}", (ms.max(0) as u64) << 20)
}

/// A Message-ID as compared: without angle brackets and surrounding space.
fn normal_mid(mid: &str) -> String {
    mid.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_string()
}

async fn by_id(store: &Store, id: &str) -> Result<Option<Record>, StoreError> {
    Ok(store
        .kv_get(NS, id)
        .await?
        .and_then(|v| serde_json::from_slice(&v).ok()))
}

/// Records with keys from `start` to `end` (empty: no end), oldest first, read a page at a
/// time: `visit` sees each; it returns false to stop.
async fn walk(
    store: &Store,
    start: &str,
    end: &str,
    mut visit: impl FnMut(&str, &[u8]) -> bool,
) -> Result<(), StoreError> {
    const PAGE: usize = 1000;
    let mut from = start.to_string();
    loop {
        let page = store.kv_range(NS, &from, end, PAGE).await?;
        for (k, v) in &page {
            if !visit(k, v) {
                return Ok(());
            }
        }
        match page.last() {
            // Every key is 16 characters: the next one sorts after `last` + "0".
            Some((last, _)) if page.len() == PAGE => from = format!("{last}0"),
            _ => return Ok(()),
        }
    }
}

/// [`walk`] from the newest: keys below `end` (empty: no end) down to `start`.
async fn walk_back(
    store: &Store,
    start: &str,
    end: &str,
    mut visit: impl FnMut(&str, &[u8]) -> bool,
) -> Result<(), StoreError> {
    const PAGE: usize = 200;
    let mut below = end.to_string();
    loop {
        let page = store.kv_range_back(NS, start, &below, PAGE).await?;
        for (k, v) in &page {
            if !visit(k, v) {
                return Ok(());
            }
        }
        match page.last() {
            Some((last, _)) if page.len() == PAGE => below.clone_from(last),
            _ => return Ok(()),
        }
    }
}

/// The trace of queue id or Message-ID `id` (the newest with that Message-ID).
pub async fn get(store: &Store, id: &str) -> Result<Option<Record>, StoreError> {
    let id = id.trim();
    if let Some(r) = by_id(store, id).await? {
        return Ok(Some(r));
    }
    let mid = normal_mid(id);
    if mid.is_empty() {
        return Ok(None);
    }
    let mut found = None;
    walk_back(store, "", "", |_, v| {
        if let Ok(r) = serde_json::from_slice::<Record>(v)
            && r.message_id.as_deref().map(normal_mid).as_deref() == Some(mid.as_str())
        {
            found = Some(r);
            return false;
        }
        true
    })
    .await?;
    Ok(found)
}

/// What a search asks for; every given field must match.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Query {
    /// Envelope sender contains this (case-insensitive).
    pub sender: Option<String>,
    /// A recipient contains this (case-insensitive).
    pub recipient: Option<String>,
    /// Message-ID contains this.
    pub message_id: Option<String>,
    /// From this Unix second on.
    pub since: Option<i64>,
    /// Before this Unix second.
    pub until: Option<i64>,
    /// At most this many, newest first.
    pub limit: Option<usize>,
}

/// The traces matching `q`, newest first: a walk from the newest (or from `until`) that
/// stops at `limit` matches or at `since`.
pub async fn search(store: &Store, q: &Query) -> Result<Vec<Summary>, StoreError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let lower = |s: &Option<String>| {
        s.as_ref()
            .map(|s| s.to_lowercase())
            .filter(|s| !s.is_empty())
    };
    let (sender, rcpt, mid) = (lower(&q.sender), lower(&q.recipient), lower(&q.message_id));
    let start = q.since.map(|t| key_at(t * 1000)).unwrap_or_default();
    let end = q.until.map(|t| key_at(t * 1000)).unwrap_or_default();
    let mut found = Vec::new();
    walk_back(store, &start, &end, |_, v| {
        let Ok(r) = serde_json::from_slice::<Record>(v) else {
            return true;
        };
        let matches = sender
            .as_ref()
            .is_none_or(|w| r.sender.to_lowercase().contains(w))
            && rcpt
                .as_ref()
                .is_none_or(|w| r.recipients.iter().any(|x| x.to_lowercase().contains(w)))
            && mid.as_ref().is_none_or(|w| {
                r.message_id
                    .as_ref()
                    .is_some_and(|m| m.to_lowercase().contains(w))
            });
        if matches {
            found.push(r.summary());
        }
        found.len() < limit
    })
    .await?;
    Ok(found)
}

/// Remove traces older than `retention`, then the oldest beyond `max`. How many went.
pub async fn prune(store: &Store, retention: Duration, max: u64) -> Result<u64, StoreError> {
    let cutoff = key_at((chrono::Utc::now().timestamp() - retention.as_secs() as i64) * 1000);
    let mut keys = Vec::new();
    walk(store, "", "", |k, _| {
        keys.push(k.to_string());
        true
    })
    .await?;
    let over = (keys.len() as u64).saturating_sub(max) as usize;
    let mut removed = 0;
    for (i, key) in keys.iter().enumerate() {
        if *key >= cutoff && i >= over {
            break;
        }
        store.kv_delete(NS, key).await?;
        removed += 1;
    }
    Ok(removed)
}

/// `corvus trace ID` and the console: the record in words, one fact per line.
pub fn render(r: &Record) -> String {
    let mut out = format!(
        "trace {}\n  created:     {}\n  result:      {} ({})\n  from:        <{}>\n  to:          {}\n  size:        {} bytes\n",
        r.id,
        r.created,
        r.result,
        r.reply,
        r.sender,
        r.recipients.join(", "),
        r.size
    );
    if let Some(m) = &r.message_id {
        out.push_str(&format!("  message-id:  {m}\n"));
    }
    let c = &r.connection;
    out.push_str(&format!(
        "connection\n  listener {}, client {} (ptr {}, fcrdns {}), helo {}, tls {}, user {}\n",
        c.listener,
        c.ip,
        c.ptr.as_deref().unwrap_or("-"),
        c.fcrdns,
        c.helo.as_deref().unwrap_or("-"),
        c.tls.as_deref().unwrap_or("none"),
        c.user.as_deref().unwrap_or("-"),
    ));
    if let Some(a) = &r.sender_auth {
        out.push_str(&format!(
            "sender authentication\n  spf={} dkim={} dmarc={} arc={}\n",
            a.spf, a.dkim, a.dmarc, a.arc
        ));
    }
    if let Some(s) = &r.spam {
        out.push_str(&format!(
            "spam\n  {}: score {:.2} (required {:.2}), action {}, symbols {}\n",
            s.engine,
            s.score,
            s.required,
            s.action,
            s.symbols.join(",")
        ));
    }
    if !r.steps.is_empty() {
        out.push_str("steps\n");
        for s in &r.steps {
            out.push_str(&format!(
                "  {} {:<12} {:<30} {:<10} {} ({} µs)\n",
                s.at, s.stage, s.engine, s.verdict, s.reason, s.micros
            ));
        }
    }
    if !r.filed.is_empty() {
        out.push_str("filed\n");
        for f in &r.filed {
            out.push_str(&format!(
                "  {} -> {} / {}\n",
                f.recipient, f.user, f.mailbox
            ));
        }
    }
    if !r.attempts.is_empty() {
        out.push_str("delivery attempts\n");
        for a in &r.attempts {
            out.push_str(&format!(
                "  {} {} via {} tls {}: {} ({})\n",
                a.at,
                a.recipients.join(","),
                a.mx.as_deref().unwrap_or("-"),
                a.tls.as_deref().unwrap_or("none"),
                a.result,
                a.reply
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A record made `ago` seconds before now, and its id.
    fn record(ago: i64, from: &str, mid: &str) -> Record {
        let created = chrono::Utc::now().timestamp() - ago;
        Record {
            id: format!("{:016X}", ((created as u64 * 1000) << 20) | 7),
            created_unix: created,
            created: chrono::DateTime::from_timestamp(created, 0)
                .unwrap()
                .to_rfc3339(),
            message_id: Some(format!("<{mid}>")),
            sender: from.into(),
            recipients: vec!["bob@example.org".into()],
            result: "accepted".into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn traces_are_found_by_id_message_id_and_search_and_pruned() {
        let store: Store = Arc::new(crate::store::MemoryStore::new());
        let (a, b) = (
            record(100, "x@a.org", "m1@a"),
            record(50, "y@b.org", "m2@b"),
        );
        let (a1, b2) = (a.id.clone(), b.id.clone());
        apply(&store, vec![Event::Begin(Box::new(a))])
            .await
            .unwrap();
        apply(&store, vec![Event::Begin(Box::new(b))])
            .await
            .unwrap();
        let step = Step {
            reason: "x".repeat(2000),
            ..Default::default()
        };
        apply(
            &store,
            vec![
                Event::Steps(a1.clone(), vec![step]),
                Event::Attempt(
                    a1.clone(),
                    Attempt {
                        result: "deferred".into(),
                        ..Default::default()
                    },
                ),
            ],
        )
        .await
        .unwrap();
        let got = get(&store, &a1).await.unwrap().unwrap();
        assert_eq!(got.attempts.len(), 1);
        assert!(got.steps[0].reason.len() < 600);
        assert_eq!(get(&store, "<m2@b>").await.unwrap().unwrap().id, b2);
        assert_eq!(get(&store, "m2@b").await.unwrap().unwrap().id, b2);
        assert!(get(&store, "nope").await.unwrap().is_none());
        let all = search(&store, &Query::default()).await.unwrap();
        assert_eq!(
            all.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
            [b2.clone(), a1.clone()]
        );
        let q = Query {
            sender: Some("X@A".into()),
            ..Default::default()
        };
        assert_eq!(search(&store, &q).await.unwrap()[0].id, a1);
        let q = Query {
            since: Some(chrono::Utc::now().timestamp() - 60),
            ..Default::default()
        };
        assert_eq!(search(&store, &q).await.unwrap().len(), 1);
        let q = Query {
            limit: Some(1),
            ..Default::default()
        };
        assert_eq!(search(&store, &q).await.unwrap()[0].id, b2);
        // Events for a trace that is not there are dropped.
        apply(&store, vec![Event::Filed("ZZ".into(), vec![])])
            .await
            .unwrap();
        assert!(get(&store, "ZZ").await.unwrap().is_none());
        // Retention 75 s removes A1; a bound of 0 more removes everything.
        assert_eq!(prune(&store, Duration::from_secs(75), 10).await.unwrap(), 1);
        assert!(get(&store, &a1).await.unwrap().is_none());
        assert!(get(&store, "m1@a").await.unwrap().is_none());
        assert_eq!(
            prune(&store, Duration::from_secs(3600), 0).await.unwrap(),
            1
        );
        assert!(search(&store, &Query::default()).await.unwrap().is_empty());
    }
}
