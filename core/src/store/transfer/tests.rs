//! `corvus store copy` from sled into a throwaway PostgreSQL (`postgres::testdb`): everything
//! arrives with its UIDs and MODSEQs, a second run duplicates nothing, a run after the
//! source changed brings the target up to date, and targets that cannot be merged are
//! refused before anything is written.

use super::*;
use crate::store::postgres::testdb;
use std::sync::Arc;

const ALICE: &str = "alice@example.org";
const BOB: &str = "bob@example.org";
const CAROL: &str = "carol@example.org";

fn to(user: &str, mailbox: &str, flags: &[&str]) -> Placement {
    Placement {
        user: user.into(),
        mailbox: mailbox.into(),
        flags: flags.iter().map(|f| f.to_string()).collect(),
    }
}

fn queued() -> QueueEntry {
    QueueEntry {
        id: "Q1".into(),
        mail_from: "alice@example.org".into(),
        rcpts: vec![QueueRcpt {
            address: "dave@remote.example".into(),
            notify: vec!["FAILURE".into()],
            orcpt: None,
        }],
        ret: Some("HDRS".into()),
        envid: Some("env-1".into()),
        created: 1_700_000_000,
        next_attempt: 1_700_000_600,
        attempts: 2,
        last_error: Some("451 try later".into()),
        blob: 0,
        smtputf8: false,
        decisions: vec!["on_rcpt: accept".into()],
        warned: false,
        requiretls: false,
        lease: None,
    }
}

/// A sled store with three accounts, shared and single bodies, flags and keywords, an
/// expunge, a COPY, subscriptions, a `\Recent` mark, a queue entry, kv entries (one
/// expired) and a DKIM key.
async fn filled(dir: &std::path::Path) -> Arc<SledStore> {
    let s = Arc::new(SledStore::open(dir).unwrap());
    let store: Store = s.clone();
    for (a, hash) in [(ALICE, "$argon2id$a"), (BOB, "$argon2id$b"), (CAROL, "")] {
        s.create_account(a, hash).await.unwrap();
    }
    s.add_domain("example.net").await.unwrap();
    s.set_alias("team@example.org", &[ALICE.into(), BOB.into()])
        .await
        .unwrap();
    for i in 1..=5u32 {
        let body = format!("Subject: m{i}\r\n\r\nbody {i}\r\n");
        s.deliver(
            body.as_bytes(),
            1_700_000_000 + i as i64,
            &[to(ALICE, "INBOX", &[])],
        )
        .await
        .unwrap();
    }
    // One body for two accounts and a folder made by file_into.
    s.deliver(
        b"Subject: to both\r\n\r\nshared\r\n",
        1_700_000_100,
        &[to(ALICE, "INBOX", &["\\Seen"]), to(BOB, "Lists/rust", &[])],
    )
    .await
    .unwrap();
    let inbox = s.mailbox(ALICE, "INBOX").await.unwrap().unwrap();
    s.update_flags(
        ALICE,
        inbox.id,
        &[1, 2],
        FlagOp::Add,
        &["\\Flagged".into(), "$Work".into()],
        None,
    )
    .await
    .unwrap();
    s.expunge(ALICE, inbox.id, &[3]).await.unwrap();
    s.copy(ALICE, inbox.id, &[1], "Archive").await.unwrap();
    s.claim_recent(inbox.id, 4, true).await.unwrap();
    s.set_subscribed(ALICE, "Archive", false).await.unwrap();
    s.set_subscribed(CAROL, "Shared/news", true).await.unwrap();
    s.enqueue(queued(), b"Subject: out\r\n\r\nqueued\r\n")
        .await
        .unwrap();
    s.kv_set("rhai:greylist", "1.2.3.4", b"seen", Some(3600))
        .await
        .unwrap();
    s.kv_set("wasm:counter", "n", b"42", None).await.unwrap();
    s.kv_set("rhai:greylist", "gone", b"x", Some(0))
        .await
        .unwrap();
    crate::dkim::generate(&store, "example.org", "corvus", "ed25519")
        .await
        .unwrap();
    s
}

