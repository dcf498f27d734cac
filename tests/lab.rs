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

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{STEP, Server, pseudo_random_bytes, report};
use netlab::{CLIENT_IP, HalfClose, Lab, MSS, SERVER_IP, Shape, echo_in_bursts, every_echo_exact};
use serde_json::Value;

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
        .filter(|arg| ["--echo", "--daytime", "--metrics"].contains(arg))
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

/// Each of `peers` peers on the client host sends a MiB of its own seeded
/// random bytes through `addr` and must get every byte back in order.
fn every_byte_back(lab: &Lab, addr: SocketAddr, peers: usize) {
    let streams = connect_peers(lab, addr, peers);
    for stream in &streams {
        // A different host as TCP sees it: Ethernet's segment size, not
        // loopback's 64 KiB.
        assert_eq!(mss(stream), MSS, "not a real link");
    }
    every_echo_exact(streams, MEBIBYTE, 0x1ab, HalfClose::AfterSending);
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
    let (dropped, resent) = (lab.dropped_to_client(), lab.server_retransmitted_segments());
    let retrans: u64 = closed.iter().map(|c| c.retrans).sum();
    println!(
        "{dropped} data segments dropped, {retrans} retransmitted before the close lines, {resent} in all"
    );
    assert!(
        dropped > 0,
        "nothing was dropped: the loss rule did not work"
    );
    assert!(
        retrans > 0,
        "no retransmits after {dropped} drops: {closed:#?}"
    );
    // Every dropped segment was sent again, if only after its close line.
    assert!(resent >= dropped, "{dropped} dropped but {resent} resent");
}

/// Runs `minetd-client ARGS` on the client host (a process of its own:
/// a thousand connections need descriptors of their own), failing if it
/// outlives `limit`; its `--json` report, printed, and how long it took.
fn bench_on_client(lab: &Lab, args: &[&str], limit: Duration) -> (Value, Duration) {
    let mut bench = report::client_command(args);
    lab.place_on_client(&mut bench);
    let started = Instant::now();
    let output = common::output_within(bench.spawn().expect("spawn bench"), limit);
    let took = started.elapsed();
    let report = report::report_of(&output);
    println!("{report}");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    (report, took)
}

