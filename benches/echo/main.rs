//! `cargo bench --bench echo`: minetd against two references, each in a
//! process of its own, under the same closed-loop load over loopback.
//!
//! - **minetd**: the release binary cargo built for this bench, with
//!   `--echo 127.0.0.1:0 --max-connections 20000 --idle-timeout 0`.
//! - **epoll**: a minimal level-triggered epoll echo loop on `libc`, as a
//!   hand-written C server would be (see `reference.rs`).
//! - **tokio-16K, tokio-64K**: the idiomatic tokio `current_thread` echo,
//!   one task per connection with a buffer of that size.
//!
//! The references are this binary re-executed with `--serve epoll` or
//! `--serve tokio:SIZE`. With two or more CPUs the server is pinned to the
//! first and the load generator (this process, one thread) to the second.
//!
//! The load (`load.rs`) keeps one message in flight per connection: write,
//! read the whole echo, check it byte for byte, repeat. Per cell (message
//! size x connections) the servers run in turn, A B C D D C B A ..., each
//! run in a fresh server process, and the table gives the median per server
//! and the median over pairs of minetd's ratio to each reference. Server CPU
//! comes from `/proc/PID/stat` (utime + stime) around the measured window,
//! RSS from `/proc/PID/status` at its end with every connection open. With
//! `perf` (or else `strace`) at hand, each server's syscalls per round trip
//! are counted once per cell in a separate window after the measured one
//! (`syscalls.rs`).
//!
//! Settings (environment):
//! - `MINETD_BENCH_SECS` (3): measured seconds per run
//! - `MINETD_BENCH_WARMUP` (0.5): seconds of load before measuring
//! - `MINETD_BENCH_PAIRS` (3): runs of each server per cell
//! - `MINETD_BENCH_CELLS` (`64x100,64x1000,64x10000,512x100,512x1000,512x10000,64Kx16`)
//! - `MINETD_BENCH_SERVERS` (`minetd,epoll,tokio:16K,tokio:64K`); `minetd:PATH`
//!   adds another minetd binary, an earlier build say, as a reference
//! - `MINETD_BENCH_SYSCALLS` (`auto`: perf if it works, else strace if
//!   found; or `perf`, `strace`, `0`) and `MINETD_BENCH_SYSCALLS_SECS` (1)
//!
//! Arguments: cell filters like `64x10000`, `512x` or `x100` (a cell runs if
//! any filter matches; none = all); `--bench` and other options that cargo
//! passes are ignored.

use std::env;
use std::fmt;
use std::io::{self, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[path = "../common.rs"]
mod common;
mod load;
mod reference;
mod report;
mod servers;
mod sys;
mod syscalls;

use load::Load;
use report::{CellResults, Run};
use servers::{Kind, Server, parse_size};
use syscalls::Counter;

const DEFAULT_CELLS: &str = "64x100,64x1000,64x10000,512x100,512x1000,512x10000,64Kx16";
const DEFAULT_SERVERS: &str = "minetd,epoll,tokio:16K,tokio:64K";
/// How long the first round trip on every connection may take after the
/// warm-up before the run counts as failed.
const START_LIMIT: Duration = Duration::from_secs(30);

/// One point of the grid: message size and connection count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cell {
    pub size: usize,
    pub connections: usize,
}

impl Cell {
    /// Bulk transfer rather than small messages.
    pub fn is_bulk(&self) -> bool {
        self.size >= 16 * 1024
    }

    fn parse(text: &str) -> Result<Cell, String> {
        let (size, connections) = text
            .split_once('x')
            .ok_or_else(|| format!("bad cell {text:?}: expected SIZExCONNECTIONS"))?;
        match (parse_size(size), parse_size(connections)) {
            (Some(size), Some(connections)) if size > 0 && connections > 0 => {
                Ok(Cell { size, connections })
            }
            _ => Err(format!("bad cell {text:?}: expected SIZExCONNECTIONS")),
        }
    }

    /// `64x`, `x100`, `512x1000`: an empty side matches anything.
    fn matches(&self, filter: &str) -> bool {
        let Some((size, connections)) = filter.split_once('x') else {
            return false;
        };
        (size.is_empty() || parse_size(size) == Some(self.size))
            && (connections.is_empty() || parse_size(connections) == Some(self.connections))
    }
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let size = if self.size % 1024 == 0 {
            format!("{} KiB", self.size / 1024)
        } else {
            format!("{} B", self.size)
        };
        write!(f, "{size} x {}", self.connections)
    }
}

