//! Agreement as proof: where two streams of a symbol (two collectors, or two connections of one)
//! were verified at the same time, their books must be the same at every Kraken timestamp both
//! have a message stamped with. Kraken's checksum covers only the top ten levels of each side;
//! two independent connections agreeing on every level down to the smaller of their depths proves
//! what no checksum alone can (a level below the top ten altered in one copy, consistently in
//! every stored form of it, is seen only here).
//!
//! What must hold:
//! - the pairs compared are those the coverage model ([`crate::history`]) says overlap: for each
//!   pair of streams, each pair of their verified spans that intersect (cut to the scope's
//!   range), [`overlaps`] (no I/O);
//! - each stream's book is rebuilt by [`BookCursor`] from its own records (from its latest start
//!   at or before the overlap), and compared only at instants inside the overlap where both have
//!   a message stamped there and both books verified after the last such message (connections
//!   batch differently: the books are compared, never the message lists);
//! - the two streams of an overlap are read on two database connections: two row streams
//!   interleaved on one connection wait for each other forever;
//! - a disagreement names the symbol, the instant, and both (collector, connection, seq); every
//!   instant compared is counted, agreed or not.

use serde::Serialize;
use tokio_postgres::Client;

use crate::book::OrderBook;
use crate::history::{Coverage, Source, Span, StreamId};
use crate::readback::{BookCursor, ReadbackError};
use crate::time::Timestamp;

/// At most this many disagreements are kept in full (all are counted).
const KEPT: usize = 100;

/// Where a stream was when two books were compared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StreamAt {
    /// The collector.
    pub collector: String,
    /// Its connection.
    pub conn_id: i64,
    /// The `seq` of the stream's last message stamped at the instant.
    pub seq: i64,
}

/// Two streams' books that differ at a common instant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CrossDisagreement {
    /// The pair.
    pub symbol: String,
    /// The Kraken timestamp both streams have a message at.
    pub at: String,
    /// One stream.
    pub a: StreamAt,
    /// The other.
    pub b: StreamAt,
    /// The first level that differs, and the depth compared.
    pub what: String,
}

/// The outcome of the cross-check.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CrossCheck {
    /// Overlaps of two streams' verified spans walked.
    pub overlaps: u64,
    /// Common instants at which both books were verified and compared.
    pub compared: u64,
    /// Of which the books agreed.
    pub agreed: u64,
    /// Overlaps whose book could not be rebuilt on one side (no stored start in its span).
    pub unopened: u64,
    /// The disagreements (at most the first 100).
    pub disagreements: Vec<CrossDisagreement>,
    /// How many in all.
    pub disagreement_count: u64,
}

/// Where two streams' verified spans intersect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overlap {
    /// One stream and its span.
    pub a: (StreamId, Span),
    /// The other.
    pub b: (StreamId, Span),
    /// First instant both are verified.
    pub start: Timestamp,
    /// First instant after it that one of them is not (exclusive).
    pub end: Timestamp,
}

/// Every overlap of two distinct streams' verified spans of `coverage`, cut to `[from, to)`, in
/// stream order then time order.
pub fn overlaps(
    coverage: &Coverage,
    from: Option<Timestamp>,
    to: Option<Timestamp>,
) -> Vec<Overlap> {
    let mut out = Vec::new();
    for (i, sa) in coverage.streams.iter().enumerate() {
        for sb in coverage.streams.iter().skip(i + 1) {
            for x in &sa.spans {
                for y in &sb.spans {
                    let mut start = x.start.max(y.start);
                    let mut end = x.end.min(y.end);
                    if let Some(f) = from {
                        start = start.max(f);
                    }
                    if let Some(t) = to {
                        end = end.min(t);
                    }
                    if start < end {
                        out.push(Overlap {
                            a: (sa.stream.clone(), x.clone()),
                            b: (sb.stream.clone(), y.clone()),
                            start,
                            end,
                        });
                    }
                }
            }
        }
    }
    out
}

