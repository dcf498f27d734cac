//! `minetd-client bench` against servers that misbehave on purpose: every
//! run must end by itself, no later than `--timeout` + 2 s after its
//! measured window closes (the contract's "Every run ends by itself"), with
//! an exit status that matches its counts.
//!
//! Each adversary is a few lines of std::net in a thread; each case is one
//! row of [`CASES`]: a name, the server, the bench arguments, the ramp it
//! may take before the window opens, and what its report must say. The
//! bound is measured from outside the process, spawn to exit, so a run that
//! hangs (as `--rate` against a slow server did, issue #17) fails here.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::report::{at_least, count, counts, sum};
use serde_json::Value;

/// `--duration` and `--timeout` of every case, in seconds: short, so the
/// whole table runs in a few seconds, and equal, so a per-read timeout and
/// the window's end race as they do in real runs.
const DURATION: f64 = 1.0;
const TIMEOUT: f64 = 1.0;

/// The contract's allowance after the window: `--timeout` + 2 s.
const AFTER_WINDOW: f64 = TIMEOUT + 2.0;

/// Process start, the first connect and the report, which the bound does
/// not cover: generous next to their few milliseconds, tiny next to a hang.
const SLACK: f64 = 1.0;

/// How long a stalled adversary holds its connection: longer than any run.
const HOLD: Duration = Duration::from_secs(60);

/// Message size of the echo cases; the adversaries read and echo it whole.
const SIZE: usize = 64;

/// One misbehaviour crossed with one mode.
struct Case {
    name: &'static str,
    server: fn(TcpStream),
    /// Bench arguments besides the address and the common ones.
    args: &'static [&'static str],
    /// Time the ramp may take before the window opens, in seconds: a
    /// confirming echo that never comes costs one `--timeout` per batch.
    ramp: f64,
    /// `--warmup`, in seconds (it comes before the window too).
    warmup: f64,
    /// What the JSON report must say besides the checks every case makes.
    expect: fn(&Value),
}

