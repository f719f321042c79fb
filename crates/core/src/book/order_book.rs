//! One symbol's L2 order book, kept exactly as Kraken's v2 `book` channel describes it.
//!
//! Rules (from Kraken's book channel and checksum guides):
//! - a snapshot replaces the book;
//! - an update applies its levels in the order given, so when one message names a price twice the
//!   later level wins; a quantity of zero deletes the level, and deleting an absent level is a no-op;
//! - after every message each side is truncated to the subscribed depth, because Kraken sends no
//!   deletion for a level that falls out of range (it sends the level that comes into range).
//!   This is the receiving half of Kraken's depth-window rule, not a second copy of it: what a
//!   window is sent is [`super::window::on_change`] (the simulator and the replay server send
//!   that), and that module's doc shows from the real captures that a book truncating after every
//!   message, as this one does, holds exactly the window (the replay server's tests replay those
//!   captures at depths 1 to 100 into this book to check it);
//! - the checksum is CRC32 over the top ten asks (low to high) then the top ten bids (high to low),
//!   each level as price then quantity, each printed at the pair's precision with the point removed
//!   and leading zeros stripped.
//!
//! Storage: each side is a `VecDeque` of integer mantissas at the book's scale, sorted so that the
//! best level is at the back. Kraken's changes cluster at the top, so inserts and deletes move few
//! elements; truncation pops the front. A level is 24 bytes, so a whole market at depth 1000 fits
//! in tens of megabytes, and the checksum formats integers without any decimal arithmetic. A book
//! also keeps the checksum text of the levels it printed lately (3.5 KB, allocated at the first
//! checksum), so that the levels that stay in the top ten are not printed again for each message.
//!
//! Scale: values are stored as mantissas at one scale per field (price, quantity). It starts at the
//! instrument's precision when known, else at 0, and grows when a value needs more decimals: to
//! the value's written decimals when the precision comes from the wire text, or to its significant
//! decimals when the instrument gave one (trailing zeros then do not count). Growing rescales the
//! stored levels. The checksum prints every value at the current scale.
//!
//! Invariants, checked by property tests against a plain `BTreeMap` model: each side is sorted and
//! unique by price, holds no zero quantity, and has at most `depth` levels after each message.

use std::collections::VecDeque;

use crate::num::{Decimal, Precision, PriceLevel, Side, pow10};

/// How many levels of each side the checksum covers.
pub const CHECKSUM_LEVELS: usize = 10;

/// A sorted copy of the top of a book.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct BookView {
    /// Bids, best (highest) first.
    pub bids: Vec<PriceLevel>,
    /// Asks, best (lowest) first.
    pub asks: Vec<PriceLevel>,
}

/// A value that the book cannot hold exactly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {value} does not fit the book's integer representation at {scale} decimals")]
pub struct BookError {
    /// `price` or `qty`.
    pub field: &'static str,
    /// The value.
    pub value: Decimal,
    /// The scale it was to be stored at.
    pub scale: u8,
}

/// A stored level: mantissas at the book's scales, 16 bytes (a whole market at depth 1000 holds
/// two million of them: 32 MB, where 24-byte levels took 48). A quantity whose mantissa does not
/// fit below [`WIDE`] is stored as `WIDE` and kept whole in its ladder's `wide` list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Lvl {
    price: u64,
    qty: u64,
}

/// The quantity of a level whose mantissa is kept in [`Ladder::wide`].
const WIDE: u64 = u64::MAX;

/// One side, best level at the back.
#[derive(Clone, Debug)]
struct Ladder {
    side: Side,
    levels: VecDeque<Lvl>,
    /// The quantities of the levels stored as [`WIDE`], by price, ascending: exactly one entry
    /// for each such level (almost always empty: a mantissa of 2^64 or more).
    wide: Vec<(u64, u128)>,
    /// Whether the top [`CHECKSUM_LEVELS`] may have changed since the checksum was last taken.
    top_changed: bool,
}

impl Ladder {
    fn new(side: Side) -> Self {
        Ladder {
            side,
            levels: VecDeque::new(),
            wide: Vec::new(),
            top_changed: true,
        }
    }

    /// Whether index `i` (of a ladder of `len` levels) is among the top levels.
    fn in_top(i: usize, len: usize) -> bool {
        i + CHECKSUM_LEVELS >= len
    }

