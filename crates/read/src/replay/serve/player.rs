//! One connection's replay: its subscriptions merged in recorded time, each following its
//! symbol's merged history.
//!
//! A subscription follows the segments of its symbol's merged history from the instant it joins
//! ([`timeline`], the walk the incremental export makes): over each segment one stream (a
//! connection of a collector) verified throughout, the one the coverage model's `choose` gives
//! where the segment starts. Each subscription knows its next *event*: its next recorded message
//! on the stream followed, the end of the segment it follows, the start of the next segment while
//! it waits in a gap, or the end of its record. The player takes the earliest event of all
//! (recorded time, then `seq`), waits until it is due at speed > 0, and acts on it:
//! - a message: the frame its subscriber is sent, if the window changed;
//! - a segment's end where another segment starts at once (another stream verified there, or the
//!   same stream's next span: a *switch*): the subscription goes on with that stream's book at
//!   that instant ([`on_switch`]): nothing is sent when it agrees with what the client holds
//!   (its window and Kraken's checksum), so a client cannot tell; else a snapshot of the new
//!   book, which every Kraken client applies as a fresh start (an update made up to turn one
//!   book into the other would report changes Kraken never sent). A snapshot recorded inside a
//!   span (a resubscription that healed at once) is served by the same rule;
//! - a segment's end where none starts (a *union gap*: every stream of the symbol dark), a
//!   message the cursor does not verify, or a segment that cannot be opened: the connection is
//!   dropped, after the frames queued before it;
//! - the start of the next segment for a subscription that joined in a gap: its snapshot;
//! - the end of a subscription's record: it is done; when every subscription is done, the
//!   connection is closed with code 1000 and [`END_OF_RECORDING`].
//!
//! Requests are taken between events, and a subscription joins at the connection's position (the
//! first one fixes it; at speed > 0 a connection with nothing to serve joins the clock): frames
//! stay in time order across the connection's symbols, snapshots included (a snapshot's book is
//! the book at the join, no later than any frame after it).

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::emit::{Emitter, Sending};
use super::record::Record;
use super::{END_OF_RECORDING, Shared};
use crate::book::Precision;
use crate::exchange::market::{BookFrame, BookSink, Ending, SubId};
use crate::export::incremental::{Segment, timeline};
use crate::kraken::{BookKind, encode};
use crate::readback::ReadbackError;
use crate::time::Timestamp;

/// A request of the connection, passed on by the market.
#[derive(Debug)]
pub(super) enum Command {
    /// Serve `symbol` at `depth` into `sink`.
    Subscribe {
        symbol: String,
        depth: usize,
        snapshot: bool,
        sink: BookSink,
    },
    /// Stop serving subscription `sub`.
    Unsubscribe { sub: SubId },
}

/// What a subscription does next, and when (recorded time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Event {
    at: Timestamp,
    seq: i64,
    kind: EventKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EventKind {
    /// Read the next recorded message of the segment followed.
    Message,
    /// The segment followed ends here.
    SegmentEnd,
    /// The next segment starts here (the subscription waits in a gap).
    SegmentStart,
    /// The record ends here.
    End,
}

/// What acting on an event gave.
enum Outcome {
    /// Nothing to send.
    Nothing,
    /// This frame to the subscriber.
    Frame(Arc<BookFrame>),
    /// Drop the connection: the recorded history broke here (recorded time).
    Drop(Timestamp),
    /// The subscription is done.
    Done,
}

/// What a segment's end leads to (no I/O).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SegmentEnds {
    /// Another segment starts at that instant: the subscription goes on with it.
    Switch,
    /// A union gap: no stream is verified at that instant.
    Gap,
    /// The end of the record served.
    End,
}

/// Where `current` ends, given the segment after it.
fn segment_ends(current: &Segment, next: Option<&Segment>) -> SegmentEnds {
    match next {
        Some(n) if n.start == current.end => SegmentEnds::Switch,
        _ if current.gap_after => SegmentEnds::Gap,
        // The timeline marks a gap wherever no segment starts at a segment's end before its
        // `to`; a later segment without a gap before it cannot be.
        Some(_) => SegmentEnds::Gap,
        None => SegmentEnds::End,
    }
}

/// What the client is sent where the book it follows starts over from another book (a switch
/// of stream, a snapshot recorded inside a span), no I/O.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Switch {
    /// The new book shows the client what it holds (the window at its depth, and Kraken's
    /// checksum): nothing; the client cannot tell.
    Unseen,
    /// The books differ: a snapshot of the new window.
    Snapshot(Sending),
}

