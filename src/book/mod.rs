//! Order books: exact decimals, Kraken's update rules and checksum, and per-symbol tracking.
//!
//! - [`decimal`]: exact prices and quantities (no `f64` anywhere);
//! - [`order_book`]: one symbol's book, its update rules and its CRC32 checksum;
//! - [`tracker`]: the books of one connection (or one recording), each with its depth, precision and
//!   sync state, giving every book message a [`Verdict`].
//!
//! The same code serves the collector, replay, book-at-time and the simulator, so a bug shows up
//! everywhere or nowhere.

pub mod decimal;
pub mod order_book;
pub mod tracker;

pub use decimal::{Decimal, DecimalError};
pub use order_book::{BookView, CHECKSUM_LEVELS, OrderBook, Precision, PriceLevel, Side};
pub use tracker::{FrameVerdict, Tracker, Verdict};
