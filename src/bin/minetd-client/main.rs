//! `minetd-client`: a blocking client for minetd's services (and any TCP
//! service), plus a high-connection-count echo benchmark.
//!
//! Everything here uses blocking `std::net` sockets on plain threads: no event
//! loop and no async runtime, so the client is an independent check on the
//! server rather than a mirror of it. This file holds the command line and
//! the one place where errors become exit codes; the byte pumps live in
//! [`pump`], the benchmark in [`bench`](mod@bench).

mod addr;
mod bench;
mod error;
mod escape;
#[path = "../common/generate.rs"]
mod generate;
mod pump;
mod socket;

use std::io::{self, Write};
use std::net::{Shutdown, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::addr::Target;
use crate::error::Error;
use crate::escape::Payload;
use crate::pump::Peer;

/// The top-level command line.
#[derive(Debug, Parser)]
#[command(
    name = "minetd-client",
    version,
    about = "Blocking client for minetd: echo, daytime, raw requests, HTTP HEAD and an echo benchmark",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Seconds to wait for the connection and for each read or write (fractions allowed)
    #[arg(long, global = true, value_name = "SECS", default_value = "10", value_parser = parse_duration)]
    timeout: Duration,
}

/// One subcommand per service the client speaks.
#[derive(Debug, Subcommand)]
enum Command {
    /// Stream stdin to an echo server and what comes back to stdout; at the
    /// end of stdin, half-close, print the rest and exit
    Echo {
        /// Server address, HOST:PORT
        #[arg(default_value = "127.0.0.1:7007")]
        addr: Target,
    },
    /// Print what a daytime server sends until it closes
    Daytime {
        /// Server address, HOST:PORT
        #[arg(default_value = "127.0.0.1:7013")]
        addr: Target,
    },
    /// Send DATA, then print everything the peer sends until it closes
    Request {
        /// Peer address, HOST:PORT
        addr: Target,
        /// Bytes to send; the escapes \r \n \t \\ \0 \xHH are understood
        data: Payload,
        /// Shut down the sending side after DATA, so the peer sees the end of input
        #[arg(long)]
        half_close: bool,
    },
    /// Send an HTTP/1.0 HEAD request with a Host header and print the response
    Head {
        /// HTTP server address, HOST:PORT (also the Host header; the port is
        /// left out of it when it is 80)
        addr: Target,
        /// Path to ask for
        #[arg(default_value = "/", value_parser = parse_path)]
        path: String,
    },
    /// Echo benchmark: keep one message in flight on every connection (or
    /// one datagram on every UDP socket)
    ///
    /// Opens the connections (in batches, each confirmed by one echo), then
    /// for --duration seconds keeps one message of --size bytes in flight
    /// on each and checks every echoed byte. Reports connections opened,
    /// round trips and round trips per second, MB/s each way (10^6 bytes of
    /// payload per second in each direction), closed-loop latency
    /// percentiles in microseconds (write to full echo), mismatches,
    /// connect failures (including connections closed before their first
    /// echo) and errors. Any mismatch, connect failure or error makes the
    /// exit status 1. Ctrl-C ends the run early, with a report.
    ///
    /// With --rate the loop is open: each connection sends on its own fixed
    /// schedule, and latency runs from when each message was due.
    ///
    /// With --mode udp-echo the connections are connected UDP sockets: a
    /// datagram not answered within --loss-after counts as lost (no error),
    /// and an echo that comes after that counts as late.
    Bench(BenchArgs),
    /// Combine `bench --json` results taken at the same time (several
    /// machines or processes): counts and rates summed, percentiles from
    /// the merged histograms
    Merge {
        /// Files of `bench --json` output (one object each, or JSON lines)
        #[arg(required = true, value_name = "FILE")]
        files: Vec<std::path::PathBuf>,
        /// Print the result as one JSON object on stdout
        #[arg(long)]
        json: bool,
    },
}

