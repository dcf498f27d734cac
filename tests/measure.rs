//! `minetd-client bench` as a measuring instrument: the open loop against a
//! server that stalls, pipelining, warm-up, the connect rate, daytime churn,
//! sweeps, the chart, the interval log and `merge`. Scripted servers in the
//! tests do what a real one would only do by accident.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine;
use common::report::{client, report_of};
use common::{STEP, Server};
use hdrhistogram::Histogram;
use hdrhistogram::serialization::Deserializer;
use serde_json::Value;

/// Runs `minetd-client bench ARGS`.
fn bench(args: &[&str], limit: Duration) -> Output {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    client(&all, limit)
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_success(output: &Output) {
    assert!(output.status.success(), "stderr: {}", stderr_of(output));
}

/// A server on loopback port 0 that hands each connection, with its
/// number, to `serve` on a thread of its own.
fn test_server<F>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream, usize) + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind test server");
    let addr = listener.local_addr().expect("local addr");
    let serve = Arc::new(serve);
    thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { continue };
            stream.set_read_timeout(Some(STEP)).expect("read timeout");
            stream.set_write_timeout(Some(STEP)).expect("write timeout");
            let serve = Arc::clone(&serve);
            thread::spawn(move || serve(stream, n));
        }
    });
    addr
}

/// Echoes everything it reads until the peer closes.
fn echo_rest(stream: &mut TcpStream, counted: Option<&AtomicU64>) {
    let mut chunk = [0; 4096];
    while let Ok(len @ 1..) = stream.read(&mut chunk) {
        if let Some(counted) = counted {
            counted.fetch_add(len as u64, Ordering::SeqCst);
        }
        if stream.write_all(&chunk[..len]).is_err() {
            return;
        }
    }
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("minetd-measure-{}-{name}", std::process::id()))
}

fn decode_histogram(text: &str) -> Histogram<u64> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("histogram is base64");
    // V2 compressed: the cookie 0x1c849304 (plus its low-byte flag) first.
    assert_eq!(&bytes[..3], &[0x1c, 0x84, 0x93], "V2 compressed cookie");
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .expect("histogram is HdrHistogram V2")
}

#[test]
fn stalled_server_shows_in_the_corrected_latency() {
    // Echoes, except that about a second after the first byte the whole
    // server freezes for one second, as a GC pause or a full disk would.
    let first_byte: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let frozen = Arc::new(AtomicBool::new(false));
    let freeze = Arc::new(Mutex::new(()));
    let addr = test_server(move |mut stream, _| {
        let mut chunk = [0; 4096];
        while let Ok(len @ 1..) = stream.read(&mut chunk) {
            let since = *first_byte.get_or_init(Instant::now);
            if since.elapsed() >= Duration::from_secs(1) && !frozen.swap(true, Ordering::SeqCst) {
                let _held = freeze.lock().unwrap();
                thread::sleep(Duration::from_secs(1));
            }
            drop(freeze.lock().unwrap());
            if stream.write_all(&chunk[..len]).is_err() {
                return;
            }
        }
    })
    .to_string();
    let args = [
        &addr,
        "--rate",
        "1000",
        "--duration",
        "3",
        "--connections",
        "10",
        "--size",
        "64",
        "--json",
    ];
    let output = bench(&args, STEP * 2);
    assert_success(&output);
    let report = report_of(&output);
    assert_eq!(report["rate"], 1000);
    assert_eq!(report["mismatches"], 0);
    let p90 = report["latency_us"]["p90"].as_f64().expect("p90");
    let service_p50 = report["service_us"]["p50"].as_f64().expect("service p50");
    println!(
        "stall: latency_us {} service_us {}",
        report["latency_us"], report["service_us"]
    );
    // A third of the messages fall due in the stall, waiting up to a second.
    assert!(p90 >= 300_000.0, "p90 {p90} µs: {report}");
    assert!(service_p50 < 50_000.0, "service p50 {service_p50} µs");
    assert!(
        report["round_trips"].as_u64().unwrap() >= 2900,
        "the schedule sends every message: {report}"
    );
}

