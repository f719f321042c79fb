#!/bin/bash
# Times each query of a file (one a line) under a search_path: median of 5 runs after one warm-up,
# client-side (psql \timing, rows fetched and discarded), and the scan nodes of its plan.
# usage: run_queries.sh DB SCHEMA FILE
db=$1; schema=$2; file=$3
P="psql -h 127.0.0.1 -p 55433 -U postgres -X -q -d $db"
n=0
while IFS= read -r q; do
  n=$((n+1))
  times=$( { echo "SET search_path = $schema, public; SET TimeZone = 'UTC'; \\o /dev/null"; echo "\\timing on";
             for i in 1 2 3 4 5 6; do echo "$q"; done; } | $P 2>&1 | grep '^Time:' | tail -5 | awk '{print $2}' | sort -n | sed -n 3p)
  plan=$( { echo "SET search_path = $schema, public;"; echo "EXPLAIN $q"; } | $P -At 2>&1 |
          grep -oE '(Index Only Scan|Index Scan|Bitmap Heap Scan|Seq Scan|Custom Scan \(ChunkAppend\)|Sort|Incremental Sort)( Backward)?( using [a-z0-9_]+| on [a-z0-9_]+)?' |
          sed -E 's/_hyper_[0-9]+_[0-9]+_chunk_?//' | sort | uniq -c | awk '{c=$1; $1=""; printf "%s%s", sep, substr($0,2) (c>1?" x"c:""); sep="; "}')
  printf "Q%s\t%s ms\t%s\n" "$n" "$times" "$plan"
done < "$file"