async fn postgres() -> Arc<PostgresStore> {
    let url = testdb::database().await;
    let s = PostgresStore::connect(&url, 4).await.unwrap();
    s.migrate().await.unwrap();
    Arc::new(s)
}

fn quiet() -> impl FnMut(&str) + Send {
    |_: &str| {}
}

/// The IMAP-visible state of an account: per mailbox (name, UIDVALIDITY, UIDNEXT,
/// HIGHESTMODSEQ, special use) and per message (UID, flags as a set, date, MODSEQ, body).
async fn state(s: &dyn Export, user: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut boxes = s.mailboxes(user).await.unwrap();
    boxes.sort_by(|a, b| a.name.cmp(&b.name));
    for mb in boxes {
        out.push(format!(
            "{} {} {} {} {:?}",
            mb.name, mb.uidvalidity, mb.uidnext, mb.highest_modseq, mb.special_use
        ));
        for m in s.messages(mb.id).await.unwrap() {
            let body = s.blob(m.blob).await.unwrap();
            out.push(format!(
                "  {} {:?} {} {} {}",
                m.uid,
                flag_set(&m.flags),
                m.internal_date,
                m.modseq,
                String::from_utf8_lossy(&body)
            ));
        }
        let (gone, _) = s.expunged_since(user, mb.id, 0).await.unwrap();
        out.push(format!("  expunged {gone:?}"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_store_is_copied_whole_and_a_second_run_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sled = filled(dir.path()).await;
    let pg = postgres().await;
    let mut lines = Vec::new();
    let mut progress = |l: &str| lines.push(l.to_string());
    let copied = copy(&*sled, &*pg, &mut progress).await.unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l == "alice@example.org: INBOX 5/5 messages"),
        "{lines:?}"
    );
    assert_eq!(copied.accounts, 3);
    assert_eq!(
        copied.messages, 7,
        "INBOX 6 - 1 expunged, Lists/rust 1, Archive 1"
    );
    assert_eq!(copied.messages_present, 0);
    assert_eq!(copied.expunged, 1);
    assert_eq!(copied.queue, 1);
    assert_eq!(copied.kv_expired, 1);
    assert_eq!(copied.kv.get("corvus.dkim"), Some(&1));
    let verified = verify(&*sled, &*pg, &mut quiet()).await.unwrap();
    assert!(verified.ok(), "{verified}");

    // What clients see is the same.
    for user in [ALICE, BOB, CAROL] {
        assert_eq!(state(&*sled, user).await, state(&*pg, user).await, "{user}");
    }
    let a = pg.account(ALICE).await.unwrap().unwrap();
    assert_eq!(a.password_hash, "$argon2id$a");
    assert_eq!(pg.domains().await.unwrap(), vec!["example.net".to_string()]);
    assert_eq!(
        pg.alias("team@example.org").await.unwrap(),
        Some(vec![ALICE.to_string(), BOB.to_string()])
    );
    let mut subs = pg.subscriptions(ALICE).await.unwrap();
    subs.sort();
    let mut want = sled.subscriptions(ALICE).await.unwrap();
    want.sort();
    assert_eq!(subs, want);
    assert!(!subs.contains(&"Archive".to_string()));
    assert_eq!(
        pg.subscriptions(CAROL).await.unwrap(),
        sled.subscriptions(CAROL).await.unwrap()
    );
    let inbox = pg.mailbox(ALICE, "INBOX").await.unwrap().unwrap();
    assert_eq!(pg.claim_recent(inbox.id, 0, false).await.unwrap(), 4);
    let (gone, complete) = pg.expunged_since(ALICE, inbox.id, 0).await.unwrap();
    assert_eq!((gone, complete), (vec![3], true));
    // The body delivered to alice and bob is stored once; so is the one COPY shared.
    let shared = pg.message(inbox.id, 6).await.unwrap().unwrap();
    let lists = pg.mailbox(BOB, "Lists/rust").await.unwrap().unwrap();
    assert_eq!(
        pg.message(lists.id, 1).await.unwrap().unwrap().blob,
        shared.blob
    );
    assert_eq!(pg.blob_refs(shared.blob).await.unwrap(), 2);
    let first = pg.message(inbox.id, 1).await.unwrap().unwrap();
    let archive = pg.mailbox(ALICE, "Archive").await.unwrap().unwrap();
    assert_eq!(
        pg.message(archive.id, 1).await.unwrap().unwrap().blob,
        first.blob
    );
    // Queue, kv and the DKIM key.
    let q = pg.queue_entry("Q1").await.unwrap().unwrap();
    assert_eq!(
        (q.attempts, q.next_attempt, q.envid.as_deref()),
        (2, 1_700_000_600, Some("env-1"))
    );
    assert_eq!(
        pg.blob(q.blob).await.unwrap(),
        b"Subject: out\r\n\r\nqueued\r\n"
    );
    assert_eq!(
        pg.kv_get("wasm:counter", "n").await.unwrap(),
        Some(b"42".to_vec())
    );
    assert_eq!(pg.kv_get("rhai:greylist", "gone").await.unwrap(), None);
    let (sled_store, pg_store): (Store, Store) = (sled.clone(), pg.clone());
    assert_eq!(
        crate::dkim::key(&pg_store, "example.org")
            .await
            .unwrap()
            .map(|k| k.private_key),
        crate::dkim::key(&sled_store, "example.org")
            .await
            .unwrap()
            .map(|k| k.private_key)
    );
    // A mailbox made in the target later gets a UIDVALIDITY no copied mailbox had.
    let fresh = pg.create_mailbox(ALICE, "New", None).await.unwrap();
    assert!(fresh.uidvalidity > sled.uidvalidity_counter().await.unwrap() as u32);
    pg.delete_mailbox(ALICE, "New").await.unwrap();

    // Again: nothing is written twice.
    let again = copy(&*sled, &*pg, &mut quiet()).await.unwrap();
    assert_eq!((again.messages, again.messages_present), (0, 7));
    assert_eq!(
        (again.mailboxes, again.queue, again.queue_present),
        (0, 0, 1)
    );
    assert_eq!(again.messages_updated + again.messages_removed, 0);
    assert!(verify(&*sled, &*pg, &mut quiet()).await.unwrap().ok());
    assert_eq!(pg.messages(inbox.id).await.unwrap().len(), 5);
    assert_eq!(pg.queue().await.unwrap().len(), 1);
}

/// The source changed after a first copy (the sled server ran again): the next run
/// brings the target up to it: new mail, changed flags, an expunge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_run_takes_what_changed_in_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let sled = filled(dir.path()).await;
    let pg = postgres().await;
    copy(&*sled, &*pg, &mut quiet()).await.unwrap();
    let inbox = sled.mailbox(ALICE, "INBOX").await.unwrap().unwrap();
    sled.deliver(
        b"Subject: later\r\n\r\nnew\r\n",
        1_700_000_900,
        &[to(ALICE, "INBOX", &[])],
    )
    .await
    .unwrap();
    sled.update_flags(
        ALICE,
        inbox.id,
        &[2],
        FlagOp::Add,
        &["\\Answered".into()],
        None,
    )
    .await
    .unwrap();
    sled.expunge(ALICE, inbox.id, &[4]).await.unwrap();
    let again = copy(&*sled, &*pg, &mut quiet()).await.unwrap();
    assert_eq!(
        (
            again.messages,
            again.messages_updated,
            again.messages_removed
        ),
        (1, 1, 1)
    );
    assert!(verify(&*sled, &*pg, &mut quiet()).await.unwrap().ok());
    assert_eq!(state(&*sled, ALICE).await, state(&*pg, ALICE).await);
    // New mail in the target gets the next UID.
    let uids = pg
        .deliver(b"Subject: on pg\r\n\r\n", 0, &[to(ALICE, "INBOX", &[])])
        .await
        .unwrap();
    assert_eq!(uids, vec![8]);
}

