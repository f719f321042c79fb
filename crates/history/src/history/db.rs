//! Observations from TimescaleDB: a handful of queries per call, each on an index or a small
//! table, whatever the length of the record.
//!
//! - subscriptions: `kraken_feed_events` (`subscribed`), by its `(symbol, time)` index;
//! - verified snapshots: every received copy of a snapshot (`krakenbook_copies`: a book row's
//!   first copy and those packed in its `dups`, each with its own verdict), by the book table's
//!   partial snapshot index (one row per subscription, not per message);
//! - mismatches: `checksum_mismatch` events, each with the mismatched message found by the
//!   `(collector_id, seq)` block-range index just before the event (its Kraken timestamp), and the last message of
//!   the symbol on the connection that verified before it;
//! - connections: `krakenbook_connections` (first and last frame, heartbeats included), by key;
//! - `disconnected` and `journal_damage` events: a few rows per connection or damage;
//! - after each damage, the first book state of each connection concerned, by the states'
//!   `(symbol, timestamp)` index.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tokio_postgres::Client;

use super::HistoryError;
use super::model::{Connection, Damage, Mark, Observation, Observed, StreamId};
use crate::store::StoreError;
use crate::store::book_rows::DUP_SEQ_REACH;
use crate::time::Timestamp;

/// How far before a mismatch event its message is looked for on the collector's record (other
/// connections' records may come between a frame and the event it caused).
const MISMATCH_LOOKBACK: i64 = 100_000;
/// How much earlier than the last intact record's receipt a book state after damage may be
/// stamped by Kraken's clock (a search bound, far above any latency).
const STATE_SLACK_NS: i64 = 60_000_000_000;

