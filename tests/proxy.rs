//! `--proxy-protocol`: connections from a trusted balancer begin with a
//! PROXY header (v1 or v2) that names the real client, which the server
//! then serves as the peer; malformed or missing headers close the
//! connection at once with nothing sent; untrusted peers are untouched.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{STEP, Server, connect, read_to_eof};

const TRUST_LOOPBACK: [&str; 2] = ["--proxy-protocol", "127.0.0.1/32"];

/// An echo server that trusts loopback as its balancer and logs at debug,
/// with its log lines.
fn traced_echo_behind_balancer() -> (Server, mpsc::Receiver<String>) {
    let mut server = Server::start_with(
        &[
            "--echo",
            "127.0.0.1:0",
            TRUST_LOOPBACK[0],
            TRUST_LOOPBACK[1],
        ],
        &[("RUST_LOG", "debug")],
    );
    let stderr = server.stderr_lines();
    (server, stderr)
}

fn v1_tcp4(src: &str, sport: u16) -> Vec<u8> {
    format!("PROXY TCP4 {src} 192.0.2.1 {sport} 7\r\n").into_bytes()
}

/// A version 2 PROXY header for a TCP client at `src`.
fn v2(src: SocketAddr) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.push(0x21);
    let mut block = Vec::new();
    match src {
        SocketAddr::V4(v4) => {
            header.push(0x11);
            block.extend_from_slice(&v4.ip().octets());
            block.extend_from_slice(&[192, 0, 2, 1]);
        }
        SocketAddr::V6(v6) => {
            header.push(0x21);
            block.extend_from_slice(&v6.ip().octets());
            block.extend_from_slice(&[0; 16]);
        }
    }
    block.extend_from_slice(&src.port().to_be_bytes());
    block.extend_from_slice(&7u16.to_be_bytes());
    header.extend_from_slice(&(block.len() as u16).to_be_bytes());
    header.extend_from_slice(&block);
    header
}

/// Sends `bytes` in one write, half-closes, returns what came back.
fn send_all_then_read(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = connect(addr);
    stream.write_all(bytes).expect("write");
    stream.shutdown(Shutdown::Write).expect("half-close");
    read_to_eof(&mut stream)
}

/// Sends `header` a byte at a time, then `data`, half-closes, returns
/// what came back.
fn send_bytewise_then_read(addr: SocketAddr, header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut stream = connect(addr);
    stream.set_nodelay(true).expect("nodelay");
    for byte in header {
        stream.write_all(&[*byte]).expect("write a byte");
        thread::sleep(Duration::from_millis(2));
    }
    stream.write_all(data).expect("write data");
    stream.shutdown(Shutdown::Write).expect("half-close");
    read_to_eof(&mut stream)
}

/// Waits for a stderr line containing `needle`.
fn log_line(stderr: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + STEP;
    while let Ok(line) = stderr.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if line.contains(needle) {
            return line;
        }
    }
    panic!("no log line with {needle:?}");
}

/// The local address of a connection, as the server sees its peer.
fn connect_noting_port(addr: SocketAddr) -> (TcpStream, SocketAddr) {
    let stream = connect(addr);
    let local = stream.local_addr().expect("local addr");
    (stream, local)
}

#[test]
fn v1_header_names_the_peer_and_data_in_the_same_segment_is_echoed() {
    let (server, stderr) = traced_echo_behind_balancer();
    let (mut stream, local) = connect_noting_port(server.echo());
    let mut bytes = v1_tcp4("203.0.113.7", 5555);
    bytes.extend_from_slice(b"PROXY TCP4 is data now\0\xff");
    stream.write_all(&bytes).expect("write");
    stream.shutdown(Shutdown::Write).expect("half-close");
    assert_eq!(read_to_eof(&mut stream), b"PROXY TCP4 is data now\0\xff");
    let accepted = log_line(&stderr, "accepted echo");
    assert!(
        accepted.ends_with(&format!(" 203.0.113.7:5555 via {local} accepted echo")),
        "{accepted}"
    );
    let closed = log_line(&stderr, "closed:");
    assert!(
        closed.contains(&format!(
            " 203.0.113.7:5555 via {local} closed: peer closed, in 24 out 24"
        )),
        "{closed}"
    );
}

