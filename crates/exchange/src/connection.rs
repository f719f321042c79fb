//! One client connection: the server side of Kraken's v2 protocol, with faults on send.
//!
//! On connect the connection sends one `status` frame with a `u64` `connection_id` (derived from
//! the seed, always above 2^63, so a client that reads it through `f64` or `i64` fails visibly,
//! as it would on some of Kraken's real ids). It then
//! answers requests and forwards its subscriptions' book frames from its bounded queue:
//! - `ping` → `pong` with the `req_id`, `time_in` and `time_out`;
//! - `subscribe`/`unsubscribe` `book`: one response per symbol, in the request's order, each
//!   with the `req_id`; refusals are Kraken's: `Currency pair not supported X/Y` (an unknown or
//!   rejected symbol), `Subscription depth not supported` (a depth other than 10, 25, 100, 500,
//!   1000), `Already subscribed`, `Subscription Not Found`; the snapshot (unless
//!   `"snapshot":false`) follows the ack, then the updates;
//! - `subscribe`/`unsubscribe` `instrument`: the ack, then one snapshot of every pair;
//! - a request that is not a JSON request object gets `Malformed request` (or Kraken's
//!   `Symbol field must be an array` when `symbol` is a string); an unknown method gets
//!   `Method not found`, an unserved channel `Channel not supported`. (The first three wordings
//!   are from Kraken's documentation and the captures; the others are Kraken's as best known.)
//! - once any subscription succeeded, a `heartbeat` goes out whenever nothing was sent for the
//!   heartbeat interval (a second, as Kraken).
//!
//! What must always hold:
//! - a response to a subscription precedes its snapshot, which precedes its updates (the market
//!   queues the snapshot during the subscribe call; the ack is written before the queue is read);
//! - frames of an ended subscription still in the queue are not sent (each carries its
//!   subscription's number);
//! - nothing waits forever on a client: a write blocked by a client that does not read ends
//!   when the queue overflows (the market cancels the connection's overflow token) or at shutdown;
//! - every frame written is logged first when there is a log, so the log is what was sent.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use super::faults::{FaultState, GARBAGE_FRAME, UNKNOWN_CHANNEL_FRAME};
use super::log::LogEntry;
use super::market::MarketError;
use super::market::{BookSink, ConnId, Delivery, Ending, Item, SubId};
use super::shared::Shared;
use super::stats::{add, bump};
use crate::kraken::encode::{self, Ack, AckResult};
use crate::kraken::{BookKind, Depth, Params, Request};
use crate::time::Timestamp;

/// Book frames forwarded per wake-up, at most (then one flush).
const BATCH: usize = 512;

/// How long shutdown waits for a connection to drain its queue and close politely.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs one write-bound operation (a request's responses, a batch of frames, a heartbeat) so that
/// it cannot outlive the connection's reasons to stop: an overflowed queue stops it at once (the
/// client is not reading); shutdown gives it [`DRAIN_TIMEOUT`] to finish, so a frame being
/// written when shutdown starts still arrives, and then the close frame follows.
async fn guard<T>(
    op: impl Future<Output = Result<T, Closed>>,
    overflow: &CancellationToken,
    cancel: &CancellationToken,
) -> Result<T, Closed> {
    tokio::select! {
        r = op => r,
        _ = overflow.cancelled() => Err(Closed::SlowClient),
        _ = async {
            cancel.cancelled().await;
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        } => Err(Closed::Shutdown),
    }
}

/// Why a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Closed {
    /// The client closed it (or the socket ended).
    Client,
    /// The server is shutting down.
    Shutdown,
    /// Its send queue overflowed: the client did not read fast enough.
    SlowClient,
    /// The drop fault closed it.
    DropFault,
    /// The market dropped it (the socket closed without a close frame: a gap in a replay).
    MarketDrop,
    /// The market closed it with a close frame (`1000` and this reason: the end of a replay).
    MarketClose(&'static str),
    /// A socket or protocol error.
    Error(String),
}

impl Closed {
    fn describe(&self) -> String {
        match self {
            Closed::Client => "closed by the client".to_owned(),
            Closed::Shutdown => "server shutdown".to_owned(),
            Closed::SlowClient => "send queue overflowed (slow client)".to_owned(),
            Closed::DropFault => "dropped by the drop fault".to_owned(),
            Closed::MarketDrop => "dropped by the market".to_owned(),
            Closed::MarketClose(reason) => format!("closed by the market: {reason}"),
            Closed::Error(e) => format!("error: {e}"),
        }
    }

    fn from_ws(e: WsError) -> Self {
        use tokio_tungstenite::tungstenite::error::ProtocolError;
        match e {
            WsError::ConnectionClosed
            | WsError::AlreadyClosed
            | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Closed::Client,
            WsError::Io(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                Closed::Client
            }
            e => Closed::Error(e.to_string()),
        }
    }
}