    /// Where `price` is, or would be inserted. Bids ascend toward the back, asks descend.
    ///
    /// Kraken's changes cluster at the top of the book (the back) and at its bottom (the level
    /// that comes into range as the depth window moves: the front), so the search looks at the
    /// front, then gallops from the back (1, 2, 4, ... levels down) and only then bisects the
    /// range it found: a change near either end reads a few levels, not ten spread over a
    /// whole ladder (at a whole market the ladders are far larger than the caches, so each
    /// level read in a bisection is a cache miss). Same answer as a binary search.
    fn find(&self, price: u64) -> Result<usize, usize> {
        use std::cmp::Ordering;
        // How a stored level compares with the level sought, in the ladder's order.
        let order = |i: usize| -> Ordering {
            let at = self.levels[i].price;
            match self.side {
                Side::Bid => at.cmp(&price),
                Side::Ask => price.cmp(&at),
            }
        };
        let len = self.levels.len();
        if len == 0 {
            return Err(0);
        }
        match order(0) {
            Ordering::Greater => return Err(0),
            Ordering::Equal => return Ok(0),
            Ordering::Less => {}
        }
        // Invariant from here: order(lo) is Less; the answer is in (lo, hi], where hi == len
        // means "after the last level".
        let mut lo = 0;
        let mut hi = len;
        let mut step = 1;
        while step < len {
            let i = len - step;
            if i <= lo {
                break;
            }
            match order(i) {
                Ordering::Equal => return Ok(i),
                Ordering::Less => {
                    lo = i;
                    break;
                }
                Ordering::Greater => hi = i,
            }
            step *= 2;
        }
        // Bisect (lo, hi): order(lo) is Less, order(hi) is Greater (or hi is the end).
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            match order(mid) {
                Ordering::Equal => return Ok(mid),
                Ordering::Less => lo = mid,
                Ordering::Greater => hi = mid,
            }
        }
        Err(hi)
    }

    /// A level's quantity mantissa.
    fn qty(&self, l: &Lvl) -> u128 {
        if l.qty != WIDE {
            return u128::from(l.qty);
        }
        // Every level stored as WIDE has its entry (`store_qty` adds it, `forget_wide` removes
        // it with the level); the fallback is never taken.
        self.wide
            .binary_search_by_key(&l.price, |w| w.0)
            .map_or(u128::from(WIDE), |k| self.wide[k].1)
    }

    /// Removes the `wide` entry of the level at `price`, if it has one.
    fn forget_wide(&mut self, l: Lvl) {
        if l.qty == WIDE
            && let Ok(k) = self.wide.binary_search_by_key(&l.price, |w| w.0)
        {
            self.wide.remove(k);
        }
    }

    /// Sets the quantity of the level at `i`.
    fn store_qty(&mut self, i: usize, qty: u128) {
        let l = self.levels[i];
        self.forget_wide(l);
        match u64::try_from(qty) {
            Ok(q) if q != WIDE => self.levels[i].qty = q,
            _ => {
                self.levels[i].qty = WIDE;
                if let Err(k) = self.wide.binary_search_by_key(&l.price, |w| w.0) {
                    self.wide.insert(k, (l.price, qty));
                }
            }
        }
    }

    fn set(&mut self, price: u64, qty: u128) {
        let len = self.levels.len();
        match self.find(price) {
            Ok(i) if qty == 0 => {
                self.top_changed |= Self::in_top(i, len);
                if let Some(l) = self.levels.remove(i) {
                    self.forget_wide(l);
                }
            }
            Ok(i) => {
                self.top_changed |= Self::in_top(i, len);
                self.store_qty(i, qty);
            }
            Err(_) if qty == 0 => {}
            Err(i) => {
                // After the insert, the new level sits at `i` in a ladder of `len + 1`.
                self.top_changed |= Self::in_top(i, len + 1);
                self.levels.insert(i, Lvl { price, qty: 0 });
                self.store_qty(i, qty);
            }
        }
    }

    /// Multiplies every price by `factor` (`Err` when one would not fit: the ladder is then
    /// partly rescaled, as the book's caller treats it).
    fn rescale_prices(&mut self, factor: u128) -> Result<(), ()> {
        let up = |p: u64| -> Result<u64, ()> {
            u64::try_from(u128::from(p).checked_mul(factor).ok_or(())?).map_err(|_| ())
        };
        for l in self.levels.iter_mut() {
            l.price = up(l.price)?;
        }
        for w in self.wide.iter_mut() {
            w.0 = up(w.0)?;
        }
        Ok(())
    }

    /// Multiplies every quantity by `factor`.
    fn rescale_qtys(&mut self, factor: u128) -> Result<(), ()> {
        for i in 0..self.levels.len() {
            let q = self.qty(&self.levels[i]).checked_mul(factor).ok_or(())?;
            self.store_qty(i, q);
        }
        Ok(())
    }

    fn truncate(&mut self, depth: usize) {
        while self.levels.len() > depth {
            self.top_changed |= Self::in_top(0, self.levels.len());
            if let Some(l) = self.levels.pop_front() {
                self.forget_wide(l);
            }
        }
        // A message that briefly pushed a side past its depth may have doubled its capacity:
        // give the memory back (a whole market at depth 1000 is 2 million levels).
        if self.levels.capacity() > 2 * depth + 64 {
            self.levels.shrink_to(depth + 32);
        }
    }

    fn clear(&mut self) {
        self.levels.clear();
        self.wide.clear();
        self.top_changed = true;
    }

    /// Best first.
    fn best_first(&self) -> impl DoubleEndedIterator<Item = &Lvl> + ExactSizeIterator {
        self.levels.iter().rev()
    }
}

/// One symbol's order book at a fixed depth.
#[derive(Clone, Debug)]
pub struct OrderBook {
    depth: usize,
    bids: Ladder,
    asks: Ladder,
    /// Precision from the instrument channel, when known.
    known: Option<Precision>,
    /// The scales the mantissas are stored at (and the checksum prints at).
    scale: Precision,
    /// The checksum as last computed by [`OrderBook::current_checksum`].
    last_checksum: u32,
    /// The checksum text of levels printed lately, for [`OrderBook::current_checksum`].
    memo: LevelMemo,
}

impl OrderBook {
    /// An empty book keeping `depth` levels a side.
    pub fn new(depth: usize) -> Self {
        OrderBook {
            depth: depth.max(1),
            bids: Ladder::new(Side::Bid),
            asks: Ladder::new(Side::Ask),
            known: None,
            scale: Precision::default(),
            last_checksum: 0,
            memo: LevelMemo::default(),
        }
    }

    /// An empty book keeping `depth` levels a side, at `precision` (`None`: the wire text's).
    pub fn with_precision(depth: usize, precision: Option<Precision>) -> Self {
        let mut book = OrderBook::new(depth);
        book.known = precision;
        book.scale = precision.unwrap_or_default();
        book
    }

    /// Sets the pair's precision (from the instrument channel); `None` falls back to the wire
    /// text. The levels already held are kept (re-stored at the new scale); when one cannot be,
    /// the error says so and the book must be treated as unsynced. On an empty book it cannot
    /// fail.
    pub fn set_precision(&mut self, precision: Option<Precision>) -> Result<(), BookError> {
        if self.known == precision {
            return Ok(());
        }
        let view = self.view(self.depth);
        self.known = precision;
        self.scale = precision.unwrap_or_default();
        self.clear();
        // Values that were held exactly are re-stored; the scale grows if one needs it.
        self.apply_update(
            view.bids.iter().map(|l| (l.price, l.qty)),
            view.asks.iter().map(|l| (l.price, l.qty)),
        )
    }

    /// The instrument's precision, when the book was given one.
    pub fn known_precision(&self) -> Option<Precision> {
        self.known
    }

    /// The precision the checksum prints at: the instrument's, grown where the wire needed more.
    pub fn precision(&self) -> Precision {
        self.scale
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
    ) -> Result<(), BookError> {
        self.clear();
        self.scale = self.known.unwrap_or_default();
        self.apply_update(bids, asks)
    }

    /// Applies an update's levels in the order given, then truncates to the depth.
    ///
    /// On error (a value too large for the book's integers) the book is left part-applied and
    /// must be treated as unsynced.
    pub fn apply_update(
        &mut self,
        bids: impl IntoIterator<Item = (Decimal, Decimal)>,
        asks: impl IntoIterator<Item = (Decimal, Decimal)>,
    ) -> Result<(), BookError> {
        let mut result = Ok(());
        for (price, qty) in bids {
            if let Err(e) = self.set_level(Side::Bid, price, qty) {
                result = Err(e);
            }
        }
        for (price, qty) in asks {
            if let Err(e) = self.set_level(Side::Ask, price, qty) {
                result = Err(e);
            }
        }
        self.truncate();
        result
    }