#[test]
fn v1_tcp6_header_sent_a_byte_at_a_time_is_not_echoed() {
    let server = Server::start(&[
        "--echo",
        "127.0.0.1:0",
        TRUST_LOOPBACK[0],
        TRUST_LOOPBACK[1],
    ]);
    let header = b"PROXY TCP6 2001:db8::7 2001:db8::1 4444 7\r\n";
    assert_eq!(
        send_bytewise_then_read(server.echo(), header, b"after"),
        b"after"
    );
}

#[test]
fn v2_headers_over_tcp4_and_tcp6_whole_or_a_byte_at_a_time() {
    let (server, stderr) = traced_echo_behind_balancer();
    let addr = server.echo();
    let v4 = v2("198.51.100.9:40000".parse().unwrap());
    let mut bytes = v4.clone();
    bytes.extend_from_slice(b"\r\n\r\n\0\r\nQUIT\n data");
    assert_eq!(
        send_all_then_read(addr, &bytes),
        b"\r\n\r\n\0\r\nQUIT\n data"
    );
    log_line(&stderr, " 198.51.100.9:40000 via 127.0.0.1:");
    let v6 = v2("[2001:db8::9]:443".parse().unwrap());
    assert_eq!(send_bytewise_then_read(addr, &v6, b"six"), b"six");
    log_line(&stderr, " [2001:db8::9]:443 via 127.0.0.1:");
    assert_eq!(send_bytewise_then_read(addr, &v4, b"four"), b"four");
}

#[test]
fn unknown_and_local_keep_the_balancer_as_the_peer() {
    let (server, stderr) = traced_echo_behind_balancer();
    let (mut stream, local) = connect_noting_port(server.echo());
    stream.write_all(b"PROXY UNKNOWN\r\nhealth").expect("write");
    stream.shutdown(Shutdown::Write).expect("half-close");
    assert_eq!(read_to_eof(&mut stream), b"health");
    let accepted = log_line(&stderr, "accepted echo");
    assert!(
        accepted.ends_with(&format!(" {local} accepted echo")),
        "{accepted}"
    );
    assert!(!accepted.contains(" via "), "{accepted}");

    let (mut stream, local) = connect_noting_port(server.echo());
    let mut local_cmd = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local_cmd.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    local_cmd.extend_from_slice(b"check");
    stream.write_all(&local_cmd).expect("write");
    stream.shutdown(Shutdown::Write).expect("half-close");
    assert_eq!(read_to_eof(&mut stream), b"check");
    let accepted = log_line(&stderr, "accepted echo");
    assert!(
        accepted.ends_with(&format!(" {local} accepted echo")),
        "{accepted}"
    );
}

#[test]
fn per_source_counts_the_address_the_header_names() {
    let server = Server::start(&[
        "--echo",
        "127.0.0.1:0",
        TRUST_LOOPBACK[0],
        TRUST_LOOPBACK[1],
        "--per-source",
        "1",
    ]);
    let addr = server.echo();
    let mut first = connect(addr);
    first
        .write_all(&v1_tcp4("198.51.100.1", 1000))
        .expect("write");
    first.write_all(b"one").expect("write");
    let mut back = [0; 3];
    first.read_exact(&mut back).expect("first is served");
    assert_eq!(&back, b"one");
    // The same client through the same balancer: its second connection.
    let mut same = v1_tcp4("198.51.100.1", 1001);
    same.extend_from_slice(b"two");
    assert_eq!(
        send_all_then_read(addr, &same),
        b"",
        "refused: EOF, nothing sent"
    );
    // Another client through the same balancer is served.
    let mut other = v1_tcp4("198.51.100.2", 1000);
    other.extend_from_slice(b"three");
    assert_eq!(send_all_then_read(addr, &other), b"three");
}

