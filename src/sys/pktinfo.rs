//! Answering a datagram from the address it was sent to. A UDP socket bound
//! to a wildcard address (`0.0.0.0`, `[::]`) would otherwise send each
//! answer from whichever local address the routing table prefers for the
//! peer, and on a host with several addresses a client with a connected
//! socket, a NAT or a stateful firewall drops an answer from an address it
//! never asked. With `IP_PKTINFO` / `IPV6_RECVPKTINFO` on, `recvmsg` says
//! which local address each datagram came to (and on which interface), and
//! `sendmsg` with the same control message sends the answer from there.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;

use super::{set_flag, sockaddr_from, sockaddr_to};

/// Where a datagram arrived: the local address it was sent to, and the
/// interface it came in on (which a link-local address needs to be
/// answered).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Arrival {
    /// The local address the datagram was sent to.
    pub(crate) local: IpAddr,
    /// The interface index it came in on.
    pub(crate) ifindex: u32,
}

/// The control message that names an answer's source.
enum Info {
    V4(libc::in_pktinfo),
    V6(libc::in6_pktinfo),
}

/// Room for the control messages, aligned as `cmsghdr` wants: an IPv4
/// datagram on an IPv6 socket comes with both `in6_pktinfo` (40 bytes with
/// its header) and `in_pktinfo` (32), and a buffer too small for both cuts
/// the second short, garbling its interface index.
type Control = [u64; 16];

/// Asks the kernel to report every datagram's local address. An IPv6
/// socket may also receive IPv4 datagrams (as mapped addresses), which
/// report through `IP_PKTINFO`: both are asked for, the second best effort
/// (an `IPV6_V6ONLY` socket needs only the first).
pub(crate) fn report_arrivals(socket: &impl AsRawFd, ipv6: bool) -> io::Result<()> {
    if ipv6 {
        set_flag(socket, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)?;
        let _ = set_flag(socket, libc::IPPROTO_IP, libc::IP_PKTINFO);
        Ok(())
    } else {
        set_flag(socket, libc::IPPROTO_IP, libc::IP_PKTINFO)
    }
}

/// Receives one datagram into `buf`, like `recv_from`, with where it
/// arrived when the kernel said. A datagram longer than `buf` is cut, as
/// `recv_from` cuts it.
pub(crate) fn recv_arrival(
    socket: &impl AsRawFd,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<Arrival>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: all-zero is a valid sockaddr_storage and an empty msghdr; the
    // fields set below point at locals that outlive the call.
    let mut peer: libc::sockaddr_storage = unsafe { zeroed() };
    let mut control: Control = [0; 16];
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut peer as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<Control>() as _;
    // SAFETY: `msg` describes writable memory of the stated sizes.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let peer = sockaddr_from(&peer).ok_or(io::ErrorKind::InvalidData)?;
    let mut arrival = None;
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        // Cannot happen with `Control`'s size; a cut message is not trusted.
        return Ok((n as usize, peer, None));
    }
    // SAFETY: the CMSG_* helpers walk the control buffer the kernel filled,
    // bounded by `msg_controllen`; each payload is read unaligned and only
    // when its level and type say what it holds.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                    let info: libc::in_pktinfo = std::ptr::read_unaligned(data.cast());
                    arrival = Some(Arrival {
                        local: IpAddr::V4(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr))),
                        ifindex: info.ipi_ifindex as u32,
                    });
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let info: libc::in6_pktinfo = std::ptr::read_unaligned(data.cast());
                    arrival = Some(Arrival {
                        local: IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)),
                        ifindex: info.ipi6_ifindex,
                    });
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n as usize, peer, arrival))
}

/// Sends `buf` to `peer` like `send_to`, from the address `arrival` names.
///
/// IPv4 names the source in `ipi_spec_dst` and leaves the interface to
/// routing. IPv6 names the interface as well, which a link-local address
/// needs. An IPv4 peer of an IPv6 socket comes as a mapped address and is
/// answered through `IPV6_PKTINFO` with the mapped local address, which
/// Linux turns into the IPv4 source.
pub(crate) fn send_from(
    socket: &impl AsRawFd,
    buf: &[u8],
    peer: SocketAddr,
    arrival: Arrival,
) -> io::Result<usize> {
    let (mut name, namelen) = sockaddr_to(peer);
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr().cast_mut().cast(),
        iov_len: buf.len(),
    };
    // The socket's family is the peer's: an IPv6 socket reports IPv4 peers
    // as mapped addresses.
    let info = match (arrival.local, peer) {
        (IpAddr::V4(local), SocketAddr::V4(_)) => {
            // SAFETY: all-zero is a valid in_pktinfo.
            let mut info: libc::in_pktinfo = unsafe { zeroed() };
            info.ipi_spec_dst.s_addr = u32::from(local).to_be();
            Info::V4(info)
        }
        (local, SocketAddr::V6(_)) => {
            let local = match local {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            // SAFETY: all-zero is a valid in6_pktinfo.
            let mut info: libc::in6_pktinfo = unsafe { zeroed() };
            info.ipi6_addr.s6_addr = local.octets();
            info.ipi6_ifindex = arrival.ifindex;
            Info::V6(info)
        }
        // An IPv4 socket cannot have received at an IPv6 address.
        (IpAddr::V6(_), SocketAddr::V4(_)) => return Err(io::ErrorKind::InvalidInput.into()),
    };
    let (level, kind, payload) = match info {
        Info::V4(_) => (
            libc::IPPROTO_IP,
            libc::IP_PKTINFO,
            size_of::<libc::in_pktinfo>(),
        ),
        Info::V6(_) => (
            libc::IPPROTO_IPV6,
            libc::IPV6_PKTINFO,
            size_of::<libc::in6_pktinfo>(),
        ),
    };
    let mut control: Control = [0; 16];
    // SAFETY: an empty msghdr is valid, and it points at locals that
    // outlive the call. The one control message is written within
    // `control`: CMSG_SPACE of either payload is at most 40 of its 128 bytes.
    let n = unsafe {
        let mut msg: libc::msghdr = zeroed();
        msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = namelen;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(payload as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = level;
        (*cmsg).cmsg_type = kind;
        (*cmsg).cmsg_len = libc::CMSG_LEN(payload as u32) as _;
        let data = libc::CMSG_DATA(cmsg);
        match info {
            Info::V4(info) => std::ptr::write_unaligned(data.cast(), info),
            Info::V6(info) => std::ptr::write_unaligned(data.cast(), info),
        }
        libc::sendmsg(socket.as_raw_fd(), &msg, 0)
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}
