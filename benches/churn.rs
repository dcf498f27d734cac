//! `cargo bench --bench churn`: is `minetd-client bench --mode daytime` an
//! honest count of connections per second? It runs, side by side against
//! one minetd daytime server, the instrument and a plain client written
//! here in a few lines (per connection: connect, read to EOF, close; one
//! thread per concurrent connection), and prints both rates and their ratio.
//!
//! The server is pinned to CPU 0 and both clients to CPU 1 when there are
//! two CPUs. The clients take turns, A B B A ..., so drift on a shared
//! machine falls on both alike; the ratio is the median over the pairs.
//!
//! Settings (environment): `MINETD_CHURN_SECS` (2) seconds per run,
//! `MINETD_CHURN_PAIRS` (3), `MINETD_CHURN_CONNECTIONS` (4) connections in
//! flight in each client.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

#[path = "common.rs"]
mod common;
use common::{json_number, pin_to, setting, start_server};

fn main() -> ExitCode {
    let secs = setting("MINETD_CHURN_SECS", 2.0);
    let pairs = setting("MINETD_CHURN_PAIRS", 3.0) as usize;
    let connections = setting("MINETD_CHURN_CONNECTIONS", 4.0) as usize;
    let two_cpus = thread::available_parallelism().map_or(1, |n| n.get()) >= 2;
    let (mut server, addr) = match start_server("--daytime", two_cpus) {
        Ok(started) => started,
        Err(err) => {
            eprintln!("churn: cannot start minetd: {err}");
            return ExitCode::FAILURE;
        }
    };
    if two_cpus {
        pin_to(1);
    }
    println!(
        "daytime churn against minetd, {connections} connections in flight, {secs} s per run{}",
        if two_cpus {
            ", server on CPU 0, clients on CPU 1"
        } else {
            ""
        }
    );
    let mut ratios = Vec::new();
    for pair in 0..pairs {
        let run_instrument = || instrument(addr, connections, secs);
        let run_plain = || plain(addr, connections, secs);
        // A B, then B A: each client goes first equally often.
        let (bench, own) = if pair % 2 == 0 {
            let bench = run_instrument();
            (bench, run_plain())
        } else {
            let own = run_plain();
            (run_instrument(), own)
        };
        let Some(bench) = bench else {
            let _ = server.kill();
            return ExitCode::FAILURE;
        };
        println!(
            "pair {}: minetd-client {bench:.0}/s, plain client {own:.0}/s, ratio {:.3}",
            pair + 1,
            bench / own
        );
        ratios.push(bench / own);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "median ratio minetd-client / plain: {:.3} (range {:.3} to {:.3})",
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1]
    );
    let _ = server.kill();
    let _ = server.wait();
    ExitCode::SUCCESS
}

/// `minetd-client bench --mode daytime`: its connections per second.
fn instrument(addr: SocketAddr, connections: usize, secs: f64) -> Option<f64> {
    let output = Command::new(env!("CARGO_BIN_EXE_minetd-client"))
        .args(["bench", "--mode", "daytime", "--json", "--threads", "1"])
        .arg(addr.to_string())
        .args(["--connections", &connections.to_string()])
        .args(["--duration", &secs.to_string()])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let rps = json_number(&text, "rps");
    if !output.status.success() || rps.is_none() {
        eprintln!(
            "churn: minetd-client failed: {}{}",
            text,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    rps
}

/// The plain client: one thread per connection, each connecting, reading
/// to EOF and closing in a loop. Its connections per second.
fn plain(addr: SocketAddr, connections: usize, secs: f64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
            thread::spawn(move || {
                let mut reply = Vec::with_capacity(64);
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut stream) = TcpStream::connect(addr) else {
                        continue;
                    };
                    reply.clear();
                    if stream.read_to_end(&mut reply).is_ok() && reply.ends_with(b"\r\n") {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let start = Instant::now();
    thread::sleep(Duration::from_secs_f64(secs));
    let counted = done.load(Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        let _ = thread.join();
    }
    counted as f64 / elapsed
}
