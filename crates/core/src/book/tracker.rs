//! The books of one connection or one recording, each with its checksum verdicts.
//!
//! A [`Tracker`] learns depths from subscribe acks and precisions from the instrument channel, and
//! applies every book message to its symbol's book. Each message gets a [`Verdict`]:
//! - `Ok` / `Mismatch`: the book was synced (a snapshot was applied and every message since
//!   verified) and the computed checksum does / does not equal Kraken's;
//! - `Unsynced`: no snapshot has been seen since the start or since the last mismatch, so the
//!   message cannot be verified. It is neither ok nor a mismatch.
//!
//! After a mismatch the symbol stays unsynced until its next snapshot (the collector resubscribes
//! to get one). Updates received while unsynced are not applied: the book is wrong anyway, and the
//! snapshot replaces it.

use std::collections::HashMap;

use super::order_book::OrderBook;
use crate::kraken::{BookData, BookKind, Frame};
use crate::num::Precision;

/// The outcome of checking one book message against Kraken's checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The book after this message has Kraken's checksum.
    Ok,
    /// The book after this message does not have Kraken's checksum.
    Mismatch {
        /// Kraken's checksum.
        expected: u32,
        /// Ours.
        computed: u32,
    },
    /// No snapshot since the start or the last mismatch: the message cannot be verified.
    Unsynced,
}

/// The verdicts of one frame's symbols folded into the frame's one `checksum_ok` (Kraken sends
/// one symbol a frame; the rule still has to say what several mean): any mismatch makes it a
/// mismatch, all verified makes it verified, anything else (or no symbol) is not verifiable.
/// The feed, the replay and the capture reader all fold with this one rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameVerdict {
    any: bool,
    mismatch: bool,
    unsynced: bool,
}

impl FrameVerdict {
    /// Adds one symbol's verdict.
    pub fn add(&mut self, verdict: Verdict) {
        self.any = true;
        match verdict {
            Verdict::Ok => {}
            Verdict::Mismatch { .. } => self.mismatch = true,
            Verdict::Unsynced => self.unsynced = true,
        }
    }

    /// The frame's `checksum_ok`.
    pub fn checksum_ok(self) -> Option<bool> {
        match (self.any, self.mismatch, self.unsynced) {
            (_, true, _) => Some(false),
            (true, false, false) => Some(true),
            _ => None,
        }
    }
}

/// One symbol's book and whether it is synced (verified since its last snapshot): what a
/// [`Tracker`] keeps per symbol, and what a caller that keeps a book outside a tracker (the
/// feed's books shared by replicas) applies messages to with the very same rule.
#[derive(Clone, Debug)]
pub struct Tracked {
    /// The book.
    pub book: OrderBook,
    /// Verified since its last snapshot.
    pub synced: bool,
}

impl Tracked {
    /// Applies one symbol's part of a book message and checks its checksum (the rule of
    /// [`Tracker::apply`]).
    pub fn apply(&mut self, kind: BookKind, data: &BookData<'_>) -> Verdict {
        let t = self;
        let applied = match kind {
            BookKind::Snapshot => t.book.apply_snapshot(data.bid_pairs(), data.ask_pairs()),
            BookKind::Update if t.synced => t.book.apply_update(data.bid_pairs(), data.ask_pairs()),
            BookKind::Update => return Verdict::Unsynced,
        };
        if let Err(e) = applied {
            // The book could not take the message whole: it no longer matches Kraken's. Reported
            // as the mismatch it is (with the part-applied book's checksum), so that callers run
            // their one path for it: a gap begins, the symbol is resubscribed.
            tracing::warn!(symbol = %data.symbol, error = %e, "book cannot hold a level; unsynced until the next snapshot");
            let computed = t.book.checksum();
            t.synced = false;
            t.book.clear();
            return Verdict::Mismatch {
                expected: data.checksum,
                computed,
            };
        }
        t.synced = true;
        let computed = t.book.current_checksum();
        if computed == data.checksum {
            Verdict::Ok
        } else {
            t.synced = false;
            Verdict::Mismatch {
                expected: data.checksum,
                computed,
            }
        }
    }
}

