//! `minetd-client`'s commands against the real `minetd` (and, where the
//! server must misbehave or speak HTTP, tiny servers started in the test),
//! checking the exact bytes on stdout, the one line on stderr and the exit
//! status.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::report::client_command as client;
use common::{STEP, Server};

/// Runs `command` with `input` on stdin, failing the test if it runs longer
/// than `limit`.
fn run_with_input(mut command: Command, input: &[u8], limit: Duration) -> Output {
    command.stdin(Stdio::piped());
    let mut child = command.spawn().expect("spawn minetd-client");
    let mut stdin = child.stdin.take().expect("stdin piped");
    let input = input.to_vec();
    // A separate writer: the client's stdout pipe must be drained meanwhile.
    thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    common::output_within(child, limit)
}

/// Runs `command` to completion within `limit`.
fn run(command: Command, limit: Duration) -> Output {
    let mut command = command;
    common::output_within(command.spawn().expect("spawn minetd-client"), limit)
}

/// stderr as text.
fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A loopback listener on port 0 whose first connection is handed to
/// `handle` on its own thread.
fn serve_one(handle: impl FnOnce(TcpStream) + Send + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind test server");
    let addr = listener.local_addr().expect("local addr");
    thread::spawn(move || {
        if let Ok((stream, _)) = listener.accept() {
            stream.set_read_timeout(Some(STEP)).expect("read timeout");
            stream.set_write_timeout(Some(STEP)).expect("write timeout");
            handle(stream);
        }
    });
    addr
}

/// An address where nothing listens: a port the OS just handed out and
/// took back.
fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr")
}

#[test]
fn echo_returns_piped_nul_and_letters_exactly() {
    let server = Server::start(&["--echo", "127.0.0.1:0"]);
    let addr = server.echo().to_string();
    let output = run_with_input(client(&["echo", &addr]), b"a\0b", STEP);
    assert!(output.status.success(), "stderr: {}", stderr_of(&output));
    assert_eq!(output.stdout, b"a\0b");
    assert_eq!(stderr_of(&output), "");
}

#[test]
fn echo_returns_megabytes_of_binary_unchanged() {
    let server = Server::start(&["--echo", "127.0.0.1:0"]);
    let addr = server.echo().to_string();
    let input = common::pseudo_random_bytes(3 << 20, 7);
    let output = run_with_input(client(&["echo", &addr]), &input, STEP * 3);
    assert!(output.status.success(), "stderr: {}", stderr_of(&output));
    assert_eq!(output.stdout.len(), input.len());
    assert!(output.stdout == input, "echoed bytes differ");
}

#[test]
fn echo_prints_each_line_while_input_is_still_open() {
    let server = Server::start(&["--echo", "127.0.0.1:0"]);
    let addr = server.echo().to_string();
    let mut command = client(&["echo", &addr]);
    command.stdin(Stdio::piped());
    let mut child = command.spawn().expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for _ in 0..2 {
            let mut line = String::new();
            let _ = stdout.read_line(&mut line);
            let _ = tx.send(line);
        }
    });
    for typed in ["hello\n", "world\n"] {
        stdin.write_all(typed.as_bytes()).expect("type a line");
        let echoed = rx
            .recv_timeout(STEP)
            .expect("line echoed before end of input");
        assert_eq!(echoed, typed);
    }
    drop(stdin);
    let output = common::output_within(child, STEP);
    assert!(output.status.success(), "stderr: {}", stderr_of(&output));
}

#[test]
fn echo_reports_a_server_that_closes_before_the_end_of_input() {
    let addr = serve_one(drop).to_string();
    let mut command = client(&["echo", &addr]);
    command.stdin(Stdio::piped());
    let mut child = command.spawn().expect("spawn");
    let stdin = child.stdin.take(); // held open: input has not ended
    let output = common::output_within(child, STEP);
    drop(stdin);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr_of(&output),
        format!("minetd-client: {addr} closed the connection before the end of input\n")
    );
}

