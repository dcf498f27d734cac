//! What one run measured, and the tables that compare the servers.

use std::fmt::Write as _;

use crate::Cell;
use crate::common::median;
use crate::servers::Kind;

/// Syscalls per round trip in one server, from `perf stat` or `strace -c`.
#[derive(Clone, Debug)]
pub struct Syscalls {
    pub per_round_trip: f64,
    /// (syscall, calls per round trip, errors per round trip), most first.
    pub by_name: Vec<(String, f64, f64)>,
}

impl Syscalls {
    /// `2.01: read 1.00, write 1.00, epoll_wait 0.01`
    pub fn describe(&self) -> String {
        let mut text = format!("{:.2}:", self.per_round_trip);
        for (index, (name, calls, errors)) in self.by_name.iter().enumerate() {
            if index >= 5 || *calls < 0.005 {
                break;
            }
            let sep = if index == 0 { " " } else { ", " };
            let _ = write!(text, "{sep}{name} {calls:.2}");
            if *errors >= 0.005 {
                let _ = write!(text, " ({errors:.2} failed)");
            }
        }
        text
    }
}

/// One run of one server at one cell.
#[derive(Clone, Debug)]
pub struct Run {
    pub round_trips: u64,
    pub rps: f64,
    /// Megabytes (10^6) per second each way.
    pub mbps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Server CPU (user + system, all threads) per round trip, microseconds.
    pub cpu_us_per_rt: f64,
    /// Server CPU time over wall time, percent of one core.
    pub busy_percent: f64,
    /// Time the server's main thread waited on a run queue (behind other
    /// tasks on its CPU), percent of wall time: noise from other processes.
    pub server_wait_percent: f64,
    /// CPU time of the load generator over wall time, percent of one core.
    pub load_busy_percent: f64,
    /// Time the load generator waited on a run queue, percent of wall time.
    pub load_wait_percent: f64,
    pub rss_kib: u64,
    /// Of which anonymous (heap, stacks).
    pub rss_anon_kib: u64,
    pub syscalls: Option<Syscalls>,
}

/// Every run of one cell: `runs[server][pair]`, `None` where a run failed.
pub struct CellResults<'a> {
    pub cell: Cell,
    pub servers: &'a [Kind],
    pub runs: Vec<Vec<Option<Run>>>,
}

