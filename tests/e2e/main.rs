//! End-to-end tests: the `krakenbook` binary against real recordings, the simulator over
//! loopback, and a real TimescaleDB. One test binary, one module per area.

mod collect;
mod db;
mod export;
mod feed;
mod pipeline;
mod plot;
mod readback;
mod recording;
mod sim_client;
mod simulate;
mod store;
mod support;
mod verify;
