//! The contract every storage backend keeps, as tests written against [`MailStore`] only and
//! run against each backend (`sled_backend::*` with the metadata cache in front, as `serve`
//! runs it, `postgres_backend::*` on a throwaway server the tests start
//! (`store::postgres::testdb`), `memory_backend::*`, and `cached_memory_backend::*` for the
//! cache layer over the memory backend). A new backend adds one line to the macro at the bottom and must
//! pass all of them. The tests, by concern: `messages.rs`, `directory.rs`, `queue.rs`,
//! `feed.rs`; the harness and helpers are here.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::*;
use crate::blocking::Wait;

mod directory;
mod feed;
mod messages;
mod queue;

use directory::*;
use feed::*;
use messages::*;
use queue::*;

struct Harness {
    store: Store,
    failpoints: Arc<Failpoints>,
    _dir: Option<tempfile::TempDir>,
}

/// sled with the metadata cache in front, as `serve` opens it.
fn sled() -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Cached::new(SledStore::open(&dir.path().join("data")).expect("open"));
    Harness {
        failpoints: store.inner().failpoints(),
        store: Arc::new(store),
        _dir: Some(dir),
    }
}

/// PostgreSQL, a fresh database on the test server.
async fn postgres() -> Harness {
    let url = super::postgres::testdb::database().await;
    let store = PostgresStore::connect(&url, 8).await.expect("connect");
    store.migrate().await.expect("migrate");
    Harness {
        failpoints: store.failpoints(),
        store: Arc::new(store),
        _dir: None,
    }
}

/// The in-memory backend with the metadata cache in front.
fn cached_memory() -> Harness {
    let store = Cached::new(MemoryStore::new());
    Harness {
        failpoints: store.inner().failpoints(),
        store: Arc::new(store),
        _dir: None,
    }
}

fn memory() -> Harness {
    let store = MemoryStore::new();
    Harness {
        failpoints: store.failpoints(),
        store: Arc::new(store),
        _dir: None,
    }
}

fn placement(user: &str, mailbox: &str) -> Placement {
    Placement {
        user: user.into(),
        mailbox: mailbox.into(),
        flags: vec![],
    }
}

fn queued(id: &str, rcpt: &str) -> QueueEntry {
    QueueEntry {
        id: id.into(),
        mail_from: "sender@example.net".into(),
        rcpts: vec![QueueRcpt {
            address: rcpt.into(),
            notify: vec![],
            orcpt: None,
        }],
        ret: None,
        envid: None,
        created: 0,
        next_attempt: 0,
        attempts: 0,
        last_error: None,
        blob: 0,
        smtputf8: false,
        decisions: vec![],
        warned: false,
        requiretls: false,
        lease: None,
    }
}

fn body(text: &str) -> Arc<Vec<u8>> {
    Arc::new(format!("Subject: {text}\r\n\r\n{text}\r\n").into_bytes())
}

/// The id of `user`'s INBOX.
async fn inbox_id(store: &Store, user: &str) -> u64 {
    store.mailbox(user, "INBOX").await.unwrap().unwrap().id
}

async fn uids(store: &Store, user: &str, mailbox: &str) -> Vec<u32> {
    let mb = store
        .mailbox(user, mailbox)
        .await
        .unwrap()
        .expect("mailbox");
    store
        .messages(mb.id)
        .await
        .unwrap()
        .iter()
        .map(|m| m.uid)
        .collect()
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod sled_backend {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)] async fn $test() { super::$test(super::sled()).await } )*
        }
        mod postgres_backend {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)] async fn $test() { super::$test(super::postgres().await).await } )*
        }
        mod memory_backend {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)] async fn $test() { super::$test(super::memory()).await } )*
        }
        mod cached_memory_backend {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)] async fn $test() { super::$test(super::cached_memory()).await } )*
        }
    };
}

conformance!(
    ingest_is_all_or_nothing,
    single_and_empty_ingests,
    concurrent_ingest_keeps_uids_ascending_in_visibility_order,
    flag_updates_are_atomic_and_honour_unchangedsince,
    copy_expunge_and_move,
    directory_and_mailbox_rules,
    kv_ttl_and_atomic_increment,
    kv_ranges_are_ordered_bounded_and_skip_expired,
    queue_updates_and_removal,
    queue_claims_are_exclusive_and_leases_expire,
    recent_mark_is_claimed_once,
    leases_are_exclusive_and_expire,
    changes_since_lists_changes_and_expunges,
    watchers_get_typed_changes,
    appends_reach_watchers_in_uid_order,
);