    /// Sets one level without truncating: quantity zero deletes it (absent or not).
    pub fn set_level(&mut self, side: Side, price: Decimal, qty: Decimal) -> Result<(), BookError> {
        let p = self.mantissa(price, Field::Price)?;
        let q = self.mantissa(qty, Field::Qty)?;
        let p = u64::try_from(p).map_err(|_| BookError {
            field: "price",
            value: price,
            scale: self.scale.price,
        })?;
        match side {
            Side::Bid => self.bids.set(p, q),
            Side::Ask => self.asks.set(p, q),
        }
        Ok(())
    }

    /// The mantissa of `value` at the field's scale, growing the scale first if `value` needs it.
    fn mantissa(&mut self, value: Decimal, field: Field) -> Result<u128, BookError> {
        let current = field.get(self.scale);
        if let Some(m) = value.mantissa_at(current)
            && (self.known.is_some() || value.scale() <= current)
        {
            return Ok(m);
        }
        let needed = if self.known.is_some() {
            value.normalized().scale()
        } else {
            value.scale()
        };
        if needed > current {
            self.rescale(field, needed).map_err(|()| BookError {
                field: field.name(),
                value,
                scale: needed,
            })?;
        }
        let scale = field.get(self.scale);
        value.mantissa_at(scale).ok_or(BookError {
            field: field.name(),
            value,
            scale,
        })
    }

    /// Re-stores every level of both sides with `field` at `scale` (larger than the current one).
    fn rescale(&mut self, field: Field, scale: u8) -> Result<(), ()> {
        let factor = pow10(scale - field.get(self.scale)).ok_or(())?;
        for ladder in [&mut self.bids, &mut self.asks] {
            match field {
                Field::Price => ladder.rescale_prices(factor)?,
                Field::Qty => ladder.rescale_qtys(factor)?,
            }
        }
        match field {
            Field::Price => self.scale.price = scale,
            Field::Qty => self.scale.qty = scale,
        }
        self.bids.top_changed = true;
        self.asks.top_changed = true;
        Ok(())
    }

    /// Drops the levels beyond the depth on each side (the worst prices).
    pub fn truncate(&mut self) {
        self.bids.truncate(self.depth);
        self.asks.truncate(self.depth);
    }

    /// The checksum, recomputed only when the top ten levels of a side may have changed since
    /// the last call (changes deeper in a depth-1000 book leave it as it was). The text of the
    /// levels that did not change is taken from the book's memo instead of printed again.
    pub fn current_checksum(&mut self) -> u32 {
        if self.bids.top_changed || self.asks.top_changed {
            self.last_checksum = checksum_of(&self.asks, &self.bids, Some(&mut self.memo));
            self.bids.top_changed = false;
            self.asks.top_changed = false;
        }
        self.last_checksum
    }

    /// Kraken's CRC32 checksum of the top ten levels of each side.
    pub fn checksum(&self) -> u32 {
        checksum_of(&self.asks, &self.bids, None)
    }

    fn level(&self, ladder: &Ladder, l: &Lvl) -> PriceLevel {
        // Scales never exceed Decimal::MAX_SCALE: they only grow to a parsed Decimal's scale.
        PriceLevel {
            price: Decimal::new(u128::from(l.price), self.scale.price).unwrap_or_default(),
            qty: Decimal::new(ladder.qty(l), self.scale.qty).unwrap_or_default(),
        }
    }

    /// The highest bid.
    pub fn best_bid(&self) -> Option<PriceLevel> {
        self.bids.levels.back().map(|l| self.level(&self.bids, l))
    }

    /// The lowest ask.
    pub fn best_ask(&self) -> Option<PriceLevel> {
        self.asks.levels.back().map(|l| self.level(&self.asks, l))
    }

    /// Best ask minus best bid; `None` when a side is empty or the book is crossed.
    pub fn spread(&self) -> Option<Decimal> {
        self.best_ask()?.price.checked_sub(self.best_bid()?.price)
    }

    /// Bids, best (highest) first.
    pub fn bids(&self) -> impl DoubleEndedIterator<Item = PriceLevel> + ExactSizeIterator + '_ {
        self.bids.best_first().map(|l| self.level(&self.bids, l))
    }

    /// Asks, best (lowest) first.
    pub fn asks(&self) -> impl DoubleEndedIterator<Item = PriceLevel> + ExactSizeIterator + '_ {
        self.asks.best_first().map(|l| self.level(&self.asks, l))
    }

    /// Number of bid and ask levels.
    pub fn len(&self) -> (usize, usize) {
        (self.bids.levels.len(), self.asks.levels.len())
    }

    /// Whether both sides are empty.
    pub fn is_empty(&self) -> bool {
        self.bids.levels.is_empty() && self.asks.levels.is_empty()
    }

    /// Whether `other` is the same book in every respect that decides what a later message
    /// does to it and what its checksum is: depth, precision (known and current scale) and every
    /// level of both sides, exactly. Two books that are the same answer every message alike.
    pub fn same_as(&self, other: &OrderBook) -> bool {
        self.depth == other.depth
            && self.known == other.known
            && self.scale == other.scale
            && self.bids.levels == other.bids.levels
            && self.bids.wide == other.bids.wide
            && self.asks.levels == other.asks.levels
            && self.asks.wide == other.asks.wide
    }

    /// A sorted copy of the top `depth` levels of each side.
    pub fn view(&self, depth: usize) -> BookView {
        BookView {
            bids: self.bids().take(depth).collect(),
            asks: self.asks().take(depth).collect(),
        }
    }
}

/// Kraken's CRC32 checksum of the top ten levels of each side, the text of each level taken from
/// `memo` when it holds it.
fn checksum_of(asks: &Ladder, bids: &Ladder, mut memo: Option<&mut LevelMemo>) -> u32 {
    // The checksum text is at most 20 levels × (20 price digits + 39 quantity digits); it is
    // built on the stack and hashed in one call, which lets crc32fast use its SIMD path
    // (hashing each number separately is three times slower). The digits are written in
    // place: formatting each number apart and copying it in cost a `memcpy` call per number,
    // a third of the whole checksum.
    let mut text = ChecksumText::new();
    for ladder in [asks, bids] {
        for l in ladder.best_first().take(CHECKSUM_LEVELS) {
            if l.qty == WIDE {
                text.push(l.price);
                text.push_wide(ladder.qty(l));
                continue;
            }
            let Some(memo) = memo.as_deref_mut() else {
                text.push(l.price);
                text.push(l.qty);
                continue;
            };
            let slot = memo.slot(l);
            if slot.level == Some(*l) {
                text.push_copy(&slot.text, slot.len);
                continue;
            }
            let start = text.len;
            text.push(l.price);
            text.push(l.qty);
            let len = text.len - start;
            if len <= MEMO_TEXT {
                slot.level = Some(*l);
                slot.len = len;
                slot.text
                    .copy_from_slice(&text.text[start..start + MEMO_TEXT]);
            }
        }
    }
    crc32fast::hash(text.as_bytes())
}

