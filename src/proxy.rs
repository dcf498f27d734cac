//! The PROXY protocol header (HAProxy's specification, versions 1 and 2)
//! that a trusted load balancer puts before a connection's own bytes, to
//! say whom it is relaying.
//!
//! [`parse`] is a pure function over the bytes received so far, in the
//! shape of `httparse`: it says the header is complete (and how long it
//! is), or needs more bytes, or can never be valid. It looks at no more
//! than [`MAX_HEADER`] bytes, never allocates, and decides as early as the
//! bytes allow, so the server can wait for the rest of a header without
//! holding any of it (it peeks) and close at the first impossible byte.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The longest header of either version: 16 bytes of version 2's fixed
/// part and up to 520 of addresses and extensions, as the specification
/// bounds them. Version 1 lines are at most [`MAX_V1`].
pub const MAX_HEADER: usize = 536;

/// The longest version 1 line, CRLF included (`PROXY UNKNOWN` with two
/// full IPv6 addresses and ports).
pub const MAX_V1: usize = 107;

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version and command, family and transport, length.
const V2_FIXED: usize = 16;

/// What the bytes so far are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header of `len` bytes; the connection's own bytes follow.
    Complete {
        /// The header's length in bytes.
        len: usize,
        /// The client the balancer relays, or `None` when the header says
        /// to keep the connection's own peer (`UNKNOWN`, `LOCAL`, or an
        /// address family without IP addresses).
        source: Option<SocketAddr>,
    },
    /// A valid beginning: more bytes are needed.
    Partial,
}

/// Why bytes can never begin a valid header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyError {
    /// Neither `PROXY ` nor version 2's signature.
    BadSignature,
    /// A version 1 line longer than [`MAX_V1`], or with no CRLF within it.
    V1TooLong,
    /// A version 1 line that is not `PROXY TCP4|TCP6|UNKNOWN …\r\n` with
    /// valid addresses and ports.
    V1Malformed,
    /// A version 2 header whose version nibble is not 2, or whose command
    /// is neither LOCAL nor PROXY, or whose family is unknown.
    V2Malformed,
    /// A version 2 header longer than [`MAX_HEADER`] in all.
    V2TooLong,
    /// A version 2 length too short for the address family it announces.
    V2TooShort,
    /// The connection ended before a whole header.
    Missing,
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProxyError::BadSignature => "not a PROXY header",
            ProxyError::V1TooLong => "PROXY v1 line over 107 bytes",
            ProxyError::V1Malformed => "malformed PROXY v1 line",
            ProxyError::V2Malformed => "malformed PROXY v2 header",
            ProxyError::V2TooLong => "PROXY v2 header over 536 bytes",
            ProxyError::V2TooShort => "PROXY v2 length too short for its address family",
            ProxyError::Missing => "closed before a whole PROXY header",
        })
    }
}

impl std::error::Error for ProxyError {}

/// Parses the start of a connection's bytes as a PROXY header.
///
/// ```
/// use minetd::proxy::{parse, Parsed};
/// let bytes = b"PROXY TCP4 203.0.113.7 192.0.2.1 5555 7\r\nhello";
/// assert_eq!(
///     parse(bytes),
///     Ok(Parsed::Complete { len: 41, source: Some("203.0.113.7:5555".parse().unwrap()) })
/// );
/// assert_eq!(parse(&bytes[..10]), Ok(Parsed::Partial));
/// ```
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let buf = &buf[..buf.len().min(MAX_HEADER)];
    if buf.is_empty() {
        return Ok(Parsed::Partial);
    }
    if begins(buf, V1_PREFIX) {
        parse_v1(buf)
    } else if begins(buf, &V2_SIGNATURE) {
        parse_v2(buf)
    } else {
        Err(ProxyError::BadSignature)
    }
}

/// Whether `buf` and `prefix` agree on their common length.
fn begins(buf: &[u8], prefix: &[u8]) -> bool {
    let n = buf.len().min(prefix.len());
    buf[..n] == prefix[..n]
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let window = &buf[..buf.len().min(MAX_V1)];
    // A CR must be followed by LF and a LF preceded by CR: either alone
    // can never become the line's end.
    let end = match window.iter().position(|&b| b == b'\r' || b == b'\n') {
        Some(at) if window[at] == b'\n' => return Err(ProxyError::V1Malformed),
        Some(at) if at + 1 == window.len() => {
            return if window.len() == MAX_V1 {
                Err(ProxyError::V1TooLong)
            } else {
                early_v1_check(&window[..at])
            };
        }
        Some(at) if window[at + 1] != b'\n' => return Err(ProxyError::V1Malformed),
        Some(at) => at,
        None if window.len() == MAX_V1 => return Err(ProxyError::V1TooLong),
        None => return early_v1_check(window),
    };
    let line = &window[V1_PREFIX.len()..end];
    let source = if is_unknown(line) {
        // UNKNOWN: whatever follows, up to the CRLF, is to be ignored.
        None
    } else {
        let line = std::str::from_utf8(line).map_err(|_| ProxyError::V1Malformed)?;
        v1_source(line)?
    };
    Ok(Parsed::Complete {
        len: end + 2,
        source,
    })
}

