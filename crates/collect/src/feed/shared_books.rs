//! One book per symbol for the replicas of a group (`collect --redundancy N`, N ≥ 2).
//!
//! Each replica's connection receives the same messages, and today each copy was decoded,
//! applied to that replica's own book and checksummed: N replicas cost N times the work. Here
//! the replicas of a group keep one book per symbol, a *lineage*: the book after the first `p`
//! messages applied to it, and a log of those messages (their bytes and what applying them
//! gave). A replica that is a *member* of the lineage at position `q` has exactly the book the
//! lineage had after its first `q` messages:
//! - at `q == p` (the front) it applies its next message to the shared book, as its own book
//!   would have been applied to, and appends the message's bytes and outcome to the log;
//! - at `q < p` its next message is compared, byte for byte, with the log's entry `q`. Equal
//!   bytes applied to an equal book give an equal outcome (the verdict, the computed checksum,
//!   the best bid and ask), so it takes the entry's outcome without decoding the levels, and
//!   moves to `q + 1`. The copy is verified as surely as if its checksum had been computed again
//!   (and the journal still keeps it whole);
//! - a message that differs from entry `q` (Kraken batched differently on this connection, or a
//!   message went missing) makes the replica leave: its book at `q` is rebuilt exactly (the
//!   lineage's checkpoint, a copy of the book at a position `c` ≤ every member's, and the log's
//!   entries `c..q` applied again) and it goes on with a book of its own, as without sharing.
//!
//! A replica with a book of its own joins when it can prove its book is the front's: its book is
//! [`OrderBook::same_as`] the shared book, level for level (tried when its last frame's
//! [`frame_key`] is the latest message's, before and after each message it applies, so that it
//! joins whether it runs ahead of the front or behind it; the key only says when to compare). A replica that verifies a book while no lineage of the symbol has
//! members starts one with its book. A mismatch (or a level the book cannot hold) ends the
//! lineage's appends: its entry is logged so that members behind take the same verdict, and
//! every member leaves with it, unsynced, exactly as its own book would be.
//!
//! What bounds it: the log holds entries `c..p`. When every member is at the front and the log
//! passed [`REFRESH_BYTES`], the checkpoint is taken again there and the log emptied; when a
//! member is behind then, a copy of the front's book is kept instead, and becomes the
//! checkpoint (the entries before it dropped) once every member has passed it. Past
//! [`CAP_BYTES`] or [`CAP_ENTRIES`] the checkpoint is moved up to the slowest member by applying
//! the entries to it (the work that member would have done), and a member that has not moved at
//! all since the checkpoint is let go with its book (the checkpoint's copy), *parked* until its
//! session next asks. A single member keeps no checkpoint and no log, only its latest frame's
//! key (for a replica that wants to join).
//!
//! Exactness rests on one fact: the outcome of a message is a function of the book before it and
//! the message's bytes. The differential test (`shared_books_tests.rs`) runs replicas with and
//! without sharing on the same frames in random interleavings, with lags, losses, divergent and
//! corrupted frames, resubscriptions and reconnections, and requires the same journal records,
//! events and metrics, frame for frame; `replay --verify` recomputes every copy's checksum again
//! from the journal or the database.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::replicas::MAX_REDUNDANCY;
use crate::book::{BookView, OrderBook, Tracked, Tracker, Verdict};
use crate::book::{Precision, PriceLevel};
use crate::kraken::{self, BookData, BookKind, Frame};
use crate::metrics::Metrics;
use crate::time::Timestamp;

/// With every member at the front and this many bytes in the log, the checkpoint is taken again
/// there and the log emptied (a depth-1000 book is about 32 KiB to copy; a whole market keeps a
/// log of about this size per symbol).
pub const REFRESH_BYTES: usize = 8 << 10;
/// The log's bound in bytes: past it the checkpoint moves up to the slowest member.
pub const CAP_BYTES: usize = 1 << 20;
/// The log's bound in entries.
pub const CAP_ENTRIES: usize = 4096;

