//! `book_snapshot_{N}`: the top N levels of each side at a fixed interval, in tardis.dev's layout
//! (`exchange,symbol,timestamp,local_timestamp,asks[0].price,asks[0].amount,bids[0].price,
//! bids[0].amount,asks[1].price,...`, best first; a level the book does not have is empty).
//!
//! The instants are the multiples of the interval (since the epoch) in `[from, to)`, so 1 s
//! snapshots fall on whole seconds. The row at instant `t` holds the book after the last stored
//! message with Kraken timestamp at or before `t`, rebuilt by [`BookCursor`] with every checksum
//! recomputed: `timestamp` is `t`; `local_timestamp` is when that message was received (how fresh
//! the book is). Several symbols are written instant by instant, in the order given.
//!
//! What must hold: a row is written only for a book known to be Kraken's at that instant: the
//! coverage model says the collector's record covers it ([`crate::history::Coverage::covers`]: no
//! mismatch, lost connection, stopped collector or journal damage), and the last message applied
//! verified its checksum. Other instants are skipped and counted, never filled with a stale or
//! wrong book: a collector's downtime has no rows.

use tokio_postgres::Client;

use super::source::Selection;
use super::table::{Cell, Column, ColumnKind, Scales};
use super::{EXCHANGE, ExportError, ExportReport, Sink, Ticker};
use crate::book::PriceLevel;
use crate::history::Coverage;
use crate::readback::{BookCursor, StartKind};
use crate::store::DbTarget;
use crate::time::Timestamp;

/// The instants: multiples of `interval_micros` in `[from, to)`.
pub fn boundaries(
    from: Timestamp,
    to: Timestamp,
    interval_micros: i64,
) -> impl Iterator<Item = Timestamp> {
    let interval = interval_micros.max(1);
    // The first multiple at or after `from` (rounded up to whole microseconds).
    let from_us =
        from.unix_nanos().div_euclid(1000) + i64::from(from.unix_nanos().rem_euclid(1000) != 0);
    let first = from_us.div_euclid(interval) * interval
        + if from_us.rem_euclid(interval) == 0 {
            0
        } else {
            interval
        };
    let to_ns = to.unix_nanos();
    (0..)
        .map(move |k: i64| first.saturating_add(k.saturating_mul(interval)))
        .map(|us| Timestamp::from_unix_nanos(us.saturating_mul(1000)))
        .take_while(move |t| t.unix_nanos() < to_ns)
}

/// The columns for `depth` levels a side.
pub fn columns(depth: usize) -> Vec<Column> {
    let mut c = vec![
        Column::required("exchange", ColumnKind::Text),
        Column::required("symbol", ColumnKind::Text),
        Column::required("timestamp", ColumnKind::Micros),
        Column::required("local_timestamp", ColumnKind::Micros),
    ];
    for i in 0..depth {
        for side in ["asks", "bids"] {
            c.push(Column::nullable(
                format!("{side}[{i}].price"),
                ColumnKind::Decimal,
            ));
            c.push(Column::nullable(
                format!("{side}[{i}].amount"),
                ColumnKind::Decimal,
            ));
        }
    }
    c
}

/// A snapshot export, ready to write.
#[derive(Debug)]
pub(crate) struct Plan<'a> {
    selection: &'a Selection,
    depth: usize,
    interval_micros: i64,
    books: Vec<SymbolBook>,
}

/// Opens a cursor per symbol (each on its own connection, so they can be read side by side).
pub(crate) async fn plan<'a>(
    target: &DbTarget,
    client: &Client,
    selection: &'a Selection,
    depth: usize,
    interval_micros: i64,
) -> Result<Plan<'a>, ExportError> {
    let first = boundaries(selection.from, selection.to, interval_micros)
        .next()
        .unwrap_or(selection.from);
    let last = selection.to.add_nanos(-1);
    let mut books = Vec::new();
    for symbol in &selection.symbols {
        let coverage = super::source::coverage(client, &selection.collector, symbol).await?;
        // From the stream the coverage model verifies at the first instant (or the first one
        // after it).
        let start = BookCursor::find_start_covered(client, symbol, &coverage, first).await?;
        let since = start.as_ref().map_or(selection.from, |s| s.received_at);
        let mut book = SymbolBook {
            symbol: symbol.clone(),
            conn: None,
            cursor: None,
            coverage,
            saved: View::default(),
            last: None,
            ahead: None,
            ended: true,
            scales: (0, 0),
            since: selection.from,
            messages: 0,
        };
        if let Some(start) = start {
            let conn = target.connect("krakenbook export").await?;
            let cursor = BookCursor::open(&conn, symbol, start.clone(), last).await?;
            let p = cursor.book().precision();
            book.scales = (p.price, p.qty);
            if start.kind == StartKind::State {
                // The state's book is there before the first step.
                book.saved.copy_from(cursor.book(), depth);
                book.last = Some(Last {
                    received: start.timestamp,
                    verified: cursor.is_synced(),
                });
            }
            book.cursor = Some(cursor);
            book.conn = Some(conn);
            book.ended = false;
            book.since = since;
        }
        books.push(book);
    }
    Ok(Plan {
        selection,
        depth,
        interval_micros,
        books,
    })
}

