//! What to serve and within which limits: plain data, checked before any
//! socket is opened. No I/O happens here.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::str::FromStr;
use std::time::Duration;

/// The classic service a listener speaks, over TCP or UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    /// Echo (RFC 862): every byte received is sent back.
    Echo,
    /// Daytime (RFC 867): one line with the time, then close.
    Daytime,
    /// Discard (RFC 863): reads and throws away, never writes.
    Discard,
    /// Character generator (RFC 864): rotating lines of printable ASCII, as
    /// fast as the peer reads.
    Chargen,
    /// Time (RFC 868): four bytes, seconds since 1900 in network order,
    /// then close.
    Time,
    /// Echo over UDP: each datagram answered with itself.
    UdpEcho,
    /// Discard over UDP: datagrams are dropped.
    UdpDiscard,
    /// Daytime over UDP: any datagram is answered with the daytime line.
    UdpDaytime,
    /// Chargen over UDP: any datagram is answered with 0 to 512 characters.
    UdpChargen,
    /// Time over UDP: any datagram is answered with the four bytes.
    UdpTime,
}

impl Service {
    /// Every service, in the order [`Config::listeners`] lists them.
    pub const ALL: [Service; 10] = [
        Service::Echo,
        Service::Daytime,
        Service::Discard,
        Service::Chargen,
        Service::Time,
        Service::UdpEcho,
        Service::UdpDiscard,
        Service::UdpDaytime,
        Service::UdpChargen,
        Service::UdpTime,
    ];

    /// The name used in `listening NAME ADDR` lines, options and logs.
    pub fn name(self) -> &'static str {
        match self {
            Service::Echo => "echo",
            Service::Daytime => "daytime",
            Service::Discard => "discard",
            Service::Chargen => "chargen",
            Service::Time => "time",
            Service::UdpEcho => "udp-echo",
            Service::UdpDiscard => "udp-discard",
            Service::UdpDaytime => "udp-daytime",
            Service::UdpChargen => "udp-chargen",
            Service::UdpTime => "udp-time",
        }
    }

    /// Whether it is served over UDP rather than TCP.
    pub fn is_udp(self) -> bool {
        matches!(
            self,
            Service::UdpEcho
                | Service::UdpDiscard
                | Service::UdpDaytime
                | Service::UdpChargen
                | Service::UdpTime
        )
    }

    /// The well-known port of the protocol (the same for TCP and UDP).
    pub fn well_known_port(self) -> u16 {
        match self {
            Service::Echo | Service::UdpEcho => 7,
            Service::Discard | Service::UdpDiscard => 9,
            Service::Daytime | Service::UdpDaytime => 13,
            Service::Chargen | Service::UdpChargen => 19,
            Service::Time | Service::UdpTime => 37,
        }
    }

    /// Where the `minetd` binary serves this service by default: the
    /// well-known port plus 7000, on loopback only.
    pub fn default_addr(self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::LOCALHOST,
            self.well_known_port() + 7000,
        ))
    }

    /// Its index in [`Service::ALL`], for tables kept per service.
    pub(crate) fn index(self) -> usize {
        self as usize
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

/// The default total of buffered bytes: 512 peers each owed a full
/// default `max_pending`, a few times what a busy small server holds, and
/// small enough for the machines this is embedded in.
pub const DEFAULT_MAX_BUFFERED: usize = 32 * 1024 * 1024;

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
    /// Addresses to serve discard on.
    pub discard: Vec<SocketAddr>,
    /// Addresses to serve chargen on.
    pub chargen: Vec<SocketAddr>,
    /// Addresses to serve time on.
    pub time: Vec<SocketAddr>,
    /// Addresses to serve UDP echo on. Echo and chargen over UDP are the
    /// classic reflection vectors: see [`Config::validate`].
    pub udp_echo: Vec<SocketAddr>,
    /// Addresses to serve UDP discard on.
    pub udp_discard: Vec<SocketAddr>,
    /// Addresses to serve UDP daytime on.
    pub udp_daytime: Vec<SocketAddr>,
    /// Addresses to serve UDP chargen on.
    pub udp_chargen: Vec<SocketAddr>,
    /// Addresses to serve UDP time on.
    pub udp_time: Vec<SocketAddr>,
    /// Peers allowed in; empty = everyone. Connections from elsewhere are
    /// closed at once and datagrams dropped.
    pub allow: Vec<Cidr>,
    /// Open connections from one IP address at most; `None` = no limit.
    pub per_source: Option<usize>,
    /// Trusted load balancers: a TCP connection from a peer in any of these
    /// must begin with a PROXY protocol header (v1 or v2), whose source is
    /// then the peer for `allow`, `per_source` and the logs.
    pub proxy_protocol: Vec<Cidr>,
    /// Set `SO_REUSEPORT` on every listener bound from this configuration,
    /// so that several single-threaded processes serve the same addresses
    /// and the kernel spreads new connections among them.
    pub reuse_port: bool,
    /// How often to log a line of counters; `None` = never.
    pub stats_interval: Option<Duration>,
    /// Open client connections at most; past it a new connection is
    /// accepted and closed at once.
    pub max_connections: usize,
    /// Close a connection after this long without traffic; `None` = never.
    pub idle_timeout: Option<Duration>,
    /// Bytes read but not yet echoed, per connection. At the cap the server
    /// stops reading that connection until the peer drains it.
    pub max_pending: usize,
    /// Bytes held for all connections together (owed echo bytes and their
    /// storage, answers not yet sent), at least `max_pending`. Once they
    /// reach it, a connection that would have to keep more reads only what
    /// its socket sends back at once, or nothing until its peer reads:
    /// nothing is dropped, TCP slows the peers that hold the bytes.
    pub max_buffered: usize,
    /// After a shutdown request, how long to keep flushing owed bytes.
    pub shutdown_grace: Duration,
    /// The daytime line's format.
    pub daytime_format: DaytimeFormat,
    /// Addresses to answer `GET /metrics` on, with the counters in
    /// Prometheus's text format (see [`crate::metrics`]).
    pub metrics: Vec<SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            echo: Vec::new(),
            daytime: Vec::new(),
            discard: Vec::new(),
            chargen: Vec::new(),
            time: Vec::new(),
            udp_echo: Vec::new(),
            udp_discard: Vec::new(),
            udp_daytime: Vec::new(),
            udp_chargen: Vec::new(),
            udp_time: Vec::new(),
            allow: Vec::new(),
            per_source: None,
            proxy_protocol: Vec::new(),
            reuse_port: false,
            stats_interval: None,
            max_connections: 10_000,
            idle_timeout: Some(Duration::from_secs(300)),
            max_pending: 64 * 1024,
            max_buffered: DEFAULT_MAX_BUFFERED,
            shutdown_grace: Duration::from_secs(5),
            daytime_format: DaytimeFormat::Ctime,
            metrics: Vec::new(),
        }
    }
}