/// What applying one message to a book gave: all a member behind the front needs to take it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Snapshot or update.
    pub kind: BookKind,
    /// The checksum verdict.
    pub verdict: Verdict,
    /// Kraken's checksum in the message.
    pub checksum: u32,
    /// Kraken's timestamp in the message, when given.
    pub timestamp: Option<Timestamp>,
    /// The best bid after the message, when the book is synced.
    pub best_bid: Option<PriceLevel>,
    /// The best ask after the message, when the book is synced.
    pub best_ask: Option<PriceLevel>,
}

/// A synced book whole, for a journaled book state: taken only when one is due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateParts {
    /// The book's depth.
    pub depth: usize,
    /// The precision its checksum prints at.
    pub precision: Precision,
    /// Every level, best first.
    pub view: BookView,
}

impl StateParts {
    /// The parts of `book`.
    pub fn of(book: &OrderBook) -> Self {
        StateParts {
            depth: book.depth(),
            precision: book.precision(),
            view: book.view(book.depth()),
        }
    }
}

/// What a member's message gave (see [`SharedBooks::apply`] and [`SharedBooks::follow`]).
#[derive(Debug)]
pub enum Shared {
    /// The replica is a member: here is its message's outcome, and the book's parts after it
    /// if a state was asked for (and the book is synced).
    Taken(Outcome, Option<StateParts>),
    /// The replica is not a member (any more): it applies the message to its own book, first
    /// putting in this one when given (its book, rebuilt at its position).
    Own(Option<Tracked>),
}

/// A logged message: its bytes are `data[start..start + len]` of its lineage.
#[derive(Debug)]
struct Entry {
    start: usize,
    len: usize,
    outcome: Outcome,
}

/// What identifies a frame's bytes well enough to try a join (its length and CRC32): only a
/// filter, the books' comparison decides. 0: no frame.
pub fn frame_key(bytes: &[u8]) -> u64 {
    ((bytes.len() as u64) << 32) | u64::from(crc32fast::hash(bytes))
}

#[derive(Debug)]
struct Lineage {
    /// The book after the first `p` messages (synced while `open`).
    book: Tracked,
    p: u64,
    /// False once a message mismatched: no more entries.
    open: bool,
    /// Each replica's position, when it is a member.
    members: [Option<u64>; MAX_REDUNDANCY],
    /// The book at position `c` (at or before every member's), while two or more are members.
    checkpoint: Option<OrderBook>,
    c: u64,
    /// A copy of the book at a later position (`c < at ≤ p`), taken when the log grew past
    /// [`REFRESH_BYTES`] while a member was behind: it becomes the checkpoint (and the entries
    /// before it go) once every member has passed it, so that a replica steadily behind the
    /// front does not keep the log growing to its bound.
    pending: Option<(u64, OrderBook)>,
    /// Entries `c..p`, while two or more are members, and their bytes one after the other.
    log: VecDeque<Entry>,
    data: Vec<u8>,
    /// The latest message's [`frame_key`] (kept with a single member too, for a replica that
    /// would join).
    last_key: u64,
    /// Books of members let go at the log's bound, until their sessions take them.
    parked: [Option<Tracked>; MAX_REDUNDANCY],
}

impl Lineage {
    fn new(replica: usize, book: Tracked, last_key: u64) -> Self {
        let mut members = [None; MAX_REDUNDANCY];
        members[replica] = Some(0);
        Lineage {
            book,
            p: 0,
            open: true,
            members,
            checkpoint: None,
            c: 0,
            pending: None,
            log: VecDeque::new(),
            data: Vec::new(),
            last_key,
            parked: Default::default(),
        }
    }

    fn member_count(&self) -> usize {
        self.members.iter().flatten().count()
    }

    fn is_empty(&self) -> bool {
        self.member_count() == 0 && self.parked.iter().all(Option::is_none)
    }

    fn min_position(&self) -> u64 {
        self.members
            .iter()
            .flatten()
            .copied()
            .min()
            .unwrap_or(self.p)
    }

    fn bytes(&self, entry: &Entry) -> &[u8] {
        &self.data[entry.start..entry.start + entry.len]
    }

    /// Whether entry `i` of the log (position `c + i`) has exactly these bytes.
    fn entry_is(&self, i: u64, bytes: &[u8]) -> bool {
        usize::try_from(i)
            .ok()
            .and_then(|i| self.log.get(i))
            .is_some_and(|e| e.len == bytes.len() && self.bytes(e) == bytes)
    }

