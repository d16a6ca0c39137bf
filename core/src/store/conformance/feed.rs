//! Conformance of the change feed: typed changes, and appends in UID order under concurrent
//! writers.

use super::*;

/// Watchers get typed changes with their content: what a session needs to apply them
/// without reading the mailbox (appends with metadata, once per mailbox and write; flag
/// changes with flags and MODSEQ; expunges with UIDs and HIGHESTMODSEQ; mailbox and
/// subscription changes).
pub(super) async fn watchers_get_typed_changes(h: Harness) {
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
pub(super) async fn appends_reach_watchers_in_uid_order(h: Harness) {
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
