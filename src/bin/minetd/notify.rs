//! Readiness for a service manager: systemd's `sd_notify(3)` protocol, one
//! datagram of `KEY=VALUE` lines to the Unix socket named by
//! `NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).
//!
//! Written here rather than taken from a crate: the protocol is one
//! `sendto`, and the `sd-notify` crate connects to the variable as a path,
//! so it cannot reach an abstract socket, which is what systemd itself
//! usually hands out. Notifying is never fatal: a manager that is gone
//! must not take the service with it, so a failure is a warning.

use std::ffi::OsString;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use log::{debug, warn};

/// Where notifications go; does nothing when `NOTIFY_SOCKET` was unset.
pub struct Notifier {
    target: Option<Target>,
}

struct Target {
    /// The variable as given, for messages.
    name: OsString,
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`. A value that names no usable socket is a
    /// warning, and notifications are then dropped.
    pub fn from_env() -> Notifier {
        let Some(name) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier { target: None };
        };
        let target = match Target::open(&name) {
            Ok(target) => Some(target),
            Err(err) => {
                warn!("cannot notify the service manager (NOTIFY_SOCKET={name:?}): {err}");
                None
            }
        };
        Notifier { target }
    }

    /// Every listener is served: the manager may start what depends on us.
    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// A graceful shutdown has begun.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// A one-line status for `systemctl status`.
    pub fn status(&self, line: &str) {
        // A status is one line; a newline would start another assignment.
        let line = line.replace('\n', " ");
        self.send(&format!("STATUS={line}"));
    }

    fn send(&self, message: &str) {
        let Some(target) = &self.target else {
            return;
        };
        match target.socket.send_to_addr(message.as_bytes(), &target.addr) {
            Ok(_) => debug!("notified the service manager: {message}"),
            Err(err) => warn!(
                "cannot notify the service manager (NOTIFY_SOCKET={:?}) of {message}: {err}",
                target.name
            ),
        }
    }
}

impl Target {
    fn open(name: &OsString) -> std::io::Result<Target> {
        let bytes = name.as_bytes();
        let addr = match bytes.first() {
            Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..])?,
            Some(b'/') => SocketAddr::from_pathname(name)?,
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "neither an absolute path nor @name",
                ));
            }
        };
        Ok(Target {
            name: name.clone(),
            socket: UnixDatagram::unbound()?,
            addr,
        })
    }
}
