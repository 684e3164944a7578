//! Startup configuration: reads the legacy `/etc/sysconfig/push-server-multi` (a bash fragment
//! the old init script sourced) with a small shell-style `KEY=value` reader, lets environment
//! variables override the known keys, validates everything and produces a [`Config`]
//! (docs/operations.md#configuration).
//!
//! It must never run or expand shell (`$` is taken literally and warned about), never read
//! environment variables other than the keys it honours (the shell's own `USER` would otherwise
//! change behaviour), and never print the security key. Invariant: a [`Config`] returned by
//! [`load`] is fully validated and its `security_key` is non-empty `[A-Za-z0-9]+`; the only
//! case in which the key is made up is the zero-config mode.
//!
//! By job: [`keys`] is the key table (one declaration per key), `file` the sysconfig reader,
//! `values` the parsers of single values, `validate` the step from values to a [`Config`],
//! `render` the `--check-config` output and `zero` the zero-config defaults.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::LevelFilter;

use crate::signature::Algo;

mod file;
pub mod keys;
mod render;
mod validate;
mod values;
mod zero;

pub use keys::{IGNORED_KEYS, KEYS, Key, Parse};
pub(crate) use render::mask_url;
pub use zero::generate_key;

use file::{Settings, apply_env, parse_file};
use render::mask_key;
use validate::Builder;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/sysconfig/push-server-multi";

/// Where a value came from; shown by [`Config::render`] and in error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    /// A default that applies only in the zero-config mode.
    ZeroConfig,
    /// The key made up in the zero-config mode.
    Generated,
    File {
        line: usize,
    },
    Env,
}

#[derive(Clone)]
pub struct Config {
    pub source: Option<PathBuf>,
    pub zero_config: bool,
    pub security_key: String,
    pub algo: Algo,
    pub run_dir: PathBuf,
    pub sub_sock: PathBuf,
    pub pub_sock: PathBuf,
    pub sub_listen: Option<SocketAddr>,
    pub pub_listen: Option<SocketAddr>,
    pub sock_group: Option<String>,
    pub sock_mode: u32,
    pub redis_sock: Option<PathBuf>,
    pub redis_url: Option<String>,
    pub redis_prefix: String,
    /// `REDIS_SENTINELS`: `host:port` of each Sentinel; the master is found through them
    /// (docs/redis.md, "Sentinel").
    pub redis_sentinels: Vec<String>,
    /// `REDIS_MASTER_NAME`: the name the Sentinels monitor the master under.
    pub redis_master_name: String,
    /// `REDIS_SENTINEL_PASSWORD`: sent with `AUTH` to every Sentinel, when set.
    pub redis_sentinel_password: Option<String>,
    /// `REDIS_WAIT_REPLICAS`: a publish waits (`WAIT`) for this many replicas (docs/redis.md).
    pub redis_wait_replicas: u32,
    pub paths: Paths,
    /// `HOST_ID`: the portal's host id; when set, a v5 token's `iss` must equal it
    /// (docs/v5.md).
    pub host_id: Option<String>,
    /// `JWT_LEEWAY`: how many seconds a v5 token's `iat` may lie in the future (docs/v5.md).
    pub jwt_leeway: u64,
    pub log_level: LevelFilter,
    pub limits: Limits,
    pub timings: Timings,
    pub store: StoreConfig,
    /// Warnings collected while reading, to be logged once the logger runs.
    pub warnings: Vec<String>,
    /// Origin of every rendered key (keyed by the sysconfig name).
    pub origins: BTreeMap<&'static str, Origin>,
    /// Environment keys ignored at this load because `EnvironmentFile=` copied them from the
    /// file. The environment never changes after start, so a reload must keep ignoring them,
    /// or a stale copy would override the edited file.
    pub env_copies: Vec<&'static str>,
    /// Keys of the Node.js server found in the file that set nothing here (`BASE_SUB`,
    /// `WS_PORT`…), as `KEY (line N)`; `--check-config` lists them.
    pub ignored_keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub sub: String,
    pub subws: String,
    pub publish: String,
    pub rest: String,
    /// `JSONRPCPATH`: the v5 backend endpoint on the pub listener (docs/v5.md).
    pub jsonrpc: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_payload: usize,
    pub max_conn_per_channel: usize,
    pub max_messages_per_request: usize,
    pub max_channels_per_request: usize,
    pub max_header_size: usize,
    pub outbox_limit: usize,
    pub max_connections: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timings {
    pub long_poll_timeout: Duration,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub ws_ping_interval: Duration,
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub message_ttl: u32,
    pub expiry0_grace: u32,
    pub online_ttl: u32,
    pub channel_history: usize,
    pub max_bytes: usize,
    pub state_file: PathBuf,
    /// Where the embedded store keeps its journal and, by default, the state file
    /// (docs/persistence.md).
    pub state_dir: PathBuf,
    /// The state file's location before STATE_DIR existed (`$RUN_DIR/push-server.state`),
    /// read once for migration when STATE_FILE is at its default place (docs/persistence.md).
    pub legacy_state_file: Option<PathBuf>,
    pub fsync: Fsync,
}

/// `STORE_FSYNC`: when the embedded store's journal is flushed to the disk
/// (docs/persistence.md); like Redis's `appendfsync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Before the publish is answered.
    Always,
    /// In the background, at most once a second.
    EverySec,
    /// Left to the OS.
    No,
}

