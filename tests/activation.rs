//! Socket activation with the real tool: `systemd-socket-activate` binds,
//! sets `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` and execs minetd as
//! systemd does. Without `--accept` it waits for the first connection (or
//! datagram) before it execs, so each test's first connection or datagram
//! is also what starts the server, and must still be served.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use common::{STEP, connect, output_within, server_bin};

const TOOL: &str = "systemd-socket-activate";

/// Whether the tool is installed; `.ci/run` installs it, so a missing one
/// here means a machine set up by hand.
fn tool_present() -> bool {
    let found = Command::new(TOOL)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !found {
        eprintln!("skipped: {TOOL} is not installed (package systemd; .ci/run installs it)");
    }
    found
}

/// A socket for the tool to bind: TCP or UDP, on a loopback port that was
/// free a moment ago.
#[derive(Clone, Copy)]
struct Sock {
    udp: bool,
    addr: SocketAddr,
}

impl Sock {
    fn tcp() -> Sock {
        let probe = TcpListener::bind("127.0.0.1:0").expect("bind a probe");
        Sock {
            udp: false,
            addr: probe.local_addr().expect("probe address"),
        }
    }

    fn udp() -> Sock {
        let probe = UdpSocket::bind("127.0.0.1:0").expect("bind a probe");
        Sock {
            udp: true,
            addr: probe.local_addr().expect("probe address"),
        }
    }
}

/// minetd started through the tool, with its output read by threads.
struct Activated {
    child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    /// Every stderr line seen so far.
    seen: Vec<String>,
}

impl Activated {
    /// Runs `systemd-socket-activate [-a] [-d] -l ADDR... [--fdname=NAMES]
    /// minetd ARGS` and waits until the tool says it listens on every
    /// address. All sockets of one run are of one type, as the tool's
    /// `--datagram` is. A port taken in between is retried with new ones.
    fn start(
        make: impl Fn() -> Vec<Sock>,
        names: Option<&str>,
        accept: bool,
        args: &[&str],
    ) -> (Activated, Vec<Sock>) {
        for _ in 0..3 {
            let socks = make();
            // The tool's --datagram is for all its sockets: TCP and UDP
            // together take two of it, the outer passing its sockets
            // through the inner, whose names then cover them all.
            let mixed = socks.iter().any(|s| s.udp) && socks.iter().any(|s| !s.udp);
            let mut command = Command::new(TOOL);
            if accept {
                command.arg("--accept");
            }
            if mixed {
                for sock in socks.iter().filter(|s| !s.udp) {
                    command.arg(format!("--listen={}", sock.addr));
                }
                command.arg(TOOL);
            }
            if socks.iter().any(|s| s.udp) {
                command.arg("--datagram");
            }
            for sock in socks.iter().filter(|s| !mixed || s.udp) {
                command.arg(format!("--listen={}", sock.addr));
            }
            if let Some(names) = names {
                command.arg(format!("--fdname={names}"));
            }
            command
                .arg(server_bin())
                .args(args)
                .env_remove("RUST_LOG")
                .env_remove("NOTIFY_SOCKET")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = command.spawn().expect("spawn systemd-socket-activate");
            let stdout = lines_of(child.stdout.take().expect("stdout piped"));
            let stderr = lines_of(child.stderr.take().expect("stderr piped"));
            let mut run = Activated {
                child,
                stdout,
                stderr,
                seen: Vec::new(),
            };
            // The inner tool of a mixed run binds once the outer is woken.
            let all_bound = socks
                .iter()
                .filter(|sock| !mixed || !sock.udp)
                .all(|sock| run.stderr_has(&format!("Listening on {}", sock.addr)));
            if all_bound {
                return (run, socks);
            }
            let _ = run.child.kill();
            let _ = run.child.wait();
        }
        panic!("{TOOL} could not bind free ports three times");
    }

