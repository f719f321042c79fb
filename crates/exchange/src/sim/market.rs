//! The simulated market: one [`TrueBook`] per pair, moved by random events at each pair's rate,
//! served at any depth as Kraken serves it.
//!
//! Each pair has its own random stream (seeded with the run's seed and the pair's symbol) for
//! both its book and its event times, and starts trading when it is first subscribed. So the
//! frames a client receives for a pair depend only on the seed and the order of its requests,
//! not on when it connected or on other pairs; only the timestamps differ between runs.
//! Once started, a pair keeps trading while nobody watches, so a reconnecting client finds that
//! the market moved on.
//!
//! For every depth served for a pair there is one *view*: an [`OrderBook`] (the project's own
//! engine) holding what that depth's subscribers hold. Each op of an event is passed, as it is
//! applied, to every view's [`Stream`], which collects what Kraken's window rule sends for it;
//! the levels are applied to the view's book, checksummed by [`OrderBook::checksum`], encoded once,
//! and pushed to every subscriber at that depth. When the stream says a client truncating after
//! the message may hold a level the event deleted below the window, the view's book is compared
//! with the true window and the deletion of each such level is appended. A view exists while it
//! has subscribers; a new one starts from the true book's top levels.
//!
//! What must always hold: a view's book equals the true book's top `depth` levels after every
//! event (the window rule guarantees it; the tests check it), so every frame's checksum is the
//! one a correct client computes, whether it truncates after each level or after each message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::book::{Dynamics, Op, TrueBook};
use super::window::Stream;
use super::{PairSpec, SimConfig};
use crate::book::{Decimal, OrderBook, Precision};
use crate::kraken::encode::{self, InstrumentPair};
use crate::kraken::{BookKind, Depth};
use crate::market::{BookFrame, BookSink, ConnId, Market, MarketError, SubId};
use crate::rng::Rng;
use crate::time::Timestamp;

/// Events drawn for one pair in one step, at most (a pair far behind catches up over steps).
const MAX_EVENTS_PER_STEP: u32 = 4096;

/// The simulated market (a [`Market`]).
#[derive(Debug)]
pub struct SimMarket {
    instruments: Vec<InstrumentPair>,
    index: HashMap<String, usize>,
    state: Mutex<State>,
    dynamics: Dynamics,
    start: Instant,
    start_wall: Timestamp,
    events: AtomicU64,
    frames: AtomicU64,
}

#[derive(Debug)]
struct State {
    pairs: Vec<PairState>,
    /// Pairs that have started trading, in the order they started.
    active: Vec<usize>,
    ops: Vec<Op>,
}

#[derive(Debug)]
struct PairState {
    symbol: Arc<str>,
    precision: Precision,
    mid: u64,
    /// Mean time between events, in nanoseconds (`None`: the book never moves).
    mean_gap: Option<f64>,
    rng: Rng,
    book: Option<TrueBook>,
    /// When the next event is due, in nanoseconds since the market started.
    next_at: u64,
    /// Time of the last change (the snapshot's timestamp).
    last_change: Timestamp,
    views: Vec<View>,
}

#[derive(Debug)]
struct View {
    depth: Depth,
    book: OrderBook,
    checksum: u32,
    /// What the current event sends.
    stream: Stream,
    sinks: Vec<BookSink>,
}

fn dec(mantissa: u64, scale: u8) -> Decimal {
    // Scales are checked at configuration (at most Decimal::MAX_SCALE), so this is exact.
    Decimal::new(u128::from(mantissa), scale).unwrap_or(Decimal::ZERO)
}

impl SimMarket {
    /// A market for `config.pairs`, none trading yet.
    pub fn new(config: &SimConfig) -> Self {
        let pairs: Vec<PairState> = config
            .pairs
            .iter()
            .map(|spec| PairState::new(spec, config))
            .collect();
        SimMarket {
            instruments: config
                .pairs
                .iter()
                .map(|p| InstrumentPair::online(&p.symbol, p.precision))
                .collect(),
            index: config
                .pairs
                .iter()
                .enumerate()
                .map(|(i, p)| (p.symbol.clone(), i))
                .collect(),
            state: Mutex::new(State {
                pairs,
                active: Vec::new(),
                ops: Vec::new(),
            }),
            dynamics: Dynamics::new(config.book_levels),
            start: Instant::now(),
            start_wall: Timestamp::now(),
            events: AtomicU64::new(0),
            frames: AtomicU64::new(0),
        }
    }

