//! One WebSocket connection to Kraken and the books of its symbols (see [`super`] for what must
//! hold).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use super::{Backoff, FeedError, FeedShared};
use crate::book::{FrameVerdict, Tracker, Verdict};
use crate::journal::Entry;
use crate::kraken::{self, BookKind, Frame, Request};
use crate::metrics::SymbolMetrics;
use crate::record::{BookState, EventKind, FeedEvent, FrameRecord, RecordBody};
use crate::time::Timestamp;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A long-lived connection task: connects, subscribes, verifies and journals, and reconnects
/// with backoff when the connection is lost, until cancelled.
#[derive(Debug)]
pub struct Connection {
    index: usize,
    symbols: Vec<String>,
    shared: Arc<FeedShared>,
    /// Symbols whose gap is open across reconnects: symbol → when the gap began.
    gaps: HashMap<String, Timestamp>,
    /// Symbols the exchange rejected: not asked for again.
    rejected: HashSet<String>,
}

/// How a session (one WebSocket connection) ended.
enum SessionEnd {
    Cancelled,
    /// The connection could not be opened: nothing was connected, so nothing was lost.
    Unreachable(String),
    /// An open connection ended.
    Lost {
        reason: String,
        at: Timestamp,
        up_for: Duration,
    },
    Fatal(FeedError),
}

impl Connection {
    /// Connection number `index` of the feed, for `symbols`.
    pub fn new(index: usize, symbols: Vec<String>, shared: Arc<FeedShared>) -> Self {
        Connection {
            index,
            symbols,
            shared,
            gaps: HashMap::new(),
            rejected: HashSet::new(),
        }
    }