#[test]
fn allow_judges_the_address_the_header_names_not_the_balancer() {
    let server = Server::start(&[
        "--echo",
        "127.0.0.1:0",
        TRUST_LOOPBACK[0],
        TRUST_LOOPBACK[1],
        "--allow",
        "203.0.113.0/24",
    ]);
    let addr = server.echo();
    let mut inside = v1_tcp4("203.0.113.7", 5555);
    inside.extend_from_slice(b"allowed");
    assert_eq!(send_all_then_read(addr, &inside), b"allowed");
    let mut outside = v1_tcp4("198.51.100.1", 5555);
    outside.extend_from_slice(b"turned away");
    assert_eq!(send_all_then_read(addr, &outside), b"");
}

#[test]
fn malformed_headers_close_at_once_with_nothing_sent_and_others_unharmed() {
    let (server, stderr) = traced_echo_behind_balancer();
    let addr = server.echo();
    let mut healthy = connect(addr);
    healthy.write_all(b"PROXY UNKNOWN\r\n").expect("write");
    let too_long_v1 = format!("PROXY UNKNOWN {}\r\n", "x".repeat(100));
    let mut v2_oversized = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2_oversized.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    let mut v2_short = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2_short.extend_from_slice(&[0x21, 0x21, 0x00, 0x0c]);
    v2_short.extend_from_slice(&[0; 12]);
    let cases: [(&[u8], &str); 6] = [
        (b"GET / HTTP/1.0\r\n\r\n", "not a PROXY header"),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            "malformed PROXY v1 line",
        ),
        (too_long_v1.as_bytes(), "PROXY v1 line over 107 bytes"),
        (&v2_oversized, "PROXY v2 header over 536 bytes"),
        (
            &v2_short,
            "PROXY v2 length too short for its address family",
        ),
        (b"\r\n\r\n\0\r\nQUIX\n", "not a PROXY header"),
    ];
    for (bytes, reason) in cases {
        let started = Instant::now();
        let mut stream = connect(addr);
        // The server may close before all is written: a reset is fine.
        let _ = stream.write_all(bytes);
        let mut back = Vec::new();
        match stream.read_to_end(&mut back) {
            Ok(_) => assert_eq!(back, b"", "{reason}: something was sent"),
            Err(err) => assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{reason}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{reason}: closed only after {:?}",
            started.elapsed()
        );
        log_line(&stderr, &format!("closed: {reason}"));
    }
    healthy.write_all(b"still here").expect("write");
    let mut back = [0; 10];
    healthy.read_exact(&mut back).expect("healthy echo");
    assert_eq!(&back, b"still here");
}

#[test]
fn no_whole_header_within_5_seconds_closes_with_nothing_sent() {
    let (server, stderr) = traced_echo_behind_balancer();
    let started = Instant::now();
    let mut stream = connect(server.echo());
    // A header trickling in keeps no connection past the deadline.
    let mut back = Vec::new();
    for byte in b"PROXY TCP4 " {
        stream.write_all(&[*byte]).expect("write");
        thread::sleep(Duration::from_millis(400));
    }
    stream.read_to_end(&mut back).expect("EOF");
    let waited = started.elapsed();
    assert_eq!(back, b"");
    assert!(
        waited >= Duration::from_millis(4900) && waited < Duration::from_secs(8),
        "closed after {waited:?}"
    );
    log_line(&stderr, "closed: no PROXY header in time");
}

