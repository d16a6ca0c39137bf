//! Group commit: many sessions wait for durability, one thread flushes for all of them.
//!
//! A caller writes to sled (in memory), then asks for a [`Commit`]. The flusher thread takes
//! every request queued so far, runs one `flush()`, and wakes them all. A flush that starts
//! after a request was queued covers every write made before the request.
//!
//! Why `flush()` is enough: published sled 0.34 ends each log write with `sync_file_range`,
//! which neither flushes the device's write cache nor commits the file's metadata (the log
//! grows, so its new size would be lost on a power failure); Corvus used to `fdatasync` the
//! log after every flush for that. The vendored sled (`vendor/sled.patch`) `fdatasync`s after
//! every log write instead, and `flush()` returns only once every write up to the last
//! reservation has completed, so a returned flush is durable against a machine crash too, with
//! one wait on the device instead of two. It also writes the buffer it seals on this thread
//! rather than handing it to sled's IO pool.

use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

/// Resolves when the writes made before it was created are durable.
pub struct Commit(CommitInner);

enum CommitInner {
    Waiting(oneshot::Receiver<Result<(), String>>),
    Failed(Option<String>),
}

impl Commit {
    /// A commit that is already durable (a backend whose writes are durable when they
    /// return, or that has nothing to make durable).
    pub fn done() -> Self {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(Ok(()));
        Commit(CommitInner::Waiting(rx))
    }
}

impl Future for Commit {
    type Output = Result<(), super::StoreError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().0 {
            CommitInner::Waiting(rx) => Pin::new(rx).poll(cx).map(|r| match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(super::StoreError::Backend(format!("flush failed: {e}"))),
                Err(_) => Err(super::StoreError::Backend("flusher stopped".into())),
            }),
            CommitInner::Failed(e) => Poll::Ready(Err(super::StoreError::Backend(
                e.take().unwrap_or_default(),
            ))),
        }
    }
}

/// Handle to the flusher thread.
pub(crate) struct GroupCommitter {
    tx: Option<mpsc::Sender<oneshot::Sender<Result<(), String>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for GroupCommitter {
    /// Stop the thread and wait for it, so the database is really closed afterwards.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl GroupCommitter {
    /// Start the flusher thread for `db`.
    pub(crate) fn start(db: sled::Db) -> Self {
        let (tx, rx) = mpsc::channel::<oneshot::Sender<Result<(), String>>>();
        let thread = std::thread::Builder::new()
            .name("corvus-flush".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut waiters = vec![first];
                    while let Ok(w) = rx.try_recv() {
                        waiters.push(w);
                    }
                    let result = db.flush().map(|_| ()).map_err(|e| e.to_string());
                    for w in waiters {
                        let _ = w.send(result.clone());
                    }
                }
            })
            .expect("spawn flusher thread");
        GroupCommitter {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    /// Ask for a flush covering every write made so far.
    pub(crate) fn commit(&self) -> Commit {
        let (tx, rx) = oneshot::channel();
        match self.tx.as_ref().map(|s| s.send(tx)) {
            Some(Ok(())) => Commit(CommitInner::Waiting(rx)),
            _ => Commit(CommitInner::Failed(Some("flusher stopped".into()))),
        }
    }
}
