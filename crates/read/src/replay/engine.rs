//! Re-running recorded frames through the book engine and comparing verdicts.
//!
//! The collector gave every book frame a verdict (`checksum_ok`) when it received it. Replaying
//! the same frames, connection by connection and in `seq` order, through the same engine must
//! give the same verdicts; a disagreement means a recorded frame or verdict was altered, or the
//! engine changed. Book states are checked too: the replayed book at a state's position must equal
//! the state, level for level.
//!
//! Journal damage is part of the report: every item, and the seqs lost. After damage the books
//! are no longer known (the missing records may have changed any of them): every book starts over
//! from its next snapshot, and until then a frame the collector verified is counted as
//! unverifiable because of the damage, never as a disagreement.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::book::{FrameVerdict, Tracker, Verdict};
use crate::journal::{Damage, RecordView};
use crate::kraken::{self, Frame};
use crate::record::{BookState, Record, RecordBody};

/// One disagreement between two copies of what was recorded: the recorded verdict and the one the
/// replay recomputes (a journal), or two stored copies of one message (the database: see
/// [`super::copies`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Disagreement {
    /// The record's `seq`.
    pub seq: u64,
    /// The collector whose record it is (the database; a journal is one collector's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collector: Option<String>,
    /// The symbol, when the record names one.
    pub symbol: Option<String>,
    /// The two copies that disagree: what `recorded` and `replayed` say, in that order (e.g.
    /// `["checksum_ok", "replayed book"]`; from a journal `["recorded", "replayed"]`).
    pub copies: [&'static str; 2],
    /// What the first copy says (from a journal: what was recorded).
    pub recorded: String,
    /// What the second copy says (from a journal: what the replay found).
    pub replayed: String,
}

/// Per-symbol replay counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SymbolReplay {
    /// Book messages replayed.
    pub book_messages: u64,
    /// Of which verified ok.
    pub ok: u64,
    /// Of which mismatched (as recorded: a mismatch the collector saw is not a disagreement).
    pub mismatches: u64,
    /// Of which unverifiable (no snapshot before them).
    pub unverifiable: u64,
    /// Book states compared.
    pub states: u64,
}

/// The outcome of a replay.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// Records read.
    pub records: u64,
    /// Frame records read.
    pub frames: u64,
    /// First and last `seq` replayed.
    pub seq_range: Option<(u64, u64)>,
    /// Per symbol.
    pub symbols: BTreeMap<String, SymbolReplay>,
    /// Frames that did not decode (recorded as such; not a disagreement).
    pub undecodable: u64,
    /// Recorded verdicts or states the replay does not reproduce (at most the first 100).
    pub disagreements: Vec<Disagreement>,
    /// How many disagreements in all.
    pub disagreement_count: u64,
    /// What the journal was found missing, in seq order (at most the first 100 kept in full).
    pub damage: Vec<DamageFound>,
    /// How many damage items in all.
    pub damage_count: u64,
    /// Seqs lost to damage (not counting seqs skipped after a torn tail, or expired).
    pub lost_seqs: u64,
    /// Frames and book states that could not be checked because damage came before them
    /// (their book's earlier records are missing).
    pub unverifiable_after_damage: u64,
    /// The database: levels of book rows decoded and replayed (each row's once).
    pub levels_compared: u64,
    /// The database: book rows whose stored raw frame was compared with their levels.
    pub raw_compared: u64,
    /// The database: book frames stored whole in `krakenbook_other` beside a `stored_raw` event
    /// (the book table could not hold them), checked against what their event says.
    pub stored_raw: u64,
    /// The database: `journal_damage` and `not_stored` events met (records the database never
    /// got: the books after them start over from their next snapshot).
    pub records_missing: u64,
    /// The database: message rows without a collector or seq (written by another tool): they
    /// have no received order to replay them in, and are not verified.
    pub unordered_rows: u64,
    /// The database: message rows still in the tables of the layout before schema version 6
    /// (`krakenbook_legacy_messages`, until `migrate` has moved them): not verified.
    pub legacy_rows: u64,
    /// The database: overlapping streams' books compared at their common instants.
    pub cross: super::cross::CrossCheck,
}

/// One damage item of a journal, as reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DamageFound {
    /// `corrupt`, `missing_segment`, `truncated_segment`, `torn_tail` or `expired`.
    pub kind: &'static str,
    /// Whether records that had been written are lost.
    pub loss: bool,
    /// The first missing seq.
    pub first_seq: u64,
    /// The last missing seq.
    pub last_seq: u64,
    /// The segment concerned.
    pub segment: String,
    /// Byte offset in the (uncompressed) segment.
    pub offset: u64,
    /// Bytes concerned.
    pub bytes: u64,
}

