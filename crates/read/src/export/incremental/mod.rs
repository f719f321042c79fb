//! `incremental_book_L2`: every level change, in received order, in tardis.dev's layout
//! (`exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount`; `amount` 0 deletes
//! the level; `is_snapshot` marks the rows of a snapshot).
//!
//! # Following the coverage model
//!
//! The file describes a symbol's book only where the coverage model ([`crate::history`]) says it
//! was verified, and an empty book everywhere else. Over `[from, to)` each symbol's *timeline* is
//! walked ([`timeline()`]): at each instant, the stream [`Coverage::choose`](crate::history::Coverage::choose) answers `book --at`
//! from, and that stream's span; where no stream is verified, the next instant one is. Each piece
//! of it is a [`Segment`]: one stream followed from an instant to the end of its span (or `to`).
//! With several streams (connections, or collectors merged when no `--collector` is given), only
//! the stream followed changes: where its span ends, the timeline continues with the stream
//! `choose` gives there, and the file writes that stream's book at that instant (a stream switch,
//! counted); the book is cleared only where no stream is verified (a union gap).
//! - **where coverage starts** (at `from` when the book is verified there, else at the first span
//!   start after it, and after every gap at the next span start), and where the stream followed
//!   changes, the book at that instant is written first: rebuilt and checksum-verified by
//!   [`BookCursor`](crate::readback::BookCursor) from that stream's own records (every message before the instant), as
//!   snapshot rows stamped with the instant (`timestamp` the instant on Kraken's clock, rounded up
//!   to the microsecond; `local_timestamp` the receive time of the last message in that book, or
//!   the instant when it is later). When that stream's snapshot carries the instant itself, the
//!   stored snapshot is that book and nothing is added;
//! - **then the stream's stored rows** while the span lasts: messages of that stream (`seq` inside
//!   the span) stamped inside the segment; every other stored row of the symbol is left out: the
//!   updates of an unverified book after a mismatch, those of a lost connection's last moments,
//!   anything before coverage starts;
//! - **at a gap's start**, an `amount` 0 row for every level held (stamped at the gap's start;
//!   `local_timestamp` never earlier than the symbol's last row), so that every consumer holds an
//!   empty book, never a stale one, until coverage starts again.
//!
//! The rows of all the symbols come in received order (`seq`, then `ordinal`); a segment's
//! opening book goes before the first stored row stamped at or after its instant, a gap's
//! deletions before the first one after the span's last record (so no row of the span can follow
//! them) stamped at or after the gap's start. The entries table does not name each row's
//! connection: a segment's rows are told by the span's `seq` range, which is exact while a
//! collector carries a symbol on one connection at a time. Merged collectors have no common `seq`:
//! their rows are read in receive order and a segment's rows are also told by its collector.
//!
//! # What every consumer needs
//!
//! Kraken keeps a book at the subscribed depth and, after each message, silently drops the levels
//! that fell past it: no deletion is sent for them. And the loaders that read this layout disagree
//! on what a snapshot does to the levels already held (see [`super::consumers`]: tardis's rule
//! empties the book, nautilus_trader's loader never does, hftbacktest's clears each side only down
//! to the snapshot's deepest price and applies a snapshot only once a non-snapshot row follows
//! it). So the file carries what every one of them needs, and the file alone rebuilds the exact
//! book in each:
//! - **implied deletions**: after each message, the levels Kraken dropped (the worst past the
//!   depth, by Kraken's one window rule, [`crate::book::window::truncate`], which
//!   [`crate::book::OrderBook`] follows too) are written as `amount` 0
//!   rows with the message's timestamps and `is_snapshot` false. The depth is the subscribed one,
//!   from the subscription's acknowledgement on the same connection;
//! - **resets**: before every snapshot (a book written where coverage starts or the stream
//!   changes, a stored snapshot), every level a consumer that applies every row still holds for
//!   the symbol is deleted (`amount` 0, `is_snapshot` false, the snapshot's timestamps),
//!   unconditionally: a snapshot always starts from an empty book, whatever the consumer does with
//!   snapshots;
//! - **snapshot ends**: a snapshot whose rows no implied deletion follows is followed by its last
//!   level again as an update (`is_snapshot` false, the same price and amount: no change for any
//!   consumer), so that a consumer that applies a snapshot only when a non-snapshot row comes
//!   (hftbacktest) applies it at its own time, even at the end of the file.
//!
//! # What must hold
//!
//! Applying the file's rows in order by any of the three rules of [`super::consumers`], the book a
//! consumer holds once it has applied every row stamped at or before an instant `T` of `[from, to)`
//! is exactly `book --at T`'s (its top levels, at the subscribed depth) where the coverage model
//! verifies `T`, and empty where `T` is in a gap (the unit tests check it on a table of records
//! with every kind of gap, the end-to-end tests against `book --at` on recordings with
//! mismatches and reconnections). The stored rows written appear unchanged, in `(seq, ordinal)`
//! order, and every other row is a snapshot row of a book written where coverage starts, an
//! `amount` 0 deletion, or a snapshot end. `--stored-only` writes every stored row in range and
//! nothing else, whatever the coverage.
//!
//! # Where each part lives
//!
//! - [`timeline`](mod@timeline): the segments a symbol's file follows, from the coverage model (no I/O);
//! - [`emit`]: the rows, from the stored messages read in order, the segments and their opening
//!   books: implied deletions, resets, snapshot ends, gap deletions (no I/O; the unit tests check
//!   the three consumer models on it);
//! - [`plan`](mod@plan): the SQL: each segment's opening book rebuilt by the cursor, the stored rows read
//!   and driven through the emitter into the sink.

mod emit;
mod plan;
mod timeline;

pub(crate) use plan::plan;
pub use timeline::{Opening, Opens, Segment, timeline};

use super::table::{Column, ColumnKind};

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
