//! A long-lived session's mount, loaded as its reads need it: what the web explorer uses, whose
//! requests' time ranges are not known when its sessions open.
//!
//! [`LazyMount::open`] mounts what coverage reads of every archived part (as
//! [`mount_coverage`](crate::mount_coverage) does: feed events, book states and marks, the same
//! temporary tables and views), and remembers the marks' keys. [`LazyMount::ensure`] then makes
//! the rows that the books of a symbol at some instants need readable: for each window
//! `[from, to]` asked, the rows of `[start, to]`, where `start` is where the books of `from` start
//! (the window start of [`crate::mount`]), exactly the rows [`mount`](crate::mount) loads for that
//! window. Only what is not loaded yet is read: per symbol the loaded time ranges are kept, and a
//! part's file is read only when the window overlaps the part's range outside them; windows asked
//! together are merged first, so a file is read at most once per call.
//!
//! What must always hold:
//! - no row is loaded twice: a part's marks are skipped (their keys are kept from the coverage
//!   mount), and a time range is loaded once per symbol (book and that symbol's other frames)
//!   and once for the frames without a symbol; a load that fails part-way poisons the mount
//!   ([`LazyMount::is_poisoned`]): its session must be closed, never used again;
//! - writes touch only the session's temporary tables (`COPY`, and `ANALYZE` in a read-write
//!   transaction of its own), so a session made read-only (`default_transaction_read_only`)
//!   after [`LazyMount::open`] can still load;
//! - a catalog changed since the mount (a part archived while the session lived, the catalog
//!   emptied by `reset`) is seen by [`LazyMount::changed`]: the session is then stale (a new
//!   part's rows are gone from the tables and not mounted) and must be opened again.
//!
//! Cost: [`open`](LazyMount::open) reads the small datasets of every part (once per session);
//! each [`ensure`](LazyMount::ensure) reads (and checks the digest of) the book and other files of
//! the parts its missing ranges overlap, whole, and copies the rows of those ranges.
//! [`rows_loaded`](LazyMount::rows_loaded) lets the owner bound a session's size.

use std::collections::{HashMap, HashSet};

use tokio_postgres::Client;

use crate::ArchiveError;
use crate::catalog;
use crate::mount::{
    Plan, PlanPart, db, load, mount_plan_keeping, read_records_where, window_starts,
};
use crate::naming::Dataset;
use crate::records::{BookRec, OtherRec};
use crate::time::Timestamp;

/// Disjoint, sorted, half-open ranges of nanoseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ranges(Vec<(i64, i64)>);

impl Ranges {
    /// The ranges of `list` (any order, overlapping or not), merged.
    pub fn of(list: &[(i64, i64)]) -> Ranges {
        let mut v: Vec<(i64, i64)> = list.iter().copied().filter(|(a, b)| a < b).collect();
        v.sort_unstable();
        let mut out: Vec<(i64, i64)> = Vec::with_capacity(v.len());
        for (a, b) in v {
            match out.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => out.push((a, b)),
            }
        }
        Ranges(out)
    }

    /// The ranges.
    pub fn as_slice(&self) -> &[(i64, i64)] {
        &self.0
    }

    /// Whether nothing is in them.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `t` is in them.
    pub fn contains(&self, t: i64) -> bool {
        // The last range starting at or before t.
        let i = self.0.partition_point(|&(a, _)| a <= t);
        i > 0 && t < self.0[i - 1].1
    }

    /// These ranges without `other`'s.
    pub fn minus(&self, other: &Ranges) -> Ranges {
        let mut out = Vec::new();
        for &(a, b) in &self.0 {
            let mut start = a;
            for &(c, d) in &other.0 {
                if d <= start || c >= b {
                    continue;
                }
                if c > start {
                    out.push((start, c));
                }
                start = start.max(d);
                if start >= b {
                    break;
                }
            }
            if start < b {
                out.push((start, b));
            }
        }
        Ranges(out)
    }

    /// These ranges within `[a, b)`.
    pub fn within(&self, a: i64, b: i64) -> Ranges {
        Ranges(
            self.0
                .iter()
                .map(|&(c, d)| (c.max(a), d.min(b)))
                .filter(|(c, d)| c < d)
                .collect(),
        )
    }

    /// These ranges and `other`'s.
    pub fn union(&self, other: &Ranges) -> Ranges {
        let mut all = self.0.clone();
        all.extend_from_slice(&other.0);
        Ranges::of(&all)
    }
}

