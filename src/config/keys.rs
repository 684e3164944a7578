//! The key table: one declaration per key (name, default, parser, doc line, how
//! `--check-config` shows it). Reading the file and the environment, validation, rendering
//! and the checks of systemd/push-server-multi.example and the README's table all use it
//! (docs/operations.md#configuration).

use super::Config;
use super::render::{fmt_duration, mask_key, mask_url, opt_display};
use super::values::{self, MAX_SECONDS};

const MIB: u64 = 1 << 20;
/// The largest count a `usize` holds on every supported platform.
const ANY: u64 = usize::MAX as u64;
/// `u32::MAX`: counts that have no real upper bound.
const U32: u64 = u32::MAX as u64;

/// How a key's value is read; each variant names a parser in values.rs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parse {
    /// Letters and digits, never echoed.
    SecurityKey,
    /// One of these words, case-insensitive.
    Choice(&'static [&'static str]),
    /// A whole number in `min..=max`.
    Count { min: u64, max: u64 },
    /// Seconds greater than 0, decimals allowed.
    Seconds,
    /// An absolute path.
    AbsolutePath,
    /// An absolute path short enough for a Unix socket.
    SocketPath,
    /// Empty (no listener) or `IP:port`.
    Listen,
    /// A group name or numeric gid.
    Group,
    /// An octal file mode.
    Mode,
    /// A URL path starting with `/`.
    UrlPath,
    /// `redis://…` or `unix://…`.
    RedisUrl,
    /// Text without spaces or control characters.
    Name,
    /// `host:port,host:port,…`.
    Sentinels,
    /// Any text, never shown.
    Secret,
    /// The portal's host id.
    HostId,
}

impl Parse {
    /// Whether `v` is a valid value: the same parsers validation uses, without the typed
    /// result. An empty value means "unset" for the keys that may be unset.
    pub fn check(self, v: &str) -> Result<(), String> {
        match self {
            Parse::SecurityKey if values::is_security_key(v) => Ok(()),
            Parse::SecurityKey => Err("expected letters and digits only".into()),
            Parse::Choice(words) => values::choice(v, words).map(drop),
            Parse::Count { min, max } => values::count(v, min, max).map(drop),
            Parse::Seconds => values::seconds(v).map(drop),
            Parse::AbsolutePath => values::absolute_path(v).map(drop),
            Parse::SocketPath => values::socket_path(v).map(drop),
            Parse::Listen if v.is_empty() => Ok(()),
            Parse::Listen => values::socket_addr(v).map(drop),
            Parse::Group => values::group_name(v).map(drop),
            Parse::Mode => values::parse_mode(v).map(drop),
            Parse::UrlPath => values::url_path(v).map(drop),
            Parse::RedisUrl if v.is_empty() || values::is_redis_url(v) => Ok(()),
            Parse::RedisUrl => Err("expected redis://[:password@]host:port or unix:///path".into()),
            Parse::Name => values::redis_prefix(v).map(drop),
            Parse::Sentinels => values::sentinel_list(v).map(drop),
            Parse::Secret => Ok(()),
            Parse::HostId => values::host_id(v).map(drop),
        }
    }
}

/// One honoured key.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    pub name: &'static str,
    /// The default as systemd/push-server-multi.example writes it; empty: unset (or required,
    /// for `SECURITY_KEY`). `$RUN_DIR` and `$STATE_DIR` stand for those keys' values.
    pub default: &'static str,
    pub parse: Parse,
    /// One line saying what the key does.
    pub doc: &'static str,
    /// The effective value as `--check-config` prints it (before quoting); `None`: not
    /// printed (`GROUP` is shown as `SOCK_GROUP`).
    pub render: Option<fn(&Config) -> String>,
}

