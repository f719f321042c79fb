//! Downsampling: the book's values over a time range, reduced to one aggregate per pixel column
//! (min, max, first and last of each series), so a day of updates draws as fast as a minute.
//!
//! The book is a step function: between two messages it keeps its value. A column therefore
//! starts from the value carried from before it (when the book was known then), and takes every
//! message that falls in it; a column with no message shows the carried value. Drawing each
//! column's min-to-max span and joining each column's last value to the next column's first
//! draws exactly the pixels a full-resolution line would.
//!
//! What must hold: a value enters a column only while the book was verified; any part of a column
//! where it was not (a gap, or before the first verified message) marks the column as a gap, and
//! no value is carried across it.

use crate::time::Timestamp;

/// The series plotted.
pub const SERIES: usize = 4;
/// Index of the mid price.
pub const MID: usize = 0;
/// Index of the spread.
pub const SPREAD: usize = 1;
/// Index of the bid depth.
pub const BID_DEPTH: usize = 2;
/// Index of the ask depth.
pub const ASK_DEPTH: usize = 3;

/// The book's plotted values after one message (floats only to place pixels).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Mid price, spread, bid depth, ask depth (`None`: undefined, e.g. an empty side).
    pub values: [Option<f64>; SERIES],
}

/// Min, max, first and last of the values in one column.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Agg {
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// First in time.
    pub first: f64,
    /// Last in time.
    pub last: f64,
}

impl Agg {
    fn new(v: f64) -> Agg {
        Agg {
            min: v,
            max: v,
            first: v,
            last: v,
        }
    }

    fn push(&mut self, v: f64) {
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.last = v;
    }
}

/// One pixel column.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PixelColumn {
    /// Each series' aggregate (`None`: no value in the column).
    pub values: [Option<Agg>; SERIES],
    /// Part of the column was in a gap.
    pub gap: bool,
}

impl PixelColumn {
    fn push(&mut self, s: &Sample) {
        for (slot, v) in self.values.iter_mut().zip(s.values) {
            if let Some(v) = v.filter(|v| v.is_finite()) {
                match slot {
                    Some(a) => a.push(v),
                    None => *slot = Some(Agg::new(v)),
                }
            }
        }
    }
}

/// The downsampled series over `[from, to)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Range start, microseconds since the epoch.
    pub from: i64,
    /// Range end.
    pub to: i64,
    /// One per pixel column, left to right.
    pub columns: Vec<PixelColumn>,
}

impl Series {
    /// Marks every column that `[from, to)` reaches into as a gap (values already in such a
    /// column stay, shaded, and are not joined to their neighbours).
    pub fn mark_gap(&mut self, from: Timestamp, to: Timestamp) {
        let n = self.columns.len() as i128;
        let span = i128::from(self.to - self.from);
        let (lo, hi) = (i128::from(from.unix_micros()), i128::from(to.unix_micros()));
        if hi <= i128::from(self.from) || lo >= i128::from(self.to) || hi <= lo {
            return;
        }
        // Column k covers [from + span*k/n, from + span*(k+1)/n).
        let column = |us: i128| ((us - i128::from(self.from)) * n).div_euclid(span);
        let first = column(lo.max(i128::from(self.from))).clamp(0, n - 1);
        // The last column the range reaches: the one holding its last microsecond.
        let last = column(hi.min(i128::from(self.to)) - 1).clamp(0, n - 1);
        for c in first..=last {
            self.columns[c as usize].gap = true;
        }
    }

    /// The span of series `i` over all columns: (min, max), if it has values.
    pub fn extent(&self, i: usize) -> Option<(f64, f64)> {
        self.columns
            .iter()
            .filter_map(|c| c.values[i])
            .fold(None, |acc, a| match acc {
                None => Some((a.min, a.max)),
                Some((lo, hi)) => Some((a.min.min(lo), a.max.max(hi))),
            })
    }
}

/// Builds a [`Series`] from the book's messages in time order.
#[derive(Debug)]
pub struct SeriesBuilder {
    series: Series,
    /// The next column not yet opened.
    next: usize,
    /// The value carried from the last message, and when that message was received; `None`
    /// when the book is not verified.
    carry: Option<(Sample, Timestamp)>,
}

