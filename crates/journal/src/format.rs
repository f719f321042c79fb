//! Byte layout of segment headers and records (see the module doc of [`super`] for the whole
//! format and the crash-safety argument).

use crate::book::{Decimal, Precision, PriceLevel};
use crate::record::{BookState, FeedEvent, FrameRecord, Record, RecordBody};
use crate::time::Timestamp;

/// First eight bytes of every segment written now: the format name and version 2.
pub const MAGIC: [u8; 8] = *b"KBJRNL\x00\x02";
/// First eight bytes of a version-1 segment (still read).
pub const MAGIC_V1: [u8; 8] = *b"KBJRNL\x00\x01";
/// Bytes in a (version 2) segment header.
pub const HEADER_LEN: usize = 44;
/// Bytes in a version-1 segment header.
pub const HEADER_LEN_V1: usize = 36;
/// Bytes before a record's body: length and CRC.
pub const RECORD_PREFIX: usize = 8;
/// The smallest record body: the fixed fields and the kind byte.
pub const MIN_BODY: usize = 33;
/// The fewest bytes a record takes (prefix and smallest body): `n` bytes hold at most
/// [`max_records`]`(n)` records.
pub const MIN_RECORD: usize = RECORD_PREFIX + MIN_BODY;
/// The largest record body accepted (a depth-1000 snapshot is ~60 KB, the instrument snapshot
/// ~1 MB): anything larger in a length field is corruption, not data.
pub const MAX_BODY: usize = 64 << 20;

/// The most records `bytes` bytes can hold (an upper bound: every record takes at least
/// 41 bytes, `MIN_RECORD`).
pub fn max_records(bytes: u64) -> u64 {
    bytes.div_ceil(MIN_RECORD as u64)
}

const KIND_FRAME: u8 = 1;
const KIND_EVENT: u8 = 2;
const KIND_BOOK_STATE: u8 = 3;

/// A segment's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The `seq` of the segment's first record (records continue from here without gaps).
    pub first_seq: u64,
    /// The highest connection id used before this segment (new connections count up from it).
    pub conn_id_base: u64,
    /// When the segment was created.
    pub created: Timestamp,
    /// The `seq` of the last intact record before this segment when it was created. Below
    /// `first_seq - 1` after a torn tail was cut: the seqs in between were skipped on purpose
    /// (none can have held a record the database took). Version-1 headers have no such field:
    /// it reads as `first_seq - 1`.
    pub prev_seq: u64,
}

/// What [`SegmentHeader::decode`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderParse {
    /// A valid header of `len` bytes.
    Header(SegmentHeader, usize),
    /// Too few bytes to tell.
    Incomplete,
    /// Not a valid header (wrong magic or version, bad CRC).
    Invalid,
}

