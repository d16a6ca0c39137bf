//! Tests of the sled backend beyond the shared contract (`conformance`): its files, locks,
//! chunks, crash marks and concurrency.

use super::blobs::CHUNK;
use super::*;
use crate::blocking::Wait;

/// A queue entry from a@x.example, not due for a long time.
fn queued(id: &str, rcpts: Vec<QueueRcpt>) -> QueueEntry {
    QueueEntry {
        id: id.into(),
        mail_from: "a@x.example".into(),
        rcpts,
        ret: None,
        envid: None,
        created: 1,
        next_attempt: 9_999_999_999,
        attempts: 0,
        last_error: None,
        blob: 0,
        smtputf8: false,
        decisions: Vec::new(),
        warned: false,
        requiretls: false,
        lease: None,
    }
}

#[tokio::test]
async fn a_deleted_queue_entry_is_not_brought_back_by_a_stale_update() {
    let d = tempfile::tempdir().unwrap();
    let s = SledStore::open(d.path()).unwrap();
    let entry = queued("Q1", Vec::new());
    s.enqueue(entry, b"message").await.unwrap();
    // A delivery attempt read the entry; meanwhile the admin deletes it.
    let mut seen = s.queue_entry("Q1").await.unwrap().unwrap();
    s.queue_remove("Q1").await.unwrap();
    seen.attempts = 1;
    seen.last_error = Some("connection refused".into());
    assert!(matches!(
        s.queue_update(&seen).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(s.queue().await.unwrap().is_empty());
    assert!(s.queue_entry("Q1").await.unwrap().is_none());
    // An entry that is still there is updated.
    let mut e = seen.clone();
    e.id = "Q2".into();
    s.enqueue(e, b"other").await.unwrap();
    let mut e = s.queue_entry("Q2").await.unwrap().unwrap();
    e.attempts = 3;
    s.queue_update(&e).await.unwrap();
    assert_eq!(s.queue_entry("Q2").await.unwrap().unwrap().attempts, 3);
}

#[tokio::test]
async fn a_password_change_does_not_recreate_a_deleted_account() {
    let d = tempfile::tempdir().unwrap();
    let s = SledStore::open(d.path()).unwrap();
    s.create_account("bob@example.org", "old-hash")
        .await
        .unwrap();
    s.set_password("Bob@Example.org", "new-hash").await.unwrap();
    assert_eq!(
        s.account("bob@example.org")
            .await
            .unwrap()
            .unwrap()
            .password_hash,
        "new-hash"
    );
    s.delete_account("bob@example.org").await.unwrap();
    assert!(matches!(
        s.set_password("bob@example.org", "newer").await,
        Err(StoreError::NotFound(m)) if m == "account bob@example.org"
    ));
    assert!(s.account("bob@example.org").await.unwrap().is_none());
}

#[tokio::test]
async fn flush_changes_only_the_due_time_of_the_stored_entry() {
    let d = tempfile::tempdir().unwrap();
    let s = SledStore::open(d.path()).unwrap();
    let rcpt = |a: &str| QueueRcpt {
        address: a.into(),
        notify: Vec::new(),
        orcpt: None,
    };
    let entry = queued("Q1", vec![rcpt("b@y.example"), rcpt("c@z.example")]);
    s.enqueue(entry, b"message").await.unwrap();
    // An attempt delivered to b@ and recorded that; a flush after it keeps that.
    let mut e = s.queue_entry("Q1").await.unwrap().unwrap();
    e.rcpts.remove(0);
    e.attempts = 1;
    s.queue_update(&e).await.unwrap();
    s.queue_due_now("Q1").await.unwrap();
    let now = s.queue_entry("Q1").await.unwrap().unwrap();
    assert_eq!(now.next_attempt, 0);
    assert_eq!(now.attempts, 1);
    assert_eq!(
        now.rcpts
            .iter()
            .map(|r| r.address.as_str())
            .collect::<Vec<_>>(),
        vec!["c@z.example"]
    );
    s.queue_remove("Q1").await.unwrap();
    assert!(matches!(
        s.queue_due_now("Q1").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(s.queue().await.unwrap().is_empty());
}

#[tokio::test]
async fn deliver_assigns_ascending_uids_and_survives_reopen() {
    let d = tempfile::tempdir().unwrap();
    {
        let s = SledStore::open(d.path()).unwrap();
        s.create_account("Alice@Example.org", "x").await.unwrap();
        assert!(matches!(
            s.create_account("alice@example.org", "x").await,
            Err(StoreError::Exists(_))
        ));
        let p = Placement {
            user: "alice@example.org".into(),
            mailbox: "INBOX".into(),
            flags: vec![],
        };
        assert_eq!(
            s.deliver(b"one", 1, std::slice::from_ref(&p))
                .await
                .unwrap(),
            vec![1]
        );
        assert_eq!(s.deliver(b"two", 2, &[p]).await.unwrap(), vec![2]);
        s.db.flush().unwrap();
    }
    let s = SledStore::open(d.path()).unwrap();
    let inbox = s
        .mailbox("alice@example.org", "inbox")
        .await
        .unwrap()
        .unwrap();
    let msgs = s.messages(inbox.id).await.unwrap();
    assert_eq!(msgs.iter().map(|m| m.uid).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(s.blob(msgs[1].blob).await.unwrap(), b"two");
    assert_eq!(
        s.mailboxes("alice@example.org").await.unwrap().len(),
        DEFAULT_MAILBOXES.len()
    );
}

#[tokio::test]
async fn concurrent_deliveries_flag_changes_and_copies_keep_uids_and_modseqs() {
    let d = tempfile::tempdir().unwrap();
    let s = std::sync::Arc::new(SledStore::open(d.path()).unwrap());
    s.create_account("a@x.org", "x").await.unwrap();
    let p = Placement {
        user: "a@x.org".into(),
        mailbox: "INBOX".into(),
        flags: vec![],
    };
    s.deliver(b"first", 1, std::slice::from_ref(&p))
        .await
        .unwrap();
    let inbox = s.mailbox("a@x.org", "INBOX").await.unwrap().unwrap();
    let mut threads: Vec<_> = (0..4)
        .map(|t| {
            let (s, p) = (s.clone(), p.clone());
            std::thread::spawn(move || {
                let mut last = 0;
                for i in 0..50 {
                    let body = format!("t{t} m{i}");
                    let uid = s
                        .deliver(body.as_bytes(), 1, std::slice::from_ref(&p))
                        .wait()
                        .unwrap()[0];
                    assert!(uid > last, "UIDs ascend per deliverer");
                    last = uid;
                }
            })
        })
        .collect();
    // Flag changes (transactions bumping MODSEQ on the same record) and copies (another
    // UID allocator) run at the same time.
    threads.push({
        let s = s.clone();
        std::thread::spawn(move || {
            for i in 0..50 {
                s.set_flags("a@x.org", inbox.id, &[(1, vec![format!("k{i}")])])
                    .wait()
                    .unwrap();
                s.copy("a@x.org", inbox.id, &[1], "INBOX").wait().unwrap();
            }
        })
    });
    for t in threads {
        t.join().unwrap();
    }
    let msgs = s.messages(inbox.id).await.unwrap();
    let uids: Vec<u32> = msgs.iter().map(|m| m.uid).collect();
    assert_eq!(uids, (1..=251).collect::<Vec<u32>>());
    let mb = s.mailbox("a@x.org", "INBOX").await.unwrap().unwrap();
    assert_eq!(mb.uidnext, 252);
    let mut modseqs: Vec<u64> = msgs.iter().map(|m| m.modseq).collect();
    assert!(modseqs.iter().all(|&m| m <= mb.highest_modseq));
    modseqs.sort();
    modseqs.dedup();
    assert_eq!(modseqs.len(), msgs.len(), "every MODSEQ is distinct");
    // The cache and the tree agree.
    let cached = s.messages(inbox.id).await.unwrap();
    assert_eq!(cached.len(), msgs.len());
}

#[test]
fn second_open_is_locked_not_hung() {
    let d = tempfile::tempdir().unwrap();
    let _a = SledStore::open(d.path()).unwrap();
    // sled locks per process with flock; a second open in the same process also fails.
    match SledStore::open(d.path()) {
        Err(StoreError::Locked(_)) => {}
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened twice"),
    }
}

#[test]
fn newer_format_is_refused() {
    let d = tempfile::tempdir().unwrap();
    {
        let db = ::sled::open(d.path()).unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert("format", &99u32.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    // sled's background threads may hold the file lock for a moment after the drop.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let r = loop {
        match SledStore::open(d.path()) {
            Err(StoreError::Locked(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            r => break r,
        }
    };
    assert!(
        matches!(r, Err(StoreError::TooNew { found: 99, .. })),
        "{:?}",
        r.err()
    );
}

#[tokio::test]
async fn update_flags_is_atomic_and_honours_unchangedsince() {
    let d = tempfile::tempdir().unwrap();
    let s = std::sync::Arc::new(SledStore::open(d.path()).unwrap());
    s.create_account("a@x.org", "x").await.unwrap();
    let p = Placement {
        user: "a@x.org".into(),
        mailbox: "INBOX".into(),
        flags: vec!["\\Seen".into()],
    };
    s.deliver(b"m", 1, &[p]).await.unwrap();
    let mb = s.mailbox("a@x.org", "INBOX").await.unwrap().unwrap();
    // Several threads add distinct keywords at once: none may be lost.
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    s.update_flags(
                        "a@x.org",
                        mb.id,
                        &[1],
                        FlagOp::Add,
                        &[format!("k{t}_{i}")],
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
    let m = &s.messages(mb.id).await.unwrap()[0];
    assert_eq!(m.flags.len(), 101, "{:?}", m.flags);
    // An update that changes nothing keeps MODSEQ; a stale UNCHANGEDSINCE is refused.
    let (u, modified) = s
        .update_flags(
            "a@x.org",
            mb.id,
            &[1, 9],
            FlagOp::Add,
            &["\\seen".into()],
            None,
        )
        .await
        .unwrap();
    assert!(modified.is_empty());
    assert_eq!(u.len(), 1);
    assert!(!u[0].changed && u[0].modseq == m.modseq);
    let (u, modified) = s
        .update_flags(
            "a@x.org",
            mb.id,
            &[1],
            FlagOp::Replace,
            &[],
            Some(m.modseq - 1),
        )
        .await
        .unwrap();
    assert!(u.is_empty() && modified == vec![1]);
    let (u, _) = s
        .update_flags(
            "a@x.org",
            mb.id,
            &[1],
            FlagOp::Remove,
            &["k0_0".into()],
            Some(m.modseq),
        )
        .await
        .unwrap();
    assert!(u[0].changed && u[0].modseq > m.modseq && u[0].flags.len() == 100);
    let hm = s
        .mailbox("a@x.org", "INBOX")
        .await
        .unwrap()
        .unwrap()
        .highest_modseq;
    assert_eq!(hm, u[0].modseq);
}

#[tokio::test]
async fn kv_expires() {
    let d = tempfile::tempdir().unwrap();
    let s = SledStore::open(d.path()).unwrap();
    s.kv_set("grey", "k", b"v", None).await.unwrap();
    assert_eq!(s.kv_get("grey", "k").await.unwrap().unwrap(), b"v");
    assert!(s.kv_get("other", "k").await.unwrap().is_none());
    s.kv_set("grey", "gone", b"v", Some(0)).await.unwrap();
    assert!(s.kv_get("grey", "gone").await.unwrap().is_none());
}

#[tokio::test]
async fn bodies_are_chunked_freed_with_their_last_reference_and_old_whole_bodies_still_read() {
    let d = tempfile::tempdir().unwrap();
    let s = SledStore::open(d.path()).unwrap();
    s.create_account("a@x.org", "x").await.unwrap();
    let body: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 251) as u8).collect();
    let to = |mailbox: &str| Placement {
        user: "a@x.org".into(),
        mailbox: mailbox.into(),
        flags: vec![],
    };
    s.deliver(&body, 0, &[to("INBOX"), to("Archive")])
        .await
        .unwrap();
    let inbox = s.mailbox("a@x.org", "INBOX").await.unwrap().unwrap();
    let meta = s.messages(inbox.id).await.unwrap()[0].clone();
    assert_eq!(s.blob(meta.blob).await.unwrap(), body);
    assert_eq!(
        s.blobs.chunks.scan_prefix(meta.blob.to_be_bytes()).count(),
        4
    );
    // The empty message is one empty chunk, not a missing blob.
    s.deliver(b"", 0, &[to("Drafts")]).await.unwrap();
    let drafts = s.mailbox("a@x.org", "Drafts").await.unwrap().unwrap();
    let empty = s.messages(drafts.id).await.unwrap()[0].blob;
    assert_eq!(s.blob(empty).await.unwrap(), b"");
    // One expunge leaves the other placement's body; the second frees every chunk.
    s.expunge("a@x.org", inbox.id, &[meta.uid]).await.unwrap();
    assert_eq!(s.blob(meta.blob).await.unwrap(), body);
    s.delete_mailbox("a@x.org", "Archive").await.unwrap();
    assert!(s.blob(meta.blob).await.is_err());
    assert_eq!(
        s.blobs.chunks.scan_prefix(meta.blob.to_be_bytes()).count(),
        0
    );
    // A body written whole by an earlier version is read and released as before.
    s.blobs
        .whole
        .insert(77u64.to_be_bytes(), &b"old"[..])
        .unwrap();
    assert_eq!(s.blob(77).await.unwrap(), b"old");
    s.blobs.remove(77).unwrap();
    assert!(s.blob(77).await.is_err());
}

#[tokio::test]
async fn subscriptions_are_independent_of_mailboxes() {
    let d = tempfile::tempdir().unwrap();
    let s = SledStore::open(d.path()).unwrap();
    s.create_account("a@x.org", "x").await.unwrap();
    let mut subs = s.subscriptions("a@x.org").await.unwrap();
    subs.sort();
    assert_eq!(
        subs,
        ["Archive", "Drafts", "INBOX", "Junk", "Sent", "Trash"]
    );
    // CREATE does not subscribe; DELETE does not unsubscribe; a name needs no mailbox.
    s.create_mailbox("a@x.org", "Lists", None).await.unwrap();
    s.create_mailbox("a@x.org", "Lists/Rust", None)
        .await
        .unwrap();
    assert!(
        !s.subscriptions("a@x.org")
            .await
            .unwrap()
            .contains(&"Lists".to_string())
    );
    s.set_subscribed("a@x.org", "Lists/Rust", true)
        .await
        .unwrap();
    s.set_subscribed("a@x.org", "Never/Created", true)
        .await
        .unwrap();
    s.delete_mailbox("a@x.org", "Lists/Rust").await.unwrap();
    let subs = s.subscriptions("a@x.org").await.unwrap();
    assert!(
        subs.contains(&"Lists/Rust".to_string()) && subs.contains(&"Never/Created".to_string())
    );
    // RENAME takes the subscription of a mailbox with it.
    s.set_subscribed("a@x.org", "Lists", true).await.unwrap();
    s.rename_mailbox("a@x.org", "Lists", "Groups")
        .await
        .unwrap();
    let subs = s.subscriptions("a@x.org").await.unwrap();
    assert!(subs.contains(&"Groups".to_string()) && !subs.contains(&"Lists".to_string()));
    s.set_subscribed("a@x.org", "Never/Created", false)
        .await
        .unwrap();
    assert!(
        !s.subscriptions("a@x.org")
            .await
            .unwrap()
            .contains(&"Never/Created".to_string())
    );
    // Deleting the account takes its subscriptions.
    s.delete_account("a@x.org").await.unwrap();
    assert!(s.subscriptions("a@x.org").await.unwrap().is_empty());
}

#[tokio::test]
async fn an_empty_expunge_leaves_highestmodseq_alone() {
    let d = tempfile::tempdir().unwrap();
    let s = SledStore::open(d.path()).unwrap();
    s.create_account("a@x.org", "x").await.unwrap();
    let p = Placement {
        user: "a@x.org".into(),
        mailbox: "INBOX".into(),
        flags: vec![],
    };
    s.deliver(b"m", 1, &[p]).await.unwrap();
    let before = s.mailbox("a@x.org", "INBOX").await.unwrap().unwrap();
    assert!(
        s.expunge("a@x.org", before.id, &[])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.expunge("a@x.org", before.id, &[7])
            .await
            .unwrap()
            .is_empty()
    );
    let after = s.mailbox("a@x.org", "INBOX").await.unwrap().unwrap();
    assert_eq!(after.highest_modseq, before.highest_modseq);
    assert_eq!(
        s.expunge("a@x.org", before.id, &[1]).await.unwrap(),
        vec![1]
    );
    let gone = s.mailbox("a@x.org", "INBOX").await.unwrap().unwrap();
    assert!(gone.highest_modseq > before.highest_modseq);
}

#[tokio::test]
async fn kv_incr_counts_and_expires() {
    let d = tempfile::tempdir().unwrap();
    let s = SledStore::open(d.path()).unwrap();
    assert_eq!(s.kv_incr("rate", "a", 1, Some(60)).await.unwrap(), 1);
    assert_eq!(s.kv_incr("rate", "a", 2, Some(60)).await.unwrap(), 3);
    assert_eq!(s.kv_get("rate", "a").await.unwrap().unwrap(), b"3");
    assert_eq!(s.kv_incr("other", "a", 1, None).await.unwrap(), 1);
    // An expired counter starts again.
    s.kv_set("rate", "old", b"41", Some(0)).await.unwrap();
    assert_eq!(s.kv_incr("rate", "old", 1, None).await.unwrap(), 1);
    // A non-numeric value counts from 0.
    s.kv_set("rate", "text", b"abc", None).await.unwrap();
    assert_eq!(s.kv_incr("rate", "text", 5, None).await.unwrap(), 5);
    // Concurrent increments are not lost.
    let s = std::sync::Arc::new(s);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || {
                for _ in 0..250 {
                    s.kv_incr("rate", "c", 1, Some(60)).wait().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(s.kv_incr("rate", "c", 0, None).await.unwrap(), 1000);
}
