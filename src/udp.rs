//! What the UDP services answer (RFC 862/863/864/867/868 each define a UDP
//! form): one datagram in, at most one datagram out. No state is kept per
//! peer; the server only adds the checks that make these safe to expose.

use crate::chargen;
use crate::config::{DaytimeFormat, Service};
use crate::daytime;

/// Source ports never answered. Another host's small service on one of
/// these would answer our answer, and the two would bounce datagrams
/// forever (the echo-loop attack that got UDP echo and chargen turned off
/// everywhere). Port 0 cannot be answered at all.
pub const NEVER_ANSWER_PORTS: [u16; 5] = [0, 7, 13, 19, 37];

/// Longest chargen reply: RFC 864 says "a random number (between 0 and 512)
/// of characters".
pub const CHARGEN_MAX: usize = 512;

/// Builds answers. Holds chargen's position and a small random generator;
/// nothing per peer.
#[derive(Debug)]
pub struct Answerer {
    daytime_format: DaytimeFormat,
    /// Each chargen reply starts one line after the previous one.
    chargen_line: usize,
    /// xorshift64 state: chargen's reply length need not be unpredictable,
    /// only varied, so the library needs no random-number crate.
    rng: u64,
    out: [u8; CHARGEN_MAX],
}

impl Answerer {
    /// An answerer writing daytime lines in `daytime_format`; `seed` varies
    /// chargen's lengths from one server to the next.
    pub fn new(daytime_format: DaytimeFormat, seed: u64) -> Answerer {
        Answerer {
            daytime_format,
            chargen_line: 0,
            rng: seed | 1,
            out: [0; CHARGEN_MAX],
        }
    }

    /// The answer `service` gives to `request`, or `None` for no answer.
    pub fn answer<'a>(&'a mut self, service: Service, request: &'a [u8]) -> Option<&'a [u8]> {
        match service {
            Service::UdpEcho => Some(request),
            Service::UdpDiscard => None,
            Service::UdpDaytime => {
                let line = daytime::line_now(self.daytime_format);
                let len = line.len().min(self.out.len());
                self.out[..len].copy_from_slice(&line.as_bytes()[..len]);
                Some(&self.out[..len])
            }
            Service::UdpTime => {
                self.out[..4].copy_from_slice(&daytime::time_bytes_now());
                Some(&self.out[..4])
            }
            Service::UdpChargen => {
                let len = (self.next_random() % (CHARGEN_MAX as u64 + 1)) as usize;
                let position = self.chargen_line * chargen::LINE_LEN;
                self.chargen_line = (self.chargen_line + 1) % chargen::LINES;
                Some(chargen::window(position, len))
            }
            // TCP services never reach here.
            _ => None,
        }
    }

    /// Like [`answer`](Self::answer), for a request in the first `len`
    /// bytes of `buf`: writes the answer over it and returns the answer's
    /// length. Echo's answer is the request where it lies; the others, at
    /// most [`CHARGEN_MAX`] bytes, are copied in (a `buf` shorter than
    /// that cuts them).
    pub fn answer_in_place(
        &mut self,
        service: Service,
        buf: &mut [u8],
        len: usize,
    ) -> Option<usize> {
        if service == Service::UdpEcho {
            return Some(len.min(buf.len()));
        }
        let mut answer = [0; CHARGEN_MAX];
        let reply = self.answer(service, &buf[..len.min(buf.len())])?;
        let len = reply.len().min(CHARGEN_MAX).min(buf.len());
        answer[..len].copy_from_slice(&reply[..len]);
        buf[..len].copy_from_slice(&answer[..len]);
        Some(len)
    }

    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_answers_with_the_request_and_discard_with_nothing() {
        let mut answerer = Answerer::new(DaytimeFormat::Ctime, 1);
        assert_eq!(
            answerer.answer(Service::UdpEcho, b"a\0b"),
            Some(&b"a\0b"[..])
        );
        assert_eq!(answerer.answer(Service::UdpDiscard, b"x"), None);
    }

    #[test]
    fn answers_in_place_match_the_answers() {
        let mut answerer = Answerer::new(DaytimeFormat::Rfc3339, 7);
        let mut reference = Answerer::new(DaytimeFormat::Rfc3339, 7);
        for service in [Service::UdpEcho, Service::UdpChargen, Service::UdpChargen] {
            let mut buf = [0u8; 1024];
            buf[..5].copy_from_slice(b"hello");
            let len = answerer.answer_in_place(service, &mut buf, 5).unwrap();
            let expected = reference.answer(service, b"hello").unwrap();
            assert_eq!(&buf[..len], expected, "{service:?}");
        }
        let mut buf = [0u8; 64];
        assert_eq!(
            answerer.answer_in_place(Service::UdpTime, &mut buf, 3),
            Some(4)
        );
        assert_eq!(
            answerer.answer_in_place(Service::UdpDiscard, &mut buf, 3),
            None
        );
    }

    #[test]
    fn chargen_answers_vary_in_length_within_512_and_follow_the_pattern() {
        let mut answerer = Answerer::new(DaytimeFormat::Ctime, 42);
        let mut lengths = std::collections::BTreeSet::new();
        for n in 0..200 {
            let reply = answerer.answer(Service::UdpChargen, b"").unwrap().to_vec();
            assert!(reply.len() <= CHARGEN_MAX);
            let start = (n % chargen::LINES) * chargen::LINE_LEN;
            assert_eq!(reply, chargen::window(start, reply.len()));
            lengths.insert(reply.len());
        }
        assert!(lengths.len() > 50, "lengths hardly vary: {lengths:?}");
    }

    #[test]
    fn daytime_and_time_answer_with_the_time() {
        let mut answerer = Answerer::new(DaytimeFormat::Rfc3339, 1);
        let line = answerer.answer(Service::UdpDaytime, b"").unwrap().to_vec();
        assert_eq!(line.len(), "2026-11-22T15:38:54Z\r\n".len());
        assert!(line.ends_with(b"Z\r\n"));
        assert_eq!(answerer.answer(Service::UdpTime, b"").unwrap().len(), 4);
    }
}
