//! The PostgreSQL implementation of [`MailStore`]: several Corvus nodes share one database.
//! The store, its connection pool, the transaction-retry loop and the helpers every concern
//! shares; one file per concern beside it.
//!
//! Files: `schema.rs` (the versioned schema and [`PostgresStore::migrate`]), `directory.rs`
//! (accounts, domains, aliases), `mailboxes.rs` (mailboxes, message metadata, flags,
//! subscriptions), `copy_meta.rs` (a mailbox's metadata read with binary COPY), `ingest.rs`
//! (the write of an accepted message, batched by mailbox), `blobs.rs` (message bodies,
//! reference counts), `queue.rs` (queue and leases), `kv.rs` (the key-value store for
//! scripts and plugins).
//!
//! Rules every query keeps, so the store also runs on the PostgreSQL-compatible distributed
//! databases (CockroachDB, YugabyteDB): plain tables and indexes, row locks (`FOR UPDATE`,
//! `SKIP LOCKED`), `ON CONFLICT`, arrays, binary COPY only with a fallback to rows; no
//! advisory locks, no `LISTEN`/`NOTIFY` for correctness, no sequences for UIDs. A mailbox's UIDs and MODSEQs come from its row,
//! taken under its row lock inside the transaction that writes the messages, so they become
//! visible in ascending order across nodes. Every write is one transaction, retried from the
//! start on a serialization failure or a deadlock (SQLSTATE 40001, 40P01); each is durable
//! when its COMMIT returns (`synchronous_commit` on), so [`MailStore::commit`] has nothing
//! left to wait for.
//!
//! The change feed: a write publishes its changes in-process after its COMMIT, holding the
//! in-process lock of the accounts it wrote ([`PostgresStore::lock_users`]), so a mailbox's
//! changes reach this process's watchers in the order they became visible. A serving node
//! also follows the other nodes (`follow.rs`): it hints them after its writes and reads
//! what they wrote, so their changes reach its watchers too.

mod blobs;
mod copy_meta;
mod directory;
mod follow;
mod ingest;
mod kv;
mod mailboxes;
mod queue;
mod schema;
#[cfg(test)]
pub(crate) mod testdb;
#[cfg(test)]
mod tests;
mod transfer;

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Client, GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

pub use schema::SCHEMA_VERSION;

use super::*;

/// PostgreSQL-backed store. Cloning it is cheap and shares everything (the pool, the
/// locks, the feed).
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    /// Connections of the follower's reads (`follow.rs`), apart from the writers': it reads
    /// while holding accounts' in-process locks that writers wait for before their COMMIT,
    /// so it must never wait for a connection a waiting writer holds.
    follow_pool: Pool,
    /// Where the database is, for the node's own listening connection.
    config: tokio_postgres::Config,
    /// TLS to the database, when the URL asks for it (`sslmode=require`).
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    /// The URL without its password, for messages.
    shown: String,
    /// In-process locks by account (striped): held from just before a write's COMMIT until
    /// its changes are published, so they are published in commit order
    /// ([`locked_transaction!`]).
    stripes: Arc<Vec<tokio::sync::Mutex<()>>>,
    failpoints: Arc<Failpoints>,
    watchers: Arc<super::feed::Watchers>,
    follow: Arc<follow::Follow>,
    /// Messages waiting to be written together, by mailbox (`ingest.rs`).
    lanes: Arc<ingest::Lanes>,
}

/// Connections of the follower's own pool.
const FOLLOW_POOL: usize = 2;

/// Number of account lock stripes.
const STRIPES: usize = 64;

/// Attempts of a transaction that keeps failing with a serialization failure or deadlock.
const ATTEMPTS: u32 = 10;

