//! Listening sockets inherited from systemd socket activation (docs/restart.md): the fds
//! come in `LISTEN_FDS`/`LISTEN_PID` (taken through the `listenfd` crate, which does the
//! descriptor work so no `unsafe` is needed here) and their names in `LISTEN_FDNAMES`. Each
//! inherited Unix socket takes the place of `SUB_SOCK` or `PUB_SOCK`: by its name (`sub`,
//! `pub`, set with `FileDescriptorName=` in the socket units), else by its path.

use std::io;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use crate::route::Role;

/// A listening Unix socket passed in by the service manager.
pub struct Inherited {
    pub role: Role,
    pub listener: UnixListener,
    /// Its path, for logs; the file belongs to the socket unit and is never removed by us.
    pub path: PathBuf,
}

/// What the environment passed, before roles are known (the configuration is read later).
pub struct Passed {
    fds: Vec<(Option<String>, UnixListener)>,
}

impl Passed {
    /// Takes the inherited descriptors out of the environment. Call it first thing in
    /// `main`, before any thread starts: it removes `LISTEN_PID`/`LISTEN_FDS`, so children
    /// do not inherit them, and changing the environment is only sound single-threaded.
    pub fn from_env() -> io::Result<Passed> {
        let names = std::env::var("LISTEN_FDNAMES").ok();
        let mut fds = listenfd::ListenFd::from_env();
        let names = split_names(names.as_deref(), fds.len());
        let mut out = Vec::with_capacity(fds.len());
        for (i, name) in names.into_iter().enumerate() {
            let listener = fds
                .take_unix_listener(i)
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "inherited socket #{i} ({}) is not a listening Unix stream socket: {e}",
                            name.as_deref().unwrap_or("unnamed")
                        ),
                    )
                })?
                .ok_or_else(|| io::Error::other(format!("inherited socket #{i} taken twice")))?;
            out.push((name, listener));
        }
        Ok(Passed { fds: out })
    }

    /// Nothing was passed: the server binds its own sockets.
    pub fn none() -> Passed {
        Passed { fds: Vec::new() }
    }

    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// Gives each passed socket its role; an unidentifiable one, or two for one role, is an
    /// error that names the socket and how to fix the unit.
    pub fn assign(self, sub_sock: &Path, pub_sock: &Path) -> io::Result<Vec<Inherited>> {
        let mut out: Vec<Inherited> = Vec::with_capacity(self.fds.len());
        for (i, (name, listener)) in self.fds.into_iter().enumerate() {
            listener.set_nonblocking(true)?;
            let path = listener
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(Path::to_path_buf));
            let role =
                role_for(name.as_deref(), path.as_deref(), sub_sock, pub_sock).map_err(|why| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("inherited socket #{i}: {why}"),
                    )
                })?;
            if out.iter().any(|s| s.role == role) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("two inherited sockets for the {} role", role_word(role)),
                ));
            }
            out.push(Inherited {
                role,
                listener,
                path: path.unwrap_or_else(|| PathBuf::from("(unnamed)")),
            });
        }
        Ok(out)
    }
}

/// `LISTEN_FDNAMES` is colon-separated, one name per fd; missing or short means unnamed.
fn split_names(names: Option<&str>, count: usize) -> Vec<Option<String>> {
    let mut given = names.map(|n| n.split(':')).into_iter().flatten();
    (0..count)
        .map(|_| given.next().filter(|n| !n.is_empty()).map(str::to_owned))
        .collect()
}

/// The role of one inherited socket: its name when that is `sub` or `pub`, else its path
/// when that is the configured `SUB_SOCK` or `PUB_SOCK` (a unit that names both sockets the
/// same, since systemd names all fds of one socket unit alike).
pub fn role_for(
    name: Option<&str>,
    path: Option<&Path>,
    sub_sock: &Path,
    pub_sock: &Path,
) -> Result<Role, String> {
    match name {
        Some("sub") => return Ok(Role::Sub),
        Some("pub") => return Ok(Role::Pub),
        _ => {}
    }
    match path {
        Some(p) if p == sub_sock => Ok(Role::Sub),
        Some(p) if p == pub_sock => Ok(Role::Pub),
        _ => Err(format!(
            "named {} at {}: neither `sub` nor `pub` (FileDescriptorName=), nor SUB_SOCK {} \
             or PUB_SOCK {}",
            name.unwrap_or("nothing"),
            path.map_or_else(|| "no path".to_owned(), |p| p.display().to_string()),
            sub_sock.display(),
            pub_sock.display()
        )),
    }
}

