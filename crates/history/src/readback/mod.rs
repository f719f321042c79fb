//! Reading books back from TimescaleDB: the book of a symbol at any instant, and the book as it
//! evolved over a time range, each message's checksum recomputed on the way.
//!
//! Where a rebuild starts: the latest verified starting point at or before the instant, on one
//! collector's record: a Kraken snapshot (a `krakenbook_book` row of kind `s`, or a copy of one
//! on another connection, `krakenbook_copies`) or a book state the collector journaled
//! (`kraken_book_states`, every so many updates). From there each later message of the stream
//! (one row a message, its levels as dec64 in wire order, in the copy's own `seq` order) is
//! applied with the project's one book engine, and each message's checksum is recomputed and
//! compared with Kraken's. Both lookups use the `(symbol, timestamp)` indexes; the replay is bounded by the collector's book-state interval, never a day of updates.
//!
//! Which instants have a book at all is [`crate::history`]'s to say: `book --at` answers from the
//! stream the coverage model chooses, rebuilt from that stream's own starting point and records,
//! and `query` reports the model's coverage and gaps.
//!
//! What must hold: the book returned at an instant is exactly the book the chosen stream held
//! after its last message at or before it, and says whether that message verified; an instant
//! inside a gap (a mismatch, a lost connection, a stopped collector, journal damage, or outside
//! the record) is answered with a [`BookAt`] whose `gap` names that gap (bounds, cause, the last
//! verified instant before it) and which holds no levels and no checksum, so
//! [`BookAt::is_verified`] is false: the answer is the gap, never a book (the export e2e checks
//! both halves at every instant it compares); an instant before the symbol's first record is
//! [`ReadbackError::NoStart`].

mod book_at;
mod cursor;
pub mod query;

pub use book_at::{BookAt, BookGap, book_at};
pub use cursor::{BookCursor, Start, StartKind, Step, StoredMessage, stored_message};
pub use cursor::{instrument_precision, parse_levels, subscribed_depth_of};

use crate::store::StoreError;

/// Why a read-back failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadbackError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The coverage could not be read.
    #[error(transparent)]
    History(#[from] crate::history::HistoryError),
    /// Nothing recorded for the symbol at or before the instant.
    #[error(
        "no book of {symbol} is recorded at or before {at}: the earliest record starts later, or the symbol was never collected (try `krakenbook query --coverage`)"
    )]
    NoStart {
        /// The symbol.
        symbol: String,
        /// The instant.
        at: crate::time::Timestamp,
    },
    /// A stored value does not parse (the database was altered by hand).
    #[error("stored data of {symbol} at seq {seq} is invalid: {reason}")]
    Invalid {
        /// The symbol.
        symbol: String,
        /// The row's seq.
        seq: i64,
        /// What is wrong.
        reason: String,
    },
}
