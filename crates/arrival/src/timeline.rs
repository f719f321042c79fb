//! From the segments a socket received to when each byte of its stream could be read.
//!
//! A byte is readable when it and every byte before it have arrived: TCP gives the reader a
//! contiguous prefix. So the timeline keeps the prefix's end and a list of points ("the prefix
//! reached byte `end` at `at`"), in arrival order; a segment past a hole waits (pending) until
//! the hole is filled, and then its bytes became readable when the filling segment arrived.
//!
//! A second copy of bytes (a retransmission) moves their time, and every later byte's, to its
//! own arrival when that is later: the filter runs before TCP judges a segment, so the first copy
//! may be one TCP dropped (a bad checksum, an ACK of nothing sent, out of the window, no room)
//! and the bytes became readable only with the copy it kept. Which one it kept the records do
//! not say; the later is the one no reader could have read before. So a time is never early; a
//! needless retransmission before the read makes it late by as much.
//!
//! What is not known is said so, never guessed: bytes before the peer's SYN was seen, and bytes
//! the reader took though no record covers them (the filter's ring was full, or more segments
//! arrived out of order than are kept), are [`Arrived::Unknown`] up to the furthest byte whose
//! time depends on them; the caller stamps those frames as it would without the filter.

use std::collections::VecDeque;

use crate::kernel::Segment;

/// Out-of-order segments kept waiting for a hole at most; more and the stream's times are
/// unknown past the hole.
pub const MAX_PENDING: usize = 64;

/// When the bytes before a point of the stream could first all be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrived {
    /// At this time (`CLOCK_MONOTONIC`, nanoseconds).
    At(u64),
    /// No record says (see the module doc).
    Unknown,
}

/// The stream's readable prefix over time (see the module doc).
#[derive(Debug, Default)]
pub struct Timeline {
    /// The sequence number of byte 0 (the peer's SYN + 1), once its SYN was seen.
    origin: Option<u32>,
    /// Bytes `[0, end)` have arrived.
    end: u64,
    /// `(end, at)`: the prefix reached `end` at `at`; both increase.
    points: VecDeque<(u64, u64)>,
    /// Segments past the prefix: `(start, end, at)`, sorted and disjoint; `at` when all their
    /// bytes had arrived.
    pending: Vec<(u64, u64, u64)>,
    /// Bytes before this offset (and after the last point taken) have no known time.
    unknown_until: u64,
    /// Lookups answered [`Arrived::Unknown`] after the origin was known.
    unknown: u64,
    /// A segment carried urgent data: TCP takes the urgent byte out of what the reader reads,
    /// so the reader's offsets no longer match the sequence numbers; nothing is known since.
    urgent: bool,
}

impl Timeline {
    /// Takes one record, in the order the filter wrote them.
    ///
    /// A segment TCP drops whatever it carries (one without ACK, a RST, a SYN) gives its bytes no
    /// time: the filter runs before TCP judges a segment, and the bytes come later. After urgent
    /// data nothing is known (see `urgent`).
    pub fn segment(&mut self, segment: Segment) {
        const SYN: u8 = 0x02;
        const RST: u8 = 0x04;
        const ACK: u8 = 0x10;
        const URG: u8 = 0x20;
        if segment.flags & RST != 0 {
            return;
        }
        if segment.flags & (URG | ACK) == URG | ACK {
            self.urgent = true;
        }
        if segment.flags & SYN != 0 {
            if self.origin.is_some() {
                return;
            }
            // What a SYN-ACK carries TCP drops (it keeps it only with Fast Open, which the
            // collector's sockets do not ask for): the peer sends it again.
            self.origin = Some(segment.seq.wrapping_add(1));
            return;
        }
        if segment.payload > 0 && segment.flags & ACK != 0 {
            self.data(segment.seq, segment.payload, segment.at_ns);
        }
    }