/// The table. Adding an adversary is adding a row.
const CASES: &[Case] = &[
    Case {
        name: "closed loop, server stalls from the start",
        server: stall,
        args: &[],
        ramp: TIMEOUT,
        warmup: 0.0,
        // The confirming echo never comes: every connection failed to open.
        expect: |r| {
            counts(
                r,
                &[
                    ("connections", 0),
                    ("connect_failures", 4),
                    ("round_trips", 0),
                    ("unanswered", 0),
                ],
            )
        },
    },
    Case {
        name: "closed loop, server stalls after the first echo",
        server: stall_after_first,
        args: &[],
        ramp: 0.0,
        warmup: 0.0,
        expect: |r| {
            counts(
                r,
                &[
                    ("connections", 4),
                    ("round_trips", 0),
                    ("unanswered", 4),
                    ("mismatches", 0),
                ],
            )
        },
    },
    Case {
        name: "closed loop, slow echo",
        server: slow_echo,
        args: &[],
        ramp: 0.0,
        warmup: 0.0,
        expect: |r| {
            counts(r, &[("mismatches", 0), ("errors", 0), ("unanswered", 0)]);
            at_least(r, "round_trips", 100);
            latency_at_least(r, 5_000.0);
        },
    },
    Case {
        name: "closed loop, server resets after three echoes",
        server: echo_three_then_reset,
        args: &[],
        ramp: 0.0,
        warmup: 0.0,
        // Round 0 confirms, rounds 1 and 2 count; round 3 is reset away.
        expect: |r| counts(r, &[("round_trips", 8), ("errors", 4), ("unanswered", 4)]),
    },
    Case {
        name: "closed loop, server trickles a byte per 50 ms",
        server: trickle,
        args: &["--size", "8"],
        ramp: 0.0,
        warmup: 0.0,
        // 8 bytes take 400 ms: only whole, checked echoes count.
        expect: |r| {
            counts(r, &[("mismatches", 0), ("errors", 0)]);
            latency_at_least(r, 350_000.0);
        },
    },
    Case {
        name: "closed loop, server echoes an extra byte",
        server: echo_extra_byte,
        args: &[],
        ramp: 0.0,
        warmup: 0.0,
        expect: |r| at_least(r, "mismatches", 1),
    },
    Case {
        name: "open loop, server stalls after the first echo",
        server: stall_after_first,
        args: &["--rate", "100"],
        ramp: 0.0,
        warmup: 0.0,
        // 100 messages fall due in the second; none comes back.
        expect: |r| {
            counts(
                r,
                &[("round_trips", 0), ("unanswered", 100), ("mismatches", 0)],
            )
        },
    },
    Case {
        name: "open loop, slow echo",
        server: slow_echo,
        args: &["--rate", "100000"],
        ramp: 0.0,
        warmup: 0.0,
        expect: |r| {
            counts(r, &[("mismatches", 0), ("errors", 0)]);
            sum(r, &["round_trips", "unanswered"], 100_000);
            at_least(r, "round_trips", 100);
        },
    },
    Case {
        name: "open loop, server resets after three echoes",
        server: echo_three_then_reset,
        args: &["--rate", "400"],
        ramp: 0.0,
        warmup: 0.0,
        // 400 due; each connection echoes rounds 1 and 2, then resets.
        expect: |r| {
            counts(r, &[("round_trips", 8), ("errors", 4)]);
            sum(r, &["round_trips", "unanswered"], 400);
        },
    },
    Case {
        name: "open loop, server trickles a byte per 50 ms",
        server: trickle,
        args: &["--rate", "1000", "--size", "8"],
        ramp: 0.0,
        warmup: 0.0,
        expect: |r| {
            counts(r, &[("mismatches", 0), ("errors", 0)]);
            sum(r, &["round_trips", "unanswered"], 1000);
        },
    },
    Case {
        name: "pipeline 4, server stalls after the first echo",
        server: stall_after_first,
        args: &["--pipeline", "4"],
        ramp: 0.0,
        warmup: 0.0,
        expect: |r| {
            counts(
                r,
                &[("round_trips", 0), ("unanswered", 16), ("mismatches", 0)],
            )
        },
    },
    Case {
        name: "pipeline 4, slow echo",
        server: slow_echo,
        args: &["--pipeline", "4"],
        ramp: 0.0,
        warmup: 0.0,
        expect: |r| {
            counts(r, &[("mismatches", 0), ("errors", 0), ("unanswered", 0)]);
            at_least(r, "round_trips", 100);
        },
    },
    Case {
        name: "pipeline 4, server resets after three echoes",
        server: echo_three_then_reset,
        args: &["--pipeline", "4"],
        ramp: 0.0,
        warmup: 0.0,
        // Rounds 1 to 4 are in flight; each echo that comes back sends one
        // more, so 4 per connection are lost to the reset, however many
        // echoes it destroyed in the client's receive queue first.
        expect: |r| counts(r, &[("errors", 4), ("unanswered", 16)]),
    },
    Case {
        name: "pipeline 4, server echoes an extra byte",
        server: echo_extra_byte,
        args: &["--pipeline", "4"],
        ramp: 0.0,
        warmup: 0.0,
        expect: |r| at_least(r, "mismatches", 1),
    },
    Case {
        name: "warm-up, server stalls after the first echo",
        server: stall_after_first,
        args: &["--warmup", "1"],
        ramp: 0.0,
        warmup: 1.0,
        // The stall starts in the warm-up, whose messages count nowhere;
        // the first read to wait a whole --timeout there is an error.
        expect: |r| {
            counts(r, &[("round_trips", 0), ("unanswered", 0)]);
            at_least(r, "errors", 1);
        },
    },
    Case {
        name: "warm-up, open loop, slow echo",
        server: slow_echo,
        args: &["--warmup", "1", "--rate", "100000"],
        ramp: 0.0,
        warmup: 1.0,
        expect: |r| {
            counts(r, &[("mismatches", 0), ("errors", 0)]);
            sum(r, &["round_trips", "unanswered"], 100_000);
        },
    },
    Case {
        name: "discard, server never reads",
        server: stall,
        args: &["--mode", "discard", "--size", "65536"],
        ramp: 0.0,
        warmup: 0.0,
        expect: |r| counts(r, &[("mismatches", 0)]),
    },
    Case {
        name: "discard, server sends bytes back",
        server: echo_extra_byte,
        args: &["--mode", "discard"],
        ramp: 0.0,
        warmup: 0.0,
        expect: |r| at_least(r, "mismatches", 1),
    },
    Case {
        name: "chargen, server stalls after 100 bytes",
        server: chargen_stall,
        args: &["--mode", "chargen"],
        ramp: 0.0,
        warmup: 0.0,
        // Round 0 takes 64 bytes; round 1 gets 36 and then nothing. The
        // first connection's read waits out its --timeout, which is about
        // when the window closes, so the others' reads may never begin.
        expect: |r| {
            counts(
                r,
                &[("connections", 4), ("round_trips", 0), ("mismatches", 0)],
            );
            at_least(r, "unanswered", 1);
        },
    },
    Case {
        name: "daytime, server never closes",
        server: daytime_never_closes,
        args: &["--mode", "daytime"],
        ramp: 0.0,
        warmup: 0.0,
        expect: |r| {
            counts(r, &[("round_trips", 0), ("mismatches", 0)]);
            at_least(r, "unanswered", 4);
        },
    },
    Case {
        name: "daytime, server stalls",
        server: stall,
        args: &["--mode", "daytime"],
        ramp: 0.0,
        warmup: 0.0,
        expect: |r| {
            counts(r, &[("round_trips", 0), ("mismatches", 0)]);
            at_least(r, "unanswered", 1);
        },
    },
    Case {
        name: "sweep, each run against a server that stalls after the first echo",
        server: stall_after_first,
        args: &["--sweep", "2,4"],
        ramp: 0.0,
        warmup: 0.0,
        expect: |r| {
            counts(
                r,
                &[
                    ("round_trips", 0),
                    ("mismatches", 0),
                    ("connect_failures", 0),
                ],
            )
        },
    },
    Case {
        name: "daytime, server trickles its line",
        server: daytime_trickle,
        args: &["--mode", "daytime"],
        ramp: 0.0,
        warmup: 0.0,
        expect: |r| {
            counts(r, &[("mismatches", 0), ("errors", 0)]);
            latency_at_least(r, 1_000_000.0);
        },
    },
];

