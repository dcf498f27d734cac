//! The few socket calls std and mio do not offer, for Linux only: with
//! `TCP_INQ` on, `recvmsg` says how many bytes are still queued after a
//! read, which proves a socket drained even when the read filled its buffer.
//! Everything else in the crate is plain logic over `Read` and `Write`.

use std::io;
use std::os::fd::AsRawFd;

/// Asks the kernel to report, with every read, the bytes still queued.
#[cfg(target_os = "linux")]
pub(crate) fn report_queued_bytes(socket: &impl AsRawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live c_int
    // on a descriptor the caller owns.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_TCP,
            libc::TCP_INQ,
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