/// Which catalog a mount was made from: its part count and latest `archived_at` (a part is
/// only ever added, or the catalog emptied).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Generation(Option<(i64, Option<Timestamp>)>);

async fn generation(client: &Client) -> Result<Generation, ArchiveError> {
    if !catalog::exists(client).await? {
        return Ok(Generation(None));
    }
    let row = client
        .query_one(
            "SELECT count(*), max(archived_at) FROM public.krakenbook_archive WHERE state = 'archived'",
            &[],
        )
        .await
        .map_err(db("reading the archive catalog's state"))?;
    Ok(Generation(Some((row.get(0), row.get(1)))))
}

/// A session's mount, loaded as reads need it (see the module doc).
#[derive(Debug)]
pub struct LazyMount {
    parts: Vec<PlanPart>,
    marks: Vec<HashSet<(String, i64)>>,
    ids: HashMap<String, i16>,
    /// Per symbol: the ranges whose book rows and the symbol's other frames are loaded.
    loaded: HashMap<String, Ranges>,
    /// The ranges whose frames without a symbol are loaded.
    loaded_unnamed: Ranges,
    rows: u64,
    generation: Generation,
    poisoned: bool,
    /// Where the books of `(symbol, instant)` start, for instants inside the archived ranges.
    starts: HashMap<(String, i64), Timestamp>,
}

/// How many window starts a mount remembers (then it forgets them all and starts again).
const START_MEMORY: usize = 100_000;

/// What an [`ensure`](LazyMount::ensure) loaded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnsureReport {
    /// Files read.
    pub files: usize,
    /// Book rows copied.
    pub book_rows: u64,
    /// Other rows copied.
    pub other_rows: u64,
}

impl LazyMount {
    /// Mounts what coverage reads of every archived part into the session (nothing when none is
    /// archived). Call it before the session is made read-only: it creates the temporary tables
    /// and views.
    pub async fn open(client: &Client) -> Result<LazyMount, ArchiveError> {
        let generation = generation(client).await?;
        let parts: Vec<PlanPart> = catalog::archived_overlapping(client, None, None)
            .await?
            .into_iter()
            .map(PlanPart::archived)
            .collect::<Result<_, _>>()?;
        let mut lazy = LazyMount {
            parts: Vec::new(),
            marks: Vec::new(),
            ids: HashMap::new(),
            loaded: HashMap::new(),
            loaded_unnamed: Ranges::default(),
            rows: 0,
            generation,
            poisoned: false,
            starts: HashMap::new(),
        };
        if parts.is_empty() {
            return Ok(lazy);
        }
        let plan = Plan {
            symbols: Vec::new(),
            from: None,
            to: None,
            rows: false,
            parts,
            whole: Vec::new(),
            hide: None,
        };
        let mounted = mount_plan_keeping(client, &plan).await?;
        lazy.parts = plan.parts;
        lazy.marks = mounted.marks_by_part;
        lazy.ids = mounted.ids;
        Ok(lazy)
    }

    /// Whether any part is archived.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// The earliest start and the latest end of the archived ranges.
    pub fn archived_range(&self) -> Option<(Timestamp, Timestamp)> {
        let start = self.parts.iter().map(|p| p.range_start).min()?;
        let end = self.parts.iter().map(|p| p.range_end).max()?;
        Some((start, end))
    }

    /// Book and other rows copied into the session so far.
    pub fn rows_loaded(&self) -> u64 {
        self.rows
    }

    /// Whether a load failed part-way: the session holds rows this mount does not know of and
    /// must not be used again.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Whether the catalog changed since this mount was made (its session is stale).
    pub async fn changed(&self, client: &Client) -> Result<bool, ArchiveError> {
        Ok(generation(client).await? != self.generation)
    }

