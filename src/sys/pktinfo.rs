//! Answering a datagram from the address it was sent to. A UDP socket bound
//! to a wildcard address (`0.0.0.0`, `[::]`) would otherwise send each
//! answer from whichever local address the routing table prefers for the
//! peer, and on a host with several addresses a client with a connected
//! socket, a NAT or a stateful firewall drops an answer from an address it
//! never asked. With `IP_PKTINFO` / `IPV6_RECVPKTINFO` on, `recvmsg` says
//! which local address each datagram came to (and on which interface), and
//! `sendmsg` with the same control message sends the answer from there.
//! `recvmmsg` and `sendmmsg` (`mmsg.rs`) carry the same control messages
//! per datagram.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;

use super::set_flag;

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
pub(super) type Control = [u64; 16];

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

/// Where the datagram `msg` describes arrived, from the control messages
/// `recvmsg` (or `recvmmsg`) filled in; `None` when the kernel did not say
/// or cut them short.
///
/// # Safety
/// `msg` must be a header the kernel filled, its `msg_control` pointing at
/// a live buffer of `msg_controllen` bytes.
pub(super) unsafe fn arrival_in(msg: &libc::msghdr) -> Option<Arrival> {
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        // Cannot happen with `Control`'s size; a cut message is not trusted.
        return None;
    }
    let mut arrival = None;
    // SAFETY: the CMSG_* helpers walk the control buffer the kernel filled,
    // bounded by `msg_controllen`; each payload is read unaligned and only
    // when its level and type say what it holds.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
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
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    arrival
}

/// Writes into `control` the one control message that makes `sendmsg`
/// (or `sendmmsg`) send to `peer` from the address `arrival` names;
/// returns its length, the header's `msg_controllen`.
///
/// IPv4 names the source in `ipi_spec_dst` and leaves the interface to
/// routing. IPv6 names the interface as well, which a link-local address
/// needs. An IPv4 peer of an IPv6 socket comes as a mapped address and is
/// answered through `IPV6_PKTINFO` with the mapped local address, which
/// Linux turns into the IPv4 source.
pub(super) fn write_source(
    control: &mut Control,
    peer: SocketAddr,
    arrival: Arrival,
) -> io::Result<usize> {
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
    // SAFETY: a header pointing at `control` is all CMSG_FIRSTHDR reads.
    // The one control message is written within `control`: CMSG_SPACE of
    // either payload is at most 40 of its 128 bytes.
    unsafe {
        let mut msg: libc::msghdr = zeroed();
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
        Ok(libc::CMSG_SPACE(payload as u32) as usize)
    }
}
