//! What the `proxy` target asserts of [`minetd::proxy::parse`] for any
//! bytes, shared by the afl target and the corpus test (`tests/corpus.rs`).
//!
//! The server peeks at a connection's bytes as they arrive, in whatever
//! pieces the peer sends, and acts on the first verdict that is not
//! `Partial`. So besides not panicking, parsing must give the verdict on
//! the whole input to every way of growing towards it: every prefix is a
//! moment at which some split of the input would be parsed.

use minetd::proxy::{MAX_HEADER, Parsed, ProxyError, parse};

/// Panics if `parse` breaks a property on `data` or any prefix of it.
pub fn check(data: &[u8]) {
    let whole = parse(data);
    if let Ok(Parsed::Complete { len, .. }) = whole {
        assert!(len > 0, "an empty header");
        assert!(len <= data.len(), "claims {len} of {} bytes", data.len());
        assert!(len <= MAX_HEADER, "a header of {len} bytes");
    }
    if whole == Ok(Parsed::Partial) {
        // A peer cannot make the server hold more than a header's worth.
        assert!(
            data.len() < MAX_HEADER,
            "still partial at {} bytes",
            data.len()
        );
    }
    // Nothing past MAX_HEADER is looked at.
    assert_eq!(whole, parse(&data[..data.len().min(MAX_HEADER)]));

    assert_eq!(parse(&[]), Ok(Parsed::Partial));
    // The first verdict as the bytes arrive one at a time, and where.
    let mut first: Option<(usize, Result<Parsed, ProxyError>)> = None;
    for end in 1..=data.len().min(MAX_HEADER) {
        let verdict = parse(&data[..end]);
        match (&first, verdict) {
            (None, Ok(Parsed::Partial)) => {}
            (None, decided) => {
                if let Ok(Parsed::Complete { len, .. }) = decided {
                    // Complete exactly when its last byte arrives.
                    assert_eq!(len, end, "complete at {end} bytes, {len} long");
                }
                first = Some((end, decided));
            }
            (Some((at, Ok(complete))), later) => {
                assert_eq!(later, Ok(*complete), "complete at {at}, then {end} bytes");
            }
            (Some((at, Err(err))), later) => {
                // The error may be named differently as more bytes show
                // more of what is wrong, but it stays an error.
                assert!(later.is_err(), "{err:?} at {at}, then {later:?} at {end}");
            }
        }
    }
    match (first, whole) {
        (None, whole) => assert_eq!(whole, Ok(Parsed::Partial)),
        (Some((_, Ok(reached))), whole) => assert_eq!(whole, Ok(reached)),
        (Some((_, Err(_))), whole) => assert!(whole.is_err(), "then {whole:?}"),
    }
}
