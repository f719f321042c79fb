//! Recording: the feed client, the collector that journals what it receives and follows the
//! journal into the database, and the metrics it exposes.
//!
//! - [`feed`]: the WebSocket client for Kraken's v2 `book` channel: sessions, subscriptions,
//!   checksum verdicts, reconnects with backoff, every frame handed on as a journal entry;
//! - [`collect`]: the collector: feed → journal (the write-ahead log) → store, exactly once, and
//!   the import of a journal recorded without a database;
//! - [`metrics`]: the counters, per-symbol coverage, disk figures, and the `/metrics` and
//!   `/health` HTTP server.
//!
//! The data flow: feed → journal → store. What must always hold: a frame is journaled before it
//! counts as received, and committed to the database only after the journal has synced it, so
//! nothing is lost at any point a process can die.
//!
//! # Layer
//!
//! Crate `krakenbook-collect`. May use: `krakenbook-core`, `krakenbook-journal`,
//! `krakenbook-store`. Nothing in the read side (history, replay, export, plot) depends on it.
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, missing_docs)]

// The layers below, under the names the `krakenbook` facade gives them, so that a path
// reads the same in every crate (`crate::time::Timestamp`).
use krakenbook_core::{book, kraken, record, rng, text, time};
use krakenbook_journal as journal;
use krakenbook_store as store;

pub mod alarm;
pub mod collect;
pub mod feed;
pub mod metrics;