/// A mailbox of the same name with another UIDVALIDITY (the account was made in the
/// database first) is refused in one line, before anything is written; so is a mailbox a
/// server changed in the target after the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_cannot_be_merged_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sled = filled(dir.path()).await;
    let pg = postgres().await;
    // Both backends derive UIDVALIDITY from the clock: made in the same second, alice's
    // mailboxes would get the source's values by chance.
    pg.import_uidvalidity_counter(4_000_000_000).await.unwrap();
    pg.create_account(ALICE, "other").await.unwrap();
    let e = copy(&*sled, &*pg, &mut quiet())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("alice@example.org") && e.contains("UIDVALIDITY") && !e.contains('\n'),
        "{e}"
    );
    assert_eq!(pg.accounts().await.unwrap().len(), 1, "nothing was written");
    assert!(pg.account(BOB).await.unwrap().is_none());

    let pg = postgres().await;
    copy(&*sled, &*pg, &mut quiet()).await.unwrap();
    pg.deliver(b"Subject: on pg\r\n\r\n", 0, &[to(BOB, "INBOX", &[])])
        .await
        .unwrap();
    let e = copy(&*sled, &*pg, &mut quiet())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bob@example.org") && e.contains("changed in the target"),
        "{e}"
    );
}

/// A message of 25 MB is copied and verified like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_25_mb_message_is_copied() {
    let dir = tempfile::tempdir().unwrap();
    let sled = SledStore::open(dir.path()).unwrap();
    sled.create_account(ALICE, "").await.unwrap();
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    body.extend((0..25u32 << 20).map(|i| b'a' + (i % 26) as u8));
    sled.deliver(
        &body,
        0,
        &[to(ALICE, "INBOX", &[]), to(ALICE, "Archive", &[])],
    )
    .await
    .unwrap();
    sled.deliver(b"Subject: small\r\n\r\n", 0, &[to(ALICE, "INBOX", &[])])
        .await
        .unwrap();
    let pg = postgres().await;
    let copied = copy(&sled, &*pg, &mut quiet()).await.unwrap();
    assert_eq!(copied.messages, 3);
    assert!(
        copied.bytes < 2 * body.len() as u64,
        "the big body is written once"
    );
    assert!(verify(&sled, &*pg, &mut quiet()).await.unwrap().ok());
    let inbox = pg.mailbox(ALICE, "INBOX").await.unwrap().unwrap();
    let m = pg.message(inbox.id, 1).await.unwrap().unwrap();
    assert!(pg.blob(m.blob).await.unwrap() == body);
}

