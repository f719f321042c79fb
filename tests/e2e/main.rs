//! End-to-end tests: the `krakenbook` binary against real recordings, the simulator over
//! loopback, and a real TimescaleDB. One test binary, one module per area.

mod sim_client;
mod simulate;
mod support;
mod verify;
