//! The exchange's counters: what it sent, to whom, and which faults fired.
//!
//! Counters are relaxed atomics, updated where the thing happens and read as a consistent-enough
//! [`StatsSnapshot`] (each counter is exact; a snapshot taken while frames flow may mix instants).

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, shared by the server's tasks.
#[derive(Debug, Default)]
pub struct Stats {
    pub(crate) connections_accepted: AtomicU64,
    pub(crate) connections_open: AtomicU64,
    pub(crate) handshake_failures: AtomicU64,
    pub(crate) frames_sent: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) book_snapshots_sent: AtomicU64,
    pub(crate) book_updates_sent: AtomicU64,
    pub(crate) heartbeats_sent: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) error_acks: AtomicU64,
    pub(crate) slow_client_disconnects: AtomicU64,
    pub(crate) frames_discarded_in_silence: AtomicU64,
    pub(crate) fault_drops: AtomicU64,
    pub(crate) market_drops: AtomicU64,
    pub(crate) market_closes: AtomicU64,
    pub(crate) fault_silences: AtomicU64,
    pub(crate) fault_lost_updates: AtomicU64,
    pub(crate) fault_garbage_frames: AtomicU64,
    pub(crate) fault_unknown_channel_frames: AtomicU64,
    pub(crate) fault_rejected_subscriptions: AtomicU64,
    pub(crate) log_lines: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    /// Connections accepted (WebSocket handshake done).
    pub connections_accepted: u64,
    /// Connections open now.
    pub connections_open: u64,
    /// TCP connections whose WebSocket handshake failed or timed out.
    pub handshake_failures: u64,
    /// Frames sent, of every kind.
    pub frames_sent: u64,
    /// Bytes of frame text sent.
    pub bytes_sent: u64,
    /// `book` snapshots sent.
    pub book_snapshots_sent: u64,
    /// `book` updates sent.
    pub book_updates_sent: u64,
    /// Heartbeats sent.
    pub heartbeats_sent: u64,
    /// Requests received.
    pub requests: u64,
    /// Error responses sent (rejected subscriptions included).
    pub error_acks: u64,
    /// Connections closed because their send queue overflowed.
    pub slow_client_disconnects: u64,
    /// Book frames discarded while a connection was silent.
    pub frames_discarded_in_silence: u64,
    /// Connections dropped by the drop fault.
    pub fault_drops: u64,
    /// Connections the market dropped without a close frame (a replay reaching a gap).
    pub market_drops: u64,
    /// Connections the market closed with a close frame (a replay reaching its end).
    pub market_closes: u64,
    /// Silences started.
    pub fault_silences: u64,
    /// Updates withheld by the lose fault.
    pub fault_lost_updates: u64,
    /// Non-JSON frames sent.
    pub fault_garbage_frames: u64,
    /// Unknown-channel frames sent.
    pub fault_unknown_channel_frames: u64,
    /// Subscriptions refused by the reject fault.
    pub fault_rejected_subscriptions: u64,
    /// Lines written to the frame log.
    pub log_lines: u64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Stats {
    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            connections_accepted: g(&self.connections_accepted),
            connections_open: g(&self.connections_open),
            handshake_failures: g(&self.handshake_failures),
            frames_sent: g(&self.frames_sent),
            bytes_sent: g(&self.bytes_sent),
            book_snapshots_sent: g(&self.book_snapshots_sent),
            book_updates_sent: g(&self.book_updates_sent),
            heartbeats_sent: g(&self.heartbeats_sent),
            requests: g(&self.requests),
            error_acks: g(&self.error_acks),
            slow_client_disconnects: g(&self.slow_client_disconnects),
            frames_discarded_in_silence: g(&self.frames_discarded_in_silence),
            fault_drops: g(&self.fault_drops),
            market_drops: g(&self.market_drops),
            market_closes: g(&self.market_closes),
            fault_silences: g(&self.fault_silences),
            fault_lost_updates: g(&self.fault_lost_updates),
            fault_garbage_frames: g(&self.fault_garbage_frames),
            fault_unknown_channel_frames: g(&self.fault_unknown_channel_frames),
            fault_rejected_subscriptions: g(&self.fault_rejected_subscriptions),
            log_lines: g(&self.log_lines),
        }
    }
}