/// One connection's task.
#[derive(Debug)]
pub struct Connection<S> {
    conn: ConnId,
    connection_id: u64,
    ws: WebSocketStream<S>,
    shared: Arc<Shared>,
    queue: mpsc::Receiver<Delivery>,
    queue_tx: mpsc::Sender<Delivery>,
    overflow: CancellationToken,
    cancel: CancellationToken,
    /// Book subscriptions by symbol: (subscription, depth).
    books: HashMap<String, (SubId, Depth)>,
    active: HashSet<SubId>,
    instrument: bool,
    heartbeats: bool,
    faults: FaultState,
    last_sent: Instant,
    silent_until: Option<Instant>,
    next_silence: Option<Instant>,
    batch: Vec<Delivery>,
}

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// A connection numbered `conn` over an accepted WebSocket.
    pub(crate) fn new(
        conn: ConnId,
        ws: WebSocketStream<S>,
        shared: Arc<Shared>,
        cancel: CancellationToken,
    ) -> Self {
        let (queue_tx, queue) = mpsc::channel(shared.config.send_queue.max(1));
        let seed = shared.config.seed;
        let connection_id = shared.connection_id(conn);
        let faults = FaultState::new(&shared.config.faults, conn, seed);
        let now = Instant::now();
        let next_silence = faults.silence_every().map(|every| now + every);
        Connection {
            conn,
            connection_id,
            ws,
            shared,
            queue,
            queue_tx,
            overflow: CancellationToken::new(),
            cancel,
            books: HashMap::new(),
            active: HashSet::new(),
            instrument: false,
            heartbeats: false,
            faults,
            last_sent: now,
            silent_until: None,
            next_silence,
            batch: Vec::with_capacity(BATCH),
        }
    }

    /// Serves the connection until it ends, then releases its subscriptions.
    pub async fn run(mut self) -> Closed {
        let reason = self.serve().await;
        self.shared.market.disconnect(self.conn);
        match &reason {
            Closed::SlowClient => bump(&self.shared.stats.slow_client_disconnects),
            Closed::DropFault => bump(&self.shared.stats.fault_drops),
            Closed::MarketDrop => bump(&self.shared.stats.market_drops),
            Closed::MarketClose(_) => bump(&self.shared.stats.market_closes),
            _ => {}
        }
        tracing::debug!(conn = self.conn, reason = %reason.describe(), "connection closed");
        if let Some(log) = &self.shared.log {
            log.send(LogEntry::Event {
                conn: self.conn,
                at: Timestamp::now(),
                event: "close",
                detail: reason.describe(),
            })
            .await;
        }
        reason
    }

    async fn serve(&mut self) -> Closed {
        let status = encode::status(self.connection_id);
        if let Err(c) = self.send_now(status.into()).await {
            return c;
        }
        let cancel = self.cancel.clone();
        let overflow = self.overflow.clone();
        loop {
            if let Some(until) = self.silent_until {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Closed::Shutdown,
                    _ = overflow.cancelled() => return Closed::SlowClient,
                    _ = sleep_until(until) => self.silent_until = None,
                    n = self.queue.recv_many(&mut self.batch, BATCH) => {
                        add(&self.shared.stats.frames_discarded_in_silence, n as u64);
                        self.batch.clear();
                    }
                }
                continue;
            }
            let heartbeat_at = self.last_sent + self.shared.config.heartbeat;
            let result = tokio::select! {
                biased;
                _ = cancel.cancelled() => return self.shutdown().await,
                _ = overflow.cancelled() => return Closed::SlowClient,
                msg = self.ws.next() => match msg {
                    None => return Closed::Client,
                    Some(Err(e)) => return Closed::from_ws(e),
                    Some(Ok(msg)) => {
                        guard(self.on_message(msg), &overflow, &cancel).await
                    }
                },
                _ = self.queue.recv_many(&mut self.batch, BATCH) => {
                    guard(self.deliver(), &overflow, &cancel).await
                }
                _ = sleep_until(self.next_silence.unwrap_or_else(Instant::now)), if self.next_silence.is_some() => {
                    if let (Some(at), Some(every)) = (self.next_silence, self.faults.silence_every()) {
                        self.next_silence = Some(at + every);
                    }
                    self.start_silence().await;
                    Ok(())
                }
                _ = sleep_until(heartbeat_at), if self.heartbeats => {
                    bump(&self.shared.stats.heartbeats_sent);
                    guard(self.send_now(Utf8Bytes::from_static(encode::HEARTBEAT)), &overflow, &cancel).await
                }
            };
            if let Err(c) = result {
                return c;
            }
        }
    }

    /// Sends the queued frames (the batch already taken from the queue), applying the faults.
    async fn deliver(&mut self) -> Result<(), Closed> {
        let mut batch = std::mem::take(&mut self.batch);
        let mut result = Ok(());
        let mut rest = batch.drain(..);
        for d in rest.by_ref() {
            let frame = match d.item {
                Item::End(ending) => {
                    result = self.end(ending).await;
                    break;
                }
                Item::Frame(_) if !self.active.contains(&d.sub) => continue,
                Item::Frame(frame) => frame,
            };
            if frame.kind == BookKind::Snapshot {
                bump(&self.shared.stats.book_snapshots_sent);
                if let Err(c) = self.feed(frame.text.clone()).await {
                    result = Err(c);
                    break;
                }
                continue;
            }
            if self.faults.withhold(&frame) {
                bump(&self.shared.stats.fault_lost_updates);
                self.log_fault("lose_update", Some(frame.text.clone()))
                    .await;
                continue;
            }
            if let Err(c) = self.feed(frame.text.clone()).await {
                result = Err(c);
                break;
            }
            bump(&self.shared.stats.book_updates_sent);
            let after = self.faults.sent_update();
            if after.garbage {
                bump(&self.shared.stats.fault_garbage_frames);
                self.log_fault("garbage", None).await;
                if let Err(c) = self.feed(Utf8Bytes::from_static(GARBAGE_FRAME)).await {
                    result = Err(c);
                    break;
                }
            }
            if after.unknown_channel {
                bump(&self.shared.stats.fault_unknown_channel_frames);
                self.log_fault("unknown_channel", None).await;
                if let Err(c) = self
                    .feed(Utf8Bytes::from_static(UNKNOWN_CHANNEL_FRAME))
                    .await
                {
                    result = Err(c);
                    break;
                }
            }
            if after.drop {
                self.log_fault("drop", None).await;
                // What was written before the fault reaches the client; then the socket closes.
                result = self.flush().await.and(Err(Closed::DropFault));
                break;
            }
            if after.silence {
                result = self.flush().await;
                self.start_silence().await;
                break;
            }
        }
        let discarded = rest.len();
        drop(rest);
        if self.silent_until.is_some() {
            add(
                &self.shared.stats.frames_discarded_in_silence,
                discarded as u64,
            );
        }
        self.batch = batch;
        self.batch.clear();
        if result.is_ok() && self.silent_until.is_none() {
            result = self.flush().await;
        }
        result
    }

    /// Ends the connection as the market asked, after what was already written: a drop flushes
    /// and lets the socket close without a close frame; a close sends one (`1000`, the reason)
    /// and waits a moment for the client's reply.
    async fn end(&mut self, ending: Ending) -> Result<(), Closed> {
        self.flush().await?;
        if let Some(log) = &self.shared.log {
            log.send(LogEntry::Event {
                conn: self.conn,
                at: Timestamp::now(),
                event: "end",
                detail: match ending {
                    Ending::Drop => "drop".to_owned(),
                    Ending::Close(reason) => format!("close 1000 {reason}"),
                },
            })
            .await;
        }
        match ending {
            Ending::Drop => Err(Closed::MarketDrop),
            Ending::Close(reason) => {
                let close = CloseFrame {
                    code: CloseCode::Normal,
                    reason: reason.into(),
                };
                let handshake = async {
                    self.ws.close(Some(close)).await.map_err(Closed::from_ws)?;
                    while let Some(Ok(_)) = self.ws.next().await {}
                    Ok::<(), Closed>(())
                };
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, handshake).await;
                Err(Closed::MarketClose(reason))
            }
        }
    }

    async fn start_silence(&mut self) {
        let d = self.faults.silence_for();
        bump(&self.shared.stats.fault_silences);
        self.log_fault("silence", None).await;
        self.silent_until = Some(Instant::now() + d);
    }

    async fn log_fault(&self, fault: &'static str, frame: Option<Utf8Bytes>) {
        tracing::debug!(conn = self.conn, fault, "fault");
        if let Some(log) = &self.shared.log {
            log.send(LogEntry::Fault {
                conn: self.conn,
                at: Timestamp::now(),
                fault,
                frame,
            })
            .await;
        }
    }

    /// Writes a frame into the socket's buffer (logged first).
    async fn feed(&mut self, text: Utf8Bytes) -> Result<(), Closed> {
        let len = text.len() as u64;
        if let Some(log) = &self.shared.log {
            log.send(LogEntry::Sent {
                conn: self.conn,
                at: Timestamp::now(),
                text: text.clone(),
            })
            .await;
        }
        self.ws
            .feed(Message::Text(text))
            .await
            .map_err(Closed::from_ws)?;
        bump(&self.shared.stats.frames_sent);
        add(&self.shared.stats.bytes_sent, len);
        self.last_sent = Instant::now();
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Closed> {
        self.ws.flush().await.map_err(Closed::from_ws)
    }

    async fn send_now(&mut self, text: Utf8Bytes) -> Result<(), Closed> {
        self.feed(text).await?;
        self.flush().await
    }

    async fn shutdown(&mut self) -> Closed {
        let drain = async {
            while let Ok(d) = self.queue.try_recv() {
                self.batch.push(d);
            }
            self.deliver().await?;
            let close = CloseFrame {
                code: CloseCode::Away,
                reason: "the server is shutting down".into(),
            };
            self.ws.close(Some(close)).await.map_err(Closed::from_ws)?;
            // Wait for the client's reply to complete the closing handshake.
            while let Some(Ok(_)) = self.ws.next().await {}
            Ok::<(), Closed>(())
        };
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
        Closed::Shutdown
    }

    async fn on_message(&mut self, msg: Message) -> Result<(), Closed> {
        match msg {
            Message::Text(text) => self.on_request(text.as_str()).await?,
            Message::Binary(_) => {
                bump(&self.shared.stats.requests);
                let t = Timestamp::now();
                self.error(None, None, "Malformed request", None, t).await?;
            }
            Message::Close(_) => {
                // tungstenite queued the reply; flushing sends it.
                let _ = self.flush().await;
                return Err(Closed::Client);
            }
            // A ping's pong is queued by tungstenite and goes out with this flush.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
        self.flush().await
    }

    async fn on_request(&mut self, text: &str) -> Result<(), Closed> {
        let time_in = Timestamp::now();
        bump(&self.shared.stats.requests);
        let request = match Request::parse(text) {
            Ok(r) => r,
            Err(_) => {
                let (method, req_id, error) = sniff_malformed(text);
                return self
                    .error(method.as_deref(), req_id, error, None, time_in)
                    .await;
            }
        };
        let method = request.method.as_str();
        let req_id = request.req_id;
        match (method, request.params) {
            ("ping", _) => {
                let pong = encode::pong(req_id, time_in, Timestamp::now());
                self.feed(pong.into()).await
            }
            ("subscribe" | "unsubscribe", Some(params)) => match params.channel.as_str() {
                "book" => self.book_request(method, params, req_id, time_in).await,
                "instrument" => {
                    self.instrument_request(method, params, req_id, time_in)
                        .await
                }
                _ => {
                    self.error(Some(method), req_id, "Channel not supported", None, time_in)
                        .await
                }
            },
            ("subscribe" | "unsubscribe", None) => {
                self.error(Some(method), req_id, "Malformed request", None, time_in)
                    .await
            }
            (other, _) => {
                let other = other.to_owned();
                self.error(Some(&other), req_id, "Method not found", None, time_in)
                    .await
            }
        }
    }

    async fn book_request(
        &mut self,
        method: &str,
        params: Params,
        req_id: Option<u64>,
        time_in: Timestamp,
    ) -> Result<(), Closed> {
        let symbols = match params.symbol {
            Some(s) if !s.is_empty() => s,
            _ => {
                return self
                    .error(Some(method), req_id, "Malformed request", None, time_in)
                    .await;
            }
        };
        let depth = match params.depth {
            None => Depth::default(),
            Some(d) => match Depth::new(d) {
                Some(d) => d,
                None => {
                    for symbol in &symbols {
                        let error = MarketError::DepthNotSupported.to_string();
                        self.error(Some(method), req_id, &error, Some(symbol), time_in)
                            .await?;
                    }
                    return Ok(());
                }
            },
        };
        let snapshot = params.snapshot.unwrap_or(true);
        for symbol in &symbols {
            if method == "subscribe" {
                self.subscribe_book(symbol, depth, snapshot, req_id, time_in)
                    .await?;
            } else {
                self.unsubscribe_book(symbol, req_id, time_in).await?;
            }
        }
        Ok(())
    }

    async fn subscribe_book(
        &mut self,
        symbol: &str,
        depth: Depth,
        snapshot: bool,
        req_id: Option<u64>,
        time_in: Timestamp,
    ) -> Result<(), Closed> {
        const METHOD: Option<&str> = Some("subscribe");
        if self.shared.config.faults.rejects(symbol) {
            bump(&self.shared.stats.fault_rejected_subscriptions);
            let error = format!("Currency pair not supported {symbol}");
            return self
                .error(METHOD, req_id, &error, Some(symbol), time_in)
                .await;
        }
        if self.books.contains_key(symbol) {
            return self
                .error(METHOD, req_id, "Already subscribed", Some(symbol), time_in)
                .await;
        }
        let sub = self.shared.next_sub();
        let sink = BookSink::new(self.conn, sub, self.queue_tx.clone(), self.overflow.clone());
        // Active before the market queues the snapshot, so nothing of it is skipped.
        self.active.insert(sub);
        match self
            .shared
            .market
            .subscribe_book(symbol, depth, snapshot, sink)
        {
            Ok(()) => {
                self.books.insert(symbol.to_owned(), (sub, depth));
                self.heartbeats = true;
                let ack = encode::ack(&Ack {
                    method: METHOD,
                    req_id,
                    result: Some(AckResult {
                        channel: "book",
                        depth: Some(depth.get()),
                        snapshot: Some(snapshot),
                        symbol: Some(symbol),
                    }),
                    error: None,
                    symbol: None,
                    time_in,
                    time_out: Timestamp::now(),
                });
                self.feed(ack.into()).await
            }
            Err(e) => {
                self.active.remove(&sub);
                self.error(METHOD, req_id, &e.to_string(), Some(symbol), time_in)
                    .await
            }
        }
    }

    async fn unsubscribe_book(
        &mut self,
        symbol: &str,
        req_id: Option<u64>,
        time_in: Timestamp,
    ) -> Result<(), Closed> {
        const METHOD: Option<&str> = Some("unsubscribe");
        let Some((sub, depth)) = self.books.remove(symbol) else {
            let known = self
                .shared
                .market
                .instruments()
                .iter()
                .any(|p| p.symbol == symbol);
            let error = if known {
                "Subscription Not Found".to_owned()
            } else {
                format!("Currency pair not supported {symbol}")
            };
            return self
                .error(METHOD, req_id, &error, Some(symbol), time_in)
                .await;
        };
        self.active.remove(&sub);
        self.shared.market.unsubscribe_book(symbol, self.conn, sub);
        let ack = encode::ack(&Ack {
            method: METHOD,
            req_id,
            result: Some(AckResult {
                channel: "book",
                depth: Some(depth.get()),
                snapshot: None,
                symbol: Some(symbol),
            }),
            error: None,
            symbol: None,
            time_in,
            time_out: Timestamp::now(),
        });
        self.feed(ack.into()).await
    }

    async fn instrument_request(
        &mut self,
        method: &str,
        params: Params,
        req_id: Option<u64>,
        time_in: Timestamp,
    ) -> Result<(), Closed> {
        let subscribe = method == "subscribe";
        if subscribe == self.instrument {
            let error = if subscribe {
                "Already subscribed"
            } else {
                "Subscription Not Found"
            };
            return self.error(Some(method), req_id, error, None, time_in).await;
        }
        self.instrument = subscribe;
        let snapshot = subscribe && params.snapshot.unwrap_or(true);
        let ack = encode::ack(&Ack {
            method: Some(method),
            req_id,
            result: Some(AckResult {
                channel: "instrument",
                depth: None,
                snapshot: subscribe.then_some(snapshot),
                symbol: None,
            }),
            error: None,
            symbol: None,
            time_in,
            time_out: Timestamp::now(),
        });
        self.feed(ack.into()).await?;
        if subscribe {
            self.heartbeats = true;
        }
        if snapshot {
            let text = self.shared.instrument_snapshot.clone();
            self.feed(text).await?;
        }
        Ok(())
    }

    async fn error(
        &mut self,
        method: Option<&str>,
        req_id: Option<u64>,
        error: &str,
        symbol: Option<&str>,
        time_in: Timestamp,
    ) -> Result<(), Closed> {
        bump(&self.shared.stats.error_acks);
        let text = encode::ack(&Ack {
            method,
            req_id,
            result: None,
            error: Some(error),
            symbol,
            time_in,
            time_out: Timestamp::now(),
        });
        self.feed(text.into()).await
    }
}

/// What can be said about a request that is not a valid request object: its method and
/// `req_id` if it has them, and Kraken's error text.
fn sniff_malformed(text: &str) -> (Option<String>, Option<u64>, &'static str) {
    let Ok(serde_json::Value::Object(obj)) = serde_json::from_str::<serde_json::Value>(text) else {
        return (None, None, "Malformed request");
    };
    let method = obj
        .get("method")
        .and_then(|m| m.as_str())
        .map(str::to_owned);
    let req_id = obj.get("req_id").and_then(serde_json::Value::as_u64);
    let symbol_is_string = obj
        .get("params")
        .and_then(|p| p.get("symbol"))
        .is_some_and(serde_json::Value::is_string);
    let error = if symbol_is_string {
        "Symbol field must be an array"
    } else {
        "Malformed request"
    };
    (method, req_id, error)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::io::DuplexStream;
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;
    use crate::book::Precision;
    use crate::faults::Faults;
    use crate::kraken::encode::InstrumentPair;
    use crate::kraken::{Frame, decode};
    use crate::market::{BookFrame, Market, MarketError};
    use crate::server::ServerConfig;
    use crate::shared::Shared;
    use crate::stats::Stats;

    /// A market the test drives by hand: it serves `BTC/USD` and `ETH/USD`.
    #[derive(Debug)]
    struct HandMarket {
        pairs: Vec<InstrumentPair>,
        sinks: Mutex<Vec<(String, BookSink)>>,
    }

    impl HandMarket {
        fn new() -> Arc<Self> {
            Arc::new(HandMarket {
                pairs: ["BTC/USD", "ETH/USD"]
                    .into_iter()
                    .map(|s| InstrumentPair::online(s, Precision { price: 1, qty: 8 }))
                    .collect(),
                sinks: Mutex::new(Vec::new()),
            })
        }

        /// Pushes an update numbered `n` for `symbol` to its subscribers.
        fn update(&self, symbol: &str, n: u32) {
            let frame = Arc::new(BookFrame {
                symbol: symbol.into(),
                kind: BookKind::Update,
                checksum: n,
                checksum_changed: true,
                text: format!(r#"{{"update":{n},"symbol":"{symbol}"}}"#).into(),
            });
            self.sinks
                .lock()
                .unwrap()
                .retain(|(s, sink)| s != symbol || sink.send(&frame).is_ok());
        }
    }

    impl Market for HandMarket {
        fn instruments(&self) -> &[InstrumentPair] {
            &self.pairs
        }
        fn subscribe_book(
            &self,
            symbol: &str,
            _depth: Depth,
            _snapshot: bool,
            sink: BookSink,
        ) -> Result<(), MarketError> {
            if !self.pairs.iter().any(|p| p.symbol == symbol) {
                return Err(MarketError::UnknownSymbol(symbol.to_owned()));
            }
            let frame = Arc::new(BookFrame {
                symbol: symbol.into(),
                kind: BookKind::Snapshot,
                checksum: 0,
                checksum_changed: true,
                text: format!(r#"{{"snapshot":"{symbol}"}}"#).into(),
            });
            let _ = sink.send(&frame);
            self.sinks.lock().unwrap().push((symbol.to_owned(), sink));
            Ok(())
        }
        fn unsubscribe_book(&self, _symbol: &str, conn: ConnId, sub: SubId) {
            self.sinks
                .lock()
                .unwrap()
                .retain(|(_, s)| !(s.conn() == conn && s.sub() == sub));
        }
        fn disconnect(&self, conn: ConnId) {
            self.sinks.lock().unwrap().retain(|(_, s)| s.conn() != conn);
        }
    }

    struct Setup {
        client: WebSocketStream<DuplexStream>,
        market: Arc<HandMarket>,
        stats: Arc<Stats>,
        cancel: CancellationToken,
        task: tokio::task::JoinHandle<Closed>,
    }

    async fn setup(faults: Faults, send_queue: usize) -> Setup {
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = WebSocketStream::from_raw_socket(a, Role::Server, None).await;
        let client = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
        let market = HandMarket::new();
        let stats = Arc::new(Stats::default());
        let config = ServerConfig {
            faults,
            send_queue,
            ..ServerConfig::default()
        };
        let shared = Arc::new(Shared::new(
            Arc::clone(&market) as Arc<dyn Market>,
            config,
            Arc::clone(&stats),
            None,
        ));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(Connection::new(1, server, shared, cancel.clone()).run());
        Setup {
            client,
            market,
            stats,
            cancel,
            task,
        }
    }

    /// The next text frame, or `None` when the connection ended.
    async fn next(ws: &mut WebSocketStream<DuplexStream>) -> Option<String> {
        loop {
            match ws.next().await? {
                Ok(Message::Text(t)) => return Some(t.as_str().to_owned()),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    async fn send(ws: &mut WebSocketStream<DuplexStream>, text: &str) {
        ws.send(Message::Text(text.into())).await.unwrap();
    }

    /// A connection past its status frame that has asked for BTC/USD's book.
    async fn subscribed(faults: Faults, send_queue: usize) -> Setup {
        let mut s = setup(faults, send_queue).await;
        next(&mut s.client).await.unwrap();
        send(
            &mut s.client,
            r#"{"method":"subscribe","params":{"channel":"book","symbol":["BTC/USD"]}}"#,
        )
        .await;
        s
    }

    #[tokio::test(start_paused = true)]
    async fn status_first_then_heartbeats_once_a_second_only_after_a_subscription() {
        let mut s = setup(Faults::default(), 64).await;
        let status = next(&mut s.client).await.unwrap();
        let Ok(Frame::Status(st)) = decode(&status) else {
            panic!("{status}")
        };
        assert!(st[0].connection_id.unwrap() > 1 << 53);
        // Nothing subscribed: no heartbeat, however long we wait.
        let quiet = tokio::time::timeout(Duration::from_secs(5), next(&mut s.client)).await;
        assert!(quiet.is_err(), "no heartbeat before a subscription");
        send(
            &mut s.client,
            r#"{"method":"subscribe","params":{"channel":"instrument"},"req_id":3}"#,
        )
        .await;
        let ack = next(&mut s.client).await.unwrap();
        assert!(ack.starts_with(r#"{"method":"subscribe","req_id":3,"result":{"channel":"instrument","snapshot":true},"success":true,"#), "{ack}");
        let snapshot = next(&mut s.client).await.unwrap();
        assert!(matches!(decode(&snapshot), Ok(Frame::Instrument(_))));
        let mut last = Instant::now();
        for _ in 0..3 {
            assert_eq!(next(&mut s.client).await.unwrap(), encode::HEARTBEAT);
            assert_eq!(Instant::now() - last, Duration::from_secs(1));
            last = Instant::now();
        }
        assert_eq!(s.stats.snapshot().heartbeats_sent, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_sends_no_heartbeat() {
        let mut s = subscribed(Faults::default(), 64).await;
        assert!(
            next(&mut s.client)
                .await
                .unwrap()
                .contains(r#""success":true"#)
        );
        assert_eq!(
            next(&mut s.client).await.unwrap(),
            r#"{"snapshot":"BTC/USD"}"#
        );
        for n in 0..10 {
            tokio::time::sleep(Duration::from_millis(900)).await;
            s.market.update("BTC/USD", n);
            let got = next(&mut s.client).await.unwrap();
            assert!(got.contains(&format!(r#""update":{n}"#)), "{got}");
        }
        // Then quiet: a heartbeat a second after the last update.
        let t = Instant::now();
        assert_eq!(next(&mut s.client).await.unwrap(), encode::HEARTBEAT);
        assert_eq!(Instant::now() - t, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn silence_holds_every_frame_heartbeats_included_then_resumes() {
        let faults = Faults {
            silence_after: Some(2),
            silence_for: Duration::from_secs(3),
            ..Faults::default()
        };
        let mut s = subscribed(faults, 64).await;
        next(&mut s.client).await.unwrap();
        next(&mut s.client).await.unwrap();
        s.market.update("BTC/USD", 1);
        s.market.update("BTC/USD", 2);
        next(&mut s.client).await.unwrap();
        assert!(next(&mut s.client).await.unwrap().contains(r#""update":2"#));
        let silent_from = Instant::now();
        // Updates during the silence are discarded; a ping is not answered until it ends.
        tokio::time::sleep(Duration::from_millis(500)).await;
        s.market.update("BTC/USD", 3);
        send(&mut s.client, r#"{"method":"ping","req_id":9}"#).await;
        let first = next(&mut s.client).await.unwrap();
        assert!(Instant::now() - silent_from >= Duration::from_secs(3));
        assert!(
            first.starts_with(r#"{"method":"pong","req_id":9,"#),
            "{first}"
        );
        s.market.update("BTC/USD", 4);
        assert!(next(&mut s.client).await.unwrap().contains(r#""update":4"#));
        let st = s.stats.snapshot();
        assert_eq!((st.fault_silences, st.frames_discarded_in_silence), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn periodic_silence_starts_every_period() {
        let faults = Faults {
            silence_every: Some(Duration::from_secs(10)),
            silence_for: Duration::from_secs(4),
            ..Faults::default()
        };
        let mut s = setup(faults, 64).await;
        let start = Instant::now();
        next(&mut s.client).await.unwrap();
        send(
            &mut s.client,
            r#"{"method":"subscribe","params":{"channel":"instrument","snapshot":false}}"#,
        )
        .await;
        next(&mut s.client).await.unwrap();
        // Heartbeats at 1..=9 s, none from 10 to 14 s, then again.
        let mut times = Vec::new();
        while times.len() < 12 {
            assert_eq!(next(&mut s.client).await.unwrap(), encode::HEARTBEAT);
            times.push((Instant::now() - start).as_secs());
        }
        assert_eq!(times, [1, 2, 3, 4, 5, 6, 7, 8, 9, 14, 15, 16]);
        assert_eq!(s.stats.snapshot().fault_silences, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn responses_follow_krakens_rules() {
        let faults = Faults {
            reject: vec!["ETH/USD".into()],
            ..Faults::default()
        };
        let mut s = setup(faults, 64).await;
        next(&mut s.client).await.unwrap();
        // (request, expected responses: each a prefix or a fragment)
        let cases: Vec<(&str, Vec<&str>)> = vec![
            (
                r#"{"method":"subscribe","params":{"channel":"book","symbol":["BTC/USD","ETH/USD","XBT/USD"],"depth":25},"req_id":4}"#,
                vec![
                    r#"{"method":"subscribe","req_id":4,"result":{"channel":"book","depth":25,"snapshot":true,"symbol":"BTC/USD"},"success":true,"#,
                    r#"{"error":"Currency pair not supported ETH/USD","method":"subscribe","req_id":4,"success":false,"symbol":"ETH/USD","#,
                    r#"{"error":"Currency pair not supported XBT/USD","method":"subscribe","req_id":4,"success":false,"symbol":"XBT/USD","#,
                    r#"{"snapshot":"BTC/USD"}"#,
                ],
            ),
            (
                r#"{"method":"subscribe","params":{"channel":"book","symbol":["BTC/USD"]},"req_id":5}"#,
                vec![
                    r#"{"error":"Already subscribed","method":"subscribe","req_id":5,"success":false,"symbol":"BTC/USD","#,
                ],
            ),
            (
                r#"{"method":"subscribe","params":{"channel":"book","symbol":["BTC/USD"],"depth":50},"req_id":6}"#,
                vec![
                    r#"{"error":"Subscription depth not supported","method":"subscribe","req_id":6,"success":false,"symbol":"BTC/USD","#,
                ],
            ),
            (
                r#"{"method":"subscribe","params":{"channel":"book","symbol":"BTC/USD"},"req_id":7}"#,
                vec![
                    r#"{"error":"Symbol field must be an array","method":"subscribe","req_id":7,"success":false,"time_in":"#,
                ],
            ),
            (
                "not json",
                vec![r#"{"error":"Malformed request","success":false,"time_in":"#],
            ),
            (
                r#"{"method":"subscribe","req_id":8}"#,
                vec![
                    r#"{"error":"Malformed request","method":"subscribe","req_id":8,"success":false,"#,
                ],
            ),
            (
                r#"{"method":"dance","req_id":9}"#,
                vec![r#"{"error":"Method not found","method":"dance","req_id":9,"success":false,"#],
            ),
            (
                r#"{"method":"ping","req_id":10}"#,
                vec![r#"{"method":"pong","req_id":10,"time_in":""#],
            ),
            (
                r#"{"method":"unsubscribe","params":{"channel":"book","symbol":["BTC/USD","ETH/USD"],"depth":25},"req_id":11}"#,
                vec![
                    r#"{"method":"unsubscribe","req_id":11,"result":{"channel":"book","depth":25,"symbol":"BTC/USD"},"success":true,"#,
                    r#"{"error":"Subscription Not Found","method":"unsubscribe","req_id":11,"success":false,"symbol":"ETH/USD","#,
                ],
            ),
        ];
        for (request, expected) in cases {
            send(&mut s.client, request).await;
            for e in expected {
                let got = next(&mut s.client).await.unwrap();
                assert!(
                    got.starts_with(e),
                    "{request}\n  expected {e}\n  got      {got}"
                );
                decode(&got).unwrap_or_else(|err| panic!("{got}: {err}"));
            }
        }
        // After the unsubscribe, updates of BTC/USD are not sent: the next frame is a heartbeat.
        s.market.update("BTC/USD", 1);
        assert_eq!(next(&mut s.client).await.unwrap(), encode::HEARTBEAT);
        assert_eq!(s.stats.snapshot().fault_rejected_subscriptions, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_does_not_read_is_disconnected_as_slow() {
        let mut s = subscribed(Faults::default(), 8).await;
        // The client stops reading; the duplex pipe and the queue fill, then the queue overflows.
        for n in 0..100_000 {
            s.market.update("BTC/USD", n);
            if s.task.is_finished() {
                break;
            }
            tokio::task::yield_now().await;
        }
        let reason = (&mut s.task).await.unwrap();
        assert_eq!(reason, Closed::SlowClient);
        assert_eq!(s.stats.snapshot().slow_client_disconnects, 1);
        assert!(
            s.market.sinks.lock().unwrap().is_empty(),
            "subscriptions released"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_sends_what_is_queued_then_a_close_frame() {
        let mut s = subscribed(Faults::default(), 64).await;
        next(&mut s.client).await.unwrap();
        next(&mut s.client).await.unwrap();
        for n in 0..5 {
            s.market.update("BTC/USD", n);
        }
        s.cancel.cancel();
        let mut got = Vec::new();
        let close = loop {
            match s.client.next().await {
                Some(Ok(Message::Text(t))) => got.push(t.as_str().to_owned()),
                Some(Ok(Message::Close(c))) => break c,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(got.len(), 5, "every queued update was sent: {got:?}");
        assert_eq!(close.unwrap().code, CloseCode::Away);
        assert_eq!((&mut s.task).await.unwrap(), Closed::Shutdown);
    }
}
