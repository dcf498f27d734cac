//! The PROXY header parser on exact bytes: each version and family, every
//! kind of malformed header, and properties over random splits and bytes.

use std::net::SocketAddr;

use proptest::collection::vec;
use proptest::prelude::*;

use super::{MAX_HEADER, MAX_V1, Parsed, ProxyError, V2_SIGNATURE, parse};

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("address")
}

fn complete(len: usize, source: Option<&str>) -> Result<Parsed, ProxyError> {
    Ok(Parsed::Complete {
        len,
        source: source.map(addr),
    })
}

/// A version 2 header: command (0 LOCAL, 1 PROXY), family byte, block.
fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
    let mut header = V2_SIGNATURE.to_vec();
    header.push(0x20 | command);
    header.push(family);
    header.extend_from_slice(&(block.len() as u16).to_be_bytes());
    header.extend_from_slice(block);
    header
}

fn v2_tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut block = Vec::new();
    block.extend_from_slice(&src);
    block.extend_from_slice(&dst);
    block.extend_from_slice(&sport.to_be_bytes());
    block.extend_from_slice(&dport.to_be_bytes());
    v2(1, 0x11, &block)
}

fn v2_tcp6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16) -> Vec<u8> {
    let mut block = Vec::new();
    block.extend_from_slice(&src);
    block.extend_from_slice(&dst);
    block.extend_from_slice(&sport.to_be_bytes());
    block.extend_from_slice(&dport.to_be_bytes());
    v2(1, 0x21, &block)
}

#[test]
fn v1_tcp4_gives_the_source_and_ends_at_the_crlf() {
    let line = b"PROXY TCP4 203.0.113.7 192.0.2.1 5555 7\r\n";
    assert_eq!(parse(line), complete(line.len(), Some("203.0.113.7:5555")));
    let mut with_data = line.to_vec();
    with_data.extend_from_slice(b"PROXY is data now");
    assert_eq!(
        parse(&with_data),
        complete(line.len(), Some("203.0.113.7:5555"))
    );
}

#[test]
fn v1_tcp6_gives_the_source() {
    let line = b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 7\r\n";
    assert_eq!(
        parse(line),
        complete(line.len(), Some("[2001:db8::7]:65535"))
    );
}

#[test]
fn v1_unknown_keeps_the_peer_with_or_without_addresses() {
    assert_eq!(parse(b"PROXY UNKNOWN\r\n"), complete(15, None));
    let line = b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n";
    assert_eq!(parse(line), complete(line.len(), None));
}

#[test]
fn v1_unknown_ignores_any_bytes_before_its_crlf_in_any_split() {
    // Found by the fuzz target `proxy` (fuzz/checks/proxy.rs): a control
    // byte after `UNKNOWN ` closed a connection whose header came in
    // pieces, and passed when the whole line came in one read.
    for line in [
        &b"PROXY UNKNOWN ffff:ffff\tceba?ddeb\r\n"[..],
        b"PROXY UNKNOWN ffff:ffff ffff:ffff 6553\x13 65535\r\n",
        b"PROXY UNKNOWN \0\x7f\xff\xfe\r\n",
    ] {
        assert_eq!(parse(line), complete(line.len(), None), "{line:?}");
        for end in 0..line.len() {
            assert_eq!(
                parse(&line[..end]),
                Ok(Parsed::Partial),
                "{end} of {line:?}"
            );
        }
    }
    // The word itself is still checked as it arrives.
    assert_eq!(parse(b"PROXY UNKNOWN\t"), Err(ProxyError::V1Malformed));
}

#[test]
fn v1_longest_line_is_accepted_and_one_more_byte_is_too_long() {
    let ip = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    let line = format!("PROXY TCP6 {ip} {ip} 65535 65535\r\n");
    assert_eq!(line.len(), 104);
    assert_eq!(
        parse(line.as_bytes()),
        complete(104, Some(&format!("[{ip}]:65535")))
    );
    let unknown = format!("PROXY UNKNOWN {}\r\n", "x".repeat(MAX_V1 - 16));
    assert_eq!(unknown.len(), MAX_V1);
    assert_eq!(parse(unknown.as_bytes()), complete(MAX_V1, None));
    let over = format!("PROXY UNKNOWN {}\r\n", "x".repeat(MAX_V1 - 15));
    assert_eq!(parse(over.as_bytes()), Err(ProxyError::V1TooLong));
    assert_eq!(
        parse(&over.as_bytes()[..MAX_V1]),
        Err(ProxyError::V1TooLong)
    );
}

