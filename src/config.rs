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

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::LevelFilter;

use crate::signature::Algo;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/sysconfig/push-server-multi";

/// Legacy keys that keep their meaning; read from the file and the environment.
const LEGACY_KEYS: &[&str] = &[
    "SECURITY_KEY",
    "GROUP",
    "RUN_DIR",
    "REDIS_SOCK",
    "PUBPATH",
    "SUBPATH",
    "SUBWSPATH",
    "RESTPATH",
];

/// The replacement's own keys; read from the file and the environment.
const NEW_KEYS: &[&str] = &[
    "SECURITY_ALGO",
    "SUB_SOCK",
    "PUB_SOCK",
    "SUB_LISTEN",
    "PUB_LISTEN",
    "SOCK_GROUP",
    "SOCK_MODE",
    "REDIS_URL",
    "REDIS_PREFIX",
    "REDIS_SENTINELS",
    "REDIS_MASTER_NAME",
    "REDIS_SENTINEL_PASSWORD",
    "REDIS_WAIT_REPLICAS",
    "LOG_LEVEL",
    "MAX_PAYLOAD",
    "MAX_CONN_PER_CHANNEL",
    "MAX_MESSAGES_PER_REQUEST",
    "MAX_CHANNELS_PER_REQUEST",
    "MAX_HEADER_SIZE",
    "OUTBOX_LIMIT",
    "MAX_CONNECTIONS",
    "LONG_POLL_TIMEOUT",
    "HEADER_TIMEOUT",
    "KEEPALIVE_TIMEOUT",
    "WS_PING_INTERVAL",
    "SHUTDOWN_TIMEOUT",
    "MESSAGE_TTL",
    "EXPIRY0_GRACE",
    "ONLINE_TTL",
    "CHANNEL_HISTORY",
    "STORE_MAX_BYTES",
    "STATE_FILE",
    "STATE_DIR",
    "STORE_FSYNC",
    "JSONRPCPATH",
    "HOST_ID",
    "JWT_LEEWAY",
];

/// Legacy keys that shipped files carry but that mean nothing here. Accepted silently in the
/// file and never read from the environment (`USER` is set by every login shell). `IP_LIST`
/// chose the clients whose requests the Node.js server logged to debug files; `LOG_LEVEL=debug`
/// logs every request with its client address here. `SEND_TIMEOUT` was this server's own key,
/// never used: slow consumers are bounded by `OUTBOX_LIMIT` and the ping rule
/// (docs/operations.md, "Failure behaviour").
const IGNORED_KEYS: &[&str] = &[
    "USER",
    "VAR_DIR",
    "HG_DIR",
    "CFG_DIR",
    "TMPL_SUB",
    "TMPL_PUB",
    "PID_SUB",
    "PID_PUB",
    "WS_HOST",
    "WS_PORT",
    "BASE_SUB",
    "BASE_PUB",
    "ID_SUB",
    "ID_PUB",
    "MULTISERVICE",
    "NOFILE_LIMITS",
    "STACK_LIMITS",
    "MAX_MEMORY",
    "DEBUG",
    "IP_LIST",
    "SEND_TIMEOUT",
];

/// Any of these in the environment means an operator configured the server on purpose, so a
/// made-up key would only hide a mistake.
const ZERO_CONFIG_BLOCKERS: &[&str] =
    &["SECURITY_KEY", "REDIS_SOCK", "REDIS_URL", "REDIS_SENTINELS"];

const ZERO_CONFIG_SUB_LISTEN: &str = "127.0.0.1:8010";
const ZERO_CONFIG_PUB_LISTEN: &str = "127.0.0.1:9010";

/// Largest value for any timing or TTL: keeps `Instant + Duration` far from overflow.
const MAX_SECONDS: u64 = 86_400 * 7;

