//! The decisions of reading a journal, without I/O: walking a segment's bytes record by record,
//! telling damage from a torn tail, and naming the seqs missing between two segments. Recovery
//! (at open) and every reader use the same rules, so they always agree.
//!
//! What must hold:
//! - An intact record is never skipped for being near damage: after bytes that are not a valid
//!   record, the scanner resumes at the first offset holding a record that is valid (length in
//!   range, CRC ok, body decodes), whose `seq` follows the last good one by no more than the
//!   skipped bytes could hold (`last + max_records(skipped) + 1`), and that is confirmed by what
//!   follows it: the header of the next record (length in range, `seq + 1`; its body may be torn
//!   or damaged), or the end of the data (possibly after a torn header and zeroed pages, what a
//!   power cut leaves). A record found inside a frame's payload (a peer can send bytes that look
//!   like a record) has to guess the journal's seqs within that window to be taken.
//! - Known limit: an intact record between two damaged ones whose headers are both gone is not
//!   confirmed, and is reported with the damage.
//! - Only bytes after which no such record exists are a *tail*; what a tail means (torn while
//!   being written, or lost) is decided by the caller from where it is.

use std::path::{Path, PathBuf};

use super::format::{
    HeaderParse, MAX_BODY, MIN_BODY, Parsed, RECORD_PREFIX, RecordView, SegmentHeader, max_records,
    parse_record,
};
use super::{Damage, DamageKind};
use crate::time::Timestamp;

/// What [`Scanner::step`] found next.
#[derive(Debug)]
pub(crate) enum Step<'a> {
    /// The segment's header (always the first step). When the header is damaged, one made from
    /// the file name, with [`Scanner::header_damaged`] set.
    Header(SegmentHeader),
    /// An intact record at absolute offset `at`.
    Record { view: RecordView<'a>, at: u64 },
    /// Bytes `offset..offset + bytes` hold no valid record; the seqs `first_seq..=last_seq` are
    /// missing there (an empty range when the damage held none).
    Damage {
        offset: u64,
        bytes: u64,
        first_seq: u64,
        last_seq: u64,
    },
    /// Nothing can be decided until more bytes are read (never returned when the end is final).
    NeedMore,
    /// The data ends here, after a whole record (or the header).
    End,
    /// The data ends with `bytes` bytes from `offset` that hold no valid record.
    Tail { offset: u64, bytes: u64 },
}

#[derive(Clone, Copy, Debug)]
struct Resync {
    /// Where the damage starts.
    start: u64,
    /// The next offset to try.
    scan: u64,
}

/// Walks one segment's bytes (fed in any pieces) and says what they hold.
#[derive(Clone, Debug)]
pub(crate) struct Scanner {
    name_first_seq: u64,
    header: Option<SegmentHeader>,
    header_damaged: bool,
    /// Absolute offset of the next byte to parse.
    pos: u64,
    /// The last seq parsed (the header's `first_seq - 1` before any).
    last_seen: u64,
    resync: Option<Resync>,
}

impl Scanner {
    /// A scanner for the segment named after `first_seq`.
    pub fn new(name_first_seq: u64) -> Self {
        Scanner {
            name_first_seq,
            header: None,
            header_damaged: false,
            pos: 0,
            last_seen: name_first_seq.saturating_sub(1),
            resync: None,
        }
    }

    /// The first absolute offset the caller must still hold in its buffer.
    pub fn keep_from(&self) -> u64 {
        self.resync.map_or(self.pos, |r| r.scan)
    }

    /// The last seq parsed in this segment (its `first_seq - 1` before any).
    pub fn last_seen(&self) -> u64 {
        self.last_seen
    }

    /// Whether the header was damaged (the one returned was made from the file name).
    pub fn header_damaged(&self) -> bool {
        self.header_damaged
    }