/// The CLI's side: a store a server holds open is refused naming that, and a path without
/// a store is refused without making one.
#[test]
fn a_locked_or_missing_sled_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _running = SledStore::open(&data.join("store")).unwrap();
    let from = format!("sled:{}", data.display());
    let e = crate::server::copy_store(&from, "host=/nonexistent dbname=x", &mut |_: &str| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("corvus serve") && e.contains("stop"), "{e}");
    let missing = dir.path().join("nothing");
    let e = crate::server::copy_store(
        &format!("sled:{}", missing.display()),
        "host=/nonexistent dbname=x",
        &mut |_: &str| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("no sled store"), "{e}");
    assert!(!missing.exists());
}

/// A mailbox from before expunges were logged: the target, which claims an exact log, gets
/// every UID the source no longer has, as expunged at its HIGHESTMODSEQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_without_an_expunge_log_gets_the_log_it_implies() {
    let dir = tempfile::tempdir().unwrap();
    let sled = SledStore::open(dir.path()).unwrap();
    sled.create_account(ALICE, "").await.unwrap();
    for i in 0..6 {
        sled.deliver(
            format!("Subject: {i}\r\n\r\n").as_bytes(),
            0,
            &[to(ALICE, "INBOX", &[])],
        )
        .await
        .unwrap();
    }
    let inbox = sled.mailbox(ALICE, "INBOX").await.unwrap().unwrap();
    sled.expunge(ALICE, inbox.id, &[2, 4]).await.unwrap();
    sled.forget_expunge_log(ALICE, "INBOX").unwrap();
    sled.expunge(ALICE, inbox.id, &[5]).await.unwrap();
    let (gone, complete) = sled.expunged_since(ALICE, inbox.id, 0).await.unwrap();
    assert_eq!((gone, complete), (vec![5], false));
    let h = sled
        .mailbox(ALICE, "INBOX")
        .await
        .unwrap()
        .unwrap()
        .highest_modseq;

    let pg = postgres().await;
    let copied = copy(&sled, &*pg, &mut quiet()).await.unwrap();
    assert_eq!(copied.expunged, 3);
    assert!(verify(&sled, &*pg, &mut quiet()).await.unwrap().ok());
    let target = pg.mailbox(ALICE, "INBOX").await.unwrap().unwrap();
    let (gone, complete) = pg.expunged_since(ALICE, target.id, 0).await.unwrap();
    assert_eq!((gone, complete), (vec![2, 4, 5], true));
    // A client that saw HIGHESTMODSEQ saw those expunges: nothing to tell it.
    assert_eq!(
        pg.expunged_since(ALICE, target.id, h).await.unwrap().0,
        Vec::<u32>::new()
    );
    // Again: the same log, nothing rewritten that differs.
    copy(&sled, &*pg, &mut quiet()).await.unwrap();
    assert!(verify(&sled, &*pg, &mut quiet()).await.unwrap().ok());
}