#[test]
fn pipelined_messages_all_arrive_before_any_echo() {
    const SIZE: usize = 64;
    const PIPELINE: usize = 4;
    let batches = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&batches);
    let addr = test_server(move |mut stream, _| {
        // The ramp's confirming message is echoed alone; after it, the
        // client must have PIPELINE messages in flight before any echo.
        let mut first = vec![0; SIZE];
        let mut batch = vec![0; SIZE * PIPELINE];
        if stream.read_exact(&mut first).is_err() || stream.write_all(&first).is_err() {
            return;
        }
        if stream.read_exact(&mut batch).is_err() {
            return;
        }
        seen.fetch_add(1, Ordering::SeqCst);
        if stream.write_all(&batch).is_ok() {
            echo_rest(&mut stream, None);
        }
    })
    .to_string();
    let args = [
        &addr,
        "--pipeline",
        "4",
        "--size",
        "64",
        "--connections",
        "3",
        "--duration",
        "0.3",
        "--json",
    ];
    let output = bench(&args, STEP * 2);
    assert_success(&output);
    let report = report_of(&output);
    assert_eq!(batches.load(Ordering::SeqCst), 3);
    assert_eq!(report["mismatches"], 0);
    assert!(report["round_trips"].as_u64().unwrap() >= 12, "{report}");
}

#[test]
fn reordered_echoes_in_the_pipeline_are_mismatches() {
    const SIZE: usize = 64;
    let addr = test_server(|mut stream, _| {
        // Confirming echo, then the first two messages swapped.
        let mut first = vec![0; SIZE];
        let mut pair = vec![0; SIZE * 2];
        if stream.read_exact(&mut first).is_err() || stream.write_all(&first).is_err() {
            return;
        }
        if stream.read_exact(&mut pair).is_err() {
            return;
        }
        pair.rotate_left(SIZE);
        if stream.write_all(&pair).is_ok() {
            echo_rest(&mut stream, None);
        }
    })
    .to_string();
    let args = [
        &addr,
        "--pipeline",
        "2",
        "--size",
        "64",
        "--connections",
        "1",
        "--duration",
        "0.3",
        "--json",
    ];
    let output = bench(&args, STEP * 2);
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    let report = report_of(&output);
    assert_eq!(report["mismatches"], 2);
    assert_eq!(report["errors"], 0);
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("; first mismatch: conn 0 round 1: byte "),
        "{stderr}"
    );
}

#[test]
fn warmup_messages_are_not_counted_in_the_open_loop() {
    let received = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&received);
    let addr = test_server(move |mut stream, _| echo_rest(&mut stream, Some(&counted))).to_string();
    let args = [
        &addr,
        "--rate",
        "400",
        "--warmup",
        "0.5",
        "--duration",
        "0.5",
        "--connections",
        "2",
        "--size",
        "64",
        "--json",
    ];
    let output = bench(&args, STEP * 2);
    assert_success(&output);
    let report = report_of(&output);
    // The schedule is computed: 200 messages fall due in the warm-up and
    // 200 in the measured half second, plus one confirming echo each. A
    // message due at the window's very end that a busy machine could not
    // send before it closed is never sent, and is reported unanswered.
    let round_trips = report["round_trips"].as_u64().expect("round_trips");
    let unanswered = report["unanswered"].as_u64().expect("unanswered");
    assert_eq!(round_trips + unanswered, 200);
    assert!(unanswered <= 4, "{unanswered} of 200 never sent");
    assert_eq!(received.load(Ordering::SeqCst), (400 - unanswered + 2) * 64);
    assert_eq!(
        decode_histogram(report["histogram"].as_str().unwrap()).len(),
        round_trips
    );
}