impl SegmentHeader {
    /// The header's bytes (version 2): magic, first_seq, conn_id_base, created (ns), prev_seq,
    /// CRC32 of the preceding 40 bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(&MAGIC);
        b[8..16].copy_from_slice(&self.first_seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.conn_id_base.to_le_bytes());
        b[24..32].copy_from_slice(&self.created.unix_nanos().to_le_bytes());
        b[32..40].copy_from_slice(&self.prev_seq.to_le_bytes());
        let crc = crc32fast::hash(&b[..40]);
        b[40..44].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Reads a header of either version from the start of `b`.
    pub fn decode(b: &[u8]) -> HeaderParse {
        let Some(magic) = b.get(..8) else {
            return if MAGIC.starts_with(b) || MAGIC_V1.starts_with(b) {
                HeaderParse::Incomplete
            } else {
                HeaderParse::Invalid
            };
        };
        let len = if magic == MAGIC {
            HEADER_LEN
        } else if magic == MAGIC_V1 {
            HEADER_LEN_V1
        } else {
            return HeaderParse::Invalid;
        };
        let Some(b) = b.get(..len) else {
            return HeaderParse::Incomplete;
        };
        if crc32fast::hash(&b[..len - 4]) != u32_at(b, len - 4) {
            return HeaderParse::Invalid;
        }
        let first_seq = u64_at(b, 8);
        let prev_seq = if len == HEADER_LEN {
            u64_at(b, 32)
        } else {
            first_seq.saturating_sub(1)
        };
        if first_seq == 0 || prev_seq >= first_seq {
            return HeaderParse::Invalid;
        }
        HeaderParse::Header(
            SegmentHeader {
                first_seq,
                conn_id_base: u64_at(b, 16),
                created: Timestamp::from_unix_nanos(u64_at(b, 24) as i64),
                prev_seq,
            },
            len,
        )
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Appends `record`'s bytes (length, CRC, body) to `out`.
pub fn encode_record(record: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_PREFIX]);
    out.extend_from_slice(&record.seq.to_le_bytes());
    out.extend_from_slice(&record.received_at.unix_nanos().to_le_bytes());
    out.extend_from_slice(&record.conn_id.to_le_bytes());
    out.extend_from_slice(&record.conn_seq.to_le_bytes());
    match &record.body {
        RecordBody::Frame(f) => {
            out.push(KIND_FRAME);
            out.push(match f.checksum_ok {
                None => 0,
                Some(true) => 1,
                Some(false) => 2,
            });
            out.push(u8::from(f.best_bid.is_some()) | (u8::from(f.best_ask.is_some()) << 1));
            for level in f.best_bid.iter().chain(f.best_ask.iter()) {
                encode_decimal(level.price, out);
                encode_decimal(level.qty, out);
            }
            out.extend_from_slice(&f.bytes);
        }
        RecordBody::Event(e) => {
            out.push(KIND_EVENT);
            // A FeedEvent holds only strings, options and a timestamp: serializing cannot fail.
            serde_json::to_writer(&mut *out, e).unwrap_or_default();
        }
        RecordBody::BookState(b) => {
            out.push(KIND_BOOK_STATE);
            let symbol = b.symbol.as_bytes();
            let symbol = &symbol[..symbol.len().min(u16::MAX as usize)];
            out.extend_from_slice(&(symbol.len() as u16).to_le_bytes());
            out.extend_from_slice(symbol);
            out.extend_from_slice(&b.depth.to_le_bytes());
            out.push(b.precision.price);
            out.push(b.precision.qty);
            out.extend_from_slice(&b.checksum.to_le_bytes());
            out.extend_from_slice(&b.timestamp.unix_nanos().to_le_bytes());
            for side in [&b.bids, &b.asks] {
                out.extend_from_slice(&(side.len() as u32).to_le_bytes());
                for level in side {
                    encode_decimal(level.price, out);
                    encode_decimal(level.qty, out);
                }
            }
        }
    }
    let body_len = out.len() - start - RECORD_PREFIX;
    let crc = crc32fast::hash(&out[start + RECORD_PREFIX..]);
    out[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The bytes the journal writes for `record` (prefix included), computed without writing them.
pub fn encoded_len(record: &Record) -> u64 {
    let body = match &record.body {
        RecordBody::Frame(f) => {
            let levels: usize = f
                .best_bid
                .iter()
                .chain(f.best_ask.iter())
                .map(|l| decimal_len(l.price) + decimal_len(l.qty))
                .sum();
            3 + levels + f.bytes.len()
        }
        RecordBody::Event(e) => 1 + serde_json::to_vec(e).map_or(0, |v| v.len()),
        RecordBody::BookState(b) => {
            let levels: usize = b
                .bids
                .iter()
                .chain(&b.asks)
                .map(|l| decimal_len(l.price) + decimal_len(l.qty))
                .sum();
            1 + 2 + b.symbol.len().min(u16::MAX as usize) + 2 + 2 + 4 + 8 + 8 + levels
        }
    };
    (RECORD_PREFIX + 32 + body) as u64
}

fn decimal_len(d: Decimal) -> usize {
    2 + 16
        - d.mantissa()
            .to_le_bytes()
            .iter()
            .rev()
            .take_while(|&&b| b == 0)
            .count()
}

fn encode_decimal(d: Decimal, out: &mut Vec<u8>) {
    let m = d.mantissa().to_le_bytes();
    let len = 16 - m.iter().rev().take_while(|&&b| b == 0).count();
    out.push(d.scale());
    out.push(len as u8);
    out.extend_from_slice(&m[..len]);
}

/// What [`parse_record`] found at an offset.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A whole, valid record of `len` bytes (prefix included), borrowed from the input.
    Record(RecordView<'a>, usize),
    /// The bytes end inside a record: more may come (a live segment), or it is a torn tail.
    Incomplete,
    /// The bytes are not a valid record: bad length, bad CRC, or a body that does not decode.
    Invalid(&'static str),
}

/// A record read in place: its fixed fields, and its body still encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// The record's `seq`.
    pub seq: u64,
    /// Local receive time (or event time).
    pub received_at: Timestamp,
    /// Connection id.
    pub conn_id: u64,
    /// Frame number within the connection (0 for events and states).
    pub conn_seq: u64,
    /// The body after the fixed fields: kind byte, then the kind's payload.
    body: &'a [u8],
}

/// A frame record read in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameView<'a> {
    /// The feed's verdict.
    pub checksum_ok: Option<bool>,
    /// The frame exactly as received.
    pub bytes: &'a [u8],
}

impl<'a> RecordView<'a> {
    /// The frame, when this is a frame record.
    pub fn frame(&self) -> Option<FrameView<'a>> {
        let (checksum_ok, _tops, at) = frame_header(self.body)?;
        Some(FrameView {
            checksum_ok,
            bytes: self.body.get(at..)?,
        })
    }

