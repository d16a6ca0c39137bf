//! Following the other nodes: how a change committed on one node reaches the sessions of
//! another (IDLE, NOOP) and the metadata cache of every node.
//!
//! The database is the truth; notification is only a hint. After its writes a node sends
//! `NOTIFY corvus_changes` with the accounts it wrote (one task batches them, after the
//! COMMIT, never inside the transaction). Every node LISTENs on its own connection; a hint
//! makes it read the mailboxes of those accounts, compare them with what it last published
//! ([`Known`]: UIDNEXT and HIGHESTMODSEQ per mailbox) and publish the difference as typed
//! changes (new messages, flags, expunges, created, renamed and deleted mailboxes), read
//! with the `(mailbox_id, modseq)` indexes. It also polls: every 2 seconds while it
//! listens, every second when it cannot (a lost hint, a broken connection, a database
//! without LISTEN such as CockroachDB), so a lost hint only delays a change.
//!
//! Only the accounts someone on this node watches are followed: from the moment a session
//! watches one until [`LINGER`] after the last one stopped (so the metadata cache serves
//! clients that reconnect). The first time an account is followed (or a mailbox appears) its
//! mailboxes are published as [`Change::Stale`]: whoever kept a copy re-reads it. When an
//! account is no longer followed it is forgotten the same way, and [`Feed::publishes_all`]
//! says no for its mailboxes, so the metadata cache keeps no copy it could not keep exact.
//!
//! Order: a UID must never become visible to a session before a smaller one. When this node
//! commits new messages whose first UID is above the UIDNEXT it last published for the
//! mailbox, another node's messages came in between: they are read and published first
//! ([`PostgresStore::follow_before`]). Publishing is done under the account's in-process
//! lock, so the node's own writes and what it reads of the others' never interleave.
//! Consumers of the feed take a change they already have as a no-op; a change published
//! twice (the node's own, read back) costs nothing else.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use super::mailboxes::MESSAGE_COLUMNS;
use super::*;

/// The channel of the hints.
const CHANNEL: &str = "corvus_changes";

/// Poll interval while listening for hints, and while not.
const POLL_LISTENING: Duration = Duration::from_secs(2);
const POLL_DEAF: Duration = Duration::from_secs(1);

/// A NOTIFY payload stays below PostgreSQL's 8000 bytes.
const PAYLOAD_MAX: usize = 7000;

/// How often expired kv rows are swept, and how many at a time.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
const SWEEP_BATCH: i64 = 10_000;

/// What this node last published of a mailbox.
#[derive(Debug, Clone, PartialEq)]
struct Known {
    name: String,
    uidnext: u32,
    modseq: u64,
}

/// The follower's state, shared by the store's clones.
pub(super) struct Follow {
    /// This node, in its hints, so it skips its own.
    node: String,
    /// Started ([`PostgresStore::start_following`]).
    on: AtomicBool,
    /// Whether the listening connection is up.
    listening: AtomicBool,
    /// The accounts to hint about, for the sending task.
    hints: Mutex<Option<mpsc::UnboundedSender<String>>>,
    /// The follower's wake-up, to follow an account as soon as a session watches it.
    wake: Mutex<Option<mpsc::UnboundedSender<Wake>>>,
    state: Mutex<State>,
}

impl Default for Follow {
    fn default() -> Self {
        Follow {
            node: format!("{:016x}", rand::random::<u64>()),
            on: AtomicBool::new(false),
            listening: AtomicBool::new(false),
            hints: Mutex::new(None),
            wake: Mutex::new(None),
            state: Mutex::new(State::default()),
        }
    }
}

/// Followed accounts and their mailboxes.
#[derive(Default)]
struct State {
    accounts: HashMap<String, HashMap<u64, Known>>,
    mailboxes: HashSet<u64>,
    /// When each followed account was last seen watched.
    last_watched: HashMap<String, Instant>,
}

/// How long an account stays followed after its last session here ended, so the metadata
/// cache stays usable for clients that reconnect (or open one connection per folder).
const LINGER: Duration = Duration::from_secs(600);