/// Options of `bench`; see [`bench::Options`] for what each one means.
#[derive(Debug, Args)]
struct BenchArgs {
    /// Server address, HOST:PORT [default: 127.0.0.1:7007, or the mode's
    /// service port: discard 7009, chargen 7019, daytime 7013, udp-echo 7007]
    addr: Option<Target>,
    /// echo: round trips; discard: upload only; chargen: download only,
    /// every byte checked against RFC 864's pattern; daytime: connection
    /// churn, one checked line per connection; udp-echo: round trips of
    /// datagrams on connected UDP sockets, losses counted
    #[arg(long, value_enum, default_value = "echo")]
    mode: bench::Mode,
    /// Connections to hold open at once
    #[arg(long, value_name = "N", default_value = "100",
          value_parser = clap::value_parser!(u32).range(1..=bench::MAX_CONNECTIONS))]
    connections: u32,
    /// Bytes per message (at most 65536, the server's default --max-pending:
    /// the whole message must fit in flight without the client reading;
    /// with --mode udp-echo at most 65507, the largest UDP payload)
    #[arg(long, value_name = "BYTES", default_value = "512",
          value_parser = clap::value_parser!(u32).range(1..=bench::MAX_SIZE))]
    size: u32,
    /// Seconds to measure, after all connections are open
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_duration)]
    duration: Duration,
    /// Client threads [default: the number of CPUs]
    #[arg(long, value_name = "T", value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: Option<u32>,
    /// Local addresses to connect from, round robin, comma-separated (e.g.
    /// 127.0.0.1,127.0.0.2); each adds about 28,000 ports to the loopback ramp
    #[arg(long, value_name = "IP,...", value_delimiter = ',')]
    source_addrs: Vec<std::net::IpAddr>,
    /// Print the result as one JSON object on stdout
    #[arg(long)]
    json: bool,
    /// Open loop: R messages per second in total, each connection on its
    /// own staggered schedule; latency counts from when each was due
    #[arg(long, value_name = "R", value_parser = parse_rate)]
    rate: Option<f64>,
    /// Messages in flight per connection, echoes checked in order (echo
    /// mode; K times --size at most 65536)
    #[arg(long, value_name = "K", default_value = "1",
          value_parser = clap::value_parser!(u32).range(1..=bench::MAX_SIZE))]
    pipeline: u32,
    /// Seconds of load before measuring; nothing from them counts
    #[arg(long, value_name = "SECS", default_value = "0", value_parser = parse_warmup)]
    warmup: Duration,
    /// Open at most R connections per second while ramping
    #[arg(long, value_name = "R", value_parser = parse_rate)]
    connect_rate: Option<f64>,
    /// One whole run per connection count, in order, instead of --connections
    #[arg(long, value_name = "N,...", value_parser = parse_sweep)]
    sweep: Option<Sweep>,
    /// Draw an SVG chart: the latency percentiles, or for a sweep rps and
    /// p50/p99 against connections
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<std::path::PathBuf>,
    /// Write each second's latency histogram as an HdrHistogram interval log
    #[arg(long, value_name = "FILE")]
    hist_log: Option<std::path::PathBuf>,
    /// udp-echo: a datagram not answered within SECS counts as lost, and its
    /// socket sends the next [default: 0.2]
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    loss_after: Option<Duration>,
}

/// `--sweep`'s connection counts.
#[derive(Debug, Clone)]
struct Sweep(Vec<usize>);

fn main() -> ExitCode {
    let cli = match parse() {
        Ok(Parsed::Run(cli)) => *cli,
        Ok(Parsed::Generate(kind)) => return print_generated(&kind),
        Err(err) => return usage_error(&err),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::Usage(line)) => {
            let _ = writeln!(io::stderr(), "minetd-client: {line}");
            ExitCode::from(2)
        }
        Err(err) => {
            // If stderr itself is gone there is nobody left to tell.
            let _ = writeln!(io::stderr(), "minetd-client: {err}");
            ExitCode::FAILURE
        }
    }
}

/// What the command line asks for.
enum Parsed {
    Run(Box<Cli>),
    /// `--generate KIND`, which needs no command.
    Generate(String),
}

/// Parses the command line, `--generate` included: it stands alone, so the
/// command is optional to clap and required here.
fn parse() -> Result<Parsed, clap::Error> {
    use clap::FromArgMatches;
    let matches = command()
        .subcommand_required(false)
        .arg_required_else_help(false)
        .override_usage("minetd-client [OPTIONS] <COMMAND>\n       minetd-client --generate <KIND>")
        .try_get_matches()?;
    if let Some(kind) = generate::requested(&matches) {
        return Ok(Parsed::Generate(kind.to_string()));
    }
    if matches.subcommand().is_none() {
        let kind = clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand;
        return Err(clap::Error::new(kind));
    }
    Ok(Parsed::Run(Box::new(Cli::from_arg_matches(&matches)?)))
}

/// The command line's definition: `--help`, parsing, the manual page and the
/// completions all come from it.
fn command() -> clap::Command {
    use clap::CommandFactory;
    generate::with_option(Cli::command())
}

/// Prints the manual page or completions `--generate` asked for.
fn print_generated(kind: &str) -> ExitCode {
    const MANUAL: generate::Manual = generate::Manual {
        section: "1",
        extra: include_str!("manual.roff"),
    };
    match generate::print(command(), kind, &MANUAL) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let _ = writeln!(
                io::stderr(),
                "minetd-client: cannot write the {kind} output: {err}"
            );
            ExitCode::FAILURE
        }
    }
}

