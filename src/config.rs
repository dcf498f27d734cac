//! What to serve and within which limits: plain data, checked before any
//! socket is opened. No I/O happens here.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::str::FromStr;
use std::time::Duration;

/// The classic service a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Service {
    /// Echo (RFC 862): every byte received is sent back.
    Echo,
    /// Daytime (RFC 867): one line with the time, then close.
    Daytime,
}

impl Service {
    /// The name used in `listening NAME ADDR` lines, options and logs.
    pub fn name(self) -> &'static str {
        match self {
            Service::Echo => "echo",
            Service::Daytime => "daytime",
        }
    }

    /// Where the `minetd` binary serves this service when no service option
    /// is given: the RFC port plus 7000, on loopback only.
    pub fn default_addr(self) -> SocketAddr {
        let port = match self {
            Service::Echo => 7007,
            Service::Daytime => 7013,
        };
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the daytime line is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DaytimeFormat {
    /// `Sun Nov 22 15:38:54 2026`: the classic inetd line that scanners
    /// such as `nmap -sV` recognise.
    #[default]
    Ctime,
    /// `Sun, 22 Nov 2026 15:38:54 +0000`.
    Rfc5322,
    /// `2026-11-22T15:38:54Z`.
    Rfc3339,
}

impl DaytimeFormat {
    /// Every format, in the order `--help` lists them.
    pub const ALL: [DaytimeFormat; 3] = [
        DaytimeFormat::Ctime,
        DaytimeFormat::Rfc5322,
        DaytimeFormat::Rfc3339,
    ];

    /// The name used by `--daytime-format`.
    pub fn name(self) -> &'static str {
        match self {
            DaytimeFormat::Ctime => "ctime",
            DaytimeFormat::Rfc5322 => "rfc5322",
            DaytimeFormat::Rfc3339 => "rfc3339",
        }
    }
}

impl FromStr for DaytimeFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DaytimeFormat::ALL
            .into_iter()
            .find(|format| format.name() == s)
            .ok_or_else(|| {
                format!("unknown daytime format '{s}' (expected ctime, rfc5322 or rfc3339)")
            })
    }
}

/// Everything [`Server::bind`](crate::Server::bind) needs.
///
/// `Default` serves nothing and carries the `minetd` binary's default limits,
/// so an embedder names only the services it wants:
///
/// ```
/// let config = minetd::Config {
///     echo: vec!["127.0.0.1:0".parse().unwrap()],
///     ..Default::default()
/// };
/// assert!(config.daytime.is_empty());
/// assert_eq!(config.max_pending, 65536);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Addresses to serve echo on.
    pub echo: Vec<SocketAddr>,
    /// Addresses to serve daytime on.
    pub daytime: Vec<SocketAddr>,
    /// Open client connections at most; past it a new connection is
    /// accepted and closed at once.
    pub max_connections: usize,
    /// Close a connection after this long without traffic; `None` = never.
    pub idle_timeout: Option<Duration>,
    /// Bytes read but not yet echoed, per connection. At the cap the server
    /// stops reading that connection until the peer drains it.
    pub max_pending: usize,
    /// After a shutdown request, how long to keep flushing owed bytes.
    pub shutdown_grace: Duration,
    /// The daytime line's format.
    pub daytime_format: DaytimeFormat,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            echo: Vec::new(),
            daytime: Vec::new(),
            max_connections: 10_000,
            idle_timeout: Some(Duration::from_secs(300)),
            max_pending: 64 * 1024,
            shutdown_grace: Duration::from_secs(5),
            daytime_format: DaytimeFormat::Ctime,
        }
    }
}

impl Config {
    /// Every `(service, address)` to listen on, echo first, each service's
    /// addresses in the order given.
    pub fn listeners(&self) -> impl Iterator<Item = (Service, SocketAddr)> + '_ {
        let echo = self.echo.iter().map(|addr| (Service::Echo, *addr));
        let daytime = self.daytime.iter().map(|addr| (Service::Daytime, *addr));
        echo.chain(daytime)
    }

    /// Checks the values a server cannot run with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.echo.is_empty() && self.daytime.is_empty() {
            return Err(ConfigError::NoService);
        }
        if self.max_connections == 0 {
            return Err(ConfigError::ZeroMaxConnections);
        }
        if self.max_pending == 0 {
            return Err(ConfigError::ZeroMaxPending);
        }
        Ok(())
    }
}

/// A [`Config`] that cannot be served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// No listener address for any service.
    NoService,
    /// `max_connections` is 0: every connection would be refused.
    ZeroMaxConnections,
    /// `max_pending` is 0: echo could never read a byte.
    ZeroMaxPending,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NoService => f.write_str("no service to serve: give at least one address"),
            ConfigError::ZeroMaxConnections => f.write_str("max-connections must be at least 1"),
            ConfigError::ZeroMaxPending => f.write_str("max-pending must be at least 1"),
        }
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_serves_nothing_and_is_rejected() {
        assert_eq!(Config::default().validate(), Err(ConfigError::NoService));
    }

    #[test]
    fn listeners_list_echo_then_daytime_in_given_order() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "[::1]:2".parse().unwrap();
        let c: SocketAddr = "127.0.0.1:3".parse().unwrap();
        let config = Config {
            echo: vec![a, b],
            daytime: vec![c],
            ..Config::default()
        };
        let listed: Vec<_> = config.listeners().collect();
        assert_eq!(
            listed,
            vec![
                (Service::Echo, a),
                (Service::Echo, b),
                (Service::Daytime, c)
            ]
        );
    }

    #[test]
    fn zero_limits_are_rejected() {
        let echo = vec!["127.0.0.1:0".parse().unwrap()];
        let zero_conns = Config {
            echo: echo.clone(),
            max_connections: 0,
            ..Config::default()
        };
        assert_eq!(zero_conns.validate(), Err(ConfigError::ZeroMaxConnections));
        let zero_pending = Config {
            echo,
            max_pending: 0,
            ..Config::default()
        };
        assert_eq!(zero_pending.validate(), Err(ConfigError::ZeroMaxPending));
    }

    #[test]
    fn daytime_format_parses_its_names_only() {
        for format in DaytimeFormat::ALL {
            assert_eq!(format.name().parse::<DaytimeFormat>(), Ok(format));
        }
        let err = "iso".parse::<DaytimeFormat>().unwrap_err();
        assert!(err.contains("'iso'"), "{err}");
    }
}
