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
        let mut moves = Moves {
            figment: &figment,
            file,
            warnings: Vec::new(),
            errors: Vec::new(),
        };
        moves.limits_from_smtp(&mut config);
        let Moves {
            warnings,
            mut errors,
            ..
        } = moves;
        let problems = config.check();
        if problems.is_empty() && errors.is_empty() {
            config.warnings = warnings;
            Ok(config)
        } else {
            // "file: key: what is wrong", like the parse errors above.
            errors.extend(problems.into_iter().map(|p| match file {
                Some(f) => format!("{}: {p}", f.display()),
                None => p,
            }));
            Err(errors)
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

/// Keys that moved to another table: the old one is still read, with a warning line; set
/// together with its new key to another value, it is an error. Lines name the source (the
/// file or the environment), the old key and the new one.
struct Moves<'a> {
    figment: &'a Figment,
    file: Option<&'a Path>,
    warnings: Vec<String>,
    errors: Vec<String>,
}

impl Moves<'_> {
    /// The `[smtp]` keys that hold for every listener moved to `[limits]`.
    fn limits_from_smtp(&mut self, config: &mut Config) {
        let (smtp, limits) = (&mut config.smtp, &mut config.limits);
        // The key's name is the field's name in both tables.
        macro_rules! moved {
            ($($key:ident),*) => {$(
                self.moved("smtp", "limits", stringify!($key), smtp.$key.take(), &mut limits.$key);
            )*};
        }
        moved!(
            max_connections,
            max_connections_per_ip,
            max_auth_failures,
            max_auth_failures_per_ip,
            auth_fail_window
        );
    }

    /// `from.key`, if set, moves into `to.key` (`new`).
    fn moved<T: PartialEq>(
        &mut self,
        from: &str,
        to: &str,
        key: &str,
        old: Option<T>,
        new: &mut T,
    ) {
        let Some(old) = old else { return };
        let (old_key, new_key) = (format!("{from}.{key}"), format!("{to}.{key}"));
        let source = self.set_by(&old_key).unwrap_or_else(|| "config".into());
        if self.set_by(&new_key).is_some() {
            if *new != old {
                self.errors.push(format!(
                    "{source}: {old_key}: deprecated, and {new_key} is set to another value; keep only {new_key}"
                ));
                return;
            }
        } else {
            *new = old;
        }
        self.warnings.push(format!(
            "{source}: {old_key}: deprecated; write {new_key} instead ([{to}] holds the limits of every listener)"
        ));
    }

    /// Where `key` was set: the file or the environment; `None` when only a default holds
    /// it.
    fn set_by(&self, key: &str) -> Option<String> {
        let m = self.figment.find_metadata(key)?;
        if m.name.contains("environment") {
            return Some("environment".into());
        }
        match (&m.source, self.file) {
            (Some(figment::Source::File(_)), Some(f)) => Some(f.display().to_string()),
            (Some(figment::Source::File(p)), None) => Some(p.display().to_string()),
            _ => None,
        }
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
