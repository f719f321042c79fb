//! krakenbook's core: the vocabulary every other layer speaks, with no I/O beyond reading the
//! host name.
//!
//! Owns, bottom to top (a module uses only those above it in this list):
//! - [`time`]: instants ([`time::Timestamp`]) and the fixed-format Kraken time parser;
//! - [`text`]: escaping anything from a peer before it is printed;
//! - [`host`]: this machine's name (the default collector identity);
//! - [`num`]: exact numbers ([`num::Decimal`], [`num::Precision`], [`num::PriceLevel`],
//!   [`num::Side`]);
//! - [`kraken`]: the v2 protocol's wire types, decoded (and encoded) without I/O or floating point;
//! - [`book`]: order books, Kraken's checksum, per-symbol verdicts, and the depth-window rule;
//! - [`record`]: a received frame or feed event, as the journal and the database writer see it;
//! - [`rng`]: the one pseudo-random generator (SplitMix64), seeded or OS-seeded; uses nothing;
//! - `sql` (feature `sql`): PostgreSQL's binary `numeric` and `timestamptz` for the two types above
//!   (Rust lets only a type's own crate implement a foreign trait for it).
//!
//! May use: no other krakenbook crate (it is the bottom layer); the layer test (`tests/layers.rs`) fails if
//! it gains one, and also if `num` or `kraken` import `book`.
//!
//! What must always hold: every price and quantity is an exact [`num::Decimal`], never an `f64`;
//! decoding bad input gives an error value, never a panic; the same book code serves the
//! collector, replay, book-at-time and the simulator.
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, missing_docs)]

pub mod book;
pub mod host;
pub mod kraken;
pub mod num;
pub mod record;
pub mod rng;
#[cfg(feature = "sql")]
pub mod sql;
pub mod text;
pub mod time;
