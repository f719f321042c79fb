//! Giving recorded books back: verified replays and the replay server, exports, plots, and the
//! checking of capture files.
//!
//! - [`replay`]: every recorded message applied again and its checksum checked (journal or
//!   database, every stored copy), and the replay server that serves recorded books over Kraken's
//!   protocol (through `krakenbook-exchange`'s server);
//! - [`export`]: CSV and Parquet exports (tardis.dev layouts, exact decimals);
//! - [`plot`]: mid price, spread and depth over time, as a PNG;
//! - [`source`] and [`recorded`]: what an export or a plot reads (symbols, range, collector,
//!   coverage; precision and depth), shared by both;
//! - [`output`]: files written atomically (a temporary file renamed into place);
//! - [`verify`]: checksums of recorded frame files.
//!
//! The data flow: store/journal → history → replay, export, plot. What must always hold: a book
//! given back is one the record proves (its checksum verified, or said not to be); an output file
//! is complete or absent, never half-written.
//!
//! # Layer
//!
//! Crate `krakenbook-read`. May use: `krakenbook-core`, `krakenbook-journal`, `krakenbook-store`,
//! `krakenbook-history`, `krakenbook-exchange` (the replay server). Inside, [`plot`] and
//! [`export`] do not import each other.
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, missing_docs)]

// The layers below, under the names the `krakenbook` facade gives them, so that a path
// reads the same in every crate (`crate::time::Timestamp`).
use krakenbook_core::{book, kraken, num, record, time};
use krakenbook_exchange as exchange;
use krakenbook_history::{history, readback};
use krakenbook_journal as journal;
use krakenbook_store as store;

pub mod export;
pub mod output;
pub mod plot;
pub mod recorded;
pub mod replay;
pub mod source;
pub mod verify;
