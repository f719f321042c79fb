//! Batching journal items for the writer: flush by count or by size, or when the oldest waiting
//! record was received long enough ago, "long enough" depending on how fast records come.
//!
//! The journal-tailing task pushes items (records, and damage: records found missing) into a
//! [`Batcher`] and `select!`s on
//! [`Batcher::due`]; it flushes when [`Batcher::push`] says the batch is full or when `due`
//! fires. What must always hold: a batch holds at most `max_records` records and about
//! `max_bytes` journal bytes; its flush begins at most `max_delay` after its oldest record was
//! *received* (plus the time of the write in progress), and at most `max_delay` after the batch
//! opened on the monotonic clock (a wall clock set back cannot hold it); a flush that fails
//! keeps the records, so the caller can stop or try again without losing them.
//!
//! The delay counts from receipt, not from when the record joined the batch: records that queued
//! up in the journal while the previous batch was committing are already late, and go out as
//! soon as that commit is done rather than another `max_delay` later.
//!
//! The delay adapts to the rate ([`pace`], no I/O): each commit costs about the same whatever it
//! carries (round trips, a durable commit, the journal's fsync), so a slow feed waits longer for
//! its batch to gather `fill` records, never longer than `max_delay`; a fast one gathers them
//! sooner and waits `min_delay`. The rate is the one the previous batch's receive times show
//! (a batch flushed on its own delay then sets the next one's). The trade: at a few hundred
//! messages a second, a record reaches the database up to `max_delay` after its receipt instead
//! of `min_delay`, for a fraction of the commits.

use std::future::Future;
use std::time::Duration;

use super::StoreError;
use super::writer::{BatchReport, Writer};
use crate::journal::{Item, Syncer, encoded_len};
use crate::record::{Record, RecordBody};
use crate::time::Timestamp;

/// When a batch is flushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// Flush when this many records are waiting.
    pub max_records: usize,
    /// Flush when the waiting records take this many journal bytes: a burst of depth-1000
    /// snapshots (60 KB and 2000 rows each) must not become one huge batch.
    pub max_bytes: u64,
    /// Flush at the latest when the oldest waiting record was received this long ago (the
    /// longest a record waits for its batch, besides the write before it).
    pub max_delay: Duration,
    /// Flush at the earliest this long after the oldest waiting record was received, unless the
    /// batch is full (taken as `max_delay` when longer).
    pub min_delay: Duration,
    /// Records a commit should carry: the delay is the time the feed takes to send this many, at
    /// the rate the previous batch showed, between `min_delay` and `max_delay` (0 or 1: always
    /// `min_delay`).
    pub fill: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            // Under a backlog (catching up after an outage, a burst) batches fill to these;
            // the writer's cost is almost all per batch (a durable commit, the checkpoint row),
            // so 10,000 BTC/USD updates (about 2.7 MB of journal) store at 0.8 of plain COPY's
            // rate where 2,000 managed 0.65-0.7 (`krakenbook-bench ingest`, README). A live feed's
            // batches close by time long before.
            max_records: 10_000,
            max_bytes: 4 << 20,
            max_delay: Duration::from_millis(100),
            min_delay: Duration::from_millis(50),
            fill: 256,
        }
    }
}

/// The delay of the next batch (no I/O): the time `fill` records take at the rate a batch of
/// `records` records received over `span` showed (its first to its last receipt), between
/// `min_delay` and `max_delay`. With fewer than two records there is no rate: the feed is slow,
/// `max_delay`.
pub fn pace(config: &BatchConfig, records: usize, span: Duration) -> Duration {
    let max = config.max_delay;
    let min = config.min_delay.min(max);
    if config.fill <= 1 {
        return min;
    }
    if records < 2 {
        return max;
    }
    let intervals = (records - 1) as u128;
    let wanted = span.as_nanos().saturating_mul(config.fill as u128 - 1) / intervals;
    let wanted = Duration::from_nanos(u64::try_from(wanted).unwrap_or(u64::MAX));
    wanted.clamp(min, max)
}

/// The instant on the monotonic clock (the one timers sleep on) of the wall time `at`, `now`
/// being the wall time now: `now` itself when `at` has passed.
pub fn instant_at(at: Timestamp, now: Timestamp) -> tokio::time::Instant {
    tokio::time::Instant::now()
        + Duration::from_nanos(u64::try_from(at.nanos_since(now)).unwrap_or(0))
}

