//! Conformance of messages: ingest (all or nothing, UIDs in visibility order), flags,
//! COPY/EXPUNGE/move, changes since a MODSEQ and the `\Recent` mark.

use super::*;

/// Two local recipients and a remote one; a failure after the first placement leaves
/// nothing: no copy, no queue entry, no UID used; the retry writes each once.
pub(super) async fn ingest_is_all_or_nothing(h: Harness) {
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
pub(super) async fn single_and_empty_ingests(h: Harness) {
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
pub(super) async fn concurrent_ingest_keeps_uids_ascending_in_visibility_order(h: Harness) {
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
pub(super) async fn flag_updates_are_atomic_and_honour_unchangedsince(h: Harness) {
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
pub(super) async fn copy_expunge_and_move(h: Harness) {
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

/// "What changed since MODSEQ m" comes from the store: messages added or changed after m,
/// and exactly the UIDs expunged after m (QRESYNC).
pub(super) async fn changes_since_lists_changes_and_expunges(h: Harness) {
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

/// The `\Recent` mark moves up only, and only when claimed.
pub(super) async fn recent_mark_is_claimed_once(h: Harness) {
    let s = &h.store;
    assert_eq!(s.claim_recent(5, 10, false).await.unwrap(), 0);
    assert_eq!(s.claim_recent(5, 10, true).await.unwrap(), 0);
    assert_eq!(s.claim_recent(5, 12, true).await.unwrap(), 10);
    assert_eq!(s.claim_recent(5, 3, true).await.unwrap(), 12);
    assert_eq!(s.claim_recent(5, 0, false).await.unwrap(), 12);
}
