//! The soak: for a while, everything at once against one server with a
//! small memory budget — healthy echo peers checking every byte, peers that
//! write and never read, slow readers, peers that reset mid-transfer, and
//! connection churn from several 127.0.0.x sources. It prints bytes lost,
//! mismatches, peak RSS, descriptors at the end and the healthy peers'
//! round trips per second and latency, and fails on any loss, mismatch or
//! leaked descriptor.
//!
//! Bounded and loopback only; it stops by itself. Not part of `cargo
//! test`; run it by hand (`MINETD_SOAK_SECS`, default 60):
//!
//! ```sh
//! MINETD_SOAK_SECS=600 cargo test --release --test soak -- --ignored --nocapture
//! ```

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    STEP, Server, connect, connect_as_remote_peer, connect_from, flood_with_non_readers,
    pseudo_random_bytes, raise_descriptor_limit, reset, rss_kib, wait_until,
};
use hdrhistogram::Histogram;

/// The budget under soak: small enough that the non-readers hold all of it
/// all the time. `MINETD_SOAK_MAX_BUFFERED` overrides it, for a run to
/// compare against.
const MAX_BUFFERED: &str = "4194304";
const HEALTHY_PEERS: u64 = 8;
const HEALTHY_MESSAGE: usize = 512;
const NON_READERS: usize = 400;
const SLOW_READERS: u64 = 16;
const SLOW_TRANSFER: usize = 1 << 20;
const RESETTERS: u64 = 4;
const CHURNERS: u64 = 4;
/// Sources for churn: more than one address, so TIME_WAIT spreads out.
const CHURN_SOURCES: [[u8; 4]; 4] = [
    [127, 0, 0, 11],
    [127, 0, 0, 12],
    [127, 0, 0, 13],
    [127, 0, 0, 14],
];
/// Pause between one churner's connections: at most 4 × 200 per second
/// in all, well within the ~1,800 a second that 4 sources' ephemeral
/// ports allow with TIME_WAIT holding each for 60 s.
const CHURN_PAUSE: Duration = Duration::from_millis(5);

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    received: AtomicU64,
    mismatches: AtomicU64,
    transfers: AtomicU64,
    resets: AtomicU64,
    churned: AtomicU64,
    errors: AtomicU64,
}

