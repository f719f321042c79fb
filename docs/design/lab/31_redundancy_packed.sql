-- Issue 12, after 30_redundancy.sql: further copies packed in 64 bits each, within one collector
-- (the writer merges copies of a message that arrive on its connections within one batch):
--   bits 63..48 conn_id (16), 47..46 verdict (null/ok/mismatch), 45..24 seq - first copy's seq
--   (22 bits signed), 23..0 receive time - first copy's receive time in us (24 bits signed,
--   +-8.3 s). A copy that does not fit (a late copy, another batch) gets a receipts-table row.
--   r5: dups bigint[] (one element a further copy; N >= 2);
--   r6: dup1 bigint NOT NULL (0: none), the cheapest form for N = 2.
-- (kb2's copies come from two collectors, so the seq delta is not meaningful here: only sizes.)
DROP TABLE IF EXISTS r.r5_msg, r.r6_msg;
CREATE TABLE r.r5_msg (LIKE c4r.book INCLUDING CONSTRAINTS);
ALTER TABLE r.r5_msg ADD COLUMN dups bigint[];
CREATE TABLE r.r6_msg (LIKE c4r.book INCLUDING CONSTRAINTS);
ALTER TABLE r.r6_msg ADD COLUMN dup1 bigint NOT NULL;
SELECT create_hypertable(t, 'timestamp', chunk_time_interval => interval '1 day',
                         create_default_indexes => false)
  FROM unnest(ARRAY['r.r5_msg', 'r.r6_msg']::regclass[]) t;
DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['r.r5_msg', 'r.r6_msg'] LOOP
    EXECUTE format('CREATE INDEX ON %s ("timestamp")', t);
    EXECUTE format('CREATE INDEX ON %s (symbol, "timestamp")', t);
    EXECUTE format('CREATE INDEX ON %s (symbol, "timestamp") WHERE kind = ''s''', t);
    EXECUTE format('CREATE INDEX ON %s USING brin (collector_id, seq int8_minmax_multi_ops) WITH (pages_per_range = 32)', t);
  END LOOP;
END $$;
CREATE OR REPLACE FUNCTION r.pack(d r.copies, f r.copies) RETURNS bigint LANGUAGE sql IMMUTABLE
RETURN ((d.conn_id::bigint & 65535) << 48)
     | ((CASE d.checksum_ok WHEN true THEN 1 WHEN false THEN 2 ELSE 0 END)::bigint << 46)
     | (((d.seq - f.seq) & 4194303) << 24)
     | (((d."timestamp" + d.recv_us * interval '1 microsecond')
         - (f."timestamp" + f.recv_us * interval '1 microsecond') = interval '0')::int::bigint
        & 16777215);
INSERT INTO r.r5_msg
SELECT f."timestamp", f.seq, f.conn_seq, f.best_bid_price, f.best_bid_qty, f.best_ask_price,
       f.best_ask_qty, f.recv_us, f.conn_id, f.checksum, f.collector_id, f.n_bids, f.kind,
       f.checksum_ok, f.symbol, f.levels,
       (SELECT array_agg(r.pack(d, f) ORDER BY d.copy) FROM r.copies d
         WHERE d.ident = f.ident AND d.nth = f.nth AND d.copy > 1)
  FROM r.copies f WHERE f.copy = 1
 ORDER BY f."timestamp" + f.recv_us * interval '1 microsecond';
INSERT INTO r.r6_msg
SELECT "timestamp", seq, conn_seq, best_bid_price, best_bid_qty, best_ask_price,
       best_ask_qty, recv_us, conn_id, checksum, collector_id, n_bids, kind, checksum_ok, symbol,
       levels, coalesce(dups[1], 0)
  FROM r.r5_msg ORDER BY "timestamp" + recv_us * interval '1 microsecond';
VACUUM ANALYZE r.r5_msg; VACUUM ANALYZE r.r6_msg;
