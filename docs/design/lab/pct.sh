#!/bin/bash
# p50/p99/max of pgbench per-transaction latency logs (microseconds in column 3).
cat "$@" | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {printf "n=%d p50=%.1fms p99=%.1fms max=%.1fms\n", NR, a[int(NR*0.5)]/1000, a[int(NR*0.99)]/1000, a[NR]/1000}'
