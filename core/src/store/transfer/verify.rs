//! The check after a copy: everything of the source is in the target, computed by the same
//! code on both sides through [`Export`]. Per mailbox its IMAP state (UIDVALIDITY, UIDNEXT,
//! HIGHESTMODSEQ, special use), a count and a SHA-256 over every message in UID order (UID,
//! MODSEQ, internal date, size, flags as a set, SHA-256 of the body), and a count and a
//! SHA-256 over the expunge log as ranges (`vanished.rs`). Accounts with their password
//! hashes, domains, aliases and subscriptions are looked up one by one; queue entries with
//! a hash of their bodies; key-value entries (those not expired) with value and expiry.
//!
//! The target may hold more (accounts of its own, a mailbox the source deleted after an
//! earlier run); that is not a mismatch.

use ring::digest::{Context, SHA256, digest};

use super::vanished;
use super::*;

/// Key-value entries compared per lookup.
const KV_PAGE: usize = 1000;

/// The outcome of [`verify`]: a line per mailbox and per kind of record, and the problems.
#[derive(Debug, Default, Clone)]
pub struct Verified {
    /// What was compared, one line each.
    pub lines: Vec<String>,
    /// Every difference, one line each.
    pub problems: Vec<String>,
}

impl Verified {
    /// Whether the target holds everything of the source.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    fn check(&mut self, ok: bool, problem: impl FnOnce() -> String) {
        if !ok {
            self.problems.push(problem());
        }
    }
}

impl std::fmt::Display for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for l in &self.lines {
            writeln!(f, "{l}")?;
        }
        for p in &self.problems {
            writeln!(f, "MISMATCH {p}")?;
        }
        if self.ok() {
            write!(f, "verified: the target holds everything of the source")
        } else {
            write!(f, "verification failed: {} mismatches", self.problems.len())
        }
    }
}

/// What a mailbox holds, as [`digest`] sums it up.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Digest {
    messages: u64,
    hash: [u8; 32],
    expunged: u64,
    expunged_hash: [u8; 32],
}

