//! Test plugin built against an older, incompatible WIT version (corvus:plugin@0.1.0, where
//! the context was a record): the host refuses it and says to rebuild it against the SDK.
//! (Under 0.1 it added `X-Previous: 0.1.0` on data.)

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
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {
        $(fn $name($($arg: $ty),*) -> Result<Outcome, String> {
            $(let _ = $arg;)*
            Err("not declared".into())
        })*
    };
}

impl Guest for Previous {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "previous-version".into(),
            version: "0.1.0".into(),
            hooks: vec![Hook::Data],
        }
    }
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }
    fn on_data(_ctx: Context, _message: Vec<u8>) -> Result<Outcome, String> {
        next(vec![Header {
            name: "X-Previous".into(),
            value: "0.1.0".into(),
        }])
    }
    not_called! {
        on_connect(ctx: Context);
        on_helo(ctx: Context);
        on_auth(ctx: Context);
        on_mail(ctx: Context);
        on_rcpt(ctx: Context);
        on_delivery(ctx: Context, message: Vec<u8>);
        on_fetch(ctx: Context);
    }
}

export!(Previous);
