//! `krakenbook replay --serve`: Kraken's v2 protocol over recorded books.
//!
//! A [`ReplayMarket`] behind the project's protocol server (the one the simulator uses): the
//! `instrument` snapshot lists the recorded pairs with their precisions; a `book` subscription
//! gets a snapshot of the book rebuilt (and verified) at the start instant, then one update per
//! recorded message, paced as recorded (`speed` times faster; 0: as fast as the client reads).
//!
//! Updates are the difference between the subscriber's window (the top `depth` levels) before and
//! after each recorded message: changed and new levels with their quantity, levels gone with
//! quantity 0. Applied with Kraken's rules (and truncated to the depth), they give exactly the
//! recorded book's window, at any depth up to the recorded one, and every frame carries the
//! recorded book's checksum. Where the recording has a gap, the stream pauses and resumes with a
//! fresh snapshot once the recording verified again. Each subscription reads the database on a
//! connection of its own, so that one slow reader never holds up another.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::book::{BookView, Decimal, Precision, PriceLevel};
use crate::exchange::market::{BookFrame, BookSink, ConnId, Market, MarketError, SubId};
use crate::kraken::encode::{self, InstrumentPair};
use crate::kraken::{BookKind, Depth};
use crate::readback::{BookCursor, ReadbackError};
use crate::store::DbTarget;
use crate::time::Timestamp;

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
    /// Only this collector's record.
    pub collector: Option<String>,
}

/// Recorded books served as a [`Market`].
#[derive(Debug)]
pub struct ReplayMarket {
    source: ReplaySource,
    target: DbTarget,
    instruments: Vec<InstrumentPair>,
    /// Each subscription's task, by (connection, subscription).
    tasks: Mutex<HashMap<(ConnId, SubId), CancellationToken>>,
    /// When the server started: every subscription's clock runs from here.
    started: tokio::time::Instant,
    cancel: CancellationToken,
}

impl ReplayMarket {
    /// Reads what the record holds at `source.from`: the pairs and their precisions.
    pub async fn load(
        source: ReplaySource,
        cancel: CancellationToken,
    ) -> Result<ReplayMarket, ReadbackError> {
        let target = DbTarget::parse(&source.database_url)?;
        let client = target.connect("krakenbook replay").await?;
        let named = !source.symbols.is_empty();
        let symbols = if named {
            source.symbols.clone()
        } else {
            crate::readback::query::recorded_symbols(&client).await?
        };
        // Each pair served needs a verified start at or before `from` on the chosen record; its
        // precision is the instrument channel's on that connection, else the stored levels'.
        let mut instruments = Vec::new();
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
            let precision = match crate::readback::instrument_precision(&client, symbol, &start)
                .await?
            {
                Some(p) => p,
                None => {
                    let mut cursor =
                        BookCursor::open(&client, symbol, start.clone(), start.timestamp).await?;
                    while cursor.next().await?.is_some() {}
                    cursor.book().precision()
                }
            };
            instruments.push(InstrumentPair::online(symbol, precision));
        }
        Ok(ReplayMarket {
            source,
            target,
            instruments,
            tasks: Mutex::new(HashMap::new()),
            started: tokio::time::Instant::now(),
            cancel,
        })
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<(ConnId, SubId), CancellationToken>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
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
        if !self.instruments.iter().any(|p| p.symbol == symbol) {
            return Err(MarketError::UnknownSymbol(symbol.to_owned()));
        }
        let stop = self.cancel.child_token();
        self.tasks().insert((sink.conn(), sink.sub()), stop.clone());
        let stream = Subscription {
            symbol: symbol.to_owned(),
            depth: depth.levels(),
            snapshot,
            sink,
            source: self.source.clone(),
            target: self.target.clone(),
            started: self.started,
        };
        tokio::spawn(async move {
            let symbol = stream.symbol.clone();
            tokio::select! {
                _ = stop.cancelled() => {}
                result = stream.run() => {
                    if let Err(e) = result {
                        tracing::warn!(%symbol, error = %e, "replay: subscription ended");
                    }
                }
            }
        });
        Ok(())
    }

    fn unsubscribe_book(&self, _symbol: &str, conn: ConnId, sub: SubId) {
        if let Some(token) = self.tasks().remove(&(conn, sub)) {
            token.cancel();
        }
    }

    fn disconnect(&self, conn: ConnId) {
        self.tasks().retain(|(c, _), token| {
            if *c == conn {
                token.cancel();
            }
            *c != conn
        });
    }
}

