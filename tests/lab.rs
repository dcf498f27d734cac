//! Off loopback: minetd over a real link between two hosts the test makes
//! (network namespaces joined by a veth pair, MTU 1500; see
//! `tests/netlab/mod.rs`). TCP there has an MSS of 1,448, segments cross
//! one by one, and the link can be rate-limited (`tbf`) or lossy
//! (nftables), so what loopback hides shows: segmentation, retransmits,
//! a server that outruns its link, a real peer's window against the
//! memory budget. Each test skips, saying why, where namespaces cannot be
//! made.

mod common;
mod netlab;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{STEP, Server, pseudo_random_bytes};
use netlab::{CLIENT_IP, Lab, MSS, SERVER_IP, Shape};

/// What each peer of the echo tests sends: enough for hundreds of
/// segments and several windows.
const MEBIBYTE: usize = 1024 * 1024;

/// Builds the lab or says why not; `None` means skip.
fn lab(shape: Shape) -> Option<Lab> {
    match Lab::new(shape) {
        Ok(lab) => Some(lab),
        Err(reason) => {
            eprintln!("skipped: {reason}");
            None
        }
    }
}

/// Starts minetd on the server host with `args` (addresses on the link),
/// logging at `RUST_LOG=debug` for its close lines.
fn start_server(lab: &Lab, args: &[&str]) -> Server {
    let mut command = Command::new(common::server_bin());
    command
        .args(args)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    lab.place_on_server(&mut command);
    let listeners = args
        .iter()
        .filter(|arg| ["--echo", "--metrics"].contains(arg))
        .count();
    Server::spawn(command, listeners)
}

/// The MSS the kernel uses on `stream`.
fn mss(stream: &TcpStream) -> u32 {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into a correctly sized int on our own socket.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "getsockopt: {}", std::io::Error::last_os_error());
    value as u32
}

/// Connects `count` peers from the client host, with timeouts.
fn connect_peers(lab: &Lab, addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    lab.on_client_host(|| (0..count).map(|_| common::connect(addr)).collect())
}

/// Sends `message` in bursts of seeded random sizes (1 B to 128 KiB, each
/// written whole, with a pause now and then) while another thread reads
/// whatever comes back; then half-closes and reads to EOF. Returns what
/// came back.
fn echo_in_bursts(stream: TcpStream, message: &[u8], seed: u64) -> Vec<u8> {
    let mut reader = stream.try_clone().expect("clone");
    thread::scope(|scope| {
        let back = scope.spawn(move || {
            let mut back = Vec::with_capacity(message.len());
            reader.read_to_end(&mut back).expect("read the echo to EOF");
            back
        });
        let mut writer = stream;
        let mut state = seed | 1;
        let mut sent = 0;
        while sent < message.len() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let burst = (state as usize % (128 * 1024) + 1).min(message.len() - sent);
            writer
                .write_all(&message[sent..sent + burst])
                .expect("write a burst");
            sent += burst;
            if state % 4 == 0 {
                thread::sleep(Duration::from_millis(1));
            }
        }
        writer.shutdown(Shutdown::Write).expect("half-close");
        back.join().expect("reader")
    })
}

/// Each of `peers` peers on the client host sends a MiB of its own seeded
/// random bytes through `addr` and must get every byte back in order.
fn every_byte_back(lab: &Lab, addr: SocketAddr, peers: usize) {
    let streams = connect_peers(lab, addr, peers);
    for stream in &streams {
        // A different host as TCP sees it: Ethernet's segment size, not
        // loopback's 64 KiB.
        assert_eq!(mss(stream), MSS, "not a real link");
    }
    thread::scope(|scope| {
        let runs: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(n, stream)| {
                scope.spawn(move || {
                    let seed = 0x1ab + n as u64;
                    let message = pseudo_random_bytes(MEBIBYTE, seed);
                    let back = echo_in_bursts(stream, &message, seed);
                    assert_eq!(back.len(), message.len(), "peer {n}: length");
                    // Not assert_eq!: a MiB of bytes in a message helps no one.
                    let first = back.iter().zip(&message).position(|(a, b)| a != b);
                    assert_eq!(first, None, "peer {n}: first differing byte");
                })
            })
            .collect();
        for run in runs {
            run.join().expect("peer");
        }
    });
}

/// What a TCP close line says: bytes in and out, the kernel's smoothed
/// round-trip time and retransmitted segments.
#[derive(Debug)]
struct Closed {
    line: String,
    bytes_in: u64,
    bytes_out: u64,
    rtt_ms: f64,
    retrans: u64,
}

/// Parses `conn N PEER closed: REASON, in A out B, rtt R ms, retrans N`
/// from anywhere in a log line, for peers on the client host.
fn parse_closed(line: &str) -> Option<Closed> {
    let at = line.find("conn ")?;
    let text = &line[at..];
    if !text.contains(&format!(" {CLIENT_IP}:")) || !text.contains(" closed: ") {
        return None;
    }
    let field = |after: &str, until: &str| -> Option<&str> {
        let start = text.find(after)? + after.len();
        let rest = &text[start..];
        Some(&rest[..rest.find(until).unwrap_or(rest.len())])
    };
    Some(Closed {
        line: text.to_string(),
        bytes_in: field(", in ", " ")?.parse().ok()?,
        bytes_out: field(" out ", ",")?.parse().ok()?,
        rtt_ms: field(", rtt ", " ms")?.parse().ok()?,
        retrans: field(", retrans ", " ")?.trim().parse().ok()?,
    })
}

