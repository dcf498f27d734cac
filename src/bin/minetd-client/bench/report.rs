//! What the benchmark shows: a live line on stderr while it runs (only on
//! a terminal) and the final report, as text or as the contract's JSON.

use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::{Mode, Options, Shared, Tally, hist};
use crate::error::Error;

/// How often the live line and the ramp progress are refreshed.
const LIVE_INTERVAL: Duration = Duration::from_secs(1);

/// The once-a-second progress line on stderr, drawn only on a terminal.
pub(super) struct LiveLine {
    enabled: bool,
    drawn: bool,
    last_at: Instant,
    last_round_trips: u64,
}

impl LiveLine {
    pub(super) fn new(enabled: bool) -> LiveLine {
        LiveLine {
            enabled,
            drawn: false,
            last_at: Instant::now(),
            last_round_trips: 0,
        }
    }

    /// Whether a second has passed since the last line.
    fn due(&self) -> bool {
        self.enabled && self.last_at.elapsed() >= LIVE_INTERVAL
    }

    pub(super) fn ramp(&mut self, attempted: usize, total: usize) {
        if self.due() {
            self.draw(&format!("opening connections: {attempted}/{total}"));
            self.last_at = Instant::now();
        }
    }

    pub(super) fn running(&mut self, start: Instant, shared: &Shared, size: usize) {
        if !self.due() {
            return;
        }
        let round_trips = shared.round_trips.load(Ordering::Relaxed);
        let rate =
            (round_trips - self.last_round_trips) as f64 / self.last_at.elapsed().as_secs_f64();
        self.draw(&format!(
            "{:.0} s  {rate:.0} round trips/s  {:.1} MB/s each way  mismatches {}  errors {}",
            start.elapsed().as_secs_f64(),
            rate * size as f64 / 1e6,
            shared.mismatches.load(Ordering::Relaxed),
            shared.errors.load(Ordering::Relaxed),
        ));
        self.last_at = Instant::now();
        self.last_round_trips = round_trips;
    }

    /// Replaces the line on the terminal (`\r`, then erase to its end).
    fn draw(&mut self, text: &str) {
        let _ = write!(io::stderr(), "\r{text}\x1b[K");
        self.drawn = true;
    }

    /// Erases the line before the report is printed.
    pub(super) fn clear(&self) {
        if self.drawn {
            let _ = write!(io::stderr(), "\r\x1b[K");
        }
    }
}

/// The figures the benchmark reports.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Report {
    pub(super) mode: Mode,
    /// Connections opened and confirmed (requested minus connect failures).
    pub(super) connections: u64,
    pub(super) size: usize,
    pub(super) duration_s: f64,
    pub(super) round_trips: u64,
    /// Round trips per second.
    pub(super) rps: f64,
    /// Megabytes (10^6 bytes) per second each way: echoed payload only,
    /// without TCP/IP headers.
    pub(super) mbps: f64,
    /// Latency in microseconds: closed loop from the write, open loop from
    /// when each message was due.
    pub(super) latency: Histogram<u64>,
    /// Open loop: the target rate and the latency from the actual write.
    pub(super) rate: Option<f64>,
    pub(super) service: Option<Histogram<u64>>,
    pub(super) pipeline: usize,
    pub(super) mismatches: u64,
    pub(super) connect_failures: u64,
    pub(super) errors: u64,
    /// Measured messages whose whole answer was never checked: still in
    /// flight when the run ended (abandoned, not waited for), lost with a
    /// failed connection or, open loop, due but never sent for want of room.
    pub(super) unanswered: u64,
    /// UDP: datagrams counted lost, and echoes that came after their
    /// datagram was given up on (or a second time).
    pub(super) lost: u64,
    pub(super) late: u64,
}

/// p50, p90, p99, p99.9 and max of a histogram in microseconds (all 0 when
/// nothing was recorded).
pub(super) fn percentiles(histogram: &Histogram<u64>) -> [f64; 5] {
    if histogram.is_empty() {
        return [0.0; 5];
    }
    [
        histogram.value_at_quantile(0.50) as f64,
        histogram.value_at_quantile(0.90) as f64,
        histogram.value_at_quantile(0.99) as f64,
        histogram.value_at_quantile(0.999) as f64,
        histogram.max() as f64,
    ]
}

