//! `minetd-client bench` at small scale: against the real `minetd` for the
//! report's shape, and against tiny servers in the test that corrupt,
//! refuse or watch connections, for what the benchmark must catch.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::Output;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

use common::report::{at_least, counts, report_of, sum};
use common::{STEP, Server};

/// Runs `minetd-client bench ARGS`, failing the test if it outlives `limit`.
fn bench(args: &[&str], limit: Duration) -> Output {
    let args: Vec<&str> = ["bench"].iter().chain(args).copied().collect();
    common::report::client(&args, limit)
}

/// A threaded echo server on loopback port 0 whose connections are handed
/// to `serve` (with the order they were accepted in).
fn test_server(serve: fn(TcpStream, usize)) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind test server");
    let addr = listener.local_addr().expect("local addr");
    thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { continue };
            stream.set_read_timeout(Some(STEP)).expect("read timeout");
            stream.set_write_timeout(Some(STEP)).expect("write timeout");
            thread::spawn(move || serve(stream, n));
        }
    });
    addr
}

/// Echoes everything, but flips one bit of byte 150 on the first connection.
fn corrupting_echo(mut stream: TcpStream, n: usize) {
    const CORRUPT_AT: usize = 150;
    let mut chunk = [0; 4096];
    let mut offset = 0;
    loop {
        let Ok(len @ 1..) = stream.read(&mut chunk) else {
            return;
        };
        let range = offset..offset + len;
        if n == 0 && range.contains(&CORRUPT_AT) {
            chunk[CORRUPT_AT - offset] ^= 0x01;
        }
        offset += len;
        if stream.write_all(&chunk[..len]).is_err() {
            return;
        }
    }
}

#[test]
fn json_report_has_every_key_and_counts_round_trips() {
    let server = Server::start(&["--echo", "127.0.0.1:0"]);
    let addr = server.echo().to_string();
    let args = [
        &addr,
        "--connections",
        "20",
        "--size",
        "100",
        "--duration",
        "0.5",
        "--threads",
        "2",
        "--json",
    ];
    let output = bench(&args, STEP * 2);
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = report_of(&output);
    let keys: BTreeSet<&str> = report
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    let expected = [
        "connections",
        "size",
        "duration_s",
        "round_trips",
        "rps",
        "mbps",
        "latency_us",
        "mismatches",
        "connect_failures",
        "errors",
        "unanswered",
        "mode",
        "histogram",
    ];
    assert_eq!(keys, expected.into_iter().collect());
    assert_eq!(report["mode"], "echo");
    let latency = report["latency_us"].as_object().expect("latency object");
    let latency_keys: BTreeSet<&str> = latency.keys().map(String::as_str).collect();
    assert_eq!(
        latency_keys,
        ["p50", "p90", "p99", "p999", "max"].into_iter().collect()
    );
    assert_eq!(report["connections"], 20);
    assert_eq!(report["size"], 100);
    assert!(report["round_trips"].as_u64().expect("round_trips") > 0);
    assert!(report["duration_s"].as_f64().expect("duration_s") >= 0.5);
    assert!(report["rps"].as_f64().expect("rps") > 0.0);
    assert!(report["mbps"].as_f64().expect("mbps") > 0.0);
    let p50 = latency["p50"].as_f64().expect("p50");
    let max = latency["max"].as_f64().expect("max");
    assert!(0.0 < p50 && p50 <= max, "p50 {p50} max {max}");
    assert_eq!(report["mismatches"], 0);
    assert_eq!(report["connect_failures"], 0);
    assert_eq!(report["errors"], 0);
    // A healthy server answers every message before the run ends.
    assert_eq!(report["unanswered"], 0);
}

#[test]
fn text_report_names_every_figure() {
    let server = Server::start(&["--echo", "127.0.0.1:0"]);
    let addr = server.echo().to_string();
    let output = bench(
        &[&addr, "--connections", "4", "--duration", "0.2"],
        STEP * 2,
    );
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    for figure in [
        "4 connections",
        "round trips",
        "per second",
        "MB/s each way",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "max",
        "closed loop",
        "mismatches",
        "connect failures",
        "errors",
        "unanswered",
    ] {
        assert!(text.contains(figure), "{figure:?} missing from:\n{text}");
    }
}