    /// Waits (up to [`STEP`]) for a stderr line containing `needle`.
    fn stderr_has(&mut self, needle: &str) -> bool {
        if self.seen.iter().any(|line| line.contains(needle)) {
            return true;
        }
        let deadline = Instant::now() + STEP;
        while let Ok(line) = self
            .stderr
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            let found = line.contains(needle);
            self.seen.push(line);
            if found {
                return true;
            }
        }
        false
    }

    /// The next `n` stdout lines.
    fn stdout_lines(&self, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| self.stdout.recv_timeout(STEP).expect("a stdout line"))
            .collect()
    }

    /// minetd's own stderr lines (`minetd: ...`), once it has exited.
    fn exit(mut self) -> (ExitStatus, Vec<String>) {
        let deadline = Instant::now() + STEP;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "minetd still running");
            thread::sleep(Duration::from_millis(10));
        };
        while let Ok(line) = self.stderr.recv_timeout(STEP) {
            self.seen.push(line);
        }
        let own = std::mem::take(&mut self.seen)
            .into_iter()
            .filter(|line| line.starts_with("minetd: "))
            .collect();
        (status, own)
    }

    /// SIGTERM, then the exit status and every stdout line left.
    fn stop(mut self) -> (ExitStatus, Vec<String>) {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let mut rest = Vec::new();
        while let Ok(line) = self.stdout.recv_timeout(STEP) {
            rest.push(line);
        }
        let status = self.child.wait().expect("wait");
        (status, rest)
    }
}

