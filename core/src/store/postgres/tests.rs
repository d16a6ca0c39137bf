//! Tests of what the PostgreSQL backend adds to the shared contract (`store::conformance`):
//! the schema's versioning and big bodies.

use super::*;

async fn fresh() -> PostgresStore {
    let url = testdb::database().await;
    PostgresStore::connect(&url, 4).await.expect("connect")
}

/// A store on a fresh database with its schema and the account a@example.org; the URL.
async fn with_account() -> (PostgresStore, String) {
    let url = testdb::database().await;
    let s = PostgresStore::connect(&url, 4).await.expect("connect");
    s.migrate().await.unwrap();
    s.create_account("a@example.org", "").await.unwrap();
    (s, url)
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
    let (s, _) = with_account().await;
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
    assert_eq!(
        count(&s, "SELECT count(*) FROM blobs").await,
        1,
        "one body for both copies"
    );
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

/// A write whose future is dropped mid-transaction (a session that went away while its
/// message waited for the mailbox's lock) leaves nothing: its connection is closed rather
/// than returned to the pool inside the transaction, the database rolls it back, and the
/// next write takes the UID it would have taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_write_leaves_nothing_and_no_open_transaction() {
    let (s, url) = with_account().await;
    let inbox = s.mailbox("a@example.org", "INBOX").await.unwrap().unwrap();
    let to = [Placement {
        user: "a@example.org".into(),
        mailbox: "INBOX".into(),
        flags: vec![],
    }];
    // Another connection holds the mailbox's row lock: the write waits inside its
    // transaction until it is cancelled.
    let mut holder = connect(&url).await;
    let lock = hold_row(&mut holder, inbox.id).await;
    let cancelled = tokio::time::timeout(
        Duration::from_millis(300),
        s.deliver(b"Subject: cancelled\r\n\r\n", 0, &to),
    )
    .await;
    assert!(cancelled.is_err(), "the write waited for the lock");
    lock.rollback().await.unwrap();
    let uids = s.deliver(b"Subject: kept\r\n\r\n", 0, &to).await.unwrap();
    assert_eq!(uids, vec![1]);
    let msgs = s.messages(inbox.id).await.unwrap();
    assert_eq!(msgs.iter().map(|m| m.uid).collect::<Vec<_>>(), vec![1]);
    let mut open = -1;
    for _ in 0..100 {
        open = count(
            &s,
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
        )
        .await;
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(open, 0, "no connection is left inside a transaction");
    assert_eq!(
        count(&s, "SELECT count(*) FROM blobs").await,
        1,
        "the cancelled write's body is gone with it"
    );
}

/// Messages for one mailbox that arrive while its lock is held are written together: one
/// transaction for many (fewer transactions than messages), each message with its own
/// body, UIDs 1..=n in one order, every caller answered. A batch that fails answers each of
/// its callers with the error and leaves nothing; the next batch works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_for_one_mailbox_are_written_in_batches() {
    let (s, url) = with_account().await;
    let inbox = s.mailbox("a@example.org", "INBOX").await.unwrap().unwrap();
    let one = |i: usize| Ingest {
        internal_date: i as i64,
        filed: vec![Filed {
            message: Arc::new(format!("Subject: {i}\r\n\r\nbody {i}\r\n").into_bytes()),
            placements: vec![Placement {
                user: "A@example.org".into(),
                mailbox: "inbox".into(),
                flags: if i.is_multiple_of(2) {
                    vec!["\\Seen".into()]
                } else {
                    vec![]
                },
            }],
        }],
        queue: None,
    };
    let mut holder = connect(&url).await;

    // A failing batch: every caller gets the error, nothing is written.
    let lock = hold_row(&mut holder, inbox.id).await;
    s.failpoints().arm("ingest-batch", 1);
    let first = tokio::spawn({
        let s = s.clone();
        async move { s.ingest(one(0)).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rest: Vec<_> = (1..20)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.ingest(one(i)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    lock.rollback().await.unwrap();
    let first = first.await.unwrap();
    assert!(first.is_err(), "the first batch failed: {first:?}");
    for r in rest {
        r.await.unwrap().expect("the next batch works");
    }
    assert_eq!(count(&s, "SELECT count(*) FROM messages").await, 19);
    assert_eq!(
        count(&s, "SELECT count(*) FROM blobs").await,
        19,
        "the failed body is gone"
    );

    // 200 at once behind a held lock.
    let lock = hold_row(&mut holder, inbox.id).await;
    let tasks: Vec<_> = (100..300)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { (i, s.ingest(one(i)).await.unwrap()) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    lock.rollback().await.unwrap();
    let mut uids = Vec::new();
    for t in tasks {
        let (i, receipt) = t.await.unwrap();
        let [placed] = &receipt.placed[..] else {
            panic!("one placement: {receipt:?}")
        };
        assert_eq!(
            (placed.user.as_str(), placed.mailbox),
            ("a@example.org", inbox.id)
        );
        let meta = s.message(inbox.id, placed.uid).await.unwrap().unwrap();
        assert_eq!(meta.internal_date, i as i64);
        assert_eq!(meta.flags.is_empty(), i % 2 == 1);
        assert_eq!(meta.modseq, placed.modseq);
        let body = s.blob(meta.blob).await.unwrap();
        assert_eq!(
            body,
            format!("Subject: {i}\r\n\r\nbody {i}\r\n").into_bytes()
        );
        uids.push(placed.uid);
    }
    uids.sort_unstable();
    assert_eq!(
        uids,
        (20..220).collect::<Vec<u32>>(),
        "UIDs 20..219, each once"
    );
    let transactions = count(
        &s,
        "SELECT count(DISTINCT xmin::text) FROM messages WHERE uid >= 20",
    )
    .await;
    assert!(
        transactions < 20,
        "{transactions} transactions for 200 messages"
    );
    let mb = s.mailbox("a@example.org", "INBOX").await.unwrap().unwrap();
    assert_eq!(mb.uidnext, 220);

    // The message that writes itself goes away (its session's future is dropped) while
    // others wait behind it: they are written all the same, it is not.
    let lock = hold_row(&mut holder, inbox.id).await;
    let leader = tokio::spawn({
        let s = s.clone();
        async move { s.ingest(one(1000)).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let behind: Vec<_> = (1001..1006)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.ingest(one(i)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    lock.rollback().await.unwrap();
    for b in behind {
        b.await
            .unwrap()
            .expect("written after the leader went away");
    }
    assert_eq!(
        count(&s, "SELECT count(*) FROM messages").await,
        19 + 200 + 5
    );
    assert_eq!(
        count(&s, "SELECT count(*) FROM blobs").await,
        19 + 200 + 5,
        "the cancelled body is gone"
    );
}

/// `sql`'s one number.
async fn count(s: &PostgresStore, sql: &str) -> i64 {
    let c = s.client().await.unwrap();
    c.query_one(sql, &[]).await.unwrap().get(0)
}

/// A connection of its own to the database at `url`.
async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// Hold the row lock of mailbox `id` until the transaction ends (a writer to it waits).
async fn hold_row(c: &mut tokio_postgres::Client, id: u64) -> tokio_postgres::Transaction<'_> {
    let tx = c.transaction().await.unwrap();
    tx.execute(
        "SELECT 1 FROM mailboxes WHERE id = $1 FOR UPDATE",
        &[&(id as i64)],
    )
    .await
    .unwrap();
    tx
}

/// A mailbox's metadata is read in the order rows are stored (binary COPY, for a mailbox
/// the cache keeps) and returned in UID order with each message's flags, also after updates
/// moved rows (a new row version is stored elsewhere) and for flags with several keywords.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_comes_back_in_uid_order_after_rows_moved() {
    let (s, _) = with_account().await;
    let inbox = s.mailbox("a@example.org", "INBOX").await.unwrap().unwrap();
    let to = [Placement {
        user: "a@example.org".into(),
        mailbox: "INBOX".into(),
        flags: vec![],
    }];
    for i in 0..300 {
        s.deliver(format!("Subject: {i}\r\n\r\n").as_bytes(), i, &to)
            .await
            .unwrap();
    }
    let flags = |i: u32| -> Vec<String> {
        match i % 3 {
            0 => vec![],
            1 => vec!["\\Seen".into()],
            _ => vec!["\\Seen".into(), "$Junk".into(), "Work".into()],
        }
    };
    let changes: Vec<(u32, Vec<String>)> = (1..=300).rev().map(|u| (u, flags(u))).collect();
    s.set_flags("a@example.org", inbox.id, &changes)
        .await
        .unwrap();
    let stored: Vec<i64> = s
        .client()
        .await
        .unwrap()
        .query("SELECT uid FROM messages", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!stored.is_sorted(), "rows moved: {stored:?}");
    let msgs = s.messages(inbox.id).await.unwrap();
    assert_eq!(
        msgs.iter().map(|m| m.uid).collect::<Vec<_>>(),
        (1..=300).collect::<Vec<u32>>()
    );
    for m in &msgs {
        assert_eq!(m.flags, flags(m.uid), "uid {}", m.uid);
        assert_eq!(m.internal_date, m.uid as i64 - 1);
        assert_eq!(s.message(inbox.id, m.uid).await.unwrap().as_ref(), Some(m));
    }
}
