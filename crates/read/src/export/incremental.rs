//! `incremental_book_L2`: every level change, in received order, in tardis.dev's layout
//! (`exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount`; `amount` 0 deletes
//! the level; `is_snapshot` marks the rows of a snapshot).
//!
//! Kraken keeps a book at the subscribed depth and, after each message, silently drops the levels
//! that fell past it: no deletion is sent for them. And the loaders that read this layout disagree
//! on what a snapshot does to the levels already held (see [`super::consumers`]: tardis's rule
//! empties the book, nautilus_trader's loader never does, hftbacktest's clears each side only down
//! to the snapshot's deepest price and applies a snapshot only once a non-snapshot row follows
//! it). So the file carries what every one of them needs, and the file alone rebuilds the exact
//! book in each:
//! - **implied deletions**: after each message, the levels Kraken dropped (the worst past the
//!   depth, by Kraken's rule, the same as [`crate::book::OrderBook`]'s) are written as `amount` 0
//!   rows with the message's timestamps and `is_snapshot` false. The depth is the subscribed one,
//!   from the subscription's acknowledgement on the same connection;
//! - **an initial snapshot**: the book at `from` (rebuilt and checksum-verified by
//!   [`BookCursor`]) is written first, as snapshot rows stamped `from`, as tardis files open with
//!   the book at the day's start. When the book at `from` is not known (in a gap, or not recorded
//!   yet) it is left out and the symbol's rows are usable from its next snapshot;
//! - **resets**: before every snapshot (after a reconnection or a resubscription), every level a
//!   consumer that applies every row still holds for the symbol (the opening book's, the updates
//!   since, and the updates written before the symbol's first snapshot) is deleted (`amount` 0,
//!   `is_snapshot` false, the snapshot's timestamps), unconditionally: a snapshot always starts
//!   from an empty book, whatever the consumer does with snapshots;
//! - **snapshot ends**: a snapshot whose rows no implied deletion follows is followed by its last
//!   level again as an update (`is_snapshot` false, the same price and amount: no change for any
//!   consumer), so that a consumer that applies a snapshot only when a non-snapshot row comes
//!   (hftbacktest) applies it at its own time, even at the end of the file.
//!
//! What must hold: applying the file's rows in order by any of the three rules of
//! [`super::consumers`] gives, after each stored message, exactly the book the book engine holds
//! after it (the unit tests check it on a table of messages, the end-to-end tests against
//! [`BookCursor`] at every verified message of a recording with reconnections); the stored rows
//! appear in the file unchanged, in `(seq, ordinal)` order, and every other row is either an
//! `amount` 0 deletion or a snapshot end. `--stored-only` writes the stored rows alone.

use std::collections::{BTreeSet, HashMap, HashSet};

use futures_util::StreamExt;
use tokio_postgres::Client;

use super::source::Selection;
use super::table::{Cell, Column, ColumnKind, Scales};
use super::{EXCHANGE, ExportError, ExportReport, ExportRequest, Sink, Ticker, db};
use crate::book::{Decimal, PriceLevel, Side};
use crate::readback::BookCursor;
use crate::store::DbTarget;
use crate::time::Timestamp;

/// The columns, tardis's `incremental_book_L2`.
pub fn columns() -> Vec<Column> {
    vec![
        Column::required("exchange", ColumnKind::Text),
        Column::required("symbol", ColumnKind::Text),
        Column::required("timestamp", ColumnKind::Micros),
        Column::required("local_timestamp", ColumnKind::Micros),
        Column::required("is_snapshot", ColumnKind::Bool),
        Column::required("side", ColumnKind::Text),
        Column::required("price", ColumnKind::Decimal),
        Column::required("amount", ColumnKind::Decimal),
    ]
}

const ENTRIES: &str = "SELECT seq, symbol, side, price, quantity, message_type, \"timestamp\", received_at \
    FROM kraken_orderbook_entries \
    WHERE symbol = ANY($1) AND collector = $2 AND \"timestamp\" >= $3 AND \"timestamp\" < $4 \
    ORDER BY seq, ordinal";

/// The book of a symbol at `from`, to open the file with.
#[derive(Debug)]
struct Initial {
    symbol: String,
    bids: Vec<PriceLevel>,
    asks: Vec<PriceLevel>,
    depth: Option<usize>,
    /// The scales the book prints at.
    scales: (u8, u8),
}

