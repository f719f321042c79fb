//! Where the units of a connection's byte stream end, so that a read never takes bytes past the
//! end of the unit it is in: then, when tungstenite hands out a message, the bytes read from the
//! socket end exactly where the message's last byte does, and the kernel's arrival stamp of that
//! byte ([`krakenbook_arrival`]) is the message's.
//!
//! The units: for `ws://`, the HTTP response up to its blank line, then WebSocket frames
//! (tungstenite reads no further than a frame it can return: it parses before it reads); for
//! `wss://`, TLS records (rustls decrypts whole records, and tokio-rustls reads the socket only
//! while it has no plaintext: the frames a record completes were readable when the record was).
//!
//! What must hold: every byte is given, in order, and nothing else changes; a read stops at a
//! unit's end and nowhere else (a read of fewer bytes than the reader asked is what streams do
//! anyway); a header cut between reads is put together across them. The lengths in the headers
//! are the peer's word: a lie moves where reads stop, so a stamp, and nothing else (tungstenite
//! and rustls judge the bytes themselves).

/// What the stream carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// An HTTP response, then WebSocket frames (`ws://`).
    WebSocket,
    /// TLS records (`wss://`).
    Tls,
}

/// Where the stream is within its current unit.
#[derive(Debug)]
pub struct Units {
    framing: Framing,
    state: State,
}

#[derive(Debug)]
enum State {
    /// In the HTTP response: [`IN_LINE`], [`LINE_START`] or [`LINE_START_CR`].
    Http(u8),
    /// In a unit's header: its bytes so far.
    Header { bytes: [u8; HEADER_MAX], len: usize },
    /// In a unit's body: how many bytes are left.
    Body(u64),
}

/// In a line of the HTTP response.
const IN_LINE: u8 = 0;
/// At the start of a line of the HTTP response (a `\n` just ended the one before).
const LINE_START: u8 = 1;
/// After a `\r` at the start of a line of the HTTP response.
const LINE_START_CR: u8 = 2;

/// The longest header: a WebSocket frame's (2 + 8 bytes of length + 4 of mask).
const HEADER_MAX: usize = 14;

impl Units {
    /// At the start of a stream.
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::WebSocket => State::Http(IN_LINE),
            Framing::Tls => State::Body(0),
        };
        Units { framing, state }
    }

    /// Of `next`, the stream's next bytes, how many one read gives (at most `room`, and not past
    /// the end of the unit they are in); the stream moves past them. Never 0 when both are not.
    pub fn take(&mut self, next: &[u8], room: usize) -> usize {
        let cap = next.len().min(room);
        let mut n = 0;
        while n < cap {
            match &mut self.state {
                State::Http(at) => {
                    // The response ends at its first empty line, whether its lines end with
                    // `\r\n` or a bare `\n` (httparse, under tungstenite, takes both).
                    let b = next[n];
                    n += 1;
                    *at = match (*at, b) {
                        (LINE_START | LINE_START_CR, b'\n') => {
                            self.state = State::Body(0);
                            return n;
                        }
                        (_, b'\n') => LINE_START,
                        (LINE_START, b'\r') => LINE_START_CR,
                        _ => IN_LINE,
                    };
                }
                State::Body(0) => {
                    self.state = State::Header {
                        bytes: [0; HEADER_MAX],
                        len: 0,
                    };
                }
                State::Body(left) => {
                    let k = (cap - n).min(usize::try_from(*left).unwrap_or(usize::MAX));
                    n += k;
                    *left -= k as u64;
                    if *left == 0 {
                        return n;
                    }
                }
                State::Header { bytes, len } => {
                    bytes[*len] = next[n];
                    *len += 1;
                    n += 1;
                    if let Some(body) = body_len(self.framing, &bytes[..*len]) {
                        self.state = State::Body(body);
                        if body == 0 {
                            return n;
                        }
                    }
                }
            }
        }
        n
    }
}

