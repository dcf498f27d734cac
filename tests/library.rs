//! The library on the test's own thread, as an embedder uses it: bind, learn
//! the addresses, serve with `run` or a `turn` loop, stop from another
//! thread or from the loop's own, and read a bind failure.

mod common;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{STEP, connect, connect_as_remote_peer, pseudo_random_bytes, read_to_eof};
use minetd::{BindError, Config, ConfigError, Server, Service, ShutdownHandle};

/// The loop runs on the test's thread, where nothing can interrupt a hung
/// `run`: if the guard is not dropped within `limit`, the whole test
/// process aborts with a message instead of hanging.
struct Watchdog {
    _disarm: mpsc::Sender<()>,
}

impl Watchdog {
    fn arm(limit: Duration, what: &'static str) -> Watchdog {
        let (disarm, armed) = mpsc::channel::<()>();
        thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = armed.recv_timeout(limit) {
                eprintln!("{what}: still running after {limit:?}; aborting");
                std::process::abort();
            }
        });
        Watchdog { _disarm: disarm }
    }
}

/// Shuts the server down when dropped, so a client thread that panics
/// still lets the loop return.
struct StopOnDrop(ShutdownHandle);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

fn loopback_port_0() -> SocketAddr {
    "127.0.0.1:0".parse().expect("address")
}

fn echo_config() -> Config {
    Config {
        echo: vec![loopback_port_0()],
        ..Default::default()
    }
}

/// Sends `message`, half-closes, and returns everything echoed.
fn echo_once(addr: SocketAddr, message: &[u8]) -> Vec<u8> {
    let mut stream = connect(addr);
    stream.write_all(message).expect("write");
    stream.shutdown(Shutdown::Write).expect("half-close");
    read_to_eof(&mut stream)
}

#[test]
fn local_addrs_names_each_service_and_its_real_port() {
    let server = Server::bind(&Config {
        echo: vec![loopback_port_0()],
        daytime: vec![loopback_port_0()],
        ..Default::default()
    })
    .expect("bind");
    let addrs = server.local_addrs();
    let services: Vec<Service> = addrs.iter().map(|(service, _)| *service).collect();
    assert_eq!(services, [Service::Echo, Service::Daytime]);
    for (_, addr) in &addrs {
        assert_eq!(addr.ip(), loopback_port_0().ip());
        assert_ne!(addr.port(), 0);
    }
    assert_ne!(addrs[0].1, addrs[1].1);
}

#[test]
fn run_serves_until_shutdown_from_another_thread_then_returns_ok() {
    let _watchdog = Watchdog::arm(STEP * 2, "run");
    let mut server = Server::bind(&echo_config()).expect("bind");
    let addr = server.local_addrs()[0].1;
    let stop = StopOnDrop(server.shutdown_handle());
    let message = pseudo_random_bytes(200_000, 11);
    let sent = message.clone();
    let client = thread::spawn(move || {
        let _stop = stop;
        echo_once(addr, &sent)
    });
    let result = server.run();
    let echoed = client.join().expect("client thread");
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(echoed.len(), message.len());
    assert!(echoed == message, "echoed bytes differ");
    // `run` has returned: the listener is closed.
    let err = TcpStream::connect(addr).expect_err("listener still open");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
}

#[test]
fn shutdown_closes_an_idle_connection_and_run_returns() {
    let _watchdog = Watchdog::arm(STEP * 2, "run");
    let mut server = Server::bind(&echo_config()).expect("bind");
    let addr = server.local_addrs()[0].1;
    let stop = StopOnDrop(server.shutdown_handle());
    let client = thread::spawn(move || {
        let mut stream = connect(addr);
        stream.write_all(b"hi").expect("write");
        let mut back = [0; 2];
        stream.read_exact(&mut back).expect("echo");
        drop(stop); // shuts down while this connection is open and idle
        (back, read_to_eof(&mut stream))
    });
    server.run().expect("run");
    let (back, rest) = client.join().expect("client thread");
    assert_eq!(&back, b"hi");
    assert_eq!(rest, b"", "the server closed the idle connection");
}

#[test]
fn turn_with_a_timeout_serves_between_the_callers_own_work() {
    let _watchdog = Watchdog::arm(STEP * 2, "turn loop");
    let mut server = Server::bind(&echo_config()).expect("bind");
    let addr = server.local_addrs()[0].1;
    // With nothing to do, a turn returns after its timeout.
    for _ in 0..3 {
        let turn = server.turn(Some(Duration::from_millis(10))).expect("turn");
        assert!(!turn.finished);
    }
    let done = Arc::new(AtomicBool::new(false));
    let client_done = Arc::clone(&done);
    let client = thread::spawn(move || {
        let echoed: Vec<Vec<u8>> = (0..20)
            .map(|seed| echo_once(addr, &pseudo_random_bytes(1000 + seed * 97, seed as u64)))
            .collect();
        client_done.store(true, Ordering::Release);
        echoed
    });
    let deadline = Instant::now() + STEP;
    while !done.load(Ordering::Acquire) {
        assert!(Instant::now() < deadline, "client not done in time");
        let turn = server.turn(Some(Duration::from_millis(50))).expect("turn");
        assert!(!turn.finished);
    }
    let echoed = client.join().expect("client thread");
    for (seed, back) in echoed.iter().enumerate() {
        assert!(*back == pseudo_random_bytes(1000 + seed * 97, seed as u64));
    }

    // Shut down from the loop's own thread, then turn until finished.
    server.shutdown();
    let deadline = Instant::now() + STEP;
    while !server
        .turn(Some(Duration::from_millis(50)))
        .expect("turn")
        .finished
    {
        assert!(Instant::now() < deadline, "shutdown did not finish");
    }
    // Once finished, a turn returns at once, still finished.
    let turn = server.turn(None).expect("turn");
    assert!(turn.finished);
}

