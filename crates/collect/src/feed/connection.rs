//! One WebSocket connection to Kraken: the socket and channel I/O around a [`Session`], which
//! makes every decision (see [`super`] for what must hold, [`super::session`] for the rules).
//!
//! The loop here only opens the socket (DNS, TCP, TLS and the WebSocket upgrade as separate
//! steps, so that each failure is told apart: [`ConnectError`]), hands the session every Kraken
//! frame (never a WebSocket ping or pong: those do not keep a connection alive), timers and
//! resubscribe permits, and carries out the session's actions in order. Once open, the socket is
//! read on the feed's read tick ([`super::polled`], [`super::FeedConfig::read_every`], on one
//! grid for every connection, so one wake-up of the feed's thread reads them all; with a zero
//! period, on every arrival); a read takes every frame already buffered (bounded, and read on at
//! once when the bound stopped it), each stamped as it is read; the journal entries
//! go to the feed's outbox ([`super::outbox`]), which is handed to the journal before any request
//! is sent. The futures the loop waits on are made once per connection, not per frame (the
//! watchdog's timer is moved only when it fires). Between connections it waits as long as the
//! failure's [`Pace`] asks; a connection whose books verified starts the backoff afresh.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

use super::error::{ConnectError, Lost};
use super::framing::Framing;
use super::outbox::{FeedOutbox, next_tick};
use super::polled::{self, PolledTcp};
use super::replicas::{Decision, SharedGate, Work, start_delay};
use super::session::{Action, Continuity, Received, Session};
use super::shared_books::SharedBooks;
use super::wire::Wire;
use super::{FeedConfig, FeedError, FeedShared, Pace, Reconnect};
use crate::kraken::{self, Frame, Request};
use crate::metrics::{HealthSource, Metrics};
use crate::text::printable_prefix;
use crate::time::Timestamp;

type Socket = tokio_tungstenite::WebSocketStream<Wire>;

/// A long-lived connection task: connects, subscribes, verifies and journals, and reconnects
/// when the connection is lost, until cancelled.
#[derive(Debug)]
pub struct Connection {
    index: usize,
    symbols: Vec<String>,
    shared: Arc<FeedShared>,
    /// This connection's settings: the feed's, with its replica's endpoint as `url`.
    config: FeedConfig,
    /// Which replica of its group this is, and the gate the group's replicas share (none
    /// without redundancy).
    replica: usize,
    gate: Option<Arc<SharedGate>>,
    /// The books the group's replicas share (none without redundancy).
    books: Option<Arc<SharedBooks>>,
    /// Open gaps and rejected symbols, carried from one session to the next.
    continuity: Continuity,
}

/// How a session (one WebSocket connection) ended.
enum SessionEnd {
    Cancelled,
    /// The connection could not be opened: nothing was connected, so nothing was lost.
    Unreachable(ConnectError),
    /// An open connection ended; `verified`: a book message verified on it (it recovered).
    Lost {
        why: Lost,
        up_for: Duration,
        verified: bool,
    },
    Fatal(FeedError),
}

impl Connection {
    /// Connection number `index` of the feed, for `symbols`. The symbols' metrics exist from
    /// here on (at 0), before the connection opens, so a symbol the exchange never delivers is
    /// seen on `/metrics` too.
    pub fn new(index: usize, symbols: Vec<String>, shared: Arc<FeedShared>) -> Self {
        for symbol in &symbols {
            shared.metrics.symbol(symbol);
        }
        Connection {
            index,
            symbols,
            config: shared.config.clone(),
            shared,
            replica: 0,
            gate: None,
            books: None,
            continuity: Continuity::default(),
        }
    }

    /// Replica `replica` of a group whose replicas share `gate` ([`super::replicas`]): it
    /// connects to its replica's endpoint, starts `replica ×` the stagger after replica 0, and
    /// asks the gate before each reconnect and resubscription.
    pub fn replica(mut self, replica: usize, gate: Arc<SharedGate>) -> Self {
        self.config = self.shared.config.for_replica(replica);
        self.replica = replica;
        self.gate = Some(gate);
        self
    }

    /// The group's replicas keep one book per symbol in `books` ([`super::shared_books`]).
    pub fn share_books(mut self, books: Arc<SharedBooks>) -> Self {
        self.books = Some(books);
        self
    }