/// An incremental export, ready to write.
#[derive(Debug)]
pub(crate) struct Plan<'a> {
    selection: &'a Selection,
    stored_only: bool,
    initial: Vec<Initial>,
    no_initial: Vec<String>,
}

/// Rebuilds the initial books (unless `--stored-only`).
pub(crate) async fn plan<'a>(
    client: &Client,
    selection: &'a Selection,
    request: &ExportRequest,
) -> Result<Plan<'a>, ExportError> {
    let mut plan = Plan {
        selection,
        stored_only: request.stored_only,
        initial: Vec::new(),
        no_initial: Vec::new(),
    };
    if request.stored_only {
        return Ok(plan);
    }
    for symbol in &selection.symbols {
        match initial_book(client, selection, symbol).await? {
            Some(i) => plan.initial.push(i),
            None => plan.no_initial.push(symbol.clone()),
        }
    }
    Ok(plan)
}

/// The verified book of `symbol` just before `from`, when it is known.
async fn initial_book(
    client: &Client,
    selection: &Selection,
    symbol: &str,
) -> Result<Option<Initial>, ExportError> {
    // Everything strictly before `from` (timestamps are whole microseconds).
    let at = selection.from.add_nanos(-1);
    let collector = selection.collector.as_str();
    // Only a book the coverage model verifies at `at`, from the stream it chooses.
    let coverage = super::source::coverage(client, collector, symbol).await?;
    let Some((_, span)) = coverage.choose(at) else {
        return Ok(None);
    };
    let Some(start) = BookCursor::find_start_covered(client, symbol, &coverage, at).await? else {
        return Ok(None);
    };
    let mut cursor =
        BookCursor::open_bounded(client, symbol, start.clone(), at, span.last_seq).await?;
    let mut last = None;
    while let Some(step) = cursor.next().await? {
        last = Some(step.verified);
    }
    let verified = match last {
        Some(v) => v == Some(true),
        // A book state with nothing after it: verified when it was journaled.
        None => cursor.is_synced(),
    };
    if !verified {
        return Ok(None);
    }
    let depth = cursor.subscribed_depth();
    let book = cursor.book();
    let keep = depth.unwrap_or(usize::MAX);
    let precision = book.precision();
    Ok(Some(Initial {
        symbol: symbol.to_owned(),
        bids: book.bids().take(keep).collect(),
        asks: book.asks().take(keep).collect(),
        depth,
        scales: (precision.price, precision.qty),
    }))
}

impl Plan<'_> {
    /// The DECIMAL scales for Parquet: every stored value in range, and the initial books.
    pub(crate) async fn scales(&self, client: &Client) -> Result<Scales, ExportError> {
        let floor = self
            .initial
            .iter()
            .fold((0, 0), |(p, q), i| (p.max(i.scales.0), q.max(i.scales.1)));
        let (p, q) =
            super::stored_scales(client, self.selection, self.selection.from, floor).await?;
        Ok(Scales {
            by_column: vec![0, 0, 0, 0, 0, 0, p, q],
        })
    }

    /// Writes the rows.
    pub(crate) async fn write(
        &self,
        target: &DbTarget,
        sink: &mut Sink,
        ticker: &mut Ticker<'_>,
        report: &mut ExportReport,
    ) -> Result<(), ExportError> {
        let sel = self.selection;
        let mut emitter = Emitter::new(self.stored_only);
        let mut out = Output {
            sink,
            report: &mut *report,
            error: None,
        };
        for i in &self.initial {
            emitter.initial(&i.symbol, &i.bids, &i.asks, i.depth, sel.from, &mut |r| {
                out.row(r)
            });
            ticker.rows(out.report.rows, sel.from);
        }
        out.check()?;

        // The levels stream on a connection of their own; depth lookups use another.
        let stream_client = target.connect("krakenbook export").await?;
        let lookups = target.connect("krakenbook export").await?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&sel.symbols, &sel.collector, &sel.from, &sel.to];
        let rows = stream_client
            .query_raw(ENTRIES, params)
            .await
            .map_err(db("reading the stored levels"))?;
        futures_util::pin_mut!(rows);
        let mut current: Option<(i64, String)> = None;
        while let Some(r) = rows.next().await {
            let r = r.map_err(db("reading the stored levels"))?;
            let seq: i64 = r.get(0);
            let symbol: &str = r.get(1);
            let side = if r.get::<_, &str>(2) == Side::Bid.as_str() {
                Side::Bid
            } else {
                Side::Ask
            };
            let price: Decimal = r.get(3);
            let qty: Decimal = r.get(4);
            let snapshot = r.get::<_, &str>(5) == "snapshot";
            let ts: Timestamp = r.get(6);
            let received: Timestamp = r.get::<_, Option<Timestamp>>(7).unwrap_or(ts);

            let same = current
                .as_ref()
                .is_some_and(|(s, sym)| *s == seq && sym == symbol);
            if !same {
                if current.is_some() {
                    emitter.end_message(&mut |r| out.row(r));
                    out.check()?;
                    ticker.rows(out.report.rows, ts);
                }
                let depth = if snapshot && !self.stored_only {
                    let d =
                        crate::readback::subscribed_depth_of(&lookups, &sel.collector, seq).await?;
                    if d.is_none() {
                        out.report.unknown_depth += 1;
                    }
                    d
                } else {
                    None
                };
                out.report.messages += 1;
                emitter.begin_message(symbol, snapshot, depth, ts, received, &mut |r| out.row(r));
                current = Some((seq, symbol.to_owned()));
            }
            emitter.level(side, price, qty, &mut |r| out.row(r));
        }
        if current.is_some() {
            emitter.end_message(&mut |r| out.row(r));
        }
        out.check()?;
        // The symbols without a book at `from` whose first rows were updates (a consumer skips
        // them until the symbol's first snapshot).
        report.no_initial_book = self
            .no_initial
            .iter()
            .filter(|s| emitter.before_snapshot.contains(*s))
            .cloned()
            .collect();
        Ok(())
    }
}