impl Plan<'_> {
    /// The columns.
    pub(crate) fn columns(&self) -> Vec<Column> {
        columns(self.depth)
    }

    /// The DECIMAL scales for Parquet: every value the books hold comes from a stored level in
    /// `[earliest start, to)` or a book state, and prints at its book's precision.
    pub(crate) async fn scales(&self, client: &Client) -> Result<Scales, ExportError> {
        let since = self
            .books
            .iter()
            .filter(|b| b.cursor.is_some())
            .map(|b| b.since)
            .min()
            .unwrap_or(self.selection.from)
            .min(self.selection.from);
        let floor = self
            .books
            .iter()
            .fold((0, 0), |(p, q), b| (p.max(b.scales.0), q.max(b.scales.1)));
        let (p, q) = super::stored_scales(client, self.selection, since, floor).await?;
        let mut by_column = vec![0; 4];
        for _ in 0..self.depth * 2 {
            by_column.extend([p, q]);
        }
        Ok(Scales { by_column })
    }

    /// Writes a row per symbol per instant where its book is known.
    pub(crate) async fn write(
        mut self,
        sink: &mut Sink,
        ticker: &mut Ticker<'_>,
        report: &mut ExportReport,
    ) -> Result<(), ExportError> {
        let depth = self.depth;
        for at in boundaries(self.selection.from, self.selection.to, self.interval_micros) {
            for book in &mut self.books {
                report.intervals += 1;
                // The stream verified at `at` ends at this record: a later one (a reconnection's
                // snapshot of a quiet pair carries an old Kraken timestamp) is not applied yet.
                // In a gap, the stream the next verified instant follows: the one after the gap
                // (a quiet pair's snapshot on it, stamped before the gap, waits for its turn
                // rather than being applied at an instant of the stream before it).
                let limit = book
                    .coverage
                    .choose_from(at)
                    .map_or(i64::MAX, |(_, span)| span.last_seq);
                book.advance_to(at, depth, limit).await?;
                let Some(last) = book.last.filter(|l| l.verified) else {
                    report.skipped_intervals += 1;
                    continue;
                };
                if !book.coverage.covers(at) {
                    report.skipped_intervals += 1;
                    continue;
                }
                let mut cells = Vec::with_capacity(4 + depth * 4);
                cells.extend([
                    Cell::Text(EXCHANGE),
                    Cell::Text(&book.symbol),
                    Cell::Micros(at.unix_micros()),
                    Cell::Micros(last.received.unix_micros()),
                ]);
                for i in 0..depth {
                    for side in [&book.saved.asks, &book.saved.bids] {
                        match side.get(i) {
                            Some(l) => cells.extend([Cell::Decimal(l.price), Cell::Decimal(l.qty)]),
                            None => cells.extend([Cell::Null, Cell::Null]),
                        }
                    }
                }
                sink.write_row(&cells)?;
                report.rows += 1;
            }
            ticker.rows(report.rows, at);
        }
        for b in &self.books {
            report.messages += b.messages;
        }
        Ok(())
    }
}

/// The top levels of a book.
#[derive(Clone, Debug, Default)]
struct View {
    bids: Vec<PriceLevel>,
    asks: Vec<PriceLevel>,
}

impl View {
    fn copy_from(&mut self, book: &crate::book::OrderBook, depth: usize) {
        self.bids.clear();
        self.asks.clear();
        self.bids.extend(book.bids().take(depth));
        self.asks.extend(book.asks().take(depth));
    }
}

