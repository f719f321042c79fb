//! Test clients for the simulator and the replay server: tokio-tungstenite for the socket,
//! `kraken::decode` for frames; [`Checker`] verifies with the project's `book::Tracker` (levels
//! applied a whole message at a time, then truncated), [`LevelClient`] truncates after every level.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use krakenbook_core::book::{CHECKSUM_LEVELS, Decimal, OrderBook, Tracker, Verdict};
use krakenbook_core::kraken::{BookKind, Depth, Frame, Request, decode};

/// What the next read gave.
#[derive(Debug)]
pub enum Next {
    /// A text frame, with when it arrived.
    Text(String, Instant),
    /// The server sent a close frame: its code and reason, if it had any.
    Closed(Option<(u16, String)>),
    /// The socket ended without a close frame (an abrupt drop).
    Dropped(String),
    /// Nothing arrived in time.
    Timeout,
}

/// One connection to the simulator.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Every text frame received, in order.
    pub received: Vec<String>,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connects to the simulator");
        Client {
            ws,
            received: Vec::new(),
        }
    }

    pub async fn send(&mut self, request: &Request) {
        self.send_text(&request.to_json()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("request sent");
    }

    pub async fn subscribe_book(&mut self, symbols: &[&str], depth: u64, req_id: u64) {
        let symbols: Vec<String> = symbols.iter().map(|s| s.to_string()).collect();
        let depth = Depth::new(depth).expect("a Kraken depth");
        self.send(&Request::subscribe_book(
            &symbols,
            depth,
            true,
            Some(req_id),
        ))
        .await;
    }

    /// The next text frame (pings and pongs are skipped), within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Next {
        loop {
            let msg = match tokio::time::timeout(wait, self.ws.next()).await {
                Err(_) => return Next::Timeout,
                Ok(m) => m,
            };
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let text = t.as_str().to_owned();
                    self.received.push(text.clone());
                    return Next::Text(text, Instant::now());
                }
                Some(Ok(Message::Close(frame))) => {
                    // Reading on sends the reply that completes the closing handshake.
                    let _ = tokio::time::timeout(wait, async {
                        while let Some(Ok(_)) = self.ws.next().await {}
                    })
                    .await;
                    return Next::Closed(frame.map(|f| (u16::from(f.code), f.reason.to_string())));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Next::Dropped(e.to_string()),
                None => return Next::Dropped("end of stream".into()),
            }
        }
    }

    /// The next text frame; panics on anything else.
    pub async fn text(&mut self) -> String {
        match self.next(Duration::from_secs(10)).await {
            Next::Text(t, _) => t,
            other => panic!("expected a frame, got {other:?}"),
        }
    }
}

/// Counts of what a client saw in book frames, and the checksum verdicts.
#[derive(Debug, Default, Clone)]
pub struct BookStats {
    pub snapshots: u64,
    pub updates: u64,
    pub ok: u64,
    pub mismatches: u64,
    pub unsynced: u64,
    /// Levels with quantity zero.
    pub deletions: u64,
    /// Inserts below the worst level of a full book: a level entering the window from below.
    pub refills: u64,
    /// A price appearing twice on one side of one message.
    pub repeats: u64,
}

/// Verifies every book frame with the project's own `Tracker`.
pub struct Checker {
    pub tracker: Tracker,
    pub stats: BTreeMap<String, BookStats>,
    /// (symbol, index of the update for that symbol) of each mismatch.
    pub mismatch_at: Vec<(String, u64)>,
    pub other_frames: u64,
    pub undecodable: Vec<String>,
    pub unknown: Vec<String>,
}

impl Checker {
    pub fn new(depth: usize) -> Checker {
        Checker {
            tracker: Tracker::new(depth),
            stats: BTreeMap::new(),
            mismatch_at: Vec::new(),
            other_frames: 0,
            undecodable: Vec::new(),
            unknown: Vec::new(),
        }
    }

    /// Takes one frame: book frames are classified and verified, others teach the tracker.
    pub fn observe(&mut self, text: &str) -> Option<Verdict> {
        let frame = match decode(text) {
            Ok(f) => f,
            Err(_) => {
                self.undecodable.push(text.to_owned());
                return None;
            }
        };
        let Frame::Book(msg) = frame else {
            if let Frame::Unknown(t) = frame {
                self.unknown.push(t.to_owned());
            }
            self.tracker.observe(&frame);
            self.other_frames += 1;
            return None;
        };
        let mut verdict = None;
        for data in &msg.data {
            let s = self.stats.entry(data.symbol.to_string()).or_default();
            match msg.kind {
                krakenbook_core::kraken::BookKind::Snapshot => s.snapshots += 1,
                krakenbook_core::kraken::BookKind::Update => {
                    s.updates += 1;
                    if let Some(book) = self.tracker.synced_book(&data.symbol) {
                        let full = book.len();
                        let depth = book.depth();
                        let worst_bid = book.bids().next_back().map(|l| l.price);
                        let worst_ask = book.asks().next_back().map(|l| l.price);
                        for (levels, worst, n, bid) in [
                            (&data.bids, worst_bid, full.0, true),
                            (&data.asks, worst_ask, full.1, false),
                        ] {
                            for (i, l) in levels.iter().enumerate() {
                                let price = l.price.value;
                                if l.qty.value.is_zero() {
                                    s.deletions += 1;
                                }
                                if levels[..i].iter().any(|m| m.price.value == price) {
                                    s.repeats += 1;
                                }
                                let beyond =
                                    worst.is_some_and(|w| if bid { price < w } else { price > w });
                                if !l.qty.value.is_zero() && n == depth && beyond {
                                    s.refills += 1;
                                }
                            }
                        }
                    }
                }
            }
            let v = self.tracker.apply(msg.kind, data);
            match v {
                Verdict::Ok => s.ok += 1,
                Verdict::Mismatch { .. } => {
                    s.mismatches += 1;
                    self.mismatch_at.push((data.symbol.to_string(), s.updates));
                }
                Verdict::Unsynced => s.unsynced += 1,
            }
            verdict = Some(v);
        }
        verdict
    }