/// What one row of the file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RowKind {
    /// A level of the book at `from`.
    Initial,
    /// A stored level.
    Stored,
    /// A level Kraken dropped past the depth.
    Implied,
    /// A level deleted before a new snapshot.
    Reset,
    /// The last level of a snapshot again, as an update: ends the snapshot for consumers that
    /// apply one only when a non-snapshot row follows it.
    SnapshotEnd,
}

/// One row of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Row<'a> {
    kind: RowKind,
    symbol: &'a str,
    ts: Timestamp,
    received: Timestamp,
    snapshot: bool,
    side: Side,
    price: Decimal,
    amount: Decimal,
}

/// Writes rows to the sink and counts them (the first error is kept and stops the export).
struct Output<'a> {
    sink: &'a mut Sink,
    report: &'a mut ExportReport,
    error: Option<ExportError>,
}

impl Output<'_> {
    fn row(&mut self, r: Row<'_>) {
        if self.error.is_some() {
            return;
        }
        let written = self.sink.write_row(&[
            Cell::Text(EXCHANGE),
            Cell::Text(r.symbol),
            Cell::Micros(r.ts.unix_micros()),
            Cell::Micros(r.received.unix_micros()),
            Cell::Bool(r.snapshot),
            Cell::Text(r.side.as_str()),
            Cell::Decimal(r.price),
            Cell::Decimal(r.amount),
        ]);
        if let Err(e) = written {
            self.error = Some(e);
            return;
        }
        self.report.rows += 1;
        match r.kind {
            RowKind::Initial => self.report.initial_levels += 1,
            RowKind::Stored => self.report.stored_levels += 1,
            RowKind::Implied => self.report.implied_deletions += 1,
            RowKind::Reset => self.report.reset_deletions += 1,
            RowKind::SnapshotEnd => self.report.snapshot_ends += 1,
        }
    }

    fn check(&mut self) -> Result<(), ExportError> {
        self.error.take().map_or(Ok(()), Err)
    }
}

/// Turns stored messages into the file's rows: the stored levels, plus (unless stored-only) the
/// implied deletions, resets and snapshot ends that let every consumer hold Kraken's book from
/// the file alone.
#[derive(Debug)]
struct Emitter {
    stored_only: bool,
    held: HashMap<String, Held>,
    current: Option<Message>,
    /// Symbols with an update written before any book of theirs was known.
    before_snapshot: HashSet<String>,
}

/// The message being read.
#[derive(Debug)]
struct Message {
    symbol: String,
    ts: Timestamp,
    received: Timestamp,
    snapshot: bool,
    /// A snapshot's last level written.
    last: Option<(Side, Decimal, Decimal)>,
}

impl Emitter {
    fn new(stored_only: bool) -> Emitter {
        Emitter {
            stored_only,
            held: HashMap::new(),
            current: None,
            before_snapshot: HashSet::new(),
        }
    }

