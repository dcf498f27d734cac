//! Reaching a [`Target`]: resolved late (so `localhost:7007` works), each
//! address tried in turn, every blocking call bounded by the timeout. The
//! parsing itself is in [`target`].

mod target;

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::error::Error;

pub use target::Target;

impl Target {
    /// Every address the host resolves to, in the resolver's order.
    pub fn resolve(&self) -> Result<Vec<SocketAddr>, Error> {
        let addrs: Vec<SocketAddr> = (self.bare_host(), self.port())
            .to_socket_addrs()
            .map_err(|source| self.connect_error(source))?
            .collect();
        if addrs.is_empty() {
            let source = io::Error::new(io::ErrorKind::NotFound, "the name has no addresses");
            return Err(self.connect_error(source));
        }
        Ok(addrs)
    }

    /// Connects to the first address that answers, waiting at most `timeout`
    /// for each, and sets `timeout` on every later read and write.
    pub fn connect(&self, timeout: Duration) -> Result<TcpStream, Error> {
        let mut last_error = None;
        for addr in self.resolve()? {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(stream) => {
                    set_timeouts(&stream, timeout).map_err(|source| self.connect_error(source))?;
                    return Ok(stream);
                }
                Err(err) => last_error = Some(err),
            }
        }
        // `resolve` returned at least one address, so some attempt failed.
        let source = last_error.unwrap_or_else(|| io::Error::other("no address to try"));
        Err(self.connect_error(source))
    }

    /// The `cannot connect to ADDR: ...` error for this target.
    pub fn connect_error(&self, source: io::Error) -> Error {
        Error::Connect {
            addr: self.to_string(),
            source,
        }
    }
}

/// Bounds every blocking read and write on `stream`, so a silent peer costs
/// at most `timeout` per call instead of hanging the client.
pub fn set_timeouts(stream: &TcpStream, timeout: Duration) -> io::Result<()> {
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_hosts_resolve_without_brackets() {
        let target: Target = "[::1]:7007".parse().unwrap();
        let addrs = target.resolve().unwrap();
        assert_eq!(addrs, vec!["[::1]:7007".parse::<SocketAddr>().unwrap()]);
    }
}
