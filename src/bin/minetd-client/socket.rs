//! The one thing std's `TcpStream` cannot do: bind a socket to a chosen
//! source address before connecting. The benchmark needs it past about
//! 28,000 loopback connections, where one source address runs out of
//! ephemeral ports; spreading sources over 127.0.0.0/8 multiplies them.
//!
//! It also waits on many sockets at once (`ppoll`), for the loops that
//! read whichever connection is ready rather than each in turn, and gives
//! one thread a descriptor to wake another from that wait ([`Wake`]).
//!
//! All the `unsafe` of the client is here, each call a plain libc socket
//! call on a descriptor this module owns or a slice the caller lends.

use std::io;
use std::mem;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Connects to `dest` from `source` (the port is picked at connect time),
/// waiting at most `timeout` for the handshake.
pub fn connect_from(source: IpAddr, dest: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    if source.is_ipv4() != dest.is_ipv4() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("source address {source} is not of the same family as {dest}"),
        ));
    }
    let stream = new_socket(&dest)?;
    // Only an optimisation: without it (old kernels) ports are scarcer.
    let _ = bind_address_no_port(&stream);
    bind(&stream, SocketAddr::new(source, 0))?;
    // Linux bounds a blocking connect by the send timeout (SO_SNDTIMEO).
    stream.set_write_timeout(Some(timeout))?;
    connect(&stream, dest)?;
    Ok(stream)
}

/// Connects to `dest` with both socket timeouts set first, so the
/// blocking connect is bounded by `timeout` too: three system calls fewer
/// than std's `connect_timeout` and two `set_*_timeout`s, which is a third
/// of what a daytime connection costs the client when it churns.
pub fn connect_timed(dest: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = new_socket(&dest)?;
    // Linux bounds a blocking connect by the send timeout (SO_SNDTIMEO).
    stream.set_write_timeout(Some(timeout))?;
    stream.set_read_timeout(Some(timeout))?;
    connect(&stream, dest)?;
    Ok(stream)
}

/// A new, unconnected TCP socket of `dest`'s family, owned by a `TcpStream`
/// at once so every error path closes it.
fn new_socket(dest: &SocketAddr) -> io::Result<TcpStream> {
    let family = match dest {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: socket(2) takes no pointers.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { TcpStream::from_raw_fd(fd) })
}

/// Asks Linux to choose the source port at `connect`, not at `bind`: a port
/// chosen at bind time must be unique for the source address alone, which
/// would cap every source at one connection per port whatever the
/// destination.
fn bind_address_no_port(stream: &TcpStream) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: the option value is a c_int that outlives the call, with its size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const on).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    check(rc)
}

/// bind(2) to `addr`.
fn bind(stream: &TcpStream, addr: SocketAddr) -> io::Result<()> {
    let (storage, len) = sockaddr(addr);
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes.
    let rc = unsafe { libc::bind(stream.as_raw_fd(), (&raw const storage).cast(), len) };
    check(rc)
}

/// A blocking connect(2) to `addr`. An expired send timeout shows up as
/// `EINPROGRESS`, reported as `TimedOut`.
fn connect(stream: &TcpStream, addr: SocketAddr) -> io::Result<()> {
    let (storage, len) = sockaddr(addr);
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes.
    let rc = unsafe { libc::connect(stream.as_raw_fd(), (&raw const storage).cast(), len) };
    match check(rc) {
        Err(err) if err.raw_os_error() == Some(libc::EINPROGRESS) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "connection timed out",
        )),
        other => other,
    }
}

/// Waits up to `wait` for any of `fds` to be readable (or to have an
/// error); how many are (0 if a signal came first). `ppoll` rather than
/// `poll`: its timeout is in nanoseconds, not milliseconds, which the open
/// loop's schedule needs.
pub fn wait_readable(fds: &mut [libc::pollfd], wait: Duration) -> io::Result<usize> {
    let timeout = libc::timespec {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_nsec: wait.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `fds` is a live, exclusively borrowed slice of pollfd of the
    // length given; `timeout` lives across the call; no signal mask.
    let ready = unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            &timeout,
            std::ptr::null(),
        )
    };
    if ready >= 0 {
        return Ok(ready as usize);
    }
    let err = io::Error::last_os_error();
    if err.kind() == io::ErrorKind::Interrupted {
        return Ok(0);
    }
    Err(err)
}

/// A descriptor one thread makes readable to wake another from
/// [`wait_readable`] (an eventfd): the open loop's sender tells its
/// receiver so of messages written on connections it was not waiting on.
pub struct Wake {
    fd: OwnedFd,
}

impl Wake {
    /// A new one, not readable.
    pub fn new() -> io::Result<Wake> {
        // SAFETY: eventfd(2) takes no pointers.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(Wake {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Makes the descriptor readable, until [`Wake::clear`].
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of a u64 that outlives the call. It
        // can only fail once the counter nears 2^64: readable already.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    /// Makes the descriptor unreadable again.
    pub fn clear(&self) {
        let mut count: u64 = 0;
        // SAFETY: reads at most 8 bytes into a u64 that outlives the call;
        // a descriptor not readable (EAGAIN) is already clear.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), (&raw mut count).cast(), 8) };
    }

    /// The descriptor to wait on.
    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// `Ok` for a zero return code, the OS error otherwise.
fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `addr` as the C socket API wants it.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero bytes are a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in>().write(sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in6>().write(sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    #[test]
    fn connection_comes_from_the_chosen_source() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let dest = listener.local_addr().unwrap();
        let source: IpAddr = "127.0.0.2".parse().unwrap();
        let mut client = connect_from(source, dest, Duration::from_secs(5)).unwrap();
        let (mut accepted, peer) = listener.accept().unwrap();
        assert_eq!(peer.ip(), source);
        assert_eq!(client.local_addr().unwrap().ip(), source);
        client.write_all(b"hi").unwrap();
        let mut got = [0; 2];
        accepted
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        accepted.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
    }

    #[test]
    fn refused_connection_reports_the_os_error() {
        let dest = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let err =
            connect_from("127.0.0.1".parse().unwrap(), dest, Duration::from_secs(5)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn mixed_families_are_refused() {
        let err = connect_from(
            "::1".parse().unwrap(),
            "127.0.0.1:7".parse().unwrap(),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
