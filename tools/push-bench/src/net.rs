//! Addresses and sockets: a Unix socket path or a loopback TCP address, as a non-blocking mio
//! stream (subscribers) or a blocking std stream (publisher, `/server-stat/`).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use mio::event::Source;
use mio::{Interest, Registry, Token};

/// Linux `EMFILE` / `ENFILE`: the per-process / system fd table is full.
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

/// Where a listener is: a Unix socket path (anything with a '/') or a loopback TCP address.
#[derive(Clone, Debug)]
pub enum Addr {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl Addr {
    /// Parses `PATH` (contains '/') or `host:port`; refuses non-loopback TCP addresses.
    pub fn parse(s: &str) -> Result<Addr, String> {
        if s.contains('/') {
            return Ok(Addr::Unix(PathBuf::from(s)));
        }
        let addrs: Vec<SocketAddr> = s
            .to_socket_addrs()
            .map_err(|e| format!("bad address {s:?}: {e}"))?
            .collect();
        let Some(first) = addrs.first().copied() else {
            return Err(format!("address {s:?} resolves to nothing"));
        };
        if let Some(bad) = addrs.iter().find(|a| !a.ip().is_loopback()) {
            return Err(format!(
                "refusing non-loopback address {bad} (push-bench talks to loopback or Unix sockets only)"
            ));
        }
        Ok(Addr::Tcp(first))
    }

    pub fn is_tcp(&self) -> bool {
        matches!(self, Addr::Tcp(_))
    }

    /// A blocking connection with read/write timeouts.
    pub fn connect_blocking(&self, timeout: Duration) -> io::Result<BStream> {
        let s = match self {
            Addr::Unix(p) => BStream::Unix(std::os::unix::net::UnixStream::connect(p)?),
            Addr::Tcp(a) => {
                let t = std::net::TcpStream::connect_timeout(a, timeout)?;
                t.set_nodelay(true)?;
                BStream::Tcp(t)
            }
        };
        s.set_timeouts(Some(timeout))?;
        Ok(s)
    }

    /// Starts a non-blocking connection. `Ok(None)` means "listener backlog full, retry later"
    /// (a Unix socket answers `EAGAIN` then).
    pub fn connect_nonblocking(&self) -> Result<Option<MStream>, ConnectError> {
        let r = match self {
            Addr::Unix(p) => mio::net::UnixStream::connect(p).map(MStream::Unix),
            Addr::Tcp(a) => mio::net::TcpStream::connect(*a).map(|s| {
                let _ = s.set_nodelay(true);
                MStream::Tcp(s)
            }),
        };
        match r {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if matches!(e.raw_os_error(), Some(EMFILE) | Some(ENFILE)) => {
                Err(ConnectError::Fatal(format!(
                    "out of file descriptors ({e}); the fd limit is {} per process (see /proc/self/limits); \
                     use fewer --conns (N <= 9000 per process fits a 20000 limit with room to spare)",
                    fd_limit().map_or("unknown".to_string(), |n| n.to_string())
                )))
            }
            Err(e) => Err(ConnectError::Failed(e.to_string())),
        }
    }
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Unix(p) => write!(f, "{}", p.display()),
            Addr::Tcp(a) => write!(f, "{a}"),
        }
    }
}

pub enum ConnectError {
    /// This connection failed; others may work.
    Failed(String),
    /// The run cannot go on (fd table full).
    Fatal(String),
}

/// The soft `Max open files` limit of this process, from `/proc/self/limits`.
pub fn fd_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// A blocking stream.
pub enum BStream {
    Unix(std::os::unix::net::UnixStream),
    Tcp(std::net::TcpStream),
}

impl BStream {
    pub fn try_clone(&self) -> io::Result<BStream> {
        Ok(match self {
            BStream::Unix(s) => BStream::Unix(s.try_clone()?),
            BStream::Tcp(s) => BStream::Tcp(s.try_clone()?),
        })
    }

    pub fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            BStream::Unix(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
            BStream::Tcp(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
        }
    }

    /// The same socket as a non-blocking mio stream. `O_NONBLOCK` belongs to the open file,
    /// so every clone of it becomes non-blocking too.
    pub fn into_mio(self) -> io::Result<MStream> {
        Ok(match self {
            BStream::Unix(s) => {
                s.set_nonblocking(true)?;
                MStream::Unix(mio::net::UnixStream::from_std(s))
            }
            BStream::Tcp(s) => {
                s.set_nonblocking(true)?;
                MStream::Tcp(mio::net::TcpStream::from_std(s))
            }
        })
    }
}

impl Read for BStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            BStream::Unix(s) => s.read(buf),
            BStream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for BStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            BStream::Unix(s) => s.write(buf),
            BStream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A non-blocking mio stream.
pub enum MStream {
    Unix(mio::net::UnixStream),
    Tcp(mio::net::TcpStream),
}

impl MStream {
    /// `Ok(true)` once a non-blocking connect has completed; an error if it failed.
    pub fn connected(&self) -> io::Result<bool> {
        match self {
            MStream::Unix(s) => {
                if let Some(e) = s.take_error()? {
                    return Err(e);
                }
                Ok(true)
            }
            MStream::Tcp(s) => {
                if let Some(e) = s.take_error()? {
                    return Err(e);
                }
                match s.peer_addr() {
                    Ok(_) => Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }
}

impl Read for MStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            MStream::Unix(s) => s.read(buf),
            MStream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for MStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            MStream::Unix(s) => s.write(buf),
            MStream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Source for MStream {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            MStream::Unix(s) => s.register(r, t, i),
            MStream::Tcp(s) => s.register(r, t, i),
        }
    }
    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            MStream::Unix(s) => s.reregister(r, t, i),
            MStream::Tcp(s) => s.reregister(r, t, i),
        }
    }
    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            MStream::Unix(s) => s.deregister(r),
            MStream::Tcp(s) => s.deregister(r),
        }
    }
}