    /// The next step, given the segment's bytes from absolute offset `base` (`base` must not be
    /// past [`keep_from`](Self::keep_from)); `end_final` when no byte will ever follow `buf`.
    pub fn step<'a>(&mut self, buf: &'a [u8], base: u64, end_final: bool) -> Step<'a> {
        debug_assert!(base <= self.keep_from());
        if self.header.is_none() {
            return self.header_step(buf, end_final);
        }
        if let Some(resync) = self.resync {
            return self.resync_step(resync, buf, base, end_final);
        }
        let rel = (self.pos - base) as usize;
        let rest = &buf[rel..];
        match parse_record(rest) {
            Parsed::Record(view, len) => {
                if view.seq == self.last_seen + 1 {
                    self.last_seen = view.seq;
                    let at = self.pos;
                    self.pos += len as u64;
                    return Step::Record { view, at };
                }
                if view.seq > self.last_seen + 1 {
                    // Records missing at a record boundary: no byte is damaged, the seqs are gone.
                    let first_seq = self.last_seen + 1;
                    self.last_seen = view.seq - 1;
                    return Step::Damage {
                        offset: self.pos,
                        bytes: 0,
                        first_seq,
                        last_seq: view.seq - 1,
                    };
                }
                // A seq already seen: stale bytes, not the next record.
                self.start_resync();
                self.resync_step(self.resync_or_now(), buf, base, end_final)
            }
            Parsed::Invalid(_) => {
                self.start_resync();
                self.resync_step(self.resync_or_now(), buf, base, end_final)
            }
            Parsed::Incomplete if !end_final => Step::NeedMore,
            Parsed::Incomplete if rest.is_empty() => Step::End,
            Parsed::Incomplete => {
                self.start_resync();
                self.resync_step(self.resync_or_now(), buf, base, end_final)
            }
        }
    }

    fn resync_or_now(&self) -> Resync {
        self.resync.unwrap_or(Resync {
            start: self.pos,
            scan: self.pos + 1,
        })
    }

    fn start_resync(&mut self) {
        self.resync = Some(Resync {
            start: self.pos,
            scan: self.pos + 1,
        });
    }

    fn header_step<'a>(&mut self, buf: &'a [u8], end_final: bool) -> Step<'a> {
        match SegmentHeader::decode(buf) {
            HeaderParse::Header(h, len) if h.first_seq == self.name_first_seq => {
                self.header = Some(h);
                self.pos = len as u64;
                self.last_seen = h.first_seq - 1;
                Step::Header(h)
            }
            HeaderParse::Incomplete if !end_final => Step::NeedMore,
            _ => {
                // Damaged (or disagreeing with its name): the name says where the seqs start;
                // records after it are found as after any damage.
                let h = SegmentHeader {
                    first_seq: self.name_first_seq,
                    conn_id_base: 0,
                    created: Timestamp::from_unix_nanos(0),
                    prev_seq: self.name_first_seq.saturating_sub(1),
                };
                self.header = Some(h);
                self.header_damaged = true;
                self.pos = 0;
                self.resync = Some(Resync { start: 0, scan: 1 });
                Step::Header(h)
            }
        }
    }

    fn resync_step<'a>(
        &mut self,
        resync: Resync,
        buf: &'a [u8],
        base: u64,
        end_final: bool,
    ) -> Step<'a> {
        let end = base + buf.len() as u64;
        let mut q = resync.scan;
        loop {
            let rel = (q - base) as usize;
            if buf.len() < rel + RECORD_PREFIX + 8 {
                if end_final {
                    self.resync = None;
                    self.pos = end;
                    return Step::Tail {
                        offset: resync.start,
                        bytes: end - resync.start,
                    };
                }
                self.resync = Some(Resync { scan: q, ..resync });
                return Step::NeedMore;
            }
            let b = &buf[rel..];
            let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
            let seq = u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
            let highest = self
                .last_seen
                .saturating_add(max_records(q - resync.start))
                .saturating_add(1);
            let plausible =
                (MIN_BODY..=MAX_BODY).contains(&len) && seq > self.last_seen && seq <= highest;
            if !plausible {
                q += 1;
                continue;
            }
            let candidate = match parse_record(b) {
                Parsed::Record(view, rlen) => Some((view, rlen)),
                Parsed::Incomplete if !end_final => {
                    self.resync = Some(Resync { scan: q, ..resync });
                    return Step::NeedMore;
                }
                _ => None,
            };
            let Some((view, rlen)) = candidate else {
                q += 1;
                continue;
            };
            let rest = &b[rlen..];
            let confirmed = if rest.len() >= RECORD_PREFIX + 8 {
                // The next record's header: its length in range and the next seq. Its body may be
                // torn or damaged itself (a power cut tears the record after the last synced one).
                let next_len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let next_seq = u64::from_le_bytes([
                    rest[8], rest[9], rest[10], rest[11], rest[12], rest[13], rest[14], rest[15],
                ]);
                ((MIN_BODY..=MAX_BODY).contains(&next_len)
                    && Some(next_seq) == view.seq.checked_add(1))
                    // Or the data ends in zeroed pages after what may be a torn header.
                    || (end_final && rest[RECORD_PREFIX + 8..].iter().all(|&b| b == 0))
            } else if end_final {
                // The end of the data, or a torn header before it.
                true
            } else {
                self.resync = Some(Resync { scan: q, ..resync });
                return Step::NeedMore;
            };
            if !confirmed {
                q += 1;
                continue;
            }
            let first_seq = self.last_seen + 1;
            self.resync = None;
            self.pos = q;
            self.last_seen = view.seq - 1;
            return Step::Damage {
                offset: resync.start,
                bytes: q - resync.start,
                first_seq,
                last_seq: view.seq - 1,
            };
        }
    }
}