    /// Makes the books of `symbol` at every instant of the `windows` (`[from, to]`, inclusive)
    /// readable: the archived rows of `[start of the books of from, to]` are loaded where they
    /// are not yet.
    pub async fn ensure(
        &mut self,
        client: &Client,
        symbol: &str,
        windows: &[(Timestamp, Timestamp)],
    ) -> Result<EnsureReport, ArchiveError> {
        if self.poisoned {
            return Err(ArchiveError::Invalid {
                what: "the session's archive mount".into(),
                reason: "an earlier load failed part-way: open a new session".into(),
            });
        }
        if self.parts.is_empty() || windows.is_empty() {
            return Ok(EnsureReport::default());
        }
        let (first, last) = self
            .archived_range()
            .map(|(a, b)| (a.unix_nanos(), b.unix_nanos()))
            .unwrap_or((0, 0));
        // A window ending before every archived range needs nothing of the archive.
        let windows: Vec<(Timestamp, Timestamp)> = windows
            .iter()
            .copied()
            .filter(|&(_, to)| to.unix_nanos().saturating_add(1) > first)
            .collect();
        // Where the books of each instant start: remembered for the instants inside the
        // archived ranges (their record is closed), looked up for the others at once.
        let unknown: Vec<Timestamp> = windows
            .iter()
            .map(|&(from, _)| from)
            .filter(|from| {
                !self
                    .starts
                    .contains_key(&(symbol.to_owned(), from.unix_nanos()))
            })
            .collect();
        let found = window_starts(client, symbol, &unknown).await?;
        let fresh: HashMap<i64, Timestamp> = unknown
            .iter()
            .map(|from| from.unix_nanos())
            .zip(found)
            .collect();
        let mut starts = Vec::with_capacity(windows.len());
        for &(from, _) in &windows {
            let key = from.unix_nanos();
            let start = match fresh.get(&key) {
                Some(&start) => start,
                None => match self.starts.get(&(symbol.to_owned(), key)) {
                    Some(&start) => start,
                    // (Not reached: an instant is either looked up now or remembered.)
                    None => window_starts(client, symbol, &[from])
                        .await?
                        .first()
                        .copied()
                        .unwrap_or(Timestamp::from_unix_nanos(i64::MIN)),
                },
            };
            starts.push(start);
        }
        if self.starts.len() + fresh.len() > START_MEMORY {
            self.starts.clear();
        }
        for (from, start) in fresh {
            if from < last {
                self.starts.insert((symbol.to_owned(), from), start);
            }
        }
        let mut asked = Vec::with_capacity(windows.len());
        for (&(_, to), start) in windows.iter().zip(starts) {
            // Nor one whose books start after every archived range.
            if start.unix_nanos() >= last {
                continue;
            }
            asked.push((start.unix_nanos(), to.unix_nanos().saturating_add(1)));
        }
        let asked = Ranges::of(&asked);
        if asked.is_empty() {
            return Ok(EnsureReport::default());
        }
        let book_missing = asked.minus(self.loaded.get(symbol).unwrap_or(&Ranges::default()));
        let unnamed_missing = asked.minus(&self.loaded_unnamed);
        self.poisoned = true;
        let report = self
            .load_missing(client, symbol, &book_missing, &unnamed_missing)
            .await?;
        self.poisoned = false;
        let loaded = self.loaded.entry(symbol.to_owned()).or_default();
        *loaded = loaded.union(&book_missing);
        self.loaded_unnamed = self.loaded_unnamed.union(&unnamed_missing);
        self.rows += report.book_rows + report.other_rows;
        Ok(report)
    }

    /// The Kraken timestamp of the book message `seq` of `symbol` from `collector`'s connection
    /// `conn_id`, looked for in the archived parts (`None`: not archived). The parts holding
    /// the symbol's book rows are searched by halves on the collector's seq (a collector's seqs
    /// grow with time), one file read a step; a part without any row of the collector is passed
    /// over towards the nearest part that has one. Nothing is loaded into the session.
    pub async fn locate(
        &self,
        symbol: &str,
        collector: &str,
        conn_id: i64,
        seq: i64,
    ) -> Result<Option<Timestamp>, ArchiveError> {
        let files: Vec<(&PlanPart, &crate::catalog::FileEntry)> = self
            .parts
            .iter()
            .filter_map(|p| {
                p.files
                    .iter()
                    .find(|f| f.dataset == Dataset::Book && f.symbol.as_deref() == Some(symbol))
                    .map(|f| (p, f))
            })
            .collect();
        let (mut lo, mut hi) = (0usize, files.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            // The first file at or after mid with a row of the collector, else before mid.
            let mut probe = None;
            for i in (mid..hi).chain((lo..mid).rev()) {
                let (part, f) = files[i];
                let rows: Vec<BookRec> =
                    read_records_where(part, f, |r: &BookRec| r.collector == collector).await?;
                if let Some(r) = rows.iter().find(|r| r.seq == seq && r.conn_id == conn_id) {
                    return Ok(Some(r.timestamp));
                }
                let min = rows.iter().map(|r| r.seq).min();
                let max = rows.iter().map(|r| r.seq).max();
                if let (Some(min), Some(max)) = (min, max) {
                    probe = Some((i, min, max));
                    break;
                }
            }
            let Some((i, min, max)) = probe else {
                return Ok(None);
            };
            if seq < min {
                hi = i;
            } else if seq > max {
                if i < mid {
                    // The files after i, up to hi, have no row of the collector.
                    return Ok(None);
                }
                lo = i + 1;
            } else {
                // Within the file's seqs but not in it: not a book message of this stream.
                return Ok(None);
            }
        }
        Ok(None)
    }

