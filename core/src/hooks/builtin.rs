//! Built-in policy as a hook engine: relay control, unknown users, submission rules.
//! Each rule is a function from the facts in [`HookCtx`] to a verdict; it only ever refuses.

use super::{Actions, Enhanced, HookCtx, HookEngine, HookError, HookPoint, Route, Verdict};

/// The built-in policy; always first in the chain.
pub struct BuiltinPolicy;

fn reject(code: u16, enhanced: &str, text: &str) -> Verdict {
    Verdict::Reject {
        code,
        enhanced: Some(Enhanced::known(enhanced)),
        text: text.into(),
    }
}

impl HookEngine for BuiltinPolicy {
    fn name(&self) -> &str {
        "builtin"
    }

    fn handles(&self, point: HookPoint) -> bool {
        matches!(point, HookPoint::Mail | HookPoint::Rcpt)
    }

    fn call(&self, ctx: &HookCtx, _actions: &mut Actions) -> Result<Verdict, HookError> {
        Ok(match ctx.point {
            HookPoint::Mail if ctx.listener.is_submission() && ctx.user.is_empty() => {
                reject(530, "5.7.0", "Authentication required")
            }
            HookPoint::Rcpt => match &ctx.route {
                Some(Route::UnknownLocal) => {
                    reject(550, "5.1.1", "Mailbox unavailable: no such user here")
                }
                // RFC 5321 §3.6: relaying only for authenticated users (and clients in
                // `smtp.relay_networks`), on any listener.
                Some(Route::Remote) if ctx.user.is_empty() && !ctx.relay_network => {
                    reject(554, "5.7.1", "Relay access denied")
                }
                Some(Route::Local(t)) if t.is_empty() => {
                    reject(550, "5.1.1", "Mailbox unavailable")
                }
                None => reject(550, "5.1.1", "Mailbox unavailable"),
                _ => Verdict::Continue,
            },
            _ => Verdict::Continue,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rcpt(route: Route, user: &str) -> Verdict {
        let mut ctx = HookCtx::new(
            HookPoint::Rcpt,
            crate::listener::Listener::Smtp,
            "127.0.0.1".parse().unwrap(),
        );
        ctx.route = Some(route);
        ctx.user = user.into();
        BuiltinPolicy.call(&ctx, &mut Actions::default()).unwrap()
    }

    #[test]
    fn relay_networks_relay_without_auth() {
        let mut ctx = HookCtx::new(
            HookPoint::Rcpt,
            crate::listener::Listener::Smtp,
            "10.1.2.3".parse().unwrap(),
        );
        ctx.route = Some(Route::Remote);
        let mut a = Actions::default();
        assert!(matches!(
            BuiltinPolicy.call(&ctx, &mut a).unwrap(),
            Verdict::Reject { code: 554, .. }
        ));
        ctx.relay_network = true;
        assert_eq!(BuiltinPolicy.call(&ctx, &mut a).unwrap(), Verdict::Continue);
    }

    #[test]
    fn relay_only_when_authenticated() {
        assert!(matches!(
            rcpt(Route::Remote, ""),
            Verdict::Reject { code: 554, .. }
        ));
        assert_eq!(rcpt(Route::Remote, "a@x"), Verdict::Continue);
        assert!(matches!(
            rcpt(Route::UnknownLocal, "a@x"),
            Verdict::Reject { code: 550, .. }
        ));
        assert_eq!(
            rcpt(Route::Local(vec!["a@x".into()]), ""),
            Verdict::Continue
        );
    }
}
