//! `minetd`: the command line in front of [`minetd::Server`]. Parses the
//! options, sets up logging, raises the descriptor limit, takes SIGINT and
//! SIGTERM through the server's own poll, and runs the loop. Socket
//! activation, readiness and `--generate` live in modules of their own.

#[path = "minetd/activation.rs"]
mod activation;
#[path = "minetd/args.rs"]
mod args;
#[path = "common/generate.rs"]
mod generate;
#[path = "minetd/notify.rs"]
mod notify;

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use args::{Args, command, listeners_in_option_order};
use clap::{ArgMatches, FromArgMatches};
use log::{debug, error, info, warn};
use minetd::{BindError, Server, Service};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

/// Exit status for a usage error (unknown option, unparsable value).
const EXIT_USAGE: u8 = 2;
/// Exit status when a listener cannot be bound or the loop fails.
const EXIT_FAILURE: u8 = 1;

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
    let config = args::config(&args, &listeners);
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

/// What the manual page says beyond `--help`.
const MANUAL: generate::Manual = generate::Manual {
    section: "8",
    extra: include_str!("minetd/manual.roff"),
};

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
