//! The two reference UDP echo loops minetd is measured against, each run
//! in a process of its own (`udp --serve plain`, `udp --serve mmsg`) that
//! prints `listening udp-echo ADDR` as minetd does.
//!
//! - `plain`: what a hand-written C UDP echo looks like: a non-blocking
//!   socket in a level-triggered epoll set; on each wake-up, `recvfrom`
//!   into one 64 KiB buffer and `sendto` the datagram back, until
//!   `EAGAIN`. Two syscalls per datagram, as minetd makes now.
//! - `mmsg`: the same loop with `recvmmsg` taking up to `BATCH`
//!   datagrams per call and one `sendmmsg` answering all of them; a call
//!   that returns fewer than `BATCH` ends the wake-up (the queue is
//!   empty). With k datagrams queued per wake-up, 2 syscalls per k.

use std::io::{self, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::ExitCode;

use crate::mmsg::Batch;

/// Datagrams per `recvmmsg` / `sendmmsg` call.
pub const BATCH: usize = 64;
/// The largest UDP payload over IPv4: nothing is ever cut.
const DATAGRAM_MAX: usize = 65_536;

/// Runs the reference named by `spec` (`plain` or `mmsg`) until killed.
pub fn serve(spec: &str) -> ExitCode {
    let result = match spec {
        "plain" => bind().and_then(|socket| serve_plain(&socket)),
        "mmsg" => bind().and_then(|socket| serve_mmsg(&socket)),
        _ => Err(io::Error::other(format!(
            "unknown server {spec:?} (plain or mmsg)"
        ))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("udp --serve {spec}: {err}");
            ExitCode::FAILURE
        }
    }
}

/// A non-blocking socket on a loopback port, announced on stdout.
fn bind() -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    socket.set_nonblocking(true)?;
    let mut out = io::stdout().lock();
    writeln!(out, "listening udp-echo {}", socket.local_addr()?)?;
    out.flush()?;
    Ok(socket)
}

/// An epoll set with `fd` in it for reading, level-triggered.
fn epoll_for(fd: libc::c_int) -> io::Result<libc::c_int> {
    // SAFETY: plain syscalls; epoll_ctl reads one epoll_event we own.
    unsafe {
        let epfd = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        if epfd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 0,
        };
        if libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut event) < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(epfd)
    }
}

/// Blocks until the socket is readable.
fn wait(epfd: libc::c_int) -> io::Result<()> {
    let mut event = libc::epoll_event { events: 0, u64: 0 };
    // SAFETY: epoll_wait writes at most one event into `event`.
    let n = unsafe { libc::epoll_wait(epfd, &mut event, 1, -1) };
    if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One `recvfrom` and one `sendto` per datagram.
fn serve_plain(socket: &UdpSocket) -> io::Result<()> {
    let fd = socket.as_raw_fd();
    let epfd = epoll_for(fd)?;
    let mut buf = vec![0u8; DATAGRAM_MAX];
    loop {
        wait(epfd)?;
        loop {
            // SAFETY: all-zero is a valid sockaddr_storage; recvfrom and
            // sendto get buffers we own with their true lengths.
            let mut peer: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let mut peer_len = std::mem::size_of_val(&peer) as libc::socklen_t;
            let n = unsafe {
                libc::recvfrom(
                    fd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut peer as *mut libc::sockaddr_storage).cast(),
                    &mut peer_len,
                )
            };
            if n < 0 {
                break; // EAGAIN: drained (or an error: wait again)
            }
            unsafe {
                libc::sendto(
                    fd,
                    buf.as_ptr().cast(),
                    n as usize,
                    0,
                    (&peer as *const libc::sockaddr_storage).cast(),
                    peer_len,
                );
            }
        }
    }
}

/// Up to `BATCH` datagrams per `recvmmsg`, answered by one `sendmmsg`.
fn serve_mmsg(socket: &UdpSocket) -> io::Result<()> {
    let fd = socket.as_raw_fd();
    let epfd = epoll_for(fd)?;
    let mut batch = Batch::new(BATCH, DATAGRAM_MAX, true);
    loop {
        wait(epfd)?;
        loop {
            let received = match batch.recv(fd, BATCH) {
                Ok(0) | Err(_) => break,
                Ok(received) => received,
            };
            batch.answer_as_received(received);
            batch.send(fd, 0, received);
            if received < BATCH {
                break; // the queue is empty: no `EAGAIN` call needed
            }
        }
    }
}
