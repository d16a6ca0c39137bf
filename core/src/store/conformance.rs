//! The contract every storage backend keeps, as tests written against [`MailStore`] only and
//! run against each backend (`sled_backend::*` with the metadata cache in front, as `serve`
//! runs it, `memory_backend::*`, and `cached_memory_backend::*` for the cache layer over
//! the memory backend). A new backend adds one line to the macro at the bottom and must
//! pass all of them.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::*;
use crate::blocking::Wait;

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

/// Two local recipients and a remote one; a failure after the first placement leaves
/// nothing: no copy, no queue entry, no UID used; the retry writes each once.
async fn ingest_is_all_or_nothing(h: Harness) {
    let s = &h.store;
    s.create_account("a@example.org", "").await.unwrap();
    s.create_account("b@example.org", "").await.unwrap();
    let next_before: Vec<u32> = ["a@example.org", "b@example.org"]
        .iter()
        .map(|u| s.mailbox(u, "INBOX").wait().unwrap().unwrap().uidnext)
        .collect();
    let ingest = Ingest {
        internal_date: 1,
        filed: vec![
            Filed {
                message: body("shared"),
                placements: vec![
                    placement("a@example.org", "INBOX"),
                    placement("b@example.org", "INBOX"),
                ],
            },
            Filed {
                message: body("own copy"),
                placements: vec![placement("b@example.org", "Lists")],
            },
        ],
        queue: Some((queued("Q1", "far@example.net"), body("queued"))),
    };
    h.failpoints.arm("ingest-after-placement", 1);
    assert!(s.ingest(ingest.clone()).await.is_err());
    assert!(uids(s, "a@example.org", "INBOX").await.is_empty());
    assert!(uids(s, "b@example.org", "INBOX").await.is_empty());
    assert!(s.mailbox("b@example.org", "Lists").await.unwrap().is_none());
    assert!(s.queue().await.unwrap().is_empty());
    let next_after: Vec<u32> = ["a@example.org", "b@example.org"]
        .iter()
        .map(|u| s.mailbox(u, "INBOX").wait().unwrap().unwrap().uidnext)
        .collect();
    assert_eq!(
        next_before, next_after,
        "no UID may be used by a failed ingest"
    );

    let receipt = s.ingest(ingest).await.unwrap();
    assert_eq!(receipt.placed.len(), 3);
    assert_eq!(uids(s, "a@example.org", "INBOX").await, vec![1]);
    assert_eq!(uids(s, "b@example.org", "INBOX").await, vec![1]);
    assert_eq!(uids(s, "b@example.org", "Lists").await, vec![1]);
    let lists = s.mailbox("b@example.org", "Lists").await.unwrap().unwrap();
    let own = s.message(lists.id, 1).await.unwrap().unwrap();
    assert_eq!(s.blob(own.blob).await.unwrap(), *body("own copy"));
    let q = s.queue().await.unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(s.blob(q[0].blob).await.unwrap(), *body("queued"));
    assert_eq!(receipt.placed[0].user, "a@example.org");
    assert_eq!(receipt.placed[2].mailbox, lists.id);
}

/// A message with one placement (the fast path of backends that have one) is atomic too:
/// a failed ingest of one record leaves nothing, an empty ingest writes nothing.
async fn single_and_empty_ingests(h: Harness) {
    let s = &h.store;
    s.create_account("a@example.org", "").await.unwrap();
    let one = Ingest {
        internal_date: 7,
        filed: vec![Filed {
            message: body("one"),
            placements: vec![placement("A@Example.org", "inbox")],
        }],
        queue: None,
    };
    let r = s.ingest(one).await.unwrap();
    assert_eq!(r.placed.len(), 1);
    assert_eq!(r.placed[0].uid, 1);
    let inbox = s.mailbox("a@example.org", "INBOX").await.unwrap().unwrap();
    let m = s.message(inbox.id, 1).await.unwrap().unwrap();
    assert_eq!(m.internal_date, 7);
    assert_eq!(m.modseq, r.placed[0].modseq);
    assert_eq!(inbox.highest_modseq, m.modseq);
    // A placement for an account that has no such folder creates it (file_into).
    let r = s
        .ingest(Ingest {
            internal_date: 8,
            filed: vec![Filed {
                message: body("filed"),
                placements: vec![placement("a@example.org", "Projects/Corvus")],
            }],
            queue: None,
        })
        .await
        .unwrap();
    assert_eq!(r.placed[0].uid, 1);
    assert!(
        s.mailbox("a@example.org", "Projects/Corvus")
            .await
            .unwrap()
            .is_some()
    );
    let only_queue = Ingest {
        queue: Some((queued("Q9", "x@example.net"), body("q"))),
        ..Ingest::default()
    };
    assert!(s.ingest(only_queue).await.unwrap().placed.is_empty());
    assert_eq!(s.queue().await.unwrap().len(), 1);
    assert_eq!(
        s.ingest(Ingest::default()).await.unwrap(),
        Receipt::default()
    );
}