/// The last message applied to the saved view.
#[derive(Clone, Copy, Debug)]
struct Last {
    received: Timestamp,
    verified: bool,
}

/// A message already applied to the cursor's book but later than the instant being written (or
/// past the end of the stream verified at it).
#[derive(Clone, Copy, Debug)]
struct Ahead {
    timestamp: Timestamp,
    seq: i64,
    last: Last,
}

/// One symbol's cursor, and its book as of the instant being written.
struct SymbolBook {
    symbol: String,
    /// The connection the cursor reads on.
    conn: Option<Client>,
    cursor: Option<BookCursor>,
    coverage: Coverage,
    /// The top levels after the last message at or before the instant.
    saved: View,
    last: Option<Last>,
    /// The cursor's book is one message past `saved` (that message is later than the instant).
    ahead: Option<Ahead>,
    ended: bool,
    scales: (u8, u8),
    since: Timestamp,
    messages: u64,
}

impl std::fmt::Debug for SymbolBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SymbolBook")
            .field("symbol", &self.symbol)
            .field("ended", &self.ended)
            .finish()
    }
}

impl SymbolBook {
    /// Applies every message up to `at` and up to `seq` `limit`, keeping the view as of `at`.
    async fn advance_to(
        &mut self,
        at: Timestamp,
        depth: usize,
        limit: i64,
    ) -> Result<(), ExportError> {
        let Some(cursor) = self.cursor.as_mut() else {
            return Ok(());
        };
        if let Some(a) = self.ahead {
            if a.timestamp > at || a.seq > limit {
                return Ok(());
            }
            // The cursor's book is the one after that message.
            self.saved.copy_from(cursor.book(), depth);
            self.last = Some(a.last);
            self.ahead = None;
        }
        while !self.ended {
            let Some(step) = cursor.next().await? else {
                self.ended = true;
                break;
            };
            self.messages += 1;
            let last = Last {
                received: step.received_at,
                verified: step.verified == Some(true),
            };
            if step.timestamp > at || step.seq > limit {
                self.ahead = Some(Ahead {
                    timestamp: step.timestamp,
                    seq: step.seq,
                    last,
                });
                break;
            }
            self.saved.copy_from(step.book, depth);
            self.last = Some(last);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        Timestamp::parse(s).unwrap()
    }

    #[test]
    fn instants_are_multiples_of_the_interval_inside_the_range() {
        let cases: [(&str, &str, i64, &[&str]); 4] = [
            (
                "2026-11-24T10:00:00.300Z",
                "2026-11-24T10:00:03Z",
                1_000_000,
                &["2026-11-24T10:00:01Z", "2026-11-24T10:00:02Z"],
            ),
            // `from` on a multiple is included, `to` is not.
            (
                "2026-11-24T10:00:00Z",
                "2026-11-24T10:00:00.250Z",
                100_000,
                &[
                    "2026-11-24T10:00:00Z",
                    "2026-11-24T10:00:00.100Z",
                    "2026-11-24T10:00:00.200Z",
                ],
            ),
            // A sub-microsecond start rounds up.
            (
                "2026-11-24T10:00:00.000000500Z",
                "2026-11-24T10:00:00.000003Z",
                1,
                &["2026-11-24T10:00:00.000001Z", "2026-11-24T10:00:00.000002Z"],
            ),
            (
                "2026-11-24T10:00:00.1Z",
                "2026-11-24T10:00:00.9Z",
                1_000_000,
                &[],
            ),
        ];
        for (from, to, iv, want) in cases {
            let got: Vec<Timestamp> = boundaries(t(from), t(to), iv).collect();
            let want: Vec<Timestamp> = want.iter().map(|w| t(w)).collect();
            assert_eq!(got, want, "{from}..{to} every {iv} us");
        }
    }

    #[test]
    fn columns_interleave_asks_and_bids_by_level() {
        let names: Vec<String> = columns(2).into_iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                "exchange",
                "symbol",
                "timestamp",
                "local_timestamp",
                "asks[0].price",
                "asks[0].amount",
                "bids[0].price",
                "bids[0].amount",
                "asks[1].price",
                "asks[1].amount",
                "bids[1].price",
                "bids[1].amount"
            ]
        );
    }
}