/// Collects `count` close lines of client-host peers from `stderr`.
fn close_lines(stderr: &mpsc::Receiver<String>, count: usize) -> Vec<Closed> {
    let deadline = Instant::now() + STEP;
    let mut closed = Vec::new();
    while closed.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match stderr.recv_timeout(left) {
            Ok(line) => closed.extend(parse_closed(&line)),
            Err(_) => panic!("{} close lines of {count}: {closed:#?}", closed.len()),
        }
    }
    closed
}

#[test]
fn a_mebibyte_from_each_peer_comes_back_whole_over_a_real_link() {
    let Some(lab) = lab(Shape::default()) else {
        return;
    };
    let mut server = start_server(&lab, &["--echo", &format!("{SERVER_IP}:0")]);
    let stderr = server.stderr_lines();
    let peers = 4;
    every_byte_back(&lab, server.echo(), peers);
    for closed in close_lines(&stderr, peers) {
        println!("{}", closed.line);
        assert!(closed.line.contains("closed: peer closed"), "{closed:?}");
        assert_eq!((closed.bytes_in, closed.bytes_out), (1 << 20, 1 << 20));
        // The kernel measured a real path: some time, under a second.
        assert!(closed.rtt_ms < 1000.0, "{closed:?}");
    }
}

#[test]
fn with_random_loss_every_byte_still_comes_back_and_retransmits_show() {
    let Some(lab) = lab(Shape {
        loss_to_client_percent: Some(2),
        ..Shape::default()
    }) else {
        return;
    };
    let mut server = start_server(&lab, &["--echo", &format!("{SERVER_IP}:0")]);
    let stderr = server.stderr_lines();
    let peers = 3;
    every_byte_back(&lab, server.echo(), peers);
    let closed = close_lines(&stderr, peers);
    for c in &closed {
        println!("{}", c.line);
        assert_eq!((c.bytes_in, c.bytes_out), (1 << 20, 1 << 20), "{c:?}");
    }
    // Some 725 of the server's data segments went to each peer: 2% of
    // them is about 15 dropped per peer. The rule's counter proves the
    // loss was real (a retransmission alone would not: Linux's tail-loss
    // probes count as retransmissions, and a loaded machine fires some on
    // a lossless link), and the server's own count must show it.
    let dropped = lab.dropped_to_client();
    let retrans: u64 = closed.iter().map(|c| c.retrans).sum();
    println!("{dropped} data segments dropped, {retrans} retransmitted");
    assert!(
        dropped > 0,
        "nothing was dropped: the loss rule did not work"
    );
    assert!(
        retrans > 0,
        "no retransmits after {dropped} drops: {closed:#?}"
    );
}

/// A number from the bench's `--json` object.
fn json_number(json: &str, key: &str) -> f64 {
    let needle = format!("\"{key}\":");
    let start = json
        .find(&needle)
        .unwrap_or_else(|| panic!("{key} in {json}"))
        + needle.len();
    let rest = json[start..].trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == 'e'))
        .unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|_| panic!("{key} in {json}"))
}