/// Why the follower runs a round.
enum Wake {
    /// Other nodes wrote to these accounts.
    Hint(Vec<String>),
    /// Hints may have been lost (the listening connection was re-made): read everything.
    Everything,
}

impl Follow {
    /// Whether every change of `mailbox` reaches this node's feed.
    pub(super) fn follows(&self, mailbox: u64) -> bool {
        self.state
            .lock()
            .expect("follow")
            .mailboxes
            .contains(&mailbox)
    }

    /// What this node last published of `user`'s mailboxes, if it follows the account.
    fn account(&self, user: &str) -> Option<HashMap<u64, Known>> {
        self.state
            .lock()
            .expect("follow")
            .accounts
            .get(user)
            .cloned()
    }

    /// Tell the other nodes that `user`'s data changed (after the commit).
    pub(super) fn hint(&self, user: &str) {
        if let Some(tx) = &*self.hints.lock().expect("hints") {
            let _ = tx.send(user.to_string());
        }
    }

    /// A session here started watching `user`: follow the account now if it is not yet.
    pub(super) fn watching(&self, user: &str) {
        let followed = self
            .state
            .lock()
            .expect("follow")
            .accounts
            .contains_key(user);
        if !followed && let Some(wake) = &*self.wake.lock().expect("wake") {
            let _ = wake.send(Wake::Hint(vec![user.to_string()]));
        }
    }

    /// A mailbox this node deleted: no longer followed.
    pub(super) fn forget(&self, user: &str, mailbox: u64) {
        let mut st = self.state.lock().expect("follow");
        if let Some(boxes) = st.accounts.get_mut(user) {
            boxes.remove(&mailbox);
        }
        st.mailboxes.remove(&mailbox);
    }
}

impl PostgresStore {
    /// Start following the other nodes (once): the hint sender, the listener and the
    /// follower run as tasks for the rest of the process.
    pub(super) fn start_following(&self) {
        if self.follow.on.swap(true, Ordering::SeqCst) {
            return;
        }
        let (hints, pending) = mpsc::unbounded_channel();
        *self.follow.hints.lock().expect("hints") = Some(hints);
        let (wake, woken) = mpsc::unbounded_channel();
        *self.follow.wake.lock().expect("wake") = Some(wake.clone());
        tokio::spawn(self.clone().send_hints(pending));
        tokio::spawn(self.clone().listen(wake));
        tokio::spawn(self.clone().follow_loop(woken));
    }