/// The longest level text a memo slot holds (price and quantity digits together).
const MEMO_TEXT: usize = 24;

/// The checksum text of recently printed levels, by level: a level's text (its price's digits,
/// then its quantity's) depends on its two mantissas alone, and from one message to the next
/// most of the top levels are the same. Direct-mapped: a level has one slot, and a slot serves
/// only the level it was filled for. It is a cache and no part of the book: a clone starts empty.
#[derive(Debug, Default)]
struct LevelMemo {
    slots: Option<Box<[MemoSlot; MEMO_SLOTS]>>,
}

/// Slots in a [`LevelMemo`]: room for the 20 levels the checksum reads with few collisions.
const MEMO_SLOTS: usize = 64;

#[derive(Clone, Copy, Debug, Default)]
struct MemoSlot {
    /// The level the text is of (`None`: empty).
    level: Option<Lvl>,
    len: usize,
    text: [u8; MEMO_TEXT],
}

impl Clone for LevelMemo {
    fn clone(&self) -> Self {
        LevelMemo::default()
    }
}

impl LevelMemo {
    fn slot(&mut self, l: &Lvl) -> &mut MemoSlot {
        let slots = self
            .slots
            .get_or_insert_with(|| Box::new([MemoSlot::default(); MEMO_SLOTS]));
        let hash = (l.price.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ l.qty)
            .wrapping_mul(0xD6E8_FEB8_6659_FD93);
        &mut slots[(hash >> 58) as usize]
    }
}

/// The checksum's text: the decimal digits of each number, one after the other, with no point
/// and no leading zeros: Kraken's recipe strips them all, so a zero is no text at all (as
/// [`Decimal::checksum_digits`] prints it), where `itoa` would print `0`.
///
/// Digits are made eight at a time in the lanes of one `u64` (divisions by 10^4, 10^2 and 10 done
/// as multiplications, all lanes at once) and stored eight bytes at a time, and a memo slot's text
/// is copied whole; the buffer has [`MEMO_TEXT`] bytes to spare (at least eight) so that a store
/// may run past the text's end (the next number overwrites it).
struct ChecksumText {
    text: [u8; CHECKSUM_TEXT + MEMO_TEXT],
    len: usize,
}

/// The longest checksum text: 20 levels of a 20-digit price and a 39-digit quantity.
const CHECKSUM_TEXT: usize = 2 * CHECKSUM_LEVELS * (20 + 39);

/// The eight decimal digits of `v` (below 10^8), one a byte, the first in the lowest byte.
///
/// `v` splits into two lanes of 32 bits (its first four digits and its last four); each lane
/// splits into two of 16 bits by dividing by 100 (`n * 10486 >> 20` is `n / 100` for n below
/// 10^4), and each of those into two bytes by dividing by 10 (`n * 103 >> 10` is `n / 10` for n
/// below 100). No lane's product reaches the next lane.
fn eight_digits(v: u64) -> u64 {
    let x = (v / 10_000) | ((v % 10_000) << 32);
    let hundreds = ((x * 10_486) >> 20) & 0x0000_007F_0000_007F;
    let y = hundreds | ((x - hundreds * 100) << 16);
    let tens = ((y * 103) >> 10) & 0x000F_000F_000F_000F;
    tens | ((y - tens * 10) << 8)
}

impl ChecksumText {
    fn new() -> Self {
        ChecksumText {
            text: [0; CHECKSUM_TEXT + MEMO_TEXT],
            len: 0,
        }
    }

    /// Appends the digits of `v` (at most 20); a zero has none (a price of zero).
    fn push(&mut self, v: u64) {
        const E8: u64 = 100_000_000;
        if v == 0 {
            return;
        }
        if v < E8 {
            self.push_eight(v, true);
        } else if v < E8 * E8 {
            self.push_eight(v / E8, true);
            self.push_eight(v % E8, false);
        } else {
            self.push_eight(v / (E8 * E8), true);
            self.push_eight(v / E8 % E8, false);
            self.push_eight(v % E8, false);
        }
    }

    /// Appends `v` (below 10^8) as eight digits, or without its leading zeros when `first` (zero
    /// then is `0`).
    fn push_eight(&mut self, v: u64, first: bool) {
        let digits = eight_digits(v);
        let zeros = if first {
            (digits.trailing_zeros() / 8).min(7) as usize
        } else {
            0
        };
        let ascii = (digits + 0x3030_3030_3030_3030) >> (8 * zeros);
        self.text[self.len..self.len + 8].copy_from_slice(&ascii.to_le_bytes());
        self.len += 8 - zeros;
    }

    /// Appends the first `len` bytes of a memo slot's text (all of it is stored, the rest to be
    /// overwritten).
    fn push_copy(&mut self, from: &[u8; MEMO_TEXT], len: usize) {
        self.text[self.len..self.len + MEMO_TEXT].copy_from_slice(from);
        self.len += len;
    }

    /// Appends the digits of a wide quantity (at most 39; rare, so formatted apart).
    fn push_wide(&mut self, v: u128) {
        let mut buf = itoa::Buffer::new();
        let digits = buf.format(v).as_bytes();
        self.text[self.len..self.len + digits.len()].copy_from_slice(digits);
        self.len += digits.len();
    }

    fn as_bytes(&self) -> &[u8] {
        &self.text[..self.len]
    }
}

#[derive(Clone, Copy)]
enum Field {
    Price,
    Qty,
}

