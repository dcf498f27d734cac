//! `cargo bench --bench udp`: minetd's UDP echo against two reference
//! loops, each in a process of its own, under the same load over loopback.
//!
//! - **minetd**: the release binary cargo built for this bench, with
//!   `--udp-echo 127.0.0.1:0`.
//! - **plain**: a non-blocking socket in a level-triggered epoll loop, one
//!   `recvfrom` and one `sendto` per datagram, as a hand-written C server
//!   would be (`reference.rs`).
//! - **mmsg**: the same loop with `recvmmsg` / `sendmmsg`, up to 64
//!   datagrams per call, the answers of one batch sent together.
//!
//! The references are this binary re-executed with `--serve plain` or
//! `--serve mmsg`. With two or more CPUs each server is pinned to the first
//! and the load generator (this process, one thread) to the second.
//!
//! The load (`load.rs`): N flows, each a connected UDP socket keeping one
//! burst of B datagrams in flight, every echo checked byte for byte; an echo
//! not in within 200 ms counts as lost and the flow sends its next burst.
//! A cell is `SIZExFLOWS` (B = 1: one datagram in flight per flow, the
//! closed loop) or `SIZExFLOWSbB` (bursts of B, sent with one `sendmmsg`:
//! the generator outruns the server, whose socket then has many datagrams
//! queued at each wake-up; the cell where batching can pay). Per cell the
//! servers run in turn, A B C C B A ..., each run a fresh server process;
//! the table gives the median per server and the median over pairs of each
//! server's ratio to `plain`. Server CPU is utime + stime from
//! `/proc/PID/stat` around the measured window.
//!
//! Settings (environment):
//! - `MINETD_UDP_SECS` (3): measured seconds per run
//! - `MINETD_UDP_WARMUP` (0.5): seconds of load before measuring
//! - `MINETD_UDP_PAIRS` (3): runs of each server per cell
//! - `MINETD_UDP_CELLS` (`64x1,64x64,64x1000,1400x1,1400x64,1400x1000,64x64b4,1400x16b4`)
//! - `MINETD_UDP_SERVERS` (`minetd,plain,mmsg`); `minetd:PATH` adds
//!   another minetd binary, an earlier build say
//!
//! Options that cargo passes (`--bench`) are ignored.

use std::env;
use std::fmt;
use std::io::{self, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[path = "../common.rs"]
mod common;
mod load;
mod mmsg;
mod reference;
mod report;
mod servers;
#[path = "../echo/sys.rs"]
#[allow(dead_code)] // the echo bench uses more of it
mod sys;

use load::Load;
use report::{CellResults, Run};
use servers::{Kind, Server};

const DEFAULT_CELLS: &str = "64x1,64x64,64x1000,1400x1,1400x64,1400x1000,64x64b4,1400x16b4";
const DEFAULT_SERVERS: &str = "minetd,plain,mmsg";

/// One point of the grid: datagram size, flows, datagrams in flight per flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cell {
    pub size: usize,
    pub flows: usize,
    pub burst: usize,
}

impl Cell {
    fn parse(text: &str) -> Result<Cell, String> {
        let bad = || format!("bad cell {text:?}: expected SIZExFLOWS or SIZExFLOWSbBURST");
        let (size, rest) = text.split_once('x').ok_or_else(bad)?;
        let (flows, burst) = rest.split_once('b').unwrap_or((rest, "1"));
        let number = |t: &str| t.parse::<usize>().map_err(|_| bad());
        let cell = Cell {
            size: number(size)?,
            flows: number(flows)?,
            burst: number(burst)?,
        };
        if cell.size < 8 || cell.size > 65_507 || cell.flows == 0 || !(1..=64).contains(&cell.burst)
        {
            return Err(format!(
                "bad cell {text:?}: size 8 to 65507, flows at least 1, burst 1 to 64"
            ));
        }
        Ok(cell)
    }
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} B x {}", self.size, self.flows)?;
        if self.burst > 1 {
            write!(f, " x burst {}", self.burst)?;
        }
        Ok(())
    }
}

