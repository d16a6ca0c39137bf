//! Conformance of accounts, domains, aliases and mailbox naming, and of the key-value area.

use super::*;

/// Accounts, domains, aliases and mailbox naming rules.
pub(super) async fn directory_and_mailbox_rules(h: Harness) {
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
pub(super) async fn kv_ttl_and_atomic_increment(h: Harness) {
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

pub(super) async fn kv_ranges_are_ordered_bounded_and_skip_expired(h: Harness) {
    let s = h.store.clone();
    for k in ["b2", "a1", "b1", "c", "b10"] {
        s.kv_set("r", k, k.as_bytes(), None).await.unwrap();
    }
    s.kv_set("r", "b3", b"old", Some(0)).await.unwrap();
    s.kv_set("r2", "b1", b"other namespace", None)
        .await
        .unwrap();
    s.kv_set("r\u{1}x", "b1", b"a longer namespace", None)
        .await
        .unwrap();
    let keys = |v: Vec<(String, Vec<u8>)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    let all = s.kv_range("r", "", "", 100).await.unwrap();
    assert_eq!(all[0], ("a1".to_string(), b"a1".to_vec()));
    assert_eq!(keys(all), ["a1", "b1", "b10", "b2", "c"]);
    assert_eq!(
        keys(s.kv_range("r", "b", "c", 100).await.unwrap()),
        ["b1", "b10", "b2"]
    );
    assert_eq!(
        keys(s.kv_range("r", "b", "", 2).await.unwrap()),
        ["b1", "b10"]
    );
    s.kv_delete("r", "b10").await.unwrap();
    s.kv_delete("r", "missing").await.unwrap();
    assert_eq!(
        keys(s.kv_range("r", "b", "c", 100).await.unwrap()),
        ["b1", "b2"]
    );
    assert_eq!(s.kv_get("r", "b10").await.unwrap(), None);
}
