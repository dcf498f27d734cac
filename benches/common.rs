//! What the benches share: settings from the environment, CPU pinning,
//! starting the release minetd, and the pattern messages are cut from.

// Each bench uses only some of these.
#![allow(dead_code)]

use std::env;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

/// A number from the environment, or `default`.
pub fn setting(name: &str, default: f64) -> f64 {
    env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Starts the release minetd with `service` (`--echo` or `--daytime`) on a
/// loopback port; returns it and its address. Pinned to CPU 0 if `pin`.
pub fn start_server(service: &str, pin: bool) -> std::io::Result<(Child, SocketAddr)> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_minetd"));
    command
        .args([service, "127.0.0.1:0", "--max-connections", "20000"])
        .args(["--idle-timeout", "0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if pin {
        // SAFETY: only sched_setaffinity, async-signal-safe, runs in the child.
        unsafe {
            command.pre_exec(|| {
                pin_to(0);
                Ok(())
            });
        }
    }
    let mut child = command.spawn()?;
    let mut line = String::new();
    let stdout = child.stdout.take().ok_or(std::io::ErrorKind::BrokenPipe)?;
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("unexpected line {line:?}")))?;
    Ok((child, addr))
}

/// A server process the bench started, with the address its first
/// `listening SERVICE ADDR` line announced. Its stdout stays open (a
/// server writing to a closed pipe would get EPIPE).
pub struct Announced {
    pub child: Child,
    pub stdout: BufReader<std::process::ChildStdout>,
    pub addr: SocketAddr,
}

/// Spawns `command` (stdout piped here) pinned to `cpu` if given, killed if
/// the bench dies, and reads its `listening SERVICE ADDR` line. `name` is
/// for the error when it says something else.
pub fn spawn_announced(
    mut command: Command,
    cpu: Option<usize>,
    service: &str,
    name: &str,
) -> std::io::Result<Announced> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: between fork and exec this only makes two syscalls and
    // allocates nothing.
    unsafe {
        command.pre_exec(move || {
            // A bench that dies must not leave servers behind.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if let Some(cpu) = cpu {
                pin_to(cpu);
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|err| std::io::Error::new(err.kind(), format!("cannot start {name}: {err}")))?;
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix(&format!("listening {service} "))
        .and_then(|addr| addr.parse().ok());
    let Some(addr) = addr else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(std::io::Error::other(format!(
            "{name} did not announce its address (said {line:?})"
        )));
    };
    Ok(Announced {
        child,
        stdout,
        addr,
    })
}

/// Pins the calling thread (and what it starts later) to `cpu`.
pub fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set);
    }
}

/// Raises this process's soft descriptor limit to its hard limit, for
/// benches that hold thousands of connections themselves.
pub fn raise_descriptor_limit() {
    // SAFETY: getrlimit/setrlimit with a correctly sized struct we own; a
    // failure leaves the limit as it was, and the connects then say so.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The number after `"key":` in a JSON line, if any.
pub fn json_number(text: &str, key: &str) -> Option<f64> {
    text.split(&format!("\"{key}\":"))
        .nth(1)?
        .split([',', '}'])
        .next()?
        .parse()
        .ok()
}

/// `len` bytes of a fixed pseudo-random pattern (xorshift64), the same in
/// every run: load generators cut each message from it at an offset that
/// depends on the connection and the round, so an echo of the wrong
/// message is a mismatch and checking it is one comparison.
pub fn pattern(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// The median of the finite `values`, `None` if there is none.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}
