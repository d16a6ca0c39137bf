//! Test plugin built against a future WIT version (corvus:plugin@0.9.0): the host refuses it.

wit_bindgen::generate!({ path: "wit", world: "plugin" });

use corvus::plugin::types::{Context, Outcome, PluginInfo};
use exports::corvus::plugin::hooks::Guest;

struct Wrong;

impl Guest for Wrong {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "wrong-version".into(),
            version: "0.9.0".into(),
            hooks: vec![],
        }
    }
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }
    fn on_connect(_session: u64, _ctx: &Context) -> Result<Outcome, String> {
        Err("unused".into())
    }
    fn on_helo(_session: u64, _ctx: &Context) -> Result<Outcome, String> {
        Err("unused".into())
    }
    fn on_auth(_session: u64, _ctx: &Context) -> Result<Outcome, String> {
        Err("unused".into())
    }
    fn on_mail(_session: u64, _ctx: &Context) -> Result<Outcome, String> {
        Err("unused".into())
    }
    fn on_rcpt(_session: u64, _ctx: &Context) -> Result<Outcome, String> {
        Err("unused".into())
    }
    fn on_data(_session: u64, _ctx: &Context) -> Result<Outcome, String> {
        Err("unused".into())
    }
    fn on_delivery(_session: u64, _ctx: &Context) -> Result<Outcome, String> {
        Err("unused".into())
    }
    fn on_fetch(_session: u64, _ctx: &Context) -> Result<Outcome, String> {
        Err("unused".into())
    }
}

export!(Wrong);