    /// Book events drawn so far, over all pairs.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Book frames encoded so far (one per depth served per event that changed it).
    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug in this module; the state is still
        // consistent enough to serve (each event is applied before it is published).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn wall(&self, ns: u64) -> Timestamp {
        self.start_wall
            .add_nanos(i64::try_from(ns).unwrap_or(i64::MAX))
    }

    /// Draws and publishes every event due by now.
    pub fn step(&self) {
        let now = self.now_ns();
        let mut guard = self.lock();
        let st = &mut *guard;
        let mut events = 0u64;
        for &i in &st.active {
            let pair = &mut st.pairs[i];
            let Some(mean) = pair.mean_gap else { continue };
            let mut n = 0;
            while pair.next_at <= now && n < MAX_EVENTS_PER_STEP {
                let at = self.wall(pair.next_at);
                let frames = pair.event(&self.dynamics, at, &mut st.ops);
                self.frames.fetch_add(frames, Ordering::Relaxed);
                pair.next_at = pair.next_at.saturating_add(pair.rng.exp_nanos(mean));
                n += 1;
            }
            events += u64::from(n);
        }
        self.events.fetch_add(events, Ordering::Relaxed);
    }

    /// The task that steps the market every `tick` until cancelled.
    pub fn clock(self: &Arc<Self>, tick: Duration) -> MarketClock {
        MarketClock {
            market: Arc::clone(self),
            tick,
        }
    }
}

impl PairState {
    fn new(spec: &PairSpec, config: &SimConfig) -> Self {
        let mut rng = Rng::derive(config.seed, &spec.symbol);
        let mid = spec.mid.unwrap_or_else(|| rng.range(100_000, 9_999_999));
        let rate = spec.rate.unwrap_or(config.rate);
        PairState {
            symbol: spec.symbol.as_str().into(),
            precision: spec.precision,
            mid,
            mean_gap: (rate > 0.0).then(|| 1e9 / rate),
            rng,
            book: None,
            next_at: 0,
            last_change: Timestamp::default(),
            views: Vec::new(),
        }
    }

    /// Draws one event, updates every view and publishes their frames; returns how many.
    fn event(&mut self, dynamics: &Dynamics, at: Timestamp, ops: &mut Vec<Op>) -> u64 {
        let Some(book) = self.book.as_mut() else {
            return 0;
        };
        let views = &mut self.views;
        for v in views.iter_mut() {
            v.stream.clear();
        }
        book.event(&mut self.rng, dynamics, ops, &mut |after, op, existed| {
            for v in views.iter_mut() {
                v.stream.on_op(after, op, existed);
            }
        });
        self.last_change = at;
        let p = self.precision;
        let mut frames = 0;
        for v in &mut self.views {
            if v.stream.is_empty() {
                continue;
            }
            if v.stream.needs_check() {
                // The view's book is what a client truncating after the message holds.
                let mut applied = v.book.clone();
                apply(&mut applied, &v.stream, p, &self.symbol);
                v.stream.settle(&applied, &book.bids, &book.asks, p.price);
            }
            apply(&mut v.book, &v.stream, p, &self.symbol);
            let levels = |side: &[(u64, u64)]| {
                side.iter()
                    .map(|&(price, qty)| (dec(price, p.price), dec(qty, p.qty)))
                    .collect::<Vec<_>>()
            };
            let (b, a) = (levels(&v.stream.bids), levels(&v.stream.asks));
            let checksum = v.book.checksum();
            let changed = checksum != v.checksum;
            v.checksum = checksum;
            let text = encode::book(BookKind::Update, &self.symbol, b, a, p, checksum, at);
            let frame = Arc::new(BookFrame {
                symbol: Arc::clone(&self.symbol),
                kind: BookKind::Update,
                checksum,
                checksum_changed: changed,
                text: text.into(),
            });
            frames += 1;
            v.sinks.retain(|s| s.send(&frame).is_ok());
        }
        self.views.retain(|v| !v.sinks.is_empty());
        frames
    }

    fn start(&mut self, dynamics: &Dynamics, now: u64, at: Timestamp) {
        self.book = Some(TrueBook::generate(
            &mut self.rng,
            self.mid,
            self.precision.qty,
            dynamics,
        ));
        self.last_change = at;
        if let Some(mean) = self.mean_gap {
            self.next_at = now.saturating_add(self.rng.exp_nanos(mean));
        }
    }

