//! `incremental_book_L2`: every level change, in received order, in tardis.dev's layout
//! (`exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount`; `amount` 0 deletes
//! the level; `is_snapshot` marks the rows of a snapshot, and a snapshot that follows updates
//! replaces the book).
//!
//! Kraken keeps a book at the subscribed depth and, after each message, silently drops the levels
//! that fell past it: no deletion is sent for them. A consumer that keeps every level it was sent
//! (as tardis's loaders do) would hold stale levels below the window, and they resurface when the
//! book moves. So the file carries what the consumer needs, and the file alone rebuilds the exact
//! book:
//! - **implied deletions**: after each message, the levels Kraken dropped (the worst past the
//!   depth, by Kraken's rule, the same as [`crate::book::OrderBook`]'s) are written as `amount` 0
//!   rows with the message's timestamps and `is_snapshot` false. The depth is the subscribed one,
//!   from the subscription's acknowledgement on the same connection;
//! - **an initial snapshot**: the book at `from` (rebuilt and checksum-verified by
//!   [`BookCursor`]) is written first, as snapshot rows stamped `from`, as tardis files open with
//!   the book at the day's start. When the book at `from` is not known (in a gap, or not recorded
//!   yet) it is left out and the symbol's rows are usable from its next snapshot (tardis's rule:
//!   skip updates before the first snapshot);
//! - **resets**: tardis consumers replace the book only when a snapshot follows an update; when a
//!   snapshot directly follows another (the initial one, or a quiet pair resubscribed), the levels
//!   held are first deleted (`amount` 0, `is_snapshot` false), so the new snapshot starts from an
//!   empty book.
//!
//! What must hold: applying the file's rows in order (zero deletes, anything else sets; a snapshot
//! after a non-snapshot row clears the book first) gives, after each stored message, exactly the
//! book the book engine holds after it (the end-to-end test checks this against [`BookCursor`] at
//! every verified message); the stored rows appear in the file unchanged, in `(seq, ordinal)`
//! order. `--stored-only` writes the stored rows alone.

use std::collections::{BTreeSet, HashMap, HashSet};

use futures_util::StreamExt;
use tokio_postgres::Client;

use super::source::Selection;
use super::table::{Cell, Column, ColumnKind, Scales};
use super::{EXCHANGE, ExportError, ExportReport, ExportRequest, Sink, Ticker, db};
use crate::book::{Decimal, PriceLevel};
use crate::readback::BookCursor;
use crate::readback::Gaps;
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
    let Some(start) = BookCursor::find_start(client, symbol, at, Some(collector)).await? else {
        return Ok(None);
    };
    let mut cursor = BookCursor::open(client, symbol, start.clone(), at).await?;
    let mut last = None;
    while let Some(step) = cursor.next().await? {
        last = Some((step.received_at, step.verified));
    }
    let (last_received, verified) = match last {
        Some((r, v)) => (r, v == Some(true)),
        // A book state with nothing after it: verified when it was journaled.
        None => (start.received_at, cursor.is_synced()),
    };
    let gaps = Gaps::load(
        client,
        collector,
        &[symbol.to_owned()],
        start.received_at,
        selection.from.max(last_received),
    )
    .await?;
    if !verified || gaps.is_gap(symbol, last_received, at) {
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
            let side = if r.get::<_, &str>(2) == "bid" {
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
    /// A level deleted before a snapshot that follows a snapshot.
    Reset,
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
            Cell::Text(r.side.name()),
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
        }
    }

    fn check(&mut self) -> Result<(), ExportError> {
        self.error.take().map_or(Ok(()), Err)
    }
}

/// Turns stored messages into the file's rows: the stored levels, plus (unless stored-only) the
/// implied deletions and resets that let a consumer hold Kraken's book from the file alone.
#[derive(Debug)]
struct Emitter {
    stored_only: bool,
    windows: HashMap<String, Window>,
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
}

impl Emitter {
    fn new(stored_only: bool) -> Emitter {
        Emitter {
            stored_only,
            windows: HashMap::new(),
            current: None,
            before_snapshot: HashSet::new(),
        }
    }

    /// The book at `from`, as snapshot rows stamped `from`.
    fn initial(
        &mut self,
        symbol: &str,
        bids: &[PriceLevel],
        asks: &[PriceLevel],
        depth: Option<usize>,
        from: Timestamp,
        out: &mut dyn FnMut(Row<'_>),
    ) {
        let w = self.windows.entry(symbol.to_owned()).or_default();
        w.active = true;
        w.depth = depth;
        w.last_snapshot = true;
        for (side, levels) in [(Side::Bid, bids), (Side::Ask, asks)] {
            for l in levels {
                w.apply(side, l.price, l.qty);
                out(Row {
                    kind: RowKind::Initial,
                    symbol,
                    ts: from,
                    received: from,
                    snapshot: true,
                    side,
                    price: l.price,
                    amount: l.qty,
                });
            }
        }
    }

    /// A stored message begins (`depth`: its subscription's, for a snapshot).
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
            let w = self.windows.entry(symbol.to_owned()).or_default();
            if w.last_snapshot {
                // A snapshot right after a snapshot: a consumer would merge the two; empty
                // the book first.
                for (side, price) in w.clear() {
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
            }
            w.clear();
            w.active = true;
            w.depth = depth;
        }
        if !snapshot && !self.windows.get(symbol).is_some_and(|w| w.active) {
            self.before_snapshot.insert(symbol.to_owned());
        }
        self.current = Some(Message {
            symbol: symbol.to_owned(),
            ts,
            received,
            snapshot,
        });
    }

