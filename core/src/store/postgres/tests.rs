//! Tests of what the PostgreSQL backend adds to the shared contract (`store::conformance`):
//! the schema's versioning and big bodies.

use super::*;

async fn fresh() -> PostgresStore {
    let url = testdb::database().await;
    PostgresStore::connect(&url, 4).await.expect("connect")
}

/// A database without the schema is refused with the command to run; `migrate` creates it,
/// is idempotent, and a newer schema is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_is_created_explicitly_and_versioned() {
    let s = fresh().await;
    assert_eq!(s.schema_version().await.unwrap(), None);
    let e = s.check_schema().await.unwrap_err().to_string();
    assert!(e.contains("corvus store migrate"), "{e}");
    assert_eq!(s.migrate().await.unwrap(), (0, SCHEMA_VERSION));
    assert_eq!(s.migrate().await.unwrap(), (SCHEMA_VERSION, SCHEMA_VERSION));
    s.check_schema().await.unwrap();
    let c = s.client().await.unwrap();
    c.execute("UPDATE schema_version SET version = version + 1", &[])
        .await
        .unwrap();
    let e = s.check_schema().await.unwrap_err().to_string();
    assert!(e.contains("newer") && e.contains("upgrade corvus"), "{e}");
    assert!(s.migrate().await.is_err());
}

/// A 25 MB message is stored once for two mailboxes and read back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_25_mb_message_is_stored_once() {
    let s = fresh().await;
    s.migrate().await.unwrap();
    s.create_account("a@example.org", "").await.unwrap();
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    body.extend((0..25 << 20).map(|i: u32| b'a' + (i % 26) as u8));
    let to = |m: &str| Placement {
        user: "a@example.org".into(),
        mailbox: m.into(),
        flags: vec![],
    };
    s.deliver(&body, 0, &[to("INBOX"), to("Archive")])
        .await
        .unwrap();
    let inbox = s.mailbox("a@example.org", "INBOX").await.unwrap().unwrap();
    let m = s.message(inbox.id, 1).await.unwrap().unwrap();
    assert_eq!(m.size, body.len() as u64);
    assert!(s.blob(m.blob).await.unwrap() == body);
    let c = s.client().await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM blobs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "one body for both copies");
}

/// Two nodes on one database: what node A writes reaches node B's watchers (new messages,
/// flags, expunges, a new mailbox), and node B's own delivery is never published before
/// node A's smaller UID that it has not yet read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_follows_what_another_writes() {
    let url = testdb::database().await;
    let a = PostgresStore::connect(&url, 4).await.expect("connect");
    a.migrate().await.unwrap();
    let b = PostgresStore::connect(&url, 4).await.expect("connect");
    a.follow_others();
    b.follow_others();
    a.create_account("u@example.org", "").await.unwrap();
    let mut rx = b.watch("u@example.org");
    let to = |m: &str| Placement {
        user: "u@example.org".into(),
        mailbox: m.into(),
        flags: vec![],
    };
    // Until B has read the account once, what it kept may be behind: Stale.
    let inbox = a.mailbox("u@example.org", "INBOX").await.unwrap().unwrap();
    // B follows u once it has read the account (first hint or poll): Stale first.
    a.deliver(b"Subject: 1\r\n\r\nx", 0, &[to("INBOX")])
        .await
        .unwrap();
    let mut stale = Vec::new();
    while !stale.contains(&inbox.id) {
        match next(&mut rx).await {
            Change::Stale { mailbox } => stale.push(mailbox),
            other => panic!("{other:?}"),
        }
    }
    assert!(b.follow.follows(inbox.id));
    while let Ok(c) = rx.try_recv() {
        assert!(matches!(*c, Change::Stale { .. }), "{c:?}");
    }
    // Now each of A's writes arrives typed (UID 1 too, when B read the account before it).
    a.deliver(b"Subject: 2\r\n\r\nx", 0, &[to("INBOX")])
        .await
        .unwrap();
    assert!(matches!(appended_until(&mut rx, 2).await[..], [1, 2] | [2]));
    a.update_flags(
        "u@example.org",
        inbox.id,
        &[1],
        FlagOp::Add,
        &["\\Seen".into()],
        None,
    )
    .await
    .unwrap();
    match next(&mut rx).await {
        Change::Flags { changes, .. } => assert_eq!(changes[0].0, 1),
        other => panic!("{other:?}"),
    }
    a.expunge("u@example.org", inbox.id, &[2]).await.unwrap();
    match next(&mut rx).await {
        Change::Expunged { uids, .. } => assert_eq!(uids, [2]),
        other => panic!("{other:?}"),
    }
    a.create_mailbox("u@example.org", "Lists", None)
        .await
        .unwrap();
    assert_eq!(
        next(&mut rx).await,
        Change::Created {
            name: "Lists".into()
        }
    );
    // A delivers UID 3 and B, at once, UID 4: B's watchers see 3 before 4 whatever the
    // hint's timing.
    a.deliver(b"Subject: 3\r\n\r\nx", 0, &[to("INBOX")])
        .await
        .unwrap();
    b.deliver(b"Subject: 4\r\n\r\nx", 0, &[to("INBOX")])
        .await
        .unwrap();
    assert_eq!(appended_until(&mut rx, 4).await, [3, 4]);
}

/// The UIDs of the appends on `rx`, each once, in the order first published, up to `last`.
async fn appended_until(rx: &mut Changes, last: u32) -> Vec<u32> {
    let mut seen = Vec::new();
    while seen.last() != Some(&last) {
        if let Change::Appended { messages, .. } = next(rx).await {
            for m in messages {
                if !seen.contains(&m.uid) {
                    seen.push(m.uid);
                }
            }
        }
    }
    seen
}

/// The next change on `rx`, within 10 s.
async fn next(rx: &mut Changes) -> Change {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a change within 10 s")
        .map(|c| (*c).clone())
        .expect("open feed")
}
