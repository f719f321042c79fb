//! What was recorded, and the book at any instant of it.
//!
//! - [`history`]: what was recorded of each symbol and when its book was known (coverage and
//!   gaps), from the journal or the database: the one definition every read path asks;
//! - [`readback`]: books read back from the database: the book at an instant, cursors that step
//!   a book through time, and the queries they share.
//!
//! The data flow: store/journal → history → replay, export, plot (the read crate) and the
//! explorer. What must always hold: every read path asks the same history whether a book was
//! known at an instant, and an answer inside a gap says so.
//!
//! # Layer
//!
//! Crate `krakenbook-history`. May use: `krakenbook-core`, `krakenbook-journal`,
//! `krakenbook-store`.
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, missing_docs)]

// The layers below, under the names the `krakenbook` facade gives them, so that a path
// reads the same in every crate (`crate::time::Timestamp`).
use krakenbook_core::{book, kraken, record, time};
use krakenbook_journal as journal;
use krakenbook_store as store;

pub mod history;
pub mod readback;
