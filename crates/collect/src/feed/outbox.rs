//! The feed's outbox: the journal entries of every connection of the feed, handed to the
//! journal's queue in batches rather than one by one, so that the journal thread (and, behind
//! it, the database pipeline) wakes once per batch, not once per frame nor once per connection.
//!
//! What must always hold:
//! - entries leave in the order they were put in (a connection's received order is the
//!   journal's), and one hand-off runs at a time: a later one never overtakes an earlier one
//!   still waiting for room in the journal's queue;
//! - a batch holding [`EAGER_BYTES`] or more is due at the next tick, after its first entry, of a
//!   grid of period [`super::FeedConfig::handoff_every`] (a whole number of read periods,
//!   [`super::handoff_grid`]); a smaller one (a trickle of frames: each hand-off wakes the
//!   journal thread, whose wake-up costs more than writing a few frames) waits for the first
//!   tick at least [`PATIENCE`] (or two read periods, [`Grid::patience`]) after its first entry
//!   less one period, unless it grows to
//!   `EAGER_BYTES` first. A due batch is handed off by the first connection that wakes from then
//!   on (on its read tick), and by the outbox's timer ([`Grid::slack`] later: none when reads
//!   are on a tick, half a period when they are on arrival), so an entry waits at most one
//!   period (1.5 on arrival) in a busy feed and about `PATIENCE` (plus half a period) in a
//!   trickle;
//! - the outbox is bounded: at [`MAX_ENTRIES`] entries or [`MAX_BYTES`] bytes the connection that
//!   filled it hands it off before it reads on, and a hand-off waits for room in the journal's
//!   bounded queue, so a slow journal stops the readers (back-pressure reaches the sockets, never
//!   memory);
//! - a connection hands the outbox off before it sends a request (the frames that caused it are
//!   journaled first) and before it returns, for whatever reason: nothing received is dropped at
//!   shutdown.
//!
//! What is at stake: entries in the outbox, like those in the journal's queue and buffer, are
//! lost if the process dies (not if it is stopped: shutdown drains). The window is one
//! `handoff_every` in a busy feed and `PATIENCE` in a trickle (20 ms and 100 ms at the defaults;
//! 100 ms and 200 ms with reads every 100 ms; half a period more when reads are on arrival),
//! plus the journal's
//! [`crate::journal::FLUSH_EVERY`]. A connection
//! that dies with the process loses its socket's unread bytes too: either way the record shows a
//! gap that ends when the restarted collector's snapshots arrive.
//!
//! When a batch is due is decided by [`Outbox`], without I/O or a clock ([`next_tick`]);
//! [`FeedOutbox`] shares one among the connections of the feed's thread and hands it off.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::FeedError;
use crate::journal::{Entry, JournalSender};
use crate::record::RecordBody;

/// An outbox holding this many entries is handed off at once.
pub const MAX_ENTRIES: usize = 1024;
/// An outbox holding this many bytes of frames is handed off at once.
pub const MAX_BYTES: usize = 256 << 10;
/// A batch holding this many bytes goes at the next tick of the hand-off grid; a smaller one
/// waits up to [`PATIENCE`] (see the module doc). 32 KiB is about 20 ms of a feed of
/// 10,000 messages a second, and half a second of one of 300.
pub const EAGER_BYTES: usize = 32 << 10;
/// How long a batch under [`EAGER_BYTES`] may wait after its first entry (rounded to the grid:
/// with a hand-off period this long or longer, it goes at the next tick like any batch).
pub const PATIENCE: Duration = Duration::from_millis(100);

/// The next tick of the grid of period `every` that starts at `epoch`, strictly after `now`
/// (`now` itself when `every` is zero: no waiting).
pub fn next_tick(epoch: Instant, every: Duration, now: Instant) -> Instant {
    if every.is_zero() {
        return now;
    }
    let since = now.saturating_duration_since(epoch).as_nanos();
    let period = every.as_nanos();
    let ticks = since / period + 1;
    let offset = u64::try_from(ticks.saturating_mul(period)).unwrap_or(u64::MAX);
    epoch + Duration::from_nanos(offset)
}

