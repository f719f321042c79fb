//! Test infrastructure shared by the crates' tests, the end-to-end suite and the benchmarks; never
//! a dependency of shipped code (only `[dev-dependencies]` and `krakenbook-bench` name it).
//!
//! - [`cluster`]: a throwaway TimescaleDB cluster ([`TempCluster`]) that never outlives its process;
//! - [`capture`]: records from the capture files in `tests/fixtures/kraken-v2/`, as a collector
//!   would have journaled them;
//! - [`sim_client`]: WebSocket clients for the simulator and the replay server that check every
//!   frame (a whole-message client and one that truncates after every level);
//! - [`fixtures`]: where the captures are.
//!
//! # Layer
//!
//! Crate `krakenbook-testkit`. May use: `krakenbook-core` only, so that any crate's tests can use it
//! without compiling a second copy of a crate above core.
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, missing_docs)]

pub mod capture;
pub mod cluster;
#[allow(missing_docs, missing_debug_implementations)]
pub mod sim_client;

pub use capture::{captured_records, read_capture};
pub use cluster::{ClusterError, ClusterOptions, TempCluster};

/// The repository's `tests/fixtures` directory (real Kraken captures and other inputs).
pub fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}
