//! What the `escape` target asserts of the client's `request DATA`
//! escapes (`src/bin/minetd-client/escape.rs`), shared by the afl target
//! and the corpus test (`tests/corpus.rs`).

#[path = "../../src/bin/minetd-client/escape.rs"]
#[allow(dead_code)] // `Payload` is the client's, not checked here
mod escape;

use escape::unescape;

/// Panics if `unescape` breaks a property on `data`.
pub fn check(data: &[u8]) {
    // Any bytes, escaped the way a user would write them, come back.
    let written = escape_bytes(data);
    assert_eq!(unescape(&written).as_deref(), Ok(data), "{written:?}");

    // A command-line argument is text; anything else never reaches it.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match unescape(text) {
        Ok(bytes) => {
            // An escape is never shorter than its byte.
            assert!(bytes.len() <= text.len());
            if !text.contains('\\') {
                assert_eq!(bytes, text.as_bytes());
            }
            // Escaping the result and reading it again gives it back.
            let again = escape_bytes(&bytes);
            assert_eq!(unescape(&again), Ok(bytes.clone()), "{again:?}");
        }
        Err(message) => {
            // Only an escape can be wrong, and the message says which.
            assert!(text.contains('\\'), "{text:?} refused: {message}");
            assert!(!message.is_empty());
        }
    }
}

/// `bytes` as a user writes them for `request`: printable ASCII as itself,
/// the named escapes, `\xHH` for the rest.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len());
    for &byte in bytes {
        match byte {
            b'\r' => text.push_str("\\r"),
            b'\n' => text.push_str("\\n"),
            b'\t' => text.push_str("\\t"),
            b'\\' => text.push_str("\\\\"),
            0 => text.push_str("\\0"),
            0x20..=0x7e => text.push(char::from(byte)),
            _ => text.push_str(&format!("\\x{byte:02x}")),
        }
    }
    text
}
