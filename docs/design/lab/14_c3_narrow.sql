-- Candidate 3: candidate 2b (dec64 levels, raw rebuilt) with narrow keys and light indexes:
--   symbol and collector as smallint ids (lab.kb_symbols, lab.kb_collectors), message type as a
--   "char", received_at as an int4 offset in microseconds from Kraken's timestamp (a row whose
--   offset does not fit in +-2000 s, a quiet pair's old snapshot, goes whole to <schema>.other:
--   no nullable column that is null in most rows, which would cost a null bitmap: 8 bytes a row
--   once a table has more than 8 columns), conn_id
--   and checksum (CRC32) as int4 (the checksum's bits; the view gives the unsigned value), prices
--   and quantities interleaved in ONE bigint[] (price, qty, price, qty, ...; bids first; n_bids
--   says where the asks begin): one array header instead of two;
--   indexes ASC (received order appends at the right edge, see 13_index_order.sql), no
--   TimescaleDB default index (create_default_indexes => false) but our own ("timestamp") ASC.
-- Variables: s (schema), seqidx ('btree' or 'brin': the received-order index).
DROP SCHEMA IF EXISTS :s CASCADE;
CREATE SCHEMA :s;
CREATE TABLE :s.book (
    "timestamp"     timestamptz NOT NULL,
    seq             bigint NOT NULL,
    conn_seq        bigint NOT NULL,
    best_bid_price  bigint,
    best_bid_qty    bigint,
    best_ask_price  bigint,
    best_ask_qty    bigint,
    recv_us         integer NOT NULL,
    conn_id         integer NOT NULL,
    checksum        integer NOT NULL,
    symbol_id       smallint NOT NULL,
    collector_id    smallint NOT NULL,
    n_bids          smallint NOT NULL,
    kind            "char" NOT NULL CHECK (kind IN ('s', 'u')),
    checksum_ok     boolean,
    levels          bigint[] NOT NULL
);
CREATE TABLE :s.other (LIKE public.kraken_orderbook_messages);
SELECT create_hypertable(t, 'timestamp', chunk_time_interval => interval '1 day',
                         create_default_indexes => false)
  FROM unnest(ARRAY[:'s' || '.book', :'s' || '.other']::regclass[]) t;
CREATE INDEX book_time_idx ON :s.book ("timestamp");
CREATE INDEX book_symbol_time_idx ON :s.book (symbol_id, "timestamp");
CREATE INDEX book_snapshot_idx ON :s.book (symbol_id, "timestamp") WHERE kind = 's';
SELECT :'seqidx' = 'brin' AS use_brin \gset
\if :use_brin
CREATE INDEX book_order_idx ON :s.book USING brin (collector_id, seq int8_minmax_multi_ops)
    WITH (pages_per_range = 32);
\else
CREATE INDEX book_order_idx ON :s.book (collector_id, seq);
\endif
CREATE INDEX other_time_idx ON :s.other ("timestamp");
CREATE INDEX other_symbol_time_idx ON :s.other (symbol, "timestamp");
CREATE INDEX other_order_idx ON :s.other (collector, seq);

INSERT INTO :s.book
SELECT m."timestamp", m.seq, m.conn_seq,
       lab.dec64(m.best_bid_price), lab.dec64(m.best_bid_qty),
       lab.dec64(m.best_ask_price), lab.dec64(m.best_ask_qty),
       (extract(epoch FROM m.received_at - m."timestamp") * 1000000)::int,
       m.conn_id, m.checksum::bigint::bit(32)::int, s.id, c.id, l.n_bids,
       CASE m.message_type WHEN 'snapshot' THEN 's' ELSE 'u' END, m.checksum_ok,
       (SELECT array_agg(lab.dec64(v) ORDER BY i, k)
          FROM unnest(l.prices, l.qtys) WITH ORDINALITY u(p, q, i)
          CROSS JOIN LATERAL (VALUES (0, p), (1, q)) pq(k, v))
  FROM public.kraken_orderbook_messages m
  JOIN lab.levels l USING (collector, seq)
  JOIN lab.kb_symbols s ON s.name = m.symbol
  JOIN lab.kb_collectors c ON c.name = m.collector
 WHERE abs(extract(epoch FROM m.received_at - m."timestamp")) < 2000
 ORDER BY m.collector, m.seq;
INSERT INTO :s.other SELECT * FROM public.kraken_orderbook_messages m
 WHERE NOT EXISTS (SELECT 1 FROM :s.book b JOIN lab.kb_collectors c ON c.id = b.collector_id
                    WHERE c.name = m.collector AND b.seq = m.seq);
VACUUM ANALYZE :s.book;
VACUUM ANALYZE :s.other;