/// What the client holding `held`'s window with `held_checksum` is sent when it goes on with
/// `next`'s book, whose checksum is `next_checksum`.
fn on_switch(held: &Emitter, held_checksum: u32, next: &Emitter, next_checksum: u32) -> Switch {
    let window = next.window();
    if held.window() == window && held_checksum == next_checksum {
        Switch::Unseen
    } else {
        Switch::Snapshot(window)
    }
}

/// A segment being served: the stream's record and the subscriber's window.
struct Following {
    segment: Segment,
    record: Record,
    emitter: Emitter,
}

enum State {
    /// Serving a segment.
    Live(Box<Following>),
    /// In a gap: waiting for the next segment.
    Waiting,
    /// Nothing more will come.
    Done,
}

/// One subscription of the connection.
struct Subscription {
    symbol: Arc<str>,
    sub: SubId,
    sink: BookSink,
    depth: usize,
    snapshot: bool,
    precision: Precision,
    /// The segments to come, in time order.
    segments: VecDeque<Segment>,
    /// Where the record ends for this subscription.
    end: Timestamp,
    state: State,
    last_timestamp: Timestamp,
    last_checksum: u32,
}

/// One connection's replay.
pub(super) struct Player {
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    subs: Vec<Subscription>,
    /// The recorded instant of the last event acted on.
    position: Option<Timestamp>,
}

impl Player {
    pub(super) fn new(shared: Arc<Shared>, commands: mpsc::Receiver<Command>) -> Self {
        Player {
            shared,
            commands,
            subs: Vec::new(),
            position: None,
        }
    }

    /// Serves the connection until it ends (the task is cancelled when the connection closes).
    pub(super) async fn run(mut self) {
        if let Err(e) = self.serve().await {
            tracing::warn!(error = %e, "replay: reading the record failed; dropping the connection");
            if let Some(s) = self.subs.first() {
                let _ = s.sink.end(Ending::Drop).await;
            }
        }
    }

    async fn serve(&mut self) -> Result<(), ReadbackError> {
        loop {
            // Requests first: a subscription joins at the position reached so far.
            while let Ok(command) = self.commands.try_recv() {
                self.handle(command).await?;
            }
            if self.subs.is_empty() {
                match self.commands.recv().await {
                    Some(command) => self.handle(command).await?,
                    None => return Ok(()),
                }
                continue;
            }
            if self.subs.iter().all(|s| matches!(s.state, State::Done)) {
                let _ = self.subs[0].sink.end(Ending::Close(END_OF_RECORDING)).await;
                return Ok(());
            }
            let mut next: Option<(usize, Event)> = None;
            for (i, s) in self.subs.iter_mut().enumerate() {
                if let Some(e) = s.next_event().await?
                    && next.is_none_or(|(_, n)| (e.at, e.seq) < (n.at, n.seq))
                {
                    next = Some((i, e));
                }
            }
            let Some((i, event)) = next else {
                continue;
            };
            if self.shared.source.speed > 0.0 {
                tokio::select! {
                    command = self.commands.recv() => {
                        match command {
                            Some(command) => self.handle(command).await?,
                            None => return Ok(()),
                        }
                        continue;
                    }
                    () = tokio::time::sleep_until(self.shared.due(event.at)) => {}
                }
            }
            let outcome = self.subs[i].act(&self.shared, event).await?;
            match outcome {
                Outcome::Nothing | Outcome::Done => self.reach(event.at),
                Outcome::Frame(frame) => {
                    self.reach(event.at);
                    if self.subs[i].sink.send_waiting(&frame).await.is_err() {
                        return Ok(());
                    }
                }
                Outcome::Drop(at) => {
                    // A client connecting again goes on from the gap.
                    self.reach(at.max(event.at));
                    let _ = self.subs[i].sink.end(Ending::Drop).await;
                    return Ok(());
                }
            }
        }
    }

    fn reach(&mut self, at: Timestamp) {
        let at = self.position.map_or(at, |p| p.max(at));
        self.position = Some(at);
        self.shared.reach(at);
    }

    async fn handle(&mut self, command: Command) -> Result<(), ReadbackError> {
        match command {
            Command::Unsubscribe { sub } => self.subs.retain(|s| s.sub != sub),
            Command::Subscribe {
                symbol,
                depth,
                snapshot,
                sink,
            } => {
                // Every subscription of a connection joins at the connection's position, fixed
                // by its first one: a join reads the database, and the clock moves meanwhile, so
                // joins each at the clock would send one symbol's snapshot of a later book before
                // another symbol's updates of earlier instants. A connection with nothing to
                // serve at speed > 0 joins the clock.
                let at = match self.position {
                    Some(p) if self.shared.source.speed == 0.0 || !self.subs.is_empty() => p,
                    _ => self.shared.clock(),
                };
                let (sub, snapshot_frame) =
                    Subscription::join(&self.shared, &symbol, depth, snapshot, sink, at).await?;
                if let Some(frame) = snapshot_frame {
                    let _ = sub.sink.send_waiting(&frame).await;
                }
                self.subs.push(sub);
                self.reach(at);
            }
        }
        Ok(())
    }
}

