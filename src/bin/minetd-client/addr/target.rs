//! `HOST:PORT` as the user typed it, parsed strictly enough to reject typos
//! as usage errors and always shown back exactly as given. Pure parsing,
//! self-contained (std only), so the fuzz target in `fuzz/` includes this
//! very file; resolving and connecting live in the parent module.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

/// A peer named by host (name, IPv4, or bracketed IPv6) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The host as typed, brackets included for IPv6 (`[::1]`).
    host: String,
    /// The TCP port, never 0.
    port: u16,
}

impl Target {
    /// The port, never 0.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host as the resolver wants it: without IPv6 brackets.
    pub fn bare_host(&self) -> &str {
        self.host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&self.host)
    }

    /// The HTTP `Host` header value: `host:port`, or just `host` on port 80.
    pub fn host_header(&self) -> String {
        if self.port == 80 {
            self.host.clone()
        } else {
            self.to_string()
        }
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(text: &str) -> Result<Target, String> {
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| "expected HOST:PORT".to_string())?;
        if host.is_empty() {
            return Err("expected HOST:PORT, the host is missing".to_string());
        }
        check_host(host)?;
        let port = parse_port(port)?;
        Ok(Target {
            host: host.to_string(),
            port,
        })
    }
}

/// A port as it is shown back: decimal digits only, so `+80` and `08080`
/// (which would print as `80` and `8080`) are refused rather than shown
/// differently from how they were typed.
fn parse_port(text: &str) -> Result<u16, String> {
    let not_a_port = || format!("the port '{text}' is not a number from 1 to 65535");
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not_a_port());
    }
    if text == "0" {
        return Err("port 0 cannot be connected to".to_string());
    }
    if text.starts_with('0') {
        return Err(format!("the port '{text}' has a leading zero"));
    }
    text.parse().map_err(|_| not_a_port())
}

/// Rejects hosts that cannot be meant: an IPv6 address needs brackets so
/// its colons are not mistaken for the port separator.
fn check_host(host: &str) -> Result<(), String> {
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| "an IPv6 address needs a closing ']'".to_string())?;
        inner
            .parse::<Ipv6Addr>()
            .map_err(|_| format!("'{inner}' is not an IPv6 address"))?;
    } else if host.contains(':') {
        return Err("write an IPv6 address in brackets, as in [::1]:7007".to_string());
    }
    Ok(())
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses_parse_and_print_as_given() {
        for text in [
            "localhost:7007",
            "127.0.0.1:1",
            "[::1]:65535",
            "example.com:80",
        ] {
            let target: Target = text.parse().unwrap();
            assert_eq!(target.to_string(), text);
        }
    }

    #[test]
    fn ports_shown_differently_from_typed_are_refused() {
        // Found by the `addr` fuzz check (fuzz/checks/addr.rs): these
        // parsed, then showed as localhost:80 and so on in every message.
        for text in ["localhost:+80", "localhost:07007", "[::1]:+7007"] {
            assert!(text.parse::<Target>().is_err(), "{text} parsed");
        }
    }

    #[test]
    fn bad_addresses_are_refused_with_a_reason() {
        for text in [
            "localhost",
            ":7007",
            "localhost:",
            "localhost:x",
            "localhost:0",
            "localhost:65536",
            "::1:7007",
            "[::1:7007",
            "[nope]:7007",
        ] {
            assert!(text.parse::<Target>().is_err(), "{text} parsed");
        }
    }
}
