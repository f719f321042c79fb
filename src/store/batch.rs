//! Batching records for the writer: flush by count, or when the oldest unflushed record has
//! waited long enough.
//!
//! The journal-tailing task pushes records into a [`Batcher`] and `select!`s on
//! [`Batcher::due`]; it flushes when [`Batcher::push`] says the batch is full or when `due`
//! fires. What must always hold: a record waits at most `max_delay` (plus the time of the write
//! in progress) before its flush begins; a batch holds at most `max_records`; a flush that fails
//! keeps the records, so the caller can stop or try again without losing them.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::StoreError;
use super::writer::{BatchReport, Writer};
use crate::record::Record;

/// When a batch is flushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// Flush when this many records are waiting.
    pub max_records: usize,
    /// Flush when the oldest waiting record has waited this long.
    pub max_delay: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_records: 2000,
            max_delay: Duration::from_millis(100),
        }
    }
}

/// Records waiting to be written.
#[derive(Debug)]
pub struct Batcher {
    config: BatchConfig,
    records: Vec<Record>,
    first_at: Option<Instant>,
}

impl Batcher {
    /// An empty batcher (a `max_records` of 0 is taken as 1).
    pub fn new(config: BatchConfig) -> Batcher {
        let config = BatchConfig {
            max_records: config.max_records.max(1),
            ..config
        };
        Batcher {
            config,
            records: Vec::with_capacity(config.max_records),
            first_at: None,
        }
    }

    /// Adds a record; `true` when the batch is now full and should be flushed.
    pub fn push(&mut self, record: Record) -> bool {
        if self.records.is_empty() {
            self.first_at = Some(Instant::now());
        }
        self.records.push(record);
        self.is_full()
    }

    /// Whether `max_records` are waiting.
    pub fn is_full(&self) -> bool {
        self.records.len() >= self.config.max_records
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// How many records are waiting.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// The records waiting, oldest first.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// When the waiting records must be flushed (`None`: nothing waits).
    pub fn deadline(&self) -> Option<Instant> {
        self.first_at.map(|t| t + self.config.max_delay)
    }

    /// Whether the deadline has passed.
    pub fn is_due(&self) -> bool {
        self.deadline().is_some_and(|d| Instant::now() >= d)
    }

    /// Completes at the deadline; never, while nothing waits. It does not borrow the batcher, so
    /// it can sit in a `select!` next to a branch that pushes.
    pub fn due(&self) -> impl Future<Output = ()> + Send + 'static {
        let deadline = self.deadline();
        async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        }
    }

    /// Forgets the waiting records (after the caller wrote them itself).
    pub fn clear(&mut self) {
        self.records.clear();
        self.first_at = None;
    }

    /// Writes the waiting records as one batch and forgets them; on error they stay.
    pub async fn flush(&mut self, writer: &mut Writer) -> Result<Option<BatchReport>, StoreError> {
        if self.records.is_empty() {
            return Ok(None);
        }
        let report = writer.write_batch(&self.records).await?;
        self.clear();
        Ok(Some(report))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{EventKind, FeedEvent, RecordBody};
    use crate::time::Timestamp;
    use futures_util::FutureExt;

    fn record(seq: u64) -> Record {
        Record {
            seq,
            received_at: Timestamp::from_unix_nanos(0),
            conn_id: 1,
            conn_seq: 0,
            body: RecordBody::Event(FeedEvent {
                kind: EventKind::Connected,
                symbol: None,
                gap_start: None,
                detail: String::new(),
            }),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_is_due_max_delay_after_its_first_record() {
        let mut b = Batcher::new(BatchConfig {
            max_records: 10,
            max_delay: Duration::from_millis(100),
        });
        assert_eq!(b.deadline(), None);
        let start = Instant::now();
        assert!(!b.push(record(1)));
        tokio::time::advance(Duration::from_millis(60)).await;
        assert!(!b.push(record(2)));
        // The deadline is the first record's, not the latest's.
        assert_eq!(b.deadline(), Some(start + Duration::from_millis(100)));
        tokio::time::advance(Duration::from_millis(39)).await;
        assert!(!b.is_due());
        let due = b.due();
        tokio::pin!(due);
        assert!(due.as_mut().now_or_never().is_none());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(b.is_due());
        assert!(due.as_mut().now_or_never().is_some());
        b.clear();
        assert_eq!(b.deadline(), None);
        assert!(!b.is_due());
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_batcher_is_never_due() {
        let b = Batcher::new(BatchConfig::default());
        let due = b.due();
        tokio::pin!(due);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(due.as_mut().now_or_never().is_none());
    }

    #[test]
    fn a_batch_is_full_at_max_records() {
        let mut b = Batcher::new(BatchConfig {
            max_records: 3,
            max_delay: Duration::from_secs(1),
        });
        assert!(!b.push(record(1)));
        assert!(!b.push(record(2)));
        assert!(b.push(record(3)));
        assert_eq!(b.len(), 3);
        assert_eq!(
            b.records().iter().map(|r| r.seq).collect::<Vec<_>>(),
            [1, 2, 3]
        );
    }
}
