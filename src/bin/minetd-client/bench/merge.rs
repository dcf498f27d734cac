//! `merge FILE...`: `bench --json` results taken at the same time (on
//! several machines, or several processes) combined into one report.
//! Counts and rates are summed (udp-echo's `lost` and `late` too);
//! percentiles come from the sum of the histograms, so they are exact, not
//! an average of percentiles.

use std::path::Path;

use serde_json::Value;

use super::Mode;
use super::hist;
use super::report::{Report, write_stdout};
use crate::error::Error;

/// Reads every result in `files` and prints the combined report.
pub fn run(files: &[std::path::PathBuf], json: bool) -> Result<(), Error> {
    let mut merged: Option<Report> = None;
    let mut results = 0;
    for path in files {
        for report in read(path)? {
            results += 1;
            merged = Some(match merged {
                None => report,
                Some(merged) => combine(merged, report, path)?,
            });
        }
    }
    let report = merged.ok_or_else(|| Error::Usage("merge: no results to merge".to_string()))?;
    let text = if json {
        report.json()?
    } else {
        let noun = if results == 1 { "result" } else { "results" };
        report.text(&format!("merge of {results} {noun}"))
    };
    write_stdout(&text)?;
    let failures = report.mismatches + report.connect_failures + report.errors;
    if failures > 0 {
        return Err(Error::Failed(format!(
            "merge: {} mismatches, {} connect failures, {} errors in the results",
            report.mismatches, report.connect_failures, report.errors
        )));
    }
    Ok(())
}

/// The results in one file: one JSON object, or one per line.
fn read(path: &Path) -> Result<Vec<Report>, Error> {
    let name = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|err| Error::Usage(format!("merge: cannot read {name}: {err}")))?;
    let mut reports = Vec::new();
    for value in serde_json::Deserializer::from_str(&text).into_iter::<Value>() {
        let value = value.map_err(|err| {
            Error::Usage(format!("merge: {name} is not bench --json output: {err}"))
        })?;
        let report = parse(&value).map_err(|why| Error::Usage(format!("merge: {name}: {why}")))?;
        reports.push(report);
    }
    if reports.is_empty() {
        return Err(Error::Usage(format!("merge: {name} holds no results")));
    }
    Ok(reports)
}

/// One `bench --json` object as a report.
fn parse(value: &Value) -> Result<Report, String> {
    let number = |key: &str| {
        value[key]
            .as_f64()
            .ok_or_else(|| format!("no number \"{key}\""))
    };
    let count = |key: &str| {
        value[key]
            .as_u64()
            .ok_or_else(|| format!("no count \"{key}\""))
    };
    let histogram = value["histogram"]
        .as_str()
        .ok_or("no \"histogram\" (from a bench that predates it?)")?;
    let mode = value["mode"].as_str().ok_or("no \"mode\"")?;
    let mode = [
        Mode::Echo,
        Mode::Discard,
        Mode::Chargen,
        Mode::Daytime,
        Mode::UdpEcho,
    ]
    .into_iter()
    .find(|m| m.name() == mode)
    .ok_or_else(|| format!("unknown mode \"{mode}\""))?;
    Ok(Report {
        mode,
        connections: count("connections")?,
        size: count("size")? as usize,
        duration_s: number("duration_s")?,
        round_trips: count("round_trips")?,
        rps: number("rps")?,
        mbps: number("mbps")?,
        latency: hist::decode(histogram)?,
        rate: value["rate"].as_f64(),
        service: None,
        pipeline: 1,
        mismatches: count("mismatches")?,
        connect_failures: count("connect_failures")?,
        errors: count("errors")?,
        // Results from before the run's end was bounded have no such key:
        // nothing was abandoned then, the run waited for every echo.
        unanswered: value["unanswered"].as_u64().unwrap_or(0),
        // Only udp-echo results have them; 0 is what the others mean.
        lost: value["lost"].as_u64().unwrap_or(0),
        late: value["late"].as_u64().unwrap_or(0),
    })
}

/// `merged` plus `next` (read from `path`, named if they do not match).
fn combine(mut merged: Report, next: Report, path: &Path) -> Result<Report, Error> {
    let name = path.display();
    if next.mode != merged.mode {
        return Err(Error::Usage(format!(
            "merge: {name} is a {} result, the ones before it {}",
            next.mode.name(),
            merged.mode.name()
        )));
    }
    if next.size != merged.size {
        return Err(Error::Usage(format!(
            "merge: {name} has --size {}, the ones before it {}",
            next.size, merged.size
        )));
    }
    hist::add(&mut merged.latency, &next.latency)?;
    merged.connections += next.connections;
    merged.duration_s = merged.duration_s.max(next.duration_s);
    merged.round_trips += next.round_trips;
    merged.rps += next.rps;
    merged.mbps += next.mbps;
    merged.rate = merged.rate.zip(next.rate).map(|(a, b)| a + b);
    merged.mismatches += next.mismatches;
    merged.connect_failures += next.connect_failures;
    merged.errors += next.errors;
    merged.unanswered += next.unanswered;
    merged.lost += next.lost;
    merged.late += next.late;
    Ok(merged)
}
