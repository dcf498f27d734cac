//! `cargo bench --bench open_loop`: does `minetd-client bench --rate` keep
//! its schedule at the rates the closed loop reaches, and where it falls
//! short, is the client the reason?
//!
//! Against one minetd (pinned to CPU 0; everything else on CPU 1), for each
//! connection count: a closed-loop `bench` run, then at 50% and at 90% of
//! the rps it reached, `bench --rate` and the reference open loop of
//! `reference.rs` (one epoll thread, as wrk2 and tcpkali are built) at the
//! same rate, in turns (A B, then B A). Prints achieved ÷ target for both,
//! their 99th percentiles and their CPU time (user + system, connecting
//! included) per round trip; the summary gives the median ratio and the
//! runs at or above 0.95 for each. A rate the reference misses as often is one
//! the machine could not carry, whatever the client.
//!
//! Settings (environment): `MINETD_OPEN_SECS` (3) per run,
//! `MINETD_OPEN_PAIRS` (3), `MINETD_OPEN_CONNECTIONS` (`100,10000`).

use std::process::{Command, ExitCode};
use std::thread;

#[path = "../common.rs"]
mod common;
mod reference;

use common::{json_number, pin_to, raise_descriptor_limit, setting, start_server};

const SIZE: usize = 64;
const SHARES: [f64; 2] = [0.5, 0.9];

/// One open-loop run: achieved ÷ target, p99 in µs, and the load
/// generator's CPU time (user + system, connecting included) per round trip.
#[derive(Clone, Copy)]
struct Kept {
    ratio: f64,
    p99_us: f64,
    cpu_us: f64,
}

/// CPU time used so far, in µs, by this process (`RUSAGE_SELF`) or by its
/// waited-for children (`RUSAGE_CHILDREN`).
fn cpu_us(who: libc::c_int) -> f64 {
    // SAFETY: getrusage writes one rusage we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut usage);
        usage
    };
    let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    us(usage.ru_utime) + us(usage.ru_stime)
}