/// Whether a v1 line (without `PROXY `) is `UNKNOWN`, with or without
/// something after it that the receiver must ignore, whatever its bytes.
fn is_unknown(line: &[u8]) -> bool {
    line == b"UNKNOWN" || line.starts_with(b"UNKNOWN ")
}

/// Rejects a line that has gone wrong before its end: a protocol word that
/// cannot become `TCP4`, `TCP6` or `UNKNOWN`, or a byte no header has
/// (after `UNKNOWN `, any byte may come before the CRLF).
fn early_v1_check(partial: &[u8]) -> Result<Parsed, ProxyError> {
    let rest = &partial[V1_PREFIX.len().min(partial.len())..];
    if is_unknown(rest) {
        return Ok(Parsed::Partial);
    }
    let word_len = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
    let word = &rest[..word_len];
    let possible = [&b"TCP4"[..], b"TCP6", b"UNKNOWN"]
        .iter()
        .any(|proto| begins(word, proto) && word.len() <= proto.len());
    let printable = rest.iter().all(|&b| (0x20..0x7f).contains(&b));
    if possible && printable {
        Ok(Parsed::Partial)
    } else {
        Err(ProxyError::V1Malformed)
    }
}

/// The source address of a whole `TCP4` or `TCP6` v1 line (without
/// `PROXY ` and CRLF).
fn v1_source(line: &str) -> Result<Option<SocketAddr>, ProxyError> {
    let malformed = ProxyError::V1Malformed;
    let mut fields = line.split(' ');
    let proto = fields.next().ok_or(malformed)?;
    let (src, dst, src_port, dst_port) = match (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) {
        (Some(a), Some(b), Some(c), Some(d), None) => (a, b, c, d),
        _ => return Err(malformed),
    };
    let parse_ip = |text: &str| -> Result<IpAddr, ProxyError> {
        match proto {
            "TCP4" => text
                .parse::<Ipv4Addr>()
                .map(IpAddr::V4)
                .map_err(|_| malformed),
            "TCP6" => text
                .parse::<Ipv6Addr>()
                .map(IpAddr::V6)
                .map_err(|_| malformed),
            _ => Err(malformed),
        }
    };
    let ip = parse_ip(src)?;
    parse_ip(dst)?;
    let port = v1_port(src_port)?;
    v1_port(dst_port)?;
    Ok(Some(SocketAddr::new(ip, port)))
}

/// A port: 1 to 5 decimal digits, no sign, at most 65535.
fn v1_port(text: &str) -> Result<u16, ProxyError> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProxyError::V1Malformed);
    }
    text.parse().map_err(|_| ProxyError::V1Malformed)
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if buf.len() > 12 {
        let version_command = buf[12];
        if version_command >> 4 != 2 || version_command & 0x0f > 1 {
            return Err(ProxyError::V2Malformed);
        }
    }
    if buf.len() > 13 && buf[13] >> 4 > 3 {
        return Err(ProxyError::V2Malformed);
    }
    if buf.len() < V2_FIXED {
        return Ok(Parsed::Partial);
    }
    let local = buf[12] & 0x0f == 0;
    let family = buf[13] >> 4;
    let declared = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = V2_FIXED + declared;
    if len > MAX_HEADER {
        return Err(ProxyError::V2TooLong);
    }
    // The address block's size for AF_INET, AF_INET6 and AF_UNIX.
    let needed = match family {
        1 => 12,
        2 => 36,
        3 => 216,
        _ => 0,
    };
    if declared < needed {
        return Err(ProxyError::V2TooShort);
    }
    if buf.len() < len {
        return Ok(Parsed::Partial);
    }
    let block = &buf[V2_FIXED..len];
    // LOCAL (a health check) keeps the real endpoints, whatever follows.
    let source = match family {
        _ if local => None,
        1 => {
            let ip: [u8; 4] = block[0..4].try_into().map_err(|_| ProxyError::V2TooShort)?;
            let port = u16::from_be_bytes([block[8], block[9]]);
            Some(SocketAddr::from((ip, port)))
        }
        2 => {
            let ip: [u8; 16] = block[0..16]
                .try_into()
                .map_err(|_| ProxyError::V2TooShort)?;
            let port = u16::from_be_bytes([block[32], block[33]]);
            Some(SocketAddr::from((ip, port)))
        }
        _ => None,
    };
    Ok(Parsed::Complete { len, source })
}

#[cfg(test)]
mod tests;