impl Drop for Activated {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines_of(pipe: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Sends one datagram and returns the answer, if one comes within a second.
fn ask(to: SocketAddr, message: &[u8]) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a client");
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    socket.send_to(message, to).expect("send");
    let mut answer = [0u8; 600];
    let (len, _) = socket.recv_from(&mut answer).ok()?;
    Some(answer[..len].to_vec())
}

/// Wakes the tool with a connection (or a datagram) so that it execs
/// minetd, which is to refuse the hand-over: the connection may be reset
/// as minetd exits, even before `connect` returns.
fn wake(sock: Sock) -> Option<TcpStream> {
    if sock.udp {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a client");
        socket.send_to(b"wake", sock.addr).expect("send");
        None
    } else {
        TcpStream::connect_timeout(&sock.addr, STEP).ok()
    }
}

#[test]
fn inherited_stream_sockets_are_served_by_name_in_descriptor_order() {
    if !tool_present() {
        return;
    }
    let (run, socks) = Activated::start(
        || vec![Sock::tcp(), Sock::tcp()],
        Some("daytime:echo"),
        false,
        &[],
    );
    let (daytime, echo) = (socks[0].addr, socks[1].addr);
    // The first connection is the one that started the server.
    let mut first = connect(echo);
    assert_eq!(
        run.stdout_lines(2),
        [
            format!("listening daytime {daytime}"),
            format!("listening echo {echo}")
        ]
    );
    first.write_all(b"hello\0\xff\n").expect("write");
    first
        .shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    let mut back = Vec::new();
    first.read_to_end(&mut back).expect("read");
    assert_eq!(back, b"hello\0\xff\n");
    let mut line = Vec::new();
    connect(daytime).read_to_end(&mut line).expect("daytime");
    assert!(line.ends_with(b"\r\n") && line.len() == 26, "{line:?}");
    // Nothing else was bound: no default listeners, no other lines.
    let (status, rest) = run.stop();
    assert_eq!(status.code(), Some(0));
    assert_eq!(rest, Vec::<String>::new());
}

#[test]
fn inherited_datagram_socket_is_served_even_off_loopback() {
    if !tool_present() {
        return;
    }
    // 0.0.0.0 would be refused as --udp-echo without --allow: the unit
    // chose this address, so the rule does not apply.
    let any = || {
        let port = Sock::udp().addr.port();
        vec![Sock {
            udp: true,
            addr: SocketAddr::from(([0, 0, 0, 0], port)),
        }]
    };
    let (run, socks) = Activated::start(any, Some("udp-echo"), false, &[]);
    let local = SocketAddr::from(([127, 0, 0, 1], socks[0].addr.port()));
    let mut answer = None;
    for _ in 0..10 {
        answer = ask(local, b"ping\0");
        if answer.is_some() {
            break;
        }
    }
    assert_eq!(answer.as_deref(), Some(&b"ping\0"[..]));
    assert_eq!(
        run.stdout_lines(1),
        [format!("listening udp-echo {}", socks[0].addr)]
    );
    let (status, rest) = run.stop();
    assert_eq!(status.code(), Some(0));
    assert!(rest.is_empty(), "{rest:?}");
}

#[test]
fn stream_and_datagram_sockets_are_served_together() {
    if !tool_present() {
        return;
    }
    let (mut run, socks) = Activated::start(
        || vec![Sock::tcp(), Sock::udp()],
        Some("echo:udp-echo"),
        false,
        &[],
    );
    let (tcp, udp) = (socks[0].addr, socks[1].addr);
    let mut stream = connect(tcp);
    assert!(
        run.stderr_has(&format!("Listening on {udp}")),
        "{:?}",
        run.seen
    );
    let mut answer = None;
    for _ in 0..10 {
        answer = ask(udp, b"both");
        if answer.is_some() {
            break;
        }
    }
    assert_eq!(answer.as_deref(), Some(&b"both"[..]));
    assert_eq!(
        run.stdout_lines(2),
        [
            format!("listening echo {tcp}"),
            format!("listening udp-echo {udp}")
        ]
    );
    stream.write_all(b"tcp too").expect("write");
    let mut back = [0u8; 7];
    stream.read_exact(&mut back).expect("echo");
    assert_eq!(&back, b"tcp too");
    let (status, rest) = run.stop();
    assert_eq!(status.code(), Some(0));
    assert!(rest.is_empty(), "{rest:?}");
}

#[test]
fn inherited_listeners_come_before_those_of_options() {
    if !tool_present() {
        return;
    }
    let (run, socks) = Activated::start(
        || vec![Sock::tcp()],
        Some("daytime"),
        false,
        &["--echo", "127.0.0.1:0"],
    );
    let mut first = connect(socks[0].addr);
    let lines = run.stdout_lines(2);
    assert_eq!(lines[0], format!("listening daytime {}", socks[0].addr));
    let echo: SocketAddr = lines[1]
        .strip_prefix("listening echo ")
        .unwrap_or_else(|| panic!("second line {:?}", lines[1]))
        .parse()
        .expect("echo address");
    let mut line = Vec::new();
    first.read_to_end(&mut line).expect("daytime");
    assert!(line.ends_with(b"\r\n"), "{line:?}");
    let mut stream = connect(echo);
    stream.write_all(b"x").expect("write");
    let mut one = [0u8; 1];
    stream.read_exact(&mut one).expect("echo");
    assert_eq!(&one, b"x");
    // A daytime connection lingers until its client closes.
    drop((first, stream));
    let (status, _) = run.stop();
    assert_eq!(status.code(), Some(0));
}

/// Starts minetd through the tool with a bad hand-over, wakes it, and
/// returns its exit status and its own stderr lines.
fn refused(socks: fn() -> Vec<Sock>, names: Option<&str>) -> (Option<i32>, Vec<String>) {
    let (run, socks) = Activated::start(socks, names, false, &[]);
    let _first = wake(socks[0]);
    let (status, lines) = run.exit();
    (status.code(), lines)
}

#[test]
fn an_unnamed_descriptor_is_a_usage_error() {
    if !tool_present() {
        return;
    }
    let (code, lines) = refused(|| vec![Sock::tcp()], None);
    assert_eq!(code, Some(2));
    assert_eq!(
        lines,
        [
            "minetd: descriptor 3 has no name in LISTEN_FDNAMES: name it for its service \
          (FileDescriptorName=echo, say)"
        ]
    );
}

#[test]
fn an_unknown_name_is_a_usage_error_naming_its_descriptor() {
    if !tool_present() {
        return;
    }
    let (code, lines) = refused(|| vec![Sock::tcp(), Sock::tcp()], Some("echo:gopher"));
    assert_eq!(code, Some(2));
    assert_eq!(
        lines,
        [
            "minetd: descriptor 4 is named 'gopher', which is no service (expected one of echo, \
          daytime, discard, chargen, time, udp-echo, udp-discard, udp-daytime, udp-chargen, \
          udp-time)"
        ]
    );
}

#[test]
fn a_stream_name_on_a_datagram_socket_is_a_usage_error() {
    if !tool_present() {
        return;
    }
    let (code, lines) = refused(|| vec![Sock::udp()], Some("echo"));
    assert_eq!(code, Some(2));
    assert_eq!(
        lines,
        ["minetd: descriptor 3 (echo) is not a stream socket, which echo needs"]
    );
}

#[test]
fn a_datagram_name_on_a_stream_socket_is_a_usage_error() {
    if !tool_present() {
        return;
    }
    let (code, lines) = refused(|| vec![Sock::tcp()], Some("udp-time"));
    assert_eq!(code, Some(2));
    assert_eq!(
        lines,
        ["minetd: descriptor 3 (udp-time) is not a datagram socket, which udp-time needs"]
    );
}

const CONNECTED: &str = "minetd: descriptor 3 (echo) is a connected socket, not a listening one (Accept=yes is not supported)";

#[test]
fn a_connected_socket_from_accept_mode_is_refused() {
    if !tool_present() {
        return;
    }
    // With --accept the tool forks minetd per connection, so its exit
    // status is the tool's to reap; the line is what shows here, and the
    // test below checks the status.
    let (mut run, socks) = Activated::start(|| vec![Sock::tcp()], Some("echo"), true, &[]);
    let mut stream = connect(socks[0].addr);
    assert!(run.stderr_has(CONNECTED), "stderr: {:?}", run.seen);
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");
}

/// Runs minetd with `socket` as descriptor 3 and the variables set as a
/// service manager would (`LISTEN_PID` from `pid`: "self" or a number).
fn handed_over(socket: &impl AsRawFd, pid: &str, names: &str, args: &[&str]) -> Command {
    let fd = socket.as_raw_fd();
    // sh learns its own PID, which exec keeps, and execs minetd.
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(format!(
            "LISTEN_PID={} LISTEN_FDS=1 LISTEN_FDNAMES={names} exec \"$0\" \"$@\"",
            if pid == "self" { "$$" } else { pid }
        ))
        .arg(server_bin())
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: dup2 is async-signal-safe and touches only descriptors.
    unsafe {
        command.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec set.
            let rc = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

#[test]
fn a_connected_socket_is_exit_2() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let connected = connect(listener.local_addr().expect("address"));
    let child = handed_over(&connected, "self", "echo", &[])
        .spawn()
        .expect("spawn");
    let output = output_within(child, STEP);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let own: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("minetd: "))
        .collect();
    assert_eq!(own, [CONNECTED]);
}

#[test]
fn a_listen_pid_that_is_not_minetds_is_ignored() {
    let inherited = TcpListener::bind("127.0.0.1:0").expect("bind");
    // PID 1 is never minetd: the descriptor is not for it.
    let command = handed_over(&inherited, "1", "echo", &["--daytime", "127.0.0.1:0"]);
    let server = common::Server::spawn(command, 1);
    assert_eq!(server.listening.len(), 1);
    assert_eq!(server.listening[0].0, "daytime");
    let mut line = Vec::new();
    connect(server.daytime())
        .read_to_end(&mut line)
        .expect("daytime");
    assert!(line.ends_with(b"\r\n"), "{line:?}");
}

#[test]
fn a_unix_socket_is_a_usage_error() {
    let path = std::env::temp_dir().join(format!("minetd-unix-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    let child = handed_over(&listener, "self", "daytime", &[])
        .spawn()
        .expect("spawn");
    let output = output_within(child, STEP);
    let _ = std::fs::remove_file(&path);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let own: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("minetd: "))
        .collect();
    assert_eq!(
        own,
        ["minetd: descriptor 3 (daytime) is not an IPv4 or IPv6 socket"]
    );
}
