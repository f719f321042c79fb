//! One symbol's L2 order book, kept exactly as Kraken's v2 `book` channel describes it.
//!
//! Rules (from Kraken's book channel and checksum guides):
//! - a snapshot replaces the book;
//! - an update applies its levels in the order given, so when one message names a price twice the
//!   later level wins; a quantity of zero deletes the level, and deleting an absent level is a no-op;
//! - after every message each side is truncated to the subscribed depth, because Kraken sends no
//!   deletion for a level that falls out of range (it sends the level that comes into range);
//! - the checksum is CRC32 over the top ten asks (low to high) then the top ten bids (high to low),
//!   each level as price then quantity, each printed at the pair's precision with the point removed
//!   and leading zeros stripped.
//!
//! Invariants, checked by the property tests: each side is sorted and unique by price (a `BTreeMap`
//! keyed by exact value), holds no zero quantity, and has at most `depth` levels after each message.

use std::collections::BTreeMap;

use super::decimal::Decimal;

/// How many levels of each side the checksum covers.
pub const CHECKSUM_LEVELS: usize = 10;

/// The decimals a pair's prices and quantities are printed with (the instrument channel's
/// `price_precision` and `qty_precision`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Precision {
    /// Digits after the point in a price.
    pub price: u8,
    /// Digits after the point in a quantity.
    pub qty: u8,
}

/// A side of the book.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// Buy orders, best (highest) first.
    Bid,
    /// Sell orders, best (lowest) first.
    Ask,
}

impl Side {
    /// `"bid"` or `"ask"`, the spelling stored in the database.
    pub const fn as_str(self) -> &'static str {
        match self {
            Side::Bid => "bid",
            Side::Ask => "ask",
        }
    }
}

/// One price level: a price and the quantity resting at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PriceLevel {
    /// Price, exact.
    pub price: Decimal,
    /// Quantity, exact.
    pub qty: Decimal,
}

/// A sorted copy of the top of a book.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct BookView {
    /// Bids, best (highest) first.
    pub bids: Vec<PriceLevel>,
    /// Asks, best (lowest) first.
    pub asks: Vec<PriceLevel>,
}

/// One symbol's order book at a fixed depth.
#[derive(Clone, Debug)]
pub struct OrderBook {
    depth: usize,
    bids: BTreeMap<Decimal, Decimal>,
    asks: BTreeMap<Decimal, Decimal>,
    /// Precision from the instrument channel, when known.
    precision: Option<Precision>,
    /// The most decimals seen on the wire, per field: the precision when none is known.
    seen: Precision,
}

impl OrderBook {
    /// An empty book keeping `depth` levels a side.
    pub fn new(depth: usize) -> Self {
        OrderBook {
            depth: depth.max(1),
            bids: BTreeMap::new(),
            asks: BTreeMap::new(),
            precision: None,
            seen: Precision::default(),
        }
    }

    /// Sets the pair's precision (from the instrument channel); `None` falls back to the wire text.
    pub fn set_precision(&mut self, precision: Option<Precision>) {
        self.precision = precision;
    }

    /// The precision the checksum uses: the instrument's, else the most decimals seen on the wire.
    pub fn precision(&self) -> Precision {
        self.precision.unwrap_or(self.seen)
    }

    /// Levels kept per side.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Changes the depth; a smaller depth truncates at once.
    pub fn set_depth(&mut self, depth: usize) {
        self.depth = depth.max(1);
        self.truncate();
    }

    /// Removes every level.
    pub fn clear(&mut self) {
        self.bids.clear();
        self.asks.clear();
    }

    /// Replaces the book with a snapshot's levels (applied in order, then truncated).
    pub fn apply_snapshot(
        &mut self,
        bids: impl IntoIterator<Item = (Decimal, Decimal)>,
        asks: impl IntoIterator<Item = (Decimal, Decimal)>,
    ) {
        self.clear();
        self.apply_update(bids, asks);
    }