/// The body's length once `header` is whole, `None` while more of it is to come.
fn body_len(framing: Framing, header: &[u8]) -> Option<u64> {
    match framing {
        Framing::Tls => {
            (header.len() == 5).then(|| u64::from(u16::from_be_bytes([header[3], header[4]])))
        }
        Framing::WebSocket => {
            if header.len() < 2 {
                return None;
            }
            let mask = if header[1] & 0x80 != 0 { 4 } else { 0 };
            let (extra, short) = match header[1] & 0x7f {
                126 => (2, None),
                127 => (8, None),
                n => (0, Some(u64::from(n))),
            };
            if header.len() < 2 + extra + mask {
                return None;
            }
            Some(short.unwrap_or_else(|| {
                header[2..2 + extra]
                    .iter()
                    .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ws_frame(payload: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![0x81];
        let m = if masked { 0x80 } else { 0 };
        if payload < 126 {
            f.push(m | payload as u8);
        } else if payload < 65_536 {
            f.push(m | 126);
            f.extend_from_slice(&(payload as u16).to_be_bytes());
        } else {
            f.push(m | 127);
            f.extend_from_slice(&(payload as u64).to_be_bytes());
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend((0..payload).map(|i| (i % 251) as u8));
        f
    }

    fn tls_record(payload: usize) -> Vec<u8> {
        let mut r = vec![0x17, 0x03, 0x03];
        r.extend_from_slice(&(payload as u16).to_be_bytes());
        r.extend((0..payload).map(|i| (i % 13) as u8));
        r
    }

    /// Reads the stream through `units` with the given available/room sizes (cycled) and
    /// returns where the reads ended and the bytes read.
    fn read_all(
        units: &mut Units,
        stream: &[u8],
        sizes: &[(usize, usize)],
    ) -> (Vec<usize>, Vec<u8>) {
        let mut at = 0;
        let mut ends = Vec::new();
        let mut got = Vec::new();
        let mut i = 0;
        while at < stream.len() {
            let (avail, room) = sizes[i % sizes.len()];
            i += 1;
            let next = &stream[at..(at + avail).min(stream.len())];
            let n = units.take(next, room);
            assert!(n > 0, "no progress");
            got.extend_from_slice(&next[..n]);
            at += n;
            ends.push(at);
        }
        (ends, got)
    }

    #[test]
    fn a_read_stops_at_the_end_of_the_http_response_and_of_every_frame() {
        let mut stream = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n".to_vec();
        let http_end = stream.len();
        let mut ends = vec![http_end];
        for (size, masked) in [
            (0, false),
            (5, false),
            (125, true),
            (126, false),
            (70_000, false),
            (3, true),
        ] {
            stream.extend(ws_frame(size, masked));
            ends.push(stream.len());
        }
        let mut units = Units::new(Framing::WebSocket);
        let (read_ends, got) = read_all(&mut units, &stream, &[(100_000, 100_000)]);
        assert_eq!(got, stream);
        assert_eq!(read_ends, ends);
    }

    #[test]
    fn a_tls_stream_is_read_a_record_at_a_time() {
        let mut stream = Vec::new();
        let mut ends = Vec::new();
        for size in [0, 1, 300, 16_384, 17_000] {
            stream.extend(tls_record(size));
            ends.push(stream.len());
        }
        let mut units = Units::new(Framing::Tls);
        let (read_ends, got) = read_all(&mut units, &stream, &[(1 << 20, 1 << 20)]);
        assert_eq!(got, stream);
        assert_eq!(read_ends, ends);
    }

    #[test]
    fn a_response_without_its_blank_line_is_given_whole_and_a_cr_run_still_ends_it() {
        let mut units = Units::new(Framing::WebSocket);
        let text = b"HTTP/1.1 101 x\r\r\n\r\n";
        assert_eq!(units.take(&text[..10], 100), 10);
        assert_eq!(units.take(&text[10..], 100), text.len() - 10);
        // A WebSocket frame next.
        assert_eq!(units.take(&[0x81, 0x02, b'h', b'i', 0x81], 100), 4);
    }

    #[test]
    fn a_response_with_bare_line_feeds_ends_where_tungstenite_ends_it() {
        // httparse (under tungstenite) takes a bare `\n` for a line's end: the response ends at
        // its first empty line however each line ends, and the frame after it is read alone.
        for head in [
            &b"HTTP/1.1 101 x\nUpgrade: websocket\n\n"[..],
            b"HTTP/1.1 101 x\r\nUpgrade: websocket\r\n\n",
            b"HTTP/1.1 101 x\nUpgrade: websocket\n\r\n",
        ] {
            let mut stream = head.to_vec();
            stream.extend(ws_frame(5, false));
            stream.extend(ws_frame(3, false));
            let mut units = Units::new(Framing::WebSocket);
            let (ends, got) = read_all(&mut units, &stream, &[(1_000, 1_000)]);
            assert_eq!(got, stream);
            assert_eq!(ends, [head.len(), head.len() + 7, stream.len()], "{head:?}");
        }
    }

    proptest! {
        /// Any bytes at all (lying lengths: 0, 2^64 - 1, a header cut at every point, garbage
        /// after an HTTP line), read with any sizes down to one byte: every read gives at least
        /// one byte, and every byte is given once, in order.
        #[test]
        fn hostile_bytes_are_given_whole_in_order_and_never_stall(
            stream in proptest::collection::vec(any::<u8>(), 1..3_000),
            sizes in proptest::collection::vec((1usize..50, 1usize..4), 1..20),
            tls in any::<bool>(),
            http in any::<bool>(),
        ) {
            let mut stream = stream;
            if http && !tls {
                let mut head = b"HTTP/1.1 101 OK\r\n\r\n".to_vec();
                head.append(&mut stream);
                stream = head;
            }
            let framing = if tls { Framing::Tls } else { Framing::WebSocket };
            let mut units = Units::new(framing);
            let (_, got) = read_all(&mut units, &stream, &sizes);
            prop_assert_eq!(got, stream);
        }
    }

    proptest! {
        /// Any cut of the stream into reads: every byte given in order, every unit's end is a
        /// read's end, and no read crosses one.
        #[test]
        fn any_cut_ends_reads_exactly_at_the_units(
            frames in proptest::collection::vec((0usize..300, any::<bool>(), any::<bool>()), 1..30),
            sizes in proptest::collection::vec((1usize..400, 1usize..400), 1..20),
            tls in any::<bool>(),
        ) {
            let (framing, mut stream, mut ends) = if tls {
                (Framing::Tls, Vec::new(), Vec::new())
            } else {
                let head = b"HTTP/1.1 101 OK\r\nA: b\r\n\r\n".to_vec();
                let end = head.len();
                (Framing::WebSocket, head, vec![end])
            };
            for (size, masked, big) in frames {
                let size = if big { size * 300 } else { size };
                if tls {
                    // A TLS record holds at most 2^14 bytes and its overhead.
                    stream.extend(tls_record(size.min(18_000)));
                } else {
                    stream.extend(ws_frame(size, masked));
                }
                ends.push(stream.len());
            }
            let mut units = Units::new(framing);
            let (read_ends, got) = read_all(&mut units, &stream, &sizes);
            prop_assert_eq!(&got, &stream);
            for end in &ends {
                prop_assert!(read_ends.contains(end), "no read ended at {}", end);
            }
            // Between two unit ends, reads only end where the reader's sizes cut them.
            let mut start = 0;
            for &end in &read_ends {
                prop_assert!(!ends.iter().any(|&e| e > start && e < end), "a read crossed a unit end");
                start = end;
            }
        }
    }
}