/// Why a transaction's body stopped: retry it from the start, or give up with an error.
pub(super) enum Fail {
    /// A serialization failure or deadlock (SQLSTATE 40001, 40P01): run it again.
    Retry(String),
    /// Anything else.
    Store(StoreError),
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.code() {
            Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE => Fail::Retry(e.to_string()),
            Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED => Fail::Retry(e.to_string()),
            _ => Fail::Store(e.into()),
        }
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Store(e)
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The server's own message (with its SQLSTATE) says more than the client's summary.
        match e.as_db_error() {
            Some(db) => {
                let code = db.code().code();
                // Class 28: invalid authorization (wrong user or password).
                let hint = if code.starts_with("28") {
                    "; check the user and password in store.url"
                } else {
                    ""
                };
                StoreError::Backend(format!(
                    "database: {} (SQLSTATE {code}){hint}",
                    db.message()
                ))
            }
            None => {
                // The client's summary ("error connecting to server") and its causes.
                let mut text = e.to_string();
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    text.push_str(": ");
                    text.push_str(&c.to_string());
                    cause = c.source();
                }
                StoreError::Backend(format!("database: {text}"))
            }
        }
    }
}

/// Run `$body` (which uses the transaction `$tx` and returns `Result<T, Fail>`) in one
/// transaction and commit it; run it again from the start on [`Fail::Retry`], up to
/// [`ATTEMPTS`] times. For a write whose changes are published, the in-process locks of
/// `$users` ([`PostgresStore::lock_users`]) are taken after the body, just before the
/// COMMIT, and come back with its value, held until the changes are published. Writers to
/// one mailbox are serialised by its row lock, which a writer holds until its COMMIT, and it
/// takes the accounts' locks before committing, so the next writer can take them only after
/// this one published: changes are published in commit order. No one holds these locks
/// while waiting for the database's row locks, so the two kinds of lock never wait for each
/// other. Evaluates to `Result<(T, guards)>`.
macro_rules! locked_transaction {
    ($store:expr, $users:expr, |$tx:ident| $body:block) => {{
        let mut attempt = 1u32;
        loop {
            let open = $crate::store::postgres::Open::new($store.client().await?);
            let $tx: &deadpool_postgres::Client = open.client();
            // BEGIN goes out ahead of the body's first statement (`biased`: polled first),
            // in the same round trip.
            let out = tokio::try_join!(biased; open.begin(), async { $body });
            let out = match out {
                Ok(((), v)) => {
                    let guards = $store.lock_users($users).await;
                    open.commit().await.map(|()| (v, guards))
                }
                Err(e) => {
                    open.rollback().await;
                    Err(e)
                }
            };
            match out {
                Ok(v) => break Ok::<_, StoreError>(v),
                Err($crate::store::postgres::Fail::Retry(why)) => {
                    if attempt >= $crate::store::postgres::ATTEMPTS {
                        break Err(StoreError::Backend(format!(
                            "database: gave up after {attempt} attempts: {why}"
                        )));
                    }
                    $crate::store::postgres::backoff(attempt).await;
                    attempt += 1;
                }
                Err($crate::store::postgres::Fail::Store(e)) => break Err(e),
            }
        }
    }};
}
pub(super) use locked_transaction;

/// [`locked_transaction!`] without locks: a write that publishes nothing. Evaluates to
/// `Result<T>`.
macro_rules! transaction {
    ($store:expr, |$tx:ident| $body:block) => {
        $crate::store::postgres::locked_transaction!($store, std::iter::empty::<&str>(), |$tx| {
            $body
        })
        .map(|(v, _)| v)
    };
}
pub(super) use transaction;

/// A pooled connection in a transaction of [`locked_transaction!`]. It goes back to the
/// pool once the transaction ended (committed or rolled back); dropped before that (the
/// write's future was cancelled, or its ROLLBACK failed), the connection is closed instead,
/// and the database rolls the transaction back.
pub(super) struct Open {
    client: Option<Client>,
}

impl Open {
    pub(super) fn new(client: Client) -> Self {
        Open {
            client: Some(client),
        }
    }

    pub(super) fn client(&self) -> &Client {
        self.client.as_ref().expect("open until ended")
    }

    pub(super) async fn begin(&self) -> std::result::Result<(), Fail> {
        Ok(self.client().batch_execute("BEGIN").await?)
    }

