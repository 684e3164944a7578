//! Rendering: the effective configuration as `--check-config` and the startup log print it,
//! one `KEY=value  # source` line per key in the key table's order, secrets masked
//! (docs/operations.md, "Checking the configuration").

use std::fmt;
use std::path::Path;
use std::time::Duration;

use super::keys::KEYS;
use super::{Config, Origin};

pub(super) fn mask_key(key: &str) -> String {
    let head: String = key.chars().take(2).collect();
    format!("{head}***({} chars)", key.len())
}

/// Hides the password of `redis://user:password@host`.
pub(crate) fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

/// Quotes a value so that the rendered line reads back the same through the file parser.
pub(super) fn quote(v: &str) -> String {
    let plain = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_./:@%+=,-[]".contains(&b));
    if plain || v.is_empty() {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\'', r"'\''"))
    }
}

pub(super) fn fmt_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        return d.as_secs().to_string();
    }
    let s = format!("{}.{:09}", d.as_secs(), d.subsec_nanos());
    s.trim_end_matches('0').to_string()
}

pub(super) fn opt_display<T: fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map(T::to_string).unwrap_or_default()
}

impl Config {
    /// Effective configuration, one `KEY=value  # source` line per key, the key masked; for
    /// `--check-config` and the startup log.
    pub fn render(&self) -> String {
        let mut out = match &self.source {
            Some(p) => format!("# config file: {}\n", p.display()),
            None => "# config file: none\n".to_string(),
        };
        if self.zero_config {
            out.push_str("# zero-config mode: no config file, no SECURITY_KEY/REDIS_SOCK/REDIS_URL in the environment\n");
        }
        for (key, render) in KEYS.iter().filter_map(|k| Some((k.name, k.render?))) {
            let value = render(self);
            let origin = self.origins.get(key).unwrap_or(&Origin::Default);
            // The masked key is not valid input anyway; everything else is quoted to read back.
            let value = if key == "SECURITY_KEY" {
                value
            } else {
                quote(&value)
            };
            out.push_str(&format!(
                "{key}={value}  # {}\n",
                describe(origin, self.source.as_deref())
            ));
        }
        out
    }
}

/// Where a value came from, as messages and `--check-config` name it.
pub(super) fn describe(origin: &Origin, source: Option<&Path>) -> String {
    match (origin, source) {
        (Origin::File { line }, Some(p)) => format!("{} line {line}", p.display()),
        (Origin::File { line }, None) => format!("config file line {line}"),
        (Origin::Env, _) => "the environment".into(),
        (Origin::Default, _) => "default".into(),
        (Origin::ZeroConfig, _) => "zero-config default".into(),
        (Origin::Generated, _) => "generated (zero-config mode)".into(),
    }
}
