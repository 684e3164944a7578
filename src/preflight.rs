//! What `--check-config` verifies beyond the values themselves: what the start will need from
//! the machine (docs/operations.md, "Checking the configuration"). The socket group must
//! exist in the system's name service, the directories the server writes must exist or be
//! creatable, and a configured Redis should answer (only a warning: the server starts
//! without Redis and connects when it appears).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::Config;

/// What the checks found: failures make `--check-config` exit 2.
#[derive(Debug, Default)]
pub struct Findings {
    pub failures: Vec<String>,
    pub warnings: Vec<String>,
    /// What passed, one line each (printed with the configuration).
    pub passed: Vec<String>,
}

pub fn run(cfg: &Config) -> Findings {
    let mut f = Findings::default();
    check_group(cfg, &mut f);
    check_dirs(cfg, &mut f);
    check_redis(cfg, &mut f);
    f
}

fn check_group(cfg: &Config, f: &mut Findings) {
    let Some(group) = &cfg.sock_group else {
        return;
    };
    // The rendered SOCK_GROUP is SOCK_GROUP when set, else GROUP.
    let key = "GROUP/SOCK_GROUP";
    match crate::listener::lookup_group(group) {
        Ok(gid) => f
            .passed
            .push(format!("{key}: group {group} exists (gid {gid})")),
        Err(e) => f.failures.push(format!(
            "{key}={group}: {e}; the start cannot give the sockets to it (create it with \
             `groupadd {group}`, or name nginx's group)"
        )),
    }
}

/// The directories the server creates or writes: RUN_DIR, the socket directories, STATE_DIR
/// and the directory of STATE_FILE.
fn check_dirs(cfg: &Config, f: &mut Findings) {
    let mut dirs: Vec<(&str, PathBuf)> = vec![("RUN_DIR", cfg.run_dir.clone())];
    for (key, sock) in [("SUB_SOCK", &cfg.sub_sock), ("PUB_SOCK", &cfg.pub_sock)] {
        if let Some(parent) = sock.parent() {
            dirs.push((key, parent.to_path_buf()));
        }
    }
    // The embedded store's files; unused with Redis.
    if cfg.redis_sock.is_none() && cfg.redis_url.is_none() && cfg.redis_sentinels.is_empty() {
        dirs.push(("STATE_DIR", cfg.store.state_dir.clone()));
        if let Some(parent) = cfg.store.state_file.parent() {
            dirs.push(("STATE_FILE", parent.to_path_buf()));
        }
    }
    let mut seen = Vec::new();
    for (key, dir) in dirs {
        if seen.contains(&dir) {
            continue;
        }
        match creatable(&dir) {
            Ok(what) => f.passed.push(format!("{key}: {} {what}", dir.display())),
            Err(e) => f.failures.push(format!("{key}: {}: {e}", dir.display())),
        }
        seen.push(dir);
    }
}

/// Ok when `dir` is a writable directory, or when its nearest existing ancestor is one (the
/// server creates the rest). Writability is tried, not inferred from mode bits: a probe file
/// is created and removed at once.
fn creatable(dir: &Path) -> Result<&'static str, String> {
    let mut existing = dir;
    while !existing.exists() {
        existing = existing
            .parent()
            .ok_or_else(|| "no existing ancestor directory".to_string())?;
    }
    if !existing.is_dir() {
        return Err(format!(
            "{} exists and is not a directory",
            existing.display()
        ));
    }
    let probe = existing.join(format!(".push-server-check-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
        }
        Err(e) => {
            return Err(format!(
                "cannot write in {}: {e} (checked as uid {}; the service runs as the unit's User=)",
                existing.display(),
                uzers::get_current_uid()
            ));
        }
    }
    Ok(if existing == dir {
        "exists and is writable"
    } else {
        "can be created"
    })
}

fn check_redis(cfg: &Config, f: &mut Findings) {
    let mut targets: Vec<(String, redis::ConnectionInfo)> = Vec::new();
    let info = |r: redis::RedisResult<redis::ConnectionInfo>| r.map_err(|e| e.to_string());
    use redis::IntoConnectionInfo;
    let parsed = if let Some(p) = &cfg.redis_sock {
        vec![(
            format!("REDIS_SOCK {}", p.display()),
            info(redis::ConnectionAddr::Unix(p.clone()).into_connection_info()),
        )]
    } else if let Some(u) = &cfg.redis_url {
        vec![(
            "REDIS_URL".to_string(),
            info(u.as_str().into_connection_info()),
        )]
    } else {
        cfg.redis_sentinels
            .iter()
            .map(|s| {
                (
                    format!("REDIS_SENTINELS {s}"),
                    info(format!("redis://{s}").as_str().into_connection_info()),
                )
            })
            .collect()
    };
    for (name, i) in parsed {
        match i {
            Ok(i) => targets.push((name, i)),
            Err(e) => f.warnings.push(format!("{name}: {e}")),
        }
    }
    for (name, info) in targets {
        match ping(info) {
            Ok(()) => f.passed.push(format!("{name}: Redis answers PING")),
            Err(e) => f.warnings.push(format!(
                "{name}: Redis does not answer ({e}); the server starts anyway, answers \
                 publishes and /health with 503, and connects when Redis is up"
            )),
        }
    }
}

/// Ok when Redis answers at all: an error reply (a password needed, say) still shows it is
/// reachable; the store's own log tells the rest.
fn ping(info: redis::ConnectionInfo) -> Result<(), String> {
    let client = redis::Client::open(info).map_err(|e| e.to_string())?;
    let unreachable = |e: &redis::RedisError| {
        e.is_io_error() || e.is_timeout() || e.is_connection_refusal() || e.is_connection_dropped()
    };
    let result = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .and_then(|mut conn| {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            redis::cmd("PING").query::<String>(&mut conn).map(|_| ())
        });
    match result {
        Err(e) if unreachable(&e) => Err(e.to_string()),
        _ => Ok(()),
    }
}