#[test]
fn warmup_round_trips_are_not_counted_in_the_closed_loop() {
    let received = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&received);
    let addr = test_server(move |mut stream, _| echo_rest(&mut stream, Some(&counted))).to_string();
    let args = [
        &addr,
        "--warmup",
        "0.5",
        "--duration",
        "0.5",
        "--connections",
        "2",
        "--size",
        "100",
        "--json",
    ];
    let output = bench(&args, STEP * 2);
    assert_success(&output);
    let report = report_of(&output);
    let reported = report["round_trips"].as_u64().unwrap();
    let echoed = received.load(Ordering::SeqCst) / 100;
    // Half the load ran in the warm-up: the server saw about twice as many.
    assert!(
        echoed as f64 > reported as f64 * 1.3,
        "server {echoed}, reported {reported}"
    );
    assert_eq!(
        decode_histogram(report["histogram"].as_str().unwrap()).len(),
        reported
    );
}

#[test]
fn connect_rate_spreads_the_ramp_over_time() {
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let times = Arc::clone(&accepted);
    let addr = test_server(move |mut stream, _| {
        times.lock().unwrap().push(Instant::now());
        echo_rest(&mut stream, None);
    })
    .to_string();
    let args = [
        &addr,
        "--connect-rate",
        "10",
        "--connections",
        "6",
        "--threads",
        "2",
        "--duration",
        "0.2",
        "--json",
    ];
    let output = bench(&args, STEP * 2);
    assert_success(&output);
    assert_eq!(report_of(&output)["connections"], 6);
    let mut times = accepted.lock().unwrap().clone();
    times.sort();
    assert_eq!(times.len(), 6);
    // Six connections at ten a second: one every 100 ms, not a burst.
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= Duration::from_millis(60), "gap {gap:?} in {times:?}");
    }
}

/// Runs a daytime churn against a server that answers every connection
/// with `reply` and closes.
fn churn_against(reply: &'static [u8]) -> Output {
    let addr = test_server(move |mut stream, _| {
        let _ = stream.write_all(reply);
    })
    .to_string();
    let args = [
        &addr,
        "--mode",
        "daytime",
        "--connections",
        "2",
        "--duration",
        "0.3",
        "--json",
    ];
    bench(&args, STEP * 2)
}

#[test]
fn daytime_churn_accepts_one_proper_line() {
    let output = churn_against(b"Sun Nov 22 15:38:54 2026\r\n");
    assert_success(&output);
    let report = report_of(&output);
    assert_eq!(report["mode"], "daytime");
    assert_eq!(report["mismatches"], 0);
    assert!(report["round_trips"].as_u64().unwrap() > 0, "{report}");
}

#[test]
fn daytime_churn_counts_every_bad_reply_as_a_mismatch() {
    let long_line: &'static [u8] = Box::leak([b"x".repeat(100), b"\r\n".to_vec()].concat().into());
    for reply in [&b""[..], b"one\r\ntwo\r\n", long_line, b"no line ending"] {
        let output = churn_against(reply);
        assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
        let report = report_of(&output);
        let round_trips = report["round_trips"].as_u64().unwrap();
        assert!(round_trips > 0, "{report}");
        assert_eq!(report["mismatches"], round_trips, "reply {reply:?}");
        assert!(
            stderr_of(&output).contains("is not one line of 1 to 64 bytes ending CRLF"),
            "{}",
            stderr_of(&output)
        );
    }
}

#[test]
fn daytime_churn_against_minetd_is_clean() {
    let server = Server::start(&["--daytime", "127.0.0.1:0"]);
    let addr = server.daytime().to_string();
    let args = [
        &addr,
        "--mode",
        "daytime",
        "--connections",
        "4",
        "--duration",
        "0.3",
        "--json",
    ];
    let output = bench(&args, STEP * 2);
    assert_success(&output);
    let report = report_of(&output);
    assert_eq!(report["mismatches"], 0);
    assert_eq!(report["connect_failures"], 0);
    assert!(report["round_trips"].as_u64().unwrap() > 0);
}

