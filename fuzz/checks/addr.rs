//! What the `addr` target asserts of address parsing: the server's CIDR
//! blocks ([`minetd::Cidr`], `--allow`, `--proxy-protocol`) and the
//! client's `HOST:PORT` (`src/bin/minetd-client/addr/target.rs`). Shared by
//! the afl target and the corpus test (`tests/corpus.rs`).

#[path = "../../src/bin/minetd-client/addr/target.rs"]
mod target;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use minetd::Cidr;
use target::Target;

/// Panics if CIDR or target parsing breaks a property on `data`.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check_cidr(text);
    check_target(text);
}

fn check_cidr(text: &str) {
    let Ok(cidr) = text.parse::<Cidr>() else {
        return;
    };
    // What the logs show parses back to the same block.
    let shown = cidr.to_string();
    assert_eq!(
        shown.parse::<Cidr>(),
        Ok(cidr),
        "{text:?} shown as {shown:?}"
    );
    // A block holds the address it is written with, unless it is an IPv6
    // block wider than the IPv4-mapped range and the address a mapped one
    // (which counts as IPv4, and an IPv6 block holds no IPv4 address).
    let written = text.split_once('/').map_or(text, |(addr, _)| addr);
    let network: IpAddr = written.parse().expect("parsed once");
    // (`from_str` made every narrower block over mapped addresses IPv4.)
    let mapped_in_wide_block =
        network.is_ipv6() && network.to_canonical().is_ipv4() && shown.contains(':');
    if !mapped_in_wide_block {
        assert!(cidr.contains(network), "{shown} lacks {network}");
    }
    // Any address can be asked about.
    for probe in [
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V4(Ipv4Addr::BROADCAST),
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        IpAddr::V6(Ipv6Addr::from(u128::MAX)),
        IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()),
    ] {
        cidr.contains(probe);
    }
    // An IPv4 address seen on an IPv6 socket counts as itself.
    if let IpAddr::V4(v4) = network {
        assert!(cidr.contains(IpAddr::V6(v4.to_ipv6_mapped())));
    }
}

fn check_target(text: &str) {
    let Ok(target) = text.parse::<Target>() else {
        return;
    };
    // Shown back exactly as given, in errors and in the Host header.
    assert_eq!(target.to_string(), text);
    assert_ne!(target.port(), 0);
    let host_header = target.host_header();
    assert!(
        text.starts_with(&host_header),
        "{host_header:?} of {text:?}"
    );
    // The resolver gets a host without brackets or colons for names.
    let bare = target.bare_host();
    assert!(!bare.is_empty());
    if bare.contains(':') {
        assert!(bare.parse::<Ipv6Addr>().is_ok(), "{bare:?} of {text:?}");
    }
}