/// The percentiles as the JSON object `{"p50":…,"max":…}`.
fn percentiles_json(histogram: &Histogram<u64>) -> String {
    let [p50, p90, p99, p999, max] = percentiles(histogram);
    format!(
        "{{\"p50\":{p50:.1},\"p90\":{p90:.1},\"p99\":{p99:.1},\"p999\":{p999:.1},\"max\":{max:.1}}}"
    )
}

/// The percentiles as one line of text.
fn percentiles_text(histogram: &Histogram<u64>) -> String {
    let [p50, p90, p99, p999, max] = percentiles(histogram);
    format!("p50 {p50:.1}  p90 {p90:.1}  p99 {p99:.1}  p99.9 {p999:.1}  max {max:.1}")
}

impl Report {
    pub(super) fn new(options: &Options, tally: &Tally, start: Instant) -> Result<Report, Error> {
        let duration = tally
            .finished
            .map_or(Duration::ZERO, |end| end.saturating_duration_since(start));
        let duration_s = duration.as_secs_f64();
        let per_second = |n: f64| {
            if duration_s > 0.0 {
                n / duration_s
            } else {
                0.0
            }
        };
        let rps = per_second(tally.round_trips as f64);
        let (size, mbps) = match options.mode {
            // Replies differ in length: count the bytes read.
            Mode::Daytime => (0, per_second(tally.bytes_in as f64) / 1e6),
            _ => (options.size, rps * options.size as f64 / 1e6),
        };
        Ok(Report {
            mode: options.mode,
            connections: tally.opened,
            size,
            duration_s,
            round_trips: tally.round_trips,
            rps,
            mbps,
            latency: tally.latency.clone(),
            rate: options.rate,
            service: options.rate.map(|_| tally.service.clone()),
            pipeline: options.pipeline,
            mismatches: tally.mismatches,
            connect_failures: tally.connect_failures,
            errors: tally.errors,
            // A lost datagram was answered by nobody, but the run did not
            // abandon it: it has a count of its own.
            unanswered: tally
                .begun
                .saturating_sub(tally.round_trips)
                .saturating_sub(tally.lost),
            lost: tally.lost,
            late: tally.late,
        })
    }

    /// How long the measurement ran.
    pub(super) fn duration(&self) -> Duration {
        Duration::try_from_secs_f64(self.duration_s).unwrap_or_default()
    }

    /// The report as one JSON object, keys as in the contract.
    pub(super) fn json(&self) -> Result<String, Error> {
        let mut json = format!(
            concat!(
                "{{\"connections\":{},\"size\":{},\"duration_s\":{:.3},\"round_trips\":{},",
                "\"rps\":{:.1},\"mbps\":{:.3},\"latency_us\":{},\"mismatches\":{},",
                "\"connect_failures\":{},\"errors\":{},\"unanswered\":{},\"mode\":\"{}\""
            ),
            self.connections,
            self.size,
            self.duration_s,
            self.round_trips,
            self.rps,
            self.mbps,
            percentiles_json(&self.latency),
            self.mismatches,
            self.connect_failures,
            self.errors,
            self.unanswered,
            self.mode.name(),
        );
        if self.mode == Mode::UdpEcho {
            json.push_str(&format!(",\"lost\":{},\"late\":{}", self.lost, self.late));
        }
        if let Some(rate) = self.rate {
            json.push_str(&format!(",\"rate\":{rate}"));
        }
        if let Some(service) = &self.service {
            json.push_str(&format!(",\"service_us\":{}", percentiles_json(service)));
        }
        json.push_str(&format!(
            ",\"histogram\":\"{}\"}}\n",
            hist::encode(&self.latency)?
        ));
        Ok(json)
    }

