//! SMTP sessions driven in-process by `C:`/`S:` transcripts (`crate::testing`): the
//! protocol rules of RFC 5321 (command order), RFC 4954 (AUTH) and RFC 3207 (TLS first),
//! checked reply by reply without the binary.

use std::sync::Arc;

use crate::listener::Listener;
use crate::testing::{self, PASSWORD, USER};

async fn run(deps: &Arc<super::session::Deps>, listener: Listener, trace: &str) {
    let (deps, peer) = (deps.clone(), "192.0.2.10:40000".parse().unwrap());
    testing::transcript(
        move |stream| super::session::session(deps, stream, peer, listener),
        trace,
    )
    .await;
}

#[tokio::test]
async fn submission_orders_commands_authenticates_and_stores() {
    let d = tempfile::tempdir().unwrap();
    let store = testing::store(&[]).await;
    let deps = testing::smtp(testing::config(d.path()), &store, &testing::hooks(vec![]));
    let trace = format!(
        "S: 220
         C: MAIL FROM:<{USER}>
         S: 503 5.5.1
         C: EHLO client.example
         S*: 250 
         C: MAIL FROM:<{USER}>
         S: 530 5.7.0
         C: AUTH PLAIN {wrong}
         S: 535 5.7.8
         C: AUTH PLAIN {right}
         S: 235 2.7.0
         C: AUTH PLAIN {right}
         S: 503 5.5.1
         C: RCPT TO:<{USER}>
         S: 503 5.5.1
         C: MAIL FROM:<{USER}>
         S: 250
         C: DATA
         S: 554 5.5.1
         C: MAIL FROM:<{USER}>
         S: 503 5.5.1
         C: RCPT TO:<{USER}>
         S: 250
         C: DATA
         S: 354
         C: Subject: hello
         C:
         C: ..dot-stuffed
         C: .
         S: 250 2.0.0
         C: QUIT
         S: 221",
        wrong = testing::plain(USER, "wrong"),
        right = testing::plain(USER, PASSWORD),
    );
    run(&deps, Listener::Submission, &trace).await;
    let inbox = store.mailbox(USER, "INBOX").await.unwrap().unwrap();
    let msgs = store.messages(inbox.id).await.unwrap();
    assert_eq!(msgs.len(), 1);
    let body = store.blob(msgs[0].blob).await.unwrap();
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.ends_with("Subject: hello\r\n\r\n.dot-stuffed\r\n"),
        "{body}"
    );
}

#[tokio::test]
async fn the_mx_listener_offers_no_auth_and_relays_nothing() {
    let d = tempfile::tempdir().unwrap();
    let store = testing::store(&[]).await;
    let deps = testing::smtp(testing::config(d.path()), &store, &testing::hooks(vec![]));
    let trace = format!(
        "S: 220
         C: EHLO client.example
         S*: 250 
         C: AUTH PLAIN {right}
         S: 503 5.5.1 AUTH is not offered on this port
         C: MAIL FROM:<bob@remote.example>
         S: 250
         C: RCPT TO:<carol@elsewhere.example>
         S: 554 5.7.1
         C: RCPT TO:<nobody@example.org>
         S: 550 5.1.1
         C: RCPT TO:<{USER}>
         S: 250
         C: RSET
         S: 250
         C: NOOP
         S: 250
         C: QUIT
         S: 221",
        right = testing::plain(USER, PASSWORD),
    );
    run(&deps, Listener::Smtp, &trace).await;
}

#[tokio::test]
async fn auth_needs_tls_unless_allowed_and_failures_are_throttled() {
    let d = tempfile::tempdir().unwrap();
    let store = testing::store(&[]).await;
    let mut config = testing::config(d.path());
    config.smtp.allow_plaintext_auth = false;
    let deps = testing::smtp(config, &store, &testing::hooks(vec![]));
    let trace = format!(
        "S: 220
         C: EHLO client.example
         S*: 250 
         C: AUTH PLAIN {right}
         S: 538 5.7.11
         C: QUIT
         S: 221",
        right = testing::plain(USER, PASSWORD),
    );
    run(&deps, Listener::Submission, &trace).await;

    // Five failures from one address: the fifth is answered and the session closed.
    let deps = testing::smtp(testing::config(d.path()), &store, &testing::hooks(vec![]));
    let wrong = testing::plain(USER, "wrong");
    let mut trace = String::from("S: 220\nC: EHLO client.example\nS*: 250 \n");
    for _ in 0..4 {
        trace.push_str(&format!("C: AUTH PLAIN {wrong}\nS: 535 5.7.8\n"));
    }
    trace.push_str(&format!(
        "C: AUTH PLAIN {wrong}\nS: 535 5.7.8\nS: 421 4.7.0\n"
    ));
    run(&deps, Listener::Submission, &trace).await;
}

/// Defers every login whose password is "later" (a hook that cannot decide now).
struct DeferLogins;

impl crate::hooks::HookEngine for DeferLogins {
    fn name(&self) -> &str {
        "test-defer"
    }
    fn handles(&self, point: crate::hooks::HookPoint) -> bool {
        point == crate::hooks::HookPoint::Auth
    }
    fn call(
        &self,
        ctx: &crate::hooks::HookCtx,
        _: &mut crate::hooks::Actions,
    ) -> Result<crate::hooks::Verdict, crate::hooks::HookError> {
        let later = ctx
            .credentials
            .as_ref()
            .is_some_and(|c| c.password == "later");
        Ok(if later {
            crate::hooks::Verdict::tempfail(451, "4.7.1 Directory busy").unwrap()
        } else {
            crate::hooks::Verdict::Continue
        })
    }
}

#[tokio::test]
async fn a_deferred_login_is_a_temporary_failure_that_does_not_count() {
    let d = tempfile::tempdir().unwrap();
    let store = testing::store(&[]).await;
    let deps = testing::smtp(
        testing::config(d.path()),
        &store,
        &testing::hooks(vec![Arc::new(DeferLogins)]),
    );
    // RFC 4954 §6: 454 for a temporary failure, with the hook's enhanced code; five
    // deferrals do not reach the failure limit (testing::login allows five).
    let later = testing::plain(USER, "later");
    let mut trace = String::from("S: 220\nC: EHLO client.example\nS*: 250 \n");
    for _ in 0..6 {
        trace.push_str(&format!(
            "C: AUTH PLAIN {later}\nS: 454 4.7.1 Directory busy\n"
        ));
    }
    trace.push_str(&format!(
        "C: AUTH PLAIN {}\nS: 235 2.7.0\nC: QUIT\nS: 221\n",
        testing::plain(USER, PASSWORD)
    ));
    run(&deps, Listener::Submission, &trace).await;
}
