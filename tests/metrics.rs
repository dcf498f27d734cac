//! `--metrics`: Prometheus's text exposition over HTTP from the same loop,
//! with exact counts of known traffic, every series from the start, HTTP's
//! rules (404, 405, HTTP/1.0 closes, HTTP/1.1 keeps), hostile scrapers that
//! cost nothing and disturb no one, `promtool check metrics`, and a real
//! Prometheus scraping it.

mod common;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{STEP, Server, connect, connect_from, read_to_eof};

/// Series name with labels, as written, to value.
type Exposition = BTreeMap<String, f64>;

/// Parses the text exposition format 0.0.4 strictly: every sample belongs
/// to the family most recently declared with `# TYPE` (declared once,
/// after its `# HELP`), names and labels are well formed, counters end in
/// `_total`, no series repeats, the text ends with a newline.
fn parse_exposition(text: &str) -> Exposition {
    assert!(text.ends_with('\n'), "no final newline");
    let name_ok = |name: &str| {
        !name.is_empty()
            && name.chars().enumerate().all(|(i, c)| {
                c == '_' || c == ':' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut series = Exposition::new();
    let mut declared: Vec<String> = Vec::new();
    let mut helped: Option<String> = None;
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(name_ok(name) && !help.is_empty(), "{line}");
            helped = Some(name.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert_eq!(helped.as_deref(), Some(name), "TYPE without HELP: {line}");
            assert!(
                ["counter", "gauge"].contains(&kind),
                "unexpected type: {line}"
            );
            assert!(
                !declared.contains(&name.to_string()),
                "declared twice: {name}"
            );
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter not _total: {name}");
            }
            declared.push(name.to_string());
            current = Some((name.to_string(), kind.to_string()));
        } else {
            assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
            let (key, value) = line.rsplit_once(' ').expect("sample value");
            let name = key.split('{').next().expect("name");
            let (family, _) = current.as_ref().expect("sample before any TYPE");
            assert_eq!(name, family, "sample outside its family: {line}");
            if let Some(labels) = key.strip_prefix(name).filter(|l| !l.is_empty()) {
                let inner = labels
                    .strip_prefix('{')
                    .and_then(|l| l.strip_suffix('}'))
                    .unwrap_or_else(|| panic!("labels: {line}"));
                for pair in inner.split("\",") {
                    let (label, quoted) =
                        pair.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                    assert!(name_ok(label) && !label.contains(':'), "{line}");
                    let value = quoted.strip_suffix('"').unwrap_or(quoted);
                    assert!(!value.contains(['"', '\\', '\n']), "{line}");
                }
            }
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("value: {line}"));
            assert!(
                series.insert(key.to_string(), value).is_none(),
                "twice: {key}"
            );
        }
    }
    series
}

/// One HTTP exchange on a fresh connection: `request` as given; returns
/// the status line, the headers (lower-case names) and the body.
fn http(addr: SocketAddr, request: &[u8]) -> (String, BTreeMap<String, String>, Vec<u8>) {
    let mut stream = connect(addr);
    stream.write_all(request).expect("write request");
    read_response(&mut stream)
}

/// Reads one response (with a Content-Length) from `stream`.
fn read_response(stream: &mut TcpStream) -> (String, BTreeMap<String, String>, Vec<u8>) {
    let mut head = Vec::new();
    let mut byte = [0; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).expect("read response head");
        assert_eq!(
            n,
            1,
            "closed mid-head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).expect("utf-8 head");
    let mut lines = head.split("\r\n");
    let status = lines.next().expect("status").to_string();
    let headers: BTreeMap<String, String> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (name, value) = l.split_once(": ").expect("header");
            (name.to_ascii_lowercase(), value.to_string())
        })
        .collect();
    let len: usize = headers["content-length"].parse().expect("length");
    let mut body = vec![0; len];
    stream.read_exact(&mut body).expect("body");
    (status, headers, body)
}

