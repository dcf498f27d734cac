//! discard, chargen and time over TCP; every UDP service and its refusals;
//! `--allow`, `--per-source` and `--stats-interval`, seen from real sockets.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{STEP, Server, connect, pseudo_random_bytes, read_to_eof, server_bin, wait_until};
use minetd::chargen;

/// Seconds since 1900 now, as RFC 868 counts them (mod 2^32).
fn rfc868_now() -> u32 {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    (unix + 2_208_988_800) as u32
}

fn udp_client(local: &str) -> UdpSocket {
    let socket = UdpSocket::bind(local).expect("bind UDP client");
    socket.set_read_timeout(Some(STEP)).unwrap();
    socket
}

/// Sends `request` and returns the one datagram that comes back.
fn udp_ask(socket: &UdpSocket, to: SocketAddr, request: &[u8]) -> Vec<u8> {
    socket.send_to(request, to).expect("send datagram");
    let mut buf = [0; 65536];
    let (len, from) = socket.recv_from(&mut buf).expect("an answer");
    assert_eq!(from, to, "answer from elsewhere");
    buf[..len].to_vec()
}

/// Asserts that no datagram arrives within `wait`.
fn assert_silent(socket: &UdpSocket, wait: Duration) {
    socket.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0; 1024];
    match socket.recv_from(&mut buf) {
        Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("expected no answer, got {other:?}"),
    }
    socket.set_read_timeout(Some(STEP)).unwrap();
}

#[test]
fn discard_reads_everything_and_never_writes() {
    let server = Server::start(&["--discard", "127.0.0.1:0"]);
    let mut stream = connect(server.addr_of("discard", 0));
    // More than the socket buffers hold: only a reader lets this finish.
    let payload = pseudo_random_bytes(8 << 20, 3);
    stream.write_all(&payload).expect("discard took every byte");
    stream.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_eof(&mut stream), b"", "discard wrote something");
}

#[test]
fn chargen_sends_the_rotating_lines_and_wraps_after_95() {
    let server = Server::start(&["--chargen", "127.0.0.1:0"]);
    let mut stream = connect(server.addr_of("chargen", 0));
    // Two full cycles and a bit, so the wrap from line 95 to line 1 shows.
    let mut received = vec![0; 2 * chargen::CYCLE + 1000];
    stream.read_exact(&mut received).expect("chargen bytes");
    let first_line: Vec<u8> = (b' '..=b'g').chain(*b"\r\n").collect();
    assert_eq!(&received[..74], &first_line[..]);
    assert_eq!(&received[74..77], b"!\"#");
    let line_95 = &received[94 * 74..95 * 74];
    assert_eq!(&line_95[..3], b"~ !", "line 95 starts at '~' and wraps");
    assert_eq!(
        &received[95 * 74..96 * 74],
        &first_line[..],
        "cycle restarts"
    );
    for (n, byte) in received.iter().enumerate() {
        assert_eq!(*byte, chargen::window(n, 1)[0], "byte {n}");
    }
}

#[test]
fn chargen_stops_cleanly_when_the_peer_closes() {
    let mut server = Server::start_with(&["--chargen", "127.0.0.1:0"], &[("RUST_LOG", "debug")]);
    let logs = server.stderr_lines();
    let mut stream = connect(server.addr_of("chargen", 0));
    let mut some = [0; 1000];
    stream.read_exact(&mut some).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let closed = logs
        .iter()
        .find(|line| line.contains(" closed: "))
        .expect("a close line");
    assert!(closed.contains("closed: peer closed"), "{closed}");
    // The loop goes on: a new client is served.
    let mut again = connect(server.addr_of("chargen", 0));
    again.read_exact(&mut some).unwrap();
    assert_eq!(&some[..3], b" !\"");
}

