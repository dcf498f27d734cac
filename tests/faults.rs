//! Faults created for real: a descriptor table that runs out, a shutdown
//! while bytes are owed, peers that reset, stall or never read, and churn.
//! In each, the loop must go on and no other peer may lose a byte.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    STEP, Server, connect, connect_from, pseudo_random_bytes, read_to_eof, reset, rss_kib,
    server_bin, wait_until,
};

/// Writes `msg` and reads exactly its echo back.
fn round_trip(stream: &mut TcpStream, msg: &[u8]) {
    stream.write_all(msg).expect("write");
    let mut back = vec![0; msg.len()];
    stream.read_exact(&mut back).expect("read echo");
    assert_eq!(back, msg, "echo differs");
}

/// Starts `minetd` with soft and hard `RLIMIT_NOFILE` set to `limit`, so
/// its start-up raise to the hard limit cannot help it.
fn start_with_descriptor_limit(limit: u64, args: &[&str]) -> Server {
    let mut command = Command::new(server_bin());
    command
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe and touches only this child.
    unsafe {
        command.pre_exec(move || {
            let rlim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rlim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Server::spawn(command, 1)
}

#[test]
fn descriptor_exhaustion_keeps_serving_without_spinning_and_recovers() {
    const LIMIT: u64 = 48;
    let mut server = start_with_descriptor_limit(LIMIT, &["--echo", "127.0.0.1:0"]);
    let errors = server.stderr_lines();
    let addr = server.echo();

    // More clients than descriptors: the kernel completes every handshake,
    // the server can accept only some.
    let mut clients: Vec<TcpStream> = (0..LIMIT as usize + 20).map(|_| connect(addr)).collect();
    assert!(
        wait_until(STEP, || server.fd_count() as u64 >= LIMIT),
        "server never reached its descriptor limit: {} open",
        server.fd_count()
    );
    let warning = errors
        .recv_timeout(STEP)
        .expect("a warning about the limit");
    assert!(warning.contains("accept paused"), "unexpected: {warning}");

    // The accepted ones still echo. Which ones were accepted is up to the
    // kernel's queue order, so find them by a short read timeout.
    let mut served = Vec::new();
    let mut waiting = Vec::new();
    for (i, mut client) in clients.drain(..).enumerate() {
        client.write_all(&[i as u8]).unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut byte = [0];
        match client.read(&mut byte) {
            Ok(1) => {
                assert_eq!(byte[0], i as u8);
                served.push(client);
            }
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                waiting.push(client)
            }
            other => panic!("client {i}: unexpected {other:?}"),
        }
    }
    assert!(
        !served.is_empty() && !waiting.is_empty(),
        "{} served, {} waiting",
        served.len(),
        waiting.len()
    );

    // At the limit with clients queued, the loop must sleep, not retry
    // accept on every turn: a spinning loop would use ~1 s of CPU here.
    let before = server.cpu_time();
    thread::sleep(Duration::from_secs(1));
    let used = server.cpu_time() - before;
    assert!(
        used < Duration::from_millis(300),
        "{used:?} of CPU in 1 s while at the limit"
    );
    for client in &mut served {
        round_trip(client, b"still served");
    }

    // Freeing descriptors lets the queued clients in, each getting the byte
    // it sent while it waited.
    let freed = waiting.len().min(served.len());
    served.truncate(served.len() - freed);
    for client in &mut waiting {
        client.set_read_timeout(Some(STEP)).unwrap();
    }
    for (n, client) in waiting.iter_mut().take(freed).enumerate() {
        let mut byte = [0];
        client
            .read_exact(&mut byte)
            .unwrap_or_else(|err| panic!("queued client {n} never served: {err}"));
        round_trip(client, b"in at last");
    }
}

#[test]
fn sigterm_flushes_every_owed_byte_to_a_slow_reader_then_exits_zero() {
    let server = Server::start(&["--echo", "127.0.0.1:0", "--shutdown-grace", "20"]);
    let mut server = server;
    let payload = pseudo_random_bytes(2 << 20, 7);
    let mut client = connect(server.echo());
    let mut writer = client.try_clone().unwrap();
    let sent = payload.clone();
    let writing = thread::spawn(move || {
        writer.write_all(&sent).expect("write payload");
        writer.shutdown(Shutdown::Write).expect("half-close");
    });
    // Let the server fill up to its pending cap with nobody reading.
    thread::sleep(Duration::from_millis(300));
    server.signal(libc::SIGTERM);

    // Read slowly: the server must keep echoing through the grace period.
    let mut echoed = Vec::new();
    let mut chunk = vec![0; 64 * 1024];
    loop {
        let n = client.read(&mut chunk).expect("read during grace");
        if n == 0 {
            break;
        }
        echoed.extend_from_slice(&chunk[..n]);
        thread::sleep(Duration::from_millis(5));
    }
    writing.join().unwrap();
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload, "echoed bytes differ from the payload");
    let status = server.wait_exit(STEP).expect("server exits");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn second_signal_during_grace_exits_at_once() {
    let mut server = Server::start(&["--echo", "127.0.0.1:0", "--shutdown-grace", "60"]);
    // A peer that writes and never reads leaves the server owing bytes, so
    // the grace period has something to wait for.
    let _stalled = stall_server_on(server.echo());
    server.signal(libc::SIGTERM);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        server.child.try_wait().unwrap(),
        None,
        "exited before grace"
    );
    server.signal(libc::SIGINT);
    let status = server.wait_exit(STEP).expect("second signal ends it");
    assert_eq!(status.code(), Some(128 + libc::SIGINT));
}

#[test]
fn shutdown_stops_accepting_at_once() {
    let mut server = Server::start(&["--echo", "127.0.0.1:0"]);
    let addr = server.echo();
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(STEP).expect("exits");
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        TcpStream::connect(addr).map_err(|err| err.kind()).err(),
        Some(ErrorKind::ConnectionRefused)
    );
}