    /// The record, decoded in full (copies the frame's bytes).
    pub fn to_record(&self) -> Option<Record> {
        self.to_record_in(Vec::new())
    }

    /// [`RecordView::to_record`], a frame's bytes copied into `buf` (emptied first; its
    /// allocation reused when large enough). Not a frame: `buf` is dropped.
    pub fn to_record_in(&self, buf: Vec<u8>) -> Option<Record> {
        let body = match *self.body.first()? {
            KIND_FRAME => {
                let (checksum_ok, tops, frame_at) = frame_header(self.body)?;
                let rest = self.body;
                let mut at = 3;
                let mut level = |present: bool| -> Option<Option<PriceLevel>> {
                    if !present {
                        return Some(None);
                    }
                    let price = decode_decimal(rest, &mut at)?;
                    let qty = decode_decimal(rest, &mut at)?;
                    Some(Some(PriceLevel { price, qty }))
                };
                let best_bid = level(tops & 1 != 0)?;
                let best_ask = level(tops & 2 != 0)?;
                if at != frame_at {
                    return None;
                }
                let mut bytes = buf;
                bytes.clear();
                bytes.extend_from_slice(rest.get(frame_at..)?);
                RecordBody::Frame(FrameRecord {
                    bytes,
                    checksum_ok,
                    best_bid,
                    best_ask,
                })
            }
            KIND_EVENT => {
                RecordBody::Event(serde_json::from_slice::<FeedEvent>(&self.body[1..]).ok()?)
            }
            KIND_BOOK_STATE => RecordBody::BookState(decode_book_state(&self.body[1..])?),
            _ => return None,
        };
        Some(Record {
            seq: self.seq,
            received_at: self.received_at,
            conn_id: self.conn_id,
            conn_seq: self.conn_seq,
            body,
        })
    }
}

/// A frame body's verdict, top-of-book flags, and where the frame bytes start (after skipping
/// the encoded best levels).
fn frame_header(b: &[u8]) -> Option<(Option<bool>, u8, usize)> {
    if *b.first()? != KIND_FRAME {
        return None;
    }
    let checksum_ok = match *b.get(1)? {
        0 => None,
        1 => Some(true),
        2 => Some(false),
        _ => return None,
    };
    let tops = *b.get(2)?;
    if tops > 3 {
        return None;
    }
    let mut at = 3;
    for _ in 0..(tops.count_ones() * 2) {
        let len = usize::from(*b.get(at + 1)?);
        if len > 16 || *b.get(at)? > Decimal::MAX_SCALE {
            return None;
        }
        at += 2 + len;
    }
    (at <= b.len()).then_some((checksum_ok, tops, at))
}

/// The view of a record that [`parse_record`] already validated at the start of `b`.
pub fn view_validated(b: &[u8]) -> RecordView<'_> {
    let len = u32_at(b, 0) as usize;
    let body = &b[RECORD_PREFIX..RECORD_PREFIX + len];
    RecordView {
        seq: u64_at(body, 0),
        received_at: Timestamp::from_unix_nanos(u64_at(body, 8) as i64),
        conn_id: u64_at(body, 16),
        conn_seq: u64_at(body, 24),
        body: &body[32..],
    }
}

