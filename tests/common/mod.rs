//! Helpers shared by the integration tests: start the real `minetd` binary on
//! port 0, learn its ports from its `listening` lines, and stop it on drop.
//!
//! Every test file that needs them says `mod common;`; not every file uses
//! every helper, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod report;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, ChildStderr, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How long any single step of a test may take before it counts as a hang.
pub const STEP: Duration = Duration::from_secs(10);

/// Path of the server binary that cargo built for these tests.
pub fn server_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_minetd"))
}

/// Path of the client binary that cargo built for these tests.
pub fn client_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_minetd-client"))
}

/// A running `minetd` child process, killed (if still running) on drop.
pub struct Server {
    pub child: Child,
    /// `(service, address)` from each `listening SERVICE ADDR` line, in order.
    pub listening: Vec<(String, SocketAddr)>,
    stderr: Option<ChildStderr>,
}

impl Server {
    /// Starts `minetd` with `args` and waits for one `listening` line per
    /// service option in `args` (or two when none is given).
    pub fn start(args: &[&str]) -> Server {
        Server::start_with(args, &[])
    }

    /// Like [`Server::start`], with extra environment variables (`RUST_LOG`).
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut command = Command::new(server_bin());
        command
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        Server::spawn(command, expected_listeners(args))
    }

    /// Spawns a prepared command (stdout and stderr must be piped) and waits
    /// for `expected` listening lines.
    pub fn spawn(mut command: Command, expected: usize) -> Server {
        let mut child = command.spawn().expect("spawn minetd");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut listening = Vec::new();
        let deadline = Instant::now() + STEP;
        while listening.len() < expected {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => {
                    let _ = child.kill();
                    let mut err = String::new();
                    if let Some(mut stderr) = child.stderr.take() {
                        let _ = stderr.read_to_string(&mut err);
                    }
                    panic!("minetd printed {listening:?} and then nothing; stderr: {err}");
                }
            };
            let mut words = line.split(' ');
            assert_eq!(
                words.next(),
                Some("listening"),
                "unexpected stdout line {line:?}"
            );
            let service = words.next().expect("service").to_string();
            let addr = words.next().expect("addr").parse().expect("addr parses");
            assert_eq!(words.next(), None, "extra words in {line:?}");
            listening.push((service, addr));
        }
        let stderr = child.stderr.take();
        Server {
            child,
            listening,
            stderr,
        }
    }

    /// The address of the `n`th listener for `service`.
    pub fn addr_of(&self, service: &str, n: usize) -> SocketAddr {
        self.listening
            .iter()
            .filter(|(name, _)| name == service)
            .nth(n)
            .unwrap_or_else(|| panic!("no listener #{n} for {service} in {:?}", self.listening))
            .1
    }

    /// The first echo listener.
    pub fn echo(&self) -> SocketAddr {
        self.addr_of("echo", 0)
    }

    /// The first daytime listener.
    pub fn daytime(&self) -> SocketAddr {
        self.addr_of("daytime", 0)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the server.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits up to `limit` for the server to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Takes the stderr pipe: a reader thread then collects it. Call before
    /// the server writes much, or the pipe fills and the server blocks.
    pub fn stderr_lines(&mut self) -> mpsc::Receiver<String> {
        let stderr = self.stderr.take().expect("stderr already taken");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        rx
    }

    /// Number of open descriptors of the server process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("read /proc/PID/fd")
            .count()
    }

    /// User plus system CPU time the server has used, from `/proc/PID/stat`.
    pub fn cpu_time(&self) -> Duration {
        cpu_time_of(self.pid())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User plus system CPU time of process `pid`.
pub fn cpu_time_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // The command name may hold spaces; the fields after its ')' are fixed.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let utime: u64 = fields[11].parse().expect("utime");
    let stime: u64 = fields[12].parse().expect("stime");
    // SAFETY: sysconf has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_micros((utime + stime) * 1_000_000 / ticks)
}