impl CellResults<'_> {
    fn index_of(&self, kind: &Kind) -> Option<usize> {
        self.servers.iter().position(|k| k == kind)
    }

    /// The median over successful runs of `server`.
    pub fn median_of(&self, server: usize, metric: impl Fn(&Run) -> f64) -> Option<f64> {
        median(self.runs[server].iter().flatten().map(&metric).collect())
    }

    /// The median over pairs of minetd's `metric` divided by `reference`'s
    /// in the same pair.
    pub fn ratio(&self, reference: &Kind, metric: impl Fn(&Run) -> f64) -> Option<f64> {
        let ours = self.index_of(&Kind::Minetd)?;
        let theirs = self.index_of(reference)?;
        let ratios = self.runs[ours]
            .iter()
            .zip(&self.runs[theirs])
            .filter_map(|(a, b)| Some(metric(a.as_ref()?) / metric(b.as_ref()?)))
            .collect();
        median(ratios)
    }

    /// The median over pairs of the reference's `metric` divided by
    /// minetd's: for a cost such as CPU per round trip, how much more
    /// minetd could serve than the reference when the server is the
    /// bottleneck.
    pub fn inverse_ratio(&self, reference: &Kind, metric: impl Fn(&Run) -> f64) -> Option<f64> {
        self.ratio(reference, |run| 1.0 / metric(run))
    }

    /// The highest median run-queue wait, server's or load's, over the
    /// servers: how much other processes took from this cell's CPUs.
    pub fn noise_percent(&self) -> f64 {
        (0..self.servers.len())
            .flat_map(|i| {
                [
                    self.median_of(i, |r| r.server_wait_percent),
                    self.median_of(i, |r| r.load_wait_percent),
                ]
            })
            .flatten()
            .fold(0.0, f64::max)
    }

    /// The per-server table of one cell, with minetd's ratios to each
    /// reference below it.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let pairs = self.runs.first().map_or(0, Vec::len);
        let _ = writeln!(
            out,
            "\n== {} ({} runs of each server, interleaved; medians) ==",
            self.cell, pairs
        );
        let _ = writeln!(
            out,
            "{:<10} {:>9} {:>7} {:>8} {:>8} {:>9} {:>9} {:>9} {:>15}  syscalls/rt",
            "server",
            "rt/s",
            "MB/s",
            "p50 us",
            "p99 us",
            "CPU us/rt",
            "busy/wait",
            "load b/w",
            "RSS KiB (anon)"
        );
        for (index, kind) in self.servers.iter().enumerate() {
            let ok = self.runs[index].iter().flatten().count();
            if ok == 0 {
                let _ = writeln!(out, "{:<10} every run failed", kind.to_string());
                continue;
            }
            let m = |metric: fn(&Run) -> f64| self.median_of(index, metric).unwrap_or(f64::NAN);
            let syscalls = self.runs[index]
                .iter()
                .flatten()
                .find_map(|run| run.syscalls.as_ref())
                .map_or_else(|| "-".to_string(), Syscalls::describe);
            let failed = if ok < self.runs[index].len() {
                format!("  ({} runs failed)", self.runs[index].len() - ok)
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "{:<10} {:>9.0} {:>7.1} {:>8.1} {:>8.1} {:>9.2} {:>9} {:>9} {:>15}  {}{}",
                kind.to_string(),
                m(|r| r.rps),
                m(|r| r.mbps),
                m(|r| r.p50_us),
                m(|r| r.p99_us),
                m(|r| r.cpu_us_per_rt),
                format!(
                    "{:.0}/{:.0}%",
                    m(|r| r.busy_percent),
                    m(|r| r.server_wait_percent)
                ),
                format!(
                    "{:.0}/{:.0}%",
                    m(|r| r.load_busy_percent),
                    m(|r| r.load_wait_percent)
                ),
                format!(
                    "{:.0} ({:.0})",
                    m(|r| r.rss_kib as f64),
                    m(|r| r.rss_anon_kib as f64)
                ),
                syscalls,
                failed,
            );
        }
        if self.index_of(&Kind::Minetd).is_some() {
            for reference in self.servers.iter().filter(|k| **k != Kind::Minetd) {
                let _ = writeln!(
                    out,
                    "minetd / {:<9} rt/s {}  p99 {}  CPU/rt {}  RSS {}",
                    reference.to_string(),
                    fmt_ratio(self.ratio(reference, |r| r.rps)),
                    fmt_ratio(self.ratio(reference, |r| r.p99_us)),
                    fmt_ratio(self.ratio(reference, |r| r.cpu_us_per_rt)),
                    fmt_ratio(self.ratio(reference, |r| r.rss_kib as f64)),
                );
            }
        }
        let noise = self.noise_percent();
        if noise > NOISE_PERCENT {
            let _ = writeln!(
                out,
                "noisy: up to {noise:.0}% of the run was spent waiting for a CPU taken by other \
                 processes; rt/s and latency vary with that, CPU us/rt much less"
            );
        }
        out
    }
}

pub fn fmt_ratio(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "  n/a".to_string(), |r| format!("{r:.3}"))
}

/// Run-queue wait (percent of the run) above which a cell is called noisy.
const NOISE_PERCENT: f64 = 10.0;

/// RSS at 10,000 connections must stay under this (4 MiB).
const RSS_TARGET_KIB: f64 = 4096.0;

