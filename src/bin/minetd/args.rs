//! The server's command line: the clap definition, its value parsers, and
//! the [`Config`] a parsed command line stands for. Self-contained (clap,
//! minetd and the shared `--generate` option only), so the fuzz target in
//! `fuzz/` includes this very file and parses what the binary parses.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{ArgMatches, CommandFactory, Parser};
use minetd::{Cidr, Config, DaytimeFormat, Service};

use super::generate;

/// The classic small services on one thread: echo (RFC 862), daytime (RFC 867),
/// discard (RFC 863), chargen (RFC 864) and time (RFC 868), over TCP and UDP.
///
/// With no service option, serves echo on 127.0.0.1:7007 and daytime on
/// 127.0.0.1:7013; with any, only the services named. The UDP services are
/// off unless asked for, and only on loopback unless --allow is given. Prints one line
/// `listening SERVICE ADDR` per listener on stdout once all are bound. Logs
/// go to stderr; RUST_LOG=debug shows every accept, close and refusal.
/// SIGINT or SIGTERM shuts down gracefully (exit 0); a second one during the
/// grace closes everything at once (exit 128 + signal number).
/// Under a service manager it serves the sockets handed over (LISTEN_FDS,
/// LISTEN_FDNAMES) and reports readiness (NOTIFY_SOCKET); see the manual
/// page (--generate man).
#[derive(Parser, Debug)]
#[command(name = "minetd", version)]
pub struct Args {
    /// Serve echo on ADDR (host:port, IPv4 or [IPv6]); repeatable [default: 127.0.0.1:7007]
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub echo: Vec<SocketAddr>,

    /// Serve daytime on ADDR; repeatable [default: 127.0.0.1:7013]
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub daytime: Vec<SocketAddr>,

    /// Serve discard (RFC 863) on ADDR, e.g. 127.0.0.1:7009; repeatable
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub discard: Vec<SocketAddr>,

    /// Serve chargen (RFC 864) on ADDR, e.g. 127.0.0.1:7019; repeatable
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub chargen: Vec<SocketAddr>,

    /// Serve time (RFC 868) on ADDR, e.g. 127.0.0.1:7037; repeatable
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub time: Vec<SocketAddr>,

    /// Serve echo over UDP on ADDR; loopback only unless --allow is given
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub udp_echo: Vec<SocketAddr>,

    /// Serve discard over UDP on ADDR; loopback only unless --allow is given
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub udp_discard: Vec<SocketAddr>,

    /// Serve daytime over UDP on ADDR; loopback only unless --allow is given
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub udp_daytime: Vec<SocketAddr>,

    /// Serve chargen over UDP on ADDR; loopback only unless --allow is given
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub udp_chargen: Vec<SocketAddr>,

    /// Serve time over UDP on ADDR; loopback only unless --allow is given
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub udp_time: Vec<SocketAddr>,

    /// Serve only peers in CIDR (10.0.0.0/8, ::1/128, or one address); repeatable.
    /// Others are closed at once, their datagrams dropped [default: everyone]
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    pub allow: Vec<Cidr>,

    /// Trust CIDR as a load balancer: its TCP connections must begin with a PROXY
    /// protocol header (v1 or v2), whose client address is then the peer for
    /// --allow, --per-source and logs; repeatable [default: none]
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    pub proxy_protocol: Vec<Cidr>,

    /// Set SO_REUSEPORT on every listener, so several minetd processes serve the
    /// same addresses and the kernel spreads connections among them
    #[arg(long)]
    pub reuse_port: bool,

    /// Open connections from one IP address at most [default: no limit]
    #[arg(long, value_name = "N", value_parser = parse_at_least_one)]
    pub per_source: Option<usize>,

    /// Answer GET /metrics on ADDR with the counters in Prometheus's text format;
    /// repeatable [default: off]
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub metrics: Vec<SocketAddr>,

    /// Log a line of counters per service every SECS seconds [default: never]
    #[arg(long, value_name = "SECS", value_parser = parse_at_least_one)]
    pub stats_interval: Option<usize>,