impl SeriesBuilder {
    /// A builder of `columns` columns over `[from, to)`.
    pub fn new(from: Timestamp, to: Timestamp, columns: usize) -> SeriesBuilder {
        SeriesBuilder {
            series: Series {
                from: from.unix_micros(),
                to: to.unix_micros().max(from.unix_micros() + 1),
                columns: vec![PixelColumn::default(); columns.max(1)],
            },
            next: 0,
            carry: None,
        }
    }

    /// The column of instant `t` (`None` before the range; the last column at or after its
    /// end).
    pub fn column_of(&self, t: Timestamp) -> Option<usize> {
        let us = t.unix_micros();
        if us < self.series.from {
            return None;
        }
        let n = self.series.columns.len() as i128;
        let c =
            i128::from(us - self.series.from) * n / i128::from(self.series.to - self.series.from);
        Some(c.min(n - 1) as usize)
    }

    /// When column `k` starts.
    pub fn column_start(&self, k: usize) -> Timestamp {
        let n = self.series.columns.len() as i128;
        let span = i128::from(self.series.to - self.series.from);
        let us = i128::from(self.series.from) + (span * k as i128).div_euclid(n);
        Timestamp::from_unix_nanos((us as i64).saturating_mul(1000))
    }

    /// Opens the columns up to `c` (included), each starting from the carried value unless
    /// `gap_at(last_received, column_start)`.
    fn open_until(&mut self, c: usize, gap_at: &impl Fn(Timestamp, Timestamp) -> bool) {
        while self.next <= c && self.next < self.series.columns.len() {
            let k = self.next;
            let start = self.column_start(k);
            match self.carry {
                Some((s, received)) if !gap_at(received, start) => {
                    self.series.columns[k].push(&s);
                }
                _ => self.series.columns[k].gap = true,
            }
            self.next += 1;
        }
    }

    /// The book after a message at `t`, received at `received`: `Some` when it verified.
    /// `gap_at(last_received, at)` says whether the book carried from a message received at
    /// `last_received` is not known at `at` (see [`crate::history::Coverage`]).
    pub fn step(
        &mut self,
        t: Timestamp,
        received: Timestamp,
        sample: Option<Sample>,
        gap_at: &impl Fn(Timestamp, Timestamp) -> bool,
    ) {
        let Some(c) = self.column_of(t) else {
            self.carry = sample.map(|s| (s, received));
            return;
        };
        // Kraken's timestamps may go back (a quiet pair's snapshot carries the time of its last
        // change): a message never lands left of the columns already opened.
        let c = c.max(self.next.saturating_sub(1));
        self.open_until(c, gap_at);
        if let Some((_, last)) = self.carry
            && gap_at(last, t)
        {
            self.series.columns[c].gap = true;
        }
        match sample {
            Some(s) => {
                // A message stamped inside a gap (a quiet pair's snapshot carries the time of
                // the book's last change, before its stream began): its book is carried from
                // where it is known, never drawn in the gap.
                if gap_at(received, t) {
                    self.series.columns[c].gap = true;
                } else {
                    self.series.columns[c].push(&s);
                }
                self.carry = Some((s, received));
            }
            None => {
                self.series.columns[c].gap = true;
                self.carry = None;
            }
        }
    }

