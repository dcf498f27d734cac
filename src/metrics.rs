//! The counters as Prometheus metrics: the text exposition format
//! (version 0.0.4) that `--metrics` serves, written from a [`Stats`]
//! snapshot and a few gauges. Pure formatting, no I/O, so an embedder can
//! serve the same text its own way.
//!
//! Every served service has its series from the start, at 0: a rate over
//! a series that appears only at its first event misses that event, and a
//! query for a service that saw no traffic should say 0, not nothing.
//! TCP-only families list the TCP services, UDP-only ones the UDP
//! services; the byte counters list both.

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::Service;
use crate::stats::{Counters, Stats};

/// The `Content-Type` of the exposition, as Prometheus expects it.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the exposition shows beside the per-service counters.
#[derive(Clone, Copy, Debug)]
pub struct Gauges {
    /// Bytes held for all connections now ([`Server::buffered`](crate::Server::buffered)).
    pub buffered: usize,
    /// The limit on them (`--max-buffered`).
    pub max_buffered: usize,
    /// When the process (or the server, for an embedder) started.
    pub started: SystemTime,
}

/// The families of per-service series: name, type, help, which services
/// have the series, and how a service's counters give its value.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    services: fn(Service) -> bool,
    value: Count,
}

const TCP: fn(Service) -> bool = |s| !s.is_udp();
const UDP: fn(Service) -> bool = Service::is_udp;
const ANY: fn(Service) -> bool = |_| true;

const PER_SERVICE: [Family; 7] = [
    Family {
        name: "minetd_connections_accepted_total",
        kind: "counter",
        help: "Connections accepted and served.",
        services: TCP,
        value: |c| c.accepted,
    },
    Family {
        name: "minetd_connections_open",
        kind: "gauge",
        help: "Connections open now.",
        services: TCP,
        value: |c| c.open as u64,
    },
    Family {
        name: "minetd_received_bytes_total",
        kind: "counter",
        help: "Bytes received from peers.",
        services: ANY,
        value: |c| c.bytes_in,
    },
    Family {
        name: "minetd_sent_bytes_total",
        kind: "counter",
        help: "Bytes sent to peers.",
        services: ANY,
        value: |c| c.bytes_out,
    },
    Family {
        name: "minetd_datagrams_received_total",
        kind: "counter",
        help: "Datagrams received.",
        services: UDP,
        value: |c| c.datagrams_in,
    },
    Family {
        name: "minetd_datagrams_sent_total",
        kind: "counter",
        help: "Datagrams sent as answers.",
        services: UDP,
        value: |c| c.datagrams_out,
    },
    Family {
        name: "minetd_datagrams_dropped_total",
        kind: "counter",
        help: "Datagrams dropped: not allowed, from a port that could answer back, or an answer the socket refused.",
        services: UDP,
        value: |c| c.datagrams_dropped,
    },
];

/// How a service's counters give one series' value.
type Count = fn(&Counters) -> u64;

/// The reasons a connection is refused, as labelled, with their counts.
const REASONS: [(&str, Count); 4] = [
    ("max_connections", |c| c.refused_by.max_connections),
    ("per_source", |c| c.refused_by.per_source),
    ("allow", |c| c.refused_by.allow),
    ("proxy_header", |c| c.refused_by.proxy_header),
];

/// Appends the exposition of `stats` and `gauges` to `out`.
///
/// ```
/// let stats = minetd::Stats::default();
/// let gauges = minetd::metrics::Gauges {
///     buffered: 0,
///     max_buffered: 33554432,
///     started: std::time::UNIX_EPOCH,
/// };
/// let mut text = String::new();
/// minetd::metrics::write_exposition(&mut text, &stats, &gauges);
/// assert!(text.contains("\nminetd_max_buffered_bytes 33554432\n"));
/// ```
pub fn write_exposition(out: &mut String, stats: &Stats, gauges: &Gauges) {
    // Writing to a String cannot fail.
    let _ = write_all(out, stats, gauges);
}