    /// Open client connections at most; past it new ones are accepted and closed at once
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = parse_at_least_one)]
    pub max_connections: usize,

    /// Close a connection with no traffic for this long; 0 = never
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub idle_timeout: u64,

    /// Bytes read but not yet echoed, per connection; at the cap reading pauses
    #[arg(long, value_name = "BYTES", default_value_t = 65_536, value_parser = parse_at_least_one)]
    pub max_pending: usize,

    /// Bytes held for all connections together, at least --max-pending; once
    /// reached, peers that do not read are slowed, the rest still served
    /// [default: 33554432 (32 MiB) or --max-pending if larger]
    #[arg(long, value_name = "BYTES", value_parser = parse_at_least_one)]
    pub max_buffered: Option<usize>,

    /// On SIGINT/SIGTERM, how long to keep flushing owed bytes before closing
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub shutdown_grace: u64,

    /// The daytime line: ctime (Sun Nov 22 15:38:54 2026), rfc5322 or rfc3339
    #[arg(long, value_name = "FORMAT", default_value = "ctime", value_parser = parse_format)]
    pub daytime_format: DaytimeFormat,
}

pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| "expected host:port with an IPv4 address or a [bracketed] IPv6 address".into())
}

pub fn parse_cidr(text: &str) -> Result<Cidr, String> {
    text.parse()
}

pub fn parse_at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(err) => Err(err.to_string()),
    }
}

pub fn parse_format(text: &str) -> Result<DaytimeFormat, String> {
    text.parse()
        .map_err(|_| "expected ctime, rfc5322 or rfc3339".to_string())
}

/// The command line's definition: `--help`, parsing, the manual page and the
/// completions all come from it.
pub fn command() -> clap::Command {
    generate::with_option(Args::command())
}

/// Every `(service, address)` in the order the options were given, or (if
/// `defaults`) the defaults when no service option was.
pub fn listeners_in_option_order(
    args: &Args,
    matches: &ArgMatches,
    defaults: bool,
) -> Vec<(Service, SocketAddr)> {
    let mut ordered: Vec<(usize, Service, SocketAddr)> = Vec::new();
    for service in Service::ALL {
        let (id, addrs) = match service {
            Service::Echo => ("echo", &args.echo),
            Service::Daytime => ("daytime", &args.daytime),
            Service::Discard => ("discard", &args.discard),
            Service::Chargen => ("chargen", &args.chargen),
            Service::Time => ("time", &args.time),
            Service::UdpEcho => ("udp_echo", &args.udp_echo),
            Service::UdpDiscard => ("udp_discard", &args.udp_discard),
            Service::UdpDaytime => ("udp_daytime", &args.udp_daytime),
            Service::UdpChargen => ("udp_chargen", &args.udp_chargen),
            Service::UdpTime => ("udp_time", &args.udp_time),
        };
        let positions = matches.indices_of(id).into_iter().flatten();
        ordered.extend(positions.zip(addrs).map(|(at, addr)| (at, service, *addr)));
    }
    if ordered.is_empty() && defaults {
        return [Service::Echo, Service::Daytime]
            .into_iter()
            .map(|service| (service, service.default_addr()))
            .collect();
    }
    ordered.sort_by_key(|(at, _, _)| *at);
    ordered
        .into_iter()
        .map(|(_, service, addr)| (service, addr))
        .collect()
}

pub fn pick(listeners: &[(Service, SocketAddr)], wanted: Service) -> Vec<SocketAddr> {
    listeners
        .iter()
        .filter(|(service, _)| *service == wanted)
        .map(|(_, addr)| *addr)
        .collect()
}

/// The configuration a parsed command line stands for, serving
/// `listeners` (from [`listeners_in_option_order`]); not yet validated.
pub fn config(args: &Args, listeners: &[(Service, SocketAddr)]) -> Config {
    let mut config = Config {
        allow: args.allow.clone(),
        per_source: args.per_source,
        proxy_protocol: args.proxy_protocol.clone(),
        reuse_port: args.reuse_port,
        stats_interval: args
            .stats_interval
            .map(|secs| Duration::from_secs(secs as u64)),
        max_connections: args.max_connections,
        idle_timeout: (args.idle_timeout > 0).then(|| Duration::from_secs(args.idle_timeout)),
        max_pending: args.max_pending,
        max_buffered: args
            .max_buffered
            .unwrap_or(minetd::config::DEFAULT_MAX_BUFFERED.max(args.max_pending)),
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        daytime_format: args.daytime_format,
        metrics: args.metrics.clone(),
        ..Config::default()
    };
    for service in Service::ALL {
        *config.addrs_mut(service) = pick(listeners, service);
    }
    config
}
