//! A two-host network lab on one machine, for the tests that need a real
//! link rather than loopback (`tests/lab.rs`).
//!
//! Two network namespaces made by the test itself, the "server host" and
//! the "client host", joined by a veth pair with an Ethernet MTU:
//!
//! ```text
//!  server host                              client host
//!  veth-s 198.18.0.1/24  <-- MTU 1500 -->   veth-c 198.18.0.2/24
//!  [tbf on egress]                          [nftables loss on ingress]
//! ```
//!
//! TCP between them negotiates an MSS of 1,448 (1,500 less IP, TCP and the
//! timestamp option) and, with segmentation offload capped at one MTU,
//! every segment crosses the link as its own packet, so a drop loses one
//! segment and a rate limit counts real packets. Addresses are from
//! 198.18.0.0/15, the range set aside for benchmarking.
//!
//! Nothing about the test process itself changes namespace: each
//! namespace is made by a short-lived thread and kept alive by a
//! descriptor the [`Lab`] holds, the server and `ip`, `tc` and `nft` are
//! started inside one with `setns` before `exec`, and client sockets are
//! made on a thread that has joined the client host. Dropping the `Lab`
//! closes the descriptors; the kernel frees each namespace, and the veth
//! pair with it, once nothing uses it any more.
//!
//! [`chain`] puts a third host, a balancer, between the two; both labs
//! share the helpers here, and [`echo_in_bursts`] is the traffic their
//! echo tests send.
#![allow(dead_code)]

pub mod chain;

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crate::common::pseudo_random_bytes;

/// The server host's address on the link.
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The client host's address on the link.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The link's MTU: Ethernet's.
pub const MTU: u32 = 1500;
/// The MSS TCP announces over it: the MTU less 20 bytes of IPv4, 20 of
/// TCP and 12 of the timestamp option Linux sends on every segment.
pub const MSS: u32 = MTU - 20 - 20 - 12;

/// What the link does besides carrying packets.
#[derive(Clone, Copy, Debug, Default)]
pub struct Shape {
    /// `tbf` on the server's egress, in Mbit/s.
    pub rate_mbit: Option<u32>,
    /// Percent of data packets dropped at random on their way to the
    /// client (nftables `numgen random`), so the server's segments are
    /// lost and the server retransmits.
    pub loss_to_client_percent: Option<u32>,
}

/// Two namespaces joined by a veth pair, shaped as asked.
pub struct Lab {
    server_host: File,
    client_host: File,
}

/// Makes a new network namespace and returns a descriptor that keeps it
/// alive. The unsharing thread ends at once; the namespace stays.
fn new_namespace() -> io::Result<File> {
    thread::spawn(|| {
        // SAFETY: unshare(2) changes only this thread's network namespace;
        // the thread ends right after.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        File::open("/proc/thread-self/ns/net")
    })
    .join()
    .expect("namespace thread")
}

/// Makes `command` run inside the namespace `ns` refers to.
fn inside(command: &mut Command, ns: &File) {
    let fd: RawFd = ns.as_raw_fd();
    // SAFETY: setns(2) is async-signal-safe and touches no memory of ours;
    // `fd` stays open until after spawn (the Lab owns it).
    unsafe {
        command.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
}

/// Runs `program args` in `ns`, with `input` on its stdin. A tool that is
/// not installed is `Err` (the caller skips, saying so); one that fails is
/// a broken lab, and panics with what it printed.
fn run_in(ns: &File, program: &str, args: &[&str], input: &str) -> Result<(), String> {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    inside(&mut command, ns);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Err(format!("{program} is not installed"));
        }
        Err(err) => panic!("cannot run {program}: {err}"),
    };
    let mut stdin = child.stdin.take().expect("stdin piped");
    stdin.write_all(input.as_bytes()).expect("write stdin");
    drop(stdin);
    let output = child.wait_with_output().expect("wait");
    assert!(
        output.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// What `program args`, run in `ns`, prints on stdout.
fn output_in(ns: &File, program: &str, args: &[&str]) -> String {
    let mut command = Command::new(program);
    command.args(args);
    inside(&mut command, ns);
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("{program}: {err}"));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// One end of a veth pair: the namespace it is in, its name there and
/// its address (a /24).
type End<'a> = (&'a File, &'a str, Ipv4Addr);

/// Joins two namespaces with a veth pair of Ethernet's MTU, segmentation
/// offload capped at one MTU, each end addressed and up.
fn veth(a: End, b: End) -> Result<(), String> {
    let ((a_host, a_dev, _), (b_host, b_dev, _)) = (a, b);
    // `ip` opens a path with a slash as the namespace to move the peer
    // into: our own descriptor, through /proc.
    let b_path = format!("/proc/{}/fd/{}", std::process::id(), b_host.as_raw_fd());
    let mtu = MTU.to_string();
    run_in(
        a_host,
        "ip",
        &[
            "link", "add", a_dev, "mtu", &mtu, "type", "veth", "peer", "name", b_dev, "mtu", &mtu,
            "netns", &b_path,
        ],
        "",
    )?;
    for (ns, dev, ip) in [a, b] {
        // One segment per packet: no 64 KiB GSO packets on the link.
        let one_mtu = [
            "link",
            "set",
            dev,
            "gso_max_size",
            &mtu,
            "gso_max_segs",
            "1",
        ];
        run_in(ns, "ip", &one_mtu, "")?;
        run_in(
            ns,
            "ip",
            &["addr", "add", &format!("{ip}/24"), "dev", dev],
            "",
        )?;
        run_in(ns, "ip", &["link", "set", dev, "up"], "")?;
    }
    Ok(())
}

/// Runs `work` on a new thread that has joined the namespace `ns`, so the
/// sockets it makes are that host's (they stay there whatever thread uses
/// them afterwards).
fn on_host<T: Send>(ns: &File, work: impl FnOnce() -> T + Send) -> T {
    let fd = ns.as_raw_fd();
    thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: setns(2) on this new thread only; `fd` is the
                // caller's, open for the scope.
                let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", io::Error::last_os_error());
                work()
            })
            .join()
            .expect("host thread")
    })
}

