//! The `minetd` command line: `listening` lines in option order with real
//! ports, one-line usage errors (exit 2), bind failures (exit 1), help,
//! version, a graceful exit on SIGTERM and SIGINT, and the debug log of a
//! connection. No test binds the default ports: they may be in use.

mod common;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{STEP, Server, connect, read_to_eof};

/// `minetd` with `args`, no `RUST_LOG`, stdin from `/dev/null`, stdout and
/// stderr piped.
fn minetd(args: &[&str]) -> Command {
    let mut command = Command::new(common::server_bin());
    command
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Runs `minetd` with `args` to completion; kills it and fails the test if
/// it is still running after [`STEP`].
fn run(args: &[&str]) -> Output {
    let child = minetd(args).spawn().expect("spawn minetd");
    common::output_within(child, STEP)
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `minetd` with `args` and checks it is a usage error: exit 2,
/// nothing on stdout, and exactly `line` on stderr.
fn assert_usage_error(args: &[&str], line: &str) {
    let output = run(args);
    assert_eq!(
        output.status.code(),
        Some(2),
        "stderr: {}",
        stderr_of(&output)
    );
    assert_eq!(stderr_of(&output), format!("{line}\n"));
    assert!(output.stdout.is_empty(), "stdout: {:?}", output.stdout);
}

/// The message std gives for `EADDRINUSE`, as the server prints it.
fn address_in_use() -> io::Error {
    io::Error::from_raw_os_error(libc::EADDRINUSE)
}

#[test]
fn listening_lines_follow_option_order_with_real_ports() {
    let server = Server::start(&[
        "--daytime",
        "127.0.0.1:0",
        "--echo",
        "127.0.0.1:0",
        "--daytime",
        "127.0.0.1:0",
    ]);
    let services: Vec<&str> = server.listening.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(services, ["daytime", "echo", "daytime"]);
    let mut ports: Vec<u16> = server.listening.iter().map(|(_, a)| a.port()).collect();
    for (_, addr) in &server.listening {
        assert_eq!(addr.ip().to_string(), "127.0.0.1");
        assert_ne!(addr.port(), 0);
    }
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 3, "{:?}", server.listening);
    // Each line names the service really served there.
    for n in 0..2 {
        let mut stream = connect(server.addr_of("daytime", n));
        let line = read_to_eof(&mut stream);
        assert!(line.len() == 26 && line.ends_with(b"\r\n"), "{line:?}");
    }
    let mut stream = connect(server.echo());
    stream.write_all(b"ping").expect("write");
    stream.shutdown(Shutdown::Write).expect("half-close");
    assert_eq!(read_to_eof(&mut stream), b"ping");
}

#[test]
fn bracketed_ipv6_address_is_served() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here; skipped");
        return;
    }
    let server = Server::start(&["--echo", "[::1]:0"]);
    let addr = server.echo();
    assert_eq!(addr.ip().to_string(), "::1");
    let mut stream = connect(addr);
    stream.write_all(b"v6").expect("write");
    stream.shutdown(Shutdown::Write).expect("half-close");
    assert_eq!(read_to_eof(&mut stream), b"v6");
}

#[test]
fn help_names_every_option_and_the_default_ports() {
    let output = run(&["--help"]);
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "--echo",
        "--daytime",
        "--max-connections",
        "--idle-timeout",
        "--max-pending",
        "--max-buffered",
        "--shutdown-grace",
        "--daytime-format",
        "--help",
        "--version",
        "127.0.0.1:7007",
        "127.0.0.1:7013",
    ] {
        assert!(help.contains(needle), "{needle} missing from help:\n{help}");
    }
    assert_eq!(stderr_of(&output), "");
}

#[test]
fn version_prints_name_and_version_and_exits_0() {
    let output = run(&["--version"]);
    assert_eq!(output.status.code(), Some(0));
    let expected = format!("minetd {}\n", env!("CARGO_PKG_VERSION"));
    assert_eq!(String::from_utf8_lossy(&output.stdout), expected);
    assert_eq!(stderr_of(&output), "");
}

#[test]
fn unknown_option_is_a_usage_error() {
    assert_usage_error(&["--bogus"], "minetd: unexpected argument '--bogus' found");
}

#[test]
fn unparsable_address_is_a_usage_error() {
    assert_usage_error(
        &["--echo", "nothost"],
        "minetd: invalid value 'nothost' for '--echo <ADDR>': \
         expected host:port with an IPv4 address or a [bracketed] IPv6 address",
    );
}

#[test]
fn non_numeric_max_connections_is_a_usage_error() {
    assert_usage_error(
        &["--max-connections", "abc"],
        "minetd: invalid value 'abc' for '--max-connections <N>': invalid digit found in string",
    );
}

#[test]
fn zero_max_connections_is_a_usage_error() {
    assert_usage_error(
        &["--max-connections", "0"],
        "minetd: invalid value '0' for '--max-connections <N>': must be at least 1",
    );
}