    fn view(&mut self, depth: Depth) -> &mut View {
        if let Some(i) = self.views.iter().position(|v| v.depth == depth) {
            return &mut self.views[i];
        }
        let p = self.precision;
        let mut book = OrderBook::with_precision(depth.levels(), Some(p));
        if let Some(t) = &self.book {
            let take = |l: super::book::Lvl| (dec(l.price, p.price), dec(l.qty, p.qty));
            if let Err(e) = book.apply_snapshot(
                t.bids.best_first().take(depth.levels()).map(take),
                t.asks.best_first().take(depth.levels()).map(take),
            ) {
                tracing::error!(symbol = %self.symbol, error = %e, "view book rejected a level");
            }
        }
        let checksum = book.checksum();
        self.views.push(View {
            depth,
            book,
            checksum,
            stream: Stream::new(depth.levels()),
            sinks: Vec::new(),
        });
        let last = self.views.len() - 1;
        &mut self.views[last]
    }
}

/// Applies a stream's levels to a view's book (a client that truncates after the message).
fn apply(book: &mut OrderBook, stream: &Stream, p: Precision, symbol: &str) {
    let levels = |side: &[(u64, u64)]| {
        side.iter()
            .map(|&(price, qty)| (dec(price, p.price), dec(qty, p.qty)))
            .collect::<Vec<_>>()
    };
    if let Err(e) = book.apply_update(levels(&stream.bids), levels(&stream.asks)) {
        // Mantissas are u64 at the book's own precision: this cannot happen.
        tracing::error!(%symbol, error = %e, "view book rejected a level");
    }
}

impl Market for SimMarket {
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
        let Some(&i) = self.index.get(symbol) else {
            return Err(MarketError::UnknownSymbol(symbol.to_owned()));
        };
        let now = self.now_ns();
        let at = self.wall(now);
        let mut guard = self.lock();
        let st = &mut *guard;
        let pair = &mut st.pairs[i];
        if pair.book.is_none() {
            pair.start(&self.dynamics, now, at);
            st.active.push(i);
        }
        let symbol = Arc::clone(&pair.symbol);
        let p = pair.precision;
        let last_change = pair.last_change;
        let view = pair.view(depth);
        if snapshot {
            let text = encode::book(
                BookKind::Snapshot,
                &symbol,
                view.book.bids().map(|l| (l.price, l.qty)),
                view.book.asks().map(|l| (l.price, l.qty)),
                p,
                view.checksum,
                last_change,
            );
            let frame = Arc::new(BookFrame {
                symbol,
                kind: BookKind::Snapshot,
                checksum: view.checksum,
                checksum_changed: true,
                text: text.into(),
            });
            self.frames.fetch_add(1, Ordering::Relaxed);
            if sink.send(&frame).is_err() {
                // The connection is already gone or overflowing: nothing to serve.
                pair.views.retain(|v| !v.sinks.is_empty());
                return Ok(());
            }
        }
        view.sinks.push(sink);
        Ok(())
    }

    fn unsubscribe_book(&self, symbol: &str, conn: ConnId, sub: SubId) {
        let Some(&i) = self.index.get(symbol) else {
            return;
        };
        let mut st = self.lock();
        let pair = &mut st.pairs[i];
        for v in &mut pair.views {
            v.sinks.retain(|s| !(s.conn() == conn && s.sub() == sub));
        }
        pair.views.retain(|v| !v.sinks.is_empty());
    }

    fn disconnect(&self, conn: ConnId) {
        let mut guard = self.lock();
        let st = &mut *guard;
        for &i in &st.active {
            let pair = &mut st.pairs[i];
            for v in &mut pair.views {
                v.sinks.retain(|s| s.conn() != conn);
            }
            pair.views.retain(|v| !v.sinks.is_empty());
        }
    }
}

/// The task that moves the market: steps it every tick until cancelled.
#[derive(Debug)]
pub struct MarketClock {
    market: Arc<SimMarket>,
    tick: Duration,
}

impl MarketClock {
    /// Steps the market until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let mut interval = tokio::time::interval(self.tick);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = interval.tick() => self.market.step(),
            }
        }
    }
}