/// The first level at which two books differ, down to `depth` levels a side (`None`: equal).
pub fn book_difference(a: &OrderBook, b: &OrderBook, depth: usize) -> Option<String> {
    let sides = [
        (
            "bid",
            a.bids().take(depth).collect::<Vec<_>>(),
            b.bids().take(depth).collect::<Vec<_>>(),
        ),
        (
            "ask",
            a.asks().take(depth).collect::<Vec<_>>(),
            b.asks().take(depth).collect::<Vec<_>>(),
        ),
    ];
    for (side, x, y) in sides {
        for k in 0..x.len().max(y.len()) {
            let show = |l: Option<&crate::book::PriceLevel>| {
                l.map_or("none".to_owned(), |l| format!("{} @ {}", l.qty, l.price))
            };
            let (p, q) = (x.get(k), y.get(k));
            if p.map(|l| (l.price, l.qty)) != q.map(|l| (l.price, l.qty)) {
                return Some(format!(
                    "{side} level {} of {depth}: {} vs {}",
                    k + 1,
                    show(p),
                    show(q)
                ));
            }
        }
    }
    None
}

/// Cross-checks every overlap of two streams of each of `symbols` (all recorded when empty) on
/// `collector`'s record (every collector's when `None`) in `[from, to)`; one stream of each pair
/// is read on `client`, the other on `other` (another connection to the same database).
pub async fn cross_check(
    client: &Client,
    other: &Client,
    symbols: &[String],
    collector: Option<&str>,
    from: Option<Timestamp>,
    to: Option<Timestamp>,
) -> Result<CrossCheck, ReadbackError> {
    let symbols = if symbols.is_empty() {
        crate::readback::query::recorded_symbols(client).await?
    } else {
        symbols.to_vec()
    };
    let mut report = CrossCheck::default();
    let coverage = Source::Database(client)
        .coverage(&symbols, collector)
        .await?;
    for c in &coverage {
        for overlap in overlaps(c, from, to) {
            report.overlaps += 1;
            walk([client, other], &c.symbol, &overlap, &mut report).await?;
        }
    }
    Ok(report)
}

/// A stream's cursor opened at its latest start at or before the overlap.
async fn open(
    client: &Client,
    symbol: &str,
    (id, span): &(StreamId, Span),
    overlap: &Overlap,
) -> Result<Option<BookCursor>, ReadbackError> {
    let start = BookCursor::find_start_in_span(
        client,
        symbol,
        overlap.start,
        &id.collector,
        id.conn_id,
        span.start_seq,
        span.last_seq,
    )
    .await?;
    match start {
        Some(s) => Ok(Some(
            BookCursor::open_bounded(client, symbol, s, overlap.end, span.last_seq).await?,
        )),
        None => Ok(None),
    }
}

/// Applies every message of the cursor stamped `t`: the last one's `seq`, and whether the book
/// verified after it.
async fn through(c: &mut BookCursor, t: Timestamp) -> Result<(i64, bool), ReadbackError> {
    let mut last = (0, false);
    while c.peek_timestamp().await? == Some(t) {
        let Some(step) = c.next().await? else {
            break;
        };
        last = (step.seq, step.verified == Some(true));
    }
    Ok(last)
}