impl Field {
    fn get(self, p: Precision) -> u8 {
        match self {
            Field::Price => p.price,
            Field::Qty => p.qty,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Field::Price => "price",
            Field::Qty => "qty",
        }
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

    /// The search from the ends answers what a plain binary search does: for every ladder
    /// length up to 70 (both sides), every stored price, every price between and beyond them.
    #[test]
    fn the_search_from_the_ends_finds_what_a_binary_search_finds() {
        for side in [Side::Bid, Side::Ask] {
            for len in 0..70u64 {
                let mut ladder = Ladder::new(side);
                for k in 0..len {
                    // Prices 10, 20, ...: bids ascend toward the back, asks descend.
                    let price = match side {
                        Side::Bid => 10 * (k + 1),
                        Side::Ask => 10 * (len - k),
                    };
                    ladder.levels.push_back(Lvl { price, qty: 1 });
                }
                for price in 0..=10 * (len + 2) {
                    let expected = match side {
                        Side::Bid => ladder.levels.binary_search_by(|l| l.price.cmp(&price)),
                        Side::Ask => ladder.levels.binary_search_by(|l| price.cmp(&l.price)),
                    };
                    assert_eq!(
                        ladder.find(price),
                        expected,
                        "{side:?} len {len} price {price}"
                    );
                }
            }
        }
    }

    /// The checksum text's digits are itoa's, number for number (but for zero, which has none):
    /// at every digit count's edges (0, 9, 10, 99, 100, ... u64::MAX), for wide quantities, and
    /// for random values.
    #[test]
    fn checksum_text_writes_the_digits_itoa_writes() {
        let mut values = vec![0u64, 1, u64::MAX];
        for k in 1..20 {
            let p = 10u64.pow(k);
            values.extend([p - 1, p, p + 1]);
        }
        let mut rng = crate::rng::Rng::new(7);
        values.extend((0..2000).map(|_| rng.next_u64() >> (rng.next_u64() % 64)));
        // Every value of up to five digits, values of up to eight digits (the lanes of
        // `eight_digits`) a prime step apart, and the same above 10^8 and 10^16 (the chunks).
        values.extend(0..100_000);
        values.extend((0..100_000_000).step_by(9_973));
        values.extend((0..100_000_000).step_by(9_973).map(|v| v * 100_000_007));
        values.extend(
            (0..1_844)
                .step_by(7)
                .map(|v| v * 10_000_000_000_000_000 + 99_999_999),
        );
        let mut expected = String::new();
        let mut text = ChecksumText::new();
        for chunk in values.chunks(2 * CHECKSUM_LEVELS) {
            expected.clear();
            text.len = 0;
            for &v in chunk {
                if v != 0 {
                    expected.push_str(itoa::Buffer::new().format(v));
                }
                text.push(v);
            }
            let wide = u128::from(u64::MAX) * 10_000_000_000_000_000_000 + 7;
            expected.push_str(itoa::Buffer::new().format(wide));
            text.push_wide(wide);
            assert_eq!(std::str::from_utf8(text.as_bytes()), Ok(expected.as_str()));
        }
    }

    /// The memo serves a level only the text printed for that very level: levels that share a
    /// slot (found by search: another price, another quantity at the same price) take it from
    /// each other, and a clone (whose memo starts empty) has the same checksum.
    #[test]
    fn the_checksum_memo_serves_each_level_only_its_own_text() {
        let mut memo = LevelMemo::default();
        let mut slot_of = |l: Lvl| std::ptr::from_mut(memo.slot(&l)) as usize;
        let first = Lvl { price: 7, qty: 3 };
        let shared = slot_of(first);
        let twin = (8..)
            .map(|price| Lvl { price, qty: 3 })
            .find(|&l| slot_of(l) == shared)
            .unwrap();
        let requoted = (4..)
            .map(|qty| Lvl { price: 7, qty })
            .find(|&l| slot_of(l) == shared)
            .unwrap();
        let level = |price: u64, qty: u64| {
            vec![(
                Decimal::new(u128::from(price), 0).unwrap(),
                Decimal::new(u128::from(qty), 0).unwrap(),
            )]
        };
        let mut book = OrderBook::new(10);
        for (price, qty) in [
            (first.price, 3),
            (first.price, requoted.qty),
            (twin.price, 3),
            (first.price, 3),
            (twin.price, 0),
            (first.price, 3),
            (twin.price, 3),
        ] {
            book.apply_update(level(price, qty), level(price + 1_000, qty))
                .unwrap();
            assert_eq!(book.current_checksum(), book.checksum(), "{price} {qty}");
            let mut clone = book.clone();
            clone.bids.top_changed = true;
            assert_eq!(clone.current_checksum(), book.checksum());
        }
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
        let mut book = OrderBook::with_precision(10, Some(Precision { price: 1, qty: 8 }));
        book.apply_snapshot(bids.clone(), asks.clone()).unwrap();
        assert_eq!(book.checksum(), 3_310_070_434);
        // The same from the wire text alone (every value printed at full precision).
        let mut inferred = OrderBook::new(10);
        inferred.apply_snapshot(bids, asks).unwrap();
        assert_eq!(inferred.checksum(), 3_310_070_434);
    }

    fn matic_snapshot() -> Message {
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
        let mut book = OrderBook::with_precision(10, Some(Precision { price: 4, qty: 8 }));
        book.apply_snapshot(bids, asks).unwrap();
        assert_eq!(book.checksum(), 2_439_117_997);
        book.apply_update(levels(&[("0.5657", "1098.3947558")]), vec![])
            .unwrap();
        assert_eq!(book.checksum(), 2_114_181_697);
    }

    /// The unpadded text gives a different checksum: the padding is what makes the vector pass.
    #[test]
    fn maticusd_vector_fails_without_padding() {
        let (bids, asks) = matic_snapshot();
        let unpadded: String = asks
            .iter()
            .chain(&bids)
            .flat_map(|(p, q)| [p.to_string(), q.to_string()])
            .map(|t| t.replace('.', "").trim_start_matches('0').to_owned())
            .collect();
        assert_ne!(crc32fast::hash(unpadded.as_bytes()), 2_439_117_997);
    }

    #[test]
    fn update_rules_table() {
        // (what it covers, update bids, expected bids best first)
        type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<(&'a str, &'a str)>);
        let cases: Vec<Case> = vec![
            (
                "qty 0 deletes",
                vec![("10", "0")],
                vec![("9", "2"), ("8", "3")],
            ),
            (
                "delete of an absent level is ignored",
                vec![("7.5", "0")],
                vec![("10", "1"), ("9", "2"), ("8", "3")],
            ),
            (
                "same price twice: the later wins",
                vec![("9", "5"), ("9", "6")],
                vec![("10", "1"), ("9", "6"), ("8", "3")],
            ),
            (
                "same price: delete then re-add",
                vec![("9", "0"), ("9", "7")],
                vec![("10", "1"), ("9", "7"), ("8", "3")],
            ),
            (
                "insert beyond depth truncates the worst",
                vec![("11", "1")],
                vec![("11", "1"), ("10", "1"), ("9", "2")],
            ),
            (
                "insert below the worst is cut at once",
                vec![("1", "1")],
                vec![("10", "1"), ("9", "2"), ("8", "3")],
            ),
            (
                "equal by value at another scale",
                vec![("9.00", "4")],
                vec![("10", "1"), ("9", "4"), ("8", "3")],
            ),
        ];
        for (what, update, expected) in cases {
            let mut book = OrderBook::new(3);
            book.apply_snapshot(levels(&[("10", "1"), ("9", "2"), ("8", "3")]), vec![])
                .unwrap();
            book.apply_update(levels(&update), vec![]).unwrap();
            let got: Vec<_> = book.bids().map(|l| (l.price, l.qty)).collect();
            assert_eq!(got, levels(&expected), "{what}");
        }
    }

