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
//!
//! Where each part lives: this file holds the connection's state, its loop (`serve`: requests,
//! queued frames, silences, heartbeats, shutdown) and the tests; `requests` parses the client's
//! requests and answers them (ping, subscribe and unsubscribe of `book` and `instrument`, the
//! error acks); `send` writes frames out: the queued book frames with the faults applied, the
//! market's endings, and the one path every frame takes (`feed`: logged, then written).

mod requests;
mod send;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use super::faults::FaultState;
use super::log::LogEntry;
use super::market::{ConnId, Delivery, SubId};
use super::shared::Shared;
use super::stats::{add, bump};
use crate::kraken::Depth;
use crate::kraken::encode;
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
    /// Cancelled by the `drop_every` fault when this connection's turn comes.
    dropped: CancellationToken,
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
        let next_silence = faults.first_silence().map(|after| now + after);
        let dropped = shared.opened(conn);
        Connection {
            conn,
            connection_id,
            ws,
            shared,
            queue,
            queue_tx,
            overflow: CancellationToken::new(),
            cancel,
            dropped,
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
        self.shared.closed(self.conn);
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
        let dropped = self.dropped.clone();
        loop {
            if let Some(until) = self.silent_until {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Closed::Shutdown,
                    _ = overflow.cancelled() => return Closed::SlowClient,
                    _ = dropped.cancelled() => return self.drop_fault().await,
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
                _ = dropped.cancelled() => return self.drop_fault().await,
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
                    // A one-shot silence (`silence_at` alone) does not come back.
                    self.next_silence = match (self.next_silence, self.faults.silence_every()) {
                        (Some(at), Some(every)) => Some(at + every),
                        _ => None,
                    };
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

    /// The `drop_every` fault chose this connection: what was written reaches the client, then
    /// the socket closes without a WebSocket close.
    async fn drop_fault(&mut self) -> Closed {
        self.log_fault("drop", None).await;
        let _ = self.flush().await;
        Closed::DropFault
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
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures_util::SinkExt;
    use tokio::io::DuplexStream;
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;
    use crate::book::Precision;
    use crate::faults::Faults;
    use crate::kraken::BookKind;
    use crate::kraken::encode::InstrumentPair;
    use crate::kraken::{Frame, decode};
    use crate::market::{BookFrame, BookSink, Market, MarketError};
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
        shared: Arc<Shared>,
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
        let task =
            tokio::spawn(Connection::new(1, server, Arc::clone(&shared), cancel.clone()).run());
        Setup {
            client,
            market,
            stats,
            shared,
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
    async fn a_silence_at_a_time_comes_once() {
        let faults = Faults {
            silence_at: Some(Duration::from_millis(3500)),
            silence_for: Duration::from_secs(2),
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
        let mut times = Vec::new();
        while times.len() < 8 {
            assert_eq!(next(&mut s.client).await.unwrap(), encode::HEARTBEAT);
            times.push((Instant::now() - start).as_millis());
        }
        // Quiet from 3.5 s to 5.5 s (the heartbeat due meanwhile goes out at its end), then a
        // heartbeat a second apart, never quiet again.
        assert_eq!(times, [1000, 2000, 3000, 5500, 6500, 7500, 8500, 9500]);
        assert_eq!(s.stats.snapshot().fault_silences, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silence_for_another_connection_leaves_this_one_alone() {
        let faults = Faults {
            silence_conn: Some(2),
            silence_at: Some(Duration::from_secs(2)),
            silence_every: Some(Duration::from_secs(3)),
            ..Faults::default()
        };
        let mut s = setup(faults, 64).await;
        next(&mut s.client).await.unwrap();
        send(
            &mut s.client,
            r#"{"method":"subscribe","params":{"channel":"instrument","snapshot":false}}"#,
        )
        .await;
        next(&mut s.client).await.unwrap();
        let start = Instant::now();
        for n in 1..=8 {
            assert_eq!(next(&mut s.client).await.unwrap(), encode::HEARTBEAT);
            assert_eq!(Instant::now() - start, Duration::from_secs(n));
        }
        assert_eq!(s.stats.snapshot().fault_silences, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn drop_every_closes_the_connection_whose_turn_it_is_without_a_close_frame() {
        let mut s = subscribed(Faults::default(), 64).await;
        next(&mut s.client).await.unwrap();
        next(&mut s.client).await.unwrap();
        assert_eq!(s.shared.drop_next(), Some(1));
        // The socket ends: no close frame (an error or the end of the stream).
        loop {
            match s.client.next().await {
                Some(Ok(Message::Close(_))) => panic!("a drop sends no WebSocket close"),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
        assert_eq!(s.task.await.unwrap(), Closed::DropFault);
        assert_eq!(s.stats.snapshot().fault_drops, 1);
        assert_eq!(
            s.shared.drop_next(),
            None,
            "a closed connection leaves the turn"
        );
        s.cancel.cancel();
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