/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

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
    fn new(message: String) -> ConfigError {
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
    let zero_config = file.is_none() && ZERO_CONFIG_BLOCKERS.iter().all(|k| env(k).is_none());
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

// ---------------------------------------------------------------------------------------------
// Reading the file and the environment

#[derive(Default)]
struct Settings {
    values: HashMap<&'static str, (String, Origin)>,
    /// Right-hand sides exactly as written in the file, to recognise environment values that
    /// systemd's `EnvironmentFile=` derived from the same file (comments and all).
    raw: HashMap<&'static str, Vec<String>>,
    /// Environment keys ignored because they are such copies.
    copies: Vec<&'static str>,
    /// Lines the shell could not source either (an unterminated quote): the load fails.
    errors: Vec<String>,
    /// Node-server keys found in the file, which set nothing here (`KEY (line N)`).
    ignored: Vec<String>,
}

fn known_key(key: &str) -> Option<(&'static str, bool)> {
    let honoured = LEGACY_KEYS.iter().chain(NEW_KEYS).find(|k| **k == key);
    if let Some(k) = honoured {
        return Some((k, true));
    }
    IGNORED_KEYS
        .iter()
        .find(|k| **k == key)
        .map(|k| (*k, false))
}

fn parse_file(path: &Path, text: &str, settings: &mut Settings, warnings: &mut Vec<String>) {
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

fn apply_env(env: &dyn Fn(&str) -> Option<String>, settings: &mut Settings) {
    for &key in LEGACY_KEYS.iter().chain(NEW_KEYS) {
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
fn same_as_raw(value: &str, raw: &str) -> bool {
    let raw = raw.trim();
    let unquoted = [b'"', b'\''].iter().find_map(|&q| {
        let b = raw.as_bytes();
        (b.len() >= 2 && b[0] == q && b[b.len() - 1] == q).then(|| &raw[1..raw.len() - 1])
    });
    value.trim() == raw || unquoted == Some(value)
}

#[derive(Debug, PartialEq, Eq)]
enum Line<'a> {
    Blank,
    Invalid(&'static str),
    Assign(Assignment<'a>),
}

#[derive(Debug, PartialEq, Eq)]
struct Assignment<'a> {
    key: &'a str,
    value: String,
    raw: &'a str,
    /// `$` or a backquote outside single quotes: the shell would have expanded it.
    dollar: bool,
    /// Non-comment text after the value (`KEY=a b`): the shell would have run `b`.
    trailing: bool,
}

/// One line of a sourced bash fragment, without running any shell.
fn parse_line(line: &str) -> Line<'_> {
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
fn parse_value(raw: &str) -> Result<(String, bool, bool), &'static str> {
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

// ---------------------------------------------------------------------------------------------
// Validation

struct Builder {
    settings: Settings,
    source: Option<PathBuf>,
    origins: BTreeMap<&'static str, Origin>,
    warnings: Vec<String>,
}

type Check<T> = fn(&str) -> Result<T, String>;

impl Builder {
    fn build(mut self, zero_config: bool) -> Result<Config, ConfigError> {
        let security_key = self.security_key(zero_config)?;
        let algo = self.parse("SECURITY_ALGO", Algo::Sha1, |v| {
            Algo::parse(&v.to_ascii_lowercase()).ok_or_else(|| "expected sha1 or sha256".into())
        })?;
        let run_dir = self.parse("RUN_DIR", PathBuf::from("/tmp/push-server"), absolute_path)?;
        let sub_sock = self.parse("SUB_SOCK", run_dir.join("sub.sock"), socket_path)?;
        let pub_sock = self.parse("PUB_SOCK", run_dir.join("pub.sock"), socket_path)?;
        if sub_sock == pub_sock {
            return Err(self.conflict("SUB_SOCK and PUB_SOCK name the same file"));
        }
        // A set socket path was checked above; a default one under RUN_DIR is checked here.
        for (key, sock) in [("SUB_SOCK", &sub_sock), ("PUB_SOCK", &pub_sock)] {
            if sock.as_os_str().len() > MAX_SOCKET_PATH {
                let origin = self
                    .origins
                    .get("RUN_DIR")
                    .cloned()
                    .unwrap_or(Origin::Default);
                let why = format!(
                    "the default {key} {} would be longer than the {MAX_SOCKET_PATH} bytes a Unix socket path may have; shorten RUN_DIR or set {key}",
                    sock.display()
                );
                return Err(self.invalid("RUN_DIR", &run_dir.display().to_string(), &origin, &why));
            }
        }
        let sub_listen = self.listen("SUB_LISTEN", zero_config, ZERO_CONFIG_SUB_LISTEN)?;
        let pub_listen = self.listen("PUB_LISTEN", zero_config, ZERO_CONFIG_PUB_LISTEN)?;
        if sub_listen.is_some() && sub_listen == pub_listen {
            return Err(self.conflict("SUB_LISTEN and PUB_LISTEN name the same address"));
        }
        if let Some(addr) = pub_listen.filter(|a| !a.ip().is_loopback()) {
            self.warnings.push(format!(
                "PUB_LISTEN={addr} is not a loopback address: publishing carries no credential, firewall it"
            ));
        }
        let sock_group = self.sock_group()?;
        let sock_mode = self.parse("SOCK_MODE", 0o660, parse_mode)?;
        if sock_mode & 0o006 != 0 {
            self.warnings.push(format!(
                "SOCK_MODE={sock_mode:04o} lets every local user connect, including to the publish socket"
            ));
        }
        let redis_sock = self.parse_opt("REDIS_SOCK", absolute_path)?;
        let redis_url = self.redis_url()?;
        if redis_sock.is_some() && redis_url.is_some() {
            return Err(self.conflict("REDIS_SOCK and REDIS_URL are both set; keep one"));
        }
        let redis_prefix = self.parse("REDIS_PREFIX", String::new(), redis_prefix)?;
        let redis_sentinels = self.parse("REDIS_SENTINELS", Vec::new(), sentinel_list)?;
        let redis_master_name =
            self.parse("REDIS_MASTER_NAME", String::new(), self::redis_prefix)?;
        let redis_sentinel_password = self
            .take("REDIS_SENTINEL_PASSWORD")
            .map(|(v, _)| v)
            .filter(|v| !v.is_empty());
        let redis_wait_replicas = self.count("REDIS_WAIT_REPLICAS", 0, 0, 64)?;
        if !redis_sentinels.is_empty() {
            if redis_sock.is_some() || redis_url.is_some() {
                return Err(self.conflict(
                    "REDIS_SENTINELS is set together with REDIS_SOCK or REDIS_URL; keep one",
                ));
            }
            if redis_master_name.is_empty() {
                return Err(self.conflict("REDIS_SENTINELS is set but REDIS_MASTER_NAME is not"));
            }
        } else {
            for (key, set) in [
                ("REDIS_MASTER_NAME", !redis_master_name.is_empty()),
                ("REDIS_SENTINEL_PASSWORD", redis_sentinel_password.is_some()),
            ] {
                if set {
                    self.warnings
                        .push(format!("{key} is set but REDIS_SENTINELS is not: ignored"));
                }
            }
        }
        if redis_wait_replicas > 0
            && redis_sock.is_none()
            && redis_url.is_none()
            && redis_sentinels.is_empty()
        {
            self.warnings.push(
                "REDIS_WAIT_REPLICAS is set but no Redis store is configured: ignored".into(),
            );
        }
        let paths = Paths {
            sub: self.parse("SUBPATH", "/bitrix/sub/".into(), url_path)?,
            subws: self.parse("SUBWSPATH", "/bitrix/subws/".into(), url_path)?,
            publish: self.parse("PUBPATH", "/bitrix/pub/".into(), url_path)?,
            rest: self.parse("RESTPATH", "/bitrix/rest/".into(), url_path)?,
            jsonrpc: self.parse("JSONRPCPATH", "/bitrix/api/".into(), url_path)?,
        };
        let host_id = self.parse_opt("HOST_ID", host_id)?;
        let jwt_leeway = self.count("JWT_LEEWAY", 60, 0, 3600)?;
        let log_level = self.parse("LOG_LEVEL", LevelFilter::Info, log_level)?;
        let limits = self.limits()?;
        let timings = self.timings()?;
        let store = self.store(&run_dir, zero_config, &limits)?;
        Ok(Config {
            source: self.source,
            zero_config,
            security_key,
            algo,
            run_dir,
            sub_sock,
            pub_sock,
            sub_listen,
            pub_listen,
            sock_group,
            sock_mode,
            redis_sock,
            redis_url,
            redis_prefix,
            redis_sentinels,
            redis_master_name,
            redis_sentinel_password,
            redis_wait_replicas,
            paths,
            host_id,
            jwt_leeway,
            log_level,
            limits,
            timings,
            store,
            warnings: self.warnings,
            origins: self.origins,
            env_copies: Vec::new(),
            ignored_keys: Vec::new(),
        })
    }

    fn security_key(&mut self, zero_config: bool) -> Result<String, ConfigError> {
        if zero_config {
            self.origins.insert("SECURITY_KEY", Origin::Generated);
            return generate_key().map_err(|e| {
                ConfigError::new(format!("cannot generate a key from /dev/urandom: {e}"))
            });
        }
        let hint = "set it to the portal's signature key (letters and digits)";
        match self.take("SECURITY_KEY") {
            None => Err(ConfigError::new(format!(
                "SECURITY_KEY is not set in {}: {hint}",
                self.source_name()
            ))),
            Some((v, origin)) if v.is_empty() => Err(ConfigError::new(format!(
                "SECURITY_KEY is empty in {}: {hint}",
                self.place(&origin)
            ))),
            // The value is never echoed: a near-miss key is still a secret.
            Some((v, origin)) if !v.bytes().all(|b| b.is_ascii_alphanumeric()) => {
                Err(ConfigError::new(format!(
                    "invalid SECURITY_KEY in {}: expected letters and digits only",
                    self.place(&origin)
                )))
            }
            Some((v, _)) => Ok(v),
        }
    }

    fn listen(
        &mut self,
        key: &'static str,
        zero_config: bool,
        zero_default: &str,
    ) -> Result<Option<SocketAddr>, ConfigError> {
        if self.settings.values.contains_key(key) {
            return self.parse(key, None, |v| {
                if v.is_empty() {
                    Ok(None)
                } else {
                    socket_addr(v).map(Some)
                }
            });
        }
        if !zero_config {
            self.origins.insert(key, Origin::Default);
            return Ok(None);
        }
        self.origins.insert(key, Origin::ZeroConfig);
        Ok(zero_default.parse().ok())
    }

    fn sock_group(&mut self) -> Result<Option<String>, ConfigError> {
        let key = if self.settings.values.contains_key("SOCK_GROUP") {
            "SOCK_GROUP"
        } else {
            "GROUP"
        };
        let group = self.parse_opt(key, group_name)?;
        if let Some(origin) = self.origins.remove(key) {
            self.origins.insert("SOCK_GROUP", origin);
        }
        Ok(group)
    }

    fn redis_url(&mut self) -> Result<Option<String>, ConfigError> {
        let Some((v, origin)) = self.take("REDIS_URL") else {
            self.origins.insert("REDIS_URL", Origin::Default);
            return Ok(None);
        };
        if v.is_empty() {
            return Ok(None);
        }
        if v.starts_with("redis://") || v.starts_with("unix://") {
            return Ok(Some(v));
        }
        // Printed masked: the URL may carry the Redis password.
        Err(ConfigError::new(format!(
            "invalid REDIS_URL={:?} in {}: expected redis://[:password@]host:port or unix:///path",
            mask_url(&v),
            self.place(&origin)
        )))
    }

    fn limits(&mut self) -> Result<Limits, ConfigError> {
        const MIB: u64 = 1 << 20;
        Ok(Limits {
            max_payload: self.count("MAX_PAYLOAD", MIB, 1, 64 * MIB)?,
            max_conn_per_channel: self.count("MAX_CONN_PER_CHANNEL", 100, 1, u32::MAX.into())?,
            max_messages_per_request: self.count(
                "MAX_MESSAGES_PER_REQUEST",
                100,
                1,
                u32::MAX.into(),
            )?,
            max_channels_per_request: self.count(
                "MAX_CHANNELS_PER_REQUEST",
                100,
                1,
                u32::MAX.into(),
            )?,
            max_header_size: self.count("MAX_HEADER_SIZE", 8192, 1024, 65536)?,
            outbox_limit: self.count("OUTBOX_LIMIT", 4 * MIB, 1, usize::MAX as u64)?,
            max_connections: self.count("MAX_CONNECTIONS", 50_000, 1, u32::MAX.into())?,
        })
    }

    fn timings(&mut self) -> Result<Timings, ConfigError> {
        Ok(Timings {
            long_poll_timeout: self.parse("LONG_POLL_TIMEOUT", secs(40), seconds)?,
            header_timeout: self.parse("HEADER_TIMEOUT", secs(10), seconds)?,
            keepalive_timeout: self.parse("KEEPALIVE_TIMEOUT", secs(75), seconds)?,
            ws_ping_interval: self.parse("WS_PING_INTERVAL", secs(120), seconds)?,
            shutdown_timeout: self.parse("SHUTDOWN_TIMEOUT", secs(5), seconds)?,
        })
    }

    fn store(
        &mut self,
        run_dir: &Path,
        zero_config: bool,
        limits: &Limits,
    ) -> Result<StoreConfig, ConfigError> {
        // docs/persistence.md: /var/lib/push-server (the unit's StateDirectory=), or under
        // RUN_DIR in the zero-config mode, which must work without root.
        let state_dir = if zero_config && !self.settings.values.contains_key("STATE_DIR") {
            self.origins.insert("STATE_DIR", Origin::ZeroConfig);
            run_dir.join("state")
        } else {
            self.parse(
                "STATE_DIR",
                PathBuf::from("/var/lib/push-server"),
                absolute_path,
            )?
        };
        let legacy = run_dir.join("push-server.state");
        let mut store = StoreConfig {
            message_ttl: self.count("MESSAGE_TTL", 86_400, 1, MAX_SECONDS)?,
            expiry0_grace: self.count("EXPIRY0_GRACE", 60, 0, 86_400)?,
            online_ttl: self.count("ONLINE_TTL", 130, 1, 86_400)?,
            channel_history: self.count("CHANNEL_HISTORY", 1000, 1, u32::MAX.into())?,
            max_bytes: self.count("STORE_MAX_BYTES", 256 << 20, 1, usize::MAX as u64)?,
            state_file: self.parse(
                "STATE_FILE",
                state_dir.join("push-server.state"),
                absolute_path,
            )?,
            legacy_state_file: None,
            state_dir,
            fsync: self.parse("STORE_FSYNC", Fsync::EverySec, |v| {
                match v.to_ascii_lowercase().as_str() {
                    "always" => Ok(Fsync::Always),
                    "everysec" => Ok(Fsync::EverySec),
                    "no" => Ok(Fsync::No),
                    _ => Err("expected always, everysec or no".into()),
                }
            })?,
        };
        // Only a state file at its default place has an older default to migrate from.
        if store.state_file == store.state_dir.join("push-server.state") {
            store.legacy_state_file = Some(legacy);
        }
        if store.max_bytes < limits.max_payload {
            self.warnings.push(format!(
                "STORE_MAX_BYTES={} is below MAX_PAYLOAD={}: the largest messages cannot be stored",
                store.max_bytes, limits.max_payload
            ));
        }
        if limits.outbox_limit < limits.max_payload {
            self.warnings.push(format!(
                "OUTBOX_LIMIT={} is below MAX_PAYLOAD={}: one large message makes a subscriber a slow consumer",
                limits.outbox_limit, limits.max_payload
            ));
        }
        Ok(store)
    }

    /// Removes the key's value and records where it came from.
    fn take(&mut self, key: &'static str) -> Option<(String, Origin)> {
        let found = self.settings.values.remove(key);
        let origin = found.as_ref().map_or(Origin::Default, |(_, o)| o.clone());
        self.origins.insert(key, origin);
        found
    }

    fn parse<T>(
        &mut self,
        key: &'static str,
        default: T,
        check: Check<T>,
    ) -> Result<T, ConfigError> {
        let Some((v, origin)) = self.take(key) else {
            return Ok(default);
        };
        check(&v).map_err(|why| self.invalid(key, &v, &origin, &why))
    }

    /// Like [`Builder::parse`] for keys where an empty value means "none".
    fn parse_opt<T>(
        &mut self,
        key: &'static str,
        check: Check<T>,
    ) -> Result<Option<T>, ConfigError> {
        match self.take(key) {
            None => Ok(None),
            Some((v, _)) if v.is_empty() => Ok(None),
            Some((v, origin)) => check(&v)
                .map(Some)
                .map_err(|why| self.invalid(key, &v, &origin, &why)),
        }
    }

    fn count<T: TryFrom<u64>>(
        &mut self,
        key: &'static str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<T, ConfigError> {
        let n = match self.take(key) {
            None => default,
            Some((v, origin)) => match integer(&v) {
                Some(n) if (min..=max).contains(&n) => n,
                _ => {
                    let why = if max >= u32::MAX.into() {
                        format!("expected a whole number >= {min}")
                    } else {
                        format!("expected a whole number from {min} to {max}")
                    };
                    return Err(self.invalid(key, &v, &origin, &why));
                }
            },
        };
        T::try_from(n)
            .map_err(|_| ConfigError::new(format!("{key}={n} does not fit this platform")))
    }

    fn invalid(&self, key: &str, value: &str, origin: &Origin, why: &str) -> ConfigError {
        ConfigError::new(format!(
            "invalid {key}={value:?} in {}: {why}",
            self.place(origin)
        ))
    }

    fn conflict(&self, what: &str) -> ConfigError {
        ConfigError::new(format!(
            "{what} (configuration from {})",
            self.source_name()
        ))
    }

    fn place(&self, origin: &Origin) -> String {
        describe(origin, self.source.as_deref())
    }

    fn source_name(&self) -> String {
        match &self.source {
            Some(p) => format!("{} or the environment", p.display()),
            None => "the environment".into(),
        }
    }
}

fn describe(origin: &Origin, source: Option<&Path>) -> String {
    match (origin, source) {
        (Origin::File { line }, Some(p)) => format!("{} line {line}", p.display()),
        (Origin::File { line }, None) => format!("config file line {line}"),
        (Origin::Env, _) => "the environment".into(),
        (Origin::Default, _) => "default".into(),
        (Origin::ZeroConfig, _) => "zero-config default".into(),
        (Origin::Generated, _) => "generated (zero-config mode)".into(),
    }
}

/// A portal host id as PHP makes it: letters and digits (lowercase in practice), at most 64.
fn host_id(v: &str) -> Result<String, String> {
    if v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(v.to_owned())
    } else {
        Err("expected the portal's host id (letters and digits, at most 64)".into())
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn integer(v: &str) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// Seconds with an optional decimal fraction, parsed exactly (no float rounding).
fn seconds(v: &str) -> Result<Duration, String> {
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

fn absolute_path(v: &str) -> Result<PathBuf, String> {
    if v.starts_with('/') {
        Ok(PathBuf::from(v))
    } else {
        Err("expected an absolute path".into())
    }
}

fn socket_path(v: &str) -> Result<PathBuf, String> {
    if v.len() > MAX_SOCKET_PATH {
        return Err(format!(
            "a Unix socket path may have at most {MAX_SOCKET_PATH} bytes"
        ));
    }
    absolute_path(v)
}

fn socket_addr(v: &str) -> Result<SocketAddr, String> {
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

fn group_name(v: &str) -> Result<String, String> {
    let ok = v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'$'));
    if ok {
        Ok(v.to_string())
    } else {
        Err("expected a group name or numeric gid".into())
    }
}

fn parse_mode(v: &str) -> Result<u32, String> {
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

fn redis_prefix(v: &str) -> Result<String, String> {
    if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err("expected no spaces or control characters".into())
    } else {
        Ok(v.to_string())
    }
}

/// `host:port,host:port,…` (spaces around the commas allowed).
fn sentinel_list(v: &str) -> Result<Vec<String>, String> {
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

fn url_path(v: &str) -> Result<String, String> {
    let visible = v
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#');
    if v.starts_with('/') && visible {
        Ok(v.to_string())
    } else {
        Err("expected a URL path starting with '/', such as /bitrix/sub/".into())
    }
}

fn log_level(v: &str) -> Result<LevelFilter, String> {
    match v.to_ascii_lowercase().as_str() {
        "error" => Ok(LevelFilter::Error),
        "warn" => Ok(LevelFilter::Warn),
        "info" => Ok(LevelFilter::Info),
        "debug" => Ok(LevelFilter::Debug),
        "trace" => Ok(LevelFilter::Trace),
        _ => Err("expected error, warn, info, debug or trace".into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering

fn mask_key(key: &str) -> String {
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
fn quote(v: &str) -> String {
    let plain = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_./:@%+=,-[]".contains(&b));
    if plain || v.is_empty() {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\'', r"'\''"))
    }
}

fn fmt_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        return d.as_secs().to_string();
    }
    let s = format!("{}.{:09}", d.as_secs(), d.subsec_nanos());
    s.trim_end_matches('0').to_string()
}

fn opt_display<T: fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map(T::to_string).unwrap_or_default()
}

impl Config {
    /// Effective configuration, one `KEY=value  # source` line per key, the key masked; for
    /// `--check-config` and the startup log.
    pub fn render(&self) -> String {
        let t = &self.timings;
        let l = &self.limits;
        let s = &self.store;
        let rows: Vec<(&'static str, String)> = vec![
            ("SECURITY_KEY", mask_key(&self.security_key)),
            ("SECURITY_ALGO", self.algo.name().into()),
            ("RUN_DIR", self.run_dir.display().to_string()),
            ("SUB_SOCK", self.sub_sock.display().to_string()),
            ("PUB_SOCK", self.pub_sock.display().to_string()),
            ("SUB_LISTEN", opt_display(&self.sub_listen)),
            ("PUB_LISTEN", opt_display(&self.pub_listen)),
            ("SOCK_GROUP", self.sock_group.clone().unwrap_or_default()),
            ("SOCK_MODE", format!("{:04o}", self.sock_mode)),
            (
                "REDIS_SOCK",
                self.redis_sock
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            ),
            (
                "REDIS_URL",
                self.redis_url.as_deref().map(mask_url).unwrap_or_default(),
            ),
            ("REDIS_PREFIX", self.redis_prefix.clone()),
            ("REDIS_SENTINELS", self.redis_sentinels.join(",")),
            ("REDIS_MASTER_NAME", self.redis_master_name.clone()),
            (
                "REDIS_SENTINEL_PASSWORD",
                self.redis_sentinel_password
                    .as_ref()
                    .map(|_| "***".to_string())
                    .unwrap_or_default(),
            ),
            ("REDIS_WAIT_REPLICAS", self.redis_wait_replicas.to_string()),
            ("SUBPATH", self.paths.sub.clone()),
            ("SUBWSPATH", self.paths.subws.clone()),
            ("PUBPATH", self.paths.publish.clone()),
            ("RESTPATH", self.paths.rest.clone()),
            ("JSONRPCPATH", self.paths.jsonrpc.clone()),
            ("HOST_ID", self.host_id.clone().unwrap_or_default()),
            ("JWT_LEEWAY", self.jwt_leeway.to_string()),
            ("LOG_LEVEL", self.log_level.as_str().to_ascii_lowercase()),
            ("MAX_PAYLOAD", l.max_payload.to_string()),
            ("MAX_CONN_PER_CHANNEL", l.max_conn_per_channel.to_string()),
            (
                "MAX_MESSAGES_PER_REQUEST",
                l.max_messages_per_request.to_string(),
            ),
            (
                "MAX_CHANNELS_PER_REQUEST",
                l.max_channels_per_request.to_string(),
            ),
            ("MAX_HEADER_SIZE", l.max_header_size.to_string()),
            ("OUTBOX_LIMIT", l.outbox_limit.to_string()),
            ("MAX_CONNECTIONS", l.max_connections.to_string()),
            ("LONG_POLL_TIMEOUT", fmt_duration(t.long_poll_timeout)),
            ("HEADER_TIMEOUT", fmt_duration(t.header_timeout)),
            ("KEEPALIVE_TIMEOUT", fmt_duration(t.keepalive_timeout)),
            ("WS_PING_INTERVAL", fmt_duration(t.ws_ping_interval)),
            ("SHUTDOWN_TIMEOUT", fmt_duration(t.shutdown_timeout)),
            ("MESSAGE_TTL", s.message_ttl.to_string()),
            ("EXPIRY0_GRACE", s.expiry0_grace.to_string()),
            ("ONLINE_TTL", s.online_ttl.to_string()),
            ("CHANNEL_HISTORY", s.channel_history.to_string()),
            ("STORE_MAX_BYTES", s.max_bytes.to_string()),
            ("STATE_FILE", s.state_file.display().to_string()),
            ("STATE_DIR", s.state_dir.display().to_string()),
            ("STORE_FSYNC", s.fsync.name().into()),
        ];
        let mut out = match &self.source {
            Some(p) => format!("# config file: {}\n", p.display()),
            None => "# config file: none\n".to_string(),
        };
        if self.zero_config {
            out.push_str("# zero-config mode: no config file, no SECURITY_KEY/REDIS_SOCK/REDIS_URL in the environment\n");
        }
        for (key, value) in rows {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The 0.4.0 sample as shipped, plus what the old script and admins append.
    const SAMPLE: &str = r#"# Push server settings
# This file is sourced by /etc/init.d/push-server-multi

export USER=bitrix
GROUP=www-data

# Security key: must equal the portal's signature key
SECURITY_KEY=OldKeyThatIsReplacedLater1

VAR_DIR=/var/log/push-server
RUN_DIR=/tmp/push-server
HG_DIR=/opt/push-server
CFG_DIR=/etc/push-server

TMPL_SUB=push-server-sub-__PORT__.json
TMPL_PUB=push-server-pub-__PORT__.json

BASE_SUB=801            # 8010, 8011, ...
BASE_PUB=901            # 9010, 9011, ...
ID_SUB=5                # number of sub processes
ID_PUB=1                # number of pub processes

PUBPATH=/bitrix/pub/
SUBPATH=/bitrix/sub/
SUBWSPATH=/bitrix/subws/
RESTPATH=/bitrix/rest/

WS_PORT=1337
IP_LIST='"127.0.0.1", "10.0.0.0/24"'   # debug log for these clients
REDIS_SOCK="/var/run/redis/redis.sock"

SECURITY_KEY=AbCdEf0123456789xyz
"#;

    fn env_of(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A unique temp directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "push-cfg-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).expect("temp dir");
            TempDir(dir)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, text).expect("write temp file");
            p
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Loads `text` as `--config` with the given environment.
    fn load_text(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = TempDir::new();
        let path = dir.write("push-server-multi", text);
        let env = env_of(env);
        load_with_default(Some(&path), &dir.0.join("none"), &|k| env.get(k).cloned())
    }

    /// Loads with no file at all.
    fn load_env(env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = TempDir::new();
        let env = env_of(env);
        load_with_default(None, &dir.0.join("none"), &|k| env.get(k).cloned())
    }

    fn err_text(r: Result<Config, ConfigError>) -> String {
        match r {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn shipped_sample() {
        let c = load_text(SAMPLE, &[]).expect("sample loads");
        assert!(!c.zero_config);
        assert_eq!(
            c.security_key, "AbCdEf0123456789xyz",
            "the last assignment wins"
        );
        assert_eq!(c.origins["SECURITY_KEY"], Origin::File { line: 32 });
        assert!(
            c.ignored_keys.iter().any(|k| k.starts_with("IP_LIST ")),
            "{:?}",
            c.ignored_keys
        );
        assert_eq!(c.sock_group.as_deref(), Some("www-data"));
        assert_eq!(c.run_dir, Path::new("/tmp/push-server"));
        assert_eq!(c.sub_sock, Path::new("/tmp/push-server/sub.sock"));
        assert_eq!(c.pub_sock, Path::new("/tmp/push-server/pub.sock"));
        assert_eq!(
            c.redis_sock.as_deref(),
            Some(Path::new("/var/run/redis/redis.sock"))
        );
        assert_eq!(c.paths.sub, "/bitrix/sub/");
        assert_eq!(c.paths.subws, "/bitrix/subws/");
        assert_eq!(c.paths.publish, "/bitrix/pub/");
        assert_eq!(c.paths.rest, "/bitrix/rest/");
        assert_eq!((c.sub_listen, c.pub_listen), (None, None));
        assert!(
            c.warnings.is_empty(),
            "no warnings expected: {:?}",
            c.warnings
        );
    }

    #[test]
    fn defaults() {
        let c = load_text("SECURITY_KEY=k1\n", &[]).expect("loads");
        assert_eq!(c.algo, Algo::Sha1);
        assert_eq!(c.sock_mode, 0o660);
        assert_eq!(c.sock_group, None);
        assert_eq!(c.redis_sock, None);
        assert_eq!(c.redis_url, None);
        assert_eq!(c.redis_prefix, "");
        assert_eq!(c.log_level, LevelFilter::Info);
        assert_eq!(
            c.limits,
            Limits {
                max_payload: 1_048_576,
                max_conn_per_channel: 100,
                max_messages_per_request: 100,
                max_channels_per_request: 100,
                max_header_size: 8192,
                outbox_limit: 4_194_304,
                max_connections: 50_000,
            }
        );
        assert_eq!(
            c.timings,
            Timings {
                long_poll_timeout: secs(40),
                header_timeout: secs(10),
                keepalive_timeout: secs(75),
                ws_ping_interval: secs(120),
                shutdown_timeout: secs(5),
            }
        );
        assert_eq!(
            c.store,
            StoreConfig {
                message_ttl: 86_400,
                expiry0_grace: 60,
                online_ttl: 130,
                channel_history: 1000,
                max_bytes: 268_435_456,
                state_file: PathBuf::from("/var/lib/push-server/push-server.state"),
                state_dir: PathBuf::from("/var/lib/push-server"),
                legacy_state_file: Some(PathBuf::from("/tmp/push-server/push-server.state")),
                fsync: Fsync::EverySec,
            }
        );
    }

    #[test]
    fn line_reader() {
        let assign = |line: &str| match parse_line(line) {
            Line::Assign(a) => (a.key.to_string(), a.value, a.dollar, a.trailing),
            other => panic!("{line:?} gave {other:?}"),
        };
        let plain = |k: &str, v: &str| (k.to_string(), v.to_string(), false, false);
        assert_eq!(assign("A=b"), plain("A", "b"));
        assert_eq!(assign("  export  A=b  # c"), plain("A", "b"));
        assert_eq!(assign("A=b#c"), plain("A", "b#c"));
        assert_eq!(assign("A=#c"), plain("A", "#c"));
        assert_eq!(assign("A="), plain("A", ""));
        assert_eq!(assign("A=''"), plain("A", ""));
        assert_eq!(assign("A='x # y'  # z"), plain("A", "x # y"));
        assert_eq!(assign(r#"A="a \"q\" \\ \n""#), plain("A", r#"a "q" \ \n"#));
        assert_eq!(assign(r#"A=x"y z"'w'"#), plain("A", "xy zw"));
        assert_eq!(assign("A=b\r"), plain("A", "b"));
        assert_eq!(assign("exportA=1"), plain("exportA", "1"));
        assert_eq!(
            assign("A=$HOME/x"),
            ("A".into(), "$HOME/x".into(), true, false)
        );
        assert_eq!(assign("A='$x'"), plain("A", "$x"));
        assert_eq!(assign(r#"A="\$x""#), plain("A", "$x"));
        assert_eq!(assign("A=b c"), ("A".into(), "b".into(), false, true));
        assert_eq!(parse_line("   # only a comment"), Line::Blank);
        assert_eq!(parse_line(""), Line::Blank);
        for bad in [
            "just words",
            "1A=b",
            "A B=c",
            "=x",
            "A='open",
            "A=\"open",
            "export",
        ] {
            assert!(matches!(parse_line(bad), Line::Invalid(_)), "{bad:?}");
        }
    }

    #[test]
    fn warnings_name_file_and_line() {
        let c = load_text(
            "SECURITY_KEY=k1\nSECURTY_KEY=k2\nthis is junk\nREDIS_PREFIX=$HOST:\nLOG_LEVEL=debug extra\n",
            &[],
        )
        .expect("warnings are not fatal");
        let w = c.warnings.join("\n");
        assert!(w.contains("line 2: unknown key SECURTY_KEY"), "{w}");
        assert!(w.contains("line 3: not a KEY=value assignment"), "{w}");
        assert!(w.contains("line 4: REDIS_PREFIX contains `$`"), "{w}");
        assert!(w.contains("variables are not expanded"), "{w}");
        assert!(
            w.contains("line 5: text after the value of LOG_LEVEL"),
            "{w}"
        );
        assert_eq!(c.redis_prefix, "$HOST:");
        assert_eq!(c.log_level, LevelFilter::Debug);
    }

    #[test]
    fn env_overrides_only_known_keys() {
        let c = load_text(
            "SECURITY_KEY=fromfile\nRUN_DIR=/srv/run\nLONG_POLL_TIMEOUT=30\n",
            &[
                ("SECURITY_KEY", "fromenv"),
                ("LONG_POLL_TIMEOUT", "0.5"),
                ("USER", "root"),
                ("WS_HOST", "0.0.0.0"),
                ("HOME", "/root"),
                ("SOCK_MODE", "0600"),
            ],
        )
        .expect("loads");
        assert_eq!(c.security_key, "fromenv");
        assert_eq!(c.origins["SECURITY_KEY"], Origin::Env);
        assert_eq!(c.timings.long_poll_timeout, Duration::from_millis(500));
        assert_eq!(c.run_dir, Path::new("/srv/run"));
        assert_eq!(c.sock_mode, 0o600);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn empty_env_value_counts_as_set() {
        let e = err_text(load_text(
            "SECURITY_KEY=fromfile\n",
            &[("SECURITY_KEY", "")],
        ));
        assert!(
            e.contains("SECURITY_KEY is empty in the environment"),
            "{e}"
        );
        let c = load_text(
            "SECURITY_KEY=k\nREDIS_SOCK=/run/redis.sock\n",
            &[("REDIS_SOCK", "")],
        )
        .expect("loads");
        assert_eq!(c.redis_sock, None);
    }

    #[test]
    fn environment_file_copies_do_not_override() {
        // What `EnvironmentFile=` makes of the same file: comments stay inside the values.
        let c = load_text(
            "SECURITY_KEY=abc   # the key\nLOG_LEVEL=\"debug\"\n",
            &[("SECURITY_KEY", "abc   # the key"), ("LOG_LEVEL", "debug")],
        )
        .expect("loads");
        assert_eq!(c.security_key, "abc");
        assert_eq!(c.origins["SECURITY_KEY"], Origin::File { line: 1 });
        assert_eq!(c.log_level, LevelFilter::Debug);
    }

    #[test]
    fn zero_config() {
        let c = load_env(&[("LOG_LEVEL", "debug"), ("RUN_DIR", "/tmp/x")]).expect("loads");
        assert!(c.zero_config);
        assert_eq!(c.source, None);
        assert_eq!(c.security_key.len(), 64);
        assert_eq!(c.origins["SECURITY_KEY"], Origin::Generated);
        assert_eq!(c.sub_listen, Some("127.0.0.1:8010".parse().expect("addr")));
        assert_eq!(c.pub_listen, Some("127.0.0.1:9010".parse().expect("addr")));
        assert_eq!(c.sub_sock, Path::new("/tmp/x/sub.sock"));
        assert_eq!(c.store.state_dir, Path::new("/tmp/x/state"));
        assert_eq!(c.origins["STATE_DIR"], Origin::ZeroConfig);
        assert_eq!(
            c.store.state_file,
            Path::new("/tmp/x/state/push-server.state")
        );

        let c = load_env(&[("SUB_LISTEN", ""), ("PUB_LISTEN", "127.0.0.1:9999")]).expect("loads");
        assert!(c.zero_config);
        assert_eq!(c.sub_listen, None);
        assert_eq!(c.pub_listen, Some("127.0.0.1:9999".parse().expect("addr")));
    }

    #[test]
    fn no_zero_config_with_a_file_or_key_env() {
        let e = err_text(load_text("# nothing\n", &[]));
        assert!(e.starts_with("SECURITY_KEY is not set in "), "{e}");
        assert!(e.contains("signature key (letters and digits)"), "{e}");
        let e = err_text(load_env(&[("REDIS_SOCK", "/run/redis.sock")]));
        assert!(
            e.contains("SECURITY_KEY is not set in the environment"),
            "{e}"
        );
        let e = err_text(load_env(&[("REDIS_URL", "")]));
        assert!(e.contains("SECURITY_KEY is not set"), "{e}");
        let c = load_env(&[("SECURITY_KEY", "k")]).expect("loads");
        assert!(!c.zero_config);
        assert_eq!((c.sub_listen, c.pub_listen), (None, None));
    }

    #[test]
    fn default_path_is_used_when_present() {
        let dir = TempDir::new();
        let default = dir.write("sysconfig", "SECURITY_KEY=k\n");
        let c = load_with_default(None, &default, &|_| None).expect("loads");
        assert_eq!(c.source.as_deref(), Some(default.as_path()));
        assert!(!c.zero_config);
        let missing = dir.0.join("missing");
        let e = err_text(load_with_default(Some(&missing), &default, &|_| None));
        assert!(e.contains("cannot read config file"), "{e}");
    }

    #[test]
    fn parse_text_is_load_without_the_read() {
        let dir = TempDir::new();
        for text in [
            "SECURITY_KEY=k\nMAX_PAYLOAD=2048\nUNKNOWN=1\n",
            "SECURITY_KEY=k\nLONG_POLL_TIMEOUT=abc\n",
            "export SECURITY_KEY='a b'\n",
            "",
        ] {
            let path = dir.write("push-server-multi", text);
            let none = dir.0.join("none");
            let loaded = load_with_default(Some(&path), &none, &|_| None);
            let parsed = parse_text(&path, text.as_bytes(), &|_| None);
            match (loaded, parsed) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a.render(), b.render(), "{text:?}");
                    assert_eq!(a.warnings, b.warnings, "{text:?}");
                }
                (Err(a), Err(b)) => assert_eq!(a, b, "{text:?}"),
                (a, b) => panic!("{text:?}: load {a:?}, parse_text {b:?}"),
            }
        }
    }

    #[test]
    fn invalid_values_name_key_and_place() {
        let e = err_text(load_text("SECURITY_KEY=k\n\nLONG_POLL_TIMEOUT=abc\n", &[]));
        assert!(
            e.starts_with("invalid LONG_POLL_TIMEOUT=\"abc\" in /"),
            "{e}"
        );
        assert!(
            e.contains("push-server-multi line 3: expected seconds > 0"),
            "{e}"
        );
        let e = err_text(load_text("SECURITY_KEY=k\n", &[("MAX_PAYLOAD", "0")]));
        assert!(
            e.starts_with("invalid MAX_PAYLOAD=\"0\" in the environment:"),
            "{e}"
        );
    }

    #[test]
    fn rejected_values() {
        let cases: &[(&str, &str)] = &[
            ("SECURITY_ALGO", "md5"),
            ("RUN_DIR", "relative/dir"),
            ("SUB_SOCK", ""),
            ("SUB_LISTEN", "8010"),
            ("SUB_LISTEN", "example.com:80"),
            ("PUB_LISTEN", "127.0.0.1:0"),
            ("SOCK_MODE", "0999"),
            ("SOCK_MODE", "1777"),
            ("SOCK_MODE", "rw"),
            ("SOCK_GROUP", "a b"),
            ("REDIS_SOCK", "redis.sock"),
            ("REDIS_URL", "http://x"),
            ("SUBPATH", "bitrix/sub/"),
            ("PUBPATH", "/a b/"),
            ("LOG_LEVEL", "verbose"),
            ("MAX_PAYLOAD", "67108865"),
            ("MAX_PAYLOAD", "-1"),
            ("MAX_CONNECTIONS", "0"),
            ("MAX_HEADER_SIZE", "1023"),
            ("MAX_HEADER_SIZE", "65537"),
            ("MESSAGE_TTL", "604801"),
            ("ONLINE_TTL", "1.5"),
            ("CHANNEL_HISTORY", "99999999999999999999999"),
            ("LONG_POLL_TIMEOUT", "0"),
            ("LONG_POLL_TIMEOUT", "-1"),
            ("LONG_POLL_TIMEOUT", "1e3"),
            ("LONG_POLL_TIMEOUT", "inf"),
            ("LONG_POLL_TIMEOUT", "1."),
            ("LONG_POLL_TIMEOUT", "0.0000000001"),
            ("STATE_FILE", "state"),
            ("STATE_DIR", "var/lib"),
            ("STORE_FSYNC", "sometimes"),
        ];
        for (key, value) in cases {
            let r = load_text("SECURITY_KEY=k\n", &[(key, value)]);
            let e = err_text(r);
            assert!(e.contains(key), "{key}={value}: {e}");
        }
    }

    #[test]
    fn accepted_values() {
        let c = load_text(
            "SECURITY_KEY=k\n",
            &[
                ("SECURITY_ALGO", "sha256"),
                ("SUB_LISTEN", "[::1]:8010"),
                ("PUB_LISTEN", "localhost:9010"),
                ("SOCK_MODE", "0o770"),
                ("REDIS_URL", "redis://:pw@10.0.0.5:6379"),
                ("REDIS_PREFIX", "ps2:"),
                ("LOG_LEVEL", "TRACE"),
                ("HEADER_TIMEOUT", ".25"),
                ("EXPIRY0_GRACE", "0"),
                ("MAX_HEADER_SIZE", "65536"),
            ],
        )
        .expect("loads");
        assert_eq!(c.algo, Algo::Sha256);
        assert_eq!(c.sub_listen, Some("[::1]:8010".parse().expect("addr")));
        assert_eq!(c.pub_listen, Some("127.0.0.1:9010".parse().expect("addr")));
        assert_eq!(c.sock_mode, 0o770);
        assert_eq!(c.redis_url.as_deref(), Some("redis://:pw@10.0.0.5:6379"));
        assert_eq!(c.redis_prefix, "ps2:");
        assert_eq!(c.log_level, LevelFilter::Trace);
        assert_eq!(c.timings.header_timeout, Duration::from_millis(250));
        assert_eq!(c.store.expiry0_grace, 0);
        assert_eq!(c.limits.max_header_size, 65536);
    }

    #[test]
    fn security_key_rules() {
        let e = err_text(load_text("SECURITY_KEY=abc/def\n", &[]));
        assert!(e.contains("invalid SECURITY_KEY in"), "{e}");
        assert!(!e.contains("abc"), "the key must not be echoed: {e}");
        let e = err_text(load_text("SECURITY_KEY=\n", &[]));
        assert!(e.contains("SECURITY_KEY is empty in"), "{e}");
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn conflicts() {
        let e = err_text(load_text(
            "SECURITY_KEY=k\nREDIS_SOCK=/run/r.sock\n",
            &[("REDIS_URL", "redis://h:6379")],
        ));
        assert!(e.contains("REDIS_SOCK and REDIS_URL"), "{e}");
        let e = err_text(load_text(
            "SECURITY_KEY=k\nSUB_SOCK=/run/a\nPUB_SOCK=/run/a\n",
            &[],
        ));
        assert!(e.contains("SUB_SOCK and PUB_SOCK"), "{e}");
        let e = err_text(load_text(
            "SECURITY_KEY=k\nSUB_LISTEN=127.0.0.1:1\nPUB_LISTEN=127.0.0.1:1\n",
            &[],
        ));
        assert!(e.contains("SUB_LISTEN and PUB_LISTEN"), "{e}");
        let long = format!("SECURITY_KEY=k\nSUB_SOCK=/{}\n", "x".repeat(120));
        assert!(err_text(load_text(&long, &[])).contains("at most 107 bytes"));
    }

    /// Found by the `config` fuzz target: a long RUN_DIR made the default socket paths
    /// (`RUN_DIR/sub.sock`, `RUN_DIR/pub.sock`) longer than `sun_path` allows, and the config
    /// was accepted; binding would fail later without naming the key.
    #[test]
    fn long_run_dir_is_refused_for_default_sockets() {
        let dir = format!("/{}", "d".repeat(99));
        let text = format!("SECURITY_KEY=k\nRUN_DIR={dir}\n");
        let e = err_text(load_text(&text, &[]));
        assert!(e.starts_with("invalid RUN_DIR="), "{e}");
        assert!(
            e.contains("line 2") && e.contains("SUB_SOCK") && e.contains("107"),
            "{e}"
        );
        // Explicit sockets make any RUN_DIR length fine; one default socket is still checked.
        let both = format!("{text}SUB_SOCK=/run/s.sock\nPUB_SOCK=/run/p.sock\n");
        assert!(load_text(&both, &[]).is_ok());
        let one = format!("{text}SUB_SOCK=/run/s.sock\n");
        assert!(err_text(load_text(&one, &[])).contains("PUB_SOCK"));
        // At the limit exactly: 98 + "/sub.sock" (9) = 107 bytes.
        let fits = format!("SECURITY_KEY=k\nRUN_DIR=/{}\n", "d".repeat(97));
        assert_eq!(
            load_text(&fits, &[]).unwrap().sub_sock.as_os_str().len(),
            107
        );
    }

    #[test]
    fn sock_group_falls_back_to_group() {
        let c = load_text("SECURITY_KEY=k\nGROUP=bitrix\nSOCK_GROUP=nginx\n", &[]).expect("loads");
        assert_eq!(c.sock_group.as_deref(), Some("nginx"));
        assert_eq!(c.origins["SOCK_GROUP"], Origin::File { line: 3 });
        let c = load_text("SECURITY_KEY=k\nGROUP=bitrix\n", &[]).expect("loads");
        assert_eq!(c.sock_group.as_deref(), Some("bitrix"));
        assert_eq!(c.origins["SOCK_GROUP"], Origin::File { line: 2 });
        let c = load_text("SECURITY_KEY=k\nGROUP=\n", &[]).expect("loads");
        assert_eq!(c.sock_group, None);
    }

    #[test]
    fn pub_listen_off_loopback_warns() {
        let c = load_text("SECURITY_KEY=k\nSUB_LISTEN=0.0.0.0:8010\n", &[]).expect("loads");
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let c = load_text("SECURITY_KEY=k\nPUB_LISTEN=0.0.0.0:9010\n", &[]).expect("loads");
        assert!(
            c.warnings.iter().any(|w| w.contains("PUB_LISTEN")),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn render_masks_secrets_and_reads_back() {
        let c = load_text(
            SAMPLE,
            &[("REDIS_SOCK", ""), ("REDIS_URL", "redis://:hunter2@h:6379")],
        )
        .expect("loads");
        let text = c.render();
        assert!(!text.contains("AbCdEf0123456789xyz"), "{text}");
        assert!(text.contains("SECURITY_KEY=Ab***(19 chars)  # "), "{text}");
        assert!(text.contains("push-server-multi line 32\n"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(
            text.contains("REDIS_URL='redis://:***@h:6379'  # the environment\n"),
            "{text}"
        );
        assert!(text.contains("LONG_POLL_TIMEOUT=40  # default\n"), "{text}");
        assert!(text.contains("SOCK_MODE=0660  # default\n"), "{text}");
        assert!(!format!("{c:?}").contains("AbCdEf0123456789xyz"));
        assert!(!format!("{c:?}").contains("hunter2"));

        // Everything but the masked key reads back to the same configuration.
        let again: String = text
            .lines()
            .filter(|l| !l.starts_with("SECURITY_KEY=") && !l.starts_with("REDIS_URL="))
            .map(|l| format!("{l}\n"))
            .collect();
        let again = load_text(&format!("{again}SECURITY_KEY=AbCdEf0123456789xyz\n"), &[])
            .expect("rendered config loads");
        assert!(again.warnings.is_empty(), "{:?}", again.warnings);
        assert_eq!(again.limits, c.limits);
        assert_eq!(again.timings, c.timings);
        assert_eq!(again.store, c.store);
        assert_eq!(again.paths, c.paths);
        assert_eq!(again.sock_group, c.sock_group);
    }

    #[test]
    fn durations_render_without_noise() {
        assert_eq!(fmt_duration(secs(40)), "40");
        assert_eq!(fmt_duration(Duration::from_millis(500)), "0.5");
        assert_eq!(fmt_duration(Duration::from_millis(1250)), "1.25");
        assert_eq!(seconds("1.25"), Ok(Duration::from_millis(1250)));
    }

    /// The `KEY=value` part of every rendered line except REDIS_SOCK.
    fn rendered_values(c: &Config) -> Vec<String> {
        c.render()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("REDIS_SOCK="))
            .map(|l| l.split("  # ").next().unwrap_or_default().to_string())
            .collect()
    }

    #[test]
    fn example_file_documents_every_key_with_its_default() {
        let example = include_str!("../systemd/push-server-multi.example");
        for key in LEGACY_KEYS.iter().chain(NEW_KEYS) {
            assert!(
                example.contains(&format!("#{key}=")),
                "{key} is not in the example"
            );
        }
        let e = err_text(load_text(example, &[]));
        assert!(e.contains("SECURITY_KEY is not set"), "{e}");

        // Uncommenting every default must change nothing but the sample REDIS_SOCK.
        let uncommented: String = example
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest)
                    if rest.starts_with(|c: char| c.is_ascii_uppercase()) && rest.contains('=') =>
                {
                    format!("{rest}\n")
                }
                _ => format!("{l}\n"),
            })
            .collect();
        let c = load_text(&format!("{uncommented}SECURITY_KEY=k\n"), &[]).expect("loads");
        let d = load_text("SECURITY_KEY=k\n", &[]).expect("loads");
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(
            c.redis_sock.as_deref(),
            Some(Path::new("/var/run/redis/redis.sock"))
        );
        assert_eq!(rendered_values(&c), rendered_values(&d));
    }

    #[test]
    fn sentinel_and_wait_keys() {
        let c = load_env(&[
            ("SECURITY_KEY", "k"),
            ("REDIS_SENTINELS", "10.0.0.1:26379, sentinel-2:26380"),
            ("REDIS_MASTER_NAME", "push"),
            ("REDIS_SENTINEL_PASSWORD", "hunter2"),
            ("REDIS_WAIT_REPLICAS", "1"),
        ])
        .expect("loads");
        assert_eq!(c.redis_sentinels, ["10.0.0.1:26379", "sentinel-2:26380"]);
        assert_eq!(c.redis_master_name, "push");
        assert_eq!(c.redis_wait_replicas, 1);
        let text = c.render();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("REDIS_SENTINEL_PASSWORD='***'"), "{text}");
        assert!(
            text.contains("REDIS_SENTINELS=10.0.0.1:26379,sentinel-2:26380"),
            "{text}"
        );
        assert!(!format!("{c:?}").contains("hunter2"));

        let e = err_text(load_env(&[
            ("SECURITY_KEY", "k"),
            ("REDIS_SENTINELS", "h:1"),
        ]));
        assert!(e.contains("REDIS_MASTER_NAME is not"), "{e}");
        let e = err_text(load_env(&[
            ("SECURITY_KEY", "k"),
            ("REDIS_SENTINELS", "h:1"),
            ("REDIS_MASTER_NAME", "m"),
            ("REDIS_SOCK", "/run/r.sock"),
        ]));
        assert!(e.contains("keep one"), "{e}");
        for bad in ["h", "h:0", ":1", "h:99999", "a b:1"] {
            let e = err_text(load_env(&[
                ("SECURITY_KEY", "k"),
                ("REDIS_SENTINELS", bad),
                ("REDIS_MASTER_NAME", "m"),
            ]));
            assert!(e.contains("invalid REDIS_SENTINELS"), "{bad}: {e}");
        }
        let e = err_text(load_env(&[
            ("SECURITY_KEY", "k"),
            ("REDIS_WAIT_REPLICAS", "x"),
        ]));
        assert!(e.contains("invalid REDIS_WAIT_REPLICAS"), "{e}");
        let c = load_env(&[("SECURITY_KEY", "k"), ("REDIS_WAIT_REPLICAS", "2")]).expect("loads");
        assert!(
            c.warnings.iter().any(|w| w.contains("REDIS_WAIT_REPLICAS")),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn generated_keys() {
        let a = generate_key().expect("urandom");
        let b = generate_key().expect("urandom");
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
