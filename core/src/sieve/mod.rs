//! Per-user mail filters in Sieve (RFC 5228 and the extensions clients use), written here: the
//! one Rust implementation of note is AGPL-licensed. Like the protocol codecs, no I/O in the
//! language: [`parse`] turns text into a generic tree (errors with line and column),
//! [`script`] checks it into typed commands and tests, [`eval`] runs a script against a
//! message and its envelope and returns actions. [`storage`] keeps users' scripts in the
//! store, [`vacation`] holds the auto-reply rules, and [`Filters`] is what local delivery
//! calls (`crate::delivery`), after the admin's hooks.

pub mod eval;
pub mod matching;
pub mod parse;
pub mod script;
pub mod storage;
pub mod vacation;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use eval::{Action, Outcome};
pub use script::Script;

use crate::config::SieveLimits;
use crate::store::Store;

/// Parse and check a script with the default parser limits.
pub fn compile(text: &str) -> Result<Script, parse::Error> {
    script::compile(text, parse::Limits::default())
}

/// The extensions, space-separated (the ManageSieve `SIEVE` capability).
pub fn extensions() -> String {
    script::EXTENSIONS.join(" ")
}

/// A user's script as it ran on one message.
#[derive(Debug)]
pub struct Ran {
    /// The script's name.
    pub name: String,
    /// What it decided.
    pub outcome: Outcome,
    /// Evaluation time, in microseconds.
    pub micros: u64,
}

/// Compiled scripts, by their text (shared by every user with the same script); bounded.
const CACHE_MAX: usize = 1024;

/// How long a user's active script (or that there is none) is remembered between deliveries;
/// a change made through this process is seen at once (`storage::GENERATION`).
const ACTIVE_TTL: std::time::Duration = std::time::Duration::from_secs(2);
/// Users remembered at most.
const ACTIVE_MAX: usize = 100_000;

type ActiveEntry = (std::time::Instant, u64, Option<(String, String)>);

/// What local delivery uses: the store's scripts, compiled once, run with the limits.
pub struct Filters {
    store: Store,
    limits: SieveLimits,
    cache: Mutex<HashMap<String, Arc<Script>>>,
    /// Each user's active script (name, text), or none, as last read: most recipients have
    /// no script, and asking the store for every copy of every message costs a round trip
    /// on PostgreSQL.
    active: Mutex<HashMap<String, ActiveEntry>>,
}

impl Filters {
    /// Filters over `store` with `limits`.
    pub fn new(store: Store, limits: SieveLimits) -> Self {
        Filters {
            store,
            limits,
            cache: Mutex::new(HashMap::new()),
            active: Mutex::new(HashMap::new()),
        }
    }

    async fn active_script(
        &self,
        user: &str,
    ) -> Result<Option<(String, String)>, crate::store::StoreError> {
        let generation = storage::GENERATION.load(std::sync::atomic::Ordering::Relaxed);
        let key = crate::store::normalize_address(user);
        if let Some((at, g, v)) = self.active.lock().expect("sieve active").get(&key)
            && *g == generation
            && at.elapsed() < ACTIVE_TTL
        {
            return Ok(v.clone());
        }
        let v = storage::active(&self.store, user).await?;
        let mut active = self.active.lock().expect("sieve active");
        if active.len() >= ACTIVE_MAX {
            active.clear();
        }
        active.insert(key, (std::time::Instant::now(), generation, v.clone()));
        Ok(v)
    }

    /// The limits.
    pub fn limits(&self) -> &SieveLimits {
        &self.limits
    }

    fn compiled(&self, text: &str) -> Result<Arc<Script>, parse::Error> {
        if let Some(s) = self.cache.lock().expect("sieve cache").get(text) {
            return Ok(s.clone());
        }
        let s = Arc::new(compile(text)?);
        let mut cache = self.cache.lock().expect("sieve cache");
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(text.to_string(), s.clone());
        Ok(s)
    }