impl Config {
    /// The addresses configured for `service`.
    pub fn addrs(&self, service: Service) -> &[SocketAddr] {
        match service {
            Service::Echo => &self.echo,
            Service::Daytime => &self.daytime,
            Service::Discard => &self.discard,
            Service::Chargen => &self.chargen,
            Service::Time => &self.time,
            Service::UdpEcho => &self.udp_echo,
            Service::UdpDiscard => &self.udp_discard,
            Service::UdpDaytime => &self.udp_daytime,
            Service::UdpChargen => &self.udp_chargen,
            Service::UdpTime => &self.udp_time,
        }
    }

    /// The addresses configured for `service`, to change.
    pub fn addrs_mut(&mut self, service: Service) -> &mut Vec<SocketAddr> {
        match service {
            Service::Echo => &mut self.echo,
            Service::Daytime => &mut self.daytime,
            Service::Discard => &mut self.discard,
            Service::Chargen => &mut self.chargen,
            Service::Time => &mut self.time,
            Service::UdpEcho => &mut self.udp_echo,
            Service::UdpDiscard => &mut self.udp_discard,
            Service::UdpDaytime => &mut self.udp_daytime,
            Service::UdpChargen => &mut self.udp_chargen,
            Service::UdpTime => &mut self.udp_time,
        }
    }