    /// COMMIT. The transaction has ended either way: a COMMIT that fails rolls back.
    pub(super) async fn commit(mut self) -> std::result::Result<(), Fail> {
        let done = self.client().batch_execute("COMMIT").await;
        self.client.take();
        Ok(done?)
    }

    pub(super) async fn rollback(mut self) {
        if self.client().batch_execute("ROLLBACK").await.is_ok() {
            self.client.take();
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            drop(deadpool_postgres::Object::take(c));
        }
    }
}

/// A short, growing, jittered pause before a transaction's next attempt.
pub(super) async fn backoff(attempt: u32) {
    let base = 2u64.saturating_pow(attempt.min(8));
    let jitter = rand::random::<u64>() % base.max(1);
    tokio::time::sleep(Duration::from_millis(base + jitter)).await;
}

/// Rows of `sql`, prepared once per connection.
pub(super) async fn rows(
    c: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> std::result::Result<Vec<Row>, tokio_postgres::Error> {
    let st = c.prepare_cached(sql).await?;
    c.query(&st, params).await
}

/// The one row of `sql`, if any.
pub(super) async fn row(
    c: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> std::result::Result<Option<Row>, tokio_postgres::Error> {
    let st = c.prepare_cached(sql).await?;
    c.query_opt(&st, params).await
}

/// Run `sql`; the number of rows it changed.
pub(super) async fn exec(
    c: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> std::result::Result<u64, tokio_postgres::Error> {
    let st = c.prepare_cached(sql).await?;
    c.execute(&st, params).await
}

/// Parse a `[store] url`: a `postgresql://` URL or `key=value` pairs (`host=/path` for a
/// Unix socket).
pub fn parse_url(url: &str) -> Result<tokio_postgres::Config> {
    tokio_postgres::Config::from_str(url)
        .map_err(|e| StoreError::Invalid(format!("store url: {e}")))
}

/// The TLS connector for database connections: the ring provider, verified against the
/// roots outbound TLS trusts.
fn tls_connector(
    trust_roots: Option<&std::path::Path>,
) -> tokio_postgres_rustls::MakeRustlsConnect {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default TLS versions")
    .with_root_certificates(crate::tls::outbound_roots(trust_roots))
    .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

/// `url` with its password replaced, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Ok(cfg) = parse_url(url) else {
        return "<invalid url>".into();
    };
    let hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .zip(cfg.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(h, p)| match h {
            tokio_postgres::config::Host::Tcp(h) => format!("{h}:{p}"),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    format!(
        "postgresql://{}@{}/{}",
        cfg.get_user().unwrap_or(""),
        hosts.join(","),
        cfg.get_dbname().unwrap_or("")
    )
}

impl PostgresStore {
    /// A pool of up to `pool_size` connections to the database at `url`. Checks that the
    /// database answers, not its schema: [`Self::migrate`] creates or upgrades it,
    /// [`Self::schema_version`] reads it.
    pub async fn connect(url: &str, pool_size: usize) -> Result<Self> {
        Self::connect_with(url, pool_size, None).await
    }

    /// [`Self::connect`], trusting the certificates in `trust_roots` (PEM) too for TLS to
    /// the database. TLS is used when the URL says `sslmode=require`: the server's
    /// certificate is verified against the system's roots and these; otherwise the
    /// connection is plain (a Unix socket or a private network; libpq's `prefer`, which
    /// tries TLS without verifying it, is not offered).
    pub async fn connect_with(
        url: &str,
        pool_size: usize,
        trust_roots: Option<&std::path::Path>,
    ) -> Result<Self> {
        let mut cfg = parse_url(url)?;
        let shown = redact_url(url);
        if cfg.get_ssl_mode() != tokio_postgres::config::SslMode::Require {
            cfg.ssl_mode(tokio_postgres::config::SslMode::Disable);
        }
        let tls = (cfg.get_ssl_mode() == tokio_postgres::config::SslMode::Require)
            .then(|| tls_connector(trust_roots));
        let make_pool = |size: usize| {
            let recycling = ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            };
            let manager = match &tls {
                Some(tls) => Manager::from_config(cfg.clone(), tls.clone(), recycling),
                None => Manager::from_config(cfg.clone(), tokio_postgres::NoTls, recycling),
            };
            Pool::builder(manager)
                .max_size(size)
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .wait_timeout(Some(Duration::from_secs(30)))
                .create_timeout(Some(Duration::from_secs(10)))
                .build()
                .map_err(|e| StoreError::Backend(format!("{shown}: {e}")))
        };
        let pool = make_pool(pool_size.max(1))?;
        let follow_pool = make_pool(FOLLOW_POOL)?;
        let store = PostgresStore {
            pool,
            follow_pool,
            config: cfg,
            tls,
            shown,
            stripes: Arc::new((0..STRIPES).map(|_| Default::default()).collect()),
            failpoints: Arc::new(Failpoints::from_env()),
            watchers: Default::default(),
            follow: Default::default(),
            lanes: Default::default(),
        };
        drop(store.client().await?);
        Ok(store)
    }

    /// This store's failure points (tests arm them).
    pub fn failpoints(&self) -> Arc<Failpoints> {
        self.failpoints.clone()
    }

    /// A connection from the pool.
    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.client_of(&self.pool).await
    }

    /// A connection for the follower's reads ([`PostgresStore::follow_pool`]).
    pub(super) async fn follow_client(&self) -> Result<deadpool_postgres::Object> {
        self.client_of(&self.follow_pool).await
    }

    async fn client_of(&self, pool: &Pool) -> Result<deadpool_postgres::Object> {
        pool.get().await.map_err(|e| {
            let why = match e {
                deadpool_postgres::PoolError::Backend(e) => match StoreError::from(e) {
                    StoreError::Backend(text) => text,
                    other => other.to_string(),
                },
                other => other.to_string(),
            };
            StoreError::Backend(format!("database {} unavailable: {why}", self.shown))
        })
    }

    /// Hold the in-process locks of `users` (normalised addresses), taken in one order so
    /// two writers never wait for each other.
    pub(super) async fn lock_users<'a>(
        &'a self,
        users: impl IntoIterator<Item = &str>,
    ) -> Vec<tokio::sync::MutexGuard<'a, ()>> {
        let mut idx: Vec<usize> = users.into_iter().map(stripe).collect();
        idx.sort_unstable();
        idx.dedup();
        let mut guards = Vec::with_capacity(idx.len());
        for i in idx {
            guards.push(self.stripes[i].lock().await);
        }
        guards
    }

    /// Publish a change this process committed (holding `user`'s lock): to this process's
    /// watchers, after any change another node made before it; and hint the other nodes.
    pub(super) async fn notify(&self, user: &str, change: Change) {
        self.follow_before(user, &change).await;
        self.watchers.notify(user, change);
        self.follow.hint(user);
    }

    /// Publish that `mb` was deleted with the messages `uids` (holding `user`'s lock).
    pub(super) fn mailbox_deleted(&self, user: &str, mb: &Mailbox, uids: Vec<u32>) {
        self.follow.forget(user, mb.id);
        self.watchers.mailbox_deleted(user, mb, uids);
        self.follow.hint(user);
    }
}

/// The lock stripe of an account.
fn stripe(user: &str) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    user.hash(&mut h);
    (h.finish() % STRIPES as u64) as usize
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A database integer as the unsigned value it stores.
pub(super) fn u64_of(v: i64) -> u64 {
    v as u64
}

impl MailStore for PostgresStore {
    /// Every write is durable when its transaction's COMMIT returns.
    fn commit(&self) -> Commit {
        Commit::done()
    }
}

impl Feed for PostgresStore {
    fn watch(&self, user: &str) -> Changes {
        let changes = self.watchers.watch(user);
        self.follow.watching(&normalize_address(user));
        changes
    }

    fn observe(&self, sink: Observer) {
        self.watchers.observe(sink);
    }

    fn publishes_all(&self, mailbox: u64) -> bool {
        self.follow.follows(mailbox)
    }

    fn follow_others(&self) {
        self.start_following();
    }
}
