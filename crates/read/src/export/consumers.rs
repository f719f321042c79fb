//! How real loaders apply an `incremental_book_L2` file: one model per kind of consumer, run
//! over every incremental export by the tests (unit and end-to-end), which check that each one
//! holds the book engine's book after every message.
//!
//! The three rules differ only in what a snapshot does to the levels already held:
//! - [`TardisRule`], tardis.dev's documented one: rows before a symbol's first snapshot are
//!   skipped; a snapshot row that follows a non-snapshot row empties the book first;
//! - [`NeverClears`], nautilus_trader's `TardisCSVDataLoader`: every row becomes a delta (amount
//!   0 a delete, a snapshot row an add, anything else an update) and nothing ever empties the
//!   book, so a snapshot lands on top of what was held;
//! - [`ClearsToDeepest`], hftbacktest's `tardis.convert`: a run of snapshot rows is held back
//!   until the next non-snapshot row, then each side is cleared from its best level down to the
//!   price of that side's last snapshot row (the deepest) and the snapshot applied; levels deeper
//!   than that survive, and a snapshot that no non-snapshot row follows is never applied.
//!
//! The export satisfies all three at once (see [`super::incremental`]): it deletes every level
//! held before each snapshot, and follows each snapshot with a non-snapshot row.
//!
//! All three delete a level on `amount` 0 and set it otherwise; a deletion of a level not held
//! is ignored. Prices compare by value (`100.0` and `100.00` are one level).

use std::collections::BTreeMap;

use crate::book::{Decimal, Side};

/// One row of an `incremental_book_L2` file, as a consumer reads it (one symbol's rows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L2Row {
    /// The `is_snapshot` column.
    pub snapshot: bool,
    /// The `side` column.
    pub side: Side,
    /// The `price` column.
    pub price: Decimal,
    /// The `amount` column (0 deletes).
    pub amount: Decimal,
}

/// A book as a consumer holds it: bids best (highest) first, asks best (lowest) first, each
/// level `(price, amount)`.
pub type Book = (Vec<(Decimal, Decimal)>, Vec<(Decimal, Decimal)>);

/// A consumer of one symbol's rows.
pub trait Consumer {
    /// Applies the next row.
    fn apply(&mut self, row: &L2Row);
    /// The book it holds now.
    fn book(&self) -> Book;
    /// Whether it holds a book yet (the tardis rule skips rows before the first snapshot).
    fn started(&self) -> bool {
        true
    }
}

/// Bids and asks by price.
#[derive(Clone, Debug, Default)]
struct Levels {
    bids: BTreeMap<Decimal, Decimal>,
    asks: BTreeMap<Decimal, Decimal>,
}

impl Levels {
    fn set(&mut self, side: Side, price: Decimal, amount: Decimal) {
        let levels = match side {
            Side::Bid => &mut self.bids,
            Side::Ask => &mut self.asks,
        };
        if amount.is_zero() {
            levels.remove(&price);
        } else {
            levels.insert(price, amount);
        }
    }

    fn book(&self) -> Book {
        (
            self.bids.iter().rev().map(|(p, q)| (*p, *q)).collect(),
            self.asks.iter().map(|(p, q)| (*p, *q)).collect(),
        )
    }
}

/// tardis.dev's documented rule (see the module doc).
#[derive(Clone, Debug, Default)]
pub struct TardisRule {
    levels: Levels,
    started: bool,
    last_snapshot: bool,
}

impl Consumer for TardisRule {
    fn apply(&mut self, row: &L2Row) {
        if !self.started && !row.snapshot {
            return;
        }
        self.started = true;
        if row.snapshot && !self.last_snapshot {
            self.levels = Levels::default();
        }
        self.last_snapshot = row.snapshot;
        self.levels.set(row.side, row.price, row.amount);
    }

    fn book(&self) -> Book {
        self.levels.book()
    }

    fn started(&self) -> bool {
        self.started
    }
}

/// nautilus_trader's loader: never empties the book (see the module doc).
#[derive(Clone, Debug, Default)]
pub struct NeverClears {
    levels: Levels,
}

