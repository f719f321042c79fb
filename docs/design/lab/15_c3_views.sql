-- The original tool's names over candidate 3 (schema :s): columns and types as today.
CREATE OR REPLACE FUNCTION :s.book_json(kind "char", symbol text, n_bids smallint, levels bigint[],
                                        checksum integer, ts timestamptz) RETURNS jsonb
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN jsonb_build_object(
        'channel', 'book',
        'type', CASE kind WHEN 's' THEN 'snapshot' ELSE 'update' END,
        'data', jsonb_build_array(jsonb_build_object(
            'symbol', symbol,
            'bids', coalesce((SELECT jsonb_agg(jsonb_build_object(
                                  'price', lab.undec64(levels[2 * i - 1]),
                                  'qty', lab.undec64(levels[2 * i])) ORDER BY i)
                                FROM generate_series(1, n_bids) i), '[]'::jsonb),
            'asks', coalesce((SELECT jsonb_agg(jsonb_build_object(
                                  'price', lab.undec64(levels[2 * i - 1]),
                                  'qty', lab.undec64(levels[2 * i])) ORDER BY i)
                                FROM generate_series(n_bids + 1, cardinality(levels) / 2) i), '[]'::jsonb),
            'checksum', checksum::bigint & 4294967295,
            'timestamp', lab.kraken_ts(ts))));

CREATE OR REPLACE VIEW :s.kraken_orderbook_messages AS
SELECT b."timestamp",
       b."timestamp" + b.recv_us * interval '1 microsecond' AS received_at,
       c.name AS collector, b.seq, b.conn_id::bigint AS conn_id, b.conn_seq,
       'book'::text AS channel,
       CASE b.kind WHEN 's' THEN 'snapshot' ELSE 'update' END AS message_type,
       s.name AS symbol, b.checksum::bigint & 4294967295 AS checksum, b.checksum_ok,
       :s.book_json(b.kind, s.name, b.n_bids, b.levels, b.checksum, b."timestamp") AS raw_message,
       NULL::text AS raw_text, NULL::bytea AS raw_bytes,
       lab.undec64(b.best_bid_price) AS best_bid_price, lab.undec64(b.best_bid_qty) AS best_bid_qty,
       lab.undec64(b.best_ask_price) AS best_ask_price, lab.undec64(b.best_ask_qty) AS best_ask_qty
  FROM :s.book b
  JOIN lab.kb_symbols s ON s.id = b.symbol_id
  JOIN lab.kb_collectors c ON c.id = b.collector_id
UNION ALL
SELECT "timestamp", received_at, collector, seq, conn_id, conn_seq, channel, message_type, symbol,
       checksum, checksum_ok, raw_message, raw_text, raw_bytes,
       best_bid_price, best_bid_qty, best_ask_price, best_ask_qty
  FROM :s.other;

CREATE OR REPLACE VIEW :s.kraken_orderbook_entries AS
SELECT b."timestamp",
       b."timestamp" + b.recv_us * interval '1 microsecond' AS received_at,
       s.name AS symbol,
       CASE WHEN i <= b.n_bids THEN 'bid' ELSE 'ask' END AS side,
       lab.undec64(b.levels[2 * i - 1]) AS price, lab.undec64(b.levels[2 * i]) AS quantity,
       CASE b.kind WHEN 's' THEN 'snapshot' ELSE 'update' END AS message_type,
       b.checksum::bigint & 4294967295 AS checksum, c.name AS collector, b.seq,
       (i - 1)::smallint AS ordinal
  FROM :s.book b
  JOIN lab.kb_symbols s ON s.id = b.symbol_id
  JOIN lab.kb_collectors c ON c.id = b.collector_id
  CROSS JOIN LATERAL generate_series(1, cardinality(b.levels) / 2) i;
