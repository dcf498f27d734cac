//! Behind a real HAProxy, off loopback: client, balancer and server are
//! three hosts in a row (network namespaces joined by veth pairs, MTU
//! 1500; see `tests/netlab/chain.rs`). HAProxy (`mode tcp`) on the
//! balancer host sends one minetd backend PROXY v2 headers and the other
//! v1, and both backends trust only the balancer's address
//! (`--proxy-protocol 198.18.2.2/32`). Every byte a client sends must come
//! back; each backend must log the real client and the balancer it came
//! through, with the bytes it moved; and the two ways round the balancer
//! must go as SPEC "Behind a load balancer" says: the trusted balancer's
//! host cutting a header short is closed at once, and a client reaching a
//! backend directly, untrusted, has its header echoed as ordinary data.
//!
//! HAProxy is Debian's `haproxy`, which `.ci/run` installs when missing;
//! without it, or where namespaces cannot be made, each test says why and
//! passes.

mod common;
mod netlab;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::report::{at_least, counts, report_of};
use common::{STEP, Server, read_to_eof};
use netlab::chain::{BALANCER_IP, CLIENT_IP, Chain, FRONT_IP, Host, SERVER_IP};
use netlab::{HalfClose, MSS, every_echo_exact};

/// Where HAProxy listens for clients. The balancer host is the test's
/// own namespace, so nothing else can hold the port.
const FRONT_PORT: u16 = 7007;

/// How HAProxy sends each backend its header, backend by backend.
const SEND_PROXY: [&str; 2] = ["send-proxy-v2", "send-proxy"];

/// What each client sends through the balancer: hundreds of segments on
/// each hop.
const MESSAGE_LEN: usize = 512 * 1024;