impl Fsync {
    pub fn name(self) -> &'static str {
        match self {
            Fsync::Always => "always",
            Fsync::EverySec => "everysec",
            Fsync::No => "no",
        }
    }
}

/// Why the configuration was refused; the message names the key and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    pub(crate) fn new(message: String) -> ConfigError {
        ConfigError { message }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("source", &self.source)
            .field("zero_config", &self.zero_config)
            .field("security_key", &mask_key(&self.security_key))
            .field("algo", &self.algo)
            .field("run_dir", &self.run_dir)
            .field("sub_sock", &self.sub_sock)
            .field("pub_sock", &self.pub_sock)
            .field("sub_listen", &self.sub_listen)
            .field("pub_listen", &self.pub_listen)
            .field("sock_group", &self.sock_group)
            .field("sock_mode", &format_args!("{:04o}", self.sock_mode))
            .field("redis_sock", &self.redis_sock)
            .field("redis_url", &self.redis_url.as_deref().map(mask_url))
            .field("redis_prefix", &self.redis_prefix)
            .field("redis_sentinels", &self.redis_sentinels)
            .field("redis_master_name", &self.redis_master_name)
            .field(
                "redis_sentinel_password",
                &self.redis_sentinel_password.as_ref().map(|_| "***"),
            )
            .field("redis_wait_replicas", &self.redis_wait_replicas)
            .field("paths", &self.paths)
            .field("log_level", &self.log_level)
            .field("limits", &self.limits)
            .field("timings", &self.timings)
            .field("store", &self.store)
            .field("warnings", &self.warnings)
            .finish()
    }
}

/// `path`: Some(p) = `--config p` (a missing file is an error); None = [`DEFAULT_CONFIG_PATH`]
/// if it exists, else no file. `env` looks up process environment variables.
pub fn load(
    path: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    load_with_default(path, Path::new(DEFAULT_CONFIG_PATH), env)
}

/// [`load`] with the default path as a parameter, so tests need not touch `/etc`.
pub fn load_with_default(
    path: Option<&Path>,
    default_path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let file = match path {
        Some(p) => Some((p.to_path_buf(), read_file(p)?)),
        None => match std::fs::read(default_path) {
            Ok(bytes) => Some((default_path.to_path_buf(), bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(ConfigError::new(format!(
                    "cannot read {}: {e}",
                    default_path.display()
                )));
            }
        },
    };
    from_text(
        file.as_ref()
            .map(|(p, bytes)| (p.as_path(), bytes.as_slice())),
        env,
    )
}

/// What [`load`] makes of a config file at `path` whose content is `bytes`, without reading
/// any file: the pure text-to-[`Config`] step (the fuzz target `config` drives it).
pub fn parse_text(
    path: &Path,
    bytes: &[u8],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    from_text(Some((path, bytes)), env)
}

/// The file's content (if there is a file) and the environment, validated into a [`Config`].
fn from_text(
    file: Option<(&Path, &[u8])>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let mut settings = Settings::default();
    let mut warnings = Vec::new();
    if let Some((p, bytes)) = file {
        parse_file(
            p,
            &String::from_utf8_lossy(bytes),
            &mut settings,
            &mut warnings,
        );
    }
    if !settings.errors.is_empty() {
        return Err(ConfigError::new(settings.errors.join("\n")));
    }
    apply_env(env, &mut settings);
    let env_copies = settings.copies.clone();
    let ignored = std::mem::take(&mut settings.ignored);
    let zero_config = zero::applies(file.is_some(), env);
    Builder {
        settings,
        source: file.map(|(p, _)| p.to_path_buf()),
        origins: BTreeMap::new(),
        warnings,
    }
    .build(zero_config)
    .map(|mut c| {
        c.env_copies = env_copies;
        c.ignored_keys = ignored;
        c
    })
}

fn read_file(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| {
            ConfigError::new(format!("cannot read config file {}: {e}", path.display()))
        })?;
    Ok(bytes)
}

#[cfg(test)]
mod tests;
