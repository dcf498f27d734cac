//! `HOST:PORT` as the user typed it: parsed strictly enough to reject typos
//! as usage errors, resolved late (so `localhost:7007` works) and always
//! shown back exactly as given.

use std::fmt;
use std::io;
use std::net::{Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::str::FromStr;
use std::time::Duration;

use crate::error::Error;

/// A peer named by host (name, IPv4, or bracketed IPv6) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The host as typed, brackets included for IPv6 (`[::1]`).
    host: String,
    /// The TCP port, never 0.
    port: u16,
}

impl Target {
    /// The host as the resolver wants it: without IPv6 brackets.
    fn bare_host(&self) -> &str {
        self.host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&self.host)
    }

    /// Every address the host resolves to, in the resolver's order.
    pub fn resolve(&self) -> Result<Vec<SocketAddr>, Error> {
        let addrs: Vec<SocketAddr> = (self.bare_host(), self.port)
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

    /// The HTTP `Host` header value: `host:port`, or just `host` on port 80.
    pub fn host_header(&self) -> String {
        if self.port == 80 {
            self.host.clone()
        } else {
            self.to_string()
        }
    }
}

/// Bounds every blocking read and write on `stream`, so a silent peer costs
/// at most `timeout` per call instead of hanging the client.
pub fn set_timeouts(stream: &TcpStream, timeout: Duration) -> io::Result<()> {
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))
}

impl FromStr for Target {
    type Err = String;

    fn from_str(text: &str) -> Result<Target, String> {
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| "expected HOST:PORT".to_string())?;
        if host.is_empty() {
            return Err("expected HOST:PORT, the host is missing".to_string());
        }
        check_host(host)?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("the port '{port}' is not a number from 1 to 65535"))?;
        if port == 0 {
            return Err("port 0 cannot be connected to".to_string());
        }
        Ok(Target {
            host: host.to_string(),
            port,
        })
    }
}

/// Rejects hosts that cannot be meant: an IPv6 address needs brackets so
/// its colons are not mistaken for the port separator.
fn check_host(host: &str) -> Result<(), String> {
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| "an IPv6 address needs a closing ']'".to_string())?;
        inner
            .parse::<Ipv6Addr>()
            .map_err(|_| format!("'{inner}' is not an IPv6 address"))?;
    } else if host.contains(':') {
        return Err("write an IPv6 address in brackets, as in [::1]:7007".to_string());
    }
    Ok(())
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses_parse_and_print_as_given() {
        for text in [
            "localhost:7007",
            "127.0.0.1:1",
            "[::1]:65535",
            "example.com:80",
        ] {
            let target: Target = text.parse().unwrap();
            assert_eq!(target.to_string(), text);
        }
    }

    #[test]
    fn bad_addresses_are_refused_with_a_reason() {
        for text in [
            "localhost",
            ":7007",
            "localhost:",
            "localhost:x",
            "localhost:0",
            "localhost:65536",
            "::1:7007",
            "[::1:7007",
            "[nope]:7007",
        ] {
            assert!(text.parse::<Target>().is_err(), "{text} parsed");
        }
    }

    #[test]
    fn ipv6_hosts_resolve_without_brackets() {
        let target: Target = "[::1]:7007".parse().unwrap();
        let addrs = target.resolve().unwrap();
        assert_eq!(addrs, vec!["[::1]:7007".parse::<SocketAddr>().unwrap()]);
    }
}
