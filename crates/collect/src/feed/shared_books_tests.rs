//! The test that decides whether sharing books is right: two worlds of replicas receive the
//! very same frames at the very same instants, one world's sessions sharing books
//! ([`SharedBooks`]), the other's each with books of their own (as without sharing). Every
//! action of every session (journal records with their verdicts and best bid and ask, events,
//! requests, closes) must be the same in both, frame for frame; a book state the sharing world
//! journals (at the very frame the other world's does) must be the book the other world's
//! session holds at that frame; the symbols' metrics must end equal. The market is random (seeded): replicas lag each other by random
//! amounts, lose frames, receive corrupted and reformatted copies (same content, other bytes),
//! resubscribe after their mismatches and reconnect.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::book::{Decimal, OrderBook};
use crate::feed::session::{Action, Continuity, Received, Session};
use crate::feed::{FeedConfig, Lost};
use crate::kraken::encode::{self, InstrumentPair};
use crate::kraken::{BookKind, Depth};
use crate::metrics::Metrics;
use crate::record::RecordBody;
use crate::rng::Rng;

const PRECISION: Precision = Precision { price: 1, qty: 4 };

/// How often things go wrong, per frame delivered to one replica.
#[derive(Clone, Copy)]
struct Faults {
    drop: f64,
    corrupt: f64,
    reformat: f64,
    /// Per step of the world.
    reconnect: f64,
    /// Per frame: something a hostile exchange might send instead of, or besides, the copy
    /// (binary frames, several symbols, symbols not asked for, instrument updates, depth acks,
    /// unsubscriptions, stray snapshots, a misleading "symbol" key, repeated frames).
    odd: f64,
}

const FAULTS: Faults = Faults {
    drop: 0.004,
    corrupt: 0.004,
    reformat: 0.01,
    reconnect: 0.002,
    odd: 0.0,
};

const CALM: Faults = Faults {
    drop: 0.0,
    corrupt: 0.0,
    reformat: 0.0,
    reconnect: 0.0,
    odd: 0.0,
};

/// What the queues hold before a frame that is to be delivered as a binary frame.
const BINARY: &str = "\u{1}binary:";

/// The exchange: one true book per symbol, every change a frame with its checksum.
struct Market {
    symbols: Vec<String>,
    books: Vec<OrderBook>,
    depth: usize,
    wall: Timestamp,
    rng: Rng,
    /// Book frames written as Python's `json.dumps` spaces them (`", "`, `": "`).
    spaced: bool,
}

impl Market {
    /// A book frame in the market's layout.
    fn layout(&self, frame: String) -> String {
        if self.spaced {
            frame.replace(',', ", ").replace("\":", "\": ")
        } else {
            frame
        }
    }

    fn new(symbols: &[&str], depth: usize, seed: u64) -> Self {
        let mut market = Market {
            symbols: symbols.iter().map(|s| s.to_string()).collect(),
            books: symbols
                .iter()
                .map(|_| OrderBook::with_precision(depth, Some(PRECISION)))
                .collect(),
            depth,
            wall: Timestamp::parse("2026-12-07T10:00:00Z").unwrap(),
            rng: Rng::derive(seed, "market"),
            spaced: false,
        };
        for i in 0..symbols.len() {
            for _ in 0..depth {
                market.change(i);
            }
        }
        market
    }

    fn level(&mut self, bid: bool) -> (Decimal, Decimal) {
        let ticks = u128::from(self.rng.below(3 * self.depth as u64));
        let price = if bid { 99_999 - ticks } else { 100_000 + ticks };
        let qty = if self.rng.chance(0.3) {
            0
        } else {
            1 + u128::from(self.rng.below(2_000_000))
        };
        (
            Decimal::new(price, 1).unwrap(),
            Decimal::new(qty, 4).unwrap(),
        )
    }