    /// The checkpoint is the book now (every member at the front): the log empties.
    fn checkpoint_here(&mut self) {
        self.checkpoint = Some(self.book.book.clone());
        self.c = self.p;
        self.pending = None;
        self.clear_log();
    }

    /// Drops the log's entries before position `at` (`c ≤ at ≤ p`), their bytes with them; the
    /// caller puts the book at `at` in as the checkpoint.
    fn drop_before(&mut self, at: u64) {
        let n = ((at - self.c) as usize).min(self.log.len());
        let cut = self.log.get(n).map_or(self.data.len(), |e| e.start);
        self.log.drain(..n);
        self.data.drain(..cut);
        for e in &mut self.log {
            e.start -= cut;
        }
        self.c = at;
    }

    /// `replica` is no longer a member (whatever its book becomes is the caller's).
    fn let_go(&mut self, replica: usize) {
        self.members[replica] = None;
        self.shed();
    }

    /// Empties the log (its bytes' memory is kept for the next, within bounds).
    fn clear_log(&mut self) {
        self.log.clear();
        self.data.clear();
        if self.data.capacity() > 4 * REFRESH_BYTES {
            self.data.shrink_to(REFRESH_BYTES);
        }
    }

    /// With a single member at the front (or none), the checkpoint and the log serve nobody;
    /// once every member passed the pending copy, it is the checkpoint.
    fn shed(&mut self) {
        let mut members = self.members.iter().flatten();
        let alone = match (members.next(), members.next()) {
            (None, _) => true,
            (Some(&q), None) => q == self.p,
            _ => false,
        };
        if alone {
            self.clear_log();
            self.checkpoint = None;
            self.pending = None;
            self.c = self.p;
            return;
        }
        let slowest = self.min_position();
        if self.pending.as_ref().is_some_and(|(at, _)| *at <= slowest)
            && let Some((at, book)) = self.pending.take()
        {
            self.drop_before(at);
            self.checkpoint = Some(book);
        }
    }

    /// The book at position `q` (`c ≤ q ≤ p`), rebuilt exactly.
    fn book_at(&self, q: u64) -> Tracked {
        if q == self.p {
            return self.book.clone();
        }
        let Some(checkpoint) = &self.checkpoint else {
            // A member behind the front exists only with a checkpoint at or before it; without
            // one its book is not known, and an unsynced book says so.
            debug_assert!(false, "a member behind the front without a checkpoint");
            return unsynced_like(&self.book.book);
        };
        let mut book = Tracked {
            book: checkpoint.clone(),
            synced: true,
        };
        for entry in self.log.iter().take((q - self.c) as usize) {
            replay(&mut book, self.bytes(entry), &entry.outcome);
        }
        book
    }

    /// Moves the checkpoint up to `to` (`c ≤ to ≤ p`), applying the entries between.
    fn advance_checkpoint(&mut self, to: u64) {
        if to <= self.c {
            return;
        }
        let Some(checkpoint) = self.checkpoint.take() else {
            return;
        };
        let mut book = Tracked {
            book: checkpoint,
            synced: true,
        };
        for entry in self.log.iter().take((to - self.c) as usize) {
            replay(&mut book, self.bytes(entry), &entry.outcome);
        }
        self.drop_before(to);
        self.checkpoint = Some(book.book);
        if self.pending.as_ref().is_some_and(|(at, _)| *at <= to) {
            self.pending = None;
        }
    }

    /// The parts of the book at position `q` (`c ≤ q ≤ p`, a member's), for a state due there.
    /// Behind the front the checkpoint first moves up to the slowest member (entries the log's
    /// bound would have applied to it anyway), then the book is rebuilt from it: a replica that
    /// stays behind journals its states when they are due, as its own book would.
    fn parts_at(&mut self, q: u64) -> Option<StateParts> {
        if q == self.p {
            return self.book.synced.then(|| StateParts::of(&self.book.book));
        }
        self.advance_checkpoint(self.min_position());
        if q == self.c {
            return self.checkpoint.as_ref().map(StateParts::of);
        }
        Some(StateParts::of(&self.book_at(q).book))
    }

