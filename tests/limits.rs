//! `--max-connections` and `--idle-timeout` against the real `minetd`: a
//! connection over the limit sees EOF at once (never a hang) while the
//! others keep being served, and only silent connections time out.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::{STEP, Server, connect, wait_until};

/// Sends `message` and reads back exactly as many bytes.
fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Vec<u8> {
    stream.write_all(message).expect("write");
    let mut back = vec![0; message.len()];
    stream.read_exact(&mut back).expect("read echo");
    back
}

/// Whether a new connection to `addr` is served: it echoes a byte rather
/// than closing at once.
fn new_connection_is_served(addr: SocketAddr) -> bool {
    let mut stream = connect(addr);
    if stream.write_all(b"?").is_err() {
        return false;
    }
    let mut byte = [0; 1];
    matches!(stream.read(&mut byte), Ok(1) if byte == *b"?")
}

#[test]
fn connection_over_the_limit_sees_eof_while_the_others_echo() {
    let mut server = Server::start(&["--echo", "127.0.0.1:0", "--max-connections", "2"]);
    let log = server.stderr_lines();
    let mut first = connect(server.echo());
    let mut second = connect(server.echo());
    // A round trip each proves the server has taken both.
    assert_eq!(round_trip(&mut first, b"one"), b"one");
    assert_eq!(round_trip(&mut second, b"two"), b"two");

    let mut third = connect(server.echo());
    let mut byte = [0; 1];
    let read = third.read(&mut byte);
    assert!(
        matches!(read, Ok(0)),
        "third connection: {read:?} instead of EOF"
    );

    assert_eq!(round_trip(&mut first, b"still one"), b"still one");
    assert_eq!(round_trip(&mut second, b"still two"), b"still two");

    let mut seen = Vec::new();
    let warning = loop {
        let Ok(line) = log.recv_timeout(STEP) else {
            panic!("no refusal warning on stderr in {seen:#?}");
        };
        if line.contains("refusing") {
            break line;
        }
        seen.push(line);
    };
    assert!(warning.contains(" WARN "), "{warning}");
    assert!(
        warning.ends_with("refusing connections: 2 open (max-connections)"),
        "{warning}"
    );
}

#[test]
fn refused_connection_that_sent_bytes_sees_eof_not_a_reset() {
    let server = Server::start(&["--echo", "127.0.0.1:0", "--max-connections", "1"]);
    let mut first = connect(server.echo());
    assert_eq!(round_trip(&mut first, b"one"), b"one");

    let mut extra = connect(server.echo());
    extra.write_all(b"let me in").expect("write");
    let mut received = Vec::new();
    let read = extra.read_to_end(&mut received);
    assert!(
        matches!(read, Ok(0)),
        "refused connection: {read:?} instead of EOF"
    );
}

#[test]
fn closing_a_connection_at_the_limit_lets_a_new_one_in() {
    let server = Server::start(&["--echo", "127.0.0.1:0", "--max-connections", "2"]);
    let mut first = connect(server.echo());
    let mut second = connect(server.echo());
    assert_eq!(round_trip(&mut first, b"one"), b"one");
    assert_eq!(round_trip(&mut second, b"two"), b"two");
    assert!(
        !new_connection_is_served(server.echo()),
        "a third connection was served"
    );

    drop(first);
    // The server learns of the close asynchronously: retry until it has.
    assert!(
        wait_until(STEP, || new_connection_is_served(server.echo())),
        "no new connection served after one of two closed"
    );
    assert_eq!(round_trip(&mut second, b"two again"), b"two again");
}

#[test]
fn silent_connection_is_closed_after_the_idle_timeout() {
    let server = Server::start(&["--echo", "127.0.0.1:0", "--idle-timeout", "1"]);
    let mut silent = connect(server.echo());
    silent
        .set_read_timeout(Some(Duration::from_secs(6)))
        .expect("read timeout");
    let started = Instant::now();
    let mut byte = [0; 1];
    let read = silent.read(&mut byte);
    let waited = started.elapsed();
    match read {
        Ok(0) => {}
        Err(err) if err.kind() == ErrorKind::WouldBlock => {
            panic!("still open after {waited:?} with --idle-timeout 1")
        }
        other => panic!("{other:?} instead of EOF"),
    }
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}, before the idle timeout"
    );
}

#[test]
fn active_connection_outlives_the_idle_timeout() {
    let server = Server::start(&["--echo", "127.0.0.1:0", "--idle-timeout", "1"]);
    let mut active = connect(server.echo());
    let started = Instant::now();
    let mut round = 0u32;
    while started.elapsed() < Duration::from_millis(2500) {
        let message = format!("round {round}");
        let mut back = vec![0; message.len()];
        active.write_all(message.as_bytes()).expect("write");
        if let Err(err) = active.read_exact(&mut back) {
            panic!(
                "active connection lost after {:?}: {err}",
                started.elapsed()
            );
        }
        assert_eq!(back, message.as_bytes());
        round += 1;
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(round_trip(&mut active, b"last"), b"last");
}