    #[test]
    fn best_levels_and_spread() {
        let mut book = OrderBook::new(10);
        assert_eq!(book.spread(), None);
        book.apply_snapshot(
            levels(&[("100.1", "1"), ("99.5", "2")]),
            levels(&[("100.4", "3"), ("101", "1")]),
        )
        .unwrap();
        assert_eq!(book.best_bid().unwrap().price, d("100.1"));
        assert_eq!(book.best_ask().unwrap().price, d("100.4"));
        assert_eq!(book.spread(), Some(d("0.3")));
        let view = book.view(1);
        assert_eq!(
            view.bids,
            vec![PriceLevel {
                price: d("100.1"),
                qty: d("1")
            }]
        );
        assert_eq!(
            view.asks,
            vec![PriceLevel {
                price: d("100.4"),
                qty: d("3")
            }]
        );
    }

    fn arb_level() -> impl Strategy<Value = (Decimal, Decimal)> {
        // Prices on a small grid so updates collide with existing levels, written with one to
        // three decimals (so equal prices arrive at different scales); qty 0 now and then, and
        // now and then a quantity whose mantissa needs more than 64 bits (stored wide), around
        // 2^64 so that a rescale can carry a narrow one over.
        (
            1u128..200,
            1u8..4,
            prop_oneof![
                4 => Just(0u128),
                30 => 1u128..1_000_000_000,
                3 => (1u128 << 64) - 3..(1u128 << 64) + 3,
                3 => (1u128 << 64)..(1u128 << 90),
                2 => 1_000_000_000_000_000_000u128..1_900_000_000_000_000_000,
            ],
            6u8..9,
        )
            .prop_map(|(p, ps, q, qs)| {
                let price = Decimal::new(p * 5 * 10u128.pow(u32::from(ps) - 1), ps).unwrap();
                (price, Decimal::new(q, qs).unwrap())
            })
    }

    /// The obvious implementation of the rules, to check the compact one against.
    #[derive(Default)]
    struct Model {
        bids: std::collections::BTreeMap<Decimal, Decimal>,
        asks: std::collections::BTreeMap<Decimal, Decimal>,
        seen: Precision,
    }

    impl Model {
        fn apply(
            &mut self,
            depth: usize,
            bids: &[(Decimal, Decimal)],
            asks: &[(Decimal, Decimal)],
        ) {
            for (side, levels) in [(&mut self.bids, bids), (&mut self.asks, asks)] {
                for &(p, q) in levels {
                    self.seen.price = self.seen.price.max(p.scale());
                    self.seen.qty = self.seen.qty.max(q.scale());
                    if q.is_zero() {
                        side.remove(&p);
                    } else {
                        side.insert(p, q);
                    }
                }
            }
            while self.bids.len() > depth {
                self.bids.pop_first();
            }
            while self.asks.len() > depth {
                self.asks.pop_last();
            }
        }

        fn checksum(&self) -> u32 {
            let mut text = String::new();
            let mut buf = itoa::Buffer::new();
            for (p, q) in self
                .asks
                .iter()
                .take(10)
                .chain(self.bids.iter().rev().take(10))
            {
                text.push_str(p.checksum_digits(self.seen.price, &mut buf));
                text.push_str(q.checksum_digits(self.seen.qty, &mut buf));
            }
            crc32fast::hash(text.as_bytes())
        }

        fn view(&self) -> BookView {
            let level = |(p, q): (&Decimal, &Decimal)| PriceLevel { price: *p, qty: *q };
            BookView {
                bids: self.bids.iter().rev().map(level).collect(),
                asks: self.asks.iter().map(level).collect(),
            }
        }
    }

    fn check_invariants(book: &OrderBook) -> Result<(), TestCaseError> {
        let bids: Vec<_> = book.bids().collect();
        let asks: Vec<_> = book.asks().collect();
        prop_assert!(bids.len() <= book.depth() && asks.len() <= book.depth());
        prop_assert!(
            bids.windows(2).all(|w| w[0].price > w[1].price),
            "bids sorted and unique"
        );
        prop_assert!(
            asks.windows(2).all(|w| w[0].price < w[1].price),
            "asks sorted and unique"
        );
        prop_assert!(
            bids.iter().chain(&asks).all(|l| !l.qty.is_zero()),
            "no zero quantity"
        );
        Ok(())
    }

    type Message = (Vec<(Decimal, Decimal)>, Vec<(Decimal, Decimal)>);

    fn arb_message(max: usize) -> impl Strategy<Value = Message> {
        (
            prop::collection::vec(arb_level(), 0..max),
            prop::collection::vec(arb_level(), 0..max),
        )
    }

    proptest! {
        #[test]
        fn random_messages_keep_the_book_well_formed_and_equal_to_the_model(
            depth in prop_oneof![Just(10usize), Just(25), 1usize..40],
            snapshot in arb_message(60),
            updates in prop::collection::vec(arb_message(8), 0..50),
        ) {
            let mut book = OrderBook::new(depth);
            let mut model = Model::default();
            book.apply_snapshot(snapshot.0.clone(), snapshot.1.clone()).unwrap();
            model.apply(depth, &snapshot.0, &snapshot.1);
            check_invariants(&book)?;
            for (bids, asks) in updates {
                book.apply_update(bids.clone(), asks.clone()).unwrap();
                model.apply(depth, &bids, &asks);
                check_invariants(&book)?;
                prop_assert_eq!(book.view(depth), model.view());
                prop_assert_eq!(book.checksum(), model.checksum());
                prop_assert_eq!(book.current_checksum(), book.checksum(), "the cached checksum is current");
                // A book rebuilt from its own top-N view has the same checksum.
                let view = book.view(depth);
                let mut rebuilt = OrderBook::with_precision(depth, Some(book.precision()));
                rebuilt
                    .apply_snapshot(
                        view.bids.iter().map(|l| (l.price, l.qty)),
                        view.asks.iter().map(|l| (l.price, l.qty)),
                    )
                    .unwrap();
                prop_assert_eq!(rebuilt.checksum(), book.checksum());
                prop_assert_eq!(rebuilt.view(depth), view);
            }
        }
    }