#[test]
fn v1_malformed_lines_are_refused() {
    for line in [
        &b"PROXY TCP4 203.0.113.7 192.0.2.1 5555 7\n"[..],
        b"PROXY TCP4 203.0.113.7 192.0.2.1 5555 7\rX",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 5555\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 5555 7 8\r\n",
        b"PROXY TCP4 203.0.113.7  192.0.2.1 5555 7\r\n",
        b"PROXY TCP4 2001:db8::7 192.0.2.1 5555 7\r\n",
        b"PROXY TCP6 203.0.113.7 2001:db8::1 5555 7\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 65536 7\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 +555 7\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 5555 \r\n",
        b"PROXY UDP4 203.0.113.7 192.0.2.1 5555 7\r\n",
        b"PROXY \r\n",
    ] {
        assert_eq!(
            parse(line),
            Err(ProxyError::V1Malformed),
            "{:?}",
            String::from_utf8_lossy(line)
        );
    }
}

#[test]
fn v1_goes_wrong_as_early_as_the_bytes_show() {
    assert_eq!(parse(b"PROXY TCP5"), Err(ProxyError::V1Malformed));
    assert_eq!(parse(b"PROXY TCP4 1.2.3.4\0"), Err(ProxyError::V1Malformed));
    assert_eq!(parse(b"PROXY TC"), Ok(Parsed::Partial));
    assert_eq!(parse(b"PROX"), Ok(Parsed::Partial));
    assert_eq!(
        parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r"),
        Ok(Parsed::Partial)
    );
}

#[test]
fn anything_else_is_a_bad_signature_from_its_first_wrong_byte() {
    assert_eq!(parse(b"GET / HTTP/1.0\r\n"), Err(ProxyError::BadSignature));
    assert_eq!(parse(b"proxy TCP4"), Err(ProxyError::BadSignature));
    assert_eq!(
        parse(b"\r\n\r\n\0\r\nQUIT\r"),
        Err(ProxyError::BadSignature)
    );
    assert_eq!(parse(b"\r\n\r\n\0"), Ok(Parsed::Partial));
    assert_eq!(parse(b""), Ok(Parsed::Partial));
}

#[test]
fn v2_tcp4_and_tcp6_give_the_source_and_their_length() {
    let header = v2_tcp4([203, 0, 113, 7], [192, 0, 2, 1], 5555, 7);
    assert_eq!(header.len(), 28);
    assert_eq!(parse(&header), complete(28, Some("203.0.113.7:5555")));
    let mut src = [0; 16];
    src[0] = 0x20;
    src[1] = 0x01;
    src[2] = 0x0d;
    src[3] = 0xb8;
    src[15] = 7;
    let header = v2_tcp6(src, [0; 16], 443, 7);
    assert_eq!(header.len(), 52);
    let mut with_data = header.clone();
    with_data.extend_from_slice(b"data");
    assert_eq!(parse(&with_data), complete(52, Some("[2001:db8::7]:443")));
}

#[test]
fn v2_extensions_after_the_addresses_are_part_of_the_header() {
    let mut block = vec![10, 0, 0, 1, 10, 0, 0, 2, 0, 80, 0, 7];
    block.extend_from_slice(&[0x04, 0x00, 0x02, 0xab, 0xcd]); // a TLV
    let header = v2(1, 0x11, &block);
    assert_eq!(parse(&header), complete(16 + 17, Some("10.0.0.1:80")));
}

#[test]
fn v2_local_unspec_and_unix_keep_the_peer() {
    assert_eq!(parse(&v2(0, 0x00, &[])), complete(16, None));
    // LOCAL ignores any address block it carries.
    let mut local = v2_tcp4([1, 2, 3, 4], [5, 6, 7, 8], 9, 10);
    local[12] = 0x20;
    assert_eq!(parse(&local), complete(28, None));
    assert_eq!(parse(&v2(1, 0x00, &[])), complete(16, None));
    assert_eq!(parse(&v2(1, 0x31, &[0; 216])), complete(232, None));
}

#[test]
fn v2_malformed_headers_are_refused() {
    let good = v2_tcp4([1, 2, 3, 4], [5, 6, 7, 8], 9, 10);
    let mut version = good.clone();
    version[12] = 0x11;
    assert_eq!(parse(&version), Err(ProxyError::V2Malformed));
    let mut command = good.clone();
    command[12] = 0x22;
    assert_eq!(parse(&command), Err(ProxyError::V2Malformed));
    let mut family = good.clone();
    family[13] = 0x41;
    assert_eq!(parse(&family), Err(ProxyError::V2Malformed));
    assert_eq!(parse(&v2(1, 0x11, &[0; 11])), Err(ProxyError::V2TooShort));
    assert_eq!(parse(&v2(1, 0x21, &[0; 35])), Err(ProxyError::V2TooShort));
    assert_eq!(parse(&v2(1, 0x31, &[0; 215])), Err(ProxyError::V2TooShort));
}