impl Tally {
    /// Counts one exchange's bytes each way, and a mismatch if what came
    /// back is not what was sent.
    fn exchanged(&self, sent: &[u8], back: &[u8]) {
        self.sent.fetch_add(sent.len() as u64, Ordering::Relaxed);
        self.received
            .fetch_add(back.len() as u64, Ordering::Relaxed);
        if back != sent {
            self.mismatches.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One healthy peer: checked round trips until `stop`, latency recorded.
fn healthy(addr: SocketAddr, seed: u64, stop: &AtomicBool, tally: &Tally) -> Histogram<u64> {
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut stream = connect(addr);
    let mut back = vec![0; HEALTHY_MESSAGE];
    let mut round = 0;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let message = pseudo_random_bytes(HEALTHY_MESSAGE, seed << 32 | round);
        let started = Instant::now();
        if stream.write_all(&message).is_err() || stream.read_exact(&mut back).is_err() {
            tally.errors.fetch_add(1, Ordering::Relaxed);
            return latency;
        }
        let micros = started.elapsed().as_micros() as u64;
        let _ = latency.record(micros.max(1));
        tally.exchanged(&message, &back);
    }
    latency
}

/// One slow reader: 1 MiB out, read back 4 KiB a millisecond, checked;
/// again on a new connection until `stop`.
fn slow_reader(addr: SocketAddr, seed: u64, stop: &AtomicBool, tally: &Tally) {
    let mut transfer = 0;
    while !stop.load(Ordering::Relaxed) {
        transfer += 1;
        let data = pseudo_random_bytes(SLOW_TRANSFER, seed << 32 | transfer);
        let mut stream = connect_as_remote_peer(addr);
        let _ = stream.set_read_timeout(Some(STEP));
        let _ = stream.set_write_timeout(Some(STEP));
        let Ok(mut writer) = stream.try_clone() else {
            tally.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let sent = data.clone();
        let writing = thread::spawn(move || {
            let ok = sent.chunks(16 * 1024).all(|c| writer.write_all(c).is_ok());
            ok && writer.shutdown(Shutdown::Write).is_ok()
        });
        let mut back = Vec::with_capacity(SLOW_TRANSFER);
        let mut buf = [0; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => back.extend_from_slice(&buf[..n]),
                Err(_) => {
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
            thread::sleep(Duration::from_millis(1));
        }
        if !writing.join().unwrap_or(false) {
            tally.errors.fetch_add(1, Ordering::Relaxed);
        }
        tally.sent.fetch_add(data.len() as u64, Ordering::Relaxed);
        tally
            .received
            .fetch_add(back.len() as u64, Ordering::Relaxed);
        if back != data[..back.len().min(data.len())] {
            tally.mismatches.fetch_add(1, Ordering::Relaxed);
        }
        tally.transfers.fetch_add(1, Ordering::Relaxed);
    }
}

/// One resetter: writes a few hundred KiB, reads a little, resets.
fn resetter(addr: SocketAddr, seed: u64, stop: &AtomicBool, tally: &Tally) {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let mut stream = connect(addr);
        let _ = stream.set_nonblocking(true);
        let data = pseudo_random_bytes(256 * 1024, seed << 32 | n);
        let mut written = 0;
        let started = Instant::now();
        while written < data.len() && started.elapsed() < Duration::from_millis(50) {
            match stream.write(&data[written..]) {
                Ok(k) => written += k,
                Err(err) if err.kind() == ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(1));
                }
                Err(_) => break,
            }
        }
        let mut buf = [0; 1024];
        let _ = stream.read(&mut buf);
        reset(stream);
        tally.resets.fetch_add(1, Ordering::Relaxed);
        thread::sleep(Duration::from_millis(5));
    }
}

/// One churner: connect from one of several sources, echo 64 bytes with a
/// half-close, check, close; again.
fn churner(addr: SocketAddr, index: u64, stop: &AtomicBool, tally: &Tally) {
    let source = SocketAddr::from((CHURN_SOURCES[index as usize % CHURN_SOURCES.len()], 0));
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let message = pseudo_random_bytes(64, index << 32 | n);
        let mut stream = connect_from(source, addr);
        let mut back = Vec::new();
        let ok = stream.write_all(&message).is_ok()
            && stream.shutdown(Shutdown::Write).is_ok()
            && stream.read_to_end(&mut back).is_ok();
        if !ok {
            tally.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        tally.exchanged(&message, &back);
        tally.churned.fetch_add(1, Ordering::Relaxed);
        thread::sleep(CHURN_PAUSE);
    }
}

#[test]
#[ignore]
fn soak_everything_at_once_loses_nothing() {
    let secs: u64 = std::env::var("MINETD_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let max_buffered =
        std::env::var("MINETD_SOAK_MAX_BUFFERED").unwrap_or_else(|_| MAX_BUFFERED.into());
    raise_descriptor_limit();
    let mut server = Server::start_with(
        &[
            "--echo",
            "127.0.0.1:0",
            "--max-buffered",
            &max_buffered,
            "--max-connections",
            "20000",
        ],
        &[("RUST_LOG", "warn")],
    );
    // Read stderr all along: a full pipe would block the server's thread
    // on its once-a-second budget warning and freeze it.
    let stderr = server.stderr_lines();
    let warnings = thread::spawn(move || {
        stderr
            .iter()
            .filter(|line| line.contains("memory budget full"))
            .count()
    });
    let addr = server.echo();
    let pid = server.pid();
    let idle_rss = rss_kib(pid);
    let baseline_fds = server.fd_count();
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());

    let mut hostile = flood_with_non_readers(addr, NON_READERS);
    let spawn = |f: fn(SocketAddr, u64, &AtomicBool, &Tally), n: u64| {
        let (stop, tally) = (Arc::clone(&stop), Arc::clone(&tally));
        thread::spawn(move || f(addr, n, &stop, &tally))
    };
    let mut workers = Vec::new();
    for n in 0..SLOW_READERS {
        workers.push(spawn(slow_reader, 100 + n));
    }
    for n in 0..RESETTERS {
        workers.push(spawn(resetter, 200 + n));
    }
    for n in 0..CHURNERS {
        workers.push(spawn(churner, n));
    }
    let healthy_peers: Vec<_> = (0..HEALTHY_PEERS)
        .map(|n| {
            let (stop, tally) = (Arc::clone(&stop), Arc::clone(&tally));
            thread::spawn(move || healthy(addr, 300 + n, &stop, &tally))
        })
        .collect();

    let started = Instant::now();
    let mut peak_rss = idle_rss;
    let mut next_swap = Duration::from_secs(30);
    while started.elapsed() < Duration::from_secs(secs) {
        thread::sleep(Duration::from_millis(100));
        peak_rss = peak_rss.max(rss_kib(pid));
        // Non-readers come and go too: a quarter replaced every 30 s.
        if started.elapsed() >= next_swap {
            next_swap += Duration::from_secs(30);
            hostile.drain(..NON_READERS / 4);
            hostile.extend(flood_with_non_readers(addr, NON_READERS / 4));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    for peer in healthy_peers {
        latency
            .add(peer.join().expect("healthy peer"))
            .expect("merge");
    }
    for worker in workers {
        worker.join().expect("worker");
    }
    drop(hostile);
    let fds_back = wait_until(STEP, || server.fd_count() == baseline_fds);
    let end_rss = rss_kib(pid);
    let fds_end = server.fd_count();
    drop(server);
    let budget_warnings = warnings.join().expect("stderr reader");

    let t = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let lost = t(&tally.sent).saturating_sub(t(&tally.received));
    let round_trips = latency.len();
    println!(
        "soak: {:.0} s, --max-buffered {max_buffered}",
        elapsed.as_secs_f64()
    );
    println!(
        "  peers: {HEALTHY_PEERS} healthy, {NON_READERS} non-readers, {SLOW_READERS} slow readers, \
         {RESETTERS} resetters, {CHURNERS} churners from {} sources",
        CHURN_SOURCES.len()
    );
    println!(
        "  bytes lost {lost}, mismatches {}, errors {}",
        t(&tally.mismatches),
        t(&tally.errors)
    );
    println!(
        "  slow transfers {}, resets {}, churned connections {}",
        t(&tally.transfers),
        t(&tally.resets),
        t(&tally.churned)
    );
    println!(
        "  RSS idle {idle_rss} KiB, peak {peak_rss} KiB (+{} KiB), end {end_rss} KiB",
        peak_rss - idle_rss
    );
    println!("  descriptors: baseline {baseline_fds}, end {fds_end}");
    println!("  budget-full warnings logged: {budget_warnings} (at most one a second)");
    println!(
        "  healthy: {round_trips} round trips, {:.0}/s, p50 {} us, p99 {} us, max {} us",
        round_trips as f64 / elapsed.as_secs_f64(),
        latency.value_at_quantile(0.50),
        latency.value_at_quantile(0.99),
        latency.max()
    );
    assert_eq!(lost, 0, "bytes lost");
    assert_eq!(t(&tally.mismatches), 0, "mismatches");
    assert_eq!(t(&tally.errors), 0, "errors");
    assert!(fds_back, "descriptors not back to baseline");
    assert!(round_trips > 0, "the healthy peers got nothing done");
}