    /// Applies an update's levels in the order given, then truncates to the depth.
    pub fn apply_update(
        &mut self,
        bids: impl IntoIterator<Item = (Decimal, Decimal)>,
        asks: impl IntoIterator<Item = (Decimal, Decimal)>,
    ) {
        for (price, qty) in bids {
            self.set_level(Side::Bid, price, qty);
        }
        for (price, qty) in asks {
            self.set_level(Side::Ask, price, qty);
        }
        self.truncate();
    }

    /// Sets one level without truncating: quantity zero deletes it (absent or not).
    pub fn set_level(&mut self, side: Side, price: Decimal, qty: Decimal) {
        self.seen.price = self.seen.price.max(price.scale());
        self.seen.qty = self.seen.qty.max(qty.scale());
        let map = match side {
            Side::Bid => &mut self.bids,
            Side::Ask => &mut self.asks,
        };
        if qty.is_zero() {
            map.remove(&price);
        } else {
            map.insert(price, qty);
        }
    }

    /// Drops the levels beyond the depth on each side (the worst prices).
    pub fn truncate(&mut self) {
        while self.bids.len() > self.depth {
            self.bids.pop_first();
        }
        while self.asks.len() > self.depth {
            self.asks.pop_last();
        }
    }

    /// Kraken's CRC32 checksum of the top ten levels of each side.
    pub fn checksum(&self) -> u32 {
        let p = self.precision();
        let mut hasher = crc32fast::Hasher::new();
        let mut buf = itoa::Buffer::new();
        let levels = self
            .asks
            .iter()
            .take(CHECKSUM_LEVELS)
            .chain(self.bids.iter().rev().take(CHECKSUM_LEVELS));
        for (price, qty) in levels {
            hasher.update(price.checksum_digits(p.price, &mut buf).as_bytes());
            hasher.update(qty.checksum_digits(p.qty, &mut buf).as_bytes());
        }
        hasher.finalize()
    }

    /// The highest bid.
    pub fn best_bid(&self) -> Option<PriceLevel> {
        self.bids.iter().next_back().map(level)
    }

    /// The lowest ask.
    pub fn best_ask(&self) -> Option<PriceLevel> {
        self.asks.iter().next().map(level)
    }

    /// Best ask minus best bid; `None` when a side is empty or the book is crossed.
    pub fn spread(&self) -> Option<Decimal> {
        self.best_ask()?.price.checked_sub(self.best_bid()?.price)
    }

    /// Bids, best (highest) first.
    pub fn bids(&self) -> impl DoubleEndedIterator<Item = PriceLevel> + '_ {
        self.bids.iter().rev().map(level)
    }

    /// Asks, best (lowest) first.
    pub fn asks(&self) -> impl DoubleEndedIterator<Item = PriceLevel> + '_ {
        self.asks.iter().map(level)
    }

    /// Number of bid and ask levels.
    pub fn len(&self) -> (usize, usize) {
        (self.bids.len(), self.asks.len())
    }

    /// Whether both sides are empty.
    pub fn is_empty(&self) -> bool {
        self.bids.is_empty() && self.asks.is_empty()
    }

    /// A sorted copy of the top `depth` levels of each side.
    pub fn view(&self, depth: usize) -> BookView {
        BookView {
            bids: self.bids().take(depth).collect(),
            asks: self.asks().take(depth).collect(),
        }
    }
}

