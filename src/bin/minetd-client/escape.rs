//! Backslash escapes for `request DATA`, so a shell argument can carry CR,
//! LF, NUL and any other byte: `\r \n \t \\ \0 \xHH`. Anything else after a
//! backslash is refused rather than guessed at.

use std::str::FromStr;

/// The bytes of a `request` DATA argument after unescaping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload(pub Vec<u8>);

impl FromStr for Payload {
    type Err = String;

    fn from_str(text: &str) -> Result<Payload, String> {
        unescape(text).map(Payload)
    }
}

/// Replaces each escape in `text` by the byte it stands for; other
/// characters are kept as their UTF-8 bytes.
pub fn unescape(text: &str) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut utf8 = [0; 4];
            bytes.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            continue;
        }
        let byte = match chars.next() {
            Some('r') => b'\r',
            Some('n') => b'\n',
            Some('t') => b'\t',
            Some('\\') => b'\\',
            Some('0') => 0,
            Some('x') => hex_byte(&mut chars)?,
            Some(other) => return Err(format!("unknown escape '\\{other}'")),
            None => return Err("a lone '\\' ends the data (write '\\\\' for a backslash)".into()),
        };
        bytes.push(byte);
    }
    Ok(bytes)
}

/// The byte of a `\xHH` escape: exactly two hex digits follow the `x`.
fn hex_byte(chars: &mut std::str::Chars<'_>) -> Result<u8, String> {
    let digits: String = chars.clone().take(2).collect();
    let valid = digits.len() == 2 && digits.chars().all(|c| c.is_ascii_hexdigit());
    if !valid {
        return Err(format!(
            "bad escape '\\x{digits}': \\x takes two hex digits"
        ));
    }
    chars.nth(1); // consume the two digits just read
    u8::from_str_radix(&digits, 16).map_err(|_| format!("bad escape '\\x{digits}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_escape_becomes_its_byte() {
        assert_eq!(
            unescape(r"a\r\n\t\\\0\x41\xfF").unwrap(),
            b"a\r\n\t\\\0A\xff".to_vec()
        );
    }

    #[test]
    fn plain_text_and_unicode_pass_through() {
        assert_eq!(unescape("GET / é").unwrap(), "GET / é".as_bytes().to_vec());
        assert_eq!(unescape("").unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn unknown_escape_is_named() {
        assert_eq!(unescape(r"a\qb").unwrap_err(), r"unknown escape '\q'");
    }

    #[test]
    fn bad_hex_is_named() {
        assert!(unescape(r"\xZ1").unwrap_err().contains(r"'\xZ1'"));
        assert!(unescape(r"\x4").unwrap_err().contains(r"'\x4'"));
        assert!(unescape(r"\x").is_err());
        assert!(unescape(r"\xé1").is_err());
    }

    #[test]
    fn trailing_backslash_is_refused() {
        assert!(unescape("abc\\").is_err());
    }
}