impl Lab {
    /// Builds the lab, or says why this machine cannot (no permission to
    /// make namespaces, a tool missing): the caller skips with that reason.
    pub fn new(shape: Shape) -> Result<Lab, String> {
        let server_host =
            new_namespace().map_err(|err| format!("cannot make a network namespace: {err}"))?;
        let client_host =
            new_namespace().map_err(|err| format!("cannot make a network namespace: {err}"))?;
        let lab = Lab {
            server_host,
            client_host,
        };
        lab.wire(shape)?;
        Ok(lab)
    }

    fn wire(&self, shape: Shape) -> Result<(), String> {
        let (server, client) = (&self.server_host, &self.client_host);
        run_in(server, "ip", &["link", "set", "lo", "up"], "")?;
        run_in(client, "ip", &["link", "set", "lo", "up"], "")?;
        veth((server, "veth-s", SERVER_IP), (client, "veth-c", CLIENT_IP))?;
        if let Some(mbit) = shape.rate_mbit {
            // A burst of 64 KiB and room for 50 ms of queue (about 690 KB
            // at 100 Mbit/s), more than the tests keep in flight, so the
            // shaper delays and does not drop.
            let rate = format!("{mbit}mbit");
            run_in(
                server,
                "tc",
                &[
                    "qdisc", "add", "dev", "veth-s", "root", "tbf", "rate", &rate, "burst", "64kb",
                    "latency", "50ms",
                ],
                "",
            )?;
        }
        if let Some(percent) = shape.loss_to_client_percent {
            self.lose_to_client(percent)?;
        }
        Ok(())
    }

    /// Drops `percent` of the data packets on their way to the client from
    /// now on, replacing any loss rule before (0 makes the link lossless
    /// again; the counter starts over).
    pub fn lose_to_client(&self, percent: u32) -> Result<(), String> {
        // Dropped as it arrives at the client, after the server's stack
        // sent it: to the server it is lost on the wire and must be
        // retransmitted (a drop in the sender's own output hook would only
        // make its send fail and be retried, no loss at all). Only packets
        // that carry data (over 100 bytes: no IP and TCP header with
        // options reaches that), so that each drop is a segment the server
        // must send again; counted, so that a test can tell real losses
        // from Linux's tail-loss probes, which count as retransmissions
        // too. The table is declared, deleted and made again in one
        // transaction: nft's way to replace what may not exist yet.
        let rules = format!(
            "table inet lab\ndelete table inet lab\n\
             table inet lab {{\n  chain loss {{\n    \
             type filter hook prerouting priority raw; policy accept;\n    \
             iifname \"veth-c\" ip length > 100 numgen random mod 100 < {percent} \
             counter drop\n  }}\n}}\n"
        );
        run_in(&self.client_host, "nft", &["-f", "-"], &rules)
    }

    /// The server's address for a port on the link.
    pub fn server_addr(port: u16) -> SocketAddr {
        SocketAddr::from((SERVER_IP, port))
    }

    /// Makes `command` run on the server host.
    pub fn place_on_server(&self, command: &mut Command) {
        inside(command, &self.server_host);
    }

    /// Makes `command` run on the client host.
    pub fn place_on_client(&self, command: &mut Command) {
        inside(command, &self.client_host);
    }