fn write_all(out: &mut String, stats: &Stats, gauges: &Gauges) -> std::fmt::Result {
    let served: Vec<(Service, Counters)> = stats.iter().collect();
    for (n, family) in PER_SERVICE.iter().enumerate() {
        header(out, family.name, family.kind, family.help)?;
        for (service, counters) in served.iter().filter(|(s, _)| (family.services)(*s)) {
            writeln!(
                out,
                "{}{{service=\"{service}\"}} {}",
                family.name,
                (family.value)(counters)
            )?;
        }
        // The refusals follow the open connections, as the contract lists them.
        if n == 1 {
            refusals(out, &served)?;
        }
    }
    header(
        out,
        "minetd_buffered_bytes",
        "gauge",
        "Bytes held for all connections together.",
    )?;
    writeln!(out, "minetd_buffered_bytes {}", gauges.buffered)?;
    header(
        out,
        "minetd_max_buffered_bytes",
        "gauge",
        "The limit on bytes held for all connections (--max-buffered).",
    )?;
    writeln!(out, "minetd_max_buffered_bytes {}", gauges.max_buffered)?;
    header(
        out,
        "minetd_reads_held_back_total",
        "counter",
        "Reads the memory budget deferred.",
    )?;
    writeln!(
        out,
        "minetd_reads_held_back_total {}",
        stats.reads_held_back()
    )?;
    header(
        out,
        "minetd_build_info",
        "gauge",
        "Always 1; the version is in the label.",
    )?;
    writeln!(
        out,
        "minetd_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )?;
    header(
        out,
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch in seconds.",
    )?;
    let started = gauges
        .started
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    writeln!(out, "process_start_time_seconds {started:.3}")
}

fn refusals(out: &mut String, served: &[(Service, Counters)]) -> std::fmt::Result {
    let name = "minetd_connections_refused_total";
    header(
        out,
        name,
        "counter",
        "Connections closed at once without being served, by reason.",
    )?;
    for (service, counters) in served.iter().filter(|(s, _)| !s.is_udp()) {
        for (reason, count) in REASONS {
            writeln!(
                out,
                "{name}{{service=\"{service}\",reason=\"{reason}\"}} {}",
                count(counters)
            )?;
        }
    }
    Ok(())
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) -> std::fmt::Result {
    writeln!(out, "# HELP {name} {help}")?;
    writeln!(out, "# TYPE {name} {kind}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(stats: &Stats) -> String {
        let mut text = String::new();
        let gauges = Gauges {
            buffered: 4096,
            max_buffered: 8192,
            started: UNIX_EPOCH + std::time::Duration::from_millis(1_796_644_800_250),
        };
        write_exposition(&mut text, stats, &gauges);
        text
    }

    #[test]
    fn every_served_service_has_its_series_at_zero() {
        let text = exposition(&Stats::new([Service::Echo, Service::UdpEcho]));
        for line in [
            "minetd_connections_accepted_total{service=\"echo\"} 0",
            "minetd_connections_open{service=\"echo\"} 0",
            "minetd_connections_refused_total{service=\"echo\",reason=\"max_connections\"} 0",
            "minetd_connections_refused_total{service=\"echo\",reason=\"proxy_header\"} 0",
            "minetd_received_bytes_total{service=\"echo\"} 0",
            "minetd_received_bytes_total{service=\"udp-echo\"} 0",
            "minetd_datagrams_dropped_total{service=\"udp-echo\"} 0",
            "minetd_buffered_bytes 4096",
            "minetd_max_buffered_bytes 8192",
            "minetd_reads_held_back_total 0",
            "process_start_time_seconds 1796644800.250",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        // Families keep to their transport.
        assert!(!text.contains("minetd_connections_open{service=\"udp-echo\"}"));
        assert!(!text.contains("minetd_datagrams_received_total{service=\"echo\"}"));
        assert!(!text.contains("daytime"), "{text}");
    }

    #[test]
    fn counts_land_in_their_series() {
        let mut stats = Stats::new([Service::Echo, Service::UdpTime]);
        let echo = stats.get_mut(Service::Echo);
        echo.accepted = 7;
        echo.open = 2;
        echo.refused = 3;
        echo.refused_by.per_source = 1;
        echo.refused_by.allow = 2;
        echo.bytes_in = 640;
        echo.bytes_out = 600;
        let time = stats.get_mut(Service::UdpTime);
        time.datagrams_in = 5;
        time.datagrams_out = 4;
        time.datagrams_dropped = 1;
        stats.reads_held_back = 9;
        let text = exposition(&stats);
        for line in [
            "minetd_connections_accepted_total{service=\"echo\"} 7",
            "minetd_connections_open{service=\"echo\"} 2",
            "minetd_connections_refused_total{service=\"echo\",reason=\"per_source\"} 1",
            "minetd_connections_refused_total{service=\"echo\",reason=\"allow\"} 2",
            "minetd_sent_bytes_total{service=\"echo\"} 600",
            "minetd_datagrams_received_total{service=\"udp-time\"} 5",
            "minetd_datagrams_sent_total{service=\"udp-time\"} 4",
            "minetd_datagrams_dropped_total{service=\"udp-time\"} 1",
            "minetd_reads_held_back_total 9",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn each_family_is_declared_once_before_its_samples() {
        let text = exposition(&Stats::new(Service::ALL));
        let mut declared = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().expect("name");
                assert!(!declared.contains(&name.to_string()), "{name} twice");
                declared.push(name.to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().expect("name");
                assert_eq!(declared.last().map(String::as_str), Some(name), "{line}");
            }
        }
        assert_eq!(declared.len(), 13);
        assert!(text.ends_with('\n'));
    }
}
