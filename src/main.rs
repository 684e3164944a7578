//! `push-server [--config PATH] [--check-config]`: reads the configuration, binds, serves;
//! `push-server check` and `push-server sign` test a deployment ([`selfcheck`]).
//! Exit codes: 0 clean shutdown or valid config, 1 runtime failure, 2 invalid configuration
//! or usage.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use push_server::activation::{self, Passed};
use push_server::channel::ChannelId;
use push_server::config;
use push_server::route::Role;
use push_server::server::Server;
use push_server::signature::Signer;
use push_server::{logger, preflight, selfcheck};

const USAGE: &str = "usage: push-server [--config PATH] [--check-config]
       push-server check [--config PATH] [--sub-url URL] [--pub-url URL]
       push-server sign [--config PATH] CHANNEL

  --config PATH    read PATH instead of /etc/sysconfig/push-server-multi
  --check-config   check the configuration and what the start needs (group, directories,
                   Redis), print the effective configuration and exit (0 valid, 2 invalid)
  check            test a running deployment end to end: subscribe by long poll and
                   WebSocket, publish as the portal does (v3 text, v4 protobuf), check the
                   deliveries; on the sockets, or through nginx with --sub-url (the public
                   server, e.g. http://127.0.0.1:80) and --pub-url (the publish server, e.g.
                   http://127.0.0.1:8895); exit 0 only when every step passed
  sign CHANNEL     print CHANNEL.SIGNATURE, a signed channel id for manual subscriptions

Environment variables with the same names as the file's keys override it.

Zero-config: with no config file and none of SECURITY_KEY, REDIS_SOCK, REDIS_URL,
REDIS_SENTINELS in the environment, the server generates a key, prints it, and also listens
on TCP 127.0.0.1:8010 (subscribers) and 127.0.0.1:9010 (publishers). Setting any of those
keys, or having the file, turns that mode and its TCP listeners off (SUB_LISTEN and
PUB_LISTEN set them explicitly).

Signals: SIGTERM/SIGINT stop gracefully (long polls get 304, WebSockets close 1001, exit
within SHUTDOWN_TIMEOUT); SIGHUP (systemctl reload) re-reads the config file.

Documentation: /usr/share/doc/push-server/ (README.md), and docs/ in the source tree:
docs/operations.md (configuration, signals, logs, metrics), docs/bitrix.md (portal
settings, migration), docs/protocol.md (the wire protocol).";

enum Mode {
    Serve { check_config: bool },
    Check(selfcheck::CheckArgs),
    Sign(String),
}

struct Args {
    config: Option<PathBuf>,
    mode: Mode,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut config = None;
    let mut check_config = false;
    let mut command: Option<String> = None;
    let mut sub_url = None;
    let mut pub_url = None;
    let mut channel = None;
    let mut it = std::env::args_os().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> Result<String, String> {
            it.next()
                .and_then(|v| v.into_string().ok())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match a.to_str() {
            Some("--config") => config = Some(PathBuf::from(value("--config")?)),
            Some(s) if s.starts_with("--config=") => {
                config = Some(PathBuf::from(&s["--config=".len()..]));
            }
            Some("--check-config") => check_config = true,
            Some("--sub-url") if command.as_deref() == Some("check") => {
                sub_url = Some(value("--sub-url")?);
            }
            Some("--pub-url") if command.as_deref() == Some("check") => {
                pub_url = Some(value("--pub-url")?);
            }
            Some("--help") | Some("-h") => return Ok(None),
            Some("--version") | Some("-V") => {
                let _ = writeln!(
                    std::io::stdout(),
                    "push-server {}",
                    env!("CARGO_PKG_VERSION")
                );
                std::process::exit(0);
            }
            Some(c @ ("check" | "sign")) if command.is_none() => command = Some(c.to_string()),
            Some(ch) if command.as_deref() == Some("sign") && channel.is_none() => {
                channel = Some(ch.to_string());
            }
            _ => return Err(format!("unknown argument {a:?}")),
        }
    }
    let mode = match command.as_deref() {
        None => Mode::Serve { check_config },
        Some(c) if check_config => return Err(format!("--check-config does not go with {c}")),
        Some("check") => Mode::Check(selfcheck::CheckArgs {
            config: config.clone(),
            sub_url,
            pub_url,
        }),
        Some(_) => Mode::Sign(channel.ok_or("sign needs a CHANNEL (32 hex digits)")?),
    };
    Ok(Some(Args { config, mode }))
}

/// Where systemd looks for unit files, most specific first.
const UNIT_DIRS: [&str; 4] = [
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

fn main() -> ExitCode {
    // First, while single-threaded: it edits the environment (docs/restart.md).
    let passed = match Passed::from_env() {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "push-server: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => {
            let _ = writeln!(std::io::stdout(), "{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "push-server: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let check_config = match args.mode {
        Mode::Serve { check_config } => check_config,
        Mode::Check(c) => return selfcheck::check(&c),
        Mode::Sign(channel) => return selfcheck::sign(args.config.as_deref(), &channel),
    };
    let env = |k: &str| std::env::var(k).ok();
    let cfg = match config::load(args.config.as_deref(), &env) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "push-server: {e}");
            return ExitCode::from(2);
        }
    };
    if check_config {
        let mut out = std::io::stdout();
        let dirs: Vec<&std::path::Path> = UNIT_DIRS.iter().map(std::path::Path::new).collect();
        let units = activation::unit_socket_paths(&dirs);
        let unit_warnings = activation::unit_mismatches(&units, &cfg.sub_sock, &cfg.pub_sock);
        for w in cfg.warnings.iter().chain(&unit_warnings) {
            let _ = writeln!(std::io::stderr(), "warning: {w}");
        }
        let found = preflight::run(&cfg);
        for w in &found.warnings {
            let _ = writeln!(std::io::stderr(), "warning: {w}");
        }
        let _ = write!(out, "{}", cfg.render());
        if !cfg.ignored_keys.is_empty() {
            let _ = writeln!(
                out,
                "# ignored: keys that set nothing here (from the Node.js server, or retired): {}\n\
                 #   (ports and sockets are SUB_LISTEN/PUB_LISTEN and SUB_SOCK/PUB_SOCK)",
                cfg.ignored_keys.join(", ")
            );
        }
        for p in &found.passed {
            let _ = writeln!(out, "# ok: {p}");
        }
        if !found.failures.is_empty() {
            for e in &found.failures {
                let _ = writeln!(std::io::stderr(), "push-server: {e}");
            }
            let _ = writeln!(
                std::io::stderr(),
                "push-server: the configuration is valid, but the start would fail ({} problem{})",
                found.failures.len(),
                if found.failures.len() == 1 { "" } else { "s" }
            );
            return ExitCode::from(2);
        }
        let _ = writeln!(out, "configuration is valid");
        return ExitCode::SUCCESS;
    }
    logger::init(cfg.log_level);
    for w in &cfg.warnings {
        log::warn!("{w}");
    }
    match &cfg.source {
        Some(p) => log::info!("configuration from {}", p.display()),
        None => log::info!("no configuration file; using the environment and defaults"),
    }
    let zero_config = cfg
        .zero_config
        .then(|| (cfg.security_key.clone(), cfg.algo));
    if !passed.is_empty() {
        log::info!("socket activation: taking the listening sockets systemd passed");
    }
    let mut server = match Server::bind(cfg, args.config, passed) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    for (role, addr, _) in server.listening() {
        log::info!("listening on {addr} ({})", role_name(role));
    }
    // Listeners are bound: systemd may route traffic now. A Redis store connects in the
    // background; until it is up, /health and publishes answer 503 rather than blocking start.
    push_server::notify::notify_or_log("READY=1");
    if let Some((key, algo)) = zero_config {
        print_banner(&server, &key, Signer::new(algo, key.as_bytes()));
    }
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("event loop failed: {e}");
            ExitCode::from(1)
        }
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Sub => "subscribers: /bitrix/sub/, /bitrix/subws/, /bitrix/rest/",
        Role::Pub => "publishers: /bitrix/pub/, /server-stat/",
    }
}

