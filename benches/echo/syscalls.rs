//! Syscalls per round trip in a server, counted over a window of load that
//! starts and ends with nothing in flight: the load pauses until every echo
//! is in, the counter attaches to the idle server, the load resumes for the
//! window, pauses again, and the counter detaches. Every syscall counted
//! then belongs to a round trip counted (plus the one `epoll_wait` that was
//! blocked when the window opened).
//!
//! Two counters:
//! - `perf stat` on the syscall tracepoints: counts in the kernel, so the
//!   server runs at nearly full speed and batches events as it would
//!   untraced;
//! - `strace -c -f`: stops the server at every syscall, so it runs many
//!   times slower, each `epoll_wait` returns more events, and `epoll_wait`
//!   per round trip is understated; but it also counts failed calls.

use std::env;
use std::fmt;
use std::fs;
use std::io;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::load::Load;
use crate::report::Syscalls;
use crate::sys;

/// How long the load may take to drain, and a counter to attach or detach.
const LIMIT: Duration = Duration::from_secs(10);
/// Time given to `perf stat` to attach before the window opens (the server
/// is idle meanwhile, so a longer wait only costs time).
const PERF_SETTLE: Duration = Duration::from_millis(300);

/// Syscalls whose counts `perf` reports one by one (those the kernel has
/// tracepoints for); the total comes from `raw_syscalls:sys_enter`.
const PERF_SYSCALLS: &[&str] = &[
    "read",
    "write",
    "recvfrom",
    "sendto",
    "readv",
    "writev",
    "recvmsg",
    "sendmsg",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_ctl",
    "accept4",
    "futex",
    "clock_gettime",
    "mmap",
    "munmap",
    "madvise",
    "brk",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    Perf,
    Strace,
}

impl fmt::Display for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Counter::Perf => "perf",
            Counter::Strace => "strace",
        })
    }
}

