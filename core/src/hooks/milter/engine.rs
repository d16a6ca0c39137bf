//! The milter engine in the hook chain (stub: the session driver comes next).

use super::super::filter_config::MilterSettings;
use super::super::{Actions, HookCtx, HookEngine, HookError, HookPoint, OnError, Verdict};
use crate::config::HookEntry;

/// A milter in the hook chain.
pub struct MilterHook {
    name: String,
    settings: MilterSettings,
    on_error: OnError,
}

impl MilterHook {
    /// The engine of a `milter = ADDRESS` entry; `hostname` is the server's name (macro `j`).
    pub fn load(entry: &HookEntry, addr: &str, hostname: &str) -> Result<Self, String> {
        let _ = hostname;
        let settings = MilterSettings::from_entry(addr, &entry.config)?;
        Ok(MilterHook {
            name: format!("milter {}", settings.addr),
            settings,
            on_error: entry.on_error,
        })
    }
}

impl HookEngine for MilterHook {
    fn name(&self) -> &str {
        &self.name
    }

    fn handles(&self, _point: HookPoint) -> bool {
        false
    }

    fn call(&self, _ctx: &HookCtx, _actions: &mut Actions) -> Result<Verdict, HookError> {
        let _ = &self.settings;
        Err(HookError("milter: not implemented".into()))
    }

    fn on_error(&self) -> OnError {
        self.on_error
    }
}
