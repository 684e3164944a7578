//! Listening sockets: Unix socket files (mode and group set, stale files replaced only when
//! nothing answers on them, or inherited from systemd and then left alone) and optional TCP,
//! plus the accepted-stream type.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use mio::event::Source;
use mio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use mio::{Interest, Registry, Token};

use crate::route::Role;

pub enum Listener {
    Unix(UnixListener, SocketFile),
    Tcp(TcpListener),
}

/// Where a Unix listener lives, and whether its file is ours to remove.
pub struct SocketFile {
    path: PathBuf,
    /// Device and inode of the file we bound. `None` for an inherited socket: its file is
    /// the socket unit's, and must outlive us so connects queue while we restart.
    ours: Option<(u64, u64)>,
}

pub struct Bound {
    pub listener: Listener,
    pub role: Role,
}

/// An accepted connection.
pub enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl SocketFile {
    /// Bound by this process (not inherited from the service manager).
    pub fn is_ours(&self) -> bool {
        self.ours.is_some()
    }
}

impl Listener {
    pub fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Unix(l, _) => l.accept().map(|(s, _)| Stream::Unix(s)),
            Listener::Tcp(l) => l.accept().map(|(s, _)| {
                // Small interactive messages: do not wait to coalesce.
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }),
        }
    }

    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        match self {
            Listener::Unix(l, _) => registry.register(l, token, Interest::READABLE),
            Listener::Tcp(l) => registry.register(l, token, Interest::READABLE),
        }
    }

    /// Where it listens, for logs and the startup banner.
    pub fn describe(&self) -> String {
        match self {
            Listener::Unix(_, f) if f.ours.is_none() => {
                format!("unix:{} (from systemd)", f.path.display())
            }
            Listener::Unix(_, f) => format!("unix:{}", f.path.display()),
            Listener::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "tcp:?".to_owned(), |a| a.to_string()),
        }
    }

    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(..) => None,
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Our socket file only, and only while it is still the one we bound: a socket unit
        // started meanwhile may have put its own file at the path.
        if let Listener::Unix(
            _,
            SocketFile {
                path,
                ours: Some(id),
            },
        ) = self
            && std::fs::symlink_metadata(&*path).is_ok_and(|m| (m.dev(), m.ino()) == *id)
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Binds a Unix socket at `path`, creating its directory. A leftover file is replaced only if
/// connecting to it fails (no live server behind it).
pub fn bind_unix(path: &Path, mode: u32, group: Option<&str>) -> io::Result<Listener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "{} is in use by a running server; stop it first",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if let Some(group) = group {
        let gid = lookup_group(group)?;
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot give {} to group {group}: {e}", path.display()),
            )
        })?;
    }
    let meta = std::fs::symlink_metadata(path)?;
    Ok(Listener::Unix(
        listener,
        SocketFile {
            path: path.to_owned(),
            ours: Some((meta.dev(), meta.ino())),
        },
    ))
}

/// A listener from socket activation: mode and group are the socket unit's
/// (`SocketMode=`, `SocketGroup=`), and its file is never removed.
pub fn inherited_unix(listener: std::os::unix::net::UnixListener, path: PathBuf) -> Listener {
    Listener::Unix(
        UnixListener::from_std(listener),
        SocketFile { path, ours: None },
    )
}

pub fn bind_tcp(addr: SocketAddr) -> io::Result<Listener> {
    TcpListener::bind(addr)
        .map(Listener::Tcp)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// Group name (or number) → gid, through the system's name service (getgrnam: /etc/group,
/// and LDAP or sssd where nsswitch.conf says so), the way `--check-config` looks it up.
pub fn lookup_group(group: &str) -> io::Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    uzers::get_group_by_name(group)
        .map(|g| g.gid())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "group {group} not found by the system's name service (getent group {group})"
                ),
            )
        })
}

impl Stream {
    pub fn shutdown_write(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Write),
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write_vectored(bufs),
            Stream::Tcp(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Source for Stream {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.register(r, t, i),
            Stream::Tcp(s) => s.register(r, t, i),
        }
    }

    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.reregister(r, t, i),
            Stream::Tcp(s) => s.reregister(r, t, i),
        }
    }

    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.deregister(r),
            Stream::Tcp(s) => s.deregister(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_lookup() {
        assert_eq!(lookup_group("0").unwrap(), 0);
        assert_eq!(lookup_group("root").unwrap(), 0);
        assert!(lookup_group("no-such-group-here").is_err());
    }

    #[test]
    fn stale_socket_replaced_live_one_refused() {
        let dir = std::env::temp_dir().join(format!("ps-listener-{}", std::process::id()));
        let path = dir.join("s.sock");
        let first = bind_unix(&path, 0o660, None).unwrap();
        assert!(
            bind_unix(&path, 0o660, None).is_err(),
            "live server holds it"
        );
        // Simulate a crash: the file stays, nobody listens.
        std::mem::forget(first);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&path, b"").unwrap();
        let again = bind_unix(&path, 0o660, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        drop(again);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_that_is_not_ours_is_left_at_drop() {
        let dir = std::env::temp_dir().join(format!("ps-listener-own-{}", std::process::id()));
        let path = dir.join("s.sock");
        let ours = bind_unix(&path, 0o660, None).unwrap();
        // Someone else (a socket unit started meanwhile) replaced the file.
        std::fs::remove_file(&path).unwrap();
        let theirs = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(ours);
        assert!(path.exists(), "the replacement must survive our shutdown");
        theirs.set_nonblocking(true).unwrap();
        drop(inherited_unix(theirs, path.clone()));
        assert!(path.exists(), "an inherited socket file is never removed");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