impl Consumer for NeverClears {
    fn apply(&mut self, row: &L2Row) {
        self.levels.set(row.side, row.price, row.amount);
    }

    fn book(&self) -> Book {
        self.levels.book()
    }
}

/// hftbacktest's converter: clears each side only down to the snapshot's last price, and only
/// once a non-snapshot row follows the snapshot (see the module doc).
#[derive(Clone, Debug, Default)]
pub struct ClearsToDeepest {
    levels: Levels,
    pending: Vec<L2Row>,
}

impl ClearsToDeepest {
    fn flush(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        let last = |side: Side| {
            pending
                .iter()
                .rev()
                .find(|r| r.side == side)
                .map(|r| r.price)
        };
        if let Some(deepest) = last(Side::Bid) {
            self.levels.bids.retain(|p, _| *p < deepest);
        }
        if let Some(deepest) = last(Side::Ask) {
            self.levels.asks.retain(|p, _| *p > deepest);
        }
        for r in &pending {
            self.levels.set(r.side, r.price, r.amount);
        }
    }
}

impl Consumer for ClearsToDeepest {
    fn apply(&mut self, row: &L2Row) {
        if row.snapshot {
            self.pending.push(*row);
            return;
        }
        if !self.pending.is_empty() {
            self.flush();
        }
        self.levels.set(row.side, row.price, row.amount);
    }

    fn book(&self) -> Book {
        self.levels.book()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(snapshot: bool, side: Side, price: &str, amount: &str) -> L2Row {
        L2Row {
            snapshot,
            side,
            price: Decimal::parse(price).unwrap(),
            amount: Decimal::parse(amount).unwrap(),
        }
    }

    fn prices(levels: &[(Decimal, Decimal)]) -> Vec<String> {
        levels.iter().map(|(p, _)| p.to_string()).collect()
    }

    /// A file that relies on tardis's rule: a second snapshot with nothing deleted before it,
    /// shallower than the first (as after a reconnection at a lower depth, or a book that
    /// thinned), and no row after it. Each model holds what its loader would.
    #[test]
    fn each_model_keeps_what_its_loader_keeps_across_a_bare_snapshot() {
        let rows = [
            row(true, Side::Bid, "100", "1"),
            row(true, Side::Bid, "99", "1"),
            row(true, Side::Bid, "98", "1"),
            row(false, Side::Ask, "101", "2"),
            row(true, Side::Bid, "100.5", "1"),
            row(true, Side::Bid, "99.5", "1"),
            row(false, Side::Bid, "100.5", "3"),
        ];
        let mut tardis = TardisRule::default();
        let mut nautilus = NeverClears::default();
        let mut hft = ClearsToDeepest::default();
        for r in &rows {
            tardis.apply(r);
            nautilus.apply(r);
            hft.apply(r);
        }
        // tardis: the second snapshot replaced everything.
        assert_eq!(prices(&tardis.book().0), ["100.5", "99.5"]);
        assert!(tardis.book().1.is_empty());
        // nautilus: everything ever set is still there.
        assert_eq!(
            prices(&nautilus.book().0),
            ["100.5", "100", "99.5", "99", "98"]
        );
        assert_eq!(prices(&nautilus.book().1), ["101"]);
        // hftbacktest: bids cleared down to 99.5 only; 99 and 98 survive; asks untouched.
        assert_eq!(prices(&hft.book().0), ["100.5", "99.5", "99", "98"]);
        assert_eq!(prices(&hft.book().1), ["101"]);

        // A snapshot at the end of the file, never followed: hftbacktest never applies it.
        let mut hft = ClearsToDeepest::default();
        for r in &rows[..3] {
            hft.apply(r);
        }
        assert!(hft.book().0.is_empty());
    }

    #[test]
    fn the_tardis_rule_skips_rows_before_the_first_snapshot() {
        let mut tardis = TardisRule::default();
        tardis.apply(&row(false, Side::Bid, "1", "1"));
        assert!(!tardis.started());
        tardis.apply(&row(true, Side::Ask, "2", "1"));
        assert!(tardis.started());
        assert_eq!(prices(&tardis.book().1), ["2"]);
        assert!(tardis.book().0.is_empty());
    }
}
