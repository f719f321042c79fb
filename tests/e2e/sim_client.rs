//! A test client for the simulator, built on the project's engine: tokio-tungstenite for the
//! socket, `kraken::decode` for frames and `book::Tracker` for checksums.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use krakenbook::book::{Tracker, Verdict};
use krakenbook::kraken::{Depth, Frame, Request, decode};

/// What the next read gave.
#[derive(Debug)]
pub enum Next {
    /// A text frame, with when it arrived.
    Text(String, Instant),
    /// The server sent a close frame.
    Closed,
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
                Some(Ok(Message::Close(_))) => {
                    // Reading on sends the reply that completes the closing handshake.
                    let _ = tokio::time::timeout(wait, async {
                        while let Some(Ok(_)) = self.ws.next().await {}
                    })
                    .await;
                    return Next::Closed;
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
                krakenbook::kraken::BookKind::Snapshot => s.snapshots += 1,
                krakenbook::kraken::BookKind::Update => {
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