    /// Waits until the gate lets this replica start `work` (at once without a gate); `false`
    /// when cancelled meanwhile.
    async fn wait_for_gate(&self, work: &Work, cancel: &CancellationToken) -> bool {
        let Some(gate) = &self.gate else {
            return true;
        };
        loop {
            let changed = gate.changed();
            match gate.try_start(self.replica, work, Instant::now()) {
                Decision::Go => return true,
                Decision::WaitUntil(at) => {
                    tracing::debug!(
                        replica = self.replica,
                        ?work,
                        "feed: waiting for another replica of the group"
                    );
                    tokio::select! {
                        _ = cancel.cancelled() => return false,
                        _ = tokio::time::sleep_until(at) => {}
                        _ = changed => {}
                    }
                }
            }
        }
    }

    /// Runs until `cancel`; returns an error only when recording became impossible.
    pub async fn run(mut self, cancel: CancellationToken) -> Result<(), FeedError> {
        let seed = 0x9e37_79b9 ^ self.index as u64 ^ ((self.replica as u64) << 32);
        let mut reconnect = Reconnect::new(&self.shared.config, seed);
        // Whether this connection reported a broken setup on /health (cleared once it connects).
        let mut broken = false;
        if self.gate.is_some() {
            let mut rng = crate::rng::Rng::derive(seed, "replica stagger");
            let first = start_delay(self.replica, self.config.replica_stagger, &mut rng);
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(first) => {}
            }
        }
        loop {
            if !self.wait_for_gate(&Work::Reconnect, &cancel).await {
                return Ok(());
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = self.shared.connect_limiter.acquire() => self.shared.note_connect(),
            }
            let conn_id = self.shared.last_conn_id.fetch_add(1, Ordering::Relaxed) + 1;
            let end = self.session(conn_id, &cancel, &mut broken).await;
            // Whatever this replica had under way ended with the connection; while it waits to
            // reconnect it holds no one (it is dark anyway: the others must not wait for it).
            if let Some(gate) = &self.gate {
                gate.finish(self.replica, &Work::Reconnect);
                gate.connection_ended(self.replica);
            }
            let delay = match end {
                SessionEnd::Cancelled => return Ok(()),
                SessionEnd::Fatal(e) => return Err(e),
                SessionEnd::Unreachable(error) => {
                    self.shared
                        .metrics
                        .connect_failures
                        .fetch_add(1, Ordering::Relaxed);
                    let pace = error.pace();
                    let delay = reconnect.delay(pace, None);
                    match pace {
                        Pace::Broken if !broken => {
                            broken = true;
                            tracing::error!(connection = conn_id, %error, retry_every = ?self.shared.config.broken_retry, "feed: cannot connect, and retrying will not help until this is fixed; /health reports it");
                            self.shared.metrics.set_problem(
                                HealthSource::Feed,
                                Some(format!("the feed cannot connect: {error}")),
                            );
                        }
                        Pace::Broken => {
                            tracing::debug!(connection = conn_id, %error, retry_in = ?delay, "feed: still cannot connect");
                        }
                        Pace::RateLimited => {
                            tracing::warn!(connection = conn_id, %error, retry_in = ?delay, "feed: rate-limited by the exchange; pausing to stay clear of a ban");
                        }
                        Pace::Normal | Pace::Prompt => {
                            tracing::warn!(connection = conn_id, %error, retry_in = ?delay, "feed: cannot connect");
                        }
                    }
                    delay
                }
                SessionEnd::Lost {
                    why,
                    up_for,
                    verified,
                } => {
                    self.shared
                        .metrics
                        .reconnects
                        .fetch_add(1, Ordering::Relaxed);
                    if verified {
                        // Books verified on it: the connection recovered, and its loss is a new
                        // failure, not one more of a series.
                        reconnect.verified();
                    }
                    let delay = reconnect.delay(why.pace(), Some(up_for));
                    tracing::warn!(connection = conn_id, reason = %why, retry_in = ?delay, "feed: connection lost");
                    delay
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn session(
        &mut self,
        conn_id: u64,
        cancel: &CancellationToken,
        broken: &mut bool,
    ) -> SessionEnd {
        let config = &self.config;
        let connect = tokio::time::timeout(config.connect_timeout, open(config));
        let mut socket = tokio::select! {
            _ = cancel.cancelled() => return SessionEnd::Cancelled,
            result = connect => match result {
                Ok(Ok(socket)) => socket,
                Ok(Err(e)) => return SessionEnd::Unreachable(e),
                Err(_) => return SessionEnd::Unreachable(ConnectError::Timeout(config.connect_timeout)),
            },
        };
        if std::mem::take(broken) {
            tracing::info!(
                connection = conn_id,
                "feed: connected again; the problem is fixed"
            );
            self.shared.metrics.set_problem(HealthSource::Feed, None);
        }
        let connected = Instant::now();
        let metrics = Arc::clone(&self.shared.metrics);
        metrics.connects.fetch_add(1, Ordering::Relaxed);
        metrics.connections_open.fetch_add(1, Ordering::Relaxed);
        let end = self.serve(conn_id, &mut socket, cancel, connected).await;
        metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
        if matches!(end, SessionEnd::Cancelled) {
            let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
        }
        end
    }

    async fn serve(
        &mut self,
        conn_id: u64,
        socket: &mut Socket,
        cancel: &CancellationToken,
        connected: Instant,
    ) -> SessionEnd {
        let shared = Arc::clone(&self.shared);
        let mut session = Session::open(
            conn_id,
            &self.symbols,
            std::mem::take(&mut self.continuity),
            &self.config,
            Arc::clone(&shared.metrics),
            Instant::now(),
            Timestamp::now(),
        );
        if let Some(books) = &self.books {
            session = session.share_books(Arc::clone(books), self.replica);
        }
        if let Some(gate) = &self.gate {
            session = session.in_group(gate.stamps());
        }
        let spare = shared.outbox.journal().spare_buffers();
        session = session.copy_frames_into(Arc::clone(spare));
        tracing::info!(connection = conn_id, replica = self.replica, url = %self.config.url, symbols = session.asked().len(), "feed: connected");
        let outbox = &shared.outbox;
        // Read on the tick (the socket out of the reactor: no wake-up per arrival), or on every
        // arrival when the period is zero or the socket cannot be taken out.
        let read_every = self.config.read_every;
        let polled = !read_every.is_zero()
            && {
                if let Err(e) = socket_tcp(socket).poll_on_tick() {
                    // The stream is gone: the first read says so and the connection ends.
                    tracing::warn!(connection = conn_id, error = %e, "feed: cannot take the socket out of the reactor");
                }
                true
            };
        // On one grid for every connection of the feed, so one wake-up reads them all: the feed
        // thread's read tick, or an interval of the connection's own.
        let mut reads = ReadClock::new(&shared, polled);
        // The last read stopped at its bound with more waiting: read on at once.
        let mut more = false;
        // What this connection read, for the feed's read pace: a connection that receives more
        // than a read period's share of its socket's buffer makes the feed read faster
        // ([`super::ticker::ReadPace`]).
        let mut meter = super::ticker::ReadMeter::new(Instant::now());
        // The once-a-second chores. Read on a tick, the connection does them (and asks the
        // session's timers) in the read tick's wake-up, with no timer of its own: a timer that
        // is not on a read tick, or that sits further ahead than the runtime's finest timer
        // level (64 ms), wakes the thread on its own. Read on arrival, they have timers.
        let second = Duration::from_secs(1);
        let mut tick =
            tokio::time::interval_at(next_tick(shared.epoch, second, Instant::now()), second);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut chores_at = next_tick(shared.epoch, second, Instant::now());
        // The futures every turn of the loop waits on are made once: a timer made per turn
        // would be registered and removed again for every frame.
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        // The watchdog is armed at the session's deadline and, when it fires, asks the session
        // (whose deadline frames have moved later meanwhile) and is armed again: one timer change
        // per silence period, not one per frame. The deadline stays the last frame's.
        let watchdog = tokio::time::sleep_until(session.deadline());
        tokio::pin!(watchdog);
        // With a gate: whether this replica's reconnect is still under way (until every symbol
        // verified), the symbols it is resubscribing, and until when the gate holds the next one.
        let gate = self.gate.clone();
        let mut reconnecting = gate.is_some();
        let mut resubscribing: Vec<String> = Vec::new();
        let mut resubscribe_held_until: Option<Instant> = None;
        let why = loop {
            // The session's actions; and when the outbox's tick has come (or it is full), this
            // wake-up hands it off, for every connection.
            match carry_out(&mut session, socket, outbox).await {
                Ok(None) => {}
                Ok(Some(why)) => break why,
                Err(e) => return SessionEnd::Fatal(e),
            }
            if let Some(gate) = &gate {
                if reconnecting && session.all_verified() {
                    reconnecting = false;
                    gate.finish(self.replica, &Work::Reconnect);
                }
                resubscribing.retain(|symbol| {
                    let done = session.is_verified(symbol);
                    if done {
                        gate.finish(self.replica, &Work::Resubscribe(symbol.clone()));
                    }
                    !done
                });
            }
            let deadline = session.deadline();
            if !polled && deadline < watchdog.deadline() {
                watchdog.as_mut().reset(deadline);
            }
            let resubscribe_now = session.wants_resubscribe()
                && resubscribe_held_until.is_none_or(|t| Instant::now() >= t);
            tokio::select! {
                _ = &mut cancelled => {
                    // Shutdown drains: what was received reaches the journal.
                    if let Err(e) = outbox.hand_off().await {
                        return SessionEnd::Fatal(e);
                    }
                    return SessionEnd::Cancelled;
                }
                _ = tick.tick(), if !polled => {
                    chores(&shared, &mut session);
                }
                _ = shared.resubscribe_limiter.acquire(), if resubscribe_now => {
                    let now = Instant::now();
                    match (&gate, session.next_resubscribe()) {
                        (Some(gate), Some(symbol)) => {
                            let work = Work::Resubscribe(symbol.to_owned());
                            match gate.try_start(self.replica, &work, now) {
                                Decision::Go => {
                                    resubscribe_held_until = None;
                                    resubscribing.push(symbol.to_owned());
                                    session.on_resubscribe_permit(now);
                                }
                                // Asked again at the next tick at the latest.
                                Decision::WaitUntil(at) => resubscribe_held_until = Some(at.min(now + Duration::from_secs(1))),
                            }
                        }
                        _ => session.on_resubscribe_permit(now),
                    }
                }
                _ = &mut watchdog, if !polled => {
                    session.on_timer(Instant::now());
                    watchdog.as_mut().reset(session.deadline());
                }
                next = socket.next(), if !polled => {
                    let at = stamp(socket, &shared.metrics);
                    if let Some(why) = received(next, &mut session, at) {
                        break why;
                    }
                    // Every frame already buffered, in this same wake-up.
                    match drain(socket, &mut session, &shared.metrics, 1) {
                        Ok(_) => {}
                        Err(why) => break why,
                    }
                }
                _ = reads.next(), if polled && !more => {
                    socket_tcp(socket).rearm();
                    meter.tick();
                    match read_on_tick(&shared, socket, &mut session, &mut meter, &mut reads, &mut chores_at) {
                        Ok(bounded) => more = bounded,
                        Err(why) => break why,
                    }
                }
                _ = std::future::ready(()), if polled && more => {
                    match read_on_tick(&shared, socket, &mut session, &mut meter, &mut reads, &mut chores_at) {
                        Ok(bounded) => more = bounded,
                        Err(why) => break why,
                    }
                }
            }
        };
        let verified = session.has_verified();
        session.close(&why, Timestamp::now());
        // Only the journal entries are left to carry out (the `disconnected` event).
        let last = std::iter::from_fn(|| session.next_action()).filter_map(|action| match action {
            Action::Journal(entry) => Some(entry),
            _ => None,
        });
        outbox.put(last, Instant::now());
        if let Err(e) = outbox.hand_off().await {
            return SessionEnd::Fatal(e);
        }
        self.continuity = session.into_continuity();
        SessionEnd::Lost {
            why,
            up_for: connected.elapsed(),
            verified,
        }
    }
}

/// The once-a-second chores: the journal queue's gauge, and the session's timers.
fn chores(shared: &FeedShared, session: &mut Session) {
    let outbox = &shared.outbox;
    let journal = outbox.journal();
    let depth = journal.max_capacity() - journal.capacity() + outbox.len();
    shared
        .metrics
        .journal_queue
        .store(depth as u64, Ordering::Relaxed);
    session.on_timer(Instant::now());
}

/// When a connection that reads on a tick reads next.
enum ReadClock {
    /// Not on a tick: never.
    Never,
    /// The feed thread's read ticks ([`super::ticker`]).
    Ticks(tokio::sync::watch::Receiver<u64>),
    /// An interval of the connection's own, on the same grid (no ticker runs), at the pace's
    /// period when it was last looked at (`every`).
    Interval {
        reads: tokio::time::Interval,
        every: Duration,
    },
}

impl ReadClock {
    fn new(shared: &FeedShared, polled: bool) -> Self {
        if !polled {
            return ReadClock::Never;
        }
        if let Some(ticks) = shared.read_ticks() {
            return ReadClock::Ticks(ticks);
        }
        let every = shared.pace.period(Instant::now());
        ReadClock::Interval {
            reads: interval_on_grid(shared.epoch, every),
            every,
        }
    }

    /// Completes at the next read tick.
    async fn next(&mut self) {
        match self {
            ReadClock::Never => std::future::pending().await,
            ReadClock::Ticks(ticks) => {
                // The sender lives in the feed's shared state, as long as this connection.
                if ticks.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            ReadClock::Interval { reads, .. } => {
                reads.tick().await;
            }
        }
    }

    /// After a read: an interval of the connection's own follows the pace (the ticker does
    /// that for the ticks it counts).
    fn follow(&mut self, shared: &FeedShared) {
        if let ReadClock::Interval { reads, every } = self {
            let want = shared.pace.period(Instant::now());
            if want != *every {
                *reads = interval_on_grid(shared.epoch, want);
                *every = want;
            }
        }
    }
}

/// An interval every `every` (at least 1 ms) on the grid from `epoch`, starting at its next
/// tick; ticks missed are skipped.
fn interval_on_grid(epoch: Instant, every: Duration) -> tokio::time::Interval {
    let every = every.max(Duration::from_millis(1));
    let mut reads = tokio::time::interval_at(next_tick(epoch, every, Instant::now()), every);
    reads.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    reads
}

/// A read on the tick (or right after one that stopped at its bound): every frame the socket
/// holds ([`drain`]), told to the feed's read pace (and the connection's own interval follows
/// it), then the chores or the session's timers. `Ok(true)`: the read stopped at its bound.
fn read_on_tick(
    shared: &FeedShared,
    socket: &mut Socket,
    session: &mut Session,
    meter: &mut super::ticker::ReadMeter,
    reads: &mut ReadClock,
    chores_at: &mut Instant,
) -> Result<bool, Lost> {
    let read = drain(socket, session, &shared.metrics, 0)?;
    shared
        .pace
        .observe(meter, read.bytes, read.bounded, Instant::now());
    reads.follow(shared);
    timers_on_read(shared, session, chores_at);
    Ok(read.bounded)
}

/// Read on a tick: the chores when their second has come, else the session's timers when due.
fn timers_on_read(shared: &FeedShared, session: &mut Session, chores_at: &mut Instant) {
    let now = Instant::now();
    if now >= *chores_at {
        *chores_at = next_tick(shared.epoch, Duration::from_secs(1), now);
        chores(shared, session);
    } else if now >= session.deadline() {
        session.on_timer(now);
    }
}

/// Frames read in one wake-up at most before the connection lets the others run.
const DRAIN_FRAMES: usize = 256;
/// Bytes of frames read in one wake-up at most (one frame more may pass it).
const DRAIN_BYTES: usize = super::outbox::MAX_BYTES;

/// Reads every frame the socket holds now, in this same wake-up, each stamped as it is read
/// (`already`: frames read just before in this wake-up). A bounded number (frames and bytes),
/// so that the outbox's bound holds and the other connections get their turn: `bounded` when
/// it stopped at the bound with more perhaps waiting; `Err(why)` when a frame ended the
/// connection.
fn drain(
    socket: &mut Socket,
    session: &mut Session,
    metrics: &Metrics,
    already: usize,
) -> Result<Drained, Lost> {
    let mut frames = already;
    let mut read = Drained::default();
    while !session.is_closing() {
        if frames >= DRAIN_FRAMES || read.bytes >= DRAIN_BYTES as u64 {
            read.bounded = true;
            return Ok(read);
        }
        let Some(next) = socket.next().now_or_never() else {
            break;
        };
        if let Some(Ok(message)) = &next {
            read.bytes += message.len() as u64;
        }
        let at = stamp(socket, metrics);
        if let Some(why) = received(next, session, at) {
            return Err(why);
        }
        frames += 1;
    }
    Ok(read)
}

/// What one [`drain`] read.
#[derive(Clone, Copy, Debug, Default)]
struct Drained {
    /// Bytes of the messages read.
    bytes: u64,
    /// It stopped at its bound, with more perhaps waiting.
    bounded: bool,
}

/// The TCP stream under a WebSocket (under TLS for `wss`).
fn socket_tcp(socket: &mut Socket) -> &mut PolledTcp {
    socket.get_mut().tcp()
}

/// When what the socket handed out last had arrived: the kernel's stamp of its last byte (see
/// [`PolledTcp::arrived`]), or now, when it was read, without one.
fn stamp(socket: &mut Socket, metrics: &Metrics) -> Timestamp {
    match socket_tcp(socket).arrived() {
        Some(at) => Timestamp::from_system_time(at),
        None => {
            metrics.stamped_on_read.fetch_add(1, Ordering::Relaxed);
            Timestamp::now()
        }
    }
}

/// Hands the session what the socket delivered, stamped `at` ([`stamp`]); `Some(why)` when it
/// ends the connection.
fn received(
    next: Option<Result<Message, tungstenite::Error>>,
    session: &mut Session,
    at: Timestamp,
) -> Option<Lost> {
    match next {
        None => Some(Lost::Eof),
        Some(Err(tungstenite::Error::Capacity(CapacityError::MessageTooLong {
            size,
            max_size,
        }))) => {
            session.on_frame_too_large(size, max_size, at);
            None
        }
        Some(Err(e)) => Some(Lost::from(e)),
        Some(Ok(Message::Text(text))) => {
            session.on_frame(Received::Text(text.as_str()), Instant::now(), at);
            None
        }
        Some(Ok(Message::Binary(data))) => {
            session.on_frame(Received::Binary(&data), Instant::now(), at);
            None
        }
        Some(Ok(Message::Close(frame))) => Some(match frame {
            Some(f) => Lost::Closed {
                code: f.code.into(),
                reason: f.reason.to_string(),
            },
            None => Lost::Eof,
        }),
        // WebSocket control frames are not Kraken frames: they never reach the session, so they
        // cannot keep a silent feed alive (tungstenite answers pings itself).
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => None,
    }
}

/// Carries out the session's actions in order: journal entries go to the outbox, and the outbox
/// is handed to the journal before any request is sent (the frames that caused it are journaled
/// first), and at the end when it is due or full. `Ok(Some(why))` when an action ends the
/// connection.
async fn carry_out(
    session: &mut Session,
    socket: &mut Socket,
    outbox: &FeedOutbox,
) -> Result<Option<Lost>, FeedError> {
    let now = Instant::now();
    loop {
        // The entries up to the next other action, put in at once.
        let mut next = None;
        let entries = std::iter::from_fn(|| match session.next_action() {
            Some(Action::Journal(entry)) => Some(entry),
            other => {
                next = other;
                None
            }
        });
        outbox.put(entries, now);
        match next {
            None => break,
            Some(Action::Journal(entry)) => outbox.put([entry], now),
            Some(Action::Send(request)) => {
                outbox.hand_off().await?;
                if let Err(e) = send(socket, &request).await {
                    return Ok(Some(e));
                }
            }
            Some(Action::Close(why)) => return Ok(Some(why)),
        }
    }
    if outbox.is_due(now) {
        outbox.hand_off().await?;
    }
    Ok(None)
}

/// WebSocket settings. Frames and messages above `max_frame_bytes` are refused by tungstenite
/// from the frame header (or as soon as a fragmented message passes the cap), so such a frame is
/// never held in memory whole. tungstenite zero-fills its read buffer's free space before every
/// read, so its 128 KiB default costs a 128 KiB memset per read; it reads [`polled::READ_CHUNK`]
/// at a time from the stream's own read-ahead buffer instead (larger frames still arrive whole:
/// its buffer grows as needed; see [`polled`]).
fn socket_config(max_frame_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(polled::READ_CHUNK)
        .max_frame_size(Some(max_frame_bytes))
        .max_message_size(Some(max_frame_bytes))
}

/// Opens a WebSocket to `config.url`, one step at a time so that each failure is told apart.
async fn open(config: &FeedConfig) -> Result<Socket, ConnectError> {
    let url = &config.url;
    let bad_url = |reason| ConnectError::Url {
        url: url.to_string(),
        reason,
    };
    if !matches!(url.scheme(), "ws" | "wss") {
        return Err(bad_url("the scheme must be ws or wss"));
    }
    let port = url
        .port_or_known_default()
        .ok_or_else(|| bad_url("no port"))?;
    let host = url.host().ok_or_else(|| bad_url("no host"))?;
    let host_text = host.to_string();
    let addrs: Vec<SocketAddr> = match host {
        url::Host::Ipv4(ip) => vec![SocketAddr::from((ip, port))],
        url::Host::Ipv6(ip) => vec![SocketAddr::from((ip, port))],
        url::Host::Domain(name) => tokio::net::lookup_host((name, port))
            .await
            .map_err(|source| ConnectError::Dns {
                host: host_text.clone(),
                source,
            })?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(ConnectError::Dns {
            host: host_text,
            source: std::io::Error::other("the name has no address"),
        });
    }
    let framing = match url.scheme() {
        "wss" => Framing::Tls,
        _ => Framing::WebSocket,
    };
    let tcp = connect(&addrs, config.arrival_stamps.then_some(framing))
        .await
        .map_err(|source| ConnectError::Tcp {
            host: host_text.clone(),
            port,
            source,
        })?;
    let wire = match framing {
        Framing::Tls => {
            // rustls takes an IPv6 address without its brackets.
            let name = host_text.trim_start_matches('[').trim_end_matches(']');
            Wire::tls(tcp, name, config.tls.clone())
                .await
                .map_err(|e| ConnectError::from_handshake(&host_text, e))?
        }
        Framing::WebSocket => Wire::Plain(tcp),
    };
    let (socket, _response) = tokio_tungstenite::client_async_with_config(
        url.as_str(),
        wire,
        Some(socket_config(config.max_frame_bytes)),
    )
    .await
    .map_err(|e| ConnectError::from_handshake(&host_text, e))?;
    Ok(socket)
}

/// Connects to the first of `addrs` that answers (the last error when none does), the
/// kernel's arrival stamps attached to the socket before it connects when `stamps` says how
/// the stream is framed. A kernel that refuses them (no `CAP_BPF`) is told once; the
/// connection then stamps frames when it reads them.
async fn connect(addrs: &[SocketAddr], stamps: Option<Framing>) -> std::io::Result<PolledTcp> {
    let mut last = None;
    for addr in addrs {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }?;
        let arrivals = stamps.and_then(|framing| {
            use std::os::fd::AsRawFd;
            match krakenbook_arrival::Arrivals::attach(socket.as_raw_fd()) {
                Ok(arrivals) => Some((arrivals, framing)),
                Err(e) => {
                    static TOLD: std::sync::Once = std::sync::Once::new();
                    TOLD.call_once(|| {
                        tracing::warn!(
                            error = %e,
                            "feed: the kernel does not record arrival times for us (it needs CAP_BPF, or root); frames are stamped when they are read, up to a read period late (--read-every)"
                        );
                    });
                    None
                }
            }
        });
        match socket.connect(*addr).await {
            Ok(tcp) => {
                return Ok(match arrivals {
                    Some((arrivals, framing)) => PolledTcp::with_arrivals(tcp, arrivals, framing),
                    None => PolledTcp::new(tcp),
                });
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address to connect to")))
}

async fn send(socket: &mut Socket, request: &Request) -> Result<(), Lost> {
    socket
        .send(Message::text(request.to_json()))
        .await
        .map_err(Lost::from)
}

/// Connects once, reads the instrument snapshot, and returns the pairs that are online. For
/// `collect --all` use [`all_pairs`], which also enforces `max_symbols`.
pub async fn fetch_pairs(url: &url::Url, timeout: Duration) -> Result<Vec<String>, FeedError> {
    let config = FeedConfig::new(url.clone(), kraken::Depth::default());
    online_pairs(&config, timeout).await
}

/// The pairs `collect --all` records: every online pair of the instrument snapshot, refused
/// (naming `--max-symbols`) when there are more than `config.max_symbols`, so that an instrument
/// list, true or not, cannot make the collector subscribe without bound.
pub async fn all_pairs(config: &FeedConfig, timeout: Duration) -> Result<Vec<String>, FeedError> {
    let pairs = online_pairs(config, timeout).await?;
    if pairs.len() > config.max_symbols {
        return Err(FeedError::TooManySymbols {
            found: pairs.len(),
            max: config.max_symbols,
        });
    }
    Ok(pairs)
}

async fn online_pairs(config: &FeedConfig, timeout: Duration) -> Result<Vec<String>, FeedError> {
    let fail = |reason: String| FeedError::Instruments {
        url: config.url.to_string(),
        reason,
    };
    let work = async {
        let mut socket = open(config).await.map_err(|e| fail(e.to_string()))?;
        send(&mut socket, &Request::subscribe_instrument(Some(1)))
            .await
            .map_err(|e| fail(e.to_string()))?;
        while let Some(message) = socket.next().await {
            let message = message.map_err(|e| fail(Lost::from(e).to_string()))?;
            let Message::Text(text) = message else {
                continue;
            };
            if let Ok(Frame::Instrument(msg)) = kraken::decode(text.as_str())
                && msg.snapshot
            {
                let (pairs, odd): (Vec<String>, Vec<String>) = msg
                    .pairs
                    .iter()
                    .filter(|p| p.is_online())
                    .map(|p| p.symbol.to_string())
                    .partition(|s| is_plausible_symbol(s));
                if let Some(example) = odd.first() {
                    tracing::warn!(
                        count = odd.len(),
                        example = %printable_prefix(example, 64),
                        "feed: the instrument list names pairs no exchange would (control characters, or over 64 characters); not subscribed"
                    );
                }
                let _ = socket.close(None).await;
                return Ok(pairs);
            }
        }
        Err(fail(
            "the connection closed before the instrument snapshot".into(),
        ))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| fail(format!("no instrument snapshot within {timeout:?}")))?
}

/// Whether a pair name from the instrument list can be a real one: Kraken's are short and
/// printable (`BTC/USD`); a name with control characters or hundreds of characters is a lie
/// that would end up in every log line and metric label.
fn is_plausible_symbol(symbol: &str) -> bool {
    !symbol.is_empty() && symbol.len() <= 64 && !symbol.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_names_no_exchange_would_use_are_not_subscribed() {
        for (name, plausible) in [
            ("BTC/USD", true),
            ("1INCH/EUR", true),
            ("'); DROP TABLE x;--", true),
            ("\u{1b}[2J", false),
            ("A/B\n", false),
            ("", false),
            (&"X".repeat(65), false),
        ] {
            assert_eq!(is_plausible_symbol(name), plausible, "{name:?}");
        }
    }

    /// Without a ticker, a connection's own interval follows the pace: on the fast grid once a
    /// connection turned busy, on the slow one again after a read period without a busy read.
    #[tokio::test(start_paused = true)]
    async fn a_connections_own_interval_follows_the_pace() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, cancel) = crate::feed::test_journal(dir.path(), 64);
        let ms = Duration::from_millis;
        let shared = super::super::test_shared(
            journal.sender.clone(),
            ms(100),
            super::super::DEFAULT_HANDOFF_EVERY,
        );
        let mut own = ReadClock::new(&shared, true);
        own.next().await;
        assert_eq!(Instant::now(), shared.epoch + ms(100));
        tokio::time::sleep(ms(3)).await;
        let mut meter = crate::feed::ticker::ReadMeter::new(Instant::now());
        shared.pace.observe(&mut meter, 0, true, Instant::now());
        own.follow(&shared);
        own.next().await;
        assert_eq!(
            Instant::now(),
            shared.epoch + ms(110),
            "the next 10 ms tick"
        );
        own.follow(&shared);
        own.next().await;
        assert_eq!(Instant::now(), shared.epoch + ms(120));
        // The busy time ends a period and a fast tick after the busy read (at 213 ms): from the
        // first read after it, the slow grid again.
        tokio::time::sleep_until(shared.epoch + ms(215)).await;
        own.follow(&shared);
        own.next().await;
        assert_eq!(Instant::now(), shared.epoch + ms(300));
        cancel.cancel();
    }

    /// A connection reading on a tick waits for the feed thread's ticker when one runs, and
    /// falls back to an interval of its own on the same grid when none does (no kernel timer
    /// could be made); one reading on arrival has no read tick at all.
    #[tokio::test(start_paused = true)]
    async fn a_connection_reads_on_the_ticker_or_on_its_own_interval_on_the_same_grid() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, cancel) = crate::feed::test_journal(dir.path(), 64);
        let step = Duration::from_millis(10);
        let shared = super::super::test_shared(
            journal.sender.clone(),
            step,
            super::super::DEFAULT_HANDOFF_EVERY,
        );
        let pending = |clock: &mut ReadClock| clock.next().now_or_never().is_none();

        // No ticker: an interval on the epoch's grid.
        tokio::time::sleep(Duration::from_millis(3)).await;
        let mut own = ReadClock::new(&shared, true);
        assert!(matches!(own, ReadClock::Interval { .. }));
        assert!(pending(&mut own), "not before the grid's next tick");
        tokio::time::sleep_until(shared.epoch + step).await;
        own.next().await;
        assert_eq!(Instant::now(), shared.epoch + step, "on the grid");

        // A ticker: the ticks it counts, and nothing else.
        shared
            .ticker_running
            .store(true, std::sync::atomic::Ordering::Release);
        let mut ticked = ReadClock::new(&shared, true);
        assert!(matches!(ticked, ReadClock::Ticks(_)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pending(&mut ticked), "no tick counted, no read");
        shared.ticks.send_modify(|n| *n += 3);
        assert!(!pending(&mut ticked), "a count that moved, one read");
        assert!(pending(&mut ticked), "and not three");

        // Reading on arrival: never a read tick.
        let mut never = ReadClock::new(&shared, false);
        assert!(matches!(never, ReadClock::Never));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(pending(&mut never));
        cancel.cancel();
        journal.join().await.unwrap();
    }

    #[test]
    fn the_socket_refuses_frames_over_the_cap_from_their_header() {
        let config = socket_config(1 << 20);
        assert_eq!(config.max_frame_size, Some(1 << 20));
        assert_eq!(config.max_message_size, Some(1 << 20));
    }
}
