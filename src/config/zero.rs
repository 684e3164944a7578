//! The zero-config mode: no config file and none of the keys that show an operator at work in
//! the environment. The key is made up, TCP listeners are added and the store lives under
//! RUN_DIR, so a first try works without root (docs/operations.md, "Zero-config").

use std::io::Read;
use std::path::{Path, PathBuf};

/// Any of these in the environment means an operator configured the server on purpose, so a
/// made-up key would only hide a mistake.
pub(super) const BLOCKERS: &[&str] =
    &["SECURITY_KEY", "REDIS_SOCK", "REDIS_URL", "REDIS_SENTINELS"];

/// `SUB_LISTEN` in the zero-config mode.
pub(super) const SUB_LISTEN: &str = "127.0.0.1:8010";
/// `PUB_LISTEN` in the zero-config mode.
pub(super) const PUB_LISTEN: &str = "127.0.0.1:9010";

/// Whether a load is in the zero-config mode.
pub(super) fn applies(has_file: bool, env: &dyn Fn(&str) -> Option<String>) -> bool {
    !has_file && BLOCKERS.iter().all(|k| env(k).is_none())
}

/// `STATE_DIR` in the zero-config mode. Otherwise it is /var/lib/push-server, the unit's
/// `StateDirectory=` (docs/persistence.md); this mode must work without root.
pub(super) fn state_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("state")
}

/// 64 random `[A-Za-z0-9]` characters from `/dev/urandom`.
pub fn generate_key() -> std::io::Result<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    // 248 = 4 * 62: bytes at or above it are rejected so every character is equally likely.
    const LIMIT: u8 = 248;
    let mut urandom = std::fs::File::open("/dev/urandom")?;
    let mut key = String::with_capacity(64);
    let mut buf = [0u8; 96];
    while key.len() < 64 {
        urandom.read_exact(&mut buf)?;
        for &b in buf.iter().filter(|&&b| b < LIMIT) {
            if key.len() == 64 {
                break;
            }
            key.push(char::from(ALPHABET[usize::from(b % 62)]));
        }
    }
    Ok(key)
}