    /// A random change of symbol `i`'s book, applied; its frame.
    fn change(&mut self, i: usize) -> String {
        self.wall = self.wall.add_nanos(1_000_000);
        let n = 1 + self.rng.below(3);
        let (mut bids, mut asks) = (Vec::new(), Vec::new());
        for _ in 0..n {
            if self.rng.chance(0.5) {
                let l = self.level(true);
                bids.push(l);
            } else {
                let l = self.level(false);
                asks.push(l);
            }
        }
        let book = &mut self.books[i];
        book.apply_update(bids.iter().copied(), asks.iter().copied())
            .unwrap();
        let checksum = book.checksum();
        self.layout(encode::book(
            BookKind::Update,
            &self.symbols[i],
            bids,
            asks,
            PRECISION,
            checksum,
            self.wall,
        ))
    }

    fn snapshot(&self, i: usize) -> String {
        let book = &self.books[i];
        let view = book.view(self.depth);
        self.layout(encode::book(
            BookKind::Snapshot,
            &self.symbols[i],
            view.bids.iter().map(|l| (l.price, l.qty)),
            view.asks.iter().map(|l| (l.price, l.qty)),
            PRECISION,
            book.checksum(),
            self.wall,
        ))
    }

    fn ack(&self, method: &str, symbol: &str) -> String {
        let snapshot = if method == "subscribe" {
            r#","snapshot":true"#
        } else {
            ""
        };
        format!(
            r#"{{"method":"{method}","result":{{"channel":"book","depth":{}{snapshot},"symbol":"{symbol}"}},"success":true}}"#,
            self.depth
        )
    }
}

/// One replica in both worlds: the session that shares books and the one that does not.
struct Replica {
    index: usize,
    sharing: Session,
    own: Session,
    queue: VecDeque<String>,
    connects: u64,
}

struct World {
    config: FeedConfig,
    market: Market,
    books: Arc<SharedBooks>,
    metrics_sharing: Arc<Metrics>,
    metrics_own: Arc<Metrics>,
    replicas: Vec<Replica>,
    rng: Rng,
    faults: Faults,
    start: Instant,
    /// Book states journaled: (sharing world, own world).
    states: (u64, u64),
    frames: u64,
    /// Check the lineages' invariants and every replica's book in both worlds after each frame.
    checking: bool,
}

impl World {
    fn new(replicas: usize, symbols: &[&str], depth: u64, seed: u64, faults: Faults) -> Self {
        World::with_states_every(replicas, symbols, depth, seed, faults, 7)
    }

    fn with_states_every(
        replicas: usize,
        symbols: &[&str],
        depth: u64,
        seed: u64,
        faults: Faults,
        book_state_every: u64,
    ) -> Self {
        let mut config = FeedConfig::new(
            url::Url::parse("ws://127.0.0.1:1/v2").unwrap(),
            Depth::new(depth).unwrap(),
        );
        config.book_state_every = book_state_every;
        config.silence_timeout = Duration::from_secs(3600);
        let mut world = World {
            config,
            market: Market::new(symbols, depth as usize, seed),
            books: Arc::new(SharedBooks::new()),
            metrics_sharing: Arc::new(Metrics::default()),
            metrics_own: Arc::new(Metrics::default()),
            replicas: Vec::new(),
            rng: Rng::derive(seed, "world"),
            faults,
            start: Instant::now(),
            states: (0, 0),
            frames: 0,
            checking: false,
        };
        for index in 0..replicas {
            let r = world.open(index, Continuity::default(), Continuity::default(), 0);
            world.replicas.push(r);
            world.settle(index);
        }
        world
    }

    fn now(&self) -> (Instant, Timestamp) {
        (self.start, self.market.wall)
    }

    fn open(&self, index: usize, a: Continuity, b: Continuity, connects: u64) -> Replica {
        self.open_as(index, index, a, b, connects)
    }