/// Per-symbol books with their depth, precision and sync state.
#[derive(Clone, Debug)]
pub struct Tracker {
    books: HashMap<String, Tracked>,
    depths: HashMap<String, usize>,
    precisions: HashMap<String, Precision>,
    default_depth: usize,
    default_precision: Option<Precision>,
}

impl Tracker {
    /// A tracker whose books keep `default_depth` levels unless an ack says otherwise.
    pub fn new(default_depth: usize) -> Self {
        Tracker {
            books: HashMap::new(),
            depths: HashMap::new(),
            precisions: HashMap::new(),
            default_depth,
            default_precision: None,
        }
    }

    /// The precision used for symbols the instrument channel has not described (by default the
    /// wire text decides).
    pub fn set_default_precision(&mut self, precision: Option<Precision>) {
        self.default_precision = precision;
        for (symbol, t) in &mut self.books {
            if !self.precisions.contains_key(symbol) && t.book.set_precision(precision).is_err() {
                t.synced = false;
                t.book.clear();
            }
        }
    }

    /// Sets a symbol's depth (from its subscribe ack).
    pub fn set_depth(&mut self, symbol: &str, depth: usize) {
        self.depths.insert(symbol.to_owned(), depth);
        if let Some(t) = self.books.get_mut(symbol) {
            t.book.set_depth(depth);
        }
    }

    /// Sets a symbol's precision (from the instrument channel).
    pub fn set_precision(&mut self, symbol: &str, precision: Precision) {
        self.precisions.insert(symbol.to_owned(), precision);
        if let Some(t) = self.books.get_mut(symbol)
            && t.book.set_precision(Some(precision)).is_err()
        {
            // A level it held cannot be stored at the new precision: the book is no longer
            // known; the next snapshot rebuilds it.
            t.synced = false;
            t.book.clear();
        }
    }

    /// The precision known for a symbol, if any.
    pub fn precision(&self, symbol: &str) -> Option<Precision> {
        self.precisions.get(symbol).copied()
    }

    /// Learns from a non-book frame: depths from successful book acks, precisions from
    /// instrument frames. Book frames go through [`Tracker::apply`].
    pub fn observe(&mut self, frame: &Frame<'_>) {
        match frame {
            Frame::Ack(ack) if !ack.is_error() => {
                if let Some(result) = &ack.result
                    && result.channel == "book"
                    && let (Some(symbol), Some(depth)) = (result.symbol.as_deref(), result.depth)
                {
                    if ack.method == "subscribe" {
                        self.set_depth(symbol, usize::from(depth));
                    } else if ack.method == "unsubscribe" {
                        self.forget(symbol);
                    }
                }
            }
            Frame::Instrument(msg) => {
                for pair in &msg.pairs {
                    self.set_precision(&pair.symbol, pair.precision());
                }
            }
            _ => {}
        }
    }

    /// Applies one symbol's part of a book message and checks its checksum.
    pub fn apply(&mut self, kind: BookKind, data: &BookData<'_>) -> Verdict {
        let t = match self.books.get_mut(data.symbol.as_ref()) {
            Some(t) => t,
            None => {
                let book = OrderBook::with_precision(
                    self.depth_for(&data.symbol),
                    self.precision_for(&data.symbol),
                );
                self.books
                    .entry(data.symbol.clone().into_owned())
                    .or_insert(Tracked {
                        book,
                        synced: false,
                    })
            }
        };
        t.apply(kind, data)
    }

    /// The book of `symbol`, if one has been started.
    pub fn book(&self, symbol: &str) -> Option<&OrderBook> {
        self.books.get(symbol).map(|t| &t.book)
    }

    /// Whether `symbol`'s book is synced (verified since its last snapshot).
    pub fn is_synced(&self, symbol: &str) -> bool {
        self.books.get(symbol).is_some_and(|t| t.synced)
    }

