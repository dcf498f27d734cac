//! The character generator pattern (RFC 864): lines of 72 characters taken
//! from the 95 printable ASCII characters, each line starting one character
//! further on than the one before, each ending `\r\n`.
//!
//! The pattern repeats every 95 lines, so a stream's position is a number
//! below [`CYCLE`]. One static copy of the pattern, ten cycles long, lets a
//! connection write a large window from any position without a buffer of
//! its own.

/// Characters per line before the `\r\n`.
pub const LINE_CHARS: usize = 72;
/// Bytes per line, with its `\r\n`.
pub const LINE_LEN: usize = LINE_CHARS + 2;
/// Lines before the pattern repeats: one per printable character.
pub const LINES: usize = 95;
/// Bytes before the pattern repeats.
pub const CYCLE: usize = LINES * LINE_LEN;
const _: () = assert!(CYCLE <= u16::MAX as usize, "a position must fit in 16 bits");
/// The longest window [`window`] hands out: the static pattern holds ten
/// cycles, so a window from any position in the first fits this much.
pub const MAX_WINDOW: usize = 9 * CYCLE;

static PATTERN: [u8; 10 * CYCLE] = build();

const fn build() -> [u8; 10 * CYCLE] {
    let mut out = [0u8; 10 * CYCLE];
    let mut i = 0;
    while i < out.len() {
        let line = (i / LINE_LEN) % LINES;
        let column = i % LINE_LEN;
        out[i] = if column < LINE_CHARS {
            b' ' + ((line + column) % LINES) as u8
        } else if column == LINE_CHARS {
            b'\r'
        } else {
            b'\n'
        };
        i += 1;
    }
    out
}

/// The next `len` bytes (at most [`MAX_WINDOW`]) of the stream from
/// `position`, which is taken modulo [`CYCLE`].
pub fn window(position: usize, len: usize) -> &'static [u8] {
    let start = position % CYCLE;
    &PATTERN[start..start + len.min(MAX_WINDOW)]
}

/// The position after `position` once `sent` more bytes went out, kept
/// below [`CYCLE`].
pub fn advance(position: usize, sent: usize) -> usize {
    (position + sent) % CYCLE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_rotate_through_the_printable_characters() {
        let first = window(0, LINE_LEN);
        let expected_first: Vec<u8> = (b' '..b' ' + 72).chain(*b"\r\n").collect();
        assert_eq!(first, &expected_first[..]);
        assert_eq!(window(LINE_LEN, 3), b"!\"#");
        // Line 94 starts with '~' and wraps to ' '.
        let last = window(94 * LINE_LEN, LINE_LEN);
        assert_eq!(&last[..3], b"~ !");
        assert!(
            last.iter()
                .take(LINE_CHARS)
                .all(|c| (b' '..=b'~').contains(c))
        );
        // Then the cycle starts again.
        assert_eq!(window(CYCLE, LINE_LEN), first);
    }

    #[test]
    fn windows_continue_across_calls() {
        let mut position = 0;
        let mut stream = Vec::new();
        for len in [1, 73, 74, 7000, 30_000, 5] {
            stream.extend_from_slice(window(position, len));
            position = advance(position, len);
        }
        let whole: Vec<u8> = (0..stream.len()).map(|i| PATTERN[i % CYCLE]).collect();
        assert_eq!(stream, whole);
    }

    #[test]
    fn windows_are_capped() {
        assert_eq!(window(CYCLE - 1, usize::MAX).len(), MAX_WINDOW);
    }
}
