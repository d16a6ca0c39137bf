//! Learning from users: a message moved or copied into Junk teaches rspamd "spam", one moved
//! out of Junk (but not into Trash) "ham". The IMAP command hands a [`LearnJob`] over and
//! answers at once; one task per rspamd entry reads the messages from the store and posts
//! them to the controller's `/learnspam` or `/learnham`, with `Deliver-To` naming the user
//! (rspamd's per-user statistics, where configured). The queue is bounded (a full queue drops
//! the job, logged); a failed request is retried a few times, then logged.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::mpsc;

use super::http::{Client, HttpError};
use crate::hooks::LearnJob;
use crate::store::Store;

/// Jobs waiting (each one IMAP command's messages).
const QUEUE: usize = 256;
/// Messages learned from one command at most (a user moving a whole folder).
pub const MAX_PER_JOB: usize = 1000;
/// Pauses before the second and third attempts.
const RETRY_AFTER: [Duration; 2] = [Duration::from_secs(2), Duration::from_secs(10)];

/// One rspamd entry's learning queue; the task starts with the first job (on the runtime the
/// IMAP sessions run on) and ends when the entry is dropped (a reload) and its queue drained.
pub struct Learner {
    queue: OnceLock<mpsc::Sender<LearnJob>>,
    parts: std::sync::Mutex<Option<Parts>>,
}

struct Parts {
    controller: Client,
    password: String,
    timeout: Duration,
    store: Store,
}

impl Learner {
    /// A learner posting to `controller`.
    pub fn new(controller: Client, password: String, timeout: Duration, store: Store) -> Self {
        Learner {
            queue: OnceLock::new(),
            parts: std::sync::Mutex::new(Some(Parts {
                controller,
                password,
                timeout,
                store,
            })),
        }
    }

    /// Queue `job`; never waits.
    pub fn submit(&self, mut job: LearnJob) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let tx = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            if let Some(parts) = self.parts.lock().unwrap_or_else(|e| e.into_inner()).take() {
                rt.spawn(run(parts, rx));
            }
            tx
        });
        if job.uids.len() > MAX_PER_JOB {
            tracing::info!(user = %job.user, messages = job.uids.len(), "learning from the first {MAX_PER_JOB} messages of one command only");
            job.uids.truncate(MAX_PER_JOB);
        }
        if let Err(e) = tx.try_send(job) {
            let job = match e {
                mpsc::error::TrySendError::Full(j) | mpsc::error::TrySendError::Closed(j) => j,
            };
            tracing::warn!(user = %job.user, messages = job.uids.len(), "rspamd learning queue full: not learned");
        }
    }
}

async fn run(parts: Parts, mut rx: mpsc::Receiver<LearnJob>) {
    while let Some(job) = rx.recv().await {
        for &uid in &job.uids {
            learn_one(&parts, &job, uid).await;
        }
    }
}

async fn learn_one(p: &Parts, job: &LearnJob, uid: u32) {
    let class = if job.spam { "spam" } else { "ham" };
    let raw = match p.store.message(job.mailbox, uid).await {
        Ok(Some(meta)) => p.store.blob(meta.blob).await,
        Ok(None) => return, // expunged meanwhile
        Err(e) => Err(e),
    };
    let raw = match raw {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(user = %job.user, uid, error = %e, "could not read a message to learn {class} from");
            return;
        }
    };
    let path = if job.spam { "/learnspam" } else { "/learnham" };
    let mut headers = vec![("Deliver-To", job.user.as_str())];
    if !p.password.is_empty() {
        headers.push(("Password", p.password.as_str()));
    }
    let raw = bytes::Bytes::from(raw);
    for attempt in 0..=RETRY_AFTER.len() {
        let result = p
            .controller
            .post(path, &headers, raw.clone(), p.timeout)
            .await;
        match outcome(&result) {
            Outcome::Learned(note) => {
                tracing::info!(user = %job.user, uid, class, note, "rspamd learned");
                return;
            }
            Outcome::Refused(why) => {
                tracing::info!(user = %job.user, uid, class, why, "rspamd did not learn");
                return;
            }
            Outcome::Retry(why) => {
                if let Some(pause) = RETRY_AFTER.get(attempt) {
                    tracing::debug!(user = %job.user, uid, class, why, "rspamd learning failed; will retry");
                    tokio::time::sleep(*pause).await;
                } else {
                    tracing::warn!(user = %job.user, uid, class, why, controller = %p.controller.url(), "rspamd learning failed");
                }
            }
        }
    }
}

enum Outcome {
    Learned(&'static str),
    Refused(String),
    Retry(String),
}

/// What a controller reply means: learned (also "already learned"), refused for good (too
/// few tokens, learn conditions, a wrong password), or worth another try (no connection,
/// time-out, 5xx).
fn outcome(r: &Result<super::http::Response, HttpError>) -> Outcome {
    let r = match r {
        Ok(r) => r,
        Err(e) => return Outcome::Retry(e.to_string()),
    };
    let body = String::from_utf8_lossy(&r.body);
    let text = crate::hooks::outcome::cut(body.trim(), 200).to_string();
    match r.status {
        200 => Outcome::Learned("learned"),
        404 | 208 if text.contains("already learned") => Outcome::Learned("already learned"),
        500..=599 => Outcome::Retry(format!("HTTP {}: {text}", r.status)),
        s => Outcome::Refused(format!("HTTP {s}: {text}")),
    }
}

/// The class a move or copy teaches: spam into Junk (from anywhere else), ham out of Junk
/// into anything but Trash; None otherwise.
pub fn class_of_move(from_junk: bool, to_junk: bool, to_trash: bool) -> Option<bool> {
    match (from_junk, to_junk) {
        (false, true) => Some(true),
        (true, false) if !to_trash => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::rspamd::http::Response;

    #[test]
    fn moves_teach_spam_into_junk_and_ham_out_of_it_except_to_trash() {
        assert_eq!(class_of_move(false, true, false), Some(true));
        assert_eq!(class_of_move(true, false, false), Some(false));
        assert_eq!(class_of_move(true, false, true), None);
        assert_eq!(class_of_move(true, true, false), None);
        assert_eq!(class_of_move(false, false, true), None);
    }

    #[test]
    fn controller_replies() {
        let r = |status, body: &str| {
            Ok(Response {
                status,
                body: body.as_bytes().to_vec(),
            })
        };
        assert!(matches!(
            outcome(&r(200, r#"{"success":true}"#)),
            Outcome::Learned("learned")
        ));
        assert!(matches!(
            outcome(&r(
                404,
                r#"{"error":"<x@y> has been already learned as spam, ignore it"}"#
            )),
            Outcome::Learned("already learned")
        ));
        assert!(matches!(outcome(&r(404, "not found")), Outcome::Refused(_)));
        assert!(matches!(outcome(&r(204, "")), Outcome::Refused(_)));
        assert!(matches!(outcome(&r(403, "")), Outcome::Refused(_)));
        assert!(matches!(outcome(&r(503, "")), Outcome::Retry(_)));
        assert!(matches!(
            outcome(&Err(HttpError::Timeout(Duration::from_secs(1)))),
            Outcome::Retry(_)
        ));
    }
}