/// Parses the record at the start of `b` without copying it.
pub fn parse_record(b: &[u8]) -> Parsed<'_> {
    if b.len() < RECORD_PREFIX {
        return Parsed::Incomplete;
    }
    let len = u32_at(b, 0) as usize;
    if !(MIN_BODY..=MAX_BODY).contains(&len) {
        return Parsed::Invalid("record length out of range");
    }
    let Some(body) = b.get(RECORD_PREFIX..RECORD_PREFIX + len) else {
        return Parsed::Incomplete;
    };
    if crc32fast::hash(body) != u32_at(b, 4) {
        return Parsed::Invalid("record CRC mismatch");
    }
    let view = RecordView {
        seq: u64_at(body, 0),
        received_at: Timestamp::from_unix_nanos(u64_at(body, 8) as i64),
        conn_id: u64_at(body, 16),
        conn_seq: u64_at(body, 24),
        body: &body[32..],
    };
    // Frames are checked structurally (cheap); the rare other kinds are decoded in full.
    let valid = match body[32] {
        KIND_FRAME => view.frame().is_some(),
        _ => view.to_record().is_some(),
    };
    if valid {
        Parsed::Record(view, RECORD_PREFIX + len)
    } else {
        Parsed::Invalid("record body does not decode")
    }
}

fn decode_book_state(b: &[u8]) -> Option<BookState> {
    let n = usize::from(u16::from_le_bytes([*b.first()?, *b.get(1)?]));
    let symbol = std::str::from_utf8(b.get(2..2 + n)?).ok()?.to_owned();
    let mut at = 2 + n;
    let fixed = b.get(at..at + 8)?;
    let depth = u16::from_le_bytes([fixed[0], fixed[1]]);
    let precision = Precision {
        price: fixed[2],
        qty: fixed[3],
    };
    let checksum = u32_at(fixed, 4);
    at += 8;
    let timestamp = Timestamp::from_unix_nanos(u64_at(b.get(at..at + 8)?, 0) as i64);
    at += 8;
    let mut sides = [Vec::new(), Vec::new()];
    for side in &mut sides {
        let count = u32_at(b.get(at..at + 4)?, 0) as usize;
        at += 4;
        if count > b.len() {
            return None;
        }
        side.reserve(count);
        for _ in 0..count {
            let price = decode_decimal(b, &mut at)?;
            let qty = decode_decimal(b, &mut at)?;
            side.push(PriceLevel { price, qty });
        }
    }
    if at != b.len() {
        return None;
    }
    let [bids, asks] = sides;
    Some(BookState {
        symbol,
        depth,
        precision,
        checksum,
        timestamp,
        bids,
        asks,
    })
}