    fn data(&mut self, seq: u32, len: u32, at: u64) {
        let Some(origin) = self.origin else {
            return;
        };
        // The offset nearest the prefix's end whose low 32 bits are `seq - origin`.
        let low = seq.wrapping_sub(origin);
        let delta = i64::from(low.wrapping_sub(self.end as u32) as i32);
        let Some(start) = self.end.checked_add_signed(delta) else {
            return;
        };
        let end = start + u64::from(len);
        if start < self.end {
            // A copy of bytes already here: not readable before it (see the module doc).
            self.raise(start, at);
        }
        if end <= self.end {
            return;
        }
        if start > self.end {
            self.wait(start, end, at);
            return;
        }
        self.extend(end, at);
        // Segments waiting on this one are readable now.
        while let Some(&(s, _, _)) = self.pending.first() {
            if s > self.end {
                break;
            }
            let (_, e, waited) = self.pending.remove(0);
            if e > self.end {
                // Not before its own bytes arrived (records of two CPUs may be written out of
                // the order of their clocks).
                self.extend(e, at.max(waited));
            }
        }
    }

    fn extend(&mut self, end: u64, at: u64) {
        let at = self.points.back().map_or(at, |&(_, last)| at.max(last));
        self.end = end;
        match self.points.back_mut() {
            // Another segment the same instant: one point.
            Some(last) if last.1 == at => last.0 = end,
            _ => self.points.push_back((end, at)),
        }
    }

    /// Bytes from `start` on were not readable before `at` (a copy of them arrived then).
    fn raise(&mut self, start: u64, at: u64) {
        let i = self.points.partition_point(|p| p.0 <= start);
        let Some(&(_, was)) = self.points.get(i) else {
            return;
        };
        if was >= at {
            // Times increase: nothing from here on is earlier.
            return;
        }
        // The bytes of this point before `start` keep their time.
        if start > i.checked_sub(1).map_or(0, |p| self.points[p].0) {
            self.points.insert(i, (start, was));
        }
        for point in self.points.iter_mut().skip_while(|p| p.0 <= start) {
            point.1 = point.1.max(at);
        }
    }

    fn wait(&mut self, start: u64, end: u64, at: u64) {
        let i = self.pending.partition_point(|&(s, _, _)| s < start);
        // Overlaps with a neighbour (a retransmission, or segments cut otherwise): the union of
        // the bytes, whole only once the latest copy is there (see the module doc).
        if let Some(prev) = i.checked_sub(1).and_then(|p| self.pending.get_mut(p))
            && prev.1 >= start
        {
            prev.1 = prev.1.max(end);
            prev.2 = prev.2.max(at);
            self.merge_after(i - 1);
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            return;
        }
        self.pending.insert(i, (start, end, at));
        self.merge_after(i);
    }

    /// Folds the segments after `i` that overlap it into it.
    fn merge_after(&mut self, i: usize) {
        while i + 1 < self.pending.len() && self.pending[i + 1].0 <= self.pending[i].1 {
            let next = self.pending.remove(i + 1);
            self.pending[i].1 = self.pending[i].1.max(next.1);
            self.pending[i].2 = self.pending[i].2.max(next.2);
        }
    }

    /// When bytes `[0, end)` could all first be read, `end` being at most what the reader has
    /// taken. Calls come with `end` never decreasing; points before it are let go.
    pub fn arrived(&mut self, end: u64) -> Arrived {
        if self.origin.is_none() {
            return Arrived::Unknown;
        }
        if self.urgent {
            self.unknown += 1;
            return Arrived::Unknown;
        }
        if end > self.end {
            // The reader has bytes no record covers: they arrived, when is not known, nor for
            // the waiting segments that join them.
            self.points.clear();
            self.end = end;
            while let Some(&(s, e, _)) = self.pending.first() {
                if s > self.end {
                    break;
                }
                self.pending.remove(0);
                self.end = self.end.max(e);
            }
            self.unknown_until = self.end;
        }
        while self.points.front().is_some_and(|&(e, _)| e < end) {
            self.points.pop_front();
        }
        if end <= self.unknown_until {
            self.unknown += 1;
            return Arrived::Unknown;
        }
        match self.points.front() {
            Some(&(_, at)) => Arrived::At(at),
            None => {
                self.unknown += 1;
                Arrived::Unknown
            }
        }
    }

