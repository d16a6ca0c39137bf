//! The in-process change feed: sessions of an account subscribe, writers publish what
//! changed in which mailbox. Backend-neutral; every backend publishes after its writes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::{Change, Changes, Mailbox, normalize_address};

/// Subscribers per account.
#[derive(Default)]
pub(crate) struct Watchers(Mutex<HashMap<String, broadcast::Sender<Arc<Change>>>>);

impl Watchers {
    /// Subscribe to changes in `user`'s mailboxes.
    pub(crate) fn watch(&self, user: &str) -> Changes {
        self.0
            .lock()
            .expect("watchers")
            .entry(normalize_address(user))
            .or_insert_with(|| broadcast::channel(256).0)
            .subscribe()
    }

    /// Tell `user`'s sessions (`user` normalised) what changed.
    pub(crate) fn notify(&self, user: &str, change: Change) {
        if let Some(tx) = self.0.lock().expect("watchers").get(user) {
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
