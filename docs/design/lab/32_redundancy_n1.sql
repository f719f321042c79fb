-- What the inline dups column costs at N = 1 (it is null in every row: the row then carries a
-- null bitmap), and the same without conn_seq. Same rows as r.r1_book (one collector).
DROP TABLE IF EXISTS r.r7_msg, r.r8_msg;
CREATE TABLE r.r7_msg (LIKE c4r.book INCLUDING CONSTRAINTS);
ALTER TABLE r.r7_msg ADD COLUMN dups bigint[];
CREATE TABLE r.r8_msg (LIKE r.r7_msg INCLUDING CONSTRAINTS);
ALTER TABLE r.r8_msg DROP COLUMN conn_seq;
SELECT create_hypertable(t, 'timestamp', chunk_time_interval => interval '1 day',
                         create_default_indexes => false)
  FROM unnest(ARRAY['r.r7_msg', 'r.r8_msg']::regclass[]) t;
DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['r.r7_msg', 'r.r8_msg'] LOOP
    EXECUTE format('CREATE INDEX ON %s ("timestamp")', t);
    EXECUTE format('CREATE INDEX ON %s (symbol, "timestamp")', t);
    EXECUTE format('CREATE INDEX ON %s (symbol, "timestamp") WHERE kind = ''s''', t);
    EXECUTE format('CREATE INDEX ON %s USING brin (collector_id, seq int8_minmax_multi_ops) WITH (pages_per_range = 32)', t);
  END LOOP;
END $$;
INSERT INTO r.r7_msg SELECT *, NULL FROM r.r1_book ORDER BY seq;
INSERT INTO r.r8_msg ("timestamp", seq, best_bid_price, best_bid_qty, best_ask_price, best_ask_qty,
                      recv_us, conn_id, checksum, collector_id, n_bids, kind, checksum_ok, symbol,
                      levels, dups)
SELECT "timestamp", seq, best_bid_price, best_bid_qty, best_ask_price, best_ask_qty, recv_us,
       conn_id, checksum, collector_id, n_bids, kind, checksum_ok, symbol, levels, NULL
  FROM r.r1_book ORDER BY seq;
VACUUM ANALYZE r.r7_msg; VACUUM ANALYZE r.r8_msg;