impl ReplayReport {
    /// Whether every recorded verdict and state was reproduced (every stored copy agreed, and
    /// overlapping streams' books too) and no record was lost.
    pub fn is_clean(&self) -> bool {
        self.disagreement_count == 0
            && self.lost_seqs == 0
            && self.records_missing == 0
            && self.cross.disagreement_count == 0
    }

    /// Book messages replayed, over every symbol.
    pub fn book_messages(&self) -> u64 {
        self.symbols.values().map(|s| s.book_messages).sum()
    }

    /// Whether nothing was verified: no book message (and no book state) was replayed.
    pub fn verified_nothing(&self) -> bool {
        self.symbols
            .values()
            .all(|s| s.book_messages == 0 && s.states == 0)
    }

    /// Records a damage item.
    pub fn damaged(&mut self, d: &Damage) {
        self.damage_count += 1;
        if d.kind.is_loss() {
            self.lost_seqs += d.last_seq - d.first_seq + 1;
        }
        if self.damage.len() < 100 {
            self.damage.push(DamageFound {
                kind: d.kind.as_str(),
                loss: d.kind.is_loss(),
                first_seq: d.first_seq,
                last_seq: d.last_seq,
                segment: d.segment.display().to_string(),
                offset: d.offset,
                bytes: d.bytes,
            });
        }
    }

    /// Records a disagreement (the first 100 are kept in full, all are counted).
    pub fn disagree(
        &mut self,
        seq: u64,
        symbol: Option<String>,
        recorded: String,
        replayed: String,
    ) {
        self.disagree_n(1, seq, symbol, recorded, replayed);
    }

    /// Records `n` disagreements described by one entry.
    pub fn disagree_n(
        &mut self,
        n: u64,
        seq: u64,
        symbol: Option<String>,
        recorded: String,
        replayed: String,
    ) {
        self.disagreement_count += n;
        if self.disagreements.len() < 100 {
            self.disagreements.push(Disagreement {
                seq,
                collector: None,
                symbol,
                copies: ["recorded", "replayed"],
                recorded,
                replayed,
            });
        }
    }

    /// Records a disagreement between two stored copies (the first 100 are kept in full, all are
    /// counted).
    pub fn disagree_copies(&mut self, d: Disagreement) {
        self.disagreement_count += 1;
        if self.disagreements.len() < 100 {
            self.disagreements.push(d);
        }
    }
}

impl SymbolReplay {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &SymbolReplay) {
        self.book_messages += other.book_messages;
        self.ok += other.ok;
        self.mismatches += other.mismatches;
        self.unverifiable += other.unverifiable;
        self.states += other.states;
    }
}

/// Replays records, keeping one set of books per connection.
#[derive(Debug, Default)]
pub struct ReplayEngine {
    trackers: HashMap<u64, Tracker>,
    report: ReplayReport,
    /// Symbols seen (their books are dropped after damage).
    symbols: HashSet<String>,
    /// Damage was met: a book not verified since may have missed records.
    damaged: bool,
    /// Connections whose books verified again since the damage.
    verified_since_damage: HashSet<u64>,
}

impl ReplayEngine {
    /// An engine with no books yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replays one record; records must come in `seq` order.
    pub fn feed(&mut self, record: &Record) {
        self.count(record.seq);
        match &record.body {
            RecordBody::Frame(frame) => {
                self.report.frames += 1;
                let text = std::str::from_utf8(&frame.bytes).ok();
                self.frame(record.seq, record.conn_id, text, frame.checksum_ok);
            }
            RecordBody::BookState(state) => self.state(record.seq, record.conn_id, state),
            RecordBody::Event(_) => {}
        }
    }

    /// Replays a record read in place from the journal (no copy for frames).
    pub fn feed_view(&mut self, view: &RecordView<'_>) {
        match view.frame() {
            Some(frame) => {
                self.count(view.seq);
                self.report.frames += 1;
                self.frame(
                    view.seq,
                    view.conn_id,
                    std::str::from_utf8(frame.bytes).ok(),
                    frame.checksum_ok,
                );
            }
            None => {
                if let Some(record) = view.to_record() {
                    self.feed(&record);
                }
            }
        }
    }

    /// Journal damage: reported, and every book starts over from its next snapshot (the missing
    /// records may have changed any of them).
    pub fn damage(&mut self, d: &Damage) {
        self.report.damaged(d);
        self.forget_books();
    }