impl Counter {
    /// `perf` if it can count syscall tracepoints here, else `strace` if it
    /// is on the PATH.
    pub fn detect() -> Option<Counter> {
        let perf_works = sys::on_path("perf")
            && Command::new("perf")
                .args(["stat", "-e", "raw_syscalls:sys_enter", "--", "true"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
        if perf_works {
            Some(Counter::Perf)
        } else if sys::on_path("strace") {
            Some(Counter::Strace)
        } else {
            None
        }
    }

    /// What the bench prints about how it counts.
    pub fn describe(&self, window: Duration) -> String {
        let secs = window.as_secs_f64();
        match self {
            Counter::Perf => format!(
                "perf stat on the syscall tracepoints of the server, over {secs} s of load after \
                 the first measured run of each cell"
            ),
            Counter::Strace => format!(
                "strace -c -f on the server, over {secs} s of load after the first measured run \
                 of each cell (tracing slows the server, so each epoll_wait returns more events: \
                 epoll_wait per round trip is understated)"
            ),
        }
    }

    /// Counts the syscalls of server `pid` per round trip of `load` over
    /// `window`.
    pub fn count(&self, load: &mut Load, pid: u32, window: Duration) -> io::Result<Syscalls> {
        load.pause(LIMIT)?;
        let out = env::temp_dir().join(format!("minetd-bench-{self}-{}-{pid}", std::process::id()));
        let mut child = match self {
            Counter::Perf => perf_command(pid, &out),
            Counter::Strace => strace_command(pid, &out),
        }
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
        let result = self.window(load, pid, window, &child);
        if result.is_err() {
            let _ = child.kill();
        }
        let status = child.wait()?;
        let round_trips = result?;
        let text = fs::read_to_string(&out);
        let _ = fs::remove_file(&out);
        let text = text.map_err(|err| io::Error::other(format!("{self} ({status}): {err}")))?;
        match self {
            Counter::Perf => parse_perf(&text, round_trips),
            Counter::Strace => parse_strace(&text, round_trips),
        }
    }

    /// Attach, resume, window, pause, detach; the round trips in between.
    fn window(
        &self,
        load: &mut Load,
        pid: u32,
        window: Duration,
        child: &Child,
    ) -> io::Result<u64> {
        let traced = || sys::tracer_pid(pid).unwrap_or(0) != 0;
        match self {
            Counter::Perf => load.run_until(Instant::now() + PERF_SETTLE, |_| false)?,
            Counter::Strace => {
                load.run_until(Instant::now() + LIMIT, |_| traced())?;
                if !traced() {
                    return Err(io::Error::other("strace did not attach"));
                }
            }
        }
        let rt0 = load.completed;
        load.resume()?;
        load.run_until(Instant::now() + window, |_| false)?;
        load.pause(LIMIT)?;
        let round_trips = load.completed - rt0;
        // SAFETY: kill(2) on the child we started; SIGINT makes perf and
        // strace stop counting and write their summary.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        if *self == Counter::Strace {
            load.run_until(Instant::now() + LIMIT, |_| !traced())?;
        }
        Ok(round_trips)
    }
}

fn perf_command(pid: u32, out: &Path) -> Command {
    let tracing = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .map(|dir| Path::new(dir).join("events/syscalls"))
        .find(|dir| dir.is_dir());
    let mut events = vec!["raw_syscalls:sys_enter".to_string()];
    if let Some(dir) = tracing {
        for name in PERF_SYSCALLS {
            if dir.join(format!("sys_enter_{name}")).is_dir() {
                events.push(format!("syscalls:sys_enter_{name}"));
            }
        }
    }
    let mut command = Command::new("perf");
    command.args(["stat", "-x", ",", "-o"]).arg(out).args([
        "-e",
        &events.join(","),
        "-p",
        &pid.to_string(),
    ]);
    command
}

fn strace_command(pid: u32, out: &Path) -> Command {
    let mut command = Command::new("strace");
    command
        .args(["-c", "-f", "-o"])
        .arg(out)
        .args(["-p", &pid.to_string()]);
    command
}

/// Reads `perf stat -x ,` lines: `COUNT,UNIT,EVENT,...`.
fn parse_perf(text: &str, round_trips: u64) -> io::Result<Syscalls> {
    let per_rt = round_trips.max(1) as f64;
    let mut by_name = Vec::new();
    let mut total = None;
    for line in text.lines() {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() < 3 {
            continue;
        }
        let Ok(count) = fields[0].trim().parse::<u64>() else {
            continue;
        };
        let event = fields[2].trim();
        if event == "raw_syscalls:sys_enter" {
            total = Some(count);
        } else if let Some(name) = event.strip_prefix("syscalls:sys_enter_") {
            by_name.push((name.to_string(), count as f64 / per_rt, 0.0));
        }
    }
    let total = total.ok_or_else(|| io::Error::other("no syscall total in perf's output"))?;
    // What the listed tracepoints do not cover.
    let listed: f64 = by_name.iter().map(|(_, calls, _)| calls).sum();
    let other = total as f64 / per_rt - listed;
    if other >= 0.005 {
        by_name.push(("other".to_string(), other, 0.0));
    }
    by_name.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(Syscalls {
        per_round_trip: total as f64 / per_rt,
        by_name,
    })
}

/// Reads the table of `strace -c`:
/// `% time  seconds  usecs/call  calls  errors  syscall`, errors possibly
/// blank, closed by a `total` line.
fn parse_strace(text: &str, round_trips: u64) -> io::Result<Syscalls> {
    let per_rt = round_trips.max(1) as f64;
    let mut by_name = Vec::new();
    let mut total = None;
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 5 || fields[0].parse::<f64>().is_err() {
            continue;
        }
        let Ok(calls) = fields[3].parse::<u64>() else {
            continue;
        };
        let errors = if fields.len() >= 6 {
            fields[4].parse::<u64>().unwrap_or(0)
        } else {
            0
        };
        let name = fields[fields.len() - 1];
        if name == "total" {
            total = Some(calls);
        } else {
            by_name.push((
                name.to_string(),
                calls as f64 / per_rt,
                errors as f64 / per_rt,
            ));
        }
    }
    let total = total.ok_or_else(|| io::Error::other("no total line in strace's summary"))?;
    by_name.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(Syscalls {
        per_round_trip: total as f64 / per_rt,
        by_name,
    })
}
