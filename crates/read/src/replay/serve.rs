//! `krakenbook replay --serve`: Kraken's v2 protocol over recorded books, as Kraken would have
//! sent them.
//!
//! A [`ReplayMarket`] behind the project's protocol server (the one the simulator uses): the
//! `instrument` snapshot lists the recorded pairs with their precisions; a `book` subscription is
//! acknowledged at once, gets a snapshot of the recorded book (verified) at the replay's clock,
//! then an update for each recorded message that changes its window, paced as recorded (`speed`
//! times faster; 0: as fast as the client reads).
//!
//! What is served is the merged history: every stream of the symbol (each connection of every
//! collector, or of the one `--collector` names), followed as the incremental export follows it
//! (the segments of [`crate::export::incremental::timeline`], one implementation for both): one
//! stream while its verified span lasts, then, where that span ends, the stream the coverage
//! model verifies there. A switch of stream is invisible to the client when the two books agree
//! at the switch (its window and Kraken's checksum): nothing is sent, and the updates go on from
//! the other stream; when they differ, the client gets a snapshot of the new book (see
//! [`player`] for why a snapshot). Only where every stream of the symbol is dark (a *union gap*)
//! does the client see a gap.
//!
//! What a client sees is what Kraken shows:
//! - levels in Kraken's order ([`emit`]): the recorded levels replayed one at a time with
//!   Kraken's window rule, so a deletion comes before the level that refills its place and a
//!   level merely pushed out of the window gets no message; at the recorded depth the updates are
//!   the recorded ones;
//! - a depth beyond the recorded one is refused with the error the simulator gives for a depth it
//!   does not offer (`Subscription depth not supported`);
//! - the frames of one connection are in time order across its symbols: one task per connection
//!   ([`player`]) merges its subscriptions by recorded time;
//! - a union gap in the record of any subscribed symbol (every connection lost, every collector
//!   stopped, a checksum mismatch no other stream covers) ends the connection like a lost
//!   connection: the socket closes without a WebSocket close frame. Beyond the switch snapshot
//!   above, no snapshot comes unasked: a client that subscribes while its symbol is in a gap
//!   gets the ack at once and the snapshot when the gap ends;
//! - the end of the record (`--to`, or where the last connection's record ends) closes the
//!   connection with code 1000 and the reason `end of recording`;
//! - every frame carries the recorded book's checksum.
//!
//! The replay's clock: at speed S it shows `from + S × (time since the server started)`; at speed 0
//! it is the furthest recorded instant served on any connection (so a client reconnecting after a
//! gap goes on from the gap). A subscription joins at the clock; on a connection already serving,
//! at that connection's own position, so that its frames stay in time order.

mod emit;
mod player;
mod record;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::player::{Command, Player};
use crate::exchange::market::{BookSink, ConnId, Market, MarketError, SubId};
use crate::kraken::Depth;
use crate::kraken::encode::InstrumentPair;
use crate::readback::{BookCursor, ReadbackError};
use crate::store::DbTarget;
use crate::time::Timestamp;

/// The reason of the close frame that ends every connection at the end of the record.
pub const END_OF_RECORDING: &str = "end of recording";

/// Subscribe and unsubscribe requests waiting for a connection's task, at most.
const COMMAND_QUEUE: usize = 256;

/// What to replay.
#[derive(Clone, Debug)]
pub struct ReplaySource {
    /// The database.
    pub database_url: String,
    /// The pairs to serve (default: every pair recorded around `from`).
    pub symbols: Vec<String>,
    /// The instant the replay starts at.
    pub from: Timestamp,
    /// The instant it ends at (default: the end of the record).
    pub to: Option<Timestamp>,
    /// Pace: recorded time runs this many times faster; 0 sends as fast as the client reads.
    pub speed: f64,
    /// Only this collector's streams (default: every collector's, merged).
    pub collector: Option<String>,
}

/// What is known of a served pair from the record at `from`.
#[derive(Clone, Debug)]
struct Served {
    /// The depth it was recorded at, when the record says.
    depth: Option<usize>,
}

/// What the market and its connections' tasks share.
#[derive(Debug)]
struct Shared {
    source: ReplaySource,
    target: DbTarget,
    symbols: HashMap<String, Served>,
    /// When the server started: the replay clock at speed > 0 runs from here.
    started: tokio::time::Instant,
    /// At speed 0: the furthest recorded instant served (unix nanoseconds).
    reached: AtomicI64,
}

impl Shared {
    /// The replay clock now (see the module doc).
    fn clock(&self) -> Timestamp {
        if self.source.speed > 0.0 {
            let elapsed = self.started.elapsed().as_nanos() as f64 * self.source.speed;
            self.source
                .from
                .add_nanos(elapsed.min(i64::MAX as f64) as i64)
        } else {
            Timestamp::from_unix_nanos(self.reached.load(Ordering::Relaxed))
        }
    }

    /// Notes that a connection served the record up to `at`.
    fn reach(&self, at: Timestamp) {
        self.reached.fetch_max(at.unix_nanos(), Ordering::Relaxed);
    }