impl Digest {
    fn short(&self) -> String {
        hex(&self.hash[..8])
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sha256(b: &[u8]) -> [u8; 32] {
    digest(&SHA256, b).as_ref().try_into().expect("32 bytes")
}

/// Sum up mailbox `mb` of `store` (module documentation).
async fn mailbox_digest(
    store: &dyn Export,
    mb: &Mailbox,
    what: &str,
    progress: &mut Progress<'_>,
) -> Result<Digest> {
    let messages = store.messages(mb.id).await?;
    let mut h = Context::new(&SHA256);
    for (i, m) in messages.iter().enumerate() {
        let body = store.blob(m.blob).await?;
        h.update(&m.uid.to_be_bytes());
        h.update(&m.modseq.to_be_bytes());
        h.update(&m.internal_date.to_be_bytes());
        h.update(&m.size.to_be_bytes());
        let flags = flag_set(&m.flags);
        h.update(&(flags.len() as u32).to_be_bytes());
        for f in flags {
            h.update(&(f.len() as u32).to_be_bytes());
            h.update(f.as_bytes());
        }
        h.update(&sha256(&body));
        progress.tick(|| format!("{what} {}/{} messages", i + 1, messages.len()));
    }
    let logged = store.vanished(mb.id).await?;
    let gone = vanished::implied(mb, &messages, &logged);
    let mut v = Context::new(&SHA256);
    for (first, last, modseq) in &gone {
        v.update(&first.to_be_bytes());
        v.update(&last.to_be_bytes());
        v.update(&modseq.to_be_bytes());
    }
    Ok(Digest {
        messages: messages.len() as u64,
        hash: h.finish().as_ref().try_into().expect("32 bytes"),
        expunged: vanished::count(&gone),
        expunged_hash: v.finish().as_ref().try_into().expect("32 bytes"),
    })
}

/// Compare everything of `source` with `target` (module documentation); progress lines go
/// to `progress`. Errors are failures to read; differences are in [`Verified::problems`].
pub async fn verify(
    source: &dyn Export,
    target: &dyn Export,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<Verified> {
    let mut progress = Progress::new(progress);
    let mut out = Verified::default();

    let accounts = source.accounts().await?;
    let mut owners: std::collections::BTreeSet<String> =
        source.owners().await?.into_iter().collect();
    for a in &accounts {
        owners.insert(a.address.clone());
        let there = target.account(&a.address).await?;
        out.check(
            there.as_ref().map(|t| &t.password_hash) == Some(&a.password_hash),
            || match there {
                None => format!("account {}: missing in the target", a.address),
                Some(_) => format!("account {}: another password hash", a.address),
            },
        );
    }
    out.lines.push(format!(
        "accounts: {} with their password hashes",
        accounts.len()
    ));

    let domains = target.domains().await?;
    let wanted = source.domains().await?;
    for d in &wanted {
        out.check(domains.contains(d), || format!("domain {d}: missing"));
    }
    let aliases = source.aliases().await?;
    for (alias, targets) in &aliases {
        let there = target.alias(alias).await?;
        out.check(there.as_ref() == Some(targets), || {
            format!("alias {alias}: {targets:?} in the source, {there:?} in the target")
        });
    }
    out.lines.push(format!(
        "domains: {}; aliases: {}",
        wanted.len(),
        aliases.len()
    ));

    let (mut subscriptions, mut mailboxes, mut messages) = (0, 0, 0);
    for owner in &owners {
        let theirs = target.subscriptions(owner).await?;
        for name in source.subscriptions(owner).await? {
            subscriptions += 1;
            out.check(theirs.contains(&name), || {
                format!("{owner}: subscription {name:?} missing")
            });
        }
        let targets = target.mailbox_records(owner).await?;
        for s in source.mailbox_records(owner).await? {
            let s = s.mailbox;
            mailboxes += 1;
            let what = format!("{owner}: {}", s.name);
            let Some(t) = targets.iter().find(|t| t.mailbox.name == s.name) else {
                out.problems
                    .push(format!("{what}: mailbox missing in the target"));
                continue;
            };
            let t = &t.mailbox;
            let state = |m: &Mailbox| {
                (
                    m.uidvalidity,
                    m.uidnext,
                    m.highest_modseq,
                    m.special_use.clone(),
                )
            };
            out.check(state(&s) == state(t), || {
                format!(
                    "{what}: UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, special use {:?} in the \
                     source, {:?} in the target",
                    state(&s),
                    state(t)
                )
            });
            let ds =
                mailbox_digest(source, &s, &format!("verifying {what}"), &mut progress).await?;
            let dt = mailbox_digest(
                target,
                t,
                &format!("verifying {what} (target)"),
                &mut progress,
            )
            .await?;
            messages += ds.messages;
            let line = format!(
                "{what}: {} messages, {} expunged, UIDVALIDITY {}, UIDNEXT {}, HIGHESTMODSEQ {}, \
                 checksum {}",
                ds.messages,
                ds.expunged,
                s.uidvalidity,
                s.uidnext,
                s.highest_modseq,
                ds.short()
            );
            out.check(ds.messages == dt.messages && ds.hash == dt.hash, || {
                format!(
                    "{what}: {} messages, checksum {} in the source; {} messages, checksum \
                     {} in the target",
                    ds.messages,
                    ds.short(),
                    dt.messages,
                    dt.short()
                )
            });
            out.check(
                ds.expunged == dt.expunged && ds.expunged_hash == dt.expunged_hash,
                || {
                    format!(
                        "{what}: {} expunged UIDs in the source's log, {} in the target's, or \
                         other MODSEQs",
                        ds.expunged, dt.expunged
                    )
                },
            );
            out.lines.push(line);
        }
        progress.say(&format!("verified {owner}"));
    }
    out.lines.push(format!(
        "mailboxes: {mailboxes}, {messages} messages; subscriptions: {subscriptions}"
    ));

    let queue = source.queue().await?;
    for e in &queue {
        let Some(t) = target.queue_entry(&e.id).await? else {
            out.problems.push(format!("queue entry {}: missing", e.id));
            continue;
        };
        let fields = |e: &QueueEntry| {
            let mut e = e.clone();
            e.blob = 0;
            e.lease = None;
            serde_json::to_string(&e).unwrap_or_default()
        };
        out.check(fields(e) == fields(&t), || {
            format!("queue entry {}: other envelope or state", e.id)
        });
        let (a, b) = (source.blob(e.blob).await?, target.blob(t.blob).await?);
        out.check(sha256(&a) == sha256(&b), || {
            format!("queue entry {}: another message", e.id)
        });
    }
    out.lines.push(format!("queue: {} entries", queue.len()));

    let now = chrono::Utc::now().timestamp();
    let mut after: Option<(String, String)> = None;
    let mut kv: std::collections::BTreeMap<String, u64> = Default::default();
    loop {
        let page = source
            .kv_page(
                after.as_ref().map(|(n, k)| (n.as_str(), k.as_str())),
                KV_PAGE,
            )
            .await?;
        let Some(last) = page.last() else { break };
        after = Some((last.ns.clone(), last.key.clone()));
        let live: Vec<KvEntry> = page.into_iter().filter(|e| !e.expired(now)).collect();
        let keys: Vec<(String, String)> =
            live.iter().map(|e| (e.ns.clone(), e.key.clone())).collect();
        let theirs = target.kv_entries(&keys).await?;
        for (e, t) in live.iter().zip(theirs) {
            *kv.entry(e.ns.clone()).or_default() += 1;
            out.check(t.as_ref() == Some(e), || {
                format!(
                    "kv {} {:?}: {}",
                    e.ns,
                    e.key,
                    if t.is_none() {
                        "missing"
                    } else {
                        "another value or expiry"
                    }
                )
            });
        }
    }
    let spaces: Vec<String> = kv.iter().map(|(ns, n)| format!("{ns} {n}")).collect();
    out.lines.push(format!(
        "kv: {} entries ({})",
        kv.values().sum::<u64>(),
        if spaces.is_empty() {
            "none".into()
        } else {
            spaces.join(", ")
        }
    ));

    let (s, t) = (
        source.uidvalidity_counter().await?,
        target.uidvalidity_counter().await?,
    );
    out.check(t >= s, || {
        format!("UIDVALIDITY counter: {t} in the target, below the source's {s}")
    });
    Ok(out)
}
