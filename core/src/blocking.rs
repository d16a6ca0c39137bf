//! Waiting for a future from synchronous code: Rhai's `kv_*` functions, plugin host calls,
//! IMAP/POP3 fetch hooks and the CLI call into async code (the store, plugins) this way.
//!
//! [`wait`] polls the future once first: the embedded backends (sled, memory) answer most
//! calls without suspending, so a synchronous caller pays nothing more than a boxed future.
//! Otherwise the future runs to completion with `block_in_place` on a multi-threaded
//! runtime (the worker hands its other tasks to the pool meanwhile), or on a small
//! runtime of its own when there is no runtime or only a current-thread one.

use std::future::Future;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

/// Run `fut` to completion from synchronous code; see the module documentation.
pub fn wait<F: Future + Send>(fut: F) -> F::Output
where
    F::Output: Send,
{
    let mut fut = Box::pin(fut);
    if let Poll::Ready(out) = first_poll(fut.as_mut()) {
        return out;
    }
    run(fut)
}

/// One poll with a no-op waker, inside a runtime's context (this thread's, else our own):
/// a future may spawn or use tokio's timers and I/O even when it finishes at once.
fn first_poll<F: Future + ?Sized>(fut: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    let _context = tokio::runtime::Handle::try_current()
        .is_err()
        .then(|| own().enter());
    fut.poll(&mut Context::from_waker(Waker::noop()))
}

/// The runtime of synchronous callers that have none.
fn own() -> &'static tokio::runtime::Runtime {
    static OWN: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    OWN.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("corvus-sync")
            .enable_all()
            .build()
            .expect("tokio runtime for synchronous callers")
    })
}

/// `.wait()` on a future: [`wait`] as a method, for synchronous code that reads like async
/// code with `.await`.
pub trait Wait: Future + Send + Sized
where
    Self::Output: Send,
{
    /// See [`wait`].
    fn wait(self) -> Self::Output {
        wait(self)
    }
}

impl<F: Future + Send> Wait for F where F::Output: Send {}

/// Run `f`, a long piece of blocking work (a big scan of an embedded store), without
/// holding up the other tasks of a tokio worker: with `block_in_place` on a multi-threaded
/// runtime, directly elsewhere.
pub fn offload<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Start `fut` from synchronous code that cannot wait for it (a `Drop`): polled once here,
/// then, if it is not done, left to the current runtime, or run to completion without one.
pub fn detach<F: Future<Output = ()> + Send + 'static>(fut: F) {
    let mut fut = Box::pin(fut);
    if first_poll(fut.as_mut()).is_ready() {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(h) => drop(h.spawn(fut)),
        Err(_) => run(fut),
    }
}

/// Run `fut` to completion on a runtime, without the first poll of [`wait`].
pub fn run<F: Future + Send>(fut: F) -> F::Output
where
    F::Output: Send,
{
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Err(_) => own().block_on(fut),
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| h.block_on(fut))
        }
        Ok(_) => std::thread::scope(|s| {
            s.spawn(|| own().block_on(fut))
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_futures_need_no_runtime() {
        assert_eq!(wait(async { 7 }), 7);
    }

    #[test]
    fn pending_futures_run_without_a_runtime() {
        assert_eq!(
            wait(async {
                tokio::task::yield_now().await;
                8
            }),
            8
        );
    }

    #[test]
    fn futures_that_need_a_runtime_at_once_get_one() {
        let n = wait(async { tokio::spawn(async { 11 }).await.unwrap() });
        assert_eq!(n, 11);
    }

    #[tokio::test]
    async fn pending_futures_run_from_a_current_thread_runtime() {
        assert_eq!(
            wait(async {
                tokio::task::yield_now().await;
                9
            }),
            9
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pending_futures_run_from_a_worker() {
        assert_eq!(
            wait(async {
                tokio::task::yield_now().await;
                10
            }),
            10
        );
    }
}