/// The summary over every cell, and each target of issue #5 with whether
/// minetd met it in this run.
pub fn summary(cells: &[CellResults<'_>]) -> String {
    let mut out = String::new();
    let refs: Vec<&Kind> = cells
        .first()
        .map(|c| c.servers.iter().filter(|k| **k != Kind::Minetd).collect())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "\n== summary: minetd, and minetd / reference (median of pairs; rt/s higher is better, p99 and CPU/rt lower) =="
    );
    let mut header = format!("{:<14} {:>10} {:>9}", "cell", "rt/s", "RSS KiB");
    for reference in &refs {
        let _ = write!(header, " {:>12}", format!("rt/s /{reference}"));
    }
    for reference in &refs {
        let _ = write!(header, " {:>12}", format!("CPU /{reference}"));
    }
    let _ = write!(header, " {:>10}", "p99 /epoll");
    let _ = writeln!(out, "{header}");
    for cell in cells {
        let Some(ours) = cell.index_of(&Kind::Minetd) else {
            continue;
        };
        let mut line = format!(
            "{:<14} {:>10.0} {:>9.0}",
            cell.cell.to_string(),
            cell.median_of(ours, |r| r.rps).unwrap_or(f64::NAN),
            cell.median_of(ours, |r| r.rss_kib as f64)
                .unwrap_or(f64::NAN),
        );
        for reference in &refs {
            let _ = write!(line, " {:>12}", fmt_ratio(cell.ratio(reference, |r| r.rps)));
        }
        for reference in &refs {
            let ratio = cell.ratio(reference, |r| r.cpu_us_per_rt);
            let _ = write!(line, " {:>12}", fmt_ratio(ratio));
        }
        let p99 = cell.ratio(&Kind::Epoll, |r| r.p99_us);
        let _ = write!(line, " {:>10}", fmt_ratio(p99));
        let _ = writeln!(out, "{line}");
    }

    let _ = writeln!(
        out,
        "\n== targets (issue #5): measured, and for throughput also the capacity ratio \
         (reference CPU per round trip / minetd's: the rt/s ratio if the server were the only bottleneck) =="
    );
    let _ = writeln!(
        out,
        "{:<14} {:<24} {:<10} {:<16} {:<16} noise",
        "cell", "target", "goal", "measured", "capacity"
    );
    let tokio16 = Kind::Tokio(16 * 1024);
    let tokio64 = Kind::Tokio(64 * 1024);
    for cell in cells {
        let name = cell.cell.to_string();
        let noise = format!("{:.0}% wait", cell.noise_percent());
        let verdict = |value: Option<f64>, goal: f64, at_least: bool| match value {
            None => "-".to_string(),
            Some(v) if (at_least && v >= goal) || (!at_least && v <= goal) => {
                format!("{v:.3} meets")
            }
            Some(v) => format!("{v:.3} MISSES"),
        };
        // `capacity`: None for targets that have none.
        let mut line = |what: &str,
                        goal: f64,
                        at_least: bool,
                        value: Option<f64>,
                        capacity: Option<Option<f64>>| {
            let sign = if at_least { ">=" } else { "<=" };
            let capacity = match capacity {
                Some(c) => verdict(c, goal, at_least),
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "{name:<14} {what:<24} {:<10} {:<16} {:<16} {noise}",
                format!("{sign} {goal}"),
                verdict(value, goal, at_least),
                capacity,
            );
        };
        let mut throughput = |reference: &Kind, goal: f64| {
            line(
                &format!("rt/s minetd/{reference}"),
                goal,
                true,
                cell.ratio(reference, |r| r.rps),
                Some(cell.inverse_ratio(reference, |r| r.cpu_us_per_rt)),
            );
        };
        if cell.cell.is_bulk() {
            throughput(&Kind::Epoll, 1.0);
            throughput(&tokio64, 1.0);
        } else {
            throughput(&Kind::Epoll, 0.97);
            throughput(&tokio16, 1.0);
        }
        if cell.cell.connections >= 10_000 {
            let rss = cell
                .index_of(&Kind::Minetd)
                .and_then(|i| cell.median_of(i, |r| r.rss_kib as f64));
            line("minetd RSS KiB", RSS_TARGET_KIB, false, rss, None);
            let p99 = cell.ratio(&Kind::Epoll, |r| r.p99_us);
            line("p99 minetd/epoll", 1.1, false, p99, None);
        }
    }
    out
}
