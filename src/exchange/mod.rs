//! The server side of Kraken's public WebSocket v2 protocol: a local exchange for tests,
//! benchmarks and offline demos.
//!
//! - [`server`]: accepts connections and runs one [`connection`] task each (requests, acks,
//!   errors, heartbeats, pings, bounded send queues, [`faults`] on demand, the frame [`log`]);
//! - [`market`]: the interface between the protocol and what is served — instruments, and for
//!   each book subscription a snapshot then updates pushed into the subscriber's bounded queue;
//! - [`sim`]: the simulated market and [`Simulator`], the two put together;
//! - [`stats`]: the counters.
//!
//! Frames are written by [`crate::kraken::encode`] and checksummed by the project's own
//! [`crate::book::OrderBook`], so the simulator and the collector share one book engine.
//!
//! What must always hold: with no fault set, every frame is one Kraken could have sent, in
//! Kraken's layout, and every checksum verifies; every queue is bounded; shutdown drains.

pub mod connection;
pub mod faults;
pub mod log;
pub mod market;
pub mod server;
pub mod sim;
pub mod stats;

pub use faults::{Faults, Probability};
pub use market::{BookFrame, BookSink, ConnId, Ending, Market, MarketError, SubId};
pub use server::{Exchange, ExchangeError, ServerConfig};
pub use sim::{PairSpec, SimConfig, SimStats, Simulator};
pub use stats::StatsSnapshot;