    /// Damage before the range replayed: not reported, but the books start over all the same.
    pub fn forget_books(&mut self) {
        for tracker in self.trackers.values_mut() {
            for symbol in &self.symbols {
                tracker.forget(symbol);
            }
        }
        self.damaged = true;
        self.verified_since_damage.clear();
    }

    /// Whether a verdict that cannot be reproduced on `conn_id` is excused by damage before it.
    fn excused(&mut self, conn_id: u64) -> bool {
        if self.damaged && !self.verified_since_damage.contains(&conn_id) {
            self.report.unverifiable_after_damage += 1;
            return true;
        }
        false
    }

    /// Replays a record to build the books without reporting on it (records before a range).
    pub fn warm(&mut self, view: &RecordView<'_>) {
        let saved = std::mem::take(&mut self.report);
        self.feed_view(view);
        self.report = saved;
    }

    fn count(&mut self, seq: u64) {
        self.report.records += 1;
        self.report.seq_range = Some(match self.report.seq_range {
            Some((first, _)) => (first, seq),
            None => (seq, seq),
        });
    }

    /// Replays one frame given as text (the database path); `recorded` is its stored verdict.
    pub fn frame(&mut self, seq: u64, conn_id: u64, text: Option<&str>, recorded: Option<bool>) {
        let tracker = self
            .trackers
            .entry(conn_id)
            .or_insert_with(|| Tracker::new(10));
        let frame = match text.map(kraken::decode) {
            Some(Ok(frame)) => frame,
            Some(Err(_)) | None => {
                self.report.undecodable += 1;
                if recorded.is_some() {
                    self.report
                        .disagree(seq, None, verdict_name(recorded), "undecodable".into());
                }
                return;
            }
        };
        let Frame::Book(msg) = &frame else {
            tracker.observe(&frame);
            if recorded.is_some() {
                self.report
                    .disagree(seq, None, verdict_name(recorded), "not a book frame".into());
            }
            return;
        };
        let mut folded = FrameVerdict::default();
        for data in &msg.data {
            if !self.symbols.contains(&*data.symbol) {
                self.symbols.insert(data.symbol.to_string());
            }
            let verdict = tracker.apply(msg.kind, data);
            folded.add(verdict);
            let s = self
                .report
                .symbols
                .entry(data.symbol.to_string())
                .or_default();
            s.book_messages += 1;
            match verdict {
                Verdict::Ok => s.ok += 1,
                Verdict::Mismatch { .. } => s.mismatches += 1,
                Verdict::Unsynced => s.unverifiable += 1,
            }
        }
        let replayed = folded.checksum_ok();
        if replayed.is_some() && self.damaged {
            self.verified_since_damage.insert(conn_id);
        }
        if replayed.is_none() && recorded.is_some() && self.excused(conn_id) {
            return;
        }
        if replayed != recorded {
            let symbol = msg.data.first().map(|d| d.symbol.to_string());
            self.report
                .disagree(seq, symbol, verdict_name(recorded), verdict_name(replayed));
        }
    }

    /// Compares a recorded book state with the replayed book.
    pub fn state(&mut self, seq: u64, conn_id: u64, state: &BookState) {
        let s = self.report.symbols.entry(state.symbol.clone()).or_default();
        s.states += 1;
        let replayed = self
            .trackers
            .get(&conn_id)
            .and_then(|t| t.synced_book(&state.symbol));
        let Some(book) = replayed else {
            if self.excused(conn_id) {
                return;
            }
            self.report.disagree(
                seq,
                Some(state.symbol.clone()),
                "book state".into(),
                "no synced book".into(),
            );
            return;
        };
        let view = book.view(book.depth());
        if view.bids != state.bids || view.asks != state.asks || book.checksum() != state.checksum {
            self.report.disagree(
                seq,
                Some(state.symbol.clone()),
                format!("book state with checksum {}", state.checksum),
                format!("a different book (checksum {})", book.checksum()),
            );
        }
    }

    /// The report so far.
    pub fn report(&self) -> &ReplayReport {
        &self.report
    }

    /// The finished report.
    pub fn finish(self) -> ReplayReport {
        self.report
    }
}

/// `ok`, `mismatch` or `unverifiable`.
pub(crate) fn verdict_name(v: Option<bool>) -> String {
    match v {
        Some(true) => "ok".into(),
        Some(false) => "mismatch".into(),
        None => "unverifiable".into(),
    }
}
