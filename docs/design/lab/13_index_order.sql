-- Index direction under incremental inserts in received order (what a collector does): a DESC
-- index receives every newer key at its left edge and splits pages 50/50; an ASC index receives
-- it at the right edge (rightmost split: 90% full) or, for (symbol, timestamp), just after the
-- previous key of the same symbol (nbtree's localized-monotonic split heuristic).
DROP SCHEMA IF EXISTS ix CASCADE;
CREATE SCHEMA ix;
CREATE TABLE ix.t (LIKE c2b.book);
SELECT create_hypertable('ix.t', 'timestamp', chunk_time_interval => interval '1 day',
                         create_default_indexes => false);
CREATE INDEX t_ts_desc ON ix.t ("timestamp" DESC);
CREATE INDEX t_ts_asc ON ix.t ("timestamp");
CREATE INDEX t_sym_ts_desc ON ix.t (symbol, "timestamp" DESC);
CREATE INDEX t_sym_ts_asc ON ix.t (symbol, "timestamp");
CREATE INDEX t_col_seq ON ix.t (collector, seq);
CREATE INDEX t_seq_brin ON ix.t USING brin (seq int8_minmax_multi_ops);
INSERT INTO ix.t SELECT * FROM c2b.book ORDER BY collector, seq;
SELECT replace(c.relname, '_hyper_', '') AS chunk_index, pg_relation_size(c.oid) AS bytes,
       round(pg_relation_size(c.oid) / 86431.0, 1) AS bytes_per_msg
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
 WHERE i.indrelid IN (SELECT format('%I.%I', chunk_schema, chunk_name)::regclass
                        FROM timescaledb_information.chunks WHERE hypertable_schema = 'ix')
 ORDER BY 1;