/// The report's p99 round-trip time in microseconds.
fn p99_us(report: &Value) -> f64 {
    report["latency_us"]["p99"]
        .as_f64()
        .unwrap_or_else(|| panic!("no p99 in {report}"))
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
    let echo = server.echo().to_string();
    let (report, took) = bench_on_client(
        &lab,
        &[
            "bench",
            &echo,
            "--json",
            "--connections",
            "16",
            "--size",
            "16384",
            "--threads",
            "2",
            "--duration",
            &duration.to_string(),
            "--timeout",
            &timeout.to_string(),
        ],
        3 * STEP,
    );
    report::counts(
        &report,
        &[("mismatches", 0), ("connect_failures", 0), ("errors", 0)],
    );
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
    let mbps = report["mbps"].as_f64().expect("mbps");
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

#[test]
fn sixty_four_mebibytes_cross_a_lossy_rate_limited_link_byte_for_byte() {
    let mbit = 200;
    let Some(lab) = lab(Shape {
        rate_mbit: Some(mbit),
        loss_to_client_percent: Some(1),
    }) else {
        return;
    };
    let mut server = start_server(&lab, &["--echo", &format!("{SERVER_IP}:0")]);
    let stderr = server.stderr_lines();
    let size = 64 * MEBIBYTE;
    let message = pseudo_random_bytes(size, 0x64);
    let stream = connect_peers(&lab, server.echo(), 1).remove(0);
    assert_eq!(mss(&stream), MSS, "not a real link");
    let started = Instant::now();
    let back = echo_in_bursts(stream, &message, 0x64);
    let took = started.elapsed();
    assert_eq!(back.len(), size, "length");
    let first = back.iter().zip(&message).position(|(a, b)| a != b);
    assert_eq!(first, None, "first differing byte");
    let closed = close_lines(&stderr, 1).remove(0);
    println!("{}", closed.line);
    assert!(closed.line.contains("closed: peer closed"), "{closed:?}");
    assert_eq!(
        (closed.bytes_in, closed.bytes_out),
        (size as u64, size as u64)
    );
    // Both the link's troubles were real: the shaper held packets back,
    // the loss rule dropped data, and the server's TCP resent at least
    // every dropped segment (resends after the close line count too, so
    // the host's counter, not the line's).
    let (dropped, resent) = (lab.dropped_to_client(), lab.server_retransmitted_segments());
    let overlimits = lab.shaper_overlimits();
    let rate = size as f64 / took.as_secs_f64() / 1e6;
    println!(
        "64 MiB echoed in {took:.1?} ({rate:.1} MB/s each way); {dropped} dropped, \
         {resent} resent, tbf overlimits {overlimits}"
    );
    // 1% of some 46,000 data segments: hundreds, not a handful.
    assert!(dropped > 100, "only {dropped} segments dropped");
    assert!(resent >= dropped, "{dropped} dropped but {resent} resent");
    assert!(overlimits > 0, "the shaper never held a packet back");
    assert!(
        rate < f64::from(mbit) / 8.0,
        "{rate} MB/s through a {mbit} Mbit/s link"
    );
}

#[test]
fn a_thousand_bench_connections_across_the_link_show_loss_in_p99_not_in_the_bytes() {
    let Some(lab) = lab(Shape::default()) else {
        return;
    };
    let mut server = start_server(&lab, &["--echo", &format!("{SERVER_IP}:0")]);
    let _log = server.stderr_lines();
    let echo = server.echo().to_string();
    let run = || {
        let args = [
            "bench",
            &echo,
            "--json",
            "--connections",
            "1000",
            "--size",
            "512",
            "--threads",
            "2",
            "--duration",
            "3",
            "--timeout",
            "5",
        ];
        let (report, _) = bench_on_client(&lab, &args, 6 * STEP);
        report::counts(
            &report,
            &[
                ("connections", 1000),
                ("mismatches", 0),
                ("connect_failures", 0),
                ("errors", 0),
            ],
        );
        report::at_least(&report, "round_trips", 1000);
        report
    };
    let clean = run();
    // 3% of the echoes lost: enough that the slowest percent of round
    // trips are the ones that waited for a resend.
    lab.lose_to_client(3).expect("loss rule");
    let lossy = run();
    let dropped = lab.dropped_to_client();
    let (clean_p99, lossy_p99) = (p99_us(&clean), p99_us(&lossy));
    println!(
        "p50 {} µs, p99 {clean_p99} µs lossless; p50 {} µs, p99 {lossy_p99} µs with {dropped} echoes dropped",
        clean["latency_us"]["p50"], lossy["latency_us"]["p50"]
    );
    assert!(dropped > 0, "nothing was dropped");
    // A lost echo is resent after a tail-loss probe or a retransmission
    // timeout, each at least 200 ms with one segment in flight (Linux adds
    // its delayed-ACK allowance when a single packet is outstanding).
    assert!(
        lossy_p99 >= 200_000.0,
        "p99 {lossy_p99} µs with 3% loss: the resends do not show"
    );
    assert!(
        lossy_p99 > clean_p99,
        "p99 {lossy_p99} µs with loss, {clean_p99} µs without"
    );
    // And only there: a connection waiting for a resend holds up no other.
    // (A bench that read its connections in turn made a twelfth of the
    // clean run's round trips here: every resend stalled a whole thread.)
    let rps = |report: &Value| report["rps"].as_f64().expect("rps");
    assert!(
        rps(&lossy) > rps(&clean) / 3.0,
        "{} rt/s with 3% loss, {} without: the stalled connections held up the rest",
        rps(&lossy),
        rps(&clean)
    );
}

/// The open loop over the same lossy link: each late echo delays only its
/// own connection, so the schedule is kept and the median stays a clean
/// round trip's. (A receiver that read the echoes in the order they were
/// written achieved a twentieth of the rate here, every echo behind a
/// resend waiting with it.)
#[test]
fn the_open_loop_across_a_lossy_link_keeps_its_rate_and_its_median() {
    let Some(lab) = lab(Shape {
        loss_to_client_percent: Some(1),
        ..Shape::default()
    }) else {
        return;
    };
    let mut server = start_server(&lab, &["--echo", &format!("{SERVER_IP}:0")]);
    let _log = server.stderr_lines();
    let echo = server.echo().to_string();
    let (rate, duration) = (5_000u64, 3u64);
    let (report, _) = bench_on_client(
        &lab,
        &[
            "bench",
            &echo,
            "--json",
            "--rate",
            &rate.to_string(),
            "--connections",
            "50",
            "--size",
            "64",
            "--threads",
            "1",
            "--duration",
            &duration.to_string(),
            "--timeout",
            "5",
        ],
        3 * STEP,
    );
    report::counts(
        &report,
        &[("mismatches", 0), ("connect_failures", 0), ("errors", 0)],
    );
    // Every message the schedule had fall due is answered or unanswered.
    report::sum(&report, &["round_trips", "unanswered"], rate * duration);
    let dropped = lab.dropped_to_client();
    let rps = report["rps"].as_f64().expect("rps");
    let p50 = report["latency_us"]["p50"].as_f64().expect("p50");
    println!("{rps} of {rate} messages/s, p50 {p50} µs, {dropped} echoes dropped");
    assert!(dropped > 0, "nothing was dropped");
    // 100 messages a second per connection; 1% of them wait some 200 ms
    // for a resend, 2 ms a message on average: the connections keep up.
    assert!(
        rps > rate as f64 / 2.0,
        "{rps} of {rate} messages/s: late echoes held up the rest"
    );
    assert!(
        p50 < 100_000.0,
        "p50 {p50} µs: the median message waited for someone's resend"
    );
}

#[test]
fn daytime_churn_across_the_link_answers_every_connection_it_counts() {
    let Some(lab) = lab(Shape::default()) else {
        return;
    };
    let mut server = start_server(
        &lab,
        &[
            "--daytime",
            &format!("{SERVER_IP}:0"),
            "--metrics",
            &format!("{SERVER_IP}:0"),
        ],
    );
    let (daytime, metrics) = (server.daytime().to_string(), server.addr_of("metrics", 0));
    let _log = server.stderr_lines();
    let (report, _) = bench_on_client(
        &lab,
        &[
            "bench",
            &daytime,
            "--mode",
            "daytime",
            "--json",
            "--connections",
            "32",
            "--threads",
            "2",
            "--duration",
            "2",
            "--timeout",
            "5",
        ],
        3 * STEP,
    );
    report::counts(
        &report,
        &[("mismatches", 0), ("connect_failures", 0), ("errors", 0)],
    );
    report::at_least(&report, "round_trips", 500);
    // Every connection the bench began reached the server and ended
    // there: none lost on the way, none still open. (Besides the counted
    // ones, the bench's first connection, which proves the server is
    // there before the run.)
    let began = 1 + report::count(&report, "round_trips") + report::count(&report, "unanswered");
    let series = |text: &str, name: &str| {
        metric(text, &format!("{name}{{service=\"daytime\"}}"))
            .unwrap_or_else(|| panic!("{name} in {text}"))
    };
    let mut text = String::new();
    let settled = common::wait_until(STEP, || {
        text = lab.on_client_host(|| scrape(&mut common::connect(metrics)));
        series(&text, "minetd_connections_open") == 0.0
    });
    assert!(settled, "connections still open: {text}");
    assert_eq!(
        series(&text, "minetd_connections_accepted_total"),
        began as f64,
        "the bench began {began} connections: {text}"
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

/// The budget the server may hold for all its connections in the test
/// below, as in `tests/memory.rs`'s loopback case: a thousand non-readers
/// at the default `--max-pending` (64 KiB) could be owed eight times it.
const BUDGET: u64 = 8 * 1024 * 1024;

/// What each non-reader writes at most. Ordinary sockets on both hosts
/// take some 250 KiB of each peer's bytes into kernel buffers before the
/// server owes it anything; 384 KiB fills the budget (256 KiB did not),
/// and keeps the thousand peers' kernel memory (truesize: some 560 MB of
/// TCP memory at the peak, measured in /proc/net/sockstat) at half the
/// pressure threshold the machine's TCP shares with everyone.
const NON_READER_BYTES: usize = 384 * 1024;

#[test]
fn a_thousand_non_readers_on_another_host_stay_within_the_budget_while_a_reader_is_served() {
    let Some(lab) = lab(Shape::default()) else {
        return;
    };
    common::raise_descriptor_limit();
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
    let idle = common::rss_kib(server.pid());
    // Watch the budget from the client host the whole time, every 10 ms.
    let done = AtomicBool::new(false);
    let (most, scrapes, grown) = thread::scope(|scope| {
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
        // Plain sockets on the other host: the MSS and windows of a real
        // remote peer, nothing set to make them look like one.
        let hostile = common::write_until_held(connect_peers(&lab, echo, 1_000), NON_READER_BYTES);
        let mut healthy = connect_peers(&lab, echo, 1).remove(0);
        for round in 0..1_000u64 {
            let message = pseudo_random_bytes(512, round + 1);
            healthy.write_all(&message).expect("write");
            let mut back = vec![0; message.len()];
            healthy.read_exact(&mut back).expect("read the echo");
            assert_eq!(back, message, "round trip {round}");
        }
        thread::sleep(Duration::from_millis(50));
        // While the peers still hold their share: once they close, what
        // the server keeps is the allocator's business, not the budget's.
        let grown = common::rss_kib(server.pid()).saturating_sub(idle);
        done.store(true, Ordering::Relaxed);
        let (most, scrapes) = watch.join().expect("watcher");
        drop(hostile);
        (most, scrapes, grown)
    });
    println!("most buffered {most} of {BUDGET} bytes over {scrapes} scrapes; RSS grew {grown} KiB");
    // The peers filled the budget, or this proved nothing.
    assert!(most > BUDGET as f64 / 2.0, "most buffered {most}");
    let warned = stderr
        .try_iter()
        .any(|line| line.contains("memory budget full"));
    assert!(warned, "the budget never held a read back");
    // The same bound as on loopback: the budget, the connections' own
    // bookkeeping and the allocator's slack; without the budget a thousand
    // peers owed 64 KiB each would be some 64 MiB.
    assert!(
        grown < 12 * 1024,
        "RSS grew {grown} KiB with 1,000 non-readers and --max-buffered 8 MiB"
    );
}