/// A running HAProxy, killed on drop, and the directory of its config,
/// removed then.
struct Haproxy {
    child: Child,
    dir: PathBuf,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One minetd behind the balancer and its log lines.
struct Backend {
    server: Server,
    log: mpsc::Receiver<String>,
}

/// The three hosts with everything running. Fields drop in order:
/// HAProxy, then the backends, then the namespaces.
struct Balanced {
    _haproxy: Haproxy,
    backends: Vec<Backend>,
    chain: Chain,
}

/// Builds the chain and starts a backend per entry of [`SEND_PROXY`] and
/// HAProxy in front of them, or says why not; `None` means skip.
fn balanced() -> Option<Balanced> {
    if Command::new("haproxy").arg("-v").output().is_err() {
        eprintln!("skipped: haproxy is not installed (.ci/run installs it)");
        return None;
    }
    let chain = match Chain::new() {
        Ok(chain) => chain,
        Err(reason) => {
            eprintln!("skipped: {reason}");
            return None;
        }
    };
    let backends: Vec<Backend> = SEND_PROXY
        .iter()
        .map(|_| start_backend(&chain, &format!("{BALANCER_IP}/32")))
        .collect();
    let haproxy = start_haproxy(&chain, &backends);
    Some(Balanced {
        _haproxy: haproxy,
        backends,
        chain,
    })
}

/// Starts minetd on the server host trusting `trusted` for PROXY headers,
/// logging at `RUST_LOG=debug` for its accept and close lines.
fn start_backend(chain: &Chain, trusted: &str) -> Backend {
    let mut command = Command::new(common::server_bin());
    command
        .args(["--echo", &format!("{SERVER_IP}:0")])
        .args(["--proxy-protocol", trusted])
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    chain.place(Host::Server, &mut command);
    let mut server = Server::spawn(command, 1);
    let log = server.stderr_lines();
    Backend { server, log }
}

/// Tells each test's config directory from the others'.
static CONFIGS: AtomicUsize = AtomicUsize::new(0);

/// Starts HAProxy on the balancer host, round robin over `backends`, and
/// waits until it listens.
fn start_haproxy(chain: &Chain, backends: &[Backend]) -> Haproxy {
    let mut config = format!(
        "global\n    maxconn 256\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\
         frontend echo\n    bind {FRONT_IP}:{FRONT_PORT}\n    default_backend minetd\n\
         backend minetd\n    balance roundrobin\n"
    );
    for (n, (backend, send_proxy)) in backends.iter().zip(SEND_PROXY).enumerate() {
        let addr = backend.server.echo();
        config.push_str(&format!("    server b{n} {addr} {send_proxy}\n"));
    }
    let n = CONFIGS.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("minetd-lab-proxy-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).expect("write config");
    let mut command = Command::new("haproxy");
    command
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    chain.place(Host::Balancer, &mut command);
    let mut haproxy = Haproxy {
        child: command.spawn().expect("start haproxy"),
        dir,
    };
    // Asked of the kernel, not by connecting: a probe connection would be
    // relayed to a backend and show in its log.
    let deadline = Instant::now() + STEP;
    while !chain.listens(Host::Balancer, FRONT_PORT) {
        if let Ok(Some(status)) = haproxy.child.try_wait() {
            panic!("haproxy exited: {status}");
        }
        assert!(Instant::now() < deadline, "haproxy never listened");
        thread::sleep(Duration::from_millis(20));
    }
    haproxy
}

/// The balancer's address for clients.
fn front() -> SocketAddr {
    SocketAddr::from((FRONT_IP, FRONT_PORT))
}

/// A log line from `conn` on: env_logger's prefix dropped.
fn story(line: &str) -> &str {
    line.find("] conn ").map_or(line, |at| &line[at + 2..])
}

/// Lines of `log` that contain `needle`, until there are `count` of them;
/// fails after [`STEP`].
fn lines_with(log: &mpsc::Receiver<String>, needle: &str, count: usize) -> Vec<String> {
    let deadline = Instant::now() + STEP;
    let mut found = Vec::new();
    while found.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match log.recv_timeout(left) {
            Ok(line) if line.contains(needle) => found.push(story(&line).to_string()),
            Ok(_) => {}
            Err(_) => panic!(
                "{} lines with {needle:?} of {count}: {found:#?}",
                found.len()
            ),
        }
    }
    found
}

/// A connection a backend served for the balancer, as its `accepted`
/// line tells it.
#[derive(Clone, Debug)]
struct Relayed {
    token: usize,
    client: SocketAddr,
    via: SocketAddr,
}

impl Relayed {
    /// Reads `conn N CLIENT via BALANCER accepted echo`, exactly.
    fn parse(line: &str) -> Option<Relayed> {
        match line.split(' ').collect::<Vec<_>>().as_slice() {
            ["conn", token, client, "via", via, "accepted", "echo"] => Some(Relayed {
                token: token.parse().ok()?,
                client: client.parse().ok()?,
                via: via.parse().ok()?,
            }),
            _ => None,
        }
    }

