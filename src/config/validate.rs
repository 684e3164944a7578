//! Validation: turns the values read from the file and the environment into a [`Config`],
//! key by key through the key table (keys.rs), and checks how keys fit together (conflicts,
//! defaults derived from other keys, warnings). Every refusal names the key and where its
//! value came from.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use log::LevelFilter;

use super::file::Settings;
use super::keys::{self as k, Key, Parse};
use super::render::{describe, mask_url};
use super::values::{
    MAX_SOCKET_PATH, absolute_path, choice, count, group_name, host_id, is_redis_url,
    is_security_key, parse_mode, redis_prefix, seconds, sentinel_list, socket_addr, socket_path,
    url_path,
};
use super::zero;
use super::{Config, ConfigError, Fsync, Limits, Origin, Paths, StoreConfig, Timings};
use crate::signature::Algo;

pub(super) struct Builder {
    pub(super) settings: Settings,
    pub(super) source: Option<PathBuf>,
    pub(super) origins: BTreeMap<&'static str, Origin>,
    pub(super) warnings: Vec<String>,
}

type Check<T> = fn(&str) -> Result<T, String>;

impl Builder {
    pub(super) fn build(mut self, zero_config: bool) -> Result<Config, ConfigError> {
        let security_key = self.security_key(zero_config)?;
        let algo = match self.choice(&k::SECURITY_ALGO)? {
            "sha256" => Algo::Sha256,
            _ => Algo::Sha1,
        };
        let run_dir = self.parse(&k::RUN_DIR, absolute_path)?;
        let sub_sock = self.parse_or(&k::SUB_SOCK, run_dir.join("sub.sock"), socket_path)?;
        let pub_sock = self.parse_or(&k::PUB_SOCK, run_dir.join("pub.sock"), socket_path)?;
        if sub_sock == pub_sock {
            return Err(self.conflict("SUB_SOCK and PUB_SOCK name the same file"));
        }
        // A set socket path was checked above; a default one under RUN_DIR is checked here.
        for (key, sock) in [("SUB_SOCK", &sub_sock), ("PUB_SOCK", &pub_sock)] {
            if sock.as_os_str().len() > MAX_SOCKET_PATH {
                let origin = self
                    .origins
                    .get(k::RUN_DIR.name)
                    .cloned()
                    .unwrap_or(Origin::Default);
                let why = format!(
                    "the default {key} {} would be longer than the {MAX_SOCKET_PATH} bytes a Unix socket path may have; shorten RUN_DIR or set {key}",
                    sock.display()
                );
                return Err(self.invalid("RUN_DIR", &run_dir.display().to_string(), &origin, &why));
            }
        }
        let sub_listen = self.listen(&k::SUB_LISTEN, zero_config, zero::SUB_LISTEN)?;
        let pub_listen = self.listen(&k::PUB_LISTEN, zero_config, zero::PUB_LISTEN)?;
        if sub_listen.is_some() && sub_listen == pub_listen {
            return Err(self.conflict("SUB_LISTEN and PUB_LISTEN name the same address"));
        }
        if let Some(addr) = pub_listen.filter(|a| !a.ip().is_loopback()) {
            self.warnings.push(format!(
                "PUB_LISTEN={addr} is not a loopback address: publishing carries no credential, firewall it"
            ));
        }
        let sock_group = self.sock_group()?;
        let sock_mode = self.parse(&k::SOCK_MODE, parse_mode)?;
        if sock_mode & 0o006 != 0 {
            self.warnings.push(format!(
                "SOCK_MODE={sock_mode:04o} lets every local user connect, including to the publish socket"
            ));
        }
        let redis_sock = self.parse_opt(&k::REDIS_SOCK, absolute_path)?;
        let redis_url = self.redis_url()?;
        if redis_sock.is_some() && redis_url.is_some() {
            return Err(self.conflict("REDIS_SOCK and REDIS_URL are both set; keep one"));
        }
        let redis_prefix = self.parse(&k::REDIS_PREFIX, redis_prefix)?;
        let redis_sentinels = self.parse(&k::REDIS_SENTINELS, sentinel_list)?;
        let redis_master_name = self.parse(&k::REDIS_MASTER_NAME, self::redis_prefix)?;
        let redis_sentinel_password = self
            .take(&k::REDIS_SENTINEL_PASSWORD)
            .map(|(v, _)| v)
            .filter(|v| !v.is_empty());
        let redis_wait_replicas = self.count(&k::REDIS_WAIT_REPLICAS)?;
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
            sub: self.parse(&k::SUBPATH, url_path)?,
            subws: self.parse(&k::SUBWSPATH, url_path)?,
            publish: self.parse(&k::PUBPATH, url_path)?,
            rest: self.parse(&k::RESTPATH, url_path)?,
            jsonrpc: self.parse(&k::JSONRPCPATH, url_path)?,
        };
        let host_id = self.parse_opt(&k::HOST_ID, host_id)?;
        let jwt_leeway = self.count(&k::JWT_LEEWAY)?;
        let log_level = match self.choice(&k::LOG_LEVEL)? {
            "error" => LevelFilter::Error,
            "warn" => LevelFilter::Warn,
            "debug" => LevelFilter::Debug,
            "trace" => LevelFilter::Trace,
            _ => LevelFilter::Info,
        };
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
            self.origins.insert(k::SECURITY_KEY.name, Origin::Generated);
            return zero::generate_key().map_err(|e| {
                ConfigError::new(format!("cannot generate a key from /dev/urandom: {e}"))
            });
        }
        let hint = "set it to the portal's signature key (letters and digits)";
        match self.take(&k::SECURITY_KEY) {
            None => Err(ConfigError::new(format!(
                "SECURITY_KEY is not set in {}: {hint}",
                self.source_name()
            ))),
            Some((v, origin)) if v.is_empty() => Err(ConfigError::new(format!(
                "SECURITY_KEY is empty in {}: {hint}",
                self.place(&origin)
            ))),
            // The value is never echoed: a near-miss key is still a secret.
            Some((v, origin)) if !is_security_key(&v) => Err(ConfigError::new(format!(
                "invalid SECURITY_KEY in {}: expected letters and digits only",
                self.place(&origin)
            ))),
            Some((v, _)) => Ok(v),
        }
    }

    fn listen(
        &mut self,
        key: &Key,
        zero_config: bool,
        zero_default: &str,
    ) -> Result<Option<SocketAddr>, ConfigError> {
        if self.settings.values.contains_key(key.name) {
            return self.parse_or(key, None, |v| {
                if v.is_empty() {
                    Ok(None)
                } else {
                    socket_addr(v).map(Some)
                }
            });
        }
        if !zero_config {
            self.origins.insert(key.name, Origin::Default);
            return Ok(None);
        }
        self.origins.insert(key.name, Origin::ZeroConfig);
        Ok(zero_default.parse().ok())
    }

    fn sock_group(&mut self) -> Result<Option<String>, ConfigError> {
        let key = if self.settings.values.contains_key(k::SOCK_GROUP.name) {
            &k::SOCK_GROUP
        } else {
            &k::GROUP
        };
        let group = self.parse_opt(key, group_name)?;
        if let Some(origin) = self.origins.remove(key.name) {
            self.origins.insert(k::SOCK_GROUP.name, origin);
        }
        Ok(group)
    }

    fn redis_url(&mut self) -> Result<Option<String>, ConfigError> {
        let Some((v, origin)) = self.take(&k::REDIS_URL) else {
            self.origins.insert(k::REDIS_URL.name, Origin::Default);
            return Ok(None);
        };
        if v.is_empty() {
            return Ok(None);
        }
        if is_redis_url(&v) {
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
        Ok(Limits {
            max_payload: self.count(&k::MAX_PAYLOAD)?,
            max_conn_per_channel: self.count(&k::MAX_CONN_PER_CHANNEL)?,
            max_messages_per_request: self.count(&k::MAX_MESSAGES_PER_REQUEST)?,
            max_channels_per_request: self.count(&k::MAX_CHANNELS_PER_REQUEST)?,
            max_header_size: self.count(&k::MAX_HEADER_SIZE)?,
            outbox_limit: self.count(&k::OUTBOX_LIMIT)?,
            max_connections: self.count(&k::MAX_CONNECTIONS)?,
        })
    }

    fn timings(&mut self) -> Result<Timings, ConfigError> {
        Ok(Timings {
            long_poll_timeout: self.parse(&k::LONG_POLL_TIMEOUT, seconds)?,
            header_timeout: self.parse(&k::HEADER_TIMEOUT, seconds)?,
            keepalive_timeout: self.parse(&k::KEEPALIVE_TIMEOUT, seconds)?,
            ws_ping_interval: self.parse(&k::WS_PING_INTERVAL, seconds)?,
            shutdown_timeout: self.parse(&k::SHUTDOWN_TIMEOUT, seconds)?,
        })
    }

    fn store(
        &mut self,
        run_dir: &Path,
        zero_config: bool,
        limits: &Limits,
    ) -> Result<StoreConfig, ConfigError> {
        let state_dir = if zero_config && !self.settings.values.contains_key(k::STATE_DIR.name) {
            self.origins.insert(k::STATE_DIR.name, Origin::ZeroConfig);
            zero::state_dir(run_dir)
        } else {
            self.parse(&k::STATE_DIR, absolute_path)?
        };
        let legacy = run_dir.join("push-server.state");
        let mut store = StoreConfig {
            message_ttl: self.count(&k::MESSAGE_TTL)?,
            expiry0_grace: self.count(&k::EXPIRY0_GRACE)?,
            online_ttl: self.count(&k::ONLINE_TTL)?,
            channel_history: self.count(&k::CHANNEL_HISTORY)?,
            max_bytes: self.count(&k::STORE_MAX_BYTES)?,
            state_file: self.parse_or(
                &k::STATE_FILE,
                state_dir.join("push-server.state"),
                absolute_path,
            )?,
            legacy_state_file: None,
            state_dir,
            fsync: match self.choice(&k::STORE_FSYNC)? {
                "always" => Fsync::Always,
                "no" => Fsync::No,
                _ => Fsync::EverySec,
            },
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
    fn take(&mut self, key: &Key) -> Option<(String, Origin)> {
        let found = self.settings.values.remove(key.name);
        let origin = found.as_ref().map_or(Origin::Default, |(_, o)| o.clone());
        self.origins.insert(key.name, origin);
        found
    }

    /// The key's value read by `check`, or its default from the key table.
    fn parse<T>(&mut self, key: &Key, check: Check<T>) -> Result<T, ConfigError> {
        match self.take(key) {
            None => check(key.default).map_err(|why| {
                ConfigError::new(format!("default {}={:?}: {why}", key.name, key.default))
            }),
            Some((v, origin)) => check(&v).map_err(|why| self.invalid(key.name, &v, &origin, &why)),
        }
    }

    /// Like [`Builder::parse`] for a default that depends on other keys.
    fn parse_or<T>(&mut self, key: &Key, default: T, check: Check<T>) -> Result<T, ConfigError> {
        let Some((v, origin)) = self.take(key) else {
            return Ok(default);
        };
        check(&v).map_err(|why| self.invalid(key.name, &v, &origin, &why))
    }

    /// Like [`Builder::parse`] for keys where an empty value means "none".
    fn parse_opt<T>(&mut self, key: &Key, check: Check<T>) -> Result<Option<T>, ConfigError> {
        match self.take(key) {
            None => Ok(None),
            Some((v, _)) if v.is_empty() => Ok(None),
            Some((v, origin)) => check(&v)
                .map(Some)
                .map_err(|why| self.invalid(key.name, &v, &origin, &why)),
        }
    }

    /// One of the words of a [`Parse::Choice`] key.
    fn choice(&mut self, key: &Key) -> Result<&'static str, ConfigError> {
        let Parse::Choice(words) = key.parse else {
            unreachable!("{} is not a choice", key.name)
        };
        let v = self.take(key);
        let (v, origin) = v.unwrap_or((key.default.to_string(), Origin::Default));
        choice(&v, words).map_err(|why| self.invalid(key.name, &v, &origin, &why))
    }

    /// A [`Parse::Count`] key, within its bounds.
    fn count<T: TryFrom<u64>>(&mut self, key: &Key) -> Result<T, ConfigError> {
        let Parse::Count { min, max } = key.parse else {
            unreachable!("{} is not a count", key.name)
        };
        let v = self.take(key);
        let (v, origin) = v.unwrap_or((key.default.to_string(), Origin::Default));
        let n = count(&v, min, max).map_err(|why| self.invalid(key.name, &v, &origin, &why))?;
        T::try_from(n)
            .map_err(|_| ConfigError::new(format!("{}={n} does not fit this platform", key.name)))
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
