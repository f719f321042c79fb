//! How a batch that the server refuses because of one of its records is split to find the record,
//! without any I/O: a plan the writer follows, driven in tests by tables of bad records.
//!
//! The writer first tries a batch whole. When it fails with a record-specific error
//! ([`super::ErrorClass::RecordSpecific`]) the part is halved and each half tried in seq order;
//! a single record that still fails is tried in raw form (the frame as received, nothing decoded
//! from it), and if even that fails, as a `not_stored` event row standing for it. Every part that
//! succeeds is committed with its own checkpoint before the next is tried, so the parts commit in
//! seq order and exactly once.
//!
//! What must always hold: every unit of the batch ends up in exactly one committed part (whole,
//! raw or not stored), parts are tried and committed in seq order, and one bad record among `n`
//! costs at most about `2 log2(n) + 3` attempts.

/// How a part's units are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Every unit's rows, as encoded normally.
    Whole,
    /// One frame as received (raw text or bytes), with a `stored_raw` event row.
    Raw,
    /// One `not_stored` event row standing for the unit.
    NotStored,
}

/// A range of a batch's units, to be written in one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Part {
    /// First unit (index into the batch).
    pub start: usize,
    /// One past the last unit.
    pub end: usize,
    /// How to write it.
    pub mode: Mode,
    /// The server's error that led here (for the event rows of `Raw` and `NotStored`).
    pub reason: Option<String>,
}

/// The parts still to write, the next one last.
#[derive(Debug)]
pub(crate) struct Bisect {
    stack: Vec<Part>,
}

/// A part that cannot be written in any form: the batch cannot go on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Exhausted {
    /// The unit concerned.
    pub index: usize,
}

impl Bisect {
    /// A plan for a batch of `len` units: all of it, whole.
    pub fn new(len: usize) -> Bisect {
        let stack = if len == 0 {
            Vec::new()
        } else {
            vec![Part {
                start: 0,
                end: len,
                mode: Mode::Whole,
                reason: None,
            }]
        };
        Bisect { stack }
    }

    /// A plan for a batch of `len` units in parts of at most `limit` units each (in seq order).
    pub fn limited(len: usize, limit: Option<usize>) -> Bisect {
        let Some(limit) = limit.filter(|&l| l > 0 && l < len) else {
            return Bisect::new(len);
        };
        let mut stack = Vec::new();
        let mut end = len;
        while end > 0 {
            // The last chunk pushed first: the first one is on top.
            let start = (end - 1) / limit * limit;
            stack.push(Part {
                start,
                end,
                mode: Mode::Whole,
                reason: None,
            });
            end = start;
        }
        Bisect { stack }
    }

    /// The next part, written whole, ran out of time (a statement timeout): it is replaced by
    /// its two halves, in order. `false` when it is a single unit or not written whole (then
    /// nothing changes).
    pub fn halve(&mut self) -> bool {
        let Some(part) = self.stack.last() else {
            return false;
        };
        let len = part.end - part.start;
        if part.mode != Mode::Whole || len < 2 {
            return false;
        }
        let (start, end) = (part.start, part.end);
        self.stack.pop();
        let mid = start + len / 2;
        for (start, end) in [(mid, end), (start, mid)] {
            self.stack.push(Part {
                start,
                end,
                mode: Mode::Whole,
                reason: None,
            });
        }
        true
    }

    /// The part to write next (`None`: the batch is done).
    pub fn next(&self) -> Option<&Part> {
        self.stack.last()
    }

    /// The next part was committed.
    pub fn succeeded(&mut self) {
        self.stack.pop();
    }