    /// Opens the remaining columns and returns the series.
    pub fn finish(mut self, gap_at: &impl Fn(Timestamp, Timestamp) -> bool) -> Series {
        let last = self.series.columns.len() - 1;
        self.open_until(last, gap_at);
        self.series
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_marks_every_column_it_reaches_into() {
        let no_gap = |_: Timestamp, _: Timestamp| false;
        // 10 s over 5 columns: 2 s each.
        let cases = [
            (
                (103.0, 104.5),
                [false, true, true, false, false],
                "inside two columns",
            ),
            (
                (90.0, 100.5),
                [true, false, false, false, false],
                "from before the range",
            ),
            (
                (109.999, 130.0),
                [false, false, false, false, true],
                "to after it",
            ),
            (
                (104.0, 106.0),
                [false, false, true, false, false],
                "exactly one column",
            ),
            ((80.0, 90.0), [false; 5], "before the range"),
        ];
        for ((from, to), want, what) in cases {
            let mut b = SeriesBuilder::new(t(100), t(110), 5);
            b.step(t(99), t(99), mid(1.0), &no_gap);
            let mut s = b.finish(&no_gap);
            let at = |x: f64| Timestamp::from_unix_nanos((x * 1e9) as i64);
            s.mark_gap(at(from), at(to));
            let got: Vec<bool> = s.columns.iter().map(|c| c.gap).collect();
            assert_eq!(got, want, "{what}");
        }
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_unix_nanos(s * 1_000_000_000)
    }

    fn mid(v: f64) -> Option<Sample> {
        Some(Sample {
            values: [Some(v), Some(1.0), Some(2.0), Some(3.0)],
        })
    }

    #[test]
    fn columns_aggregate_messages_and_carry_the_book_between_them() {
        let no_gap = |_: Timestamp, _: Timestamp| false;
        // 10 s over 5 columns: 2 s each.
        let mut b = SeriesBuilder::new(t(100), t(110), 5);
        b.step(t(95), t(95), mid(50.0), &no_gap); // before the range: carried in
        b.step(t(101), t(101), mid(52.0), &no_gap);
        b.step(t(101), t(101), mid(48.0), &no_gap);
        b.step(t(107), t(107), mid(60.0), &no_gap);
        let s = b.finish(&no_gap);
        let m = |k: usize| s.columns[k].values[MID];
        // Column 0 starts from the carried 50, then 52 and 48.
        assert_eq!(
            m(0),
            Some(Agg {
                min: 48.0,
                max: 52.0,
                first: 50.0,
                last: 48.0
            })
        );
        // Columns 1 and 2: no message, the carried 48.
        assert_eq!(m(1).map(|a| (a.min, a.max)), Some((48.0, 48.0)));
        assert_eq!(m(2).map(|a| (a.min, a.max)), Some((48.0, 48.0)));
        // Column 3 (106..108): starts at 48, moves to 60.
        assert_eq!(m(3).map(|a| (a.first, a.last)), Some((48.0, 60.0)));
        assert_eq!(m(4).map(|a| a.last), Some(60.0));
        assert!(s.columns.iter().all(|c| !c.gap));
        assert_eq!(s.extent(MID), Some((48.0, 60.0)));
    }

    #[test]
    fn gaps_stop_the_carry_until_the_book_verifies_again() {
        // A break at 103: the book is lost until the message at 107.
        let gap_at = |last: Timestamp, at: Timestamp| last < t(103) && at >= t(103);
        let mut b = SeriesBuilder::new(t(100), t(110), 5);
        b.step(t(99), t(99), mid(10.0), &gap_at);
        b.step(t(107), t(107), mid(20.0), &gap_at);
        b.step(t(108), t(108), None, &gap_at); // a mismatch
        let s = b.finish(&gap_at);
        let gaps: Vec<bool> = s.columns.iter().map(|c| c.gap).collect();
        // 0: fine; 1 (102..104) contains the break only after its start: seeded, no gap flag
        // until a message shows it; 2 starts inside the gap; 3 has the message after it; 4 the
        // mismatch.
        assert_eq!(gaps, [false, false, true, true, true]);
        assert_eq!(s.columns[2].values[MID], None, "nothing carried into a gap");
        assert_eq!(s.columns[3].values[MID].map(|a| a.last), Some(20.0));
        assert_eq!(s.columns[4].values[MID].map(|a| a.last), Some(20.0));
    }

    #[test]
    fn before_the_first_message_is_a_gap() {
        let no_gap = |_: Timestamp, _: Timestamp| false;
        let mut b = SeriesBuilder::new(t(0), t(4), 4);
        let at = Timestamp::from_unix_nanos(2_500_000_000);
        b.step(at, at, mid(1.0), &no_gap);
        let s = b.finish(&no_gap);
        // Column 2 is partly before the first message.
        assert_eq!(
            s.columns.iter().map(|c| c.gap).collect::<Vec<_>>(),
            [true, true, true, false]
        );
        assert_eq!(s.columns[2].values[MID].map(|a| a.last), Some(1.0));
    }
}