    /// The book at `from`, as snapshot rows stamped `from` (and its snapshot end).
    fn initial(
        &mut self,
        symbol: &str,
        bids: &[PriceLevel],
        asks: &[PriceLevel],
        depth: Option<usize>,
        from: Timestamp,
        out: &mut dyn FnMut(Row<'_>),
    ) {
        self.begin_message(symbol, true, depth, from, from, out);
        for (side, levels) in [(Side::Bid, bids), (Side::Ask, asks)] {
            for l in levels {
                self.write_level(RowKind::Initial, side, l.price, l.qty, out);
            }
        }
        self.end_message(out);
    }

    /// A stored message begins (`depth`: its subscription's, for a snapshot). Before a snapshot,
    /// every level a consumer still holds for the symbol is deleted.
    fn begin_message(
        &mut self,
        symbol: &str,
        snapshot: bool,
        depth: Option<usize>,
        ts: Timestamp,
        received: Timestamp,
        out: &mut dyn FnMut(Row<'_>),
    ) {
        if snapshot && !self.stored_only {
            let held = self.held.entry(symbol.to_owned()).or_default();
            for (side, price) in held.clear() {
                out(Row {
                    kind: RowKind::Reset,
                    symbol,
                    ts,
                    received,
                    snapshot: false,
                    side,
                    price,
                    amount: Decimal::ZERO,
                });
            }
            held.known = true;
            held.depth = depth;
        }
        if !snapshot && !self.held.get(symbol).is_some_and(|h| h.known) {
            self.before_snapshot.insert(symbol.to_owned());
        }
        self.current = Some(Message {
            symbol: symbol.to_owned(),
            ts,
            received,
            snapshot,
            last: None,
        });
    }

    /// A stored level of the current message.
    fn level(&mut self, side: Side, price: Decimal, qty: Decimal, out: &mut dyn FnMut(Row<'_>)) {
        self.write_level(RowKind::Stored, side, price, qty, out);
    }

    fn write_level(
        &mut self,
        kind: RowKind,
        side: Side,
        price: Decimal,
        qty: Decimal,
        out: &mut dyn FnMut(Row<'_>),
    ) {
        let Some(m) = &mut self.current else {
            return;
        };
        out(Row {
            kind,
            symbol: &m.symbol,
            ts: m.ts,
            received: m.received,
            snapshot: m.snapshot,
            side,
            price,
            amount: qty,
        });
        if m.snapshot {
            m.last = Some((side, price, qty));
        }
        if !self.stored_only {
            // Held whether or not the book is known yet: a consumer that applies every row
            // holds it, and the next snapshot deletes it.
            match self.held.get_mut(&m.symbol) {
                Some(held) => held.apply(side, price, qty),
                None => self
                    .held
                    .entry(m.symbol.clone())
                    .or_default()
                    .apply(side, price, qty),
            }
        }
    }

    /// The current message ends: the levels Kraken dropped past the depth are deleted, and a
    /// snapshot not followed by such a deletion gets its snapshot end.
    fn end_message(&mut self, out: &mut dyn FnMut(Row<'_>)) {
        let Some(m) = self.current.take() else {
            return;
        };
        if self.stored_only {
            return;
        }
        let Some(held) = self.held.get_mut(&m.symbol) else {
            return;
        };
        let row = |kind, side, price, amount| Row {
            kind,
            symbol: &m.symbol,
            ts: m.ts,
            received: m.received,
            snapshot: false,
            side,
            price,
            amount,
        };
        let mut dropped = 0;
        if held.known {
            for (side, price) in held.overflow() {
                dropped += 1;
                out(row(RowKind::Implied, side, price, Decimal::ZERO));
            }
        }
        if m.snapshot
            && dropped == 0
            && let Some((side, price, qty)) = m.last
        {
            out(row(RowKind::SnapshotEnd, side, price, qty));
        }
    }
}

/// What a consumer that applies every row of the file holds for a symbol (the prices of each
/// side), and Kraken's window over it.
#[derive(Debug, Default)]
struct Held {
    /// Known since a snapshot (the initial one or a stored one).
    known: bool,
    /// The subscribed depth (`None`: unknown, nothing is dropped).
    depth: Option<usize>,
    bids: BTreeSet<Decimal>,
    asks: BTreeSet<Decimal>,
}

impl Held {
    fn apply(&mut self, side: Side, price: Decimal, qty: Decimal) {
        let set = match side {
            Side::Bid => &mut self.bids,
            Side::Ask => &mut self.asks,
        };
        if qty.is_zero() {
            set.remove(&price);
        } else {
            set.insert(price);
        }
    }

    /// Drops the worst levels past the depth (lowest bids, highest asks), as Kraken does.
    fn overflow(&mut self) -> Vec<(Side, Decimal)> {
        let Some(depth) = self.depth else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while self.bids.len() > depth {
            if let Some(p) = self.bids.pop_first() {
                out.push((Side::Bid, p));
            }
        }
        while self.asks.len() > depth {
            if let Some(p) = self.asks.pop_last() {
                out.push((Side::Ask, p));
            }
        }
        out
    }

    /// Empties the book; the levels it held.
    fn clear(&mut self) -> Vec<(Side, Decimal)> {
        let bids = std::mem::take(&mut self.bids);
        let asks = std::mem::take(&mut self.asks);
        bids.into_iter()
            .map(|p| (Side::Bid, p))
            .chain(asks.into_iter().map(|p| (Side::Ask, p)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::OrderBook;
    use crate::export::consumers::{
        Book, ClearsToDeepest, Consumer, L2Row, NeverClears, TardisRule,
    };

    fn engine_book(b: &OrderBook) -> Book {
        (
            b.bids().map(|l| (l.price, l.qty)).collect(),
            b.asks().map(|l| (l.price, l.qty)).collect(),
        )
    }

    fn levels(spec: &[(&str, &str)]) -> Vec<(Decimal, Decimal)> {
        spec.iter().map(|(p, q)| (d(p), d(q))).collect()
    }

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).unwrap()
    }

    /// Levels as text: `(price, quantity)`.
    type Spec = &'static [(&'static str, &'static str)];

    /// (snapshot, bids, asks, what it covers).
    type Msg = (
        bool,
        &'static [(&'static str, &'static str)],
        &'static [(&'static str, &'static str)],
        &'static str,
    );

    /// Every consumer model applies every row it is given; after each message, each one that
    /// holds a book must hold the engine's (depth 2).
    fn run(initial: Option<(Spec, Spec)>, messages: &[Msg]) -> Vec<RowKind> {
        let t = |s: i64| Timestamp::from_unix_nanos(s * 1_000_000_000);
        let mut emitter = Emitter::new(false);
        let mut consumers: Vec<(&str, Box<dyn Consumer>)> = vec![
            ("tardis", Box::new(TardisRule::default())),
            ("nautilus", Box::new(NeverClears::default())),
            ("hftbacktest", Box::new(ClearsToDeepest::default())),
        ];
        let mut kinds = Vec::new();
        let mut engine = OrderBook::new(2);
        let mut known = false;
        let mut feed = |r: Row<'_>, consumers: &mut Vec<(&str, Box<dyn Consumer>)>| {
            kinds.push(r.kind);
            let row = L2Row {
                snapshot: r.snapshot,
                side: r.side,
                price: r.price,
                amount: r.amount,
            };
            for (_, c) in consumers.iter_mut() {
                c.apply(&row);
            }
        };
        if let Some((bids, asks)) = initial {
            engine.apply_snapshot(levels(bids), levels(asks)).unwrap();
            let view = engine.view(2);
            emitter.initial("X", &view.bids, &view.asks, Some(2), t(0), &mut |r| {
                feed(r, &mut consumers)
            });
            known = true;
            for (name, c) in &consumers {
                assert_eq!(c.book(), engine_book(&engine), "{name}: the initial book");
            }
        }
        for (i, (snapshot, bids, asks, what)) in messages.iter().enumerate() {
            let ts = t(i as i64 + 1);
            let mut sink = |r: Row<'_>| feed(r, &mut consumers);
            emitter.begin_message("X", *snapshot, Some(2), ts, ts, &mut sink);
            for (p, q) in levels(bids) {
                emitter.level(Side::Bid, p, q, &mut sink);
            }
            for (p, q) in levels(asks) {
                emitter.level(Side::Ask, p, q, &mut sink);
            }
            emitter.end_message(&mut sink);
            if *snapshot {
                engine.apply_snapshot(levels(bids), levels(asks)).unwrap();
                known = true;
            } else if known {
                engine.apply_update(levels(bids), levels(asks)).unwrap();
            }
            if known {
                for (name, c) in &consumers {
                    assert_eq!(
                        c.book(),
                        engine_book(&engine),
                        "{name} after message {i}: {what}"
                    );
                }
            }
        }
        kinds
    }

    #[test]
    fn every_consumer_rebuilds_the_engines_book_after_every_message() {
        let messages: [Msg; 7] = [
            (
                false,
                &[("100.0", "1")],
                &[],
                "an update right after the initial book",
            ),
            (
                true,
                &[("100.0", "1"), ("99.0", "1")],
                &[("101.0", "1"), ("102.0", "1")],
                "a snapshot after updates (a resubscription)",
            ),
            (
                false,
                &[("100.5", "2")],
                &[("100.8", "3")],
                "inserts push the worst levels out: implied deletions",
            ),
            (
                false,
                &[("100.5", "0"), ("99.5", "1")],
                &[],
                "a deletion and the level re-entering the window",
            ),
            (
                true,
                &[("98.0", "1")],
                &[("103.0", "1")],
                "a shallower snapshot after updates: nothing deeper may survive",
            ),
            (
                true,
                &[("97.0", "4")],
                &[("104.0", "5"), ("105.0", "1")],
                "a snapshot right after a snapshot (a quiet pair reconnected)",
            ),
            (
                true,
                &[("97.0", "4")],
                &[("104.0", "5"), ("105.0", "1")],
                "the same snapshot again, last in the file",
            ),
        ];
        let kinds = run(
            Some((&[("99.9", "1"), ("99.8", "2")], &[("100.2", "1")])),
            &messages,
        );
        assert!(kinds.contains(&RowKind::Implied));
        assert!(kinds.contains(&RowKind::Reset));
        assert_eq!(kinds.iter().filter(|k| **k == RowKind::Initial).count(), 3);
        // The initial book and each of the four snapshots end with a non-snapshot row.
        assert_eq!(
            kinds.iter().filter(|k| **k == RowKind::SnapshotEnd).count(),
            5
        );
    }

    #[test]
    fn levels_set_before_the_first_snapshot_are_deleted_before_it() {
        // No initial book: the file opens with updates a consumer that never clears applies.
        let messages: [Msg; 3] = [
            (
                false,
                &[("50.0", "1")],
                &[("60.0", "1")],
                "an update, book unknown",
            ),
            (
                true,
                &[("51.0", "1")],
                &[("59.0", "1")],
                "the first snapshot",
            ),
            (false, &[("51.5", "1")], &[], "an update"),
        ];
        let kinds = run(None, &messages);
        assert_eq!(kinds.iter().filter(|k| **k == RowKind::Reset).count(), 2);
    }

    #[test]
    fn stored_only_writes_the_stored_levels_alone() {
        let t = Timestamp::from_unix_nanos(0);
        let mut emitter = Emitter::new(true);
        let mut rows = Vec::new();
        for snapshot in [true, true, false] {
            let mut sink = |r: Row<'_>| rows.push((r.kind, r.snapshot, r.price));
            emitter.begin_message("X", snapshot, Some(1), t, t, &mut sink);
            emitter.level(Side::Bid, d("1"), d("1"), &mut sink);
            emitter.level(Side::Bid, d("2"), d("1"), &mut sink);
            emitter.end_message(&mut sink);
        }
        assert_eq!(rows.len(), 6);
        assert!(rows.iter().all(|r| r.0 == RowKind::Stored));
    }

    #[test]
    fn the_window_drops_the_worst_levels_past_the_depth() {
        let mut w = Held {
            known: true,
            depth: Some(2),
            ..Held::default()
        };
        for p in ["100.0", "99.5", "101.0"] {
            w.apply(Side::Bid, d(p), d("1"));
        }
        for p in ["102.0", "103.0", "102.5"] {
            w.apply(Side::Ask, d(p), d("1"));
        }
        // The lowest bid and the highest ask fall out; the text kept is the one sent.
        assert_eq!(
            w.overflow(),
            vec![(Side::Bid, d("99.5")), (Side::Ask, d("103.0"))]
        );
        assert_eq!(w.overflow(), vec![], "nothing more past the depth");
        // A deletion by value removes the level whatever its text.
        w.apply(Side::Bid, d("100.00"), d("0"));
        assert_eq!(w.bids.iter().copied().collect::<Vec<_>>(), vec![d("101.0")]);
        // Unknown depth: nothing is dropped.
        w.depth = None;
        for p in ["1", "2", "3"] {
            w.apply(Side::Ask, d(p), d("1"));
        }
        assert!(w.overflow().is_empty());
        assert_eq!(w.clear().len(), 6);
        assert!(w.bids.is_empty() && w.asks.is_empty());
    }
}
