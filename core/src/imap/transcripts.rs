//! IMAP sessions driven in-process by `C:`/`S:` transcripts (`crate::testing`): the state
//! rules of RFC 9051 §3 (which commands each state allows), login, and message-set
//! addressing by sequence number and by UID after an expunge, reply by reply.

use std::sync::Arc;

use crate::listener::Listener;
use crate::testing::{self, PASSWORD, USER};

async fn run(deps: &Arc<super::session::Deps>, trace: &str) {
    let (deps, peer) = (deps.clone(), "192.0.2.10:40000".parse().unwrap());
    testing::transcript(
        move |stream| super::session::session(deps, stream, peer, Listener::Imap),
        trace,
    )
    .await;
}

#[tokio::test]
async fn states_allow_their_commands_only() {
    let d = tempfile::tempdir().unwrap();
    let store = testing::store(&["one", "two", "three"]).await;
    let deps = testing::imap(testing::config(d.path()), &store, &testing::hooks(vec![]));
    let trace = format!(
        r#"S: * OK [CAPABILITY IMAP4rev1
         C: a1 SELECT INBOX
         S: a1 BAD
         C: a2 LOGIN {USER} wrong
         S: a2 NO [AUTHENTICATIONFAILED]
         C: a3 LOGIN {USER} {PASSWORD}
         S: a3 OK [CAPABILITY IMAP4rev1
         C: a4 LOGIN {USER} {PASSWORD}
         S: a4 BAD
         C: a5 FETCH 1 (FLAGS)
         S: a5 BAD
         C: a6 EXPUNGE
         S: a6 BAD
         C: a7 EXAMINE INBOX
         S*: a7 OK [READ-ONLY]
         C: a8 STORE 1 +FLAGS (\Seen)
         S: a8 NO
         C: a9 UNSELECT
         S: a9 OK
         C: a10 FETCH 1 (FLAGS)
         S: a10 BAD
         C: a11 LOGOUT
         S: * BYE
         S: a11 OK"#,
    );
    run(&deps, &trace).await;
}

#[tokio::test]
async fn sequence_numbers_and_uids_after_an_expunge() {
    let d = tempfile::tempdir().unwrap();
    let store = testing::store(&["one", "two", "three"]).await;
    let deps = testing::imap(testing::config(d.path()), &store, &testing::hooks(vec![]));
    let trace = format!(
        r#"S: * OK
         C: a1 LOGIN {USER} {PASSWORD}
         S: a1 OK
         C: a2 SELECT INBOX
         S*: a2 OK [READ-WRITE]
         C: a3 STORE 2 +FLAGS.SILENT (\Deleted)
         S: a3 OK
         C: a4 UID SEARCH DELETED
         S: * SEARCH 2
         S: a4 OK
         C: a5 EXPUNGE
         S: * 2 EXPUNGE
         S: * 2 RECENT
         S: a5 OK
         C: a6 FETCH 2 (UID)
         S: * 2 FETCH (UID 3)
         S: a6 OK
         C: a7 UID FETCH 2:3 (UID)
         S: * 2 FETCH (UID 3)
         S: a7 OK
         C: a8 FETCH 3 (UID)
         S: a8 BAD
         C: a9 UID FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])
         S: * 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {{16}}
         S: Subject: one
         S:
         S:  UID 1)
         S: a9 OK
         C: a10 LOGOUT
         S: * BYE
         S: a10 OK"#,
    );
    run(&deps, &trace).await;
}
