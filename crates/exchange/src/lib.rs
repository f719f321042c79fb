//! The server side of Kraken's public WebSocket v2 protocol: a local exchange for tests,
//! benchmarks and offline demos.
//!
//! - [`server`]: accepts connections and runs one [`connection`] task each (requests, acks,
//!   errors, heartbeats, pings, bounded send queues, [`faults`] on demand, the frame [`log`]);
//! - [`market`]: the interface between the protocol and what is served — instruments, and for
//!   each book subscription a snapshot then updates pushed into the subscriber's bounded queue;
//! - [`rng`]: core's seeded random numbers, re-exported (the simulator's books, the server's
//!   faults and connection ids);
//! - [`sim`]: the simulated market and [`Simulator`], the two put together;
//! - [`stats`]: the counters.
//!
//! Frames are written by `kraken::encode` and checksummed by the project's own
//! `book::OrderBook`, so the simulator and the collector share one book engine.
//!
//! What must always hold: with no fault set, every frame is one Kraken could have sent, in
//! Kraken's layout, and every checksum verifies; every queue is bounded; shutdown drains.
//!
//! # Layer
//!
//! Crate `krakenbook-exchange`. May use: `krakenbook-core` only (wire types, the encoder, the book
//! engine and its window rule). Used by the read layer's replay server, which serves recorded books
//! through the same protocol server, and by tests and benchmarks. Inside, [`server`] and
//! [`connection`] both build on `shared` (what every connection shares); neither the server nor a
//! connection reaches into [`sim`].
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, missing_docs)]

// The layers below, under the names the `krakenbook` facade gives them, so that a path
// reads the same in every crate (`crate::time::Timestamp`).
use krakenbook_core::{book, kraken, time};

pub mod connection;
pub mod faults;
pub mod log;
pub mod market;
pub use krakenbook_core::rng;
pub mod server;
mod shared;
pub mod sim;
pub mod stats;

pub use faults::{Faults, Probability};
pub use market::{BookFrame, BookSink, ConnId, Ending, Market, MarketError, SubId};
pub use server::{Exchange, ExchangeError, ServerConfig};
pub use sim::{PairSpec, SimConfig, SimStats, Simulator};
pub use stats::StatsSnapshot;