    /// Run `user`'s active script, if any, on `message` sent from `from` to `rcpt`.
    /// A script that no longer compiles (stored by an older version) or that fails at run
    /// time gives the implicit keep and says why.
    pub async fn run(&self, user: &str, rcpt: &str, from: &str, message: &[u8]) -> Option<Ran> {
        let (name, text) = match self.active_script(user).await {
            Ok(Some(x)) => x,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(user, error = %e, "reading the Sieve script failed; kept the message");
                return None;
            }
        };
        let started = std::time::Instant::now();
        let script = match self.compiled(&text) {
            Ok(s) => s,
            Err(e) => {
                return Some(Ran {
                    name,
                    outcome: Outcome {
                        actions: vec![Action::Store {
                            mailbox: "INBOX".into(),
                            flags: Vec::new(),
                            create: false,
                        }],
                        fired: Vec::new(),
                        error: Some(format!("the script does not compile: {e}")),
                    },
                    micros: 0,
                });
            }
        };
        let mailboxes: Vec<String> = if script.has("fileinto") || script.has("mailbox") {
            match self.store.mailboxes(user).await {
                Ok(m) => m.into_iter().map(|m| m.name).collect(),
                Err(_) => Vec::new(),
            }
        } else {
            Vec::new()
        };
        let exists = |name: &str| {
            crate::store::is_inbox(name)
                || mailboxes.iter().any(|m| {
                    crate::store::canonical_mailbox(m) == crate::store::canonical_mailbox(name)
                })
        };
        let ctx = eval::Context {
            message,
            from,
            to: rcpt,
            mailbox_exists: &exists,
            limits: self.run_limits(),
            now: chrono::Local::now().fixed_offset(),
        };
        let mut outcome = eval::run(&script, &ctx);
        settle_mailboxes(&mut outcome, &exists);
        Some(Ran {
            name,
            outcome,
            micros: started.elapsed().as_micros() as u64,
        })
    }

    /// The run limits of the configuration.
    pub fn run_limits(&self) -> eval::RunLimits {
        eval::RunLimits {
            max_steps: self.limits.max_steps,
            max_redirects: self.limits.max_redirects,
            max_actions: self.limits.max_actions,
        }
    }
}

/// Where the copies really go: a `fileinto` of a mailbox that does not exist, without
/// `:create` (RFC 5490 §3.2 leaves creating to it), or of a name IMAP CREATE would refuse
/// (`..`, wildcards, an empty level), files into INBOX and says why; then filing twice into
/// one mailbox is one copy (RFC 5228 §2.10.3), with the first action's flags.
pub fn settle_mailboxes(outcome: &mut Outcome, exists: &dyn Fn(&str) -> bool) {
    for a in &mut outcome.actions {
        if let Action::Store {
            mailbox, create, ..
        } = a
        {
            let why = if !crate::store::valid_mailbox_name(mailbox) {
                "is not a valid mailbox name"
            } else if !*create && !exists(mailbox) {
                "does not exist"
            } else {
                continue;
            };
            outcome
                .fired
                .push(format!("mailbox \"{mailbox}\" {why}: filed into INBOX"));
            *mailbox = "INBOX".into();
        }
    }
    let mut seen: Vec<String> = Vec::new();
    outcome.actions.retain(|a| match a {
        Action::Store { mailbox, .. } => {
            let c = crate::store::canonical_mailbox(mailbox);
            if seen.contains(&c) {
                false
            } else {
                seen.push(c);
                true
            }
        }
        _ => true,
    });
}

/// IMAP flags as stored: system flags in their canonical case, `\Recent` and anything that
/// is not an atom dropped.
pub fn imap_flags(flags: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for f in flags {
        let canonical = match f.to_ascii_lowercase().as_str() {
            "\\seen" => "\\Seen".to_string(),
            "\\answered" => "\\Answered".to_string(),
            "\\flagged" => "\\Flagged".to_string(),
            "\\deleted" => "\\Deleted".to_string(),
            "\\draft" => "\\Draft".to_string(),
            _ if f.starts_with('\\') => continue,
            _ if f.is_empty()
                || f.len() > 100
                || f.bytes()
                    .any(|b| b <= b' ' || b >= 0x7f || b"(){%*\"\\]".contains(&b)) =>
            {
                continue;
            }
            _ => f.clone(),
        };
        if !out.iter().any(|x| x.eq_ignore_ascii_case(&canonical)) {
            out.push(canonical);
        }
    }
    out
}

/// `corvus sieve test`: the actions of `script` on `message`, one line each.
pub fn describe(
    outcome: &Outcome,
    vacation_ok: impl Fn(&eval::VacationReply) -> Option<String>,
) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(e) = &outcome.error {
        lines.push(format!("error {e}"));
    }
    for a in &outcome.actions {
        match a {
            Action::Store { mailbox, flags, .. } if flags.is_empty() => {
                lines.push(format!("store {mailbox}"))
            }
            Action::Store { mailbox, flags, .. } => {
                lines.push(format!("store {mailbox} flags {}", flags.join(" ")))
            }
            Action::Redirect(a) => lines.push(format!("redirect {a}")),
            Action::Reject(r) => {
                lines.push(format!("reject {}", r.lines().next().unwrap_or("").trim()))
            }
            Action::Vacation(v) => {
                if let Some(line) = vacation_ok(v) {
                    lines.push(line);
                }
            }
        }
    }
    if outcome.discarded() {
        lines.push("discard".into());
    }
    lines
}

#[cfg(test)]
mod tests;