fn scrape(addr: SocketAddr) -> Exposition {
    let (status, headers, body) = http(addr, b"GET /metrics HTTP/1.0\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    parse_exposition(&String::from_utf8(body).expect("utf-8 body"))
}

/// Scrapes until every `(series, value)` in `want` holds, or fails with
/// the last scrape.
fn scrape_until(addr: SocketAddr, want: &[(&str, f64)]) -> Exposition {
    let deadline = Instant::now() + STEP;
    loop {
        let got = scrape(addr);
        let missing: Vec<String> = want
            .iter()
            .filter(|(key, value)| got.get(*key) != Some(value))
            .map(|(key, value)| format!("{key} = {value}, got {:?}", got.get(*key)))
            .collect();
        if missing.is_empty() {
            return got;
        }
        assert!(Instant::now() < deadline, "{}", missing.join("\n"));
        thread::sleep(Duration::from_millis(20));
    }
}

fn metrics_addr(server: &Server) -> SocketAddr {
    server.addr_of("metrics", 0)
}

#[test]
fn known_traffic_is_counted_exactly_by_reason_and_service() {
    let server = Server::start(&[
        "--echo",
        "127.0.0.1:0",
        "--daytime",
        "127.0.0.1:0",
        "--udp-echo",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
        "--allow",
        "127.0.0.1/32",
        "--allow",
        "127.0.0.3/32",
        "--per-source",
        "2",
        "--max-connections",
        "3",
        "--proxy-protocol",
        "127.0.0.4/32",
    ]);
    let echo = server.echo();
    let metrics = metrics_addr(&server);
    let ip = |text: &str| -> SocketAddr { format!("{text}:0").parse().expect("addr") };
    // Every served service's series exist from the start, at 0.
    let start = scrape(metrics);
    for key in [
        "minetd_connections_accepted_total{service=\"daytime\"}",
        "minetd_connections_refused_total{service=\"daytime\",reason=\"proxy_header\"}",
        "minetd_datagrams_dropped_total{service=\"udp-echo\"}",
        "minetd_received_bytes_total{service=\"udp-echo\"}",
        "minetd_reads_held_back_total",
    ] {
        assert_eq!(start.get(key), Some(&0.0), "{key}");
    }
    assert_eq!(start["minetd_build_info{version=\"0.1.0\"}"], 1.0);

    // A balancer's connection with no valid header: refused for it.
    let mut relayed = connect_from(ip("127.0.0.4"), echo);
    relayed.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("write");
    assert_eq!(read_to_eof(&mut relayed), b"");
    // Two from one address, a third from it over --per-source.
    let mut first = connect_from(ip("127.0.0.1"), echo);
    let _second = connect_from(ip("127.0.0.1"), echo);
    let mut third = connect_from(ip("127.0.0.1"), echo);
    assert_eq!(read_to_eof(&mut third), b"");
    // Another address fills --max-connections; one more is over it.
    let _fourth = connect_from(ip("127.0.0.3"), echo);
    let mut fifth = connect_from(ip("127.0.0.3"), echo);
    assert_eq!(read_to_eof(&mut fifth), b"");
    // Outside --allow.
    let mut outsider = connect_from(ip("127.0.0.2"), echo);
    assert_eq!(read_to_eof(&mut outsider), b"");
    // 100 bytes echoed.
    let message = common::pseudo_random_bytes(100, 3);
    first.write_all(&message).expect("write");
    let mut back = vec![0; 100];
    first.read_exact(&mut back).expect("echo");
    assert_eq!(back, message);
    // Three datagrams answered, one dropped (outside --allow).
    let udp = server.addr_of("udp-echo", 0);
    let inside = UdpSocket::bind("127.0.0.1:0").expect("bind");
    inside.set_read_timeout(Some(STEP)).expect("timeout");
    for n in 0..3u8 {
        inside.send_to(&[n; 10], udp).expect("send");
        let mut buf = [0; 16];
        assert_eq!(inside.recv(&mut buf).expect("answer"), 10);
    }
    UdpSocket::bind("127.0.0.2:0")
        .expect("bind")
        .send_to(&[9; 7], udp)
        .expect("send");

    let refused = |reason: &str| {
        format!("minetd_connections_refused_total{{service=\"echo\",reason=\"{reason}\"}}")
    };
    let (proxy, per_source, max, allow) = (
        refused("proxy_header"),
        refused("per_source"),
        refused("max_connections"),
        refused("allow"),
    );
    let want = [
        ("minetd_connections_accepted_total{service=\"echo\"}", 3.0),
        ("minetd_connections_open{service=\"echo\"}", 3.0),
        (proxy.as_str(), 1.0),
        (per_source.as_str(), 1.0),
        (max.as_str(), 1.0),
        (allow.as_str(), 1.0),
        ("minetd_received_bytes_total{service=\"echo\"}", 100.0),
        ("minetd_sent_bytes_total{service=\"echo\"}", 100.0),
        (
            "minetd_connections_accepted_total{service=\"daytime\"}",
            0.0,
        ),
        ("minetd_datagrams_received_total{service=\"udp-echo\"}", 4.0),
        ("minetd_datagrams_sent_total{service=\"udp-echo\"}", 3.0),
        ("minetd_datagrams_dropped_total{service=\"udp-echo\"}", 1.0),
        ("minetd_received_bytes_total{service=\"udp-echo\"}", 37.0),
        ("minetd_sent_bytes_total{service=\"udp-echo\"}", 30.0),
        ("minetd_buffered_bytes", 0.0),
        ("minetd_max_buffered_bytes", 33_554_432.0),
    ];
    scrape_until(metrics, &want);
    // Scrapes themselves count nowhere: the same figures, scraped again.
    for _ in 0..3 {
        scrape(metrics);
    }
    let again = scrape_until(metrics, &want);
    let started = again["process_start_time_seconds"];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(started <= now && started > now - 60.0, "{started} vs {now}");
}

#[test]
fn http_rules_404_405_and_keep_alive_as_asked() {
    let server = Server::start(&["--echo", "127.0.0.1:0", "--metrics", "127.0.0.1:0"]);
    let metrics = metrics_addr(&server);
    let (status, headers, body) =
        http(metrics, b"GET /other HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    assert_eq!(headers["connection"], "close");
    assert!(!body.is_empty());
    let (status, headers, _) = http(
        metrics,
        b"POST /metrics HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    assert_eq!(headers["allow"], "GET");

    // HTTP/1.0: one answer, then EOF.
    let mut stream = connect(metrics);
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .expect("write");
    let (status, headers, _) = read_response(&mut stream);
    assert_eq!(
        (status.as_str(), headers["connection"].as_str()),
        ("HTTP/1.1 200 OK", "close")
    );
    assert_eq!(read_to_eof(&mut stream), b"");

    // HTTP/1.1: kept for the next request, here two sent in one write and
    // the third a byte at a time; a 1.1 "close" ends it.
    let mut stream = connect(metrics);
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\nGET /nope HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("write");
    assert_eq!(read_response(&mut stream).0, "HTTP/1.1 200 OK");
    assert_eq!(read_response(&mut stream).0, "HTTP/1.1 404 Not Found");
    stream.set_nodelay(true).expect("nodelay");
    for byte in b"GET /metrics?x=1 HTTP/1.1\r\nConnection: close\r\n\r\n" {
        stream.write_all(&[*byte]).expect("write a byte");
    }
    let (status, headers, body) = read_response(&mut stream);
    assert_eq!(
        (status.as_str(), headers["connection"].as_str()),
        ("HTTP/1.1 200 OK", "close")
    );
    parse_exposition(&String::from_utf8(body).expect("utf-8"));
    assert_eq!(read_to_eof(&mut stream), b"");
}

/// Reads until EOF or a reset; returns what came, failing on a hang.
fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    match stream.read_to_end(&mut got) {
        Ok(_) => {}
        Err(err) if err.kind() == ErrorKind::ConnectionReset => {}
        Err(err) => panic!("not closed: {err}"),
    }
    got
}

#[test]
fn hostile_scrapers_are_closed_and_disturb_no_one() {
    let server = Server::start(&["--echo", "127.0.0.1:0", "--metrics", "127.0.0.1:0"]);
    let metrics = metrics_addr(&server);
    // An echo peer served throughout.
    let mut peer = connect(server.echo());
    let mut echo_once = |n: u8| {
        peer.write_all(&[n; 32]).expect("echo write");
        let mut back = [0; 32];
        peer.read_exact(&mut back).expect("echo read");
        assert_eq!(back, [n; 32]);
    };

    // Not HTTP: closed at once, nothing sent.
    let mut tls = connect(metrics);
    tls.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        .expect("write");
    assert_eq!(read_until_closed(&mut tls), b"");
    echo_once(1);

    // A request over 8 KiB: closed, nothing sent.
    let mut long = connect(metrics);
    let mut request = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 9000));
    let _ = long.write_all(&request);
    assert_eq!(read_until_closed(&mut long), b"");
    echo_once(2);

    // More scrapers than allowed at once: the extra ones closed at once,
    // the first ones still answered.
    let held: Vec<TcpStream> = (0..64).map(|_| connect(metrics)).collect();
    let mut extra = connect(metrics);
    assert_eq!(read_until_closed(&mut extra), b"");
    let mut first = held.into_iter().next().expect("one");
    first
        .write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .expect("write");
    assert_eq!(read_response(&mut first).0, "HTTP/1.1 200 OK");
    echo_once(3);

    // A scraper that pipelines request after request and never reads the
    // answers: they back up until it is closed, like any other scraper
    // that stops, by the request deadline (checked after the trickle).
    let flood = connect(metrics);
    let mut flood_reader = flood.try_clone().expect("clone");
    let flooding = thread::spawn(move || {
        let mut flood = flood;
        // Blocks once the server stops reading; ends when it closes.
        let _ = flood.write_all(&b"GET /metrics HTTP/1.1\r\n\r\n".repeat(4000));
    });

    // A trickle that never completes a request: closed at the 5 s
    // deadline, while the echo peer goes on being served.
    let started = Instant::now();
    let mut trickle = connect(metrics);
    trickle.set_nodelay(true).expect("nodelay");
    let mut closed = false;
    for (n, byte) in b"GET /metrics HTTP/1.1\r\nX: ".iter().cycle().enumerate() {
        if trickle.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        echo_once(n as u8);
        thread::sleep(Duration::from_millis(200));
        if started.elapsed() > Duration::from_secs(8) {
            break;
        }
        let mut probe = [0; 1];
        trickle.set_nonblocking(true).expect("nonblocking");
        let read = trickle.read(&mut probe);
        trickle.set_nonblocking(false).expect("blocking");
        match read {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => panic!("the trickle was answered"),
            Err(err) if err.kind() == ErrorKind::WouldBlock => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    let waited = started.elapsed();
    assert!(
        closed,
        "a trickling scraper was still open after {waited:?}"
    );
    assert!(
        waited >= Duration::from_millis(4800) && waited < Duration::from_secs(7),
        "closed after {waited:?}"
    );
    let answers = read_until_closed(&mut flood_reader);
    assert!(
        answers.starts_with(b"HTTP/1.1 200 OK\r\n"),
        "the flood got no answer"
    );
    flooding.join().expect("flood writer");
    echo_once(4);
    // None of it counted as echo's.
    let got = scrape(metrics);
    assert_eq!(
        got["minetd_connections_accepted_total{service=\"echo\"}"],
        1.0
    );
}

#[test]
fn promtool_accepts_the_exposition() {
    if Command::new("promtool").arg("--version").output().is_err() {
        eprintln!("skipped: promtool not installed (Debian package prometheus)");
        return;
    }
    let server = Server::start(&[
        "--echo",
        "127.0.0.1:0",
        "--udp-time",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let (_, _, body) = http(metrics_addr(&server), b"GET /metrics HTTP/1.0\r\n\r\n");
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(&body)
        .expect("feed promtool");
    let output = common::output_within(check, STEP);
    assert!(
        output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A port free on 127.0.0.1 now (for a child that must be told one).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Asks Prometheus's HTTP API for the value of `query` (one series).
fn query(api: SocketAddr, query: &str) -> Option<f64> {
    let encoded: String = query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let mut stream = TcpStream::connect(api).ok()?;
    stream.set_read_timeout(Some(STEP)).ok()?;
    let request = format!("GET /api/v1/query?query={encoded} HTTP/1.0\r\nHost: prometheus\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let response = String::from_utf8_lossy(&response);
    let body = response.split_once("\r\n\r\n")?.1;
    let json: serde_json::Value = serde_json::from_str(body).ok()?;
    let result = json["data"]["result"].as_array()?;
    if result.len() != 1 {
        return None;
    }
    result[0]["value"][1].as_str()?.parse().ok()
}

/// Waits until Prometheus reports `want` for `q`.
fn prometheus_sees(api: SocketAddr, q: &str, want: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let value = query(api, q);
        if let Some(v) = value.filter(|v| want(*v)) {
            return v;
        }
        assert!(Instant::now() < deadline, "Prometheus: {q} = {value:?}");
        thread::sleep(Duration::from_millis(250));
    }
}

/// Stops a child we started, by its PID, on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_real_prometheus_scrapes_exact_counts_and_the_budget() {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: prometheus not installed (Debian package prometheus)");
        return;
    }
    let server = Server::start(&[
        "--echo",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
        "--max-buffered",
        "1048576",
        "--allow",
        "127.0.0.1/32",
    ]);
    let metrics = metrics_addr(&server);
    let dir = std::env::temp_dir().join(format!("minetd-prometheus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: minetd\n    static_configs:\n      - targets: ['{metrics}']\n"
        ),
    )
    .expect("write config");
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let _prometheus = Child(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={api}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    // Known traffic: 5 connections with 1,000 checked bytes each, one refusal.
    for n in 0..5u8 {
        let mut stream = connect(server.echo());
        let message = vec![n; 1000];
        stream.write_all(&message).expect("write");
        stream.shutdown(Shutdown::Write).expect("half-close");
        assert_eq!(read_to_eof(&mut stream), message);
    }
    let mut outsider = connect_from("127.0.0.2:0".parse().expect("addr"), server.echo());
    assert_eq!(read_to_eof(&mut outsider), b"");
    let up = prometheus_sees(api, "up{job=\"minetd\"}", |v| v == 1.0);
    assert_eq!(up, 1.0);
    prometheus_sees(
        api,
        "minetd_connections_accepted_total{service=\"echo\"}",
        |v| v == 5.0,
    );
    prometheus_sees(api, "minetd_received_bytes_total{service=\"echo\"}", |v| {
        v == 5000.0
    });
    prometheus_sees(api, "minetd_sent_bytes_total{service=\"echo\"}", |v| {
        v == 5000.0
    });
    prometheus_sees(
        api,
        "minetd_connections_refused_total{service=\"echo\",reason=\"allow\"}",
        |v| v == 1.0,
    );
    prometheus_sees(api, "minetd_max_buffered_bytes", |v| v == 1_048_576.0);
    // Peers that never read make the server hold bytes; when they go, the
    // total returns to 0.
    let hostile = common::flood_with_non_readers(server.echo(), 40);
    let held = prometheus_sees(api, "minetd_buffered_bytes", |v| v > 0.0);
    assert!(held <= 1_048_576.0, "{held}");
    // 40 peers' worth of echo cannot fit in 1 MiB: the budget held reads back.
    prometheus_sees(api, "minetd_reads_held_back_total", |v| v > 0.0);
    for peer in hostile {
        common::reset(peer);
    }
    prometheus_sees(api, "minetd_buffered_bytes", |v| v == 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_metrics_address_in_use_or_unparsable_is_one_line() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let output = Command::new(common::server_bin())
        .args(["--echo", "127.0.0.1:0", "--metrics", &addr.to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("run minetd");
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(output.stdout, b"", "a listening line before failing");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        format!(
            "minetd: cannot listen on {addr} for metrics: Address already in use (os error 98)"
        )
    );
    let output = Command::new(common::server_bin())
        .args(["--metrics", "localhost:9100"])
        .output()
        .expect("run minetd");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("'localhost:9100'"), "{stderr}");
}