/// When batches fall due and when the outbox's timer looks at them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    /// The period of the hand-off grid ([`super::FeedConfig::handoff_every`], made a whole
    /// number of read periods by [`super::handoff_grid`]).
    pub every: Duration,
    /// How long after a batch falls due the timer hands it off if no connection woke.
    pub slack: Duration,
    /// The read period when connections read on a tick (zero: they read on arrival). The timer
    /// then looks at a waiting batch on read ticks only, never further than one read period
    /// ahead: it fires in wake-ups the reads make anyway (a timer armed further ahead wakes
    /// the thread on its own when the runtime's timer wheel moves it to a finer level).
    pub step: Duration,
}

impl Grid {
    /// A grid of period `every` whose timer hands a batch off `slack` after it is due.
    pub fn new(every: Duration, slack: Duration) -> Self {
        Grid {
            every,
            slack,
            step: Duration::ZERO,
        }
    }

    /// How long a batch under [`EAGER_BYTES`] may wait after its first entry: [`PATIENCE`], or
    /// two read periods when that is longer. With reads every 100 ms (the low-CPU setting) a
    /// trickle then goes every other tick: five wake-ups of the journal thread a second instead
    /// of ten, for a window of 200 ms (the frames already waited up to a read period in the
    /// socket).
    pub fn patience(&self) -> Duration {
        PATIENCE.max(self.step.saturating_mul(2))
    }
}

/// Entries waiting for the journal, and when they are due (see the module doc).
#[derive(Debug)]
pub struct Outbox {
    entries: Vec<Entry>,
    bytes: usize,
    /// The tick after the first entry: when a batch of [`EAGER_BYTES`] is due.
    due: Option<Instant>,
    /// The first tick at least [`PATIENCE`] less a period after the first entry: when any batch
    /// is due.
    latest: Option<Instant>,
    grid: Grid,
    epoch: Instant,
}

impl Outbox {
    /// An empty outbox whose batches are due on `grid` from `epoch`.
    pub fn new(grid: Grid, epoch: Instant) -> Self {
        Outbox {
            entries: Vec::new(),
            bytes: 0,
            due: None,
            latest: None,
            grid,
            epoch,
        }
    }

    /// Adds an entry put in at `now`; the first of a batch sets when the batch is due.
    pub fn push(&mut self, entry: Entry, now: Instant) {
        if self.due.is_none() {
            let every = self.grid.every;
            self.due = Some(next_tick(self.epoch, every, now));
            // A zero period hands everything off at once: no patience either.
            let patient = if every.is_zero() {
                now
            } else {
                now + self.grid.patience().saturating_sub(every)
            };
            self.latest = Some(next_tick(self.epoch, every, patient));
        }
        self.bytes += entry_bytes(&entry);
        self.entries.push(entry);
    }

    /// Whether the waiting batch is large enough to go at the next tick.
    fn eager(&self) -> bool {
        self.bytes >= EAGER_BYTES
    }

    /// When the waiting batch is due: handed off at the first wake-up from then on (`None`:
    /// nothing waits). It moves earlier when the batch grows to [`EAGER_BYTES`].
    pub fn due(&self) -> Option<Instant> {
        if self.eager() { self.due } else { self.latest }
    }

    /// When the waiting batch must be handed off even if nothing else wakes a connection: the
    /// slack after it is due (`None`: nothing waits).
    pub fn deadline(&self) -> Option<Instant> {
        self.due().map(|due| due + self.grid.slack)
    }