    /// Runs until `cancel`; returns an error only when recording became impossible.
    pub async fn run(mut self, cancel: CancellationToken) -> Result<(), FeedError> {
        let config = self.shared.config.clone();
        let mut backoff = Backoff::new(
            config.backoff_base,
            config.backoff_max,
            0x9e37_79b9 ^ self.index as u64,
        );
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = self.shared.connect_limiter.acquire() => {}
            }
            let conn_id = self.shared.last_conn_id.fetch_add(1, Ordering::Relaxed) + 1;
            match self.session(conn_id, &cancel).await {
                SessionEnd::Cancelled => return Ok(()),
                SessionEnd::Fatal(e) => return Err(e),
                SessionEnd::Unreachable(reason) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(connection = conn_id, %reason, retry_in = ?delay, "feed: cannot connect");
                    self.shared
                        .metrics
                        .connect_failures
                        .fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                SessionEnd::Lost { reason, at, up_for } => {
                    if up_for >= config.healthy_after {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(connection = conn_id, %reason, retry_in = ?delay, "feed: connection lost");
                    self.event(conn_id, at, EventKind::Disconnected, None, None, reason)
                        .await?;
                    self.shared
                        .metrics
                        .reconnects
                        .fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn journal(&self, entry: Entry) -> Result<(), FeedError> {
        self.shared
            .journal
            .send(entry)
            .await
            .map_err(|_| FeedError::JournalClosed)
    }

    async fn event(
        &self,
        conn_id: u64,
        at: Timestamp,
        kind: EventKind,
        symbol: Option<&str>,
        gap_start: Option<Timestamp>,
        detail: String,
    ) -> Result<(), FeedError> {
        self.journal(Entry {
            received_at: at,
            conn_id,
            conn_seq: 0,
            body: RecordBody::Event(event(kind, symbol, gap_start, detail)),
        })
        .await
    }

    async fn session(&mut self, conn_id: u64, cancel: &CancellationToken) -> SessionEnd {
        let config = self.shared.config.clone();
        let url = config.url.as_str().to_owned();
        let connect = tokio::time::timeout(
            config.connect_timeout,
            tokio_tungstenite::connect_async_with_config(
                url.as_str(),
                Some(socket_config()),
                false,
            ),
        );
        let mut socket = tokio::select! {
            _ = cancel.cancelled() => return SessionEnd::Cancelled,
            result = connect => match result {
                Ok(Ok((socket, _response))) => socket,
                Ok(Err(e)) => return SessionEnd::Unreachable(format!("cannot connect to {url}: {e}")),
                Err(_) => return SessionEnd::Unreachable(format!("cannot connect to {url}: no answer within {:?}", config.connect_timeout)),
            },
        };
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
        let config = self.shared.config.clone();
        let now = Timestamp::now();
        if let Err(e) = self
            .event(
                conn_id,
                now,
                EventKind::Connected,
                None,
                None,
                config.url.to_string(),
            )
            .await
        {
            return SessionEnd::Fatal(e);
        }
        tracing::info!(connection = conn_id, url = %config.url, symbols = self.symbols.len(), "feed: connected");
        let mut s = Session {
            conn_id,
            conn_seq: 0,
            tracker: Tracker::new(config.depth.levels()),
            symbols: HashMap::new(),
            pending_resubscribe: VecDeque::new(),
            books_requested: false,
            instrument_deadline: Instant::now() + config.instrument_timeout,
            req_id: 0,
            last_frame: now,
        };
        for symbol in self.symbols.iter().filter(|s| !self.rejected.contains(*s)) {
            s.symbols.insert(
                symbol.clone(),
                SymbolState::new(self.shared.metrics.symbol(symbol)),
            );
        }
        if let Err(reason) = send(
            socket,
            &Request::subscribe_instrument(Some(s.next_req_id())),
        )
        .await
        {
            return self.end_lost(&s, reason, connected);
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_frame = Instant::now();
        loop {
            if !s.books_requested && Instant::now() >= s.instrument_deadline {
                tracing::warn!(
                    connection = conn_id,
                    "feed: no instrument snapshot in time; precision comes from the wire text"
                );
                if let Err(reason) = self.subscribe_books(&mut s, socket).await {
                    return self.end_lost(&s, reason, connected);
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return SessionEnd::Cancelled,
                _ = tick.tick() => {
                    let depth = self.shared.journal.max_capacity() - self.shared.journal.capacity();
                    self.shared.metrics.journal_queue.store(depth as u64, Ordering::Relaxed);
                    s.queue_stale_resubscribes(config.resubscribe_retry);
                }
                _ = self.shared.resubscribe_limiter.acquire(), if !s.pending_resubscribe.is_empty() => {
                    if let Some(symbol) = s.pending_resubscribe.pop_front()
                        && let Err(reason) = self.resubscribe(&mut s, socket, &symbol).await
                    {
                        return self.end_lost(&s, reason, connected);
                    }
                }
                // The silence deadline is fixed by the last frame, not by this loop turn: the other
                // branches (the tick, resubscriptions) must not push it back.
                _ = tokio::time::sleep_until(last_frame + config.silence_timeout) => {
                    return self.end_lost(&s, format!("no frame for {:?} (heartbeats included)", config.silence_timeout), connected);
                }
                next = socket.next() => {
                    let message = match next {
                        None => return self.end_lost(&s, "the server closed the connection".into(), connected),
                        Some(Err(e)) => return self.end_lost(&s, format!("connection error: {e}"), connected),
                        Some(Ok(message)) => message,
                    };
                    last_frame = Instant::now();
                    let received_at = Timestamp::now();
                    let payload = match message {
                        Message::Text(text) => Payload::Text(text),
                        Message::Binary(data) => Payload::Binary(data),
                        Message::Close(frame) => {
                            let why = frame.map(|f| format!("{} {}", f.code, f.reason)).unwrap_or_default();
                            return self.end_lost(&s, format!("the server closed the connection ({why})"), connected);
                        }
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                    };
                    s.last_frame = received_at;
                    match self.on_frame(&mut s, socket, received_at, payload).await {
                        Ok(()) => {}
                        Err(FrameError::Fatal(e)) => return SessionEnd::Fatal(e),
                        Err(FrameError::Lost(reason)) => return self.end_lost(&s, reason, connected),
                    }
                }
            }
        }
    }

    /// Ends a session. Each symbol whose book was live has a gap from the last frame the
    /// connection delivered (the book is known up to there, not up to when the loss was noticed);
    /// a symbol already in a gap keeps its gap's start.
    fn end_lost(&mut self, s: &Session, reason: String, connected: Instant) -> SessionEnd {
        for (symbol, state) in &s.symbols {
            if let Some(start) = state.gap_start {
                self.gaps.entry(symbol.clone()).or_insert(start);
            } else if state.ever_synced {
                self.gaps.entry(symbol.clone()).or_insert(s.last_frame);
            }
        }
        SessionEnd::Lost {
            reason,
            at: Timestamp::now(),
            up_for: connected.elapsed(),
        }
    }

    async fn subscribe_books(
        &mut self,
        s: &mut Session,
        socket: &mut Socket,
    ) -> Result<(), String> {
        s.books_requested = true;
        let symbols: Vec<String> = self
            .symbols
            .iter()
            .filter(|x| !self.rejected.contains(*x))
            .cloned()
            .collect();
        for chunk in symbols.chunks(50) {
            let request = Request::subscribe_book(
                chunk,
                self.shared.config.depth,
                true,
                Some(s.next_req_id()),
            );
            send(socket, &request).await?;
        }
        Ok(())
    }

    async fn resubscribe(
        &mut self,
        s: &mut Session,
        socket: &mut Socket,
        symbol: &str,
    ) -> Result<(), String> {
        let depth = self.shared.config.depth;
        let one = [symbol.to_owned()];
        send(
            socket,
            &Request::unsubscribe_book(&one, depth, Some(s.next_req_id())),
        )
        .await?;
        send(
            socket,
            &Request::subscribe_book(&one, depth, true, Some(s.next_req_id())),
        )
        .await?;
        if let Some(state) = s.symbols.get_mut(symbol) {
            state.resubscribed_at = Some(Instant::now());
            state.metrics.resubscribes.fetch_add(1, Ordering::Relaxed);
        }
        tracing::info!(
            connection = s.conn_id,
            symbol,
            "feed: resubscribed after a checksum mismatch"
        );
        Ok(())
    }

    async fn on_frame(
        &mut self,
        s: &mut Session,
        socket: &mut Socket,
        received_at: Timestamp,
        payload: Payload,
    ) -> Result<(), FrameError> {
        s.conn_seq += 1;
        let metrics = Arc::clone(&self.shared.metrics);
        metrics.frames.fetch_add(1, Ordering::Relaxed);
        metrics
            .bytes
            .fetch_add(payload.bytes().len() as u64, Ordering::Relaxed);
        let mut record = FrameRecord {
            bytes: Vec::new(),
            checksum_ok: None,
            best_bid: None,
            best_ask: None,
        };
        let mut events: Vec<FeedEvent> = Vec::new();
        let mut states: Vec<BookState> = Vec::new();
        let mut subscribe_books = false;
        let decoded = payload
            .text()
            .and_then(|t| kraken::decode(t).map_err(|e| e.to_string()));
        // Acks set depths, instrument frames precisions; book frames go through `apply` below.
        if let Ok(frame) = &decoded
            && !matches!(frame, Frame::Book(_))
        {
            s.tracker.observe(frame);
        }
        match decoded {
            Err(error) => {
                metrics.malformed_frames.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(connection = s.conn_id, frame = s.conn_seq, %error, "feed: frame does not decode; journaled as received");
                events.push(event(EventKind::MalformedFrame, None, None, error));
            }
            Ok(Frame::Book(msg)) => {
                let conn_id = s.conn_id;
                let mut folded = FrameVerdict::default();
                let mut resubscribe = Vec::new();
                let state_every = self.shared.config.book_state_every.max(1);
                for data in &msg.data {
                    let verdict = s.tracker.apply(msg.kind, data);
                    folded.add(verdict);
                    let symbol = data.symbol.as_ref();
                    let state = symbol_state(&mut s.symbols, symbol, &metrics);
                    state.metrics.book_messages.fetch_add(1, Ordering::Relaxed);
                    match verdict {
                        Verdict::Ok => {
                            state.metrics.checksum_ok.fetch_add(1, Ordering::Relaxed);
                            state.ever_synced = true;
                            if msg.kind == BookKind::Snapshot {
                                state.since_state = 0;
                            } else {
                                state.since_state += 1;
                                if state.since_state >= state_every {
                                    state.since_state = 0;
                                    if let Some(book) = s.tracker.book(symbol) {
                                        let view = book.view(book.depth());
                                        states.push(BookState {
                                            symbol: symbol.to_owned(),
                                            depth: u16::try_from(book.depth()).unwrap_or(u16::MAX),
                                            precision: book.precision(),
                                            checksum: data.checksum,
                                            timestamp: data.timestamp.unwrap_or(received_at),
                                            bids: view.bids,
                                            asks: view.asks,
                                        });
                                    }
                                }
                            }
                            let gap = state.gap_start.take().or_else(|| self.gaps.remove(symbol));
                            if let Some(start) = gap {
                                state.metrics.resyncs.fetch_add(1, Ordering::Relaxed);
                                state.resubscribed_at = None;
                                events.push(event(
                                    EventKind::Resynced,
                                    Some(symbol),
                                    Some(start),
                                    String::new(),
                                ));
                                tracing::info!(connection = conn_id, symbol, gap_start = %start, "feed: book verified again");
                            }
                        }
                        Verdict::Mismatch { expected, computed } => {
                            state
                                .metrics
                                .checksum_mismatch
                                .fetch_add(1, Ordering::Relaxed);
                            let kind = if msg.kind == BookKind::Snapshot {
                                "snapshot"
                            } else {
                                "update"
                            };
                            tracing::warn!(
                                connection = conn_id,
                                symbol,
                                expected,
                                computed,
                                kind,
                                "feed: checksum mismatch; resubscribing"
                            );
                            if state.gap_start.is_none() {
                                state.gap_start =
                                    Some(self.gaps.remove(symbol).unwrap_or(received_at));
                            }
                            events.push(event(
                                EventKind::ChecksumMismatch,
                                Some(symbol),
                                None,
                                format!("{kind} checksum {expected}, computed {computed}"),
                            ));
                            if state.resubscribed_at.is_none() {
                                resubscribe.push(symbol.to_owned());
                            }
                        }
                        Verdict::Unsynced => {
                            state.metrics.unverifiable.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                for symbol in resubscribe {
                    if !s.pending_resubscribe.contains(&symbol) {
                        s.pending_resubscribe.push_back(symbol);
                    }
                }
                record.checksum_ok = folded.checksum_ok();
                if let Some(first) = msg.data.first()
                    && let Some(book) = s.tracker.synced_book(&first.symbol)
                {
                    record.best_bid = book.best_bid();
                    record.best_ask = book.best_ask();
                }
            }
            Ok(Frame::Ack(ack)) => {
                let symbol = ack.symbol().map(str::to_owned);
                if ack.is_error() {
                    let error = ack.error.as_deref().unwrap_or("rejected").to_owned();
                    metrics.subscription_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(connection = s.conn_id, symbol = ?symbol, method = %ack.method, %error, "feed: request rejected by the exchange; not retried");
                    if ack.method == "subscribe"
                        && let Some(symbol) = &symbol
                    {
                        self.rejected.insert(symbol.clone());
                        s.symbols.remove(symbol);
                    }
                    events.push(event(
                        EventKind::SubscriptionError,
                        symbol.as_deref(),
                        None,
                        error,
                    ));
                } else if ack.method == "subscribe" && ack.channel() == Some("book") {
                    let depth = ack
                        .result
                        .as_ref()
                        .and_then(|r| r.depth)
                        .map(|d| format!("depth {d}"))
                        .unwrap_or_default();
                    events.push(event(EventKind::Subscribed, symbol.as_deref(), None, depth));
                }
            }
            Ok(Frame::Instrument(msg)) => {
                if msg.snapshot && !s.books_requested {
                    subscribe_books = true;
                }
            }
            Ok(Frame::Status(status)) => {
                for st in status.iter().filter(|st| st.system != "online") {
                    tracing::warn!(connection = s.conn_id, system = %st.system, "feed: exchange status is not online");
                }
            }
            Ok(Frame::Heartbeat | Frame::Pong(_) | Frame::Unknown(_)) => {}
        }
        record.bytes = payload.bytes().to_vec();
        self.journal(Entry {
            received_at,
            conn_id: s.conn_id,
            conn_seq: s.conn_seq,
            body: RecordBody::Frame(record),
        })
        .await
        .map_err(FrameError::Fatal)?;
        let derived = events
            .into_iter()
            .map(RecordBody::Event)
            .chain(states.into_iter().map(RecordBody::BookState));
        for body in derived {
            self.journal(Entry {
                received_at,
                conn_id: s.conn_id,
                conn_seq: 0,
                body,
            })
            .await
            .map_err(FrameError::Fatal)?;
        }
        if subscribe_books {
            self.subscribe_books(s, socket)
                .await
                .map_err(FrameError::Lost)?;
        }
        Ok(())
    }
}

/// A data frame as the socket delivered it.
enum Payload {
    /// A text frame: tungstenite has already checked that it is UTF-8.
    Text(Utf8Bytes),
    /// A binary frame (Kraken sends none; kept as received all the same).
    Binary(Bytes),
}

impl Payload {
    fn bytes(&self) -> &[u8] {
        match self {
            Payload::Text(t) => t.as_bytes(),
            Payload::Binary(b) => b,
        }
    }

    /// The frame's text, or why it has none.
    fn text(&self) -> Result<&str, String> {
        match self {
            Payload::Text(t) => Ok(t.as_str()),
            Payload::Binary(b) => std::str::from_utf8(b).map_err(|e| e.to_string()),
        }
    }
}

enum FrameError {
    Fatal(FeedError),
    Lost(String),
}

fn event(
    kind: EventKind,
    symbol: Option<&str>,
    gap_start: Option<Timestamp>,
    detail: String,
) -> FeedEvent {
    FeedEvent {
        kind,
        symbol: symbol.map(str::to_owned),
        gap_start,
        detail,
    }
}

/// WebSocket settings: tungstenite zero-fills its read buffer's free space before every read, so
/// its 128 KiB default costs a 128 KiB memset per frame on a quiet connection; 16 KiB keeps that
/// small (larger frames still arrive whole: the buffer grows as needed).
fn socket_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(16 * 1024)
}

async fn send(socket: &mut Socket, request: &Request) -> Result<(), String> {
    socket
        .send(Message::text(request.to_json()))
        .await
        .map_err(|e| format!("cannot send a request: {e}"))
}

struct Session {
    conn_id: u64,
    conn_seq: u64,
    tracker: Tracker,
    symbols: HashMap<String, SymbolState>,
    pending_resubscribe: VecDeque<String>,
    books_requested: bool,
    instrument_deadline: Instant,
    req_id: u64,
    last_frame: Timestamp,
}

impl Session {
    fn next_req_id(&mut self) -> u64 {
        self.req_id += 1;
        self.req_id
    }

    /// Symbols resubscribed long ago and still unsynced get another resubscription.
    fn queue_stale_resubscribes(&mut self, retry_after: Duration) {
        for (symbol, state) in &mut self.symbols {
            if let Some(at) = state.resubscribed_at
                && state.gap_start.is_some()
                && at.elapsed() >= retry_after
            {
                state.resubscribed_at = None;
                if !self.pending_resubscribe.contains(symbol) {
                    self.pending_resubscribe.push_back(symbol.clone());
                }
            }
        }
    }
}

fn symbol_state<'a>(
    symbols: &'a mut HashMap<String, SymbolState>,
    symbol: &str,
    metrics: &crate::metrics::Metrics,
) -> &'a mut SymbolState {
    if !symbols.contains_key(symbol) {
        symbols.insert(symbol.to_owned(), SymbolState::new(metrics.symbol(symbol)));
    }
    // Inserted just above when missing.
    symbols.get_mut(symbol).unwrap_or_else(|| unreachable!())
}

struct SymbolState {
    metrics: Arc<SymbolMetrics>,
    /// Verified at least once on this connection.
    ever_synced: bool,
    /// When the current gap began (after a mismatch), until the book verifies again.
    gap_start: Option<Timestamp>,
    /// When this episode's resubscription was sent.
    resubscribed_at: Option<Instant>,
    /// Verified updates since the last snapshot or journaled book state.
    since_state: u64,
}

impl SymbolState {
    fn new(metrics: Arc<SymbolMetrics>) -> Self {
        SymbolState {
            metrics,
            ever_synced: false,
            gap_start: None,
            resubscribed_at: None,
            since_state: 0,
        }
    }
}

/// Connects once, reads the instrument snapshot, and returns the pairs that are online (for
/// `collect --all`).
pub async fn fetch_pairs(url: &url::Url, timeout: Duration) -> Result<Vec<String>, FeedError> {
    let fail = |reason: String| FeedError::Instruments {
        url: url.to_string(),
        reason,
    };
    let work = async {
        let (mut socket, _) = tokio_tungstenite::connect_async_with_config(
            url.as_str(),
            Some(socket_config()),
            false,
        )
        .await
        .map_err(|e| fail(e.to_string()))?;
        send(&mut socket, &Request::subscribe_instrument(Some(1)))
            .await
            .map_err(fail)?;
        while let Some(message) = socket.next().await {
            let message = message.map_err(|e| fail(e.to_string()))?;
            let Message::Text(text) = message else {
                continue;
            };
            if let Ok(Frame::Instrument(msg)) = kraken::decode(text.as_str())
                && msg.snapshot
            {
                let pairs = msg
                    .pairs
                    .iter()
                    .filter(|p| p.is_online())
                    .map(|p| p.symbol.to_string())
                    .collect();
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