/// How many `listening` lines `minetd` prints for these arguments.
fn expected_listeners(args: &[&str]) -> usize {
    const SERVICES: [&str; 10] = [
        "--echo",
        "--daytime",
        "--discard",
        "--chargen",
        "--time",
        "--udp-echo",
        "--udp-discard",
        "--udp-daytime",
        "--udp-chargen",
        "--udp-time",
    ];
    let named = args
        .iter()
        .filter(|arg| {
            SERVICES
                .iter()
                .any(|s| **arg == *s || arg.starts_with(&format!("{s}=")))
        })
        .count();
    // `listening metrics ADDR` lines come after the services'.
    let metrics = args
        .iter()
        .filter(|arg| **arg == "--metrics" || arg.starts_with("--metrics="))
        .count();
    metrics + if named == 0 { 2 } else { named }
}

/// Connects with read and write timeouts of [`STEP`], so no test can hang.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, STEP).expect("connect");
    stream.set_read_timeout(Some(STEP)).unwrap();
    stream.set_write_timeout(Some(STEP)).unwrap();
    stream
}

/// Reads until EOF (with [`STEP`] timeouts), returning everything read.
pub fn read_to_eof(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    stream.read_to_end(&mut all).expect("read to EOF");
    all
}

/// Polls `condition` every 10 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Connects from a chosen local address (blocking, with timeouts).
pub fn connect_from(local: SocketAddr, remote: SocketAddr) -> TcpStream {
    // SAFETY: plain socket calls on a descriptor we create and own; the
    // sockaddr is built for its exact size.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    let stream = unsafe { <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let to_sockaddr = |addr: SocketAddr| {
        let SocketAddr::V4(v4) = addr else {
            panic!("IPv4 only")
        };
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            },
            sin_zero: [0; 8],
        }
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let local = to_sockaddr(local);
    let remote = to_sockaddr(remote);
    unsafe {
        assert_eq!(
            libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len),
            0,
            "bind: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(
            libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len),
            0,
            "connect: {}",
            std::io::Error::last_os_error()
        );
    }
    stream.set_read_timeout(Some(STEP)).unwrap();
    stream.set_write_timeout(Some(STEP)).unwrap();
    stream
}

/// Collects `child`'s output; kills it and fails the test if it is still
/// running after `limit`.
pub fn output_within(child: Child, limit: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output.expect("wait for the child"),
        Err(_) => {
            // SAFETY: kill(2) on our own child's pid has no memory effects.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("child still running after {limit:?}");
        }
    }
}

/// The receive buffer asked for on hostile and slow sockets: the server's
/// echo to them backs up after a few kilobytes, so it has to hold bytes
/// itself.
const PEER_RCVBUF: libc::c_int = 4096;

/// The segment size those sockets announce: an Ethernet path's, as peers
/// from a real network have. Loopback's own (64 KiB) would let the
/// server's send buffer grow to megabytes per peer, so that a peer would
/// have to write that much before the server held a byte itself.
const PEER_MSS: libc::c_int = 1460;