fn main() -> ExitCode {
    let secs = setting("MINETD_OPEN_SECS", 3.0);
    let pairs = setting("MINETD_OPEN_PAIRS", 3.0) as usize;
    let counts: Vec<usize> = std::env::var("MINETD_OPEN_CONNECTIONS")
        .unwrap_or_else(|_| "100,10000".to_string())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let two_cpus = thread::available_parallelism().map_or(1, |n| n.get()) >= 2;
    raise_descriptor_limit();
    let (mut server, addr) = match start_server("--echo", two_cpus) {
        Ok(started) => started,
        Err(err) => {
            eprintln!("open_loop: cannot start minetd: {err}");
            return ExitCode::FAILURE;
        }
    };
    if two_cpus {
        pin_to(1);
    }
    println!(
        "open loop: minetd-client --rate and a reference epoll open loop at 50% and 90% of \
         the closed loop's rps, {SIZE}-byte messages, {secs} s runs{}",
        if two_cpus {
            ", server on CPU 0, clients on CPU 1"
        } else {
            ""
        }
    );
    println!(
        "{:>11} {:>5} {:>10} {:>9} | {:^24} | {:^24}",
        "", "", "", "", "minetd-client --rate", "reference"
    );
    println!(
        "{:>11} {:>5} {:>10} {:>9} | {:>6} {:>9} {:>6} | {:>6} {:>9} {:>6}",
        "connections",
        "share",
        "closed_rps",
        "target",
        "ratio",
        "p99_us",
        "cpu_us",
        "ratio",
        "p99_us",
        "cpu_us"
    );
    let mut failed = false;
    for &connections in &counts {
        // (client, reference) per share, over the pairs.
        let mut kept: Vec<Vec<(Kept, Kept)>> = vec![Vec::new(); SHARES.len()];
        for pair in 0..pairs {
            let Some(closed) = client(addr, connections, secs, None) else {
                failed = true;
                break;
            };
            for (share_index, share) in SHARES.into_iter().enumerate() {
                let target = (closed.rps * share).round();
                let by_client = || {
                    let before = cpu_us(libc::RUSAGE_CHILDREN);
                    let run = client(addr, connections, secs, Some(target))?;
                    Some(Kept {
                        ratio: run.rps / target,
                        p99_us: run.p99_us,
                        cpu_us: (cpu_us(libc::RUSAGE_CHILDREN) - before) / run.round_trips,
                    })
                };
                let by_reference = || {
                    let before = cpu_us(libc::RUSAGE_SELF);
                    let outcome = reference::run(addr, connections, SIZE, target, secs);
                    let used = cpu_us(libc::RUSAGE_SELF) - before;
                    match outcome {
                        Ok(outcome) if outcome.mismatches == 0 => Some(Kept {
                            ratio: outcome.rps / target,
                            p99_us: outcome.p99_us,
                            cpu_us: used / outcome.round_trips as f64,
                        }),
                        Ok(outcome) => {
                            eprintln!("open_loop: reference: {} mismatches", outcome.mismatches);
                            None
                        }
                        Err(err) => {
                            eprintln!("open_loop: reference: {err}");
                            None
                        }
                    }
                };
                let (ours, theirs) = if pair % 2 == 0 {
                    let ours = by_client();
                    (ours, by_reference())
                } else {
                    let theirs = by_reference();
                    (by_client(), theirs)
                };
                let (Some(ours), Some(theirs)) = (ours, theirs) else {
                    failed = true;
                    continue;
                };
                println!(
                    "{connections:>11} {share:>5} {:>10.0} {target:>9.0} | {:>6.3} {:>9.0} {:>6.2} | {:>6.3} {:>9.0} {:>6.2}",
                    closed.rps,
                    ours.ratio,
                    ours.p99_us,
                    ours.cpu_us,
                    theirs.ratio,
                    theirs.p99_us,
                    theirs.cpu_us
                );
                kept[share_index].push((ours, theirs));
            }
        }
        for (share, runs) in SHARES.iter().zip(&kept) {
            if runs.is_empty() {
                continue;
            }
            let summary = |ratios: Vec<f64>| {
                let mut ratios = ratios;
                ratios.sort_by(f64::total_cmp);
                let held = ratios.iter().filter(|&&r| r >= 0.95).count();
                format!(
                    "median {:.3} ({:.3}-{:.3}, {held} of {} >= 0.95)",
                    ratios[ratios.len() / 2],
                    ratios[0],
                    ratios[ratios.len() - 1],
                    ratios.len()
                )
            };
            println!(
                "{connections} connections at {share}: client {}; reference {}",
                summary(runs.iter().map(|(ours, _)| ours.ratio).collect()),
                summary(runs.iter().map(|(_, theirs)| theirs.ratio).collect()),
            );
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// What one `minetd-client bench` run reported.
struct Reported {
    round_trips: f64,
    rps: f64,
    p99_us: f64,
}

/// One `minetd-client bench` run (closed loop, or open at `rate`).
fn client(
    addr: std::net::SocketAddr,
    connections: usize,
    secs: f64,
    rate: Option<f64>,
) -> Option<Reported> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_minetd-client"));
    command
        .args([
            "bench",
            "--json",
            "--threads",
            "1",
            "--size",
            &SIZE.to_string(),
        ])
        .arg(addr.to_string())
        .args(["--connections", &connections.to_string()])
        .args(["--duration", &secs.to_string()]);
    if let Some(rate) = rate {
        command.args(["--rate", &rate.to_string()]);
    }
    let output = command.output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    // The first "p99" is latency_us's (service_us comes after it).
    let figures = (|| {
        Some(Reported {
            round_trips: json_number(&text, "round_trips")?,
            rps: json_number(&text, "rps")?,
            p99_us: json_number(&text, "p99")?,
        })
    })();
    if !output.status.success() || figures.is_none() {
        eprintln!(
            "open_loop: minetd-client failed: {}{}",
            text,
            String::from_utf8_lossy(&output.stderr)
        );
        return None;
    }
    figures
}