    /// Keeps the log within its bounds (after an append).
    fn bound(&mut self) {
        if self.log.len() <= CAP_ENTRIES && self.data.len() <= CAP_BYTES {
            return;
        }
        let slowest = self.min_position();
        if slowest == self.c {
            // Members that have not moved since the checkpoint: their book is the checkpoint.
            if let Some(checkpoint) = &self.checkpoint {
                for r in 0..MAX_REDUNDANCY {
                    if self.members[r] == Some(self.c) && self.c < self.p {
                        self.members[r] = None;
                        self.parked[r] = Some(Tracked {
                            book: checkpoint.clone(),
                            synced: true,
                        });
                    }
                }
            }
        }
        let slowest = self.min_position();
        self.advance_checkpoint(slowest);
        self.shed();
    }
}

/// Applies a logged message again (rebuilding a book): same bytes, same book, same outcome.
fn replay(book: &mut Tracked, bytes: &[u8], outcome: &Outcome) {
    let text = std::str::from_utf8(bytes).ok();
    let decoded = text.and_then(|t| kraken::decode(t).ok());
    match decoded {
        Some(Frame::Book(msg)) if msg.data.len() == 1 => {
            let verdict = book.apply(msg.kind, &msg.data[0]);
            debug_assert_eq!(
                verdict, outcome.verdict,
                "a logged message replayed differently"
            );
        }
        // Only decoded single-symbol book frames are logged.
        _ => debug_assert!(false, "a logged entry that is not a book frame"),
    }
}

/// An empty, unsynced book at `book`'s depth and instrument precision.
fn unsynced_like(book: &OrderBook) -> Tracked {
    let book = OrderBook::with_precision(book.depth(), book.known_precision());
    Tracked {
        book,
        synced: false,
    }
}

/// The books a group's replicas share (see the module doc). Every method is one short critical
/// section; the replicas run on the feed's one thread, so the lock is never contended.
#[derive(Debug, Default)]
pub struct SharedBooks {
    lineages: Mutex<HashMap<String, Lineage>>,
    /// Messages applied to a shared book at its front.
    applied: AtomicU64,
    /// Copies taken by their bytes alone ([`SharedBooks::follow`]), not decoded at all.
    followed: AtomicU64,
    /// Where copies taken and books rebuilt are counted (the collector's `/metrics`).
    metrics: Arc<Metrics>,
}

/// What the shared books did, counted since they were made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SharingStats {
    /// Copies that took a logged outcome (not decoded again).
    pub taken: u64,
    /// Of those, the copies taken by their bytes, not decoded at all.
    pub followed: u64,
    /// Messages applied to a shared book at its front.
    pub applied: u64,
    /// Books rebuilt for a member that left behind the front.
    pub rebuilt: u64,
}

impl SharedBooks {
    /// No lineage yet, counting in metrics of its own (tests).
    pub fn new() -> Self {
        SharedBooks::default()
    }

    /// No lineage yet; copies taken and books rebuilt are counted in `metrics`.
    pub fn with_metrics(metrics: Arc<Metrics>) -> Self {
        SharedBooks {
            metrics,
            ..SharedBooks::default()
        }
    }

    fn count_taken(&self) {
        self.metrics
            .shared_copies_taken
            .fetch_add(1, Ordering::Relaxed);
    }