    /// Send the hints, batched: every account written since the last NOTIFY goes in the
    /// next one. A failed NOTIFY is dropped (polling covers it).
    async fn send_hints(self, mut pending: mpsc::UnboundedReceiver<String>) {
        while let Some(first) = pending.recv().await {
            let mut users = BTreeSet::from([first]);
            while let Ok(u) = pending.try_recv() {
                users.insert(u);
            }
            for payload in payloads(&self.follow.node, users) {
                let sent = match self.follow_client().await {
                    Ok(c) => exec(&c, "SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
                        .await
                        .map(drop)
                        .map_err(StoreError::from),
                    Err(e) => Err(e),
                };
                if let Err(e) = sent {
                    tracing::debug!(error = %e, "could not hint the other nodes");
                }
            }
        }
    }

    /// Keep a connection that LISTENs for the other nodes' hints, re-made when it breaks
    /// (then everything is read again: hints may have been lost meanwhile).
    async fn listen(self, wake: mpsc::UnboundedSender<Wake>) {
        let mut pause = Duration::from_millis(250);
        let mut said = false;
        loop {
            match self.listening_connection().await {
                Ok((client, mut rx, driver)) => {
                    match client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
                        Ok(()) => {
                            self.follow.listening.store(true, Ordering::SeqCst);
                            pause = Duration::from_millis(250);
                            said = false;
                            if wake.send(Wake::Everything).is_err() {
                                return;
                            }
                            while let Some(payload) = rx.recv().await {
                                let mut lines = payload.lines();
                                if lines.next() == Some(self.follow.node.as_str()) {
                                    continue;
                                }
                                let users = lines.map(str::to_string).collect();
                                if wake.send(Wake::Hint(users)).is_err() {
                                    return;
                                }
                            }
                            self.follow.listening.store(false, Ordering::SeqCst);
                            tracing::warn!(
                                "lost the connection that listens for other nodes' changes; \
                                 polling until it is back"
                            );
                        }
                        Err(e) if !said => {
                            said = true;
                            tracing::warn!(error = %StoreError::from(e),
                                "cannot LISTEN for other nodes' changes; polling every second");
                        }
                        Err(_) => {}
                    }
                    driver.abort();
                }
                Err(e) if !said => {
                    said = true;
                    tracing::warn!(error = %StoreError::from(e),
                        "cannot connect to listen for other nodes' changes; polling every second");
                }
                Err(_) => {}
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// A connection of its own for LISTEN: the client, the notifications' payloads, and
    /// the task that drives the connection.
    async fn listening_connection(
        &self,
    ) -> std::result::Result<
        (
            tokio_postgres::Client,
            mpsc::UnboundedReceiver<String>,
            tokio::task::JoinHandle<()>,
        ),
        tokio_postgres::Error,
    > {
        Ok(match &self.tls {
            Some(tls) => {
                let (client, connection) = self.config.connect(tls.clone()).await?;
                let (rx, driver) = drive(connection);
                (client, rx, driver)
            }
            None => {
                let (client, connection) = self.config.connect(tokio_postgres::NoTls).await?;
                let (rx, driver) = drive(connection);
                (client, rx, driver)
            }
        })
    }

    /// Read what other nodes wrote: at a hint, and by polling. Also sweeps expired kv rows.
    async fn follow_loop(self, mut woken: mpsc::UnboundedReceiver<Wake>) {
        let mut tick = tokio::time::interval(POLL_DEAF);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_round = Instant::now();
        let mut last_sweep = Instant::now();
        let mut failing = false;
        loop {
            let round = tokio::select! {
                wake = woken.recv() => match wake {
                    Some(Wake::Hint(users)) => {
                        let mut users: HashSet<String> = users.into_iter().collect();
                        let mut everything = false;
                        while let Ok(w) = woken.try_recv() {
                            match w {
                                Wake::Hint(more) => users.extend(more),
                                Wake::Everything => everything = true,
                            }
                        }
                        if everything { None } else { Some(users) }
                    }
                    Some(Wake::Everything) => None,
                    None => return,
                },
                _ = tick.tick() => {
                    let every = if self.follow.listening.load(Ordering::SeqCst) {
                        POLL_LISTENING
                    } else {
                        POLL_DEAF
                    };
                    if last_round.elapsed() < every {
                        continue;
                    }
                    None
                }
            };
            if round.is_none() {
                last_round = Instant::now();
            }
            match self.follow_round(round).await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("following other nodes' changes again");
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "cannot read other nodes' changes; retrying");
                }
                Err(_) => {}
            }
            if last_sweep.elapsed() >= SWEEP_EVERY {
                last_sweep = Instant::now();
                if let Err(e) = self.sweep_kv().await {
                    tracing::debug!(error = %e, "could not sweep expired kv entries");
                }
            }
        }
    }