fn decode_decimal(b: &[u8], at: &mut usize) -> Option<Decimal> {
    let scale = *b.get(*at)?;
    let len = usize::from(*b.get(*at + 1)?);
    if len > 16 {
        return None;
    }
    let mut m = [0u8; 16];
    m[..len].copy_from_slice(b.get(*at + 2..*at + 2 + len)?);
    *at += 2 + len;
    Decimal::new(u128::from_le_bytes(m), scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::EventKind;

    pub(crate) fn sample_records() -> Vec<Record> {
        let d = |s: &str| Decimal::parse(s).unwrap();
        vec![
            Record {
                seq: 1,
                received_at: Timestamp::from_unix_nanos(1_786_982_517_687_440_123),
                conn_id: 7,
                conn_seq: 1,
                body: RecordBody::Frame(FrameRecord {
                    bytes: br#"{"channel":"book","type":"update","data":[]}"#.to_vec(),
                    checksum_ok: Some(true),
                    best_bid: Some(PriceLevel {
                        price: d("62802.5"),
                        qty: d("0.00005100"),
                    }),
                    best_ask: Some(PriceLevel {
                        price: d("62802.6"),
                        qty: d("123456789012345678901234.5"),
                    }),
                }),
            },
            Record {
                seq: 2,
                received_at: Timestamp::from_unix_nanos(5),
                conn_id: 7,
                conn_seq: 2,
                body: RecordBody::Frame(FrameRecord {
                    bytes: b"not json \xff\x00".to_vec(),
                    checksum_ok: None,
                    best_bid: None,
                    best_ask: None,
                }),
            },
            Record {
                seq: 3,
                received_at: Timestamp::from_unix_nanos(-5),
                conn_id: u64::MAX,
                conn_seq: 0,
                body: RecordBody::Event(FeedEvent {
                    kind: EventKind::Resynced,
                    symbol: Some("BTC/USD".into()),
                    gap_start: Some(Timestamp::from_unix_nanos(1)),
                    detail: "after a checksum mismatch".into(),
                }),
            },
            Record {
                seq: 5,
                received_at: Timestamp::from_unix_nanos(10),
                conn_id: 8,
                conn_seq: 0,
                body: RecordBody::BookState(BookState {
                    symbol: "BTC/USD".into(),
                    depth: 1000,
                    precision: Precision { price: 1, qty: 8 },
                    checksum: 3_310_070_434,
                    timestamp: Timestamp::from_unix_nanos(1_786_982_517_687_440_000),
                    bids: vec![PriceLevel {
                        price: d("45283.5"),
                        qty: d("0.10000000"),
                    }],
                    asks: vec![
                        PriceLevel {
                            price: d("45285.2"),
                            qty: d("0.00100000"),
                        },
                        PriceLevel {
                            price: d("45286.4"),
                            qty: d("1.54571953"),
                        },
                    ],
                }),
            },
            Record {
                seq: 4,
                received_at: Timestamp::from_unix_nanos(9),
                conn_id: 8,
                conn_seq: 3,
                body: RecordBody::Frame(FrameRecord {
                    bytes: Vec::new(),
                    checksum_ok: Some(false),
                    best_bid: None,
                    best_ask: Some(PriceLevel {
                        price: d("0"),
                        qty: d("1"),
                    }),
                }),
            },
        ]
    }

    #[test]
    fn records_round_trip() {
        let records = sample_records();
        let mut buf = Vec::new();
        for r in &records {
            encode_record(r, &mut buf);
        }
        let mut at = 0;
        for r in &records {
            let mut one = Vec::new();
            encode_record(r, &mut one);
            assert_eq!(encoded_len(r), one.len() as u64, "encoded_len of {r:?}");
            match parse_record(&buf[at..]) {
                Parsed::Record(got, len) => {
                    assert_eq!(&got.to_record().unwrap(), r);
                    at += len;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(at, buf.len());
    }

    #[test]
    fn every_cut_is_incomplete_and_every_flip_is_invalid() {
        let mut buf = Vec::new();
        encode_record(&sample_records()[0], &mut buf);
        for cut in 0..buf.len() {
            assert_eq!(
                parse_record(&buf[..cut]),
                Parsed::Incomplete,
                "cut at {cut}"
            );
        }
        for i in 0..buf.len() {
            let mut b = buf.clone();
            b[i] ^= 0x10;
            assert!(
                matches!(parse_record(&b), Parsed::Invalid(_) | Parsed::Incomplete),
                "flip at {i} went unnoticed"
            );
            // A flipped length can only make the record look longer (incomplete) or invalid.
            if i >= 4 {
                assert!(
                    matches!(parse_record(&b), Parsed::Invalid(_)),
                    "flip at {i}"
                );
            }
        }
    }

    #[test]
    fn headers_round_trip_and_reject_damage() {
        let h = SegmentHeader {
            first_seq: 42,
            conn_id_base: 9,
            created: Timestamp::from_unix_nanos(123),
            prev_seq: 30,
        };
        let b = h.encode();
        assert_eq!(
            SegmentHeader::decode(&b),
            HeaderParse::Header(h, HEADER_LEN)
        );
        assert_eq!(SegmentHeader::decode(&b[..43]), HeaderParse::Incomplete);
        assert_eq!(SegmentHeader::decode(&b[..3]), HeaderParse::Incomplete);
        assert_eq!(SegmentHeader::decode(b"KBX"), HeaderParse::Invalid);
        for i in 0..HEADER_LEN {
            let mut d = b;
            d[i] ^= 1;
            assert_ne!(
                SegmentHeader::decode(&d),
                HeaderParse::Header(h, HEADER_LEN),
                "flip at {i}"
            );
            assert!(
                !matches!(SegmentHeader::decode(&d), HeaderParse::Header(..)),
                "flip at {i}"
            );
        }
    }

    #[test]
    fn version_1_headers_are_still_read() {
        // A header as version 1 wrote it: no prev_seq, 36 bytes.
        let mut b = [0u8; HEADER_LEN_V1];
        b[..8].copy_from_slice(&MAGIC_V1);
        b[8..16].copy_from_slice(&42u64.to_le_bytes());
        b[16..24].copy_from_slice(&9u64.to_le_bytes());
        b[24..32].copy_from_slice(&123i64.to_le_bytes());
        let crc = crc32fast::hash(&b[..32]);
        b[32..36].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            SegmentHeader::decode(&b),
            HeaderParse::Header(
                SegmentHeader {
                    first_seq: 42,
                    conn_id_base: 9,
                    created: Timestamp::from_unix_nanos(123),
                    prev_seq: 41,
                },
                HEADER_LEN_V1
            )
        );
    }
}