#[test]
fn echo_times_out_when_the_server_never_answers() {
    let addr = serve_one(|mut stream| {
        // Read and keep everything, never answer, never close.
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
        thread::sleep(STEP);
    })
    .to_string();
    let started = Instant::now();
    let output = run_with_input(client(&["echo", &addr, "--timeout", "0.5"]), b"x", STEP);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr_of(&output),
        format!("minetd-client: timed out after 0.5 s receiving from {addr} (--timeout)\n")
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn daytime_prints_a_ctime_line_within_seconds_of_now() {
    let server = Server::start(&["--daytime", "127.0.0.1:0"]);
    let addr = server.daytime().to_string();
    let output = run(client(&["daytime", &addr]), STEP);
    assert!(output.status.success(), "stderr: {}", stderr_of(&output));
    let line = String::from_utf8(output.stdout).expect("ASCII line");
    let printed = parse_ctime(&line).unwrap_or_else(|| panic!("not a ctime line: {line:?}"));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    assert!(
        (now - printed).abs() <= 5,
        "{line:?} is {}s from now",
        now - printed
    );
}

/// Seconds since the epoch of a `Www Mmm dd hh:mm:ss yyyy\r\n` line, which
/// must match `^[A-Z][a-z]{2} [A-Z][a-z]{2} [ 1-3][0-9] \d\d:\d\d:\d\d \d{4}\r\n$`
/// and name the right weekday.
fn parse_ctime(line: &str) -> Option<i64> {
    let bytes = line.as_bytes();
    let shape = b"Aaa Aaa _9 99:99:99 9999\r\n";
    if bytes.len() != shape.len() {
        return None;
    }
    let fits = bytes.iter().zip(shape).all(|(&b, &want)| match want {
        b'A' => b.is_ascii_uppercase(),
        b'a' => b.is_ascii_lowercase(),
        b'_' => b == b' ' || (b'1'..=b'3').contains(&b),
        b'9' => b.is_ascii_digit(),
        other => b == other,
    });
    if !fits {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    let number = |range: std::ops::Range<usize>| line[range].trim().parse::<i64>().ok();
    let month = MONTHS.iter().position(|m| *m == &line[4..7])? as i64 + 1;
    let days = days_from_civil(number(20..24)?, month, number(8..10)?);
    if WEEKDAYS[days.rem_euclid(7) as usize] != &line[0..3] {
        return None;
    }
    let (h, m, s) = (number(11..13)?, number(14..16)?, number(17..19)?);
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12; // March = 0
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[test]
fn ctime_check_accepts_known_lines_and_rejects_others() {
    assert_eq!(parse_ctime("Thu Jan  1 00:00:00 1970\r\n"), Some(0));
    assert_eq!(
        parse_ctime("Tue Feb 29 00:00:00 2000\r\n"),
        Some(951_782_400)
    );
    assert_eq!(
        parse_ctime("Mon Nov  2 15:38:54 2026\r\n"),
        Some(1_793_633_934)
    );
    assert_eq!(parse_ctime("Mon Nov  2 15:38:54 2026\n"), None);
    assert_eq!(parse_ctime("Tue Nov  2 15:38:54 2026\r\n"), None);
    assert_eq!(parse_ctime("Mon Nov 02 15:38:54 2026\r\n"), None);
}

#[test]
fn daytime_into_a_closed_stdout_exits_0() {
    let (closed_tx, closed_rx) = mpsc::channel::<()>();
    let addr = serve_one(move |mut stream| {
        // Answer only once the test has closed the client's stdout, so the
        // client's write meets a broken pipe.
        let _ = closed_rx.recv_timeout(STEP);
        let _ = stream.write_all(b"Mon Nov  2 15:38:54 2026\r\n");
    })
    .to_string();
    let mut child = client(&["daytime", &addr]).spawn().expect("spawn");
    drop(child.stdout.take());
    closed_tx.send(()).expect("server waiting");
    let output = common::output_within(child, STEP);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}",
        stderr_of(&output)
    );
    assert_eq!(stderr_of(&output), "");
}

#[test]
fn request_sends_escaped_bytes_and_half_closes() {
    let server = Server::start(&["--echo", "127.0.0.1:0"]);
    let addr = server.echo().to_string();
    let data = r"GET\r\n\t\\\0\x7f\xFF.";
    let output = run(client(&["request", &addr, data, "--half-close"]), STEP);
    assert!(output.status.success(), "stderr: {}", stderr_of(&output));
    assert_eq!(output.stdout, b"GET\r\n\t\\\0\x7f\xff.");
}

#[test]
fn request_without_half_close_keeps_sending_side_open() {
    let (seen_tx, seen_rx) = mpsc::channel();
    let addr = serve_one(move |mut stream| {
        let mut got = [0; 4];
        let _ = stream.read_exact(&mut got);
        // The client must not have half-closed: a read now would block.
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut more = [0; 1];
        let after = stream.read(&mut more).map_err(|e| e.kind());
        let _ = seen_tx.send((got, after));
        let _ = stream.write_all(b"bye");
    })
    .to_string();
    let output = run(client(&["request", &addr, "ping"]), STEP);
    assert!(output.status.success(), "stderr: {}", stderr_of(&output));
    assert_eq!(output.stdout, b"bye");
    let (got, after) = seen_rx.recv_timeout(STEP).expect("server saw the request");
    assert_eq!(&got, b"ping");
    assert_eq!(
        after,
        Err(std::io::ErrorKind::WouldBlock),
        "client half-closed"
    );
}

#[test]
fn request_with_unknown_escape_is_a_usage_error() {
    let output = run(client(&["request", "127.0.0.1:7", r"a\qb"]), STEP);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        stderr_of(&output),
        "minetd-client: invalid value 'a\\qb' for '<DATA>': unknown escape '\\q'\n"
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn request_with_bad_hex_escape_is_a_usage_error() {
    let output = run(client(&["request", "127.0.0.1:7", r"\xZZ"]), STEP);
    assert_eq!(output.status.code(), Some(2));
    let stderr = stderr_of(&output);
    assert!(stderr.contains(r"'\xZZ'"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn head_sends_head_with_host_and_prints_the_whole_response() {
    const RESPONSE: &[u8] = b"HTTP/1.0 200 OK\r\nServer: test\r\nContent-Length: 5\r\n\r\n";
    let (request_tx, request_rx) = mpsc::channel();
    let addr = serve_one(move |mut stream| {
        let mut request = Vec::new();
        let mut byte = [0; 1];
        while !request.ends_with(b"\r\n\r\n") && stream.read_exact(&mut byte).is_ok() {
            request.push(byte[0]);
        }
        let _ = request_tx.send(request);
        let _ = stream.write_all(RESPONSE);
    });
    let output = run(client(&["head", &addr.to_string(), "/index.html"]), STEP);
    assert!(output.status.success(), "stderr: {}", stderr_of(&output));
    assert_eq!(output.stdout, RESPONSE);
    let request = request_rx.recv_timeout(STEP).expect("request seen");
    let expected = format!("HEAD /index.html HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    assert_eq!(String::from_utf8_lossy(&request), expected);
}

#[test]
fn cannot_connect_prints_one_line_and_exits_1() {
    let addr = closed_port().to_string();
    let output = run(client(&["daytime", &addr]), STEP);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr_of(&output),
        format!("minetd-client: cannot connect to {addr}: Connection refused (os error 111)\n")
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn silent_server_times_out_instead_of_hanging() {
    let addr = serve_one(|_stream| thread::sleep(STEP)).to_string();
    let started = Instant::now();
    let output = run(client(&["daytime", &addr, "--timeout", "0.3"]), STEP);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr_of(&output),
        format!("minetd-client: timed out after 0.3 s receiving from {addr} (--timeout)\n")
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn bad_address_is_a_usage_error_naming_it() {
    let output = run(client(&["daytime", "localhost"]), STEP);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        stderr_of(&output),
        "minetd-client: invalid value 'localhost' for '[ADDR]': expected HOST:PORT\n"
    );
}

#[test]
fn unknown_option_is_a_one_line_usage_error() {
    let output = run(client(&["daytime", "--bogus"]), STEP);
    assert_eq!(output.status.code(), Some(2));
    let stderr = stderr_of(&output);
    assert!(
        stderr.starts_with("minetd-client: ") && stderr.contains("--bogus"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn help_names_every_command_and_exits_0() {
    let output = run(client(&["--help"]), STEP);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for command in ["echo", "daytime", "request", "head", "bench", "--timeout"] {
        assert!(
            help.contains(command),
            "{command} missing from help:\n{help}"
        );
    }
}

#[test]
fn hostnames_are_resolved() {
    let server = Server::start(&["--echo", "127.0.0.1:0"]);
    let addr = format!("localhost:{}", server.echo().port());
    let output = run(client(&["request", &addr, "hi", "--half-close"]), STEP);
    assert!(output.status.success(), "stderr: {}", stderr_of(&output));
    assert_eq!(output.stdout, b"hi");
}