/// What one segment holds, scanned whole (recovery, [`super::last_seq`]).
#[derive(Clone, Debug, Default)]
pub(crate) struct SegmentScan {
    /// Its header (made from the name when damaged).
    pub header: Option<SegmentHeader>,
    /// Whether the header was damaged.
    pub header_damaged: bool,
    /// Intact records.
    pub records: u64,
    /// The last intact record's seq, receive time and the highest connection id seen.
    pub last: Option<(u64, Timestamp)>,
    /// The highest connection id of any record.
    pub max_conn_id: u64,
    /// Damage followed by intact records: (offset, bytes, first_seq, last_seq).
    pub damage: Vec<(u64, u64, u64, u64)>,
    /// Bytes after the last intact record that hold none: (offset, bytes).
    pub tail: Option<(u64, u64)>,
}

/// Scans a whole segment's bytes.
pub(crate) fn scan_segment(bytes: &[u8], name_first_seq: u64) -> SegmentScan {
    let mut scanner = Scanner::new(name_first_seq);
    let mut out = SegmentScan::default();
    loop {
        match scanner.step(bytes, 0, true) {
            Step::Header(h) => {
                out.header = Some(h);
                out.header_damaged = scanner.header_damaged();
            }
            Step::Record { view, .. } => {
                out.records += 1;
                out.last = Some((view.seq, view.received_at));
                out.max_conn_id = out.max_conn_id.max(view.conn_id);
            }
            Step::Damage {
                offset,
                bytes,
                first_seq,
                last_seq,
            } => out.damage.push((offset, bytes, first_seq, last_seq)),
            Step::Tail { offset, bytes } => {
                out.tail = Some((offset, bytes));
                return out;
            }
            Step::End | Step::NeedMore => return out,
        }
    }
}

/// How the segment before a gap ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PrevEnd {
    /// No segment was read before (the gap is at the reader's start).
    Start,
    /// After a whole record, at byte `end`.
    Clean { segment: PathBuf, end: u64 },
    /// With `bytes` bytes at `offset` that hold no valid record (cut, or damaged).
    Tail {
        segment: PathBuf,
        offset: u64,
        bytes: u64,
    },
    /// Reading stopped at an error at `offset` (a damaged compressed stream).
    Unreadable { segment: PathBuf, offset: u64 },
}