/// Walks both streams of an overlap in Kraken time and compares their books at every instant
/// both have a message at.
async fn walk(
    [client, other]: [&Client; 2],
    symbol: &str,
    overlap: &Overlap,
    report: &mut CrossCheck,
) -> Result<(), ReadbackError> {
    let (Some(mut a), Some(mut b)) = (
        open(client, symbol, &overlap.a, overlap).await?,
        open(other, symbol, &overlap.b, overlap).await?,
    ) else {
        report.unopened += 1;
        return Ok(());
    };
    loop {
        let (ta, tb) = (a.peek_timestamp().await?, b.peek_timestamp().await?);
        let (Some(ta), Some(tb)) = (ta, tb) else {
            break;
        };
        if ta < tb {
            through(&mut a, ta).await?;
            continue;
        }
        if tb < ta {
            through(&mut b, tb).await?;
            continue;
        }
        let (seq_a, ok_a) = through(&mut a, ta).await?;
        let (seq_b, ok_b) = through(&mut b, ta).await?;
        if !(ok_a && ok_b && overlap.start <= ta && ta < overlap.end) {
            continue;
        }
        let depth = |c: &BookCursor| {
            c.subscribed_depth()
                .unwrap_or_else(|| c.book().bids().len().max(c.book().asks().len()))
        };
        let d = depth(&a).min(depth(&b));
        report.compared += 1;
        match book_difference(a.book(), b.book(), d) {
            None => report.agreed += 1,
            Some(what) => {
                report.disagreement_count += 1;
                if report.disagreements.len() < KEPT {
                    let at = |(id, _): &(StreamId, Span), seq| StreamAt {
                        collector: id.collector.clone(),
                        conn_id: id.conn_id,
                        seq,
                    };
                    report.disagreements.push(CrossDisagreement {
                        symbol: symbol.to_owned(),
                        at: ta.to_string(),
                        a: at(&overlap.a, seq_a),
                        b: at(&overlap.b, seq_b),
                        what,
                    });
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::Decimal;
    use crate::history::{SpanEnd, SpanStart, StreamCoverage};

    fn t(s: i64) -> Timestamp {
        Timestamp::from_unix_nanos(s * 1_000_000_000)
    }

    fn stream(c: &str, conn: i64, spans: &[(i64, i64)]) -> StreamCoverage {
        StreamCoverage {
            stream: StreamId {
                collector: c.into(),
                conn_id: conn,
            },
            first_received: t(0),
            last_received: t(1000),
            spans: spans
                .iter()
                .map(|&(s, e)| Span {
                    start: t(s),
                    end: t(e),
                    started_from: SpanStart::Snapshot,
                    start_seq: s,
                    last_seq: e,
                    ended_by: SpanEnd::ConnectionEnded,
                })
                .collect(),
            gaps: Vec::new(),
        }
    }

    fn coverage(streams: Vec<StreamCoverage>) -> Coverage {
        Coverage {
            symbol: "X".into(),
            streams,
            spans: Vec::new(),
            gaps: Vec::new(),
        }
    }

    #[test]
    fn overlaps_are_the_intersections_of_every_pair_of_streams_spans_cut_to_the_range() {
        let c = coverage(vec![
            stream("A", 1, &[(0, 50), (60, 100)]),
            stream("B", 1, &[(40, 70)]),
            stream("B", 2, &[(100, 120)]),
        ]);
        let got: Vec<(String, String, i64, i64)> = overlaps(&c, None, None)
            .iter()
            .map(|o| {
                (
                    o.a.0.to_string(),
                    o.b.0.to_string(),
                    o.start.unix_nanos() / 1_000_000_000,
                    o.end.unix_nanos() / 1_000_000_000,
                )
            })
            .collect();
        let s = |a: &str, b: &str, x, y| (a.to_owned(), b.to_owned(), x, y);
        // A's second span ends where B's second connection starts: no overlap there.
        assert_eq!(
            got,
            vec![
                s("A connection 1", "B connection 1", 40, 50),
                s("A connection 1", "B connection 1", 60, 70),
            ]
        );
        let cut = overlaps(&c, Some(t(45)), Some(t(65)));
        assert_eq!(cut.len(), 2);
        assert_eq!((cut[0].start, cut[0].end), (t(45), t(50)));
        assert_eq!((cut[1].start, cut[1].end), (t(60), t(65)));
    }

    fn book(bids: &[(&str, &str)], asks: &[(&str, &str)]) -> OrderBook {
        let d = |s: &str| Decimal::parse(s).unwrap();
        let mut b = OrderBook::new(25);
        b.apply_snapshot(
            bids.iter().map(|(p, q)| (d(p), d(q))).collect::<Vec<_>>(),
            asks.iter().map(|(p, q)| (d(p), d(q))).collect::<Vec<_>>(),
        )
        .unwrap();
        b
    }

    #[test]
    fn a_level_that_differs_below_the_compared_depth_is_not_a_difference_and_above_it_is() {
        let a = book(&[("10", "1"), ("9", "2"), ("8", "3")], &[("11", "1")]);
        let b = book(&[("10", "1"), ("9", "2"), ("8", "4")], &[("11", "1")]);
        assert_eq!(book_difference(&a, &b, 2), None);
        assert_eq!(
            book_difference(&a, &b, 3).as_deref(),
            Some("bid level 3 of 3: 3 @ 8 vs 4 @ 8")
        );
        let c = book(&[("10", "1"), ("9", "2")], &[("11", "1")]);
        assert_eq!(
            book_difference(&a, &c, 3).as_deref(),
            Some("bid level 3 of 3: 3 @ 8 vs none")
        );
    }
}