    /// [`World::open`], the sharing session numbered `share` among the replicas sharing books.
    fn open_as(
        &self,
        index: usize,
        share: usize,
        a: Continuity,
        b: Continuity,
        connects: u64,
    ) -> Replica {
        let (now, at) = self.now();
        let conn_id = 100 * index as u64 + connects;
        let symbols = &self.market.symbols;
        let sharing = Session::open(
            conn_id,
            symbols,
            a,
            &self.config,
            Arc::clone(&self.metrics_sharing),
            now,
            at,
        )
        .share_books(Arc::clone(&self.books), share);
        let own = Session::open(
            conn_id,
            symbols,
            b,
            &self.config,
            Arc::clone(&self.metrics_own),
            now,
            at,
        );
        let mut queue = VecDeque::new();
        queue.push_back(encode::status(conn_id));
        let pairs: Vec<InstrumentPair> = symbols
            .iter()
            .map(|s| InstrumentPair::online(s, PRECISION))
            .collect();
        // The book subscriptions follow the instrument snapshot: answered when sent.
        queue.push_back(encode::instrument_snapshot(&pairs));
        Replica {
            index,
            sharing,
            own,
            queue,
            connects,
        }
    }

    /// Carries out both sessions' actions and requires them equal (book states apart: the
    /// sharing one's must be the own one's book now).
    fn settle(&mut self, r: usize) {
        let rep = &mut self.replicas[r];
        let mut a = Vec::new();
        while let Some(action) = rep.sharing.next_action() {
            a.push(action);
        }
        let mut b = Vec::new();
        while let Some(action) = rep.own.next_action() {
            b.push(action);
        }
        let (a_states, a): (Vec<_>, Vec<_>) = a.into_iter().partition(is_state);
        let (b_states, b): (Vec<_>, Vec<_>) = b.into_iter().partition(is_state);
        assert_eq!(
            format!("{a:#?}"),
            format!("{b:#?}"),
            "replica {} (connection {}) acted differently with shared books",
            rep.index,
            rep.connects
        );
        assert_eq!(
            a_states.len(),
            b_states.len(),
            "replica {} journaled book states at other frames with shared books",
            rep.index
        );
        self.states.0 += a_states.len() as u64;
        self.states.1 += b_states.len() as u64;
        for action in a_states {
            let Action::Journal(entry) = action else {
                unreachable!()
            };
            let RecordBody::BookState(state) = entry.body else {
                unreachable!()
            };
            let book = rep
                .own
                .own_book_of(&state.symbol)
                .expect("a book state where the own session has no book");
            let view = book.view(book.depth());
            assert_eq!(state.bids, view.bids, "a shared book state's bids");
            assert_eq!(state.asks, view.asks, "a shared book state's asks");
            assert_eq!(
                state.checksum,
                book.checksum(),
                "a shared book state's checksum"
            );
            assert_eq!(state.precision, book.precision());
            assert_eq!(usize::from(state.depth), book.depth());
        }
        for req in a.into_iter().filter_map(|a| match a {
            Action::Send(req) => Some(req),
            _ => None,
        }) {
            // What the exchange answers (in order, after what is queued).
            if let Some(params) = &req.params
                && params.channel == "book"
                && let Some(symbols) = &params.symbol
            {
                for s in symbols {
                    let Some(i) = self.market.symbols.iter().position(|x| x == s) else {
                        continue;
                    };
                    if req.method == "unsubscribe" {
                        let ack = self.market.ack("unsubscribe", s);
                        self.replicas[r].queue.push_back(ack);
                    } else if req.method == "subscribe" {
                        let ack = self.market.ack("subscribe", s);
                        let snapshot = self.market.snapshot(i);
                        self.replicas[r].queue.push_back(ack);
                        self.replicas[r].queue.push_back(snapshot);
                    }
                }
            }
        }
    }

