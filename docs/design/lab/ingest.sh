#!/bin/bash
# Ingest: plain binary COPY of the same recording's rows into empty tables with their indexes:
# today's layout (messages + entries) against candidate 4r (book + other). The rows are first
# written to files by the server (COPY TO), then loaded into fresh hypertables built like their
# sources (CREATE TABLE ... LIKE ... INCLUDING INDEXES is not enough for hypertables' chunk
# indexes, so the sources' schema scripts are reused). Prints seconds per run and messages/s.
# usage: ingest.sh DB DIR RUNS
set -e
db=$1; dir=$2; runs=${3:-3}
P="psql -h 127.0.0.1 -p 55433 -U postgres -X -q -v ON_ERROR_STOP=1 -d $db"
mkdir -p "$dir"; chmod 777 "$dir"
$P -c "COPY (SELECT * FROM c0.kraken_orderbook_messages ORDER BY collector, seq) TO '$dir/c0_m.bin' (FORMAT binary)" \
   -c "COPY (SELECT * FROM c0.kraken_orderbook_entries ORDER BY collector, seq, ordinal) TO '$dir/c0_e.bin' (FORMAT binary)" \
   -c "COPY (SELECT * FROM c4r.book ORDER BY collector_id, seq) TO '$dir/c4_b.bin' (FORMAT binary)" \
   -c "COPY (SELECT * FROM c4r.other) TO '$dir/c4_o.bin' (FORMAT binary)"
ls -l "$dir"
msgs=$($P -At -c "SELECT count(*) FROM c4r.book")
for r in $(seq 1 "$runs"); do
  for layout in c0 c4; do
    $P -c "DROP SCHEMA IF EXISTS ing CASCADE; CREATE SCHEMA ing;" 2>/dev/null
    if [ $layout = c0 ]; then
      $P -c "CREATE TABLE ing.m (LIKE c0.kraken_orderbook_messages); CREATE TABLE ing.e (LIKE c0.kraken_orderbook_entries);
             SELECT create_hypertable('ing.m','timestamp', chunk_time_interval => interval '1 day');
             SELECT create_hypertable('ing.e','timestamp', chunk_time_interval => interval '1 day');
             CREATE INDEX ON ing.m (symbol, \"timestamp\" DESC);
             CREATE INDEX ON ing.m (symbol, \"timestamp\" DESC) WHERE message_type = 'snapshot';
             CREATE INDEX ON ing.m (collector, seq);
             CREATE INDEX ON ing.e (symbol, \"timestamp\" DESC);" >/dev/null
      load="COPY ing.m FROM '$dir/c0_m.bin' (FORMAT binary); COPY ing.e FROM '$dir/c0_e.bin' (FORMAT binary);"
    else
      $P -c "CREATE TABLE ing.b (LIKE c4r.book INCLUDING CONSTRAINTS); CREATE TABLE ing.o (LIKE c4r.other);
             SELECT create_hypertable(t, 'timestamp', chunk_time_interval => interval '1 day', create_default_indexes => false)
               FROM unnest(ARRAY['ing.b', 'ing.o']::regclass[]) t;
             CREATE INDEX ON ing.b (\"timestamp\");
             CREATE INDEX ON ing.b (symbol, \"timestamp\");
             CREATE INDEX ON ing.b (symbol, \"timestamp\") WHERE kind = 's';
             CREATE INDEX ON ing.b (symbol, \"timestamp\") WHERE CASE kind WHEN 's' THEN 'snapshot' ELSE 'update' END = 'snapshot';
             CREATE INDEX ON ing.b USING brin (collector_id, seq int8_minmax_multi_ops) WITH (pages_per_range = 32);
             CREATE INDEX ON ing.o (\"timestamp\"); CREATE INDEX ON ing.o (symbol, \"timestamp\"); CREATE INDEX ON ing.o (collector, seq);" >/dev/null
      load="COPY ing.b FROM '$dir/c4_b.bin' (FORMAT binary); COPY ing.o FROM '$dir/c4_o.bin' (FORMAT binary);"
    fi
    $P -c "CHECKPOINT" >/dev/null
    t0=$(date +%s.%N)
    $P -c "BEGIN; $load COMMIT;"
    t1=$(date +%s.%N)
    echo "run $r $layout $(echo "$t1 - $t0" | bc) s $(echo "$msgs / ($t1 - $t0)" | bc) msgs/s"
  done
done
$P -c "DROP SCHEMA IF EXISTS ing CASCADE" 2>/dev/null
