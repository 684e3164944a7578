//! systemd readiness notification (`Type=notify`) over the `NOTIFY_SOCKET` datagram socket,
//! done with the standard library: no libsystemd.

use std::io;
use std::os::unix::net::UnixDatagram;

/// Sends `state` (e.g. `READY=1`) when running under systemd; a no-op otherwise.
pub fn notify(state: &str) -> io::Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        // Abstract namespace socket (systemd's default form).
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), &path)?;
    }
    Ok(())
}

/// [`notify`], logging instead of failing: readiness reporting must never stop the server.
pub fn notify_or_log(state: &str) {
    if let Err(e) = notify(state) {
        log::warn!("sd_notify {state:?} failed: {e}");
    }
}