    fn count_rebuilt(&self) {
        self.metrics
            .shared_book_rebuilds
            .fetch_add(1, Ordering::Relaxed);
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Lineage>) -> T) -> T {
        // A poisoned lock means a panic mid-update on this thread: the feed is going down.
        let mut lineages = self.lineages.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut lineages)
    }

    /// [`SharedBooks::with`] for one symbol's lineage; a lineage nobody holds any more (no member,
    /// no parked book) is dropped after `f`.
    fn with_symbol<T>(
        &self,
        symbol: &str,
        f: impl FnOnce(&mut HashMap<String, Lineage>) -> T,
    ) -> T {
        self.with(|lineages| {
            let out = f(lineages);
            if lineages.get(symbol).is_some_and(Lineage::is_empty) {
                lineages.remove(symbol);
            }
            out
        })
    }

    /// Whether `replica` is a member of `symbol`'s lineage.
    pub fn is_member(&self, replica: usize, symbol: &str) -> bool {
        self.with(|l| {
            l.get(symbol)
                .is_some_and(|lin| lin.members[replica].is_some())
        })
    }

    /// The fast path: `bytes` (one frame of one symbol) arrived on `replica`, a member behind
    /// the front whose next entry has exactly these bytes: the entry's outcome (and the book's
    /// parts after it when `state_due`). `None`: anything else
    /// (the caller decodes the frame and calls [`SharedBooks::apply`]).
    pub fn follow(
        &self,
        replica: usize,
        symbol: &str,
        bytes: &[u8],
        state_due: bool,
    ) -> Option<(Outcome, Option<StateParts>)> {
        self.with_symbol(symbol, |lineages| {
            let lineage = lineages.get_mut(symbol)?;
            let q = lineage.members[replica]?;
            if q >= lineage.p {
                return None;
            }
            if !lineage.entry_is(q - lineage.c, bytes) {
                return None;
            }
            self.count_taken();
            self.followed.fetch_add(1, Ordering::Relaxed);
            Some(take_entry(lineage, replica, q, state_due))
        })
    }

    /// A book message's only symbol `symbol` (its frame `bytes`, decoded as `kind` and `data`)
    /// arrived on `replica`. A member takes its outcome from the log or applies it at the front;
    /// a replica that is not one (or no longer is) is told so, with its book when it left just
    /// now.
    pub fn apply(
        &self,
        replica: usize,
        symbol: &str,
        kind: BookKind,
        data: &BookData<'_>,
        bytes: &[u8],
        state_due: bool,
    ) -> Shared {
        self.with_symbol(symbol, |lineages| {
            let Some(lineage) = lineages.get_mut(symbol) else {
                return Shared::Own(None);
            };
            if let Some(parked) = lineage.parked[replica].take() {
                return Shared::Own(Some(parked));
            }
            let Some(q) = lineage.members[replica] else {
                return Shared::Own(None);
            };
            if q < lineage.p {
                if lineage.entry_is(q - lineage.c, bytes) {
                    self.count_taken();
                    let (outcome, parts) = take_entry(lineage, replica, q, state_due);
                    return Shared::Taken(outcome, parts);
                }
                // Diverged: this replica's book is the one at `q`.
                self.count_rebuilt();
                let book = lineage.book_at(q);
                lineage.let_go(replica);
                return Shared::Own(Some(book));
            }
            if !lineage.open {
                // No member stays at the front of an ended lineage; should one, its book is
                // unsynced, as the mismatch that ended it left every book.
                lineage.let_go(replica);
                return Shared::Own(Some(unsynced_like(&lineage.book.book)));
            }
            // At the front (a member left alone there drops what served the others).
            lineage.shed();
            let followers = lineage.member_count() > 1;
            if followers && lineage.data.len() >= REFRESH_BYTES {
                if lineage.members.iter().flatten().all(|&m| m == lineage.p) {
                    lineage.checkpoint_here();
                } else if lineage.pending.is_none() {
                    lineage.pending = Some((lineage.p, lineage.book.book.clone()));
                }
            }
            self.applied.fetch_add(1, Ordering::Relaxed);
            let verdict = lineage.book.apply(kind, data);
            let synced = lineage.book.synced;
            let outcome = Outcome {
                kind,
                verdict,
                checksum: data.checksum,
                timestamp: data.timestamp,
                best_bid: synced.then(|| lineage.book.book.best_bid()).flatten(),
                best_ask: synced.then(|| lineage.book.book.best_ask()).flatten(),
            };
            lineage.p += 1;
            lineage.members[replica] = Some(lineage.p);
            let parts = (state_due && synced).then(|| StateParts::of(&lineage.book.book));
            lineage.last_key = frame_key(bytes);
            if followers {
                let start = lineage.data.len();
                lineage.data.extend_from_slice(bytes);
                lineage.log.push_back(Entry {
                    start,
                    len: bytes.len(),
                    outcome: outcome.clone(),
                });
            } else {
                lineage.c = lineage.p;
            }
            if !synced {
                // A mismatch: the lineage ends here. Members behind take this entry's verdict
                // and leave at it; this one leaves now, its book unsynced (its tracker starts a
                // new one at its next message: it has none for the symbol).
                lineage.open = false;
                lineage.let_go(replica);
                return Shared::Taken(outcome, None);
            }
            lineage.bound();
            Shared::Taken(outcome, parts)
        })
    }

    /// `replica`, with its own book of `symbol` in `tracker` and `last_key` the [`frame_key`] of
    /// its latest frame of the symbol (applied to that book), offers to share: it joins the
    /// lineage when it is at its front (the latest message's key is its last frame's, and its
    /// book is the same as the shared one, level for level), or starts one when no replica is a
    /// member. On joining, its book is taken out of `tracker` (`true`).
    pub fn offer(
        &self,
        replica: usize,
        symbol: &str,
        tracker: &mut Tracker,
        last_key: u64,
    ) -> bool {
        if last_key == 0 || !tracker.is_synced(symbol) {
            return false;
        }
        self.with(|lineages| {
            if let Some(lineage) = lineages.get_mut(symbol) {
                if lineage.members[replica].is_some() || lineage.parked[replica].is_some() {
                    return false;
                }
                if lineage.member_count() > 0 {
                    let Some(own) = tracker.book(symbol) else {
                        return false;
                    };
                    if lineage.open
                        && lineage.last_key == last_key
                        && own.same_as(&lineage.book.book)
                    {
                        if lineage.checkpoint.is_none() {
                            // The first follower: every member is at the front (a single
                            // member always is), so the checkpoint is the book now.
                            lineage.checkpoint_here();
                        }
                        lineage.members[replica] = Some(lineage.p);
                        tracker.take(symbol);
                        return true;
                    }
                    let p = lineage.p;
                    if lineage.open && lineage.members.iter().flatten().any(|&q| q == p) {
                        return false;
                    }
                    // Nobody at the front (the lineage ended, or its front member left): the
                    // members behind, stalled or slow, could keep every other replica from
                    // sharing for as long as they stay. They are let go with their books,
                    // parked, and this replica's book starts the lineage again.
                    for r in 0..MAX_REDUNDANCY {
                        if let Some(q) = lineage.members[r] {
                            self.count_rebuilt();
                            lineage.parked[r] = Some(lineage.book_at(q));
                            lineage.members[r] = None;
                        }
                    }
                }
            }
            let Some(book) = tracker.take(symbol) else {
                return false;
            };
            // A lineage whose members all left (parked books of others are kept).
            let parked = lineages
                .remove(symbol)
                .map(|l| l.parked)
                .unwrap_or_default();
            let mut lineage = Lineage::new(replica, book, last_key);
            lineage.parked = parked;
            lineages.insert(symbol.to_owned(), lineage);
            true
        })
    }

    /// `replica` leaves `symbol`'s lineage: its book at its position, when it was a member (or
    /// had a book parked).
    pub fn leave(&self, replica: usize, symbol: &str) -> Option<Tracked> {
        self.leave_unless(replica, symbol, |_| false)
    }

    /// [`SharedBooks::leave`], unless `keep` says the shared book is fine for what the replica is
    /// about to change (its depth or precision already the new one).
    pub fn leave_unless(
        &self,
        replica: usize,
        symbol: &str,
        keep: impl FnOnce(&OrderBook) -> bool,
    ) -> Option<Tracked> {
        self.with_symbol(symbol, |lineages| {
            let lineage = lineages.get_mut(symbol)?;
            if let Some(parked) = lineage.parked[replica].take() {
                return Some(parked);
            }
            let q = lineage.members[replica]?;
            if keep(&lineage.book.book) {
                return None;
            }
            let book = if lineage.open || q < lineage.p {
                lineage.book_at(q)
            } else {
                unsynced_like(&lineage.book.book)
            };
            lineage.let_go(replica);
            Some(book)
        })
    }

    /// `replica`'s session ended: it leaves every lineage (its books go with it).
    pub fn leave_all(&self, replica: usize) {
        self.with(|lineages| {
            lineages.retain(|_, lineage| {
                lineage.members[replica] = None;
                lineage.parked[replica] = None;
                lineage.shed();
                !lineage.is_empty()
            });
        });
    }

    /// What the shared books did so far.
    pub fn stats(&self) -> SharingStats {
        SharingStats {
            taken: self.metrics.shared_copies_taken.load(Ordering::Relaxed),
            followed: self.followed.load(Ordering::Relaxed),
            applied: self.applied.load(Ordering::Relaxed),
            rebuilt: self.metrics.shared_book_rebuilds.load(Ordering::Relaxed),
        }
    }

    /// How many symbols have a lineage, and how many bytes their logs hold (for tests and the
    /// benchmark).
    pub fn footprint(&self) -> (usize, usize) {
        self.with(|l| (l.len(), l.values().map(|x| x.data.capacity()).sum()))
    }
}

