//! `minetd`: the command line in front of [`minetd::Server`]. Parses the
//! options, sets up logging, raises the descriptor limit, takes SIGINT and
//! SIGTERM through the server's own poll, and runs the loop. Socket
//! activation, readiness and `--generate` live in modules of their own.

#[path = "minetd/activation.rs"]
mod activation;
#[path = "common/generate.rs"]
mod generate;
#[path = "minetd/notify.rs"]
mod notify;

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use log::{debug, error, info, warn};
use minetd::{BindError, Cidr, Config, DaytimeFormat, Server, Service};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

/// Exit status for a usage error (unknown option, unparsable value).
const EXIT_USAGE: u8 = 2;
/// Exit status when a listener cannot be bound or the loop fails.
const EXIT_FAILURE: u8 = 1;

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
struct Args {
    /// Serve echo on ADDR (host:port, IPv4 or [IPv6]); repeatable [default: 127.0.0.1:7007]
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    echo: Vec<SocketAddr>,

    /// Serve daytime on ADDR; repeatable [default: 127.0.0.1:7013]
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    daytime: Vec<SocketAddr>,

    /// Serve discard (RFC 863) on ADDR, e.g. 127.0.0.1:7009; repeatable
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    discard: Vec<SocketAddr>,

    /// Serve chargen (RFC 864) on ADDR, e.g. 127.0.0.1:7019; repeatable
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    chargen: Vec<SocketAddr>,

    /// Serve time (RFC 868) on ADDR, e.g. 127.0.0.1:7037; repeatable
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    time: Vec<SocketAddr>,

    /// Serve echo over UDP on ADDR; loopback only unless --allow is given
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    udp_echo: Vec<SocketAddr>,

    /// Serve discard over UDP on ADDR; loopback only unless --allow is given
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    udp_discard: Vec<SocketAddr>,

    /// Serve daytime over UDP on ADDR; loopback only unless --allow is given
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    udp_daytime: Vec<SocketAddr>,

    /// Serve chargen over UDP on ADDR; loopback only unless --allow is given
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    udp_chargen: Vec<SocketAddr>,

    /// Serve time over UDP on ADDR; loopback only unless --allow is given
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    udp_time: Vec<SocketAddr>,

    /// Serve only peers in CIDR (10.0.0.0/8, ::1/128, or one address); repeatable.
    /// Others are closed at once, their datagrams dropped [default: everyone]
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    allow: Vec<Cidr>,

    /// Trust CIDR as a load balancer: its TCP connections must begin with a PROXY
    /// protocol header (v1 or v2), whose client address is then the peer for
    /// --allow, --per-source and logs; repeatable [default: none]
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    proxy_protocol: Vec<Cidr>,

    /// Set SO_REUSEPORT on every listener, so several minetd processes serve the
    /// same addresses and the kernel spreads connections among them
    #[arg(long)]
    reuse_port: bool,

    /// Open connections from one IP address at most [default: no limit]
    #[arg(long, value_name = "N", value_parser = parse_at_least_one)]
    per_source: Option<usize>,

    /// Answer GET /metrics on ADDR with the counters in Prometheus's text format;
    /// repeatable [default: off]
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    metrics: Vec<SocketAddr>,

    /// Log a line of counters per service every SECS seconds [default: never]
    #[arg(long, value_name = "SECS", value_parser = parse_at_least_one)]
    stats_interval: Option<usize>,

    /// Open client connections at most; past it new ones are accepted and closed at once
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = parse_at_least_one)]
    max_connections: usize,

    /// Close a connection with no traffic for this long; 0 = never
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    idle_timeout: u64,

    /// Bytes read but not yet echoed, per connection; at the cap reading pauses
    #[arg(long, value_name = "BYTES", default_value_t = 65_536, value_parser = parse_at_least_one)]
    max_pending: usize,

    /// Bytes held for all connections together, at least --max-pending; once
    /// reached, peers that do not read are slowed, the rest still served
    /// [default: 33554432 (32 MiB) or --max-pending if larger]
    #[arg(long, value_name = "BYTES", value_parser = parse_at_least_one)]
    max_buffered: Option<usize>,

    /// On SIGINT/SIGTERM, how long to keep flushing owed bytes before closing
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    shutdown_grace: u64,

    /// The daytime line: ctime (Sun Nov 22 15:38:54 2026), rfc5322 or rfc3339
    #[arg(long, value_name = "FORMAT", default_value = "ctime", value_parser = parse_format)]
    daytime_format: DaytimeFormat,
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| "expected host:port with an IPv4 address or a [bracketed] IPv6 address".into())
}

fn parse_cidr(text: &str) -> Result<Cidr, String> {
    text.parse()
}

fn parse_at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(err) => Err(err.to_string()),
    }
}

fn parse_format(text: &str) -> Result<DaytimeFormat, String> {
    text.parse()
        .map_err(|_| "expected ctime, rfc5322 or rfc3339".to_string())
}