/// Prints help or version as clap does (exit 0); any other parse error
/// becomes one line naming the bad value (exit 2).
fn usage_error(err: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        let _ = err.print();
        return ExitCode::SUCCESS;
    }
    let line = if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        // clap would print the whole help here; one line says the same.
        "missing command: echo, daytime, request, head, bench or merge (see --help)".to_string()
    } else {
        one_line(err)
    };
    let _ = writeln!(io::stderr(), "minetd-client: {line}");
    ExitCode::from(2)
}

/// The first paragraph of clap's error on one line, without its `error: `
/// prefix. Most errors are one line already; "required arguments were not
/// provided" puts the argument names on the following lines.
fn one_line(err: &clap::Error) -> String {
    // `StyledStr`'s Display is plain text, so no colour codes leak into logs.
    let rendered = err.render().to_string();
    let paragraph: Vec<&str> = rendered
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect();
    let joined = paragraph.join(" ");
    joined
        .strip_prefix("error: ")
        .unwrap_or(&joined)
        .to_string()
}

/// Runs the chosen command.
fn run(cli: Cli) -> Result<(), Error> {
    let timeout = cli.timeout;
    match cli.command {
        Command::Echo { addr } => {
            let (stream, peer) = open(&addr, timeout)?;
            pump::echo(stream, &peer)
        }
        Command::Daytime { addr } => {
            let (mut stream, peer) = open(&addr, timeout)?;
            pump::print_until_close(&mut stream, &peer)
        }
        Command::Request {
            addr,
            data,
            half_close,
        } => {
            let (mut stream, peer) = open(&addr, timeout)?;
            pump::send(&mut stream, &peer, &data.0)?;
            if half_close {
                shut_write(&stream, &peer)?;
            }
            pump::print_until_close(&mut stream, &peer)
        }
        Command::Head { addr, path } => {
            let (mut stream, peer) = open(&addr, timeout)?;
            pump::send(&mut stream, &peer, head_request(&addr, &path).as_bytes())?;
            // HTTP/1.0 without keep-alive: the server closes after the response.
            pump::print_until_close(&mut stream, &peer)
        }
        Command::Bench(args) => bench::run(&bench_options(args, timeout)?),
        Command::Merge { files, json } => bench::merge::run(&files, json),
    }
}

/// Connects to `target` within `timeout` and names the peer for messages.
fn open(target: &Target, timeout: Duration) -> Result<(TcpStream, Peer), Error> {
    let stream = target.connect(timeout)?;
    let peer = Peer {
        name: target.to_string(),
        timeout,
    };
    Ok((stream, peer))
}

/// Shuts down our sending side: the peer reads end of input.
fn shut_write(stream: &TcpStream, peer: &Peer) -> Result<(), Error> {
    stream
        .shutdown(Shutdown::Write)
        .map_err(|source| Error::Io {
            context: format!("cannot half-close the connection to {}", peer.name),
            source,
        })
}

/// The GetHeadInfo probe: `HEAD PATH HTTP/1.0`, a `Host` header, a blank line.
fn head_request(target: &Target, path: &str) -> String {
    format!(
        "HEAD {path} HTTP/1.0\r\nHost: {}\r\n\r\n",
        target.host_header()
    )
}

/// Turns `bench` arguments into the benchmark's options; combinations
/// clap cannot check are usage errors here.
fn bench_options(args: BenchArgs, timeout: Duration) -> Result<bench::Options, Error> {
    let udp = args.mode == bench::Mode::UdpEcho;
    if udp && i64::from(args.size) > bench::MAX_DATAGRAM {
        return Err(Error::Usage(format!(
            "--size {} is over {}, the largest UDP payload (--mode udp-echo)",
            args.size,
            bench::MAX_DATAGRAM
        )));
    }
    if args.loss_after.is_some() && !udp {
        return Err(Error::Usage(format!(
            "--loss-after needs --mode udp-echo, not --mode {}",
            args.mode.name()
        )));
    }
    let in_flight = u64::from(args.pipeline) * u64::from(args.size);
    if in_flight > bench::MAX_SIZE as u64 {
        return Err(Error::Usage(format!(
            "--pipeline {} × --size {} is {in_flight} bytes in flight per connection, over {}",
            args.pipeline,
            args.size,
            bench::MAX_SIZE
        )));
    }
    if args.mode != bench::Mode::Echo {
        // udp-echo keeps one datagram in flight per socket: a pipeline
        // of datagrams would need its own rules for loss and reordering.
        let echo_only = [
            (args.rate.is_some() && !udp, "--rate"),
            (args.pipeline > 1, "--pipeline"),
        ];
        if let Some((_, option)) = echo_only.iter().find(|(given, _)| *given) {
            return Err(Error::Usage(format!(
                "{option} needs --mode echo, not --mode {}",
                args.mode.name()
            )));
        }
    }
    let threads = args.threads.map_or_else(default_threads, |t| t as usize);
    let target = args.addr.unwrap_or_else(|| {
        args.mode
            .default_addr()
            .parse()
            .expect("default addresses parse")
    });
    Ok(bench::Options {
        mode: args.mode,
        target,
        connections: args.connections as usize,
        size: args.size as usize,
        duration: args.duration,
        threads,
        source_addrs: args.source_addrs,
        json: args.json,
        timeout,
        rate: args.rate,
        pipeline: args.pipeline as usize,
        warmup: args.warmup,
        connect_rate: args.connect_rate,
        sweep: args.sweep.map(|sweep| sweep.0).unwrap_or_default(),
        plot: args.plot,
        hist_log: args.hist_log,
        loss_after: args.loss_after.unwrap_or(bench::DEFAULT_LOSS_AFTER),
    })
}

