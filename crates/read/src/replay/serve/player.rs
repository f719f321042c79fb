//! One connection's replay: its subscriptions merged in recorded time.
//!
//! A [`Player`] owns the connection's subscriptions. Each one knows its next *event*: its next
//! recorded message, the gap that ends its stream (the instant the gap began), or the end of its
//! record. The player takes the earliest event of all (recorded time, then `seq`), waits until it
//! is due at speed > 0, and acts on it:
//! - a message: the frame its subscriber is sent, if the window changed (or, for a subscription
//!   waiting for a gap to end, its snapshot once a new recorded stream verified);
//! - a gap in any subscription: the connection is dropped, after the frames queued before it;
//! - the end of a subscription's record: it is done; when every subscription is done, the
//!   connection is closed with code 1000 and [`END_OF_RECORDING`].
//!
//! Requests are taken between events, and a subscription joins at the connection's position (the
//! first one fixes it; at speed > 0 a connection with nothing to serve joins the clock): frames
//! stay in time order across the connection's symbols, snapshots included (a snapshot's book is
//! the book at the join, no later than any frame after it).

use std::sync::Arc;

use tokio::sync::mpsc;

use super::emit::{Emitter, Sending};
use super::record::{GapSource, Record};
use super::{END_OF_RECORDING, Shared};
use crate::book::Precision;
use crate::exchange::market::{BookFrame, BookSink, Ending, SubId};
use crate::kraken::{BookKind, encode};
use crate::readback::{BookCursor, ReadbackError};
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
    /// Read the next recorded message.
    Message,
    /// The subscription's recorded stream breaks here: drop the connection.
    Gap,
    /// The record ends here.
    End,
}

/// What acting on an event gave.
enum Outcome {
    /// Nothing to send.
    Nothing,
    /// This frame to the subscriber.
    Frame(Arc<BookFrame>),
    /// Drop the connection: the recorded stream broke here (recorded time).
    Drop(Timestamp),
    /// The subscription is done.
    Done,
}

