//! The in-process change feed: sessions of an account subscribe, writers publish what
//! changed in which mailbox. Backend-neutral; every backend publishes after its writes.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::broadcast;

use super::{MailboxEvent, normalize_address};

/// Subscribers per account.
#[derive(Default)]
pub(crate) struct Watchers(Mutex<HashMap<String, broadcast::Sender<(u64, MailboxEvent)>>>);

impl Watchers {
    /// Subscribe to changes in `user`'s mailboxes.
    pub(crate) fn watch(&self, user: &str) -> broadcast::Receiver<(u64, MailboxEvent)> {
        self.0
            .lock()
            .expect("watchers")
            .entry(normalize_address(user))
            .or_insert_with(|| broadcast::channel(256).0)
            .subscribe()
    }

    /// Tell `user`'s sessions (`user` normalised) that `mailbox` changed.
    pub(crate) fn notify(&self, user: &str, mailbox: u64, event: MailboxEvent) {
        if let Some(tx) = self.0.lock().expect("watchers").get(user) {
            let _ = tx.send((mailbox, event));
        }
    }
}