/// Names the seqs `first..=last` that no segment holds, found before segment `next` (whose
/// header declares `declared_prev`, the last seq its writer knew to be intact), knowing that
/// retention removed everything up to `expired`:
/// - up to `expired`: [`DamageKind::Expired`];
/// - up to `declared_prev`: lost, [`DamageKind::TruncatedSegment`] when the previous segment
///   ended inside a record or could not be read, else [`DamageKind::MissingSegment`];
/// - the rest: [`DamageKind::TornTail`], skipped on purpose by a writer after a torn tail.
pub(crate) fn classify_gap(
    first: u64,
    last: u64,
    expired: u64,
    declared_prev: u64,
    prev_end: &PrevEnd,
    next: &Path,
) -> Vec<Damage> {
    let mut out = Vec::new();
    if first > last {
        return out;
    }
    let damage = |kind, segment: &Path, offset, bytes, first_seq, last_seq| Damage {
        kind,
        segment: segment.to_path_buf(),
        offset,
        bytes,
        first_seq,
        last_seq,
        before: None,
        after: None,
    };
    if first <= expired {
        out.push(damage(
            DamageKind::Expired,
            next,
            0,
            0,
            first,
            last.min(expired),
        ));
    }
    let lost_from = first.max(expired.saturating_add(1));
    let lost_to = last.min(declared_prev);
    let lost = lost_from <= lost_to;
    if lost {
        out.push(match prev_end {
            PrevEnd::Tail {
                segment,
                offset,
                bytes,
            } => damage(
                DamageKind::TruncatedSegment,
                segment,
                *offset,
                *bytes,
                lost_from,
                lost_to,
            ),
            PrevEnd::Unreadable { segment, offset } => damage(
                DamageKind::TruncatedSegment,
                segment,
                *offset,
                0,
                lost_from,
                lost_to,
            ),
            PrevEnd::Start | PrevEnd::Clean { .. } => {
                damage(DamageKind::MissingSegment, next, 0, 0, lost_from, lost_to)
            }
        });
    }
    let torn_from = lost_from.max(declared_prev.saturating_add(1));
    if torn_from <= last {
        out.push(match prev_end {
            // The torn bytes are still there (cut by the next start, which has not come yet).
            PrevEnd::Tail {
                segment,
                offset,
                bytes,
            } if !lost => damage(
                DamageKind::TornTail,
                segment,
                *offset,
                *bytes,
                torn_from,
                last,
            ),
            PrevEnd::Clean { segment, end } if !lost => {
                damage(DamageKind::TornTail, segment, *end, 0, torn_from, last)
            }
            _ => damage(DamageKind::TornTail, next, 0, 0, torn_from, last),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::format::{HEADER_LEN, encode_record};
    use super::*;
    use crate::record::{FrameRecord, Record, RecordBody};

    fn record(seq: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_record(
            &Record {
                seq,
                received_at: Timestamp::from_unix_nanos(seq as i64),
                conn_id: 1,
                conn_seq: seq,
                body: RecordBody::Frame(FrameRecord {
                    bytes: payload.to_vec(),
                    checksum_ok: None,
                    best_bid: None,
                    best_ask: None,
                }),
            },
            &mut out,
        );
        out
    }

    fn segment(first: u64, n: u64) -> (Vec<u8>, Vec<usize>) {
        let mut b = SegmentHeader {
            first_seq: first,
            conn_id_base: 0,
            created: Timestamp::from_unix_nanos(1),
            prev_seq: first - 1,
        }
        .encode()
        .to_vec();
        let mut starts = Vec::new();
        for seq in first..first + n {
            starts.push(b.len());
            b.extend(record(
                seq,
                format!("frame {seq} {}", "x".repeat(seq as usize % 40)).as_bytes(),
            ));
        }
        (b, starts)
    }

    fn seqs(scan: &SegmentScan) -> (u64, Option<u64>) {
        (scan.records, scan.last.map(|l| l.0))
    }

    #[test]
    fn a_whole_segment_scans_clean() {
        let (b, _) = segment(5, 20);
        let scan = scan_segment(&b, 5);
        assert_eq!(seqs(&scan), (20, Some(24)));
        assert!(scan.damage.is_empty() && scan.tail.is_none());
    }

    #[test]
    fn flipped_bytes_in_the_middle_are_damage_and_later_records_are_kept() {
        let (mut b, starts) = segment(1, 30);
        for i in 0..4 {
            b[starts[10] + 20 + i] ^= 0x5a;
        }
        let scan = scan_segment(&b, 1);
        assert_eq!(seqs(&scan), (29, Some(30)));
        assert_eq!(
            scan.damage,
            vec![(starts[10] as u64, (starts[11] - starts[10]) as u64, 11, 11)]
        );
        assert_eq!(scan.tail, None);
    }

    #[test]
    fn a_damaged_length_field_does_not_hide_the_records_after_it() {
        let (mut b, starts) = segment(1, 10);
        b[starts[3] + 2] = 0x10; // the length now points megabytes ahead, past the end
        let scan = scan_segment(&b, 1);
        assert_eq!(seqs(&scan), (9, Some(10)));
        assert_eq!(scan.damage[0].2..=scan.damage[0].3, 4..=4);
    }

    #[test]
    fn a_cut_anywhere_in_the_last_record_is_a_tail() {
        let (b, starts) = segment(1, 5);
        for cut in starts[4] + 1..b.len() {
            let scan = scan_segment(&b[..cut], 1);
            assert_eq!(seqs(&scan), (4, Some(4)), "cut at {cut}");
            assert_eq!(
                scan.tail,
                Some((starts[4] as u64, (cut - starts[4]) as u64)),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_record_hidden_in_a_frame_is_not_taken_after_damage() {
        // Record 2's payload carries a well-formed record 3 (a peer can send any bytes); record
        // 2's length is damaged. The fake is followed by junk, so it is not confirmed, and the
        // real record 3 is found after it.
        let fake = record(3, b"forged");
        let mut payload = b"prefix".to_vec();
        payload.extend_from_slice(&fake);
        payload.extend_from_slice(b"suffix junk that is not a record");
        let mut b = segment(1, 1).0;
        let second = b.len();
        b.extend(record(2, &payload));
        let real3 = b.len();
        b.extend(record(3, b"real three"));
        b.extend(record(4, b"real four"));
        b[second] ^= 0xff;
        let mut scanner = Scanner::new(1);
        let mut got = Vec::new();
        loop {
            match scanner.step(&b, 0, true) {
                Step::Record { view, at, .. } => got.push((view.seq, at)),
                Step::End | Step::Tail { .. } => break,
                _ => {}
            }
        }
        assert_eq!(
            got,
            vec![
                (1, HEADER_LEN as u64),
                (3, real3 as u64),
                (4, (real3 + record(3, b"real three").len()) as u64)
            ]
        );
    }

    #[test]
    fn a_seq_too_far_after_the_damage_is_not_a_candidate() {
        // Junk of 10 bytes, then a valid pair of records numbered far beyond what 10 bytes could
        // have held: not a resynchronisation point; the segment's end is a tail.
        let mut b = segment(1, 2).0;
        let junk_at = b.len();
        b.extend_from_slice(&[0xee; 10]);
        b.extend(record(50, b"far"));
        b.extend(record(51, b"farther"));
        let scan = scan_segment(&b, 1);
        assert_eq!(seqs(&scan), (2, Some(2)));
        assert_eq!(
            scan.tail,
            Some((junk_at as u64, (b.len() - junk_at) as u64))
        );
    }

    #[test]
    fn fed_in_pieces_the_scanner_finds_the_same() {
        let (mut b, starts) = segment(1, 40);
        b[starts[7] + 12] ^= 1;
        b[starts[20]..starts[22]].fill(0);
        let whole = scan_segment(&b, 1);
        for piece in [1usize, 7, 64, 1000] {
            let mut scanner = Scanner::new(1);
            let mut fed = 0usize;
            let mut base = 0u64;
            let mut window: Vec<u8> = Vec::new();
            let mut records = 0;
            let mut damage = Vec::new();
            loop {
                let is_final = fed == b.len();
                match scanner.step(&window, base, is_final) {
                    Step::Record { .. } => records += 1,
                    Step::Damage {
                        offset,
                        bytes,
                        first_seq,
                        last_seq,
                    } => damage.push((offset, bytes, first_seq, last_seq)),
                    Step::NeedMore => {
                        let keep = (scanner.keep_from() - base) as usize;
                        window.drain(..keep);
                        base += keep as u64;
                        let to = (fed + piece).min(b.len());
                        window.extend_from_slice(&b[fed..to]);
                        fed = to;
                    }
                    Step::Header(_) => {}
                    Step::End | Step::Tail { .. } => break,
                }
            }
            assert_eq!(records, whole.records, "pieces of {piece}");
            assert_eq!(damage, whole.damage, "pieces of {piece}");
        }
    }

    #[test]
    fn gaps_are_named_by_what_caused_them() {
        let a = Path::new("a.kbj");
        let b = Path::new("b.kbj");
        let clean = PrevEnd::Clean {
            segment: a.into(),
            end: 900,
        };
        let tail = PrevEnd::Tail {
            segment: a.into(),
            offset: 800,
            bytes: 100,
        };
        let kinds = |d: Vec<Damage>| -> Vec<(DamageKind, u64, u64, PathBuf)> {
            d.into_iter()
                .map(|d| (d.kind, d.first_seq, d.last_seq, d.segment))
                .collect()
        };
        use DamageKind::*;
        type Named = Vec<(DamageKind, u64, u64, PathBuf)>;
        let cases: Vec<(&str, Vec<Damage>, Named)> = vec![
            (
                "a segment removed by hand between two clean ones",
                classify_gap(11, 20, 0, 20, &clean, b),
                vec![(MissingSegment, 11, 20, b.into())],
            ),
            (
                "a closed segment that ends inside a record",
                classify_gap(11, 20, 0, 20, &tail, b),
                vec![(TruncatedSegment, 11, 20, a.into())],
            ),
            (
                "a torn tail the writer skipped and cut",
                classify_gap(11, 20, 0, 10, &clean, b),
                vec![(TornTail, 11, 20, a.into())],
            ),
            (
                "a torn tail the writer skipped and has not cut yet",
                classify_gap(11, 20, 0, 10, &tail, b),
                vec![(TornTail, 11, 20, a.into())],
            ),
            (
                "lost records, then seqs skipped after a torn tail",
                classify_gap(11, 20, 0, 15, &tail, b),
                vec![
                    (TruncatedSegment, 11, 15, a.into()),
                    (TornTail, 16, 20, b.into()),
                ],
            ),
            (
                "segments retention removed, then one removed by hand",
                classify_gap(1, 20, 12, 20, &PrevEnd::Start, b),
                vec![
                    (Expired, 1, 12, b.into()),
                    (MissingSegment, 13, 20, b.into()),
                ],
            ),
            (
                "everything before the first segment expired",
                classify_gap(1, 20, 20, 20, &PrevEnd::Start, b),
                vec![(Expired, 1, 20, b.into())],
            ),
            ("no gap", classify_gap(21, 20, 0, 20, &clean, b), vec![]),
        ];
        for (what, got, want) in cases {
            assert_eq!(kinds(got), want, "{what}");
        }
    }
}