    /// When the timer should next look at the waiting batch, from `now`: its deadline, or the
    /// next read tick before it when reads are on a tick ([`Grid::step`]); `None`: nothing waits.
    pub fn look_at(&self, now: Instant) -> Option<Instant> {
        let deadline = self.deadline()?;
        if self.grid.step.is_zero() {
            return Some(deadline);
        }
        Some(deadline.min(next_tick(self.epoch, self.grid.step, now)))
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes of frames waiting (about; events count a little).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether the outbox is full: it must be handed off before more is read.
    pub fn is_full(&self) -> bool {
        self.entries.len() >= MAX_ENTRIES || self.bytes >= MAX_BYTES
    }

    /// Whether the batch must be handed off at `now`: its tick has come, or the outbox is full.
    pub fn is_due(&self, now: Instant) -> bool {
        self.is_full() || self.due().is_some_and(|due| now >= due)
    }

    /// Takes every waiting entry, in order, leaving the outbox empty.
    pub fn take(&mut self) -> Vec<Entry> {
        self.bytes = 0;
        self.due = None;
        self.latest = None;
        std::mem::take(&mut self.entries)
    }
}

/// The bytes an entry stands for in the outbox's bound.
fn entry_bytes(entry: &Entry) -> usize {
    const OVERHEAD: usize = 64;
    OVERHEAD
        + match &entry.body {
            RecordBody::Frame(frame) => frame.bytes.len(),
            RecordBody::BookState(state) => 32 * (state.bids.len() + state.asks.len()),
            RecordBody::Event(event) => event.detail.len(),
        }
}

/// The outbox every connection of a feed shares, with its timer (see the module doc).
#[derive(Debug)]
pub struct FeedOutbox {
    waiting: Mutex<Outbox>,
    /// Held through a hand-off, from taking the entries until the journal queued them.
    handing_off: tokio::sync::Mutex<()>,
    journal: JournalSender,
    /// The deadline changed (a batch began, or was handed off): the timer looks again.
    changed: Notify,
}

impl FeedOutbox {
    /// An empty outbox for `journal`, due on `grid` from `epoch` ([`Outbox::new`]).
    pub fn new(journal: JournalSender, grid: Grid, epoch: Instant) -> Self {
        FeedOutbox {
            waiting: Mutex::new(Outbox::new(grid, epoch)),
            handing_off: tokio::sync::Mutex::new(()),
            journal,
            changed: Notify::new(),
        }
    }

    fn waiting(&self) -> MutexGuard<'_, Outbox> {
        // A poisoned lock means a panic between two plain updates of a Vec and two numbers: the
        // entries are still whole, in order.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The journal's queue.
    pub fn journal(&self) -> &JournalSender {
        &self.journal
    }

    /// Puts entries in, in order, at `now`.
    pub fn put(&self, entries: impl IntoIterator<Item = Entry>, now: Instant) {
        let moved = {
            let mut waiting = self.waiting();
            let before = waiting.deadline();
            for entry in entries {
                waiting.push(entry, now);
            }
            waiting.deadline() != before
        };
        // A batch began, or grew eager: the timer looks again.
        if moved {
            self.changed.notify_one();
        }
    }

    /// Entries waiting (not yet handed to the journal).
    pub fn len(&self) -> usize {
        self.waiting().len()
    }

    /// Whether no entry waits.
    pub fn is_empty(&self) -> bool {
        self.waiting().is_empty()
    }

    /// Whether the waiting batch must be handed off at `now` ([`Outbox::is_due`]).
    pub fn is_due(&self, now: Instant) -> bool {
        self.waiting().is_due(now)
    }

    /// Hands every waiting entry to the journal's queue, in order, as one batch (one wake-up of
    /// the journal thread), waiting for room: a full queue holds the caller here, so it reads
    /// nothing meanwhile. Fails only when the journal is closed.
    pub async fn hand_off(&self) -> Result<(), FeedError> {
        let _turn = self.handing_off.lock().await;
        let batch = self.waiting().take();
        self.changed.notify_one();
        if batch.is_empty() {
            return Ok(());
        }
        self.journal
            .send_batch(batch)
            .await
            .map_err(|_| FeedError::JournalClosed)
    }