    /// Lookups answered unknown after the origin was known (records lost, or taken before).
    pub fn unknown(&self) -> u64 {
        self.unknown
    }

    /// Whether the peer's SYN was seen.
    pub fn has_origin(&self) -> bool {
        self.origin.is_some()
    }

    /// Points and waiting segments held (for bounds in tests).
    pub fn held(&self) -> usize {
        self.points.len() + self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISN: u32 = 0xffff_ff00;

    fn syn() -> Segment {
        Segment {
            seq: ISN,
            payload: 0,
            flags: 0x12,
            at_ns: 1,
        }
    }

    fn data(offset: u64, payload: u32, at_ns: u64) -> Segment {
        Segment {
            seq: ISN.wrapping_add(1).wrapping_add(offset as u32),
            payload,
            flags: 0x18,
            at_ns,
        }
    }

    fn timeline(segments: &[Segment]) -> Timeline {
        let mut t = Timeline::default();
        t.segment(syn());
        for s in segments {
            t.segment(*s);
        }
        t
    }

    #[test]
    fn a_frame_is_readable_when_the_segment_holding_its_last_byte_arrived() {
        let mut t = timeline(&[data(0, 100, 10), data(100, 100, 20), data(200, 50, 30)]);
        assert_eq!(t.arrived(40), Arrived::At(10));
        assert_eq!(t.arrived(100), Arrived::At(10));
        assert_eq!(t.arrived(101), Arrived::At(20));
        assert_eq!(t.arrived(250), Arrived::At(30));
        assert_eq!(t.unknown(), 0);
        // Let go as the reader moves on.
        assert_eq!(t.held(), 1);
    }

    #[test]
    fn sequence_numbers_wrap_around_2_to_the_32() {
        // ISN + 1 + 300 passes 2^32: offsets go on from 255.
        let mut t = timeline(&[data(0, 200, 10), data(200, 200, 20), data(400, 1, 30)]);
        assert_eq!(t.arrived(200), Arrived::At(10));
        assert_eq!(t.arrived(300), Arrived::At(20));
        assert_eq!(t.arrived(401), Arrived::At(30));
        // And on, past 4 GiB of stream.
        let mut t = Timeline::default();
        t.segment(syn());
        let mut offset = 0u64;
        for i in 0..5_000u64 {
            t.segment(data(offset, 1_000_000, i + 2));
            offset += 1_000_000;
            assert_eq!(t.arrived(offset), Arrived::At(i + 2));
        }
        assert!(offset > 4 << 30);
    }

    #[test]
    fn a_segment_past_a_hole_is_readable_when_the_hole_is_filled() {
        // 100..200 arrives at 20 before 0..100 at 30 (reordered, or 0..100 retransmitted).
        let mut t = timeline(&[data(100, 100, 20), data(200, 100, 25), data(0, 100, 30)]);
        assert_eq!(t.arrived(100), Arrived::At(30));
        assert_eq!(t.arrived(150), Arrived::At(30));
        assert_eq!(t.arrived(300), Arrived::At(30));
    }

    #[test]
    fn a_copy_before_the_read_moves_the_bytes_time_later_never_earlier() {
        // 0..100 at 10, again at 50 (the first copy may have been dropped by TCP), 50..150 at
        // 60: nothing from 0 on is known readable before 60.
        let mut t = timeline(&[
            data(0, 100, 10),
            data(0, 100, 50),
            data(50, 100, 60),
            data(150, 10, 70),
        ]);
        assert_eq!(t.arrived(100), Arrived::At(60));
        assert_eq!(t.arrived(150), Arrived::At(60));
        assert_eq!(t.arrived(160), Arrived::At(70));
        // A copy of bytes from 120 on moves 120.. only; one the reader took already, nothing.
        let mut t = timeline(&[data(0, 100, 10), data(100, 100, 20), data(100, 100, 30)]);
        assert_eq!(t.arrived(100), Arrived::At(10));
        assert_eq!(t.arrived(200), Arrived::At(30));
        t.segment(data(0, 200, 90));
        assert_eq!(t.arrived(200), Arrived::At(90));
        // An earlier copy (records of two CPUs out of clock order) moves nothing back.
        let mut t = timeline(&[data(0, 100, 40), data(0, 100, 10)]);
        assert_eq!(t.arrived(100), Arrived::At(40));
    }

    #[test]
    fn bytes_no_record_covers_are_unknown_and_the_stream_goes_on_after_them() {
        // The records of 100..300 were lost (the ring was full); 300..400 waits behind them.
        let mut t = timeline(&[data(0, 100, 10), data(300, 100, 40), data(400, 100, 50)]);
        assert_eq!(t.arrived(100), Arrived::At(10));
        // The reader took 0..250: nothing covers 100..250.
        assert_eq!(t.arrived(250), Arrived::Unknown);
        // 300..500 waited on the hole, so when it became readable is unknown too.
        assert_eq!(t.arrived(450), Arrived::Unknown);
        assert_eq!(t.arrived(500), Arrived::Unknown);
        t.segment(data(500, 100, 60));
        assert_eq!(t.arrived(600), Arrived::At(60));
        assert_eq!(t.unknown(), 3);
    }

    #[test]
    fn before_the_syn_nothing_is_known() {
        let mut t = Timeline::default();
        t.segment(data(0, 100, 10));
        assert_eq!(t.arrived(100), Arrived::Unknown);
        assert!(!t.has_origin());
    }

    #[test]
    fn waiting_segments_are_bounded() {
        let mut t = timeline(&[]);
        for i in 0..1_000u64 {
            t.segment(data(100 + i * 20, 10, i + 2));
        }
        assert!(t.held() <= MAX_PENDING);
        t.segment(data(0, 100, 5_000));
        assert_eq!(t.arrived(100), Arrived::At(5_000));
        assert_eq!(t.arrived(110), Arrived::At(5_000));
    }

    fn flagged(offset: u64, payload: u32, flags: u8, at_ns: u64) -> Segment {
        Segment {
            flags,
            ..data(offset, payload, at_ns)
        }
    }

    #[test]
    fn a_segment_waiting_on_a_hole_is_never_readable_before_it_arrived() {
        // Two CPUs: 100..200 stamped at 50 is written to the ring before 0..100 stamped at 30
        // (each took the clock, then its turn in the ring). 100..200 was not there before 50.
        let mut t = timeline(&[data(100, 100, 50), data(0, 100, 30)]);
        assert_eq!(t.arrived(100), Arrived::At(30));
        assert_eq!(t.arrived(200), Arrived::At(50));
        // Merged while waiting: the union was whole only when its last part came.
        let mut t = timeline(&[data(100, 100, 50), data(150, 100, 60), data(0, 100, 30)]);
        assert_eq!(t.arrived(250), Arrived::At(60));
        let mut t = timeline(&[data(150, 100, 20), data(100, 100, 60), data(0, 100, 30)]);
        assert_eq!(t.arrived(250), Arrived::At(60));
    }

    #[test]
    fn segments_tcp_discards_for_their_flags_give_no_time() {
        // Each sees the filter, then TCP drops it without queueing a byte: no ACK (a segment of
        // an established connection must carry one), a RST (its payload is never data), a SYN
        // after the first (answered with a challenge ACK). The bytes arrive for real at 90.
        for flags in [0x08, 0x14, 0x1c, 0x12] {
            let mut t = timeline(&[data(0, 100, 10), flagged(100, 100, flags, 20)]);
            t.segment(data(100, 100, 90));
            assert_eq!(t.arrived(200), Arrived::At(90), "flags {flags:#x}");
        }
    }

    #[test]
    fn a_syn_ack_s_payload_is_not_the_stream_s() {
        // Without Fast Open (the collector's sockets do not ask for it) TCP drops what a SYN-ACK
        // carries; the peer sends those bytes again, and they were readable only then.
        let mut t = Timeline::default();
        t.segment(Segment {
            payload: 100,
            ..syn()
        });
        t.segment(data(0, 100, 90));
        assert_eq!(t.arrived(100), Arrived::At(90));
    }

    #[test]
    fn after_urgent_data_nothing_is_known() {
        // The urgent byte (here 99) is not given to the reader: its 100th byte is 100, at 90.
        let mut t = timeline(&[data(0, 50, 10), flagged(50, 50, 0x38, 20)]);
        assert_eq!(t.arrived(50), Arrived::Unknown);
        t.segment(data(100, 1, 90));
        assert_eq!(t.arrived(100), Arrived::Unknown);
    }

    proptest::proptest! {
        /// Any records at all (sequence numbers, lengths, flags and clocks a hostile peer or a
        /// broken record could hold) and lookups of any growing ends: no panic, and what is
        /// held stays bounded.
        #[test]
        fn hostile_records_never_panic(
            records in proptest::collection::vec(
                (proptest::prelude::any::<u32>(), proptest::prelude::any::<u32>(), proptest::prelude::any::<u8>(), proptest::prelude::any::<u64>(), 0u64..100_000),
                1..200,
            ),
        ) {
            let mut t = Timeline::default();
            let mut end = 0u64;
            for (seq, payload, flags, at_ns, step) in records {
                t.segment(Segment { seq, payload, flags, at_ns });
                end += step;
                let _ = t.arrived(end);
                proptest::prop_assert!(t.pending.len() <= MAX_PENDING);
            }
        }

        /// Records written out of the order of their clocks (two CPUs): a time given is never
        /// before every byte of the prefix had arrived (each byte's first copy, by the clock).
        #[test]
        fn records_out_of_clock_order_never_give_an_earlier_time(
            cuts in proptest::collection::vec((0u64..2_000, 1u32..300, 0u64..200), 1..60),
        ) {
            let segments: Vec<_> = cuts.iter().map(|&(start, len, at)| data(start, len, at + 2)).collect();
            let mut first = vec![None::<u64>; 2_400];
            for s in &segments {
                let start = u64::from(s.seq.wrapping_sub(ISN.wrapping_add(1)));
                for b in start..start + u64::from(s.payload) {
                    let f = first[b as usize].get_or_insert(s.at_ns);
                    *f = (*f).min(s.at_ns);
                }
            }
            let readable = first.iter().take_while(|b| b.is_some()).count() as u64;
            let mut t = timeline(&segments);
            let mut latest = 0;
            for end in 1..=readable {
                latest = latest.max(first[end as usize - 1].unwrap());
                if let Arrived::At(at) = t.arrived(end) {
                    proptest::prop_assert!(at >= latest, "end {}: {} before {}", end, at, latest);
                }
            }
        }

        /// Against a model: the time at which every byte before `end` had arrived (the latest
        /// copy of each: the module doc says why), for segments delivered in any order,
        /// duplicated or overlapping.
        #[test]
        fn the_timeline_answers_what_the_bytes_say(
            cuts in proptest::collection::vec((0u64..2_000, 1u32..300, 0u64..50), 1..60),
        ) {
            let mut segments = Vec::new();
            let mut clock = 100u64;
            for (start, len, step) in cuts {
                clock += step;
                segments.push(data(start, len, clock));
            }
            // Each byte's latest copy (the one TCP may have kept).
            let mut first = vec![None::<u64>; 2_400];
            for s in &segments {
                let start = u64::from(s.seq.wrapping_sub(ISN.wrapping_add(1)));
                for b in start..start + u64::from(s.payload) {
                    first[b as usize] = Some(s.at_ns);
                }
            }
            let readable = first.iter().take_while(|b| b.is_some()).count() as u64;
            let mut t = timeline(&segments);
            let mut latest = 0;
            for end in 1..=readable {
                latest = latest.max(first[end as usize - 1].unwrap());
                // The timeline may know a time no earlier than the model's (a segment merged
                // into a waiting one keeps the earlier's time but waits as one), and no later
                // than the segment that completed the prefix.
                match t.arrived(end) {
                    Arrived::At(at) => proptest::prop_assert_eq!(at, latest, "end {}", end),
                    Arrived::Unknown => proptest::prop_assert!(false, "unknown at {}", end),
                }
            }
        }
    }
}