    #[test]
    fn known_precision_ignores_extra_trailing_zeros_but_grows_for_real_digits() {
        let mut book = OrderBook::with_precision(10, Some(Precision { price: 1, qty: 2 }));
        book.apply_snapshot(levels(&[("100.10", "1.500")]), vec![])
            .unwrap();
        assert_eq!(book.precision(), Precision { price: 1, qty: 2 });
        assert_eq!(book.checksum(), crc32fast::hash(b"1001150"));
        book.apply_update(levels(&[("99.95", "1")]), vec![])
            .unwrap();
        assert_eq!(book.precision(), Precision { price: 2, qty: 2 });
        assert_eq!(book.checksum(), crc32fast::hash(b"100101509995100"));
        assert_eq!(book.best_bid().unwrap().price, d("100.10"));
    }

    #[test]
    fn values_beyond_the_integer_range_are_errors_not_wraparounds() {
        let mut book = OrderBook::new(10);
        let huge = d("99999999999999999999.5");
        let err = book
            .apply_snapshot(vec![(huge, d("1"))], vec![])
            .unwrap_err();
        assert_eq!(err.field, "price");
        let mut book = OrderBook::new(10);
        let big_qty = d("123456789012345678901234567.12345678");
        book.apply_snapshot(vec![(d("1.5"), big_qty)], vec![])
            .unwrap();
        assert_eq!(book.best_bid().unwrap().qty, big_qty);
    }

    /// Quantities too wide for a 16-byte level live beside the ladder: changed, rescaled,
    /// narrowed, deleted and pushed out of the depth, the book and its checksum stay those of
    /// the plain model, and nothing is left behind.
    #[test]
    fn wide_quantities_follow_their_levels_through_every_change() {
        let wide = d("18446744073709551616"); // 2^64, at scale 0
        let mut book = OrderBook::new(2);
        book.apply_snapshot(
            levels(&[("3", "1"), ("2", "18446744073709551616"), ("1", "5")]),
            vec![],
        )
        .unwrap();
        assert_eq!(
            book.bids().map(|l| l.qty).collect::<Vec<_>>(),
            [d("1"), wide]
        );
        assert!(book.bids.wide.len() == 1 && book.bids.levels.len() == 2);
        // A quantity with more decimals rescales every quantity, the wide one included.
        book.apply_update(levels(&[("3", "1.5")]), vec![]).unwrap();
        assert_eq!(book.bids().nth(1).unwrap().qty, wide);
        assert_eq!(
            book.checksum(),
            crc32fast::hash(b"3152184467440737095516160")
        );
        // Narrowed in place, then made wide again, then pushed out by a better level.
        book.apply_update(levels(&[("2", "7")]), vec![]).unwrap();
        assert!(book.bids.wide.is_empty());
        book.apply_update(levels(&[("2", "99999999999999999999")]), vec![])
            .unwrap();
        assert_eq!(book.bids.wide.len(), 1);
        book.apply_update(levels(&[("4", "1")]), vec![]).unwrap();
        assert!(book.bids.wide.is_empty(), "{:?}", book.bids.wide);
        assert_eq!(
            book.bids().map(|l| l.price).collect::<Vec<_>>(),
            [d("4"), d("3")]
        );
        // Deleted while wide.
        book.apply_update(levels(&[("3", "99999999999999999999")]), vec![])
            .unwrap();
        book.apply_update(levels(&[("3", "0")]), vec![]).unwrap();
        assert!(book.bids.wide.is_empty());
        assert_eq!(std::mem::size_of::<Lvl>(), 16);
    }

    /// Kraken's recipe, printed from the book's own levels through
    /// [`Decimal::checksum_digits`] (neither [`ChecksumText`] nor the memo).
    fn recipe(book: &OrderBook) -> u32 {
        let p = book.precision();
        let mut text = String::new();
        let mut buf = itoa::Buffer::new();
        for l in book.asks().take(10).chain(book.bids().take(10)) {
            text.push_str(l.price.checksum_digits(p.price, &mut buf));
            text.push_str(l.qty.checksum_digits(p.qty, &mut buf));
        }
        crc32fast::hash(text.as_bytes())
    }

    /// `checksum`, `current_checksum` (through the memo, twice: filled, then hit) and a fresh
    /// clone's are all the recipe's.
    fn check_checksums(book: &mut OrderBook) -> Result<(), TestCaseError> {
        let want = recipe(book);
        prop_assert_eq!(book.checksum(), want, "checksum");
        prop_assert_eq!(book.current_checksum(), want, "current_checksum");
        book.bids.top_changed = true;
        prop_assert_eq!(book.current_checksum(), want, "current_checksum again");
        let mut clone = book.clone();
        clone.asks.top_changed = true;
        prop_assert_eq!(clone.current_checksum(), want, "a clone's");
        Ok(())
    }

    fn dm(mantissa: u128, scale: u8) -> Decimal {
        Decimal::new(mantissa, scale).unwrap()
    }

    /// Kraken strips every leading zero, so a level at price zero gives its quantity's digits
    /// alone; the checksum printed `0` for it (itoa's zero), which `Decimal::checksum_digits`
    /// and Kraken's recipe do not.
    #[test]
    fn a_price_of_zero_prints_no_checksum_digits() {
        let mut book = OrderBook::new(10);
        book.apply_update(levels(&[("0", "1.5"), ("0.5", "2.0")]), vec![])
            .unwrap();
        assert_eq!(book.checksum(), crc32fast::hash(b"52015"));
        assert_eq!(book.current_checksum(), crc32fast::hash(b"52015"));
        check_checksums(&mut book).unwrap();
    }

