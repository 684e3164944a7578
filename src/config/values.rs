//! Parsers of single values: each takes the text of one key and returns its typed value or why
//! it is refused (the caller adds the key and where the value came from). The key table
//! (keys.rs) names which parser reads each key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Largest value for any timing or TTL: keeps `Instant + Duration` far from overflow.
pub(super) const MAX_SECONDS: u64 = 86_400 * 7;

/// `sun_path` holds 108 bytes including the terminating NUL.
pub(super) const MAX_SOCKET_PATH: usize = 107;

/// One of `words`, case-insensitive; the refusal lists them ("expected a, b or c").
pub(super) fn choice(v: &str, words: &'static [&'static str]) -> Result<&'static str, String> {
    let lower = v.to_ascii_lowercase();
    if let Some(word) = words.iter().find(|w| **w == lower) {
        return Ok(word);
    }
    let listed = match words.split_last() {
        Some((last, [])) => (*last).to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    };
    Err(format!("expected {listed}"))
}

/// `SECURITY_KEY`: non-empty letters and digits.
pub(super) fn is_security_key(v: &str) -> bool {
    !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// `REDIS_URL`: `redis://…` or `unix://…`.
pub(super) fn is_redis_url(v: &str) -> bool {
    v.starts_with("redis://") || v.starts_with("unix://")
}

/// A whole number in `min..=max`; the refusal names the range.
pub(super) fn count(v: &str, min: u64, max: u64) -> Result<u64, String> {
    match integer(v) {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ if max >= u32::MAX.into() => Err(format!("expected a whole number >= {min}")),
        _ => Err(format!("expected a whole number from {min} to {max}")),
    }
}

/// A portal host id as PHP makes it: letters and digits (lowercase in practice), at most 64.
pub(super) fn host_id(v: &str) -> Result<String, String> {
    if v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(v.to_owned())
    } else {
        Err("expected the portal's host id (letters and digits, at most 64)".into())
    }
}

pub(super) fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub(super) fn integer(v: &str) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// Seconds with an optional decimal fraction, parsed exactly (no float rounding).
pub(super) fn seconds(v: &str) -> Result<Duration, String> {
    let why = || format!("expected seconds > 0 (decimals allowed, at most {MAX_SECONDS})");
    let (whole, frac) = v.split_once('.').unwrap_or((v, ""));
    let whole = if whole.is_empty() && !frac.is_empty() {
        0
    } else {
        integer(whole).ok_or_else(why)?
    };
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) || v.ends_with('.') {
        return Err(why());
    }
    let nanos: u32 = format!("{frac:0<9}").parse().map_err(|_| why())?;
    let d = Duration::new(whole, nanos);
    if d.is_zero() || d > secs(MAX_SECONDS) {
        return Err(why());
    }
    Ok(d)
}

pub(super) fn absolute_path(v: &str) -> Result<PathBuf, String> {
    if v.starts_with('/') {
        Ok(PathBuf::from(v))
    } else {
        Err("expected an absolute path".into())
    }
}

pub(super) fn socket_path(v: &str) -> Result<PathBuf, String> {
    if v.len() > MAX_SOCKET_PATH {
        return Err(format!(
            "a Unix socket path may have at most {MAX_SOCKET_PATH} bytes"
        ));
    }
    absolute_path(v)
}

pub(super) fn socket_addr(v: &str) -> Result<SocketAddr, String> {
    let why =
        || "expected host:port with an IP address, e.g. 127.0.0.1:8010 or [::1]:8010".to_string();
    let addr = match v.strip_prefix("localhost:") {
        Some(port) => format!("127.0.0.1:{port}").parse::<SocketAddr>(),
        None => v.parse(),
    }
    .map_err(|_| why())?;
    if addr.port() == 0 {
        return Err("port 0 is not allowed".into());
    }
    Ok(addr)
}

pub(super) fn group_name(v: &str) -> Result<String, String> {
    let ok = v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'$'));
    if ok {
        Ok(v.to_string())
    } else {
        Err("expected a group name or numeric gid".into())
    }
}

pub(super) fn parse_mode(v: &str) -> Result<u32, String> {
    let digits = v.strip_prefix("0o").unwrap_or(v);
    let why = || "expected an octal mode such as 0660 (at most 0777)".to_string();
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return Err(why());
    }
    let mode = u32::from_str_radix(digits, 8).map_err(|_| why())?;
    if mode > 0o777 {
        return Err(why());
    }
    Ok(mode)
}

pub(super) fn redis_prefix(v: &str) -> Result<String, String> {
    if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err("expected no spaces or control characters".into())
    } else {
        Ok(v.to_string())
    }
}

/// `host:port,host:port,…` (spaces around the commas allowed).
pub(super) fn sentinel_list(v: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let ok = item.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && !host.contains(char::is_whitespace)
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            return Err(format!("expected host:port[,host:port…], not {item:?}"));
        }
        out.push(item.to_string());
    }
    Ok(out)
}

pub(super) fn url_path(v: &str) -> Result<String, String> {
    let visible = v
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#');
    if v.starts_with('/') && visible {
        Ok(v.to_string())
    } else {
        Err("expected a URL path starting with '/', such as /bitrix/sub/".into())
    }
}