    /// What every line about this connection starts with.
    fn tag(&self) -> String {
        format!("conn {} {} via {}", self.token, self.client, self.via)
    }
}

/// Every `accepted echo` line the backends log until there are `count` in
/// all, each read as a relayed connection; which backend logged it is the
/// outer index.
fn relayed(backends: &[Backend], count: usize) -> Vec<Vec<Relayed>> {
    let deadline = Instant::now() + STEP;
    let mut found: Vec<Vec<Relayed>> = vec![Vec::new(); backends.len()];
    while found.iter().map(Vec::len).sum::<usize>() < count {
        for (backend, found) in backends.iter().zip(&mut found) {
            for line in backend.log.try_iter() {
                if line.ends_with(" accepted echo") {
                    let line = story(&line);
                    found.push(Relayed::parse(line).unwrap_or_else(|| panic!("{line}")));
                }
            }
        }
        assert!(Instant::now() < deadline, "accepted of {count}: {found:#?}");
        thread::sleep(Duration::from_millis(10));
    }
    found
}

/// Whether an `ss -tin` socket line shows the MSS a 1,500-byte link gives.
fn has_link_mss(socket: &str) -> bool {
    socket.contains(&format!(" mss:{MSS} "))
}

#[test]
fn every_byte_comes_back_through_haproxy_and_backends_log_the_real_clients() {
    let Some(lab) = balanced() else {
        return;
    };
    let peers = 6;
    let streams: Vec<TcpStream> = lab.chain.on(Host::Client, || {
        (0..peers).map(|_| common::connect(front())).collect()
    });
    let clients: Vec<SocketAddr> = streams
        .iter()
        .map(|stream| stream.local_addr().expect("local addr"))
        .collect();
    // HAProxy connects to a backend as a client connects (`mode tcp`), and
    // the backend logs the connection once the header is read: all of
    // them before a byte of data is sent.
    let relayed = relayed(&lab.backends, peers);
    for (n, (served, send_proxy)) in relayed.iter().zip(SEND_PROXY).enumerate() {
        println!("backend {n} ({send_proxy}): {served:?}");
        // Round robin over two: half of the clients each.
        assert_eq!(served.len(), peers / 2, "backend {n}: {served:#?}");
        for conn in served {
            assert!(
                clients.contains(&conn.client),
                "{conn:?} not in {clients:?}"
            );
            assert_eq!(conn.via.ip(), BALANCER_IP, "{conn:?}");
        }
    }
    // Each client once, across the backends.
    let mut named: Vec<SocketAddr> = relayed.iter().flatten().map(|c| c.client).collect();
    named.sort();
    let mut all = clients.clone();
    all.sort();
    assert_eq!(named, all);
    // Both hops are Ethernet links: the kernel's MSS on the balancer's
    // connections, seen from the server host, and on the clients' own, and
    // the balancer's side of each is the `via` the backends logged.
    let to_balancer = lab
        .chain
        .tcp_sockets(Host::Server, &format!("dst {BALANCER_IP}"));
    assert_eq!(to_balancer.len(), peers, "{to_balancer:#?}");
    for socket in &to_balancer {
        assert!(has_link_mss(socket), "server side: {socket}");
    }
    for conn in relayed.iter().flatten() {
        let via = conn.via.to_string();
        assert!(
            to_balancer.iter().any(|socket| socket.contains(&via)),
            "{conn:?}: no such connection on the server host: {to_balancer:#?}"
        );
    }
    let to_front = lab
        .chain
        .tcp_sockets(Host::Client, &format!("dst {FRONT_IP}"));
    assert_eq!(to_front.len(), peers, "{to_front:#?}");
    for socket in &to_front {
        assert!(has_link_mss(socket), "client side: {socket}");
    }
    // Each client half-closes once all its bytes are back (see
    // `HalfClose::AfterEcho` for why not sooner through HAProxy).
    every_echo_exact(streams, MESSAGE_LEN, 0x9a0, HalfClose::AfterEcho);
    // The close lines name the client too, and count the data alone: the
    // header is not echo data.
    for (backend, served) in lab.backends.iter().zip(&relayed) {
        let closed = lines_with(&backend.log, " closed: ", served.len());
        for conn in served {
            let expected = format!(
                "{} closed: peer closed, in {MESSAGE_LEN} out {MESSAGE_LEN}, rtt ",
                conn.tag()
            );
            assert!(
                closed.iter().any(|line| line.starts_with(&expected)),
                "no {expected:?} in {closed:#?}"
            );
        }
        for line in &closed {
            println!("{line}");
        }
    }
}

#[test]
fn a_header_cut_short_from_the_balancer_host_is_closed_at_once_and_relaying_goes_on() {
    let Some(lab) = balanced() else {
        return;
    };
    let mut healthy = lab.chain.on(Host::Client, || common::connect(front()));
    relayed(&lab.backends, 1);
    // What a balancer that died mid-header leaves: the start of a v1 line,
    // and a v2 signature with its version and family but no length.
    let cut_short: [&[u8]; 2] = [
        b"PROXY TCP4 198.18.1.2 198.18.2.1 5555 7",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11",
    ];
    for (backend, header) in lab.backends.iter().zip(cut_short) {
        let addr = backend.server.echo();
        let started = Instant::now();
        let (back, local) = lab.chain.on(Host::Balancer, || {
            let mut stream = common::connect(addr);
            let local = stream.local_addr().expect("local addr");
            stream.write_all(header).expect("write the header's start");
            // Seen on its own first, so that the EOF is a separate event.
            thread::sleep(Duration::from_millis(50));
            stream.shutdown(Shutdown::Write).expect("half-close");
            (read_to_eof(&mut stream), local)
        });
        // The trusted source: the balancer's own address on the link.
        assert_eq!(local.ip(), BALANCER_IP);
        assert_eq!(back, b"", "something was sent");
        let line = lines_with(&backend.log, &format!(" {local} closed: "), 1).remove(0);
        println!("{line}");
        assert!(
            line.contains(&format!(
                " {local} closed: closed before a whole PROXY header, in 0 out 0, "
            )),
            "{line}"
        );
        // At once, not at the 5-second header deadline.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "closed only after {:?}",
            started.elapsed()
        );
    }
    healthy.write_all(b"still here").expect("write");
    let mut back = [0; 10];
    healthy.read_exact(&mut back).expect("healthy echo");
    assert_eq!(&back, b"still here");
}

