//! A connection's outbox: the journal entries of its frames and events, handed to the journal's
//! queue in batches rather than one by one, so that the journal thread (and, behind it, the
//! database pipeline) wakes once per batch instead of once per frame.
//!
//! What must always hold:
//! - entries leave in the order they came (a connection's received order is the journal's);
//! - a batch is due at the next tick of a grid of period [`super::FeedConfig::handoff_every`]
//!   after its first entry, the same grid for every connection of the feed (the ticks count from
//!   one epoch), so that connections hand off together; it is handed off at the connection's
//!   first wake-up from then on (a frame arriving), and by a timer half a period after the tick
//!   at the latest, so that a steady feed needs no wake-up of its own to hand off and an entry
//!   waits at most 1.5 × `handoff_every`;
//! - the outbox is bounded: at [`MAX_ENTRIES`] entries or [`MAX_BYTES`] bytes it is due at once,
//!   and handing off waits for room in the journal's bounded queue, so a slow journal stops the
//!   connection's reader (back-pressure reaches the socket, never memory);
//! - it is emptied before the connection sends a request and before it returns, for whatever
//!   reason: nothing received is dropped at shutdown.
//!
//! What is at stake: entries in the outbox, like those in the journal's queue and buffer, are
//! lost if the process dies (not if it is stopped: shutdown drains). The window is 1.5 ×
//! `handoff_every` plus the journal's [`crate::journal::FLUSH_EVERY`].
//!
//! When a batch is due is decided here without I/O ([`next_tick`], [`Outbox::is_due`]); only
//! [`Outbox::hand_off`] touches the queue.

use std::time::Duration;

use tokio::time::Instant;

use super::FeedError;
use crate::journal::{Entry, JournalSender};
use crate::record::RecordBody;

/// An outbox holding this many entries is handed off at once.
pub const MAX_ENTRIES: usize = 1024;
/// An outbox holding this many bytes of frames is handed off at once.
pub const MAX_BYTES: usize = 1 << 20;

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

/// The entries a connection has not handed to the journal yet (see the module doc).
#[derive(Debug)]
pub struct Outbox {
    entries: Vec<Entry>,
    bytes: usize,
    due: Option<Instant>,
    every: Duration,
    epoch: Instant,
}

impl Outbox {
    /// An empty outbox whose batches are due on the grid of period `every` from `epoch`.
    pub fn new(every: Duration, epoch: Instant) -> Self {
        Outbox {
            entries: Vec::new(),
            bytes: 0,
            due: None,
            every,
            epoch,
        }
    }

    /// Adds an entry received at `now`; the first of a batch sets when the batch is due.
    pub fn push(&mut self, entry: Entry, now: Instant) {
        if self.due.is_none() {
            self.due = Some(next_tick(self.epoch, self.every, now));
        }
        self.bytes += entry_bytes(&entry);
        self.entries.push(entry);
    }

    /// When the waiting batch is due: handed off at the first wake-up from then on (`None`:
    /// nothing waits).
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// When the waiting batch must be handed off even if nothing else wakes the connection: half
    /// a period after it is due (`None`: nothing waits).
    pub fn deadline(&self) -> Option<Instant> {
        self.due.map(|due| due + self.every / 2)
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
        self.is_full() || self.due.is_some_and(|due| now >= due)
    }

