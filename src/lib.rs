//! krakenbook records Kraken's public order books, exactly, and gives them back.
//!
//! This library is the facade of the workspace: it owns only [`config`] (the collector's
//! configuration file) and re-exports every layer under the module name it has always had, so
//! `krakenbook::history::Coverage` and the CLI's `krakenbook::store::Writer` name the same items as
//! the layer crates. The layers, bottom to top (a crate uses only those below it; `tests/layers.rs`
//! checks it):
//! - `krakenbook-core`: [`time`], [`text`], [`host`], [`num`], [`kraken`] (the v2 protocol,
//!   decoded without I/O or floating point), [`book`] (order books, Kraken's checksum, per-symbol
//!   verdicts, the depth-window rule), [`record`] (a frame or feed event as journaled);
//! - `krakenbook-journal`: [`journal`], every frame as received, in checksummed segments;
//! - `krakenbook-exchange`: [`exchange`], the server side of the protocol and a simulated Kraken;
//! - `krakenbook-store`: [`store`], TimescaleDB: schema, migrations, the exactly-once writer;
//! - `krakenbook-collect`: [`feed`], [`collect`], [`metrics`]: feed → journal → store;
//! - `krakenbook-history`: [`history`] (coverage and gaps, the one definition every read path
//!   asks) and [`readback`] (books at any instant);
//! - `krakenbook-read`: [`replay`], [`export`], [`plot`], [`output`], [`verify`];
//! - `krakenbook-archive`: [`archive`], the cold tier: closed chunks moved to Parquet files,
//!   verified before they are dropped, and mounted back into readers' sessions;
//! - `krakenbook-web`: [`web`], `krakenbook serve`, the read-only web explorer of coverage, books
//!   and collectors (it reads through history, and serves with collect's hardened accept loop).
//!
//! Every price and quantity is an exact [`book::Decimal`]; every instant a [`time::Timestamp`].
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, missing_docs)]

pub use krakenbook_archive as archive;
pub use krakenbook_collect::{collect, feed, metrics};
pub use krakenbook_core::{book, host, kraken, num, record, rng, text, time};
pub use krakenbook_exchange as exchange;
pub use krakenbook_history::{history, readback};
pub use krakenbook_journal as journal;
pub use krakenbook_read::{export, output, plot, replay, verify};
pub use krakenbook_store as store;
pub use krakenbook_web as web;

pub mod config;