/// A mailbox of 1,200 messages is written in several batches, and an interrupted copy (a
/// part of it in the target) is finished by the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_mailbox_is_copied_in_batches_and_an_interrupted_copy_is_finished() {
    let dir = tempfile::tempdir().unwrap();
    let sled = SledStore::open(dir.path()).unwrap();
    sled.create_account(ALICE, "").await.unwrap();
    for i in 0..1200 {
        let flags: &[&str] = if i % 3 == 0 { &["\\Seen"] } else { &[] };
        sled.deliver(
            format!("Subject: {i}\r\n\r\n{i}\r\n").as_bytes(),
            i,
            &[to(ALICE, "INBOX", flags)],
        )
        .await
        .unwrap();
    }
    let pg = postgres().await;
    // As an interrupted run leaves it: the mailbox made with its counters, some messages in.
    let record = sled.mailbox_records(ALICE).await.unwrap();
    let inbox = record.iter().find(|r| r.mailbox.name == "INBOX").unwrap();
    let id = pg.import_mailbox(ALICE, inbox).await.unwrap();
    let first: Vec<MessageMeta> = sled.messages(inbox.mailbox.id).await.unwrap()[..700].to_vec();
    let bodies: Vec<Vec<u8>> = {
        let mut v = Vec::new();
        for m in &first {
            v.push(sled.blob(m.blob).await.unwrap());
        }
        v
    };
    let batch: Vec<(MessageMeta, Body<'_>)> = first
        .iter()
        .zip(&bodies)
        .map(|(m, b)| (m.clone(), Body::Bytes(b)))
        .collect();
    pg.import_messages(id, &batch).await.unwrap();

    let copied = copy(&sled, &*pg, &mut quiet()).await.unwrap();
    assert_eq!((copied.messages, copied.messages_present), (500, 700));
    assert!(verify(&sled, &*pg, &mut quiet()).await.unwrap().ok());
    assert_eq!(pg.messages(id).await.unwrap().len(), 1200);
}

/// Verification finds what differs: a flag changed in the target, a kv entry gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_reports_each_difference() {
    let dir = tempfile::tempdir().unwrap();
    let sled = filled(dir.path()).await;
    let pg = postgres().await;
    copy(&*sled, &*pg, &mut quiet()).await.unwrap();
    let inbox = pg.mailbox(BOB, "Lists/rust").await.unwrap().unwrap();
    pg.set_flags(BOB, inbox.id, &[(1, vec!["\\Deleted".into()])])
        .await
        .unwrap();
    pg.kv_set("wasm:counter", "n", b"43", None).await.unwrap();
    let v = verify(&*sled, &*pg, &mut quiet()).await.unwrap();
    assert!(!v.ok());
    let text = v.to_string();
    assert!(
        v.problems
            .iter()
            .any(|p| p.starts_with("bob@example.org: Lists/rust: 1 messages, checksum")),
        "{text}"
    );
    assert!(
        v.problems.iter().any(|p| p.contains("kv wasm:counter")),
        "{text}"
    );
    assert!(
        text.ends_with("verification failed: 3 mismatches"),
        "{text}"
    );
}
