//! Readiness over `NOTIFY_SOCKET`, received on a Unix datagram socket the
//! test binds as a service manager would: `READY=1` once the listening
//! lines are out, `STATUS=` with each stats line, `STOPPING=1` at SIGTERM;
//! and a socket that is not there costs a warning, not the service.

mod common;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::process::{Command, Stdio};

use common::{STEP, connect, server_bin};

/// A manager's end: a bound datagram socket, with the value of
/// `NOTIFY_SOCKET` that reaches it.
fn manager(abstract_name: bool) -> (UnixDatagram, String, Option<std::path::PathBuf>) {
    let unique = format!("minetd-notify-{}-{abstract_name}", std::process::id());
    let (socket, name, path) = if abstract_name {
        let addr = SocketAddr::from_abstract_name(unique.as_bytes()).expect("abstract name");
        (
            UnixDatagram::bind_addr(&addr).expect("bind abstract"),
            format!("@{unique}"),
            None,
        )
    } else {
        let path = std::env::temp_dir().join(format!("{unique}.sock"));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).expect("bind path");
        (socket, path.display().to_string(), Some(path))
    };
    socket.set_read_timeout(Some(STEP)).expect("timeout");
    (socket, name, path)
}

fn next_message(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let len = socket
        .recv(&mut buf)
        .expect("a notification within the step");
    String::from_utf8(buf[..len].to_vec()).expect("text")
}

fn spawn(notify_socket: &str, args: &[&str]) -> std::process::Child {
    Command::new(server_bin())
        .args(args)
        .env("NOTIFY_SOCKET", notify_socket)
        .env_remove("RUST_LOG")
        .env_remove("LISTEN_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn minetd")
}

/// What is in the pipe right now, without waiting.
fn read_available(pipe: &mut std::process::ChildStdout) -> String {
    // SAFETY: fcntl on a pipe descriptor we own; no memory is passed.
    unsafe {
        let fd = pipe.as_raw_fd();
        libc::fcntl(
            fd,
            libc::F_SETFL,
            libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK,
        );
    }
    let mut buf = [0u8; 4096];
    match pipe.read(&mut buf) {
        Ok(len) => String::from_utf8_lossy(&buf[..len]).into_owned(),
        Err(_) => String::new(),
    }
}

#[test]
fn ready_after_listening_lines_then_status_then_stopping() {
    let (socket, name, path) = manager(false);
    let mut child = spawn(
        &name,
        &[
            "--echo",
            "127.0.0.1:0",
            "--stats-interval",
            "1",
            "--idle-timeout",
            "0",
        ],
    );
    assert_eq!(next_message(&socket), "READY=1");
    // READY comes after the line is written and flushed: it is in the pipe.
    let mut stdout = child.stdout.take().expect("stdout");
    let lines = read_available(&mut stdout);
    let addr = lines
        .strip_prefix("listening echo ")
        .and_then(|rest| rest.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("stdout before READY: {lines:?}"));
    let mut stream = connect(addr.parse().expect("address"));
    stream.write_all(b"abc").expect("write");
    let mut back = [0u8; 3];
    stream.read_exact(&mut back).expect("echo");
    // The first interval may end before the connection is counted.
    let mut status = next_message(&socket);
    if status == "STATUS=stats: echo open 0 accepted 0 refused 0 in 0 out 0" {
        status = next_message(&socket);
    }
    assert_eq!(
        status,
        "STATUS=stats: echo open 1 accepted 1 refused 0 in 3 out 3"
    );
    drop(stream);
    // SAFETY: kill(2) on our own child's pid has no memory effects.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    // A stats line may fall between the signal and the shutdown.
    let mut message = next_message(&socket);
    while message.starts_with("STATUS=") {
        message = next_message(&socket);
    }
    assert_eq!(message, "STOPPING=1");
    let output = common::output_within(child, STEP);
    assert_eq!(output.status.code(), Some(0));
    if let Some(path) = path {
        let _ = std::fs::remove_file(path);
    }
}

#[test]
fn an_abstract_notify_socket_is_reached() {
    let (socket, name, _) = manager(true);
    let mut child = spawn(&name, &["--echo", "127.0.0.1:0"]);
    assert_eq!(next_message(&socket), "READY=1");
    // SAFETY: kill(2) on our own child's pid has no memory effects.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(next_message(&socket), "STOPPING=1");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_missing_notify_socket_is_only_a_warning() {
    let missing = std::env::temp_dir().join(format!("minetd-absent-{}.sock", std::process::id()));
    let mut command = Command::new(server_bin());
    command
        .args(["--echo", "127.0.0.1:0"])
        .env("NOTIFY_SOCKET", &missing)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut server = common::Server::spawn(command, 1);
    let mut stream = connect(server.echo());
    stream.write_all(b"still served").expect("write");
    let mut back = [0u8; 12];
    stream.read_exact(&mut back).expect("echo");
    assert_eq!(&back, b"still served");
    let stderr = server.stderr_lines();
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(STEP).expect("exit after SIGTERM");
    assert_eq!(status.code(), Some(0));
    let lines: Vec<String> = stderr.iter().collect();
    let warnings: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("cannot notify the service manager"))
        .collect();
    assert!(
        !warnings.is_empty() && warnings.iter().all(|l| l.contains(" WARN ")),
        "stderr: {lines:?}"
    );
    assert!(
        warnings[0].contains("of READY=1: No such file or directory"),
        "{warnings:?}"
    );
}