struct Settings {
    secs: Duration,
    warmup: Duration,
    pairs: usize,
    cells: Vec<Cell>,
    servers: Vec<Kind>,
    /// How to count syscalls per round trip, and for how long.
    syscalls: Option<(Counter, Duration)>,
    server_cpu: Option<usize>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|_| format!("{name}={text:?} is not a valid value")),
        Err(_) => Ok(default),
    }
}

fn seconds(name: &str, default: f64) -> Result<Duration, String> {
    let secs: f64 = env_or(name, default)?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{name}={secs} is not a duration"))
}

impl Settings {
    fn from_env(args: &[String]) -> Result<Settings, String> {
        let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
        let cells_text = env::var("MINETD_BENCH_CELLS").unwrap_or_else(|_| DEFAULT_CELLS.into());
        let cells = cells_text
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(Cell::parse)
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|cell| filters.is_empty() || filters.iter().any(|f| cell.matches(f)))
            .collect();
        let servers_text =
            env::var("MINETD_BENCH_SERVERS").unwrap_or_else(|_| DEFAULT_SERVERS.into());
        let servers = servers_text
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(Kind::parse)
            .collect::<Result<Vec<_>, _>>()?;
        let counter = match env::var("MINETD_BENCH_SYSCALLS").as_deref() {
            Ok("0") | Ok("off") | Ok("no") => None,
            Ok("perf") => Some(Counter::Perf),
            Ok("strace") => Some(Counter::Strace),
            Ok("auto") | Err(_) => Counter::detect(),
            Ok(other) => {
                return Err(format!(
                    "MINETD_BENCH_SYSCALLS={other:?}: expected auto, perf, strace or 0"
                ));
            }
        };
        let syscalls = match counter {
            Some(counter) => Some((counter, seconds("MINETD_BENCH_SYSCALLS_SECS", 1.0)?)),
            None => None,
        };
        Ok(Settings {
            secs: seconds("MINETD_BENCH_SECS", 3.0)?,
            warmup: seconds("MINETD_BENCH_WARMUP", 0.5)?,
            pairs: env_or("MINETD_BENCH_PAIRS", 3usize)?.max(1),
            cells,
            servers,
            syscalls,
            server_cpu: None,
        })
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    if let Some(at) = args.iter().position(|a| a == "--serve") {
        let spec = args.get(at + 1).map_or("", String::as_str);
        return reference::serve(spec);
    }
    if args.iter().any(|a| a == "-h" || a == "--help") {
        let doc = include_str!("main.rs")
            .lines()
            .map_while(|line| line.strip_prefix("//!"))
            .map(|line| line.strip_prefix(' ').unwrap_or(line))
            .collect::<Vec<_>>()
            .join("\n");
        // `--help | head` closes the pipe early: not worth a panic.
        let _ = writeln!(io::stdout(), "{doc}");
        return ExitCode::SUCCESS;
    }
    let mut settings = match Settings::from_env(&args) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("echo bench: {err}");
            return ExitCode::from(2);
        }
    };
    match run_all(&mut settings) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("echo bench: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Runs every cell; `Ok(false)` if any run failed.
fn run_all(settings: &mut Settings) -> io::Result<bool> {
    let limit = sys::raise_nofile()?;
    let cpus = sys::allowed_cpus();
    let placement = if cpus.len() >= 2 {
        sys::pin_to(cpus[1])?;
        settings.server_cpu = Some(cpus[0]);
        format!("server pinned to CPU {}, load to CPU {}", cpus[0], cpus[1])
    } else {
        "fewer than 2 CPUs: nothing pinned, server and load share".to_string()
    };
    println!("minetd echo bench: {placement}; descriptor limit {limit}");
    println!(
        "{} s measured per run after {} s warm-up, {} runs per server per cell, servers interleaved; \
         one message in flight per connection, so latency is closed-loop",
        settings.secs.as_secs_f64(),
        settings.warmup.as_secs_f64(),
        settings.pairs
    );
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!("load average at start: {}", load.trim());
    }
    match settings.syscalls {
        Some((counter, window)) => println!("syscalls/rt: {}", counter.describe(window)),
        None => {
            println!("syscalls/rt: not counted (no perf or strace, or MINETD_BENCH_SYSCALLS=0)")
        }
    }
    let most = settings.cells.iter().map(|c| c.connections).max();
    if most.unwrap_or(0) as u64 + 64 > limit {
        return Err(io::Error::other(format!(
            "{} connections need more than the descriptor limit {limit}",
            most.unwrap_or(0)
        )));
    }

    let mut all_ok = true;
    let mut results = Vec::new();
    for &cell in &settings.cells {
        eprintln!("-- {cell}");
        let mut runs = vec![Vec::new(); settings.servers.len()];
        for pair in 0..settings.pairs {
            // Odd pairs run the servers in reverse (A B C D, D C B A, ...),
            // so no server always goes first after the previous cell or
            // always follows the same one.
            let mut order: Vec<usize> = (0..settings.servers.len()).collect();
            if pair % 2 == 1 {
                order.reverse();
            }
            for index in order {
                let kind = &settings.servers[index];
                let syscalls = settings.syscalls.filter(|_| pair == 0);
                match run_one(kind, cell, settings, syscalls) {
                    Ok(run) => {
                        eprintln!(
                            "   {pair} {kind:<10} {:>8} rt {:>8.0} rt/s  p99 {:>7.1} us  {:>5.2} us CPU/rt  \
                             server busy {:>3.0}% wait {:>2.0}%  load busy {:>3.0}% wait {:>2.0}%  RSS {} KiB ({} anon)",
                            run.round_trips,
                            run.rps,
                            run.p99_us,
                            run.cpu_us_per_rt,
                            run.busy_percent,
                            run.server_wait_percent,
                            run.load_busy_percent,
                            run.load_wait_percent,
                            run.rss_kib,
                            run.rss_anon_kib
                        );
                        runs[index].push(Some(run));
                    }
                    Err(err) => {
                        eprintln!("   {pair} {kind:<10} FAILED: {err}");
                        all_ok = false;
                        runs[index].push(None);
                    }
                }
            }
        }
        let cell_results = CellResults {
            cell,
            servers: &settings.servers,
            runs,
        };
        print!("{}", cell_results.table());
        results.push(cell_results);
    }
    print!("{}", report::summary(&results));
    Ok(all_ok)
}

