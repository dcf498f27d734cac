//! The few process-level things the bench needs from Linux: CPU affinity,
//! the descriptor limit, and what `/proc` says about a server process.

use std::fs;
use std::io;

/// The CPUs this process may run on, lowest first.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity
    // writes at most size_of::<cpu_set_t>() bytes into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    if unsafe { libc::sched_getaffinity(0, size, &mut set) } != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, the set's capacity.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Pins the calling thread (and what it later forks or execs) to one CPU.
/// Allocates nothing, so it is safe between `fork` and `exec`.
pub fn pin_to(cpu: usize) -> io::Result<()> {
    // SAFETY: as in `allowed_cpus`; `cpu` is checked against the capacity.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    unsafe { libc::CPU_SET(cpu, &mut set) };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    if unsafe { libc::sched_setaffinity(0, size, &set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the new soft
/// limit.
pub fn raise_nofile() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one rlimit we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// Clock ticks per second, the unit of `utime` and `stime`.
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no memory arguments.
    match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as u64,
        _ => 100,
    }
}

/// User plus system CPU time of a process (all its threads) so far, in
/// clock ticks, from `/proc/PID/stat`.
pub fn cpu_ticks(pid: u32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces:
    // count fields from the last ')'. Field 3 (state) is then index 0, so
    // utime (14) and stime (15) are indices 11 and 12.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| bad_proc("stat", pid))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |index: usize| -> io::Result<u64> {
        fields
            .get(index)
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| bad_proc("stat", pid))
    };
    Ok(field(11)? + field(12)?)
}

/// Time a task has spent running and waiting to run (on a run queue,
/// behind other tasks), in nanoseconds, from a `schedstat` file:
/// `/proc/PID/schedstat` (the main thread) or `/proc/thread-self/schedstat`.
pub fn schedstat(path: &str) -> io::Result<(u64, u64)> {
    let text = fs::read_to_string(path)?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
    match (fields.next().flatten(), fields.next().flatten()) {
        (Some(run), Some(wait)) => Ok((run, wait)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot parse {path}"),
        )),
    }
}

/// Resident memory of a process in KiB (`VmRSS` in `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    status_field(pid, "VmRSS:")
}

/// Anonymous resident memory of a process in KiB (`RssAnon`): heap and
/// stacks, without the pages of the binary and libraries.
pub fn rss_anon_kib(pid: u32) -> io::Result<u64> {
    status_field(pid, "RssAnon:")
}

/// The pid tracing a process, 0 when none (`TracerPid` in `/proc/PID/status`).
pub fn tracer_pid(pid: u32) -> io::Result<u64> {
    status_field(pid, "TracerPid:")
}

fn status_field(pid: u32, name: &str) -> io::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .ok_or_else(|| bad_proc("status", pid))
}

fn bad_proc(file: &str, pid: u32) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("cannot parse /proc/{pid}/{file}"),
    )
}

/// Whether `program` is an executable file somewhere on `PATH`.
pub fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            fs::metadata(dir.join(program))
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
    })
}