impl Subscription {
    /// A subscription joining at recorded instant `at`, and its snapshot when the book is known
    /// there (and one was asked for).
    async fn join(
        shared: &Shared,
        symbol: &str,
        depth: usize,
        snapshot: bool,
        sink: BookSink,
        at: Timestamp,
    ) -> Result<(Subscription, Option<Arc<BookFrame>>), ReadbackError> {
        let source = &shared.source;
        let client = shared.target.connect("krakenbook replay").await?;
        // Every collector's streams, or the one named.
        let coverage =
            crate::source::coverage_of(&client, source.collector.as_deref(), symbol).await?;
        drop(client);
        // The record ends at `--to`, or where its last connection's last frame was received.
        let end = match (source.to, coverage.record_end()) {
            (Some(to), Some(last)) => to.add_nanos(1).min(last),
            (_, last) => last.unwrap_or(at),
        };
        let mut sub = Subscription {
            symbol: symbol.into(),
            sub: sink.sub(),
            sink,
            depth,
            snapshot,
            precision: Precision::default(),
            segments: timeline(&coverage, at, end).into(),
            end,
            state: State::Waiting,
            last_timestamp: at,
            last_checksum: 0,
        };
        if at >= end {
            sub.state = State::Done;
            return Ok((sub, None));
        }
        // Verified at the join: its segment starts there.
        if sub.segments.front().is_some_and(|s| s.start == at)
            && let Some(segment) = sub.segments.pop_front()
            && let Some(frame) = sub.open(shared, segment).await?
        {
            return Ok((sub, Some(frame)));
        }
        Ok((sub, None))
    }

    /// Starts serving `segment` from its start (the join, or where a gap ends): the book there,
    /// as a snapshot if one was asked for. A segment that cannot be served (the cursor does not
    /// verify the book there, or it is shallower than subscribed) is skipped: the subscription
    /// waits for the next.
    async fn open(
        &mut self,
        shared: &Shared,
        segment: Segment,
    ) -> Result<Option<Arc<BookFrame>>, ReadbackError> {
        let Some((record, emitter)) = self.begin(shared, &segment, segment.start).await? else {
            self.state = State::Waiting;
            return Ok(None);
        };
        let book = record.book();
        self.precision = book.precision();
        self.last_checksum = book.checksum();
        self.last_timestamp = record.last_timestamp();
        let frame = self
            .snapshot
            .then(|| self.frame(BookKind::Snapshot, &emitter.window(), true));
        self.state = State::Live(Box::new(Following {
            segment,
            record,
            emitter,
        }));
        Ok(frame)
    }

    /// `segment`'s record opened at `at` and the subscriber's window of its book there; `None`
    /// when it cannot be served.
    async fn begin(
        &self,
        shared: &Shared,
        segment: &Segment,
        at: Timestamp,
    ) -> Result<Option<(Record, Emitter)>, ReadbackError> {
        let Some(record) = Record::open(&shared.target, &self.symbol, segment, at).await? else {
            tracing::warn!(symbol = %self.symbol, stream = %segment.stream, %at,
                "replay: the record does not verify the book where the coverage model does; skipping that stretch");
            return Ok(None);
        };
        let book = record.book();
        if book.depth() < self.depth {
            tracing::warn!(symbol = %self.symbol, stream = %segment.stream, recorded = book.depth(),
                asked = self.depth, "replay: this stream was recorded at a smaller depth than subscribed");
            return Ok(None);
        }
        let emitter = Emitter::new(book, self.depth);
        Ok(Some((record, emitter)))
    }

    /// The subscription's next event, `None` when it is done.
    async fn next_event(&mut self) -> Result<Option<Event>, ReadbackError> {
        match &mut self.state {
            State::Done => Ok(None),
            State::Live(f) => Ok(Some(match f.record.peek().await? {
                Some((at, seq)) => Event {
                    at,
                    seq,
                    kind: EventKind::Message,
                },
                None => Event {
                    at: f.segment.end.max(self.last_timestamp),
                    seq: i64::MAX,
                    kind: EventKind::SegmentEnd,
                },
            })),
            State::Waiting => Ok(Some(match self.segments.front() {
                Some(next) => Event {
                    at: next.start,
                    seq: i64::MIN,
                    kind: EventKind::SegmentStart,
                },
                None => Event {
                    at: self.end.max(self.last_timestamp),
                    seq: i64::MAX,
                    kind: EventKind::End,
                },
            })),
        }
    }

