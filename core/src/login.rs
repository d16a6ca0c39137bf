//! One login path for every protocol: SMTP AUTH, IMAP LOGIN/AUTHENTICATE, POP3 USER/PASS
//! and AUTH (and ManageSieve later). The session decodes the mechanism (`crate::sasl`), this
//! module decides, and the session turns the decision into its own reply.
//!
//! The order is fixed: throttle → credential check (the cache, argon2 on the blocking pool)
//! → the `on_auth` hook chain → result. What each situation means is one table,
//! [`Refusal`]'s, so no protocol can drift from the others:
//!
//! | situation                                         | result                     | counts as a failure |
//! |---------------------------------------------------|----------------------------|---------------------|
//! | the address (or account from it) is throttled     | [`Refusal::Throttled`]     | no (already over)   |
//! | authzid differs from authcid (proxy login)        | [`Refusal::NotAuthorized`] | yes                 |
//! | wrong password, unknown user, hook `Continue`     | [`Refusal::Failed`]        | yes                 |
//! | hook `Reject` (or `Accept` for an unknown account  | [`Refusal::Failed`]        | yes                 |
//! |   that cannot be provisioned)                     |                            |                     |
//! | store error while checking or provisioning        | [`Refusal::Temporary`]     | no                  |
//! | hook `Tempfail`                                   | [`Refusal::Temporary`]     | no                  |
//! | credentials valid (hook `Continue`) or hook `Accept` | `Ok(account)`           | settles the attempt |

use std::sync::Arc;

use crate::accounts::CredentialCache;
use crate::hooks::{Enhanced, HookChain, HookCtx, HookPoint, HookSession, Verdict};
use crate::net::AuthThrottle;
use crate::store::Store;

/// What a client presented, decoded from its mechanism.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The user name (SASL authcid).
    pub user: String,
    /// The password.
    pub password: String,
    /// The identity to act as (SASL authzid); empty for "myself".
    pub authzid: String,
    /// The mechanism, as hooks see it: `PLAIN`, `LOGIN`, `USER` (POP3 USER/PASS).
    pub mech: &'static str,
}

impl Credentials {
    /// A user name and password (IMAP LOGIN, POP3 USER/PASS, SASL LOGIN).
    pub fn password(user: String, password: String, mech: &'static str) -> Self {
        Credentials {
            user,
            password,
            authzid: String::new(),
            mech,
        }
    }

    /// A decoded SASL PLAIN response.
    pub fn plain(p: crate::sasl::Plain) -> Self {
        Credentials {
            user: p.authcid,
            password: p.password,
            authzid: p.authzid,
            mech: "PLAIN",
        }
    }

    /// Whether the client asks to act as someone else (not offered).
    fn proxies(&self) -> bool {
        !self.authzid.is_empty() && !self.authzid.eq_ignore_ascii_case(&self.user)
    }
}

/// Why a login did not succeed; each protocol maps it to its own reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Too many failures from this address (or for this account from it): try later.
    /// The credentials were not looked at.
    Throttled,
    /// The credentials were refused. `closing`: this failure reached the limit, the
    /// session should say so and close.
    Failed {
        /// The client is now throttled.
        closing: bool,
    },
    /// A proxy login (authzid names another user): not offered, counted as a failure.
    NotAuthorized {
        /// The client is now throttled.
        closing: bool,
    },
    /// Could not decide now (a store error, or a hook's `Tempfail`): not the client's fault,
    /// not counted against it (earlier failures stand).
    Temporary {
        /// The hook's enhanced status code, if it gave one.
        enhanced: Option<Enhanced>,
        /// Why, without the code.
        text: String,
    },
}

impl Refusal {
    /// A temporary failure of our own (no enhanced code from a hook).
    fn temporary(text: &str) -> Refusal {
        Refusal::Temporary {
            enhanced: None,
            text: text.into(),
        }
    }
}

/// The login service: what a session needs to authenticate a client, nothing more.
#[derive(Clone)]
pub struct Login {
    store: Store,
    hooks: Arc<HookChain>,
    domains: Arc<[String]>,
    throttle: Arc<AuthThrottle>,
    credentials: Arc<CredentialCache>,
}

