//! krakenbook records Kraken's public order books, exactly, and gives them back.
//!
//! The data flows through the modules in this order:
//! - [`kraken`]: the v2 protocol, decoded without I/O or floating point;
//! - [`book`]: order books, Kraken's checksum, and per-symbol verdicts;
//! - [`record`]: a received frame or feed event, as the journal and the database writer see it;
//! - [`store`]: TimescaleDB: schema, migrations, the exactly-once binary-COPY writer;
//! - [`history`]: what was recorded of each symbol and when its book was known (coverage and
//!   gaps), the one definition every read path asks;
//! - [`verify`]: checking recorded frames against their checksums;
//! - [`exchange`]: the server side of the protocol, a simulated Kraken for tests and benchmarks.
//!
//! Every price and quantity is an exact [`book::Decimal`]; every instant a [`time::Timestamp`].
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, missing_docs)]

pub use krakenbook_collect::{collect, feed, metrics};
pub use krakenbook_core::{book, host, kraken, num, record, text, time};
pub use krakenbook_exchange as exchange;
pub use krakenbook_history::{history, readback};
pub use krakenbook_journal as journal;
pub use krakenbook_read::{export, output, plot, replay, verify};
pub use krakenbook_store as store;

pub mod config;