enum State {
    /// Serving: the subscriber's window.
    Live(Emitter),
    /// Subscribed while its symbol was in a gap: waiting for the next verified snapshot.
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
    /// `None` when nothing is recorded from the join on.
    record: Option<(Record, GapSource)>,
    /// Where the record ends for this subscription.
    end: Timestamp,
    state: State,
    last_received: Timestamp,
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
            let outcome = self.subs[i].act(event).await?;
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
        let collector = shared
            .symbols
            .get(symbol)
            .map(|r| r.collector.clone())
            .or_else(|| source.collector.clone())
            .unwrap_or_default();
        let to = source.to.unwrap_or(Timestamp::from_unix_nanos(i64::MAX));
        let client = shared.target.connect("krakenbook replay").await?;
        let mut sub = Subscription {
            symbol: symbol.into(),
            sub: sink.sub(),
            sink,
            depth,
            snapshot,
            precision: Precision::default(),
            record: None,
            end: to,
            state: State::Done,
            last_received: at,
            last_timestamp: at,
            last_checksum: 0,
        };
        // The stream the instant lies in, else the first one after it.
        let (start, waiting) =
            match BookCursor::find_start(&client, symbol, at, Some(&collector)).await? {
                Some(start) => (start, false),
                None => {
                    match BookCursor::find_first_start(&client, symbol, at, to, &collector).await? {
                        Some(start) => (start, true),
                        None => return Ok((sub, None)),
                    }
                }
            };
        let gaps = GapSource::load(&client, &collector, symbol, start.received_at).await?;
        if let Some(end) = gaps.record_end(symbol) {
            sub.end = sub.end.min(end);
        }
        let mut record = Record::open(&shared.target, client, symbol, start, to).await?;
        sub.last_received = record.start().received_at;
        sub.last_timestamp = record.start().timestamp;
        if !waiting {
            while record.peek().await?.is_some_and(|(t, _)| t <= at) {
                if let Some((timestamp, received)) = record.skip().await? {
                    sub.last_timestamp = timestamp;
                    sub.last_received = received;
                }
            }
        }
        let (book, synced) = record.book();
        sub.precision = book.precision();
        // Known at `at`: synced, and not lost since its last message.
        let known = !waiting && synced && gaps.lost_after(symbol, sub.last_received, at).is_none();
        let mut frame = None;
        if at >= sub.end {
            sub.state = State::Done;
        } else if known && book.depth() >= depth {
            let emitter = Emitter::new(book, depth);
            sub.last_checksum = book.checksum();
            if snapshot {
                frame = Some(sub.frame(BookKind::Snapshot, &emitter.window(), true));
            }
            sub.state = State::Live(emitter);
        } else {
            sub.state = State::Waiting;
        }
        sub.record = Some((record, gaps));
        Ok((sub, frame))
    }

    /// The subscription's next event, `None` when it is done.
    async fn next_event(&mut self) -> Result<Option<Event>, ReadbackError> {
        if matches!(self.state, State::Done) {
            return Ok(None);
        }
        let Some((record, gaps)) = self.record.as_mut() else {
            return Ok(None);
        };
        let Some((at, seq)) = record.peek().await? else {
            return Ok(Some(Event {
                at: self.end.max(self.last_timestamp),
                seq: i64::MAX,
                kind: EventKind::End,
            }));
        };
        // A gap before the next message ends a live stream when the gap begins (the exact check,
        // on the message's receipt time, is made when it is read).
        if matches!(self.state, State::Live(_))
            && let Some(gap) = gaps.lost_after(&self.symbol, self.last_received, at)
        {
            return Ok(Some(Event {
                at: gap.max(self.last_timestamp),
                seq,
                kind: EventKind::Gap,
            }));
        }
        Ok(Some(Event {
            at,
            seq,
            kind: EventKind::Message,
        }))
    }

    /// Acts on this subscription's event.
    async fn act(&mut self, event: Event) -> Result<Outcome, ReadbackError> {
        match event.kind {
            EventKind::Gap => return Ok(Outcome::Drop(event.at)),
            EventKind::End => {
                self.state = State::Done;
                return Ok(Outcome::Done);
            }
            EventKind::Message => {}
        }
        let Some((record, gaps)) = self.record.as_mut() else {
            return Ok(Outcome::Nothing);
        };
        let Some(m) = record.next().await? else {
            return Ok(Outcome::Nothing);
        };
        // The gap, if one began after the last message and before this one (a gap that begins
        // with this message's receipt begins after it: it was the last of its stream).
        let gap = gaps.lost_after(
            &self.symbol,
            self.last_received,
            m.received_at.add_nanos(-1),
        );
        let verified = m.verified == Some(true);
        let checksum = m.book.checksum();
        let (timestamp, received) = (m.timestamp, m.received_at);
        let state = std::mem::replace(&mut self.state, State::Done);
        let (state, outcome) = match state {
            State::Live(mut emitter) => {
                if m.snapshot || !verified || gap.is_some() {
                    // The recorded stream broke: Kraken would have dropped the connection.
                    let at = gap.map_or(timestamp, |g| g.max(timestamp));
                    (State::Live(emitter), Outcome::Drop(at))
                } else {
                    let sending = emitter.message(&m.bids, &m.asks, m.book);
                    let outcome = if sending.is_empty() {
                        Outcome::Nothing
                    } else {
                        let changed = checksum != self.last_checksum;
                        self.last_checksum = checksum;
                        Outcome::Frame(frame(
                            &self.symbol,
                            BookKind::Update,
                            &sending,
                            self.precision,
                            checksum,
                            timestamp,
                            changed,
                        ))
                    };
                    (State::Live(emitter), outcome)
                }
            }
            State::Waiting if m.snapshot && verified => {
                // A new recorded stream: the gap is over.
                self.precision = m.book.precision();
                if m.book.depth() < self.depth {
                    tracing::warn!(symbol = %self.symbol, recorded = m.book.depth(), asked = self.depth,
                        "replay: the record goes on at a smaller depth than subscribed; nothing more to serve");
                    (State::Done, Outcome::Nothing)
                } else {
                    let emitter = Emitter::new(m.book, self.depth);
                    self.last_checksum = checksum;
                    let outcome = if self.snapshot {
                        Outcome::Frame(frame(
                            &self.symbol,
                            BookKind::Snapshot,
                            &emitter.window(),
                            self.precision,
                            checksum,
                            timestamp,
                            true,
                        ))
                    } else {
                        Outcome::Nothing
                    };
                    (State::Live(emitter), outcome)
                }
            }
            other => (other, Outcome::Nothing),
        };
        self.state = state;
        self.last_received = received;
        self.last_timestamp = self.last_timestamp.max(timestamp);
        Ok(outcome)
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