/// Connects and writes without reading until the server stops taking bytes
/// (its pending cap and both socket buffers full), so that it owes bytes.
fn stall_server_on(addr: SocketAddr) -> TcpStream {
    let mut stream = connect(addr);
    stream.set_nonblocking(true).unwrap();
    let chunk = [0x5a; 65536];
    let started = Instant::now();
    // One WouldBlock may only mean the server has not run yet; many in a
    // row mean it stopped reading.
    let mut blocked_in_a_row = 0;
    while blocked_in_a_row < 10 {
        match stream.write(&chunk) {
            Ok(_) => blocked_in_a_row = 0,
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                blocked_in_a_row += 1;
                thread::sleep(Duration::from_millis(20));
            }
            Err(err) => panic!("stalling writer: {err}"),
        }
        assert!(started.elapsed() < STEP, "server never pushed back");
    }
    stream
}

#[test]
fn peers_resetting_mid_transfer_cost_only_their_own_connection() {
    let server = Server::start(&["--echo", "127.0.0.1:0", "--max-pending", "16384"]);
    let addr = server.echo();
    let baseline_fds = server.fd_count();

    let healthy: Vec<_> = (0..10)
        .map(|n| {
            thread::spawn(move || {
                let mut stream = connect(addr);
                for round in 0..200u64 {
                    round_trip(
                        &mut stream,
                        &pseudo_random_bytes(1000, n * 1000 + round + 1),
                    );
                }
            })
        })
        .collect();
    for n in 0..100 {
        let mut stream = connect(addr);
        stream.set_nonblocking(true).unwrap();
        // Leave the server owing bytes when the reset lands.
        let chunk = pseudo_random_bytes(256 * 1024, 99 + n);
        let _ = stream.write(&chunk);
        reset(stream);
    }
    for worker in healthy {
        worker.join().expect("healthy peer got its bytes");
    }
    assert!(
        wait_until(STEP, || server.fd_count() == baseline_fds),
        "descriptors leaked: {} now, {baseline_fds} before",
        server.fd_count()
    );
}

#[test]
fn hostile_peers_cost_at_most_their_pending_bytes_and_disturb_no_one() {
    const PEERS: usize = 60;
    const MAX_PENDING: usize = 16 * 1024;
    let server = Server::start(&["--echo", "127.0.0.1:0", "--max-pending", "16384"]);
    let addr = server.echo();
    let rss_before = rss_kib(server.pid());

    let mut hostile = Vec::new();
    for n in 0..PEERS {
        let stream = match n % 3 {
            // Writes and never reads, until TCP stops it.
            0 => stall_server_on(addr),
            // Half-closes after writing, and never reads.
            1 => {
                let mut stream = connect(addr);
                stream.write_all(&[0xa5; 8192]).unwrap();
                stream.shutdown(Shutdown::Write).unwrap();
                stream
            }
            // Connects and sends nothing.
            _ => connect(addr),
        };
        hostile.push(stream);
    }
    // Everyone else is served as before.
    let mut healthy = connect(addr);
    for round in 0..50 {
        round_trip(&mut healthy, &pseudo_random_bytes(4096, round + 1));
    }
    let grown = rss_kib(server.pid()).saturating_sub(rss_before);
    // Each peer may hold MAX_PENDING; allow as much again for the allocator
    // and the slab.
    let bound = (2 * PEERS * MAX_PENDING / 1024) as u64 + 1024;
    assert!(
        grown <= bound,
        "RSS grew {grown} KiB with {PEERS} hostile peers (bound {bound})"
    );
}

#[test]
fn churn_of_20000_connections_leaks_no_descriptor_or_memory() {
    let server = Server::start(&["--echo", "127.0.0.1:0"]);
    let port = server.echo().port();
    let baseline_fds = server.fd_count();

    // TIME_WAIT holds each closed client port for a minute: spread the
    // clients over four source addresses (each has about 28,000 ports).
    let churn = |round: u64, count: u64| {
        let workers: Vec<_> = (0..4u64)
            .map(|source| {
                thread::spawn(move || {
                    let bind: SocketAddr = format!("127.0.0.{}:0", 2 + source + 4 * round)
                        .parse()
                        .unwrap();
                    let server: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
                    for n in 0..count / 4 {
                        let mut stream = connect_from(bind, server);
                        let msg = (n as u32).to_be_bytes();
                        stream.write_all(&msg).unwrap();
                        stream.shutdown(Shutdown::Write).unwrap();
                        assert_eq!(read_to_eof(&mut stream), msg);
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("churn worker");
        }
    };
    churn(0, 2_000); // warm the allocator and the slab
    assert!(wait_until(STEP, || server.fd_count() == baseline_fds));
    let rss_warm = rss_kib(server.pid());
    churn(1, 20_000);
    assert!(
        wait_until(STEP, || server.fd_count() == baseline_fds),
        "descriptors leaked: {} now, {baseline_fds} before",
        server.fd_count()
    );
    let rss_after = rss_kib(server.pid());
    assert!(
        rss_after <= rss_warm + 256,
        "RSS grew from {rss_warm} KiB to {rss_after} KiB over 20,000 connections"
    );
}
