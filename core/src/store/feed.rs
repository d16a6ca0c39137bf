//! The in-process change feed: sessions of an account subscribe, writers publish what
//! changed in which mailbox. Backend-neutral; every backend publishes after its writes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::broadcast;

use super::{Change, Changes, Mailbox, Observer, normalize_address};

/// Subscribers per account, and the observers of every change.
#[derive(Default)]
pub(crate) struct Watchers {
    accounts: Mutex<HashMap<String, broadcast::Sender<Arc<Change>>>>,
    observers: RwLock<Vec<Observer>>,
}

impl Watchers {
    /// Subscribe to changes in `user`'s mailboxes.
    pub(crate) fn watch(&self, user: &str) -> Changes {
        self.accounts
            .lock()
            .expect("watchers")
            .entry(normalize_address(user))
            .or_insert_with(|| broadcast::channel(256).0)
            .subscribe()
    }

    /// The accounts someone watches now (normalised addresses).
    pub(crate) fn watched(&self) -> Vec<String> {
        let mut accounts = self.accounts.lock().expect("watchers");
        accounts.retain(|_, tx| tx.receiver_count() > 0);
        accounts.keys().cloned().collect()
    }

    /// Whether someone watches `user` now (normalised).
    pub(crate) fn is_watched(&self, user: &str) -> bool {
        self.accounts
            .lock()
            .expect("watchers")
            .get(user)
            .is_some_and(|tx| tx.receiver_count() > 0)
    }

    /// Add an observer of every change ([`super::Feed::observe`]).
    pub(crate) fn observe(&self, sink: Observer) {
        self.observers.write().expect("observers").push(sink);
    }

    /// Tell the observers, then `user`'s sessions (`user` normalised), what changed.
    pub(crate) fn notify(&self, user: &str, change: Change) {
        for sink in self.observers.read().expect("observers").iter() {
            sink(user, &change);
        }
        if let Some(tx) = self.accounts.lock().expect("watchers").get(user) {
            let _ = tx.send(Arc::new(change));
        }
    }

    /// A mailbox was deleted with the messages `uids`: sessions that have it selected see
    /// them go, then the mailbox.
    pub(crate) fn mailbox_deleted(&self, user: &str, mb: &Mailbox, uids: Vec<u32>) {
        if !uids.is_empty() {
            self.notify(
                user,
                Change::Expunged {
                    mailbox: mb.id,
                    uids,
                    modseq: mb.highest_modseq + 1,
                },
            );
        }
        self.notify(
            user,
            Change::Deleted {
                mailbox: mb.id,
                name: mb.name.clone(),
            },
        );
    }
}