impl Login {
    /// A login service over `store`, the hook chain and the local `domains` (for accounts
    /// an `on_auth` hook vouches for), with one failure throttle for every protocol.
    pub fn new(
        store: Store,
        hooks: Arc<HookChain>,
        domains: &[String],
        throttle: Arc<AuthThrottle>,
    ) -> Self {
        Login {
            store,
            hooks,
            domains: domains.into(),
            throttle,
            // Clients log in again and again, and every argon2 check costs tens of
            // milliseconds of CPU and a 19 MiB buffer (which the allocator keeps).
            credentials: Arc::new(CredentialCache::new(std::time::Duration::from_secs(600))),
        }
    }

    /// Whether the client's address is locked out right now (SMTP checks before an
    /// exchange starts).
    pub fn throttled(&self, ip: std::net::IpAddr) -> bool {
        self.throttle.blocked(ip)
    }

    /// Decide a login. `ctx` holds the session's facts (listener, client IP, TLS, HELO …);
    /// its point and credentials are filled in here; `on_auth` runs in the client's hook
    /// `session` when it has one. Returns the account logged into.
    pub async fn login(
        &self,
        mut ctx: HookCtx,
        session: Option<&HookSession>,
        creds: Credentials,
    ) -> Result<String, Refusal> {
        let Ok(attempt) = self.throttle.begin(ctx.client_ip, &creds.user).await else {
            tracing::info!(user = %creds.user, "login refused: too many failures");
            return Err(Refusal::Throttled);
        };
        if creds.proxies() {
            crate::metrics::m().login(ctx.listener.protocol().name(), false);
            tracing::info!(user = %creds.user, authz = %creds.authzid, "login failed: authzid differs");
            return Err(Refusal::NotAuthorized {
                closing: attempt.fail(),
            });
        }
        let valid = match self
            .credentials
            .verify(&self.store, &creds.user, &creds.password)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                // Not the client's failure: settled without counting.
                attempt.release();
                tracing::error!(error = %e, "credential check failed");
                return Err(Refusal::temporary(
                    "Cannot check credentials now, try again later",
                ));
            }
        };
        ctx.point = HookPoint::Auth;
        ctx.credentials = Some(crate::hooks::Credentials {
            username: creds.user.clone(),
            password: creds.password,
            mechanism: creds.mech.to_string(),
            valid: valid.is_some(),
        });
        let account = match self.hooks.run_async(&ctx, session).await.verdict {
            Verdict::Continue => valid,
            Verdict::Accept if valid.is_some() => valid,
            Verdict::Accept => {
                match crate::accounts::external_account(&self.store, &self.domains, &creds.user)
                    .await
                {
                    Ok(Some(account)) => match self.store.commit().await {
                        Ok(()) => Some(account),
                        Err(e) => {
                            attempt.release();
                            tracing::error!(user = %account, error = %e, "could not commit a new account");
                            return Err(Refusal::temporary("Cannot log in now, try again later"));
                        }
                    },
                    Ok(None) => None,
                    Err(e) => {
                        attempt.release();
                        tracing::error!(user = %creds.user, error = %e, "could not provision an account");
                        return Err(Refusal::temporary("Cannot log in now, try again later"));
                    }
                }
            }
            Verdict::Tempfail { enhanced, text, .. } => {
                attempt.release();
                tracing::info!(user = %creds.user, reason = %text, "login deferred by a hook");
                return Err(Refusal::Temporary { enhanced, text });
            }
            Verdict::Reject { .. } | Verdict::Discard | Verdict::Quarantine(_) => None,
        };
        let protocol = ctx.listener.protocol().name();
        crate::metrics::m().login(protocol, account.is_some());
        match account {
            Some(account) => {
                attempt.succeed();
                tracing::info!(user = %account, mech = creds.mech, "authenticated");
                Ok(account)
            }
            None => {
                tracing::info!(user = %creds.user, mech = creds.mech, "authentication failed");
                Err(Refusal::Failed {
                    closing: attempt.fail(),
                })
            }
        }
    }
}
