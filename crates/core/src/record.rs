//! A record: one received frame, or one event of the feed, as the journal stores it and the
//! database writer consumes it.
//!
//! Records carry a journal-wide sequence number `seq` that is strictly increasing in the order the
//! collector received frames (across all its connections): ordering by `seq` reproduces the
//! received order exactly. A frame record holds the frame's bytes exactly as received, both clocks
//! (Kraken's is inside the frame; the local receive time here), and what the feed concluded when it
//! applied the frame to its book: the checksum verdict and the best bid and ask after applying.

use serde::{Deserialize, Serialize};

use crate::num::{Precision, PriceLevel};
use crate::time::Timestamp;

/// One journal record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Position in the collector's journal: strictly increasing, the exact received order.
    pub seq: u64,
    /// Local receive time of the frame, or the time of the event.
    pub received_at: Timestamp,
    /// The collector's connection number (increasing over the collector's life).
    pub conn_id: u64,
    /// The frame's number within its connection (1 for the first frame); 0 for events.
    pub conn_seq: u64,
    /// The frame or the event.
    pub body: RecordBody,
}

/// What a record holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordBody {
    /// A frame as received.
    Frame(FrameRecord),
    /// Something that happened to the feed.
    Event(FeedEvent),
    /// A verified book, written now and then so that rebuilding a book never replays far.
    BookState(BookState),
}

/// The whole book of one symbol as it stood after the frames before this record (on the same
/// connection), verified: its checksum matched Kraken's. The feed writes one every so many
/// verified messages per symbol, so that the book at any instant can be rebuilt from the nearest
/// state or snapshot before it instead of from the subscription's first snapshot, possibly days
/// earlier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BookState {
    /// The pair.
    pub symbol: String,
    /// The subscribed depth.
    pub depth: u16,
    /// The precision the checksum was computed at.
    pub precision: Precision,
    /// The book's checksum (equal to Kraken's for the last message applied).
    pub checksum: u32,
    /// Kraken's timestamp of the last message applied (its receive time when it had none).
    pub timestamp: Timestamp,
    /// Bids, best first.
    pub bids: Vec<PriceLevel>,
    /// Asks, best first.
    pub asks: Vec<PriceLevel>,
}

/// A received frame and the feed's verdict on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameRecord {
    /// The frame's bytes exactly as received (UTF-8 text for every frame Kraken sends; kept as
    /// bytes so that even a frame that is not text is recorded).
    pub bytes: Vec<u8>,
    /// `Some(true)`/`Some(false)`: a book message whose checksum matched / did not match;
    /// `None`: not a book message, or one that could not be verified (no snapshot yet).
    pub checksum_ok: Option<bool>,
    /// Best bid after applying the frame (book frames of a synced book only).
    pub best_bid: Option<PriceLevel>,
    /// Best ask after applying the frame (book frames of a synced book only).
    pub best_ask: Option<PriceLevel>,
}

/// An event of the feed: connections, subscriptions, checksum mismatches and resyncs. Together
/// they make every gap in a book a visible time range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedEvent {
    /// What happened.
    pub kind: EventKind,
    /// The symbol it concerns, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symbol: Option<String>,
    /// For `resynced` (and `reconnected`): when the gap it closes began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap_start: Option<Timestamp>,
    /// Human-readable detail (an error text, a URL, a reason).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// The kinds of feed event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A connection was opened (`detail`: the URL).
    Connected,
    /// A connection was closed or lost (`detail`: why); its books are gone until resynced.
    Disconnected,
    /// A book subscription was acknowledged.
    Subscribed,
    /// A subscription was rejected (`detail`: Kraken's error text).
    SubscriptionError,
    /// A book message's checksum did not match: the symbol's gap begins.
    ChecksumMismatch,
    /// A symbol's book verified again after a gap (`gap_start` says when the gap began).
    Resynced,
    /// A frame could not be decoded (`detail`: the error); the frame itself is recorded too.
    MalformedFrame,
    /// Records are missing from the journal: damaged bytes, or a missing or truncated segment.
    /// Written by the readers that find it (the database pipeline, `import`): the row's `seq` is
    /// the first missing seq, `gap_start` the receive time of the last intact record before the
    /// damage, the row's time that of the first intact record after it; `detail` names the seq
    /// range, the cause, the segment and the byte offset.
    JournalDamage,
    /// The journal writer cut a torn tail at open (`detail`: the segment, offset, bytes cut and
    /// the seqs skipped so that no seq is ever used twice).
    JournalRecovered,
    /// A frame larger than the frame-size cap arrived; it was not kept (`detail`: its size). The
    /// connection is reopened.
    FrameTooLarge,
    /// Frames arrived for a symbol that was not asked for (`symbol`); counted, never tracked.
    UnaskedSymbol,
    /// The database refused a record's structured form; it is stored in raw form (`detail`: the
    /// database's error).
    StoredRaw,
    /// The database refused even a record's raw form; this row stands for it (`detail`: the
    /// database's error). The record itself is still in the journal.
    NotStored,
}

impl EventKind {
    /// The snake_case name stored in the database.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::Connected => "connected",
            EventKind::Disconnected => "disconnected",
            EventKind::Subscribed => "subscribed",
            EventKind::SubscriptionError => "subscription_error",
            EventKind::ChecksumMismatch => "checksum_mismatch",
            EventKind::Resynced => "resynced",
            EventKind::MalformedFrame => "malformed_frame",
            EventKind::JournalDamage => "journal_damage",
            EventKind::JournalRecovered => "journal_recovered",
            EventKind::FrameTooLarge => "frame_too_large",
            EventKind::UnaskedSymbol => "unasked_symbol",
            EventKind::StoredRaw => "stored_raw",
            EventKind::NotStored => "not_stored",
        }
    }
}

impl Record {
    /// The frame's text, if this is a frame record holding valid UTF-8.
    pub fn frame_text(&self) -> Option<&str> {
        match &self.body {
            RecordBody::Frame(f) => std::str::from_utf8(&f.bytes).ok(),
            RecordBody::Event(_) | RecordBody::BookState(_) => None,
        }
    }
}
