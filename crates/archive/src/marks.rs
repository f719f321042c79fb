//! Which book rows of an archived part the coverage model needs whatever window a reader asks
//! for: the `marks/` files hold copies of them, so a mount can give the coverage model a
//! symbol's whole history without loading every message.
//!
//! The coverage model reads from the book table (see `krakenbook_history::history::db`):
//! verified snapshots (every one), and for each checksum mismatch the mismatched message and the
//! last message of the same stream (collector, connection, symbol) that verified before it. So a
//! row is marked when:
//! - it is a snapshot;
//! - one of its copies has the verdict "mismatch";
//! - one of its copies is the last verified copy of its stream before a mismatched copy of that
//!   stream, within the part;
//! - one of its copies is the last verified copy of its stream in the part (the one a mismatch
//!   in a later part may look back to).
//!
//! A stream's last verified message before a mismatch is then always marked: in the part of the
//! mismatch when the stream verified there before it, else it is the stream's last verified
//! message of an earlier part.
//!
//! No I/O: [`Marker`] sees the rows of one symbol of one part in file order (by time, then
//! collector and seq) and keeps only the rows it may still mark.

use std::collections::{BTreeMap, HashMap};

use crate::records::BookRec;

/// Chooses the marked rows of one symbol of one part.
#[derive(Debug, Default)]
pub struct Marker {
    /// Per stream (collector, connection): the index and row of its last verified copy so far.
    last_ok: HashMap<(String, i64), (usize, BookRec)>,
    /// Marked rows by index.
    marked: BTreeMap<usize, BookRec>,
    next: usize,
}

impl Marker {
    /// A marker with nothing seen.
    pub fn new() -> Marker {
        Marker::default()
    }

    /// Sees the next row.
    pub fn see(&mut self, row: &BookRec) {
        let i = self.next;
        self.next += 1;
        let mut mark = row.kind == b's' as i8;
        for (conn, _, verdict) in row.copies() {
            let stream = (row.collector.clone(), conn);
            match verdict {
                Some(false) => {
                    mark = true;
                    if let Some((j, before)) = self.last_ok.get(&stream) {
                        self.marked.entry(*j).or_insert_with(|| before.clone());
                    }
                }
                Some(true) => {
                    self.last_ok.insert(stream, (i, row.clone()));
                }
                None => {}
            }
        }
        if mark {
            self.marked.entry(i).or_insert_with(|| row.clone());
        }
    }

    /// The marked rows, in file order.
    pub fn finish(mut self) -> Vec<BookRec> {
        for (_, (j, row)) in self.last_ok.drain() {
            self.marked.entry(j).or_insert(row);
        }
        self.marked.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::book_rows::pack_dup;
    use crate::time::Timestamp;

    fn row(
        seq: i64,
        conn: i64,
        kind: u8,
        ok: Option<bool>,
        dups: &[(i64, Option<bool>)],
    ) -> BookRec {
        BookRec {
            timestamp: Timestamp::from_unix_nanos(seq * 1_000_000),
            received_at: Timestamp::from_unix_nanos(seq * 1_000_000),
            seq,
            conn_id: conn,
            checksum: Some(0),
            collector: "c".into(),
            n_bids: 0,
            kind: kind as i8,
            checksum_ok: ok,
            symbol: "X/Y".into(),
            levels: Some(Vec::new()),
            raw: None,
            dups: (!dups.is_empty()).then(|| {
                dups.iter()
                    .map(|(c, v)| pack_dup(c - conn, 1, *v, 0).unwrap())
                    .collect()
            }),
        }
    }

    fn marked(rows: &[BookRec]) -> Vec<i64> {
        let mut m = Marker::new();
        for r in rows {
            m.see(r);
        }
        m.finish().iter().map(|r| r.seq).collect()
    }

    #[test]
    fn snapshots_mismatches_the_verified_row_before_each_and_each_streams_last_are_marked() {
        // (what the part holds, the seqs marked)
        let cases: Vec<(&str, Vec<BookRec>, Vec<i64>)> = vec![
            (
                "a clean stream: its snapshot and its last verified message",
                vec![
                    row(1, 1, b's', Some(true), &[]),
                    row(2, 1, b'u', Some(true), &[]),
                    row(3, 1, b'u', Some(true), &[]),
                ],
                vec![1, 3],
            ),
            (
                "a mismatch: it, the verified message before it, then the stream's last",
                vec![
                    row(1, 1, b'u', Some(true), &[]),
                    row(2, 1, b'u', Some(true), &[]),
                    row(3, 1, b'u', Some(false), &[]),
                    row(4, 1, b'u', None, &[]),
                    row(5, 1, b's', Some(true), &[]),
                    row(6, 1, b'u', Some(true), &[]),
                ],
                vec![2, 3, 5, 6],
            ),
            (
                "unverified messages between do not hide the verified one",
                vec![
                    row(1, 1, b'u', Some(true), &[]),
                    row(2, 1, b'u', None, &[]),
                    row(3, 1, b'u', Some(false), &[]),
                ],
                vec![1, 3],
            ),
            (
                "streams are apart: another connection's verified message is not the one before",
                vec![
                    row(1, 1, b'u', Some(true), &[]),
                    row(2, 2, b'u', Some(true), &[]),
                    row(3, 2, b'u', Some(true), &[]),
                    row(4, 1, b'u', Some(false), &[]),
                ],
                vec![1, 3, 4],
            ),
            (
                "a copy packed in dups counts for its own connection",
                vec![
                    row(1, 1, b'u', Some(true), &[(2, Some(true))]),
                    row(3, 1, b'u', Some(true), &[(2, Some(false))]),
                    row(5, 1, b'u', Some(true), &[]),
                ],
                vec![1, 3, 5],
            ),
            (
                "a mismatch first in the part has no verified message before it here",
                vec![
                    row(1, 1, b'u', Some(false), &[]),
                    row(2, 1, b'u', None, &[]),
                ],
                vec![1],
            ),
        ];
        for (what, rows, want) in cases {
            assert_eq!(marked(&rows), want, "{what}");
        }
    }
}