    /// Acts on this subscription's event.
    async fn act(&mut self, shared: &Shared, event: Event) -> Result<Outcome, ReadbackError> {
        match event.kind {
            EventKind::End => {
                self.state = State::Done;
                Ok(Outcome::Done)
            }
            EventKind::SegmentStart => {
                let Some(segment) = self.segments.pop_front() else {
                    return Ok(Outcome::Nothing);
                };
                Ok(match self.open(shared, segment).await? {
                    Some(frame) => Outcome::Frame(frame),
                    None => Outcome::Nothing,
                })
            }
            EventKind::SegmentEnd => self.segment_end(shared).await,
            EventKind::Message => self.message().await,
        }
    }

    /// The segment followed ends: a switch, a union gap, or the end.
    async fn segment_end(&mut self, shared: &Shared) -> Result<Outcome, ReadbackError> {
        let State::Live(following) = std::mem::replace(&mut self.state, State::Waiting) else {
            return Ok(Outcome::Nothing);
        };
        let Following {
            segment, emitter, ..
        } = *following;
        match segment_ends(&segment, self.segments.front()) {
            SegmentEnds::End => {
                self.state = State::Done;
                Ok(Outcome::Done)
            }
            SegmentEnds::Gap => Ok(Outcome::Drop(segment.end)),
            SegmentEnds::Switch => {
                let Some(next) = self.segments.pop_front() else {
                    return Ok(Outcome::Drop(segment.end));
                };
                let at = next.start;
                let Some((record, fresh)) = self.begin(shared, &next, at).await? else {
                    return Ok(Outcome::Drop(at));
                };
                let book = record.book();
                let checksum = book.checksum();
                let outcome = match on_switch(&emitter, self.last_checksum, &fresh, checksum) {
                    Switch::Unseen => Outcome::Nothing,
                    Switch::Snapshot(window) => {
                        self.precision = book.precision();
                        self.last_checksum = checksum;
                        self.last_timestamp = record.last_timestamp();
                        Outcome::Frame(self.frame(BookKind::Snapshot, &window, true))
                    }
                };
                tracing::debug!(symbol = %self.symbol, from = %segment.stream, to = %next.stream, %at,
                    snapshot = matches!(outcome, Outcome::Frame(_)), "replay: the stream followed changes");
                self.state = State::Live(Box::new(Following {
                    segment: next,
                    record,
                    emitter: fresh,
                }));
                Ok(outcome)
            }
        }
    }

    /// The next recorded message of the segment followed.
    async fn message(&mut self) -> Result<Outcome, ReadbackError> {
        let State::Live(following) = &mut self.state else {
            return Ok(Outcome::Nothing);
        };
        let Following {
            segment,
            record,
            emitter,
        } = &mut **following;
        let Some(m) = record.next().await? else {
            return Ok(Outcome::Nothing);
        };
        let checksum = m.book.checksum();
        let timestamp = m.timestamp;
        if m.verified != Some(true) {
            // The cursor does not verify what the coverage model does: the book is not known.
            tracing::warn!(symbol = %self.symbol, stream = %segment.stream, %timestamp,
                "replay: a message inside a verified span does not verify; dropping the connection");
            return Ok(Outcome::Drop(timestamp));
        }
        let outcome = if m.snapshot {
            // A snapshot inside the span: the book starts over from it.
            let fresh = Emitter::new(m.book, self.depth);
            let outcome = match on_switch(emitter, self.last_checksum, &fresh, checksum) {
                Switch::Unseen => None,
                Switch::Snapshot(window) => Some(window),
            };
            *emitter = fresh;
            outcome.map(|window| (BookKind::Snapshot, window))
        } else {
            let sending = emitter.message(&m.bids, &m.asks, m.book);
            (!sending.is_empty()).then_some((BookKind::Update, sending))
        };
        self.last_timestamp = self.last_timestamp.max(timestamp);
        Ok(match outcome {
            None => {
                self.last_checksum = checksum;
                Outcome::Nothing
            }
            Some((kind, sending)) => {
                let changed = kind == BookKind::Snapshot || checksum != self.last_checksum;
                self.last_checksum = checksum;
                Outcome::Frame(frame(
                    &self.symbol,
                    kind,
                    &sending,
                    self.precision,
                    checksum,
                    timestamp,
                    changed,
                ))
            }
        })
    }