    /// Hands every waiting entry to the journal's queue, in order, as one batch (one wake-up of
    /// the journal thread), waiting for room: a full queue holds the connection here, and it
    /// reads nothing meanwhile. Fails only when the journal is closed.
    pub async fn hand_off(&mut self, journal: &JournalSender) -> Result<(), FeedError> {
        self.bytes = 0;
        self.due = None;
        if self.entries.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.entries);
        journal
            .send_batch(batch)
            .await
            .map_err(|_| FeedError::JournalClosed)
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

#[cfg(test)]
mod tests {
    use super::*;
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
                let mut a = Outbox::new(every * MS, epoch);
                let mut b = Outbox::new(every * MS, epoch);
                a.push(frame(1, 10), now);
                b.push(frame(1, 10), epoch + (due - 1) * MS);
                assert_eq!(a.due(), b.due(), "{what}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_entry_sets_the_due_time_and_later_ones_do_not_push_it_back() {
        let epoch = Instant::now();
        let mut outbox = Outbox::new(10 * MS, epoch);
        assert_eq!(outbox.due(), None);
        assert!(!outbox.is_due(epoch + 100 * MS), "nothing waits");
        outbox.push(frame(1, 10), epoch + 2 * MS);
        outbox.push(frame(2, 10), epoch + 9 * MS);
        outbox.push(frame(3, 10), epoch + 15 * MS);
        assert_eq!(outbox.due(), Some(epoch + 10 * MS));
        assert_eq!(
            outbox.deadline(),
            Some(epoch + 15 * MS),
            "half a period later"
        );
        assert!(!outbox.is_due(epoch + 9 * MS));
        assert!(outbox.is_due(epoch + 10 * MS));
        let mut at_once = Outbox::new(Duration::ZERO, epoch);
        at_once.push(frame(1, 10), epoch + 3 * MS);
        assert_eq!(at_once.deadline(), Some(epoch + 3 * MS), "a zero period");
        assert!(at_once.is_due(epoch + 3 * MS));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_outbox_is_due_at_once() {
        let epoch = Instant::now();
        let mut by_count = Outbox::new(Duration::from_secs(3600), epoch);
        for n in 0..MAX_ENTRIES as u64 {
            assert!(!by_count.is_due(epoch), "{n} entries");
            by_count.push(frame(n, 1), epoch);
        }
        assert!(by_count.is_due(epoch));
        let mut by_bytes = Outbox::new(Duration::from_secs(3600), epoch);
        by_bytes.push(frame(1, MAX_BYTES / 2), epoch);
        assert!(!by_bytes.is_due(epoch));
        by_bytes.push(frame(2, MAX_BYTES / 2), epoch);
        assert!(by_bytes.is_due(epoch));
    }

    /// A real journal in `dir` whose queue holds `capacity` entries.
    fn journal(
        dir: &std::path::Path,
        capacity: usize,
    ) -> (
        crate::journal::JournalHandle,
        tokio_util::sync::CancellationToken,
    ) {
        let cancel = tokio_util::sync::CancellationToken::new();
        let handle = crate::journal::spawn_journal(
            crate::journal::JournalConfig::new(dir),
            capacity,
            None,
            cancel.clone(),
        )
        .unwrap();
        (handle, cancel)
    }

    #[tokio::test]
    async fn hand_off_keeps_the_order_waits_for_room_and_empties_the_outbox() {
        let dir = tempfile::tempdir().unwrap();
        // The queue holds 4: the batch of 11 goes in as the journal makes room.
        let (handle, cancel) = journal(dir.path(), 4);
        let epoch = Instant::now();
        let mut outbox = Outbox::new(10 * MS, epoch);
        for n in 1..=10 {
            outbox.push(frame(n, 5), epoch);
        }
        outbox.push(
            Entry {
                body: RecordBody::Event(FeedEvent {
                    kind: EventKind::Disconnected,
                    symbol: None,
                    gap_start: None,
                    detail: String::new(),
                }),
                ..frame(0, 0)
            },
            epoch,
        );
        outbox.hand_off(&handle.sender).await.unwrap();
        assert!(outbox.is_empty());
        assert_eq!((outbox.bytes(), outbox.due()), (0, None));
        cancel.cancel();
        handle.join().await.unwrap();
        let mut reader = crate::journal::JournalReader::open(dir.path(), 0).unwrap();
        let mut seqs = Vec::new();
        while let Some(crate::journal::Item::Record(r)) = reader.next_owned().unwrap() {
            seqs.push(r.conn_seq);
        }
        assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0]);
    }

    #[tokio::test]
    async fn a_closed_journal_fails_the_hand_off() {
        let dir = tempfile::tempdir().unwrap();
        let (handle, cancel) = journal(dir.path(), 4);
        let sender = handle.sender.clone();
        cancel.cancel();
        handle.join().await.unwrap();
        let mut outbox = Outbox::new(10 * MS, Instant::now());
        outbox.push(frame(1, 5), Instant::now());
        assert!(matches!(
            outbox.hand_off(&sender).await,
            Err(FeedError::JournalClosed)
        ));
    }
}