    /// The book of `symbol` if it is synced: the one whose tops and levels can be trusted.
    pub fn synced_book(&self, symbol: &str) -> Option<&OrderBook> {
        self.books.get(symbol).filter(|t| t.synced).map(|t| &t.book)
    }

    /// The depth a new book of `symbol` gets (its ack's, else the default).
    pub fn depth_for(&self, symbol: &str) -> usize {
        self.depths
            .get(symbol)
            .copied()
            .unwrap_or(self.default_depth)
    }

    /// The precision a new book of `symbol` gets (the instrument's, else the default).
    pub fn precision_for(&self, symbol: &str) -> Option<Precision> {
        self.precisions
            .get(symbol)
            .copied()
            .or(self.default_precision)
    }

    /// Takes `symbol`'s book out (the tracker then has none for it).
    pub fn take(&mut self, symbol: &str) -> Option<Tracked> {
        self.books.remove(symbol)
    }

    /// Puts a book in for `symbol` (replacing any): later messages of the symbol apply to it.
    pub fn put(&mut self, symbol: &str, tracked: Tracked) {
        self.books.insert(symbol.to_owned(), tracked);
    }

    /// Drops `symbol`'s book (after an unsubscribe).
    pub fn forget(&mut self, symbol: &str) {
        self.books.remove(symbol);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kraken::decode;

    fn apply(t: &mut Tracker, text: &str) -> Verdict {
        match decode(text).unwrap() {
            Frame::Book(msg) => t.apply(msg.kind, &msg.data[0]),
            other => {
                t.observe(&other);
                panic!("not a book frame: {other:?}")
            }
        }
    }

    const SNAPSHOT: &str = r#"{"channel":"book","type":"snapshot","data":[{"symbol":"MATIC/USD","bids":[{"price":0.5666,"qty":4831.75496356},{"price":0.5665,"qty":6658.22734739},{"price":0.5664,"qty":18724.91513344},{"price":0.5663,"qty":11563.92544914},{"price":0.5662,"qty":14006.65365711},{"price":0.5661,"qty":17454.85679807},{"price":0.566,"qty":18097.1547},{"price":0.5659,"qty":33644.89175666},{"price":0.5658,"qty":148.3464},{"price":0.5657,"qty":606.70854372}],"asks":[{"price":0.5668,"qty":4410.79769741},{"price":0.5669,"qty":4655.40412487},{"price":0.567,"qty":49844.89424998},{"price":0.5671,"qty":24306.41678},{"price":0.5672,"qty":29783.25223475},{"price":0.5673,"qty":57234.71239278},{"price":0.5674,"qty":45065.04744},{"price":0.5675,"qty":5912.76380354},{"price":0.5676,"qty":42514.92434778},{"price":0.5677,"qty":36304.0847022}],"checksum":2439117997}]}"#;
    const UPDATE: &str = r#"{"channel":"book","type":"update","data":[{"symbol":"MATIC/USD","bids":[{"price":0.5657,"qty":1098.3947558}],"asks":[],"checksum":2114181697,"timestamp":"2023-10-06T17:35:55.440295Z"}]}"#;

    #[test]
    fn verdicts_follow_the_sync_state() {
        let mut t = Tracker::new(10);
        // An update before any snapshot cannot be verified.
        assert_eq!(apply(&mut t, UPDATE), Verdict::Unsynced);
        // The documented vector: the wire text drops trailing zeros, the instrument gives 4/8.
        t.set_precision("MATIC/USD", Precision { price: 4, qty: 8 });
        assert_eq!(apply(&mut t, SNAPSHOT), Verdict::Ok);
        assert_eq!(apply(&mut t, UPDATE), Verdict::Ok);
        // Applying the same update again leaves the book unchanged: its checksum still matches.
        assert_eq!(apply(&mut t, UPDATE), Verdict::Ok);
        // A wrong checksum is a mismatch, and later updates are unverifiable until a snapshot.
        let wrong = UPDATE.replace("2114181697", "1");
        assert_eq!(
            apply(&mut t, &wrong),
            Verdict::Mismatch {
                expected: 1,
                computed: 2_114_181_697
            }
        );
        assert!(!t.is_synced("MATIC/USD"));
        assert_eq!(apply(&mut t, UPDATE), Verdict::Unsynced);
        assert_eq!(apply(&mut t, SNAPSHOT), Verdict::Ok);
        assert!(t.is_synced("MATIC/USD"));
    }

    #[test]
    fn depth_comes_from_the_subscribe_ack() {
        let mut t = Tracker::new(10);
        t.observe(&decode(r#"{"method":"subscribe","result":{"channel":"book","depth":25,"snapshot":true,"symbol":"MATIC/USD"},"success":true}"#).unwrap());
        apply(&mut t, SNAPSHOT);
        assert_eq!(t.book("MATIC/USD").unwrap().depth(), 25);
        // A rejected subscription changes nothing.
        t.observe(&decode(r#"{"error":"Subscription depth not supported","method":"subscribe","success":false,"symbol":"MATIC/USD"}"#).unwrap());
        assert_eq!(t.book("MATIC/USD").unwrap().depth(), 25);
    }

    #[test]
    fn precision_comes_from_the_instrument_channel() {
        let mut t = Tracker::new(10);
        t.observe(&decode(r#"{"channel":"instrument","type":"snapshot","data":{"assets":[],"pairs":[{"symbol":"MATIC/USD","price_precision":4,"qty_precision":8}]}}"#).unwrap());
        assert_eq!(
            t.precision("MATIC/USD"),
            Some(Precision { price: 4, qty: 8 })
        );
        assert_eq!(apply(&mut t, SNAPSHOT), Verdict::Ok);
    }
}

#[cfg(test)]
mod real_captures {
    use super::*;
    use crate::book::OrderBook;
    use crate::kraken::decode;

    /// The checksum a verdict carries is computed with the book's memo of level texts; on every
    /// book message of the real captures, at depths 1 to 100 (the small ones mismatch nearly
    /// always, so every message is checksummed on a book Kraken never had) and kept synced
    /// whatever the verdict, it is the checksum `OrderBook::checksum` prints from scratch.
    #[test]
    fn memoized_checksums_are_the_printed_ones() {
        let mut checked = 0;
        for frames in crate::kraken::capture::fixture_received_frames() {
            let mut books: Vec<Tracked> = [1, 3, 10, 25, 100]
                .map(|depth| Tracked {
                    book: OrderBook::new(depth),
                    synced: true,
                })
                .into();
            for frame in frames
                .iter()
                .filter(|f| f.starts_with(r#"{"channel":"book""#))
            {
                let Ok(Frame::Book(msg)) = decode(frame) else {
                    panic!("{frame}")
                };
                for t in &mut books {
                    t.synced = true;
                    let verdict = t.apply(msg.kind, &msg.data[0]);
                    let printed = t.book.checksum();
                    match verdict {
                        Verdict::Ok => assert_eq!(printed, msg.data[0].checksum),
                        Verdict::Mismatch { computed, .. } => assert_eq!(computed, printed),
                        Verdict::Unsynced => panic!("kept synced"),
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 5 * 4900, "{checked}");
    }
}

#[cfg(test)]
mod unrepresentable {
    use super::*;
    use crate::kraken::decode;

    /// A regression: a level the book cannot hold used to leave the symbol silently unsynced
    /// (no mismatch, so no gap and no resubscription).
    #[test]
    fn a_level_the_book_cannot_hold_is_a_mismatch() {
        let mut t = Tracker::new(10);
        let text = r#"{"channel":"book","type":"snapshot","data":[{"symbol":"X/Y","bids":[{"price":99999999999999999999.5,"qty":1}],"asks":[],"checksum":5}]}"#;
        let Frame::Book(msg) = decode(text).unwrap() else {
            panic!()
        };
        assert!(matches!(
            t.apply(msg.kind, &msg.data[0]),
            Verdict::Mismatch { expected: 5, .. }
        ));
        assert!(!t.is_synced("X/Y"));
    }
}