    /// The longest checksum text there is, 20 levels of a 20-digit price and a 39-digit
    /// quantity (one grown to 39 digits by a rescale), and 20 levels of 20-digit narrow
    /// quantities (just below the wide marker): it would catch a buffer too short for them or
    /// a store past its end, and a wrong digit at the top of either range.
    #[test]
    fn the_widest_levels_fit_the_checksum_text() {
        let top = u128::from(u64::MAX);
        let wide = u128::MAX - 40;
        let side = |from: u128, qty: u128| -> Vec<(Decimal, Decimal)> {
            (0..10).map(|k| (dm(from - k, 0), dm(qty - k, 0))).collect()
        };
        let mut book = OrderBook::new(10);
        book.apply_snapshot(side(top - 100, wide), side(top, wide - 20))
            .unwrap();
        check_checksums(&mut book).unwrap();
        book.apply_snapshot(side(top - 100, top - 1), side(top, top - 20))
            .unwrap();
        check_checksums(&mut book).unwrap();
        // 3.4e37 at scale 0, then a quantity with one decimal: every quantity times ten.
        let grown = u128::MAX / 10;
        book.apply_snapshot(side(top - 100, grown), side(top, grown - 20))
            .unwrap();
        book.apply_update(levels(&[("1", "0.1")]), vec![]).unwrap();
        assert_eq!(book.precision().qty, 1);
        assert_eq!(book.best_bid().unwrap().qty, dm(grown * 10, 1));
        check_checksums(&mut book).unwrap();
    }

    /// Every pair of price and quantity digit counts (1 to 20 each), so that a level's text is
    /// every length from 2 to 40, on both sides of what a memo slot holds (24): a level filled,
    /// served, requoted and served again. It would catch a slot serving a text cut short, or
    /// one of another length.
    #[test]
    fn memoized_level_texts_of_every_length_are_kraken_s() {
        for price_digits in 1..=20 {
            for qty_digits in 1..=20 {
                let p = 10u128.pow(price_digits - 1);
                let q = 10u128.pow(qty_digits - 1);
                let side = |from: u128, qty: u128| -> Vec<(Decimal, Decimal)> {
                    (0..10).map(|k| (dm(from + k, 0), dm(qty + k, 0))).collect()
                };
                let mut book = OrderBook::new(10);
                book.apply_snapshot(side(p, q), side(p + 100, q + 10))
                    .unwrap();
                check_checksums(&mut book).unwrap();
                for qty in [q + 7, q + 3] {
                    book.apply_update(vec![(dm(p + 3, 0), dm(qty, 0))], vec![])
                        .unwrap();
                    check_checksums(&mut book).unwrap();
                }
            }
        }
    }

    /// Prices on a grid (levels collide in the top ten and in memo slots), zero, and values
    /// next to every power of ten below 10^15, at scales 0 to 3 (the price scale grows).
    fn arb_edge_price() -> impl Strategy<Value = Decimal> {
        prop_oneof![
            6 => (1u128..40, 0u8..3).prop_map(|(m, s)| dm(m * 10u128.pow(u32::from(s)), s)),
            1 => Just(Decimal::ZERO),
            2 => (0u32..15, 0u128..3, 0u8..3).prop_map(|(k, d, s)| dm(10u128.pow(k) - 1 + d, s)),
            1 => (1u128..1000).prop_map(|m| dm(m, 3)),
        ]
    }

    /// Deletions, plain quantities, values next to every power of ten up to 10^30 and to 2^64
    /// (the wide marker), and wide ones, at scales 0 to 8 (the quantity scale grows).
    fn arb_edge_qty() -> impl Strategy<Value = Decimal> {
        prop_oneof![
            3 => Just(Decimal::ZERO),
            10 => (1u128..1_000_000_000, 0u8..9).prop_map(|(m, s)| dm(m, s)),
            3 => (1u32..31, 0u128..3, 0u8..9).prop_map(|(k, d, s)| dm(10u128.pow(k) - 1 + d, s)),
            2 => (0u128..4, 0u8..9).prop_map(|(d, s)| dm(u128::from(u64::MAX) - 1 + d, s)),
            1 => ((1u128 << 64)..(1u128 << 96), 0u8..9).prop_map(|(m, s)| dm(m, s)),
        ]
    }

    /// What may happen to a book between two checksums.
    #[derive(Clone, Debug)]
    enum Step {
        Update(Message),
        Snapshot(Message),
        Clone,
        SetPrecision(Option<Precision>),
        SetDepth(usize),
        Clear,
    }

    fn arb_step() -> impl Strategy<Value = Step> {
        let side = |n| prop::collection::vec((arb_edge_price(), arb_edge_qty()), 0..n);
        prop_oneof![
            20 => (side(6), side(6)).prop_map(Step::Update),
            2 => (side(30), side(30)).prop_map(Step::Snapshot),
            2 => Just(Step::Clone),
            1 => prop::option::of((0u8..4, 0u8..10).prop_map(|(price, qty)| Precision { price, qty }))
                .prop_map(Step::SetPrecision),
            1 => (1usize..30).prop_map(Step::SetDepth),
            1 => Just(Step::Clear),
        ]
    }

    proptest! {
        /// Whatever happens to a book (updates and snapshots at growing scales, a clone taken
        /// mid-stream, the precision set or unset, the depth changed, a clear), with checksums
        /// taken after some steps only (so that changes pile up between two), the checksum, the
        /// memoized one and a clone's are Kraken's recipe printed from the book's levels. It
        /// would catch a memo serving a stale or another level's text, a change to the top ten
        /// that `current_checksum` misses, and any digit ChecksumText prints that
        /// `Decimal::checksum_digits` does not (it caught a zero price printed as `0`).
        #[test]
        fn the_memoized_checksum_is_kraken_s_whatever_happens_to_the_book(
            depth in 1usize..30,
            steps in prop::collection::vec((arb_step(), any::<bool>()), 1..60),
        ) {
            let mut book = OrderBook::new(depth);
            for (step, look) in steps {
                let applied = match step {
                    Step::Update((bids, asks)) => book.apply_update(bids, asks),
                    Step::Snapshot((bids, asks)) => book.apply_snapshot(bids, asks),
                    Step::Clone => {
                        book = book.clone();
                        Ok(())
                    }
                    Step::SetPrecision(p) => book.set_precision(p),
                    Step::SetDepth(d) => {
                        book.set_depth(d);
                        Ok(())
                    }
                    Step::Clear => {
                        book.clear();
                        Ok(())
                    }
                };
                if applied.is_err() {
                    // What the tracker does with a book that could not take a message.
                    book.clear();
                }
                if look {
                    check_checksums(&mut book)?;
                }
            }
            check_checksums(&mut book)?;
        }
    }
}
