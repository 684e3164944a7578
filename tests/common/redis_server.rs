//! A private `redis-server` per test, on a Unix socket in its own short temp dir, without
//! persistence; killed on drop. `scripts/test.sh` installs redis-server when it is missing.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{TestDir, wait_until};

pub struct Redis {
    child: Option<Child>,
    pub dir: TestDir,
    pub sock: PathBuf,
}

impl Redis {
    pub fn start() -> Redis {
        let dir = TestDir::new();
        let sock = dir.join("redis.sock");
        let mut r = Redis {
            child: None,
            dir,
            sock,
        };
        r.restart();
        r
    }

    /// Starts (again) on the same socket with empty data, as a Redis without persistence does
    /// after a restart.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server already running");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&self.sock)
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--daemonize", "no", "--loglevel", "warning", "--dir"])
            .arg(&self.dir.path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}); scripts/test.sh installs it")
            });
        self.child = Some(child);
        let up = wait_until(Duration::from_secs(5), || {
            self.try_cli(&["PING"]).is_some_and(|o| o.trim() == "PONG")
        });
        assert!(up, "redis-server did not answer PING on {:?}", self.sock);
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.sock);
    }

    /// Saves to `dump.rdb` and exits (`SHUTDOWN SAVE`), so the next [`Redis::restart`] loads
    /// the data, as a Redis with persistence does.
    pub fn shutdown_saving(&mut self) {
        let _ = self.try_cli(&["SHUTDOWN", "SAVE"]);
        if let Some(mut c) = self.child.take() {
            let exited = wait_until(Duration::from_secs(10), || {
                c.try_wait().ok().flatten().is_some()
            });
            assert!(exited, "redis-server did not exit after SHUTDOWN SAVE");
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A connection of the `redis` crate, for inspecting or tampering with binary keys.
    pub fn conn(&self) -> redis::Connection {
        let info = redis::IntoConnectionInfo::into_connection_info(redis::ConnectionAddr::Unix(
            self.sock.clone(),
        ))
        .expect("unix socket address");
        redis::Client::open(info)
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .expect("connect to the test redis-server")
    }

    /// The `calls` of one command in `INFO commandstats` (0 when never called).
    pub fn calls(&self, command: &str) -> u64 {
        self.command_calls()
            .into_iter()
            .find(|(c, _)| c == command)
            .map_or(0, |(_, n)| n)
    }

    fn try_cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .arg("-s")
            .arg(&self.sock)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs one command with redis-cli and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|| panic!("redis-cli {args:?} failed on {:?}", self.sock))
    }

    /// `INFO commandstats` as (command, calls) pairs.
    pub fn command_calls(&self) -> Vec<(String, u64)> {
        self.cli(&["INFO", "commandstats"])
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("cmdstat_")?;
                let (name, stats) = rest.split_once(':')?;
                let calls = stats
                    .strip_prefix("calls=")?
                    .split(',')
                    .next()?
                    .parse()
                    .ok()?;
                Some((name.to_owned(), calls))
            })
            .collect()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free TCP port on the loopback (bound, then released; taken again by the caller at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A private `redis-server` (or Sentinel) on a loopback TCP port, for replication and
/// Sentinel tests (replicas reach their master over TCP only). Killed on drop.
pub struct RedisTcp {
    child: Option<Child>,
    pub dir: TestDir,
    pub port: u16,
}

impl RedisTcp {
    /// A Redis without persistence, with `extra` arguments (`--replicaof …`).
    pub fn start(extra: &[&str]) -> RedisTcp {
        let dir = TestDir::new();
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--loglevel", "warning", "--dir"])
            .arg(&dir.path)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-server ({e})"));
        RedisTcp::wait(child, dir, port)
    }

    /// A Sentinel monitoring `master_name` at `master_port`, quick to fail over.
    pub fn sentinel(master_name: &str, master_port: u16) -> RedisTcp {
        let dir = TestDir::new();
        let port = free_port();
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {master_name} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {master_name} 1000\n\
                 sentinel failover-timeout {master_name} 3000\n\
                 sentinel parallel-syncs {master_name} 1\n",
                dir.path.display()
            ),
        )
        .expect("write sentinel.conf");
        let child = Command::new("redis-server")
            .arg(&conf)
            .args(["--sentinel", "--loglevel", "warning", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-server --sentinel ({e})"));
        RedisTcp::wait(child, dir, port)
    }

    fn wait(child: Child, dir: TestDir, port: u16) -> RedisTcp {
        let r = RedisTcp {
            child: Some(child),
            dir,
            port,
        };
        let up = wait_until(Duration::from_secs(5), || {
            r.try_cli(&["PING"]).is_some_and(|o| o.trim() == "PONG")
        });
        assert!(up, "redis-server did not answer PING on port {port}");
        r
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn try_cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|| panic!("redis-cli {args:?} failed on port {}", self.port))
    }

    /// One field of `INFO replication` (`role`, `master_link_status`, `connected_slaves`).
    pub fn replication(&self, field: &str) -> String {
        self.try_cli(&["INFO", "replication"])
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!("{field}:"))
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_default()
    }
}

impl Drop for RedisTcp {
    fn drop(&mut self) {
        self.kill();
    }
}
