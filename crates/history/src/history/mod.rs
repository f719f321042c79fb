//! History: what was recorded of each symbol, and when its book was known. The one definition of
//! coverage: every read path (`book --at`, `query`, the exports, `plot`, `replay --serve`) asks
//! here, never its own rule, whatever the data is read from.
//!
//! # Streams, spans and gaps
//!
//! A *stream* is what one connection (`conn_id`) of one collector received for one symbol. A
//! stream's book is *verified* from a snapshot whose checksum matched, or from a book state the
//! collector journaled (always of a verified book), until the first of:
//! - a **checksum mismatch** of the symbol on that connection (proven only up to the last message
//!   that verified before it: see the clocks below);
//! - the **last frame of its connection**, heartbeats included: a drop, a silence, a process stop
//!   and a crash all end there (the database keeps each connection's last frame in
//!   `krakenbook_connections`, updated with every batch, so it knows it even after a crash);
//! - **journal damage**: records of the collector's journal lost while the connection lived
//!   (`journal_damage` events in the database, damage items when reading a journal).
//!
//! Each such time range is a *span*, `[start, end)`. A stream may have several (a mismatch, then a
//! resubscription's snapshot on the same connection). The *coverage* of a symbol is the union of
//! the spans of all its streams (several connections of one collector, several collectors); a
//! *gap* is any time outside it, with a start, an end and a cause:
//! - `mismatch`, `journal_damage`: what ended the last span before the gap;
//! - `connection_lost`: that span's connection ended, and its collector ran on: it recorded the
//!   loss (a `disconnected` event), or another connection carrying the symbol was open then;
//! - `no_collector`: that span's connection ended without a `disconnected` event (the collector
//!   was stopped, or crashed) and no other connection of any collector carried the symbol then;
//! - `not_recorded`: before the symbol's first record and after its last; between the first
//!   record and the first verified book, `mismatch` if one was seen there, else `not_recorded`.
//!
//! A gap's cause is that of the instant it begins: a collector stopped at 10:00 and started again
//! at 10:15 is one `no_collector` gap up to the first verified book after the restart, though the
//! last few hundred milliseconds of it were the new connection subscribing.
//!
//! # Clocks
//!
//! Coverage and gaps are on Kraken's clock, the one `book --at` and the export ranges use (the
//! messages' `timestamp`). Each bound uses the clock it is known on:
//! - a span's **start** is Kraken's timestamp of its snapshot or state, but never earlier than
//!   what (re)began the stream or broke it: the receive time of the connection's first frame and
//!   of the stream's subscription (its first, or a later one before it ever verified), Kraken's
//!   timestamp of a mismatch that ended its previous span, the receive time of the first intact
//!   record after damage. A quiet pair's snapshot carries the time of the book's last change,
//!   possibly hours before the stream existed; taken alone it would cover a stopped collector's
//!   downtime. After a mismatch on a live connection the stream existed throughout, and the
//!   resubscription's snapshot stamped with the mismatched message's own time (nothing changed
//!   since) makes the book known again from that very instant;
//! - a span ended by a **mismatch** ends just after the last message of the stream that verified
//!   before it (Kraken's timestamp plus one microsecond), and at the latest at the mismatched
//!   message's timestamp: the mismatch proves that something was lost or altered after the last
//!   verified message, at an instant nobody knows, so the book after that message is not proven;
//!   and `book --at` at the mismatched message's instant applies it and fails;
//! - a span ended by its **connection** ends at the receive time of the connection's last frame:
//!   a heartbeat carries no Kraken timestamp, and the book was known as long as frames arrived;
//! - a span ended by **damage** ends at the receive time of the last intact record before it
//!   (all the journal knows), and the next span starts no earlier than the first intact one after;
//! - `not_recorded` bounds are receive times: the first and last frame of the symbol's connections.
//!
//! This assumes the collector's clock keeps to Kraken's (NTP): a receive time then differs from
//! Kraken's clock by the network's latency, which only moves a bound by that much, always towards
//! less coverage. A recording of a replay served faster or later than real time has Kraken
//! timestamps far from its receive times: its messages are right, its coverage is not meaningful.
//!
//! # Choosing a stream
//!
//! `book --at T` answers from one stream verified at `T`: the one whose current span started
//! earliest (verified the longest, so a reader following it switches least), ties to the smallest
//! (collector, connection). It reports the stream used.
//!
//! # Where observations come from
//!
//! The decision ([`model`]) does no I/O: a [`Source`] gathers the [`Observed`] marks of a symbol
//! (connections, subscriptions, verified snapshots, mismatches, damage, the first book state
//! after damage) and [`Coverage::compute`] decides. Two sources exist and must agree on the same
//! recording: the database ([`db`], a few index lookups per symbol: a connection, subscription or
//! snapshot is a row; a message is never scanned) and a journal directory ([`journal`], read
//! through once). An archive tier will be a third.

pub mod db;
pub mod journal;
pub mod model;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use tokio_postgres::Client;

pub use model::{
    Cause, Connection, Coverage, Damage, Gap, Interval, Mark, Observation, Observed, Span, SpanEnd,
    SpanStart, StreamCoverage, StreamId,
};

use crate::journal::JournalError;
use crate::store::StoreError;

/// Why observations could not be gathered.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The journal could not be read.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// Reading the journal stopped unexpectedly.
    #[error("reading the journal at {dir} stopped: {reason}")]
    Stopped {
        /// The journal directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Where the record is read from.
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    /// TimescaleDB.
    Database(&'a Client),
    /// A journal directory (one collector's, named by its `COLLECTOR` file).
    Journal(&'a Path),
}

impl Source<'_> {
    /// What was observed of each of `symbols` (in the order given), on `collector`'s record only
    /// when one is named, else on every collector's.
    pub async fn observe(
        &self,
        symbols: &[String],
        collector: Option<&str>,
    ) -> Result<Vec<Observed>, HistoryError> {
        match self {
            Source::Database(client) => db::observe(client, symbols, collector).await,
            Source::Journal(dir) => {
                let dir = dir.to_path_buf();
                let symbols = symbols.to_vec();
                let collector = collector.map(str::to_owned);
                let at = dir.clone();
                tokio::task::spawn_blocking(move || {
                    journal::observe(&dir, &symbols, collector.as_deref())
                })
                .await
                .map_err(|e| HistoryError::Stopped {
                    dir: at,
                    reason: e.to_string(),
                })?
            }
        }
    }

    /// The coverage of each of `symbols` (in the order given).
    pub async fn coverage(
        &self,
        symbols: &[String],
        collector: Option<&str>,
    ) -> Result<Vec<Coverage>, HistoryError> {
        Ok(self
            .observe(symbols, collector)
            .await?
            .iter()
            .map(Coverage::compute)
            .collect())
    }

    /// The coverage of one symbol.
    pub async fn coverage_of(
        &self,
        symbol: &str,
        collector: Option<&str>,
    ) -> Result<Coverage, HistoryError> {
        let mut all = self.coverage(&[symbol.to_owned()], collector).await?;
        Ok(all.pop().unwrap_or_else(|| {
            Coverage::compute(&Observed {
                symbol: symbol.to_owned(),
                ..Observed::default()
            })
        }))
    }
}