fn role_word(role: Role) -> &'static str {
    match role {
        Role::Sub => "subscriber (sub)",
        Role::Pub => "publisher (pub)",
    }
}

/// The `ListenStream=` paths of the installed socket units that start push-server, as
/// (unit file, path): for `--check-config`, which warns when they differ from the
/// configuration. The first directory holding a unit wins, as systemd's search order does.
pub fn unit_socket_paths(dirs: &[&Path]) -> Vec<(PathBuf, PathBuf)> {
    let mut out = Vec::new();
    for unit in ["push-server.socket", "push-server-pub.socket"] {
        let Some((file, text)) = dirs.iter().find_map(|d| {
            let f = d.join(unit);
            std::fs::read_to_string(&f).ok().map(|t| (f, t))
        }) else {
            continue;
        };
        for path in listen_streams(&text) {
            out.push((file.clone(), path));
        }
    }
    out
}

/// The absolute paths in `ListenStream=` lines of a unit's text (ports and abstract
/// sockets are not file paths and are skipped).
fn listen_streams(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("ListenStream="))
        .map(str::trim)
        .filter(|v| v.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

/// Warnings for `--check-config`: socket-unit paths that are neither configured socket.
pub fn unit_mismatches(
    units: &[(PathBuf, PathBuf)],
    sub_sock: &Path,
    pub_sock: &Path,
) -> Vec<String> {
    units
        .iter()
        .filter(|(_, p)| p != sub_sock && p != pub_sock)
        .map(|(unit, p)| {
            format!(
                "{} listens on {}, but SUB_SOCK is {} and PUB_SOCK is {}: once the socket unit \
                 is active the server takes its socket, so nginx must point there; make them agree",
                unit.display(),
                p.display(),
                sub_sock.display(),
                pub_sock.display()
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUB: &str = "/run/p/sub.sock";
    const PUB: &str = "/run/p/pub.sock";

    fn role(name: Option<&str>, path: Option<&str>) -> Result<Role, String> {
        role_for(name, path.map(Path::new), Path::new(SUB), Path::new(PUB))
    }

    #[test]
    fn name_wins_then_path() {
        assert_eq!(role(Some("sub"), Some(PUB)), Ok(Role::Sub));
        assert_eq!(role(Some("pub"), None), Ok(Role::Pub));
        assert_eq!(role(Some("push-server.socket"), Some(SUB)), Ok(Role::Sub));
        assert_eq!(role(None, Some(PUB)), Ok(Role::Pub));
        let e = role(Some("push-server.socket"), Some("/elsewhere.sock")).unwrap_err();
        assert!(
            e.contains("/elsewhere.sock") && e.contains("FileDescriptorName"),
            "{e}"
        );
        assert!(role(None, None).is_err());
    }

    #[test]
    fn names_split_per_fd() {
        assert_eq!(
            split_names(Some("sub:pub"), 2),
            [Some("sub".into()), Some("pub".into())]
        );
        assert_eq!(split_names(Some("sub"), 2), [Some("sub".into()), None]);
        assert_eq!(split_names(None, 1), [None]);
        assert_eq!(split_names(Some("::"), 2), [None, None]);
    }

    #[test]
    fn unit_paths_and_mismatches() {
        let dir = std::env::temp_dir().join(format!("ps-activation-{}", std::process::id()));
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(
            a.join("push-server.socket"),
            "[Socket]\nListenStream=/run/p/sub.sock\nFileDescriptorName=sub\n",
        )
        .unwrap();
        // Shadowed by the one in `a`.
        std::fs::write(b.join("push-server.socket"), "ListenStream=/x.sock\n").unwrap();
        std::fs::write(
            b.join("push-server-pub.socket"),
            "ListenStream=/other/pub.sock\nListenStream=8010\n",
        )
        .unwrap();
        let units = unit_socket_paths(&[&a, &b]);
        assert_eq!(units.len(), 2, "{units:?}");
        let warn = unit_mismatches(&units, Path::new(SUB), Path::new(PUB));
        assert_eq!(warn.len(), 1, "{warn:?}");
        assert!(warn[0].contains("/other/pub.sock"), "{}", warn[0]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