#[cfg(test)]
impl SharedBooks {
    /// The book `replica` holds here for `symbol`: its book at its position when a member, its
    /// parked book when it has one.
    pub(crate) fn book_of(&self, replica: usize, symbol: &str) -> Option<Tracked> {
        self.with(|lineages| {
            let lineage = lineages.get(symbol)?;
            if let Some(parked) = &lineage.parked[replica] {
                return Some(parked.clone());
            }
            let q = lineage.members[replica]?;
            Some(lineage.book_at(q))
        })
    }

    /// Panics unless every lineage keeps its invariants.
    pub(crate) fn check_invariants(&self) {
        self.with(|lineages| {
            for (symbol, l) in lineages.iter() {
                assert!(!l.is_empty(), "{symbol}: a lineage nobody holds is kept");
                let members: Vec<u64> = l.members.iter().flatten().copied().collect();
                for r in 0..MAX_REDUNDANCY {
                    assert!(
                        l.members[r].is_none() || l.parked[r].is_none(),
                        "{symbol}: replica {r} both a member and parked"
                    );
                }
                for &q in &members {
                    assert!(l.c <= q && q <= l.p, "{symbol}: c {} q {q} p {}", l.c, l.p);
                    if q < l.p {
                        assert!(
                            l.checkpoint.is_some(),
                            "{symbol}: behind without checkpoint"
                        );
                    }
                    if !l.open {
                        assert!(
                            q < l.p,
                            "{symbol}: a member at the front of a closed lineage"
                        );
                    }
                }
                if l.open {
                    assert!(l.book.synced, "{symbol}: an open lineage's book unsynced");
                }
                if l.checkpoint.is_some() {
                    assert_eq!(l.log.len() as u64, l.p - l.c, "{symbol}: log covers c..p");
                } else {
                    assert!(
                        l.log.is_empty() && l.c == l.p,
                        "{symbol}: a log without checkpoint"
                    );
                }
                if let Some((at, book)) = &l.pending {
                    assert!(
                        l.c < *at && *at <= l.p,
                        "{symbol}: pending at {at}, c {} p {}",
                        l.c,
                        l.p
                    );
                    assert!(
                        book.same_as(&l.book_at(*at).book),
                        "{symbol}: the pending copy is not the book at its place"
                    );
                }
                let lone_at_front = members.len() == 1 && members[0] == l.p;
                if members.is_empty() || lone_at_front {
                    assert!(l.checkpoint.is_none(), "{symbol}: not shed");
                }
                let mut at = 0;
                for e in &l.log {
                    assert_eq!(e.start, at, "{symbol}: entries one after the other");
                    at += e.len;
                }
                assert_eq!(at, l.data.len(), "{symbol}: data holds the entries");
                assert!(
                    l.log.len() <= 2 * CAP_ENTRIES && l.data.len() <= 2 * CAP_BYTES,
                    "{symbol}: log of {} entries, {} bytes",
                    l.log.len(),
                    l.data.len()
                );
            }
        });
    }
}

