-- Issue 12: a message seen on several connections. kb2 holds two collectors (colB1, colB2, one
-- connection each) recording the same simulator: every message arrives twice. Built from c4r
-- (candidate 4r over both collectors = "stored per connection"), all with c4r's indexes.
--   r1: one collector's rows only (the single-connection reference);
--   r2: stored per connection = c4r itself;
--   r3: message table (one row per distinct content, its first copy's receipt inline) + a
--       receipts table with one row per further copy (collector, conn, seq, conn_seq, recv_us,
--       verdict, and the first copy's (collector_id, seq) as the reference);
--   r4: the further copies inline in the message row: dups bigint[] with 3 values per copy
--       ((collector_id << 32) | conn_id, seq, (recv_us << 2) | verdict); conn_seq of further
--       copies not kept (the journal has it).
-- Content identity: symbol, Kraken timestamp, type, checksum and the exact levels; equal copies
-- are paired in receive order within one identity.
DROP SCHEMA IF EXISTS r CASCADE;
CREATE SCHEMA r;
CREATE TABLE r.ident AS
SELECT b.*, md5(concat_ws('|', symbol, "timestamp", kind, checksum, levels::text)) AS ident,
       row_number() OVER (PARTITION BY collector_id,
                          md5(concat_ws('|', symbol, "timestamp", kind, checksum, levels::text))
                          ORDER BY seq) AS nth
  FROM c4r.book b;
CREATE TABLE r.copies AS
SELECT i.*, row_number() OVER (PARTITION BY ident, nth ORDER BY "timestamp" + recv_us * interval '1 microsecond', collector_id) AS copy
  FROM r.ident i;
CREATE INDEX ON r.copies (ident, nth, copy);
ANALYZE r.copies;
SELECT count(*) AS rows, count(*) FILTER (WHERE copy = 1) AS distinct_messages,
       count(*) FILTER (WHERE copy = 2) AS second_copies FROM r.copies;

-- r1: single collector
CREATE TABLE r.r1_book (LIKE c4r.book INCLUDING CONSTRAINTS);
-- r3: messages + receipts
CREATE TABLE r.r3_msg (LIKE c4r.book INCLUDING CONSTRAINTS);
CREATE TABLE r.r3_receipt (
    "timestamp" timestamptz NOT NULL, seq bigint NOT NULL, conn_seq bigint NOT NULL,
    ref_seq bigint NOT NULL, recv_us integer NOT NULL, conn_id integer NOT NULL,
    collector_id smallint NOT NULL, ref_collector_id smallint NOT NULL, checksum_ok boolean);
-- r4: inline
CREATE TABLE r.r4_msg (LIKE c4r.book INCLUDING CONSTRAINTS);
ALTER TABLE r.r4_msg ADD COLUMN dups bigint[];
SELECT create_hypertable(t, 'timestamp', chunk_time_interval => interval '1 day',
                         create_default_indexes => false)
  FROM unnest(ARRAY['r.r1_book', 'r.r3_msg', 'r.r3_receipt', 'r.r4_msg']::regclass[]) t;
DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['r.r1_book', 'r.r3_msg', 'r.r4_msg'] LOOP
    EXECUTE format('CREATE INDEX ON %s ("timestamp")', t);
    EXECUTE format('CREATE INDEX ON %s (symbol, "timestamp")', t);
    EXECUTE format('CREATE INDEX ON %s (symbol, "timestamp") WHERE kind = ''s''', t);
    EXECUTE format('CREATE INDEX ON %s USING brin (collector_id, seq int8_minmax_multi_ops) WITH (pages_per_range = 32)', t);
  END LOOP;
END $$;
CREATE INDEX ON r.r3_receipt USING brin (collector_id, seq int8_minmax_multi_ops) WITH (pages_per_range = 32);
CREATE INDEX ON r.r3_receipt USING brin (ref_collector_id, ref_seq int8_minmax_multi_ops) WITH (pages_per_range = 32);

INSERT INTO r.r1_book SELECT * FROM c4r.book
 WHERE collector_id = (SELECT id FROM lab.kb_collectors WHERE name = 'colB1') ORDER BY seq;
-- In received order across both collectors (by receive time), as one writer would see them.
INSERT INTO r.r3_msg SELECT (c).* FROM (
  SELECT c::c4r.book AS c, "timestamp" + recv_us * interval '1 microsecond' AS rt
    FROM (SELECT "timestamp", seq, conn_seq, best_bid_price, best_bid_qty, best_ask_price,
                 best_ask_qty, recv_us, conn_id, checksum, collector_id, n_bids, kind,
                 checksum_ok, symbol, levels FROM r.copies WHERE copy = 1) c) x ORDER BY rt;
INSERT INTO r.r3_receipt
SELECT d."timestamp", d.seq, d.conn_seq, f.seq, d.recv_us, d.conn_id, d.collector_id,
       f.collector_id, d.checksum_ok
  FROM r.copies d JOIN r.copies f ON f.ident = d.ident AND f.nth = d.nth AND f.copy = 1
 WHERE d.copy > 1 ORDER BY d."timestamp" + d.recv_us * interval '1 microsecond';
INSERT INTO r.r4_msg
SELECT f."timestamp", f.seq, f.conn_seq, f.best_bid_price, f.best_bid_qty, f.best_ask_price,
       f.best_ask_qty, f.recv_us, f.conn_id, f.checksum, f.collector_id, f.n_bids, f.kind,
       f.checksum_ok, f.symbol, f.levels,
       (SELECT array_agg(v ORDER BY d.copy, k)
          FROM r.copies d
          CROSS JOIN LATERAL (VALUES (0, (d.collector_id::bigint << 32) | d.conn_id),
                                     (1, d.seq),
                                     (2, (d.recv_us::bigint << 2)
                                         | CASE d.checksum_ok WHEN true THEN 1 WHEN false THEN 2 ELSE 0 END)) x(k, v)
         WHERE d.ident = f.ident AND d.nth = f.nth AND d.copy > 1)
  FROM r.copies f WHERE f.copy = 1
 ORDER BY f."timestamp" + f.recv_us * interval '1 microsecond';
VACUUM ANALYZE r.r1_book; VACUUM ANALYZE r.r3_msg; VACUUM ANALYZE r.r3_receipt; VACUUM ANALYZE r.r4_msg;
DROP TABLE r.ident;