fn main() -> ExitCode {
    let (args, matches) = match parse_args() {
        Ok(parsed) => parsed,
        Err(code) => return code,
    };
    // First, while the process has one thread: it edits the environment.
    let held = match activation::take() {
        Ok(held) => held,
        Err(line) => {
            eprintln!("minetd: {line}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    raise_descriptor_limit();
    let notifier = notify::Notifier::from_env();

    let inherited = held.len();
    let listeners = listeners_in_option_order(&args, &matches, inherited == 0);
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
        *config.addrs_mut(service) = pick(&listeners, service);
    }
    // Checked before binding: a refused configuration is a usage error.
    // Inherited sockets may be all there is to serve.
    let checked = if inherited == 0 {
        config.validate()
    } else {
        config.validate_limits()
    };
    if let Err(err) = checked {
        eprintln!("minetd: {err}");
        return ExitCode::from(EXIT_USAGE);
    }
    // Catch signals before the listening lines go out: a script may send
    // SIGTERM the moment it has read them.
    let mut signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(signals) => signals,
        Err(err) => {
            eprintln!("minetd: cannot set up signal handling: {err}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let mut server = match Server::bind_with(&config, held) {
        Ok(server) => server,
        // A bad hand-over is the unit file's mistake, as a bad option is
        // the command line's.
        Err(BindError::Held {
            index,
            service,
            problem,
        }) => {
            eprintln!("minetd: {}", activation::refused(index, service, &problem));
            return ExitCode::from(EXIT_USAGE);
        }
        Err(err) => {
            eprintln!("minetd: {err}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    if let Err(err) = server.register_external(&mut signals, mio::Interest::READABLE) {
        eprintln!("minetd: cannot set up signal handling: {err}");
        return ExitCode::from(EXIT_FAILURE);
    }
    announce(&server, inherited, &listeners);
    notifier.ready();
    match serve(&mut server, &mut signals, &notifier) {
        Ok(code) => code,
        Err(err) => {
            error!("event loop failed: {err}");
            eprintln!("minetd: event loop failed: {err}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Parses the command line. Usage errors print one line naming the bad value
/// (clap's own message is several) and exit 2; help and version exit 0.
fn parse_args() -> Result<(Args, ArgMatches), ExitCode> {
    let parsed = command()
        .try_get_matches()
        .and_then(|matches| Ok((Args::from_arg_matches(&matches)?, matches)));
    if let Ok((_, matches)) = &parsed {
        if let Some(kind) = generate::requested(matches) {
            return Err(match generate::print(command(), kind, &MANUAL) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("minetd: cannot write the {kind} output: {err}");
                    ExitCode::from(EXIT_FAILURE)
                }
            });
        }
    }
    parsed.map_err(|err| {
        if !err.use_stderr() {
            // --help or --version: clap prints them to stdout.
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        let text = err.to_string();
        let first = text.lines().next().unwrap_or("invalid arguments");
        eprintln!("minetd: {}", first.trim_start_matches("error: "));
        ExitCode::from(EXIT_USAGE)
    })
}

/// The command line's definition: `--help`, parsing, the manual page and the
/// completions all come from it.
fn command() -> clap::Command {
    generate::with_option(Args::command())
}

/// What the manual page says beyond `--help`.
const MANUAL: generate::Manual = generate::Manual {
    section: "8",
    extra: include_str!("minetd/manual.roff"),
};

/// Every `(service, address)` in the order the options were given, or (if
/// `defaults`) the defaults when no service option was.
fn listeners_in_option_order(
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

fn pick(listeners: &[(Service, SocketAddr)], wanted: Service) -> Vec<SocketAddr> {
    listeners
        .iter()
        .filter(|(service, _)| *service == wanted)
        .map(|(_, addr)| *addr)
        .collect()
}

/// Prints `listening SERVICE ADDR` per listener, the `inherited` ones first
/// in descriptor order, then the options' in option order, and flushes, so
/// that scripts can read the real ports.
fn announce(server: &Server, inherited: usize, listeners: &[(Service, SocketAddr)]) {
    let all = server.local_addrs();
    let (held, bound) = all.split_at(inherited.min(all.len()));
    let mut out = std::io::stdout().lock();
    for (service, addr) in held {
        let _ = writeln!(out, "listening {service} {addr}");
    }
    // The server lists echo first: match each option to its service's
    // bound addresses by position.
    for (index, (service, _)) in listeners.iter().enumerate() {
        let nth = listeners[..index]
            .iter()
            .filter(|(s, _)| s == service)
            .count();
        let addr = bound.iter().filter(|(s, _)| s == service).nth(nth);
        if let Some((_, addr)) = addr {
            // A closed stdout must not stop the server.
            let _ = writeln!(out, "listening {service} {addr}");
        }
    }
    for addr in server.metrics_addrs() {
        let _ = writeln!(out, "listening metrics {addr}");
    }
    let _ = out.flush();
}

/// Runs the loop with SIGINT and SIGTERM delivered into the same poll, and
/// tells the service manager when it stops and what the counters say.
fn serve(
    server: &mut Server,
    signals: &mut Signals,
    notifier: &notify::Notifier,
) -> std::io::Result<ExitCode> {
    let mut shutting_down = false;
    loop {
        let turn = server.turn(None)?;
        if turn.stats_logged {
            notifier.status(&format!("stats: {}", server.stats()));
        }
        if turn.external_ready {
            for signal in signals.pending() {
                let name = if signal == SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
                if shutting_down {
                    warn!(
                        "{name} again: closing {} connections now",
                        server.connections()
                    );
                    server.close_all();
                    return Ok(ExitCode::from(128 + signal as u8));
                }
                info!("{name}: shutting down");
                notifier.stopping();
                shutting_down = true;
                server.shutdown();
            }
        }
        if turn.finished {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// Raises the soft descriptor limit to the hard one, as Go's runtime does:
/// each connection is a descriptor, and the usual soft limit of 1024 is far
/// below what the server is for.
fn raise_descriptor_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => debug!("descriptor limit {limit}"),
        Err(err) => warn!("cannot raise the descriptor limit: {err}"),
    }
}
