//! Beyond one process: `--reuse-port` lets several minetd processes serve
//! one address, and one that stops first serves what is queued on its
//! listeners instead of resetting it.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{STEP, Server, connect, read_to_eof};

/// Counts the `accepted daytime` lines that arrive within `limit`.
fn accepted(stderr: &mpsc::Receiver<String>, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    let mut count = 0;
    while let Ok(line) = stderr.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if line.ends_with("accepted daytime") {
            count += 1;
        }
    }
    count
}

fn is_daytime_line(reply: &[u8]) -> bool {
    reply.len() == 26 && reply.ends_with(b"\r\n")
}

#[test]
fn two_reuse_port_processes_share_one_port_and_both_serve() {
    let debug = [("RUST_LOG", "debug")];
    let mut first = Server::start_with(&["--daytime", "127.0.0.1:0", "--reuse-port"], &debug);
    let addr = first.daytime();
    let port = addr.to_string();
    let mut second = Server::start_with(&["--daytime", &port, "--reuse-port"], &debug);
    assert_eq!(second.daytime(), addr);
    let (first_log, second_log) = (first.stderr_lines(), second.stderr_lines());
    for _ in 0..200 {
        let reply = read_to_eof(&mut connect(addr));
        assert!(is_daytime_line(&reply), "{reply:?}");
    }
    let (a, b) = (
        accepted(&first_log, Duration::from_millis(500)),
        accepted(&second_log, Duration::from_millis(500)),
    );
    assert_eq!(a + b, 200);
    // The kernel hashes connections over the group: 200 all landing on
    // one of two is a chance of 2 in 2^200.
    assert!(a > 0 && b > 0, "first served {a}, second {b}");
}

#[test]
fn without_reuse_port_a_second_process_cannot_bind_the_port() {
    let first = Server::start(&["--daytime", "127.0.0.1:0", "--reuse-port"]);
    let port = first.daytime().to_string();
    let output = common::output_within(
        std::process::Command::new(common::server_bin())
            .args(["--daytime", &port])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn"),
        STEP,
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with(&format!("minetd: cannot listen on {port} for daytime:")),
        "{stderr}"
    );
}
