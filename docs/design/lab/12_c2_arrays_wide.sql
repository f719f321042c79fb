-- Candidate 2: one row per book message with its levels as arrays (bids first; n_bids says where
-- the asks begin), no raw copy of book messages (raw_message rebuilt by the view), keys and indexes
-- as today. Two encodings of the levels:
--   c2n: prices numeric[], qtys numeric[] (numeric keeps value and scale: 1.50 stays 1.50);
--   c2b: prices bigint[], qtys bigint[] in dec64 (mantissa*32+scale, also exact, see 00_common).
-- Frames that are not book data (acks, status, malformed, anything not rebuildable) stay whole in
-- <schema>.other, with today's columns.
DROP SCHEMA IF EXISTS c2n CASCADE;
DROP SCHEMA IF EXISTS c2b CASCADE;
CREATE SCHEMA c2n;
CREATE SCHEMA c2b;
CREATE TABLE c2n.book (
    "timestamp" timestamptz NOT NULL, received_at timestamptz NOT NULL, collector text NOT NULL,
    seq bigint NOT NULL, conn_id bigint NOT NULL, conn_seq bigint NOT NULL,
    message_type text NOT NULL, symbol text NOT NULL, checksum bigint NOT NULL,
    checksum_ok boolean, n_bids smallint NOT NULL, prices numeric[] NOT NULL, qtys numeric[] NOT NULL,
    best_bid_price numeric, best_bid_qty numeric, best_ask_price numeric, best_ask_qty numeric);
CREATE TABLE c2b.book (
    "timestamp" timestamptz NOT NULL, received_at timestamptz NOT NULL, collector text NOT NULL,
    seq bigint NOT NULL, conn_id bigint NOT NULL, conn_seq bigint NOT NULL,
    message_type text NOT NULL, symbol text NOT NULL, checksum bigint NOT NULL,
    checksum_ok boolean, n_bids smallint NOT NULL, prices bigint[] NOT NULL, qtys bigint[] NOT NULL,
    best_bid_price bigint, best_bid_qty bigint, best_ask_price bigint, best_ask_qty bigint);
CREATE TABLE c2n.other (LIKE public.kraken_orderbook_messages);
CREATE TABLE c2b.other (LIKE public.kraken_orderbook_messages);
SELECT create_hypertable(t, 'timestamp', chunk_time_interval => interval '1 day')
  FROM unnest(ARRAY['c2n.book', 'c2b.book', 'c2n.other', 'c2b.other']::regclass[]) t;
CREATE INDEX ON c2n.book (symbol, "timestamp" DESC);
CREATE INDEX ON c2n.book (symbol, "timestamp" DESC) WHERE message_type = 'snapshot';
CREATE INDEX ON c2n.book (collector, seq);
CREATE INDEX ON c2b.book (symbol, "timestamp" DESC);
CREATE INDEX ON c2b.book (symbol, "timestamp" DESC) WHERE message_type = 'snapshot';
CREATE INDEX ON c2b.book (collector, seq);
CREATE INDEX ON c2n.other (symbol, "timestamp" DESC);
CREATE INDEX ON c2n.other (collector, seq);
CREATE INDEX ON c2b.other (symbol, "timestamp" DESC);
CREATE INDEX ON c2b.other (collector, seq);

INSERT INTO c2n.book
SELECT m."timestamp", m.received_at, m.collector, m.seq, m.conn_id, m.conn_seq, m.message_type,
       m.symbol, m.checksum, m.checksum_ok, l.n_bids, l.prices, l.qtys,
       m.best_bid_price, m.best_bid_qty, m.best_ask_price, m.best_ask_qty
  FROM public.kraken_orderbook_messages m JOIN lab.levels l USING (collector, seq)
 ORDER BY m.collector, m.seq;
INSERT INTO c2b.book
SELECT m."timestamp", m.received_at, m.collector, m.seq, m.conn_id, m.conn_seq, m.message_type,
       m.symbol, m.checksum, m.checksum_ok, l.n_bids,
       (SELECT array_agg(lab.dec64(p) ORDER BY i) FROM unnest(l.prices) WITH ORDINALITY u(p, i)),
       (SELECT array_agg(lab.dec64(q) ORDER BY i) FROM unnest(l.qtys) WITH ORDINALITY u(q, i)),
       lab.dec64(m.best_bid_price), lab.dec64(m.best_bid_qty),
       lab.dec64(m.best_ask_price), lab.dec64(m.best_ask_qty)
  FROM public.kraken_orderbook_messages m JOIN lab.levels l USING (collector, seq)
 ORDER BY m.collector, m.seq;
INSERT INTO c2n.other SELECT * FROM public.kraken_orderbook_messages m
 WHERE NOT EXISTS (SELECT 1 FROM lab.levels l WHERE l.collector = m.collector AND l.seq = m.seq);
INSERT INTO c2b.other SELECT * FROM c2n.other;
VACUUM ANALYZE c2n.book; VACUUM ANALYZE c2b.book; VACUUM ANALYZE c2n.other; VACUUM ANALYZE c2b.other;