fn level((price, qty): (&Decimal, &Decimal)) -> PriceLevel {
    PriceLevel {
        price: *price,
        qty: *qty,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).unwrap()
    }

    fn levels(pairs: &[(&str, &str)]) -> Vec<(Decimal, Decimal)> {
        pairs.iter().map(|(p, q)| (d(p), d(q))).collect()
    }

    /// Kraken's "Book checksum (v2)" guide: BTC/USD at precision 1/8 gives 3310070434.
    #[test]
    fn kraken_guide_btcusd_vector() {
        let asks = levels(&[
            ("45285.2", "0.00100000"),
            ("45286.4", "1.54571953"),
            ("45286.6", "1.54571109"),
            ("45289.6", "1.54560911"),
            ("45290.2", "0.15890660"),
            ("45291.8", "1.54553491"),
            ("45294.7", "0.04454749"),
            ("45296.1", "0.35380000"),
            ("45297.5", "0.09945542"),
            ("45299.5", "0.18772827"),
        ]);
        let bids = levels(&[
            ("45283.5", "0.10000000"),
            ("45283.4", "1.54582015"),
            ("45282.1", "0.10000000"),
            ("45281.0", "0.10000000"),
            ("45280.3", "1.54592586"),
            ("45279.0", "0.07990000"),
            ("45277.6", "0.03310103"),
            ("45277.5", "0.30000000"),
            ("45277.3", "1.54602737"),
            ("45276.6", "0.15445238"),
        ]);
        let mut book = OrderBook::new(10);
        book.set_precision(Some(Precision { price: 1, qty: 8 }));
        book.apply_snapshot(bids.clone(), asks.clone());
        assert_eq!(book.checksum(), 3_310_070_434);
        // The same from the wire text alone (every value printed at full precision).
        let mut inferred = OrderBook::new(10);
        inferred.apply_snapshot(bids, asks);
        assert_eq!(inferred.checksum(), 3_310_070_434);
    }

    fn matic_snapshot() -> (Vec<(Decimal, Decimal)>, Vec<(Decimal, Decimal)>) {
        let bids = levels(&[
            ("0.5666", "4831.75496356"),
            ("0.5665", "6658.22734739"),
            ("0.5664", "18724.91513344"),
            ("0.5663", "11563.92544914"),
            ("0.5662", "14006.65365711"),
            ("0.5661", "17454.85679807"),
            ("0.566", "18097.1547"),
            ("0.5659", "33644.89175666"),
            ("0.5658", "148.3464"),
            ("0.5657", "606.70854372"),
        ]);
        let asks = levels(&[
            ("0.5668", "4410.79769741"),
            ("0.5669", "4655.40412487"),
            ("0.567", "49844.89424998"),
            ("0.5671", "24306.41678"),
            ("0.5672", "29783.25223475"),
            ("0.5673", "57234.71239278"),
            ("0.5674", "45065.04744"),
            ("0.5675", "5912.76380354"),
            ("0.5676", "42514.92434778"),
            ("0.5677", "36304.0847022"),
        ]);
        (bids, asks)
    }

    /// Kraken's v2 book page, MATIC/USD at precision 4/8: the page drops trailing zeros, so only
    /// formatting at the pair's precision reproduces 2439117997 and then 2114181697.
    #[test]
    fn kraken_book_page_maticusd_vector_needs_padding() {
        let (bids, asks) = matic_snapshot();
        let mut book = OrderBook::new(10);
        book.set_precision(Some(Precision { price: 4, qty: 8 }));
        book.apply_snapshot(bids, asks);
        assert_eq!(book.checksum(), 2_439_117_997);
        book.apply_update(levels(&[("0.5657", "1098.3947558")]), vec![]);
        assert_eq!(book.checksum(), 2_114_181_697);
    }

    /// The unpadded text gives a different checksum: the padding is what makes the vector pass.
    #[test]
    fn maticusd_vector_fails_without_padding() {
        let (bids, asks) = matic_snapshot();
        let mut book = OrderBook::new(10);
        book.set_precision(Some(Precision { price: 0, qty: 0 }));
        book.apply_snapshot(bids, asks);
        assert_ne!(book.checksum(), 2_439_117_997);
    }

    #[test]
    fn update_rules_table() {
        // (what it covers, update bids, expected bids best first)
        let cases: Vec<(&str, Vec<(&str, &str)>, Vec<(&str, &str)>)> = vec![
            ("qty 0 deletes", vec![("10", "0")], vec![("9", "2"), ("8", "3")]),
            ("delete of an absent level is ignored", vec![("7.5", "0")], vec![("10", "1"), ("9", "2"), ("8", "3")]),
            ("same price twice: the later wins", vec![("9", "5"), ("9", "6")], vec![("10", "1"), ("9", "6"), ("8", "3")]),
            ("same price: delete then re-add", vec![("9", "0"), ("9", "7")], vec![("10", "1"), ("9", "7"), ("8", "3")]),
            ("insert beyond depth truncates the worst", vec![("11", "1")], vec![("11", "1"), ("10", "1"), ("9", "2")]),
            ("insert below the worst is cut at once", vec![("1", "1")], vec![("10", "1"), ("9", "2"), ("8", "3")]),
            ("equal by value at another scale", vec![("9.00", "4")], vec![("10", "1"), ("9", "4"), ("8", "3")]),
        ];
        for (what, update, expected) in cases {
            let mut book = OrderBook::new(3);
            book.apply_snapshot(levels(&[("10", "1"), ("9", "2"), ("8", "3")]), vec![]);
            book.apply_update(levels(&update), vec![]);
            let got: Vec<_> = book.bids().map(|l| (l.price, l.qty)).collect();
            assert_eq!(got, levels(&expected), "{what}");
        }
    }

    #[test]
    fn best_levels_and_spread() {
        let mut book = OrderBook::new(10);
        assert_eq!(book.spread(), None);
        book.apply_snapshot(levels(&[("100.1", "1"), ("99.5", "2")]), levels(&[("100.4", "3"), ("101", "1")]));
        assert_eq!(book.best_bid().unwrap().price, d("100.1"));
        assert_eq!(book.best_ask().unwrap().price, d("100.4"));
        assert_eq!(book.spread(), Some(d("0.3")));
        let view = book.view(1);
        assert_eq!(view.bids, vec![PriceLevel { price: d("100.1"), qty: d("1") }]);
        assert_eq!(view.asks, vec![PriceLevel { price: d("100.4"), qty: d("3") }]);
    }

    fn arb_level() -> impl Strategy<Value = (Decimal, Decimal)> {
        // Prices on a small grid so updates collide with existing levels; qty 0 now and then.
        (1u128..200, prop_oneof![Just(0u128), 1u128..1_000_000_000]).prop_map(|(p, q)| {
            (Decimal::new(p * 5, 1).unwrap(), Decimal::new(q, 8).unwrap())
        })
    }

    fn check_invariants(book: &OrderBook) -> Result<(), TestCaseError> {
        let bids: Vec<_> = book.bids().collect();
        let asks: Vec<_> = book.asks().collect();
        prop_assert!(bids.len() <= book.depth() && asks.len() <= book.depth());
        prop_assert!(bids.windows(2).all(|w| w[0].price > w[1].price), "bids sorted and unique");
        prop_assert!(asks.windows(2).all(|w| w[0].price < w[1].price), "asks sorted and unique");
        prop_assert!(bids.iter().chain(&asks).all(|l| !l.qty.is_zero()), "no zero quantity");
        Ok(())
    }

    proptest! {
        #[test]
        fn random_messages_keep_the_book_well_formed(
            depth in prop_oneof![Just(10usize), Just(25), 1usize..40],
            snapshot in (prop::collection::vec(arb_level(), 0..60), prop::collection::vec(arb_level(), 0..60)),
            updates in prop::collection::vec(
                (prop::collection::vec(arb_level(), 0..8), prop::collection::vec(arb_level(), 0..8)), 0..50),
        ) {
            let mut book = OrderBook::new(depth);
            book.apply_snapshot(snapshot.0, snapshot.1);
            check_invariants(&book)?;
            for (bids, asks) in updates {
                book.apply_update(bids, asks);
                check_invariants(&book)?;
                // A book rebuilt from its own top-N view has the same checksum.
                let view = book.view(depth);
                let mut rebuilt = OrderBook::new(depth);
                rebuilt.set_precision(Some(book.precision()));
                rebuilt.apply_snapshot(
                    view.bids.iter().map(|l| (l.price, l.qty)),
                    view.asks.iter().map(|l| (l.price, l.qty)),
                );
                prop_assert_eq!(rebuilt.checksum(), book.checksum());
                prop_assert_eq!(rebuilt.view(depth), view);
            }
        }
    }
}