    /// The timer: hands the outbox off at each batch's deadline when no connection did it
    /// before, until `cancel` (the connections hand off what is left when they stop). With the
    /// feed thread's read ticks (`ticks`, [`super::ticker`]) it looks on those ticks and keeps
    /// no timer of its own; else it arms one, on read ticks only when reads are on a tick
    /// ([`Outbox::look_at`]).
    pub async fn run(
        self: std::sync::Arc<Self>,
        cancel: CancellationToken,
        ticks: Option<tokio::sync::watch::Receiver<u64>>,
    ) -> Result<(), FeedError> {
        if let Some(mut ticks) = ticks {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    // The sender lives as long as the feed: an error only means it is gone.
                    changed = ticks.changed() => {
                        if changed.is_err() {
                            return Ok(());
                        }
                        if self.is_due(Instant::now()) {
                            self.hand_off().await?;
                        }
                    }
                }
            }
        }
        let idle = || Instant::now() + Duration::from_secs(3600);
        let sleep = tokio::time::sleep_until(idle());
        tokio::pin!(sleep);
        let mut armed: Option<Instant> = None;
        loop {
            let look_at = self.waiting().look_at(Instant::now());
            if look_at != armed {
                sleep.as_mut().reset(look_at.unwrap_or_else(idle));
                armed = look_at;
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = self.changed.notified() => {}
                _ = &mut sleep, if armed.is_some() => {
                    armed = None;
                    if self.is_due(Instant::now()) {
                        self.hand_off().await?;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::test_journal as journal;
    use crate::record::{EventKind, FeedEvent, FrameRecord};
    use crate::time::Timestamp;

    const MS: Duration = Duration::from_millis(1);

    fn frame(n: u64, len: usize) -> Entry {
        Entry {
            received_at: Timestamp::from_unix_nanos(0),
            conn_id: 1,
            conn_seq: n,
            body: RecordBody::Frame(FrameRecord {
                bytes: vec![b'x'; len],
                checksum_ok: None,
                best_bid: None,
                best_ask: None,
            }),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn batches_are_due_on_the_next_tick_of_the_shared_grid() {
        let epoch = Instant::now();
        // (grid period, when the first entry arrives, when its batch is due), in ms from epoch.
        let cases: [(u32, u32, u32, &str); 6] = [
            (
                10,
                0,
                10,
                "at the epoch: the next tick, not the epoch itself",
            ),
            (10, 3, 10, "between ticks: the next one"),
            (10, 10, 20, "on a tick: the one after"),
            (10, 19, 20, "just before a tick: a short wait"),
            (0, 7, 7, "a zero period: due at once"),
            (2, 5, 6, "another period"),
        ];
        for (every, at, due, what) in cases {
            let now = epoch + at * MS;
            assert_eq!(
                next_tick(epoch, every * MS, now) - epoch,
                due * MS,
                "{what}"
            );
            if every > 0 {
                // Two connections whose batches start in the same period hand off together.
                let mut a = Outbox::new(Grid::new(every * MS, every * MS / 2), epoch);
                let mut b = Outbox::new(Grid::new(every * MS, every * MS / 2), epoch);
                a.push(frame(1, EAGER_BYTES), now);
                b.push(frame(1, EAGER_BYTES), epoch + (due - 1) * MS);
                assert_eq!(a.due(), Some(epoch + due * MS), "{what}");
                assert_eq!(a.due(), b.due(), "{what}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_entry_sets_the_due_time_and_later_ones_do_not_push_it_back() {
        let epoch = Instant::now();
        let mut outbox = Outbox::new(Grid::new(10 * MS, 10 * MS / 2), epoch);
        assert_eq!(outbox.due(), None);
        assert!(!outbox.is_due(epoch + 100 * MS), "nothing waits");
        outbox.push(frame(1, EAGER_BYTES / 2), epoch + 2 * MS);
        outbox.push(frame(2, EAGER_BYTES / 2), epoch + 9 * MS);
        outbox.push(frame(3, 10), epoch + 15 * MS);
        assert_eq!(outbox.due(), Some(epoch + 10 * MS));
        assert_eq!(
            outbox.deadline(),
            Some(epoch + 15 * MS),
            "half a period later"
        );
        assert!(!outbox.is_due(epoch + 9 * MS));
        assert!(outbox.is_due(epoch + 10 * MS));
        let mut at_once = Outbox::new(Grid::new(Duration::ZERO, Duration::ZERO), epoch);
        at_once.push(frame(1, 10), epoch + 3 * MS);
        assert_eq!(at_once.deadline(), Some(epoch + 3 * MS), "a zero period");
        assert!(at_once.is_due(epoch + 3 * MS));
    }

    /// With a long read tick the patience is two read periods: a trickle read every 100 ms goes
    /// every other tick (200 ms), a read every 10 ms keeps 100 ms; an eager batch still goes at
    /// the next tick.
    #[tokio::test(start_paused = true)]
    async fn with_a_long_read_tick_a_trickle_waits_two_read_periods() {
        let epoch = Instant::now();
        // (read period, hand-off period, first entry at, small batch due at), in ms.
        let cases: [(u32, u32, u32, u32, &str); 4] = [
            (100, 100, 3, 200, "reads every 100 ms: every other tick"),
            (100, 100, 100, 300, "on a tick: two ticks on"),
            (10, 20, 3, 100, "reads every 10 ms: the patience as before"),
            (
                50,
                50,
                3,
                100,
                "reads every 50 ms: two periods are the patience",
            ),
        ];
        for (read, every, at, due, what) in cases {
            let grid = Grid {
                every: every * MS,
                slack: Duration::ZERO,
                step: read * MS,
            };
            assert_eq!(grid.patience(), PATIENCE.max(2 * read * MS), "{what}");
            let mut outbox = Outbox::new(grid, epoch);
            outbox.push(frame(1, 200), epoch + at * MS);
            assert_eq!(outbox.due(), Some(epoch + due * MS), "{what}");
            outbox.push(frame(2, EAGER_BYTES), epoch + (at + 1) * MS);
            assert_eq!(
                outbox.due(),
                Some(next_tick(epoch, every * MS, epoch + at * MS)),
                "{what}: eager"
            );
        }
    }

    /// A trickle of small frames is handed off every `PATIENCE` (100 ms), not every period (each
    /// hand-off is a wake-up of the journal thread); once the batch holds `EAGER_BYTES` it goes
    /// at the next tick, as a busy feed's does.
    #[tokio::test(start_paused = true)]
    async fn a_small_batch_waits_its_patience_unless_it_grows_eager() {
        let epoch = Instant::now();
        // (period, first entry at, small batch due at), in ms from epoch.
        let cases: [(u32, u32, u32, &str); 6] = [
            (20, 0, 100, "at the epoch: the fifth tick"),
            (
                20,
                3,
                100,
                "between ticks: four periods on, then the next tick",
            ),
            (20, 20, 120, "on a tick"),
            (30, 3, 90, "another period: the first tick 70 ms on"),
            (
                100,
                3,
                100,
                "a period as long as the patience: the next tick",
            ),
            (250, 3, 250, "a longer period: the next tick"),
        ];
        for (every, at, due, what) in cases {
            let mut outbox = Outbox::new(Grid::new(every * MS, every * MS / 2), epoch);
            outbox.push(frame(1, 200), epoch + at * MS);
            outbox.push(frame(2, 200), epoch + (at + 30) * MS);
            assert_eq!(outbox.due(), Some(epoch + due * MS), "{what}");
            assert!(!outbox.is_due(epoch + (due - 1) * MS), "{what}");
            assert!(outbox.is_due(epoch + due * MS), "{what}");
            assert_eq!(
                outbox.deadline(),
                Some(epoch + (due + every / 2) * MS),
                "{what}"
            );
            // It grows eager: due at the tick after its first entry (already past when the
            // period is short).
            outbox.push(frame(3, EAGER_BYTES), epoch + (at + 31) * MS);
            let tick = next_tick(epoch, every * MS, epoch + at * MS);
            assert_eq!(outbox.due(), Some(tick), "{what}");
            assert!(outbox.is_due(tick.max(epoch + (at + 31) * MS)), "{what}");
            outbox.take();
            assert_eq!(outbox.due(), None, "{what}: taken");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_outbox_is_due_at_once() {
        let epoch = Instant::now();
        let mut by_count = Outbox::new(Grid::new(Duration::from_secs(3600), Duration::ZERO), epoch);
        for n in 0..MAX_ENTRIES as u64 {
            assert!(!by_count.is_due(epoch), "{n} entries");
            by_count.push(frame(n, 1), epoch);
        }
        assert!(by_count.is_due(epoch));
        let mut by_bytes = Outbox::new(Grid::new(Duration::from_secs(3600), Duration::ZERO), epoch);
        by_bytes.push(frame(1, MAX_BYTES / 2), epoch);
        assert!(!by_bytes.is_due(epoch));
        by_bytes.push(frame(2, MAX_BYTES / 2), epoch);
        assert!(by_bytes.is_due(epoch));
    }

    #[tokio::test]
    async fn hand_off_keeps_the_order_waits_for_room_and_empties_the_outbox() {
        let dir = tempfile::tempdir().unwrap();
        // The queue holds 4: the batch of 11 goes in as the journal makes room.
        let (handle, cancel) = journal(dir.path(), 4);
        let epoch = Instant::now();
        let outbox = FeedOutbox::new(
            handle.sender.clone(),
            Grid::new(10 * MS, 10 * MS / 2),
            epoch,
        );
        // Two connections' entries, interleaved as they were put in.
        outbox.put((1..=5).map(|n| frame(n, 5)), epoch);
        outbox.put((6..=10).map(|n| frame(n, 5)), epoch);
        outbox.put(
            [Entry {
                body: RecordBody::Event(FeedEvent {
                    kind: EventKind::Disconnected,
                    symbol: None,
                    gap_start: None,
                    detail: String::new(),
                }),
                ..frame(0, 0)
            }],
            epoch,
        );
        assert_eq!(outbox.len(), 11);
        outbox.hand_off().await.unwrap();
        assert!(outbox.is_empty());
        assert!(!outbox.is_due(epoch + Duration::from_secs(3600)));
        cancel.cancel();
        handle.join().await.unwrap();
        let mut reader = crate::journal::JournalReader::open(dir.path(), 0).unwrap();
        let mut seqs = Vec::new();
        while let Some(crate::journal::Item::Record(r)) = reader.next_owned().unwrap() {
            seqs.push(r.conn_seq);
        }
        assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0]);
    }

    /// A batch no connection hands off (no frame came after its tick) goes at its deadline,
    /// half a period after its tick, and not before; a small one at the tick `PATIENCE`
    /// on, an eager one at the next tick; a batch that grows eager while the timer waits moves
    /// the timer earlier.
    #[tokio::test(start_paused = true)]
    async fn the_timer_hands_off_a_quiet_batch_at_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let (handle, cancel) = journal(dir.path(), 64);
        let epoch = Instant::now();
        let outbox = std::sync::Arc::new(FeedOutbox::new(
            handle.sender.clone(),
            Grid::new(20 * MS, 20 * MS / 2),
            epoch,
        ));
        let timer = tokio::spawn(std::sync::Arc::clone(&outbox).run(cancel.clone(), None));
        tokio::time::sleep(3 * MS).await;
        outbox.put([frame(1, EAGER_BYTES)], Instant::now());
        // Due at the tick (20 ms), handed off by the timer at 30 ms.
        tokio::time::sleep_until(epoch + 29 * MS).await;
        assert_eq!(outbox.len(), 1, "not before the deadline");
        tokio::time::sleep_until(epoch + 30 * MS).await;
        tokio::task::yield_now().await;
        assert_eq!(outbox.len(), 0, "at the deadline");
        // A small batch begun at 35 ms: due at the tick of 120 ms, handed off at 130 ms.
        tokio::time::sleep_until(epoch + 35 * MS).await;
        outbox.put([frame(2, 5)], Instant::now());
        tokio::time::sleep_until(epoch + 129 * MS).await;
        assert_eq!(outbox.len(), 1);
        tokio::time::sleep_until(epoch + 130 * MS).await;
        tokio::task::yield_now().await;
        assert_eq!(outbox.len(), 0);
        // A small batch begun at 141 ms (due 220 ms) grows eager at 150 ms: due at 160 ms, handed
        // off at 170 ms.
        tokio::time::sleep_until(epoch + 141 * MS).await;
        outbox.put([frame(3, 5)], Instant::now());
        tokio::time::sleep_until(epoch + 150 * MS).await;
        outbox.put([frame(4, EAGER_BYTES)], Instant::now());
        tokio::time::sleep_until(epoch + 169 * MS).await;
        assert_eq!(outbox.len(), 2);
        tokio::time::sleep_until(epoch + 170 * MS).await;
        tokio::task::yield_now().await;
        assert_eq!(outbox.len(), 0);
        cancel.cancel();
        timer.await.unwrap().unwrap();
        handle.join().await.unwrap();
    }

    /// With reads on a tick the timer looks at a waiting batch on read ticks only (never
    /// further ahead than one read period, never between two), and hands it off on the read
    /// tick it falls due, not before.
    #[tokio::test(start_paused = true)]
    async fn with_reads_on_a_tick_the_timer_looks_on_read_ticks_only() {
        let epoch = Instant::now();
        let grid = Grid {
            every: 20 * MS,
            slack: Duration::ZERO,
            step: 10 * MS,
        };
        let mut outbox = Outbox::new(grid, epoch);
        assert_eq!(outbox.look_at(epoch), None, "nothing waits");
        outbox.push(frame(1, 5), epoch + 3 * MS);
        // Due at 100 ms (five periods); looked at on each read tick until then.
        for (now, look) in [
            (3, 10),
            (10, 20),
            (47, 50),
            (90, 100),
            (99, 100),
            (100, 100),
        ] {
            assert_eq!(
                outbox.look_at(epoch + now * MS),
                Some(epoch + look * MS),
                "at {now} ms"
            );
        }
        assert!(!outbox.is_due(epoch + 90 * MS));
        assert!(outbox.is_due(epoch + 100 * MS));

        let dir = tempfile::tempdir().unwrap();
        let (handle, cancel) = journal(dir.path(), 64);
        let outbox = std::sync::Arc::new(FeedOutbox::new(handle.sender.clone(), grid, epoch));
        let timer = tokio::spawn(std::sync::Arc::clone(&outbox).run(cancel.clone(), None));
        tokio::time::sleep_until(epoch + 3 * MS).await;
        outbox.put([frame(1, 5)], Instant::now());
        tokio::time::sleep_until(epoch + 99 * MS).await;
        assert_eq!(outbox.len(), 1, "not before it is due");
        tokio::time::sleep_until(epoch + 100 * MS).await;
        tokio::task::yield_now().await;
        assert_eq!(outbox.len(), 0, "on the read tick it falls due");
        cancel.cancel();
        timer.await.unwrap().unwrap();
        handle.join().await.unwrap();
    }

    /// Driven by the feed thread's read ticks, the timer hands a batch off on the first tick
    /// at or after it falls due, and on no other.
    #[tokio::test(start_paused = true)]
    async fn on_read_ticks_the_timer_hands_off_on_the_tick_a_batch_falls_due() {
        let dir = tempfile::tempdir().unwrap();
        let (handle, cancel) = journal(dir.path(), 64);
        let epoch = Instant::now();
        let grid = Grid {
            every: 20 * MS,
            slack: Duration::ZERO,
            step: 10 * MS,
        };
        let outbox = std::sync::Arc::new(FeedOutbox::new(handle.sender.clone(), grid, epoch));
        let (ticks, rx) = tokio::sync::watch::channel(0u64);
        let timer = tokio::spawn(std::sync::Arc::clone(&outbox).run(cancel.clone(), Some(rx)));
        let tick_at = |ms: u32| {
            let ticks = &ticks;
            async move {
                tokio::time::sleep_until(epoch + ms * MS).await;
                ticks.send_modify(|n| *n += 1);
                tokio::task::yield_now().await;
            }
        };
        outbox.put([frame(1, 5)], epoch + 3 * MS);
        // Due at 100 ms: ticks before it leave it waiting.
        for ms in [10, 50, 90] {
            tick_at(ms).await;
            assert_eq!(outbox.len(), 1, "tick at {ms} ms");
        }
        // No tick at 100 ms (the thread was busy): the next one hands it off.
        tokio::time::sleep_until(epoch + 105 * MS).await;
        tokio::task::yield_now().await;
        assert_eq!(outbox.len(), 1, "no timer of its own");
        tick_at(110).await;
        assert_eq!(outbox.len(), 0, "the first tick after it fell due");
        cancel.cancel();
        timer.await.unwrap().unwrap();
        handle.join().await.unwrap();
    }

    #[tokio::test]
    async fn a_closed_journal_fails_the_hand_off() {
        let dir = tempfile::tempdir().unwrap();
        let (handle, cancel) = journal(dir.path(), 4);
        let outbox = FeedOutbox::new(
            handle.sender.clone(),
            Grid::new(10 * MS, 10 * MS / 2),
            Instant::now(),
        );
        cancel.cancel();
        handle.join().await.unwrap();
        outbox.put([frame(1, 5)], Instant::now());
        assert!(matches!(
            outbox.hand_off().await,
            Err(FeedError::JournalClosed)
        ));
    }
}
