//! What the benchmark shows: a live line on stderr while it runs (only on
//! a terminal) and the final report, as text or as the contract's JSON.

use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Mode, Options, Shared, Tally};
use crate::addr::Target;
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
    mode: Mode,
    /// Connections opened and confirmed (requested minus connect failures).
    connections: u64,
    size: usize,
    duration_s: f64,
    round_trips: u64,
    /// Round trips per second.
    rps: f64,
    /// Megabytes (10^6 bytes) per second each way: echoed payload only,
    /// without TCP/IP headers.
    mbps: f64,
    /// Closed-loop latency in microseconds: p50, p90, p99, p99.9, max.
    latency_us: [f64; 5],
    mismatches: u64,
    connect_failures: u64,
    errors: u64,
}

impl Report {
    pub(super) fn new(options: &Options, tally: &Tally, start: Instant) -> Report {
        let duration = tally
            .finished
            .map_or(Duration::ZERO, |end| end.saturating_duration_since(start));
        let duration_s = duration.as_secs_f64();
        let rps = if duration_s > 0.0 {
            tally.round_trips as f64 / duration_s
        } else {
            0.0
        };
        let latency = &tally.latency_ns;
        let us = |nanos: u64| {
            if latency.is_empty() {
                0.0
            } else {
                nanos as f64 / 1000.0
            }
        };
        Report {
            mode: options.mode,
            connections: tally.opened,
            size: options.size,
            duration_s,
            round_trips: tally.round_trips,
            rps,
            mbps: rps * options.size as f64 / 1e6,
            latency_us: [
                us(latency.value_at_quantile(0.50)),
                us(latency.value_at_quantile(0.90)),
                us(latency.value_at_quantile(0.99)),
                us(latency.value_at_quantile(0.999)),
                us(latency.max()),
            ],
            mismatches: tally.mismatches,
            connect_failures: tally.connect_failures,
            errors: tally.errors,
        }
    }

    /// The report as one JSON object, keys as in the contract.
    fn json(&self) -> String {
        let [p50, p90, p99, p999, max] = self.latency_us;
        format!(
            concat!(
                "{{\"connections\":{},\"size\":{},\"duration_s\":{:.3},\"round_trips\":{},",
                "\"rps\":{:.1},\"mbps\":{:.3},\"latency_us\":{{\"p50\":{:.1},\"p90\":{:.1},",
                "\"p99\":{:.1},\"p999\":{:.1},\"max\":{:.1}}},\"mismatches\":{},",
                "\"connect_failures\":{},\"errors\":{}}}\n"
            ),
            self.connections,
            self.size,
            self.duration_s,
            self.round_trips,
            self.rps,
            self.mbps,
            p50,
            p90,
            p99,
            p999,
            max,
            self.mismatches,
            self.connect_failures,
            self.errors,
        )
    }

    /// The report as aligned text for people.
    fn text(&self, target: &Target, threads: usize) -> String {
        let [p50, p90, p99, p999, max] = self.latency_us;
        let threads = if threads == 1 {
            "1 thread".to_string()
        } else {
            format!("{threads} threads")
        };
        let (moved, direction, measured) = match self.mode {
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
        };
        format!(
            "bench {target}: {} connections, {}-byte messages, {threads}, {:.2} s\n\
             {moved:18}{} ({:.1} per second)\n\
             throughput        {:.3} MB/s {direction} (10^6 bytes of payload)\n\
             latency (µs)      p50 {p50:.1}  p90 {p90:.1}  p99 {p99:.1}  p99.9 {p999:.1}  max {max:.1}\n\
             {:18}{measured}\n\
             mismatches        {}\n\
             connect failures  {}\n\
             errors            {}\n",
            self.connections,
            self.size,
            self.duration_s,
            self.round_trips,
            self.rps,
            self.mbps,
            "",
            self.mismatches,
            self.connect_failures,
            self.errors,
        )
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
        report.json()
    } else {
        report.text(&options.target, threads)
    };
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
        Report {
            mode: Mode::Echo,
            connections: 10,
            size: 64,
            duration_s: 2.0,
            round_trips: 1000,
            rps: 500.0,
            mbps: 0.032,
            latency_us: [10.0, 20.0, 30.0, 40.0, 50.0],
            mismatches: 0,
            connect_failures: 0,
            errors: 0,
        }
    }

    #[test]
    fn json_has_the_contract_keys_in_order() {
        assert_eq!(
            report().json(),
            "{\"connections\":10,\"size\":64,\"duration_s\":2.000,\"round_trips\":1000,\
             \"rps\":500.0,\"mbps\":0.032,\"latency_us\":{\"p50\":10.0,\"p90\":20.0,\
             \"p99\":30.0,\"p999\":40.0,\"max\":50.0},\"mismatches\":0,\
             \"connect_failures\":0,\"errors\":0}\n"
        );
    }

    #[test]
    fn verdict_names_the_first_mismatch() {
        let mut tally = Tally::new().unwrap();
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
        assert!(report().verdict(&Tally::new().unwrap()).is_ok());
    }
}