/// Items waiting to be written.
#[derive(Debug)]
pub struct Batcher {
    config: BatchConfig,
    records: Vec<Item>,
    bytes: u64,
    /// The current batch's delay ([`pace`] of the previous batch).
    delay: Duration,
    /// When the first waiting item was pushed, on the monotonic clock: the batch is due
    /// `delay` after it at the latest, whatever the receive times say (a wall clock set back an
    /// hour after a record was stamped would otherwise hold its batch an hour).
    opened: Option<tokio::time::Instant>,
    /// Frame buffers of the records cleared, kept for the caller to hand back to its journal
    /// reader ([`Batcher::recycle_frames`]); `None`: freed with their records.
    spent: Option<Vec<Vec<u8>>>,
}

impl Batcher {
    /// An empty batcher (a `max_records` or `max_bytes` of 0 is taken as 1).
    pub fn new(config: BatchConfig) -> Batcher {
        let config = BatchConfig {
            max_records: config.max_records.max(1),
            max_bytes: config.max_bytes.max(1),
            ..config
        };
        Batcher {
            config,
            records: Vec::with_capacity(config.max_records),
            bytes: 0,
            delay: config.max_delay,
            opened: None,
            spent: None,
        }
    }

    /// From now on, [`Batcher::clear`] keeps the frame buffers of the records it forgets (at
    /// most `max_records` of them) for [`Batcher::spent_frames`] to hand out, instead of freeing
    /// them: a journal reader fills them again ([`crate::journal::JournalReader::recycle`]),
    /// where each record read back would otherwise cost an allocation and each batch's end as
    /// many frees.
    pub fn recycle_frames(&mut self) {
        self.spent.get_or_insert_with(Vec::new);
    }

