//! The library serving listeners its embedder already holds
//! (`Server::bind_with`): served first and as given, checked for being what
//! their service needs, and allowed to be all a server serves.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::OwnedFd;
use std::thread;
use std::time::Duration;

use common::{STEP, connect};
use minetd::{BindError, Config, HeldListener, HeldProblem, Server, Service};

/// Serves `server` on a thread until the returned handle is used.
fn serve(mut server: Server) -> (minetd::ShutdownHandle, thread::JoinHandle<()>) {
    let stop = server.shutdown_handle();
    let thread = thread::spawn(move || server.run().expect("run"));
    (stop, thread)
}

fn problem_of(result: Result<Server, BindError>) -> (usize, Service, HeldProblem) {
    match result {
        Err(BindError::Held {
            index,
            service,
            problem,
        }) => (index, service, problem),
        Err(other) => panic!("expected a held-listener error, got {other}"),
        Ok(_) => panic!("expected a held-listener error, got a server"),
    }
}

#[test]
fn held_listeners_come_first_and_are_served_beside_configured_ones() {
    let tcp = TcpListener::bind("127.0.0.1:0").expect("bind");
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let (tcp_addr, udp_addr) = (tcp.local_addr().unwrap(), udp.local_addr().unwrap());
    let config = Config {
        daytime: vec!["127.0.0.1:0".parse().unwrap()],
        ..Config::default()
    };
    let held = vec![
        HeldListener::Udp(Service::UdpEcho, udp),
        HeldListener::Tcp(Service::Echo, tcp),
    ];
    let server = Server::bind_with(&config, held).expect("bind_with");
    let addrs = server.local_addrs();
    assert_eq!(
        addrs[..2],
        [(Service::UdpEcho, udp_addr), (Service::Echo, tcp_addr)]
    );
    assert_eq!(addrs[2].0, Service::Daytime);
    let (stop, thread) = serve(server);

    let mut stream = connect(tcp_addr);
    stream.write_all(b"held\n").unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    stream.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"held\n");

    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(STEP)).unwrap();
    client.send_to(b"dgram", udp_addr).unwrap();
    let mut buf = [0u8; 16];
    let (len, _) = client.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..len], b"dgram");

    stop.shutdown();
    thread.join().unwrap();
}

#[test]
fn a_config_with_no_address_needs_a_held_listener() {
    assert!(matches!(
        Server::bind_with(&Config::default(), Vec::new()),
        Err(BindError::Config(minetd::ConfigError::NoService))
    ));
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let held = vec![HeldListener::Tcp(Service::Daytime, tcp)];
    let server = Server::bind_with(&Config::default(), held).expect("held alone");
    assert_eq!(server.local_addrs().len(), 1);
}

#[test]
fn a_held_udp_socket_off_loopback_needs_no_allow_list() {
    let udp = UdpSocket::bind("0.0.0.0:0").unwrap();
    let held = vec![HeldListener::Udp(Service::UdpEcho, udp)];
    assert!(Server::bind_with(&Config::default(), held).is_ok());
}

#[test]
fn a_service_on_the_wrong_transport_is_refused() {
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let (index, service, problem) = problem_of(Server::bind_with(
        &Config::default(),
        vec![HeldListener::Tcp(Service::UdpEcho, tcp)],
    ));
    assert_eq!((index, service), (0, Service::UdpEcho));
    assert!(matches!(problem, HeldProblem::NotDatagram), "{problem}");

    // A datagram socket passed off as a listener (as a mislabelled
    // descriptor would be) is caught by its type, not by its Rust wrapper.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let disguised = TcpListener::from(OwnedFd::from(udp));
    let keep = TcpListener::bind("127.0.0.1:0").unwrap();
    let (index, _, problem) = problem_of(Server::bind_with(
        &Config::default(),
        vec![
            HeldListener::Tcp(Service::Echo, keep),
            HeldListener::Tcp(Service::Echo, disguised),
        ],
    ));
    assert_eq!(index, 1);
    assert!(matches!(problem, HeldProblem::NotStream), "{problem}");
}

#[test]
fn a_connected_stream_is_not_a_listener() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    let connected = TcpListener::from(OwnedFd::from(stream));
    let (_, _, problem) = problem_of(Server::bind_with(
        &Config::default(),
        vec![HeldListener::Tcp(Service::Echo, connected)],
    ));
    assert!(matches!(problem, HeldProblem::NotListening), "{problem}");
    assert_eq!(
        problem.to_string(),
        "is a connected socket, not a listening one"
    );
}