    fn frame(&self, kind: BookKind, sending: &Sending, changed: bool) -> Arc<BookFrame> {
        frame(
            &self.symbol,
            kind,
            sending,
            self.precision,
            self.last_checksum,
            self.last_timestamp,
            changed,
        )
    }
}

/// One encoded book frame.
fn frame(
    symbol: &Arc<str>,
    kind: BookKind,
    sending: &Sending,
    precision: Precision,
    checksum: u32,
    timestamp: Timestamp,
    checksum_changed: bool,
) -> Arc<BookFrame> {
    let text = encode::book(
        kind,
        symbol,
        sending.bids.iter().copied(),
        sending.asks.iter().copied(),
        precision,
        checksum,
        timestamp,
    );
    Arc::new(BookFrame {
        symbol: Arc::clone(symbol),
        kind,
        checksum,
        checksum_changed,
        text: text.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::{Decimal, OrderBook};
    use crate::export::incremental::Segment;
    use crate::history::StreamId;

    fn t(seconds: i64) -> Timestamp {
        Timestamp::from_unix_nanos(1_700_000_000_000_000_000 + seconds * 1_000_000_000)
    }

    fn segment(collector: &str, start: i64, end: i64, gap_after: bool) -> Segment {
        Segment {
            stream: StreamId {
                collector: collector.into(),
                conn_id: 1,
            },
            start: t(start),
            end: t(end),
            start_seq: 1,
            last_seq: 100,
            gap_after,
            rank: 0,
            after: (Timestamp::from_unix_nanos(0), 0, 100),
        }
    }

    #[test]
    fn a_segment_ends_in_a_switch_only_where_the_next_starts_at_once() {
        let a = segment("A", 0, 10, false);
        let cases = [
            (
                a.clone(),
                Some(segment("B", 10, 20, false)),
                SegmentEnds::Switch,
                "another collector verified where A stops",
            ),
            (
                segment("A", 0, 10, true),
                Some(segment("B", 12, 20, false)),
                SegmentEnds::Gap,
                "every stream dark from 10 to 12: a union gap",
            ),
            (
                segment("A", 0, 10, true),
                None,
                SegmentEnds::Gap,
                "a gap up to the end of the record",
            ),
            (a, None, SegmentEnds::End, "the end of the record"),
        ];
        for (current, next, want, what) in cases {
            assert_eq!(segment_ends(&current, next.as_ref()), want, "{what}");
        }
    }

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).unwrap()
    }

    /// A book at depth 25 with `levels` bids from 100 down and asks from 101 up, quantity 1,
    /// except the changes given as (bid, rank, quantity).
    fn book(levels: usize, changes: &[(bool, usize, &str)]) -> OrderBook {
        let side = |bid: bool| -> Vec<(Decimal, Decimal)> {
            (0..levels)
                .map(|i| {
                    let price = if bid { 100 - i as i64 } else { 101 + i as i64 };
                    let qty = changes
                        .iter()
                        .find(|c| c.0 == bid && c.1 == i)
                        .map_or("1", |c| c.2);
                    (d(&format!("{price}.0")), d(qty))
                })
                .collect()
        };
        let mut b = OrderBook::new(25);
        b.apply_snapshot(side(true), side(false)).unwrap();
        b
    }

    #[test]
    fn a_switch_is_unseen_only_when_the_window_and_the_checksum_agree() {
        let held = book(12, &[]);
        // (depth served, the other stream's book, a snapshot expected, what it covers)
        let cases = [
            (
                10,
                book(12, &[]),
                false,
                "the same book on the other stream",
            ),
            (
                10,
                book(12, &[(true, 11, "7")]),
                false,
                "a level below the window and below the checksum's top ten differs",
            ),
            (
                10,
                book(12, &[(false, 3, "2")]),
                true,
                "a level inside the window differs",
            ),
            (
                2,
                book(12, &[(true, 5, "2")]),
                true,
                "the window at depth 2 agrees, the checksum (top ten) does not",
            ),
            (
                10,
                book(11, &[]),
                false,
                "the other stream holds fewer levels, all below the window",
            ),
        ];
        for (depth, other, snapshot, what) in cases {
            let from = Emitter::new(&held, depth);
            let to = Emitter::new(&other, depth);
            match on_switch(&from, held.checksum(), &to, other.checksum()) {
                Switch::Unseen => assert!(!snapshot, "{what}"),
                Switch::Snapshot(window) => {
                    assert!(snapshot, "{what}");
                    assert_eq!(window, to.window(), "{what}: the other stream's window");
                    assert_eq!(window.bids.len(), depth, "{what}");
                }
            }
        }
    }
}
