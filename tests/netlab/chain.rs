//! A three-host lab: a client, a balancer and a server, each a network
//! namespace of its own, in a row, for the tests that put a real
//! balancer between minetd and its clients (`tests/lab_proxy.rs`).
//!
//! ```text
//!  client host             balancer host                       server host
//!  veth-c 198.18.1.2/24 <--> veth-bc 198.18.1.1/24
//!                            veth-bs 198.18.2.2/24 <--> veth-s 198.18.2.1/24
//!                    MTU 1500                      MTU 1500
//! ```
//!
//! Both links are made as in the two-host [`Lab`](super::Lab): Ethernet's
//! MTU, segmentation offload capped at one MTU, so TCP on each hop has an
//! MSS of 1,448 and every segment crosses as its own packet. A balancer
//! that terminates TCP (HAProxy in `mode tcp`) needs no routing; the
//! balancer host also forwards between its links, as a router in front of
//! a real server farm would, so a client can bypass the balancer and reach
//! the server directly, from an address the server does not trust.
//!
//! As in the two-host lab, the test process itself never changes
//! namespace, and dropping the [`Chain`] lets the kernel free all three.

use std::fs::File;
use std::net::Ipv4Addr;
use std::process::Command;

use super::{inside, new_namespace, on_host, output_in, run_in, veth};

/// The client host's address, on the client link.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// The balancer's address on the client link: where clients connect.
pub const FRONT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// The balancer's address on the server link: where the server sees it
/// connect from.
pub const BALANCER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
/// The server host's address, on the server link.
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);

/// One of the three hosts.
#[derive(Clone, Copy, Debug)]
pub enum Host {
    Client,
    Balancer,
    Server,
}

/// Three namespaces in a row, joined by two veth pairs.
pub struct Chain {
    client_host: File,
    balancer_host: File,
    server_host: File,
}

impl Chain {
    /// Builds the chain, or says why this machine cannot (no permission to
    /// make namespaces, a tool missing): the caller skips with that reason.
    pub fn new() -> Result<Chain, String> {
        let host =
            || new_namespace().map_err(|err| format!("cannot make a network namespace: {err}"));
        let chain = Chain {
            client_host: host()?,
            balancer_host: host()?,
            server_host: host()?,
        };
        chain.wire()?;
        Ok(chain)
    }

    fn wire(&self) -> Result<(), String> {
        let (client, balancer, server) =
            (&self.client_host, &self.balancer_host, &self.server_host);
        for ns in [client, balancer, server] {
            run_in(ns, "ip", &["link", "set", "lo", "up"], "")?;
        }
        veth(
            (balancer, "veth-bc", FRONT_IP),
            (client, "veth-c", CLIENT_IP),
        )?;
        veth(
            (balancer, "veth-bs", BALANCER_IP),
            (server, "veth-s", SERVER_IP),
        )?;
        run_in(balancer, "sysctl", &["-qw", "net.ipv4.ip_forward=1"], "")?;
        let (front, balancer_ip) = (FRONT_IP.to_string(), BALANCER_IP.to_string());
        let to_server_link = ["route", "add", "198.18.2.0/24", "via", &front];
        run_in(client, "ip", &to_server_link, "")?;
        let to_client_link = ["route", "add", "198.18.1.0/24", "via", &balancer_ip];
        run_in(server, "ip", &to_client_link, "")?;
        Ok(())
    }

    fn namespace(&self, host: Host) -> &File {
        match host {
            Host::Client => &self.client_host,
            Host::Balancer => &self.balancer_host,
            Host::Server => &self.server_host,
        }
    }

    /// Makes `command` run on `host`.
    pub fn place(&self, host: Host, command: &mut Command) {
        inside(command, self.namespace(host));
    }

    /// Runs `work` on a new thread that has joined `host`, so the sockets
    /// it makes are that host's.
    pub fn on<T: Send>(&self, host: Host, work: impl FnOnce() -> T + Send) -> T {
        on_host(self.namespace(host), work)
    }

    /// `ss -tin` on `host` with `filter` (an `ss` filter expression):
    /// each established TCP socket's addresses and the kernel's figures
    /// for it.
    pub fn tcp_sockets(&self, host: Host, filter: &str) -> Vec<String> {
        let text = output_in(
            self.namespace(host),
            "ss",
            &["-Htin", "state", "established", filter],
        );
        // Each socket is two lines: addresses, then (indented) its figures.
        let mut sockets: Vec<String> = Vec::new();
        for line in text.lines() {
            match sockets.last_mut() {
                Some(last) if line.starts_with(char::is_whitespace) => last.push_str(line),
                _ => sockets.push(line.to_string()),
            }
        }
        sockets
    }

    /// Whether something on `host` listens on TCP port `port`.
    pub fn listens(&self, host: Host, port: u16) -> bool {
        let filter = format!("sport = :{port}");
        !output_in(self.namespace(host), "ss", &["-Hltn", &filter]).is_empty()
    }
}
