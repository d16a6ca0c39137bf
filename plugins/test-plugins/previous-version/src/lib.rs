//! Test plugin built against an older, incompatible WIT version (corvus:plugin@0.2.0, where
//! hooks got a borrowed `context` resource and returned `result<outcome, string>`): the host
//! refuses it and says to rebuild it against the SDK. (Under 0.2 it added `X-Previous: 0.2.0`
//! on data.)

wit_bindgen::generate!({ path: "wit", world: "plugin" });

use corvus::plugin::types::{Actions, Context, Header, Hook, Outcome, PluginInfo, Verdict};
use exports::corvus::plugin::hooks::Guest;

struct Previous;

fn next(headers: Vec<Header>) -> Result<Outcome, String> {
    Ok(Outcome {
        verdict: Verdict::Next,
        actions: Actions {
            add_headers: headers,
            set_rcpt: None,
            file_into: None,
        },
    })
}

/// Hooks it does not declare: the host never calls them.
macro_rules! not_called {
    ($($name:ident;)*) => {
        $(fn $name(_session: u64, _ctx: &Context) -> Result<Outcome, String> {
            Err("not declared".into())
        })*
    };
}

impl Guest for Previous {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "previous-version".into(),
            version: "0.2.0".into(),
            hooks: vec![Hook::Data],
        }
    }
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }
    fn on_data(_session: u64, _ctx: &Context) -> Result<Outcome, String> {
        next(vec![Header {
            name: "X-Previous".into(),
            value: "0.2.0".into(),
        }])
    }
    not_called! {
        on_connect;
        on_helo;
        on_auth;
        on_mail;
        on_rcpt;
        on_delivery;
        on_fetch;
    }
}

export!(Previous);