    async fn load_missing(
        &self,
        client: &Client,
        symbol: &str,
        book_missing: &Ranges,
        unnamed_missing: &Ranges,
    ) -> Result<EnsureReport, ArchiveError> {
        let mut report = EnsureReport::default();
        for (part, keys) in self.parts.iter().zip(&self.marks) {
            let (a, b) = (part.range_start.unix_nanos(), part.range_end.unix_nanos());
            let book = book_missing.within(a, b);
            let unnamed = unnamed_missing.within(a, b);
            for f in &part.files {
                let mine = f.symbol.as_deref() == Some(symbol);
                match f.dataset {
                    Dataset::Book if mine && !book.is_empty() => {
                        let rows: Vec<BookRec> = read_records_where(part, f, |r: &BookRec| {
                            book.contains(r.timestamp.unix_nanos())
                                && !keys.contains(&(r.collector.clone(), r.seq))
                        })
                        .await?;
                        report.files += 1;
                        report.book_rows += load(client, &rows, &self.ids).await?;
                    }
                    Dataset::Other if mine && !book.is_empty() => {
                        let rows: Vec<OtherRec> = read_records_where(part, f, |r: &OtherRec| {
                            book.contains(r.timestamp.unix_nanos())
                        })
                        .await?;
                        report.files += 1;
                        report.other_rows += load(client, &rows, &self.ids).await?;
                    }
                    Dataset::Other if f.symbol.is_none() && !unnamed.is_empty() => {
                        let rows: Vec<OtherRec> = read_records_where(part, f, |r: &OtherRec| {
                            unnamed.contains(r.timestamp.unix_nanos())
                        })
                        .await?;
                        report.files += 1;
                        report.other_rows += load(client, &rows, &self.ids).await?;
                    }
                    _ => {}
                }
            }
        }
        if report.book_rows + report.other_rows > 0 {
            // ANALYZE is refused in a read-only transaction, even on temporary tables: this one
            // message is its own read-write transaction, which runs nothing else (a simple
            // query is processed whole before the connection's next message).
            client
                .batch_execute(
                    "BEGIN READ WRITE; \
                     ANALYZE pg_temp.krakenbook_archived_book, pg_temp.krakenbook_archived_other; \
                     COMMIT",
                )
                .await
                .map_err(db("analyzing the session's archive tables"))?;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type R<'a> = &'a [(i64, i64)];

    #[test]
    fn ranges_merge_subtract_and_clip_as_sets_of_instants() {
        // (ranges, merged)
        let merges: [(R, R); 4] = [
            (&[(5, 9), (1, 3), (2, 4)], &[(1, 4), (5, 9)]),
            (&[(1, 3), (3, 5)], &[(1, 5)]),
            (&[(4, 4), (7, 6)], &[]),
            (&[(1, 10), (2, 3)], &[(1, 10)]),
        ];
        for (list, want) in merges {
            assert_eq!(Ranges::of(list).as_slice(), want, "{list:?}");
        }
        // (a, b, a minus b)
        let minus: [(R, R, R); 5] = [
            (&[(0, 10)], &[], &[(0, 10)]),
            (&[(0, 10)], &[(2, 4), (6, 8)], &[(0, 2), (4, 6), (8, 10)]),
            (&[(0, 10)], &[(0, 10)], &[]),
            (&[(0, 10), (20, 30)], &[(5, 25)], &[(0, 5), (25, 30)]),
            (&[(3, 4)], &[(0, 1), (10, 11)], &[(3, 4)]),
        ];
        for (a, b, want) in minus {
            assert_eq!(
                Ranges::of(a).minus(&Ranges::of(b)).as_slice(),
                want,
                "{a:?} - {b:?}"
            );
        }
        let r = Ranges::of(&[(0, 10), (20, 30)]);
        assert_eq!(r.within(5, 25).as_slice(), &[(5, 10), (20, 25)]);
        assert!(r.contains(0) && r.contains(9) && !r.contains(10) && r.contains(20));
        assert!(!r.contains(-1) && !r.contains(15) && !r.contains(30));
        assert_eq!(
            r.union(&Ranges::of(&[(10, 20)])).as_slice(),
            &[(0, 30)],
            "touching ranges merge"
        );
    }
}