/// Declares each key as a constant of that name and lists them all in [`KEYS`], in the
/// order `--check-config` prints them.
macro_rules! keys {
    ($(
        #[doc = $doc:literal]
        $name:ident { default: $default:literal, parse: $parse:expr, render: $render:expr, }
    )+) => {
        $(
            #[doc = $doc]
            pub const $name: Key = Key {
                name: stringify!($name),
                default: $default,
                parse: $parse,
                doc: $doc.trim_ascii(),
                render: $render,
            };
        )+
        /// Every honoured key, read from the file and the environment.
        pub const KEYS: &[Key] = &[$($name),+];
    };
}

keys! {
    /// HMAC key of channel signatures, the portal's `signature_key`; required but in zero-config.
    SECURITY_KEY {
        default: "",
        parse: Parse::SecurityKey,
        render: Some(|c| mask_key(&c.security_key)),
    }
    /// HMAC hash, the portal's `signature_algo`.
    SECURITY_ALGO {
        default: "sha1",
        parse: Parse::Choice(&["sha1", "sha256"]),
        render: Some(|c| c.algo.name().into()),
    }
    /// Directory of the Unix sockets; created at startup if missing.
    RUN_DIR {
        default: "/tmp/push-server",
        parse: Parse::AbsolutePath,
        render: Some(|c| c.run_dir.display().to_string()),
    }
    /// Unix socket for subscribers and client publishing.
    SUB_SOCK {
        default: "$RUN_DIR/sub.sock",
        parse: Parse::SocketPath,
        render: Some(|c| c.sub_sock.display().to_string()),
    }
    /// Unix socket for publishing, statistics, health and metrics.
    PUB_SOCK {
        default: "$RUN_DIR/pub.sock",
        parse: Parse::SocketPath,
        render: Some(|c| c.pub_sock.display().to_string()),
    }
    /// Optional TCP listener (IP:port) for subscribers.
    SUB_LISTEN {
        default: "",
        parse: Parse::Listen,
        render: Some(|c| opt_display(&c.sub_listen)),
    }
    /// Optional TCP listener (IP:port) for publishing; keep it on loopback.
    PUB_LISTEN {
        default: "",
        parse: Parse::Listen,
        render: Some(|c| opt_display(&c.pub_listen)),
    }
    /// Group of the socket files; defaults to GROUP.
    SOCK_GROUP {
        default: "",
        parse: Parse::Group,
        render: Some(|c| c.sock_group.clone().unwrap_or_default()),
    }
    /// Group of the socket files (the 0.4.0 name); SOCK_GROUP wins.
    GROUP {
        default: "",
        parse: Parse::Group,
        render: None,
    }
    /// Octal mode of the socket files.
    SOCK_MODE {
        default: "0660",
        parse: Parse::Mode,
        render: Some(|c| format!("{:04o}", c.sock_mode)),
    }
    /// Redis Unix socket; unset: the embedded store.
    REDIS_SOCK {
        default: "",
        parse: Parse::AbsolutePath,
        render: Some(|c| opt_display(&c.redis_sock.as_ref().map(|p| p.display()))),
    }
    /// Redis over TCP (or unix://) instead of REDIS_SOCK.
    REDIS_URL {
        default: "",
        parse: Parse::RedisUrl,
        render: Some(|c| c.redis_url.as_deref().map(mask_url).unwrap_or_default()),
    }
    /// Prefix of every Redis key and pub/sub channel.
    REDIS_PREFIX {
        default: "",
        parse: Parse::Name,
        render: Some(|c| c.redis_prefix.clone()),
    }
    /// host:port of each Redis Sentinel, comma-separated.
    REDIS_SENTINELS {
        default: "",
        parse: Parse::Sentinels,
        render: Some(|c| c.redis_sentinels.join(",")),
    }
    /// The name the Sentinels monitor the master under.
    REDIS_MASTER_NAME {
        default: "",
        parse: Parse::Name,
        render: Some(|c| c.redis_master_name.clone()),
    }
    /// The Sentinels' password.
    REDIS_SENTINEL_PASSWORD {
        default: "",
        parse: Parse::Secret,
        render: Some(|c| opt_display(&c.redis_sentinel_password.as_ref().map(|_| "***"))),
    }
    /// Replicas a publish waits for (Redis WAIT); 0: none.
    REDIS_WAIT_REPLICAS {
        default: "0",
        parse: Parse::Count { min: 0, max: 64 },
        render: Some(|c| c.redis_wait_replicas.to_string()),
    }
    /// Route prefix of long polling.
    SUBPATH {
        default: "/bitrix/sub/",
        parse: Parse::UrlPath,
        render: Some(|c| c.paths.sub.clone()),
    }
    /// Route prefix of WebSockets.
    SUBWSPATH {
        default: "/bitrix/subws/",
        parse: Parse::UrlPath,
        render: Some(|c| c.paths.subws.clone()),
    }
    /// Route prefix of publishing.
    PUBPATH {
        default: "/bitrix/pub/",
        parse: Parse::UrlPath,
        render: Some(|c| c.paths.publish.clone()),
    }
    /// Route prefix of client publishing.
    RESTPATH {
        default: "/bitrix/rest/",
        parse: Parse::UrlPath,
        render: Some(|c| c.paths.rest.clone()),
    }
    /// The v5 backend endpoint on the publish listener.
    JSONRPCPATH {
        default: "/bitrix/api/",
        parse: Parse::UrlPath,
        render: Some(|c| c.paths.jsonrpc.clone()),
    }
    /// The portal's host id; when set, v5 tokens must name it.
    HOST_ID {
        default: "",
        parse: Parse::HostId,
        render: Some(|c| c.host_id.clone().unwrap_or_default()),
    }
    /// Seconds a v5 token's issue time may lie in the future.
    JWT_LEEWAY {
        default: "60",
        parse: Parse::Count { min: 0, max: 3600 },
        render: Some(|c| c.jwt_leeway.to_string()),
    }
    /// Log level.
    LOG_LEVEL {
        default: "info",
        parse: Parse::Choice(&["error", "warn", "info", "debug", "trace"]),
        render: Some(|c| c.log_level.as_str().to_ascii_lowercase()),
    }
    /// Bytes of an HTTP body or WebSocket message.
    MAX_PAYLOAD {
        default: "1048576",
        parse: Parse::Count { min: 1, max: 64 * MIB },
        render: Some(|c| c.limits.max_payload.to_string()),
    }
    /// Connections per private channel.
    MAX_CONN_PER_CHANNEL {
        default: "100",
        parse: Parse::Count { min: 1, max: U32 },
        render: Some(|c| c.limits.max_conn_per_channel.to_string()),
    }
    /// Messages per publish request.
    MAX_MESSAGES_PER_REQUEST {
        default: "100",
        parse: Parse::Count { min: 1, max: U32 },
        render: Some(|c| c.limits.max_messages_per_request.to_string()),
    }
    /// Channels per request.
    MAX_CHANNELS_PER_REQUEST {
        default: "100",
        parse: Parse::Count { min: 1, max: U32 },
        render: Some(|c| c.limits.max_channels_per_request.to_string()),
    }
    /// Bytes of request line plus headers.
    MAX_HEADER_SIZE {
        default: "8192",
        parse: Parse::Count { min: 1024, max: 65536 },
        render: Some(|c| c.limits.max_header_size.to_string()),
    }
    /// Bytes queued for one connection before it counts as a slow consumer.
    OUTBOX_LIMIT {
        default: "4194304",
        parse: Parse::Count { min: 1, max: ANY },
        render: Some(|c| c.limits.outbox_limit.to_string()),
    }
    /// Open client connections in total.
    MAX_CONNECTIONS {
        default: "50000",
        parse: Parse::Count { min: 1, max: U32 },
        render: Some(|c| c.limits.max_connections.to_string()),
    }
    /// Seconds a long poll is held before 304.
    LONG_POLL_TIMEOUT {
        default: "40",
        parse: Parse::Seconds,
        render: Some(|c| fmt_duration(c.timings.long_poll_timeout)),
    }
    /// Seconds for a request head and body to arrive.
    HEADER_TIMEOUT {
        default: "10",
        parse: Parse::Seconds,
        render: Some(|c| fmt_duration(c.timings.header_timeout)),
    }
    /// Seconds an idle keep-alive connection is kept.
    KEEPALIVE_TIMEOUT {
        default: "75",
        parse: Parse::Seconds,
        render: Some(|c| fmt_duration(c.timings.keepalive_timeout)),
    }
    /// Seconds between WebSocket pings.
    WS_PING_INTERVAL {
        default: "120",
        parse: Parse::Seconds,
        render: Some(|c| fmt_duration(c.timings.ws_ping_interval)),
    }
    /// Seconds to drain connections on SIGTERM.
    SHUTDOWN_TIMEOUT {
        default: "5",
        parse: Parse::Seconds,
        render: Some(|c| fmt_duration(c.timings.shutdown_timeout)),
    }
    /// Longest time a message is kept, in seconds.
    MESSAGE_TTL {
        default: "86400",
        parse: Parse::Count { min: 1, max: MAX_SECONDS },
        render: Some(|c| c.store.message_ttl.to_string()),
    }
    /// Seconds an expiry-0 message stays replayable.
    EXPIRY0_GRACE {
        default: "60",
        parse: Parse::Count { min: 0, max: 86_400 },
        render: Some(|c| c.store.expiry0_grace.to_string()),
    }
    /// Seconds a channel stays online after its long poll ended.
    ONLINE_TTL {
        default: "130",
        parse: Parse::Count { min: 1, max: 86_400 },
        render: Some(|c| c.store.online_ttl.to_string()),
    }
    /// Messages kept per channel.
    CHANNEL_HISTORY {
        default: "1000",
        parse: Parse::Count { min: 1, max: U32 },
        render: Some(|c| c.store.channel_history.to_string()),
    }
    /// Total bytes of stored message bodies.
    STORE_MAX_BYTES {
        default: "268435456",
        parse: Parse::Count { min: 1, max: ANY },
        render: Some(|c| c.store.max_bytes.to_string()),
    }
    /// File that keeps the message-id epoch across restarts.
    STATE_FILE {
        default: "$STATE_DIR/push-server.state",
        parse: Parse::AbsolutePath,
        render: Some(|c| c.store.state_file.display().to_string()),
    }
    /// Directory of the embedded store's journal and of the state file.
    STATE_DIR {
        default: "/var/lib/push-server",
        parse: Parse::AbsolutePath,
        render: Some(|c| c.store.state_dir.display().to_string()),
    }
    /// When the journal is flushed to the disk.
    STORE_FSYNC {
        default: "everysec",
        parse: Parse::Choice(&["always", "everysec", "no"]),
        render: Some(|c| c.store.fsync.name().into()),
    }
}

/// Legacy keys that shipped files carry but that mean nothing here. Accepted silently in the
/// file and never read from the environment (`USER` is set by every login shell). `IP_LIST`
/// chose the clients whose requests the Node.js server logged to debug files; `LOG_LEVEL=debug`
/// logs every request with its client address here. `SEND_TIMEOUT` was this server's own key,
/// never used: slow consumers are bounded by `OUTBOX_LIMIT` and the ping rule
/// (docs/operations.md, "Failure behaviour").
pub const IGNORED_KEYS: &[&str] = &[
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

/// The table's spelling of `name` and whether it is honoured (`false`: ignored).
pub(super) fn known_key(name: &str) -> Option<(&'static str, bool)> {
    if let Some(k) = KEYS.iter().find(|k| k.name == name) {
        return Some((k.name, true));
    }
    IGNORED_KEYS
        .iter()
        .find(|k| **k == name)
        .map(|k| (*k, false))
}

/// The key named `name`, if it is honoured.
pub fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}