#[test]
fn daytime_answers_only_after_the_header() {
    let server = Server::start(&[
        "--daytime",
        "127.0.0.1:0",
        TRUST_LOOPBACK[0],
        TRUST_LOOPBACK[1],
    ]);
    let mut stream = connect(server.daytime());
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut byte = [0; 1];
    let early = stream.read(&mut byte);
    assert!(
        matches!(&early, Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "sent before the header: {early:?}"
    );
    stream.set_read_timeout(Some(STEP)).expect("timeout");
    stream
        .write_all(&v1_tcp4("203.0.113.7", 5555))
        .expect("write");
    let line = read_to_eof(&mut stream);
    assert!(line.ends_with(b"\r\n") && line.len() == 26, "{line:?}");
}

#[test]
fn an_untrusted_peers_header_is_ordinary_echo_data() {
    let server = Server::start(&["--echo", "127.0.0.1:0", "--proxy-protocol", "10.0.0.0/8"]);
    let header = v1_tcp4("203.0.113.7", 5555);
    assert_eq!(send_all_then_read(server.echo(), &header), header);
}

#[test]
fn bad_proxy_protocol_cidr_is_a_usage_error() {
    let output = std::process::Command::new(common::server_bin())
        .args(["--proxy-protocol", "10.0.0.0/33"])
        .output()
        .expect("run minetd");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("minetd: invalid value '10.0.0.0/33' for '--proxy-protocol <CIDR>'"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// Headers cut short: each is a prefix a balancer could have sent before
/// it died, none of which the parser can reject on its own.
fn cut_short_headers() -> Vec<(&'static str, Vec<u8>)> {
    let whole_v2 = v2("203.0.113.7:5555".parse().expect("addr"));
    vec![
        ("v1 prefix", b"PROX".to_vec()),
        (
            "v1 without its CRLF",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 5555 7".to_vec(),
        ),
        ("v1 without its LF", b"PROXY UNKNOWN\r".to_vec()),
        ("partial v2 signature", b"\r\n\r\n\0\r\n".to_vec()),
        ("v2 without its length", whole_v2[..14].to_vec()),
        (
            "v2 shorter than its length",
            whole_v2[..whole_v2.len() - 3].to_vec(),
        ),
    ]
}

/// Sends a cut-short header, then ends the connection with `end`, and
/// checks that the server closed it at once (not at the 5 s deadline) with
/// `reason`, and that another relayed connection is still served.
fn cut_short_header_closes_at_once(end: fn(TcpStream) -> Vec<u8>, reason: &str) {
    let (server, stderr) = traced_echo_behind_balancer();
    let addr = server.echo();
    let mut healthy = connect(addr);
    healthy.write_all(b"PROXY UNKNOWN\r\n").expect("write");
    for (whole_segment, (name, header)) in [false, true].into_iter().flat_map(|whole| {
        cut_short_headers()
            .into_iter()
            .map(move |case| (whole, case))
    }) {
        let started = Instant::now();
        let (mut stream, local) = connect_noting_port(addr);
        stream.write_all(&header).expect("write the header's start");
        if !whole_segment {
            // Let the server see the partial header on its own first, so the
            // end arrives as a separate event.
            thread::sleep(Duration::from_millis(50));
        }
        let back = end(stream);
        assert_eq!(back, b"", "{name}: something was sent");
        log_line(&stderr, &format!("{local} closed: {reason}"));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{name} (one segment: {whole_segment}): closed only after {:?}",
            started.elapsed()
        );
    }
    healthy.write_all(b"still here").expect("write");
    let mut back = [0; 10];
    healthy.read_exact(&mut back).expect("healthy echo");
    assert_eq!(&back, b"still here");
}

#[test]
fn a_header_cut_short_by_eof_closes_at_once_with_nothing_sent() {
    cut_short_header_closes_at_once(
        |mut stream| {
            stream.shutdown(Shutdown::Write).expect("half-close");
            read_to_eof(&mut stream)
        },
        "closed before a whole PROXY header",
    );
}

#[test]
fn a_header_cut_short_by_a_reset_closes_at_once() {
    cut_short_header_closes_at_once(
        |stream| {
            common::reset(stream);
            Vec::new()
        },
        "reset by peer",
    );
}