#[test]
fn corrupted_byte_is_a_mismatch_and_exit_1() {
    let addr = test_server(corrupting_echo).to_string();
    let args = [
        &addr,
        "--connections",
        "3",
        "--size",
        "64",
        "--duration",
        "0.3",
        "--threads",
        "1",
        "--json",
    ];
    let output = bench(&args, STEP * 2);
    assert_eq!(output.status.code(), Some(1));
    let report = report_of(&output);
    assert_eq!(report["mismatches"], 1);
    assert_eq!(report["errors"], 0);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("minetd-client: bench: 1 mismatch, 0 connect failures, 0 errors;"),
        "{stderr}"
    );
    assert!(
        stderr.contains("first mismatch: conn 0 round 2: byte 22 of 64"),
        "{stderr}"
    );
}

#[test]
fn connections_closed_before_their_first_echo_are_connect_failures() {
    // What a server at its --max-connections does: accept, then close.
    let addr = test_server(|stream, _| drop(stream)).to_string();
    let args = [
        &addr,
        "--connections",
        "5",
        "--duration",
        "0.2",
        "--threads",
        "1",
        "--json",
    ];
    let output = bench(&args, STEP * 2);
    assert_eq!(output.status.code(), Some(1));
    let report = report_of(&output);
    assert_eq!(report["connect_failures"], 5);
    assert_eq!(report["connections"], 0);
    assert_eq!(report["errors"], 0);
    assert_eq!(report["round_trips"], 0);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("; first connect failure: conn "),
        "{stderr}"
    );
}

#[test]
fn server_closing_mid_run_counts_errors() {
    // Echoes the first message (the client's confirmation), then closes.
    let addr = test_server(|mut stream, _| {
        let mut first = [0; 64];
        if stream.read_exact(&mut first).is_ok() {
            let _ = stream.write_all(&first);
        }
    })
    .to_string();
    let args = [
        &addr,
        "--connections",
        "3",
        "--size",
        "64",
        "--duration",
        "0.2",
        "--json",
    ];
    let output = bench(&args, STEP * 2);
    assert_eq!(output.status.code(), Some(1));
    let report = report_of(&output);
    assert_eq!(report["connections"], 3);
    assert_eq!(report["connect_failures"], 0);
    assert_eq!(report["errors"], 3);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("; first error: conn "), "{stderr}");
}