    /// One round: the hinted accounts (`Some`) or every watched one (`None`), read and
    /// published; on a full round, accounts nobody watches any more are forgotten.
    async fn follow_round(&self, hinted: Option<HashSet<String>>) -> Result<()> {
        let watched: HashSet<String> = self.watchers.watched().into_iter().collect();
        if hinted.is_none() {
            let gone: Vec<(String, Vec<u64>)> = {
                let mut st = self.follow.state.lock().expect("follow");
                let now = Instant::now();
                for u in &watched {
                    st.last_watched.insert(u.clone(), now);
                }
                let users: Vec<String> = st
                    .accounts
                    .keys()
                    .filter(|u| {
                        st.last_watched
                            .get(*u)
                            .is_none_or(|t| now.duration_since(*t) > LINGER)
                    })
                    .cloned()
                    .collect();
                users
                    .into_iter()
                    .map(|u| {
                        st.last_watched.remove(&u);
                        let ids: Vec<u64> = st
                            .accounts
                            .remove(&u)
                            .unwrap_or_default()
                            .into_keys()
                            .collect();
                        for id in &ids {
                            st.mailboxes.remove(id);
                        }
                        (u, ids)
                    })
                    .collect()
            };
            for (user, ids) in gone {
                let _lock = self.lock_users([user.as_str()]).await;
                for mailbox in ids {
                    self.watchers.notify(&user, Change::Stale { mailbox });
                }
            }
        }
        // Followed: the watched accounts, and those watched within LINGER.
        let followed: HashSet<String> = {
            let st = self.follow.state.lock().expect("follow");
            st.accounts.keys().cloned().collect()
        };
        let users: Vec<String> = match hinted {
            Some(h) => h
                .into_iter()
                .filter(|u| watched.contains(u) || followed.contains(u))
                .collect(),
            None => watched.union(&followed).cloned().collect(),
        };
        if users.is_empty() {
            return Ok(());
        }
        let mut fresh: HashMap<String, HashMap<u64, Known>> = HashMap::new();
        {
            let c = self.follow_client().await?;
            for r in rows(
                &c,
                "SELECT owner, id, name, uidnext, highest_modseq FROM mailboxes \
                 WHERE owner = ANY($1)",
                &[&users],
            )
            .await?
            {
                fresh
                    .entry(r.get(0))
                    .or_default()
                    .insert(u64_of(r.get(1)), known_of(&r, 2));
            }
        }
        for user in users {
            let _lock = self.lock_users([user.as_str()]).await;
            let boxes = fresh.remove(&user).unwrap_or_default();
            self.catch_up(&user, boxes).await?;
        }
        Ok(())
    }

    /// Follow `user` from now on, or catch up with it (holding `user`'s lock).
    async fn follow_now(&self, user: &str) -> Result<()> {
        let mut fresh = HashMap::new();
        let c = self.follow_client().await?;
        for r in rows(
            &c,
            "SELECT id, name, uidnext, highest_modseq FROM mailboxes WHERE owner = $1",
            &[&user],
        )
        .await?
        {
            fresh.insert(u64_of(r.get(0)), known_of(&r, 1));
        }
        drop(c);
        self.catch_up(user, fresh).await
    }

    /// Publish what changed in `user`'s mailboxes, read as `fresh`, since this node last
    /// published them (holding `user`'s lock).
    async fn catch_up(&self, user: &str, fresh: HashMap<u64, Known>) -> Result<()> {
        let Some(known) = self.follow.account(user) else {
            // First sight: whatever was kept of these mailboxes may be behind.
            {
                let mut st = self.follow.state.lock().expect("follow");
                st.mailboxes.extend(fresh.keys().copied());
                st.accounts.insert(user.to_string(), fresh.clone());
                st.last_watched.insert(user.to_string(), Instant::now());
            }
            for mailbox in fresh.into_keys() {
                self.watchers.notify(user, Change::Stale { mailbox });
            }
            return Ok(());
        };
        // Mailboxes gone from `fresh`: `fresh` may have been read before this node made a
        // mailbox (and published it), so what is missing is looked up again, now.
        let missing: Vec<i64> = known
            .keys()
            .filter(|id| !fresh.contains_key(id))
            .map(|id| *id as i64)
            .collect();
        let still: HashSet<u64> = if missing.is_empty() {
            HashSet::new()
        } else {
            let c = self.follow_client().await?;
            rows(
                &c,
                "SELECT id FROM mailboxes WHERE id = ANY($1)",
                &[&missing],
            )
            .await?
            .iter()
            .map(|r| u64_of(r.get(0)))
            .collect()
        };
        for (id, k) in &known {
            if !fresh.contains_key(id) && !still.contains(id) {
                self.follow.forget(user, *id);
                self.watchers.notify(
                    user,
                    Change::Deleted {
                        mailbox: *id,
                        name: k.name.clone(),
                    },
                );
            }
        }
        for (id, f) in fresh {
            match known.get(&id) {
                None => {
                    self.remember(user, id, f.clone());
                    self.watchers.notify(user, Change::Created { name: f.name });
                    self.watchers.notify(user, Change::Stale { mailbox: id });
                }
                Some(k) => {
                    if k.name != f.name {
                        self.watchers.notify(
                            user,
                            Change::Renamed {
                                mailbox: id,
                                from: k.name.clone(),
                                to: f.name.clone(),
                            },
                        );
                    }
                    if f.modseq > k.modseq {
                        self.publish_since(user, id, k, f.modseq).await?;
                    }
                    self.remember(user, id, f);
                }
            }
        }
        Ok(())
    }

