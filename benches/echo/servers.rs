//! Starting the servers under test, each in a process of its own pinned to
//! the server core: minetd (the release binary cargo built for this bench)
//! and the references (this bench binary re-executed with `--serve`).

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
    Epoll,
    /// tokio with this many bytes of buffer per connection.
    Tokio(usize),
}

impl Kind {
    /// `minetd`, `minetd:PATH`, `epoll`, `tokio:16384` (also `tokio:16K`).
    pub fn parse(text: &str) -> Result<Kind, String> {
        match text.split_once(':') {
            None if text == "minetd" => Ok(Kind::Minetd),
            None if text == "epoll" => Ok(Kind::Epoll),
            Some(("minetd", path)) if !path.is_empty() => Ok(Kind::MinetdAt(path.into())),
            Some(("tokio", size)) => parse_size(size)
                .filter(|&size| size > 0)
                .map(Kind::Tokio)
                .ok_or_else(|| format!("bad tokio buffer size {size:?}")),
            _ => Err(format!(
                "unknown server {text:?} (minetd, minetd:PATH, epoll or tokio:SIZE)"
            )),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Minetd => f.write_str("minetd"),
            // Short enough for a table column: the file name, or its folder
            // when that is just `minetd`.
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
            Kind::Epoll => f.write_str("epoll"),
            Kind::Tokio(size) if size % 1024 == 0 => write!(f, "tokio-{}K", size / 1024),
            Kind::Tokio(size) => write!(f, "tokio-{size}"),
        }
    }
}

/// `512`, `16K`, `64k`, `65536`.
pub fn parse_size(text: &str) -> Option<usize> {
    let (digits, unit) = match text.strip_suffix(['K', 'k']) {
        Some(digits) => (digits, 1024),
        None => (text, 1),
    };
    digits.parse::<usize>().ok()?.checked_mul(unit)
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
    /// waits for its `listening echo ADDR` line.
    pub fn start(kind: &Kind, cpu: Option<usize>) -> io::Result<Server> {
        let command = match kind {
            Kind::Minetd | Kind::MinetdAt(_) => {
                let binary = match kind {
                    Kind::MinetdAt(path) => path.clone(),
                    _ => PathBuf::from(env!("CARGO_BIN_EXE_minetd")),
                };
                let mut command = Command::new(binary);
                command
                    .args(["--echo", "127.0.0.1:0"])
                    .args(["--max-connections", "20000"])
                    .args(["--idle-timeout", "0"])
                    .env("RUST_LOG", "warn");
                command
            }
            Kind::Epoll => {
                let mut command = Command::new(std::env::current_exe()?);
                command.args(["--serve", "epoll"]);
                command
            }
            Kind::Tokio(size) => {
                let mut command = Command::new(std::env::current_exe()?);
                command.args(["--serve", &format!("tokio:{size}")]);
                command
            }
        };
        let started = crate::common::spawn_announced(command, cpu, "echo", &kind.to_string())?;
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