/// A connection with a small receive buffer and an Ethernet segment size,
/// both set before the handshake so that the server sees them: a peer
/// whose echo backs up the way a remote one's does. No timeouts set.
pub fn connect_as_remote_peer(addr: SocketAddr) -> TcpStream {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: a new socket we own; setsockopt with a correctly sized int.
    let stream = unsafe {
        let fd = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        for (level, option, value) in [
            (libc::SOL_SOCKET, libc::SO_RCVBUF, PEER_RCVBUF),
            (libc::IPPROTO_TCP, libc::TCP_MAXSEG, PEER_MSS),
        ] {
            let rc = libc::setsockopt(
                fd,
                level,
                option,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            assert_eq!(rc, 0, "setsockopt: {}", std::io::Error::last_os_error());
        }
        <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd)
    };
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 only")
    };
    let remote = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: connect with a sockaddr_in of its exact size.
    let rc = unsafe {
        libc::connect(
            std::os::fd::AsRawFd::as_raw_fd(&stream),
            (&remote as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
    stream
}

/// Resident set size of `pid` in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Raises this process's soft descriptor limit to the hard one: the tests
/// hold a socket per peer.
pub fn raise_descriptor_limit() {
    // SAFETY: getrlimit/setrlimit with a correctly sized struct we own.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
}

/// What one hostile peer writes at most. Enough for a server without a
/// budget to owe it a full `--max-pending` (measured: 500 such peers grow
/// it by 32 MiB), little enough that 10,000 of them cost the kernel about
/// a gigabyte of socket buffers rather than more than it allows TCP.
pub const HOSTILE_BYTES: usize = 128 * 1024;

/// Opens `count` peers that write up to [`HOSTILE_BYTES`] each and never
/// read, and returns once the server has stopped taking their bytes (every
/// peer wrote its share, or all were refused for a while).
pub fn flood_with_non_readers(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    let peers = (0..count).map(|_| connect_as_remote_peer(addr)).collect();
    write_until_held(peers, HOSTILE_BYTES)
}

/// Makes each of `peers` write up to `each` bytes without ever reading,
/// and returns them once the server has stopped taking their bytes: every
/// peer wrote its share, or none could write for a while.
pub fn write_until_held(peers: Vec<TcpStream>, each: usize) -> Vec<TcpStream> {
    let mut peers: Vec<(TcpStream, usize)> = peers
        .into_iter()
        .map(|stream| {
            stream.set_nonblocking(true).expect("nonblocking");
            (stream, 0)
        })
        .collect();
    let chunk = vec![0x5a; 64 * 1024];
    let started = Instant::now();
    // One pass without progress may only mean the server has not run yet;
    // several in a row mean it stopped reading them.
    let mut idle_passes = 0;
    while idle_passes < 5 {
        let mut progress = false;
        for (stream, written) in &mut peers {
            while *written < each {
                let n = chunk.len().min(each - *written);
                match stream.write(&chunk[..n]) {
                    Ok(sent) => {
                        *written += sent;
                        progress = true;
                    }
                    Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                    Err(err) => panic!("non-reader: {err}"),
                }
            }
        }
        if peers.iter().all(|(_, written)| *written == each) {
            break;
        }
        idle_passes = if progress { 0 } else { idle_passes + 1 };
        thread::sleep(Duration::from_millis(20));
        assert!(started.elapsed() < 6 * STEP, "the server never pushed back");
    }
    peers.into_iter().map(|(stream, _)| stream).collect()
}

/// Closes with SO_LINGER 0, so the kernel sends a reset instead of a FIN.
pub fn reset(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a correctly sized linger on our own socket.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    drop(stream);
}

/// Waits for each named run of a table of bench adversaries, prints how
/// long after its window each ended, and fails with every run that
/// panicked (not only the first).
pub fn report_runs(runs: Vec<(&str, thread::JoinHandle<f64>)>) {
    let mut failures = Vec::new();
    for (name, run) in runs {
        match run.join() {
            Ok(after_window) => {
                println!("{name}: ended at most {after_window:.2} s after the window")
            }
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{name}: {why}"));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Whether this machine lets a test make a network namespace; says why
/// the test is skipped when not.
pub fn can_unshare_net() -> bool {
    let probe = Command::new("unshare").args(["--net", "true"]).output();
    let can = probe.is_ok_and(|out| out.status.success());
    if !can {
        eprintln!("skipped: cannot make a network namespace here (unshare --net)");
    }
    can
}

/// Runs the ignored test `inner` of this test binary again inside a new
/// network namespace, after `setup` (a shell command list, run there
/// first), with `env` set; fails unless it passed, and returns its stdout.
pub fn run_in_new_netns(setup: &str, inner: &str, env: (&str, &str)) -> String {
    let me = std::env::current_exe().expect("test binary");
    let script = format!("{setup} && exec \"$0\" --exact {inner} --ignored --nocapture");
    let child = Command::new("unshare")
        .args(["--net", "sh", "-c", &script])
        .arg(&me)
        .env(env.0, env.1)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn unshare");
    let output = output_within(child, 6 * STEP);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{inner} inside the namespace:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}