#[test]
fn time_sends_four_bytes_of_seconds_since_1900_then_closes() {
    let server = Server::start(&["--time", "127.0.0.1:0"]);
    let before = rfc868_now();
    let mut stream = connect(server.addr_of("time", 0));
    let answer = read_to_eof(&mut stream);
    let after = rfc868_now();
    assert_eq!(answer.len(), 4, "{answer:?}");
    let value = u32::from_be_bytes(answer.try_into().unwrap());
    assert!(
        before.wrapping_sub(1) <= value && value <= after.wrapping_add(1),
        "{value} not within a second of [{before}, {after}]"
    );
}

#[test]
fn udp_services_answer_one_datagram_with_one_datagram() {
    let server = Server::start(&[
        "--udp-echo",
        "127.0.0.1:0",
        "--udp-discard",
        "127.0.0.1:0",
        "--udp-daytime",
        "127.0.0.1:0",
        "--udp-chargen",
        "127.0.0.1:0",
        "--udp-time",
        "127.0.0.1:0",
    ]);
    let client = udp_client("127.0.0.1:0");

    let request = pseudo_random_bytes(1400, 5);
    assert_eq!(
        udp_ask(&client, server.addr_of("udp-echo", 0), &request),
        request
    );
    assert_eq!(
        udp_ask(&client, server.addr_of("udp-echo", 0), b"a\0b"),
        b"a\0b"
    );

    let line = udp_ask(&client, server.addr_of("udp-daytime", 0), b"?");
    let text = String::from_utf8(line).unwrap();
    assert!(text.ends_with("\r\n") && text.len() == 26, "{text:?}");

    let before = rfc868_now();
    let time = udp_ask(&client, server.addr_of("udp-time", 0), b"");
    let value = u32::from_be_bytes(time.try_into().expect("four bytes"));
    assert!(value.wrapping_sub(before) <= 2, "{value} vs {before}");

    let mut lengths = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let reply = udp_ask(&client, server.addr_of("udp-chargen", 0), b"");
        assert!(reply.len() <= 512, "{} bytes", reply.len());
        // Each reply starts at the beginning of some line of the pattern.
        let start = (0..chargen::LINES)
            .map(|line| line * chargen::LINE_LEN)
            .find(|&at| chargen::window(at, reply.len()) == &reply[..]);
        assert!(start.is_some(), "reply is not the pattern: {reply:?}");
        lengths.insert(reply.len());
    }
    assert!(
        lengths.len() > 10,
        "chargen lengths do not vary: {lengths:?}"
    );

    client
        .send_to(b"into the void", server.addr_of("udp-discard", 0))
        .unwrap();
    assert_silent(&client, Duration::from_millis(300));
}

#[test]
fn udp_never_answers_the_ports_of_other_small_services() {
    let server = Server::start(&["--udp-echo", "127.0.0.1:0"]);
    let echo = server.addr_of("udp-echo", 0);
    // A datagram forged to come from another echo service would start a
    // loop between the two. Binding port 7 needs privileges.
    let from_echo_port = match UdpSocket::bind("127.0.0.3:7") {
        Ok(socket) => socket,
        Err(err) if err.kind() == ErrorKind::PermissionDenied => {
            eprintln!("cannot bind port 7 without privileges; only the control runs");
            let control = udp_client("127.0.0.3:0");
            assert_eq!(udp_ask(&control, echo, b"x"), b"x");
            return;
        }
        Err(err) => panic!("bind 127.0.0.3:7: {err}"),
    };
    from_echo_port.send_to(b"loop?", echo).unwrap();
    assert_silent(&from_echo_port, Duration::from_millis(300));
    // The same bytes from an ordinary port are answered.
    let control = udp_client("127.0.0.3:0");
    assert_eq!(udp_ask(&control, echo, b"loop?"), b"loop?");
}

#[test]
fn udp_on_a_public_address_is_refused_without_allow() {
    let output = Command::new(server_bin())
        .args(["--udp-echo", "0.0.0.0:0"])
        .stdin(Stdio::null())
        .output()
        .expect("run minetd");
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(output.stdout, b"");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(
            "minetd: refusing to serve udp-echo on non-loopback address 0.0.0.0:0 without --allow"
        ),
        "{stderr}"
    );
}