    /// Read and publish the changes of mailbox `id` above what this node published (`k`).
    async fn publish_since(&self, user: &str, id: u64, k: &Known, modseq: u64) -> Result<()> {
        let c = self.follow_client().await?;
        let since = k.modseq as i64;
        let changed = rows(
            &c,
            &format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages \
                 WHERE mailbox_id = $1 AND modseq > $2 ORDER BY uid"
            ),
            &[&(id as i64), &since],
        )
        .await?;
        let gone: Vec<u32> = rows(
            &c,
            "SELECT uid FROM vanished WHERE mailbox_id = $1 AND modseq > $2 ORDER BY uid",
            &[&(id as i64), &since],
        )
        .await?
        .iter()
        .map(|r| r.get::<_, i64>(0) as u32)
        .collect();
        drop(c);
        let (appended, flagged): (Vec<MessageMeta>, Vec<MessageMeta>) = changed
            .iter()
            .map(super::mailboxes::meta_of)
            .partition(|m| m.uid >= k.uidnext);
        if !gone.is_empty() {
            self.watchers.notify(
                user,
                Change::Expunged {
                    mailbox: id,
                    uids: gone,
                    modseq,
                },
            );
        }
        if !flagged.is_empty() {
            self.watchers.notify(
                user,
                Change::Flags {
                    mailbox: id,
                    changes: flagged
                        .into_iter()
                        .map(|m| (m.uid, m.flags, m.modseq))
                        .collect(),
                },
            );
        }
        if !appended.is_empty() {
            self.watchers.notify(
                user,
                Change::Appended {
                    mailbox: id,
                    messages: appended,
                },
            );
        }
        Ok(())
    }

    /// Note what was published of a mailbox; UIDNEXT and HIGHESTMODSEQ never go back.
    fn remember(&self, user: &str, id: u64, k: Known) {
        let mut st = self.follow.state.lock().expect("follow");
        let Some(boxes) = st.accounts.get_mut(user) else {
            return;
        };
        let e = boxes.entry(id).or_insert_with(|| k.clone());
        e.name = k.name;
        e.uidnext = e.uidnext.max(k.uidnext);
        e.modseq = e.modseq.max(k.modseq);
        st.mailboxes.insert(id);
    }

    /// Before this node publishes `change` (holding `user`'s lock): new messages whose
    /// first UID is above what it published of the mailbox mean another node's came in
    /// between; read and publish those first, so no session sees a UID before a smaller
    /// one.
    pub(super) async fn follow_before(&self, user: &str, change: &Change) {
        let Change::Appended { mailbox, messages } = change else {
            return;
        };
        let (Some(first), Some(last)) = (messages.first(), messages.last()) else {
            return;
        };
        let behind = {
            let mut st = self.follow.state.lock().expect("follow");
            match st.accounts.get_mut(user).map(|b| b.get_mut(mailbox)) {
                // Not followed yet: if someone here watches the account, follow it now,
                // before they see this write (its first round publishes Stale, and the
                // re-read shows the other nodes' smaller UIDs with this one).
                None => None,
                Some(None) => Some(true),
                Some(Some(k)) if k.uidnext >= first.uid => {
                    k.uidnext = k.uidnext.max(last.uid + 1);
                    Some(false)
                }
                Some(Some(_)) => Some(true),
            }
        };
        let behind = match behind {
            Some(b) => b,
            None => {
                if self.follow.on.load(Ordering::SeqCst)
                    && self.watchers.is_watched(user)
                    && let Err(e) = self.follow_now(user).await
                {
                    tracing::warn!(error = %e, "could not read other nodes' changes first");
                }
                return;
            }
        };
        if !behind {
            return;
        }
        let read = async {
            let c = self.follow_client().await?;
            let r = row(
                &c,
                "SELECT name, uidnext, highest_modseq FROM mailboxes WHERE id = $1",
                &[&(*mailbox as i64)],
            )
            .await?;
            Ok::<_, StoreError>(r.map(|r| known_of(&r, 0)))
        };
        let result = match read.await {
            Ok(Some(f)) => {
                let k = self
                    .follow
                    .account(user)
                    .and_then(|mut b| b.remove(mailbox));
                match k {
                    Some(k) if f.modseq > k.modseq => {
                        let modseq = f.modseq;
                        let r = self.publish_since(user, *mailbox, &k, modseq).await;
                        self.remember(user, *mailbox, f);
                        r
                    }
                    Some(_) => Ok(()),
                    // A mailbox this node has not seen yet (made by another node, or by
                    // this write): whoever shows it re-reads it rather than see this
                    // write before another node's.
                    None => {
                        self.remember(user, *mailbox, f);
                        self.watchers
                            .notify(user, Change::Stale { mailbox: *mailbox });
                        Ok(())
                    }
                }
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            // The session re-reads rather than miss a message.
            tracing::warn!(error = %e, "could not read other nodes' changes first");
            self.follow.forget(user, *mailbox);
            self.watchers
                .notify(user, Change::Stale { mailbox: *mailbox });
        }
    }

    /// Delete expired kv rows, a batch at a time.
    async fn sweep_kv(&self) -> Result<()> {
        let c = self.follow_client().await?;
        exec(
            &c,
            "DELETE FROM kv WHERE (ns, key) IN (\
                 SELECT ns, key FROM kv WHERE expires <> 0 AND expires <= $1 LIMIT $2)",
            &[&now(), &SWEEP_BATCH],
        )
        .await?;
        Ok(())
    }
}

