//! `krakenbook replay --verify` over the database: every book message of a time range, rebuilt
//! from the stored levels with the book engine, its verdict recomputed and compared with the
//! stored `checksum_ok`.
//!
//! Each (collector, symbol) is replayed from its latest snapshot or book state at or before the
//! range's start ([`crate::readback::BookCursor`]), so the first messages of the range verify
//! like the rest. A stored level that was altered changes the rebuilt book and so its checksum:
//! the message's recomputed verdict disagrees with the stored one.

use std::collections::BTreeMap;

use tokio_postgres::Client;

use super::engine::{ReplayReport, SymbolReplay, verdict_name};
use crate::readback::{BookCursor, ReadbackError, parse_levels};
use crate::time::Timestamp;

/// Replays `[from, to)` of the database (only `symbols` when given), calling `progress(messages)`
/// now and then.
pub async fn verify_database(
    client: &Client,
    symbols: &[String],
    from: Timestamp,
    to: Timestamp,
    mut progress: impl FnMut(u64),
) -> Result<ReplayReport, ReadbackError> {
    let pairs = client
        .query(
            "SELECT DISTINCT collector, symbol FROM kraken_orderbook_messages
              WHERE channel = 'book' AND message_type IN ('snapshot', 'update') AND symbol IS NOT NULL AND \"timestamp\" >= $1 AND \"timestamp\" < $2
                AND (cardinality($3::text[]) = 0 OR symbol = ANY($3))
              ORDER BY 1, 2",
            &[&from, &to, &symbols],
        )
        .await
        .map_err(crate::readback::db("listing what the range holds"))?;
    let mut report = ReplayReport::default();
    let mut done = 0u64;
    for pair in pairs {
        let (collector, symbol): (String, String) = (pair.get(0), pair.get(1));
        // The stored verdicts of the range.
        let stored: BTreeMap<i64, Option<bool>> = client
            .query(
                "SELECT seq, checksum_ok FROM kraken_orderbook_messages
                  WHERE symbol = $1 AND collector = $2 AND channel = 'book' AND message_type IN ('snapshot', 'update')
                    AND \"timestamp\" >= $3 AND \"timestamp\" < $4",
                &[&symbol, &collector, &from, &to],
            )
            .await
            .map_err(crate::readback::db("reading stored verdicts"))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        // A start strictly before the range (a book state at exactly `from` follows messages at
        // `from` that belong to the range), else the first snapshot inside it.
        let start =
            BookCursor::find_start_or_first(client, &symbol, from.add_nanos(-1000), to, &collector)
                .await?;
        // Counted here and added to the report once the symbol is done.
        let mut s = SymbolReplay::default();
        // Messages before any start cannot be rebuilt: they were unverifiable when received too,
        // unless the database lacks the snapshot the collector had.
        let first_seq = start.as_ref().map_or(i64::MAX, |s| s.seq);
        let mut seen = 0usize;
        for (&seq, &recorded) in stored.iter().filter(|(seq, _)| **seq < first_seq) {
            seen += 1;
            report.records += 1;
            report.frames += 1;
            s.book_messages += 1;
            s.unverifiable += 1;
            if recorded.is_some() {
                report.disagree(
                    seq as u64,
                    Some(symbol.clone()),
                    verdict_name(recorded),
                    "no snapshot before it in the database".into(),
                );
            }
        }
        let Some(start) = start else { continue };
        let last = to.add_nanos(-1000);
        // The book states the collector journaled in the range: each must equal the rebuilt book
        // at its place (a changed level deep in the book leaves the top-ten checksum alone).
        let mut states: std::collections::VecDeque<(i64, u32, String, String)> = client
            .query(
                "SELECT seq, checksum, bids::text, asks::text FROM kraken_book_states
                  WHERE symbol = $1 AND collector = $2 AND \"timestamp\" >= $3 AND \"timestamp\" < $4
                    AND seq > $5 ORDER BY seq",
                &[&symbol, &collector, &from, &to, &start.seq],
            )
            .await
            .map_err(crate::readback::db("reading book states"))?
            .iter()
            .map(|r| (r.get(0), u32::try_from(r.get::<_, i64>(1)).unwrap_or(0), r.get(2), r.get(3)))
            .collect();
        let mut cursor = BookCursor::open(client, &symbol, start, last).await?;
        loop {
            // States that sit before the next message: compare them with the book now.
            let next_seq = cursor.peek_seq().await?;
            while let Some((state_seq, checksum, bids, asks)) = states.front().cloned()
                && next_seq.is_none_or(|n| n > state_seq)
            {
                states.pop_front();
                s.states += 1;
                let book = cursor.book();
                let view = book.view(book.depth());
                let pairs = |levels: &[crate::book::PriceLevel]| {
                    levels.iter().map(|l| (l.price, l.qty)).collect::<Vec<_>>()
                };
                let same = cursor.is_synced()
                    && book.checksum() == checksum
                    && parse_levels(&bids).is_ok_and(|b| b == pairs(&view.bids))
                    && parse_levels(&asks).is_ok_and(|a| a == pairs(&view.asks));
                if !same {
                    report.disagree(
                        state_seq as u64,
                        Some(symbol.clone()),
                        format!("book state with checksum {checksum}"),
                        format!("a different book (checksum {})", book.checksum()),
                    );
                }
            }
            let Some(step) = cursor.next().await? else {
                break;
            };
            let Some(recorded) = stored.get(&step.seq).copied() else {
                continue; // before the range: it only builds the book
            };
            seen += 1;
            report.records += 1;
            report.frames += 1;
            report.seq_range = Some(match report.seq_range {
                Some((a, b)) => (a.min(step.seq as u64), b.max(step.seq as u64)),
                None => (step.seq as u64, step.seq as u64),
            });
            s.book_messages += 1;
            match step.verified {
                Some(true) => s.ok += 1,
                Some(false) => s.mismatches += 1,
                None => s.unverifiable += 1,
            }
            if step.verified != recorded {
                report.disagree(
                    step.seq as u64,
                    Some(symbol.clone()),
                    verdict_name(recorded),
                    verdict_name(step.verified),
                );
            }
            done += 1;
            if done.is_multiple_of(65_536) {
                progress(done);
            }
        }
        // Messages stored in the range that have no levels to replay (a book message always has
        // at least one): report them rather than pass over them.
        if seen < stored.len() {
            let missing = (stored.len() - seen) as u64;
            report.disagree_n(
                missing,
                0,
                Some(symbol.clone()),
                format!("{missing} book messages of {collector}"),
                "no stored levels to replay them from".into(),
            );
        }
        let total = report.symbols.entry(symbol).or_default();
        total.add(&s);
    }
    progress(done);
    Ok(report)
}
