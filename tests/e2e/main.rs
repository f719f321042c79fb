//! End-to-end tests: the `krakenbook` binary against real recordings, the simulator over
//! loopback, and a real TimescaleDB. One test binary, one module per area.

mod archive;
mod collect;
mod coverage;
mod crash;
mod db;
mod deploy;
mod export;
mod feed;
mod journal;
mod level_order;
mod merged;
mod merged_serve;
mod metrics;
mod pipeline;
mod plot;
mod readback;
mod recording;
mod redundancy;
mod replay_serve;
mod simulate;
mod store;
mod support;
mod verify;
mod verify_db;
mod web;
mod web_archive;