/// Drive a LISTEN connection: its notifications' payloads, until it breaks.
fn drive<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
) -> (mpsc::UnboundedReceiver<String>, tokio::task::JoinHandle<()>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    let driver = tokio::spawn(async move {
        while let Some(Ok(m)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notification(n) = m
                && tx.send(n.payload().to_string()).is_err()
            {
                break;
            }
        }
    });
    (rx, driver)
}

/// A [`Known`] from the columns name, uidnext, highest_modseq starting at `at`.
fn known_of(r: &Row, at: usize) -> Known {
    Known {
        name: r.get(at),
        uidnext: r.get::<_, i64>(at + 1) as u32,
        modseq: u64_of(r.get(at + 2)),
    }
}

/// The NOTIFY payloads for `users`: the node's name, then one account per line, each
/// payload below [`PAYLOAD_MAX`].
fn payloads(node: &str, users: BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = node.to_string();
    for u in users {
        if cur.len() + 1 + u.len() > PAYLOAD_MAX && cur.len() > node.len() {
            out.push(std::mem::replace(&mut cur, node.to_string()));
        }
        cur.push('\n');
        cur.push_str(&u);
    }
    if cur.len() > node.len() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_are_split_below_the_payload_limit() {
        let users: BTreeSet<String> = (0..1000)
            .map(|i| format!("user{i:04}@example.org"))
            .collect();
        let p = payloads("n1", users.clone());
        assert!(p.len() > 1);
        assert!(
            p.iter()
                .all(|x| x.len() <= PAYLOAD_MAX && x.starts_with("n1\n"))
        );
        let back: BTreeSet<String> = p
            .iter()
            .flat_map(|x| x.lines().skip(1).map(str::to_string))
            .collect();
        assert_eq!(back, users);
        assert!(payloads("n1", BTreeSet::new()).is_empty());
    }
}
