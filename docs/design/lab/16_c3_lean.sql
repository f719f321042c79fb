-- Candidate 3 lean (schema :s, after 14_c3_narrow.sql built :src): without the best bid/ask
-- columns and conn_seq, to show what they cost. Same indexes as :src with a BRIN order index.
DROP SCHEMA IF EXISTS :s CASCADE;
CREATE SCHEMA :s;
CREATE TABLE :s.book (
    "timestamp" timestamptz NOT NULL, seq bigint NOT NULL, recv_us integer NOT NULL,
    conn_id integer NOT NULL, checksum integer NOT NULL, symbol_id smallint NOT NULL,
    collector_id smallint NOT NULL, n_bids smallint NOT NULL, kind "char" NOT NULL,
    checksum_ok boolean, levels bigint[] NOT NULL);
SELECT create_hypertable(:'s' || '.book', 'timestamp', chunk_time_interval => interval '1 day',
                         create_default_indexes => false);
CREATE INDEX book_time_idx ON :s.book ("timestamp");
CREATE INDEX book_symbol_time_idx ON :s.book (symbol_id, "timestamp");
CREATE INDEX book_snapshot_idx ON :s.book (symbol_id, "timestamp") WHERE kind = 's';
CREATE INDEX book_order_idx ON :s.book USING brin (collector_id, seq int8_minmax_multi_ops)
    WITH (pages_per_range = 32);
INSERT INTO :s.book SELECT "timestamp", seq, recv_us, conn_id, checksum, symbol_id, collector_id,
       n_bids, kind, checksum_ok, levels FROM :src.book ORDER BY collector_id, seq;
VACUUM ANALYZE :s.book;
