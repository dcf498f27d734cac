//! The few socket calls std and mio do not offer, for Linux only: with
//! `TCP_INQ` on, `recvmsg` says how many bytes are still queued after a
//! read, which proves a socket drained even when the read filled its buffer.
//! UDP services on wildcard addresses answer from the address asked
//! (`pktinfo`), and take datagrams in batches (`mmsg`: `recvmmsg`,
//! `sendmmsg`). Everything else in the crate is plain logic over `Read`
//! and `Write`.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

mod mmsg;
mod pktinfo;

pub(crate) use mmsg::{BATCH, Batch};
pub(crate) use pktinfo::report_arrivals;

/// Asks the kernel to report, with every read, the bytes still queued.
#[cfg(target_os = "linux")]
pub(crate) fn report_queued_bytes(socket: &impl AsRawFd) -> io::Result<()> {
    set_flag(socket, libc::SOL_TCP, libc::TCP_INQ)
}

/// Not available: reads fall back to "a short read means drained".
#[cfg(not(target_os = "linux"))]
pub(crate) fn report_queued_bytes(_socket: &impl AsRawFd) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

/// Reads into `buf` like `read(2)`; also returns whether bytes were still
/// queued after this read, when the kernel said (`TCP_INQ` on).
#[cfg(target_os = "linux")]
pub(crate) fn read_and_tell(
    socket: &impl AsRawFd,
    buf: &mut [u8],
) -> io::Result<(usize, Option<bool>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for one cmsg carrying an int, aligned as cmsghdr wants.
    let mut control = [0u64; 4];
    // SAFETY: an all-zero msghdr is a valid "no name, no iov" header; the
    // fields set below point at `iov` and `control`, which outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` describes writable memory of the stated sizes.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut queued = None;
    // SAFETY: the CMSG_* helpers walk the control buffer the kernel filled,
    // bounded by `msg_controllen`; the int is read unaligned.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_TCP && (*cmsg).cmsg_type == libc::TCP_CM_INQ {
                let left: libc::c_int = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                queued = Some(left > 0);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n as usize, queued))
}

/// What the kernel measured of a TCP connection (`TCP_INFO`), for its
/// close line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TcpMeasures {
    /// The smoothed round-trip time, in microseconds.
    pub(crate) rtt_us: u32,
    /// Segments retransmitted over the connection's life.
    pub(crate) retransmitted: u32,
}

/// One `getsockopt(TCP_INFO)`: only at close, and only when the close line
/// is logged, so it costs nothing on the hot path.
#[cfg(target_os = "linux")]
pub(crate) fn tcp_measures(socket: &impl AsRawFd) -> io::Result<TcpMeasures> {
    // SAFETY: all-zero is a valid tcp_info; getsockopt writes at most `len`
    // bytes into it and says how many (older kernels fill less, and the
    // two fields read here have been there since Linux 2.6).
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TcpMeasures {
        rtt_us: info.tcpi_rtt,
        retransmitted: info.tcpi_total_retrans,
    })
}

/// Not available: the close line goes without the kernel's figures.
#[cfg(not(target_os = "linux"))]
pub(crate) fn tcp_measures(_socket: &impl AsRawFd) -> io::Result<TcpMeasures> {
    Err(io::ErrorKind::Unsupported.into())
}

/// A new socket of `kind` (`SOCK_STREAM` or `SOCK_DGRAM`) bound to `addr`,
/// non-blocking, with `SO_REUSEADDR` (as std sets it on listeners) and,
/// if asked, `SO_REUSEPORT`, which has to be set before `bind`: so that
/// several processes bind the same address and the kernel spreads new
/// connections and datagrams among them. Streams are left unlistened.
pub(crate) fn bound_socket(
    addr: std::net::SocketAddr,
    kind: libc::c_int,
    reuse_port: bool,
) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{FromRawFd, OwnedFd};

    let domain = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: socket(2) with no memory passed; the descriptor is owned at once.
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    if kind == libc::SOCK_STREAM {
        set_flag(&socket, libc::SOL_SOCKET, libc::SO_REUSEADDR)?;
    }
    if reuse_port {
        set_flag(&socket, libc::SOL_SOCKET, libc::SO_REUSEPORT)?;
    }
    let (storage, len) = sockaddr_to(addr);
    // SAFETY: bind(2) reads `len` bytes of a sockaddr of `addr`'s family.
    let rc = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

/// `addr` as the C library takes it, with its length.
fn sockaddr_to(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage; each arm writes a
    // complete sockaddr of its family into it, which the storage is sized
    // and aligned for, and returns its exact length.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let len = match addr {
            SocketAddr::V4(v4) => {
                let sin =
                    &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = v4.port().to_be();
                sin.sin_addr = libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                };
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(v6) => {
                let sin6 = &mut *(&mut storage as *mut libc::sockaddr_storage)
                    .cast::<libc::sockaddr_in6>();
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = v6.port().to_be();
                sin6.sin6_flowinfo = v6.flowinfo();
                sin6.sin6_addr = libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                };
                sin6.sin6_scope_id = v6.scope_id();
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        (storage, len as libc::socklen_t)
    }
}

/// The address in `storage`, as the kernel filled it; IPv4-mapped IPv6
/// addresses stay IPv6, as std reports them.
fn sockaddr_from(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    let storage: *const libc::sockaddr_storage = storage;
    match libc::c_int::from(unsafe { (*storage).ss_family }) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin = unsafe { &*storage.cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6 = unsafe { &*storage.cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Turns on a boolean socket option.
fn set_flag(socket: &impl AsRawFd, level: libc::c_int, option: libc::c_int) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live c_int.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            option,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