#[test]
fn sweep_prints_one_json_line_per_run_in_order() {
    let server = Server::start(&["--echo", "127.0.0.1:0"]);
    let addr = server.echo().to_string();
    let plot = temp_path("sweep.svg");
    let args = [
        &addr,
        "--sweep",
        "1,3,2",
        "--duration",
        "0.2",
        "--json",
        "--plot",
        plot.to_str().unwrap(),
    ];
    let output = bench(&args, STEP * 3);
    assert_success(&output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    let connections: Vec<u64> = lines
        .iter()
        .map(|line| {
            let run: Value = serde_json::from_str(line).expect("one JSON object per line");
            assert!(run["round_trips"].as_u64().unwrap() > 0);
            run["connections"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(connections, [1, 3, 2]);
    let labels = svg_text(&plot);
    for label in ["connections", "round trips per second", "latency (µs)"] {
        assert!(labels.iter().any(|l| l == label), "{label:?} in {labels:?}");
    }
    let _ = std::fs::remove_file(plot);
}

/// Parses an SVG file as XML; returns the text of its `text` elements.
fn svg_text(path: &Path) -> Vec<String> {
    let svg = std::fs::read_to_string(path).expect("read the SVG");
    let document = roxmltree::Document::parse(&svg).expect("SVG is XML");
    assert_eq!(document.root_element().tag_name().name(), "svg");
    document
        .descendants()
        .filter(|node| node.has_tag_name("text"))
        .map(|node| node.text().unwrap_or("").trim().to_string())
        .collect()
}

#[test]
fn one_run_plots_latency_by_percentile_and_logs_each_second() {
    let server = Server::start(&["--echo", "127.0.0.1:0"]);
    let addr = server.echo().to_string();
    let plot = temp_path("run.svg");
    let log = temp_path("run.hlog");
    let args = [
        &addr,
        "--rate",
        "200",
        "--duration",
        "2.5",
        "--connections",
        "2",
        "--json",
        "--plot",
        plot.to_str().unwrap(),
        "--hist-log",
        log.to_str().unwrap(),
    ];
    let output = bench(&args, STEP * 2);
    assert_success(&output);
    let report = report_of(&output);
    let round_trips = report["round_trips"].as_u64().unwrap();
    assert_eq!(round_trips, 500);
    let whole = decode_histogram(report["histogram"].as_str().unwrap());
    assert_eq!(whole.len(), round_trips);
    assert_eq!(
        whole.value_at_quantile(0.5) as f64,
        report["latency_us"]["p50"].as_f64().unwrap()
    );

    let labels = svg_text(&plot);
    for label in ["percentile", "latency (µs)", "90%", "99%"] {
        assert!(labels.iter().any(|l| l == label), "{label:?} in {labels:?}");
    }

    let text = std::fs::read_to_string(&log).expect("read the interval log");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "#[Histogram log format version 1.3]");
    assert!(
        lines[1].starts_with("#[StartTime: ") && lines[1].contains(" (seconds since epoch), "),
        "{}",
        lines[1]
    );
    // The start of the run, not the end: the run took 2.5 s.
    let start: f64 = lines[1]["#[StartTime: ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(now - start >= 2.4, "StartTime {start}, now {now}");
    assert_eq!(
        lines[2],
        "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\""
    );
    let intervals = &lines[3..];
    assert_eq!(intervals.len(), 3, "{text}");
    let mut total = 0;
    for (n, line) in intervals.iter().enumerate() {
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!(fields.len(), 4, "{line}");
        assert_eq!(fields[0], format!("{n}.000"));
        let interval = decode_histogram(fields[3]);
        assert_eq!(format!("{:.3}", interval.max() as f64), fields[2]);
        total += interval.len();
    }
    assert_eq!(total, round_trips);
    let _ = std::fs::remove_file(plot);
    let _ = std::fs::remove_file(log);
}

/// Writes `text` to a fresh temporary file.
fn write_temp(name: &str, text: &[u8]) -> PathBuf {
    let path = temp_path(name);
    std::fs::write(&path, text).expect("write temp file");
    path
}

#[test]
fn merge_of_two_concurrent_runs_sums_counts_and_merges_percentiles() {
    let server = Server::start(&["--echo", "127.0.0.1:0"]);
    let addr = server.echo().to_string();
    let run = |connections: &'static str| {
        let addr = addr.clone();
        thread::spawn(move || {
            let args = [
                &addr,
                "--connections",
                connections,
                "--size",
                "64",
                "--duration",
                "0.5",
                "--threads",
                "1",
                "--json",
            ];
            bench(&args, STEP * 2)
        })
    };
    let (a, b) = (run("2"), run("5"));
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    assert_success(&a);
    assert_success(&b);
    let (ra, rb) = (report_of(&a), report_of(&b));
    let fa = write_temp("a.json", &a.stdout);
    let fb = write_temp("b.json", &b.stdout);
    let output = client(
        &[
            "merge",
            fa.to_str().unwrap(),
            fb.to_str().unwrap(),
            "--json",
        ],
        STEP,
    );
    assert_success(&output);
    let merged = report_of(&output);
    let sum = |key: &str| ra[key].as_u64().unwrap() + rb[key].as_u64().unwrap();
    assert_eq!(merged["connections"], 7);
    assert_eq!(merged["round_trips"], sum("round_trips"));
    assert_eq!(merged["mismatches"], 0);
    assert_eq!(merged["mode"], "echo");
    assert_eq!(merged["size"], 64);
    let rps = ra["rps"].as_f64().unwrap() + rb["rps"].as_f64().unwrap();
    assert!(
        (merged["rps"].as_f64().unwrap() - rps).abs() < 0.2,
        "{merged}"
    );
    for key in ["p50", "p99", "max"] {
        let (x, y) = (
            ra["latency_us"][key].as_f64().unwrap(),
            rb["latency_us"][key].as_f64().unwrap(),
        );
        let m = merged["latency_us"][key].as_f64().unwrap();
        assert!(
            x.min(y) <= m && m <= x.max(y),
            "{key}: {m} not within {x}, {y}"
        );
    }
    let histogram = decode_histogram(merged["histogram"].as_str().unwrap());
    assert_eq!(histogram.len(), sum("round_trips"));

    // The same file twice is fine as JSON lines too.
    let lines = write_temp("lines.json", &[a.stdout.clone(), b.stdout.clone()].concat());
    let output = client(&["merge", lines.to_str().unwrap(), "--json"], STEP);
    assert_success(&output);
    assert_eq!(report_of(&output)["round_trips"], sum("round_trips"));

    for path in [fa, fb, lines] {
        let _ = std::fs::remove_file(path);
    }
}

/// Asserts `output` is exit 2 with one line on stderr naming `path`.
fn assert_usage_error_naming(output: &Output, path: &Path) {
    assert_eq!(output.status.code(), Some(2), "{}", stderr_of(output));
    let stderr = stderr_of(output);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(path.to_str().unwrap()), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[test]
fn merge_refuses_mixed_or_histogramless_results() {
    let base = serde_json::json!({
        "connections": 2, "size": 64, "duration_s": 1.0, "round_trips": 10,
        "rps": 10.0, "mbps": 0.001,
        "latency_us": {"p50": 1.0, "p90": 1.0, "p99": 1.0, "p999": 1.0, "max": 1.0},
        "mismatches": 0, "connect_failures": 0, "errors": 0, "mode": "echo",
        // One value, 100 µs, recorded ten times.
        "histogram": histogram_of(&[100; 10]),
    });
    let good = write_temp("good.json", base.to_string().as_bytes());
    let with = |name: &str, key: &str, value: Value| {
        let mut changed = base.clone();
        if value.is_null() {
            changed.as_object_mut().unwrap().remove(key);
        } else {
            changed[key] = value;
        }
        write_temp(name, changed.to_string().as_bytes())
    };
    let no_histogram = with("nohist.json", "histogram", Value::Null);
    let other_size = with("size.json", "size", 512.into());
    let other_mode = with("mode.json", "mode", "daytime".into());
    let not_json = write_temp("garbage.json", b"round trips: 10\n");
    for bad in [&no_histogram, &other_size, &other_mode, &not_json] {
        let output = client(
            &["merge", good.to_str().unwrap(), bad.to_str().unwrap()],
            STEP,
        );
        assert_usage_error_naming(&output, bad);
    }
    let output = client(&["merge", good.to_str().unwrap(), "--json"], STEP);
    assert_success(&output);
    assert_eq!(report_of(&output)["latency_us"]["p50"], 100.0);
    for path in [good, no_histogram, other_size, other_mode, not_json] {
        let _ = std::fs::remove_file(path);
    }
}

#[test]
fn merge_sums_unanswered_and_takes_results_from_before_it() {
    let result = |unanswered: Option<u64>| {
        let mut result = serde_json::json!({
            "connections": 2, "size": 64, "duration_s": 1.0, "round_trips": 10,
            "rps": 10.0, "mbps": 0.001,
            "latency_us": {"p50": 1.0, "p90": 1.0, "p99": 1.0, "p999": 1.0, "max": 1.0},
            "mismatches": 0, "connect_failures": 0, "errors": 0, "mode": "echo",
            "histogram": histogram_of(&[100; 10]),
        });
        if let Some(unanswered) = unanswered {
            result["unanswered"] = unanswered.into();
        }
        result.to_string()
    };
    // Two new results and one from a bench that predates the key.
    let lines = [result(Some(3)), result(Some(4)), result(None)].join("\n");
    let path = write_temp("unanswered.json", lines.as_bytes());
    let output = client(&["merge", path.to_str().unwrap(), "--json"], STEP);
    assert_success(&output);
    let merged = report_of(&output);
    assert_eq!(merged["unanswered"], 7);
    assert_eq!(merged["round_trips"], 30);
    // Unanswered messages alone are no failure, merged or not.
    let output = client(&["merge", path.to_str().unwrap()], STEP);
    assert_success(&output);
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("unanswered        7\n"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let _ = std::fs::remove_file(path);
}

/// A V2 compressed, base64 histogram of `values` in microseconds.
fn histogram_of(values: &[u64]) -> String {
    use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
    for &value in values {
        histogram.record(value).unwrap();
    }
    let mut bytes = Vec::new();
    V2DeflateSerializer::new()
        .serialize(&histogram, &mut bytes)
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn bad_measuring_options_are_one_line_usage_errors() {
    for (args, named) in [
        (&["--rate", "0"][..], "'0'"),
        (&["--connect-rate", "0"][..], "'0'"),
        (
            &["--pipeline", "2", "--size", "65536"][..],
            "--pipeline 2 × --size 65536",
        ),
        (&["--pipeline", "16", "--size", "8192"][..], "131072"),
        (&["--sweep", "10,,20"][..], "'10,,20'"),
        (&["--sweep", "10,0"][..], "'10,0'"),
        (&["--sweep", ""][..], "--sweep"),
        (&["--mode", "chargen", "--rate", "10"][..], "--rate"),
    ] {
        let mut all = vec!["127.0.0.1:9"];
        all.extend_from_slice(args);
        let output = bench(&all, STEP);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr_of(&output)
        );
        let stderr = stderr_of(&output);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
}

#[test]
fn plot_path_that_cannot_be_written_fails_before_the_run() {
    // Nobody listens on the address either: the plot is checked first.
    let addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .to_string();
    let path = "/nonexistent-minetd-dir/chart.svg";
    let output = bench(&[&addr, "--plot", path, "--duration", "30"], STEP);
    assert_eq!(output.status.code(), Some(1));
    let stderr = stderr_of(&output);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("minetd-client: cannot write --plot {path}: ")),
        "{stderr}"
    );
}
