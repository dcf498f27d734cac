//! The total memory bound (`--max-buffered`) against peers that write and
//! never read, with real sockets: the server's resident memory stays
//! within the budget's reach, a peer that reads its echo keeps being
//! served meanwhile, and peers that read slowly get every byte back.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    STEP, Server, connect, connect_as_remote_peer, flood_with_non_readers, pseudo_random_bytes,
    raise_descriptor_limit, reset, rss_kib, wait_until,
};

/// Writes `msg` and reads exactly its echo back.
fn round_trip(stream: &mut TcpStream, msg: &[u8]) {
    stream.write_all(msg).expect("write");
    let mut back = vec![0; msg.len()];
    stream.read_exact(&mut back).expect("read echo");
    assert_eq!(back, msg, "echo differs");
}

/// Whether a warning that the budget held reads back reaches stderr.
fn budget_warning_seen(stderr: &mpsc::Receiver<String>) -> bool {
    let deadline = Instant::now() + STEP;
    while let Ok(line) = stderr.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if line.contains("memory budget full") {
            return true;
        }
    }
    false
}

/// Runs the hostile case: `peers` non-readers, then a healthy peer's 1,000
/// checked 512-byte round trips; returns the server's RSS growth in KiB
/// and the peers, still open.
fn hostile_case(server: &mut Server, peers: usize) -> (u64, Vec<TcpStream>) {
    let addr = server.echo();
    let idle = rss_kib(server.pid());
    let hostile = flood_with_non_readers(addr, peers);
    let mut healthy = connect(addr);
    for round in 0..1_000 {
        round_trip(&mut healthy, &pseudo_random_bytes(512, round + 1));
    }
    let grown = rss_kib(server.pid()).saturating_sub(idle);
    (grown, hostile)
}

#[test]
fn a_thousand_non_readers_stay_within_the_budget_while_a_reader_is_served() {
    raise_descriptor_limit();
    let mut server = Server::start_with(
        &["--echo", "127.0.0.1:0", "--max-buffered", "8388608"],
        &[("RUST_LOG", "warn")],
    );
    let stderr = server.stderr_lines();
    let (grown, _hostile) = hostile_case(&mut server, 1_000);
    println!("RSS grew {grown} KiB with 1,000 non-readers and --max-buffered 8 MiB");
    assert!(
        budget_warning_seen(&stderr),
        "the hostile peers never filled the budget: the test proves nothing"
    );
    // Without the budget this is ~64 MiB: 1,000 peers owed 64 KiB each.
    assert!(
        grown < 12 * 1024,
        "RSS grew {grown} KiB with 1,000 non-readers and --max-buffered 8 MiB"
    );
}

#[test]
fn after_the_non_readers_close_a_mebibyte_echoes_whole_and_descriptors_return() {
    raise_descriptor_limit();
    let mut server = Server::start(&["--echo", "127.0.0.1:0", "--max-buffered", "8388608"]);
    let baseline_fds = server.fd_count();
    let (_, hostile) = hostile_case(&mut server, 1_000);
    drop(hostile);
    assert!(
        wait_until(STEP, || server.fd_count() == baseline_fds),
        "descriptors: {} now, {baseline_fds} before the peers",
        server.fd_count()
    );
    let message = pseudo_random_bytes(1 << 20, 0x1_0000);
    let mut stream = connect(server.echo());
    let mut writer = stream.try_clone().expect("clone");
    let sent = message.clone();
    let writing = thread::spawn(move || writer.write_all(&sent).expect("write 1 MiB"));
    let mut back = vec![0; message.len()];
    stream.read_exact(&mut back).expect("read 1 MiB back");
    writing.join().expect("writer");
    assert!(back == message, "the mebibyte came back changed");
}

#[test]
fn fifty_slow_readers_get_every_byte_back_in_order_under_a_small_budget() {
    const PEERS: u64 = 50;
    const EACH: usize = 1 << 20;
    let mut server = Server::start_with(
        &["--echo", "127.0.0.1:0", "--max-buffered", "262144"],
        &[("RUST_LOG", "warn")],
    );
    let stderr = server.stderr_lines();
    let addr = server.echo();
    let peers: Vec<_> = (0..PEERS)
        .map(|peer| {
            thread::spawn(move || {
                let data = pseudo_random_bytes(EACH, 0xfeed + peer);
                let mut stream = connect_as_remote_peer(addr);
                stream.set_read_timeout(Some(STEP)).expect("timeout");
                stream.set_write_timeout(Some(STEP)).expect("timeout");
                let mut writer = stream.try_clone().expect("clone");
                let sent = data.clone();
                let writing = thread::spawn(move || {
                    for chunk in sent.chunks(16 * 1024) {
                        writer.write_all(chunk).expect("write");
                    }
                });
                // Slowly: 4 KiB a millisecond at most, so the server has to
                // hold bytes back and the budget runs out.
                let mut back = Vec::with_capacity(EACH);
                let mut buf = [0; 4096];
                while back.len() < EACH {
                    let n = stream.read(&mut buf).expect("read echo");
                    assert!(n > 0, "EOF after {} bytes", back.len());
                    back.extend_from_slice(&buf[..n]);
                    thread::sleep(Duration::from_millis(1));
                }
                writing.join().expect("writer");
                (peer, back == data)
            })
        })
        .collect();
    for peer in peers {
        let (peer, intact) = peer.join().expect("peer thread");
        assert!(intact, "peer {peer} got different bytes back");
    }
    assert!(
        budget_warning_seen(&stderr),
        "the budget was never full: the test proves nothing"
    );
}