    /// The frame buffers kept since the last call (see [`Batcher::recycle_frames`]).
    pub fn spent_frames(&mut self) -> impl Iterator<Item = Vec<u8>> + '_ {
        self.spent.iter_mut().flat_map(|spent| spent.drain(..))
    }

    /// Adds an item; `true` when the batch is now full and should be flushed.
    pub fn push(&mut self, item: Item) -> bool {
        if let Item::Record(record) = &item {
            self.bytes += encoded_len(record);
        }
        if self.records.is_empty() {
            self.opened = Some(tokio::time::Instant::now());
        }
        self.records.push(item);
        self.is_full()
    }

    /// Whether `max_records` records or `max_bytes` bytes are waiting.
    pub fn is_full(&self) -> bool {
        self.records.len() >= self.config.max_records || self.bytes >= self.config.max_bytes
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// How many items are waiting.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// The journal bytes of the waiting records ([`encoded_len`] of each).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The items waiting, oldest first.
    pub fn items(&self) -> &[Item] {
        &self.records
    }

    /// The current batch's delay (see [`pace`]; `max_delay` until a batch has been flushed).
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// When the waiting items must be flushed: [`Batcher::delay`] after the oldest record's
    /// receipt, or at once when damage leads the batch (`None`: nothing waits).
    pub fn deadline(&self) -> Option<Timestamp> {
        let delay = i64::try_from(self.delay.as_nanos()).unwrap_or(i64::MAX);
        self.records.first().map(|item| match item {
            Item::Record(r) => r.received_at.add_nanos(delay),
            Item::Damage(_) => Timestamp::from_unix_nanos(0),
        })
    }

    /// The deadline on the monotonic clock, `now` being the current time ([`instant_at`]), and
    /// never later than [`Batcher::delay`] after the batch's first item was pushed (records are
    /// pushed after their receipt, so this bound only matters when the wall clock went back).
    pub fn due_at(&self, now: Timestamp) -> Option<tokio::time::Instant> {
        let by_receipt = instant_at(self.deadline()?, now);
        Some(match self.opened {
            Some(opened) => by_receipt.min(opened + self.delay),
            None => by_receipt,
        })
    }

    /// Whether the waiting items must be flushed now, `now` being the current time
    /// ([`Batcher::due_at`] has come).
    pub fn is_due(&self, now: Timestamp) -> bool {
        self.due_at(now)
            .is_some_and(|at| at <= tokio::time::Instant::now())
    }

    /// Completes at the deadline, `now` being the current time (at once if it has passed; never
    /// while nothing waits). It does not borrow the batcher, so it can sit in a `select!` next to
    /// a branch that pushes.
    pub fn due(&self, now: Timestamp) -> impl Future<Output = ()> + Send + 'static {
        let until = self.due_at(now);
        async move {
            match until {
                Some(until) => tokio::time::sleep_until(until).await,
                None => std::future::pending().await,
            }
        }
    }

    /// The delay the waiting records' receive times call for ([`pace`]).
    fn next_delay(&self) -> Duration {
        let mut received = self.records.iter().filter_map(|i| match i {
            Item::Record(r) => Some(r.received_at),
            Item::Damage(_) => None,
        });
        let first = received.next();
        let (n, last) = received.fold((usize::from(first.is_some()), first), |(n, _), at| {
            (n + 1, Some(at))
        });
        let span = match (first, last) {
            (Some(a), Some(b)) => u64::try_from(b.nanos_since(a)).unwrap_or(0),
            _ => 0,
        };
        pace(&self.config, n, Duration::from_nanos(span))
    }

    /// Forgets the waiting records (after the caller wrote them itself); the next batch's delay
    /// follows the rate their receive times show ([`pace`]).
    pub fn clear(&mut self) {
        if !self.records.is_empty() {
            self.delay = self.next_delay();
        }
        match &mut self.spent {
            Some(spent) => {
                let room = self.config.max_records.saturating_sub(spent.len());
                spent.extend(
                    self.records
                        .drain(..)
                        .filter_map(|item| match item {
                            Item::Record(Record {
                                body: RecordBody::Frame(frame),
                                ..
                            }) => Some(frame.bytes),
                            _ => None,
                        })
                        .take(room),
                );
            }
            None => self.records.clear(),
        }
        self.bytes = 0;
        self.opened = None;
    }

    /// Writes the waiting items as one batch (committed only once `sync` says the journal has
    /// synced them, when given) and forgets them; on error they stay.
    pub async fn flush(
        &mut self,
        writer: &mut Writer,
        sync: Option<&mut Syncer>,
    ) -> Result<Option<BatchReport>, StoreError> {
        if self.records.is_empty() {
            return Ok(None);
        }
        let report = writer.write(&self.records, sync).await?;
        self.clear();
        Ok(Some(report))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{EventKind, FeedEvent, Record, RecordBody};
    use crate::time::Timestamp;
    use futures_util::FutureExt;

    fn record(seq: u64) -> Item {
        record_at(seq, Timestamp::from_unix_nanos(0))
    }

    fn record_at(seq: u64, received_at: Timestamp) -> Item {
        Item::Record(Record {
            seq,
            received_at,
            conn_id: 1,
            conn_seq: 0,
            body: RecordBody::Event(FeedEvent {
                kind: EventKind::Connected,
                symbol: None,
                gap_start: None,
                detail: String::new(),
            }),
        })
    }

    fn frame(seq: u64, bytes: &[u8]) -> Item {
        Item::Record(Record {
            seq,
            received_at: Timestamp::from_unix_nanos(0),
            conn_id: 1,
            conn_seq: seq,
            body: RecordBody::Frame(crate::record::FrameRecord {
                bytes: bytes.to_vec(),
                checksum_ok: None,
                best_bid: None,
                best_ask: None,
            }),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_cleared_batch_hands_back_its_frames_buffers_only_when_asked_and_at_most_a_batch() {
        let config = BatchConfig {
            max_records: 3,
            ..BatchConfig::default()
        };
        // Not asked: nothing kept.
        let mut plain = Batcher::new(config);
        plain.push(frame(1, b"a"));
        plain.clear();
        assert_eq!(plain.spent_frames().count(), 0);

        let mut b = Batcher::new(config);
        b.recycle_frames();
        b.push(frame(1, b"one"));
        b.push(record(2));
        b.push(frame(3, b"three"));
        b.clear();
        assert!(b.is_empty());
        assert_eq!(b.bytes(), 0);
        // The frames' bytes, not the event's; then nothing until the next clear.
        let spent: Vec<Vec<u8>> = b.spent_frames().collect();
        assert_eq!(spent, [b"one".to_vec(), b"three".to_vec()]);
        assert_eq!(b.spent_frames().count(), 0);
        // Batches cleared without anyone taking their buffers keep one batch's worth.
        for round in 0..4 {
            for i in 0..3 {
                b.push(frame(round * 3 + i, b"x"));
            }
            b.clear();
        }
        assert_eq!(b.spent_frames().count(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_is_due_max_delay_after_its_first_record_was_received() {
        let mut b = Batcher::new(BatchConfig {
            max_records: 10,
            max_delay: Duration::from_millis(100),
            ..BatchConfig::default()
        });
        assert_eq!(b.deadline(), None);
        let received = Timestamp::from_unix_nanos(1_700_000_000_000_000_000);
        assert!(!b.push(record_at(1, received)));
        let now = received.add_nanos(60_000_000);
        assert!(!b.push(record_at(2, now)));
        // The deadline is the first record's, not the latest's.
        assert_eq!(b.deadline(), Some(received.add_nanos(100_000_000)));
        // Already waited 60 ms: due 40 ms from now.
        let due = b.due(now);
        tokio::pin!(due);
        tokio::time::advance(Duration::from_millis(39)).await;
        assert!(due.as_mut().now_or_never().is_none());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(due.as_mut().now_or_never().is_some());
        // A record that queued up past its deadline is due at once.
        assert!(
            b.due(received.add_nanos(500_000_000))
                .now_or_never()
                .is_some()
        );
        b.clear();
        assert_eq!(b.deadline(), None);
        assert_eq!(b.bytes(), 0);
    }

    /// The wall clock set back an hour after a record was stamped (its receive time now lies
    /// an hour ahead): its batch is still due `delay` after it was opened, not an hour later.
    #[tokio::test(start_paused = true)]
    async fn a_wall_clock_set_back_does_not_hold_a_batch() {
        let mut b = Batcher::new(BatchConfig {
            max_records: 10,
            max_delay: Duration::from_millis(100),
            ..BatchConfig::default()
        });
        let stamped = Timestamp::from_unix_nanos(1_700_000_000_000_000_000);
        let now = stamped.add_nanos(-3_600_000_000_000);
        let opened = tokio::time::Instant::now();
        assert!(!b.push(record_at(1, stamped)));
        assert_eq!(b.due_at(now), Some(opened + Duration::from_millis(100)));
        assert!(!b.is_due(now));
        let due = b.due(now);
        tokio::pin!(due);
        tokio::time::advance(Duration::from_millis(99)).await;
        assert!(due.as_mut().now_or_never().is_none());
        assert!(!b.is_due(now));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(due.as_mut().now_or_never().is_some());
        assert!(
            b.is_due(now),
            "due by the monotonic bound, whatever the wall clock says"
        );
        // A later record does not reopen the batch; a cleared one is never due.
        assert!(!b.push(record_at(2, stamped)));
        assert_eq!(b.due_at(now), Some(opened + Duration::from_millis(100)));
        b.clear();
        assert!(!b.is_due(now));
        assert_eq!(b.due_at(now), None);
        // The normal case is unchanged: receipt plus delay (50 ms now: the two records came at
        // once), before the monotonic bound.
        assert_eq!(b.delay(), Duration::from_millis(50));
        assert!(!b.push(record_at(3, now.add_nanos(-10_000_000))));
        assert_eq!(
            b.due_at(now),
            Some(tokio::time::Instant::now() + Duration::from_millis(40))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_batcher_is_never_due() {
        let b = Batcher::new(BatchConfig::default());
        let due = b.due(Timestamp::now());
        tokio::pin!(due);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(due.as_mut().now_or_never().is_none());
    }

    /// The delay follows the rate: the time `fill` records take, between the two bounds.
    #[test]
    fn the_delay_is_the_time_fill_records_take_between_min_and_max_delay() {
        let config = BatchConfig {
            max_delay: Duration::from_millis(250),
            min_delay: Duration::from_millis(50),
            fill: 101,
            ..BatchConfig::default()
        };
        let ms = Duration::from_millis;
        // (records, span of their receipts, delay, what it covers)
        let cases = [
            (0, ms(0), ms(250), "no rate yet: a slow feed"),
            (1, ms(0), ms(250), "one record: no rate"),
            (2, ms(1), ms(100), "1 ms apart: 100 intervals take 100 ms"),
            (11, ms(10), ms(100), "10 intervals in 10 ms"),
            (11, ms(20), ms(200), "half the rate, twice the delay"),
            (11, ms(100), ms(250), "slow: capped at max_delay"),
            (101, ms(1), ms(50), "fast: at least min_delay"),
            (5, ms(0), ms(50), "received at once (a burst): min_delay"),
            (2, Duration::from_secs(u64::MAX / 4), ms(250), "no overflow"),
        ];
        for (records, span, delay, what) in cases {
            assert_eq!(pace(&config, records, span), delay, "{what}");
        }
        // A bound given below the floor wins; a fill of 1 never waits beyond the floor.
        let tight = BatchConfig {
            max_delay: ms(20),
            ..config
        };
        assert_eq!(pace(&tight, 11, ms(100)), ms(20));
        assert_eq!(pace(&tight, 101, ms(1)), ms(20));
        let eager = BatchConfig { fill: 1, ..config };
        assert_eq!(pace(&eager, 1, ms(0)), ms(50));
    }

    /// A slow feed's batches wait up to `max_delay`; once a batch shows a fast feed, the next one
    /// is due sooner; an empty batcher keeps its pace.
    #[test]
    fn the_next_batch_is_due_at_the_pace_the_last_one_showed() {
        let mut b = Batcher::new(BatchConfig {
            max_records: 1000,
            max_delay: Duration::from_millis(250),
            min_delay: Duration::from_millis(50),
            fill: 101,
            ..BatchConfig::default()
        });
        let t0 = Timestamp::from_unix_nanos(1_700_000_000_000_000_000);
        assert_eq!(b.delay(), Duration::from_millis(250), "no rate yet");
        // 51 records 1 ms apart: 1000 a second, 101 take 100 ms.
        for i in 0..51 {
            b.push(record_at(i + 1, t0.add_nanos(i as i64 * 1_000_000)));
        }
        assert_eq!(b.deadline(), Some(t0.add_nanos(250_000_000)));
        b.clear();
        assert_eq!(b.delay(), Duration::from_millis(100));
        b.clear();
        assert_eq!(
            b.delay(),
            Duration::from_millis(100),
            "nothing seen, nothing learnt"
        );
        let t1 = t0.add_nanos(1_000_000_000);
        b.push(record_at(100, t1));
        assert_eq!(b.deadline(), Some(t1.add_nanos(100_000_000)));
        // Damage holds no receipt: one record alone shows no rate, the feed is slow again.
        b.push(Item::Damage(crate::journal::Damage {
            kind: crate::journal::DamageKind::Corrupt,
            segment: "x".into(),
            offset: 0,
            bytes: 0,
            first_seq: 101,
            last_seq: 101,
            before: None,
            after: None,
        }));
        b.clear();
        assert_eq!(b.delay(), Duration::from_millis(250));
    }

    #[test]
    fn a_batch_is_full_at_max_bytes() {
        let Item::Record(r) = record(1) else {
            unreachable!()
        };
        let one = encoded_len(&r);
        let mut b = Batcher::new(BatchConfig {
            max_records: 100,
            max_bytes: 2 * one + 1,
            ..BatchConfig::default()
        });
        assert!(!b.push(record(1)));
        assert!(!b.push(record(2)));
        assert_eq!(b.bytes(), 2 * one);
        assert!(b.push(record(3)));
        assert_eq!(b.bytes(), 3 * one);
    }

    #[test]
    fn a_batch_is_full_at_max_records() {
        let mut b = Batcher::new(BatchConfig {
            max_records: 3,
            max_delay: Duration::from_secs(1),
            ..BatchConfig::default()
        });
        assert!(!b.push(record(1)));
        assert!(!b.push(record(2)));
        assert!(b.push(record(3)));
        assert_eq!(b.len(), 3);
        let seqs: Vec<u64> = b
            .items()
            .iter()
            .map(|i| match i {
                Item::Record(r) => r.seq,
                Item::Damage(d) => d.first_seq,
            })
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
    }
}