    /// The wall-clock instant at which the recorded instant `at` is due (speed > 0).
    fn due(&self, at: Timestamp) -> tokio::time::Instant {
        let offset = at.nanos_since(self.source.from).max(0) as f64 / self.source.speed;
        let offset = std::time::Duration::from_nanos(offset.min(u64::MAX as f64) as u64);
        // Beyond what the clock can show: as good as never.
        self.started
            .checked_add(offset)
            .unwrap_or_else(|| self.started + std::time::Duration::from_secs(1 << 32))
    }
}

/// One connection's task: where to send it requests, and how to stop it.
#[derive(Debug)]
struct Handle {
    commands: mpsc::Sender<Command>,
    stop: CancellationToken,
}

/// Recorded books served as a [`Market`].
#[derive(Debug)]
pub struct ReplayMarket {
    shared: Arc<Shared>,
    instruments: Vec<InstrumentPair>,
    players: Mutex<HashMap<ConnId, Handle>>,
    cancel: CancellationToken,
}

impl ReplayMarket {
    /// Reads what the record holds at `source.from`: the pairs, their precisions and depths.
    pub async fn load(
        source: ReplaySource,
        cancel: CancellationToken,
    ) -> Result<ReplayMarket, ReadbackError> {
        let target = DbTarget::parse(&source.database_url)?;
        Self::load_from(target, source, cancel).await
    }

    /// [`load`](Self::load) through `target` (which may prepare each session it opens, e.g.
    /// mount archived ranges); `source.database_url` is not read again.
    pub async fn load_from(
        target: DbTarget,
        source: ReplaySource,
        cancel: CancellationToken,
    ) -> Result<ReplayMarket, ReadbackError> {
        let client = target.connect("krakenbook replay").await?;
        let named = !source.symbols.is_empty();
        let symbols = if named {
            source.symbols.clone()
        } else {
            crate::readback::query::recorded_symbols(&client).await?
        };
        // Each pair served needs a start at or before `from` (on `--collector`'s record when one
        // is named); its precision is the instrument channel's on that start's connection, else
        // the stored levels', and its depth that connection's.
        let mut instruments = Vec::new();
        let mut recorded = HashMap::new();
        for symbol in &symbols {
            let Some(start) =
                BookCursor::find_start(&client, symbol, source.from, source.collector.as_deref())
                    .await?
            else {
                if named {
                    return Err(ReadbackError::NoStart {
                        symbol: symbol.clone(),
                        at: source.from,
                    });
                }
                continue;
            };
            let mut cursor =
                BookCursor::open(&client, symbol, start.clone(), start.timestamp).await?;
            let depth = cursor.subscribed_depth();
            let precision =
                match crate::readback::instrument_precision(&client, symbol, &start).await? {
                    Some(p) => p,
                    None => {
                        while cursor.next().await?.is_some() {}
                        cursor.book().precision()
                    }
                };
            instruments.push(InstrumentPair::online(symbol, precision));
            recorded.insert(symbol.clone(), Served { depth });
        }
        let from = source.from.unix_nanos();
        Ok(ReplayMarket {
            shared: Arc::new(Shared {
                source,
                target,
                symbols: recorded,
                started: tokio::time::Instant::now(),
                reached: AtomicI64::new(from),
            }),
            instruments,
            players: Mutex::new(HashMap::new()),
            cancel,
        })
    }

    fn players(&self) -> std::sync::MutexGuard<'_, HashMap<ConnId, Handle>> {
        self.players.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The depth `symbol` was recorded at, when the record says.
    pub fn recorded_depth(&self, symbol: &str) -> Option<usize> {
        self.shared.symbols.get(symbol).and_then(|r| r.depth)
    }
}

impl Market for ReplayMarket {
    fn instruments(&self) -> &[InstrumentPair] {
        &self.instruments
    }

    fn subscribe_book(
        &self,
        symbol: &str,
        depth: Depth,
        snapshot: bool,
        sink: BookSink,
    ) -> Result<(), MarketError> {
        let Some(recorded) = self.shared.symbols.get(symbol) else {
            return Err(MarketError::UnknownSymbol(symbol.to_owned()));
        };
        if recorded.depth.is_some_and(|r| depth.levels() > r) {
            return Err(MarketError::DepthNotSupported);
        }
        let conn = sink.conn();
        let command = Command::Subscribe {
            symbol: symbol.to_owned(),
            depth: depth.levels(),
            snapshot,
            sink,
        };
        let mut players = self.players();
        let handle = players.entry(conn).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
            let stop = self.cancel.child_token();
            let player = Player::new(Arc::clone(&self.shared), rx);
            let token = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = token.cancelled() => {}
                    () = player.run() => {}
                }
            });
            Handle { commands: tx, stop }
        });
        handle.commands.try_send(command).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => MarketError::Unavailable("too many requests"),
            mpsc::error::TrySendError::Closed(_) => MarketError::Unavailable("the replay ended"),
        })
    }

    fn unsubscribe_book(&self, _symbol: &str, conn: ConnId, sub: SubId) {
        if let Some(handle) = self.players().get(&conn) {
            // A full queue: the subscription's frames are dropped by the connection anyway.
            let _ = handle.commands.try_send(Command::Unsubscribe { sub });
        }
    }

    fn disconnect(&self, conn: ConnId) {
        if let Some(handle) = self.players().remove(&conn) {
            handle.stop.cancel();
        }
    }
}
