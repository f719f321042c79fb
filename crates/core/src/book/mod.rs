//! Order books: exact decimals, Kraken's update rules and checksum, and per-symbol tracking.
//!
//! - the numbers ([`Decimal`], [`Precision`], [`PriceLevel`], [`Side`]) live in [`crate::num`] and
//!   are re-exported here, where most code has always found them;
//! - [`order_book`]: one symbol's book, its update rules and its CRC32 checksum;
//! - [`tracker`]: the books of one connection (or one recording), each with its depth, precision and
//!   sync state, giving every book message a [`Verdict`];
//! - [`window`]: Kraken's depth-window rule, what a subscriber at depth D is sent for each change
//!   (the simulator and the replay server both follow it).
//!
//! The same code serves the collector, replay, book-at-time and the simulator, so a bug shows up
//! everywhere or nowhere.

pub mod order_book;
pub mod tracker;
pub mod window;

pub use crate::num::{Decimal, DecimalError, Precision, PriceLevel, Side};
pub use order_book::{BookView, CHECKSUM_LEVELS, OrderBook};
pub use tracker::{FrameVerdict, Tracked, Tracker, Verdict};
