//! daytime (RFC 867) against the real `minetd`: one line of the current UTC
//! time in the chosen format, then the connection closes, even for a client
//! that talks first. Expected lines are computed here, independently of the
//! server's own calendar code.

mod common;

use std::io::{Read, Write};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Server, connect, read_to_eof};

const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// The daytime formats, each with the shape of its line: `A` an uppercase
/// letter, `a` a lowercase one, `9` a digit, `_` a space or a digit 1–3
/// (ctime's space-padded day), anything else itself.
const FORMATS: [(&str, &str); 3] = [
    ("ctime", "Aaa Aaa _9 99:99:99 9999\r\n"),
    ("rfc5322", "Aaa, 99 Aaa 9999 99:99:99 +0000\r\n"),
    ("rfc3339", "9999-99-99T99:99:99Z\r\n"),
];

/// A UTC calendar time, counted out year by year and month by month.
struct Utc {
    year: u64,
    /// 1..=12
    month: usize,
    /// 1..=31
    day: u64,
    hour: u64,
    minute: u64,
    second: u64,
    /// 0 = Sunday
    weekday: usize,
}

fn is_leap(year: u64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

impl Utc {
    fn at(secs: u64) -> Utc {
        let mut days = secs / 86_400;
        // 1970-01-01 was a Thursday.
        let weekday = ((days + 4) % 7) as usize;
        let mut year = 1970;
        loop {
            let in_year = if is_leap(year) { 366 } else { 365 };
            if days < in_year {
                break;
            }
            days -= in_year;
            year += 1;
        }
        let february = if is_leap(year) { 29 } else { 28 };
        let lengths = [31, february, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        let mut month = 0;
        while days >= lengths[month] {
            days -= lengths[month];
            month += 1;
        }
        let in_day = secs % 86_400;
        Utc {
            year,
            month: month + 1,
            day: days + 1,
            hour: in_day / 3600,
            minute: in_day / 60 % 60,
            second: in_day % 60,
            weekday,
        }
    }

    /// The daytime line in `format`, `\r\n` included.
    fn line(&self, format: &str) -> String {
        let weekday = WEEKDAYS[self.weekday];
        let month = MONTHS[self.month - 1];
        let time = format!("{:02}:{:02}:{:02}", self.hour, self.minute, self.second);
        match format {
            "ctime" => format!("{weekday} {month} {:>2} {time} {}\r\n", self.day, self.year),
            "rfc5322" => format!(
                "{weekday}, {:02} {month} {} {time} +0000\r\n",
                self.day, self.year
            ),
            "rfc3339" => format!(
                "{:04}-{:02}-{:02}T{time}Z\r\n",
                self.year, self.month, self.day
            ),
            other => panic!("no format {other}"),
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Whether `line` has `shape` (see [`FORMATS`]).
fn has_shape(line: &str, shape: &str) -> bool {
    line.len() == shape.len()
        && line.bytes().zip(shape.bytes()).all(|(b, want)| match want {
            b'A' => b.is_ascii_uppercase(),
            b'a' => b.is_ascii_lowercase(),
            b'9' => b.is_ascii_digit(),
            b'_' => b == b' ' || (b'1'..=b'3').contains(&b),
            other => b == other,
        })
}

/// Connects to a daytime server started with `format` and returns all it
/// sends, checking that the line is the time within 2 s of the exchange.
fn daytime_line(format: &str) -> String {
    let server = Server::start(&["--daytime", "127.0.0.1:0", "--daytime-format", format]);
    let before = now_secs();
    let mut stream = connect(server.daytime());
    let received = read_to_eof(&mut stream);
    let after = now_secs();
    let line = String::from_utf8(received).expect("ASCII line");
    let candidates: Vec<String> = (before - 2..=after + 2)
        .map(|secs| Utc::at(secs).line(format))
        .collect();
    assert!(
        candidates.contains(&line),
        "{format} line {line:?} is not one of {candidates:?}"
    );
    line
}

#[test]
fn expected_lines_match_known_instants() {
    let cases: [(u64, [&str; 3]); 4] = [
        (
            0,
            [
                "Thu Jan  1 00:00:00 1970\r\n",
                "Thu, 01 Jan 1970 00:00:00 +0000\r\n",
                "1970-01-01T00:00:00Z\r\n",
            ],
        ),
        (
            951_782_400,
            [
                "Tue Feb 29 00:00:00 2000\r\n",
                "Tue, 29 Feb 2000 00:00:00 +0000\r\n",
                "2000-02-29T00:00:00Z\r\n",
            ],
        ),
        (
            1_793_633_934,
            [
                "Mon Nov  2 15:38:54 2026\r\n",
                "Mon, 02 Nov 2026 15:38:54 +0000\r\n",
                "2026-11-02T15:38:54Z\r\n",
            ],
        ),
        (
            4_107_542_400,
            [
                "Mon Mar  1 00:00:00 2100\r\n",
                "Mon, 01 Mar 2100 00:00:00 +0000\r\n",
                "2100-03-01T00:00:00Z\r\n",
            ],
        ),
    ];
    for (secs, lines) in cases {
        for ((format, shape), line) in FORMATS.iter().zip(lines) {
            assert_eq!(Utc::at(secs).line(format), line, "{format} at {secs}");
            assert!(has_shape(line, shape), "{line:?} against {shape:?}");
        }
    }
    assert!(!has_shape("Mon Nov 02 15:38:54 2026\r\n", FORMATS[0].1));
    assert!(!has_shape("Mon Nov  2 15:38:54 2026\n", FORMATS[0].1));
}

#[test]
fn ctime_line_is_the_current_utc_time() {
    let line = daytime_line("ctime");
    assert!(has_shape(&line, FORMATS[0].1), "{line:?}");
}

#[test]
fn rfc5322_line_is_the_current_utc_time() {
    let line = daytime_line("rfc5322");
    assert!(has_shape(&line, FORMATS[1].1), "{line:?}");
}

#[test]
fn rfc3339_line_is_the_current_utc_time() {
    let line = daytime_line("rfc3339");
    assert!(has_shape(&line, FORMATS[2].1), "{line:?}");
}

#[test]
fn default_format_is_ctime() {
    let server = Server::start(&["--daytime", "127.0.0.1:0"]);
    let mut stream = connect(server.daytime());
    let line = String::from_utf8(read_to_eof(&mut stream)).expect("ASCII line");
    assert!(has_shape(&line, FORMATS[0].1), "{line:?}");
}

#[test]
fn connection_closes_after_exactly_one_line() {
    let server = Server::start(&["--daytime", "127.0.0.1:0"]);
    for _ in 0..3 {
        let mut stream = connect(server.daytime());
        let received = read_to_eof(&mut stream);
        let text = String::from_utf8(received).expect("ASCII");
        assert!(text.ends_with("\r\n"), "{text:?}");
        assert_eq!(text.matches('\n').count(), 1, "{text:?}");
        assert_eq!(text.matches('\r').count(), 1, "{text:?}");
    }
}

#[test]
fn client_that_sends_first_still_gets_the_line_then_eof() {
    let server = Server::start(&["--daytime", "127.0.0.1:0"]);
    let mut stream = connect(server.daytime());
    stream
        .write_all(&common::pseudo_random_bytes(1024, 3))
        .expect("send a request");
    // Let the line and our bytes cross before reading anything.
    thread::sleep(Duration::from_millis(200));
    let mut received = Vec::new();
    let read = stream.read_to_end(&mut received);
    assert!(
        read.is_ok(),
        "{read:?} after receiving {received:?}: reset instead of EOF"
    );
    let line = String::from_utf8(received).expect("ASCII line");
    assert!(has_shape(&line, FORMATS[0].1), "{line:?}");
}

#[test]
fn client_that_keeps_sending_after_the_line_still_gets_eof() {
    let server = Server::start(&["--daytime", "127.0.0.1:0"]);
    let mut stream = connect(server.daytime());
    let mut line = [0; 26];
    stream.read_exact(&mut line).expect("the line");
    // Had the server closed rather than lingered, the first write would be
    // answered with a reset and a later one would fail.
    for seed in 1..=4 {
        stream
            .write_all(&common::pseudo_random_bytes(16 * 1024, seed))
            .expect("the server reads and discards");
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(read_to_eof(&mut stream), b"");
}