    fn deliver(&mut self, r: usize) {
        let Some(text) = self.replicas[r].queue.pop_front() else {
            return;
        };
        self.frames += 1;
        let (now, at) = self.now();
        let rep = &mut self.replicas[r];
        let frame = match text.strip_prefix(BINARY) {
            Some(bytes) => Received::Binary(bytes.as_bytes()),
            None => Received::Text(&text),
        };
        rep.sharing.on_frame(frame, now, at);
        rep.own.on_frame(frame, now, at);
        self.settle(r);
        if self.checking {
            self.check_books();
        }
    }

    /// The lineages keep their invariants, and every replica's book that its own-book twin
    /// holds synced is, in the sharing world, the same book (in the lineage at its place,
    /// parked, or its own).
    fn check_books(&self) {
        self.books.check_invariants();
        for rep in &self.replicas {
            for s in &self.market.symbols {
                let shared = self.books.book_of(rep.index, s);
                let mine = rep.sharing.own_tracked(s);
                assert!(
                    shared.is_none() || mine.is_none(),
                    "replica {} holds {s} both shared and its own",
                    rep.index
                );
                let Some((own, true)) = rep.own.own_tracked(s) else {
                    continue;
                };
                let (book, synced) = match (&shared, mine) {
                    (Some(t), _) => (&t.book, t.synced),
                    (None, Some((b, synced))) => (b, synced),
                    (None, None) => panic!(
                        "replica {}: no book of {s} where its twin has one",
                        rep.index
                    ),
                };
                assert!(
                    synced,
                    "replica {}: {s} unsynced where its twin is synced",
                    rep.index
                );
                assert!(
                    book.same_as(own),
                    "replica {}: its book of {s} is not its twin's",
                    rep.index
                );
            }
        }
    }

    fn resubscribe(&mut self, r: usize) {
        let (now, _) = self.now();
        let rep = &mut self.replicas[r];
        assert_eq!(rep.sharing.wants_resubscribe(), rep.own.wants_resubscribe());
        if rep.sharing.wants_resubscribe() {
            rep.sharing.on_resubscribe_permit(now);
            rep.own.on_resubscribe_permit(now);
            self.settle(r);
        }
    }

    fn reconnect(&mut self, r: usize) {
        let (_, at) = self.now();
        let why = Lost::Silent(Duration::from_secs(5));
        let rep = &mut self.replicas[r];
        rep.sharing.close(&why, at);
        rep.own.close(&why, at);
        self.settle(r);
        // What waited in the old connection is lost with it.
        let old = self.replicas.remove(r);
        let connects = old.connects + 1;
        let a = old.sharing.into_continuity();
        let b = old.own.into_continuity();
        let fresh = self.open(r, a, b, connects);
        self.replicas.insert(r, fresh);
        self.settle(r);
    }