#[test]
fn bind_to_an_occupied_port_names_service_address_and_error() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("occupy a port");
    let addr = taken.local_addr().expect("local addr");
    let result = Server::bind(&Config {
        echo: vec![loopback_port_0()],
        daytime: vec![addr],
        ..Default::default()
    });
    let err = result.expect_err("bound an occupied port");
    match &err {
        BindError::Listen {
            service,
            addr: failed,
            source,
        } => {
            assert_eq!(*service, Service::Daytime);
            assert_eq!(*failed, addr);
            assert_eq!(source.kind(), io::ErrorKind::AddrInUse);
        }
        other => panic!("{other:?} is not a listen error"),
    }
    let in_use = io::Error::from_raw_os_error(libc::EADDRINUSE);
    assert_eq!(
        err.to_string(),
        format!("cannot listen on {addr} for daytime: {in_use}")
    );
}

#[test]
fn bind_with_no_service_is_a_config_error() {
    let err = Server::bind(&Config::default()).expect_err("bound nothing");
    assert!(
        matches!(err, BindError::Config(ConfigError::NoService)),
        "{err:?}"
    );
}

#[test]
fn buffered_bytes_stay_within_max_buffered_and_return_to_zero() {
    const MAX_BUFFERED: usize = 100_000;
    let _watchdog = Watchdog::arm(6 * STEP, "budget test");
    let mut server = Server::bind(&Config {
        max_buffered: MAX_BUFFERED,
        ..echo_config()
    })
    .expect("bind");
    let addr = server.local_addrs()[0].1;
    let stop = StopOnDrop(server.shutdown_handle());
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let (close_tx, close_rx) = mpsc::channel::<()>();
    let peers = thread::spawn(move || {
        // Ten peers that write and never read: the server must hold bytes
        // for some, and no more than the budget in all.
        let peers: Vec<TcpStream> = (0..10)
            .map(|_| {
                let mut stream = connect_as_remote_peer(addr);
                stream.set_nonblocking(true).expect("nonblocking");
                let chunk = [0x42; 16 * 1024];
                let mut written = 0;
                while written < 256 * 1024 {
                    match stream.write(&chunk) {
                        Ok(n) => written += n,
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(5));
                        }
                        Err(err) => panic!("write: {err}"),
                    }
                }
                stream
            })
            .collect();
        done_tx.send(()).expect("signal");
        close_rx.recv().expect("wait");
        drop(peers);
        let _stop = stop;
    });
    let mut most = 0;
    while done_rx.try_recv().is_err() {
        server.turn(Some(Duration::from_millis(5))).expect("turn");
        most = most.max(server.buffered());
        assert!(
            server.buffered() <= MAX_BUFFERED,
            "{} held",
            server.buffered()
        );
    }
    for _ in 0..20 {
        server.turn(Some(Duration::from_millis(5))).expect("turn");
        most = most.max(server.buffered());
    }
    assert!(
        most > MAX_BUFFERED / 2,
        "the peers never made it hold much: {most}"
    );
    close_tx.send(()).expect("signal");
    server.run().expect("run");
    peers.join().expect("peers");
    assert_eq!(server.connections(), 0);
    assert_eq!(server.buffered(), 0, "every byte given back");
}

#[test]
fn durations_past_the_clocks_range_mean_never_not_a_panic() {
    // Found with the `args` fuzz check's inputs (fuzz/seeds/args):
    // `--stats-interval 18446744073709551615` panicked in bind and
    // `--shutdown-grace 18446744073709551615` at shutdown, adding them to
    // an Instant. So long an interval never comes; so long a grace waits
    // for the connections to finish.
    let _watchdog = Watchdog::arm(STEP * 2, "run");
    let mut server = Server::bind(&Config {
        stats_interval: Some(Duration::MAX),
        shutdown_grace: Duration::MAX,
        idle_timeout: Some(Duration::MAX),
        ..echo_config()
    })
    .expect("bind");
    let addr = server.local_addrs()[0].1;
    let stop = StopOnDrop(server.shutdown_handle());
    let client = thread::spawn(move || {
        let _stop = stop;
        echo_once(addr, b"still serving")
    });
    let result = server.run();
    assert_eq!(client.join().expect("client thread"), b"still serving");
    assert!(result.is_ok(), "{result:?}");
}
