//! Conformance of the queue (updates, removal, exclusive claims) and of leases.

use super::*;

/// Queue entries: a stale update does not bring back a deleted entry; flush changes only
/// the due time; removal frees the body.
pub(super) async fn queue_updates_and_removal(h: Harness) {
    let s = &h.store;
    s.enqueue(queued("Q1", "x@example.net"), b"body")
        .await
        .unwrap();
    let mut e = s.queue_entry("Q1").await.unwrap().unwrap();
    assert_eq!(s.blob(e.blob).await.unwrap(), b"body");
    e.attempts = 3;
    e.next_attempt = 999;
    s.queue_update(&e).await.unwrap();
    s.queue_due_now("Q1").await.unwrap();
    let now = s.queue_entry("Q1").await.unwrap().unwrap();
    assert_eq!((now.attempts, now.next_attempt), (3, 0));
    s.queue_remove("Q1").await.unwrap();
    assert!(s.blob(e.blob).await.is_err());
    assert!(matches!(
        s.queue_update(&e).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(s.queue_entry("Q1").await.unwrap().is_none());
    assert!(matches!(
        s.queue_due_now("Q1").await,
        Err(StoreError::NotFound(_))
    ));
}

/// Two runners claiming at once never get the same entry; a live lease keeps others off,
/// an expired one lets another runner take over, and the old owner can then no longer
/// record anything.
pub(super) async fn queue_claims_are_exclusive_and_leases_expire(h: Harness) {
    let s = h.store.clone();
    for i in 0..20 {
        s.enqueue(queued(&format!("Q{i:02}"), "x@example.net"), b"m")
            .await
            .unwrap();
    }
    let mut later = queued("LATER", "x@example.net");
    later.next_attempt = 1_000;
    s.enqueue(later, b"m").await.unwrap();
    let runners: Vec<_> = ["A", "B"]
        .into_iter()
        .map(|owner| {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                loop {
                    let c = s.queue_claim(owner, 10, 300, 3).wait().unwrap();
                    if c.entries.is_empty() {
                        return (got, c.next);
                    }
                    assert!(c.entries.iter().all(|e| e.leased_by(owner)));
                    got.extend(c.entries.into_iter().map(|e| e.id));
                }
            })
        })
        .collect();
    let results: Vec<(Vec<String>, Option<i64>)> =
        runners.into_iter().map(|t| t.join().unwrap()).collect();
    let (a, b) = (&results[0].0, &results[1].0);
    assert!(
        a.iter().all(|id| !b.contains(id)),
        "claimed twice: {a:?} {b:?}"
    );
    assert_eq!(a.len() + b.len(), 20);
    // What becomes claimable next: the leases (at 310) before the entry due at 1000.
    assert_eq!(results[0].1, Some(310));

    // Lease expiry and takeover.
    let id = "Q00";
    let holder = if a.iter().any(|x| x == id) { "A" } else { "B" };
    assert!(matches!(
        s.queue_renew(id, "C", 400).await,
        Err(StoreError::Invalid(_))
    ));
    s.queue_renew(id, holder, 320).await.unwrap();
    assert!(
        s.queue_claim("C", 309, 60, 100)
            .await
            .unwrap()
            .entries
            .is_empty()
    );
    // At 315 every lease but the renewed one has run out.
    let taken = s.queue_claim("C", 315, 60, 100).await.unwrap();
    assert_eq!(taken.entries.len(), 19);
    assert!(taken.entries.iter().all(|e| e.id != id));
    assert_eq!(taken.next, Some(320));
    let taken = s.queue_claim("C", 320, 60, 100).await.unwrap();
    assert_eq!(taken.entries.len(), 1, "the renewed lease ran out at 320");
    let mut entry = s.queue_entry(id).await.unwrap().unwrap();
    assert!(entry.leased_by("C"));
    entry.attempts = 1;
    assert!(matches!(
        s.queue_save(&entry, holder, true).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        s.queue_complete(id, holder).await,
        Err(StoreError::Invalid(_))
    ));
    // The new owner records progress (lease kept), then releases.
    entry.rcpts.clear();
    s.queue_save(&entry, "C", false).await.unwrap();
    assert!(s.queue_entry(id).await.unwrap().unwrap().leased_by("C"));
    s.queue_save(&entry, "C", true).await.unwrap();
    let saved = s.queue_entry(id).await.unwrap().unwrap();
    assert_eq!((saved.attempts, saved.lease.clone()), (1, None));
    assert!(matches!(
        s.queue_complete(id, "C").await,
        Err(StoreError::Invalid(_))
    ));
    // Complete removes the entry and its body.
    let other = "Q01";
    let blob = s.queue_entry(other).await.unwrap().unwrap().blob;
    s.queue_complete(other, "C").await.unwrap();
    assert!(s.queue_entry(other).await.unwrap().is_none());
    assert!(s.blob(blob).await.is_err());
    assert!(matches!(
        s.queue_complete(other, "C").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        s.queue_renew(other, "C", 1).await,
        Err(StoreError::NotFound(_))
    ));
}

/// Leases: one holder at a time (also under concurrency), renewable by their holder, free
/// again when dropped or expired.
pub(super) async fn leases_are_exclusive_and_expire(h: Harness) {
    let s = h.store.clone();
    let winners: usize = (0..4)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                s.lease_take("pop3:a", &format!("h{t}"), 100, 200)
                    .wait()
                    .unwrap()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap() as usize)
        .sum();
    assert_eq!(winners, 1);
    s.lease_take("x", "A", 100, 200).await.unwrap();
    assert!(!s.lease_take("x", "B", 150, 300).await.unwrap());
    assert!(
        s.lease_take("x", "A", 150, 300).await.unwrap(),
        "the holder renews"
    );
    assert!(
        !s.lease_take("x", "B", 250, 400).await.unwrap(),
        "renewed to 300"
    );
    s.lease_drop("x", "B").await.unwrap(); // not B's: nothing happens
    assert!(!s.lease_take("x", "B", 250, 400).await.unwrap());
    assert!(
        s.lease_take("x", "B", 300, 400).await.unwrap(),
        "expired at 300"
    );
    s.lease_drop("x", "B").await.unwrap();
    assert!(s.lease_take("x", "C", 301, 400).await.unwrap(), "dropped");
}
