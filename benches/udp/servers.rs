//! Starting the UDP echo servers under test, each in a process of its own
//! pinned to the server core: minetd (the release binary cargo built for
//! this bench, or another build given by path) and the references (this
//! bench binary re-executed with `--serve`).

use std::fmt;
use std::io::{self, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command};

/// A server under test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Minetd,
    /// Another minetd binary (an earlier build, say), as a reference.
    MinetdAt(PathBuf),
    /// `recvfrom` / `sendto`, one datagram per call.
    Plain,
    /// `recvmmsg` / `sendmmsg` in batches.
    Mmsg,
}

impl Kind {
    /// `minetd`, `minetd:PATH`, `plain`, `mmsg`.
    pub fn parse(text: &str) -> Result<Kind, String> {
        match text.split_once(':') {
            None if text == "minetd" => Ok(Kind::Minetd),
            None if text == "plain" => Ok(Kind::Plain),
            None if text == "mmsg" => Ok(Kind::Mmsg),
            Some(("minetd", path)) if !path.is_empty() => Ok(Kind::MinetdAt(path.into())),
            _ => Err(format!(
                "unknown server {text:?} (minetd, minetd:PATH, plain or mmsg)"
            )),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Minetd => f.write_str("minetd"),
            Kind::MinetdAt(path) => {
                let name = path.file_name().unwrap_or_default();
                let name = if name == "minetd" {
                    path.parent()
                        .and_then(|dir| dir.file_name())
                        .unwrap_or(name)
                } else {
                    name
                };
                write!(f, "minetd@{}", name.to_string_lossy())
            }
            Kind::Plain => f.write_str("plain"),
            Kind::Mmsg => f.write_str("mmsg"),
        }
    }
}

/// A running server; killed when dropped.
pub struct Server {
    child: Child,
    /// Kept open so that the server never writes into a closed pipe.
    _stdout: BufReader<ChildStdout>,
    pub pid: u32,
    pub addr: SocketAddr,
}

impl Server {
    /// Starts `kind` on 127.0.0.1 port 0, pinned to `cpu` if given, and
    /// waits for its `listening udp-echo ADDR` line.
    pub fn start(kind: &Kind, cpu: Option<usize>) -> io::Result<Server> {
        let command = match kind {
            Kind::Minetd | Kind::MinetdAt(_) => {
                let binary = match kind {
                    Kind::MinetdAt(path) => path.clone(),
                    _ => PathBuf::from(env!("CARGO_BIN_EXE_minetd")),
                };
                let mut command = Command::new(binary);
                command
                    .args(["--udp-echo", "127.0.0.1:0"])
                    .env("RUST_LOG", "warn");
                command
            }
            Kind::Plain | Kind::Mmsg => {
                let mut command = Command::new(std::env::current_exe()?);
                command.args(["--serve", &kind.to_string()]);
                command
            }
        };
        let started = crate::common::spawn_announced(command, cpu, "udp-echo", &kind.to_string())?;
        Ok(Server {
            pid: started.child.id(),
            child: started.child,
            _stdout: started.stdout,
            addr: started.addr,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