/// The member at `q` takes entry `q` (its bytes matched): moves on, leaves at a mismatch.
fn take_entry(
    lineage: &mut Lineage,
    replica: usize,
    q: u64,
    state_due: bool,
) -> (Outcome, Option<StateParts>) {
    let outcome = lineage.log[(q - lineage.c) as usize].outcome.clone();
    if !matches!(outcome.verdict, Verdict::Ok) {
        // Its own book would be unsynced now; it has none for the symbol, so its next message
        // starts an unsynced one, as after a mismatch.
        lineage.let_go(replica);
        return (outcome, None);
    }
    let q = q + 1;
    lineage.members[replica] = Some(q);
    lineage.shed();
    let parts = if state_due && outcome.kind == BookKind::Update {
        lineage.parts_at(q)
    } else {
        None
    };
    (outcome, parts)
}

/// The symbol of a book frame in Kraken's layout (`{"channel":"book",…"symbol":"X",…`), or in
/// that layout spaced otherwise (`{"channel": "book", … "symbol": "X", …`, as Python writes it),
/// found without decoding it: only a key to look for a matching entry; the bytes decide.
pub fn book_symbol_hint(text: &str) -> Option<&str> {
    const KEY: &str = "\"symbol\"";
    // How far into `s` the token `t` ends, after JSON whitespace.
    let after = |s: &str, t: &str| -> Option<usize> {
        let rest = s
            .trim_start_matches([' ', '\t', '\n', '\r'])
            .strip_prefix(t)?;
        Some(s.len() - rest.len())
    };
    let mut at = 0;
    for t in ["{", "\"channel\"", ":", "\"book\""] {
        at += after(&text[at..], t)?;
    }
    at += text[at..].find(KEY)? + KEY.len();
    for t in [":", "\""] {
        at += after(&text[at..], t)?;
    }
    let len = text[at..].find('"')?;
    Some(&text[at..at + len])
}