#[test]
fn max_buffered_below_max_pending_is_a_usage_error_naming_both() {
    assert_usage_error(
        &["--echo", "127.0.0.1:0", "--max-buffered", "65535"],
        "minetd: max-buffered 65535 is below max-pending 65536: it must be at least as large",
    );
    assert_usage_error(
        &[
            "--echo",
            "127.0.0.1:0",
            "--max-pending",
            "4096",
            "--max-buffered",
            "4095",
        ],
        "minetd: max-buffered 4095 is below max-pending 4096: it must be at least as large",
    );
    assert_usage_error(
        &["--max-buffered", "lots"],
        "minetd: invalid value 'lots' for '--max-buffered <BYTES>': invalid digit found in string",
    );
}

#[test]
fn max_buffered_left_unset_grows_with_a_large_max_pending() {
    // 64 MiB per connection is above the 32 MiB default total: unset, the
    // total follows it rather than refusing to start.
    let server = Server::start(&["--echo", "127.0.0.1:0", "--max-pending", "67108864"]);
    let mut stream = connect(server.echo());
    stream.write_all(b"big pending").expect("write");
    stream.shutdown(Shutdown::Write).expect("half-close");
    assert_eq!(read_to_eof(&mut stream), b"big pending");
    let equal = Server::start(&[
        "--echo",
        "127.0.0.1:0",
        "--max-pending",
        "4096",
        "--max-buffered",
        "4096",
    ]);
    let mut stream = connect(equal.echo());
    stream.write_all(b"equal").expect("write");
    stream.shutdown(Shutdown::Write).expect("half-close");
    assert_eq!(read_to_eof(&mut stream), b"equal");
}

#[test]
fn unknown_daytime_format_is_a_usage_error() {
    assert_usage_error(
        &["--daytime-format", "iso"],
        "minetd: invalid value 'iso' for '--daytime-format <FORMAT>': \
         expected ctime, rfc5322 or rfc3339",
    );
}

#[test]
fn occupied_port_exits_1_naming_service_address_and_error() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("occupy a port");
    let addr = taken.local_addr().expect("local addr");
    let output = run(&["--echo", &addr.to_string()]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr_of(&output),
        format!(
            "minetd: cannot listen on {addr} for echo: {}\n",
            address_in_use()
        )
    );
    assert!(output.stdout.is_empty(), "stdout: {:?}", output.stdout);
}

#[test]
fn occupied_port_for_a_later_listener_prints_one_line_and_no_listening() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("occupy a port");
    let addr = taken.local_addr().expect("local addr");
    let output = run(&["--echo", "127.0.0.1:0", "--daytime", &addr.to_string()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty(), "stdout: {:?}", output.stdout);
    assert_eq!(
        stderr_of(&output),
        format!(
            "minetd: cannot listen on {addr} for daytime: {}\n",
            address_in_use()
        )
    );
}

#[test]
fn sigterm_with_no_connections_exits_0() {
    let mut server = Server::start(&["--echo", "127.0.0.1:0"]);
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(STEP).expect("exit after SIGTERM");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sigint_with_no_connections_exits_0() {
    let mut server = Server::start(&["--daytime", "127.0.0.1:0"]);
    server.signal(libc::SIGINT);
    let status = server.wait_exit(STEP).expect("exit after SIGINT");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn debug_log_shows_accept_and_close_with_reason_and_byte_counts() {
    let mut server = Server::start_with(&["--echo", "127.0.0.1:0"], &[("RUST_LOG", "debug")]);
    let lines = server.stderr_lines();
    let mut stream = connect(server.echo());
    let peer: SocketAddr = stream.local_addr().expect("local addr");
    stream.write_all(b"hello").expect("write");
    let mut back = [0; 5];
    stream.read_exact(&mut back).expect("echo");
    stream.shutdown(Shutdown::Write).expect("half-close");
    assert_eq!(read_to_eof(&mut stream), b"");

    let accepted_suffix = format!(" {peer} accepted echo");
    let mut seen = Vec::new();
    let mut label = None;
    let mut closed = None;
    let deadline = Instant::now() + STEP;
    while closed.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = lines.recv_timeout(left.max(Duration::from_millis(1))) else {
            panic!("no accept and close lines for {peer} in {seen:#?}");
        };
        if line.ends_with(&accepted_suffix) {
            assert!(line.contains(" DEBUG "), "{line}");
            let start = line.find("conn ").expect("conn label");
            label = Some(line[start..line.len() - " accepted echo".len()].to_string());
        } else if let Some(label) = &label {
            if line.contains(&format!("{label} closed")) {
                closed = Some(line.clone());
            }
        }
        seen.push(line);
    }
    let label = label.expect("accept line");
    assert!(label.starts_with("conn ") && label.ends_with(&peer.to_string()));
    let closed = closed.expect("close line");
    assert!(closed.contains(" DEBUG "), "{closed}");
    // The kernel's smoothed RTT and retransmissions end the line; loopback
    // measures tens of microseconds and loses nothing.
    let head = format!("{label} closed: peer closed, in 5 out 5, rtt ");
    let at = closed.find(&head).expect("close line") + head.len();
    let (rtt, retrans) = closed[at..]
        .split_once(" ms, retrans ")
        .unwrap_or_else(|| panic!("{closed}"));
    let (whole, hundredths) = rtt.split_once('.').unwrap_or_else(|| panic!("{closed}"));
    assert!(
        whole.parse::<u32>().is_ok_and(|ms| ms < 200)
            && hundredths.len() == 2
            && hundredths.parse::<u32>().is_ok(),
        "{closed}"
    );
    assert_eq!(retrans, "0", "{closed}");
}