#[test]
fn every_adversary_run_ends_on_time_with_honest_counts() {
    // One thread per case: the bench client is mostly waiting, so the whole
    // table takes about as long as its slowest row.
    let runs: Vec<_> = CASES
        .iter()
        .map(|case| (case.name, thread::spawn(move || run_case(case))))
        .collect();
    common::report_runs(runs);
}

/// The run of issue #17: `--rate` far beyond what a server answering each
/// message 5 ms late can take. It used to send the overdue messages after
/// the window, one per echo, and had not ended after 200 s.
#[test]
fn rate_against_a_slow_server_ends_on_time() {
    let addr = serve(slow_echo);
    let args = [
        "--connections",
        "4",
        "--size",
        "64",
        "--duration",
        "2",
        "--timeout",
        "1",
        "--rate",
        "100000",
        "--json",
    ];
    let (reports, code, elapsed) = bench(addr, &args, 2.0 + AFTER_WINDOW + SLACK);
    let report = &reports[0];
    println!("issue 17 run: {elapsed:.2} s: {report}");
    assert_eq!(code, Some(0), "{report}");
    counts(report, &[("mismatches", 0), ("errors", 0)]);
    // Every message due in the window is answered and checked, or reported
    // unanswered: 100,000 per second for 2 s.
    sum(report, &["round_trips", "unanswered"], 200_000);
    // Four connections answering one message per 5 ms can check at most
    // 4 × 200 per second: the rest was never sent, let alone counted.
    let round_trips = report["round_trips"].as_u64().expect("round_trips");
    assert!((100..=1_700).contains(&round_trips), "{report}");
    latency_at_least(report, 5_000.0);
}

/// Runs `case` and checks it; returns how long after the window it ended.
fn run_case(case: &Case) -> f64 {
    let addr = serve(case.server);
    let (duration, timeout) = (DURATION.to_string(), TIMEOUT.to_string());
    let mut args = vec![
        "--connections",
        "4",
        "--threads",
        "1",
        "--duration",
        &duration,
        "--timeout",
        &timeout,
        "--json",
    ];
    args.extend_from_slice(case.args);
    if !case.args.contains(&"--size") {
        args.extend_from_slice(&["--size", "64"]);
    }
    // A sweep is one whole run per entry, each with its own window.
    let runs = case
        .args
        .iter()
        .position(|arg| *arg == "--sweep")
        .map_or(1, |at| case.args[at + 1].split(',').count());
    let window_end = case.ramp + case.warmup + DURATION;
    let bound = runs as f64 * (window_end + AFTER_WINDOW) + SLACK;
    let (reports, code, elapsed) = bench(addr, &args, bound);
    assert_eq!(reports.len(), runs, "{reports:?}");
    let failed = reports
        .iter()
        .flat_map(|report| {
            ["mismatches", "connect_failures", "errors"].map(|key| count(report, key))
        })
        .sum::<u64>();
    assert_eq!(
        code,
        Some(if failed > 0 { 1 } else { 0 }),
        "exit status does not match the counts: {reports:?}"
    );
    for report in &reports {
        (case.expect)(report);
    }
    // Its last window closed no earlier than this, so what is left is an
    // upper bound on how long the run went on after it (it includes the
    // process's start and the ramp).
    elapsed - runs as f64 * (case.warmup + DURATION)
}

