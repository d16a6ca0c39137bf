//! LOGIN and AUTHENTICATE PLAIN (RFC 9051 §6.2): decoded here, decided by `crate::login`.

use std::time::Duration;

use crate::hooks::{HookCtx, HookPoint};
use crate::imap::cmd::{CmdResult, Resp, no, store_err};
use crate::imap::session::Session;
use crate::login::{Credentials, Refusal};

impl Session {
    pub(in crate::imap) async fn login(&mut self, creds: Credentials) -> CmdResult {
        let mut ctx = HookCtx::new(HookPoint::Auth, self.listener, self.peer.ip());
        ctx.tls = self.conn.is_tls();
        let login = self.deps.login.login(ctx, None, creds).await;
        match login {
            Ok(a) => {
                let max = self.deps.config.imap.max_connections_per_user;
                // Slots are leases in the store: the limit holds across every node.
                match crate::store::lease::take_slot(&self.deps.store, &format!("imap:{a}"), max)
                    .await
                {
                    Ok(Some(slot)) => self._user_slot = Some(slot),
                    Ok(None) => {
                        tracing::warn!(user = %a, max, "login refused: too many sessions for this user");
                        return Err(no(format!(
                            "[UNAVAILABLE] Too many connections for this user ({max} of {max} in use); close one and retry"
                        )));
                    }
                    Err(e) => return Err(store_err(e)),
                }
                tracing::info!(user = %a, "logged in");
                self.watch = Some(self.deps.store.watch(&a));
                self.user = Some(a);
                Ok(format!("[CAPABILITY {}] Logged in", self.capabilities()))
            }
            Err(Refusal::Throttled) => {
                Err(no("[UNAVAILABLE] Too many failed logins, try again later"))
            }
            Err(Refusal::NotAuthorized { .. }) => {
                Err(no("[AUTHORIZATIONFAILED] Proxy authentication not allowed"))
            }
            Err(Refusal::Failed { .. }) => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                Err(no("[AUTHENTICATIONFAILED] Invalid credentials"))
            }
            Err(Refusal::Temporary { enhanced, text }) => Err(no(format!(
                "[UNAVAILABLE] {}",
                crate::hooks::outcome::wording(enhanced.as_ref(), &text)
            ))),
        }
    }

    pub(in crate::imap) async fn auth_plain(&mut self, b64: &str) -> CmdResult {
        let creds = crate::sasl::plain(b64).map_err(|e| Resp::Bad(e.to_string()))?;
        self.login(Credentials::plain(creds)).await
    }
}
