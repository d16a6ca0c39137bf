//! A server-wide bound on the message bytes that sessions hold in memory at once.
//!
//! An SMTP session keeps the message it receives in memory until the end of data (sender
//! authentication, hooks and the store all read it whole). One session is bounded by
//! `smtp.max_message_size`, but fifty sessions of 50 MB each are 2.5 GB: so every session
//! reserves what it keeps from one [`MemoryBudget`] (`smtp.max_message_memory`). A session
//! that cannot reserve more stops keeping bytes, reads the rest of its message and answers
//! `452 4.3.1` (RFC 3463: mail system full, try again later); the reservation goes back when
//! the message has been handled, so the next attempt can succeed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Reservations are taken in steps of this size, so a growing message costs one atomic
/// operation per step, not one per line.
pub const STEP: usize = 1 << 20;

/// The bytes that may be held at once, and those held now.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(MemoryBudget {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// Bytes reserved right now, all sessions together.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Whether `bytes` more could be reserved right now (for SIZE= at MAIL FROM).
    pub fn has_room(&self, bytes: usize) -> bool {
        self.used().saturating_add(bytes) <= self.limit
    }

    fn take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(bytes).filter(|&n| n <= self.limit)
            })
            .is_ok()
    }
}

/// What one session holds of a [`MemoryBudget`]; given back on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<MemoryBudget>,
    held: usize,
}

impl Reservation {
    /// An empty reservation on `budget`.
    pub fn new(budget: &Arc<MemoryBudget>) -> Self {
        Reservation {
            budget: budget.clone(),
            held: 0,
        }
    }

    /// Make the reservation cover `bytes` (growing in [`STEP`]s); false when the budget has
    /// no room (the reservation keeps what it had).
    pub fn cover(&mut self, bytes: usize) -> bool {
        if bytes <= self.held {
            return true;
        }
        let want = bytes.div_ceil(STEP).saturating_mul(STEP);
        let more = want - self.held;
        if self.budget.take(more) {
            self.held = want;
            true
        } else {
            false
        }
    }

    /// Bytes held.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Give everything back (the reservation stays usable).
    pub fn release(&mut self) {
        self.budget.used.fetch_sub(self.held, Ordering::AcqRel);
        self.held = 0;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_share_one_limit_and_give_back_on_drop() {
        let b = MemoryBudget::new(3 * STEP);
        let mut r1 = Reservation::new(&b);
        assert!(r1.cover(10));
        assert_eq!(r1.held(), STEP);
        assert!(r1.cover(STEP + 1));
        assert_eq!(b.used(), 2 * STEP);
        let mut r2 = Reservation::new(&b);
        assert!(r2.cover(STEP));
        assert!(!r2.cover(STEP + 1), "over the limit");
        assert_eq!(r2.held(), STEP, "a refused step keeps what was held");
        assert!(!b.has_room(1));
        drop(r1);
        assert_eq!(b.used(), STEP);
        assert!(r2.cover(3 * STEP));
        r2.release();
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn concurrent_reservations_never_exceed_the_limit() {
        let b = MemoryBudget::new(10 * STEP);
        let won: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..40)
                .map(|_| {
                    let b = b.clone();
                    s.spawn(move || {
                        let mut r = Reservation::new(&b);
                        let ok = r.cover(STEP);
                        std::mem::forget(r); // keep it held
                        ok as usize
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(won, 10);
        assert_eq!(b.used(), 10 * STEP);
    }
}