/// Zero-config mode: tell a new user where to point the portal and how to try it by hand.
fn print_banner(server: &Server, key: &str, signer: Signer) {
    let listening = server.listening();
    let base = |want: Role| -> String {
        let tcp = listening
            .iter()
            .find(|(r, _, a)| *r == want && a.is_some())
            .and_then(|(_, _, a)| *a);
        match tcp {
            Some(a) => format!("'http://{a}"),
            None => {
                let unix = listening
                    .iter()
                    .find(|(r, _, _)| *r == want)
                    .map(|(_, d, _)| d.trim_start_matches("unix:").to_owned())
                    .unwrap_or_default();
                format!("--unix-socket {unix} 'http://localhost")
            }
        }
    };
    let channel = ChannelId(selfcheck::random_bytes()).to_hex();
    let sig = signer.sign_hex(channel.as_bytes());
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "push-server is running with the embedded store (zero-config mode).\n"
    );
    for (role, addr, _) in &listening {
        let _ = writeln!(out, "  listening on {addr}  ({})", role_name(*role));
    }
    let _ = writeln!(
        out,
        "\n  SECURITY_KEY={key}\n  (generated for this run: enter it as the portal's signature key, \
         or put it in /etc/sysconfig/push-server-multi)\n"
    );
    let _ = writeln!(
        out,
        "  Zero-config is for trying it out: once /etc/sysconfig/push-server-multi exists or\n  \
         SECURITY_KEY, REDIS_SOCK, REDIS_URL or REDIS_SENTINELS is set, this mode and its TCP\n  \
         listeners on 127.0.0.1:8010 and 127.0.0.1:9010 are off (SUB_LISTEN and PUB_LISTEN set\n  \
         TCP listeners explicitly). See `push-server --help` and docs/operations.md.\n"
    );
    let _ = writeln!(
        out,
        "Try it: subscribe (waits up to 40 s for a message) in one terminal:\n"
    );
    let _ = writeln!(
        out,
        "curl -sS {}/bitrix/sub/?CHANNEL_ID={channel}.{sig}'",
        base(Role::Sub)
    );
    let _ = writeln!(out, "\nthen publish to the same channel from another:\n");
    let _ = writeln!(
        out,
        "curl -sS -d '{{\"module_id\":\"test\",\"command\":\"hello\",\"params\":{{}}}}' {}/bitrix/pub/?CHANNEL_ID={channel}'",
        base(Role::Pub)
    );
    let _ = writeln!(out);
    let _ = out.flush();
}