    /// Every `(service, address)` to listen on, in the order of
    /// [`Service::ALL`], each service's addresses in the order given.
    pub fn listeners(&self) -> impl Iterator<Item = (Service, SocketAddr)> + '_ {
        Service::ALL
            .into_iter()
            .flat_map(move |service| self.addrs(service).iter().map(move |addr| (service, *addr)))
    }

    /// Checks the values a server cannot run with, and refuses UDP on a
    /// non-loopback address without an allow-list: an open UDP echo or
    /// chargen answers forged sources, which makes it a traffic amplifier.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listeners().next().is_none() {
            return Err(ConfigError::NoService);
        }
        self.validate_limits()
    }

    /// Everything [`validate`](Config::validate) checks except that there
    /// is an address to serve: for a server that also serves listeners its
    /// embedder holds ([`Server::bind_with`](crate::Server::bind_with)),
    /// which may be all it serves.
    pub fn validate_limits(&self) -> Result<(), ConfigError> {
        if self.allow.is_empty() {
            let exposed = self
                .listeners()
                .find(|(service, addr)| service.is_udp() && !addr.ip().is_loopback());
            if let Some((service, addr)) = exposed {
                return Err(ConfigError::ExposedUdp { service, addr });
            }
        }
        if self.per_source == Some(0) {
            return Err(ConfigError::ZeroPerSource);
        }
        if self.max_connections == 0 {
            return Err(ConfigError::ZeroMaxConnections);
        }
        if self.max_pending == 0 {
            return Err(ConfigError::ZeroMaxPending);
        }
        if self.max_buffered < self.max_pending {
            return Err(ConfigError::BufferedBelowPending {
                max_buffered: self.max_buffered,
                max_pending: self.max_pending,
            });
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
    /// `per_source` is `Some(0)`: every connection would be refused.
    ZeroPerSource,
    /// `max_buffered` is below `max_pending`: one connection could be
    /// promised more than all of them together may hold.
    BufferedBelowPending {
        /// The total asked for.
        max_buffered: usize,
        /// The per-connection limit it is below.
        max_pending: usize,
    },
    /// A UDP service on a non-loopback address with no allow-list.
    ExposedUdp {
        /// The UDP service.
        service: Service,
        /// Its non-loopback address.
        addr: SocketAddr,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NoService => f.write_str("no service to serve: give at least one address"),
            ConfigError::ZeroMaxConnections => f.write_str("max-connections must be at least 1"),
            ConfigError::ZeroMaxPending => f.write_str("max-pending must be at least 1"),
            ConfigError::ZeroPerSource => f.write_str("per-source must be at least 1"),
            ConfigError::BufferedBelowPending {
                max_buffered,
                max_pending,
            } => write!(
                f,
                "max-buffered {max_buffered} is below max-pending {max_pending}: \
                 it must be at least as large"
            ),
            ConfigError::ExposedUdp { service, addr } => write!(
                f,
                "refusing to serve {service} on non-loopback address {addr} without --allow: \
                 an open UDP service can be used to reflect and amplify traffic"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A block of IP addresses, `ADDR/PREFIX` (`10.0.0.0/8`, `::1/128`); a bare
/// address is a block of one. An IPv4-mapped block (`::ffff:10.0.0.0/104`)
/// is the IPv4 block it maps (`10.0.0.0/8`).
///
/// ```
/// let loopback: minetd::Cidr = "127.0.0.0/8".parse().unwrap();
/// assert!(loopback.contains("127.1.2.3".parse().unwrap()));
/// assert!(!loopback.contains("10.0.0.1".parse().unwrap()));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `addr` is in this block. An IPv4 address seen on an IPv6
    /// socket (`::ffff:10.0.0.1`) counts as the IPv4 address.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.network, addr.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_matches(u32::from(net).into(), u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_matches(u128::from(net), u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

/// The bits of `::ffff:0:0/96` before an IPv4-mapped address's IPv4 part.
const MAPPED_PREFIX: u8 = 96;

/// Whether the first `prefix` of `width` bits of `a` and `b` agree.
fn prefix_matches(a: u128, b: u128, prefix: u8, width: u32) -> bool {
    let host_bits = width - u32::from(prefix);
    host_bits >= width || (a >> host_bits) == (b >> host_bits)
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("'{s}' is not an address or ADDR/PREFIX block"))?;
        let width = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(text) => match text.parse::<u8>() {
                Ok(n) if n <= width => n,
                _ => return Err(format!("'{s}': prefix must be 0 to {width}")),
            },
        };
        // Peers' IPv4-mapped addresses count as IPv4 (`contains`), so a
        // block written inside ::ffff:0:0/96 is the IPv4 block it maps;
        // kept as IPv6 it would contain none of them.
        if let IpAddr::V6(v6) = network {
            if let (Some(v4), true) = (v6.to_ipv4_mapped(), prefix >= MAPPED_PREFIX) {
                return Ok(Cidr {
                    network: IpAddr::V4(v4),
                    prefix: prefix - MAPPED_PREFIX,
                });
            }
        }
        Ok(Cidr { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_contains_exactly_its_block() {
        let block: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(block.contains("10.1.255.255".parse().unwrap()));
        assert!(!block.contains("10.2.0.0".parse().unwrap()));
        assert!(block.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!block.contains("::1".parse().unwrap()));
        let one: Cidr = "::1".parse().unwrap();
        assert_eq!(one.to_string(), "::1/128");
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("::2".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        let all6: Cidr = "::/0".parse().unwrap();
        assert!(all6.contains("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn ipv4_mapped_cidr_is_its_ipv4_block() {
        // Found by the `addr` fuzz check (fuzz/checks/addr.rs): this block
        // stayed IPv6 while peers count as IPv4, so it held no address,
        // not even the one it was written with.
        let mapped: Cidr = "::ffff:10.0.0.1/104".parse().unwrap();
        assert_eq!(mapped, "10.0.0.1/8".parse().unwrap());
        assert!(mapped.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(mapped.contains("10.255.0.1".parse().unwrap()));
        assert!(!mapped.contains("11.0.0.1".parse().unwrap()));
        let one: Cidr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(one.to_string(), "192.0.2.1/32");
        assert!(one.contains("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn cidr_errors_name_the_bad_value() {
        assert_eq!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err("'10.0.0.0/33': prefix must be 0 to 32".to_string())
        );
        assert_eq!(
            "ten/8".parse::<Cidr>(),
            Err("'ten/8' is not an address or ADDR/PREFIX block".to_string())
        );
    }

    #[test]
    fn udp_off_loopback_needs_an_allow_list() {
        let addr: SocketAddr = "0.0.0.0:7007".parse().unwrap();
        let mut config = Config {
            udp_echo: vec![addr],
            ..Config::default()
        };
        assert_eq!(
            config.validate(),
            Err(ConfigError::ExposedUdp {
                service: Service::UdpEcho,
                addr
            })
        );
        config.allow.push("192.0.2.0/24".parse().unwrap());
        assert_eq!(config.validate(), Ok(()));
        let tcp = Config {
            echo: vec![addr],
            ..Config::default()
        };
        assert_eq!(tcp.validate(), Ok(()));
    }

    #[test]
    fn default_addresses_are_the_well_known_port_plus_7000() {
        let ports: Vec<u16> = Service::ALL
            .iter()
            .map(|s| s.default_addr().port())
            .collect();
        assert_eq!(
            ports,
            [7007, 7013, 7009, 7019, 7037, 7007, 7009, 7013, 7019, 7037]
        );
        assert!(
            Service::ALL
                .iter()
                .all(|s| s.default_addr().ip().is_loopback())
        );
        assert_eq!(Service::UdpChargen.name(), "udp-chargen");
    }

    #[test]
    fn default_serves_nothing_and_is_rejected() {
        assert_eq!(Config::default().validate(), Err(ConfigError::NoService));
    }

    #[test]
    fn limits_alone_allow_no_address_but_still_check_the_rest() {
        assert_eq!(Config::default().validate_limits(), Ok(()));
        let zero = Config {
            max_connections: 0,
            ..Config::default()
        };
        assert_eq!(zero.validate_limits(), Err(ConfigError::ZeroMaxConnections));
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
    fn a_total_below_the_per_connection_limit_is_rejected_with_both_values() {
        let config = Config {
            echo: vec!["127.0.0.1:0".parse().unwrap()],
            max_pending: 65536,
            max_buffered: 65535,
            ..Config::default()
        };
        let err = config.validate().unwrap_err();
        assert_eq!(
            err,
            ConfigError::BufferedBelowPending {
                max_buffered: 65535,
                max_pending: 65536
            }
        );
        assert_eq!(
            err.to_string(),
            "max-buffered 65535 is below max-pending 65536: it must be at least as large"
        );
        let equal = Config {
            max_buffered: 65536,
            ..config
        };
        assert_eq!(equal.validate(), Ok(()));
        assert_eq!(Config::default().max_buffered, 32 * 1024 * 1024);
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
