//! The reference servers minetd is measured against. The bench runs each in
//! a child process of its own (`echo --serve epoll`, `echo --serve
//! tokio:16384`), which prints `listening echo ADDR` like minetd does.
//!
//! - `epoll`: what a hand-written C echo server looks like: one
//!   level-triggered epoll loop on raw `libc` calls, a 64 KiB read buffer
//!   shared by every connection, one `read` and one `write` of what was read
//!   per readiness event. What a short write leaves is kept per connection,
//!   and that connection waits for `EPOLLOUT` (and reads nothing) until it is
//!   written, so memory stays bounded as in minetd.
//! - `tokio:SIZE`: the idiomatic tokio echo: a `current_thread` runtime, one
//!   task per connection with a `Vec` buffer of SIZE bytes, `read` then
//!   `write_all`.
//!
//! Both listen with a backlog of 4096 and set `TCP_NODELAY` on each
//! connection, as minetd does, so the comparison is of the loops alone.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::process::ExitCode;

const BACKLOG: libc::c_int = 4096;
const READ_BUFFER: usize = 64 * 1024;
const EVENTS: usize = 1024;

/// Runs the reference server named by `spec` (`epoll` or `tokio:SIZE`)
/// until killed.
pub fn serve(spec: &str) -> ExitCode {
    if let Err(err) = crate::sys::raise_nofile() {
        eprintln!("echo --serve {spec}: cannot raise the descriptor limit: {err}");
    }
    let result = match spec.split_once(':') {
        None if spec == "epoll" => serve_epoll(),
        Some(("tokio", size)) => match size.parse::<usize>() {
            Ok(size) if size > 0 => serve_tokio(size),
            _ => Err(io::Error::other(format!("bad tokio buffer size {size:?}"))),
        },
        _ => Err(io::Error::other(format!(
            "unknown server {spec:?} (epoll or tokio:SIZE)"
        ))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("echo --serve {spec}: {err}");
            ExitCode::FAILURE
        }
    }
}

fn announce(addr: SocketAddr) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "listening echo {addr}")?;
    out.flush()
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// -1 becomes the OS error.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn epoll_set(epfd: libc::c_int, op: libc::c_int, fd: libc::c_int, events: u32) -> io::Result<()> {
    let mut event = libc::epoll_event {
        events,
        u64: fd as u64,
    };
    // SAFETY: epoll_ctl reads one epoll_event we own.
    check(unsafe { libc::epoll_ctl(epfd, op, fd, &mut event) }).map(drop)
}

fn errno() -> libc::c_int {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The hand-written C loop, in Rust syntax.
fn serve_epoll() -> io::Result<()> {
    let listener = std::net::TcpListener::bind(loopback())?;
    listener.set_nonblocking(true)?;
    let lfd = listener.as_raw_fd();
    // SAFETY: plain syscalls on descriptors we own; buffers are ours and
    // their lengths are passed with them.
    unsafe {
        check(libc::listen(lfd, BACKLOG))?;
        announce(listener.local_addr()?)?;
        let epfd = check(libc::epoll_create1(libc::EPOLL_CLOEXEC))?;
        epoll_set(epfd, libc::EPOLL_CTL_ADD, lfd, libc::EPOLLIN as u32)?;
        // Bytes read but not yet written back, by descriptor.
        let mut owed: Vec<Vec<u8>> = Vec::new();
        let mut buf = vec![0u8; READ_BUFFER];
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        let one: libc::c_int = 1;
        loop {
            let n = libc::epoll_wait(epfd, events.as_mut_ptr(), EVENTS as libc::c_int, -1);
            if n < 0 {
                if errno() == libc::EINTR {
                    continue;
                }
                return Err(io::Error::last_os_error());
            }
            for event in &events[..n as usize] {
                let fd = event.u64 as libc::c_int;
                if fd == lfd {
                    loop {
                        let c = libc::accept4(
                            lfd,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        );
                        if c < 0 {
                            break; // EAGAIN, or a client that is gone already
                        }
                        libc::setsockopt(
                            c,
                            libc::IPPROTO_TCP,
                            libc::TCP_NODELAY,
                            (&one as *const libc::c_int).cast(),
                            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                        );
                        if owed.len() <= c as usize {
                            owed.resize_with(c as usize + 1, Vec::new);
                        }
                        if epoll_set(epfd, libc::EPOLL_CTL_ADD, c, libc::EPOLLIN as u32).is_err() {
                            libc::close(c);
                        }
                    }
                    continue;
                }
                let pending = &mut owed[fd as usize];
                if pending.is_empty() {
                    // Registered for EPOLLIN: read once, write it back.
                    let r = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                    if r < 0 && matches!(errno(), libc::EAGAIN | libc::EINTR) {
                        continue;
                    }
                    if r <= 0 {
                        libc::close(fd); // EOF or error; closing deregisters
                        continue;
                    }
                    let r = r as usize;
                    let w = libc::write(fd, buf.as_ptr().cast(), r);
                    let w = if w < 0 && errno() == libc::EAGAIN {
                        0
                    } else if w < 0 {
                        libc::close(fd);
                        continue;
                    } else {
                        w as usize
                    };
                    if w < r {
                        pending.extend_from_slice(&buf[w..r]);
                        epoll_set(epfd, libc::EPOLL_CTL_MOD, fd, libc::EPOLLOUT as u32)?;
                    }
                } else {
                    // Registered for EPOLLOUT: write what is owed.
                    let w = libc::write(fd, pending.as_ptr().cast(), pending.len());
                    if w < 0 && errno() == libc::EAGAIN {
                        continue;
                    }
                    if w < 0 {
                        *pending = Vec::new();
                        libc::close(fd);
                        continue;
                    }
                    pending.drain(..w as usize);
                    if pending.is_empty() {
                        *pending = Vec::new(); // give the memory back
                        epoll_set(epfd, libc::EPOLL_CTL_MOD, fd, libc::EPOLLIN as u32)?;
                    }
                }
            }
        }
    }
}

/// The idiomatic tokio echo with a `size`-byte buffer per connection.
fn serve_tokio(size: usize) -> io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    runtime.block_on(async move {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(loopback())?;
        let listener = socket.listen(BACKLOG as u32)?;
        announce(listener.local_addr()?)?;
        loop {
            let (mut stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(_) => continue, // a client that is gone already
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; size];
                loop {
                    let n = match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    })
}