/// What the database holds of each of `symbols` (in the order given), on `collector`'s record or
/// every collector's.
pub async fn observe(
    client: &Client,
    symbols: &[String],
    collector: Option<&str>,
) -> Result<Vec<Observed>, HistoryError> {
    let mut by_symbol: BTreeMap<&str, Observed> = symbols
        .iter()
        .map(|s| {
            (
                s.as_str(),
                Observed {
                    symbol: s.clone(),
                    ..Observed::default()
                },
            )
        })
        .collect();
    let stream = |collector: String, conn_id: i64| StreamId { collector, conn_id };
    let subscribed = client
        .query(
            "SELECT symbol, collector, conn_id, seq, time FROM kraken_feed_events
              WHERE symbol = ANY($1) AND event = 'subscribed' AND conn_id IS NOT NULL
                AND ($2::text IS NULL OR collector = $2)",
            &[&symbols, &collector],
        )
        .await
        .map_err(StoreError::db("reading the subscriptions"))?;
    for r in subscribed {
        if let Some(o) = by_symbol.get_mut(r.get::<_, &str>(0)) {
            o.observations.push(Observation {
                stream: stream(r.get(1), r.get(2)),
                seq: r.get(3),
                received: r.get(4),
                mark: Mark::Subscribed,
            });
        }
    }
    let snapshots = client
        .query(
            "SELECT c.symbol, k.name, c.conn_id, c.seq, c.\"timestamp\", c.received_at
               FROM krakenbook_copies c JOIN krakenbook_collectors k ON k.id = c.collector_id
              WHERE c.symbol = ANY($1) AND c.kind = 's' AND c.checksum_ok
                AND ($2::text IS NULL OR k.name = $2)",
            &[&symbols, &collector],
        )
        .await
        .map_err(StoreError::db("reading the verified snapshots"))?;
    for r in snapshots {
        if let Some(o) = by_symbol.get_mut(r.get::<_, &str>(0)) {
            o.observations.push(Observation {
                stream: stream(r.get(1), r.get(2)),
                seq: r.get(3),
                received: r.get(5),
                mark: Mark::Snapshot { kraken: r.get(4) },
            });
        }
    }
    let mismatches = client
        .query(
            "SELECT e.symbol, e.collector, e.conn_id, e.seq, e.time, m.seq, m.\"timestamp\",
                    m.received_at, v.\"timestamp\"
               FROM kraken_feed_events e
               LEFT JOIN LATERAL (
                 SELECT m.seq, m.\"timestamp\", m.received_at FROM krakenbook_copies m
                  WHERE m.collector_id = (SELECT id FROM krakenbook_collectors WHERE name = e.collector)
                    AND m.row_seq < e.seq + $4::bigint AND m.row_seq > e.seq - $3::bigint - $4::bigint
                    AND m.seq < e.seq AND m.seq > e.seq - $3
                    AND m.conn_id = e.conn_id AND m.symbol = e.symbol AND m.checksum_ok = false
                    AND m.\"timestamp\" <= e.time + interval '1 hour'
                  ORDER BY m.seq DESC LIMIT 1) m ON true
               LEFT JOIN LATERAL (
                 SELECT v.\"timestamp\" FROM krakenbook_copies v
                  WHERE v.collector_id = (SELECT id FROM krakenbook_collectors WHERE name = e.collector)
                    AND v.row_seq < coalesce(m.seq, e.seq) + $4::bigint AND v.row_seq > e.seq - $3::bigint - $4::bigint
                    AND v.seq < coalesce(m.seq, e.seq)
                    AND v.seq > e.seq - $3 AND v.conn_id = e.conn_id AND v.symbol = e.symbol
                    AND v.checksum_ok AND v.\"timestamp\" <= e.time + interval '1 hour'
                  ORDER BY v.seq DESC LIMIT 1) v ON true
              WHERE e.symbol = ANY($1) AND e.event = 'checksum_mismatch' AND e.conn_id IS NOT NULL
                AND ($2::text IS NULL OR e.collector = $2)",
            &[&symbols, &collector, &MISMATCH_LOOKBACK, &DUP_SEQ_REACH],
        )
        .await
        .map_err(StoreError::db("reading the checksum mismatches"))?;
    for r in mismatches {
        if let Some(o) = by_symbol.get_mut(r.get::<_, &str>(0)) {
            let event_time: Timestamp = r.get(4);
            // The mismatched message, else (not stored) the event: the same frame's receipt.
            let (seq, kraken, received) = match r.get::<_, Option<i64>>(5) {
                Some(seq) => (seq, r.get(6), r.get(7)),
                None => (r.get(3), event_time, event_time),
            };
            o.observations.push(Observation {
                stream: stream(r.get(1), r.get(2)),
                seq,
                received,
                mark: Mark::Mismatch {
                    kraken,
                    last_verified: r.get(8),
                },
            });
        }
    }
    // Disconnections and damage: a few rows per connection.
    let rows = client
        .query(
            "SELECT collector, event, seq, conn_id, gap_start, time FROM kraken_feed_events
              WHERE event IN ('disconnected', 'journal_damage')
                AND ($1::text IS NULL OR collector = $1)",
            &[&collector],
        )
        .await
        .map_err(StoreError::db("reading the disconnections and damage"))?;
    let mut lost: BTreeSet<StreamId> = BTreeSet::new();
    let mut damage: Vec<Damage> = Vec::new();
    for r in rows {
        match (r.get::<_, &str>(1), r.get::<_, Option<i64>>(3)) {
            ("disconnected", Some(conn)) => {
                lost.insert(stream(r.get(0), conn));
            }
            ("journal_damage", _) => damage.push(Damage {
                collector: r.get(0),
                first_seq: r.get(2),
                before: r.get(4),
                after: Some(r.get(5)),
            }),
            _ => {}
        }
    }
    // The connections that carried each symbol.
    let mut wanted: BTreeSet<StreamId> = BTreeSet::new();
    for o in by_symbol.values() {
        wanted.extend(o.observations.iter().map(|m| m.stream.clone()));
    }
    let (collectors, ids): (Vec<String>, Vec<i64>) = wanted
        .iter()
        .map(|s| (s.collector.clone(), s.conn_id))
        .unzip();
    let rows = client
        .query(
            "SELECT collector, conn_id, first_seq, last_seq, first_received_at, last_received_at
               FROM krakenbook_connections
              WHERE (collector, conn_id) IN (SELECT * FROM unnest($1::text[], $2::bigint[]))",
            &[&collectors, &ids],
        )
        .await
        .map_err(StoreError::db("reading the connections"))?;
    let mut conns: HashMap<StreamId, Connection> = HashMap::new();
    for r in rows {
        let id = stream(r.get(0), r.get(1));
        let loss_recorded = lost.contains(&id);
        conns.insert(
            id.clone(),
            Connection {
                id,
                first_seq: r.get(2),
                last_seq: r.get(3),
                first_received: r.get(4),
                last_received: r.get(5),
                loss_recorded,
            },
        );
    }
    for o in by_symbol.values_mut() {
        let mine: BTreeSet<StreamId> = o.observations.iter().map(|m| m.stream.clone()).collect();
        o.connections = mine
            .iter()
            .filter_map(|id| conns.get(id).cloned())
            .collect();
        let collectors: BTreeSet<&str> = mine.iter().map(|s| s.collector.as_str()).collect();
        o.damage = damage
            .iter()
            .filter(|d| collectors.contains(d.collector.as_str()))
            .cloned()
            .collect();
        // After each damage, the first book state of each connection that outlived it: where
        // its stream can be verified again without a new snapshot.
        let mut states = Vec::new();
        for d in &o.damage {
            for c in o
                .connections
                .iter()
                .filter(|c| c.id.collector == d.collector && c.last_seq > d.first_seq)
            {
                let since = d.before.map_or(Timestamp::from_unix_nanos(i64::MIN), |b| {
                    b.add_nanos(-STATE_SLACK_NS)
                });
                let row = client
                    .query_opt(
                        "SELECT seq, \"timestamp\", received_at FROM kraken_book_states
                          WHERE symbol = $1 AND collector = $2 AND conn_id = $3 AND seq > $4
                            AND \"timestamp\" >= $5
                          ORDER BY \"timestamp\", seq LIMIT 1",
                        &[
                            &o.symbol,
                            &c.id.collector,
                            &c.id.conn_id,
                            &d.first_seq,
                            &since,
                        ],
                    )
                    .await
                    .map_err(StoreError::db("reading the book states after damage"))?;
                if let Some(r) = row {
                    states.push(Observation {
                        stream: c.id.clone(),
                        seq: r.get(0),
                        received: r.get(2),
                        mark: Mark::State { kraken: r.get(1) },
                    });
                }
            }
        }
        o.observations.extend(states);
        o.normalize();
    }
    Ok(symbols
        .iter()
        .map(|s| {
            by_symbol
                .get(s.as_str())
                .cloned()
                .unwrap_or_else(|| Observed {
                    symbol: s.clone(),
                    ..Observed::default()
                })
        })
        .collect())
}