    /// Something odd instead of, or besides, `frame` (of symbol `i`), for replica `r` (or every
    /// replica: the same text to all).
    fn odd(&mut self, r: usize, i: usize, frame: &str) -> Vec<String> {
        let symbol = self.market.symbols[i].clone();
        let n = self.market.symbols.len();
        let other = self.market.symbols[(i + 1) % n].clone();
        let data = frame.find("\"data\":[").map(|k| k + 8);
        match self.rng.below(14) {
            0 => vec![format!("{BINARY}{frame}")],
            // A first "symbol" key that is not the data's symbol (the fast path's hint).
            1 => vec![frame.replacen(
                "{\"channel\":\"book\",",
                &format!("{{\"channel\":\"book\",\"symbol\":\"{other}\","),
                1,
            )],
            // Two symbols in one frame: one not asked for, or another asked for.
            2 | 3 => {
                let Some(k) = data else {
                    return vec![frame.to_owned()];
                };
                let elem = &frame[k..frame.len() - 2];
                let second = match self.rng.below(3) {
                    0 => "ZZZ/USD".to_owned(),
                    1 => other,
                    _ => symbol.clone(),
                };
                let twin = elem.replacen(&symbol, &second, 1);
                let mut text = format!("{}{elem},{twin}]}}", &frame[..k]);
                if self.rng.chance(0.3) {
                    text = format!("{}{twin},{elem}]}}", &frame[..k]);
                }
                vec![text]
            }
            // A book frame for a symbol not asked for, then the copy.
            4 => vec![frame.replacen(&symbol, "ZZZ/USD", 1), frame.to_owned()],
            // An instrument update: the same precision, or another one.
            5 => {
                let precision = match self.rng.below(3) {
                    0 => Precision { price: 2, qty: 4 },
                    1 => Precision { price: 1, qty: 5 },
                    _ => PRECISION,
                };
                let pairs = [InstrumentPair::online(&symbol, precision)];
                let update = encode::instrument_snapshot(&pairs).replacen(
                    "\"type\":\"snapshot\"",
                    "\"type\":\"update\"",
                    1,
                );
                vec![update, frame.to_owned()]
            }
            // A subscribe ack with the same depth or another.
            6 => {
                let depth = [10, 25, self.market.depth, 100][self.rng.below(4) as usize];
                let ack = format!(
                    r#"{{"method":"subscribe","result":{{"channel":"book","depth":{depth},"snapshot":true,"symbol":"{symbol}"}},"success":true}}"#
                );
                vec![ack, frame.to_owned()]
            }
            // Unsubscribed, then subscribed again (with a snapshot) by the exchange's will.
            7 => vec![
                frame.to_owned(),
                self.market.ack("unsubscribe", &symbol),
                self.market.ack("subscribe", &symbol),
                self.market.snapshot(i),
            ],
            // A stray snapshot (of the market now) after the copy.
            8 => vec![frame.to_owned(), self.market.snapshot(i)],
            // The copy twice.
            9 => vec![frame.to_owned(), frame.to_owned()],
            // The copy and another symbol's snapshot in one frame's data.
            10 => {
                let j = (i + 1) % n;
                let snap = self.market.snapshot(j);
                vec![snap, frame.to_owned()]
            }
            // An unsubscribe ack alone (the exchange dropped the stream), later a subscription.
            11 => {
                let _ = r;
                vec![
                    self.market.ack("unsubscribe", &symbol),
                    frame.to_owned(),
                    self.market.ack("subscribe", &symbol),
                    self.market.snapshot(i),
                ]
            }
            // Now and then, the exchange rejects the symbol on this connection (for good).
            12 if self.rng.chance(0.2) => vec![
                format!(
                    r#"{{"error":"Currency pair not supported","method":"subscribe","success":false,"symbol":"{symbol}"}}"#
                ),
                frame.to_owned(),
            ],
            12 => vec![frame.to_owned()],
            // A frame whose data is empty.
            _ => vec![
                format!(r#"{{"channel":"book","type":"update","data":[]}}"#),
                frame.to_owned(),
            ],
        }
    }

    /// The market changes a symbol; every replica's connection gets the frame (or a fault).
    fn market_step(&mut self) {
        let i = self.market.rng.below(self.market.symbols.len() as u64) as usize;
        let frame = self.market.change(i);
        if self.faults.odd > 0.0 && self.rng.chance(self.faults.odd) {
            // The same odd text to every replica: it is logged and followed.
            let texts = self.odd(0, i, &frame);
            for r in 0..self.replicas.len() {
                for t in &texts {
                    self.replicas[r].queue.push_back(t.clone());
                }
            }
            return;
        }
        for r in 0..self.replicas.len() {
            let f = self.faults;
            if f.odd > 0.0 && self.rng.chance(f.odd) {
                for t in self.odd(r, i, &frame) {
                    self.replicas[r].queue.push_back(t);
                }
                continue;
            }
            let copy = if self.rng.chance(f.drop) {
                continue;
            } else if self.rng.chance(f.corrupt) {
                frame.replacen("\"checksum\":", "\"checksum\":1", 1)
            } else if self.rng.chance(f.reformat) {
                frame.replacen("{", "{ ", 1)
            } else {
                frame.clone()
            };
            self.replicas[r].queue.push_back(copy);
        }
    }

    /// Random steps: the market moves, replicas read some of what waits for them, resubscribe
    /// when they may, and now and then reconnect.
    fn run(&mut self, steps: usize) {
        let all = self.replicas.len();
        self.run_first(steps, all);
    }

    /// [`World::run`] where only the first `active` replicas read (the others stall: they
    /// neither read nor leave), at the end everything waiting for them.
    fn run_first(&mut self, steps: usize, active: usize) {
        for _ in 0..steps {
            if self.rng.chance(0.45) {
                self.market_step();
            }
            let r = self.rng.below(active as u64) as usize;
            for _ in 0..self.rng.below(4) {
                self.deliver(r);
            }
            if self.rng.chance(0.3) {
                self.resubscribe(r);
            }
            if self.rng.chance(self.faults.reconnect) {
                self.reconnect(r);
            }
        }
        // Everyone reading reads what is left.
        for r in 0..active {
            while !self.replicas[r].queue.is_empty() {
                self.deliver(r);
            }
        }
    }

    /// The symbols' metrics must end equal in both worlds.
    fn check_metrics(&self) {
        for s in &self.market.symbols {
            let a = self.metrics_sharing.symbol(s);
            let b = self.metrics_own.symbol(s);
            for (name, x, y) in [
                ("book_messages", &a.book_messages, &b.book_messages),
                ("checksum_ok", &a.checksum_ok, &b.checksum_ok),
                (
                    "checksum_mismatch",
                    &a.checksum_mismatch,
                    &b.checksum_mismatch,
                ),
                ("unverifiable", &a.unverifiable, &b.unverifiable),
                ("resubscribes", &a.resubscribes, &b.resubscribes),
                ("resyncs", &a.resyncs, &b.resyncs),
            ] {
                assert_eq!(
                    x.load(Ordering::Relaxed),
                    y.load(Ordering::Relaxed),
                    "{s}: {name}"
                );
            }
        }
    }
}

fn is_state(action: &Action) -> bool {
    matches!(
        action,
        Action::Journal(e) if matches!(e.body, RecordBody::BookState(_))
    )
}

#[test]
fn replicas_sharing_books_act_exactly_as_replicas_with_books_of_their_own() {
    for seed in 1..=12 {
        // At depth 25 a lost change below the top ten leaves a replica's book wrong and still
        // verified (the checksum covers the top ten): it must not join on equal bytes alone.
        let depth = if seed % 4 < 2 { 25 } else { 10 };
        let mut world = World::new(
            2 + (seed as usize % 2),
            &["AAA/USD", "BBB/EUR", "CCC/GBP"],
            depth,
            seed,
            FAULTS,
        );
        world.run(6000);
        world.check_metrics();
        let stats = world.books.stats();
        // Sharing did happen: most copies after the first took the logged outcome.
        assert!(
            stats.taken * 4 > world.frames,
            "seed {seed}: only {} of {} frames were taken from a shared book ({stats:?})",
            stats.taken,
            world.frames
        );
        assert!(
            stats.rebuilt > 0,
            "seed {seed}: no member ever left behind the front"
        );
        assert!(
            world.states.0 > 0 && world.states.0 == world.states.1,
            "seed {seed}: book states {:?}",
            world.states
        );
    }
}

#[test]
fn a_calm_feed_shares_every_copy_after_the_first() {
    let mut world = World::new(2, &["AAA/USD", "BBB/EUR"], 25, 99, CALM);
    world.run(4000);
    world.check_metrics();
    let stats = world.books.stats();
    assert_eq!(stats.rebuilt, 0, "{stats:?}");
    assert!(stats.taken + 8 >= stats.applied, "{stats:?}");
}

/// An exchange that spaces its JSON as Python does: the copies are still found by their symbol
/// without decoding (`book_symbol_hint`) and shared, and the replicas act as replicas with books
/// of their own.
#[test]
fn a_calm_feed_spaced_as_python_writes_it_shares_every_copy_after_the_first() {
    let mut world = World::new(2, &["AAA/USD", "BBB/EUR"], 25, 99, CALM);
    world.market.spaced = true;
    world.run(4000);
    world.check_metrics();
    let stats = world.books.stats();
    assert_eq!(stats.rebuilt, 0, "{stats:?}");
    assert!(stats.followed > 1500, "{stats:?}");
    assert!(stats.taken + 8 >= stats.applied, "{stats:?}");
}

#[test]
fn a_replica_far_behind_is_let_go_with_its_exact_book_and_comes_back() {
    let mut world = World::new(2, &["AAA/USD"], 10, 7, CALM);
    world.run(200);
    // Replica 1 stops reading while the market moves past the log's bound.
    for _ in 0..(CAP_ENTRIES + 500) {
        world.market_step();
        world.deliver(0);
    }
    let (_, bytes) = world.books.footprint();
    assert!(
        bytes <= CAP_BYTES + (64 << 10),
        "the log holds {bytes} bytes"
    );
    assert!(
        !world.books.is_member(1, "AAA/USD"),
        "the replica far behind was let go"
    );
    // It catches up: every verdict as its own book would give.
    while !world.replicas[1].queue.is_empty() {
        world.deliver(1);
    }
    world.run(500);
    world.check_metrics();
    assert!(world.books.is_member(1, "AAA/USD") || world.books.is_member(0, "AAA/USD"));
}

#[test]
fn odd_frames_from_a_hostile_exchange_change_nothing() {
    for seed in 1..=8 {
        let depth = if seed % 2 == 0 { 25 } else { 10 };
        let faults = Faults {
            odd: 0.03,
            ..FAULTS
        };
        let mut world = World::new(
            2 + (seed as usize % 2),
            &["AAA/USD", "BBB/EUR", "CCC/GBP"],
            depth,
            seed,
            faults,
        );
        world.checking = true;
        world.run(3000);
        world.check_metrics();
    }
}

#[test]
fn a_replica_always_behind_journals_its_book_states_when_due() {
    let mut world = World::new(2, &["AAA/USD"], 10, 11, CALM);
    world.run(200);
    world.checking = true;
    // Replica 1 is two messages behind replica 0 at every message it reads: it never finds
    // itself at the lineage's front.
    for _ in 0..2 {
        world.market_step();
        world.deliver(0);
    }
    let before = world.states;
    for _ in 0..500 {
        world.market_step();
        world.deliver(0);
        world.deliver(1);
    }
    let states = (world.states.0 - before.0, world.states.1 - before.1);
    assert!(states.1 > 100, "{states:?}");
    assert_eq!(
        states.0, states.1,
        "book states journaled with shared books, and with books of their own"
    );
}

#[test]
fn states_due_at_every_update_with_lags_and_faults() {
    for seed in 1..=3 {
        let faults = Faults {
            odd: 0.01,
            ..FAULTS
        };
        let mut world = World::with_states_every(3, &["AAA/USD", "BBB/EUR"], 25, seed, faults, 1);
        world.checking = true;
        world.run(2500);
        world.check_metrics();
    }
}

#[test]
fn states_rarely_due_with_lags_and_faults() {
    // Nothing but the log's own rules (refresh, pending copy, bound) moves the checkpoint.
    for seed in 1..=4 {
        let faults = Faults {
            odd: 0.01,
            ..FAULTS
        };
        let depth = if seed % 2 == 0 { 25 } else { 10 };
        let mut world = World::with_states_every(
            2 + seed as usize % 2,
            &["AAA/USD"],
            depth,
            seed,
            faults,
            10_000,
        );
        world.checking = true;
        world.run(6000);
        world.check_metrics();
    }
}

#[test]
fn a_stalled_replica_that_never_leaves_keeps_memory_bounded() {
    for seed in 1..=2 {
        let mut world = World::new(3, &["AAA/USD", "BBB/EUR"], 10, seed, FAULTS);
        world.run(300);
        // Replica 2 stalls (its connection open, nothing read) while the others go on with
        // their lags, losses, divergent copies and reconnections.
        for round in 0..40 {
            world.run_first(500, 2);
            let (lineages, bytes) = world.books.footprint();
            assert!(lineages <= 2, "{lineages} lineages");
            assert!(
                bytes <= 2 * (2 * CAP_BYTES + (64 << 10)),
                "round {round}: the logs hold {bytes} bytes"
            );
            world.books.check_invariants();
        }
        for s in ["AAA/USD", "BBB/EUR"] {
            assert!(
                !world.books.is_member(2, s),
                "the stalled replica still holds {s}"
            );
        }
        world.checking = true;
        world.run(500);
        world.check_metrics();
    }
}

#[test]
fn a_replica_steadily_behind_keeps_the_log_small() {
    // Book states rarely due (the default's order): nothing but the log's own rules moves the
    // checkpoint.
    let mut world = World::with_states_every(2, &["AAA/USD"], 10, 11, CALM, 10_000);
    world.run(200);
    // Replica 1 reads each message just after replica 0 has applied the next one: it is never
    // at the front when a message is applied there, yet never more than two behind.
    world.market_step();
    world.deliver(0);
    let mut most = 0;
    for _ in 0..6000 {
        world.market_step();
        world.deliver(0);
        world.deliver(1);
        most = most.max(world.books.footprint().1);
        world.books.check_invariants();
    }
    world.books.check_invariants();
    world.check_metrics();
    assert!(
        most <= 4 * REFRESH_BYTES,
        "a log of {most} bytes for a replica two messages behind"
    );
}

#[test]
fn a_member_stalled_in_an_ended_lineage_does_not_stop_the_others_sharing() {
    let mut world = World::new(3, &["AAA/USD"], 10, 21, CALM);
    world.run(300);
    for r in 0..3 {
        while !world.replicas[r].queue.is_empty() {
            world.deliver(r);
        }
    }
    assert!(world.books.is_member(2, "AAA/USD"));
    // Every replica gets a corrupted copy: the lineage ends at it. Replica 2 stalls before
    // reading it (a member behind, for good), the others go on: they resubscribe and verify
    // books of their own again.
    let frame = world.market.change(0);
    let at = frame.find("\"checksum\":").unwrap() + 11;
    let digits = frame[at..].find(|c: char| !c.is_ascii_digit()).unwrap();
    let corrupt = format!("{}7{}", &frame[..at], &frame[at + digits..]);
    for r in 0..3 {
        world.replicas[r].queue.push_back(corrupt.clone());
    }
    world.run_first(1000, 2);
    let before = world.books.stats();
    world.run_first(2000, 2);
    let after = world.books.stats();
    assert!(
        after.taken - before.taken > 200,
        "the two replicas reading shared {} copies ({before:?} then {after:?})",
        after.taken - before.taken
    );
    world.checking = true;
    world.run(300);
    world.check_metrics();
}

#[test]
fn a_replica_numbered_past_the_bound_keeps_books_of_its_own() {
    let faults = Faults {
        reconnect: 0.0,
        odd: 0.01,
        ..FAULTS
    };
    let mut world = World::new(2, &["AAA/USD", "BBB/EUR"], 10, 3, faults);
    let fresh = world.open_as(
        1,
        MAX_REDUNDANCY,
        Continuity::default(),
        Continuity::default(),
        0,
    );
    world.replicas[1] = fresh;
    world.settle(1);
    world.checking = true;
    world.run(2000);
    world.check_metrics();
}