#[test]
fn bench_across_a_100_mbit_link_ends_on_time_checked_and_under_the_rate() {
    let mbit = 100;
    let Some(lab) = lab(Shape {
        rate_mbit: Some(mbit),
        ..Shape::default()
    }) else {
        return;
    };
    let mut server = start_server(&lab, &["--echo", &format!("{SERVER_IP}:0")]);
    let _log = server.stderr_lines();
    let (duration, timeout) = (3, 5);
    let mut bench = Command::new(common::client_bin());
    bench
        .args(["bench", &server.echo().to_string(), "--json"])
        .args(["--connections", "16", "--size", "16384", "--threads", "2"])
        .args(["--duration", &duration.to_string()])
        .args(["--timeout", &timeout.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    lab.place_on_client(&mut bench);
    let started = Instant::now();
    let output = common::output_within(bench.spawn().expect("spawn bench"), 3 * STEP);
    let took = started.elapsed();
    let json = String::from_utf8_lossy(&output.stdout);
    println!("{json}");
    assert!(
        output.status.success(),
        "bench failed: {json}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for key in ["mismatches", "connect_failures", "errors"] {
        assert_eq!(json_number(&json, key), 0.0, "{key}: {json}");
    }
    // The window, plus the connects, plus the bound every run keeps.
    assert!(
        took < Duration::from_secs(duration + timeout + 2),
        "bench took {took:?}"
    );
    // The link's rate holds what crosses it (payload is under the rate:
    // 1,448 of every 1,514 bytes on the wire), and it was the limit: the
    // shaper had to hold packets back, and the run still moved a good
    // part of the link's rate (unshaped, it moves several times as much).
    let link_mbps = f64::from(mbit) / 8.0;
    let mbps = json_number(&json, "mbps");
    let overlimits = lab.shaper_overlimits();
    println!("{mbps} MB/s through a {link_mbps} MB/s link; tbf overlimits {overlimits}");
    assert!(
        mbps < link_mbps,
        "{mbps} MB/s through a {link_mbps} MB/s link"
    );
    assert!(overlimits > 0, "the shaper never held a packet back");
    assert!(
        mbps > link_mbps / 4.0,
        "{mbps} MB/s: something other than the link limited the run"
    );
}

/// The value of an unlabelled family in a Prometheus text exposition.
fn metric(exposition: &str, family: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let value = line.strip_prefix(family)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// `GET /metrics` over HTTP/1.0 from `stream`, the body's text.
fn scrape(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    assert!(response.starts_with("HTTP/1."), "{response}");
    response
}

/// The budget a server may hold for all its connections in the test
/// below: a few dozen non-readers' worth at the default `--max-pending`.
const BUDGET: u64 = 1024 * 1024;

/// Opens `count` peers that write up to `each` bytes and never read, from
/// the client host, plain sockets: the real MSS and windows of a remote
/// peer, nothing faked. Returns once the server stopped taking their bytes.
fn non_readers(lab: &Lab, addr: SocketAddr, count: usize, each: usize) -> Vec<TcpStream> {
    let mut peers: Vec<(TcpStream, usize)> = connect_peers(lab, addr, count)
        .into_iter()
        .map(|stream| {
            stream.set_nonblocking(true).expect("nonblocking");
            (stream, 0)
        })
        .collect();
    let chunk = vec![0xa5; 64 * 1024];
    let started = Instant::now();
    let mut idle_passes = 0;
    while idle_passes < 10 && peers.iter().any(|(_, written)| *written < each) {
        let mut progress = false;
        for (stream, written) in &mut peers {
            while *written < each {
                match stream.write(&chunk[..chunk.len().min(each - *written)]) {
                    Ok(n) => {
                        *written += n;
                        progress = true;
                    }
                    Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                    Err(err) => panic!("non-reader: {err}"),
                }
            }
        }
        idle_passes = if progress { 0 } else { idle_passes + 1 };
        thread::sleep(Duration::from_millis(20));
        assert!(started.elapsed() < 3 * STEP, "the server never pushed back");
    }
    peers.into_iter().map(|(stream, _)| stream).collect()
}

#[test]
fn non_readers_on_another_host_stay_within_the_budget_while_a_reader_is_served() {
    let Some(lab) = lab(Shape::default()) else {
        return;
    };
    let budget = BUDGET.to_string();
    let mut server = start_server(
        &lab,
        &[
            "--echo",
            &format!("{SERVER_IP}:0"),
            "--metrics",
            &format!("{SERVER_IP}:0"),
            "--max-buffered",
            &budget,
        ],
    );
    let (echo, metrics) = (server.echo(), server.addr_of("metrics", 0));
    let stderr = server.stderr_lines();
    // Watch the budget from the client host the whole time, every 10 ms.
    let done = AtomicBool::new(false);
    let (most, scrapes) = thread::scope(|scope| {
        let watch = scope.spawn(|| {
            lab.on_client_host(|| {
                let (mut most, mut scrapes) = (0.0f64, 0);
                while !done.load(Ordering::Relaxed) {
                    let text = scrape(&mut common::connect(metrics));
                    let buffered = metric(&text, "minetd_buffered_bytes").expect("buffered");
                    assert_eq!(
                        metric(&text, "minetd_max_buffered_bytes"),
                        Some(BUDGET as f64)
                    );
                    assert!(buffered <= BUDGET as f64, "{buffered} bytes held");
                    most = most.max(buffered);
                    scrapes += 1;
                    thread::sleep(Duration::from_millis(10));
                }
                (most, scrapes)
            })
        });
        // 64 peers that could each be owed 64 KiB: four times the budget.
        let hostile = non_readers(&lab, echo, 64, 2 * MEBIBYTE);
        let mut healthy = connect_peers(&lab, echo, 1).remove(0);
        for round in 0..1_000u64 {
            let message = pseudo_random_bytes(512, round + 1);
            healthy.write_all(&message).expect("write");
            let mut back = vec![0; message.len()];
            healthy.read_exact(&mut back).expect("read the echo");
            assert_eq!(back, message, "round trip {round}");
        }
        thread::sleep(Duration::from_millis(50));
        done.store(true, Ordering::Relaxed);
        let figures = watch.join().expect("watcher");
        drop(hostile);
        figures
    });
    println!("most buffered {most} of {BUDGET} bytes over {scrapes} scrapes");
    // The peers filled the budget, or this proved nothing.
    assert!(most > BUDGET as f64 / 2.0, "most buffered {most}");
    let warned = stderr
        .try_iter()
        .any(|line| line.contains("memory budget full"));
    assert!(warned, "the budget never held a read back");
}