struct Subscription {
    symbol: String,
    depth: usize,
    snapshot: bool,
    sink: BookSink,
    source: ReplaySource,
    target: DbTarget,
    started: tokio::time::Instant,
}

impl Subscription {
    async fn run(self) -> Result<(), ReadbackError> {
        let client = self.target.connect("krakenbook replay").await?;
        // The replay clock started with the server: a later subscriber joins at the recorded
        // instant the clock shows now (at speed 0, at the start).
        let from = if self.source.speed > 0.0 {
            let elapsed = self.started.elapsed().as_nanos() as f64 * self.source.speed;
            self.source
                .from
                .add_nanos(elapsed.min(i64::MAX as f64) as i64)
        } else {
            self.source.from
        };
        let start = match BookCursor::find_start(
            &client,
            &self.symbol,
            from,
            self.source.collector.as_deref(),
        )
        .await?
        {
            Some(s) => s,
            None => return Ok(()),
        };
        let to = self
            .source
            .to
            .unwrap_or(Timestamp::from_unix_nanos(i64::MAX));
        let mut cursor = BookCursor::open(&client, &self.symbol, start, to).await?;
        // Up to the start instant: build the book.
        let mut last_ts = from;
        while cursor.peek_timestamp().await?.is_some_and(|t| t <= from) {
            if let Some(step) = cursor.next().await? {
                last_ts = step.timestamp;
            }
        }
        let symbol: Arc<str> = Arc::from(self.symbol.as_str());
        let mut window: Option<BookView> = None;
        let mut last_checksum = 0u32;
        if cursor.is_synced() && self.snapshot {
            let view = cursor.book().view(self.depth);
            last_checksum = cursor.book().checksum();
            self.send(
                &symbol,
                BookKind::Snapshot,
                &view.bids,
                &view.asks,
                cursor.book().precision(),
                last_checksum,
                last_ts,
                true,
            )
            .await?;
            window = Some(view);
        } else if cursor.is_synced() {
            window = Some(cursor.book().view(self.depth));
        }
        loop {
            let Some(step) = cursor.next().await? else {
                return Ok(());
            };
            if self.source.speed > 0.0 {
                let offset =
                    step.timestamp.nanos_since(self.source.from).max(0) as f64 / self.source.speed;
                tokio::time::sleep_until(self.started + Duration::from_nanos(offset as u64)).await;
            }
            if step.verified != Some(true) {
                // A gap in the record: nothing to send until it verifies again (a snapshot).
                window = None;
                continue;
            }
            let precision = step.book.precision();
            let view = step.book.view(self.depth);
            let checksum = step.book.checksum();
            match &window {
                Some(before) if !step.snapshot => {
                    let (bids, asks) = (
                        diff(&before.bids, &view.bids, true),
                        diff(&before.asks, &view.asks, false),
                    );
                    if bids.is_empty() && asks.is_empty() {
                        window = Some(view);
                        continue;
                    }
                    let changed = checksum != last_checksum;
                    self.send(
                        &symbol,
                        BookKind::Update,
                        &bids,
                        &asks,
                        precision,
                        checksum,
                        step.timestamp,
                        changed,
                    )
                    .await?;
                }
                _ => {
                    self.send(
                        &symbol,
                        BookKind::Snapshot,
                        &view.bids,
                        &view.asks,
                        precision,
                        checksum,
                        step.timestamp,
                        true,
                    )
                    .await?;
                }
            }
            last_checksum = checksum;
            window = Some(view);
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        symbol: &Arc<str>,
        kind: BookKind,
        bids: &[PriceLevel],
        asks: &[PriceLevel],
        precision: Precision,
        checksum: u32,
        timestamp: Timestamp,
        checksum_changed: bool,
    ) -> Result<(), ReadbackError> {
        let text = encode::book(
            kind,
            symbol,
            bids.iter().map(|l| (l.price, l.qty)),
            asks.iter().map(|l| (l.price, l.qty)),
            precision,
            checksum,
            timestamp,
        );
        let frame = Arc::new(BookFrame {
            symbol: Arc::clone(symbol),
            kind,
            checksum,
            checksum_changed,
            text: text.into(),
        });
        // The subscriber gone is the end of this subscription, not an error.
        let _ = self.sink.send_waiting(&frame).await;
        Ok(())
    }
}

/// The levels that turn window `before` into window `after` (both best first): new or changed
/// levels with their quantity, vanished levels with quantity zero.
fn diff(before: &[PriceLevel], after: &[PriceLevel], bids: bool) -> Vec<PriceLevel> {
    use std::cmp::Ordering;
    // Best first: bids descend, asks ascend. `order(a, b)` is Less when a comes first.
    let order = |a: &Decimal, b: &Decimal| if bids { b.cmp(a) } else { a.cmp(b) };
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < before.len() || j < after.len() {
        match (before.get(i), after.get(j)) {
            (Some(b), Some(a)) => match order(&b.price, &a.price) {
                Ordering::Equal => {
                    if b.qty != a.qty {
                        out.push(*a);
                    }
                    i += 1;
                    j += 1;
                }
                Ordering::Less => {
                    out.push(PriceLevel {
                        price: b.price,
                        qty: Decimal::ZERO,
                    });
                    i += 1;
                }
                Ordering::Greater => {
                    out.push(*a);
                    j += 1;
                }
            },
            (Some(b), None) => {
                out.push(PriceLevel {
                    price: b.price,
                    qty: Decimal::ZERO,
                });
                i += 1;
            }
            (None, Some(a)) => {
                out.push(*a);
                j += 1;
            }
            (None, None) => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::OrderBook;
    use proptest::prelude::*;

    fn level(p: u128, q: u128) -> (Decimal, Decimal) {
        (Decimal::new(p, 1).unwrap(), Decimal::new(q, 2).unwrap())
    }

    proptest! {
        /// Applying the diff of two windows to the first gives the second, at any depth.
        #[test]
        fn a_diff_turns_one_window_into_the_next(
            first in prop::collection::vec((1u128..60, 1u128..5), 0..40),
            changes in prop::collection::vec((1u128..60, 0u128..5), 0..20),
            depth in 1usize..30,
        ) {
            let mut recorded = OrderBook::new(1000);
            recorded.apply_snapshot(first.iter().map(|&(p, q)| level(p, q)), first.iter().map(|&(p, q)| level(p + 100, q))).unwrap();
            let before = recorded.view(depth);
            recorded.apply_update(changes.iter().map(|&(p, q)| level(p, q)), changes.iter().map(|&(p, q)| level(p + 100, q))).unwrap();
            let after = recorded.view(depth);
            let mut client = OrderBook::new(depth);
            client.apply_snapshot(before.bids.iter().map(|l| (l.price, l.qty)), before.asks.iter().map(|l| (l.price, l.qty))).unwrap();
            let bids = diff(&before.bids, &after.bids, true);
            let asks = diff(&before.asks, &after.asks, false);
            client.apply_update(bids.iter().map(|l| (l.price, l.qty)), asks.iter().map(|l| (l.price, l.qty))).unwrap();
            prop_assert_eq!(client.view(depth), after);
        }
    }
}
