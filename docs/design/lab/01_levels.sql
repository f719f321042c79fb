-- The levels of every stored book message, decoded once from raw_message (scratch, not a candidate).
DROP TABLE IF EXISTS lab.levels;
CREATE TABLE lab.levels AS SELECT * FROM lab.src_levels;
CREATE UNIQUE INDEX ON lab.levels (collector, seq);
ANALYZE lab.levels;
-- Cross-check: the raw levels are exactly the entry rows (same count, same text, same order).
SELECT (SELECT sum(cardinality(prices)) FROM lab.levels) AS raw_levels,
       (SELECT count(*) FROM public.kraken_orderbook_entries) AS entry_rows,
       (SELECT count(*) FROM public.kraken_orderbook_entries e
          JOIN lab.levels l ON l.collector = e.collector AND l.seq = e.seq
         WHERE l.prices[e.ordinal + 1]::text <> e.price::text
            OR l.qtys[e.ordinal + 1]::text <> e.quantity::text
            OR (e.ordinal < l.n_bids) <> (e.side = 'bid')) AS differing;