/// Parses a positive rate per second, fractions allowed.
fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .parse()
        .map_err(|_| "expected a number per second".to_string())?;
    if !rate.is_finite() || rate <= 0.0 {
        return Err("must be more than 0 per second".to_string());
    }
    Ok(rate)
}

/// Parses `--warmup`: seconds, 0 allowed.
fn parse_warmup(text: &str) -> Result<Duration, String> {
    if text.parse::<f64>() == Ok(0.0) {
        return Ok(Duration::ZERO);
    }
    parse_duration(text)
}

/// Parses `--sweep`: connection counts, comma-separated, none empty or 0.
fn parse_sweep(text: &str) -> Result<Sweep, String> {
    text.split(',')
        .enumerate()
        .map(|(n, entry)| match entry.trim().parse::<usize>() {
            _ if entry.trim().is_empty() => Err(format!("entry {} is empty", n + 1)),
            Ok(0) => Err(format!("entry {} is 0 connections", n + 1)),
            Ok(count) if count as i64 > bench::MAX_CONNECTIONS => Err(format!(
                "entry {} is over {} connections",
                n + 1,
                bench::MAX_CONNECTIONS
            )),
            Ok(count) => Ok(count),
            Err(_) => Err(format!("entry {} is not a number of connections", n + 1)),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Sweep)
}

/// One bench thread per CPU: each thread keeps its core busy with blocking
/// writes and reads, so more would only add context switches.
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Parses a positive number of seconds, fractions allowed (`0.5`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| "expected a number of seconds".to_string())?;
    if secs.is_nan() || secs <= 0.0 {
        return Err("must be more than 0 seconds".to_string());
    }
    Duration::try_from_secs_f64(secs).map_err(|_| "too many seconds".to_string())
}

/// Parses the `head` PATH: anything that keeps the request line one line of
/// three words.
fn parse_path(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("the path is empty".to_string());
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the path may not hold spaces or control characters".to_string());
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn head_request_leaves_port_80_out_of_host() {
        let target: Target = "example.com:80".parse().unwrap();
        assert_eq!(
            head_request(&target, "/"),
            "HEAD / HTTP/1.0\r\nHost: example.com\r\n\r\n"
        );
        let target: Target = "[::1]:8080".parse().unwrap();
        assert_eq!(
            head_request(&target, "/x?y"),
            "HEAD /x?y HTTP/1.0\r\nHost: [::1]:8080\r\n\r\n"
        );
    }

    #[test]
    fn durations_must_be_positive_seconds() {
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("NaN").is_err());
        assert!(parse_duration("inf").is_err());
        assert!(parse_duration("ten").is_err());
    }

    #[test]
    fn usage_errors_fit_on_one_line() {
        let err = Cli::try_parse_from(["minetd-client", "request"]).unwrap_err();
        let line = one_line(&err);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("<ADDR>") && line.contains("<DATA>"), "{line}");
        assert!(!line.starts_with("error:"), "{line}");
    }

    #[test]
    fn timeout_is_accepted_before_and_after_the_command() {
        let cli = Cli::try_parse_from(["minetd-client", "--timeout", "2", "daytime"]).unwrap();
        assert_eq!(cli.timeout, Duration::from_secs(2));
        let cli = Cli::try_parse_from(["minetd-client", "daytime", "--timeout", "3"]).unwrap();
        assert_eq!(cli.timeout, Duration::from_secs(3));
    }
}
