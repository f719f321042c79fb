//! What the record says about a pair over a range, beside its books: the precision of its prices
//! and quantities (from the instrument channel, recorded on every connection before its book
//! subscriptions) and the depth it was subscribed at (from the subscriptions' acknowledgements,
//! or a journaled book state).
//!
//! Every connection whose book messages fall in the range is asked: the one the range starts on
//! (the last snapshot or book state at or before `from`) and each connection with a snapshot in
//! the range (every connection opens its book with one). Where they differ, the largest wins: a
//! precision wide enough for every value of the range, the deepest book any of them held.
//!
//! What must hold: the lookups use the snapshot index and the `(collector, seq)` order, never a
//! scan of the range's rows; a pair whose instrument frames were not recorded has no precision
//! here (the caller says so), never a guessed one.
//!
//! Shared by [`crate::export`] and [`crate::plot`].

use tokio_postgres::Client;

use super::source::{Selection, SourceError};
use crate::book::Precision;
use crate::readback::{BookCursor, Start, StartKind, instrument_precision, subscribed_depth_of};
use crate::store::StoreError;

/// A pair's precision and subscribed depth over a range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recorded {
    /// Decimals of prices and quantities (`None`: no instrument frame recorded).
    pub precision: Option<Precision>,
    /// Levels a side (`None`: no acknowledgement or book state says).
    pub depth: Option<usize>,
}

impl Recorded {
    /// Widens by another connection's findings.
    fn widen(&mut self, precision: Option<Precision>, depth: Option<usize>) {
        self.precision = match (self.precision, precision) {
            (Some(a), Some(b)) => Some(Precision {
                price: a.price.max(b.price),
                qty: a.qty.max(b.qty),
            }),
            (a, b) => a.or(b),
        };
        self.depth = self.depth.max(depth);
    }
}

/// What the record says about `symbol` over the selection's range.
pub async fn recorded(
    client: &Client,
    selection: &Selection,
    symbol: &str,
) -> Result<Recorded, SourceError> {
    let collector = selection.collector.as_str();
    let mut starts: Vec<Start> = Vec::new();
    if let Some(s) = BookCursor::find_start(client, symbol, selection.from, Some(collector)).await?
    {
        starts.push(s);
    }
    // One snapshot per connection in the range (the partial index on snapshots finds them).
    let rows = client
        .query(
            "SELECT DISTINCT ON (conn_id) conn_id, seq, \"timestamp\", received_at
               FROM krakenbook_copies
              WHERE symbol = $1 AND kind = 's'
                AND collector_id = (SELECT id FROM krakenbook_collectors WHERE name = $2)
                AND \"timestamp\" >= $3 AND \"timestamp\" < $4
              ORDER BY conn_id, seq",
            &[&symbol, &collector, &selection.from, &selection.to],
        )
        .await
        .map_err(StoreError::db("finding the connections of the range"))?;
    for r in rows {
        let conn_id: i64 = r.get(0);
        if starts.iter().any(|s| s.conn_id == conn_id) {
            continue;
        }
        starts.push(Start {
            kind: StartKind::Snapshot,
            collector: collector.to_owned(),
            conn_id,
            seq: r.get(1),
            timestamp: r.get(2),
            received_at: r.get(3),
        });
    }
    let mut found = Recorded::default();
    for start in &starts {
        match start.kind {
            StartKind::Snapshot => {
                let precision = instrument_precision(client, symbol, start).await?;
                let depth = subscribed_depth_of(client, collector, start.seq).await?;
                found.widen(precision, depth);
            }
            StartKind::State => {
                let row = client
                    .query_opt(
                        "SELECT depth, price_precision, qty_precision FROM kraken_book_states
                          WHERE symbol = $1 AND collector = $2 AND seq = $3",
                        &[&symbol, &collector, &start.seq],
                    )
                    .await
                    .map_err(StoreError::db("reading a book state"))?;
                if let Some(r) = row {
                    let small = |v: i16| u8::try_from(v).ok();
                    let precision = small(r.get(1))
                        .zip(small(r.get(2)))
                        .map(|(price, qty)| Precision { price, qty });
                    found.widen(precision, usize::try_from(r.get::<_, i32>(0)).ok());
                }
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_widest_precision_and_the_deepest_book_win() {
        let p = |price, qty| Some(Precision { price, qty });
        let cases = [
            (vec![], None, None, "nothing recorded"),
            (
                vec![(p(1, 8), Some(25))],
                p(1, 8),
                Some(25),
                "one connection",
            ),
            (
                vec![(p(1, 8), Some(25)), (p(2, 6), Some(10))],
                p(2, 8),
                Some(25),
                "a tick size changed between connections",
            ),
            (
                vec![(None, None), (p(4, 8), Some(100))],
                p(4, 8),
                Some(100),
                "a connection without instrument frames or ack",
            ),
        ];
        for (connections, precision, depth, what) in cases {
            let mut r = Recorded::default();
            for (p, d) in connections {
                r.widen(p, d);
            }
            assert_eq!((r.precision, r.depth), (precision, depth), "{what}");
        }
    }
}
