//! Loading: the TOML file and `CORVUS_` environment overrides through figment, relative
//! hook paths, and errors as one line each naming the source and the key.

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};

use super::*;

impl Config {
    /// Load from `file` (or the embedded default when `None`), then apply `CORVUS_`
    /// environment overrides (`__` separates nesting levels: `CORVUS_LISTEN__SMTP`).
    /// Returns every problem found, one line each.
    pub fn load(file: Option<&Path>) -> Result<Config, Vec<String>> {
        let figment = Self::figment(file)?;
        let mut config: Config = figment.extract().map_err(|e| {
            e.into_iter()
                .map(|e| describe_figment_error(&e, file))
                .collect::<Vec<_>>()
        })?;
        if let Some(file) = file {
            let dir = file.parent().unwrap_or(Path::new(""));
            for h in &mut config.hooks {
                if h.script.is_relative() && !h.script.as_os_str().is_empty() {
                    h.script = dir.join(&h.script);
                }
                if let Some(p) = &mut h.plugin
                    && p.is_relative()
                {
                    *p = dir.join(&*p);
                }
            }
            config.source = Some(file.to_path_buf());
        }
        let problems = config.check();
        if problems.is_empty() {
            Ok(config)
        } else {
            // "file: key: what is wrong", like the parse errors above.
            Err(match file {
                Some(f) => problems
                    .into_iter()
                    .map(|p| format!("{}: {p}", f.display()))
                    .collect(),
                None => problems,
            })
        }
    }

    fn figment(file: Option<&Path>) -> Result<Figment, Vec<String>> {
        let base = match file {
            Some(path) => {
                if !path.is_file() {
                    return Err(vec![format!(
                        "{}: no such config file (run without -c for the embedded default, or copy examples/corvus.toml)",
                        path.display()
                    )]);
                }
                Figment::from(Serialized::defaults(Config::default())).merge(Toml::file(path))
            }
            None => Figment::from(Serialized::defaults(Config::embedded())),
        };
        // Only variables whose first segment is a top-level key are settings: CORVUS_CONFIG
        // (the CLI's -c) or a tool's CORVUS_BIN are not. Inside a table, unknown keys are
        // still rejected (CORVUS_SMTP__VRYF is an error).
        let known = |k: &figment::value::UncasedStr| {
            let top = k
                .as_str()
                .split("__")
                .next()
                .unwrap_or("")
                .to_ascii_lowercase();
            TOP_LEVEL_KEYS.contains(&top.as_str())
        };
        Ok(base.merge(Env::prefixed("CORVUS_").filter(known).split("__")))
    }
}

/// Turn a figment error into one line naming the source, the key and the fix.
fn describe_figment_error(e: &figment::Error, file: Option<&Path>) -> String {
    let source = match e.metadata.as_ref() {
        Some(m) if m.name.contains("environment") => "environment".to_string(),
        Some(m) => m
            .source
            .as_ref()
            .map(|s| s.to_string())
            .or_else(|| file.map(|f| f.display().to_string()))
            .unwrap_or_else(|| m.name.to_string()),
        None => file
            .map(|f| f.display().to_string())
            .unwrap_or_else(|| "config".into()),
    };
    let key = if e.path.is_empty() {
        String::new()
    } else {
        format!("{}: ", e.path.join("."))
    };
    let hint = match &e.kind {
        figment::error::Kind::UnknownField(..) => {
            " (remove it or fix its spelling; examples/corvus.toml lists every key)"
        }
        _ => "",
    };
    format!("{source}: {key}{}{hint}", e.kind)
}