/// How long a writer sees no progress before it counts the server as no
/// longer reading it: long enough for a loaded two-core machine to have
/// run the server many times over.
const STALLED: Duration = Duration::from_millis(500);

/// Writes `data[*sent..]` without blocking until the server stops taking
/// it for [`STALLED`]; `*sent` counts what the socket took.
fn write_until_stalled(stream: &TcpStream, data: &[u8], sent: &mut usize) {
    let mut stream = stream;
    stream.set_nonblocking(true).expect("nonblocking");
    let mut last_progress = Instant::now();
    while last_progress.elapsed() < STALLED {
        assert!(*sent < data.len(), "the server never pushed back");
        match stream.write(&data[*sent..]) {
            Ok(n) => {
                *sent += n;
                last_progress = Instant::now();
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(err) => panic!("write: {err}"),
        }
    }
    stream.set_nonblocking(false).expect("blocking");
}

/// Issue #17: a peer that writes a burst before it reads, held back
/// because another peer holds the whole budget, reads again once that
/// peer lets go, though it has read nothing itself: it stopped "until the
/// total falls", not until it reads.
#[test]
fn a_peer_held_back_by_the_budget_resumes_when_the_holder_resets() {
    const LIMIT: usize = 4 << 20;
    let limit = LIMIT.to_string();
    let mut server = Server::start_with(
        &[
            "--echo",
            "127.0.0.1:0",
            "--max-pending",
            &limit,
            "--max-buffered",
            &limit,
        ],
        &[("RUST_LOG", "warn")],
    );
    let stderr = server.stderr_lines();
    let addr = server.echo();
    // Enough for the server's limit and every kernel buffer on the way.
    let data_a = pseudo_random_bytes(32 << 20, 0xa);
    let data_b = pseudo_random_bytes(32 << 20, 0xb);

    let holder = connect_as_remote_peer(addr);
    let mut sent_a = 0;
    write_until_stalled(&holder, &data_a, &mut sent_a);
    assert!(sent_a > LIMIT / 2, "A got only {sent_a} bytes in");

    let mut held = connect_as_remote_peer(addr);
    held.set_read_timeout(Some(STEP)).expect("timeout");
    held.set_write_timeout(Some(STEP)).expect("timeout");
    let mut sent_b = 0;
    write_until_stalled(&held, &data_b, &mut sent_b);
    assert!(
        budget_warning_seen(&stderr),
        "B was never held back by the budget: the test proves nothing"
    );

    reset(holder);
    let before = sent_b;
    // The budget now covers B's whole --max-pending, but not all of it is
    // new bytes from B: what already sat in the kernel's buffers when A
    // reset is read first, and how much that is varies with the kernel's
    // window (CI once saw 3,662,872 bytes pushed, 7 KB short of 7/8 of the
    // limit). Half the limit still tells a woken B from a stranded one,
    // which pushes nothing at all (or one read a STEP, if woken only by
    // a timer). A machine busy enough may pause the server longer than
    // one stall: keep writing until B is through, or for STEP, which a
    // stranded B never gets past.
    let wanted = LIMIT / 2;
    let deadline = Instant::now() + STEP;
    while sent_b - before < wanted && Instant::now() < deadline {
        write_until_stalled(&held, &data_b, &mut sent_b);
    }
    let more = sent_b - before;
    assert!(
        more >= wanted,
        "after A reset, B (still not reading) pushed only {more} more bytes \
         (before: {before}); the budget left it stranded"
    );

    held.shutdown(Shutdown::Write).expect("half-close");
    let mut back = Vec::with_capacity(sent_b);
    held.read_to_end(&mut back).expect("read the echo to EOF");
    assert_eq!(
        back.len(),
        sent_b,
        "B sent {sent_b} bytes, got {} back",
        back.len()
    );
    assert!(
        back == data_b[..sent_b],
        "B's echo came back changed or reordered"
    );
}

/// The contract's second figure: 10,000 non-readers on the defaults grow
/// the server by under 48 MiB. Heavy (10,000 sockets here and in the
/// server, about a gigabyte of kernel buffers), so run by hand:
/// `cargo test --release --test memory -- --ignored --nocapture`.
/// `MINETD_MEMORY_PEERS` and `MINETD_MEMORY_MAX_BUFFERED` change the case
/// and only print its figure, e.g. `MINETD_MEMORY_MAX_BUFFERED=1000000000`
/// for a server whose budget is out of reach (as before it had one).
#[test]
#[ignore]
fn ten_thousand_non_readers_on_the_defaults_grow_rss_under_48_mib() {
    let peers: Option<usize> = std::env::var("MINETD_MEMORY_PEERS")
        .ok()
        .map(|s| s.parse().expect("MINETD_MEMORY_PEERS"));
    let max_buffered = std::env::var("MINETD_MEMORY_MAX_BUFFERED").ok();
    let figure_only = peers.is_some() || max_buffered.is_some();
    let peers = peers.unwrap_or(10_000);
    raise_descriptor_limit();
    let mut args = vec!["--echo", "127.0.0.1:0", "--max-connections", "20000"];
    if let Some(max_buffered) = &max_buffered {
        args.extend(["--max-buffered", max_buffered]);
    }
    let mut server = Server::start(&args);
    let (grown, _hostile) = hostile_case(&mut server, peers);
    eprintln!(
        "RSS growth with {peers} non-readers, --max-buffered {}: {grown} KiB",
        max_buffered.as_deref().unwrap_or("default")
    );
    if !figure_only {
        assert!(grown < 48 * 1024, "RSS grew {grown} KiB");
    }
}