    /// The next part failed with a record-specific error (`reason`): split it, or fall back to a
    /// simpler form for a single unit (`has_raw(i)`: whether unit `i` has a raw form).
    pub fn failed(
        &mut self,
        reason: String,
        has_raw: impl Fn(usize) -> bool,
    ) -> Result<(), Exhausted> {
        let Some(part) = self.stack.pop() else {
            return Ok(());
        };
        let len = part.end - part.start;
        match part.mode {
            Mode::Whole if len > 1 => {
                let mid = part.start + len / 2;
                // The first half on top: tried (and committed) first.
                self.stack.push(Part {
                    start: mid,
                    end: part.end,
                    mode: Mode::Whole,
                    reason: None,
                });
                self.stack.push(Part {
                    start: part.start,
                    end: mid,
                    mode: Mode::Whole,
                    reason: None,
                });
            }
            Mode::Whole => self.stack.push(Part {
                mode: if has_raw(part.start) {
                    Mode::Raw
                } else {
                    Mode::NotStored
                },
                reason: Some(reason),
                ..part
            }),
            Mode::Raw => self.stack.push(Part {
                mode: Mode::NotStored,
                reason: Some(reason),
                ..part
            }),
            Mode::NotStored => return Err(Exhausted { index: part.start }),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Runs the plan over `len` units where whole writes fail when they hold a unit of `bad`, raw
    /// writes fail for units of `raw_bad`, and units of `no_raw` have no raw form. Returns the
    /// committed parts in order and the number of attempts.
    fn run(len: usize, bad: &[usize], raw_bad: &[usize], no_raw: &[usize]) -> (Vec<Part>, usize) {
        let bad: BTreeSet<usize> = bad.iter().copied().collect();
        let mut plan = Bisect::new(len);
        let mut committed = Vec::new();
        let mut attempts = 0;
        while let Some(part) = plan.next().cloned() {
            attempts += 1;
            let fails = match part.mode {
                Mode::Whole => bad.range(part.start..part.end).next().is_some(),
                Mode::Raw => raw_bad.contains(&part.start),
                Mode::NotStored => false,
            };
            if fails {
                plan.failed(format!("bad {}", part.start), |i| !no_raw.contains(&i))
                    .unwrap();
            } else {
                committed.push(part);
                plan.succeeded();
            }
        }
        (committed, attempts)
    }

    #[test]
    fn a_limited_plan_covers_the_batch_in_order_and_halving_keeps_it_so() {
        for (len, limit) in [
            (10, Some(3)),
            (9, Some(3)),
            (1, Some(1)),
            (5, None),
            (5, Some(9)),
        ] {
            let mut plan = Bisect::limited(len, limit);
            let mut covered = Vec::new();
            let mut halved = false;
            while let Some(part) = plan.next().cloned() {
                if !halved && part.end - part.start > 1 {
                    assert!(plan.halve());
                    halved = true;
                    continue;
                }
                assert!(limit.is_none_or(|l| part.end - part.start <= l.max(1)));
                covered.extend(part.start..part.end);
                plan.succeeded();
            }
            assert_eq!(covered, (0..len).collect::<Vec<_>>(), "{len} {limit:?}");
        }
        let mut single = Bisect::new(1);
        assert!(!single.halve(), "a single unit cannot be halved");
        assert_eq!(single.next().map(|p| (p.start, p.end)), Some((0, 1)));
    }

    #[test]
    fn every_unit_is_committed_once_in_order_and_only_bad_ones_lose_their_form() {
        // (units, bad in whole form, bad in raw form too, without a raw form, what it covers)
        type Case<'a> = (usize, &'a [usize], &'a [usize], &'a [usize], &'a str);
        let cases: [Case<'_>; 8] = [
            (2000, &[], &[], &[], "a good batch: one attempt"),
            (2000, &[1377], &[], &[], "one bad frame in 2000"),
            (2000, &[0], &[], &[], "the first"),
            (2000, &[1999], &[], &[], "the last"),
            (2000, &[500, 501], &[], &[], "two neighbours"),
            (7, &[0, 1, 2, 3, 4, 5, 6], &[], &[], "all of them"),
            (100, &[42], &[42], &[], "refused even raw: not stored"),
            (100, &[42, 60], &[], &[60], "a non-frame has no raw form"),
        ];
        for (len, bad, raw_bad, no_raw, what) in cases {
            let (parts, attempts) = run(len, bad, raw_bad, no_raw);
            let mut next = 0;
            for p in &parts {
                assert_eq!(p.start, next, "{what}: in order, no hole, no overlap");
                assert!(p.end > p.start, "{what}");
                next = p.end;
                match p.mode {
                    Mode::Whole => assert!(
                        !bad.iter().any(|b| (p.start..p.end).contains(b)),
                        "{what}: a whole part holds no bad unit"
                    ),
                    Mode::Raw | Mode::NotStored => {
                        assert_eq!(p.end - p.start, 1, "{what}");
                        assert!(bad.contains(&p.start), "{what}: only bad units degrade");
                        assert!(p.reason.is_some(), "{what}: the server's reason is kept");
                    }
                }
                if p.mode == Mode::NotStored {
                    assert!(
                        raw_bad.contains(&p.start) || no_raw.contains(&p.start),
                        "{what}"
                    );
                }
            }
            assert_eq!(next, len, "{what}: everything committed");
            if bad.len() == 1 {
                let bound = 2 * (len as f64).log2().ceil() as usize + 3;
                assert!(attempts <= bound, "{what}: {attempts} attempts > {bound}");
            }
            if bad.is_empty() {
                assert_eq!((parts.len(), attempts), (1, 1), "{what}");
            }
        }
    }

    #[test]
    fn a_unit_refused_in_every_form_exhausts_the_plan() {
        let mut plan = Bisect::new(1);
        plan.failed("whole".into(), |_| true).unwrap();
        assert_eq!(plan.next().map(|p| p.mode), Some(Mode::Raw));
        plan.failed("raw".into(), |_| true).unwrap();
        assert_eq!(plan.next().map(|p| p.mode), Some(Mode::NotStored));
        assert_eq!(
            plan.failed("event".into(), |_| true),
            Err(Exhausted { index: 0 })
        );
        assert!(Bisect::new(0).next().is_none());
    }
}
