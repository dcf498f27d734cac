//! The latency histograms and their wire forms: the V2 compressed, base64
//! text that `--json` carries and `merge` reads back, and the interval log
//! that `--hist-log` writes. HdrHistogram's own serializer and log writer
//! do the encoding, so HdrHistogram's tools read what we write.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};

use crate::error::Error;

/// Histogram range, in microseconds: 1 µs to 1 hour at 3 significant
/// digits, so a whole second's stall is still recorded to the millisecond.
const LATENCY_MAX_US: u64 = 3_600_000_000;

/// An empty latency histogram in microseconds.
pub(crate) fn new_histogram() -> Result<Histogram<u64>, Error> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
        .map_err(|err| Error::Failed(format!("cannot make a histogram: {err}")))
}

/// Adds `other` into `into`; both come from [`new_histogram`], or were
/// decoded, and auto-resize covers a wider range.
pub(crate) fn add(into: &mut Histogram<u64>, other: &Histogram<u64>) -> Result<(), Error> {
    into.add(other)
        .map_err(|err| Error::Failed(format!("cannot merge histograms: {err:?}")))
}

/// The duration in whole microseconds (rounded), as recorded.
pub(crate) fn micros(elapsed: Duration) -> u64 {
    let nanos = elapsed.as_nanos().saturating_add(500) / 1000;
    nanos.try_into().unwrap_or(u64::MAX)
}

/// The histogram as HdrHistogram's V2 compressed form in base64.
pub(crate) fn encode(histogram: &Histogram<u64>) -> Result<String, Error> {
    let mut bytes = Vec::new();
    V2DeflateSerializer::new()
        .serialize(histogram, &mut bytes)
        .map_err(|err| Error::Failed(format!("cannot encode the histogram: {err:?}")))?;
    Ok(BASE64.encode(bytes))
}

/// Decodes what [`encode`] (or any HdrHistogram V2 writer) produced.
pub(crate) fn decode(text: &str) -> Result<Histogram<u64>, String> {
    let bytes = BASE64
        .decode(text.trim())
        .map_err(|err| format!("the histogram is not base64: {err}"))?;
    let mut histogram: Histogram<u64> = Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|err| format!("the histogram is not HdrHistogram V2: {err:?}"))?;
    // Merged histograms may need a wider range than the first one had.
    histogram.auto(true);
    Ok(histogram)
}

/// An interval log file, created before the run so that a path that cannot
/// be written fails at once rather than after the whole run.
pub(crate) struct HistLog {
    path: PathBuf,
    file: BufWriter<File>,
}

impl HistLog {
    /// Creates (or truncates) the file.
    pub(crate) fn create(path: &Path) -> Result<HistLog, Error> {
        let file = File::create(path).map_err(|source| Error::Io {
            context: format!("cannot write --hist-log {}", path.display()),
            source,
        })?;
        Ok(HistLog {
            path: path.to_path_buf(),
            file: BufWriter::new(file),
        })
    }

    /// Writes one histogram per second of the run, which started at
    /// `start` (wall clock), with timestamps relative to it.
    pub(crate) fn write(
        mut self,
        start: SystemTime,
        intervals: &[Histogram<u64>],
        last_length: Duration,
    ) -> Result<(), Error> {
        let context = format!("cannot write --hist-log {}", self.path.display());
        let result = write_log(&mut self.file, start, intervals, last_length)
            .and_then(|()| self.file.flush());
        result.map_err(|source| Error::Io { context, source })
    }
}

/// The log as HdrHistogram's Java `HistogramLogWriter` prints it: format
/// version, start time, legend, then one line per interval.
fn write_log(
    out: &mut impl Write,
    start: SystemTime,
    intervals: &[Histogram<u64>],
    last_length: Duration,
) -> io::Result<()> {
    let since_epoch = start.duration_since(UNIX_EPOCH).unwrap_or_default();
    writeln!(out, "#[Histogram log format version 1.3]")?;
    writeln!(
        out,
        "#[StartTime: {:.3} (seconds since epoch), {}]",
        since_epoch.as_secs_f64(),
        java_date(since_epoch.as_secs())
    )?;
    writeln!(
        out,
        "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\""
    )?;
    // The crate's writer adds nothing before the intervals when given no
    // start time, base time or comments: the header above is ours.
    let mut serializer = V2DeflateSerializer::new();
    let mut writer = IntervalLogWriterBuilder::new().begin_log_with(out, &mut serializer)?;
    let second = Duration::from_secs(1);
    for (n, histogram) in intervals.iter().enumerate() {
        let length = if n + 1 == intervals.len() {
            last_length.min(second)
        } else {
            second
        };
        writer
            .write_histogram(histogram, second * n as u32, length, None)
            .map_err(|err| io::Error::other(err.to_string()))?;
    }
    Ok(())
}

/// `Tue Dec 01 20:21:00 UTC 2026`, as Java's `Date.toString` prints it in UTC.
fn java_date(unix_secs: u64) -> String {
    let ctime = minetd::daytime::line_at(
        minetd::config::DaytimeFormat::Ctime,
        i64::try_from(unix_secs).unwrap_or(0),
    );
    match ctime.split_whitespace().collect::<Vec<_>>()[..] {
        [weekday, month, day, time, year] => {
            format!("{weekday} {month} {day:0>2} {time} UTC {year}")
        }
        _ => ctime.trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips() {
        let mut histogram = new_histogram().unwrap();
        for value in [1, 50, 50, 999, 1_000_000] {
            histogram.record(value).unwrap();
        }
        let text = encode(&histogram).unwrap();
        let back = decode(&text).unwrap();
        assert_eq!(back.len(), 5);
        assert_eq!(back.max(), histogram.max());
        assert_eq!(back.value_at_quantile(0.5), 50);
        assert!(decode("not base64!").is_err());
        assert!(decode("aGVsbG8=").is_err());
    }

    #[test]
    fn java_date_pads_the_day() {
        // 2026-11-02 15:38:54 UTC, a Monday.
        assert_eq!(java_date(1_793_633_934), "Mon Nov 02 15:38:54 UTC 2026");
    }

    #[test]
    fn log_has_the_java_header_then_intervals() {
        let mut histogram = new_histogram().unwrap();
        histogram.record(42).unwrap();
        let mut out = Vec::new();
        let start = UNIX_EPOCH + Duration::from_millis(1_793_633_934_250);
        write_log(
            &mut out,
            start,
            &[histogram.clone(), histogram],
            Duration::from_millis(500),
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "#[Histogram log format version 1.3]");
        assert_eq!(
            lines[1],
            "#[StartTime: 1793633934.250 (seconds since epoch), Mon Nov 02 15:38:54 UTC 2026]"
        );
        assert_eq!(
            lines[2],
            "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\""
        );
        assert!(
            lines[3].starts_with("0.000,1.000,42.000,HISTF"),
            "{}",
            lines[3]
        );
        assert!(
            lines[4].starts_with("1.000,0.500,42.000,HISTF"),
            "{}",
            lines[4]
        );
        assert_eq!(lines.len(), 5);
    }
}
