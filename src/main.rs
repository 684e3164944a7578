//! `push-server [--config PATH] [--check-config]`: reads the configuration, binds, serves.
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
use push_server::{logger, message};

const USAGE: &str = "usage: push-server [--config PATH] [--check-config]

  --config PATH    read PATH instead of /etc/sysconfig/push-server-multi
  --check-config   print the effective configuration and exit (0 valid, 2 invalid)
Environment variables with the same names as the file's keys override it.";

struct Args {
    config: Option<PathBuf>,
    check: bool,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        config: None,
        check: false,
    };
    let mut it = std::env::args_os().skip(1);
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--config") => {
                args.config = Some(PathBuf::from(it.next().ok_or("--config needs a path")?));
            }
            Some(s) if s.starts_with("--config=") => {
                args.config = Some(PathBuf::from(&s["--config=".len()..]));
            }
            Some("--check-config") => args.check = true,
            Some("--help") | Some("-h") => return Ok(None),
            Some("--version") | Some("-V") => {
                let _ = writeln!(
                    std::io::stdout(),
                    "push-server {}",
                    env!("CARGO_PKG_VERSION")
                );
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {a:?}")),
        }
    }
    Ok(Some(args))
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
    let env = |k: &str| std::env::var(k).ok();
    let cfg = match config::load(args.config.as_deref(), &env) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "push-server: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        let mut out = std::io::stdout();
        let dirs: Vec<&std::path::Path> = UNIT_DIRS.iter().map(std::path::Path::new).collect();
        let units = activation::unit_socket_paths(&dirs);
        let unit_warnings = activation::unit_mismatches(&units, &cfg.sub_sock, &cfg.pub_sock);
        for w in cfg.warnings.iter().chain(&unit_warnings) {
            let _ = writeln!(std::io::stderr(), "warning: {w}");
        }
        let _ = write!(out, "{}", cfg.render());
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
    let channel = ChannelId(random_bytes()).to_hex();
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

fn random_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    if b == [0; 16] {
        b = message::now_ms()
            .to_le_bytes()
            .repeat(2)
            .try_into()
            .unwrap_or([1; 16]);
    }
    b
}
