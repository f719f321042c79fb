-- Candidate 1: the raw message held once as jsonb; kraken_orderbook_entries a view that unnests it.
DROP SCHEMA IF EXISTS c1 CASCADE;
CREATE SCHEMA c1;
CREATE TABLE c1.msgs (LIKE public.kraken_orderbook_messages);
SELECT create_hypertable('c1.msgs', 'timestamp', chunk_time_interval => interval '1 day');
CREATE INDEX ON c1.msgs (symbol, "timestamp" DESC);
CREATE INDEX ON c1.msgs (symbol, "timestamp" DESC) WHERE message_type = 'snapshot';
CREATE INDEX ON c1.msgs (collector, seq);
INSERT INTO c1.msgs SELECT * FROM public.kraken_orderbook_messages ORDER BY collector, seq;
VACUUM ANALYZE c1.msgs;
CREATE VIEW c1.kraken_orderbook_messages AS SELECT * FROM c1.msgs;
CREATE VIEW c1.kraken_orderbook_entries AS
SELECT m."timestamp", m.received_at, m.symbol, l.side, (l.v ->> 'price')::numeric AS price,
       (l.v ->> 'qty')::numeric AS quantity, m.message_type, m.checksum, m.collector, m.seq,
       (row_number() OVER (PARTITION BY m.collector, m.seq ORDER BY l.side_ord, l.i) - 1)::smallint AS ordinal
  FROM c1.msgs m
  CROSS JOIN LATERAL (
      SELECT 'bid' AS side, 0 AS side_ord, b.v, b.i
        FROM jsonb_array_elements(m.raw_message -> 'data' -> 0 -> 'bids') WITH ORDINALITY b(v, i)
      UNION ALL
      SELECT 'ask', 1, a.v, a.i
        FROM jsonb_array_elements(m.raw_message -> 'data' -> 0 -> 'asks') WITH ORDINALITY a(v, i)) l
 WHERE m.channel = 'book' AND m.message_type IN ('snapshot', 'update');