/// Many writers into one mailbox at once: every UID and MODSEQ is unique, and a reader
/// never sees a new message with a UID at or below one it has already seen (RFC 9051
/// §2.3.1.1), nor MODSEQs out of UID order.
async fn concurrent_ingest_keeps_uids_ascending_in_visibility_order(h: Harness) {
    let s = h.store.clone();
    s.create_account("a@example.org", "").await.unwrap();
    s.create_account("b@example.org", "").await.unwrap();
    let inbox = inbox_id(&s, "a@example.org").await;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (s, done) = (s.clone(), done.clone());
        std::thread::spawn(move || {
            let mut seen: BTreeSet<u32> = BTreeSet::new();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let now = s.messages(inbox).wait().unwrap();
                let max_seen = seen.iter().next_back().copied().unwrap_or(0);
                for m in &now {
                    if !seen.contains(&m.uid) {
                        assert!(m.uid > max_seen, "UID {} appeared after {max_seen}", m.uid);
                    }
                }
                let modseqs: Vec<u64> = now.iter().map(|m| m.modseq).collect();
                assert!(modseqs.windows(2).all(|w| w[0] < w[1]), "{modseqs:?}");
                seen.extend(now.iter().map(|m| m.uid));
            }
        })
    };
    (async {
        let mut tasks = Vec::new();
        for t in 0..8 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..25 {
                    let mut placements = vec![placement("a@example.org", "INBOX")];
                    if i % 2 == 0 {
                        placements.push(placement("b@example.org", "INBOX"));
                    }
                    let ingest = Ingest {
                        internal_date: 0,
                        filed: vec![Filed {
                            message: body(&format!("{t}-{i}")),
                            placements,
                        }],
                        queue: None,
                    };
                    s.ingest(ingest).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    reader.join().unwrap();
    let all = s.messages(inbox).await.unwrap();
    assert_eq!(all.len(), 200);
    assert_eq!(
        all.iter().map(|m| m.uid).collect::<Vec<_>>(),
        (1..=200).collect::<Vec<_>>()
    );
    let mb = s.mailbox("a@example.org", "INBOX").await.unwrap().unwrap();
    assert_eq!(mb.uidnext, 201);
    assert_eq!(mb.highest_modseq, all.last().unwrap().modseq);
    assert_eq!(uids(&s, "b@example.org", "INBOX").await.len(), 8 * 13);
}

/// Two sessions changing flags of the same messages at once both keep their change;
/// UNCHANGEDSINCE refuses what changed after it (RFC 7162 §3.1.3).
async fn flag_updates_are_atomic_and_honour_unchangedsince(h: Harness) {
    let s = h.store.clone();
    s.create_account("a@example.org", "").await.unwrap();
    for i in 0..20 {
        s.deliver(
            &body(&i.to_string()),
            0,
            &[placement("a@example.org", "INBOX")],
        )
        .await
        .unwrap();
    }
    let inbox = inbox_id(&s, "a@example.org").await;
    let all: Vec<u32> = (1..=20).collect();
    let threads: Vec<_> = ["$A", "$B", "$C", "$D"]
        .into_iter()
        .map(|flag| {
            let (s, all) = (s.clone(), all.clone());
            std::thread::spawn(move || {
                for _ in 0..10 {
                    s.update_flags(
                        "a@example.org",
                        inbox,
                        &all,
                        FlagOp::Add,
                        &[flag.to_string()],
                        None,
                    )
                    .wait()
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let msgs = s.messages(inbox).await.unwrap();
    for m in &msgs {
        for f in ["$A", "$B", "$C", "$D"] {
            assert!(m.flags.iter().any(|x| x == f), "{} lacks {f}", m.uid);
        }
    }
    let modseqs: BTreeSet<u64> = msgs.iter().map(|m| m.modseq).collect();
    assert_eq!(modseqs.len(), msgs.len(), "MODSEQs are unique");
    let highest = s
        .mailbox("a@example.org", "INBOX")
        .await
        .unwrap()
        .unwrap()
        .highest_modseq;
    assert_eq!(highest, *modseqs.iter().next_back().unwrap());

    // Message 1 changes after `since`; UNCHANGEDSINCE since leaves it alone.
    let since = highest;
    let (up, _) = s
        .update_flags(
            "a@example.org",
            inbox,
            &[1],
            FlagOp::Add,
            &["\\Seen".into()],
            None,
        )
        .await
        .unwrap();
    assert!(up[0].changed && up[0].modseq > since);
    let (done, modified) = s
        .update_flags(
            "a@example.org",
            inbox,
            &[1, 2],
            FlagOp::Add,
            &["\\Flagged".into()],
            Some(since),
        )
        .await
        .unwrap();
    assert_eq!(modified, vec![1]);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].uid, 2);
    // A no-op change keeps the MODSEQ.
    let (same, _) = s
        .update_flags(
            "a@example.org",
            inbox,
            &[2],
            FlagOp::Add,
            &["\\Flagged".into()],
            None,
        )
        .await
        .unwrap();
    assert!(!same[0].changed);
    assert_eq!(same[0].modseq, done[0].modseq);
}

/// COPY gives new ascending UIDs and shares the body; EXPUNGE of the last reference frees
/// it; a move is a copy and an expunge.
async fn copy_expunge_and_move(h: Harness) {
    let s = &h.store;
    s.create_account("a@example.org", "").await.unwrap();
    for i in 0..3 {
        s.deliver(
            &body(&i.to_string()),
            0,
            &[placement("a@example.org", "INBOX")],
        )
        .await
        .unwrap();
    }
    let inbox = s.mailbox("a@example.org", "INBOX").await.unwrap().unwrap();
    let (validity, pairs) = s
        .copy("a@example.org", inbox.id, &[1, 3, 99], "Archive")
        .await
        .unwrap();
    let archive = s
        .mailbox("a@example.org", "Archive")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(validity, archive.uidvalidity);
    assert_eq!(pairs, vec![(1, 1), (3, 2)]);
    assert!(
        s.copy("a@example.org", inbox.id, &[1], "Nowhere")
            .await
            .is_err_and(|e| matches!(e, StoreError::NotFound(_)))
    );
    let blob1 = s.message(inbox.id, 1).await.unwrap().unwrap().blob;
    assert_eq!(
        s.expunge("a@example.org", inbox.id, &[1, 42])
            .await
            .unwrap(),
        vec![1]
    );
    // Still referenced by the copy.
    assert_eq!(s.blob(blob1).await.unwrap(), *body("0"));
    assert_eq!(
        s.expunge("a@example.org", archive.id, &[1]).await.unwrap(),
        vec![1]
    );
    assert!(
        s.blob(blob1).await.is_err(),
        "the last reference frees the body"
    );
    // An expunge of nothing leaves HIGHESTMODSEQ alone.
    let before = s.mailbox("a@example.org", "INBOX").await.unwrap().unwrap();
    assert!(
        s.expunge("a@example.org", inbox.id, &[1])
            .await
            .unwrap()
            .is_empty()
    );
    let after = s.mailbox("a@example.org", "INBOX").await.unwrap().unwrap();
    assert_eq!(before.highest_modseq, after.highest_modseq);
    // Move: copy, then expunge the source.
    let (_, moved) = s
        .copy("a@example.org", inbox.id, &[2], "Trash")
        .await
        .unwrap();
    s.expunge("a@example.org", inbox.id, &[2]).await.unwrap();
    assert_eq!(uids(s, "a@example.org", "INBOX").await, vec![3]);
    assert_eq!(uids(s, "a@example.org", "Trash").await, vec![moved[0].1]);
}

/// Accounts, domains, aliases and mailbox naming rules.
async fn directory_and_mailbox_rules(h: Harness) {
    let s = &h.store;
    s.create_account("Alice@Example.org", "hash").await.unwrap();
    assert!(matches!(
        s.create_account("alice@example.org", "x").await,
        Err(StoreError::Exists(_))
    ));
    assert!(s.account_exists("ALICE@example.org").await.unwrap());
    assert_eq!(
        s.account("alice@example.org")
            .await
            .unwrap()
            .unwrap()
            .password_hash,
        "hash"
    );
    s.set_password("alice@example.org", "new").await.unwrap();
    assert_eq!(
        s.account("alice@example.org")
            .await
            .unwrap()
            .unwrap()
            .password_hash,
        "new"
    );
    assert!(matches!(
        s.set_password("nobody@example.org", "x").await,
        Err(StoreError::NotFound(_))
    ));
    let names: Vec<String> = s
        .mailboxes("alice@example.org")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    for (name, _) in DEFAULT_MAILBOXES {
        assert!(names.iter().any(|n| n == name), "{name} missing");
    }
    assert_eq!(
        s.subscriptions("alice@example.org").await.unwrap().len(),
        DEFAULT_MAILBOXES.len()
    );
    assert!(
        s.mailbox("alice@example.org", "inbox")
            .await
            .unwrap()
            .is_some()
    );
    assert!(matches!(
        s.create_mailbox("alice@example.org", "Sent", None).await,
        Err(StoreError::Exists(_))
    ));
    assert!(matches!(
        s.delete_mailbox("alice@example.org", "Inbox").await,
        Err(StoreError::Invalid(_))
    ));
    // Renaming moves children and subscriptions; renaming INBOX moves its messages.
    s.create_mailbox("alice@example.org", "Work", None)
        .await
        .unwrap();
    s.create_mailbox("alice@example.org", "Work/2026", None)
        .await
        .unwrap();
    s.set_subscribed("alice@example.org", "Work/2026", true)
        .await
        .unwrap();
    s.rename_mailbox("alice@example.org", "Work", "Job")
        .await
        .unwrap();
    assert!(
        s.mailbox("alice@example.org", "Job/2026")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        s.mailbox("alice@example.org", "Work")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.subscriptions("alice@example.org")
            .await
            .unwrap()
            .contains(&"Job/2026".to_string())
    );
    s.deliver(&body("x"), 0, &[placement("alice@example.org", "INBOX")])
        .await
        .unwrap();
    s.rename_mailbox("alice@example.org", "INBOX", "Old")
        .await
        .unwrap();
    assert!(uids(s, "alice@example.org", "INBOX").await.is_empty());
    assert_eq!(uids(s, "alice@example.org", "Old").await, vec![1]);
    // Subscriptions are independent of mailboxes (RFC 9051 §6.3.9).
    s.set_subscribed("alice@example.org", "Ghost", true)
        .await
        .unwrap();
    assert!(
        s.subscriptions("alice@example.org")
            .await
            .unwrap()
            .contains(&"Ghost".to_string())
    );

    s.add_domain("Example.COM").await.unwrap();
    assert!(matches!(
        s.add_domain("example.com").await,
        Err(StoreError::Exists(_))
    ));
    assert_eq!(s.domains().await.unwrap(), vec!["example.com".to_string()]);
    s.delete_domain("example.com").await.unwrap();
    assert!(matches!(
        s.delete_domain("example.com").await,
        Err(StoreError::NotFound(_))
    ));

    s.set_alias("Sales@Example.org", &["Alice@Example.org".into()])
        .await
        .unwrap();
    assert_eq!(
        s.alias("sales@example.org").await.unwrap(),
        Some(vec!["alice@example.org".to_string()])
    );
    assert_eq!(s.aliases().await.unwrap().len(), 1);
    s.delete_alias("sales@example.org").await.unwrap();
    assert!(matches!(
        s.delete_alias("sales@example.org").await,
        Err(StoreError::NotFound(_))
    ));

    s.delete_account("alice@example.org").await.unwrap();
    assert!(!s.account_exists("alice@example.org").await.unwrap());
    assert!(s.mailboxes("alice@example.org").await.unwrap().is_empty());
    assert!(matches!(
        s.delete_account("alice@example.org").await,
        Err(StoreError::NotFound(_))
    ));
}

/// The key-value area: TTLs, atomic counters whose window does not slide.
async fn kv_ttl_and_atomic_increment(h: Harness) {
    let s = h.store.clone();
    s.kv_set("ns", "k", b"v", None).await.unwrap();
    assert_eq!(s.kv_get("ns", "k").await.unwrap(), Some(b"v".to_vec()));
    assert_eq!(s.kv_get("other", "k").await.unwrap(), None);
    s.kv_set("ns", "gone", b"v", Some(0)).await.unwrap();
    assert_eq!(s.kv_get("ns", "gone").await.unwrap(), None);
    assert_eq!(s.kv_incr("ns", "n", 2, Some(3600)).await.unwrap(), 2);
    assert_eq!(s.kv_incr("ns", "n", -5, None).await.unwrap(), -3);
    s.kv_set("ns", "text", b"abc", None).await.unwrap();
    assert_eq!(s.kv_incr("ns", "text", 1, None).await.unwrap(), 1);
    // An expired counter starts again.
    s.kv_set("ns", "old", b"40", Some(0)).await.unwrap();
    assert_eq!(s.kv_incr("ns", "old", 1, None).await.unwrap(), 1);
    // Concurrent increments are not lost.
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || {
                for _ in 0..250 {
                    s.kv_incr("ns", "c", 1, None).wait().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(s.kv_incr("ns", "c", 0, None).await.unwrap(), 1000);
}

/// Queue entries: a stale update does not bring back a deleted entry; flush changes only
/// the due time; removal frees the body.
async fn queue_updates_and_removal(h: Harness) {
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
async fn queue_claims_are_exclusive_and_leases_expire(h: Harness) {
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

/// "What changed since MODSEQ m" comes from the store: messages added or changed after m,
/// and exactly the UIDs expunged after m (QRESYNC).
async fn changes_since_lists_changes_and_expunges(h: Harness) {
    let s = &h.store;
    s.create_account("a@example.org", "").await.unwrap();
    for i in 0..4 {
        s.deliver(
            &body(&i.to_string()),
            0,
            &[placement("a@example.org", "INBOX")],
        )
        .await
        .unwrap();
    }
    let inbox = s.mailbox("a@example.org", "INBOX").await.unwrap().unwrap();
    let m0 = inbox.highest_modseq;
    s.expunge("a@example.org", inbox.id, &[1]).await.unwrap();
    s.update_flags(
        "a@example.org",
        inbox.id,
        &[3],
        FlagOp::Add,
        &["\\Seen".into()],
        None,
    )
    .await
    .unwrap();
    s.deliver(&body("late"), 0, &[placement("a@example.org", "INBOX")])
        .await
        .unwrap();
    let c = s
        .changes_since("a@example.org", inbox.id, m0)
        .await
        .unwrap();
    assert!(c.complete);
    assert_eq!(c.expunged, vec![1]);
    assert_eq!(
        c.changed.iter().map(|m| m.uid).collect::<Vec<_>>(),
        vec![3, 5]
    );
    let m1 = s
        .mailbox("a@example.org", "INBOX")
        .await
        .unwrap()
        .unwrap()
        .highest_modseq;
    s.expunge("a@example.org", inbox.id, &[2]).await.unwrap();
    let c = s
        .changes_since("a@example.org", inbox.id, m1)
        .await
        .unwrap();
    assert_eq!((c.expunged, c.changed), (vec![2], vec![]));
    let now = s
        .mailbox("a@example.org", "INBOX")
        .await
        .unwrap()
        .unwrap()
        .highest_modseq;
    assert_eq!(
        s.changes_since("a@example.org", inbox.id, now)
            .await
            .unwrap(),
        ChangesSince {
            complete: true,
            ..ChangesSince::default()
        }
    );
    assert!(matches!(
        s.changes_since("b@example.org", inbox.id, 0).await,
        Err(StoreError::NotFound(_))
    ));
}

/// Leases: one holder at a time (also under concurrency), renewable by their holder, free
/// again when dropped or expired.
async fn leases_are_exclusive_and_expire(h: Harness) {
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

/// The `\Recent` mark moves up only, and only when claimed.
async fn recent_mark_is_claimed_once(h: Harness) {
    let s = &h.store;
    assert_eq!(s.claim_recent(5, 10, false).await.unwrap(), 0);
    assert_eq!(s.claim_recent(5, 10, true).await.unwrap(), 0);
    assert_eq!(s.claim_recent(5, 12, true).await.unwrap(), 10);
    assert_eq!(s.claim_recent(5, 3, true).await.unwrap(), 12);
    assert_eq!(s.claim_recent(5, 0, false).await.unwrap(), 12);
}

/// Watchers get typed changes with their content: what a session needs to apply them
/// without reading the mailbox (appends with metadata, once per mailbox and write; flag
/// changes with flags and MODSEQ; expunges with UIDs and HIGHESTMODSEQ; mailbox and
/// subscription changes).
async fn watchers_get_typed_changes(h: Harness) {
    let s = &h.store;
    s.create_account("a@example.org", "").await.unwrap();
    let mut rx = s.watch("A@example.org");
    let mut next = || rx.try_recv().map(|c| (*c).clone()).ok();
    let inbox = inbox_id(s, "a@example.org").await;
    let r = s
        .ingest(Ingest {
            internal_date: 0,
            filed: vec![Filed {
                message: body("x"),
                placements: vec![
                    placement("a@example.org", "INBOX"),
                    placement("a@example.org", "New"),
                ],
            }],
            queue: None,
        })
        .await
        .unwrap();
    let new_id = r.placed[1].mailbox;
    assert_eq!(next(), Some(Change::Created { name: "New".into() }));
    let inbox_meta = s.message(inbox, 1).await.unwrap().unwrap();
    assert_eq!(
        next(),
        Some(Change::Appended {
            mailbox: inbox,
            messages: vec![inbox_meta]
        })
    );
    assert!(
        matches!(next(), Some(Change::Appended { mailbox, messages }) if mailbox == new_id && messages.len() == 1)
    );
    let (up, _) = s
        .update_flags(
            "a@example.org",
            inbox,
            &[1],
            FlagOp::Add,
            &["\\Seen".into()],
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        next(),
        Some(Change::Flags {
            mailbox: inbox,
            changes: vec![(1, vec!["\\Seen".to_string()], up[0].modseq)]
        })
    );
    s.expunge("a@example.org", inbox, &[1]).await.unwrap();
    let highest = s
        .mailbox("a@example.org", "INBOX")
        .await
        .unwrap()
        .unwrap()
        .highest_modseq;
    assert_eq!(
        next(),
        Some(Change::Expunged {
            mailbox: inbox,
            uids: vec![1],
            modseq: highest
        })
    );
    s.create_mailbox("a@example.org", "Box", None)
        .await
        .unwrap();
    assert_eq!(next(), Some(Change::Created { name: "Box".into() }));
    s.rename_mailbox("a@example.org", "Box", "Crate")
        .await
        .unwrap();
    assert!(
        matches!(next(), Some(Change::Renamed { from, to, .. }) if from == "Box" && to == "Crate")
    );
    s.set_subscribed("a@example.org", "Crate", true)
        .await
        .unwrap();
    assert_eq!(
        next(),
        Some(Change::Subscription {
            name: "Crate".into(),
            subscribed: true
        })
    );
    // Subscribing again changes nothing and says nothing.
    s.set_subscribed("a@example.org", "Crate", true)
        .await
        .unwrap();
    s.delete_mailbox("a@example.org", "New").await.unwrap();
    assert!(
        matches!(next(), Some(Change::Expunged { mailbox, uids, .. }) if mailbox == new_id && uids == vec![1])
    );
    assert!(
        matches!(next(), Some(Change::Deleted { mailbox, name }) if mailbox == new_id && name == "New")
    );
    assert_eq!(next(), None);
}

/// Under concurrent writers, each mailbox's appends reach a watcher in UID order, so a
/// session that applies them in order never misses one.
async fn appends_reach_watchers_in_uid_order(h: Harness) {
    let s = h.store.clone();
    s.create_account("a@example.org", "").await.unwrap();
    let mut rx = s.watch("a@example.org");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    let to = [placement("a@example.org", "INBOX")];
                    s.deliver(&body(&format!("{t}-{i}")), 0, &to)
                        .wait()
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut last = 0;
    let mut seen = 0;
    while let Ok(c) = rx.try_recv() {
        if let Change::Appended { messages, .. } = c.as_ref() {
            for m in messages {
                assert!(m.uid > last, "UID {} after {last}", m.uid);
                last = m.uid;
                seen += 1;
            }
        }
    }
    assert_eq!(seen, 100);
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod sled_backend {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)] async fn $test() { super::$test(super::sled()).await } )*
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
    queue_updates_and_removal,
    queue_claims_are_exclusive_and_leases_expire,
    recent_mark_is_claimed_once,
    leases_are_exclusive_and_expire,
    changes_since_lists_changes_and_expunges,
    watchers_get_typed_changes,
    appends_reach_watchers_in_uid_order,
);