/// Runs the real client against `addr`; fails if it outlives `bound`
/// seconds. Returns the reports (one per line: a sweep prints several),
/// the exit code and the seconds it ran.
fn bench(addr: SocketAddr, args: &[&str], bound: f64) -> (Vec<Value>, Option<i32>, f64) {
    let started = Instant::now();
    let addr = addr.to_string();
    let args: Vec<&str> = ["bench", addr.as_str()]
        .iter()
        .chain(args)
        .copied()
        .collect();
    let child = common::report::client_command(&args)
        .spawn()
        .expect("spawn minetd-client");
    // Killed a little after the bound, so a hang fails the test, not the suite.
    let output = common::output_within(child, Duration::from_secs_f64(bound + 5.0));
    let elapsed = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let reports: Vec<Value> = serde_json::Deserializer::from_slice(&output.stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|err| panic!("stdout is not JSON ({err}); stderr: {stderr}"));
    assert!(
        elapsed <= bound,
        "ran {elapsed:.2} s, over the bound of {bound:.2} s: {reports:?}; stderr: {stderr}"
    );
    (reports, output.status.code(), elapsed)
}

/// Listens on loopback port 0 and hands each connection to `server` on its
/// own thread.
fn serve(server: fn(TcpStream)) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind adversary");
    let addr = listener.local_addr().expect("local addr");
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            // Bounded, so no adversary thread outlives the test binary's use.
            let _ = stream.set_read_timeout(Some(HOLD));
            let _ = stream.set_write_timeout(Some(HOLD));
            thread::spawn(move || server(stream));
        }
    });
    addr
}

/// No counted round trip was faster than the adversary allows.
fn latency_at_least(report: &Value, micros: f64) {
    let p50 = report["latency_us"]["p50"].as_f64().expect("p50");
    assert!(p50 >= micros, "p50 {p50} µs under {micros}: {report}");
}

// The adversaries.

/// Accepts and never reads or writes.
fn stall(stream: TcpStream) {
    thread::sleep(HOLD);
    drop(stream);
}

/// Echoes the first message (the bench's confirming echo), then stalls.
fn stall_after_first(mut stream: TcpStream) {
    let mut message = [0; SIZE];
    if stream.read_exact(&mut message).is_ok() && stream.write_all(&message).is_ok() {
        thread::sleep(HOLD);
    }
}

/// Echoes each message 5 ms after it arrived.
fn slow_echo(mut stream: TcpStream) {
    let mut message = [0; SIZE];
    while stream.read_exact(&mut message).is_ok() {
        thread::sleep(Duration::from_millis(5));
        if stream.write_all(&message).is_err() {
            return;
        }
    }
}

/// Echoes three messages, then resets the connection (SO_LINGER 0) when
/// the fourth arrives: with one message in flight, that proves the third
/// echo was read, which a reset could otherwise destroy in the client's
/// receive queue.
fn echo_three_then_reset(mut stream: TcpStream) {
    let mut message = [0; SIZE];
    for _ in 0..3 {
        if stream.read_exact(&mut message).is_err() || stream.write_all(&message).is_err() {
            return;
        }
    }
    if stream.read_exact(&mut message).is_ok() {
        common::reset(stream);
    }
}

/// Echoes everything, one byte per 50 ms.
fn trickle(mut stream: TcpStream) {
    let mut byte = [0; 1];
    while let Ok(1) = stream.read(&mut byte) {
        thread::sleep(Duration::from_millis(50));
        if stream.write_all(&byte).is_err() {
            return;
        }
    }
}

/// Echoes each 64-byte message with one byte more.
fn echo_extra_byte(mut stream: TcpStream) {
    let mut message = [0; SIZE + 1];
    while stream.read_exact(&mut message[..SIZE]).is_ok() {
        message[SIZE] = b'!';
        if stream.write_all(&message).is_err() {
            return;
        }
    }
}

/// Sends RFC 864's first 100 bytes, then nothing, never closing.
fn chargen_stall(mut stream: TcpStream) {
    if stream.write_all(minetd::chargen::window(0, 100)).is_ok() {
        thread::sleep(HOLD);
    }
}

/// Sends one proper daytime line, then never closes.
fn daytime_never_closes(mut stream: TcpStream) {
    if stream.write_all(b"Mon Dec  7 12:00:00 2026\r\n").is_ok() {
        thread::sleep(HOLD);
    }
}

/// Sends one proper daytime line a byte per 50 ms (1.3 s), then closes.
fn daytime_trickle(mut stream: TcpStream) {
    for byte in b"Mon Dec  7 12:00:00 2026\r\n" {
        thread::sleep(Duration::from_millis(50));
        if stream.write_all(&[*byte]).is_err() {
            return;
        }
    }
}
