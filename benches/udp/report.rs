//! What one run measured, and the tables that compare the servers with
//! the plain `recvfrom` / `sendto` loop.

use std::fmt::Write as _;

use crate::Cell;
use crate::common::median;
use crate::servers::Kind;

/// One run of one server at one cell.
#[derive(Clone, Debug)]
pub struct Run {
    /// Datagrams echoed and checked per second.
    pub dps: f64,
    /// Server CPU (user + system) per echoed datagram, microseconds.
    pub cpu_us_per_dg: f64,
    /// Server CPU time over wall time, percent of one core.
    pub busy_percent: f64,
    /// Time the server waited on a run queue (behind other tasks on its
    /// CPU), percent of wall time: noise from other processes.
    pub server_wait_percent: f64,
    pub load_busy_percent: f64,
    pub load_wait_percent: f64,
    pub lost: u64,
    pub late: u64,
    pub mismatches: u64,
}

/// Every run of one cell: `runs[server][pair]`, `None` where a run failed.
pub struct CellResults<'a> {
    pub cell: Cell,
    pub servers: &'a [Kind],
    pub runs: Vec<Vec<Option<Run>>>,
}

impl CellResults<'_> {
    fn plain(&self) -> Option<usize> {
        self.servers.iter().position(|k| *k == Kind::Plain)
    }

    pub fn median_of(&self, server: usize, metric: impl Fn(&Run) -> f64) -> Option<f64> {
        median(self.runs[server].iter().flatten().map(&metric).collect())
    }

    /// The median over pairs of `server`'s `metric` divided by plain's in
    /// the same pair.
    pub fn ratio(&self, server: usize, metric: impl Fn(&Run) -> f64) -> Option<f64> {
        let plain = self.plain()?;
        let ratios = self.runs[server]
            .iter()
            .zip(&self.runs[plain])
            .filter_map(|(a, b)| Some(metric(a.as_ref()?) / metric(b.as_ref()?)))
            .collect();
        median(ratios)
    }

    /// Lost datagrams, summed over every run of `server`.
    fn lost(&self, server: usize) -> u64 {
        self.runs[server].iter().flatten().map(|r| r.lost).sum()
    }

    fn noise_percent(&self) -> f64 {
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

    /// The per-server table of one cell, with each server's ratios to plain.
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
            "{:<14} {:>9} {:>9} {:>9} {:>9} {:>8} {:>6} {:>9}   ratio to plain: dg/s  CPU/dg",
            "server", "dg/s", "CPU us/dg", "busy/wait", "load b/w", "lost", "late", "mismatch"
        );
        for (index, kind) in self.servers.iter().enumerate() {
            let ok = self.runs[index].iter().flatten().count();
            if ok == 0 {
                let _ = writeln!(out, "{:<14} every run failed", kind.to_string());
                continue;
            }
            let m = |metric: fn(&Run) -> f64| self.median_of(index, metric).unwrap_or(f64::NAN);
            let sum = |metric: fn(&Run) -> u64| -> u64 {
                self.runs[index].iter().flatten().map(metric).sum()
            };
            let ratios = if Some(index) == self.plain() {
                String::new()
            } else {
                format!(
                    "{:>6} {:>7}",
                    fmt_ratio(self.ratio(index, |r| r.dps)),
                    fmt_ratio(self.ratio(index, |r| r.cpu_us_per_dg))
                )
            };
            let _ = writeln!(
                out,
                "{:<14} {:>9.0} {:>9.3} {:>9} {:>9} {:>8} {:>6} {:>9}                  {}",
                kind.to_string(),
                m(|r| r.dps),
                m(|r| r.cpu_us_per_dg),
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
                sum(|r| r.lost),
                sum(|r| r.late),
                sum(|r| r.mismatches),
                ratios
            );
        }
        let noise = self.noise_percent();
        if noise > NOISE_PERCENT {
            let _ = writeln!(
                out,
                "noisy: up to {noise:.0}% of the run was spent waiting for a CPU taken by other \
                 processes; dg/s varies with that, CPU us/dg much less"
            );
        }
        out
    }
}

pub fn fmt_ratio(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "n/a".to_string(), |r| format!("{r:.3}"))
}

/// Run-queue wait (percent of the run) above which a cell is called noisy.
const NOISE_PERCENT: f64 = 10.0;

/// One line per cell: each server's datagrams/s and CPU per datagram, and
/// the ratios to plain (medians over pairs), and lost datagrams (sums).
pub fn summary(cells: &[CellResults<'_>]) -> String {
    let mut out = String::new();
    let Some(first) = cells.first() else {
        return out;
    };
    let servers = first.servers;
    let others: Vec<usize> = (0..servers.len())
        .filter(|&i| servers[i] != Kind::Plain)
        .collect();
    let _ = writeln!(
        out,
        "\n== summary: medians; ratios are medians over pairs of server / plain \
         (dg/s higher is better, CPU/dg lower); lost summed over runs, per server =="
    );
    // Each column as wide as its heading.
    let mut columns = Vec::new();
    for kind in servers {
        columns.push(format!("{kind} dg/s"));
    }
    for kind in servers {
        columns.push(format!("{kind} us/dg"));
    }
    for &i in &others {
        columns.push(format!("dg/s {}", servers[i]));
        columns.push(format!("CPU {}", servers[i]));
    }
    let widths: Vec<usize> = columns.iter().map(|c| c.len().max(8)).collect();
    let mut header = format!("{:<22}", "cell");
    for (column, width) in columns.iter().zip(&widths) {
        let _ = write!(header, " {column:>width$}");
    }
    let _ = write!(header, "  lost");
    let _ = writeln!(out, "{header}");
    for cell in cells {
        let mut line = format!("{:<22}", cell.cell.to_string());
        let mut values = Vec::new();
        for i in 0..servers.len() {
            let dps = cell.median_of(i, |r| r.dps).unwrap_or(f64::NAN);
            values.push(format!("{dps:.0}"));
        }
        for i in 0..servers.len() {
            let cpu = cell.median_of(i, |r| r.cpu_us_per_dg).unwrap_or(f64::NAN);
            values.push(format!("{cpu:.3}"));
        }
        for &i in &others {
            values.push(fmt_ratio(cell.ratio(i, |r| r.dps)));
            values.push(fmt_ratio(cell.ratio(i, |r| r.cpu_us_per_dg)));
        }
        for (value, width) in values.iter().zip(&widths) {
            let _ = write!(line, " {value:>width$}");
        }
        let lost: Vec<String> = (0..servers.len())
            .map(|i| cell.lost(i).to_string())
            .collect();
        let _ = write!(line, "  {}", lost.join("/"));
        let _ = write!(line, "  ({:.0}% wait)", cell.noise_percent());
        let _ = writeln!(out, "{line}");
    }
    out
}