    /// The report as aligned text for people, under `title`.
    pub(super) fn text(&self, title: &str) -> String {
        let (moved, direction, measured) = match self.mode {
            Mode::Echo if self.rate.is_some() => (
                "round trips",
                "each way",
                "open loop: from each message's scheduled send to its full echo",
            ),
            Mode::Echo if self.pipeline > 1 => (
                "round trips",
                "each way",
                "closed loop: write to full echo, --pipeline messages in flight per connection",
            ),
            Mode::Echo => (
                "round trips",
                "each way",
                "closed loop: write to full echo, one message in flight per connection",
            ),
            Mode::Discard => (
                "messages sent",
                "to the server",
                "each message's blocking write, connections in turn",
            ),
            Mode::Chargen => (
                "messages read",
                "from the server",
                "each message's blocking read, connections in turn",
            ),
            Mode::Daytime => (
                "connections made",
                "from the server",
                "from the start of connect to the server's close",
            ),
            Mode::UdpEcho if self.rate.is_some() => (
                "round trips",
                "each way",
                "open loop: from each datagram's scheduled send to its checked echo",
            ),
            Mode::UdpEcho => (
                "round trips",
                "each way",
                "closed loop: send to checked echo, one datagram in flight per socket",
            ),
        };
        let (messages, connections) = match self.mode {
            Mode::Daytime => ("one daytime line each".to_string(), "connections"),
            Mode::UdpEcho => (format!("{}-byte datagrams", self.size), "sockets"),
            _ => (format!("{}-byte messages", self.size), "connections"),
        };
        let mut text = format!(
            "{title}: {} {connections}, {messages}, {:.2} s\n\
             {moved:18}{} ({:.1} per second)\n\
             throughput        {:.3} MB/s {direction} (10^6 bytes of payload)\n\
             latency (µs)      {}\n\
             {:18}{measured}\n",
            self.connections,
            self.duration_s,
            self.round_trips,
            self.rps,
            self.mbps,
            percentiles_text(&self.latency),
            "",
        );
        if let (Some(rate), Some(service)) = (self.rate, &self.service) {
            let actual = match self.mode {
                Mode::UdpEcho => "datagram's actual send",
                _ => "message's actual write",
            };
            text.push_str(&format!(
                "service (µs)      {}\n\
                 {:18}from each {actual}; target {rate} per second\n",
                percentiles_text(service),
                ""
            ));
        }
        text.push_str(&format!(
            "mismatches        {}\n\
             connect failures  {}\n\
             errors            {}\n\
             unanswered        {}\n",
            self.mismatches, self.connect_failures, self.errors, self.unanswered,
        ));
        if self.mode == Mode::UdpEcho {
            text.push_str(&format!(
                "lost              {}\n\
                 late              {}\n",
                self.lost, self.late
            ));
        }
        text
    }

    /// One row of the sweep's table (with its header first).
    fn row(&self, header: bool) -> String {
        let [p50, p90, p99, p999, max] = percentiles(&self.latency);
        let mut text = String::new();
        if header {
            text.push_str(&format!(
                "{:>11} {:>12} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8} {:>10}\n",
                "connections",
                "round_trips",
                "rps",
                "p50_us",
                "p90_us",
                "p99_us",
                "p999_us",
                "max_us",
                "mismatches",
                "cfail",
                "errors",
                "unanswered"
            ));
            if self.mode == Mode::UdpEcho {
                text.insert_str(text.len() - 1, &format!(" {:>10} {:>10}", "lost", "late"));
            }
        }
        text.push_str(&format!(
            "{:>11} {:>12} {:>12.1} {p50:>10.1} {p90:>10.1} {p99:>10.1} {p999:>10.1} {max:>10.1} {:>10} {:>8} {:>8} {:>10}\n",
            self.connections,
            self.round_trips,
            self.rps,
            self.mismatches,
            self.connect_failures,
            self.errors,
            self.unanswered,
        ));
        if self.mode == Mode::UdpEcho {
            text.insert_str(
                text.len() - 1,
                &format!(" {:>10} {:>10}", self.lost, self.late),
            );
        }
        text
    }

    /// Says on stderr when the open loop fell short of its rate.
    fn warn_if_short(&self) {
        if let Some(rate) = self.rate
            && self.rps < 0.95 * rate
        {
            let _ = writeln!(
                io::stderr(),
                "minetd-client: bench achieved {:.1} round trips per second, {:.1}% of --rate {rate}",
                self.rps,
                100.0 * self.rps / rate
            );
        }
    }

    /// Success, or the one-line failure naming the first of each problem.
    pub(super) fn verdict(&self, tally: &Tally) -> Result<(), Error> {
        if self.mismatches + self.connect_failures + self.errors == 0 {
            return Ok(());
        }
        let mut line = format!(
            "bench: {}, {}, {}",
            count(self.mismatches, "mismatch", "mismatches"),
            count(self.connect_failures, "connect failure", "connect failures"),
            count(self.errors, "error", "errors"),
        );
        for (what, first) in [
            ("mismatch", &tally.first_mismatch),
            ("connect failure", &tally.first_connect_failure),
            ("error", &tally.first_error),
        ] {
            if let Some(first) = first {
                line.push_str(&format!("; first {what}: {first}"));
            }
        }
        Err(Error::Failed(line))
    }
}