#[test]
fn udp_on_a_public_address_is_served_with_allow_and_drops_others() {
    let server = Server::start(&["--udp-echo", "0.0.0.0:0", "--allow", "127.0.0.5/32"]);
    let port = server.addr_of("udp-echo", 0).port();
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let allowed = udp_client("127.0.0.5:0");
    assert_eq!(udp_ask(&allowed, to, b"ok"), b"ok");
    let other = udp_client("127.0.0.6:0");
    other.send_to(b"ok", to).unwrap();
    assert_silent(&other, Duration::from_millis(300));
}

#[test]
fn allow_closes_connections_from_outside_at_once() {
    let server = Server::start(&["--echo", "127.0.0.1:0", "--allow", "127.0.0.7/32"]);
    let echo = server.echo();
    let mut outsider = connect(echo);
    let mut buf = [0; 16];
    assert_eq!(outsider.read(&mut buf).expect("EOF, not a reset"), 0);
    let mut insider = connect_from("127.0.0.7", echo);
    insider.write_all(b"inside").unwrap();
    insider.read_exact(&mut buf[..6]).unwrap();
    assert_eq!(&buf[..6], b"inside");
}

#[test]
fn per_source_limits_connections_from_one_address_only() {
    let server = Server::start(&["--echo", "127.0.0.1:0", "--per-source", "2"]);
    let echo = server.echo();
    let mut first = connect_from("127.0.0.8", echo);
    let _second = connect_from("127.0.0.8", echo);
    let mut third = connect_from("127.0.0.8", echo);
    let mut buf = [0; 4];
    assert_eq!(
        third.read(&mut buf).expect("EOF"),
        0,
        "third from one address"
    );
    // Another address is counted on its own.
    let mut elsewhere = connect_from("127.0.0.9", echo);
    elsewhere.write_all(b"else").unwrap();
    elsewhere.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"else");
    // Closing one frees a place for that address.
    first.write_all(b"bye!").unwrap();
    first.read_exact(&mut buf).unwrap();
    drop(first);
    let mut again = None;
    assert!(
        wait_until(STEP, || {
            let mut stream = connect_from("127.0.0.8", echo);
            stream.write_all(b"back").unwrap();
            match stream.read(&mut buf) {
                Ok(4) => {
                    again = Some(stream);
                    true
                }
                _ => false,
            }
        }),
        "no place freed after a close"
    );
    assert_eq!(&buf, b"back");
}

#[test]
fn stats_line_counts_what_happened() {
    let mut server = Server::start(&[
        "--echo",
        "127.0.0.1:0",
        "--time",
        "127.0.0.1:0",
        "--max-connections",
        "2",
        "--stats-interval",
        "1",
    ]);
    let logs = server.stderr_lines();
    let mut open = connect(server.echo());
    open.write_all(b"12345").unwrap();
    let mut buf = [0; 5];
    open.read_exact(&mut buf).unwrap();
    let mut time = connect(server.addr_of("time", 0));
    assert_eq!(read_to_eof(&mut time).len(), 4);
    drop(time);
    // Wait until the time connection is gone, then fill to the limit and
    // go over it once.
    thread::sleep(Duration::from_millis(300));
    let _second = connect(server.echo());
    let mut refused = connect(server.echo());
    assert_eq!(refused.read(&mut buf).unwrap(), 0);
    let expected = "stats: echo open 2 accepted 2 refused 1 in 5 out 5; \
                    time open 0 accepted 1 refused 0 in 0 out 4";
    let deadline = std::time::Instant::now() + STEP;
    let mut seen = Vec::new();
    while std::time::Instant::now() < deadline {
        let Ok(line) = logs.recv_timeout(STEP) else {
            break;
        };
        if line.ends_with(expected) {
            assert!(line.contains(" INFO "), "{line}");
            return;
        }
        seen.push(line);
    }
    panic!("no line ending {expected:?} in {seen:#?}");
}

/// Connects from a chosen loopback address, with the usual timeouts.
fn connect_from(local_ip: &str, to: SocketAddr) -> TcpStream {
    common::connect_from(format!("{local_ip}:0").parse().unwrap(), to)
}
