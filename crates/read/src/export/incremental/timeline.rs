//! The segments a reader of the merged history follows for a symbol: from each instant of
//! `[from, to)`, the stream the coverage model verifies there, while its span lasts (see the
//! parent module's doc), and the book each segment opens with. No I/O: the coverage comes in
//! computed, the opening books come from [`super::plan`](mod@super::plan).
//!
//! The one walk of the merged history: the incremental export and `replay --serve`
//! ([`crate::replay::ReplayMarket`]) both follow [`timeline`]'s segments, so a file and a replay
//! client switch streams at the same instants and see a gap at the same ones (the fields `rank`
//! and `after` are the export's read order; the replay leaves them alone).
//!
//! What must hold: the segments are in time order, never overlap, each inside one verified span
//! of its stream; `gap_after` is set exactly where no segment starts at a segment's end before
//! `to`.

use crate::book::PriceLevel;
use crate::history::{Coverage, StreamId};
use crate::time::Timestamp;

/// A piece of a symbol's timeline: one stream followed from `start` to `end`, inside one of its
/// verified spans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The stream followed.
    pub stream: StreamId,
    /// Where the file starts following it (Kraken's clock): `from`, the span's start, or where
    /// the stream followed before it stopped being verified.
    pub start: Timestamp,
    /// Where it stops: the span's end, or `to`.
    pub end: Timestamp,
    /// The span's first `seq` (its snapshot or book state).
    pub start_seq: i64,
    /// The span's last `seq`.
    pub last_seq: i64,
    /// A gap follows: `end` is before `to` and no stream is verified at `end`.
    pub gap_after: bool,
    /// The stream's collector's rank among the collectors read (0 when one is read).
    pub rank: usize,
    /// The read position of the span's last record: no row of the segment is read after it.
    pub after: Pos,
}

/// Where a stored message comes in the order the export reads them: (receive time, collector's
/// rank, `seq`). One collector's record is read in `seq` order ([`single`]: the receive time is
/// left out); merged collectors' records in receive order, ties by collector and `seq`.
pub type Pos = (Timestamp, usize, i64);

/// The position of `seq` when one collector's record is read.
pub const fn single(seq: i64) -> Pos {
    (Timestamp::from_unix_nanos(0), 0, seq)
}

impl Segment {
    /// Whether the stored message at `pos`, stamped `ts`, is one of the segment's rows.
    pub fn holds(&self, pos: Pos, ts: Timestamp) -> bool {
        let (_, rank, seq) = pos;
        rank == self.rank
            && self.start_seq <= seq
            && seq <= self.last_seq
            && self.start <= ts
            && ts < self.end
    }
}

/// The segments the file follows for a symbol over `[from, to)`, in time order: from each
/// instant, the stream [`Coverage::choose`] gives there while its span lasts; in a gap, the next
/// instant any stream is verified.
pub fn timeline(coverage: &Coverage, from: Timestamp, to: Timestamp) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::new();
    let mut t = from;
    while t < to {
        if let Some((stream, span)) = coverage.choose(t) {
            out.push(Segment {
                stream: stream.stream.clone(),
                start: t,
                end: span.end.min(to),
                start_seq: span.start_seq,
                last_seq: span.last_seq,
                gap_after: false,
                rank: 0,
                after: single(span.last_seq),
            });
            // The span contains `t`: its end is later.
            t = span.end;
        } else {
            match coverage.choose_from(t) {
                Some((_, span)) if span.start > t => t = span.start,
                _ => break,
            }
        }
    }
    mark_gaps(&mut out, to);
    out
}

/// Sets each segment's `gap_after`.
pub(super) fn mark_gaps(segments: &mut [Segment], to: Timestamp) {
    let starts: Vec<Timestamp> = segments.iter().skip(1).map(|s| s.start).collect();
    for (i, s) in segments.iter_mut().enumerate() {
        s.gap_after = s.end < to && starts.get(i) != Some(&s.end);
    }
}

/// The book written where a segment starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opening {
    /// Bids, best first, at most the subscribed depth.
    pub bids: Vec<PriceLevel>,
    /// Asks, best first.
    pub asks: Vec<PriceLevel>,
    /// The subscribed depth, when the record says.
    pub depth: Option<usize>,
    /// The scales the book prints at (price, quantity).
    pub scales: (u8, u8),
    /// When the last message in it was received.
    pub received: Timestamp,
}

/// How a segment starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opens {
    /// With this book, written as snapshot rows.
    Book(Opening),
    /// With a stored snapshot stamped at the segment's start: it is written as stored.
    Stored,
}
