-- Bytes per book message of every relation in a schema (tables + indexes + toast; hypertables
-- through hypertable_size, which counts every chunk with its indexes and toast).
-- psql -v schema=... -v msgs=... -f sizes.sql
SELECT n.nspname || '.' || c.relname AS relation,
       CASE WHEN h.hypertable_name IS NOT NULL
            THEN hypertable_size(c.oid) ELSE pg_total_relation_size(c.oid) END AS bytes,
       CASE WHEN h.hypertable_name IS NOT NULL
            THEN (SELECT sum(index_bytes) FROM hypertable_detailed_size(c.oid))
            ELSE pg_indexes_size(c.oid) END AS index_bytes,
       round((CASE WHEN h.hypertable_name IS NOT NULL
            THEN hypertable_size(c.oid) ELSE pg_total_relation_size(c.oid) END)::numeric / :msgs, 1)
         AS bytes_per_msg
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN timescaledb_information.hypertables h
         ON h.hypertable_schema = n.nspname AND h.hypertable_name = c.relname
 WHERE n.nspname = :'schema' AND c.relkind IN ('r', 'p')
 ORDER BY 2 DESC;