#[test]
fn a_client_reaching_a_backend_directly_is_untrusted_and_its_header_is_echo_data() {
    let Some(lab) = balanced() else {
        return;
    };
    let backend = &lab.backends[0];
    let header = format!("PROXY TCP4 203.0.113.7 {SERVER_IP} 5555 7\r\n");
    // Routed through the balancer host, not relayed by HAProxy: the server
    // sees the client's own address, outside every --proxy-protocol CIDR.
    let addr = backend.server.echo();
    let (back, local) = lab.chain.on(Host::Client, || {
        let mut stream = common::connect(addr);
        let local = stream.local_addr().expect("local addr");
        stream.write_all(header.as_bytes()).expect("write");
        stream.shutdown(Shutdown::Write).expect("half-close");
        (read_to_eof(&mut stream), local)
    });
    assert_eq!(local.ip(), CLIENT_IP);
    assert_eq!(String::from_utf8_lossy(&back), header);
    let accepted = lines_with(&backend.log, " accepted echo", 1).remove(0);
    assert!(
        accepted.ends_with(&format!(" {local} accepted echo")),
        "{accepted}"
    );
    assert!(!accepted.contains(" via "), "{accepted}");
    let closed = lines_with(&backend.log, " closed: ", 1).remove(0);
    println!("{closed}");
    let len = header.len();
    assert!(
        closed.contains(&format!(
            " {local} closed: peer closed, in {len} out {len}, "
        )),
        "{closed}"
    );
}

#[test]
fn checked_bench_from_the_client_host_through_haproxy_has_no_mismatch() {
    let Some(lab) = balanced() else {
        return;
    };
    let mut bench = Command::new(common::client_bin());
    bench
        .args(["bench", &front().to_string(), "--json"])
        .args(["--connections", "8", "--size", "16384", "--threads", "2"])
        .args(["--duration", "2", "--timeout", "5"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    lab.chain.place(Host::Client, &mut bench);
    let output = common::output_within(bench.spawn().expect("spawn bench"), 3 * STEP);
    let report = report_of(&output);
    println!("{report}");
    assert_eq!(output.status.code(), Some(0), "{report}");
    counts(
        &report,
        &[("mismatches", 0), ("errors", 0), ("connect_failures", 0)],
    );
    at_least(&report, "round_trips", 1);
    // Both backends served, each seeing the client host through the
    // balancer.
    for (n, backend) in lab.backends.iter().enumerate() {
        let line = lines_with(&backend.log, " accepted echo", 1).remove(0);
        let conn = Relayed::parse(&line).unwrap_or_else(|| panic!("backend {n}: {line}"));
        assert_eq!(
            (conn.client.ip(), conn.via.ip()),
            (CLIENT_IP.into(), BALANCER_IP.into()),
            "backend {n}: {line}"
        );
    }
}