/// One run: a fresh server, the connections, warm-up, the measured window,
/// then optionally the window that counts syscalls.
fn run_one(
    kind: &Kind,
    cell: Cell,
    settings: &Settings,
    syscalls: Option<(Counter, Duration)>,
) -> io::Result<Run> {
    let server = Server::start(kind, settings.server_cpu)?;
    let pid = server.pid;
    let mut load = Load::connect(server.addr, cell.connections, cell.size)?;
    load.run_until(Instant::now() + settings.warmup, |_| false)?;
    load.run_until(Instant::now() + START_LIMIT, |l| l.not_started == 0)?;
    if load.not_started > 0 {
        return Err(io::Error::other(format!(
            "{} connections had no echo after the warm-up",
            load.not_started
        )));
    }

    load.recording = true;
    let server_schedstat = format!("/proc/{pid}/schedstat");
    let load_schedstat = "/proc/thread-self/schedstat";
    let rt0 = load.completed;
    let cpu0 = sys::cpu_ticks(pid)?;
    let (_, server_wait0) = sys::schedstat(&server_schedstat)?;
    let (load_run0, load_wait0) = sys::schedstat(load_schedstat)?;
    let t0 = Instant::now();
    load.run_until(t0 + settings.secs, |_| false)?;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = sys::cpu_ticks(pid)?;
    let (_, server_wait1) = sys::schedstat(&server_schedstat)?;
    let (load_run1, load_wait1) = sys::schedstat(load_schedstat)?;
    let percent_of_wall = |nanos: u64| nanos as f64 / 1e9 / elapsed * 100.0;
    let round_trips = load.completed - rt0;
    load.recording = false;
    let rss_kib = sys::rss_kib(pid)?;
    let rss_anon_kib = sys::rss_anon_kib(pid)?;

    let cpu_secs = (cpu1 - cpu0) as f64 / sys::clock_ticks_per_sec() as f64;
    let rps = round_trips as f64 / elapsed;
    let quantile_us = |q: f64| load.latency.value_at_quantile(q) as f64 / 1000.0;
    let mut run = Run {
        round_trips,
        rps,
        mbps: rps * cell.size as f64 / 1e6,
        p50_us: quantile_us(0.50),
        p99_us: quantile_us(0.99),
        cpu_us_per_rt: cpu_secs * 1e6 / round_trips.max(1) as f64,
        busy_percent: cpu_secs / elapsed * 100.0,
        server_wait_percent: percent_of_wall(server_wait1 - server_wait0),
        load_busy_percent: percent_of_wall(load_run1 - load_run0),
        load_wait_percent: percent_of_wall(load_wait1 - load_wait0),
        rss_kib,
        rss_anon_kib,
        syscalls: None,
    };
    if let Some((counter, window)) = syscalls {
        match counter.count(&mut load, pid, window) {
            Ok(syscalls) => run.syscalls = Some(syscalls),
            Err(err) => eprintln!("   counting syscalls of {kind} with {counter}: {err}"),
        }
    }
    load.close();
    drop(server);
    Ok(run)
}
