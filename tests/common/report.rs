//! Running `minetd-client` and reading its `bench --json` report, for the
//! tests that check the bench's figures.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

/// Runs `minetd-client ARGS`, failing the test if it outlives `limit`.
pub fn client(args: &[&str], limit: Duration) -> Output {
    let child = client_command(args).spawn().expect("spawn minetd-client");
    super::output_within(child, limit)
}

/// `minetd-client ARGS` with no input and its output piped, for a caller
/// that has more to set (where it runs) before spawning it.
pub fn client_command(args: &[&str]) -> Command {
    let mut command = Command::new(super::client_bin());
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// The JSON report on stdout.
pub fn report_of(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "stdout is not JSON ({err}): {:?}; stderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// The report's count `key`.
pub fn count(report: &Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no count {key:?} in {report}"))
}

/// Each `(key, n)`: the report's `key` is exactly `n`.
pub fn counts(report: &Value, expected: &[(&str, u64)]) {
    for &(key, n) in expected {
        assert_eq!(count(report, key), n, "{key} in {report}");
    }
}

pub fn at_least(report: &Value, key: &str, n: u64) {
    assert!(count(report, key) >= n, "{key} under {n} in {report}");
}

pub fn at_most(report: &Value, key: &str, n: u64) {
    assert!(count(report, key) <= n, "{key} over {n} in {report}");
}

/// The counts `keys` add up to exactly `n`.
pub fn sum(report: &Value, keys: &[&str], n: u64) {
    let total: u64 = keys.iter().map(|key| count(report, key)).sum();
    assert_eq!(total, n, "{keys:?} add up to {total}, not {n}: {report}");
}