struct Settings {
    secs: Duration,
    warmup: Duration,
    pairs: usize,
    cells: Vec<Cell>,
    servers: Vec<Kind>,
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

fn list<T>(
    name: &str,
    default: &str,
    parse: fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(parse)
        .collect()
}

impl Settings {
    fn from_env() -> Result<Settings, String> {
        let servers = list("MINETD_UDP_SERVERS", DEFAULT_SERVERS, Kind::parse)?;
        if !servers.contains(&Kind::Plain) {
            return Err("MINETD_UDP_SERVERS must include plain, the baseline of the ratios".into());
        }
        Ok(Settings {
            secs: seconds("MINETD_UDP_SECS", 3.0)?,
            warmup: seconds("MINETD_UDP_WARMUP", 0.5)?,
            pairs: env_or("MINETD_UDP_PAIRS", 3usize)?.max(1),
            cells: list("MINETD_UDP_CELLS", DEFAULT_CELLS, Cell::parse)?,
            servers,
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
        let _ = writeln!(io::stdout(), "{doc}");
        return ExitCode::SUCCESS;
    }
    let mut settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("udp bench: {err}");
            return ExitCode::from(2);
        }
    };
    match run_all(&mut settings) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("udp bench: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Runs every cell; `Ok(false)` if any run failed or saw a mismatch.
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
    println!("minetd udp bench: {placement}; descriptor limit {limit}");
    println!(
        "{} s measured per run after {} s warm-up, {} runs per server per cell, servers interleaved; \
         one burst in flight per flow, lost after {} ms",
        settings.secs.as_secs_f64(),
        settings.warmup.as_secs_f64(),
        settings.pairs,
        load::LOSS_AFTER.as_millis()
    );
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!("load average at start: {}", load.trim());
    }

    let mut all_ok = true;
    let mut results = Vec::new();
    for &cell in &settings.cells {
        eprintln!("-- {cell}");
        let mut runs = vec![Vec::new(); settings.servers.len()];
        for pair in 0..settings.pairs {
            // Odd pairs run the servers in reverse (A B C, C B A, ...).
            let mut order: Vec<usize> = (0..settings.servers.len()).collect();
            if pair % 2 == 1 {
                order.reverse();
            }
            for index in order {
                let kind = &settings.servers[index];
                match run_one(kind, cell, settings) {
                    Ok(run) => {
                        eprintln!(
                            "   {pair} {kind:<13} {:>9.0} dg/s {:>6.2} us CPU/dg  server busy {:>3.0}% \
                             wait {:>2.0}%  load busy {:>3.0}% wait {:>2.0}%  lost {} late {} mismatches {}",
                            run.dps,
                            run.cpu_us_per_dg,
                            run.busy_percent,
                            run.server_wait_percent,
                            run.load_busy_percent,
                            run.load_wait_percent,
                            run.lost,
                            run.late,
                            run.mismatches
                        );
                        all_ok &= run.mismatches == 0;
                        runs[index].push(Some(run));
                    }
                    Err(err) => {
                        eprintln!("   {pair} {kind:<13} FAILED: {err}");
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
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!("load average at end: {}", load.trim());
    }
    Ok(all_ok)
}

/// One run: a fresh server, the flows, warm-up, the measured window.
fn run_one(kind: &Kind, cell: Cell, settings: &Settings) -> io::Result<Run> {
    let server = Server::start(kind, settings.server_cpu)?;
    let pid = server.pid;
    let mut load = Load::start(server.addr, cell.flows, cell.size, cell.burst)?;
    load.run_until(Instant::now() + settings.warmup)?;
    if load.answered == 0 {
        return Err(io::Error::other("no echo during the warm-up"));
    }

    let server_schedstat = format!("/proc/{pid}/schedstat");
    let load_schedstat = "/proc/thread-self/schedstat";
    let (answered0, lost0, late0, mismatches0) =
        (load.answered, load.lost, load.late, load.mismatches);
    let cpu0 = sys::cpu_ticks(pid)?;
    let (_, server_wait0) = sys::schedstat(&server_schedstat)?;
    let (load_run0, load_wait0) = sys::schedstat(load_schedstat)?;
    let t0 = Instant::now();
    load.run_until(t0 + settings.secs)?;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = sys::cpu_ticks(pid)?;
    let (_, server_wait1) = sys::schedstat(&server_schedstat)?;
    let (load_run1, load_wait1) = sys::schedstat(load_schedstat)?;
    drop(server);

    let percent_of_wall = |nanos: u64| nanos as f64 / 1e9 / elapsed * 100.0;
    let datagrams = load.answered - answered0;
    let cpu_secs = (cpu1 - cpu0) as f64 / sys::clock_ticks_per_sec() as f64;
    Ok(Run {
        dps: datagrams as f64 / elapsed,
        cpu_us_per_dg: cpu_secs * 1e6 / datagrams.max(1) as f64,
        busy_percent: cpu_secs / elapsed * 100.0,
        server_wait_percent: percent_of_wall(server_wait1 - server_wait0),
        load_busy_percent: percent_of_wall(load_run1 - load_run0),
        load_wait_percent: percent_of_wall(load_wait1 - load_wait0),
        lost: load.lost - lost0,
        late: load.late - late0,
        mismatches: load.mismatches - mismatches0,
    })
}