#[cfg(test)]
#[path = "shared_books_tests.rs"]
mod differential;

#[cfg(test)]
mod tests {
    use super::*;

    /// A book handed back unsynced (a member left at the front of an ended lineage, which the
    /// invariants rule out) must still be the replica's book in all but its levels: the next
    /// snapshot is applied at its depth and checksummed at its instrument's precision, as its
    /// own unsynced book's would be.
    #[test]
    fn a_book_handed_back_unsynced_keeps_its_depth_and_precision() {
        let precision = Precision { price: 1, qty: 4 };
        let book = OrderBook::with_precision(25, Some(precision));
        let mut lineage = Lineage::new(0, Tracked { book, synced: true }, 1);
        lineage.open = false;
        let books = SharedBooks::new();
        books.with(|l| l.insert("X/Y".to_owned(), lineage));
        let back = books.leave(0, "X/Y").expect("its book");
        assert!(!back.synced);
        assert_eq!(back.book.depth(), 25);
        assert_eq!(back.book.known_precision(), Some(precision));
    }

    #[test]
    fn the_symbol_hint_reads_kraken_layout_spaced_or_not_and_nothing_else() {
        let update = r#"{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[],"asks":[],"checksum":1}]}"#;
        assert_eq!(book_symbol_hint(update), Some("BTC/USD"));
        let python = update.replace(',', ", ").replace("\":", "\": ");
        assert_eq!(book_symbol_hint(&python), Some("BTC/USD"), "{python}");
        let pretty = python.replace('{', "{\n\t");
        assert_eq!(book_symbol_hint(&pretty), Some("BTC/USD"), "{pretty}");
        assert_eq!(
            book_symbol_hint(&update.replace(r#""symbol":""#, r#""symbol":1,""#)),
            None
        );
        assert_eq!(
            book_symbol_hint(&update.replace(r#""book""#, r#""books""#)),
            None
        );
        assert_eq!(book_symbol_hint(r#"{"channel":"heartbeat"}"#), None);
        assert_eq!(
            book_symbol_hint(r#"{"method":"subscribe","result":{"symbol":"X"}}"#),
            None
        );
        assert_eq!(
            book_symbol_hint(r#"{"channel":"book","data":[{"symbol":"#),
            None
        );
        // Whitespace JSON does not have (a no-break space) is not passed over; a frame with
        // characters of several bytes next to its tokens, cut at each of its characters, never
        // panics (the hint slices its text where it found a token).
        let wide = pretty.replace("BTC/USD", "Ä/€");
        for (text, hint) in [
            (wide.replacen(": \"book", ":\u{a0}\"book", 1), None),
            (wide.replacen(": \"Ä", ":\u{a0}\"Ä", 1), None),
            (wide.clone(), Some("Ä/€")),
        ] {
            assert_eq!(book_symbol_hint(&text), hint, "{text}");
            for (i, _) in text.char_indices() {
                book_symbol_hint(&text[..i]);
                book_symbol_hint(&text[i..]);
            }
        }
    }
}