#[test]
fn v2_longer_than_536_bytes_is_refused_from_its_length_field() {
    assert_eq!(
        parse(&v2(1, 0x11, &[0; 520])),
        complete(MAX_HEADER, Some("0.0.0.0:0"))
    );
    let over = v2(1, 0x11, &[0; 521]);
    assert_eq!(parse(&over[..16]), Err(ProxyError::V2TooLong));
    // Announced, not sent: refused before the bytes arrive.
    let mut announced = V2_SIGNATURE.to_vec();
    announced.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    assert_eq!(parse(&announced), Err(ProxyError::V2TooLong));
}

#[test]
fn v2_waits_for_its_announced_length() {
    let header = v2_tcp4([1, 2, 3, 4], [5, 6, 7, 8], 9, 10);
    for end in 0..header.len() {
        assert_eq!(parse(&header[..end]), Ok(Parsed::Partial), "{end} bytes");
    }
}

/// Valid headers of every kind, for the properties.
fn valid_header() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (
            any::<[u8; 4]>(),
            any::<[u8; 4]>(),
            any::<u16>(),
            any::<u16>()
        )
            .prop_map(|(s, d, sp, dp)| {
                let (s, d) = (std::net::Ipv4Addr::from(s), std::net::Ipv4Addr::from(d));
                format!("PROXY TCP4 {s} {d} {sp} {dp}\r\n").into_bytes()
            }),
        (
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<u16>(),
            any::<u16>()
        )
            .prop_map(|(s, d, sp, dp)| {
                let (s, d) = (std::net::Ipv6Addr::from(s), std::net::Ipv6Addr::from(d));
                format!("PROXY TCP6 {s} {d} {sp} {dp}\r\n").into_bytes()
            }),
        Just(b"PROXY UNKNOWN\r\n".to_vec()),
        (
            any::<[u8; 4]>(),
            any::<[u8; 4]>(),
            any::<u16>(),
            any::<u16>(),
            vec(any::<u8>(), 0..=40)
        )
            .prop_map(|(s, d, sp, dp, tlvs)| {
                let mut header = v2_tcp4(s, d, sp, dp);
                header.extend_from_slice(&tlvs);
                let len = (header.len() - 16) as u16;
                header[14..16].copy_from_slice(&len.to_be_bytes());
                header
            }),
        (
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<u16>(),
            any::<u16>()
        )
            .prop_map(|(s, d, sp, dp)| v2_tcp6(s, d, sp, dp)),
        vec(any::<u8>(), 0..=100).prop_map(|block| v2(0, 0x00, &block)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// However the header arrives, every prefix is Partial and the whole,
    /// with anything after it, parses the same.
    #[test]
    fn any_split_of_a_valid_header_parses_the_same(
        header in valid_header(),
        after in vec(any::<u8>(), 0..=64),
    ) {
        let whole = parse(&header);
        let Ok(Parsed::Complete { len, .. }) = whole else {
            panic!("valid header refused: {whole:?} for {header:?}");
        };
        prop_assert_eq!(len, header.len());
        for end in 0..header.len() {
            prop_assert_eq!(parse(&header[..end]), Ok(Parsed::Partial), "prefix of {}", end);
        }
        let mut with_data = header.clone();
        with_data.extend_from_slice(&after);
        prop_assert_eq!(parse(&with_data), whole);
    }

    /// Random bytes never panic, never claim more than they are or than
    /// the maximum, and an error stays an error as bytes are added.
    #[test]
    fn random_bytes_never_panic_or_over_read(
        bytes in prop_oneof![
            vec(any::<u8>(), 0..=700),
            vec(any::<u8>(), 0..=600).prop_map(|tail| [b"PROXY ".to_vec(), tail].concat()),
            vec(any::<u8>(), 0..=600).prop_map(|tail| [V2_SIGNATURE.to_vec(), tail].concat()),
        ],
    ) {
        let mut failed_at = None;
        for end in 0..=bytes.len() {
            match parse(&bytes[..end]) {
                Ok(Parsed::Complete { len, .. }) => {
                    prop_assert!(len <= end && len <= MAX_HEADER);
                    prop_assert!(failed_at.is_none(), "an error became a header");
                    break;
                }
                Ok(Parsed::Partial) => {
                    prop_assert!(failed_at.is_none(), "an error became partial");
                    prop_assert!(end < MAX_HEADER, "partial past the maximum");
                }
                Err(_) => { failed_at.get_or_insert(end); }
            }
        }
    }
}