    /// How often the server's shaper held a packet back for want of
    /// tokens (tbf's `overlimits`): above 0, the rate limit was binding.
    pub fn shaper_overlimits(&self) -> u64 {
        let text = output_in(
            &self.server_host,
            "tc",
            &["-s", "qdisc", "show", "dev", "veth-s"],
        );
        text.split(", ")
            .find_map(|part| part.strip_prefix("overlimits "))
            .and_then(|rest| rest.split(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no overlimits in {text}"))
    }

    /// Packets the loss rule has dropped so far on their way to the client.
    pub fn dropped_to_client(&self) -> u64 {
        let text = output_in(
            &self.client_host,
            "nft",
            &["list", "chain", "inet", "lab", "loss"],
        );
        text.split("counter packets ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no counter in {text}"))
    }

    /// Segments the server host's TCP has sent again so far, for every
    /// reason (`RetransSegs`: retransmissions and tail-loss probes): each
    /// data packet lost on the way to the client is among them, whether it
    /// was resent before or after its connection was closed.
    pub fn server_retransmitted_segments(&self) -> u64 {
        // /proc/net is the namespace of whoever reads it.
        let text = output_in(&self.server_host, "cat", &["/proc/net/snmp"]);
        let mut tcp = text.lines().filter(|line| line.starts_with("Tcp: "));
        let (names, values) = (tcp.next(), tcp.next());
        let (Some(names), Some(values)) = (names, values) else {
            panic!("no Tcp lines in {text}")
        };
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(name, _)| *name == "RetransSegs")
            .and_then(|(_, value)| value.parse().ok())
            .unwrap_or_else(|| panic!("no RetransSegs in {text}"))
    }

    /// Runs `work` on a new thread that has joined the client host, so the
    /// sockets it makes are the client host's (they stay there whatever
    /// thread uses them afterwards).
    pub fn on_client_host<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        on_host(&self.client_host, work)
    }
}

/// When a peer of [`echo_in_bursts_then`] ends its sending side.
#[derive(Clone, Copy, Debug)]
pub enum HalfClose {
    /// Right after its last byte, with echo still owed to it: the server
    /// must flush what it owes, then close.
    AfterSending,
    /// Once every byte has come back, for a path through a balancer:
    /// HAProxy 2.6.12 (Debian 12's) has been seen, on a loaded machine, to
    /// end a client's stream early when the client half-closed with bytes
    /// in flight: the backend got the FIN some 20 KiB short of what was
    /// sent, HAProxy logged a normal end, and the client was reset. Not
    /// minetd's doing: a plain Python echo backend (recv, sendall, shut
    /// down on EOF) behind the same HAProxy lost bytes the same way, in 2
    /// of 12 trials of 6 such clients with the lab tests running beside
    /// it (minetd without PROXY headers: 1 of 12).
    AfterEcho,
}

/// Sends `message` in bursts of seeded random sizes (1 B to 128 KiB, each
/// written whole, with a pause now and then) while another thread reads
/// whatever comes back; then half-closes and reads to EOF. Returns what
/// came back.
pub fn echo_in_bursts(stream: TcpStream, message: &[u8], seed: u64) -> Vec<u8> {
    echo_in_bursts_then(stream, message, seed, HalfClose::AfterSending)
}

/// Each of `streams` sends `len` bytes of its own seeded random data (seed
/// `seed + n` for the n-th) with [`echo_in_bursts_then`], all at once, and
/// must get every byte back in order.
pub fn every_echo_exact(streams: Vec<TcpStream>, len: usize, seed: u64, half_close: HalfClose) {
    thread::scope(|scope| {
        let runs: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(n, stream)| {
                scope.spawn(move || {
                    let seed = seed + n as u64;
                    let message = pseudo_random_bytes(len, seed);
                    let back = echo_in_bursts_then(stream, &message, seed, half_close);
                    assert_eq!(back.len(), message.len(), "peer {n}: length");
                    // Not assert_eq!: a MiB of bytes in a message helps no one.
                    let first = back.iter().zip(&message).position(|(a, b)| a != b);
                    assert_eq!(first, None, "peer {n}: first differing byte");
                })
            })
            .collect();
        for run in runs {
            run.join().expect("peer");
        }
    });
}

/// [`echo_in_bursts`], half-closing when `half_close` says.
pub fn echo_in_bursts_then(
    stream: TcpStream,
    message: &[u8],
    seed: u64,
    half_close: HalfClose,
) -> Vec<u8> {
    let mut reader = stream.try_clone().expect("clone");
    let (echoed, all_back) = mpsc::channel();
    thread::scope(|scope| {
        let back = scope.spawn(move || {
            let mut back = Vec::with_capacity(message.len());
            if let HalfClose::AfterEcho = half_close {
                (&mut reader)
                    .take(message.len() as u64)
                    .read_to_end(&mut back)
                    .expect("read the echo");
                let _ = echoed.send(());
            }
            reader.read_to_end(&mut back).expect("read the echo to EOF");
            back
        });
        let mut writer = stream;
        let mut state = seed | 1;
        let mut sent = 0;
        while sent < message.len() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let burst = (state as usize % (128 * 1024) + 1).min(message.len() - sent);
            writer
                .write_all(&message[sent..sent + burst])
                .expect("write a burst");
            sent += burst;
            if state % 4 == 0 {
                thread::sleep(Duration::from_millis(1));
            }
        }
        if let HalfClose::AfterEcho = half_close {
            // Err: the reader ended early, and its length check will say so.
            let _ = all_back.recv();
        }
        writer.shutdown(Shutdown::Write).expect("half-close");
        back.join().expect("reader")
    })
}