    pub fn total(&self) -> BookStats {
        let mut t = BookStats::default();
        for s in self.stats.values() {
            t.snapshots += s.snapshots;
            t.updates += s.updates;
            t.ok += s.ok;
            t.mismatches += s.mismatches;
            t.unsynced += s.unsynced;
            t.deletions += s.deletions;
            t.refills += s.refills;
            t.repeats += s.repeats;
        }
        t
    }
}

/// One side of a book as (price, qty) text, best first.
pub type TextSide = Vec<(String, String)>;

/// A client that applies a book message the way python-kraken-sdk's `SpotOrderBookClient` does:
/// each level in the order given, truncating that side to the subscribed depth after every level
/// (Kraken's checksum guide allows it). A server whose deletion comes after the insert that
/// refills its place makes it drop a level that is still in the book, and its next checksum
/// fails. Only the checksum comes from `krakenbook_core::book`; the books are its own.
pub struct LevelClient {
    /// The depth every book is truncated to (the subscribed one).
    pub depth: usize,
    books: BTreeMap<String, LevelBook>,
    /// Pair precisions from the instrument channel, when the client subscribed to it.
    precisions: BTreeMap<String, krakenbook_core::book::Precision>,
    /// Book messages that verified.
    pub ok: u64,
    /// Book messages whose checksum differed: (symbol, index of the book message of that symbol).
    pub mismatches: Vec<(String, u64)>,
    /// Updates before any snapshot of their symbol (nothing to verify them against).
    pub unsynced: u64,
    /// Book messages per symbol.
    pub messages: BTreeMap<String, u64>,
}

#[derive(Default)]
struct LevelBook {
    bids: BTreeMap<Decimal, Decimal>,
    asks: BTreeMap<Decimal, Decimal>,
}

impl LevelBook {
    /// Applies one level, then truncates the side to `depth` (its worst levels go).
    fn apply(&mut self, bid: bool, price: Decimal, qty: Decimal, depth: usize) {
        let side = if bid { &mut self.bids } else { &mut self.asks };
        if qty.is_zero() {
            side.remove(&price);
        } else {
            side.insert(price, qty);
        }
        while side.len() > depth {
            // Bids: the lowest price is the worst; asks: the highest.
            if bid {
                side.pop_first();
            } else {
                side.pop_last();
            }
        }
    }

    fn checksum(&self, precision: Option<krakenbook_core::book::Precision>) -> u32 {
        let mut book = OrderBook::with_precision(CHECKSUM_LEVELS, precision);
        book.apply_snapshot(
            self.bids
                .iter()
                .rev()
                .take(CHECKSUM_LEVELS)
                .map(|(p, q)| (*p, *q)),
            self.asks
                .iter()
                .take(CHECKSUM_LEVELS)
                .map(|(p, q)| (*p, *q)),
        )
        .expect("levels fit the book");
        book.checksum()
    }
}

impl LevelClient {
    pub fn new(depth: usize) -> LevelClient {
        LevelClient {
            depth,
            books: BTreeMap::new(),
            precisions: BTreeMap::new(),
            ok: 0,
            mismatches: Vec::new(),
            unsynced: 0,
            messages: BTreeMap::new(),
        }
    }

    /// Takes one frame; returns the verdict of a book message (`None` for other frames and for
    /// updates before a snapshot).
    pub fn observe(&mut self, text: &str) -> Option<bool> {
        let frame = decode(text).ok()?;
        let msg = match frame {
            Frame::Book(msg) => msg,
            Frame::Instrument(msg) => {
                for pair in &msg.pairs {
                    self.precisions
                        .insert(pair.symbol.to_string(), pair.precision());
                }
                return None;
            }
            _ => return None,
        };
        let mut verdict = None;
        for data in &msg.data {
            let symbol = data.symbol.to_string();
            let n = self.messages.entry(symbol.clone()).or_default();
            *n += 1;
            let n = *n;
            let book = match msg.kind {
                BookKind::Snapshot => {
                    let book = self.books.entry(symbol.clone()).or_default();
                    *book = LevelBook::default();
                    book
                }
                BookKind::Update => match self.books.get_mut(&symbol) {
                    Some(book) => book,
                    None => {
                        self.unsynced += 1;
                        continue;
                    }
                },
            };
            for l in &data.bids {
                book.apply(true, l.price.value, l.qty.value, self.depth);
            }
            for l in &data.asks {
                book.apply(false, l.price.value, l.qty.value, self.depth);
            }
            let ok = book.checksum(self.precisions.get(&symbol).copied()) == data.checksum;
            if ok {
                self.ok += 1;
            } else {
                self.mismatches.push((symbol.clone(), n));
                // Start over at the next snapshot, as a client that resubscribes would.
                self.books.remove(&symbol);
            }
            verdict = Some(ok);
        }
        verdict
    }

    /// Book messages seen, over all symbols.
    pub fn total(&self) -> u64 {
        self.messages.values().sum()
    }

    /// The book of `symbol` as (price, qty) text, bids best first then asks best first.
    pub fn book(&self, symbol: &str) -> Option<(TextSide, TextSide)> {
        let b = self.books.get(symbol)?;
        let text = |(p, q): (&Decimal, &Decimal)| (p.to_string(), q.to_string());
        Some((
            b.bids.iter().rev().map(text).collect(),
            b.asks.iter().map(text).collect(),
        ))
    }
}