#[test]
fn nobody_listening_is_cannot_connect() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let output = bench(&[&addr.to_string(), "--duration", "0.2"], STEP);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        format!("minetd-client: cannot connect to {addr}: Connection refused (os error 111)\n")
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn source_addrs_are_used_round_robin() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (peers_tx, peers_rx) = mpsc::channel();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = peers_tx.send(stream.peer_addr().map(|peer| peer.ip()));
            thread::spawn(move || {
                let mut chunk = [0; 4096];
                while let Ok(len @ 1..) = stream.read(&mut chunk) {
                    if stream.write_all(&chunk[..len]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let args = [
        &addr.to_string(),
        "--connections",
        "4",
        "--duration",
        "0.2",
        "--source-addrs",
        "127.0.0.2,127.0.0.3",
    ];
    let output = bench(&args, STEP * 2);
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let peers: Vec<IpAddr> = (0..4)
        .map(|_| {
            peers_rx
                .recv_timeout(STEP)
                .expect("connection")
                .expect("peer addr")
        })
        .collect();
    let two = peers
        .iter()
        .filter(|ip| ip.to_string() == "127.0.0.2")
        .count();
    let three = peers
        .iter()
        .filter(|ip| ip.to_string() == "127.0.0.3")
        .count();
    assert_eq!((two, three), (2, 2), "{peers:?}");
}

#[test]
fn size_beyond_the_limit_is_a_usage_error() {
    let output = bench(&["--size", "65537"], STEP);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("65537"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// The scale the benchmark is for: 10,000 connections held against a local
/// minetd (each process needs 10,000 descriptors; the client raises its
/// own soft limit). About two seconds of ramp and run.
#[test]
fn holds_ten_thousand_connections() {
    let server = Server::start(&["--echo", "127.0.0.1:0", "--max-connections", "10000"]);
    let addr = server.echo().to_string();
    let args = [
        &addr,
        "--connections",
        "10000",
        "--size",
        "64",
        "--duration",
        "2",
        "--json",
    ];
    let output = bench(&args, STEP * 6);
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = report_of(&output);
    assert_eq!(report["connections"], 10_000);
    assert!(report["round_trips"].as_u64().expect("round_trips") >= 10_000);
    assert_eq!(report["mismatches"], 0);
    assert_eq!(report["errors"], 0);
}

/// Connections of the held-echo tests, all on one client thread.
const HOLDING_CONNECTIONS: u64 = 8;

/// An echo server on loopback port 0 that holds one echo for a second
/// once (as a lost segment waits for TCP to resend it): the message
/// `HELD_MESSAGE` of the connection accepted `HELD`th (the first message is
/// the ramp's confirmation). What it returns gives, once the hold is over,
/// how many echoes it wrote to the other connections meanwhile.
fn holding_server() -> (String, mpsc::Receiver<u64>) {
    const HELD: usize = 3;
    const HELD_MESSAGE: u64 = 3;
    const HOLD: Duration = Duration::from_secs(1);
    let (during_hold, held) = mpsc::channel();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind test server");
    let addr = listener.local_addr().expect("local addr").to_string();
    thread::spawn(move || {
        let others = Arc::new(AtomicU64::new(0));
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            stream.set_read_timeout(Some(STEP)).expect("read timeout");
            stream.set_write_timeout(Some(STEP)).expect("write timeout");
            let others = Arc::clone(&others);
            let during_hold = during_hold.clone();
            thread::spawn(move || {
                let mut message = [0; 64];
                let mut messages = 0;
                while stream.read_exact(&mut message).is_ok() {
                    messages += 1;
                    if n == HELD && messages == HELD_MESSAGE {
                        let before = others.load(Ordering::SeqCst);
                        thread::sleep(HOLD);
                        let _ = during_hold.send(others.load(Ordering::SeqCst) - before);
                    }
                    if stream.write_all(&message).is_err() {
                        return;
                    }
                    if n != HELD {
                        others.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    (addr, held)
}

/// Runs the bench with `extra` arguments against [`holding_server`] and
/// checks that the other connections went on while the echo was held.
/// With one message in flight per connection (the default `--pipeline`),
/// a connection sends its next message only once it has read its echo,
/// so what the server echoes to them during the hold is what the client
/// read meanwhile: a thread blocked on the held echo reads nothing, and
/// each other connection gets at most the one message it already had in
/// flight echoed.
///
/// `due`: for the open loop, how many messages its schedule has fall due
/// in the window. Each is then a round trip or unanswered: one that falls
/// due at the window's very end while its connection's one message is
/// still out is never sent, which a busy machine makes happen now and
/// then. The closed loop's messages are all answered.
fn held_echo_holds_up_no_other_connection(extra: &[&str], due: Option<u64>) {
    let (addr, held) = holding_server();
    let connections = HOLDING_CONNECTIONS.to_string();
    let mut args = vec![
        addr.as_str(),
        "--connections",
        &connections,
        "--threads",
        "1",
        "--size",
        "64",
        "--duration",
        "2",
        "--timeout",
        "5",
        "--json",
    ];
    args.extend_from_slice(extra);
    let output = bench(&args, STEP * 2);
    let report = report_of(&output);
    assert!(output.status.success(), "{report}");
    counts(
        &report,
        &[
            ("connections", HOLDING_CONNECTIONS),
            ("mismatches", 0),
            ("errors", 0),
        ],
    );
    match due {
        Some(due) => sum(&report, &["round_trips", "unanswered"], due),
        None => counts(&report, &[("unanswered", 0)]),
    }
    let others = held.recv_timeout(STEP).expect("the echo was held");
    // Blocked: at most one each. Independently: hundreds each even on a
    // loaded machine; ten each is the margin.
    assert!(
        others >= 10 * (HOLDING_CONNECTIONS - 1),
        "the other connections made {others} round trips while one echo was held: {report}"
    );
    at_least(&report, "round_trips", others);
    println!("{others} round trips on the other connections while one echo was held");
}

/// One connection's echo held up must not hold up the others: while the
/// server sits on one message for a second, the thread's other connections
/// go on making round trips. Read strictly in turn, a thread blocked on the
/// held echo sends nothing.
#[test]
fn a_held_echo_does_not_hold_up_the_other_connections() {
    held_echo_holds_up_no_other_connection(&[], None);
}

/// The open loop's twin: 250 messages a second per connection, so about
/// 1,750 echoes to the others during the hold. A receiver that reads echoes
/// in the order they were sent waits on the held one and reads nothing
/// else meanwhile; the schedule's messages pile up unsent behind the full
/// pipelines and each then counts the whole wait in its latency.
#[test]
fn a_held_echo_does_not_hold_up_the_other_connections_open_loop() {
    // 2,000 a second for 2 seconds.
    held_echo_holds_up_no_other_connection(&["--rate", "2000"], Some(4_000));
}
