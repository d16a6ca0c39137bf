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
