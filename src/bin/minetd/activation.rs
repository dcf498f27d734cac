//! Socket activation: the listening sockets a service manager (systemd, or
//! `systemd-socket-activate`) hands over as descriptors 3, 4, … with
//! `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`, turned into the
//! library's [`HeldListener`]s by the names they carry.
//!
//! The protocol is systemd's `sd_listen_fds(3)`: the descriptors are ours
//! only when `LISTEN_PID` is our PID (a variable inherited from further up
//! the process tree is not meant for us), and the variables are removed once
//! read so that nothing we might start inherits them.

use std::net::{TcpListener, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use minetd::{HeldListener, HeldProblem, Service};

/// The first descriptor passed, as `SD_LISTEN_FDS_START` defines it.
const FIRST_FD: RawFd = 3;

/// The descriptor a held listener came in as, from its position.
pub fn descriptor(index: usize) -> RawFd {
    FIRST_FD + index as RawFd
}

/// Takes the sockets handed over to this process, in descriptor order, and
/// removes the variables from the environment. No variables, or a
/// `LISTEN_PID` that is another process's, is no socket. An error is one
/// line for the user: the hand-over is wrong (exit 2).
///
/// Must run before any thread is started: it changes the environment.
pub fn take() -> Result<Vec<HeldListener>, String> {
    let pid = std::env::var("LISTEN_PID").ok();
    let count = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // SAFETY: main calls this before it starts any thread, so nothing
        // reads the environment concurrently.
        unsafe { std::env::remove_var(name) };
    }
    let (Some(pid), Some(count)) = (pid, count) else {
        return Ok(Vec::new());
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(Vec::new());
    }
    let count: usize = count
        .trim()
        .parse()
        .map_err(|_| format!("LISTEN_FDS '{count}' is not a number of descriptors"))?;
    let names: Vec<&str> = names
        .as_deref()
        .map_or(Vec::new(), |n| n.split(':').collect());
    // Name them all before taking any: a descriptor is only wrapped (and so
    // closed on drop) once it is known to be a socket we can serve.
    let services = (0..count)
        .map(|index| service_named(index, names.get(index).copied().unwrap_or("")))
        .collect::<Result<Vec<Service>, String>>()?;
    services
        .into_iter()
        .enumerate()
        .map(|(index, service)| take_one(index, service))
        .collect()
}

/// The service descriptor number `index` is named for.
fn service_named(index: usize, name: &str) -> Result<Service, String> {
    let fd = descriptor(index);
    if name.is_empty() {
        return Err(format!(
            "descriptor {fd} has no name in LISTEN_FDNAMES: name it for its service \
             (FileDescriptorName=echo, say)"
        ));
    }
    Service::ALL
        .into_iter()
        .find(|service| service.name() == name)
        .ok_or_else(|| {
            let known: Vec<&str> = Service::ALL.iter().map(|s| s.name()).collect();
            format!(
                "descriptor {fd} is named '{name}', which is no service (expected one of {})",
                known.join(", ")
            )
        })
}

/// Wraps descriptor number `index` as the socket its service needs.
fn take_one(index: usize, service: Service) -> Result<HeldListener, String> {
    let fd = descriptor(index);
    // SAFETY: F_GETFD only asks whether the descriptor is open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(format!("descriptor {fd} ({service}) is not open"));
    }
    // As sd_listen_fds does: whatever we exec must not inherit it.
    // SAFETY: fcntl on a descriptor that is open; no memory is passed.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: the descriptor is open, and LISTEN_PID says it was handed to
    // this process alone: nothing else here owns or closes it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(if service.is_udp() {
        HeldListener::Udp(service, UdpSocket::from(owned))
    } else {
        HeldListener::Tcp(service, TcpListener::from(owned))
    })
}

/// The one line for a held listener the library refused.
pub fn refused(index: usize, service: Service, problem: &HeldProblem) -> String {
    let fd = descriptor(index);
    let why = match problem {
        HeldProblem::NotStream => format!("is not a stream socket, which {service} needs"),
        HeldProblem::NotDatagram => format!("is not a datagram socket, which {service} needs"),
        HeldProblem::NotListening => {
            "is a connected socket, not a listening one (Accept=yes is not supported)".to_string()
        }
        other => other.to_string(),
    };
    format!("descriptor {fd} ({service}) {why}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variables_are_removed_once_read_whoever_they_were_for() {
        let ours = std::process::id().to_string();
        for pid in [ours.as_str(), "1"] {
            // SAFETY: no other test in this binary reads the environment.
            unsafe {
                std::env::set_var("LISTEN_PID", pid);
                std::env::set_var("LISTEN_FDS", "0");
                std::env::set_var("LISTEN_FDNAMES", "echo");
            }
            assert!(take().expect("no descriptors").is_empty());
            for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
                assert_eq!(
                    std::env::var_os(name),
                    None,
                    "{name} after LISTEN_PID={pid}"
                );
            }
        }
    }

    #[test]
    fn names_map_to_services_or_say_what_is_wrong() {
        assert_eq!(service_named(0, "udp-echo"), Ok(Service::UdpEcho));
        assert_eq!(service_named(1, "daytime"), Ok(Service::Daytime));
        let unnamed = service_named(0, "").unwrap_err();
        assert!(unnamed.starts_with("descriptor 3 has no name"), "{unnamed}");
        let unknown = service_named(2, "gopher").unwrap_err();
        assert!(
            unknown.starts_with("descriptor 5 is named 'gopher', which is no service"),
            "{unknown}"
        );
    }
}
