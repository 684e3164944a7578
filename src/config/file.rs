//! The file reader: the sysconfig file as the sourced bash fragment it was, read line by line
//! without running a shell, and the environment variables named like the honoured keys
//! (docs/operations.md#configuration).

use std::collections::HashMap;
use std::path::Path;

use super::Origin;
use super::keys::{KEYS, known_key};

#[derive(Default)]
pub(super) struct Settings {
    pub(super) values: HashMap<&'static str, (String, Origin)>,
    /// Right-hand sides exactly as written in the file, to recognise environment values that
    /// systemd's `EnvironmentFile=` derived from the same file (comments and all).
    pub(super) raw: HashMap<&'static str, Vec<String>>,
    /// Environment keys ignored because they are such copies.
    pub(super) copies: Vec<&'static str>,
    /// Lines the shell could not source either (an unterminated quote): the load fails.
    pub(super) errors: Vec<String>,
    /// Node-server keys found in the file, which set nothing here (`KEY (line N)`).
    pub(super) ignored: Vec<String>,
}

pub(super) fn parse_file(
    path: &Path,
    text: &str,
    settings: &mut Settings,
    warnings: &mut Vec<String>,
) {
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        let at = || format!("{} line {line_no}", path.display());
        let assignment = match parse_line(line) {
            Line::Blank => continue,
            Line::Invalid(why) if why.starts_with("unterminated") => {
                settings.errors.push(format!(
                    "{}: {why} (the shell could not source this file either)",
                    at()
                ));
                continue;
            }
            Line::Invalid(why) => {
                warnings.push(format!("{}: {why}; line ignored", at()));
                continue;
            }
            Line::Assign(a) => a,
        };
        let Some((key, honoured)) = known_key(assignment.key) else {
            warnings.push(format!("{}: unknown key {} ignored", at(), assignment.key));
            continue;
        };
        if !honoured {
            settings.ignored.push(format!("{key} (line {line_no})"));
            continue;
        }
        if assignment.dollar {
            warnings.push(format!(
                "{}: {key} contains `$` or a backquote; variables are not expanded, the value is taken literally",
                at()
            ));
        }
        if assignment.trailing {
            warnings.push(format!(
                "{}: text after the value of {key} ignored (quote values that contain spaces)",
                at()
            ));
        }
        settings
            .values
            .insert(key, (assignment.value, Origin::File { line: line_no }));
        settings
            .raw
            .entry(key)
            .or_default()
            .push(assignment.raw.to_string());
    }
}

pub(super) fn apply_env(env: &dyn Fn(&str) -> Option<String>, settings: &mut Settings) {
    for key in KEYS.iter().map(|k| k.name) {
        let Some(value) = env(key) else { continue };
        let from_same_file = settings
            .raw
            .get(key)
            .is_some_and(|raws| raws.iter().any(|raw| same_as_raw(&value, raw)));
        if from_same_file {
            settings.copies.push(key);
        } else {
            settings.values.insert(key, (value, Origin::Env));
        }
    }
}

/// True if `value` is what `EnvironmentFile=` makes of the right-hand side `raw`: the text up to
/// the end of the line, with one layer of quotes removed when they enclose all of it.
pub(super) fn same_as_raw(value: &str, raw: &str) -> bool {
    let raw = raw.trim();
    let unquoted = [b'"', b'\''].iter().find_map(|&q| {
        let b = raw.as_bytes();
        (b.len() >= 2 && b[0] == q && b[b.len() - 1] == q).then(|| &raw[1..raw.len() - 1])
    });
    value.trim() == raw || unquoted == Some(value)
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Line<'a> {
    Blank,
    Invalid(&'static str),
    Assign(Assignment<'a>),
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct Assignment<'a> {
    pub(super) key: &'a str,
    pub(super) value: String,
    pub(super) raw: &'a str,
    /// `$` or a backquote outside single quotes: the shell would have expanded it.
    pub(super) dollar: bool,
    /// Non-comment text after the value (`KEY=a b`): the shell would have run `b`.
    pub(super) trailing: bool,
}

/// One line of a sourced bash fragment, without running any shell.
pub(super) fn parse_line(line: &str) -> Line<'_> {
    let s = line.strip_suffix('\r').unwrap_or(line).trim_start();
    if s.is_empty() || s.starts_with('#') {
        return Line::Blank;
    }
    let s = match s.strip_prefix("export") {
        Some(rest) if rest.starts_with([' ', '\t']) => rest.trim_start(),
        _ => s,
    };
    let Some((key, raw)) = s.split_once('=') else {
        return Line::Invalid("not a KEY=value assignment");
    };
    let mut chars = key.chars();
    let valid_key = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid_key {
        return Line::Invalid("not a KEY=value assignment");
    }
    match parse_value(raw) {
        Ok((value, dollar, trailing)) => Line::Assign(Assignment {
            key,
            value,
            raw,
            dollar,
            trailing,
        }),
        Err(why) => Line::Invalid(why),
    }
}

/// Reads one shell word: quotes are removed, `#` after whitespace starts a comment.
pub(super) fn parse_value(raw: &str) -> Result<(String, bool, bool), &'static str> {
    let mut value = String::new();
    let mut dollar = false;
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                let rest: String = chars.collect();
                let rest = rest.trim_start();
                let trailing = !rest.is_empty() && !rest.starts_with('#');
                return Ok((value, dollar, trailing));
            }
            '\'' => loop {
                match chars.next() {
                    None => return Err("unterminated single quote"),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            },
            '"' => loop {
                match chars.next() {
                    None => return Err("unterminated double quote"),
                    Some('"') => break,
                    Some('\\') => match chars.peek() {
                        Some(&e @ ('"' | '\\' | '$' | '`')) => {
                            value.push(e);
                            chars.next();
                        }
                        _ => value.push('\\'),
                    },
                    Some(c) => {
                        dollar |= c == '$' || c == '`';
                        value.push(c);
                    }
                }
            },
            '\\' => {
                if let Some(e) = chars.next() {
                    value.push(e);
                }
            }
            c => {
                dollar |= c == '$' || c == '`';
                value.push(c);
            }
        }
    }
    Ok((value, dollar, false))
}
