-- The original tool's names over candidate 4 (schema :s): columns and types as today, no join.
CREATE OR REPLACE VIEW :s.kraken_orderbook_messages AS
SELECT b."timestamp", b."timestamp" + b.recv_us * interval '1 microsecond' AS received_at,
       lab.collector_name(b.collector_id) AS collector, b.seq, b.conn_id::bigint AS conn_id,
       b.conn_seq, 'book'::text AS channel,
       CASE b.kind WHEN 's' THEN 'snapshot' ELSE 'update' END AS message_type,
       b.symbol, b.checksum::bigint & 4294967295 AS checksum, b.checksum_ok,
       -- The frame rebuilt, written out here rather than in a SQL function: a function with
       -- sub-selects is not inlined and is planned again by every query that calls it (+7 ms).
       jsonb_build_object(
         'channel', 'book',
         'type', CASE b.kind WHEN 's' THEN 'snapshot' ELSE 'update' END,
         'data', jsonb_build_array(jsonb_build_object(
           'symbol', b.symbol,
           'bids', coalesce((SELECT jsonb_agg(jsonb_build_object(
                                'price', lab.undec64(b.levels[2 * i - 1]),
                                'qty', lab.undec64(b.levels[2 * i])) ORDER BY i)
                              FROM generate_series(1, b.n_bids) i), '[]'::jsonb),
           'asks', coalesce((SELECT jsonb_agg(jsonb_build_object(
                                'price', lab.undec64(b.levels[2 * i - 1]),
                                'qty', lab.undec64(b.levels[2 * i])) ORDER BY i)
                              FROM generate_series(b.n_bids + 1, cardinality(b.levels) / 2) i),
                             '[]'::jsonb),
           'checksum', b.checksum::bigint & 4294967295,
           'timestamp', lab.kraken_ts(b."timestamp")))) AS raw_message,
       NULL::text AS raw_text, NULL::bytea AS raw_bytes,
       lab.undec64(b.best_bid_price) AS best_bid_price, lab.undec64(b.best_bid_qty) AS best_bid_qty,
       lab.undec64(b.best_ask_price) AS best_ask_price, lab.undec64(b.best_ask_qty) AS best_ask_qty
  FROM :s.book b
UNION ALL
SELECT "timestamp", received_at, collector, seq, conn_id, conn_seq, channel, message_type, symbol,
       checksum, checksum_ok, raw_message, raw_text, raw_bytes,
       best_bid_price, best_bid_qty, best_ask_price, best_ask_qty
  FROM :s.other;

-- Levels by unnest ... WITH ORDINALITY (its row estimate is 10 a message; generate_series's is
-- 1000, which made plans costly enough to trigger JIT: +400 ms, measured), prices at odd positions.
CREATE OR REPLACE VIEW :s.kraken_orderbook_entries AS
SELECT b."timestamp", b."timestamp" + b.recv_us * interval '1 microsecond' AS received_at,
       b.symbol, CASE WHEN u.k <= 2 * b.n_bids THEN 'bid' ELSE 'ask' END AS side,
       lab.undec64(u.v) AS price, lab.undec64(b.levels[u.k + 1]) AS quantity,
       CASE b.kind WHEN 's' THEN 'snapshot' ELSE 'update' END AS message_type,
       b.checksum::bigint & 4294967295 AS checksum, lab.collector_name(b.collector_id) AS collector,
       b.seq, ((u.k - 1) / 2)::smallint AS ordinal
  FROM :s.book b
  CROSS JOIN LATERAL unnest(b.levels) WITH ORDINALITY u(v, k)
 WHERE u.k % 2 = 1;

-- The README's "latest snapshot" query filters on the view's message_type expression: a partial
-- index with that very predicate serves it (tiny: snapshots only).
CREATE INDEX IF NOT EXISTS book_snapshot_view_idx ON :s.book (symbol, "timestamp")
 WHERE CASE kind WHEN 's' THEN 'snapshot' ELSE 'update' END = 'snapshot';
