//! UDP services on a wildcard address answer each datagram from the
//! address it was sent to: a client with a connected socket (or behind a
//! NAT or a stateful firewall) drops an answer from any other address.
//! Loopback has all of 127.0.0.0/8 for IPv4; IPv6 gets its second and
//! third addresses in a network namespace the test makes.

mod common;

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use common::{STEP, Server};

/// Long enough for an answer on loopback, short enough that a dropped one
/// fails quickly.
const ANSWER_WAIT: Duration = Duration::from_secs(2);

const SERVICES: [&str; 5] = [
    "udp-echo",
    "udp-daytime",
    "udp-time",
    "udp-chargen",
    "udp-discard",
];

/// Starts every UDP service on `wildcard` (port 0), allowing `allow`.
fn wildcard_server(wildcard: &str, allow: &[&str]) -> Server {
    let mut args = Vec::new();
    for service in SERVICES {
        args.push(format!("--{service}"));
        args.push(format!("{wildcard}:0"));
    }
    for cidr in allow {
        args.push("--allow".to_string());
        args.push(cidr.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&args)
}

/// A UDP socket on `from` connected to `to`: the kernel delivers it only
/// datagrams from exactly `to`.
fn connected_to(to: SocketAddr, from: IpAddr) -> UdpSocket {
    let socket = UdpSocket::bind(SocketAddr::new(from, 0)).expect("bind client");
    socket.connect(to).expect("connect client");
    socket.set_read_timeout(Some(ANSWER_WAIT)).expect("timeout");
    socket
}

/// Asks every service at `ip` from `from` through connected sockets and
/// checks each answer (discard's silence too); also checks, on an
/// unconnected socket, that echo's answer names `ip` as its source. The
/// client's address differs from the one asked, so that the kernel's
/// default choice of source (the address nearest the client) is wrong.
fn every_service_answers_from(server: &Server, ip: IpAddr, from: IpAddr) {
    for (n, service) in SERVICES.into_iter().enumerate() {
        let to = SocketAddr::new(ip, server.addr_of(service, 0).port());
        let socket = connected_to(to, from);
        if service == "udp-discard" {
            // Silence is all it can show: no need to wait as for an answer.
            socket
                .set_read_timeout(Some(Duration::from_millis(200)))
                .expect("timeout");
        }
        let request = format!("{service} to {to}, #{n}").into_bytes();
        socket.send(&request).expect("send");
        let mut buf = [0; 65536];
        let answer = socket.recv(&mut buf).map(|len| buf[..len].to_vec());
        match (service, answer) {
            ("udp-discard", Err(err)) => {
                assert!(
                    matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                    "{err}"
                );
            }
            ("udp-discard", Ok(answer)) => panic!("discard at {to} answered {answer:?}"),
            (_, Err(err)) => panic!("{service} at {to}: no answer from {to}: {err}"),
            ("udp-echo", Ok(answer)) => assert_eq!(answer, request, "{to}"),
            ("udp-daytime", Ok(answer)) => {
                assert!(
                    answer.ends_with(b"\r\n") && answer.len() == 26,
                    "{answer:?}"
                )
            }
            ("udp-time", Ok(answer)) => assert_eq!(answer.len(), 4, "{answer:?}"),
            ("udp-chargen", Ok(answer)) => {
                assert!(answer.len() <= 512, "{}", answer.len());
                assert!(answer.iter().all(|b| b.is_ascii()), "{answer:?}");
            }
            (other, Ok(_)) => unreachable!("{other}"),
        }
    }
    let echo = SocketAddr::new(ip, server.addr_of("udp-echo", 0).port());
    let unconnected = UdpSocket::bind(SocketAddr::new(from, 0)).expect("bind");
    unconnected.set_read_timeout(Some(STEP)).expect("timeout");
    unconnected.send_to(b"who answers?", echo).expect("send");
    let mut buf = [0; 64];
    let (len, from) = unconnected.recv_from(&mut buf).expect("an answer");
    assert_eq!((&buf[..len], from), (&b"who answers?"[..], echo));
}

#[test]
fn ipv4_wildcard_answers_from_each_address_asked() {
    let server = wildcard_server("0.0.0.0", &["127.0.0.0/8"]);
    for (ip, from) in [
        ("127.0.0.2", "127.0.0.1"),
        ("127.0.0.3", "127.0.0.2"),
        ("127.0.0.1", "127.0.0.3"),
        ("127.1.2.3", "127.0.0.1"),
    ] {
        every_service_answers_from(&server, ip.parse().expect("ip"), from.parse().expect("ip"));
    }
}

#[test]
fn a_wildcard_echoes_the_largest_datagram_whole() {
    let server = wildcard_server("0.0.0.0", &["127.0.0.0/8"]);
    let to = SocketAddr::new(
        "127.0.0.9".parse().expect("ip"),
        server.addr_of("udp-echo", 0).port(),
    );
    let socket = connected_to(to, "127.0.0.1".parse().expect("ip"));
    let request = common::pseudo_random_bytes(65_507, 7);
    socket.send(&request).expect("send");
    let mut buf = vec![0; 65_536];
    let len = socket.recv(&mut buf).expect("an answer");
    assert_eq!(buf[..len], request[..]);
}

#[test]
fn a_specific_address_still_answers_and_the_loop_guard_holds_on_a_wildcard() {
    let server = Server::start(&["--udp-echo", "127.0.0.4:0"]);
    let socket = connected_to(
        server.addr_of("udp-echo", 0),
        "127.0.0.1".parse().expect("ip"),
    );
    socket.send(b"plain").expect("send");
    let mut buf = [0; 16];
    let len = socket.recv(&mut buf).expect("answer");
    assert_eq!(&buf[..len], b"plain");

    let server = wildcard_server("0.0.0.0", &["127.0.0.0/8"]);
    let to = SocketAddr::new(
        "127.0.0.2".parse().expect("ip"),
        server.addr_of("udp-echo", 0).port(),
    );
    match UdpSocket::bind("127.0.0.3:19") {
        Ok(chargen_port) => {
            chargen_port.send_to(b"loop?", to).expect("send");
            chargen_port
                .set_read_timeout(Some(Duration::from_millis(300)))
                .expect("timeout");
            let mut buf = [0; 16];
            let silent = chargen_port.recv_from(&mut buf);
            assert!(silent.is_err(), "answered port 19: {silent:?}");
        }
        Err(err) if err.kind() == ErrorKind::PermissionDenied => {
            eprintln!("cannot bind port 19 without privileges; loop guard not checked here");
        }
        Err(err) => panic!("bind 127.0.0.3:19: {err}"),
    }
}

/// Environment variable that tells the namespaced half it is inside.
const IN_NAMESPACE: &str = "MINETD_UDP_IN_NAMESPACE";

/// Addresses from the IPv6 benchmarking range (RFC 5180), on `lo` in the
/// namespace only.
const LAB_V6: [&str; 2] = ["2001:2::2", "2001:2::3"];

/// Runs inside a namespace made by
/// `ipv6_wildcard_answers_from_each_address_asked`, whose `lo` carries
/// [`LAB_V6`] beside `::1`.
#[test]
#[ignore]
fn ipv6_wildcard_inside_a_namespace() {
    if std::env::var_os(IN_NAMESPACE).is_none() {
        eprintln!(
            "skipped: runs inside the namespace ipv6_wildcard_answers_from_each_address_asked makes"
        );
        return;
    }
    let server = wildcard_server("[::]", &["2001:2::/48", "::1/128", "127.0.0.0/8"]);
    // [::] also takes IPv4 (as mapped addresses): those answers must come
    // from the IPv4 address asked too.
    for (ip, from) in [
        (LAB_V6[0], LAB_V6[1]),
        (LAB_V6[1], "::1"),
        ("::1", LAB_V6[0]),
        ("127.0.0.2", "127.0.0.1"),
        ("127.0.0.3", "127.0.0.2"),
    ] {
        every_service_answers_from(&server, ip.parse().expect("ip"), from.parse().expect("ip"));
    }
}

#[test]
fn ipv6_wildcard_answers_from_each_address_asked() {
    if !common::can_unshare_net() {
        return;
    }
    // `nodad`: without it the addresses stay tentative (unusable) for a
    // second or so while duplicate address detection runs.
    let setup = format!(
        "ip link set lo up && ip -6 addr add {}/128 dev lo nodad && \
         ip -6 addr add {}/128 dev lo nodad",
        LAB_V6[0], LAB_V6[1]
    );
    common::run_in_new_netns(
        &setup,
        "ipv6_wildcard_inside_a_namespace",
        (IN_NAMESPACE, "1"),
    );
}

/// Datagrams queued before the server first reads, more than one batch
/// (the server takes up to 32 per `recvmmsg`) and more than one turn's cap
/// (256): every one is answered, to its own sender, byte for byte. On a
/// specific address and on a wildcard (where each answer carries its own
/// source address).
#[test]
fn a_queued_burst_bigger_than_a_batch_is_answered_whole_each_to_its_sender() {
    const SENDERS: usize = 6;
    const EACH: usize = 50;
    for bind in ["127.0.0.1:0", "0.0.0.0:0"] {
        let socket = UdpSocket::bind(bind).expect("bind");
        // The default receive buffer holds only about 256 small datagrams.
        set_receive_buffer(&socket, 4 << 20);
        let to = SocketAddr::from(([127, 0, 0, 1], socket.local_addr().unwrap().port()));
        let held = vec![minetd::HeldListener::Udp(minetd::Service::UdpEcho, socket)];
        let config = minetd::Config {
            allow: vec!["127.0.0.0/8".parse().expect("cidr")],
            ..minetd::Config::default()
        };
        let mut server = minetd::Server::bind_with(&config, held).expect("bind_with");

        let senders: Vec<UdpSocket> = (0..SENDERS)
            .map(|n| connected_to(to, IpAddr::from([127, 0, 0, 1 + n as u8])))
            .collect();
        let message = |sender: usize, n: usize| -> Vec<u8> {
            // Lengths vary from 1 to 256 bytes (300 such fit in a receive
            // buffer as `net.core.rmem_max` caps it by default); the bytes
            // name the sender and the round.
            let len = 1 + (sender * 211 + n * 97) % 256;
            (0..len).map(|i| (sender * 31 + n * 7 + i) as u8).collect()
        };
        for n in 0..EACH {
            for (sender, socket) in senders.iter().enumerate() {
                socket.send(&message(sender, n)).expect("send");
            }
        }

        let stop = server.shutdown_handle();
        let thread = std::thread::spawn(move || server.run().expect("run"));
        let mut buf = [0; 2048];
        for (sender, socket) in senders.iter().enumerate() {
            for n in 0..EACH {
                let len = socket
                    .recv(&mut buf)
                    .unwrap_or_else(|err| panic!("{bind}: sender {sender}, echo {n}: {err}"));
                assert!(
                    buf[..len] == message(sender, n),
                    "{bind}: sender {sender}, echo {n}: wrong bytes ({len} long)"
                );
            }
        }
        stop.shutdown();
        thread.join().expect("server thread");
    }
}

/// Asks for a receive buffer of `bytes` (the kernel caps it at
/// `net.core.rmem_max`).
fn set_receive_buffer(socket: &UdpSocket, bytes: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt reads one c_int we own.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUF: {}", std::io::Error::last_os_error());
}
