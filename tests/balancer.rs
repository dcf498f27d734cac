//! Behind a real HAProxy (`mode tcp`): three minetd backends with
//! `--proxy-protocol`, two sent PROXY v2 headers and one v1. The checked
//! benchmark through the frontend must see no mismatch or error, every
//! backend must serve, and each backend's log must name the real client
//! and the balancer it came through.
//!
//! HAProxy is Debian's `haproxy`, which `.ci/run` installs when missing;
//! without it the test says so and passes.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{STEP, Server, client_bin, output_within};
use serde_json::Value;

/// A running HAProxy, killed on drop.
struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port nothing listens on now (the OS's choice for port 0).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

/// Every `accepted echo` line a backend logged, until `limit` passes
/// without one.
fn accepted_lines(stderr: &mpsc::Receiver<String>) -> Vec<String> {
    let mut lines = Vec::new();
    while let Ok(line) = stderr.recv_timeout(Duration::from_millis(500)) {
        if line.ends_with("accepted echo") {
            lines.push(line);
        }
    }
    lines
}

/// `conn N 127.0.0.1:PORT via 127.0.0.1:PORT accepted echo`, after the
/// log's own prefix.
fn names_client_via_balancer(line: &str) -> bool {
    let Some(at) = line.find("] conn ") else {
        return false;
    };
    let words: Vec<&str> = line[at + 2..].split(' ').collect();
    let is_loopback = |word: &str| {
        word.parse::<SocketAddr>()
            .is_ok_and(|addr| addr.ip().is_loopback() && addr.port() != 0)
    };
    matches!(
        words.as_slice(),
        ["conn", token, client, "via", balancer, "accepted", "echo"]
            if token.parse::<usize>().is_ok() && is_loopback(client) && is_loopback(balancer)
    )
}

#[test]
fn checked_bench_through_haproxy_reaches_every_backend_with_real_addresses() {
    if Command::new("haproxy").arg("-v").output().is_err() {
        eprintln!("skipped: haproxy is not installed (.ci/run installs it)");
        return;
    }
    let mut backends: Vec<Server> = (0..3)
        .map(|_| {
            Server::start_with(
                &["--echo", "127.0.0.1:0", "--proxy-protocol", "127.0.0.1/32"],
                &[("RUST_LOG", "debug")],
            )
        })
        .collect();
    let logs: Vec<_> = backends.iter_mut().map(Server::stderr_lines).collect();
    let frontend = free_port();
    let config = format!(
        "global\n    maxconn 4096\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\
         frontend echo\n    bind 127.0.0.1:{frontend}\n    default_backend minetd\n\
         backend minetd\n    balance roundrobin\n\
         \x20   server a {} send-proxy-v2\n\
         \x20   server b {} send-proxy-v2\n\
         \x20   server c {} send-proxy\n",
        backends[0].echo(),
        backends[1].echo(),
        backends[2].echo(),
    );
    let dir = std::env::temp_dir().join(format!("minetd-haproxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).expect("write config");
    let haproxy = Haproxy(
        Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start haproxy"),
    );
    let addr: SocketAddr = ([127, 0, 0, 1], frontend).into();
    let deadline = Instant::now() + STEP;
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "haproxy never listened on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let bench = Command::new(client_bin())
        .arg("bench")
        .arg(addr.to_string())
        .args(["--connections", "30", "--size", "512", "--duration", "2"])
        .args(["--threads", "2", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bench");
    let output = output_within(bench, 3 * STEP);
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "bench JSON: {err}; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert_eq!(output.status.code(), Some(0), "{report}");
    assert_eq!(report["mismatches"], 0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["connect_failures"], 0, "{report}");
    assert!(
        report["round_trips"].as_u64().unwrap_or(0) > 100,
        "{report}"
    );
    drop(haproxy);
    let _ = std::fs::remove_dir_all(&dir);
    for (n, log) in logs.iter().enumerate() {
        let lines = accepted_lines(log);
        assert!(!lines.is_empty(), "backend {n} served nothing");
        for line in &lines {
            assert!(names_client_via_balancer(line), "backend {n}: {line}");
        }
    }
}