/// `n` and the noun in the right number: `1 error`, `2 errors`.
fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Prints the report on stdout; a closed stdout is not an error.
pub(super) fn print(report: &Report, options: &Options) -> Result<(), Error> {
    let threads = options.threads.clamp(1, options.connections);
    let text = if options.json {
        report.json()?
    } else {
        let threads = if threads == 1 {
            "1 thread".to_string()
        } else {
            format!("{threads} threads")
        };
        report.text(&format!("bench {} ({threads})", options.target))
    };
    report.warn_if_short();
    write_stdout(&text)
}

/// Prints one run of a sweep: a JSON line, or a row of the table.
pub(super) fn print_sweep_row(
    report: &Report,
    options: &Options,
    first: bool,
) -> Result<(), Error> {
    let text = if options.json {
        report.json()?
    } else {
        report.row(first)
    };
    report.warn_if_short();
    write_stdout(&text)
}

/// Writes `text` to stdout; a closed stdout is not an error.
pub(super) fn write_stdout(text: &str) -> Result<(), Error> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(err) if err.kind() != io::ErrorKind::BrokenPipe => Err(Error::Io {
            context: "cannot write to stdout".to_string(),
            source: err,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let mut latency = hist::new_histogram().unwrap();
        for value in [10, 20, 30, 40, 50] {
            latency.record_n(value, 200).unwrap();
        }
        Report {
            mode: Mode::Echo,
            connections: 10,
            size: 64,
            duration_s: 2.0,
            round_trips: 1000,
            rps: 500.0,
            mbps: 0.032,
            latency,
            rate: None,
            service: None,
            pipeline: 1,
            mismatches: 0,
            connect_failures: 0,
            errors: 0,
            unanswered: 3,
            lost: 0,
            late: 0,
        }
    }

    #[test]
    fn json_has_the_contract_keys_in_order() {
        let json = report().json().unwrap();
        let (head, histogram) = json.split_once(",\"histogram\":\"").unwrap();
        assert_eq!(
            head,
            "{\"connections\":10,\"size\":64,\"duration_s\":2.000,\"round_trips\":1000,\
             \"rps\":500.0,\"mbps\":0.032,\"latency_us\":{\"p50\":30.0,\"p90\":50.0,\
             \"p99\":50.0,\"p999\":50.0,\"max\":50.0},\"mismatches\":0,\
             \"connect_failures\":0,\"errors\":0,\"unanswered\":3,\"mode\":\"echo\""
        );
        let encoded = histogram.strip_suffix("\"}\n").unwrap();
        assert_eq!(hist::decode(encoded).unwrap().len(), 1000);
    }

    #[test]
    fn open_loop_json_adds_rate_and_service() {
        let mut report = report();
        report.rate = Some(2500.0);
        report.service = Some(report.latency.clone());
        let json = report.json().unwrap();
        assert!(
            json.contains(",\"mode\":\"echo\",\"rate\":2500,\"service_us\":{\"p50\":30.0,"),
            "{json}"
        );
    }

    #[test]
    fn udp_json_adds_lost_and_late_after_the_mode() {
        let mut report = report();
        report.mode = Mode::UdpEcho;
        report.lost = 4;
        report.late = 2;
        let json = report.json().unwrap();
        assert!(
            json.contains(",\"unanswered\":3,\"mode\":\"udp-echo\",\"lost\":4,\"late\":2,"),
            "{json}"
        );
        let text = report.text("bench");
        assert!(text.contains("10 sockets, 64-byte datagrams"), "{text}");
        assert!(
            text.contains("\nlost              4\nlate              2\n"),
            "{text}"
        );
        let row = report.row(true);
        let lines: Vec<&str> = row.lines().collect();
        assert!(lines[0].ends_with("       lost       late"), "{row}");
        assert!(lines[1].ends_with("          4          2"), "{row}");
    }

    #[test]
    fn verdict_names_the_first_mismatch() {
        let mut tally = Tally::new(false, Instant::now()).unwrap();
        tally.mismatch(7, 3, b"abc", b"abd");
        let mut report = report();
        report.mismatches = 1;
        let err = report.verdict(&tally).unwrap_err().to_string();
        assert!(
            err.starts_with("bench: 1 mismatch, 0 connect failures, 0 errors;"),
            "{err}"
        );
        assert!(
            err.contains("conn 7 round 3: byte 2 of 3 is 0x64, expected 0x63"),
            "{err}"
        );
    }

    #[test]
    fn clean_run_passes() {
        assert!(
            report()
                .verdict(&Tally::new(false, Instant::now()).unwrap())
                .is_ok()
        );
    }
}