    /// A stored level of the current message.
    fn level(&mut self, side: Side, price: Decimal, qty: Decimal, out: &mut dyn FnMut(Row<'_>)) {
        let Some(m) = &self.current else {
            return;
        };
        out(Row {
            kind: RowKind::Stored,
            symbol: &m.symbol,
            ts: m.ts,
            received: m.received,
            snapshot: m.snapshot,
            side,
            price,
            amount: qty,
        });
        if !self.stored_only
            && let Some(w) = self.windows.get_mut(&m.symbol)
            && w.active
        {
            w.apply(side, price, qty);
        }
    }

    /// The current message ends: the levels Kraken dropped past the depth are deleted.
    fn end_message(&mut self, out: &mut dyn FnMut(Row<'_>)) {
        let Some(m) = self.current.take() else {
            return;
        };
        if self.stored_only {
            return;
        }
        let Some(w) = self.windows.get_mut(&m.symbol) else {
            return;
        };
        let mut dropped = 0;
        if w.active {
            for (side, price) in w.overflow() {
                dropped += 1;
                out(Row {
                    kind: RowKind::Implied,
                    symbol: &m.symbol,
                    ts: m.ts,
                    received: m.received,
                    snapshot: false,
                    side,
                    price,
                    amount: Decimal::ZERO,
                });
            }
        }
        w.last_snapshot = m.snapshot && dropped == 0;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Bid,
    Ask,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Bid => "bid",
            Side::Ask => "ask",
        }
    }
}

/// What a consumer of the file holds for a symbol: the prices of each side, and Kraken's window.
#[derive(Debug, Default)]
struct Window {
    /// Known since a snapshot (the initial one or a stored one).
    active: bool,
    /// The subscribed depth (`None`: unknown, nothing is dropped).
    depth: Option<usize>,
    bids: BTreeSet<Decimal>,
    asks: BTreeSet<Decimal>,
    /// The last rows written for the symbol were a snapshot's.
    last_snapshot: bool,
}

impl Window {
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
    use std::collections::BTreeMap;

    type Levels = BTreeMap<Decimal, Decimal>;
    type Book = (Vec<(Decimal, Decimal)>, Vec<(Decimal, Decimal)>);

    /// A consumer as tardis.dev documents it: amount 0 deletes, anything else sets; a snapshot
    /// row after a non-snapshot row clears the book first.
    #[derive(Default)]
    struct Consumer {
        books: HashMap<String, (Levels, Levels, bool)>,
    }

    impl Consumer {
        fn apply(&mut self, r: &Row<'_>) {
            let (bids, asks, last_snapshot) = self.books.entry(r.symbol.to_owned()).or_default();
            if r.snapshot && !*last_snapshot {
                bids.clear();
                asks.clear();
            }
            *last_snapshot = r.snapshot;
            let side = if r.side == Side::Bid { bids } else { asks };
            if r.amount.is_zero() {
                side.remove(&r.price);
            } else {
                side.insert(r.price, r.amount);
            }
        }

        fn book(&self, symbol: &str) -> Book {
            let (bids, asks, _) = &self.books[symbol];
            (
                bids.iter().rev().map(|(p, q)| (*p, *q)).collect(),
                asks.iter().map(|(p, q)| (*p, *q)).collect(),
            )
        }
    }

    fn engine_book(b: &OrderBook) -> Book {
        (
            b.bids().map(|l| (l.price, l.qty)).collect(),
            b.asks().map(|l| (l.price, l.qty)).collect(),
        )
    }

    fn levels(spec: &[(&str, &str)]) -> Vec<(Decimal, Decimal)> {
        spec.iter().map(|(p, q)| (d(p), d(q))).collect()
    }

    #[test]
    fn the_file_alone_rebuilds_the_engines_book_after_every_message() {
        let t = |s: i64| Timestamp::from_unix_nanos(s * 1_000_000_000);
        // (snapshot, bids, asks, what it covers); depth 2.
        type Msg = (
            bool,
            &'static [(&'static str, &'static str)],
            &'static [(&'static str, &'static str)],
            &'static str,
        );
        let messages: [Msg; 6] = [
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
                "a snapshot after updates",
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
                "a snapshot after updates: replaces",
            ),
            (
                true,
                &[("97.0", "4")],
                &[("104.0", "5"), ("105.0", "1")],
                "a snapshot right after a snapshot: reset",
            ),
        ];
        let mut emitter = Emitter::new(false);
        let mut consumer = Consumer::default();
        let mut kinds = Vec::new();
        let mut engine = OrderBook::new(2);
        let initial = levels(&[("99.9", "1"), ("99.8", "2")]);
        engine
            .apply_snapshot(initial.clone(), levels(&[("100.2", "1")]))
            .unwrap();
        let view = engine.view(2);
        emitter.initial("X", &view.bids, &view.asks, Some(2), t(0), &mut |r| {
            consumer.apply(&r);
            kinds.push(r.kind);
        });
        assert_eq!(consumer.book("X"), engine_book(&engine), "the initial book");
        for (i, (snapshot, bids, asks, what)) in messages.iter().enumerate() {
            let ts = t(i as i64 + 1);
            let mut sink = |r: Row<'_>| {
                consumer.apply(&r);
                kinds.push(r.kind);
            };
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
            } else {
                engine.apply_update(levels(bids), levels(asks)).unwrap();
            }
            assert_eq!(
                consumer.book("X"),
                engine_book(&engine),
                "after message {i}: {what}"
            );
        }
        assert!(kinds.contains(&RowKind::Implied));
        assert!(kinds.contains(&RowKind::Reset));
        assert_eq!(kinds.iter().filter(|k| **k == RowKind::Initial).count(), 3);
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

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).unwrap()
    }

    #[test]
    fn the_window_drops_the_worst_levels_past_the_depth() {
        let mut w = Window {
            active: true,
            depth: Some(2),
            ..Window::default()
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
